//! End-to-end calls through the drbridge binary: SIPp (or the Rust UDP peer) as the PBX trunk,
//! the Rust Teams peer as the Microsoft proxies over mutual TLS. Ignored until the B2BUA lands:
//! run them with `cargo test --test calls -- --ignored`.
//!
//! Numbers: PBX extension 4711 is +4681234711 on the Teams side (numbers.to_teams), Teams users
//! are +46812348xx; routes send +46812347xx to the PBX.

mod common;

use common::config::{proxy_host, SBC_FQDN};
use common::hiding::{assert_absent, identifiers};
use common::peer::{Call, ProxyMode, SipPeer};
use common::sipp::{self, Sipp, SippRun};
use common::teams::{teams_sdp, TeamsPeer};
use common::util::{loopback, STEP};
use common::{Drbridge, LabConfig};
use drbridge::sip::msg::{Method, NameAddr, Request, Uri};
use std::time::{Duration, Instant};

const TEAMS_USER: &str = "+4681234801";
const TEAMS_USER_2: &str = "+4681234802";
const PBX_EXT: &str = "4711";
const PBX_EXT_E164: &str = "+4681234711";
const PBX_EXT_2_E164: &str = "+4681234712";
const TEAMS_CALLER: &str = "+46701234567";

struct Lab {
    cfg: LabConfig,
    teams: TeamsPeer,
    /// Keeps drbridge running (killed on drop); its stderr is printed on failure.
    dr: Drbridge,
}

/// Certificates from `drbridge lab-certs`, `proxies` Teams proxies, drbridge started.
async fn lab(proxies: usize, tweak: impl FnOnce(&mut LabConfig)) -> Lab {
    let cfg = LabConfig::new();
    let teams = TeamsPeer::start(&cfg.certs, proxies).await;
    let mut cfg = cfg.with_proxies(&teams.proxy_addrs);
    tweak(&mut cfg);
    let dr = tokio::task::block_in_place(|| Drbridge::start(&cfg));
    let cfg = dr.cfg.clone();
    Lab { cfg, teams, dr }
}

impl Lab {
    /// SIPp as the PBX calling `to` through drbridge.
    fn pbx_calls(&self, scenario: &str, to: &str) -> SippRun {
        Sipp::uac(scenario, self.cfg.pbx_address, self.cfg.pbx_listen, to).start()
    }
    /// SIPp as the PBX trunk waiting for drbridge's call.
    fn pbx_answers(&self, scenario: &str) -> SippRun {
        Sipp::uas(scenario, self.cfg.pbx_address).start()
    }
    /// A Teams call from TEAMS_CALLER to `to` over proxy 0.
    async fn teams_calls(&self, to: &str) -> Call {
        let conn = self.teams.connect_sbc(self.cfg.teams_listen, 0).await;
        self.teams.place_call(&conn, TEAMS_CALLER, to)
    }
}

/// Answers in-dialog requests in `call` (re-INVITE with the mirrored direction, UPDATE 200)
/// until a BYE, which it answers 200 and returns.
async fn serve_until_bye(teams: &TeamsPeer, call: &Call, limit: Duration) -> Vec<Request> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let id = call.call_id.clone();
        let m = teams
            .expect_where("in-dialog request", deadline.saturating_duration_since(Instant::now()), |i| {
                matches!(&i.msg, drbridge::sip::msg::Message::Request(r) if r.call_id() == Some(id.as_str()))
            })
            .await;
        let drbridge::sip::msg::Message::Request(req) = m.msg else { unreachable!() };
        match req.method {
            Method::Invite => {
                let offer = String::from_utf8_lossy(&req.body).into_owned();
                teams.respond(&req, 200, &teams_sdp(50_030, mirror(&offer)), &[]);
            }
            Method::Update => {
                let se = req.headers.get("Session-Expires").unwrap_or("1800").to_string();
                teams.respond(&req, 200, "", &[("Require", "timer"), ("Session-Expires", &se)]);
            }
            Method::Ack => {}
            Method::Bye => {
                teams.respond(&req, 200, "", &[]);
                seen.push(req);
                return seen;
            }
            _ => {
                teams.respond(&req, 200, "", &[]);
            }
        }
        seen.push(req);
    }
}

/// The answer direction for an offer: sendonly -> recvonly, recvonly -> sendonly, inactive ->
/// inactive, else sendrecv.
fn mirror(offer: &str) -> &'static str {
    if offer.contains("a=sendonly") {
        "recvonly"
    } else if offer.contains("a=recvonly") {
        "sendonly"
    } else if offer.contains("a=inactive") {
        "inactive"
    } else {
        "sendrecv"
    }
}

/// Contact and Record-Route toward Teams name the SBC FQDN only, with the contact port.
fn assert_fqdn_only(req: &Request, port: u16) {
    let contact = req.headers.values("Contact");
    assert_eq!(contact.len(), 1, "one Contact: {contact:?}");
    let c = NameAddr::parse(contact[0]).expect("Contact");
    assert_eq!((c.uri.host.as_str(), c.uri.port), (SBC_FQDN, Some(port)), "Contact {}", contact[0]);
    assert_eq!(c.uri.params.get("transport").map(str::to_ascii_lowercase).as_deref(), Some("tls"));
    for rr in req.headers.values("Record-Route") {
        let r = NameAddr::parse(rr).expect("Record-Route");
        assert_eq!(r.uri.host, SBC_FQDN, "Record-Route {rr}");
    }
}

// ------------------------------------------------------------------ PBX -> Teams

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_to_teams_answered_pbx_hangs_up() {
    if !sipp::require("pbx_to_teams_answered_pbx_hangs_up") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let run = lab.pbx_calls("uac_call.xml", TEAMS_USER);
    let call = lab.teams.answer_call(STEP).await;
    let inv = &call.invite;
    // what Microsoft requires of the INVITE
    let ruri = Uri::parse(&inv.uri).expect("Request-URI");
    assert_eq!(ruri.user.as_deref(), Some(TEAMS_USER));
    assert_eq!(ruri.host, "sip.pstnhub.microsoft.com");
    assert_eq!(ruri.params.get("user"), Some("phone"));
    assert!(inv.from_hdr().expect("From").uri.user.as_deref() == Some(PBX_EXT_E164), "From {:?}", inv.headers.get("From"));
    assert!(inv.headers.get("X-MS-SBC").is_some_and(|v| v.starts_with("drbridge/")), "X-MS-SBC");
    assert_fqdn_only(inv, lab.cfg.teams_listen.port());
    serve_until_bye(&lab.teams, &call, STEP).await;
    run.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_to_teams_answered_teams_hangs_up() {
    if !sipp::require("pbx_to_teams_answered_teams_hangs_up") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let run = lab.pbx_calls("uac_call_remote_bye.xml", TEAMS_USER);
    let mut call = lab.teams.answer_call(STEP).await;
    assert_eq!(lab.teams.bye(&mut call, STEP).await.status, 200);
    run.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_cancels_call_to_teams() {
    if !sipp::require("pbx_cancels_call_to_teams") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let run = lab.pbx_calls("uac_cancel.xml", TEAMS_USER);
    let (inv, conn) = lab.teams.expect_request(Method::Invite, STEP).await;
    lab.teams.respond(&inv, 180, "", &[]);
    let (cancel, _) = lab.teams.expect_request(Method::Cancel, STEP).await;
    lab.teams.respond(&cancel, 200, "", &[]);
    lab.teams.respond(&inv, 487, "", &[]);
    lab.teams.expect_ack(&lab.teams.accept_call(&inv, &conn), STEP).await;
    run.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_to_busy_teams_user() {
    if !sipp::require("pbx_to_busy_teams_user") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let run = lab.pbx_calls("uac_busy.xml", TEAMS_USER);
    let (inv, conn) = lab.teams.expect_request(Method::Invite, STEP).await;
    lab.teams.respond(&inv, 486, "", &[]);
    lab.teams.expect_ack(&lab.teams.accept_call(&inv, &conn), STEP).await;
    run.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_holds_and_resumes() {
    if !sipp::require("pbx_holds_and_resumes") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let run = lab.pbx_calls("uac_hold.xml", TEAMS_USER);
    let call = lab.teams.answer_call(STEP).await;
    let seen = serve_until_bye(&lab.teams, &call, Duration::from_secs(15)).await;
    let reinvites: Vec<String> =
        seen.iter().filter(|r| r.method == Method::Invite).map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    assert_eq!(reinvites.len(), 2, "hold and resume re-INVITEs");
    // Teams understands only a=inactive as hold
    assert!(reinvites[0].contains("a=inactive") || reinvites[0].contains("a=sendonly"), "{}", reinvites[0]);
    assert!(!reinvites[1].contains("a=inactive") && !reinvites[1].contains("a=sendonly"), "{}", reinvites[1]);
    run.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_refreshes_session_with_update() {
    if !sipp::require("pbx_refreshes_session_with_update") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let run = lab.pbx_calls("uac_refresh.xml", TEAMS_USER);
    let call = lab.teams.answer_call(STEP).await;
    serve_until_bye(&lab.teams, &call, Duration::from_secs(15)).await;
    run.wait_async().await.assert_success();
}

// ------------------------------------------------------------------ Teams -> PBX

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_to_pbx_answered_teams_hangs_up() {
    if !sipp::require("teams_to_pbx_answered_teams_hangs_up") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let pbx = lab.pbx_answers("uas_answer.xml");
    let mut call = lab.teams_calls(PBX_EXT_E164).await;
    let ok = lab.teams.await_answer(&mut call, STEP).await;
    assert_eq!(ok.status, 200);
    assert!(ok.headers.get("X-MS-SBC").is_some() || ok.headers.get("Server").is_some());
    let contact = ok.headers.values("Contact");
    let c = NameAddr::parse(contact.first().copied().unwrap_or("")).expect("Contact in 200");
    assert_eq!(c.uri.host, SBC_FQDN);
    lab.teams.ack(&mut call).await;
    assert_eq!(lab.teams.bye(&mut call, STEP).await.status, 200);
    let res = pbx.wait_async().await;
    res.assert_success();
    // the PBX got the extension, not the E.164 number
    let invite = res.received().into_iter().find(|m| m.starts_with("INVITE ")).expect("INVITE at the PBX");
    assert!(invite.starts_with(&format!("INVITE sip:{PBX_EXT}@")), "{invite}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_to_pbx_answered_pbx_hangs_up() {
    if !sipp::require("teams_to_pbx_answered_pbx_hangs_up") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let pbx = lab.pbx_answers("uas_answer_bye.xml");
    let mut call = lab.teams_calls(PBX_EXT_E164).await;
    assert_eq!(lab.teams.await_answer(&mut call, STEP).await.status, 200);
    lab.teams.ack(&mut call).await;
    let bye = lab.teams.expect_bye(&call, STEP).await;
    // drbridge's BYE follows the Teams route set: Route to the proxy, R-URI = Teams Contact
    assert_eq!(bye.uri.as_str(), "sip:sip-du-a-eu.pstnhub.microsoft.com:443;transport=tls");
    pbx.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_cancels_call_to_pbx() {
    if !sipp::require("teams_cancels_call_to_pbx") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let pbx = lab.pbx_answers("uas_ringing_wait_cancel.xml");
    let mut call = lab.teams_calls(PBX_EXT_E164).await;
    let ringing = lab
        .teams
        .expect_where("180", STEP, |i| matches!(&i.msg, drbridge::sip::msg::Message::Response(r) if r.status == 180))
        .await;
    drop(ringing);
    assert_eq!(lab.teams.cancel(&call, STEP).await.status, 200);
    assert_eq!(lab.teams.await_answer(&mut call, STEP).await.status, 487);
    pbx.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_to_busy_pbx_extension() {
    if !sipp::require("teams_to_busy_pbx_extension") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let pbx = lab.pbx_answers("uas_busy.xml");
    let mut call = lab.teams_calls(PBX_EXT_E164).await;
    assert_eq!(lab.teams.await_answer(&mut call, STEP).await.status, 486);
    pbx.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_holds_and_resumes() {
    if !sipp::require("teams_holds_and_resumes") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let pbx = lab.pbx_answers("uas_hold.xml");
    let mut call = lab.teams_calls(PBX_EXT_E164).await;
    assert_eq!(lab.teams.await_answer(&mut call, STEP).await.status, 200);
    lab.teams.ack(&mut call).await;
    let held = lab.teams.reinvite(&mut call, "inactive").await;
    assert_eq!(held.status, 200);
    assert!(String::from_utf8_lossy(&held.body).contains("a=inactive"), "hold answer");
    assert_eq!(lab.teams.reinvite(&mut call, "sendrecv").await.status, 200);
    assert_eq!(lab.teams.bye(&mut call, STEP).await.status, 200);
    pbx.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_refreshes_session_with_update() {
    if !sipp::require("teams_refreshes_session_with_update") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let pbx = lab.pbx_answers("uas_answer.xml");
    let mut call = lab.teams_calls(PBX_EXT_E164).await;
    let ok = lab.teams.await_answer(&mut call, STEP).await;
    assert_eq!(ok.status, 200);
    lab.teams.ack(&mut call).await;
    let refreshed = lab.teams.refresh(&mut call).await;
    assert_eq!(refreshed.status, 200);
    assert!(refreshed.headers.get("Session-Expires").is_some(), "Session-Expires in the refresh answer");
    assert_eq!(lab.teams.bye(&mut call, STEP).await.status, 200);
    pbx.wait_async().await.assert_success();
}

// ------------------------------------------------------------------ REFER from Teams

/// PBX 4711 calls Teams user A, A transfers to Teams user B: 202, NOTIFY 100 then 200, new
/// INVITE to B, re-INVITE toward the PBX, BYE to A; B hangs up, the PBX gets BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_transfers_pbx_caller_to_teams_number() {
    if !sipp::require("teams_transfers_pbx_caller_to_teams_number") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let run = lab.pbx_calls("uac_call_remote_bye.xml", TEAMS_USER);
    let mut a = lab.teams.answer_call(STEP).await;
    let target = format!("sip:{TEAMS_USER_2}@sip.pstnhub.microsoft.com;user=phone");
    let (refer_resp, b) = tokio::join!(lab.teams.refer(&mut a, &target), async {
        let (inv, conn) = lab.teams.expect_request(Method::Invite, STEP).await;
        assert!(inv.uri.starts_with(&format!("sip:{TEAMS_USER_2}@")), "new INVITE to the target: {}", inv.uri);
        lab.teams.respond(&inv, 180, "", &[]);
        lab.teams.respond(&inv, 200, &teams_sdp(50_040, "sendrecv"), &[]);
        let b = lab.teams.accept_call(&inv, &conn);
        lab.teams.expect_ack(&b, STEP).await;
        b
    });
    assert_eq!(refer_resp.status, 202);
    check_notifies(&lab.teams, &a).await;
    lab.teams.expect_bye(&a, STEP).await;
    // The PBX caller is re-INVITEd to the target's media; hang up only once that is done.
    assert!(tokio::task::block_in_place(|| lab.dr.wait_log("transfer completed", STEP)), "re-INVITE toward the PBX not completed");
    let mut b = b;
    assert_eq!(lab.teams.bye(&mut b, STEP).await.status, 200);
    let res = run.wait_async().await;
    res.assert_success();
    assert!(res.received().iter().filter(|m| m.starts_with("INVITE ")).count() >= 1, "re-INVITE toward the PBX:\n{}", res.report());
}

/// NOTIFYs of the REFER: message/sipfrag 100 Trying then 200 OK (each answered 200).
async fn check_notifies(teams: &TeamsPeer, a: &Call) {
    let mut frags = Vec::new();
    while !frags.last().is_some_and(|f: &String| f.starts_with("SIP/2.0 2")) {
        let n = teams.expect_in_dialog(a, Method::Notify, STEP).await;
        assert!(n.content_type().is_some_and(|c| c.starts_with("message/sipfrag")), "NOTIFY Content-Type");
        assert!(n.headers.get("Event").is_some_and(|e| e.starts_with("refer")), "Event: refer");
        teams.respond(&n, 200, "", &[]);
        frags.push(String::from_utf8_lossy(&n.body).trim().to_string());
        assert!(frags.len() <= 4, "{frags:?}");
    }
    assert!(frags[0].starts_with("SIP/2.0 100"), "{frags:?}");
}

/// Same, transferred to PBX extension 4712: the PBX trunk is a Rust UDP peer here, as one
/// SIPp cannot both place the first call and take the transferred one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_transfers_pbx_caller_to_pbx_extension() {
    let lab = lab(1, |_| {}).await;
    let (pbx, inv) = pbx_peer_invite(&lab).await;
    let dr = lab.cfg.pbx_listen;
    let mut caller = pbx.send_invite(&pbx.udp_to(dr), inv);
    let mut a = lab.teams.answer_call(STEP).await;
    assert_eq!(pbx.await_answer(&mut caller, STEP).await.status, 200);
    pbx.ack(&mut caller).await;

    let target = format!("sip:{PBX_EXT_2_E164}@sip.pstnhub.microsoft.com;user=phone");
    let (refer_resp, c) = tokio::join!(lab.teams.refer(&mut a, &target), async {
        let (inv, conn) = pbx.expect_request(Method::Invite, STEP).await;
        if inv.call_id() == Some(caller.call_id.as_str()) {
            panic!("expected the new INVITE to 4712 first, got a re-INVITE");
        }
        assert!(inv.uri.starts_with("sip:4712@"), "new INVITE to the extension: {}", inv.uri);
        pbx.respond(&inv, 200, &pbx_sdp("sendrecv"), &[]);
        let c = pbx.accept_call(&inv, &conn);
        pbx.expect_ack(&c, STEP).await;
        c
    });
    assert_eq!(refer_resp.status, 202);
    check_notifies(&lab.teams, &a).await;
    lab.teams.expect_bye(&a, STEP).await;
    // the remaining party (the PBX caller) is re-INVITEd to the new media
    let re = pbx.expect_in_dialog(&caller, Method::Invite, STEP).await;
    pbx.respond(&re, 200, &pbx_sdp("sendrecv"), &[]);
    pbx.expect_ack(&caller, STEP).await;
    let mut c = c;
    assert_eq!(pbx.bye(&mut c, STEP).await.status, 200);
    pbx.expect_bye(&caller, STEP).await;
}

/// A PBX call that Teams lets ring past `timers.ring_timeout_secs`: drbridge CANCELs the Teams
/// leg and answers the PBX 408 (the PBX is the Rust UDP peer, to see the final response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_call_given_up_at_the_ring_timeout() {
    let lab = lab(1, |c| c.ring_timeout_secs = 5).await;
    let (pbx, inv) = pbx_peer_invite(&lab).await;
    let dr = lab.cfg.pbx_listen;
    let started = Instant::now();
    let caller = pbx.send_invite(&pbx.udp_to(dr), inv);
    let (t_inv, _) = lab.teams.expect_request(Method::Invite, STEP).await;
    lab.teams.respond(&t_inv, 180, "", &[]);
    let (cancel, _) = lab.teams.expect_request(Method::Cancel, Duration::from_secs(5) + STEP).await;
    assert!(started.elapsed() >= Duration::from_secs(5), "CANCEL before the ring timeout: {:?}", started.elapsed());
    assert_eq!(cancel.call_id(), t_inv.call_id());
    lab.teams.respond(&cancel, 200, "", &[]);
    lab.teams.respond(&t_inv, 487, "", &[]);
    let fin = pbx.expect_final(&caller.call_id, Method::Invite, STEP).await;
    assert_eq!(fin.status, 408, "the PBX caller is told the call timed out");
}

/// A Call-ID that drbridge's router sends to signalling shard `shard` of 2.
fn call_id_on_shard(shard: usize, tag: &str) -> String {
    (0..).map(|i| format!("{tag}-{i}@teams.test")).find(|id| drbridge::b2bua::shard_of(id, 2) == shard).expect("some Call-ID lands there")
}

/// Two signalling shards; Teams replaces its leg of an answered call (INVITE with Replaces)
/// with a Call-ID that hashes to the other shard. The INVITE must reach the shard holding the
/// replaced dialog, and so must the rest of the new dialog (ACK, BYE): without the pin the
/// INVITE gets 481 and the BYE never reaches the PBX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_with_replaces_reaches_the_shard_of_the_replaced_dialog() {
    let lab = lab(1, |c| c.signalling_threads = 2).await;
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let conn = lab.teams.connect_sbc(lab.cfg.teams_listen, 0).await;
    let port = lab.cfg.teams_listen.port();
    let mut inv = lab.teams.teams_invite(TEAMS_CALLER, PBX_EXT_E164, port, 0, &teams_sdp(50_000, "sendrecv"));
    inv.headers.set("Call-ID", call_id_on_shard(0, "first"));
    let mut a = lab.teams.send_invite(&conn, inv);
    let pbx_call = pbx.answer_call_with(&pbx_sdp("sendrecv"), STEP).await;
    assert_eq!(lab.teams.await_answer(&mut a, STEP).await.status, 200);
    lab.teams.ack(&mut a).await;

    // the replacing call, from another Teams party, on a Call-ID of shard 1
    let mut rep = lab.teams.teams_invite("+46701234999", PBX_EXT_E164, port, 0, &teams_sdp(50_030, "sendrecv"));
    rep.headers.set("Call-ID", call_id_on_shard(1, "replacing"));
    let dr_tag = a.remote_tag.clone().expect("drbridge's tag");
    rep.headers.push("Replaces", format!("{};to-tag={dr_tag};from-tag={}", a.call_id, a.local_tag));
    let mut b = lab.teams.send_invite(&conn, rep);
    // drbridge offers the new party's media to the PBX on the existing PBX dialog
    let reinv = pbx.expect_in_dialog(&pbx_call, Method::Invite, STEP).await;
    assert!(String::from_utf8_lossy(&reinv.body).contains("m=audio"), "a re-INVITE with SDP");
    pbx.respond(&reinv, 200, &pbx_sdp("sendrecv"), &[]);
    pbx.expect_ack(&pbx_call, STEP).await;
    assert_eq!(lab.teams.await_answer(&mut b, STEP).await.status, 200, "the replacing INVITE is answered");
    lab.teams.ack(&mut b).await;
    // the replaced Teams dialog is ended by drbridge
    lab.teams.expect_bye(&a, STEP).await;
    // the new dialog's BYE reaches the call on shard 0, which hangs up the PBX
    assert_eq!(lab.teams.bye(&mut b, STEP).await.status, 200);
    pbx.expect_bye(&pbx_call, STEP).await;
}

/// The PBX trunk as a Rust UDP peer on `pbx_address`, and its INVITE from PBX_EXT to TEAMS_USER.
async fn pbx_peer_invite(lab: &Lab) -> (SipPeer, Request) {
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let dr = lab.cfg.pbx_listen;
    let mut inv = pbx.new_request(Method::Invite, &format!("sip:{TEAMS_USER}@{dr}"), &format!("<sip:{PBX_EXT}@{}>", lab.cfg.pbx_address), &format!("<sip:{TEAMS_USER}@{dr}>"));
    inv.headers.push("Content-Type", "application/sdp");
    inv.body = bytes::Bytes::from(pbx_sdp("sendrecv"));
    (pbx, inv)
}

fn pbx_sdp(direction: &str) -> String {
    format!("v=0\r\no=PBX 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n")
}

// ------------------------------------------------------------------ proxies: failover, OPTIONS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_from_silent_proxy_within_failover_time() {
    if !sipp::require("failover_from_silent_proxy_within_failover_time") {
        return;
    }
    let lab = lab(2, |c| c.failover_timeout_secs = 2).await;
    lab.teams.set_mode(0, ProxyMode::Silent);
    let start = Instant::now();
    let run = lab.pbx_calls("uac_call_remote_bye.xml", TEAMS_USER);
    let (inv, conn) = lab.teams.expect_request_on(1, Method::Invite, Duration::from_secs(8)).await;
    let took = start.elapsed();
    assert!(took <= Duration::from_secs(2 + 3), "failover took {took:?}");
    assert_eq!(lab.teams.requests(Some(0), &Method::Invite).len(), 1, "first proxy tried first");
    assert_eq!(Uri::parse(&inv.uri).expect("R-URI").host, proxy_host(1));
    lab.teams.respond(&inv, 200, &teams_sdp(50_050, "sendrecv"), &[]);
    let mut call = lab.teams.accept_call(&inv, &conn);
    lab.teams.expect_ack(&call, STEP).await;
    assert_eq!(lab.teams.bye(&mut call, STEP).await.status, 200);
    run.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_503() {
    if !sipp::require("failover_on_503") {
        return;
    }
    let lab = lab(2, |_| {}).await;
    lab.teams.set_mode(0, ProxyMode::RejectInvite(503));
    let run = lab.pbx_calls("uac_call.xml", TEAMS_USER);
    let (inv, conn) = lab.teams.expect_request_on(1, Method::Invite, STEP).await;
    lab.teams.respond(&inv, 200, &teams_sdp(50_060, "sendrecv"), &[]);
    let call = lab.teams.accept_call(&inv, &conn);
    lab.teams.expect_ack(&call, STEP).await;
    lab.teams.expect_bye(&call, STEP).await;
    run.wait_async().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_603_is_not_retried() {
    if !sipp::require("decline_603_is_not_retried") {
        return;
    }
    let lab = lab(2, |_| {}).await;
    lab.teams.set_mode(0, ProxyMode::RejectInvite(603));
    let run = lab.pbx_calls("uac_declined.xml", TEAMS_USER);
    let res = run.wait_async().await;
    res.assert_success();
    lab.teams.assert_no_request(Some(1), Method::Invite, Duration::from_secs(3)).await;
    assert_eq!(lab.teams.requests(Some(0), &Method::Invite).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_keepalive_to_every_proxy() {
    // 5 s is the shortest interval the configuration accepts.
    let lab = lab(2, |c| c.teams_options_interval_secs = 5).await;
    let port = lab.cfg.teams_listen.port();
    for p in 0..2 {
        let e = lab.teams.expect_logged("OPTIONS", Duration::from_secs(5), |e| e.proxy == Some(p) && e.is_request(&Method::Options)).await;
        let o = e.request().expect("request");
        assert_eq!(o.headers.values("Contact"), vec![format!("<sip:{SBC_FQDN}:{port};transport=tls>").as_str()]);
        assert!(Uri::parse(&o.uri).expect("R-URI").host.ends_with("pstnhub.microsoft.com"), "{}", o.uri);
    }
    // one every interval: a second round comes
    lab.teams
        .expect_logged("second OPTIONS", Duration::from_secs(8), |e| e.proxy == Some(0) && e.is_request(&Method::Options) && e.at.elapsed() < Duration::from_millis(900))
        .await;
    assert!(lab.teams.tls_failures().is_empty(), "{:?}", lab.teams.tls_failures());
}

// ------------------------------------------------------------------ topology hiding

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_hidden_both_ways_pbx_to_teams() {
    if !sipp::require("topology_hidden_both_ways_pbx_to_teams") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let run = lab.pbx_calls("uac_call.xml", TEAMS_USER);
    let call = lab.teams.answer_call(STEP).await;
    serve_until_bye(&lab.teams, &call, STEP).await;
    let res = run.wait_async().await;
    res.assert_success();
    check_hiding(&lab, &res, &call);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_hidden_both_ways_teams_to_pbx() {
    if !sipp::require("topology_hidden_both_ways_teams_to_pbx") {
        return;
    }
    let lab = lab(1, |_| {}).await;
    let pbx = lab.pbx_answers("uas_answer.xml");
    let mut call = lab.teams_calls(PBX_EXT_E164).await;
    assert_eq!(lab.teams.await_answer(&mut call, STEP).await.status, 200);
    lab.teams.ack(&mut call).await;
    assert_eq!(lab.teams.bye(&mut call, STEP).await.status, 200);
    let res = pbx.wait_async().await;
    res.assert_success();
    check_hiding(&lab, &res, &call);
}

/// With media anchored on drbridge, the SDP bodies are checked too (no far-side address, no
/// crypto or ICE lines toward the PBX). Set to false to check the signalling alone.
const SDP_ANCHORED: bool = true;

/// The start line and headers of each message, without bodies (unless SDP is anchored).
fn signalling_only(messages: &[String]) -> String {
    messages
        .iter()
        .map(|m| {
            let m = m.replace("\r\n", "\n");
            if SDP_ANCHORED { m } else { m.split("\n\n").next().unwrap_or("").to_string() }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_hiding(lab: &Lab, pbx: &common::SippResult, teams_call: &Call) {
    let pbx_addr = lab.cfg.pbx_address.to_string();
    let mut pbx_secrets = identifiers(&pbx.sent());
    pbx_secrets.push(pbx_addr);
    pbx_secrets.push("SIPpTag".into());
    pbx_secrets.push("pbx-sipp".into());
    let teams_received: Vec<String> = lab.teams.log().iter().map(|e| String::from_utf8_lossy(&e.raw).into_owned()).collect();
    assert_absent("the Teams side", &signalling_only(&teams_received), &pbx_secrets);

    let mut teams_secrets = identifiers(&lab.teams.log().iter().map(|e| String::from_utf8_lossy(&e.raw).into_owned()).collect::<Vec<_>>());
    teams_secrets.retain(|s| !s.is_empty());
    teams_secrets.push(teams_call.call_id.clone());
    for s in ["pstnhub.microsoft.com", "sip-du-a-eu", "X-MS-Teams", "X-MS-UserLocation", "a=crypto", "a=candidate", "Microsoft.PSTNHub"] {
        teams_secrets.push(s.to_string());
    }
    teams_secrets.extend(lab.teams.proxy_addrs.iter().map(|a| a.to_string()));
    // drbridge's own Teams-side identifiers, learned from what the Teams side received
    assert_absent("the PBX side", &signalling_only(&pbx.received()), &teams_secrets);
}

// ------------------------------------------------------------------ configuration

#[test]
fn check_accepts_the_lab_config() {
    let cfg = LabConfig::with_rcgen_certs().with_proxies(&[loopback(15061), loopback(15062)]);
    std::fs::write(cfg.config_path(), cfg.to_toml()).expect("write");
    let (status, out) = Drbridge::check_file(&cfg.config_path());
    assert!(status.success(), "{out}");
}

#[test]
fn check_refuses_bad_configs() {
    let cfg = LabConfig::with_rcgen_certs().with_proxies(&[loopback(15061)]);
    let good = cfg.to_toml();
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown key", good.replace("[sbc]\n", "[sbc]\nbogus_key = 1\n"), "bogus_key"),
        ("bad address", good.replacen(&format!("listen = \"{}\"", cfg.pbx_listen), "listen = \"not-an-address\"", 1), "listen"),
        ("missing cert", good.replace(&cfg.certs.sbc_cert.display().to_string(), &cfg.dir.join("certs/missing.crt").display().to_string()), "tls_cert"),
    ];
    for (what, text, key) in cases {
        assert_ne!(text, good, "{what}: the test did not change the config");
        let path = cfg.dir.join("bad.toml");
        std::fs::write(&path, &text).expect("write");
        let (status, out) = Drbridge::check_file(&path);
        assert!(!status.success(), "{what}: accepted:\n{text}");
        assert!(out.contains(key), "{what}: message does not name {key}: {out}");
        assert!(out.contains("bad.toml"), "{what}: message does not name the file: {out}");
    }
}
