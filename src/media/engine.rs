//! [`MediaEngine`]: the socket side of media anchoring, behind the synchronous [`MediaControl`]
//! API that `b2bua` calls.
//!
//! - `allocate` takes an even port pair from each side's [`PortPool`], binds non-blocking std
//!   sockets (RTP on the even port, RTCP on port+1 unless muxed), generates SRTP keys (Teams side,
//!   and PBX side when `srtp_to_pbx`) and ICE-lite credentials (Teams side) with the OS-seeded
//!   CSPRNG, and spawns one relay task per session on the runtime `Handle` given at construction.
//! - `update` / `restart_ice` / `free` write into the session's [`Pending`] slot (a mutex the
//!   relay task takes only after a `Notify` wake-up, never per packet) and wake the task.
//! - A sweeper task checks each session's last-packet timestamp (an atomic the relay writes)
//!   every `inactivity_timeout / 4` (bounded to 50 ms..1 s) and emits [`MediaEvent::Inactive`] once.
//!
//! The packet path (the relay task) owns its sockets and SRTP contexts; it takes no lock shared
//! with signalling. Its only heap allocations are the output buffers `rtc-srtp` returns.

use super::pool::PortPool;
use super::relay::{Action, LegSetup, Pending, Port, Relay, SessionStats, SessionStatsSnapshot, HEADROOM};
use super::{IceCredentials, LocalMedia, MediaControl, MediaEnd, MediaError, MediaEvent, MediaSessionId, RemoteMedia, SrtpKey, SrtpSuite};
use crate::config::Trunk;
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// Configuration of the media engine.
#[derive(Clone, Debug)]
pub struct MediaEngineConfig {
    /// Address the Teams-side sockets bind to.
    pub teams_ip: IpAddr,
    /// Address written into SDP toward Teams (NAT / public address); default `teams_ip`.
    pub teams_advertised_ip: Option<IpAddr>,
    pub pbx_ip: IpAddr,
    pub pbx_advertised_ip: Option<IpAddr>,
    /// Port ranges; even ports are RTP, port+1 RTCP.
    pub teams_ports: RangeInclusive<u16>,
    pub pbx_ports: RangeInclusive<u16>,
    /// RTCP muxed on the RTP port toward Teams (no RTCP socket is bound on that side).
    pub rtcp_mux_teams: bool,
    /// SRTP toward the PBX too (the trunk asks for it).
    pub srtp_to_pbx: bool,
    /// Suite of the keys drbridge generates (the far end's choice wins once known).
    pub srtp_suite: SrtpSuite,
    /// No RTP/RTCP on either side for this long -> `MediaEvent::Inactive`.
    pub inactivity_timeout: Duration,
    /// Concurrent sessions; beyond -> `Exhausted`.
    pub max_sessions: usize,
    /// Capacity of the event channel.
    pub event_queue: usize,
}

impl Default for MediaEngineConfig {
    fn default() -> Self {
        MediaEngineConfig {
            teams_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            teams_advertised_ip: None,
            pbx_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            pbx_advertised_ip: None,
            teams_ports: 40000..=44999,
            pbx_ports: 45000..=49999,
            rtcp_mux_teams: true,
            srtp_to_pbx: false,
            srtp_suite: SrtpSuite::AesCm128HmacSha1_80,
            inactivity_timeout: Duration::from_secs(60),
            max_sessions: 2000,
            event_queue: 1024,
        }
    }
}

/// Engine-wide counters (allocation failures; packet counters of freed sessions summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub sessions: usize,
    pub exhausted_teams: u64,
    pub exhausted_pbx: u64,
    pub exhausted_sessions: u64,
    pub bind_failures: u64,
    pub inactive: u64,
    /// Sum over freed sessions.
    pub freed: SessionStatsSnapshot,
}

/// What signalling and the relay task share for one session.
struct SessionShared {
    pending: Mutex<Pending>,
    notify: Notify,
    stats: SessionStats,
    inactive_reported: AtomicBool,
}

struct SideState {
    local: LocalMedia,
}

struct SessionEntry {
    /// The side end A faces (end B faces the other one).
    a_side: Trunk,
    shared: Arc<SessionShared>,
    teams: SideState,
    pbx: SideState,
    task: JoinHandle<()>,
}

impl SessionEntry {
    fn side_of(&self, end: MediaEnd) -> Trunk {
        match (end, self.a_side) {
            (MediaEnd::A, s) => s,
            (MediaEnd::B, Trunk::Teams) => Trunk::Pbx,
            (MediaEnd::B, Trunk::Pbx) => Trunk::Teams,
        }
    }
}

type Registry = Arc<Mutex<HashMap<MediaSessionId, Arc<SessionShared>>>>;

pub struct MediaEngine {
    cfg: MediaEngineConfig,
    handle: tokio::runtime::Handle,
    teams_pool: PortPool,
    pbx_pool: PortPool,
    sessions: HashMap<MediaSessionId, SessionEntry>,
    registry: Registry,
    next_id: u64,
    epoch: Instant,
    stats: EngineStats,
    inactive_count: Arc<AtomicU64>,
    sweeper: JoinHandle<()>,
    /// Port pairs whose sockets are closed (sent by ending relay tasks).
    released_tx: std::sync::mpsc::Sender<(u16, u16)>,
    released_rx: std::sync::mpsc::Receiver<(u16, u16)>,
}

impl std::fmt::Debug for MediaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaEngine").field("sessions", &self.sessions.len()).finish_non_exhaustive()
    }
}

fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

impl MediaEngine {
    pub fn new(cfg: MediaEngineConfig, handle: tokio::runtime::Handle) -> (MediaEngine, mpsc::Receiver<MediaEvent>) {
        let (tx, rx) = mpsc::channel(cfg.event_queue.max(1));
        let registry: Registry = Arc::default();
        let epoch = Instant::now();
        let inactive_count = Arc::new(AtomicU64::new(0));
        let period = (cfg.inactivity_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let sweeper = handle.spawn(sweep(
            registry.clone(),
            tx,
            epoch,
            cfg.inactivity_timeout.as_millis() as u64,
            period,
            inactive_count.clone(),
        ));
        let (released_tx, released_rx) = std::sync::mpsc::channel();
        let engine = MediaEngine {
            teams_pool: PortPool::new(cfg.teams_ports.clone()),
            pbx_pool: PortPool::new(cfg.pbx_ports.clone()),
            cfg,
            handle,
            sessions: HashMap::new(),
            registry,
            next_id: 1,
            epoch,
            stats: EngineStats::default(),
            inactive_count,
            sweeper,
            released_tx,
            released_rx,
        };
        (engine, rx)
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats;
        s.sessions = self.sessions.len();
        s.inactive = self.inactive_count.load(Relaxed);
        s
    }

    /// Returns to the pools the ports of sessions whose sockets are closed. `allocate` does this
    /// itself; `stats` reports pools after it.
    pub fn reclaim(&mut self) {
        while let Ok((t, p)) = self.released_rx.try_recv() {
            self.teams_pool.release(t);
            self.pbx_pool.release(p);
        }
    }

    /// Free port pairs per side (Teams, PBX).
    pub fn available_ports(&mut self) -> (usize, usize) {
        self.reclaim();
        (self.teams_pool.available(), self.pbx_pool.available())
    }

    /// Packet counters of a live session.
    pub fn session_stats(&self, id: MediaSessionId) -> Option<SessionStatsSnapshot> {
        self.sessions.get(&id).map(|e| e.shared.stats.snapshot())
    }

    pub fn config(&self) -> &MediaEngineConfig {
        &self.cfg
    }

    /// Binds a pair from `pool`; tries each free pair at most once.
    fn bind_pair(
        pool: &mut PortPool,
        ip: IpAddr,
        with_rtcp: bool,
        bind_failures: &mut u64,
    ) -> Option<(u16, std::net::UdpSocket, Option<std::net::UdpSocket>)> {
        for _ in 0..pool.available() {
            let port = pool.allocate()?;
            match bind_udp(SocketAddr::new(ip, port)) {
                Ok(rtp) => {
                    if !with_rtcp {
                        return Some((port, rtp, None));
                    }
                    match bind_udp(SocketAddr::new(ip, port + 1)) {
                        Ok(rtcp) => return Some((port, rtp, Some(rtcp))),
                        Err(_) => *bind_failures += 1,
                    }
                }
                Err(_) => *bind_failures += 1,
            }
            pool.release(port); // goes to the back of the queue
        }
        None
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn new_key(suite: SrtpSuite) -> SrtpKey {
    let mut key = [0u8; 16];
    let mut salt = [0u8; 14];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut salt);
    SrtpKey { suite, tag: 1, key, salt }
}

fn new_ice() -> IceCredentials {
    let mut rng = rand::rng();
    // ice-char = ALPHA / DIGIT / "+" / "/"; ufrag >= 4 chars, pwd >= 22 chars (RFC 8839).
    IceCredentials { ufrag: Alphanumeric.sample_string(&mut rng, 8), pwd: Alphanumeric.sample_string(&mut rng, 24) }
}

impl MediaControl for MediaEngine {
    fn allocate(&mut self, a: Trunk, b: Trunk) -> Result<MediaSessionId, MediaError> {
        if a == b {
            // The engine relays Teams <-> PBX; two parties on the same side talk directly.
            return Err(MediaError::NotAcceptable(format!("no relay between two {a} ends")));
        }
        self.reclaim();
        if self.sessions.len() >= self.cfg.max_sessions {
            self.stats.exhausted_sessions += 1;
            return Err(MediaError::Exhausted("max_sessions"));
        }
        let mux_teams = self.cfg.rtcp_mux_teams;
        let Some((tport, trtp, trtcp)) =
            Self::bind_pair(&mut self.teams_pool, self.cfg.teams_ip, !mux_teams, &mut self.stats.bind_failures)
        else {
            self.stats.exhausted_teams += 1;
            return Err(MediaError::Exhausted("teams"));
        };
        let Some((pport, prtp, prtcp)) =
            Self::bind_pair(&mut self.pbx_pool, self.cfg.pbx_ip, true, &mut self.stats.bind_failures)
        else {
            self.teams_pool.release(tport);
            self.stats.exhausted_pbx += 1;
            return Err(MediaError::Exhausted("pbx"));
        };
        let socks = {
            let _g = self.handle.enter();
            let conv = |s: std::net::UdpSocket| UdpSocket::from_std(s);
            let r = (|| -> io::Result<Sockets> {
                Ok(Sockets {
                    teams_rtp: conv(trtp)?,
                    teams_rtcp: trtcp.map(conv).transpose()?,
                    pbx_rtp: conv(prtp)?,
                    pbx_rtcp: prtcp.map(conv).transpose()?,
                    _release: PortsBack { tx: self.released_tx.clone(), teams: tport, pbx: pport },
                })
            })();
            match r {
                Ok(s) => s,
                Err(_) => {
                    self.teams_pool.release(tport);
                    self.pbx_pool.release(pport);
                    self.stats.bind_failures += 1;
                    return Err(MediaError::Exhausted("teams"));
                }
            }
        };

        let tip = self.cfg.teams_advertised_ip.unwrap_or(self.cfg.teams_ip);
        let pip = self.cfg.pbx_advertised_ip.unwrap_or(self.cfg.pbx_ip);
        let teams_local = LocalMedia {
            rtp: SocketAddr::new(tip, tport),
            rtcp: SocketAddr::new(tip, if mux_teams { tport } else { tport + 1 }),
            srtp: Some(new_key(self.cfg.srtp_suite)),
            ice: Some(new_ice()),
        };
        let pbx_local = LocalMedia {
            rtp: SocketAddr::new(pip, pport),
            rtcp: SocketAddr::new(pip, pport + 1),
            srtp: self.cfg.srtp_to_pbx.then(|| new_key(self.cfg.srtp_suite)),
            ice: None,
        };
        let relay = Relay::new(
            LegSetup { key: teams_local.srtp.clone(), ice: teams_local.ice.clone(), rtcp_mux: mux_teams },
            LegSetup { key: pbx_local.srtp.clone(), ice: None, rtcp_mux: false },
        );
        let shared = Arc::new(SessionShared {
            pending: Mutex::new(Pending::default()),
            notify: Notify::new(),
            stats: SessionStats::default(),
            inactive_reported: AtomicBool::new(false),
        });
        shared.stats.last_rx_ms.store(now_ms(self.epoch), Relaxed);
        let id = MediaSessionId(self.next_id);
        self.next_id += 1;
        let task = self.handle.spawn(run_session(relay, socks, shared.clone(), self.epoch));
        if let Ok(mut r) = self.registry.lock() {
            r.insert(id, shared.clone());
        }
        self.sessions.insert(
            id,
            SessionEntry {
                a_side: a,
                shared,
                teams: SideState { local: teams_local },
                pbx: SideState { local: pbx_local },
                task,
            },
        );
        tracing::debug!(session = id.0, teams_port = tport, pbx_port = pport, "media session allocated");
        Ok(id)
    }

    fn local(&self, id: MediaSessionId, end: MediaEnd) -> Option<LocalMedia> {
        let e = self.sessions.get(&id)?;
        let side = e.side_of(end);
        Some(match side {
            Trunk::Teams => e.teams.local.clone(),
            Trunk::Pbx => e.pbx.local.clone(),
        })
    }

    fn restart_ice(&mut self, id: MediaSessionId, end: MediaEnd) -> Option<LocalMedia> {
        let e = self.sessions.get_mut(&id)?;
        let side = e.side_of(end);
        let st = match side {
            Trunk::Teams => &mut e.teams,
            Trunk::Pbx => &mut e.pbx,
        };
        st.local.ice.as_ref()?;
        let creds = new_ice();
        st.local.ice = Some(creds.clone());
        let local = st.local.clone();
        if let Ok(mut p) = e.shared.pending.lock() {
            p.ice_restart = Some(creds);
        }
        e.shared.notify.notify_one();
        Some(local)
    }

    fn update(&mut self, id: MediaSessionId, end: MediaEnd, remote: RemoteMedia) -> Result<(), MediaError> {
        let e = self.sessions.get_mut(&id).ok_or(MediaError::Unknown)?;
        let side = e.side_of(end);
        let st = match side {
            Trunk::Teams => &mut e.teams,
            Trunk::Pbx => &mut e.pbx,
        };
        // Our key follows the far end's suite and crypto tag (the answer echoes the offer's).
        if let (Some(ours), Some(theirs)) = (st.local.srtp.as_mut(), remote.srtp.as_ref()) {
            ours.suite = theirs.suite;
            ours.tag = theirs.tag;
        }
        if let Ok(mut p) = e.shared.pending.lock() {
            match side {
                Trunk::Teams => p.teams = Some(remote),
                Trunk::Pbx => p.pbx = Some(remote),
            }
        }
        e.shared.notify.notify_one();
        Ok(())
    }

    fn free(&mut self, id: MediaSessionId) {
        let Some(e) = self.sessions.remove(&id) else { return };
        if let Ok(mut p) = e.shared.pending.lock() {
            p.stop = true;
        }
        e.shared.notify.notify_one();
        e.task.abort();
        if let Ok(mut r) = self.registry.lock() {
            r.remove(&id);
        }
        self.stats.freed.add(&e.shared.stats.snapshot());
        // The ports go back to the pools when the task has closed its sockets (PortsBack).
        tracing::debug!(session = id.0, "media session freed");
    }
}

impl Drop for MediaEngine {
    fn drop(&mut self) {
        self.sweeper.abort();
        for (_, e) in self.sessions.drain() {
            e.task.abort();
        }
    }
}

struct Sockets {
    teams_rtp: UdpSocket,
    teams_rtcp: Option<UdpSocket>,
    pbx_rtp: UdpSocket,
    pbx_rtcp: Option<UdpSocket>,
    /// Last field: dropped after the sockets are closed.
    _release: PortsBack,
}

/// Hands a session's port pairs back to the engine once its sockets are closed (the relay task
/// ended or was aborted), so a freed port is never handed out while still bound.
struct PortsBack {
    tx: std::sync::mpsc::Sender<(u16, u16)>,
    teams: u16,
    pbx: u16,
}

impl Drop for PortsBack {
    fn drop(&mut self) {
        let _ = self.tx.send((self.teams, self.pbx));
    }
}

impl Sockets {
    fn get(&self, p: Port) -> Option<&UdpSocket> {
        match p {
            Port::TeamsRtp => Some(&self.teams_rtp),
            Port::TeamsRtcp => self.teams_rtcp.as_ref(),
            Port::PbxRtp => Some(&self.pbx_rtp),
            Port::PbxRtcp => self.pbx_rtcp.as_ref(),
        }
    }
}

async fn readable(s: Option<&UdpSocket>) -> io::Result<()> {
    match s {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Datagrams handled per wake-up of one socket before the task looks at the others.
const BATCH: usize = 64;

async fn run_session(mut relay: Relay, socks: Sockets, shared: Arc<SessionShared>, epoch: Instant) {
    let mut buf = vec![0u8; 2048 + HEADROOM];
    loop {
        let port = tokio::select! {
            biased;
            _ = shared.notify.notified() => {
                let p = match shared.pending.lock() {
                    Ok(mut g) => std::mem::take(&mut *g),
                    Err(_) => return,
                };
                if p.stop {
                    return;
                }
                relay.apply(p);
                continue;
            }
            r = socks.teams_rtp.readable() => r.map(|_| Port::TeamsRtp),
            r = socks.pbx_rtp.readable() => r.map(|_| Port::PbxRtp),
            r = readable(socks.teams_rtcp.as_ref()) => r.map(|_| Port::TeamsRtcp),
            r = readable(socks.pbx_rtcp.as_ref()) => r.map(|_| Port::PbxRtcp),
        };
        let Ok(port) = port else { return };
        let Some(sock) = socks.get(port) else { continue };
        let now = now_ms(epoch);
        for _ in 0..BATCH {
            let (n, src) = match sock.try_recv_from(&mut buf[..2048]) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue, // e.g. ECONNREFUSED from an ICMP error
            };
            if let Action::Send { via, to, data } = relay.on_packet(port, src, &mut buf, n, now, &shared.stats) {
                let sent = socks.get(via).map(|s| s.try_send_to(data, to));
                if !matches!(sent, Some(Ok(_))) {
                    shared.stats.dropped_other.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

async fn sweep(
    registry: Registry,
    events: mpsc::Sender<MediaEvent>,
    epoch: Instant,
    timeout_ms: u64,
    period: Duration,
    inactive_count: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        tick.tick().await;
        let now = now_ms(epoch);
        due.clear();
        if let Ok(r) = registry.lock() {
            for (id, s) in r.iter() {
                if !s.inactive_reported.load(Relaxed) && now.saturating_sub(s.stats.last_rx_ms.load(Relaxed)) >= timeout_ms {
                    due.push((*id, s.clone()));
                }
            }
        }
        for (id, s) in due.drain(..) {
            if events.try_send(MediaEvent::Inactive(id)).is_ok() {
                s.inactive_reported.store(true, Relaxed);
                inactive_count.fetch_add(1, Relaxed);
                tracing::info!(session = id.0, "media inactive");
            }
        }
    }
}
