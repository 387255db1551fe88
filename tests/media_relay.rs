//! MediaEngine end to end on 127.0.0.1: a plain-RTP "PBX" socket and an SRTP "Teams" socket
//! (which does its own SRTP and ICE check) through one engine session.

use drbridge::config::Trunk;
use drbridge::media::srtp::{SrtpError, SrtpStream, MAX_TRAILER};
use drbridge::media::stun::{build_check, error_code, verify_success};
use drbridge::media::{
    MediaEnd,
    IceCredentials, MediaControl, MediaEngine, MediaEngineConfig, MediaError, MediaEvent, RemoteMedia, SrtpKey,
    SrtpSuite,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn cfg(teams: (u16, u16), pbx: (u16, u16)) -> MediaEngineConfig {
    MediaEngineConfig {
        teams_ports: teams.0..=teams.1,
        pbx_ports: pbx.0..=pbx.1,
        inactivity_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

async fn sock() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut b = vec![0u8; 2048];
    let (n, from) = timeout(WAIT, s.recv_from(&mut b)).await.expect("timed out waiting for a datagram").unwrap();
    b.truncate(n);
    (b, from)
}

fn rtp(pt: u8, seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt, (seq >> 8) as u8, seq as u8, 0, 0, 0x12, 0x34];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// SRTP/SRTCP of a copy of `plain` (the context works in place).
fn protect(tx: &mut SrtpStream, plain: &[u8], rtcp: bool) -> Vec<u8> {
    let mut b = plain.to_vec();
    b.resize(plain.len() + MAX_TRAILER, 0);
    let n = if rtcp { tx.protect_rtcp(&mut b, plain.len()) } else { tx.protect_rtp(&mut b, plain.len()) }.unwrap();
    b.truncate(n);
    b
}

fn unprotect(rx: &mut SrtpStream, srtp: &[u8], rtcp: bool) -> Result<Vec<u8>, SrtpError> {
    let mut b = srtp.to_vec();
    let n = if rtcp { rx.unprotect_rtcp(&mut b) } else { rx.unprotect_rtp(&mut b) }?;
    b.truncate(n);
    Ok(b)
}

fn teams_key() -> SrtpKey {
    SrtpKey { suite: SrtpSuite::AesCm128HmacSha1_80, tag: 1, key: [7; 16], salt: [9; 14] }
}
fn teams_ice() -> IceCredentials {
    IceCredentials { ufrag: "teamsUF".into(), pwd: "teamsPWDteamsPWDteamsPWD".into() }
}

struct Call {
    engine: MediaEngine,
    events: tokio::sync::mpsc::Receiver<MediaEvent>,
    id: drbridge::media::MediaSessionId,
    teams: UdpSocket,
    pbx: UdpSocket,
    teams_port: SocketAddr,
    pbx_port: SocketAddr,
    pbx_rtcp_port: SocketAddr,
}

async fn call(c: MediaEngineConfig, pbx_key: Option<SrtpKey>) -> Call {
    let (mut engine, events) = MediaEngine::new(c, tokio::runtime::Handle::current());
    let id = engine.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    let teams = sock().await;
    let pbx = sock().await;
    let lt = engine.local(id, MediaEnd::A).unwrap();
    let lp = engine.local(id, MediaEnd::B).unwrap();
    assert_eq!(lt.rtp.port() % 2, 0);
    assert_eq!(lt.rtcp, lt.rtp, "rtcp-mux toward Teams");
    assert_eq!(lp.rtcp.port(), lp.rtp.port() + 1);
    assert!(lt.srtp.is_some() && lt.ice.is_some());
    assert_eq!(lp.srtp.is_some(), engine.config().srtp_to_pbx);
    engine
        .update(
            id,
            MediaEnd::A,
            RemoteMedia {
                rtp: Some(teams.local_addr().unwrap()),
                rtcp: Some(teams.local_addr().unwrap()),
                rtcp_mux: true,
                srtp: Some(teams_key()),
                ice: Some(teams_ice()),
                pt_map: vec![(101, 96)],
                sends: true,
                receives: true,
            },
        )
        .unwrap();
    let pa = pbx.local_addr().unwrap();
    engine
        .update(
            id,
            MediaEnd::B,
            RemoteMedia {
                rtp: Some(pa),
                rtcp: Some(SocketAddr::new(pa.ip(), pa.port() + 1)),
                srtp: pbx_key,
                pt_map: vec![(96, 101)],
                sends: true,
                receives: true,
                ..Default::default()
            },
        )
        .unwrap();
    Call { engine, events, id, teams, pbx, teams_port: lt.rtp, pbx_port: lp.rtp, pbx_rtcp_port: lp.rtcp }
}

fn ours_key(e: &MediaEngine, id: drbridge::media::MediaSessionId, side: MediaEnd) -> SrtpKey {
    e.local(id, side).unwrap().srtp.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_check_srtp_both_ways_dtmf_rtcp_and_latching() {
    let mut c = call(cfg((41000, 41019), (41100, 41119)), None).await;
    let ours = c.engine.local(c.id, MediaEnd::A).unwrap();
    let our_ice = ours.ice.clone().unwrap();

    // ICE-lite: a nominating check from Teams is answered with integrity and the mapped address
    let chk = build_check(&teams_ice().ufrag, &our_ice, true);
    c.teams.send_to(&chk, c.teams_port).await.unwrap();
    let (resp, from) = recv(&c.teams).await;
    assert_eq!(from, c.teams_port);
    assert_eq!(verify_success(&resp, &our_ice.pwd), Some(c.teams.local_addr().unwrap()));

    // PBX -> Teams: plain RTP in, SRTP out, decrypts to the same packet, SSRC/seq kept
    let mut teams_rx = SrtpStream::receiver(&ours_key(&c.engine, c.id, MediaEnd::A)).unwrap();
    let mut teams_tx = SrtpStream::sender(&teams_key()).unwrap();
    for seq in 1000..1010u16 {
        let p = rtp(0, seq, 0xabcdef01, &[0xd5; 160]);
        c.pbx.send_to(&p, c.pbx_port).await.unwrap();
        let (s, from) = recv(&c.teams).await;
        assert_eq!(from, c.teams_port);
        assert_eq!(s.len(), p.len() + 10);
        assert_eq!(&unprotect(&mut teams_rx, &s, false).unwrap()[..], &p[..]);
    }

    // Teams -> PBX: SRTP in, plain out
    for seq in 5..10u16 {
        let p = rtp(8, seq, 0x11223344, &[0x2a; 160]);
        c.teams.send_to(&protect(&mut teams_tx, &p, false), c.teams_port).await.unwrap();
        let (got, from) = recv(&c.pbx).await;
        assert_eq!(from, c.pbx_port);
        assert_eq!(got, p);
    }

    // RFC 4733 DTMF, PBX PT 96 <-> Teams PT 101; marker, payload, SSRC and seq pass through
    let ev = [5u8, 0x0a, 0x00, 0xa0]; // digit 5, volume 10, duration 160
    let p = rtp(0x80 | 96, 2000, 0xabcdef01, &ev);
    c.pbx.send_to(&p, c.pbx_port).await.unwrap();
    let got = unprotect(&mut teams_rx, &recv(&c.teams).await.0, false).unwrap();
    assert_eq!(got[1], 0x80 | 101);
    assert_eq!(&got[2..], &p[2..]);
    let end = [5u8, 0x8a, 0x03, 0x20]; // E bit
    let p = rtp(101, 10, 0x11223344, &end);
    c.teams.send_to(&protect(&mut teams_tx, &p, false), c.teams_port).await.unwrap();
    let got = recv(&c.pbx).await.0;
    assert_eq!(got[1], 96);
    assert_eq!(&got[2..], &p[2..]);

    // RTCP: PBX RTCP port -> SRTCP on the muxed Teams port, and back
    let sr = [0x80u8, 0xc8, 0x00, 0x06, 0xab, 0xcd, 0xef, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24];
    let pbx_rtcp = UdpSocket::bind(SocketAddr::new(c.pbx.local_addr().unwrap().ip(), c.pbx.local_addr().unwrap().port() + 1)).await;
    if let Ok(pbx_rtcp) = pbx_rtcp {
        pbx_rtcp.send_to(&sr, c.pbx_rtcp_port).await.unwrap();
        let (s, from) = recv(&c.teams).await;
        assert_eq!(from, c.teams_port);
        assert_eq!(&unprotect(&mut teams_rx, &s, true).unwrap()[..], &sr[..]);
        let mut rr = sr;
        rr[1] = 0xc9;
        c.teams.send_to(&protect(&mut teams_tx, &rr, true), c.teams_port).await.unwrap();
        let (got, from) = recv(&pbx_rtcp).await;
        assert_eq!(from, c.pbx_rtcp_port);
        assert_eq!(got, rr);
    }

    // Latching: the PBX side latched to c.pbx; a packet from another source is dropped. The
    // marker packet sent after it from the latched source must be the next thing Teams sees.
    let intruder = sock().await;
    intruder.send_to(&rtp(0, 3000, 0x66666666, &[1; 160]), c.pbx_port).await.unwrap();
    let marker = rtp(0, 3001, 0xabcdef01, &[2; 160]);
    c.pbx.send_to(&marker, c.pbx_port).await.unwrap();
    assert_eq!(&unprotect(&mut teams_rx, &recv(&c.teams).await.0, false).unwrap()[..], &marker[..]);
    // Teams side latched by the nomination: SRTP from another address (valid key) is dropped too
    let other_teams = sock().await;
    other_teams.send_to(&protect(&mut teams_tx, &rtp(0, 11, 0x11223344, &[3; 160]), false), c.teams_port).await.unwrap();
    let marker = rtp(0, 12, 0x11223344, &[4; 160]);
    c.teams.send_to(&protect(&mut teams_tx, &marker, false), c.teams_port).await.unwrap();
    assert_eq!(recv(&c.pbx).await.0, marker);
    let st = c.engine.session_stats(c.id).unwrap();
    assert_eq!(st.dropped_unknown_source, 2);
    assert_eq!(st.stun_answered, 1);

    // a check with wrong credentials gets 401 and does not move the latch
    let bad = IceCredentials { ufrag: our_ice.ufrag.clone(), pwd: "not-the-password-at-all".into() };
    other_teams.send_to(&build_check("x", &bad, true), c.teams_port).await.unwrap();
    assert_eq!(error_code(&recv(&other_teams).await.0), Some(401));

    // ICE restart: new credentials are answered
    let new = c.engine.restart_ice(c.id, MediaEnd::A).unwrap().ice.unwrap();
    assert_ne!(new, our_ice);
    c.teams.send_to(&build_check("x", &new, false), c.teams_port).await.unwrap();
    assert_eq!(verify_success(&recv(&c.teams).await.0, &new.pwd), Some(c.teams.local_addr().unwrap()));
    assert_eq!(c.engine.restart_ice(c.id, MediaEnd::B), None, "no ICE toward the PBX");

    c.engine.free(c.id);
    assert!(c.engine.local(c.id, MediaEnd::A).is_none());
    assert_eq!(c.engine.update(c.id, MediaEnd::B, RemoteMedia::default()), Err(MediaError::Unknown));
    assert!(c.events.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_toward_pbx_when_the_trunk_asks() {
    let pbx_key = SrtpKey { suite: SrtpSuite::AesCm128HmacSha1_32, tag: 2, key: [3; 16], salt: [4; 14] };
    let mut conf = cfg((41200, 41219), (41300, 41319));
    conf.srtp_to_pbx = true;
    let c = call(conf, Some(pbx_key.clone())).await;
    // our PBX-side key follows the PBX's suite and crypto tag
    let ours_pbx = ours_key(&c.engine, c.id, MediaEnd::B);
    assert_eq!((ours_pbx.suite, ours_pbx.tag), (SrtpSuite::AesCm128HmacSha1_32, 2));
    assert_ne!(ours_pbx.key, ours_key(&c.engine, c.id, MediaEnd::A).key, "keys per leg");
    let mut pbx_tx = SrtpStream::sender(&pbx_key).unwrap();
    let mut pbx_rx = SrtpStream::receiver(&ours_pbx).unwrap();
    let mut teams_rx = SrtpStream::receiver(&ours_key(&c.engine, c.id, MediaEnd::A)).unwrap();
    let mut teams_tx = SrtpStream::sender(&teams_key()).unwrap();
    let p = rtp(0, 1, 42, &[0xd5; 160]);
    c.pbx.send_to(&protect(&mut pbx_tx, &p, false), c.pbx_port).await.unwrap();
    assert_eq!(&unprotect(&mut teams_rx, &recv(&c.teams).await.0, false).unwrap()[..], &p[..]);
    let q = rtp(0, 9, 43, &[0x55; 160]);
    c.teams.send_to(&protect(&mut teams_tx, &q, false), c.teams_port).await.unwrap();
    let got = recv(&c.pbx).await.0;
    assert_eq!(got.len(), q.len() + 4, "32-bit tag toward the PBX");
    assert_eq!(&unprotect(&mut pbx_rx, &got, false).unwrap()[..], &q[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivity_fires_once() {
    let mut conf = cfg((41400, 41419), (41500, 41519));
    conf.inactivity_timeout = Duration::from_millis(200);
    let mut c = call(conf, None).await;
    let live = c.engine.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    // keep `live`... no: both are idle; the first event must name one of them, and each fires once
    let a = timeout(WAIT, c.events.recv()).await.unwrap().unwrap();
    let b = timeout(WAIT, c.events.recv()).await.unwrap().unwrap();
    let mut got = vec![a, b];
    got.sort_by_key(|MediaEvent::Inactive(id)| *id);
    assert_eq!(got, vec![MediaEvent::Inactive(c.id), MediaEvent::Inactive(live)]);
    assert!(timeout(Duration::from_millis(600), c.events.recv()).await.is_err(), "reported once");
    assert_eq!(c.engine.stats().inactive, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keeps_a_session_active() {
    let mut conf = cfg((41600, 41619), (41700, 41719));
    conf.inactivity_timeout = Duration::from_millis(300);
    let mut c = call(conf, None).await;
    let idle = c.engine.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    // stream until the idle session is reported; the streaming one must not be
    let mut seq = 0u16;
    let ev = loop {
        seq += 1;
        c.pbx.send_to(&rtp(0, seq, 1, &[0; 160]), c.pbx_port).await.unwrap();
        recv(&c.teams).await;
        if let Ok(Some(ev)) = timeout(Duration::from_millis(20), c.events.recv()).await {
            break ev;
        }
        assert!(seq < 1000, "no inactivity event");
    };
    assert_eq!(ev, MediaEvent::Inactive(idle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_with_a_tiny_range_and_ports_freed() {
    let (mut e, _ev) = MediaEngine::new(cfg((41800, 41801), (41900, 41905)), tokio::runtime::Handle::current());
    let a = e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    assert_eq!(e.allocate(Trunk::Teams, Trunk::Pbx), Err(MediaError::Exhausted("teams")));
    assert_eq!(e.stats().exhausted_teams, 1);
    let port = e.local(a, MediaEnd::A).unwrap().rtp.port();
    e.free(a);
    e.free(a); // twice: harmless
    // the pair is back at once (its sockets stay bound; its media thread detaches it first)
    assert_eq!(e.available_ports(), (1, 3));
    let b = e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    assert_eq!(e.local(b, MediaEnd::A).unwrap().rtp.port(), port);
    assert_eq!(e.stats().sessions, 1);

    let mut conf = cfg((41820, 41839), (41920, 41939));
    conf.max_sessions = 1;
    let (mut e, _ev) = MediaEngine::new(conf, tokio::runtime::Handle::current());
    e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    assert_eq!(e.allocate(Trunk::Teams, Trunk::Pbx), Err(MediaError::Exhausted("max_sessions")));
}

/// Plain RTP on both legs toward `teams` and `pbx` (no SRTP: the far ends send no key).
fn plain_both_ways(e: &mut MediaEngine, id: drbridge::media::MediaSessionId, teams: &UdpSocket, pbx: &UdpSocket) {
    for (end, s) in [(MediaEnd::A, teams), (MediaEnd::B, pbx)] {
        let a = s.local_addr().unwrap();
        let remote = RemoteMedia { rtp: Some(a), rtcp: Some(a), rtcp_mux: true, sends: true, receives: true, ..Default::default() };
        e.update(id, end, remote).unwrap();
    }
}

/// Waits (bounded) until the engine has dropped `n` datagrams on pairs without a session.
async fn dropped_unassigned(e: &MediaEngine, n: u64) {
    timeout(WAIT, async {
        while e.stats().dropped_unassigned < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("datagram on a free pair not counted");
}

/// A pair's sockets outlive its session: freed, the pair goes to the back of the queue and
/// drops what arrives meanwhile; handed out again, it relays for the new session only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pair_relays_for_the_new_session_only() {
    let mut conf = cfg((42000, 42003), (42100, 42103)); // two pairs per side
    conf.threads = 1;
    let (mut e, _ev) = MediaEngine::new(conf, tokio::runtime::Handle::current());
    assert_eq!((e.stats().bound_teams, e.stats().bound_pbx), (0, 0), "nothing bound at start");

    // call 1 on pair 0
    let (t1, p1) = (sock().await, sock().await);
    let id1 = e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    plain_both_ways(&mut e, id1, &t1, &p1);
    let (tport, pport) = (e.local(id1, MediaEnd::A).unwrap().rtp, e.local(id1, MediaEnd::B).unwrap().rtp);
    let p = rtp(0, 1, 0x1111, &[1; 160]);
    p1.send_to(&p, pport).await.unwrap();
    assert_eq!(recv(&t1).await, (p.clone(), tport));
    assert_eq!((e.stats().bound_teams, e.stats().bound_pbx), (1, 1), "bound on first use");
    e.free(id1);

    // FIFO: the next call gets the other pair; call 1's far ends keep streaming into pair 0,
    // which has no session: read and dropped
    let id2 = e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    assert_ne!(e.local(id2, MediaEnd::A).unwrap().rtp, tport);
    assert_ne!(e.local(id2, MediaEnd::B).unwrap().rtp, pport);
    p1.send_to(&rtp(0, 2, 0x1111, &[2; 160]), pport).await.unwrap();
    t1.send_to(&rtp(0, 2, 0x2222, &[2; 160]), tport).await.unwrap();
    dropped_unassigned(&e, 2).await;
    e.free(id2);

    // call 3 gets pair 0 again: same sockets (nothing new bound), new far ends
    let id3 = e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    assert_eq!(e.local(id3, MediaEnd::A).unwrap().rtp, tport);
    assert_eq!(e.local(id3, MediaEnd::B).unwrap().rtp, pport);
    assert_eq!((e.stats().bound_teams, e.stats().bound_pbx), (2, 2));
    let (t3, p3) = (sock().await, sock().await);
    plain_both_ways(&mut e, id3, &t3, &p3);
    let p = rtp(0, 1, 0x3333, &[3; 160]);
    p3.send_to(&p, pport).await.unwrap();
    assert_eq!(recv(&t3).await, (p, tport));
    let q = rtp(0, 1, 0x4444, &[4; 160]);
    t3.send_to(&q, tport).await.unwrap();
    assert_eq!(recv(&p3).await, (q, pport));
    // call 1's far ends, late again: the new session latched to its own far ends, drops them
    p1.send_to(&rtp(0, 3, 0x1111, &[5; 160]), pport).await.unwrap();
    t1.send_to(&rtp(0, 3, 0x2222, &[5; 160]), tport).await.unwrap();
    let marker = rtp(0, 2, 0x3333, &[6; 160]);
    p3.send_to(&marker, pport).await.unwrap();
    assert_eq!(recv(&t3).await.0, marker, "nothing of call 1 relayed to call 3");
    let marker = rtp(0, 2, 0x4444, &[7; 160]);
    t3.send_to(&marker, tport).await.unwrap();
    assert_eq!(recv(&p3).await.0, marker, "nothing of call 1 relayed to call 3");
    let st = e.session_stats(id3).unwrap();
    assert_eq!((st.rx_packets, st.dropped_unknown_source), (4, 2));
    // and nothing of call 3 went to call 1's far ends
    let mut b = [0u8; 2048];
    assert!(t1.try_recv_from(&mut b).is_err() && p1.try_recv_from(&mut b).is_err());

    // many calls later, still two pairs bound per side
    e.free(id3);
    for _ in 0..20 {
        let id = e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
        e.free(id);
    }
    assert_eq!((e.stats().bound_teams, e.stats().bound_pbx), (2, 2));
    assert_eq!(e.available_ports(), (2, 2));
}

/// A port taken by another process: counted, the pair skipped (the next one is used), and
/// retried later (back of the queue), when it may be free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_elsewhere_is_skipped_and_retried_later() {
    let mut conf = cfg((42200, 42203), (42300, 42303));
    conf.threads = 1;
    let (mut e, _ev) = MediaEngine::new(conf, tokio::runtime::Handle::current());
    let squat_teams = std::net::UdpSocket::bind("127.0.0.1:42200").unwrap();
    let squat_pbx_rtcp = std::net::UdpSocket::bind("127.0.0.1:42301").unwrap(); // RTCP of PBX pair 0
    let id = e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    assert_eq!(e.local(id, MediaEnd::A).unwrap().rtp.port(), 42202);
    assert_eq!(e.local(id, MediaEnd::B).unwrap().rtp.port(), 42302);
    assert_eq!(e.stats().bind_failures, 2);
    assert_eq!((e.stats().bound_teams, e.stats().bound_pbx), (1, 1));
    // still taken: the next call fails on it again, with no pair left
    assert_eq!(e.allocate(Trunk::Teams, Trunk::Pbx), Err(MediaError::Exhausted("teams")));
    assert_eq!((e.stats().bind_failures, e.stats().exhausted_teams), (3, 1));
    e.free(id);
    drop((squat_teams, squat_pbx_rtcp));
    // queue now: pair 0 (unbound), then pair 1: pair 0 binds this time
    let id = e.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    assert_eq!(e.local(id, MediaEnd::A).unwrap().rtp.port(), 42200);
    assert_eq!(e.local(id, MediaEnd::B).unwrap().rtp.port(), 42300);
    assert_eq!(e.stats().bind_failures, 3);
    assert_eq!((e.stats().bound_teams, e.stats().bound_pbx), (2, 2));
}
