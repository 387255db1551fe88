//! Self-test of the test harness (tests/common), without drbridge: the Teams peer over mutual
//! TLS (calls, CANCEL, failure modes, certificate checks), the UDP peer, and every SIPp
//! scenario pair played against each other on loopback (skipped with a notice without SIPp).

mod common;

use common::config::SBC_FQDN;
use common::peer::{ProxyMode, SipPeer};
use common::sipp::{self, Sipp};
use common::teams::{client_config, server_config, teams_sdp, TeamsPeer};
use common::util::{free_port, loopback, TempDir, STEP};
use common::{hiding, LabCerts};
use drbridge::sip::msg::{Message, Method};
use std::net::SocketAddr;
use std::time::Duration;

/// The "drbridge side" of the self-test: a peer with the SBC certificate that listens (for
/// requests from the proxies) and connects to the proxies.
async fn sbc_peer(certs: &LabCerts) -> (SipPeer, SocketAddr) {
    let sbc = SipPeer::new("sbc");
    let addr = sbc.listen_tls(1, server_config(&certs.sbc_cert, &certs.sbc_key, &certs.ca_cert)).await[0];
    sbc.set_client_config(client_config(Some((&certs.sbc_cert, &certs.sbc_key)), &certs.ca_cert));
    sbc.set_contact(&format!("<sip:{SBC_FQDN}:{};transport=tls>", addr.port()));
    sbc.set_via("TLS", SBC_FQDN);
    (sbc, addr)
}

fn lab_certs(dir: &TempDir) -> LabCerts {
    LabCerts::generate(&dir.join("certs"), SBC_FQDN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_call_bye_from_each_side() {
    let dir = TempDir::new("selftest");
    let certs = lab_certs(&dir);
    let teams = TeamsPeer::start(&certs, 1).await;
    let (sbc, _) = sbc_peer(&certs).await;
    sbc.map_host("sip.pstnhub.microsoft.com", teams.proxy_addrs[0]);

    let conn = sbc
        .connect_tls(teams.proxy_addrs[0], "sip.pstnhub.microsoft.com", client_config(Some((&certs.sbc_cert, &certs.sbc_key)), &certs.ca_cert), None)
        .await
        .expect("connect to proxy");

    for bye_from_teams in [false, true] {
        let mut inv = sbc.new_request(
            Method::Invite,
            "sip:+4681234801@sip.pstnhub.microsoft.com;user=phone",
            "<sip:+4681234711@sbc.lab.drbridge.test;user=phone>",
            "<sip:+4681234801@sip.pstnhub.microsoft.com;user=phone>",
        );
        inv.headers.push("Content-Type", "application/sdp");
        inv.body = bytes::Bytes::from(teams_sdp(40_000, "sendrecv"));
        let mut call = sbc.send_invite(&conn, inv);

        let answering = tokio::spawn({
            let peer = teams.peer.clone();
            async move { peer.answer_call_with(&teams_sdp(50_000, "sendrecv"), STEP).await }
        });
        let ok = sbc.await_answer(&mut call, STEP).await;
        assert_eq!(ok.status, 200);
        assert_eq!(call.provisional, vec![100, 180]);
        // the proxy record-routes itself; in-dialog requests go through it
        assert_eq!(call.route_set, vec!["<sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>".to_string()]);
        sbc.ack(&mut call).await;
        let mut teams_call = answering.await.expect("answer task");
        assert_eq!(teams_call.remote_target, format!("sip:{SBC_FQDN}:{};transport=tls", sbc.listen_addrs()[0].port()));

        if bye_from_teams {
            // Teams' BYE goes to the SBC's Contact (FQDN resolved to loopback) on a new connection
            let (bye, resp) = tokio::join!(sbc.expect_bye(&call, STEP), teams.bye(&mut teams_call, STEP));
            assert_eq!(resp.status, 200);
            assert_eq!(bye.uri.as_str(), format!("sip:{SBC_FQDN}:{};transport=tls", sbc.listen_addrs()[0].port()));
            assert_eq!(bye.to_tag(), Some(call.local_tag.as_str()));
        } else {
            let (resp, bye) = tokio::join!(sbc.bye(&mut call, STEP), teams.expect_bye(&teams_call, STEP));
            assert_eq!(resp.status, 200);
            assert_eq!(bye.uri.as_str(), "sip:sip-du-a-eu.pstnhub.microsoft.com:443;transport=tls");
            assert_eq!(bye.headers.get("Route"), Some("<sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>"));
        }
    }
    assert!(teams.tls_failures().is_empty(), "{:?}", teams.tls_failures());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_places_call_to_sbc_listener_and_cancels() {
    let dir = TempDir::new("selftest");
    let certs = lab_certs(&dir);
    let teams = TeamsPeer::start(&certs, 1).await;
    let (sbc, sbc_addr) = sbc_peer(&certs).await;

    let conn = teams.connect_sbc(sbc_addr, 0).await;
    let call = teams.place_call(&conn, "+46701234567", "+4681234711");
    let (inv, _) = sbc.expect_request(Method::Invite, STEP).await;
    assert_eq!(inv.uri.as_str(), format!("sip:+4681234711@{SBC_FQDN}:{};transport=tls", sbc_addr.port()));
    assert_eq!(inv.headers.get("Record-Route"), Some("<sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>"));
    assert!(inv.headers.has_token("Supported", "timer"));
    assert_eq!(inv.headers.get("Session-Expires"), Some("1800;refresher=uac"));
    let sdp = String::from_utf8_lossy(&inv.body).into_owned();
    for a in ["a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:", "a=rtcp-mux", "a=candidate:", "a=ice-ufrag:"] {
        assert!(sdp.contains(a), "Teams SDP lacks {a}:\n{sdp}");
    }
    sbc.respond(&inv, 100, "", &[]);
    sbc.respond(&inv, 180, "", &[]);
    teams.expect_response(&call.call_id, Method::Invite, STEP).await; // 100
    let ringing = teams.expect_response(&call.call_id, Method::Invite, STEP).await;
    assert_eq!(ringing.status, 180);

    let (cancel_resp, _) = tokio::join!(teams.cancel(&call, STEP), async {
        let (cancel, _) = sbc.expect_request(Method::Cancel, STEP).await;
        sbc.respond(&cancel, 200, "", &[]);
        sbc.respond(&inv, 487, "", &[]);
    });
    assert_eq!(cancel_resp.status, 200);
    let mut call = call;
    let fin = teams.await_answer(&mut call, STEP).await;
    assert_eq!(fin.status, 487);
    let ack = sbc.expect_ack(&teams.accept_call(&inv, &conn), STEP).await; // ACK of the 487, same branch
    assert_eq!(ack.top_via().and_then(|v| v.branch().map(str::to_string)), inv.top_via().and_then(|v| v.branch().map(str::to_string)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused() {
    let dir = TempDir::new("selftest");
    let certs = lab_certs(&dir);
    let teams = TeamsPeer::start(&certs, 1).await;
    let anon = SipPeer::new("anonymous");
    // TLS 1.3: the client may finish its side before the server checks the certificate, so
    // the connect may succeed; the proxy must refuse it and never see a message from it.
    if let Ok(conn) = anon.connect_tls(teams.proxy_addrs[0], "sip.pstnhub.microsoft.com", client_config(None, &certs.ca_cert), None).await {
        let opt = anon.new_request(Method::Options, "sip:sip.pstnhub.microsoft.com", "<sip:anon@example.test>", "<sip:sip.pstnhub.microsoft.com>");
        let _ = conn.send(opt.to_bytes());
    }
    let failure = teams.expect_tls_failure(STEP).await;
    assert!(failure.contains("listener 0"), "{failure}");
    assert!(teams.log().is_empty(), "{}", teams.summary());

    // a client that checks the server against another name fails on its side
    let wrong = anon
        .connect_tls(teams.proxy_addrs[0], "sbc.other.test", client_config(Some((&certs.sbc_cert, &certs.sbc_key)), &certs.ca_cert), None)
        .await;
    assert!(wrong.is_err(), "server name not checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_modes_silent_reject_and_options() {
    let dir = TempDir::new("selftest");
    let certs = lab_certs(&dir);
    let teams = TeamsPeer::start(&certs, 3).await;
    teams.set_mode(0, ProxyMode::Silent);
    teams.set_mode(1, ProxyMode::RejectInvite(503));
    teams.set_mode(2, ProxyMode::RejectInvite(603));
    let (sbc, _) = sbc_peer(&certs).await;
    let ccfg = client_config(Some((&certs.sbc_cert, &certs.sbc_key)), &certs.ca_cert);
    let mut conns = Vec::new();
    for (i, a) in teams.proxy_addrs.iter().enumerate() {
        conns.push(sbc.connect_tls(*a, common::config::proxy_host(i).as_str(), ccfg.clone(), None).await.expect("connect"));
    }
    let invite = |to: &str| {
        let mut r = sbc.new_request(Method::Invite, &format!("sip:{to}@sip.pstnhub.microsoft.com;user=phone"), "<sip:+4681234711@sbc.lab.drbridge.test>", &format!("<sip:{to}@sip.pstnhub.microsoft.com>"));
        r.headers.push("Content-Type", "application/sdp");
        r.body = bytes::Bytes::from(teams_sdp(40_000, "sendrecv"));
        r
    };
    // silent: logged, never answered
    let silent = sbc.send_invite(&conns[0], invite("+4681234801"));
    teams.expect_logged("INVITE on the silent proxy", STEP, |e| e.proxy == Some(0) && e.is_request(&Method::Invite)).await;
    // 503 with Retry-After, ACKed by the caller and absorbed by the proxy
    let mut c503 = sbc.send_invite(&conns[1], invite("+4681234802"));
    let r = sbc.await_answer(&mut c503, STEP).await;
    assert_eq!((r.status, r.headers.get("Retry-After")), (503, Some("10")));
    teams.expect_logged("ACK of the 503", STEP, |e| e.proxy == Some(1) && e.is_request(&Method::Ack)).await;
    let mut c603 = sbc.send_invite(&conns[2], invite("+4681234803"));
    assert_eq!(sbc.await_answer(&mut c603, STEP).await.status, 603);
    // OPTIONS: answered 200 with Allow by a normal proxy, not by the silent one
    for (i, conn) in conns.iter().enumerate() {
        let mut o = sbc.new_request(Method::Options, &format!("sip:{}:5061;transport=tls", common::config::proxy_host(i)), "<sip:sbc.lab.drbridge.test>", "<sip:ping@sip.pstnhub.microsoft.com>");
        o.headers.set("Contact", format!("<sip:{SBC_FQDN}:5061;transport=tls>"));
        sbc.send_request(conn, &o);
        let id = o.call_id().unwrap_or("").to_string();
        if i == 0 {
            teams.expect_logged("OPTIONS on the silent proxy", STEP, |e| e.proxy == Some(0) && e.is_request(&Method::Options)).await;
        } else {
            let resp = sbc.expect_final(&id, Method::Options, STEP).await;
            assert_eq!(resp.status, 200);
            assert!(resp.headers.has_token("Allow", "REFER"));
        }
    }
    let opts = teams.requests(None, &Method::Options);
    assert_eq!(opts.len(), 3);
    assert!(opts.iter().all(|o| o.headers.get("Contact") == Some("<sip:sbc.lab.drbridge.test:5061;transport=tls>")));
    // nothing queued for the test from the silent proxy, and no answer to its INVITE
    let none = sbc.try_expect_where("anything for the silent INVITE", Duration::from_millis(300), &mut |i| {
        matches!(&i.msg, Message::Response(r) if r.call_id() == Some(silent.call_id.as_str()))
    }).await;
    assert!(none.is_err());
    assert_eq!(teams.requests(Some(0), &Method::Invite).len(), 1);
    // topology helpers on what each side received
    hiding::assert_absent("teams", &teams.received_text(), &["127.0.0.1:5080".to_string(), "SIPpTag".to_string()]);
    hiding::assert_present("teams", &teams.received_text(), std::slice::from_ref(&silent.call_id));
}

// ------------------------------------------------------------------ UDP peer and SIPp

/// SIPp uac_call (the PBX calling) against the Rust UDP peer answering: proves the UDP peer
/// and the SIPp message log parsing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uac_against_udp_peer() {
    if !sipp::require("sipp_uac_against_udp_peer") {
        return;
    }
    let pbx = SipPeer::new("udp-peer");
    let addr = pbx.bind_udp(loopback(0)).await;
    let run = Sipp::uac("uac_call.xml", loopback(free_port()), addr, "+4681234801").start();
    let call = pbx.answer_call_with("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n", STEP).await;
    pbx.expect_bye(&call, STEP).await;
    let res = run.wait_async().await;
    res.assert_success();
    assert_eq!(call.invite.uri.as_str(), format!("sip:+4681234801@{addr}"));
    let received = res.received();
    assert!(received.iter().any(|m| m.starts_with("SIP/2.0 200 OK")), "{}", res.report());
    let sipp_ids = hiding::identifiers(&res.sent());
    assert!(sipp_ids.contains(&call.call_id), "{sipp_ids:?}");
}

/// Runs `uas` then `uac` against it; returns (uac result, uas result).
fn pair(uac: &str, uas: &str) -> (sipp::SippResult, sipp::SippResult) {
    pair_within(uac, uas, Duration::from_secs(20))
}

fn pair_within(uac: &str, uas: &str, uas_limit: Duration) -> (sipp::SippResult, sipp::SippResult) {
    let uas_addr = loopback(free_port());
    let server = Sipp::uas(uas, uas_addr).limit(uas_limit).recv_timeout_ms(5_000).start();
    let client = Sipp::uac(uac, loopback(free_port()), uas_addr, "+4681234801")
        .limit(Duration::from_secs(20))
        .recv_timeout_ms(5_000)
        .run();
    (client, server.wait())
}

fn assert_pair(uac: &str, uas: &str) {
    if !sipp::require(&format!("{uac} -> {uas}")) {
        return;
    }
    let (c, s) = pair(uac, uas);
    c.assert_success();
    s.assert_success();
}

#[test]
fn sipp_scenarios_parse() {
    if !sipp::require("sipp_scenarios_parse") {
        return;
    }
    let dir = sipp::scenario_dir();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("tests/sipp") {
        let p = e.expect("entry").path();
        if p.extension().and_then(|x| x.to_str()) != Some("xml") {
            continue;
        }
        n += 1;
        // -m 0: load the scenario (XML, keywords, variables) and exit without a call
        let out = std::process::Command::new("timeout")
            .args(["-k", "2", "10", "sipp", "-sf"])
            .arg(&p)
            .args(["-nostdin", "-m", "0", "-p", &free_port().to_string(), "127.0.0.1:9"])
            .current_dir(TempDir::new("sipp-parse").path())
            .output()
            .expect("run sipp");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains("referenced") && !err.to_lowercase().contains("error"), "{}: {}\n{err}", p.display(), out.status);
    }
    assert!(n >= 12, "only {n} scenarios");
}

#[test]
fn sipp_pair_call() {
    assert_pair("uac_call.xml", "uas_answer.xml");
}
#[test]
fn sipp_pair_remote_bye() {
    assert_pair("uac_call_remote_bye.xml", "uas_answer_bye.xml");
}
#[test]
fn sipp_pair_busy() {
    assert_pair("uac_busy.xml", "uas_busy.xml");
}
#[test]
fn sipp_pair_cancel() {
    assert_pair("uac_cancel.xml", "uas_ringing_wait_cancel.xml");
}
#[test]
fn sipp_pair_hold() {
    assert_pair("uac_hold.xml", "uas_hold.xml");
}
#[test]
fn sipp_pair_hold_against_generic_uas() {
    assert_pair("uac_hold.xml", "uas_answer.xml");
}
#[test]
fn sipp_pair_refresh() {
    assert_pair("uac_refresh.xml", "uas_answer.xml");
}

/// uas_hold insists on two re-INVITEs: a plain call must fail it (the check is real).
#[test]
fn sipp_uas_hold_fails_without_reinvites() {
    if !sipp::require("sipp_uas_hold_fails_without_reinvites") {
        return;
    }
    // the failed UAS call does not end the run: it lasts until its -timeout
    let (c, s) = pair_within("uac_call.xml", "uas_hold.xml", Duration::from_secs(6));
    c.assert_success();
    assert!(!s.success(), "uas_hold accepted a call without hold:\n{}", s.report());
}

/// drbridge's OPTIONS keep-alives reach SIPp outside any call: the UAS answers them and still
/// takes the real call; the UAC (-aa) answers them during its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_answers_out_of_dialog_options() {
    if !sipp::require("sipp_answers_out_of_dialog_options") {
        return;
    }
    let pinger = SipPeer::new("pinger");
    pinger.bind_udp(loopback(0)).await;
    let uas_addr = loopback(free_port());
    let server = Sipp::uas("uas_answer.xml", uas_addr).limit(Duration::from_secs(20)).start();
    let ping = |to: SocketAddr| {
        let o = pinger.new_request(Method::Options, &format!("sip:{to}"), "<sip:sbc@127.0.0.1>", &format!("<sip:{to}>"));
        let id = o.call_id().unwrap_or("").to_string();
        (o, id)
    };
    let (o, id) = ping(uas_addr);
    pinger.send_request(&pinger.udp_to(uas_addr), &o);
    assert_eq!(pinger.expect_final(&id, Method::Options, STEP).await.status, 200);

    let uac_addr = loopback(free_port());
    let client = Sipp::uac("uac_call.xml", uac_addr, uas_addr, "+4681234801").pause_ms(500).start();
    let (o2, id2) = ping(uac_addr);
    pinger.send_request(&pinger.udp_to(uac_addr), &o2);
    assert_eq!(pinger.expect_final(&id2, Method::Options, STEP).await.status, 200);
    client.wait_async().await.assert_success();
    server.wait_async().await.assert_success();
}

/// uas_options answers one OPTIONS and ends the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uas_options() {
    if !sipp::require("sipp_uas_options") {
        return;
    }
    let pinger = SipPeer::new("pinger");
    pinger.bind_udp(loopback(0)).await;
    let addr = loopback(free_port());
    let server = Sipp::uas("uas_options.xml", addr).limit(Duration::from_secs(10)).start();
    let o = pinger.new_request(Method::Options, &format!("sip:{addr}"), "<sip:sbc@127.0.0.1>", &format!("<sip:{addr}>"));
    pinger.send_request(&pinger.udp_to(addr), &o);
    let r = pinger.expect_final(o.call_id().unwrap_or(""), Method::Options, STEP).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.has_token("Allow", "INVITE"));
    server.wait_async().await.assert_success();
}

/// uac_call_remote_bye answers re-INVITEs in its call and then a BYE: the far end (the Rust
/// UDP peer here, drbridge in tests/calls.rs) holds the call and hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uac_answers_reinvite_and_remote_bye() {
    if !sipp::require("sipp_uac_answers_reinvite_and_remote_bye") {
        return;
    }
    let far = SipPeer::new("udp-peer");
    let addr = far.bind_udp(loopback(0)).await;
    let run = Sipp::uac("uac_call_remote_bye.xml", loopback(free_port()), addr, "+4681234801").start();
    let sdp = |dir: &str| format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na={dir}\r\n");
    let mut call = far.answer_call_with(&sdp("sendrecv"), STEP).await;
    let held = far.request(&mut call, Method::Invite, &sdp("sendonly"), &[], STEP).await;
    assert_eq!(held.status, 200);
    assert!(String::from_utf8_lossy(&held.body).contains("a=recvonly"));
    let refreshed = far.request(&mut call, Method::Update, "", &[("Session-Expires", "90;refresher=uas")], STEP).await;
    assert_eq!(refreshed.status, 200);
    assert_eq!(far.bye(&mut call, STEP).await.status, 200);
    run.wait_async().await.assert_success();
}

/// uac_declined expects a 603 and ACKs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uac_declined() {
    if !sipp::require("sipp_uac_declined") {
        return;
    }
    let far = SipPeer::new("udp-peer");
    let addr = far.bind_udp(loopback(0)).await;
    let run = Sipp::uac("uac_declined.xml", loopback(free_port()), addr, "+4681234801").start();
    let (inv, _) = far.expect_request(Method::Invite, STEP).await;
    far.respond(&inv, 603, "", &[]);
    let ack = far.expect_ack(&far.accept_call(&inv, &far.udp_to(addr)), STEP).await;
    assert_eq!(ack.top_via().and_then(|v| v.branch().map(str::to_string)), inv.top_via().and_then(|v| v.branch().map(str::to_string)));
    run.wait_async().await.assert_success();
}

// ------------------------------------------------------------------ lab config and process

#[test]
fn lab_config_is_valid_toml_with_the_brief_schema() {
    let cfg = common::LabConfig::with_rcgen_certs().with_proxies(&[loopback(15061), loopback(15062)]);
    let v: toml::Value = toml::from_str(&cfg.to_toml()).unwrap_or_else(|e| panic!("{e}\n{}", cfg.to_toml()));
    assert_eq!(v["sbc"]["fqdn"].as_str(), Some(SBC_FQDN));
    assert_eq!(v["teams"]["contact_port"].as_integer(), Some(i64::from(cfg.teams_listen.port())));
    let proxies = v["teams"]["proxies"].as_array().expect("proxies");
    assert_eq!(proxies[1]["host"].as_str(), Some("sip2.pstnhub.microsoft.com"));
    assert_eq!(proxies[1]["address"].as_str(), Some("127.0.0.1:15062"));
    assert_eq!(v["pbx"]["address"].as_str(), Some(cfg.pbx_address.to_string().as_str()));
    assert_eq!(v["numbers"]["to_teams"][0]["replace"].as_str(), Some("+468123$1"));
    assert_eq!(v["routes"][0]["trunk"].as_str(), Some("pbx"));
    assert!(std::path::Path::new(v["teams"]["tls_cert"].as_str().expect("tls_cert")).exists());
}

/// A drbridge that cannot start (its certificate is missing) is reported with its log, within
/// the ready timeout, by the process harness (with the stub binary too: it exits at once).
#[test]
fn drbridge_that_cannot_start_is_reported() {
    let mut cfg = common::LabConfig::with_rcgen_certs();
    cfg.certs.sbc_cert = cfg.dir.join("certs/missing.crt");
    let start = std::time::Instant::now();
    let err = common::Drbridge::try_start(&cfg).err().expect("drbridge started without its certificate");
    assert!(err.contains("exited"), "{err}");
    assert!(start.elapsed() < common::drbridge::READY_TIMEOUT);
}
