//! Transaction tests with virtual time: every Instant is `t0 + offset`, advanced by hand.

use super::*;
use crate::sip::msg::{parse_datagram, Limits, Message};

type Table = Transactions<&'static str>;

const MS: fn(u64) -> Duration = Duration::from_millis;

fn table() -> Table {
    Transactions::new(TxnTimers::default(), 100)
}

fn request(method: Method, branch: &str) -> Request {
    let mut r = Request::new(method.clone(), "sip:+4681234711@pbx.example;user=phone");
    r.headers.push("Via", format!("SIP/2.0/UDP 10.0.0.1:5060;branch={branch}"));
    r.headers.push("Max-Forwards", "69");
    r.headers.push("Route", "<sip:proxy1.example;lr>");
    r.headers.push("Route", "<sip:proxy2.example;lr>");
    r.headers.push("From", "\"Alice\" <sip:alice@a.example>;tag=ftag");
    r.headers.push("To", "<sip:+4681234711@pbx.example;user=phone>");
    r.headers.push("Call-ID", "call-1@a.example");
    r.headers.push("CSeq", format!("7 {method}"));
    r.headers.push("Contact", "<sip:alice@10.0.0.1>");
    if method == Method::Invite {
        r.headers.push("Content-Type", "application/sdp");
        r.body = Bytes::from_static(b"v=0\r\n");
    }
    r
}

fn invite(branch: &str) -> Request {
    request(Method::Invite, branch)
}

fn resp(req: &Request, status: u16) -> Response {
    req.response(status, Some("ttag"))
}

fn drain(t: &mut Table) -> Vec<(&'static str, Bytes)> {
    std::iter::from_fn(|| t.poll_transmit()).collect()
}

fn events(t: &mut Table) -> Vec<TxnEvent> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

fn parse(b: &Bytes) -> Message {
    parse_datagram(b.clone(), &Limits::default()).expect("our own output parses")
}

fn parse_req(b: &Bytes) -> Request {
    match parse(b) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("expected a request"),
    }
}

/// Drives the timers up to `t0 + until` the way the I/O task would (sleep to `poll_timeout`,
/// call `handle_timeout`) and returns the offsets from `t0` at which something was transmitted.
fn run(t: &mut Table, t0: Instant, until: Duration) -> Vec<Duration> {
    let mut sent = Vec::new();
    while let Some(at) = t.poll_timeout().filter(|at| *at <= t0 + until) {
        t.handle_timeout(at);
        for _ in drain(t) {
            sent.push(at - t0);
        }
    }
    sent
}

fn secs(v: &[f64]) -> Vec<Duration> {
    v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
}

// ---- INVITE client ---------------------------------------------------------------------------

#[test]
fn invite_client_timer_a_doubles_without_cap_and_timer_b_times_out() {
    let mut t = table();
    let t0 = Instant::now();
    let id = t.send_request(invite("z9hG4bKa"), "pbx", false, t0).unwrap();
    let first = drain(&mut t);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "pbx");
    assert_eq!(t.client_state(id), Some(ClientState::Calling));
    assert_eq!(t.poll_timeout(), Some(t0 + MS(500)));
    // A: 0.5, 1, 2, 4, 8, 16 s intervals; B at 64*T1 = 32 s.
    let sent = run(&mut t, t0, Duration::from_secs(40));
    assert_eq!(sent, secs(&[0.5, 1.5, 3.5, 7.5, 15.5, 31.5]));
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTimeout(id), TxnEvent::ClientTerminated(id)]);
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.stats().timeouts, 1);
}

#[test]
fn invite_client_provisional_stops_retransmissions_and_timer_b() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKa");
    let id = t.send_request(inv.clone(), "pbx", false, t0).unwrap();
    drain(&mut t);
    assert_eq!(run(&mut t, t0, MS(600)).len(), 1);
    let (got, r) = t.on_response(resp(&inv, 180), t0 + MS(700)).unwrap();
    assert_eq!((got, r.status), (id, 180));
    assert_eq!(t.client_state(id), Some(ClientState::Proceeding));
    // Nothing more: no retransmission, no timer B; the TU waits as long as it likes.
    assert!(run(&mut t, t0, Duration::from_secs(300)).is_empty());
    assert!(events(&mut t).is_empty());
    assert_eq!(t.poll_timeout(), None);
    // A second provisional also reaches the TU.
    assert_eq!(t.on_response(resp(&inv, 183), t0 + Duration::from_secs(301)).map(|(_, r)| r.status), Some(183));
}

#[test]
fn invite_client_non_2xx_builds_ack_and_timer_d() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKa");
    let id = t.send_request(inv.clone(), "pbx", false, t0).unwrap();
    drain(&mut t);
    t.on_response(resp(&inv, 180), t0 + MS(100)).unwrap();
    let busy = resp(&inv, 486);
    let (_, r) = t.on_response(busy.clone(), t0 + MS(200)).unwrap();
    assert_eq!(r.status, 486);
    assert_eq!(t.client_state(id), Some(ClientState::Completed));
    let sent = drain(&mut t);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "pbx");
    let ack = parse_req(&sent[0].1);
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri.as_str(), inv.uri.as_str());
    assert_eq!(ack.headers.values("Via"), vec!["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa"]);
    assert_eq!(ack.call_id(), Some("call-1@a.example"));
    assert_eq!(ack.headers.get("From"), inv.headers.get("From"));
    assert_eq!(ack.to_tag(), Some("ttag"));
    assert_eq!(ack.headers.get("CSeq"), Some("7 ACK"));
    assert_eq!(
        ack.headers.get_all("Route").collect::<Vec<_>>(),
        vec!["<sip:proxy1.example;lr>", "<sip:proxy2.example;lr>"]
    );
    assert_eq!(ack.headers.get("Max-Forwards"), Some("69"));
    assert!(ack.headers.get("Contact").is_none() && ack.body.is_empty());
    // A retransmitted 486 is absorbed and answered with the same ACK.
    assert!(t.on_response(busy.clone(), t0 + Duration::from_secs(2)).is_none());
    assert_eq!(drain(&mut t), vec![("pbx", sent[0].1.clone())]);
    // Timer D: 32 s after the final response.
    assert!(run(&mut t, t0, MS(32_199)).is_empty());
    assert_eq!(t.client_state(id), Some(ClientState::Completed));
    run(&mut t, t0, MS(32_200));
    assert_eq!(t.client_state(id), None);
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTerminated(id)]);
    // Afterwards the 486 is stray.
    assert!(t.on_response(busy, t0 + Duration::from_secs(40)).is_none());
    assert!(drain(&mut t).is_empty());
}

#[test]
fn build_ack_uses_only_the_top_via() {
    let mut inv = invite("z9hG4bKa");
    inv.headers.push_front("Via", "SIP/2.0/TLS sbc.example:5061;branch=z9hG4bKtop");
    let ack = build_ack(&inv, &resp(&inv, 404));
    assert_eq!(ack.headers.values("Via"), vec!["SIP/2.0/TLS sbc.example:5061;branch=z9hG4bKtop"]);
}

#[test]
fn invite_client_2xx_accepted_passes_retransmissions_and_forks_until_timer_m() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKa");
    let id = t.send_request(inv.clone(), "pbx", false, t0).unwrap();
    drain(&mut t);
    let ok = resp(&inv, 200);
    assert_eq!(t.on_response(ok.clone(), t0 + MS(100)).map(|(i, r)| (i, r.status)), Some((id, 200)));
    assert_eq!(t.client_state(id), Some(ClientState::Accepted));
    assert!(drain(&mut t).is_empty(), "no ACK for a 2xx from the transaction");
    // Retransmitted 2xx and a 2xx from another fork reach the TU (it ACKs them).
    assert!(t.on_response(ok.clone(), t0 + MS(600)).is_some());
    let fork = inv.response(200, Some("other-fork"));
    assert_eq!(t.on_response(fork, t0 + MS(700)).and_then(|(_, r)| r.to_tag().map(str::to_string)), Some("other-fork".into()));
    // Late provisional or error responses are absorbed.
    assert!(t.on_response(resp(&inv, 180), t0 + MS(800)).is_none());
    assert!(t.on_response(resp(&inv, 500), t0 + MS(800)).is_none());
    assert!(run(&mut t, t0, Duration::from_secs(60)).is_empty());
    // Timer M = 64*T1 after the first 2xx.
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTerminated(id)]);
    assert!(t.on_response(ok, t0 + Duration::from_secs(61)).is_none());
}

#[test]
fn invite_client_timer_m_fires_at_64_t1() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKa");
    let id = t.send_request(inv.clone(), "pbx", true, t0).unwrap();
    t.on_response(resp(&inv, 200), t0).unwrap();
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    t.handle_timeout(t0 + MS(31_999));
    assert_eq!(t.client_state(id), Some(ClientState::Accepted));
    t.handle_timeout(t0 + Duration::from_secs(32));
    assert_eq!(t.client_state(id), None);
}

#[test]
fn invite_client_reliable_no_retransmission_timer_b_and_d_zero() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKa");
    let id = t.send_request(inv.clone(), "teams", true, t0).unwrap();
    assert_eq!(drain(&mut t).len(), 1);
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    assert!(run(&mut t, t0, Duration::from_secs(31)).is_empty());
    // Non-2xx: ACK sent, transaction gone at once (timer D = 0).
    t.on_response(resp(&inv, 503), t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(parse_req(&drain(&mut t)[0].1).method, Method::Ack);
    assert_eq!(t.client_state(id), None);
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTerminated(id)]);

    let id2 = t.send_request(invite("z9hG4bKb"), "teams", true, t0).unwrap();
    drain(&mut t);
    assert!(run(&mut t, t0, Duration::from_secs(40)).is_empty());
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTimeout(id2), TxnEvent::ClientTerminated(id2)]);
}

// ---- non-INVITE client -----------------------------------------------------------------------

#[test]
fn non_invite_client_timer_e_caps_at_t2_and_timer_f_times_out() {
    let mut t = table();
    let t0 = Instant::now();
    let id = t.send_request(request(Method::Options, "z9hG4bKo"), "pbx", false, t0).unwrap();
    assert_eq!(t.client_state(id), Some(ClientState::Trying));
    drain(&mut t);
    let sent = run(&mut t, t0, Duration::from_secs(40));
    // E: 0.5, 1, 2, then T2 = 4 s; F at 32 s.
    assert_eq!(sent, secs(&[0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]));
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTimeout(id), TxnEvent::ClientTerminated(id)]);
}

#[test]
fn non_invite_client_proceeding_retransmits_every_t2() {
    let mut t = table();
    let t0 = Instant::now();
    let bye = request(Method::Bye, "z9hG4bKo");
    let id = t.send_request(bye.clone(), "pbx", false, t0).unwrap();
    drain(&mut t);
    assert_eq!(t.on_response(resp(&bye, 100), t0 + MS(100)).map(|(i, _)| i), Some(id));
    assert_eq!(t.client_state(id), Some(ClientState::Proceeding));
    let sent = run(&mut t, t0, Duration::from_secs(13));
    assert_eq!(sent, secs(&[0.5, 4.5, 8.5, 12.5]));
    // Timer F still runs in Proceeding.
    run(&mut t, t0, Duration::from_secs(32));
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTimeout(id), TxnEvent::ClientTerminated(id)]);
}

#[test]
fn non_invite_client_final_then_timer_k() {
    let mut t = table();
    let t0 = Instant::now();
    let bye = request(Method::Bye, "z9hG4bKo");
    let id = t.send_request(bye.clone(), "pbx", false, t0).unwrap();
    drain(&mut t);
    let ok = resp(&bye, 200);
    assert_eq!(t.on_response(ok.clone(), t0 + MS(100)).map(|(i, r)| (i, r.status)), Some((id, 200)));
    assert_eq!(t.client_state(id), Some(ClientState::Completed));
    assert!(t.on_response(ok.clone(), t0 + MS(200)).is_none(), "retransmission absorbed");
    assert!(drain(&mut t).is_empty(), "no retransmission of the request in Completed");
    assert_eq!(t.poll_timeout(), Some(t0 + MS(5100)), "K = T4");
    assert!(run(&mut t, t0, Duration::from_secs(10)).is_empty());
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTerminated(id)]);
}

#[test]
fn non_invite_client_reliable_no_retransmission_and_k_zero() {
    let mut t = table();
    let t0 = Instant::now();
    let bye = request(Method::Bye, "z9hG4bKo");
    let id = t.send_request(bye.clone(), "pbx", true, t0).unwrap();
    drain(&mut t);
    assert!(run(&mut t, t0, Duration::from_secs(31)).is_empty());
    assert!(t.on_response(resp(&bye, 200), t0 + Duration::from_secs(1)).is_some());
    assert_eq!(t.client_state(id), None);
    assert_eq!(t.poll_timeout(), None);
}

// ---- INVITE server ---------------------------------------------------------------------------

#[test]
fn invite_server_absorbs_retransmissions_and_resends_last_provisional() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    let RequestDisposition::New(id) = t.on_request(&inv, "teams", false, t0) else { panic!() };
    assert_eq!(t.server_state(id), Some(ServerState::Proceeding));
    // Before any response: absorbed, nothing to resend.
    assert_eq!(t.on_request(&inv, "teams", false, t0 + MS(500)), RequestDisposition::Retransmission);
    assert!(drain(&mut t).is_empty());
    t.send_response(id, &trying(&inv), t0 + MS(10)).unwrap();
    let ringing = resp(&inv, 180);
    t.send_response(id, &ringing, t0 + MS(20)).unwrap();
    assert_eq!(drain(&mut t).len(), 2);
    assert_eq!(t.on_request(&inv, "teams", false, t0 + MS(1500)), RequestDisposition::Retransmission);
    assert_eq!(drain(&mut t), vec![("teams", ringing.to_bytes())]);
    // No timers while Proceeding.
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.stats().absorbed_requests, 2);
}

#[test]
fn trying_has_no_to_tag() {
    let inv = invite("z9hG4bKs");
    let r = trying(&inv);
    assert_eq!(r.status, 100);
    assert_eq!(r.to_tag(), None);
}

#[test]
fn invite_server_non_2xx_timer_g_caps_at_t2_and_timer_h() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    let RequestDisposition::New(id) = t.on_request(&inv, "teams", false, t0) else { panic!() };
    let busy = resp(&inv, 486);
    t.send_response(id, &busy, t0).unwrap();
    assert_eq!(drain(&mut t), vec![("teams", busy.to_bytes())]);
    assert_eq!(t.server_state(id), Some(ServerState::Completed));
    // A retransmitted INVITE gets the final response again.
    assert_eq!(t.on_request(&inv, "teams", false, t0 + MS(100)), RequestDisposition::Retransmission);
    assert_eq!(drain(&mut t).len(), 1);
    let sent = run(&mut t, t0, Duration::from_secs(40));
    // G: 0.5, 1, 2, 4, 4 ... ; H at 64*T1 = 32 s.
    assert_eq!(sent, secs(&[0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]));
    assert_eq!(events(&mut t), vec![TxnEvent::ServerTimeout(id), TxnEvent::ServerTerminated(id)]);
    // A late ACK matches nothing now and goes to the TU, which drops it.
    let ack = build_ack(&inv, &busy);
    assert_eq!(t.on_request(&ack, "teams", false, t0 + Duration::from_secs(41)), RequestDisposition::Ack2xx);
}

#[test]
fn invite_server_ack_absorbed_then_timer_i() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    let RequestDisposition::New(id) = t.on_request(&inv, "teams", false, t0) else { panic!() };
    let busy = resp(&inv, 486);
    t.send_response(id, &busy, t0).unwrap();
    drain(&mut t);
    assert_eq!(run(&mut t, t0, MS(600)).len(), 1);
    let ack = build_ack(&inv, &busy);
    assert_eq!(t.on_request(&ack, "teams", false, t0 + MS(700)), RequestDisposition::AckAbsorbed);
    assert_eq!(t.server_state(id), Some(ServerState::Confirmed));
    // Confirmed: ACK and INVITE retransmissions absorbed silently, no more 486s.
    assert_eq!(t.on_request(&ack, "teams", false, t0 + MS(800)), RequestDisposition::AckAbsorbed);
    assert_eq!(t.on_request(&inv, "teams", false, t0 + MS(800)), RequestDisposition::Retransmission);
    assert!(drain(&mut t).is_empty());
    assert_eq!(t.poll_timeout(), Some(t0 + MS(5700)), "I = T4");
    assert!(run(&mut t, t0, Duration::from_secs(40)).is_empty());
    assert_eq!(events(&mut t), vec![TxnEvent::ServerTerminated(id)]);
}

#[test]
fn invite_server_2xx_accepted_timer_l() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    let RequestDisposition::New(id) = t.on_request(&inv, "teams", false, t0) else { panic!() };
    let ok = resp(&inv, 200);
    t.send_response(id, &ok, t0).unwrap();
    assert_eq!(t.server_state(id), Some(ServerState::Accepted));
    assert_eq!(drain(&mut t).len(), 1);
    // INVITE retransmissions absorbed without resending the 2xx (the TU retransmits it).
    assert_eq!(t.on_request(&inv, "teams", false, t0 + MS(100)), RequestDisposition::Retransmission);
    assert!(drain(&mut t).is_empty());
    assert!(run(&mut t, t0, Duration::from_secs(10)).is_empty(), "no 2xx retransmission by the txn");
    // The TU's own 2xx retransmissions pass through; non-2xx is refused.
    t.send_response(id, &ok, t0 + MS(500)).unwrap();
    assert_eq!(drain(&mut t), vec![("teams", ok.to_bytes())]);
    assert_eq!(
        t.send_response(id, &resp(&inv, 500), t0 + MS(600)),
        Err(TxnError::InvalidState { status: 500, state: ServerState::Accepted })
    );
    // An ACK carrying the INVITE's branch matches the Accepted transaction and is handed up; the
    // normal ACK for a 2xx (a new branch) matches nothing and goes to the TU as well.
    let mut ack = build_ack(&inv, &ok);
    assert_eq!(t.on_request(&ack, "teams", false, t0 + MS(700)), RequestDisposition::Ack2xx);
    ack.headers.set("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKack");
    assert_eq!(t.on_request(&ack, "teams", false, t0 + MS(700)), RequestDisposition::Ack2xx);
    assert_eq!(t.server_state(id), Some(ServerState::Accepted));
    // Timer L = 64*T1.
    t.handle_timeout(t0 + MS(31_999));
    assert_eq!(t.server_state(id), Some(ServerState::Accepted));
    t.handle_timeout(t0 + Duration::from_secs(32));
    assert_eq!(events(&mut t), vec![TxnEvent::ServerTerminated(id)]);
    // After L a retransmitted INVITE would be a new transaction.
    assert!(matches!(t.on_request(&inv, "teams", false, t0 + Duration::from_secs(33)), RequestDisposition::New(_)));
}

#[test]
fn invite_server_reliable_no_timer_g_and_i_zero() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    let RequestDisposition::New(id) = t.on_request(&inv, "teams", true, t0) else { panic!() };
    let busy = resp(&inv, 480);
    t.send_response(id, &busy, t0).unwrap();
    drain(&mut t);
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)), "only H");
    assert!(run(&mut t, t0, Duration::from_secs(20)).is_empty());
    assert_eq!(
        t.on_request(&build_ack(&inv, &busy), "teams", true, t0 + Duration::from_secs(20)),
        RequestDisposition::AckAbsorbed
    );
    assert_eq!(t.server_state(id), None, "I = 0");
    assert_eq!(events(&mut t), vec![TxnEvent::ServerTerminated(id)]);

    // Without the ACK, H still fires over TCP.
    let inv2 = invite("z9hG4bKs2");
    let RequestDisposition::New(id2) = t.on_request(&inv2, "teams", true, t0) else { panic!() };
    t.send_response(id2, &resp(&inv2, 480), t0).unwrap();
    drain(&mut t);
    assert!(run(&mut t, t0, Duration::from_secs(40)).is_empty());
    assert_eq!(events(&mut t), vec![TxnEvent::ServerTimeout(id2), TxnEvent::ServerTerminated(id2)]);
}

#[test]
fn invite_server_refuses_second_final() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    let RequestDisposition::New(id) = t.on_request(&inv, "teams", false, t0) else { panic!() };
    t.send_response(id, &resp(&inv, 486), t0).unwrap();
    assert_eq!(
        t.send_response(id, &resp(&inv, 200), t0),
        Err(TxnError::InvalidState { status: 200, state: ServerState::Completed })
    );
    assert_eq!(t.send_response(ServerTxnId(999), &resp(&inv, 200), t0), Err(TxnError::NoTxn));
}

// ---- non-INVITE server -----------------------------------------------------------------------

#[test]
fn non_invite_server_retransmissions_and_timer_j() {
    let mut t = table();
    let t0 = Instant::now();
    let opt = request(Method::Options, "z9hG4bKn");
    let RequestDisposition::New(id) = t.on_request(&opt, "pbx", false, t0) else { panic!() };
    assert_eq!(t.server_state(id), Some(ServerState::Trying));
    // Trying: absorbed silently.
    assert_eq!(t.on_request(&opt, "pbx", false, t0 + MS(500)), RequestDisposition::Retransmission);
    assert!(drain(&mut t).is_empty());
    let prov = resp(&opt, 100);
    t.send_response(id, &prov, t0 + MS(600)).unwrap();
    assert_eq!(t.server_state(id), Some(ServerState::Proceeding));
    drain(&mut t);
    assert_eq!(t.on_request(&opt, "pbx", false, t0 + MS(1500)), RequestDisposition::Retransmission);
    assert_eq!(drain(&mut t), vec![("pbx", prov.to_bytes())]);
    let ok = resp(&opt, 200);
    t.send_response(id, &ok, t0 + Duration::from_secs(2)).unwrap();
    drain(&mut t);
    assert_eq!(t.on_request(&opt, "pbx", false, t0 + MS(3500)), RequestDisposition::Retransmission);
    assert_eq!(drain(&mut t), vec![("pbx", ok.to_bytes())]);
    assert!(t.send_response(id, &ok, t0 + MS(3600)).is_err());
    // J = 64*T1 from the final response; no retransmissions on its own.
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(34)));
    assert!(run(&mut t, t0, Duration::from_secs(40)).is_empty());
    assert_eq!(events(&mut t), vec![TxnEvent::ServerTerminated(id)]);
}

#[test]
fn non_invite_server_reliable_j_zero() {
    let mut t = table();
    let t0 = Instant::now();
    let opt = request(Method::Options, "z9hG4bKn");
    let RequestDisposition::New(id) = t.on_request(&opt, "pbx", true, t0) else { panic!() };
    t.send_response(id, &resp(&opt, 200), t0).unwrap();
    assert_eq!(drain(&mut t).len(), 1);
    assert_eq!(t.server_state(id), None);
    assert!(t.is_empty());
}

// ---- matching --------------------------------------------------------------------------------

#[test]
fn server_matching_uses_branch_sent_by_and_method() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    assert!(matches!(t.on_request(&inv, "a", false, t0), RequestDisposition::New(_)));
    // Same branch from another sent-by: a different transaction.
    let mut other = inv.clone();
    other.headers.set("Via", "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKs");
    assert!(matches!(t.on_request(&other, "b", false, t0), RequestDisposition::New(_)));
    // Other Via parameters do not matter.
    let mut upper = inv.clone();
    upper.headers.set("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKs;rport");
    assert_eq!(t.on_request(&upper, "a", false, t0), RequestDisposition::Retransmission);
    // Same branch, other method: different transaction.
    let mut bye = request(Method::Bye, "z9hG4bKs");
    bye.headers.set("CSeq", "8 BYE");
    assert!(matches!(t.on_request(&bye, "a", false, t0), RequestDisposition::New(_)));
    // Missing Via or CSeq, or a CSeq whose method differs, is malformed.
    let mut bad = inv.clone();
    bad.headers.remove("Via");
    assert_eq!(t.on_request(&bad, "a", false, t0), RequestDisposition::Malformed);
    let mut bad = inv.clone();
    bad.headers.set("CSeq", "7 BYE");
    assert_eq!(t.on_request(&bad, "a", false, t0), RequestDisposition::Malformed);
    assert_eq!(t.len(), 3);
}

#[test]
fn cancel_matches_its_invite_server_transaction() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    let RequestDisposition::New(inv_id) = t.on_request(&inv, "teams", false, t0) else { panic!() };
    t.send_response(inv_id, &resp(&inv, 180), t0).unwrap();
    drain(&mut t);
    let cancel = build_cancel(&inv);
    let RequestDisposition::Cancel { cancel: c_id, invite: target } =
        t.on_request(&cancel, "teams", false, t0 + MS(100))
    else {
        panic!()
    };
    assert_eq!(target, Some(inv_id));
    assert_ne!(c_id, inv_id);
    // The TU answers 200 to the CANCEL and 487 to the INVITE.
    let c_ok = resp(&cancel, 200);
    t.send_response(c_id, &c_ok, t0 + MS(100)).unwrap();
    t.send_response(inv_id, &resp(&inv, 487), t0 + MS(100)).unwrap();
    assert_eq!(drain(&mut t).len(), 2);
    // A retransmitted CANCEL is absorbed by the CANCEL transaction and gets its 200 again.
    assert_eq!(t.on_request(&cancel, "teams", false, t0 + MS(200)), RequestDisposition::Retransmission);
    assert_eq!(drain(&mut t), vec![("teams", c_ok.to_bytes())]);
    // A CANCEL for an unknown INVITE: its own transaction, no INVITE (the TU answers 481).
    let stray = build_cancel(&invite("z9hG4bKunknown"));
    assert!(matches!(
        t.on_request(&stray, "teams", false, t0 + MS(300)),
        RequestDisposition::Cancel { invite: None, .. }
    ));
}

#[test]
fn cancel_request_built_per_9_1_and_sent_as_own_transaction() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKa");
    let inv_id = t.send_request(inv.clone(), "pbx", false, t0).unwrap();
    drain(&mut t);
    t.on_response(resp(&inv, 180), t0 + MS(100)).unwrap();
    let cancel = t.cancel_request(inv_id).unwrap();
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(cancel.uri.as_str(), inv.uri.as_str());
    assert_eq!(cancel.headers.values("Via"), vec!["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa"]);
    for h in ["From", "To", "Call-ID"] {
        assert_eq!(cancel.headers.get(h), inv.headers.get(h), "{h}");
    }
    assert_eq!(cancel.headers.get("CSeq"), Some("7 CANCEL"));
    assert_eq!(cancel.headers.get_all("Route").count(), 2);

    let c_id = t.send_cancel(inv_id, t0 + MS(200)).unwrap();
    let sent = drain(&mut t);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "pbx");
    assert_eq!(parse_req(&sent[0].1).method, Method::Cancel);
    // Responses are told apart by CSeq method although the branch is the same.
    assert_eq!(t.on_response(resp(&cancel, 200), t0 + MS(300)).map(|(i, _)| i), Some(c_id));
    assert_eq!(t.on_response(resp(&inv, 487), t0 + MS(300)).map(|(i, r)| (i, r.status)), Some((inv_id, 487)));
    assert_eq!(parse_req(&drain(&mut t)[0].1).method, Method::Ack);
    // No CANCEL once the final response came, nor for a non-INVITE.
    assert!(t.cancel_request(inv_id).is_none());
    assert_eq!(t.send_cancel(inv_id, t0 + MS(400)), Err(TxnError::NotCancellable));
    assert!(t.cancel_request(c_id).is_none());
}

#[test]
fn stray_responses_are_dropped() {
    let mut t = table();
    let t0 = Instant::now();
    let inv = invite("z9hG4bKa");
    t.send_request(inv.clone(), "pbx", false, t0).unwrap();
    drain(&mut t);
    // Unknown branch.
    assert!(t.on_response(resp(&invite("z9hG4bKzzz"), 200), t0).is_none());
    // Right branch, wrong CSeq method.
    let mut r = resp(&inv, 200);
    r.headers.set("CSeq", "7 BYE");
    assert!(t.on_response(r, t0).is_none());
    // No Via, no CSeq.
    let mut r = resp(&inv, 200);
    r.headers.remove("Via");
    assert!(t.on_response(r, t0).is_none());
    let mut r = resp(&inv, 200);
    r.headers.remove("CSeq");
    assert!(t.on_response(r, t0).is_none());
    assert_eq!(t.stats().absorbed_responses, 4);
    assert!(drain(&mut t).is_empty());
}

#[test]
fn rfc2543_requests_match_by_fallback_key() {
    let mut t = table();
    let t0 = Instant::now();
    let mut inv = invite("x");
    inv.headers.set("Via", "SIP/2.0/UDP 10.0.0.9:5060");
    let RequestDisposition::New(id) = t.on_request(&inv, "old", false, t0) else { panic!() };
    assert_eq!(t.on_request(&inv, "old", false, t0), RequestDisposition::Retransmission);
    let RequestDisposition::Cancel { invite: target, .. } = t.on_request(&build_cancel(&inv), "old", false, t0) else {
        panic!()
    };
    assert_eq!(target, Some(id));
    let busy = resp(&inv, 486);
    t.send_response(id, &busy, t0).unwrap();
    assert_eq!(t.on_request(&build_ack(&inv, &busy), "old", false, t0), RequestDisposition::AckAbsorbed);
    // Another CSeq number is another transaction.
    let mut next = inv.clone();
    next.headers.set("CSeq", "8 INVITE");
    assert!(matches!(t.on_request(&next, "old", false, t0), RequestDisposition::New(_)));
}

#[test]
fn send_request_validates() {
    let mut t = table();
    let t0 = Instant::now();
    let mut r = invite("nocookie");
    assert_eq!(t.send_request(r.clone(), "pbx", false, t0), Err(TxnError::NoBranch));
    r.headers.remove("Via");
    assert_eq!(t.send_request(r, "pbx", false, t0), Err(TxnError::NoBranch));
    let mut r = invite("z9hG4bKa");
    r.headers.set("CSeq", "7 BYE");
    assert_eq!(t.send_request(r, "pbx", false, t0), Err(TxnError::BadCSeq));
    let ack = build_ack(&invite("z9hG4bKa"), &resp(&invite("z9hG4bKa"), 200));
    assert_eq!(t.send_request(ack, "pbx", false, t0), Err(TxnError::Ack));
    t.send_request(invite("z9hG4bKa"), "pbx", false, t0).unwrap();
    assert_eq!(t.send_request(invite("z9hG4bKa"), "pbx", false, t0), Err(TxnError::Duplicate));
    assert!(t.send_request(request(Method::Cancel, "z9hG4bKa"), "pbx", false, t0).is_ok());
}

// ---- table -----------------------------------------------------------------------------------

#[test]
fn table_full_refuses_new_transactions_but_matches_existing() {
    let mut t: Table = Transactions::new(TxnTimers::default(), 2);
    let t0 = Instant::now();
    let inv = invite("z9hG4bKs");
    let RequestDisposition::New(sid) = t.on_request(&inv, "teams", true, t0) else { panic!() };
    t.send_request(request(Method::Options, "z9hG4bK1"), "pbx", true, t0).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t.send_request(request(Method::Options, "z9hG4bK2"), "pbx", true, t0), Err(TxnError::Full(2)));
    let other = invite("z9hG4bKs2");
    assert_eq!(t.on_request(&other, "teams", true, t0), RequestDisposition::Overloaded);
    assert_eq!(t.on_request(&build_cancel(&inv), "teams", true, t0), RequestDisposition::Overloaded);
    assert_eq!(t.stats().overloaded, 2);
    // The TU answers 503 statelessly.
    t.send_stateless("teams", resp(&other, 503).to_bytes());
    assert_eq!(drain(&mut t).len(), 2);
    // Existing transactions still match; ACK to a 2xx still reaches the TU.
    assert_eq!(t.on_request(&inv, "teams", true, t0), RequestDisposition::Retransmission);
    assert_eq!(t.on_request(&build_ack(&other, &resp(&other, 200)), "teams", true, t0), RequestDisposition::Ack2xx);
    // Space comes back when a transaction ends.
    t.send_response(sid, &resp(&inv, 486), t0).unwrap();
    t.on_request(&build_ack(&inv, &resp(&inv, 486)), "teams", true, t0);
    assert_eq!(t.len(), 1);
    assert!(matches!(t.on_request(&other, "teams", true, t0), RequestDisposition::New(_)));
}

#[test]
fn transport_failure_ends_transactions_with_an_event() {
    let mut t = table();
    let t0 = Instant::now();
    let a = t.send_request(invite("z9hG4bK1"), "teams1", true, t0).unwrap();
    let b = t.send_request(request(Method::Options, "z9hG4bK2"), "teams1", true, t0).unwrap();
    let c = t.send_request(invite("z9hG4bK3"), "teams2", true, t0).unwrap();
    let RequestDisposition::New(s) = t.on_request(&invite("z9hG4bKs"), "teams1", true, t0) else { panic!() };
    assert_eq!(t.transport_failed(|d| *d == "teams1"), 3);
    let ev = events(&mut t);
    for e in [
        TxnEvent::ClientTransportError(a),
        TxnEvent::ClientTransportError(b),
        TxnEvent::ServerTransportError(s),
        TxnEvent::ServerTerminated(s),
    ] {
        assert!(ev.contains(&e), "{e:?} in {ev:?}");
    }
    assert_eq!(t.client_state(c), Some(ClientState::Calling));
    assert!(t.client_transport_failed(c));
    assert!(!t.client_transport_failed(c));
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTransportError(c), TxnEvent::ClientTerminated(c)]);
    assert!(t.is_empty());
    // Their timers are stale now.
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn many_transactions_heap_stays_bounded() {
    const N: usize = 10_000;
    let mut t: Table = Transactions::new(TxnTimers::default(), N);
    let t0 = Instant::now();
    let mut reqs = Vec::with_capacity(N);
    for i in 0..N {
        let r = request(Method::Options, &format!("z9hG4bK{i}"));
        t.send_request(r.clone(), "pbx", false, t0 + MS(i as u64 % 1000)).unwrap();
        reqs.push(r);
    }
    assert_eq!(t.len(), N);
    assert!(t.send_request(request(Method::Options, "z9hG4bKx"), "pbx", false, t0).is_err());
    // Provisional responses: E keeps running (reschedule, old heap entries go stale).
    for r in &reqs {
        t.on_response(resp(r, 100), t0 + Duration::from_secs(1));
    }
    // Final responses move them to Completed (timer K).
    for r in &reqs {
        t.on_response(resp(r, 200), t0 + Duration::from_secs(2));
    }
    assert!(t.queue.len() <= 2 * N + 1024 + 1, "queue {}", t.queue.len());
    drain(&mut t);
    t.handle_timeout(t0 + Duration::from_secs(7));
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(), None);
    assert!(t.queue.is_empty());
    assert_eq!(events(&mut t).len(), N);
}

#[test]
fn stale_timer_entries_are_compacted_under_churn() {
    let mut t = table();
    let t0 = Instant::now();
    let long = t.send_request(request(Method::Options, "z9hG4bKlong"), "pbx", true, t0).unwrap();
    for i in 0..10_000 {
        let r = request(Method::Options, &format!("z9hG4bK{i}"));
        // Over TCP each transaction pushes timer F, then ends at once on its 200 (K = 0).
        t.send_request(r.clone(), "pbx", true, t0).unwrap();
        assert!(t.on_response(resp(&r, 200), t0).is_some());
        assert!(t.queue.len() <= 2 * (t.len() + 1) + 1024, "queue {} at {i}", t.queue.len());
    }
    assert_eq!(t.len(), 1);
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    t.handle_timeout(t0 + Duration::from_secs(32));
    assert!(events(&mut t).contains(&TxnEvent::ClientTimeout(long)));
}

#[test]
fn late_handle_timeout_sends_one_retransmission_and_keeps_schedule() {
    let mut t = table();
    let t0 = Instant::now();
    t.send_request(request(Method::Options, "z9hG4bKo"), "pbx", false, t0).unwrap();
    drain(&mut t);
    // The driver wakes up late (at 1.6 s instead of 0.5 s): one retransmission now.
    t.handle_timeout(t0 + MS(1600));
    assert_eq!(drain(&mut t).len(), 1);
    assert_eq!(t.poll_timeout(), Some(t0 + MS(2600)), "0.5 + 1 s is past: one interval from now");
    // Slightly late (0.1 s): the next one stays on the planned grid.
    t.handle_timeout(t0 + MS(2700));
    assert_eq!(drain(&mut t).len(), 1);
    assert_eq!(t.poll_timeout(), Some(t0 + MS(4600)));
}

#[test]
fn new_branch_has_cookie_and_is_unique() {
    let a = new_branch();
    let b = new_branch();
    assert!(a.starts_with("z9hG4bK") && a.len() == 29);
    assert_ne!(a, b);
}

#[test]
fn custom_timer_values() {
    let timers = TxnTimers { t1: MS(100), t2: MS(400), t4: MS(1000) };
    let mut t: Table = Transactions::new(timers, 10);
    let t0 = Instant::now();
    let id = t.send_request(request(Method::Options, "z9hG4bKo"), "pbx", false, t0).unwrap();
    drain(&mut t);
    let sent = run(&mut t, t0, Duration::from_secs(10));
    assert_eq!(sent, secs(&[0.1, 0.3, 0.7, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5, 3.9, 4.3, 4.7, 5.1, 5.5, 5.9, 6.3]));
    assert_eq!(events(&mut t), vec![TxnEvent::ClientTimeout(id), TxnEvent::ClientTerminated(id)]);
}
