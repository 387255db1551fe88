//! [`MediaEngine`]: the socket side of media anchoring, behind the synchronous [`MediaControl`]
//! API that `b2bua` calls.
//!
//! - Port pairs and their sockets are reused, not re-created. Each side's [`PortPool`] gives
//!   every even port pair a fixed owning media thread (pair index mod threads). The first time
//!   a pair is used, `allocate` binds its non-blocking sockets (RTP on the even port, RTCP on
//!   port+1 unless muxed) and hands them to the owner thread, which watches them from then on;
//!   they stay bound, and watched, for the life of the engine. So start-up binds nothing, file
//!   descriptors grow only to the peak number of pairs in use at once (plus those freed in the
//!   last [`REUSE_AFTER`]), and a reused pair costs the signalling thread no system call at all
//!   (no socket, bind, epoll_ctl or close).
//! - `allocate` takes a free Teams pair and PBX pair of one media thread (the threads in turn;
//!   which pair: the oldest freed one that has rested [`REUSE_AFTER`], else one never bound,
//!   else the oldest freed one, see `pool`), generates SRTP keys (Teams side, and PBX side when `srtp_to_pbx`) and ICE-lite
//!   credentials (Teams side) with the OS-seeded CSPRNG, and sends the session (its [`Relay`])
//!   to that thread, which attaches it to the two pairs.
//! - `update` / `restart_ice` / `free` queue a command on the session's media thread's control
//!   channel without waking it (see `MediaThread::send`: the thread takes its queue before every
//!   read and at least every `COMMAND_POLL`); `allocate` wakes it only for sockets bound just now
//!   or a pair released less than `RECENT_FREE_MS` ago. On `free` the thread detaches the session from its
//!   pairs and drains the datagrams already queued on them (dropped and counted in
//!   [`EngineStats::dropped_unassigned`]); the pairs go back to the pools at once, at the back
//!   of their owner's queue. A pair can only be handed to a new session by a later command on
//!   the same (owner's) channel, so the media thread always detaches and drains it first.
//!   A freed pair rests (FIFO, at least [`REUSE_AFTER`] while the range allows): a far end that
//!   keeps streaming after the BYE hits a pair without a session, where its datagrams are read
//!   and dropped (counted; a level-triggered set would otherwise report them forever), not the
//!   next call on those ports.
//! - A pair that cannot be bound (a port taken by another process) is counted
//!   ([`EngineStats::bind_failures`]), skipped, and retried last (back of the queue).
//! - A sweeper task (on the runtime `Handle` given at construction) checks each session's
//!   last-packet timestamp (an atomic the media thread writes) every `inactivity_timeout / 4`
//!   (bounded to 50 ms..1 s) and emits [`MediaEvent::Inactive`] once.
//!
//! The packet path: each media thread (`media-relay-N`, [`MediaEngineConfig::threads`] of them,
//! default one per core) owns its pairs' sockets and its sessions outright and waits on one
//! level-triggered readiness set (`poll::EventSet`) holding all its sockets. A readable socket
//! costs one `recvfrom` into the thread's buffer, SRTP undone and redone in place by the relay,
//! and one `sendto` of a slice of that same buffer: no allocation, no copy, no lock, and no
//! second `recvfrom` that only learns `EWOULDBLOCK` (a socket with more datagrams queued is
//! simply reported ready again by the next wait). Commands from signalling are taken from the
//! channel after every wait, before the reads; the only state shared with signalling is the per-session
//! counters (atomics written by the media thread only) and each thread's count of datagrams
//! dropped on pairs without a session.

use super::poll::{EventSet, Ready};
use super::pool::{pairs_in, PortPair, PortPool};
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
    /// Number of this engine's first thread (`media-relay-N`): engines of several signalling
    /// shards number their threads apart ([`MediaEngineConfig::share`]).
    pub first_thread: usize,
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
            first_thread: 0,
        }
    }
}

impl MediaEngineConfig {
    /// Media threads to start: `threads`, or one per core for 0.
    fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The part of this configuration that one of `shards` signalling shards runs (one engine
    /// per shard, see `b2bua::shard`): the shard's `span` out of `of` of each port range
    /// (contiguous, whole pairs) and of `max_sessions` (rounded up), and an equal part of the
    /// media threads (at least one each; 0 = one per core becomes cores / shards). None when a
    /// range is too short to give this shard a pair.
    pub fn share(&self, span: std::ops::Range<usize>, of: usize, shards: usize) -> Option<MediaEngineConfig> {
        let of = of.max(1) as u64;
        let part = |r: &RangeInclusive<u16>| -> Option<RangeInclusive<u16>> {
            let (first, pairs) = pairs_in(r);
            let (first, pairs) = (u64::from(first), pairs as u64);
            let (a, b) = (pairs * span.start as u64 / of, pairs * span.end as u64 / of);
            if b <= a {
                return None;
            }
            Some((first + 2 * a) as u16..=((first + 2 * b - 1).min(u64::from(*r.end()))) as u16)
        };
        Some(MediaEngineConfig {
            teams_ports: part(&self.teams_ports)?,
            pbx_ports: part(&self.pbx_ports)?,
            max_sessions: ((self.max_sessions as u64 * span.len() as u64).div_ceil(of) as usize).max(1),
            threads: (self.thread_count() / shards.max(1)).max(1),
            first_thread: self.first_thread + span.start * (self.thread_count() / shards.max(1)).max(1),
            ..self.clone()
        })
    }
}

/// How long a freed port pair rests before it is preferred to binding a pair never used: late
/// packets of the ended call (a far end streaming until it gets the BYE, retransmitted when
/// lost) then reach a pair without a session. A short range reuses pairs sooner, oldest first.
pub const REUSE_AFTER: Duration = Duration::from_secs(5);

/// Engine-wide counters (allocation failures; packet counters of freed sessions summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub sessions: usize,
    pub exhausted_teams: u64,
    pub exhausted_pbx: u64,
    pub exhausted_sessions: u64,
    /// Sockets that could not be bound (the pair is skipped and retried last).
    pub bind_failures: u64,
    pub inactive: u64,
    /// Datagrams received on a port pair without a session (drained when its session was
    /// freed, or arriving later: late packets of ended calls, scans), dropped.
    pub dropped_unassigned: u64,
    /// Port pairs whose sockets are bound (they stay bound: the peak of pairs in use at once,
    /// bind failures aside), per side.
    pub bound_teams: usize,
    pub bound_pbx: usize,
    /// Sum over freed sessions.
    pub freed: SessionStatsSnapshot,
    /// Sum over live sessions (at the time of the call to `stats`).
    pub live: SessionStatsSnapshot,
}


impl EngineStats {
    /// Adds another engine's counters (the engines of several signalling shards).
    pub fn merge(&mut self, o: &EngineStats) {
        self.sessions += o.sessions;
        self.exhausted_teams += o.exhausted_teams;
        self.exhausted_pbx += o.exhausted_pbx;
        self.exhausted_sessions += o.exhausted_sessions;
        self.bind_failures += o.bind_failures;
        self.inactive += o.inactive;
        self.dropped_unassigned += o.dropped_unassigned;
        self.bound_teams += o.bound_teams;
        self.bound_pbx += o.bound_pbx;
        self.freed.add(&o.freed);
        self.live.add(&o.live);
    }
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
    /// Index of the media thread that owns the session (and its two pairs).
    thread: usize,
    /// The session's pair index in each pool.
    teams_pair: usize,
    pbx_pair: usize,
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
    Add(Box<NewSession>),
    Apply(MediaSessionId, Box<Pending>),
    Stop(MediaSessionId),
    Shutdown,
}

/// The engine's handle on one media thread.
struct MediaThread {
    control: std_mpsc::Sender<Control>,
    events: Arc<EventSet>,
    /// Datagrams the thread dropped on pairs without a session (written by the thread only).
    dropped_unassigned: Arc<AtomicU64>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl MediaThread {
    /// Queues `c`, and wakes the thread if `wake`. A command that only matters to packets
    /// (a session on pairs the thread already watches, an answer, a stop) is queued without a
    /// wake: a packet wakes the thread, which takes its commands before it reads, and the
    /// thread looks at its queue every `COMMAND_POLL` anyway. Waking an idle media thread for
    /// every command cost the signalling thread ~10 % of its time at 2,500 calls/s (an
    /// `eventfd` write that schedules the sleeping thread: perf, bench/PROFILE.md).
    fn send(&self, c: Control, wake: bool) -> Result<(), Control> {
        self.control.send(c).map_err(|e| e.0)?;
        if wake {
            self.events.wake();
        }
        Ok(())
    }
}

/// A pair released less than this long ago may still have its stop queued (see `COMMAND_POLL`).
const RECENT_FREE_MS: u64 = 100;

/// How long a media thread with no packets leaves commands queued that needed no wake-up
/// (stops, answers): their effect is only seen by packets, which wake the thread anyway.
const COMMAND_POLL: rustix::event::Timespec = rustix::event::Timespec { tv_sec: 0, tv_nsec: 20_000_000 };

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
    /// Starts the media threads and the inactivity sweeper (on `handle`). Binds no socket:
    /// pairs are bound on first use.
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
        let n = cfg.thread_count();
        let threads = (0..n).map(|i| spawn_media_thread(cfg.first_thread + i, epoch)).collect();
        let engine = MediaEngine {
            teams_pool: PortPool::new(cfg.teams_ports.clone(), n, REUSE_AFTER.as_millis() as u64),
            pbx_pool: PortPool::new(cfg.pbx_ports.clone(), n, REUSE_AFTER.as_millis() as u64),
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
        };
        (engine, rx)
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats;
        s.sessions = self.sessions.len();
        s.inactive = self.inactive_count.load(Relaxed);
        s.dropped_unassigned = self.threads.iter().map(|t| t.dropped_unassigned.load(Relaxed)).sum();
        s.bound_teams = self.teams_pool.bound();
        s.bound_pbx = self.pbx_pool.bound();
        for e in self.sessions.values() {
            s.live.add(&e.shared.stats.snapshot());
        }
        s
    }

    /// Free port pairs per side (Teams, PBX).
    pub fn available_ports(&self) -> (usize, usize) {
        (self.teams_pool.available(), self.pbx_pool.available())
    }

    /// Packet counters of a live session.
    pub fn session_stats(&self, id: MediaSessionId) -> Option<SessionStatsSnapshot> {
        self.sessions.get(&id).map(|e| e.shared.stats.snapshot())
    }

    pub fn config(&self) -> &MediaEngineConfig {
        &self.cfg
    }

    /// Queues a command for media thread `thread` (no wake-up: see `MediaThread::send`).
    fn command(&self, thread: usize, c: Control) {
        if let Some(t) = self.threads.get(thread) {
            if t.send(c, false).is_err() {
                tracing::error!(thread, "media thread is gone");
            }
        }
    }
}

/// Takes a usable free pair of media thread `owner` from `pool` at `now_ms`: a bound pair as
/// it is, an unbound one once its sockets are bound (returned with it). A pair that cannot be
/// bound goes to the back of the queue; each unbound pair is tried at most once, then only
/// bound pairs are taken.
fn take_pair(
    pool: &mut PortPool,
    owner: usize,
    now_ms: u64,
    ip: IpAddr,
    with_rtcp: bool,
    bind_failures: &mut u64,
) -> Option<(PortPair, Option<BoundPair>)> {
    let mut unbound_tries = pool.unbound_on(owner);
    loop {
        let pair = pool.take(owner, now_ms, unbound_tries > 0)?;
        if pair.bound {
            return Some((pair, None));
        }
        unbound_tries -= 1;
        match BoundPair::bind(ip, pair.port, with_rtcp) {
            Ok(b) => return Some((pair, Some(b))),
            Err(e) if out_of_descriptors(&e) => {
                // Not this port's fault: every other unbound pair would fail the same way (and
                // trying them all, per call, was millions of failed binds a second). The pair
                // stays unbound; pairs bound already are still used.
                *bind_failures += 1;
                tracing::warn!(port = pair.port, error = %e, "media port pair not bound: out of file descriptors");
                pool.release(pair.index, now_ms);
                return pool.take(owner, now_ms, false).map(|p| (p, None));
            }
            Err(e) => {
                *bind_failures += 1;
                tracing::warn!(port = pair.port, error = %e, "media port pair not bound; skipped");
                pool.release(pair.index, now_ms);
            }
        }
    }
}

/// EMFILE or ENFILE: the process (or the system) has no file descriptor left.
fn out_of_descriptors(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::MFILE.raw_os_error()) || code == Some(rustix::io::Errno::NFILE.raw_os_error())
}

/// Receive buffer asked for each media socket (the kernel doubles it, capped by
/// net.core.rmem_max). The default (rmem_default, 208 KB) holds only about 60-100 small RTP
/// datagrams on loopback (each is charged its whole buffer): a far end that sends a burst
/// (a load generator catching up, a jitter buffer flushing) overflowed it at 1,000 calls while
/// the media threads were 80 % idle (bench, 63 drops per socket). Memory is only used while
/// datagrams wait.
const MEDIA_RCVBUF: usize = 512 * 1024;

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(MEDIA_RCVBUF); // best effort: capped by rmem_max
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
        if self.sessions.len() >= self.cfg.max_sessions {
            self.stats.exhausted_sessions += 1;
            return Err(MediaError::Exhausted("max_sessions"));
        }
        let mux_teams = self.cfg.rtcp_mux_teams;
        let now = now_ms(self.epoch);
        // Both pairs of a session belong to one media thread; the threads in turn, and the
        // next one when a thread has no usable pair on a side.
        let n = self.threads.len().max(1);
        let mut teams_found = false;
        let mut found = None;
        for k in 0..n {
            let t = (self.next_thread + k) % n;
            if self.teams_pool.available_on(t) == 0 {
                continue;
            }
            if self.pbx_pool.available_on(t) == 0 {
                teams_found = true;
                continue;
            }
            let Some(tp) = take_pair(&mut self.teams_pool, t, now, self.cfg.teams_ip, !mux_teams, &mut self.stats.bind_failures) else {
                continue;
            };
            teams_found = true;
            let Some(pp) = take_pair(&mut self.pbx_pool, t, now, self.cfg.pbx_ip, true, &mut self.stats.bind_failures) else {
                // sockets bound for it just now (if any) are closed: it stays unbound
                self.teams_pool.untake(tp.0.index);
                continue;
            };
            found = Some((t, tp, pp));
            break;
        }
        let Some((thread, (tpair, tnew), (ppair, pnew))) = found else {
            if teams_found {
                self.stats.exhausted_pbx += 1;
                return Err(MediaError::Exhausted("pbx"));
            }
            self.stats.exhausted_teams += 1;
            return Err(MediaError::Exhausted("teams"));
        };
        let (tport, pport) = (tpair.port, ppair.port);

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
        shared.stats.last_rx_ms.store(now, Relaxed);
        let id = MediaSessionId(self.next_id);
        let (teams_new, pbx_new) = (tnew.is_some(), pnew.is_some());
        let add = Box::new(NewSession {
            session: Session { id, relay: Box::new(relay), teams_pair: tpair.index, pbx_pair: ppair.index, shared: shared.clone() },
            teams_socks: tnew,
            pbx_socks: pnew,
        });
        // New sockets must join the thread's epoll set before their first packet can wake it.
        // A pair reused so soon after its release that the thread may not have taken the stop
        // yet wakes it too: the stop drains the pair, and would drop the new call's first packets.
        let fresh = |pool: &PortPool, i: usize| now.saturating_sub(pool.freed_at(i)) < RECENT_FREE_MS;
        let wake = teams_new || pbx_new || fresh(&self.teams_pool, tpair.index) || fresh(&self.pbx_pool, ppair.index);
        match self.threads.get(thread).map(|t| t.send(Control::Add(add), wake)) {
            Some(Ok(())) => {}
            _ => {
                // new sockets (if any) are closed with the command: those pairs stay unbound
                tracing::error!(thread, "media thread is gone");
                self.teams_pool.untake(tpair.index);
                self.pbx_pool.untake(ppair.index);
                return Err(MediaError::Exhausted("media threads"));
            }
        }
        // the owner thread holds (and watches) new sockets from now on
        if teams_new {
            self.teams_pool.set_bound(tpair.index, true);
        }
        if pbx_new {
            self.pbx_pool.set_bound(ppair.index, true);
        }
        self.next_id += 1;
        self.next_thread = (thread + 1) % n;
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
                teams_pair: tpair.index,
                pbx_pair: ppair.index,
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

    fn stats(&self) -> Option<EngineStats> {
        Some(MediaEngine::stats(self))
    }

    fn free(&mut self, id: MediaSessionId) {
        let Some(e) = self.sessions.remove(&id) else { return };
        self.command(e.thread, Control::Stop(id));
        // Back to the pools at once: the pairs' owner is the session's thread, so any session
        // given these pairs later reaches it after this Stop, which detaches and drains them.
        let now = now_ms(self.epoch);
        self.teams_pool.release(e.teams_pair, now);
        self.pbx_pool.release(e.pbx_pair, now);
        if let Ok(mut r) = self.registry.lock() {
            r.remove(&id);
        }
        self.stats.freed.add(&e.shared.stats.snapshot());
        tracing::debug!(session = id.0, "media session freed");
    }
}

impl Drop for MediaEngine {
    fn drop(&mut self) {
        self.sweeper.abort();
        for t in &self.threads {
            let _ = t.send(Control::Shutdown, true);
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
    /// Boxed: a `Relay` is ~9 KB (SRTP contexts), and a session moves from the engine to its
    /// thread and into the slot table: five copies per call when it was inline (callgrind).
    relay: Box<Relay>,
    /// Its pairs (indices in the thread's pair tables, the pools' indices).
    teams_pair: usize,
    pbx_pair: usize,
    shared: Arc<SessionShared>,
}

/// A session for a media thread, with the sockets of its pairs bound for it (first use).
struct NewSession {
    session: Session,
    teams_socks: Option<BoundPair>,
    pbx_socks: Option<BoundPair>,
}

/// The sockets of one port pair.
struct BoundPair {
    rtp: UdpSocket,
    /// None when RTCP is muxed on the RTP port (no socket bound on port+1).
    rtcp: Option<UdpSocket>,
}

impl BoundPair {
    fn bind(ip: IpAddr, port: u16, with_rtcp: bool) -> io::Result<BoundPair> {
        let rtp = bind_udp(SocketAddr::new(ip, port))?;
        let rtcp = if with_rtcp { Some(bind_udp(SocketAddr::new(ip, port + 1))?) } else { None };
        Ok(BoundPair { rtp, rtcp })
    }

    fn get(&self, rtcp: bool) -> Option<&UdpSocket> {
        if rtcp {
            self.rtcp.as_ref()
        } else {
            Some(&self.rtp)
        }
    }
}

/// A pair as its owner thread keeps it: bound for good, and the session using it (if any).
struct PairSockets {
    socks: BoundPair,
    /// All its sockets are in the thread's readiness set (retried on the next `Add` if not).
    watched: bool,
    /// Slot of the session using the pair.
    session: Option<usize>,
}

/// Readiness key of a socket: pair index * 4 + the `PORTS` position of its port.
const PORTS: [Port; 4] = [Port::TeamsRtp, Port::TeamsRtcp, Port::PbxRtp, Port::PbxRtcp];

fn is_rtcp(p: Port) -> bool {
    matches!(p, Port::TeamsRtcp | Port::PbxRtcp)
}

/// Largest datagram relayed; a datagram that fills the receive area may have been truncated by
/// the kernel and is dropped.
const MAX_DATAGRAM: usize = 2048;
/// Readiness events taken per wait.
const EVENTS_PER_WAIT: usize = 256;
/// Datagrams drained per socket when a session leaves a pair (more, under a flood, are read
/// and dropped by the packet path as they are reported).
const DRAIN_MAX: usize = 256;

fn spawn_media_thread(index: usize, epoch: Instant) -> MediaThread {
    let events = Arc::new(EventSet::new().expect("media thread: cannot create an epoll set"));
    let (control, rx) = std_mpsc::channel();
    let dropped_unassigned = Arc::new(AtomicU64::new(0));
    let (ev, dropped) = (events.clone(), dropped_unassigned.clone());
    let join = std::thread::Builder::new()
        .name(format!("media-relay-{index}"))
        .spawn(move || MediaLoop::new(ev, rx, epoch, dropped).run())
        .expect("cannot start a media thread");
    MediaThread { control, events, dropped_unassigned, join: Some(join) }
}

/// One media thread: the pairs it owns (by pool index), its sessions in a slab, its buffer.
struct MediaLoop {
    events: Arc<EventSet>,
    control: std_mpsc::Receiver<Control>,
    epoch: Instant,
    teams: Vec<Option<PairSockets>>,
    pbx: Vec<Option<PairSockets>>,
    slots: Vec<Option<Session>>,
    free_slots: Vec<usize>,
    by_id: HashMap<MediaSessionId, usize>,
    dropped_unassigned: Arc<AtomicU64>,
}

impl MediaLoop {
    fn new(events: Arc<EventSet>, control: std_mpsc::Receiver<Control>, epoch: Instant, dropped_unassigned: Arc<AtomicU64>) -> MediaLoop {
        MediaLoop {
            events,
            control,
            epoch,
            teams: Vec::new(),
            pbx: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            dropped_unassigned,
        }
    }

    fn run(mut self) {
        let mut ready = Ready::with_capacity(EVENTS_PER_WAIT);
        let mut buf = vec![0u8; MAX_DATAGRAM + HEADROOM];
        loop {
            if let Err(e) = self.events.wait(&mut ready, Some(&COMMAND_POLL)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "media thread: wait failed");
                    break;
                }
            }
            if !self.take_commands(&mut buf) {
                break;
            }
            let now = now_ms(self.epoch);
            for key in ready.keys() {
                self.on_ready(key, &mut buf, now);
            }
        }
        // Shutdown: the sockets are closed with `self`.
    }

    /// One readable socket: one datagram read, relayed by the pair's session or dropped.
    #[inline]
    fn on_ready(&mut self, key: usize, buf: &mut [u8], now: u64) {
        let (index, port) = (key / 4, PORTS[key % 4]);
        let pairs = match port {
            Port::TeamsRtp | Port::TeamsRtcp => &self.teams,
            Port::PbxRtp | Port::PbxRtcp => &self.pbx,
        };
        let Some(Some(pair)) = pairs.get(index) else { return };
        let Some(sock) = pair.socks.get(is_rtcp(port)) else { return };
        let (n, src) = match sock.recv_from(&mut buf[..MAX_DATAGRAM]) {
            Ok(x) => x,
            Err(_) => return, // WouldBlock, or an ICMP error (consumed by this read)
        };
        // a pair without a session (its call ended): read (level-triggered) and dropped
        let Some(Some(s)) = pair.session.and_then(|slot| self.slots.get_mut(slot)) else {
            bump(&self.dropped_unassigned);
            return;
        };
        if n == MAX_DATAGRAM {
            bump(&s.shared.stats.dropped_other);
            return;
        }
        if let Action::Send { via, to, data } = s.relay.on_packet(port, src, buf, n, now, &s.shared.stats) {
            let out = match via {
                Port::TeamsRtp | Port::TeamsRtcp => self.teams.get(s.teams_pair),
                Port::PbxRtp | Port::PbxRtcp => self.pbx.get(s.pbx_pair),
            };
            let sent = out.and_then(Option::as_ref).and_then(|p| p.socks.get(is_rtcp(via))).map(|v| v.send_to(data, to));
            if !matches!(sent, Some(Ok(_))) {
                bump(&s.shared.stats.dropped_other);
            }
        }
    }

    /// Applies the queued commands; false on shutdown (or when the engine is gone).
    fn take_commands(&mut self, buf: &mut [u8]) -> bool {
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
                        self.remove(i, buf);
                    }
                }
                Ok(Control::Shutdown) | Err(std_mpsc::TryRecvError::Disconnected) => return false,
                Err(std_mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn add(&mut self, new: NewSession) {
        let NewSession { session: s, teams_socks, pbx_socks } = new;
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        for (pairs, index, socks, first) in [(&mut self.teams, s.teams_pair, teams_socks, 0), (&mut self.pbx, s.pbx_pair, pbx_socks, 2)] {
            if pairs.len() <= index {
                pairs.resize_with(index + 1, || None);
            }
            if let Some(socks) = socks {
                pairs[index] = Some(PairSockets { socks, watched: false, session: None });
            }
            let Some(pair) = pairs[index].as_mut() else {
                // the engine binds a pair before its first session: not reached
                tracing::error!(session = s.id.0, pair = index, "media pair without sockets");
                continue;
            };
            if !pair.watched {
                pair.watched = true;
                for rtcp in [false, true] {
                    if let Some(sock) = pair.socks.get(rtcp) {
                        // a socket already in the set (a retry) answers EEXIST: fine
                        if let Err(e) = self.events.add(sock, index * 4 + first + usize::from(rtcp)) {
                            if e.kind() != io::ErrorKind::AlreadyExists {
                                pair.watched = false;
                                tracing::error!(session = s.id.0, error = %e, "media socket not watched");
                            }
                        }
                    }
                }
            }
            pair.session = Some(slot);
        }
        self.by_id.insert(s.id, slot);
        self.slots[slot] = Some(s);
    }

    /// Detaches a session from its pairs and drains what is queued on them (dropped, counted).
    fn remove(&mut self, slot: usize, buf: &mut [u8]) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else { return };
        for (pairs, index) in [(&mut self.teams, s.teams_pair), (&mut self.pbx, s.pbx_pair)] {
            let Some(Some(pair)) = pairs.get_mut(index) else { continue };
            if pair.session == Some(slot) {
                pair.session = None;
            }
            for rtcp in [false, true] {
                let Some(sock) = pair.socks.get(rtcp) else { continue };
                for _ in 0..DRAIN_MAX {
                    match sock.recv_from(buf) {
                        Ok(_) => bump(&self.dropped_unassigned),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {} // an ICMP error, consumed by the read
                    }
                }
            }
        }
        self.free_slots.push(slot);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> BoundPair {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        rtp.set_nonblocking(true).unwrap();
        BoundPair { rtp, rtcp: None }
    }

    fn session(id: u64, teams_pair: usize, pbx_pair: usize) -> Session {
        let plain = |rtcp_mux| LegSetup { key: None, ice: None, rtcp_mux };
        let shared = Arc::new(SessionShared { stats: SessionStats::default(), inactive_reported: AtomicBool::new(false) });
        Session { id: MediaSessionId(id), relay: Box::new(Relay::new(plain(true), plain(false))), teams_pair, pbx_pair, shared }
    }

    /// Blocks until every key in `keys` was reported readable (the datagrams sent are queued).
    fn wait_readable(l: &MediaLoop, keys: &[usize]) {
        let mut ready = Ready::with_capacity(16);
        let mut seen = vec![false; keys.len()];
        while seen.contains(&false) {
            l.events.wait(&mut ready, None).unwrap();
            for k in ready.keys() {
                if let Some(i) = keys.iter().position(|&x| x == k) {
                    seen[i] = true;
                }
            }
        }
    }

    fn far_end() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn rtp(seq: u8) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[0] = 0x80;
        p[3] = seq;
        p
    }

    /// A media thread's core, driven by hand: a freed session's pairs are drained (queued
    /// datagrams dropped and counted), datagrams arriving later are read and dropped, and the
    /// same sockets relay for the next session given the pairs.
    #[test]
    fn freed_pairs_are_drained_then_reused() {
        let (tx, rx) = std_mpsc::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let mut l = MediaLoop::new(Arc::new(EventSet::new().unwrap()), rx, Instant::now(), dropped.clone());
        let mut buf = vec![0u8; MAX_DATAGRAM + HEADROOM];
        let (tp, pp) = (pair(), pair());
        let (taddr, paddr) = (tp.rtp.local_addr().unwrap(), pp.rtp.local_addr().unwrap());
        let (tkey, pkey) = (3 * 4, 5 * 4 + 2); // Teams pair 3 (RTP), PBX pair 5 (RTP)
        tx.send(Control::Add(Box::new(NewSession { session: session(1, 3, 5), teams_socks: Some(tp), pbx_socks: Some(pp) }))).unwrap();
        assert!(l.take_commands(&mut buf));

        // datagrams queued on both pairs when the session is stopped: drained, counted
        let old = far_end();
        old.send_to(&rtp(1), taddr).unwrap();
        old.send_to(&rtp(2), paddr).unwrap();
        wait_readable(&l, &[tkey, pkey]);
        tx.send(Control::Stop(MediaSessionId(1))).unwrap();
        assert!(l.take_commands(&mut buf));
        assert_eq!(dropped.load(Relaxed), 2);
        for p in [&l.teams[3], &l.pbx[5]] {
            let p = p.as_ref().unwrap();
            assert_eq!(p.session, None);
            assert!(p.socks.rtp.recv_from(&mut buf).is_err(), "drained");
        }

        // a late datagram on the free pair: read and dropped (not reported again and again)
        old.send_to(&rtp(3), paddr).unwrap();
        wait_readable(&l, &[pkey]);
        l.on_ready(pkey, &mut buf, 0);
        assert_eq!(dropped.load(Relaxed), 3);

        // the next session on the same pairs (no new sockets) relays for its own far ends
        let (teams, pbx) = (far_end(), far_end());
        tx.send(Control::Add(Box::new(NewSession { session: session(2, 3, 5), teams_socks: None, pbx_socks: None }))).unwrap();
        let remote = |s: &UdpSocket| RemoteMedia { rtp: Some(s.local_addr().unwrap()), sends: true, receives: true, ..Default::default() };
        let pending = Pending { teams: Some(remote(&teams)), pbx: Some(remote(&pbx)), ..Default::default() };
        tx.send(Control::Apply(MediaSessionId(2), Box::new(pending))).unwrap();
        assert!(l.take_commands(&mut buf));
        pbx.send_to(&rtp(4), paddr).unwrap();
        wait_readable(&l, &[pkey]);
        l.on_ready(pkey, &mut buf, 0);
        let (n, from) = teams.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&rtp(4)[..], taddr));
        let s = l.slots[l.by_id[&MediaSessionId(2)]].as_ref().unwrap();
        assert_eq!(s.shared.stats.snapshot().tx_packets, 1);
        assert_eq!(dropped.load(Relaxed), 3);
        let mut b = [0u8; 64];
        old.set_nonblocking(true).unwrap();
        assert!(old.recv_from(&mut b).is_err(), "nothing to the old far end");
    }

    #[test]
    fn share_splits_ranges_into_whole_pairs_without_overlap() {
        let cfg = MediaEngineConfig { teams_ports: 40000..=40099, pbx_ports: 45001..=45100, max_sessions: 101, threads: 4, ..MediaEngineConfig::default() };
        // three equal spans of three
        let parts: Vec<MediaEngineConfig> = (0..3).map(|i| cfg.share(i..i + 1, 3, 3).expect("enough pairs")).collect();
        // 50 Teams pairs from 40000; PBX starts at the first even port, 45002: 49 pairs to 45099
        assert_eq!(parts.iter().map(|p| p.first_thread).collect::<Vec<_>>(), [0, 1, 2], "threads numbered apart");
        assert_eq!(parts[0].teams_ports, 40000..=40031);
        assert_eq!(parts[1].teams_ports, 40032..=40065);
        assert_eq!(parts[2].teams_ports, 40066..=40099);
        assert_eq!(parts[0].pbx_ports, 45002..=45033);
        assert_eq!(parts[2].pbx_ports, 45066..=45099);
        for p in &parts {
            assert_eq!(p.max_sessions, 34);
            assert_eq!(p.threads, 1);
            assert_eq!(p.teams_ports.start() % 2, 0);
        }
        let pairs: usize = parts.iter().map(|p| PortPool::new(p.teams_ports.clone(), 1, 0).capacity()).sum();
        assert_eq!(pairs, PortPool::new(cfg.teams_ports.clone(), 1, 0).capacity());
        // uneven spans (shard 0 of two: 1 of 3, shard 1: 2 of 3)
        let (a, b) = (cfg.share(0..1, 3, 2).unwrap(), cfg.share(1..3, 3, 2).unwrap());
        assert_eq!((a.teams_ports, b.teams_ports), (40000..=40031, 40032..=40099));
        assert_eq!((a.max_sessions, b.max_sessions, a.threads), (34, 68, 2));
        // all of it
        let one = cfg.share(0..1, 1, 1).unwrap();
        assert_eq!((one.teams_ports, one.pbx_ports, one.max_sessions, one.threads), (40000..=40099, 45002..=45099, 101, 4));
        // a span too short for a pair is refused
        let tiny = MediaEngineConfig { teams_ports: 40000..=40003, ..cfg };
        assert!(tiny.share(0..1, 3, 3).is_none());
        assert_eq!(tiny.share(2..3, 3, 3).unwrap().teams_ports, 40002..=40003);
    }
}
