//! Teams -> PBX presence through the drbridge binary: the Graph stand-in (tests/common/graph.rs)
//! plays the identity platform and Graph (a presence monitor with a rotating refresh token,
//! presence subscriptions, change notifications POSTed to drbridge's admin webhook,
//! getPresencesByUserId), and a Rust UDP peer on the PBX side SUBSCRIBEs to an extension's
//! presence and receives drbridge's PIDF NOTIFYs.
//!
//! Lab users (tests/common/config.rs LAB_USERS_TOML): anna 4711 and bo 4712 on the PBX, carl and
//! dora in Teams. Every wait is bounded and wakes on the stand-in's requests or the peer's
//! messages.

mod common;

use common::config::PresenceSpec;
use common::graph::GraphStub;
use common::peer::{Inbound, SipPeer};
use common::teams::TeamsPeer;
use common::util::{free_port, loopback, STEP};
use common::{Drbridge, LabConfig};
use drbridge::sip::msg::{Message, Method, Request};
use std::time::Duration;

const TENANT: &str = "contoso.example";
const CLIENT_ID: &str = "0d7f1e2c-3b4a-4c5d-8e9f-a0b1c2d3e4f5";
const SECRET: &str = "lab-client-secret~not-a-real-one";
const ADMIN_TOKEN: &str = "lab-admin-token-0123456789";
const CLIENT_STATE: &str = "lab-webhook-client-state-42";
const MONITOR: &str = "presence-monitor-1@lab.drbridge.test";
const FIRST_REFRESH_TOKEN: &str = "monitor-refresh-token-0";
const WAIT: Duration = Duration::from_secs(20);

const USERS: [(&str, &str); 4] = [
    ("anna.andersson@lab.drbridge.test", "6f1a0a11-0000-4000-8000-000000004711"),
    ("bo.berg@lab.drbridge.test", "6f1a0a11-0000-4000-8000-000000004712"),
    ("carl.carlsson@lab.drbridge.test", "6f1a0a11-0000-4000-8000-000000004801"),
    ("dora.dahl@lab.drbridge.test", "6f1a0a11-0000-4000-8000-000000004802"),
];
const ANNA_ID: &str = USERS[0].1;

struct Lab {
    stub: GraphStub,
    cfg: LabConfig,
    _teams: TeamsPeer,
    dr: Drbridge,
}

async fn lab() -> Lab {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    for (upn, id) in USERS {
        stub.add_user(upn, id);
    }
    stub.add_monitor(MONITOR, FIRST_REFRESH_TOKEN);
    let cfg = LabConfig::new();
    let teams = TeamsPeer::start(&cfg.certs, 1).await;
    let token_file = cfg.dir.join("monitor-1.token");
    std::fs::write(&token_file, format!("{FIRST_REFRESH_TOKEN}\n")).expect("write monitor token");
    let admin = loopback(free_port());
    let mut s = PresenceSpec::new(TENANT, CLIENT_ID, SECRET, &stub.identity_base(), &stub.graph_base());
    s.extra = format!(
        "\n[presence.teams_to_pbx]\nenabled = true\nnotification_url = \"http://{admin}/graph/webhook\"\n\
         [[presence.teams_to_pbx.monitors]]\nupn = \"{MONITOR}\"\nrefresh_token_file = \"{}\"\n",
        token_file.display()
    );
    let mut cfg = cfg.with_proxies(&teams.proxy_addrs).with_presence(s).with_admin(admin, ADMIN_TOKEN);
    if let Some(a) = cfg.admin.as_mut() {
        a.webhook_client_state = Some(CLIENT_STATE.into());
    }
    let dr = tokio::task::block_in_place(|| Drbridge::start(&cfg));
    let cfg = dr.cfg.clone();
    Lab { stub, cfg, _teams: teams, dr }
}

fn subscribe(pbx: &SipPeer, lab: &Lab, ext: &str, expires: u32) -> Request {
    subscribe_to(pbx, lab, ext, expires, "presence", "application/pidf+xml")
}

fn subscribe_to(pbx: &SipPeer, lab: &Lab, ext: &str, expires: u32, event: &str, accept: &str) -> Request {
    let dr = lab.cfg.pbx_listen;
    let mut r = pbx.new_request(Method::Subscribe, &format!("sip:{ext}@{dr}"), &format!("<sip:blf-panel@{}>", lab.cfg.pbx_address), &format!("<sip:{ext}@{dr}>"));
    r.headers.push("Event", event.to_string());
    r.headers.push("Accept", accept.to_string());
    r.headers.push("Expires", expires.to_string());
    r
}

/// drbridge fetched every lab user at once: the initial fetch of the subscription for everybody
/// (made once all object ids resolved; it follows drbridge's recording of that subscription).
fn fetched_everybody(s: &GraphStub) -> bool {
    s.requests().iter().filter(|r| r.path.ends_with("/getPresencesByUserId")).any(|r| {
        let ids = r.json()["ids"].as_array().cloned().unwrap_or_default();
        USERS.iter().all(|(_, id)| ids.iter().any(|v| v.as_str() == Some(id)))
    })
}

fn is_notify(i: &Inbound) -> bool {
    matches!(&i.msg, Message::Request(r) if r.method == Method::Notify)
}

/// NOTIFYs from drbridge, each answered 200, until one whose body contains `needle`.
async fn notify_containing(pbx: &SipPeer, needle: &str) -> Request {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let i = pbx.expect_where("NOTIFY from drbridge", left, is_notify).await;
        let Message::Request(n) = i.msg else { unreachable!() };
        pbx.respond_on(&i.conn, &n, 200, "", &[]);
        if String::from_utf8_lossy(&n.body).contains(needle) {
            return n;
        }
    }
}

/// drbridge subscribes to the lab users' presence with the monitor's token (the refresh token
/// rotates and is written back to its file); a PBX-side watcher of 4711 gets a NOTIFY at once;
/// when anna sets Do Not Disturb in Teams, Graph's change notification makes drbridge fetch her
/// presence and NOTIFY the watcher a PIDF saying "Do Not Disturb"; a reauthorizationRequired
/// lifecycle event is answered with a reauthorize.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_presence_reaches_a_pbx_watcher() {
    let lab = lab().await;
    let all = |s: &GraphStub| s.subscriptions().iter().any(|x| !x.expired() && USERS.iter().all(|(_, id)| x.covers(id)));
    assert!(lab.stub.wait_until(WAIT, all).await, "no subscription covering the directory: {:?}\n{}", lab.stub.subscriptions(), lab.dr.stderr());
    // the one covering everybody: drbridge re-plans while object ids resolve, and deletes a
    // subscription for fewer users once the new one is up
    let sub = lab.stub.subscriptions().into_iter().find(|x| !x.expired() && USERS.iter().all(|(_, id)| x.covers(id))).expect("subscription");
    assert_eq!(sub.monitor, MONITOR, "created with the monitor's delegated token");
    assert_eq!(sub.client_state.as_deref(), Some(CLIENT_STATE));
    assert!(sub.notification_url.ends_with("/graph/webhook"));
    // the rotated refresh token is what the file holds now
    let token_file = lab.cfg.dir.join("monitor-1.token");
    let rotated = lab.stub.monitor_refresh_token(MONITOR).expect("monitor known");
    assert_ne!(rotated, FIRST_REFRESH_TOKEN, "the stand-in rotates refresh tokens");
    let on_file = || std::fs::read_to_string(&token_file).unwrap_or_default().trim().to_string();
    let saved = lab.stub.wait_until(WAIT, |s| s.monitor_refresh_token(MONITOR).is_some_and(|t| t == on_file())).await;
    assert!(saved, "rotated token not written back: file {:?}", on_file());
    assert!(!lab.dr.stderr().contains(&rotated) && !lab.dr.stderr().contains(FIRST_REFRESH_TOKEN), "a refresh token reached the log");

    // the PBX-side watcher
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let conn = pbx.udp_to(lab.cfg.pbx_listen);
    let req = subscribe(&pbx, &lab, "4711", 600);
    pbx.send_request(&conn, &req);
    let ok = pbx.expect_final(req.call_id().unwrap(), Method::Subscribe, STEP).await;
    assert_eq!((ok.status, ok.headers.get("Expires")), (200, Some("600")));
    let first = pbx.expect_where("first NOTIFY", STEP, is_notify).await;
    let Message::Request(n) = &first.msg else { unreachable!() };
    assert_eq!(n.headers.get("Event"), Some("presence"));
    assert!(n.headers.get("Subscription-State").is_some_and(|s| s.starts_with("active;expires=")));
    pbx.respond_on(&first.conn, n, 200, "", &[]);

    lab.stub.set_user_presence(ANNA_ID, "DoNotDisturb", "Presenting");
    let statuses = lab.stub.notify_presence_change(ANNA_ID).await;
    assert!(!statuses.is_empty() && statuses.iter().all(|s| (200..300).contains(s)), "webhook answers: {statuses:?}");
    let dnd = notify_containing(&pbx, "Do Not Disturb").await;
    assert_eq!(dnd.content_type(), Some("application/pidf+xml"));
    let body = String::from_utf8_lossy(&dnd.body).to_string();
    assert!(body.contains("entity=\"sip:4711@") && body.contains("<rpid:busy/>") && body.contains("Teams: DoNotDisturb/Presenting"), "{body}");

    // back to Available
    lab.stub.set_user_presence(ANNA_ID, "Available", "Available");
    lab.stub.notify_presence_change(ANNA_ID).await;
    let avail = notify_containing(&pbx, "<dm:note>Available</dm:note>").await;
    assert!(String::from_utf8_lossy(&avail.body).contains("<basic>open</basic>"));

    // a Teams-only user is watched by number: carl, in a Teams call
    let carl = subscribe(&pbx, &lab, "+4681234801", 600);
    pbx.send_request(&conn, &carl);
    assert_eq!(pbx.expect_final(carl.call_id().unwrap(), Method::Subscribe, STEP).await.status, 200);
    lab.stub.set_user_presence(USERS[2].1, "Busy", "InACall");
    lab.stub.notify_presence_change(USERS[2].1).await;
    let busy = notify_containing(&pbx, "Teams: Busy/InACall").await;
    assert_eq!(busy.call_id(), carl.call_id(), "to carl's watcher");
    assert!(String::from_utf8_lossy(&busy.body).contains("entity=\"sip:+4681234801@"));
    // and by a busy lamp field (dialog package): one confirmed dialog while in a Teams call
    let blf = subscribe_to(&pbx, &lab, "+4681234801", 600, "dialog", "application/dialog-info+xml");
    pbx.send_request(&conn, &blf);
    assert_eq!(pbx.expect_final(blf.call_id().unwrap(), Method::Subscribe, STEP).await.status, 200);
    let lamp = notify_containing(&pbx, "<state>confirmed</state>").await;
    assert_eq!((lamp.call_id(), lamp.headers.get("Event")), (blf.call_id(), Some("dialog")));
    assert_eq!(lamp.content_type(), Some("application/dialog-info+xml"));
    assert!(String::from_utf8_lossy(&lamp.body).contains("version=\"0\""), "the first NOTIFY of the subscription is version 0");

    // a lifecycle event: drbridge reauthorizes the subscription
    assert_eq!(lab.stub.send_lifecycle(&sub.id, "reauthorizationRequired").await.map(|s| (200..300).contains(&s)), Some(true));
    let reauthorized = lab.stub.wait_until(WAIT, |s| s.subscription(&sub.id).is_some_and(|x| x.reauthorizations >= 1)).await;
    assert!(reauthorized, "no reauthorize after reauthorizationRequired:\n{}", lab.dr.stderr());
}

/// A forged notification (wrong clientState) changes nothing: no fetch, no NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_without_our_client_state_is_ignored() {
    let lab = lab().await;
    let covered = |s: &GraphStub| s.subscriptions().iter().any(|x| !x.expired() && USERS.iter().all(|(_, id)| x.covers(id)));
    assert!(lab.stub.wait_until(WAIT, covered).await);
    // settled: the subscription for everybody made its initial fetch (an earlier one, for the
    // users resolved first, is replaced and its users fetched again)
    assert!(lab.stub.wait_until(WAIT, fetched_everybody).await);
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let conn = pbx.udp_to(lab.cfg.pbx_listen);
    let req = subscribe(&pbx, &lab, "4711", 600);
    pbx.send_request(&conn, &req);
    assert_eq!(pbx.expect_final(req.call_id().unwrap(), Method::Subscribe, STEP).await.status, 200);
    let first = pbx.expect_where("first NOTIFY", STEP, is_notify).await;
    let Message::Request(n) = &first.msg else { unreachable!() };
    pbx.respond_on(&first.conn, n, 200, "", &[]);
    // the initial fetch has happened once drbridge NOTIFYs anna's Offline state (the stand-in's
    // default) or already did in the first NOTIFY
    if !String::from_utf8_lossy(&n.body).contains("Offline") {
        notify_containing(&pbx, "Offline").await;
    }
    let fetched_ids = || -> Vec<String> {
        lab.stub
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/getPresencesByUserId"))
            .flat_map(|r| r.json()["ids"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let before = fetched_ids().len();
    // bo's change comes with a forged clientState, anna's after it with ours: both would be
    // fetched in the same round (or bo's first) if the forged one were taken.
    const BO_ID: &str = USERS[1].1;
    lab.stub.set_user_presence(BO_ID, "Busy", "InACall");
    lab.stub.set_user_presence(ANNA_ID, "Busy", "InACall");
    let sub = lab.stub.subscriptions().into_iter().find(|x| !x.expired() && x.covers(BO_ID)).unwrap();
    let forged = serde_json::json!({ "value": [{
        "subscriptionId": sub.id, "clientState": "not-ours", "changeType": "updated",
        "resource": format!("communications/presences('{BO_ID}')"), "tenantId": TENANT,
    }]});
    let http = common::graph::plain_http_client();
    let resp = http.post(&sub.notification_url).json(&forged).send().await.expect("webhook reachable");
    assert!(resp.status().is_success(), "Graph must get a 2xx even for a forged notification ({})", resp.status());
    lab.stub.notify_presence_change(ANNA_ID).await;
    let busy = notify_containing(&pbx, "Teams: Busy/InACall").await;
    assert!(String::from_utf8_lossy(&busy.body).contains("<rpid:on-the-phone/>"));
    let after: Vec<String> = fetched_ids().split_off(before);
    assert!(after.iter().any(|i| i == ANNA_ID), "anna fetched: {after:?}");
    assert!(!after.iter().any(|i| i == BO_ID), "the forged notification made drbridge fetch bo: {after:?}");
}

/// drbridge records the subscriptions it holds: after a restart (a kill, no goodbye) it deletes
/// the previous run's subscription at Graph and makes a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_deletes_the_previous_runs_subscription() {
    let Lab { stub, cfg, _teams, dr } = lab().await;
    let covered = |s: &GraphStub| s.subscriptions().iter().any(|x| !x.expired() && x.covers(ANNA_ID));
    assert!(stub.wait_until(WAIT, covered).await);
    assert!(stub.wait_until(WAIT, fetched_everybody).await);
    let first: Vec<String> = stub.subscriptions().into_iter().filter(|x| !x.expired()).map(|x| x.id).collect();
    // killed: no chance to delete anything; the same configuration (data_dir, token file) again
    drop(dr);
    let dr = tokio::task::block_in_place(|| Drbridge::start(&cfg));
    let gone = stub.wait_until(WAIT, |s| first.iter().all(|id| s.subscription(id).is_none())).await;
    assert!(gone, "the previous run's subscriptions are still there: {:?}\n{}", stub.subscriptions(), dr.stderr());
    assert!(stub.wait_until(WAIT, covered).await, "a new subscription after the restart");
    assert!(tokio::task::block_in_place(|| dr.wait_log("Graph subscription of a previous run deleted", STEP)));
}
