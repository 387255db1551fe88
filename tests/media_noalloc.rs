//! The packet path does not allocate (issue 4): a counting global allocator around the system
//! one, and
//! - `Relay::on_packet` in every direction (plain RTP -> SRTP, SRTP -> plain, SRTCP both ways,
//!   SRTP -> SRTP), counted on the calling thread only;
//! - a running `MediaEngine` relaying both ways between two sockets of this test, counted over
//!   the whole process while only the packet path runs (the sweeper's runtime is never driven).

use drbridge::config::Trunk;
use drbridge::media::relay::{Action, LegSetup, Pending, Port, Relay, SessionStats, HEADROOM};
use drbridge::media::srtp::{SrtpStream, MAX_TRAILER};
use drbridge::media::{IceCredentials, MediaControl, MediaEnd, MediaEngine, MediaEngineConfig, RemoteMedia, SrtpKey, SrtpSuite};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

struct Counting;

static ALL: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static MINE: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALL.fetch_add(1, Relaxed);
    let _ = MINE.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator; the counters neither allocate nor unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The two tests run one at a time (the engine test counts the whole process).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn mine() -> u64 {
    MINE.with(|c| c.get())
}

fn key(b: u8, suite: SrtpSuite) -> SrtpKey {
    SrtpKey { suite, tag: 1, key: [b; 16], salt: [b ^ 0x5a; 14] }
}

fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

fn rtp(buf: &mut [u8], pt: u8, seq: u16, ssrc: u32) -> usize {
    buf[..12].copy_from_slice(&[0x80, pt, 0, 0, 0, 0, 0, 160, 0, 0, 0, 0]);
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..172].fill(0xd5);
    172
}

fn rtcp(buf: &mut [u8], ssrc: u32) -> usize {
    buf[..8].copy_from_slice(&[0x80, 0xc8, 0x00, 0x06, 0, 0, 0, 0]);
    buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
    buf[8..28].fill(7);
    28
}

fn sent(a: Action<'_>) -> bool {
    matches!(a, Action::Send { .. })
}

#[test]
fn relay_packet_path_does_not_allocate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for pbx_srtp in [false, true] {
        let (ours_t, theirs_t) = (key(1, SrtpSuite::AesCm128HmacSha1_80), key(2, SrtpSuite::AesCm128HmacSha1_80));
        let (ours_p, theirs_p) = (key(3, SrtpSuite::AesCm128HmacSha1_32), key(4, SrtpSuite::AesCm128HmacSha1_32));
        let ice = IceCredentials { ufrag: "lite".into(), pwd: "0123456789abcdefghijklmn".into() };
        let mut relay = Relay::new(
            LegSetup { key: Some(ours_t.clone()), ice: Some(ice), rtcp_mux: true },
            LegSetup { key: pbx_srtp.then(|| ours_p.clone()), ice: None, rtcp_mux: false },
        );
        relay.apply(Pending {
            teams: Some(RemoteMedia {
                rtp: Some(addr(50000)),
                rtcp: Some(addr(50000)),
                rtcp_mux: true,
                srtp: Some(theirs_t.clone()),
                pt_map: vec![(101, 96)],
                sends: true,
                receives: true,
                ..Default::default()
            }),
            pbx: Some(RemoteMedia {
                rtp: Some(addr(6000)),
                srtp: pbx_srtp.then(|| theirs_p.clone()),
                sends: true,
                receives: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let stats = SessionStats::default();
        let mut teams_tx = SrtpStream::sender(&theirs_t).unwrap();
        let mut pbx_tx = SrtpStream::sender(&theirs_p).unwrap();
        let mut buf = vec![0u8; 2048 + HEADROOM];
        let mut round = |relay: &mut Relay, seq: u16| {
            // PBX -> Teams: RTP (SRTP when the PBX side is SRTP) becomes SRTP
            let mut n = rtp(&mut buf, 96, seq, 0x1000);
            if pbx_srtp {
                n = pbx_tx.protect_rtp(&mut buf, n).unwrap();
            }
            assert!(sent(relay.on_packet(Port::PbxRtp, addr(6000), &mut buf, n, 1, &stats)));
            // Teams -> PBX: SRTP, PT 101 remapped
            let n = rtp(&mut buf, 101, seq, 0x2000);
            let n = teams_tx.protect_rtp(&mut buf, n).unwrap();
            assert!(sent(relay.on_packet(Port::TeamsRtp, addr(50000), &mut buf, n, 1, &stats)));
            if seq % 10 == 0 {
                // RTCP both ways
                let mut n = rtcp(&mut buf, 0x1000);
                if pbx_srtp {
                    n = pbx_tx.protect_rtcp(&mut buf, n).unwrap();
                }
                assert!(sent(relay.on_packet(Port::PbxRtcp, addr(6001), &mut buf, n, 1, &stats)));
                let n = rtcp(&mut buf, 0x2000);
                let n = teams_tx.protect_rtcp(&mut buf, n).unwrap();
                assert!(sent(relay.on_packet(Port::TeamsRtp, addr(50000), &mut buf, n, 1, &stats)));
            }
        };
        for seq in 0..20 {
            round(&mut relay, seq);
        }
        let before = mine();
        for seq in 20..3000u16 {
            round(&mut relay, seq.wrapping_mul(23)); // sequence numbers all over, wraps included
        }
        assert_eq!(mine() - before, 0, "allocations on the packet path (pbx srtp: {pbx_srtp})");
        let s = stats.snapshot();
        assert_eq!(s.dropped_other + s.dropped_auth + s.dropped_unknown_source, 0, "{s:?}");
    }
    // and a test of the test: an allocation on this thread is counted
    let before = mine();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert_eq!(mine() - before, 1);
}

#[test]
fn engine_packet_path_does_not_allocate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // a runtime that is never driven: the sweeper task is spawned but never runs
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let cfg = MediaEngineConfig {
        teams_ports: 43100..=43119,
        pbx_ports: 43200..=43219,
        threads: 2,
        ..Default::default()
    };
    let (mut engine, _events) = MediaEngine::new(cfg, rt.handle().clone());
    let teams = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&teams, &pbx] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let theirs = key(9, SrtpSuite::AesCm128HmacSha1_80);
    let id = engine.allocate(Trunk::Teams, Trunk::Pbx).unwrap();
    let teams_remote = RemoteMedia {
        rtp: Some(teams.local_addr().unwrap()),
        rtcp: Some(teams.local_addr().unwrap()),
        rtcp_mux: true,
        srtp: Some(theirs.clone()),
        sends: true,
        receives: true,
        ..Default::default()
    };
    engine.update(id, MediaEnd::A, teams_remote).unwrap();
    let pbx_remote = RemoteMedia { rtp: Some(pbx.local_addr().unwrap()), sends: true, receives: true, ..Default::default() };
    engine.update(id, MediaEnd::B, pbx_remote).unwrap();
    let teams_port = engine.local(id, MediaEnd::A).unwrap().rtp;
    let pbx_port = engine.local(id, MediaEnd::B).unwrap().rtp;
    let ours = engine.local(id, MediaEnd::A).unwrap().srtp.unwrap();
    let mut teams_tx = SrtpStream::sender(&theirs).unwrap();
    let mut teams_rx = SrtpStream::receiver(&ours).unwrap();
    let mut buf = [0u8; 2048];
    let mut round = |seq: u16| {
        let n = rtp(&mut buf, 0, seq, 0x3000);
        pbx.send_to(&buf[..n], pbx_port).unwrap();
        let (n, from) = teams.recv_from(&mut buf).unwrap();
        assert_eq!(from, teams_port);
        assert_eq!(teams_rx.unprotect_rtp(&mut buf[..n]), Ok(172));
        let n = rtp(&mut buf, 0, seq, 0x4000);
        let n = teams_tx.protect_rtp(&mut buf[..n + MAX_TRAILER], n).unwrap();
        teams.send_to(&buf[..n], teams_port).unwrap();
        let (n, from) = pbx.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (172, pbx_port));
    };
    for seq in 0..50 {
        round(seq);
    }
    let before = ALL.load(Relaxed);
    for seq in 50..2050 {
        round(seq);
    }
    let during = ALL.load(Relaxed) - before;
    assert_eq!(during, 0, "allocations in the process while 4000 packets were relayed");
    engine.free(id);
}
