//! Presence end to end through the drbridge binary: calls (SIPp as the PBX, the Rust Teams peer
//! as the Microsoft proxies), PBX SUBSCRIBE/NOTIFY (a Rust UDP peer as the PBX) and the admin
//! ingest endpoint feed drbridge's presence table; the Graph stand-in (tests/common/graph.rs)
//! records what drbridge publishes.
//!
//! Lab users (tests/common/config.rs LAB_USERS_TOML): anna 4711 / +4681234711, bo 4712 /
//! +4681234712 on the PBX; carl +4681234801, dora +4681234802 in Teams. drbridge resolves the
//! UPNs to object ids in the background and publishes by UPN until then, so every assertion
//! accepts either as the user in the Graph path.
//!
//! What drbridge says: Busy/InACall while a user is in a call, DoNotDisturb/Presenting for DND,
//! Away/Away for PBX "Absent" (beats Busy), and clearPresence when it has nothing to say (the
//! default AvailablePolicy::Clear: "back to Available" is a clearPresence).
//!
//! Every wait is bounded and wakes on the stub's requests or the peers' messages.

mod common;

use common::config::PresenceSpec;
use common::graph::{parse_iso_duration, Fault, GraphStub, Recorded};
use common::peer::SipPeer;
use common::sipp::{self, Sipp};
use common::teams::TeamsPeer;
use common::util::{free_port, loopback, token, STEP};
use common::{Drbridge, LabConfig};
use drbridge::sip::msg::{Message, Method, NameAddr, Request, Uri};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TENANT: &str = "contoso.example";
const CLIENT_ID: &str = "0d7f1e2c-3b4a-4c5d-8e9f-a0b1c2d3e4f5";
const SECRET: &str = "lab-client-secret~not-a-real-one";
const ADMIN_TOKEN: &str = "lab-admin-token-0123456789";
/// Bound of one presence step (event -> request at the stub), retries included.
const WAIT: Duration = Duration::from_secs(20);

const CARL_E164: &str = "+4681234801";
/// A Teams number that is nobody's in the directory.
const STRANGER_E164: &str = "+46701234567";

#[derive(Clone, Copy, Debug)]
struct User {
    upn: &'static str,
    id: &'static str,
}

const ANNA: User = User { upn: "anna.andersson@lab.drbridge.test", id: "6f1a0a11-0000-4000-8000-000000004711" };
const BO: User = User { upn: "bo.berg@lab.drbridge.test", id: "6f1a0a11-0000-4000-8000-000000004712" };
const CARL: User = User { upn: "carl.carlsson@lab.drbridge.test", id: "6f1a0a11-0000-4000-8000-000000004801" };
const DORA: User = User { upn: "dora.dahl@lab.drbridge.test", id: "6f1a0a11-0000-4000-8000-000000004802" };
const USERS: [User; 4] = [ANNA, BO, CARL, DORA];

// ------------------------------------------------------------------ Graph stub helpers

async fn graph() -> GraphStub {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    for u in USERS {
        stub.add_user(u.upn, u.id);
    }
    stub
}

fn spec(stub: &GraphStub) -> PresenceSpec {
    PresenceSpec::new(TENANT, CLIENT_ID, SECRET, &stub.identity_base(), &stub.graph_base())
}

/// The presence operation is for `u` (by object id or, before it is resolved, by UPN).
fn is_for(r: &Recorded, u: User) -> bool {
    r.user().is_some_and(|x| x == u.id || x.eq_ignore_ascii_case(u.upn))
}

fn ops_for(stub: &GraphStub, u: User) -> Vec<Recorded> {
    stub.presence_ops().into_iter().filter(|r| is_for(r, u)).collect()
}

fn is_set(r: &Recorded) -> bool {
    r.path.ends_with("/presence/setPresence")
}
fn is_clear(r: &Recorded) -> bool {
    r.path.ends_with("/presence/clearPresence")
}

/// Graph took it: 2xx, or clearPresence answered 404 (no session: nothing to clear).
fn accepted(r: &Recorded) -> bool {
    (200..300).contains(&r.status) || (is_clear(r) && r.status == 404)
}

/// The last presence operation Graph accepted for `u`.
fn last_accepted(stub: &GraphStub, u: User) -> Option<Recorded> {
    ops_for(stub, u).into_iter().filter(accepted).last()
}

/// What Graph shows from drbridge for `u`: Some((availability, activity)) after an accepted
/// setPresence, None after an accepted clearPresence or before anything.
fn shown(stub: &GraphStub, u: User) -> Option<(String, String)> {
    let r = last_accepted(stub, u)?;
    if !is_set(&r) {
        return None;
    }
    let b = r.json();
    Some((b["availability"].as_str()?.to_string(), b["activity"].as_str()?.to_string()))
}

fn shows(stub: &GraphStub, u: User, availability: &str, activity: &str) -> bool {
    shown(stub, u).is_some_and(|(av, ac)| av == availability && ac == activity)
}

/// The last accepted operation for `u` is a clearPresence.
fn cleared(stub: &GraphStub, u: User) -> bool {
    last_accepted(stub, u).is_some_and(|r| is_clear(&r))
}

/// A readable account of the presence operations (for failure messages).
fn ops_text(stub: &GraphStub) -> String {
    stub.presence_ops()
        .iter()
        .map(|r| format!("{:>6} {} {} {}{}\n", r.status, r.method, r.path, r.body, if r.in_batch { " (batch)" } else { "" }))
        .collect()
}

/// Waits (bounded) until `cond` holds; panics with the stub's presence log otherwise.
async fn expect(stub: &GraphStub, what: &str, cond: impl FnMut(&GraphStub) -> bool) {
    if !stub.wait_until(WAIT, cond).await {
        panic!("Graph stub: not seen within {WAIT:?}: {what}\n--- presence operations ---\n{}", ops_text(stub));
    }
}

/// A setPresence body as Graph wants it from drbridge's application session.
fn assert_set_body(r: &Recorded, availability: &str, activity: &str) {
    let b = r.json();
    assert_eq!(b["sessionId"], CLIENT_ID, "sessionId = the app's client id: {}", r.body);
    assert_eq!((b["availability"].as_str(), b["activity"].as_str()), (Some(availability), Some(activity)), "{}", r.body);
    let exp = b["expirationDuration"].as_str().unwrap_or_else(|| panic!("expirationDuration missing: {}", r.body));
    let secs = parse_iso_duration(exp).unwrap_or_else(|| panic!("expirationDuration {exp:?} is not PT..H..M..S"));
    assert!((300..=4 * 3600).contains(&secs), "expirationDuration {exp} outside PT5M..PT4H");
}

fn assert_clear_body(r: &Recorded) {
    assert_eq!(r.json()["sessionId"], CLIENT_ID, "clearPresence sessionId: {}", r.body);
}

/// Waits until drbridge asked Graph for the object id of every lab user (bounded).
async fn wait_resolutions(stub: &GraphStub) {
    expect(stub, "GET /users/{upn} for every lab user", |s| {
        let gets: Vec<String> = s.requests().iter().filter(|r| r.method == "GET" && r.path.contains("/users/")).map(|r| r.path.to_ascii_lowercase()).collect();
        USERS.iter().all(|u| gets.iter().any(|p| p.contains(u.upn)))
    })
    .await;
}

// ------------------------------------------------------------------ lab

/// The Teams proxy (one) and a lab configuration with presence pointed at `stub`.
async fn lab_cfg(stub: &GraphStub, tweak: impl FnOnce(&mut PresenceSpec)) -> (TeamsPeer, LabConfig) {
    let cfg = LabConfig::new();
    let teams = TeamsPeer::start(&cfg.certs, 1).await;
    let mut s = spec(stub);
    tweak(&mut s);
    let cfg = cfg.with_proxies(&teams.proxy_addrs).with_presence(s);
    (teams, cfg)
}

fn start(cfg: &LabConfig) -> Drbridge {
    tokio::task::block_in_place(|| Drbridge::start(cfg))
}

// ------------------------------------------------------------------ 1. calls

/// A SIPp call PBX 4711 -> Teams +4681234801 answered by Teams makes anna (caller) and carl
/// (callee) Busy/InACall; after the BYE both get clearPresence. Users not in the call get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_makes_caller_and_callee_busy_then_cleared() {
    if !sipp::require("call_makes_caller_and_callee_busy_then_cleared") {
        return;
    }
    let stub = graph().await;
    let (teams, cfg) = lab_cfg(&stub, |_| {}).await;
    let dr = start(&cfg);
    let cfg = dr.cfg.clone();

    let run = Sipp::uac("uac_call_remote_bye.xml", cfg.pbx_address, cfg.pbx_listen, CARL_E164).start();
    let mut call = teams.answer_call(STEP).await;
    expect(&stub, "anna and carl Busy/InACall", |s| shows(s, ANNA, "Busy", "InACall") && shows(s, CARL, "Busy", "InACall")).await;
    for u in [ANNA, CARL] {
        let r = last_accepted(&stub, u).unwrap();
        assert_set_body(&r, "Busy", "InACall");
        assert_eq!(r.status, 200);
    }

    // Teams hangs up; drbridge passes the BYE to the PBX (SIPp answers it and ends).
    assert_eq!(teams.bye(&mut call, STEP).await.status, 200);
    run.wait_async().await.assert_success();
    expect(&stub, "clearPresence for anna and carl", |s| cleared(s, ANNA) && cleared(s, CARL)).await;
    for u in [ANNA, CARL] {
        let ops = ops_for(&stub, u);
        let clear = ops.iter().rev().find(|r| is_clear(r)).unwrap();
        assert_clear_body(clear);
        // Busy came before the clear, and nothing but those two kinds for this user.
        let first_busy = ops.iter().position(|r| is_set(r) && r.json()["availability"] == "Busy").unwrap();
        let last_clear = ops.iter().rposition(is_clear).unwrap();
        assert!(first_busy < last_clear, "{}", ops_text(&stub));
        // No Graph session is left for the user under either key.
        assert!(stub.session(u.id).is_none() && stub.session(u.upn).is_none(), "{u:?} still has a session:\n{}", ops_text(&stub));
    }
    for u in [BO, DORA] {
        assert!(ops_for(&stub, u).is_empty(), "{u:?} was not in the call:\n{}", ops_text(&stub));
    }
    drop(dr);
}

// ------------------------------------------------------------------ 2. PBX subscriptions

/// One SUBSCRIBE drbridge sent, answered 200 by the PBX peer.
struct Sub {
    ext: String,
    event: String,
    req: Request,
    /// Our (the notifier's) tag, as in the 200.
    tag: String,
    cseq: u32,
}

/// A PBX NOTIFY in the subscription dialog of `sub` (From = the SUBSCRIBE's To with our tag,
/// To = its From with drbridge's tag, same Call-ID), sent from the peer's UDP socket to `to`.
/// Returns its Call-ID and CSeq number.
fn send_notify(pbx: &SipPeer, to: SocketAddr, sub: &mut Sub, content_type: &str, body: &str) -> u32 {
    let contact = sub.req.headers.values("Contact").first().map(|c| c.to_string()).expect("SUBSCRIBE without Contact");
    let target = NameAddr::parse(&contact).map(|n| n.uri.to_string()).unwrap_or_else(|_| format!("sip:drbridge@{to}"));
    let conn = pbx.udp_to(to);
    let mut r = Request::new(Method::Notify, target.as_str());
    r.headers.push("Via", format!("SIP/2.0/UDP {};branch=z9hG4bK{}", conn.local, token(16)));
    r.headers.push("Max-Forwards", "70");
    r.headers.push("From", format!("{};tag={}", sub.req.headers.get("To").expect("To"), sub.tag));
    r.headers.push("To", sub.req.headers.get("From").expect("From").to_string());
    r.headers.push("Call-ID", sub.req.call_id().expect("Call-ID").to_string());
    sub.cseq += 1;
    r.headers.push("CSeq", format!("{} NOTIFY", sub.cseq));
    r.headers.push("Contact", format!("<sip:{}@{}>", sub.ext, conn.local));
    r.headers.push("Event", sub.event.clone());
    r.headers.push("Subscription-State", "active;expires=3600");
    r.headers.push("Content-Type", content_type.to_string());
    r.body = bytes::Bytes::from(body.to_string());
    conn.send_msg(&Message::Request(r)).expect("send NOTIFY");
    sub.cseq
}

/// Sends a NOTIFY and asserts drbridge answers it 200.
async fn notify_ok(pbx: &SipPeer, to: SocketAddr, sub: &mut Sub, content_type: &str, body: &str) {
    let n = send_notify(pbx, to, sub, content_type, body);
    let call_id = sub.req.call_id().unwrap().to_string();
    let resp = pbx
        .expect_where("200 to NOTIFY", STEP, |i| match &i.msg {
            Message::Response(r) => r.call_id() == Some(call_id.as_str()) && r.cseq().is_some_and(|c| c.method == Method::Notify && c.seq == n),
            _ => false,
        })
        .await;
    let Message::Response(resp) = resp.msg else { unreachable!() };
    assert_eq!(resp.status, 200, "drbridge's answer to NOTIFY {n} ({}):\n{}", sub.event, pbx.summary());
}

const PIDF: &str = "application/pidf+xml";
const DIALOG_INFO: &str = "application/dialog-info+xml";

fn pidf_dnd(ext: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:{ext}@pbx.lab">
  <tuple id="t{ext}"><status><basic>open</basic></status><contact>sip:{ext}@pbx.lab</contact></tuple>
  <dm:person id="p{ext}">
    <rpid:activities><rpid:other>Do Not Disturb</rpid:other></rpid:activities>
    <dm:note>Do Not Disturb</dm:note>
  </dm:person>
</presence>"#
    )
}

fn pidf_absent(ext: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:{ext}@pbx.lab">
  <tuple id="t{ext}"><status><basic>open</basic></status></tuple>
  <dm:person id="p{ext}">
    <rpid:activities><rpid:away/></rpid:activities>
    <dm:note>Absent</dm:note>
  </dm:person>
</presence>"#
    )
}

fn pidf_available(ext: &str) -> String {
    format!(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{ext}@pbx.lab">
  <tuple id="t{ext}"><status><basic>open</basic></status><note>Available</note></tuple>
</presence>"#
    )
}

fn dialog_confirmed(ext: &str, version: u32) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{version}" state="full" entity="sip:{ext}@pbx.lab">
  <dialog id="d{ext}" call-id="c{ext}@pbx.lab" local-tag="l{ext}" remote-tag="r{ext}" direction="initiator">
    <state>confirmed</state>
    <local><identity>sip:{ext}@pbx.lab</identity></local>
    <remote><identity>sip:4799@pbx.lab</identity></remote>
  </dialog>
</dialog-info>"#
    )
}

/// `subscribe_pbx = true`: drbridge subscribes to dialog and presence for 4711 and 4712. The PBX
/// peer grants them and notifies for 4711: a call on the desk phone (dialog confirmed) makes anna
/// Busy/InACall; DND (PIDF) makes DoNotDisturb/Presenting (DND beats Busy); Absent makes
/// Away/Away while the call still holds (Away beats Busy); back to Available (PIDF open) leaves
/// the call: Busy/InACall again. drbridge answers every NOTIFY 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_notify_dnd_and_away_beats_busy() {
    let stub = graph().await;
    let (_teams, cfg) = lab_cfg(&stub, |s| s.subscribe_pbx = true).await;
    let pbx = SipPeer::new("pbx");
    pbx.set_user_agent("pbx-peer");
    pbx.bind_udp(cfg.pbx_address).await;
    let dr = start(&cfg);
    let drb = dr.cfg.pbx_listen;

    let mut subs = Vec::new();
    for _ in 0..4 {
        let (req, _) = pbx.expect_request(Method::Subscribe, WAIT).await;
        let ext = Uri::parse(&req.uri).ok().and_then(|u| u.user).unwrap_or_default();
        let event = req.headers.get("Event").unwrap_or("").to_string();
        assert!(req.headers.get("Expires").is_some_and(|e| e.trim().parse::<u32>().is_ok_and(|n| n > 0)), "SUBSCRIBE Expires");
        let accept = req.headers.get("Accept").unwrap_or("").to_string();
        match event.as_str() {
            "dialog" => assert!(accept.contains(DIALOG_INFO), "Accept {accept}"),
            "presence" => assert!(accept.contains(PIDF), "Accept {accept}"),
            e => panic!("unexpected Event {e:?}"),
        }
        pbx.respond(&req, 200, "", &[("Expires", "3600")]);
        let tag = pbx.to_tag_for(&req);
        subs.push(Sub { ext, event, req, tag, cseq: 0 });
    }
    let mut got: Vec<(String, String)> = subs.iter().map(|s| (s.ext.clone(), s.event.clone())).collect();
    got.sort();
    let want: Vec<(String, String)> =
        [("4711", "dialog"), ("4711", "presence"), ("4712", "dialog"), ("4712", "presence")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(got, want, "one SUBSCRIBE per extension and package");

    let idx = |subs: &[Sub], ext: &str, ev: &str| subs.iter().position(|s| s.ext == ext && s.event == ev).unwrap();
    let (d, p) = (idx(&subs, "4711", "dialog"), idx(&subs, "4711", "presence"));

    // A call on anna's desk phone that never crosses drbridge.
    notify_ok(&pbx, drb, &mut subs[d], DIALOG_INFO, &dialog_confirmed("4711", 0)).await;
    expect(&stub, "anna Busy/InACall (PBX dialog confirmed)", |s| shows(s, ANNA, "Busy", "InACall")).await;

    notify_ok(&pbx, drb, &mut subs[p], PIDF, &pidf_dnd("4711")).await;
    expect(&stub, "anna DoNotDisturb/Presenting (PIDF DND)", |s| shows(s, ANNA, "DoNotDisturb", "Presenting")).await;
    assert_set_body(&last_accepted(&stub, ANNA).unwrap(), "DoNotDisturb", "Presenting");

    notify_ok(&pbx, drb, &mut subs[p], PIDF, &pidf_absent("4711")).await;
    expect(&stub, "anna Away/Away (Absent beats the call)", |s| shows(s, ANNA, "Away", "Away")).await;
    assert_set_body(&last_accepted(&stub, ANNA).unwrap(), "Away", "Away");

    // The call still holds: when the user is back, Busy shows again.
    notify_ok(&pbx, drb, &mut subs[p], PIDF, &pidf_available("4711")).await;
    expect(&stub, "anna Busy/InACall again (call still up)", |s| shows(s, ANNA, "Busy", "InACall")).await;

    for u in [BO, CARL, DORA] {
        assert!(ops_for(&stub, u).is_empty(), "{u:?} had no NOTIFY:\n{}", ops_text(&stub));
    }
    drop(dr);
}

// ------------------------------------------------------------------ 3. 429 Retry-After

/// setPresence answered 429 with Retry-After: 2: no presence request for that user before 2 s
/// have passed (times as the stub recorded them), then the state arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_set_presence_waits_retry_after() {
    if !sipp::require("throttled_set_presence_waits_retry_after") {
        return;
    }
    const RETRY_AFTER: u64 = 2;
    let stub = graph().await;
    let (teams, cfg) = lab_cfg(&stub, |_| {}).await;
    let dr = start(&cfg);
    let cfg = dr.cfg.clone();
    wait_resolutions(&stub).await;
    stub.push_fault(Fault::throttle(RETRY_AFTER));

    // Anna calls a Teams number that is nobody's in the directory: one user, one request.
    let run = Sipp::uac("uac_call_remote_bye.xml", cfg.pbx_address, cfg.pbx_listen, STRANGER_E164).start();
    let mut call = teams.answer_call(STEP).await;
    expect(&stub, "anna Busy/InACall after the 429", |s| shows(s, ANNA, "Busy", "InACall")).await;

    let all = stub.presence_ops();
    let i = all.iter().position(|r| r.status == 429).unwrap_or_else(|| panic!("no 429 answered:\n{}", ops_text(&stub)));
    assert!(is_for(&all[i], ANNA) && is_set(&all[i]), "the throttled request is anna's setPresence:\n{}", ops_text(&stub));
    let t429 = all[i].at;
    // The very next presence request (any user) after the throttled one.
    let next = all.get(i + 1).unwrap_or_else(|| panic!("no request after the 429:\n{}", ops_text(&stub)));
    let gap = next.at - t429;
    assert!(gap >= Duration::from_secs(RETRY_AFTER), "next presence request {gap:?} after the 429 (Retry-After {RETRY_AFTER} s):\n{}", ops_text(&stub));
    assert!(gap < Duration::from_secs(RETRY_AFTER + 10), "the retry took {gap:?}");
    assert!(is_for(next, ANNA) && is_set(next) && next.status == 200, "{}", ops_text(&stub));
    assert_set_body(next, "Busy", "InACall");

    assert_eq!(teams.bye(&mut call, STEP).await.status, 200);
    run.wait_async().await.assert_success();
    expect(&stub, "anna cleared", |s| cleared(s, ANNA)).await;
    drop(dr);
}

// ------------------------------------------------------------------ 4. restart with Graph down

/// Nothing lost: anna and carl are Busy in Teams (published); Graph goes down (503); the call
/// ends, so drbridge owes Teams a clearPresence for both (pending in the store); drbridge is
/// killed while Graph is still down. A new drbridge on the same data_dir with Graph healthy and
/// no call sends the clearPresence: Teams does not keep a stale Busy.
///
/// `object_ids`: the stub knows the users' object ids (drbridge publishes by id once resolved,
/// and has the ids cached in its store at the restart); without, everything goes by UPN.
async fn pending_clear_survives_restart(object_ids: bool) {
    let stub = if object_ids { graph().await } else { GraphStub::start(TENANT, CLIENT_ID, SECRET).await };
    let (teams, cfg) = lab_cfg(&stub, |_| {}).await;
    let dr = start(&cfg);
    let cfg = dr.cfg.clone();
    if object_ids {
        wait_resolutions(&stub).await;
    }

    let run = Sipp::uac("uac_call_remote_bye.xml", cfg.pbx_address, cfg.pbx_listen, CARL_E164).start();
    let mut call = teams.answer_call(STEP).await;
    expect(&stub, "anna and carl Busy/InACall", |s| shows(s, ANNA, "Busy", "InACall") && shows(s, CARL, "Busy", "InACall")).await;
    let session_keys: Vec<String> = [ANNA, CARL].iter().map(|u| last_accepted(&stub, *u).unwrap().user().unwrap()).collect();
    if object_ids {
        assert_eq!(session_keys, vec![ANNA.id.to_string(), CARL.id.to_string()], "published by object id once resolved:\n{}", ops_text(&stub));
    }

    stub.set_sticky_fault(Some(Fault::unavailable(None)));
    assert_eq!(teams.bye(&mut call, STEP).await.status, 200);
    run.wait_async().await.assert_success();
    // drbridge tried to clear both and Graph refused.
    expect(&stub, "refused clearPresence for anna and carl", |s| {
        [ANNA, CARL].iter().all(|u| ops_for(s, *u).iter().any(|r| is_clear(r) && r.status == 503))
    })
    .await;
    drop(dr);
    let before = stub.presence_ops().len();
    for k in &session_keys {
        assert!(stub.session(k).is_some_and(|s| s.availability == "Busy"), "Teams still shows Busy from before the outage");
    }

    stub.set_sticky_fault(None);
    let dr = start(&cfg);
    // Teams ends with no session from drbridge for either user (what Graph keeps, under the key
    // the Busy was published with).
    let no_sessions = |s: &GraphStub| session_keys.iter().all(|k| s.session(k).is_none());
    if !stub.wait_until(WAIT, |s| no_sessions(s) && cleared(s, ANNA) && cleared(s, CARL)).await {
        panic!("Graph still has drbridge's Busy after the restart: {:?}\n--- presence operations ---\n{}", stub.sessions(), ops_text(&stub));
    }
    for u in [ANNA, CARL] {
        let after: Vec<Recorded> = stub.presence_ops()[before..].iter().filter(|r| is_for(r, u)).cloned().collect();
        assert!(!after.iter().any(is_set), "no stale setPresence after the restart:\n{}", ops_text(&stub));
        assert_clear_body(after.iter().find(|r| is_clear(r)).unwrap());
    }
    drop(dr);
}

/// Users whose identity does not resolve (published by UPN throughout): the pending clear of
/// the store is sent after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_clear_survives_restart_with_graph_down() {
    if !sipp::require("pending_clear_survives_restart_with_graph_down") {
        return;
    }
    pending_clear_survives_restart(false).await;
}

/// The same with resolved object ids: Graph's presence API takes only the object id (GUID) in
/// /users/{id}/presence, so after the restart the clear must go to the object id cached in the
/// store, where the Busy session is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_clear_survives_restart_with_graph_down_object_ids() {
    if !sipp::require("pending_clear_survives_restart_with_graph_down_object_ids") {
        return;
    }
    pending_clear_survives_restart(true).await;
}

/// Graph down (503) from the start; a call makes anna and carl Busy, which is only pending
/// (Graph never took it); drbridge is killed in the middle of the call. A new drbridge on the
/// same data_dir with Graph healthy and no call.
///
/// What Teams should end with: the call died with the drbridge that carried it (a B2BUA's calls
/// and anchored media do not survive it; the new process has no call), so neither anna nor carl
/// is in a call through drbridge. The right final state is "nothing from drbridge"
/// (clearPresence, or no session at all). Sending the pending Busy once is tolerable, but Teams
/// must not be left Busy: a Busy session with expirationDuration PT1H that drbridge keeps
/// refreshing would show a phantom call for as long as drbridge runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pending_at_kill_is_not_left_stale_after_restart() {
    if !sipp::require("busy_pending_at_kill_is_not_left_stale_after_restart") {
        return;
    }
    let stub = graph().await;
    stub.set_sticky_fault(Some(Fault::unavailable(None)));
    let (teams, cfg) = lab_cfg(&stub, |_| {}).await;
    let dr = start(&cfg);
    let cfg = dr.cfg.clone();

    let run = Sipp::uac("uac_call_remote_bye.xml", cfg.pbx_address, cfg.pbx_listen, CARL_E164).start();
    let _call = teams.answer_call(STEP).await;
    expect(&stub, "refused setPresence Busy for anna and carl", |s| {
        [ANNA, CARL].iter().all(|u| ops_for(s, *u).iter().any(|r| is_set(r) && r.status == 503 && r.json()["availability"] == "Busy"))
    })
    .await;
    drop(dr); // kill -9 in the middle of the call, Graph still down
    drop(run);
    assert!(shown(&stub, ANNA).is_none() && shown(&stub, CARL).is_none(), "Graph never accepted anything");

    stub.set_sticky_fault(None);
    let t_restart = Instant::now();
    let dr = start(&cfg);
    // The final state: drbridge has nothing to say for either (cleared / no session).
    expect(&stub, "anna and carl end cleared after the restart (no call exists)", |s| cleared(s, ANNA) && cleared(s, CARL)).await;
    for u in [ANNA, CARL] {
        assert!(stub.session(u.id).is_none() && stub.session(u.upn).is_none(), "{u:?} left with a session:\n{}", ops_text(&stub));
        let after: Vec<Recorded> = ops_for(&stub, u).into_iter().filter(|r| r.at >= t_restart).collect();
        assert!(after.last().is_some_and(is_clear), "{}", ops_text(&stub));
    }
    drop(dr);
}

// ------------------------------------------------------------------ 5. admin

/// One HTTP/1.1 request over loopback (Connection: close); returns status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(t) = bearer {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let b = body.unwrap_or("");
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(STEP, fut).await.expect("admin request timed out")
}

/// The admin server: 401 without the bearer token; `POST /presence/ingest` (a CSTA adapter says
/// device d1 of anna is DND) makes Graph show DoNotDisturb/Presenting; `GET
/// /presence/users/{upn}` shows the aggregate (level, sources) and what was last published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_view_and_ingest() {
    let stub = graph().await;
    let (_teams, cfg) = lab_cfg(&stub, |_| {}).await;
    let cfg = cfg.with_admin(loopback(free_port()), ADMIN_TOKEN);
    let dr = start(&cfg);
    let admin = dr.cfg.admin.as_ref().unwrap().listen;
    let user_path = format!("/presence/users/{}", ANNA.upn);
    let ingest = format!(r#"{{"user": "{}", "source": "csta", "device": "d1", "state": "dnd"}}"#, ANNA.upn);

    assert_eq!(http(admin, "GET", &user_path, None, None).await.0, 401, "view without token");
    assert_eq!(http(admin, "GET", &user_path, Some("wrong-token"), None).await.0, 401, "view with a wrong token");
    assert_eq!(http(admin, "POST", "/presence/ingest", None, Some(&ingest)).await.0, 401, "ingest without token");
    assert!(stub.presence_ops().is_empty(), "a refused ingest publishes nothing");

    let (status, body) = http(admin, "POST", "/presence/ingest", Some(ADMIN_TOKEN), Some(&ingest)).await;
    assert!((200..300).contains(&status), "ingest: {status} {body}");
    expect(&stub, "anna DoNotDisturb/Presenting (ingest)", |s| shows(s, ANNA, "DoNotDisturb", "Presenting")).await;
    assert_set_body(&last_accepted(&stub, ANNA).unwrap(), "DoNotDisturb", "Presenting");

    // The publisher learns of Graph's 200 just after the stub recorded it: poll the view (bounded).
    let deadline = Instant::now() + WAIT;
    let view = loop {
        let (status, body) = http(admin, "GET", &user_path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 200, "view: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("view JSON ({e}): {body}"));
        if v["graph"]["settled"] == true || Instant::now() > deadline {
            break v;
        }
        tokio::task::yield_now().await;
    };
    let u = &view["user"];
    assert_eq!(u["upn"].as_str().map(str::to_ascii_lowercase).as_deref(), Some(ANNA.upn), "{view}");
    assert_eq!(u["level"], "do-not-disturb", "{view}");
    assert_eq!(u["teams"]["availability"], "DoNotDisturb", "{view}");
    assert_eq!(u["teams"]["activity"], "Presenting", "{view}");
    let devices = u["devices"].as_array().unwrap_or_else(|| panic!("devices: {view}"));
    assert!(devices.iter().any(|d| d["source"] == "csta" && d["device"] == "d1"), "the csta device d1 is listed: {view}");
    let g = &view["graph"];
    assert_eq!(g["settled"], true, "{view}");
    assert_eq!(g["published_known"], true, "{view}");
    assert_eq!(g["published"], "DoNotDisturb", "{view}");
    assert_eq!(g["desired"], "DoNotDisturb", "{view}");

    // A user the directory does not know is 404.
    assert_eq!(http(admin, "GET", "/presence/users/nobody@lab.drbridge.test", Some(ADMIN_TOKEN), None).await.0, 404);
    drop(dr);
}

/// The same DND report from a SIPp PBX (tests/sipp/uas_presence_dnd.xml): SIPp answers the four
/// SUBSCRIBEs (4711 and 4712, dialog and presence) and sends a PIDF NOTIFY with DND in each
/// dialog; drbridge answers every NOTIFY 200 (SIPp fails otherwise) and Graph shows anna
/// DoNotDisturb/Presenting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_pbx_pidf_dnd_makes_do_not_disturb() {
    if !sipp::require("sipp_pbx_pidf_dnd_makes_do_not_disturb") {
        return;
    }
    let stub = graph().await;
    let (_teams, cfg) = lab_cfg(&stub, |s| s.subscribe_pbx = true).await;
    // 4 SUBSCRIBEs and drbridge's OPTIONS keep-alive (its own SIPp call).
    let pbx = Sipp::uas("uas_presence_dnd.xml", cfg.pbx_address).arg("-m").arg("5").limit(Duration::from_secs(20)).start();
    let _dr = start(&cfg);
    expect(&stub, "anna DoNotDisturb/Presenting (PIDF DND from SIPp)", |s| shows(s, ANNA, "DoNotDisturb", "Presenting")).await;
    assert_set_body(&last_accepted(&stub, ANNA).unwrap(), "DoNotDisturb", "Presenting");
    let res = pbx.wait_async().await;
    res.assert_success();
    assert_eq!(res.received().iter().filter(|m| m.starts_with("SUBSCRIBE ")).count(), 4, "{}", res.report());
}
