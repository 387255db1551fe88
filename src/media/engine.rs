//! [`MediaEngine`]: the socket side of media anchoring, behind the synchronous [`MediaControl`]
//! API that `b2bua` calls.
//!
//! - `allocate` takes an even port pair from each side's [`PortPool`], binds non-blocking std
//!   sockets (RTP on the even port, RTCP on port+1 unless muxed), generates SRTP keys (Teams side,
//!   and PBX side when `srtp_to_pbx`) and ICE-lite credentials (Teams side) with the OS-seeded
//!   CSPRNG, and hands the session (its [`Relay`] and sockets) to one of a fixed set of media
//!   threads, round-robin.
//! - `update` / `restart_ice` / `free` send a command to the session's media thread over its
//!   control channel and wake the thread.
//! - A sweeper task (on the runtime `Handle` given at construction) checks each session's
//!   last-packet timestamp (an atomic the media thread writes) every `inactivity_timeout / 4`
//!   (bounded to 50 ms..1 s) and emits [`MediaEvent::Inactive`] once.
//!
//! The packet path: each media thread (`media-relay-N`, [`MediaEngineConfig::threads`] of them,
//! default one per core) owns its sessions outright and waits on one level-triggered readiness
//! set (`poll::EventSet`) holding all their sockets. A readable socket costs one `recvfrom`
//! into the thread's buffer, SRTP undone and redone in place by the relay, and one `sendto` of
//! a slice of that same buffer: no allocation, no copy, no lock, and no second `recvfrom` that
//! only learns `EWOULDBLOCK` (a socket with more datagrams queued is simply reported ready
//! again by the next wait). Commands from signalling are taken from the channel only after a
//! wake-up; the only state shared with signalling is the per-session counters (atomics
//! written by the media thread only).
//!
//! Ports are returned to the pools only once the sockets are closed: `PortsBack` is the last
//! field of a session's sockets and sends the pair back when dropped, after the sockets.

use super::poll::{EventSet, Ready};
use super::pool::PortPool;
use super::relay::{bump, Action, LegSetup, Pending, Port, Relay, SessionStats, SessionStatsSnapshot, HEADROOM};
use super::{IceCredentials, LocalMedia, MediaControl, MediaEnd, MediaError, MediaEvent, MediaSessionId, RemoteMedia, SrtpKey, SrtpSuite};
use crate::config::Trunk;
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
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
    /// Media threads (packet path); 0 = one per core (`available_parallelism`).
    pub threads: usize,
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
            threads: 0,
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

/// What signalling (and the sweeper) and the media thread share for one session: atomics only.
struct SessionShared {
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
    /// Index of the media thread that owns the session.
    thread: usize,
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

/// Commands to a media thread.
enum Control {
    Add(Box<Session>),
    Apply(MediaSessionId, Box<Pending>),
    Stop(MediaSessionId),
    Shutdown,
}

/// The engine's handle on one media thread.
struct MediaThread {
    control: std_mpsc::Sender<Control>,
    events: Arc<EventSet>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl MediaThread {
    fn send(&self, c: Control) -> Result<(), Control> {
        self.control.send(c).map_err(|e| e.0)?;
        self.events.wake();
        Ok(())
    }
}

pub struct MediaEngine {
    cfg: MediaEngineConfig,
    teams_pool: PortPool,
    pbx_pool: PortPool,
    sessions: HashMap<MediaSessionId, SessionEntry>,
    registry: Registry,
    next_id: u64,
    next_thread: usize,
    threads: Vec<MediaThread>,
    epoch: Instant,
    stats: EngineStats,
    inactive_count: Arc<AtomicU64>,
    sweeper: JoinHandle<()>,
    /// Port pairs whose sockets are closed (sent by the media threads, see `PortsBack`).
    released_tx: std_mpsc::Sender<(u16, u16)>,
    released_rx: std_mpsc::Receiver<(u16, u16)>,
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
    /// Starts the media threads and the inactivity sweeper (on `handle`).
    ///
    /// # Panics
    /// When the OS refuses to create a media thread or its epoll set (at start-up only).
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
        let n = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let threads = (0..n).map(|i| spawn_media_thread(i, epoch)).collect();
        let (released_tx, released_rx) = std_mpsc::channel();
        let engine = MediaEngine {
            teams_pool: PortPool::new(cfg.teams_ports.clone()),
            pbx_pool: PortPool::new(cfg.pbx_ports.clone()),
            cfg,
            sessions: HashMap::new(),
            registry,
            next_id: 1,
            next_thread: 0,
            threads,
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
    ) -> Option<(u16, UdpSocket, Option<UdpSocket>)> {
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

    /// Sends a command to media thread `thread` and wakes it.
    fn command(&self, thread: usize, c: Control) {
        if let Some(t) = self.threads.get(thread) {
            if t.send(c).is_err() {
                tracing::error!(thread, "media thread is gone");
            }
        }
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
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
        let socks = Sockets {
            teams_rtp: trtp,
            teams_rtcp: trtcp,
            pbx_rtp: prtp,
            pbx_rtcp: prtcp,
            _release: PortsBack { tx: self.released_tx.clone(), teams: tport, pbx: pport },
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
        let shared = Arc::new(SessionShared { stats: SessionStats::default(), inactive_reported: AtomicBool::new(false) });
        shared.stats.last_rx_ms.store(now_ms(self.epoch), Relaxed);
        let id = MediaSessionId(self.next_id);
        let thread = self.next_thread % self.threads.len().max(1);
        let session = Box::new(Session { id, relay, socks, shared: shared.clone() });
        match self.threads.get(thread).map(|t| t.send(Control::Add(session))) {
            Some(Ok(())) => {}
            _ => {
                // the sockets are closed with the command; PortsBack returns the ports
                tracing::error!(thread, "media thread is gone");
                return Err(MediaError::Exhausted("media threads"));
            }
        }
        self.next_id += 1;
        self.next_thread = self.next_thread.wrapping_add(1);
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
                thread,
            },
        );
        tracing::debug!(session = id.0, teams_port = tport, pbx_port = pport, thread, "media session allocated");
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
        let thread = e.thread;
        self.command(thread, Control::Apply(id, Box::new(Pending { ice_restart: Some(creds), ..Default::default() })));
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
        let pending = Box::new(match side {
            Trunk::Teams => Pending { teams: Some(remote), ..Default::default() },
            Trunk::Pbx => Pending { pbx: Some(remote), ..Default::default() },
        });
        let thread = e.thread;
        self.command(thread, Control::Apply(id, pending));
        Ok(())
    }

    fn free(&mut self, id: MediaSessionId) {
        let Some(e) = self.sessions.remove(&id) else { return };
        self.command(e.thread, Control::Stop(id));
        if let Ok(mut r) = self.registry.lock() {
            r.remove(&id);
        }
        self.stats.freed.add(&e.shared.stats.snapshot());
        // The ports go back to the pools when the media thread has closed the sockets (PortsBack).
        tracing::debug!(session = id.0, "media session freed");
    }
}

impl Drop for MediaEngine {
    fn drop(&mut self) {
        self.sweeper.abort();
        for t in &self.threads {
            let _ = t.send(Control::Shutdown);
        }
        for t in &mut self.threads {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
    }
}

/// A session as its media thread holds it.
struct Session {
    id: MediaSessionId,
    relay: Relay,
    socks: Sockets,
    shared: Arc<SessionShared>,
}

struct Sockets {
    teams_rtp: UdpSocket,
    teams_rtcp: Option<UdpSocket>,
    pbx_rtp: UdpSocket,
    pbx_rtcp: Option<UdpSocket>,
    /// Last field: dropped after the sockets are closed.
    _release: PortsBack,
}

/// Hands a session's port pairs back to the engine once its sockets are closed (the session
/// was stopped, or its media thread ended), so a freed port is never handed out while still
/// bound.
struct PortsBack {
    tx: std_mpsc::Sender<(u16, u16)>,
    teams: u16,
    pbx: u16,
}

impl Drop for PortsBack {
    fn drop(&mut self) {
        let _ = self.tx.send((self.teams, self.pbx));
    }
}

const PORTS: [Port; 4] = [Port::TeamsRtp, Port::TeamsRtcp, Port::PbxRtp, Port::PbxRtcp];

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

/// Largest datagram relayed; a datagram that fills the receive area may have been truncated by
/// the kernel and is dropped.
const MAX_DATAGRAM: usize = 2048;
/// Readiness events taken per wait.
const EVENTS_PER_WAIT: usize = 256;

fn spawn_media_thread(index: usize, epoch: Instant) -> MediaThread {
    let events = Arc::new(EventSet::new().expect("media thread: cannot create an epoll set"));
    let (control, rx) = std_mpsc::channel();
    let ev = events.clone();
    let join = std::thread::Builder::new()
        .name(format!("media-relay-{index}"))
        .spawn(move || MediaLoop::new(ev, rx, epoch).run())
        .expect("cannot start a media thread");
    MediaThread { control, events, join: Some(join) }
}

/// One media thread: its sessions in a slab (readiness key = slot * 4 + port), its buffer.
struct MediaLoop {
    events: Arc<EventSet>,
    control: std_mpsc::Receiver<Control>,
    epoch: Instant,
    slots: Vec<Option<Session>>,
    free_slots: Vec<usize>,
    by_id: HashMap<MediaSessionId, usize>,
}

impl MediaLoop {
    fn new(events: Arc<EventSet>, control: std_mpsc::Receiver<Control>, epoch: Instant) -> MediaLoop {
        MediaLoop { events, control, epoch, slots: Vec::new(), free_slots: Vec::new(), by_id: HashMap::new() }
    }

    fn run(mut self) {
        let mut ready = Ready::with_capacity(EVENTS_PER_WAIT);
        let mut buf = vec![0u8; MAX_DATAGRAM + HEADROOM];
        loop {
            if let Err(e) = self.events.wait(&mut ready) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "media thread: wait failed");
                    break;
                }
            }
            if !self.take_commands() {
                break;
            }
            let now = now_ms(self.epoch);
            for key in ready.keys() {
                let (slot, port) = (key / 4, PORTS[key % 4]);
                // a key of a session stopped by the commands just taken finds no session (or a
                // new one in the slot): the non-blocking read below then finds nothing
                let Some(Some(s)) = self.slots.get_mut(slot) else { continue };
                let Some(sock) = s.socks.get(port) else { continue };
                let (n, src) = match sock.recv_from(&mut buf[..MAX_DATAGRAM]) {
                    Ok(x) => x,
                    Err(_) => continue, // WouldBlock, or an ICMP error (consumed by this read)
                };
                if n == MAX_DATAGRAM {
                    bump(&s.shared.stats.dropped_other);
                    continue;
                }
                if let Action::Send { via, to, data } = s.relay.on_packet(port, src, &mut buf, n, now, &s.shared.stats) {
                    let sent = s.socks.get(via).map(|v| v.send_to(data, to));
                    if !matches!(sent, Some(Ok(_))) {
                        bump(&s.shared.stats.dropped_other);
                    }
                }
            }
        }
        // Shutdown: close every socket (PortsBack after each session's sockets).
        for slot in 0..self.slots.len() {
            self.remove(slot);
        }
    }

    /// Applies the queued commands; false on shutdown (or when the engine is gone).
    fn take_commands(&mut self) -> bool {
        loop {
            match self.control.try_recv() {
                Ok(Control::Add(s)) => self.add(*s),
                Ok(Control::Apply(id, p)) => {
                    if let Some(s) = self.by_id.get(&id).and_then(|&i| self.slots[i].as_mut()) {
                        s.relay.apply(*p);
                    }
                }
                Ok(Control::Stop(id)) => {
                    if let Some(i) = self.by_id.remove(&id) {
                        self.remove(i);
                    }
                }
                Ok(Control::Shutdown) | Err(std_mpsc::TryRecvError::Disconnected) => return false,
                Err(std_mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn add(&mut self, s: Session) {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        for (i, p) in PORTS.iter().enumerate() {
            if let Some(sock) = s.socks.get(*p) {
                if let Err(e) = self.events.add(sock, slot * 4 + i) {
                    tracing::error!(session = s.id.0, error = %e, "media socket not watched");
                }
            }
        }
        self.by_id.insert(s.id, slot);
        self.slots[slot] = Some(s);
    }

    /// Stops watching a session's sockets, then closes them (and so returns its ports).
    fn remove(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::take) {
            for p in PORTS {
                if let Some(sock) = s.socks.get(p) {
                    self.events.delete(sock);
                }
            }
            drop(s);
            self.free_slots.push(slot);
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
