//! Sans-IO tests of the call engine: messages in, messages out, virtual time.

use super::*;
use crate::sip::msg::{parse_datagram, Limits, Message, Request, Response};
use crate::sip::transport::{Peer, Proto};
use std::time::{Duration, Instant};
use bytes::Bytes;

struct Plan;
impl Dialplan for Plan {
    fn to_teams(&self, n: &str) -> String {
        if n.len() == 4 { format!("+468123{n}") } else { n.to_string() }
    }
    fn to_pbx(&self, n: &str) -> String {
        n.strip_prefix("+468123").unwrap_or(n).to_string()
    }
    fn route(&self, n: &str, from: Side) -> Side {
        if n.starts_with("+468123") { Side::Pbx } else if from == Side::Pbx { Side::Teams } else { Side::Pbx }
    }
}

const PBX: &str = "10.9.9.9:5080";
const TEAMS_IN: &str = "52.114.1.1:40000";

fn proxies() -> Vec<TeamsProxy> {
    (1..=3)
        .map(|i| TeamsProxy {
            host: if i == 1 { "sip.pstnhub.microsoft.com".into() } else { format!("sip{i}.pstnhub.microsoft.com") },
            port: 5061,
            addr: format!("52.112.0.{i}:5061").parse().unwrap(),
        })
        .collect()
}

fn cfg() -> CoreConfig {
    CoreConfig {
        fqdn: "sbc.example.com".into(),
        user_agent: "drbridge".into(),
        teams_contact_port: 5061,
        teams_proxies: proxies(),
        options_interval: Duration::from_secs(60),
        pbx_options_interval: Some(Duration::from_secs(30)),
        failover_timeout: Duration::from_secs(10),
        failover_codes: vec![408, 503, 504],
        pbx: Peer { proto: Proto::Udp, addr: PBX.parse().unwrap() },
        pbx_domain: PBX.into(),
        pbx_local: "10.9.9.1:5060".parse().unwrap(),
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
        session_expires: 1800,
        min_se: 90,
        ring_timeout: Some(Duration::from_secs(180)),
        max_calls: 10,
        live_calls: Default::default(),
        max_transactions: 1000,
        written: Default::default(),
    }
}

struct World {
    core: B2bua,
    now: Instant,
    sent: Vec<(Hop, Message)>,
}

impl World {
    fn new() -> World {
        let now = Instant::now();
        let mut core = B2bua::new(cfg(), Box::new(Plan), now);
        core.handle_timeout(now);
        let mut w = World { core, now, sent: vec![] };
        w.flush();
        w.sent.clear(); // initial OPTIONS
        w
    }
    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            let m = parse_datagram(t.data.clone(), &Limits::default()).expect("drbridge writes parseable messages");
            self.sent.push((t.hop, m));
        }
    }
    fn from_pbx(&mut self, text: &str) {
        let m = parse_datagram(bytes::Bytes::from(text.replace('\n', "\r\n")), &Limits::default()).unwrap();
        self.core.handle_message(m, Peer { proto: Proto::Udp, addr: PBX.parse().unwrap() }, Side::Pbx, self.now);
        self.flush();
    }
    fn from_teams(&mut self, m: Message, addr: &str) {
        self.core.handle_message(m, Peer { proto: Proto::Tls, addr: addr.parse().unwrap() }, Side::Teams, self.now);
        self.flush();
    }
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            match self.core.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = t.max(self.now);
                    self.core.handle_timeout(self.now);
                    self.flush();
                }
                _ => break,
            }
        }
        self.now = end;
    }
    fn take(&mut self) -> Vec<(Hop, Message)> {
        std::mem::take(&mut self.sent)
    }
    fn requests(&mut self, method: crate::sip::msg::Method) -> Vec<(Hop, Request)> {
        self.take()
            .into_iter()
            .filter_map(|(h, m)| match m {
                Message::Request(r) if r.method == method => Some((h, r)),
                _ => None,
            })
            .collect()
    }
}

fn pbx_invite(call_id: &str) -> String {
    format!(
        "INVITE sip:+4930555@10.9.9.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-{call_id}
Max-Forwards: 70
From: \"Alice\" <sip:4711@10.9.9.9>;tag=pbx1
To: <sip:+4930555@10.9.9.1>
Call-ID: {call_id}@10.9.9.9
CSeq: 1 INVITE
Contact: <sip:4711@10.9.9.9:5080>
Content-Type: application/sdp

v=0
o=pbx 1 1 IN IP4 10.9.9.9
s=-
c=IN IP4 10.9.9.9
t=0 0
m=audio 40000 RTP/AVP 8 101
a=rtpmap:101 telephone-event/8000
"
    )
}

fn respond(req: &Request, status: u16, tag: &str, contact: &str) -> Message {
    let mut r: Response = req.response(status, Some(tag));
    if status > 100 && status < 300 {
        r.headers.push("Contact", contact.to_string());
        r.headers.push("Record-Route", "<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>");
    }
    Message::Response(r)
}

#[test]
fn pbx_to_teams_call_hides_topology_and_speaks_direct_routing() {
    let mut w = World::new();
    w.from_pbx(&pbx_invite("c1"));
    let sent = w.take();
    let trying = sent.iter().find(|(_, m)| matches!(m, Message::Response(r) if r.status == 100));
    assert!(trying.is_some(), "100 Trying to the PBX");
    let (hop, inv) = sent
        .iter()
        .find_map(|(h, m)| match m {
            Message::Request(r) if r.method == crate::sip::msg::Method::Invite => Some((h.clone(), r.clone())),
            _ => None,
        })
        .expect("INVITE toward Teams");
    assert_eq!(hop.peer.addr, "52.112.0.1:5061".parse().unwrap());
    assert_eq!(hop.tls_name.as_deref(), Some("sip.pstnhub.microsoft.com"));
    assert_eq!(&*inv.uri, "sip:+4930555@sip.pstnhub.microsoft.com:5061;user=phone");
    assert_eq!(inv.headers.get("Contact"), Some("<sip:+4681234711@sbc.example.com:5061;transport=tls>"));
    assert!(inv.headers.get("From").unwrap().contains("sip:+4681234711@sbc.example.com"));
    assert!(inv.headers.get("X-MS-SBC").is_some());
    assert!(inv.headers.get("Allow").unwrap().contains("REFER"));
    // Signalling only: SDP passes through until media anchoring lands.
    let text = String::from_utf8_lossy(&inv.to_bytes()).split("\r\n\r\n").next().unwrap().to_string();
    assert!(!text.contains("10.9.9"), "PBX address leaked: {text}");
    assert!(!text.contains("c1@"), "PBX Call-ID leaked");

    w.from_teams(respond(&inv, 180, "ms1", "<sip:api-du-b.pstnhub.microsoft.com:443;transport=tls>"), "52.112.0.1:5061");
    let sent = w.take();
    let ring = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 180 => Some(r.clone()), _ => None }).unwrap();
    assert_eq!(ring.call_id(), Some("c1@10.9.9.9"));
    assert!(!String::from_utf8_lossy(&ring.to_bytes()).contains("pstnhub"));
    assert!(ring.to_tag().is_some());

    w.from_teams(respond(&inv, 200, "ms1", "<sip:api-du-b.pstnhub.microsoft.com:443;transport=tls>"), "52.112.0.1:5061");
    let sent = w.take();
    let ack = sent.iter().find_map(|(h, m)| match m { Message::Request(r) if r.method == crate::sip::msg::Method::Ack => Some((h.clone(), r.clone())), _ => None }).expect("ACK to Teams");
    assert_eq!(&*ack.1.uri, "sip:api-du-b.pstnhub.microsoft.com:443;transport=tls");
    assert_eq!(ack.1.headers.get("Route"), Some("<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"));
    let ok = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 200 => Some(r.clone()), _ => None }).expect("200 to PBX");
    assert!(ok.headers.get("Contact").unwrap().contains("10.9.9.1:5060"));
    assert!(matches!(w.core.poll_event(), Some(CallEvent::Ringing { .. })));
    assert!(matches!(w.core.poll_event(), Some(CallEvent::Answered { .. })));

    // BYE from the PBX: 200 to it, BYE to Teams in the Teams dialog.
    let bye = format!(
        "BYE sip:+4930555@10.9.9.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-bye1
Max-Forwards: 70
From: \"Alice\" <sip:4711@10.9.9.9>;tag=pbx1
To: <sip:+4930555@10.9.9.1>;tag={}
Call-ID: c1@10.9.9.9
CSeq: 2 BYE
Content-Length: 0

",
        ok.to_tag().unwrap()
    );
    w.from_pbx(&bye);
    let byes = w.requests(crate::sip::msg::Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.call_id(), inv.call_id());
    assert_eq!(byes[0].1.to_tag(), Some("ms1"));
}

#[test]
fn silent_proxy_fails_over_and_603_is_final() {
    let mut w = World::new();
    w.from_pbx(&pbx_invite("c2"));
    let first = w.requests(crate::sip::msg::Method::Invite);
    assert_eq!(first[0].0.peer.addr, "52.112.0.1:5061".parse().unwrap());
    w.advance(Duration::from_secs(11));
    let second = w.requests(crate::sip::msg::Method::Invite);
    assert_eq!(second.len(), 1, "one INVITE to the next proxy");
    assert_eq!(second[0].0.peer.addr, "52.112.0.2:5061".parse().unwrap());
    assert!(second[0].1.uri.contains("sip2.pstnhub.microsoft.com"));
    // 603 from the second: no third attempt, 603 relayed.
    w.from_teams(respond(&second[0].1, 603, "x", ""), "52.112.0.2:5061");
    let sent = w.take();
    assert!(sent.iter().all(|(_, m)| !matches!(m, Message::Request(r) if r.method == crate::sip::msg::Method::Invite)));
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 603)));
}

#[test]
fn failover_on_503() {
    let mut w = World::new();
    w.from_pbx(&pbx_invite("c3"));
    let first = w.requests(crate::sip::msg::Method::Invite);
    w.from_teams(respond(&first[0].1, 503, "x", ""), "52.112.0.1:5061");
    let second = w.requests(crate::sip::msg::Method::Invite);
    assert_eq!(second[0].0.peer.addr, "52.112.0.2:5061".parse().unwrap());
}

#[test]
fn cancel_before_answer() {
    let mut w = World::new();
    w.from_pbx(&pbx_invite("c4"));
    let inv = w.requests(crate::sip::msg::Method::Invite).remove(0).1;
    w.from_teams(respond(&inv, 180, "ms", "<sip:a.pstnhub.microsoft.com>"), "52.112.0.1:5061");
    w.take();
    w.from_pbx(
        "CANCEL sip:+4930555@10.9.9.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-c4
Max-Forwards: 70
From: \"Alice\" <sip:4711@10.9.9.9>;tag=pbx1
To: <sip:+4930555@10.9.9.1>
Call-ID: c4@10.9.9.9
CSeq: 1 CANCEL
Content-Length: 0

",
    );
    let sent = w.take();
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 200 && r.cseq().unwrap().method == crate::sip::msg::Method::Cancel)));
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 487)));
    let cancel = sent.iter().find_map(|(_, m)| match m { Message::Request(r) if r.method == crate::sip::msg::Method::Cancel => Some(r.clone()), _ => None }).expect("CANCEL to Teams");
    assert_eq!(cancel.call_id(), inv.call_id());
}

/// What drbridge sent, as (CANCELs to Teams, final responses to the PBX's INVITE, BYEs).
fn give_up_signs(sent: &[(Hop, Message)]) -> (usize, Vec<u16>, usize) {
    use crate::sip::msg::Method;
    let cancels = sent.iter().filter(|(_, m)| matches!(m, Message::Request(r) if r.method == Method::Cancel)).count();
    let byes = sent.iter().filter(|(_, m)| matches!(m, Message::Request(r) if r.method == Method::Bye)).count();
    let finals = sent
        .iter()
        .filter_map(|(h, m)| match m {
            Message::Response(r) if r.status >= 200 && h.peer.addr == PBX.parse().unwrap() && r.cseq().is_some_and(|c| c.method == Method::Invite) => Some(r.status),
            _ => None,
        })
        .collect();
    (cancels, finals, byes)
}

/// A PBX call to Teams, ringing (180 from Teams); returns the INVITE Teams got.
fn ringing_teams_call(w: &mut World, id: &str) -> Request {
    w.from_pbx(&pbx_invite(id));
    let inv = w.requests(crate::sip::msg::Method::Invite).remove(0).1;
    w.from_teams(respond(&inv, 180, "ms", "<sip:a.pstnhub.microsoft.com>"), "52.112.0.1:5061");
    inv
}

#[test]
fn an_unanswered_call_is_given_up_at_the_ring_timeout() {
    let mut w = World::new();
    let inv = ringing_teams_call(&mut w, "rt");
    w.take();
    w.advance(Duration::from_secs(179));
    assert_eq!(give_up_signs(&w.take()), (0, vec![], 0), "still ringing before the ring timeout");
    w.advance(Duration::from_secs(2));
    let sent = w.take();
    let (cancels, mut finals, _) = give_up_signs(&sent);
    finals.dedup(); // the 408 is retransmitted over UDP until the PBX ACKs it
    assert_eq!((cancels, finals), (1, vec![408]), "CANCEL toward Teams and 408 to the PBX: {sent:?}");
    let cancel = sent.iter().find_map(|(_, m)| match m { Message::Request(r) if r.method == crate::sip::msg::Method::Cancel => Some(r.clone()), _ => None }).unwrap();
    assert_eq!(cancel.call_id(), inv.call_id());
    assert_eq!(w.core.stats.ring_timeouts, 1);
}

#[test]
fn a_call_answered_late_outlives_the_ring_timeout() {
    let mut w = World::new();
    let inv = ringing_teams_call(&mut w, "rl");
    w.advance(Duration::from_secs(170));
    w.from_teams(respond(&inv, 200, "ms", "<sip:a.pstnhub.microsoft.com:5061;transport=tls>"), "52.112.0.1:5061");
    let sent = w.take();
    assert_eq!(give_up_signs(&sent).1, vec![200]);
    let tag = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 200 => r.to_tag().map(str::to_string), _ => None }).unwrap();
    w.from_pbx(&format!(
        "ACK sip:+4930555@10.9.9.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-ackrl
Max-Forwards: 70
From: \"Alice\" <sip:4711@10.9.9.9>;tag=pbx1
To: <sip:+4930555@10.9.9.1>;tag={tag}
Call-ID: rl@10.9.9.9
CSeq: 1 ACK
Content-Length: 0

"
    ));
    w.advance(Duration::from_secs(20));
    let (cancels, finals, byes) = give_up_signs(&w.take());
    assert_eq!((cancels, finals.len(), byes), (0, 0, 0), "an answered call is not given up");
    assert_eq!(w.core.stats.ring_timeouts, 0);
}

fn answered_teams_call(w: &mut World) -> (Request, Response) {
    w.from_pbx(&pbx_invite("st"));
    let inv = w.requests(crate::sip::msg::Method::Invite).remove(0).1;
    let mut ok = inv.response(200, Some("ms"));
    ok.headers.push("Contact", "<sip:a.pstnhub.microsoft.com:5061;transport=tls>");
    ok.headers.push("Session-Expires", "180;refresher=uac");
    ok.headers.push("Require", "timer");
    w.from_teams(Message::Response(ok.clone()), "52.112.0.1:5061");
    let sent = w.take();
    let pbx_ok = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 200 => Some(r.clone()), _ => None }).unwrap();
    // ACK from the PBX ends 2xx retransmission.
    w.from_pbx(&format!(
        "ACK sip:+4930555@10.9.9.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-ack
Max-Forwards: 70
From: \"Alice\" <sip:4711@10.9.9.9>;tag=pbx1
To: <sip:+4930555@10.9.9.1>;tag={}
Call-ID: st@10.9.9.9
CSeq: 1 ACK
Content-Length: 0

",
        pbx_ok.to_tag().unwrap()
    ));
    (inv, pbx_ok)
}

#[test]
fn drbridge_refreshes_the_session_and_a_failed_refresh_ends_the_call() {
    let mut w = World::new();
    answered_teams_call(&mut w);
    w.take();
    w.advance(Duration::from_secs(91));
    let upd = w.requests(crate::sip::msg::Method::Update);
    assert_eq!(upd.len(), 1, "refresh at half the interval");
    assert!(upd[0].1.body.is_empty());
    assert_eq!(upd[0].1.headers.get("Session-Expires"), Some("180;refresher=uac"));
    // 200 -> next refresh 90 s later.
    w.from_teams(Message::Response(upd[0].1.response(200, None)), "52.112.0.1:5061");
    w.advance(Duration::from_secs(91));
    let upd2 = w.requests(crate::sip::msg::Method::Update);
    assert_eq!(upd2.len(), 1);
    // 481: the call ends on both legs (BYE toward the PBX).
    w.from_teams(Message::Response(upd2[0].1.response(481, None)), "52.112.0.1:5061");
    let byes = w.requests(crate::sip::msg::Method::Bye);
    assert!(byes.iter().any(|(h, _)| h.peer.addr == PBX.parse().unwrap()), "BYE to the PBX");
}

#[test]
fn no_ack_for_2xx_over_udp_is_retransmitted_then_ends_the_call() {
    let mut w = World::new();
    w.from_pbx(&pbx_invite("na"));
    let inv = w.requests(crate::sip::msg::Method::Invite).remove(0).1;
    w.from_teams(respond(&inv, 200, "ms", "<sip:a.pstnhub.microsoft.com>"), "52.112.0.1:5061");
    w.take();
    w.advance(Duration::from_millis(600));
    let re = w.take();
    assert!(re.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 200)), "2xx retransmitted");
    w.advance(Duration::from_secs(40));
    let byes = w.requests(crate::sip::msg::Method::Bye);
    assert!(!byes.is_empty(), "call ended after 64*T1 without ACK");
}

#[test]
fn overload_is_503_with_retry_after() {
    let mut w = World::new();
    for i in 0..10 {
        w.from_pbx(&pbx_invite(&format!("o{i}")));
    }
    w.take();
    w.from_pbx(&pbx_invite("o10"));
    let sent = w.take();
    let r = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 503 => Some(r.clone()), _ => None }).unwrap();
    assert!(r.headers.get("Retry-After").is_some());
}

#[test]
fn requests_from_unknown_pbx_sources_are_refused() {
    let mut w = World::new();
    let m = parse_datagram(bytes::Bytes::from(pbx_invite("x").replace('\n', "\r\n")), &Limits::default()).unwrap();
    w.core.handle_message(m, Peer { proto: Proto::Udp, addr: "10.66.6.6:5060".parse().unwrap() }, Side::Pbx, w.now);
    w.flush();
    let sent = w.take();
    assert_eq!(sent.len(), 1);
    assert!(matches!(&sent[0].1, Message::Response(r) if r.status == 403));
    let _ = TEAMS_IN;
}

fn find_req(sent: &[(Hop, Message)], m: crate::sip::msg::Method) -> Option<(Hop, Request)> {
    sent.iter().find_map(|(h, x)| match x {
        Message::Request(r) if r.method == m => Some((h.clone(), r.clone())),
        _ => None,
    })
}

/// An in-dialog request from Teams on the dialog that `inv` (our INVITE to Teams) opened.
fn teams_in_dialog(inv: &Request, method: &str, cseq: u32, extra: &str, body: &str) -> Message {
    let text = format!(
        "{method} sip:+4681234711@sbc.example.com:5061;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS 52.112.0.1:5061;branch=z9hG4bK-{method}{cseq}\r\n\
Max-Forwards: 70\r\n\
From: {}\r\n\
To: {}\r\n\
Call-ID: {}\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:a.pstnhub.microsoft.com:5061;transport=tls>\r\n\
{extra}\
Content-Length: {}\r\n\r\n{body}",
        inv.headers.get("To").unwrap().to_string() + ";tag=ms",
        inv.headers.get("From").unwrap(),
        inv.call_id().unwrap(),
        body.len()
    );
    parse_datagram(bytes::Bytes::from(text), &Limits::default()).unwrap()
}

#[test]
fn refer_from_teams_transfers_the_pbx_caller_to_another_teams_number() {
    let mut w = World::new();
    let (inv, _) = answered_teams_call(&mut w);
    w.take();
    w.from_teams(
        teams_in_dialog(&inv, "REFER", 5, "Refer-To: <sip:+4930666@sip.pstnhub.microsoft.com;user=phone>\r\nReferred-By: <sip:+4930555@sip.pstnhub.microsoft.com>\r\n", ""),
        "52.112.0.1:5061",
    );
    let sent = w.take();
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 202)));
    let notify = find_req(&sent, crate::sip::msg::Method::Notify).expect("NOTIFY 100").1;
    assert_eq!(&notify.body[..], b"SIP/2.0 100 Trying\r\n");
    assert_eq!(notify.headers.get("Event"), Some("refer"));
    let (hop, inv2) = find_req(&sent, crate::sip::msg::Method::Invite).expect("INVITE to target");
    assert_eq!(hop.peer.addr, "52.112.0.1:5061".parse().unwrap());
    assert!(inv2.uri.starts_with("sip:+4930666@sip.pstnhub.microsoft.com"));
    assert!(inv2.headers.get("From").unwrap().contains("+4681234711"), "the remaining party is the caller");
    assert!(String::from_utf8_lossy(&inv2.body).contains("m=audio 40000"), "offer = remaining party's SDP");
    assert_ne!(inv2.call_id(), inv.call_id());

    let mut ok = inv2.response(200, Some("tgt"));
    ok.headers.push("Contact", "<sip:b.pstnhub.microsoft.com:5061;transport=tls>");
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = bytes::Bytes::from_static(b"v=0\r\no=t 1 1 IN IP4 52.113.0.9\r\ns=-\r\nc=IN IP4 52.113.0.9\r\nt=0 0\r\nm=audio 50000 RTP/SAVP 8\r\n");
    w.from_teams(Message::Response(ok), "52.112.0.1:5061");
    let sent = w.take();
    assert!(find_req(&sent, crate::sip::msg::Method::Ack).is_some(), "ACK to the target");
    let notify = find_req(&sent, crate::sip::msg::Method::Notify).expect("NOTIFY 200").1;
    assert_eq!(&notify.body[..], b"SIP/2.0 200 OK\r\n");
    assert!(notify.headers.get("Subscription-State").unwrap().starts_with("terminated"));
    let bye = find_req(&sent, crate::sip::msg::Method::Bye).expect("BYE to the transferor").1;
    assert_eq!(bye.call_id(), inv.call_id());
    let (hop, reinv) = find_req(&sent, crate::sip::msg::Method::Invite).expect("re-INVITE to the PBX");
    assert_eq!(hop.peer.addr, PBX.parse().unwrap());
    assert!(String::from_utf8_lossy(&reinv.body).contains("m=audio 50000"));

    let mut pok = reinv.response(200, None);
    pok.headers.push("Contact", "<sip:4711@10.9.9.9:5080>");
    pok.headers.push("Content-Type", "application/sdp");
    pok.body = bytes::Bytes::from_static(b"v=0\r\no=pbx 1 2 IN IP4 10.9.9.9\r\ns=-\r\nc=IN IP4 10.9.9.9\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\n");
    w.from_pbx(&String::from_utf8_lossy(&pok.to_bytes()).replace("\r\n", "\n"));
    let sent = w.take();
    assert!(find_req(&sent, crate::sip::msg::Method::Ack).is_some(), "ACK to the PBX");
}

/// A transfer target that rings past the ring timeout: CANCEL to it, NOTIFY 408 to the
/// transferor, and the call itself stays up (its 487 is not the call's failure).
#[test]
fn a_transfer_target_ringing_past_the_ring_timeout_fails_the_transfer_only() {
    let now = Instant::now();
    let mut c = cfg();
    c.ring_timeout = Some(Duration::from_secs(10));
    let mut core = B2bua::new(c, Box::new(Plan), now);
    core.handle_timeout(now);
    let mut w = World { core, now, sent: vec![] };
    w.flush();
    w.sent.clear();
    let (inv, _) = answered_teams_call(&mut w);
    w.take();
    w.from_teams(teams_in_dialog(&inv, "REFER", 5, "Refer-To: <sip:+4930666@sip.pstnhub.microsoft.com;user=phone>\r\n", ""), "52.112.0.1:5061");
    let (_, target) = find_req(&w.take(), crate::sip::msg::Method::Invite).expect("INVITE to the target");
    w.from_teams(respond(&target, 180, "tgt", "<sip:b.pstnhub.microsoft.com:5061;transport=tls>"), "52.112.0.1:5061");
    w.take();
    w.advance(Duration::from_secs(9));
    assert!(find_req(&w.take(), crate::sip::msg::Method::Cancel).is_none(), "still ringing at 9 s");
    w.advance(Duration::from_secs(2));
    let sent = w.take();
    let cancel = find_req(&sent, crate::sip::msg::Method::Cancel).expect("CANCEL to the target").1;
    assert_eq!(cancel.call_id(), target.call_id());
    let notify = find_req(&sent, crate::sip::msg::Method::Notify).expect("NOTIFY to the transferor").1;
    assert_eq!(&notify.body[..], b"SIP/2.0 408 Request Timeout\r\n");
    assert!(find_req(&sent, crate::sip::msg::Method::Bye).is_none(), "the call stays up");
    w.from_teams(Message::Response(target.response(487, Some("tgt"))), "52.112.0.1:5061");
    assert!(find_req(&w.take(), crate::sip::msg::Method::Bye).is_none(), "the target's 487 ends nothing");
    assert_eq!(w.core.stats.ring_timeouts, 1);
    assert_eq!(w.core.active_calls(), 1);
}

#[test]
fn refer_to_a_pbx_extension_routes_to_the_pbx() {
    let mut w = World::new();
    let (inv, _) = answered_teams_call(&mut w);
    w.take();
    w.from_teams(teams_in_dialog(&inv, "REFER", 5, "Refer-To: <sip:+4681234712@sip.pstnhub.microsoft.com;user=phone>\r\n", ""), "52.112.0.1:5061");
    let sent = w.take();
    let (hop, inv2) = find_req(&sent, crate::sip::msg::Method::Invite).expect("INVITE to the PBX");
    assert_eq!(hop.peer.addr, PBX.parse().unwrap());
    assert!(inv2.uri.starts_with("sip:4712@"), "{}", inv2.uri);
}

#[test]
fn tls_failure_to_a_proxy_fails_over_at_once() {
    let mut w = World::new();
    w.from_pbx(&pbx_invite("tf"));
    let first = w.requests(crate::sip::msg::Method::Invite);
    w.core.handle_connect_failed(first[0].0.peer, w.now);
    w.flush();
    let second = w.requests(crate::sip::msg::Method::Invite);
    assert_eq!(second[0].0.peer.addr, "52.112.0.2:5061".parse().unwrap());
    assert_eq!(w.core.proxies_up(), vec![false, true, true]);
}

fn teams_invite(to: &str) -> Message {
    let sdp = "v=0\r\no=ms 1 1 IN IP4 52.113.0.1\r\ns=-\r\nc=IN IP4 52.113.0.1\r\nt=0 0\r\nm=audio 50000 RTP/SAVP 0 101\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\n";
    let text = format!(
        "INVITE sip:{to}@sbc.example.com:5061;user=phone;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS 52.114.7.7:5061;branch=z9hG4bKms1\r\n\
Record-Route: <sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"Bob\" <sip:+4930555@sip.pstnhub.microsoft.com:5061;user=phone>;tag=msf\r\n\
To: <sip:{to}@sbc.example.com:5061;user=phone>\r\n\
Call-ID: ms-call-1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:api-du-b.pstnhub.microsoft.com:443;x-i=abc;transport=tls>\r\n\
Supported: timer\r\n\
Session-Expires: 1800;refresher=uac\r\n\
History-Info: <sip:+4681234700@sip.pstnhub.microsoft.com;user=phone?Reason=SIP%3Bcause%3D302>;index=1\r\n\
History-Info: <sip:{to}@sip.pstnhub.microsoft.com;user=phone;cause=302>;index=1.1\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    parse_datagram(bytes::Bytes::from(text), &Limits::default()).unwrap()
}

#[test]
fn teams_to_pbx_call_with_hold_and_local_refresh() {
    let mut w = World::new();
    w.from_teams(teams_invite("+4681234711"), TEAMS_IN);
    let sent = w.take();
    let (hop, inv) = find_req(&sent, crate::sip::msg::Method::Invite).expect("INVITE to the PBX");
    assert_eq!(hop.peer.addr, PBX.parse().unwrap());
    assert!(inv.uri.starts_with("sip:4711@10.9.9.9:5080"), "{}", inv.uri);
    assert!(inv.headers.get("From").unwrap().contains("+4930555@10.9.9.1:5060"));
    assert_eq!(inv.headers.get("Diversion"), Some("<sip:4700@10.9.9.1:5060>;reason=unconditional;counter=1"));
    let head = String::from_utf8_lossy(&inv.to_bytes()).split("\r\n\r\n").next().unwrap().to_string();
    assert!(!head.contains("pstnhub") && !head.contains("ms-call-1") && !head.contains("52.11"), "Teams topology leaked: {head}");
    assert!(head.contains("Max-Forwards: 70") || head.contains("Max-Forwards"));

    let mut ok = inv.response(200, Some("pbxt"));
    ok.headers.push("Contact", "<sip:4711@10.9.9.9:5080>");
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = bytes::Bytes::from_static(b"v=0\r\no=pbx 1 1 IN IP4 10.9.9.9\r\ns=-\r\nc=IN IP4 10.9.9.9\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n");
    w.from_pbx(&String::from_utf8_lossy(&ok.to_bytes()).replace("\r\n", "\n"));
    let sent = w.take();
    let teams_ok = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 200 => Some(r.clone()), _ => None }).unwrap();
    assert_eq!(teams_ok.headers.get("Contact"), Some("<sip:sbc.example.com:5061;transport=tls>"));
    assert_eq!(teams_ok.headers.get("Session-Expires"), Some("1800;refresher=uac"));
    assert_eq!(teams_ok.headers.get("Require"), Some("timer"));
    assert!(!String::from_utf8_lossy(&teams_ok.to_bytes()).split("\r\n\r\n").next().unwrap().contains("10.9.9"));

    // Hold from Teams: re-INVITE a=sendonly relayed to the PBX.
    let sdp_hold = "v=0\r\no=ms 1 2 IN IP4 52.113.0.1\r\ns=-\r\nc=IN IP4 52.113.0.1\r\nt=0 0\r\nm=audio 50000 RTP/SAVP 0\r\na=sendonly\r\n";
    let tag = teams_ok.to_tag().unwrap();
    let reinv = format!(
        "INVITE sip:sbc.example.com:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 52.114.7.7:5061;branch=z9hG4bKms2\r\nMax-Forwards: 70\r\nFrom: \"Bob\" <sip:+4930555@sip.pstnhub.microsoft.com:5061;user=phone>;tag=msf\r\nTo: <sip:+4681234711@sbc.example.com:5061;user=phone>;tag={tag}\r\nCall-ID: ms-call-1\r\nCSeq: 2 INVITE\r\nContact: <sip:api-du-b.pstnhub.microsoft.com:443;transport=tls>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp_hold}",
        sdp_hold.len()
    );
    w.from_teams(parse_datagram(bytes::Bytes::from(reinv), &Limits::default()).unwrap(), TEAMS_IN);
    let sent = w.take();
    let (_, pbx_reinv) = find_req(&sent, crate::sip::msg::Method::Invite).expect("re-INVITE to the PBX");
    assert_eq!(pbx_reinv.call_id(), inv.call_id());
    assert!(String::from_utf8_lossy(&pbx_reinv.body).contains("a=sendonly"));
    assert!(w.core.poll_event().is_some());

    // UPDATE without SDP from Teams: a refresh, answered by drbridge, not relayed.
    let upd = format!(
        "UPDATE sip:sbc.example.com:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 52.114.7.7:5061;branch=z9hG4bKms3\r\nMax-Forwards: 70\r\nFrom: <sip:+4930555@sip.pstnhub.microsoft.com>;tag=msf\r\nTo: <sip:+4681234711@sbc.example.com>;tag={tag}\r\nCall-ID: ms-call-1\r\nCSeq: 3 UPDATE\r\nSession-Expires: 1800;refresher=uac\r\nSupported: timer\r\nContent-Length: 0\r\n\r\n"
    );
    w.from_teams(parse_datagram(bytes::Bytes::from(upd), &Limits::default()).unwrap(), TEAMS_IN);
    let sent = w.take();
    assert_eq!(sent.len(), 1, "answered locally only");
    assert!(matches!(&sent[0].1, Message::Response(r) if r.status == 200 && r.headers.get("Session-Expires").is_some()));
}

#[test]
fn invite_with_replaces_takes_over_the_teams_leg() {
    let mut w = World::new();
    let (inv, _) = answered_teams_call(&mut w);
    w.take();
    let our_tag = inv.from_tag().unwrap();
    let sdp = "v=0\r\no=ms 9 9 IN IP4 52.113.0.7\r\ns=-\r\nc=IN IP4 52.113.0.7\r\nt=0 0\r\nm=audio 51000 RTP/SAVP 0\r\n";
    let text = format!(
        "INVITE sip:+4681234711@sbc.example.com:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 52.114.7.7:5061;branch=z9hG4bKrep1\r\nMax-Forwards: 70\r\nFrom: <sip:+4930777@sip.pstnhub.microsoft.com>;tag=newms\r\nTo: <sip:+4681234711@sbc.example.com>\r\nCall-ID: ms-new-call\r\nCSeq: 1 INVITE\r\nContact: <sip:c.pstnhub.microsoft.com:5061;transport=tls>\r\nReplaces: {};to-tag={our_tag};from-tag=ms\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        inv.call_id().unwrap(),
        sdp.len()
    );
    w.from_teams(parse_datagram(bytes::Bytes::from(text), &Limits::default()).unwrap(), TEAMS_IN);
    let sent = w.take();
    let (hop, reinv) = find_req(&sent, crate::sip::msg::Method::Invite).expect("re-INVITE to the PBX");
    assert_eq!(hop.peer.addr, PBX.parse().unwrap());
    assert!(String::from_utf8_lossy(&reinv.body).contains("m=audio 51000"));
    let mut pok = reinv.response(200, None);
    pok.headers.push("Contact", "<sip:4711@10.9.9.9:5080>");
    pok.headers.push("Content-Type", "application/sdp");
    pok.body = bytes::Bytes::from_static(b"v=0\r\no=pbx 1 3 IN IP4 10.9.9.9\r\ns=-\r\nc=IN IP4 10.9.9.9\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n");
    w.from_pbx(&String::from_utf8_lossy(&pok.to_bytes()).replace("\r\n", "\n"));
    let sent = w.take();
    let ok = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 200 && r.call_id() == Some("ms-new-call") => Some(r.clone()), _ => None }).expect("200 to the replacing INVITE");
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 40000"));
    let bye = find_req(&sent, crate::sip::msg::Method::Bye).expect("BYE to the replaced leg").1;
    assert_eq!(bye.call_id(), inv.call_id());
}

#[test]
fn replaces_for_an_unknown_dialog_is_481() {
    let mut w = World::new();
    let text = "INVITE sip:+4681234711@sbc.example.com SIP/2.0\r\nVia: SIP/2.0/TLS 52.114.7.7:5061;branch=z9hG4bKrep2\r\nMax-Forwards: 70\r\nFrom: <sip:+4930777@sip.pstnhub.microsoft.com>;tag=n\r\nTo: <sip:+4681234711@sbc.example.com>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nReplaces: nope;to-tag=a;from-tag=b\r\nContent-Length: 0\r\n\r\n";
    w.from_teams(parse_datagram(bytes::Bytes::from(text), &Limits::default()).unwrap(), TEAMS_IN);
    let sent = w.take();
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 481)));
}

// ---------------------------------------------------------------------------------- media

use crate::config::Trunk;
use crate::media::{IceCredentials, LocalMedia, MediaControl, MediaEnd, MediaError, MediaEvent, MediaSessionId, RemoteMedia, SrtpKey, SrtpSuite};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct FakeMediaState {
    next: u64,
    capacity: usize,
    sessions: std::collections::HashMap<u64, (Trunk, Trunk)>,
    remotes: Vec<(u64, MediaEnd, RemoteMedia)>,
    freed: Vec<u64>,
}

#[derive(Clone, Default)]
struct FakeMedia(Arc<Mutex<FakeMediaState>>);

impl MediaControl for FakeMedia {
    fn allocate(&mut self, a: Trunk, b: Trunk) -> Result<MediaSessionId, MediaError> {
        let mut s = self.0.lock().unwrap();
        if s.sessions.len() >= s.capacity {
            return Err(MediaError::Exhausted("pbx"));
        }
        s.next += 1;
        let id = s.next;
        s.sessions.insert(id, (a, b));
        Ok(MediaSessionId(id))
    }
    fn local(&self, id: MediaSessionId, end: MediaEnd) -> Option<LocalMedia> {
        let s = self.0.lock().unwrap();
        let (a, b) = *s.sessions.get(&id.0)?;
        let side = if end == MediaEnd::A { a } else { b };
        let port = 20000 + (id.0 as u16) * 4 + if end == MediaEnd::A { 0 } else { 2 };
        let ip = if side == Trunk::Teams { "198.51.100.10" } else { "10.9.9.1" };
        Some(LocalMedia {
            rtp: format!("{ip}:{port}").parse().unwrap(),
            rtcp: format!("{ip}:{}", port + 1).parse().unwrap(),
            srtp: (side == Trunk::Teams).then(|| SrtpKey { suite: SrtpSuite::AesCm128HmacSha1_80, tag: 1, key: [7; 16], salt: [9; 14] }),
            ice: (side == Trunk::Teams).then(|| IceCredentials { ufrag: format!("uf{}", id.0), pwd: "0123456789abcdefghijklmn".into() }),
        })
    }
    fn restart_ice(&mut self, id: MediaSessionId, end: MediaEnd) -> Option<LocalMedia> {
        self.local(id, end)
    }
    fn update(&mut self, id: MediaSessionId, end: MediaEnd, remote: RemoteMedia) -> Result<(), MediaError> {
        self.0.lock().unwrap().remotes.push((id.0, end, remote));
        Ok(())
    }
    fn free(&mut self, id: MediaSessionId) {
        let mut s = self.0.lock().unwrap();
        s.sessions.remove(&id.0);
        s.freed.push(id.0);
    }
}

fn media_world(capacity: usize) -> (World, FakeMedia) {
    let fake = FakeMedia::default();
    fake.0.lock().unwrap().capacity = capacity;
    let now = Instant::now();
    let core = B2bua::new(cfg(), Box::new(Plan), now).with_media(
        Box::new(fake.clone()),
        crate::media::sdp::CodecProfile::teams(),
        crate::media::sdp::CodecProfile::pbx_default(),
    );
    let mut w = World { core, now, sent: vec![] };
    w.core.handle_timeout(now);
    w.flush();
    w.sent.clear();
    (w, fake)
}

const TEAMS_ANSWER: &str = "v=0\r\no=- 1 0 IN IP4 52.113.0.9\r\ns=session\r\nc=IN IP4 52.113.0.9\r\nb=CT:10000000\r\nt=0 0\r\nm=audio 50010 RTP/SAVP 8 101\r\nc=IN IP4 52.113.0.9\r\na=rtcp:50011\r\na=ice-ufrag:Tms1\r\na=ice-pwd:TmsPwdTmsPwdTmsPwdTmsPwd\r\na=candidate:1 1 UDP 2130706431 52.113.0.9 50010 typ host\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\na=rtcp-mux\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

/// Teams' `status` response to `inv` with the Teams SDP answer.
fn teams_sdp_response(inv: &Request, status: u16) -> Message {
    let mut r = inv.response(status, Some("ms"));
    r.headers.push("Contact", "<sip:a.pstnhub.microsoft.com:5061;transport=tls>");
    r.headers.push("Content-Type", "application/sdp");
    r.body = bytes::Bytes::from_static(TEAMS_ANSWER.as_bytes());
    Message::Response(r)
}

#[test]
fn anchored_call_hides_media_addresses_and_speaks_sdes_ice_lite_to_teams() {
    let (mut w, fake) = media_world(10);
    w.from_pbx(&pbx_invite("m1"));
    let inv = w.requests(crate::sip::msg::Method::Invite).remove(0).1;
    let body = String::from_utf8_lossy(&inv.body).to_string();
    assert!(body.contains("c=IN IP4 198.51.100.10"), "{body}");
    assert!(body.contains("RTP/SAVP"), "{body}");
    assert!(body.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"), "{body}");
    assert!(body.contains("a=ice-lite") && body.contains("a=rtcp-mux"), "{body}");
    assert!(!body.contains("10.9.9.9"), "PBX media address leaked: {body}");
    // The PBX's media went to the relay (end A = the PBX leg).
    let first = fake.0.lock().unwrap().remotes[0].clone();
    assert_eq!(first.1, MediaEnd::A);
    assert_eq!(first.2.rtp, Some("10.9.9.9:40000".parse().unwrap()));

    w.from_teams(teams_sdp_response(&inv, 200), "52.112.0.1:5061");
    let sent = w.take();
    let pbx_ok = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 200 => Some(r.clone()), _ => None }).unwrap();
    let text = String::from_utf8_lossy(&pbx_ok.to_bytes()).to_string();
    assert!(text.contains("c=IN IP4 10.9.9.1"), "{text}");
    assert!(!text.contains("52.113") && !text.contains("crypto") && !text.contains("candidate"), "Teams media leaked: {text}");
    let st = fake.0.lock().unwrap();
    let teams_remote = st.remotes.iter().find(|r| r.1 == MediaEnd::B).expect("Teams media to the relay");
    assert_eq!(teams_remote.2.rtp, Some("52.113.0.9:50010".parse().unwrap()));
    assert!(teams_remote.2.srtp.is_some(), "Teams key for decryption");
}

/// A PBX INVITE without SDP (delayed offer) toward Teams, which takes early offers only:
/// drbridge offers SRTP to Teams itself, sends the PBX its 183 without SDP and the 200 with an
/// offer (drbridge's PBX-side address, the codec Teams chose), and learns the PBX's media from
/// the answer in the ACK. Without an answer in the ACK the call ends.
#[test]
fn delayed_offer_from_the_pbx_becomes_an_early_offer_to_teams() {
    let (mut w, fake) = media_world(10);
    let invite = pbx_invite("do");
    let offerless = invite[..invite.find("Content-Type").unwrap()].to_string() + "Content-Length: 0\n\n";
    w.from_pbx(&offerless);
    let inv = w.requests(crate::sip::msg::Method::Invite).remove(0).1;
    let body = String::from_utf8_lossy(&inv.body).to_string();
    assert!(body.contains("RTP/SAVP") && body.contains("a=crypto:1") && body.contains("a=ice-lite"), "an SRTP offer to Teams: {body}");
    assert!(body.contains("PCMA/8000") && body.contains("telephone-event"), "{body}");
    assert!(!body.contains("10.9.9.9"), "the PBX address is not Teams' business: {body}");
    assert_eq!(inv.content_type(), Some("application/sdp"));
    // early media from Teams: no SDP toward the PBX
    w.from_teams(teams_sdp_response(&inv, 183), "52.112.0.1:5061");
    let sent = w.take();
    let p183 = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 183 => Some(r.clone()), _ => None }).expect("183 to the PBX");
    assert!(p183.body.is_empty() && p183.content_type().is_none(), "no offer in an unreliable 183");
    w.from_teams(teams_sdp_response(&inv, 200), "52.112.0.1:5061");
    let sent = w.take();
    assert!(sent.iter().any(|(h, m)| matches!(m, Message::Request(r) if r.method == crate::sip::msg::Method::Ack && r.body.is_empty()) && h.peer.proto == Proto::Tls), "Teams ACKed at once");
    let pbx_ok = sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 200 => Some(r.clone()), _ => None }).unwrap();
    let offer = String::from_utf8_lossy(&pbx_ok.body).to_string();
    assert!(offer.contains("c=IN IP4 10.9.9.1") && offer.contains("m=audio") && offer.contains("PCMA/8000"), "drbridge's offer in the 200: {offer}");
    assert!(!offer.contains("crypto") && !offer.contains("52.113"), "{offer}");
    let learned_before = fake.0.lock().unwrap().remotes.iter().filter(|r| r.1 == MediaEnd::A).count();
    let ack = format!(
        "ACK sip:+4930555@10.9.9.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-doack\nMax-Forwards: 70\nFrom: \"Alice\" <sip:4711@10.9.9.9>;tag=pbx1\nTo: <sip:+4930555@10.9.9.1>;tag={}\nCall-ID: do@10.9.9.9\nCSeq: 1 ACK\nContent-Type: application/sdp\n\nv=0\no=PBX 2 2 IN IP4 10.9.9.9\ns=-\nc=IN IP4 10.9.9.9\nt=0 0\nm=audio 41000 RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=sendrecv\n",
        pbx_ok.to_tag().unwrap()
    );
    w.from_pbx(&ack);
    let st = fake.0.lock().unwrap();
    let pbx_remotes: Vec<_> = st.remotes.iter().filter(|r| r.1 == MediaEnd::A).collect();
    assert_eq!(pbx_remotes.len(), learned_before + 1, "the ACK's answer went to the relay");
    assert_eq!(pbx_remotes.last().unwrap().2.rtp, Some("10.9.9.9:41000".parse().unwrap()));
    drop(st);
    assert_eq!(w.requests(crate::sip::msg::Method::Bye).len(), 0);

    // an ACK without the answer: the call cannot have media, it ends
    let (mut w, _fake) = media_world(10);
    let offerless = pbx_invite("dn").split("Content-Type").next().unwrap().to_string() + "Content-Length: 0\n\n";
    w.from_pbx(&offerless);
    let inv = w.requests(crate::sip::msg::Method::Invite).remove(0).1;
    w.from_teams(teams_sdp_response(&inv, 200), "52.112.0.1:5061");
    let tag = w.take().iter().find_map(|(_, m)| match m { Message::Response(r) if r.status == 200 => r.to_tag().map(str::to_string), _ => None }).unwrap();
    w.from_pbx(&format!("ACK sip:+4930555@10.9.9.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-dnack\nMax-Forwards: 70\nFrom: \"Alice\" <sip:4711@10.9.9.9>;tag=pbx1\nTo: <sip:+4930555@10.9.9.1>;tag={tag}\nCall-ID: dn@10.9.9.9\nCSeq: 1 ACK\nContent-Length: 0\n\n"));
    assert_eq!(w.requests(crate::sip::msg::Method::Bye).len(), 2, "BYE on both legs");
}

#[test]
fn no_media_ports_is_503_and_counted() {
    let (mut w, _fake) = media_world(0);
    w.from_pbx(&pbx_invite("m2"));
    let sent = w.take();
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 503 && r.headers.get("Retry-After").is_some())));
    assert!(sent.iter().all(|(_, m)| !matches!(m, Message::Request(_))));
    assert_eq!(w.core.stats.media_ports_exhausted, 1);
}

#[test]
fn media_inactivity_ends_the_call_on_both_legs_and_frees_ports() {
    let (mut w, fake) = media_world(10);
    answered_teams_call(&mut w);
    w.take();
    w.core.handle_media_event(MediaEvent::Inactive(MediaSessionId(1)), w.now);
    w.flush();
    let byes = w.requests(crate::sip::msg::Method::Bye);
    assert_eq!(byes.len(), 2, "BYE on both legs");
    assert_eq!(fake.0.lock().unwrap().freed, vec![1]);
    assert_eq!(w.core.stats.media_timeouts, 1);
}

#[test]
fn an_offer_without_a_common_codec_is_488() {
    let (mut w, _fake) = media_world(10);
    w.from_pbx(&pbx_invite("m3").replace("m=audio 40000 RTP/AVP 8 101", "m=audio 40000 RTP/AVP 98").replace("a=rtpmap:101 telephone-event/8000", "a=rtpmap:98 OPUS/48000/2"));
    let sent = w.take();
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 488)), "{:?}", sent.iter().map(|(_, m)| match m { Message::Response(r) => r.status, _ => 0 }).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------- SUBSCRIBE

#[test]
fn subscriptions_to_the_pbx_send_subscribe_and_answer_notifies() {
    use crate::b2bua::SubscriptionEvent;
    let mut w = World::new();
    w.core.subscribe(7, "4711", "dialog", "application/dialog-info+xml", 3600, true, w.now);
    w.flush();
    let (hop, sub) = w.requests(crate::sip::msg::Method::Subscribe).remove(0);
    assert_eq!(hop.peer.addr, PBX.parse().unwrap());
    assert_eq!(&*sub.uri, "sip:4711@10.9.9.9:5080");
    assert_eq!(sub.headers.get("Event"), Some("dialog"));
    assert_eq!(sub.headers.get("Expires"), Some("3600"));
    let mut ok = sub.response(200, Some("pbxsub"));
    ok.headers.push("Expires", "1800");
    ok.headers.push("Contact", "<sip:4711@10.9.9.9:5080>");
    w.from_pbx(&String::from_utf8_lossy(&ok.to_bytes()).replace("\r\n", "\n"));
    assert_eq!(w.core.poll_subscription_event(), Some(SubscriptionEvent::Response { id: 7, status: 200, expires: Some(1800) }));

    let body = "<?xml version=\"1.0\"?><dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"1\" state=\"full\" entity=\"sip:4711@pbx\"/>";
    let notify = format!(
        "NOTIFY sip:drbridge@10.9.9.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-n1\nMax-Forwards: 70\nFrom: <sip:4711@10.9.9.9:5080>;tag=pbxsub\nTo: {}\nCall-ID: {}\nCSeq: 1 NOTIFY\nEvent: dialog\nSubscription-State: active;expires=1800\nContent-Type: application/dialog-info+xml\nContent-Length: {}\n\n{body}",
        sub.headers.get("From").unwrap(),
        sub.call_id().unwrap(),
        body.len()
    );
    w.from_pbx(&notify);
    let sent = w.take();
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 200 && r.cseq().unwrap().method == crate::sip::msg::Method::Notify)));
    match w.core.poll_subscription_event() {
        Some(SubscriptionEvent::Notify { id: 7, state, body: b, .. }) => {
            assert_eq!(state, "active;expires=1800");
            assert_eq!(&b[..], body.as_bytes());
        }
        other => panic!("{other:?}"),
    }
    // A refresh goes in the dialog: the PBX's tag and Contact.
    w.core.subscribe(7, "4711", "dialog", "application/dialog-info+xml", 3600, false, w.now);
    w.flush();
    let (_, refresh) = w.requests(crate::sip::msg::Method::Subscribe).remove(0);
    assert_eq!(refresh.call_id(), sub.call_id());
    assert_eq!(refresh.to_tag(), Some("pbxsub"));
    assert_eq!(refresh.cseq().unwrap().seq, 2);
    // No answer at all: 408 to the presence core.
    w.advance(Duration::from_secs(40));
    assert_eq!(w.core.poll_subscription_event(), Some(SubscriptionEvent::Response { id: 7, status: 408, expires: None }));
}

#[test]
fn a_notify_for_no_subscription_is_481() {
    let mut w = World::new();
    w.from_pbx("NOTIFY sip:drbridge@10.9.9.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-n2\nMax-Forwards: 70\nFrom: <sip:4711@10.9.9.9>;tag=a\nTo: <sip:drbridge@10.9.9.1>;tag=nope\nCall-ID: none\nCSeq: 1 NOTIFY\nEvent: dialog\nSubscription-State: active\nContent-Length: 0\n\n");
    let sent = w.take();
    assert!(sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 481)));
}

#[test]
fn ended_calls_do_not_count_against_max_calls() {
    let mut w = World::new();
    // max_calls is 10; 15 calls in a row, each refused by Teams (486), all within 64*T1.
    for i in 0..15 {
        w.from_pbx(&pbx_invite(&format!("e{i}")));
        let sent = w.take();
        assert!(!sent.iter().any(|(_, m)| matches!(m, Message::Response(r) if r.status == 503)), "call {i} refused");
        let inv = find_req(&sent, crate::sip::msg::Method::Invite).expect("INVITE to Teams").1;
        w.from_teams(Message::Response(inv.response(486, Some("busy"))), "52.112.0.1:5061");
        w.take();
    }
    assert_eq!(w.core.active_calls(), 0);
}

/// `max_calls` counts the calls of every shard: with 10 calls live on one core, the other
/// refuses the 11th (503 Retry-After), and takes a call again once one ends there.
#[test]
fn sharded_cores_share_max_calls() {
    let now = Instant::now();
    let shared = cfg();
    let mut a = World { core: B2bua::new(shared.clone(), Box::new(Plan), now).with_shard(Shard { index: 0, count: 2 }, true), now, sent: vec![] };
    let mut b = World { core: B2bua::new(shared, Box::new(Plan), now).with_shard(Shard { index: 1, count: 2 }, false), now, sent: vec![] };
    let mut invites = Vec::new();
    for i in 0..10 {
        a.from_pbx(&pbx_invite(&format!("max{i}")));
        invites.push(a.requests(crate::sip::msg::Method::Invite).remove(0).1);
    }
    assert_eq!(a.core.active_calls(), 10);
    b.from_pbx(&pbx_invite("over"));
    let refused = b.take().into_iter().find_map(|(_, m)| match m { Message::Response(r) if r.status >= 200 => Some(r), _ => None }).expect("a final response");
    assert_eq!((refused.status, refused.headers.get("Retry-After")), (503, Some("10")), "the other shard is full");
    assert_eq!(b.core.stats.calls_rejected_overload, 1);
    a.from_teams(Message::Response(invites[0].response(486, Some("busy"))), "52.112.0.1:5061");
    assert_eq!(a.core.active_calls(), 9);
    b.from_pbx(&pbx_invite("room"));
    assert_eq!(b.requests(crate::sip::msg::Method::Invite).len(), 1, "room again on the other shard");
    assert_eq!(b.core.active_calls(), 1);
}

/// Shards: the other leg's Call-ID hashes to the core's own shard; only the keep-alive core
/// sends OPTIONS and its results reach the other core through `poll_health`/`apply_health`.
#[test]
fn sharded_cores_keep_their_call_ids_and_share_trunk_health() {
    let now = Instant::now();
    let mut probe = B2bua::new(cfg(), Box::new(Plan), now).with_shard(Shard { index: 0, count: 2 }, true);
    let mut other = B2bua::new(cfg(), Box::new(Plan), now).with_shard(Shard { index: 1, count: 2 }, false);
    probe.handle_timeout(now);
    other.handle_timeout(now);
    assert!(other.poll_transmit().is_none(), "no OPTIONS from the shard without keep-alive");
    let mut options = vec![];
    while let Some(t) = probe.poll_transmit() {
        if let Message::Request(r) = parse_datagram(t.data, &Limits::default()).unwrap() {
            assert_eq!(shard_of(r.call_id().unwrap(), 2), 0, "the OPTIONS Call-ID hashes to shard 0");
            options.push((t.hop, r));
        }
    }
    assert_eq!(options.len(), 4, "three proxies and the PBX");
    // the first proxy answers 503: down on the probing core, and on the other one once told
    let (_, opt) = options.iter().find(|(h, _)| h.peer.addr == "52.112.0.1:5061".parse().unwrap()).unwrap();
    probe.handle_message(Message::Response(opt.response(503, Some("x"))), Peer { proto: Proto::Tls, addr: "52.112.0.1:5061".parse().unwrap() }, Side::Teams, now);
    assert_eq!(probe.proxies_up(), vec![false, true, true]);
    assert_eq!(other.proxies_up(), vec![true, true, true]);
    let note = probe.poll_health().expect("a health note");
    assert_eq!(note, HealthNote { proxy: Some(0), up: false });
    assert!(probe.poll_health().is_none());
    other.apply_health(note, now);
    assert_eq!(other.proxies_up(), vec![false, true, true]);
    // a call on shard 1 goes to the second proxy, with a Call-ID of shard 1
    let mut w = World { core: other, now, sent: vec![] };
    w.from_pbx(&pbx_invite("sh"));
    let inv = w.requests(crate::sip::msg::Method::Invite);
    assert_eq!(inv[0].0.peer.addr, "52.112.0.2:5061".parse().unwrap());
    assert_eq!(shard_of(inv[0].1.call_id().unwrap(), 2), 1);
}

// ------------------------------------------------------------------ presence notifier (Teams -> PBX)

fn watcher_world() -> World {
    let now = Instant::now();
    let mut core = B2bua::new(cfg(), Box::new(Plan), now).with_presence_notifier(["4711".to_string()], 3);
    core.handle_timeout(now);
    let mut w = World { core, now, sent: vec![] };
    w.flush();
    w.sent.clear();
    w
}

fn pbx_subscribe(ext: &str, branch: &str, to_tag: Option<&str>, cseq: u32, event: &str, expires: &str) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "SUBSCRIBE sip:{ext}@10.9.9.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.9.9.9:5080;branch=z9hG4bK-{branch}
Max-Forwards: 70
From: <sip:blf@10.9.9.9>;tag=w1
To: <sip:{ext}@10.9.9.1>{to_tag}
Call-ID: watch-{ext}@10.9.9.9
CSeq: {cseq} SUBSCRIBE
Contact: <sip:blf@10.9.9.9:5080>
Event: {event}
Accept: application/pidf+xml
Expires: {expires}
Content-Length: 0

"
    )
}

fn final_response(sent: &[(Hop, Message)]) -> Response {
    sent.iter().find_map(|(_, m)| match m { Message::Response(r) if r.status >= 200 => Some(r.clone()), _ => None }).expect("a final response")
}

fn notifies(sent: &[(Hop, Message)]) -> Vec<(Hop, Request)> {
    sent.iter().filter_map(|(h, m)| match m { Message::Request(r) if r.method == crate::sip::msg::Method::Notify => Some((h.clone(), r.clone())), _ => None }).collect()
}

fn answer(w: &mut World, req: &Request, status: u16) {
    let r = req.response(status, None);
    w.core.handle_message(Message::Response(r), Peer { proto: Proto::Udp, addr: PBX.parse().unwrap() }, Side::Pbx, w.now);
    w.flush();
}

/// A PBX-side watcher subscribes to 4711's presence: 200 with the granted Expires and our tag,
/// an immediate NOTIFY in that dialog, then one NOTIFY per change; changes while a NOTIFY is in
/// flight are folded into one with the latest document.
#[test]
fn pbx_watcher_gets_notifies_with_the_latest_document() {
    let mut w = watcher_world();
    w.from_pbx(&pbx_subscribe("4711", "s1", None, 1, "presence", "600"));
    let sent = w.take();
    let ok = final_response(&sent);
    assert_eq!((ok.status, ok.headers.get("Expires")), (200, Some("600")));
    let tag = ok.to_tag().expect("our tag").to_string();
    let n = notifies(&sent);
    assert_eq!(n.len(), 1, "the initial NOTIFY");
    let (hop, first) = &n[0];
    assert_eq!(hop.peer.addr, PBX.parse().unwrap());
    assert_eq!(first.uri.as_str(), "sip:blf@10.9.9.9:5080", "to the watcher's Contact");
    assert_eq!(first.headers.get("Event"), Some("presence"));
    assert_eq!(first.headers.get("Subscription-State"), Some("active;expires=600"));
    assert_eq!(first.from_hdr().and_then(|f| f.tag().map(str::to_string)), Some(tag.clone()));
    assert_eq!(first.call_id(), Some("watch-4711@10.9.9.9"));
    assert!(first.body.is_empty(), "nothing known yet");
    answer(&mut w, first, 200);

    w.core.set_presence_document("presence", "4711", Some(Bytes::from_static(b"<presence>busy</presence>")), w.now);
    w.flush();
    let n = notifies(&w.take());
    assert_eq!(n.len(), 1);
    assert_eq!(&n[0].1.body[..], b"<presence>busy</presence>");
    assert_eq!(n[0].1.content_type(), Some("application/pidf+xml"));
    assert_eq!(n[0].1.cseq().unwrap().seq, 2);
    // two more changes while that NOTIFY is unanswered: held back
    w.core.set_presence_document("presence", "4711", Some(Bytes::from_static(b"<presence>away</presence>")), w.now);
    w.core.set_presence_document("presence", "4711", Some(Bytes::from_static(b"<presence>dnd</presence>")), w.now);
    w.flush();
    assert!(notifies(&w.take()).is_empty(), "one NOTIFY in flight per watcher");
    answer(&mut w, &n[0].1, 200);
    let n = notifies(&w.take());
    assert_eq!(n.len(), 1, "the latest document once the NOTIFY in flight completed");
    assert_eq!(&n[0].1.body[..], b"<presence>dnd</presence>");
    answer(&mut w, &n[0].1, 200);
    // the same document again: no NOTIFY
    w.core.set_presence_document("presence", "4711", Some(Bytes::from_static(b"<presence>dnd</presence>")), w.now);
    w.flush();
    assert!(notifies(&w.take()).is_empty());
    assert_eq!(w.core.presence_watchers(), 1);
}

#[test]
fn pbx_watcher_refusals() {
    let mut w = watcher_world();
    let status = |w: &mut World, text: String| {
        w.from_pbx(&text);
        let sent = w.take();
        assert!(notifies(&sent).is_empty());
        final_response(&sent)
    };
    assert_eq!(status(&mut w, pbx_subscribe("4799", "r1", None, 1, "presence", "600")).status, 404, "not an extension presence named");
    let r = status(&mut w, pbx_subscribe("4711", "r2", None, 1, "message-summary", "600"));
    assert_eq!((r.status, r.headers.get("Allow-Events")), (489, Some("presence, dialog")));
    let r = status(&mut w, pbx_subscribe("4711", "r3", None, 1, "presence", "30"));
    assert_eq!((r.status, r.headers.get("Min-Expires")), (423, Some("60")));
    w.from_pbx(&pbx_subscribe("4711", "r4", None, 1, "presence", "7200"));
    let sent = w.take();
    assert_eq!(final_response(&sent).headers.get("Expires"), Some("3600"), "cut to an hour");
    answer(&mut w, &notifies(&sent)[0].1, 200);
    // max_watchers is 3
    for i in 0..2 {
        w.from_pbx(&pbx_subscribe("4711", &format!("m{i}"), None, 1, "presence;id=x", "600").replace("watch-4711", &format!("watch{i}")));
        let sent = w.take();
        assert_eq!(final_response(&sent).status, 200);
        answer(&mut w, &notifies(&sent)[0].1, 200);
    }
    let r = status(&mut w, pbx_subscribe("4711", "m9", None, 1, "presence", "600").replace("watch-4711", "watch9"));
    assert_eq!((r.status, r.headers.get("Retry-After")), (503, Some("30")));
    // a watcher's SUBSCRIBE from the Teams side is not served
    w.core.set_presence_document("presence", "4711", Some(Bytes::from_static(b"x")), w.now);
    w.flush();
    assert_eq!(notifies(&w.take()).len(), 3);
}

/// Refresh, unsubscribe (Expires: 0 -> final NOTIFY terminated), and a SUBSCRIBE in the ended
/// dialog answered 481; a subscription not refreshed ends at its expiry; a NOTIFY answered 481
/// ends it silently.
#[test]
fn pbx_watcher_refresh_unsubscribe_expiry_and_481() {
    let mut w = watcher_world();
    w.from_pbx(&pbx_subscribe("4711", "a1", None, 1, "presence", "600"));
    let sent = w.take();
    let tag = final_response(&sent).to_tag().unwrap().to_string();
    answer(&mut w, &notifies(&sent)[0].1, 200);
    w.advance(Duration::from_secs(500));
    w.from_pbx(&pbx_subscribe("4711", "a2", Some(&tag), 2, "presence", "600"));
    let sent = w.take();
    assert_eq!(final_response(&sent).headers.get("Expires"), Some("600"));
    let n = notifies(&sent);
    assert_eq!(n[0].1.headers.get("Subscription-State"), Some("active;expires=600"), "the refresh re-arms the expiry");
    answer(&mut w, &n[0].1, 200);
    w.advance(Duration::from_secs(500));
    assert!(notifies(&w.take()).is_empty(), "refreshed: not expired at 1000 s");
    w.from_pbx(&pbx_subscribe("4711", "a3", Some(&tag), 3, "presence", "0"));
    let sent = w.take();
    assert_eq!(final_response(&sent).headers.get("Expires"), Some("0"));
    let last = notifies(&sent).remove(0).1;
    assert_eq!(last.headers.get("Subscription-State"), Some("terminated;reason=timeout"));
    answer(&mut w, &last, 200);
    assert_eq!(w.core.presence_watchers(), 0);
    w.from_pbx(&pbx_subscribe("4711", "a4", Some(&tag), 4, "presence", "600"));
    assert_eq!(final_response(&w.take()).status, 481);

    // expiry
    w.from_pbx(&pbx_subscribe("4711", "b1", None, 1, "presence", "60").replace("watch-4711", "watch-b"));
    let first = notifies(&w.take()).remove(0).1;
    answer(&mut w, &first, 200);
    w.advance(Duration::from_secs(61));
    let mut n = notifies(&w.take());
    n.dedup_by_key(|(_, r)| r.cseq().map(|c| c.seq)); // retransmitted over UDP, never answered here
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].1.headers.get("Subscription-State"), Some("terminated;reason=timeout"));
    assert_eq!(w.core.presence_watchers(), 0);

    // 481 to a NOTIFY
    w.from_pbx(&pbx_subscribe("4711", "c1", None, 1, "presence", "600").replace("watch-4711", "watch-c"));
    let first = notifies(&w.take()).remove(0).1;
    answer(&mut w, &first, 481);
    assert_eq!(w.core.presence_watchers(), 0, "the watcher is gone");
    w.core.set_presence_document("presence", "4711", Some(Bytes::from_static(b"y")), w.now);
    w.flush();
    assert!(notifies(&w.take()).is_empty());
}

/// A busy lamp field subscribes to the `dialog` package: it gets the dialog-info documents with
/// its own version counter (0, 1, 2: RFC 4235), and presence documents do not reach it.
#[test]
fn pbx_dialog_watcher_gets_versioned_dialog_info() {
    let mut w = watcher_world();
    let doc = |state: &str| Bytes::from(format!("<dialog-info version=\"0\" state=\"full\" entity=\"sip:4711@x\">{state}</dialog-info>"));
    w.core.set_presence_document("dialog", "4711", Some(doc("")), w.now);
    w.from_pbx(&pbx_subscribe("4711", "d1", None, 1, "dialog", "600"));
    let sent = w.take();
    assert_eq!(final_response(&sent).status, 200);
    let n = notifies(&sent).remove(0).1;
    assert_eq!((n.headers.get("Event"), n.content_type()), (Some("dialog"), Some("application/dialog-info+xml")));
    assert!(String::from_utf8_lossy(&n.body).contains("version=\"0\""));
    answer(&mut w, &n, 200);
    w.core.set_presence_document("presence", "4711", Some(Bytes::from_static(b"<presence/>")), w.now);
    w.flush();
    assert!(notifies(&w.take()).is_empty(), "a presence document is not for a dialog watcher");
    for v in 1..=2 {
        w.core.set_presence_document("dialog", "4711", Some(doc(&format!("<dialog id=\"{v}\"/>"))), w.now);
        w.flush();
        let n = notifies(&w.take()).remove(0).1;
        assert!(String::from_utf8_lossy(&n.body).contains(&format!("version=\"{v}\"")), "version {v}: {:?}", n.body);
        answer(&mut w, &n, 200);
    }
    // a refresh must name the same package
    let tag = n.from_hdr().and_then(|f| f.tag().map(str::to_string)).unwrap();
    w.from_pbx(&pbx_subscribe("4711", "d2", Some(&tag), 2, "presence", "600"));
    assert_eq!(final_response(&w.take()).status, 489);
}
