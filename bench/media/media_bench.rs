//! Media relay benchmark: N concurrent G.711 streams (20 ms, 172-byte RTP packets) pushed
//! PBX -> Teams through drbridge's MediaEngine (in this process: its media threads, one per
//! core, plus a 2-worker runtime for its sweeper) or through rtpengine (allocated over its ng
//! protocol), RTP->RTP or RTP->SRTP.
//!
//! The load generator (one sending thread, one receiving thread) is the same for both targets.
//! Reported: packets/s delivered, CPU of the relay (drbridge: its media threads and its
//! runtime's worker threads from /proc/self/task/*/stat; rtpengine: /proc/PID/stat), packets/s
//! per core of relay CPU, loss, and added latency p50/p99 (send -> receive on loopback,
//! including the generator's own scheduling).
//!
//! cargo bench --bench media_bench -- --target drbridge|rtpengine --mode rtp|srtp
//!     [--streams 1000] [--secs 12] [--ng 127.0.0.1:2223] [--pid PID]
//! cargo bench --bench media_bench -- --target srtp     (ns per SRTP protect/unprotect, vs rtc-srtp)

use drbridge::config::Trunk;
use drbridge::media::{MediaControl, MediaEnd, MediaEngine, MediaEngineConfig, RemoteMedia, SrtpKey, SrtpSuite};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    target: String,
    mode: String,
    streams: usize,
    secs: u64,
    ng: SocketAddr,
    pid: Option<u32>,
}

fn args() -> Args {
    let mut a = Args {
        target: "drbridge".into(),
        mode: "srtp".into(),
        streams: 1000,
        secs: 12,
        ng: "127.0.0.1:2223".parse().unwrap(),
        pid: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    if !v.iter().any(|x| x == "--bench") {
        // Run by `cargo test --all-targets` (no --bench flag): a short smoke run only.
        a.streams = 20;
        a.secs = 1;
    }
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--target" => a.target = val,
            "--mode" => a.mode = val,
            "--streams" => a.streams = val.parse().expect("--streams"),
            "--secs" => a.secs = val.parse().expect("--secs"),
            "--ng" => a.ng = val.parse().expect("--ng"),
            "--pid" => a.pid = Some(val.parse().expect("--pid")),
            _ => {
                i += 1;
                continue; // cargo bench passes --bench
            }
        }
        i += 2;
    }
    a
}

fn udp(buf: usize) -> UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    let _ = s.set_recv_buffer_size(buf);
    let _ = s.set_send_buffer_size(buf);
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    s.into()
}

/// utime+stime in clock ticks (USER_HZ = 100 on Linux) of the threads whose name starts with
/// `prefix`.
fn threads_cpu_ticks(prefix: &str) -> u64 {
    let mut t = 0;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            let p = e.path();
            let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if name.trim().starts_with(prefix) {
                t += stat_ticks(&std::fs::read_to_string(p.join("stat")).unwrap_or_default());
            }
        }
    }
    t
}

fn stat_ticks(stat: &str) -> u64 {
    // fields after ") ": state is field 3; utime 14, stime 15
    let rest = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let g = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    g(11) + g(12)
}

fn pid_cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

// ---- minimal bencode for rtpengine's ng protocol ----
enum B {
    Str(Vec<u8>),
    Int(i64),
    List(Vec<B>),
    Dict(BTreeMap<Vec<u8>, B>),
}

fn benc(b: &B, out: &mut Vec<u8>) {
    match b {
        B::Str(s) => {
            out.extend_from_slice(format!("{}:", s.len()).as_bytes());
            out.extend_from_slice(s);
        }
        B::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
        B::List(l) => {
            out.push(b'l');
            l.iter().for_each(|x| benc(x, out));
            out.push(b'e');
        }
        B::Dict(d) => {
            out.push(b'd');
            for (k, v) in d {
                benc(&B::Str(k.clone()), out);
                benc(v, out);
            }
            out.push(b'e');
        }
    }
}

fn bdec(s: &[u8], i: &mut usize) -> Option<B> {
    match *s.get(*i)? {
        b'i' => {
            let end = *i + s[*i..].iter().position(|&c| c == b'e')?;
            let v = std::str::from_utf8(&s[*i + 1..end]).ok()?.parse().ok()?;
            *i = end + 1;
            Some(B::Int(v))
        }
        b'l' => {
            *i += 1;
            let mut l = vec![];
            while *s.get(*i)? != b'e' {
                l.push(bdec(s, i)?);
            }
            *i += 1;
            Some(B::List(l))
        }
        b'd' => {
            *i += 1;
            let mut d = BTreeMap::new();
            while *s.get(*i)? != b'e' {
                let B::Str(k) = bdec(s, i)? else { return None };
                d.insert(k, bdec(s, i)?);
            }
            *i += 1;
            Some(B::Dict(d))
        }
        _ => {
            let colon = *i + s[*i..].iter().position(|&c| c == b':')?;
            let n: usize = std::str::from_utf8(&s[*i..colon]).ok()?.parse().ok()?;
            let v = s.get(colon + 1..colon + 1 + n)?.to_vec();
            *i = colon + 1 + n;
            Some(B::Str(v))
        }
    }
}

fn s(x: &str) -> B {
    B::Str(x.as_bytes().to_vec())
}

fn ng(sock: &UdpSocket, to: SocketAddr, seq: &mut u64, pairs: Vec<(&str, B)>) -> BTreeMap<Vec<u8>, B> {
    *seq += 1;
    // rtpengine caches replies by cookie: make cookies unique across runs
    let cookie = format!("{}-{seq}", std::process::id());
    let mut msg = format!("{cookie} ").into_bytes();
    benc(&B::Dict(pairs.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect()), &mut msg);
    sock.send_to(&msg, to).expect("ng send");
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut buf).expect("ng reply (is rtpengine running?)");
        let r = &buf[..n];
        let Some(sp) = r.iter().position(|&c| c == b' ') else { continue };
        if &r[..sp] != cookie.as_bytes() {
            continue;
        }
        let mut i = sp + 1;
        let Some(B::Dict(d)) = bdec(r, &mut i) else { panic!("bad ng reply") };
        match d.get(&b"result"[..]) {
            Some(B::Str(v)) if v == b"ok" => return d,
            _ => panic!("ng error: {}", String::from_utf8_lossy(r)),
        }
    }
}

fn sdp_port(d: &BTreeMap<Vec<u8>, B>) -> u16 {
    let Some(B::Str(sdp)) = d.get(&b"sdp"[..]) else { panic!("no sdp") };
    let sdp = String::from_utf8_lossy(sdp);
    let m = sdp.lines().find(|l| l.starts_with("m=audio ")).expect("m=audio");
    m.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn b64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                o.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

fn sdp(port: u16, crypto_tag: Option<u32>) -> String {
    let srtp = crypto_tag.is_some();
    let mut x = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/{} 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        if srtp { "SAVP" } else { "AVP" }
    );
    if let Some(tag) = crypto_tag {
        x += &format!("a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 inline:{}\r\n", b64(&[0x42; 30]));
    }
    x
}

/// `--target srtp`: nanoseconds per protect / unprotect of one 172-byte RTP packet, drbridge's
/// in-place SRTP against `rtc-srtp` (which returns a new buffer per packet), same key, one thread.
fn srtp_micro(packets: usize) {
    use drbridge::media::srtp::{SrtpStream, MAX_TRAILER};
    use rtc_srtp::context::Context;
    use rtc_srtp::protection_profile::ProtectionProfile;
    let key = SrtpKey { suite: SrtpSuite::AesCm128HmacSha1_80, tag: 1, key: [1; 16], salt: [2; 14] };
    let mut pkt = [0u8; 172];
    pkt[0] = 0x80;
    pkt[8..12].copy_from_slice(&7u32.to_be_bytes());
    let per = |t: Instant| t.elapsed().as_nanos() as f64 / packets as f64;

    let mut tx = SrtpStream::sender(&key).unwrap();
    let mut rx = SrtpStream::receiver(&key).unwrap();
    let mut buf = [0u8; 172 + MAX_TRAILER];
    let mut wire: Vec<Vec<u8>> = Vec::with_capacity(packets);
    let t = Instant::now();
    for i in 0..packets {
        buf[..172].copy_from_slice(&pkt);
        buf[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        let n = tx.protect_rtp(&mut buf, 172).unwrap();
        std::hint::black_box(&buf[..n]);
    }
    let ours_protect = per(t);
    let mut tx2 = SrtpStream::sender(&key).unwrap();
    for i in 0..packets {
        buf[..172].copy_from_slice(&pkt);
        buf[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        let n = tx2.protect_rtp(&mut buf, 172).unwrap();
        wire.push(buf[..n].to_vec());
    }
    let t = Instant::now();
    for w in wire.iter_mut() {
        let n = rx.unprotect_rtp(w).unwrap();
        std::hint::black_box(&w[..n]);
    }
    let ours_unprotect = per(t);

    let provider = rtc_srtp::crypto::default_provider().unwrap();
    let ctx = || Context::new(&key.key, &key.salt, ProtectionProfile::Aes128CmHmacSha1_80, None, None, provider.crypto()).unwrap();
    let (mut ttx, mut trx) = (ctx(), ctx());
    let mut theirs_wire = Vec::with_capacity(packets);
    let t = Instant::now();
    for i in 0..packets {
        pkt[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        theirs_wire.push(ttx.encrypt_rtp(&pkt).unwrap());
    }
    let theirs_protect = per(t);
    let t = Instant::now();
    for w in &theirs_wire {
        std::hint::black_box(trx.decrypt_rtp(w).unwrap());
    }
    let theirs_unprotect = per(t);
    println!(
        "RESULT target=srtp packets={packets} protect_ns={ours_protect:.0} unprotect_ns={ours_unprotect:.0} rtc_srtp_protect_ns={theirs_protect:.0} rtc_srtp_unprotect_ns={theirs_unprotect:.0}"
    );
}

fn main() {
    let a = args();
    if a.target == "srtp" {
        srtp_micro(if a.secs <= 1 { 10_000 } else { 200_000 });
        return;
    }
    let srtp = a.mode == "srtp";
    let n = a.streams;
    let sender = udp(8 << 20);
    let receiver = udp(8 << 20);
    let s_addr = sender.local_addr().unwrap();
    let r_addr = receiver.local_addr().unwrap();

    // ---- set up the target; dests[i] = where stream i's RTP goes ----
    let mut dests: Vec<SocketAddr> = Vec::with_capacity(n);
    let mut _engine_keepalive = None;
    let cpu: Box<dyn Fn() -> u64>;
    let mut ng_cleanup: Option<(UdpSocket, u64)> = None;
    if a.target == "drbridge" {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("media-worker")
            .enable_all()
            .build()
            .unwrap();
        let cfg = MediaEngineConfig {
            teams_ports: 42000..=(42000 + 2 * n as u16 + 200),
            pbx_ports: 50000..=(50000 + 2 * n as u16 + 200),
            max_sessions: n,
            inactivity_timeout: Duration::from_secs(600),
            ..Default::default()
        };
        let (mut engine, events) = MediaEngine::new(cfg, rt.handle().clone());
        for _ in 0..n {
            let id = engine.allocate(Trunk::Teams, Trunk::Pbx).expect("allocate");
            engine
                .update(
                    id,
                    MediaEnd::A,
                    RemoteMedia {
                        rtp: Some(r_addr),
                        rtcp: Some(r_addr),
                        rtcp_mux: true,
                        srtp: srtp.then_some(SrtpKey {
                            suite: SrtpSuite::AesCm128HmacSha1_80,
                            tag: 1,
                            key: [1; 16],
                            salt: [2; 14],
                        }),
                        sends: true,
                        receives: true,
                        ..Default::default()
                    },
                )
                .unwrap();
            engine
                .update(id, MediaEnd::B, RemoteMedia { rtp: Some(s_addr), sends: true, receives: true, ..Default::default() })
                .unwrap();
            dests.push(engine.local(id, MediaEnd::B).unwrap().rtp);
        }
        _engine_keepalive = Some((rt, engine, events));
        // the engine's media threads (`media-relay-N`) and the runtime (`media-worker`: the
        // inactivity sweeper)
        cpu = Box::new(|| threads_cpu_ticks("media-"));
    } else {
        let pid = a.pid.expect("--pid of rtpengine");
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut seq = 0;
        for i in 0..n {
            let call = format!("bench-{}-{i}", std::process::id());
            let mut offer = vec![
                ("command", s("offer")),
                ("call-id", s(&call)),
                ("from-tag", s("pbx")),
                ("sdp", s(&sdp(s_addr.port(), None))),
            ];
            if srtp {
                offer.push(("transport-protocol", s("RTP/SAVP")));
            }
            let off = ng(&c, a.ng, &mut seq, offer);
            // answer the offered AES_CM_128_HMAC_SHA1_80 with its crypto tag
            let tag = match off.get(&b"sdp"[..]) {
                Some(B::Str(x)) => String::from_utf8_lossy(x)
                    .lines()
                    .find(|l| l.starts_with("a=crypto:") && l.contains(" AES_CM_128_HMAC_SHA1_80 "))
                    .and_then(|l| l["a=crypto:".len()..].split(' ').next().and_then(|t| t.parse().ok()))
                    .unwrap_or(1u32),
                _ => 1,
            };
            let ans = ng(
                &c,
                a.ng,
                &mut seq,
                vec![
                    ("command", s("answer")),
                    ("call-id", s(&call)),
                    ("from-tag", s("pbx")),
                    ("to-tag", s("teams")),
                    ("sdp", s(&sdp(r_addr.port(), srtp.then_some(tag)))),
                ],
            );
            dests.push(SocketAddr::from(([127, 0, 0, 1], sdp_port(&ans))));
        }
        ng_cleanup = Some((c, seq));
        cpu = Box::new(move || pid_cpu_ticks(pid));
    }

    // ---- load ----
    const SLOTS: usize = 4096;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n * SLOTS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let dur = Duration::from_secs(a.secs);

    let rx = {
        let sent_at = sent_at.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            receiver.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut lat: Vec<u32> = Vec::with_capacity(n * 50 * a.secs as usize + 1024);
            let mut got = 0u64;
            let mut buf = [0u8; 2048];
            loop {
                match receiver.recv(&mut buf) {
                    Ok(len) if len >= 12 => {
                        let now = t0.elapsed().as_nanos() as u64;
                        got += 1;
                        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
                        let seq = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                        if (1..=n).contains(&ssrc) {
                            let at = sent_at[(ssrc - 1) * SLOTS + seq % SLOTS].load(Relaxed);
                            if at != 0 && now > at {
                                lat.push(((now - at) / 1000) as u32);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if done.load(Relaxed) {
                            break;
                        }
                    }
                }
            }
            (got, lat)
        })
    };

    let cpu0 = cpu();
    let w0 = Instant::now();
    let interval = Duration::from_nanos(20_000_000 / n as u64);
    let mut pkt = [0u8; 172];
    pkt[0] = 0x80;
    let mut sent = 0u64;
    let mut next = Instant::now();
    let mut k = 0usize;
    let mut round = 0u32;
    while w0.elapsed() < dur {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now); // pacing of the load generator, not synchronisation
        }
        let i = k % n;
        let seq = round as u16;
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&(round * 160).to_be_bytes());
        pkt[8..12].copy_from_slice(&(i as u32 + 1).to_be_bytes());
        sent_at[i * SLOTS + seq as usize % SLOTS].store(t0.elapsed().as_nanos() as u64, Relaxed);
        if sender.send_to(&pkt, dests[i]).is_ok() {
            sent += 1;
        }
        k += 1;
        if k % n == 0 {
            round += 1;
        }
        next += interval;
    }
    let wall = w0.elapsed().as_secs_f64();
    let cpu1 = cpu();
    done.store(true, Relaxed);
    let (got, mut lat) = rx.join().unwrap();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let cpu_frac = (cpu1 - cpu0) as f64 / 100.0 / wall;
    let pps = got as f64 / wall;
    let loss = if sent > 0 { 100.0 * (sent.saturating_sub(got)) as f64 / sent as f64 } else { 0.0 };
    println!(
        "RESULT target={} mode={} streams={} secs={:.1} sent={} received={} loss_pct={:.3} pps={:.0} cpu_cores={:.3} pps_per_core={:.0} p50_us={} p99_us={}",
        a.target,
        a.mode,
        n,
        wall,
        sent,
        got,
        loss,
        pps,
        cpu_frac,
        if cpu_frac > 0.0 { pps / cpu_frac } else { 0.0 },
        pct(0.50),
        pct(0.99)
    );
    if let Some((c, mut seq)) = ng_cleanup {
        for i in 0..n {
            let call = format!("bench-{}-{i}", std::process::id());
            let _ = ng(&c, a.ng, &mut seq, vec![("command", s("delete")), ("call-id", s(&call)), ("from-tag", s("pbx"))]);
        }
    }
}
