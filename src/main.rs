//! drbridge command line: parses arguments and wires the parts together (see DESIGN.md).

/// jemalloc instead of glibc's malloc: at 3,000 calls/s (45 s, Teams->PBX) drbridge used 68-73 %
/// of a core against 82-84 % with glibc, whose malloc/free took ~32 % once the 64*T1 clean-ups
/// free memory at the call rate (bench A/B, bench/PROFILE.md "Fourth pass").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options (read at its start): unused pages go back to the OS from jemalloc's own
/// background thread, not inline on the signalling thread that freed them.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 48] = b"background_thread:true,max_background_threads:1\0";

use clap::{Parser, Subcommand};
use drbridge::b2bua::{B2bua, CoreConfig, Dialplan, HealthNote, Shard, ShardRouter, Side, TeamsProxy};
use drbridge::config::{self, Trunk};
use drbridge::media::sdp::CodecProfile;
use drbridge::media::{EngineStats, MediaEngine, MediaEngineConfig, MediaEvent, MediaMetrics, SrtpSuite};
use drbridge::presence::graph::{GraphClient, GraphSettings, SecretSource};
use drbridge::presence::linestate::IngestEvent;
use drbridge::presence::publish::{self, PublishMetrics, Publisher, PublisherConfig};
use drbridge::presence::service::{self, cached_object_ids, resolve_object_ids, restore_from_store, DirectorySink, PresenceInput, PresenceService, PresenceSetup, StoreLog, SubscribeCommand};
use drbridge::presence::teams_sync::{self, PresenceDoc, TeamsSyncSetup, WebhookNote};
use drbridge::presence::teams_watch::WatchConfig;
use drbridge::presence::{Mapping, PresenceStore, RedbStore, UserDirectory};
use drbridge::routing::{NumberPlan, RouteTable};
use std::sync::Arc;
use drbridge::sip::msg::Limits;
use drbridge::sip::transport::{ensure_lab_certs, ListenerSpec, Peer, Proto, SipTransport, TlsSetup, TransportConfig, TransportEvent, TrunkTls};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "drbridge", version, about = "Session border controller: Microsoft Teams Direct Routing <-> Mitel PBX")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the SBC.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (non-zero with FILE: KEY: REASON on error).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Sign a presence monitor in (OAuth 2.0 device code: open the page shown, enter the code,
    /// sign in as the monitor) and write its first refresh token to its refresh_token_file.
    MonitorLogin {
        #[arg(long, short)]
        config: PathBuf,
        /// The monitor's UPN, as in [[presence.teams_to_pbx.monitors]].
        #[arg(long)]
        monitor: String,
    },
    /// Generate a lab CA, the SBC certificate and a stand-in Microsoft proxy certificate.
    LabCerts {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "sbc.lab.drbridge.test")]
        fqdn: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match cli.cmd {
        // With teams.lab_certs the certificates are generated at start, so missing files are fine.
        Cmd::Check { config } => match config::load(&config).and_then(|c| if c.teams.lab_certs { Ok(c) } else { config::validate_tls_files(&c).map(|_| c) }) {
            Ok(_) => {
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::MonitorLogin { config, monitor } => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(monitor_login(&config, &monitor)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::LabCerts { dir, fqdn } => match ensure_lab_certs(&dir, &fqdn) {
            Ok(c) => {
                println!("lab certificates in {} (CA {})", dir.display(), c.ca_cert.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config } => {
            // Signalling (transports, transactions, the B2BUA core) runs on one thread: every
            // SIP message used to cross threads twice (transport task -> core -> writer), and the
            // futex wake-ups cost 22-27 % of drbridge's CPU per call at 2,000-3,000 calls/s
            // (bench A/B, bench/PROFILE.md). Presence, Graph, the admin server and the media
            // relay run on a second runtime so that nothing slow or blocking (redb commits,
            // HTTP) and no packet load sits on the signalling thread.
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let aux = match tokio::runtime::Builder::new_multi_thread().worker_threads(aux_threads()).thread_name("drbridge-aux").enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(run(&config, aux.handle().clone()));
            aux.shutdown_background();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The number plan and routes of the configuration, as the B2BUA core sees them.
struct Plan {
    numbers: NumberPlan,
    routes: RouteTable,
}

impl Dialplan for Plan {
    fn to_teams(&self, n: &str) -> String {
        self.numbers.to_teams.apply(n)
    }
    fn to_pbx(&self, n: &str) -> String {
        self.numbers.to_pbx.apply(n)
    }
    fn route(&self, n: &str, from: Side) -> Side {
        let from = match from {
            Side::Teams => Trunk::Teams,
            Side::Pbx => Trunk::Pbx,
        };
        match self.routes.route(n, from) {
            Trunk::Teams => Side::Teams,
            Trunk::Pbx => Side::Pbx,
        }
    }
}

async fn resolve(host: &str, port: u16, fixed: Option<SocketAddr>) -> Result<SocketAddr, String> {
    if let Some(a) = fixed {
        return Ok(a);
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{host}:{port} has no IPv4 address"))
}

/// Worker threads of the auxiliary runtime (media relay, presence, admin): the cores minus the
/// signalling thread, at least one.
fn aux_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get().saturating_sub(1)).unwrap_or(1).max(1)
}

async fn run(path: &Path, aux: tokio::runtime::Handle) -> Result<(), String> {
    let cfg = config::load(path).map_err(|e| e.to_string())?;
    if cfg.teams.lab_certs {
        let dir = cfg.teams.tls_cert.parent().unwrap_or(Path::new(".")).to_path_buf();
        ensure_lab_certs(&dir, &cfg.sbc.fqdn).map_err(|e| format!("{}: teams.lab_certs: {e}", path.display()))?;
    }
    config::validate_tls_files(&cfg).map_err(|e| e.to_string())?;
    let tls = TlsSetup::from_files(&cfg.teams.tls_cert, &cfg.teams.tls_key, &cfg.teams.tls_ca, cfg.teams.peer_names.clone())
        .map_err(|e| format!("{}: teams: {e}", path.display()))?;

    let pbx_proto = match cfg.pbx.transport {
        config::Transport::Udp => Proto::Udp,
        config::Transport::Tcp => Proto::Tcp,
        config::Transport::Tls => Proto::Tls,
    };
    // Toward the PBX: UDP and TCP on pbx.listen, or TLS alone (config refuses the Teams
    // listener's address for it: each side has its own certificates).
    let mut listeners = vec![ListenerSpec { proto: Proto::Tls, addr: cfg.teams.listen }];
    match pbx_proto {
        Proto::Tls => listeners.push(ListenerSpec { proto: Proto::Tls, addr: cfg.pbx.listen }),
        _ => listeners.extend([Proto::Udp, Proto::Tcp].map(|proto| ListenerSpec { proto, addr: cfg.pbx.listen })),
    }
    let limits = Limits { max_message: cfg.limits.max_message_bytes, max_headers: cfg.limits.max_headers };
    let tcfg = TransportConfig {
        limits,
        max_connections: cfg.limits.max_connections,
        event_queue: cfg.limits.event_queue,
        ..TransportConfig::default()
    };
    let trunk_tls = match (pbx_proto, &cfg.pbx.tls_cert, &cfg.pbx.tls_key, &cfg.pbx.tls_ca) {
        (Proto::Tls, Some(c), Some(k), Some(ca)) => Some(TrunkTls {
            setup: TlsSetup::from_files(c, k, ca, cfg.pbx.tls_peer_names.clone()).map_err(|e| format!("{}: pbx: {e}", path.display()))?,
            listen: cfg.pbx.listen,
            peer: cfg.pbx.address,
            server_name: cfg.pbx.tls_peer_names.first().cloned().unwrap_or_else(|| cfg.pbx.domain.clone()),
            no_client_cert_from: (cfg.pbx.tls_client_cert == config::ClientCert::Optional).then(|| cfg.pbx.address.ip()),
        }),
        _ => None,
    };
    let (transport, mut events) = SipTransport::start_trunk(listeners, Some(tls), trunk_tls, tcfg).await.map_err(|e| e.to_string())?;

    let mut proxies = Vec::new();
    for p in &cfg.teams.proxies {
        proxies.push(TeamsProxy { host: p.host.clone(), port: p.port, addr: resolve(&p.host, p.port, p.address).await? });
    }
    let pbx = Peer { proto: pbx_proto, addr: cfg.pbx.address };
    // TLS: the first TLS listener is the Teams one; the PBX's is `pbx.listen` itself.
    let pbx_local = match pbx_proto {
        Proto::Tls => cfg.pbx.listen,
        _ => transport.local_addr(pbx_proto).unwrap_or(cfg.pbx.listen),
    };
    let core_cfg = CoreConfig {
        fqdn: cfg.sbc.fqdn.clone(),
        user_agent: cfg.sbc.user_agent.clone(),
        teams_contact_port: cfg.teams.contact_port,
        teams_proxies: proxies,
        options_interval: Duration::from_secs(cfg.teams.options_interval_secs),
        pbx_options_interval: cfg.pbx.options_interval(),
        failover_timeout: Duration::from_secs(cfg.teams.failover_timeout_secs),
        failover_codes: cfg.teams.failover_codes.clone(),
        pbx,
        pbx_domain: if cfg.pbx.domain.is_empty() { cfg.pbx.address.to_string() } else { cfg.pbx.domain.clone() },
        pbx_local,
        t1: Duration::from_millis(cfg.timers.t1_ms),
        t2: Duration::from_millis(cfg.timers.t2_ms),
        t4: Duration::from_millis(cfg.timers.t4_ms),
        session_expires: cfg.timers.session_expires_secs as u32,
        min_se: cfg.timers.min_se_secs as u32,
        ring_timeout: cfg.timers.ring_timeout(),
        max_calls: cfg.sbc.max_calls as usize,
        live_calls: Default::default(),
        max_transactions: cfg.limits.max_transactions,
        written: Default::default(),
    };
    let pbx_where = PbxWhere { proto: pbx_proto, addr: cfg.pbx.address, listen: cfg.pbx.listen };
    let mut shards = signalling_shards(cfg.sbc.signalling_threads);
    let media_cfg = cfg.media.enabled.then(|| {
        let m = &cfg.media;
        // Media sockets stay bound once used (reused per call): at full use that is one socket
        // per Teams port (RTCP muxed: one per pair) and two per PBX pair. Raise the soft
        // descriptor limit to the hard one and say so if even that is short.
        let pairs = |lo: u16, hi: u16| u64::from(hi.saturating_sub(lo)).div_ceil(2);
        let need = pairs(m.teams_port_min, m.teams_port_max) * if m.rtcp_mux_teams { 1 } else { 2 } + pairs(m.pbx_port_min, m.pbx_port_max) * 2 + 1024;
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(hard) = lim.maximum {
            if lim.current.is_some_and(|c| c < need.min(hard)) {
                let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, rustix::process::Rlimit { current: Some(need.min(hard)), maximum: Some(hard) });
            }
            if hard < need {
                tracing::warn!(needed = need, limit = hard, "open file limit below what the media port ranges can use: calls beyond it get 503 (raise LimitNOFILE or narrow [media] port ranges)");
            }
        }
        MediaEngineConfig {
            teams_ip: m.teams_ip,
            teams_advertised_ip: m.teams_advertised_ip,
            pbx_ip: m.pbx_ip,
            pbx_advertised_ip: m.pbx_advertised_ip,
            teams_ports: m.teams_port_min..=m.teams_port_max,
            pbx_ports: m.pbx_port_min..=m.pbx_port_max,
            rtcp_mux_teams: m.rtcp_mux_teams,
            srtp_to_pbx: m.srtp_to_pbx,
            srtp_suite: SrtpSuite::from_sdp_name(&m.srtp_suite).unwrap_or(SrtpSuite::AesCm128HmacSha1_80),
            inactivity_timeout: Duration::from_secs(m.inactivity_timeout_secs),
            max_sessions: m.max_sessions,
            threads: m.threads,
            ..MediaEngineConfig::default()
        }
    });
    // Automatic: not more shards than the media port ranges have pairs (a lab range of one pair).
    if let (0, Some(mc)) = (cfg.sbc.signalling_threads, &media_cfg) {
        while shards > 1 && (0..shards).any(|index| media_share(mc, Shard { index, count: shards }).is_none()) {
            shards -= 1;
        }
    }
    // One B2BUA core per signalling shard, each with its part of the transaction limit and media
    // ports; the call limit is shared (one counter).
    let mut cores = Vec::with_capacity(shards);
    // Teams -> PBX presence: every shard serves PBX-side SUBSCRIBEs to the directory's extensions.
    let watched_extensions: Option<Vec<String>> = match (&cfg.presence.users_file, cfg.presence.teams_to_pbx.enabled) {
        (Some(f), true) => {
            let dir = UserDirectory::load(f).map_err(|e| e.to_string())?;
            let to_pbx = NumberPlan::new(&cfg.numbers).to_pbx;
            Some(dir.users().iter().flat_map(|u| teams_sync::watch_keys(u, &to_pbx)).collect())
        }
        _ => None,
    };
    for index in 0..shards {
        let shard = Shard { index, count: shards };
        let shard_cfg = CoreConfig { max_transactions: shard.part_of(core_cfg.max_transactions), ..core_cfg.clone() };
        let plan = Plan { numbers: NumberPlan::new(&cfg.numbers), routes: RouteTable::new(&cfg.routes) };
        let mut core = B2bua::new(shard_cfg, Box::new(plan), Instant::now()).with_shard(shard, index == 0);
        if let Some(exts) = &watched_extensions {
            core = core.with_presence_notifier(exts.iter().cloned(), cfg.presence.teams_to_pbx.max_watchers);
        }
        let (media_tx, mut media_events) = tokio::sync::mpsc::channel::<MediaEvent>(1);
        if let Some(mc) = &media_cfg {
            let part = media_share(mc, shard).ok_or_else(|| {
                format!("{}: media: the port ranges have fewer pairs than sbc.signalling_threads ({shards}): widen them or lower it", path.display())
            })?;
            let (engine, ev) = MediaEngine::new(part, aux.clone());
            media_events = ev;
            let m = &cfg.media;
            let teams = CodecProfile { allowed: m.teams_codecs.clone(), ..CodecProfile::teams() };
            let pbx = CodecProfile { allowed: m.pbx_codecs.clone(), strip_ice: pbx_proto == Proto::Udp, ..CodecProfile::pbx_default() };
            core = core.with_media(Box::new(engine), teams, pbx);
        }
        // without media anchoring the channel stays empty: its sender is kept with the core
        cores.push((core, media_events, media_tx));
    }
    let media_metrics = MediaMetrics::default();
    let mut media_metrics_at = Instant::now();
    let (mut presence, _admin, mut teams_docs) = {
        let c = cfg.clone();
        let mm = media_metrics.clone();
        aux.spawn(async move { start_presence(&c, mm).await }).await.map_err(|e| format!("presence start-up: {e}"))??
    };
    let media_stats = Arc::new(std::sync::Mutex::new(vec![None; shards]));
    let outputs = |shard: usize| Outputs {
        shard,
        transport: transport.clone(),
        presence: presence.as_ref().map(|p| p.input.clone()),
        media_stats: media_stats.clone(),
        media_stats_at: Instant::now(),
    };
    // Shards 1.. each on a thread of their own; shard 0 runs here and routes what arrives.
    let mut inboxes = Vec::with_capacity(shards - 1);
    let mut threads = Vec::with_capacity(shards - 1);
    let mut rest = cores.split_off(1);
    for (i, (core, media_events, media_tx)) in rest.drain(..).enumerate() {
        let (tx, rx) = tokio::sync::mpsc::channel::<ShardInput>(cfg.limits.event_queue.max(1024));
        inboxes.push(tx);
        let out = outputs(i + 1);
        let t = std::thread::Builder::new()
            .name(format!("drbridge-sig-{}", i + 1))
            .spawn(move || {
                let _keep = media_tx;
                // A shard that stops on its own (a panic, no runtime) would leave its calls
                // unanswered while the others go on: the whole process exits instead, as it does
                // when shard 0 fails, so that a supervisor restarts it.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(shard_loop(core, rx, media_events, out, pbx_where)),
                    Err(e) => {
                        tracing::error!(shard = i + 1, error = %e, "cannot start a signalling shard's runtime: exiting");
                        std::process::exit(70);
                    }
                }));
                if ran.is_err() {
                    tracing::error!(shard = i + 1, "signalling shard panicked: exiting");
                    std::process::exit(70);
                }
            })
            .map_err(|e| format!("cannot start a signalling thread: {e}"))?;
        threads.push(t);
    }
    let (mut core, mut media_events, _keep_media_tx) = cores.pop().ok_or("no signalling shard")?;
    let mut out = outputs(0);
    let mut router = ShardRouter::new(shards, core_cfg.t1 * 64);
    let (no_cmd_tx, mut no_cmds) = tokio::sync::mpsc::channel::<SubscribeCommand>(1);
    let _keep_no_cmd_tx = no_cmd_tx;
    let (no_doc_tx, mut no_docs) = tokio::sync::mpsc::channel::<PresenceDoc>(1);
    let _keep_no_doc_tx = no_doc_tx;
    let mut pbx_was_up = true;
    tracing::info!(config = %path.display(), signalling_threads = shards, "drbridge ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        let wake = core.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let now = Instant::now();
                dispatch(&mut core, &mut router, &inboxes, ev, pbx_where, now).await;
                // Take what else is queued without waiting, then flush once.
                for _ in 0..256 {
                    match events.try_recv() {
                        Ok(ev) => dispatch(&mut core, &mut router, &inboxes, ev, pbx_where, now).await,
                        Err(_) => break,
                    }
                }
            }
            Some(ev) = media_events.recv() => core.handle_media_event(ev, Instant::now()),
            Some(c) = async { match presence.as_mut() { Some(p) => p.commands.recv().await, None => no_cmds.recv().await } } => {
                core.subscribe(c.id, &c.user, c.event, c.accept, c.expires, c.initial, Instant::now());
            }
            Some(d) = async { match teams_docs.as_mut() { Some(r) => r.recv().await, None => no_docs.recv().await } } => {
                // Every shard holds PBX-side watchers: each gets the document.
                for tx in &inboxes {
                    forward(tx, ShardInput::PresenceDoc(d.clone())).await;
                }
                core.set_presence_document(d.package, &d.key, d.body, Instant::now());
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                core.handle_timeout(Instant::now());
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        flush(&mut core, &mut out);
        if media_metrics_at.elapsed() >= Duration::from_secs(1) {
            media_metrics_at = Instant::now();
            let all = media_stats.lock().map(|v| v.clone()).unwrap_or_default();
            let mut sum: Option<EngineStats> = None;
            for s in all.iter().flatten() {
                sum.get_or_insert_with(EngineStats::default).merge(s);
            }
            if let Some(s) = sum {
                media_metrics.set(&s);
            }
        }
        // OPTIONS results of this (the keep-alive) shard, for the others.
        while let Some(n) = core.poll_health() {
            for tx in &inboxes {
                let _ = tx.try_send(ShardInput::Health(n));
            }
        }
        // The PBX came back (OPTIONS answered again): its subscriptions are renewed from scratch.
        let up = core.pbx_up();
        if up && !pbx_was_up {
            if let Some(p) = &presence {
                let _ = p.input.try_send(PresenceInput::PbxUp);
            }
        }
        pbx_was_up = up;
        while let Some(e) = core.poll_subscription_event() {
            if let Some(p) = &presence {
                let _ = p.input.try_send(PresenceInput::Subscription(e));
            }
        }
    }
    tracing::info!(shard = 0, stats = ?core.stats, "drbridge stopping");
    drop(inboxes);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// The media engine configuration of one shard: its share of the ports and sessions.
fn media_share(mc: &MediaEngineConfig, shard: Shard) -> Option<MediaEngineConfig> {
    let (span, of) = shard.share();
    mc.share(span, of, shard.count)
}

/// Signalling shards for `sbc.signalling_threads` (0: one per core, at most 8).
fn signalling_shards(configured: u32) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8),
        n => n as usize,
    }
}

/// What shard 0 passes to another shard. Not boxed: a message moves through the inbox once, and
/// a box would be one more allocation per message.
#[allow(clippy::large_enum_variant)]
enum ShardInput {
    Event(TransportEvent),
    /// An OPTIONS result (shard 0 sends the keep-alives).
    Health(HealthNote),
    /// A Teams presence document for the PBX-side watchers of an extension.
    PresenceDoc(PresenceDoc),
}

/// Where a shard's output goes.
struct Outputs {
    shard: usize,
    transport: SipTransport,
    presence: Option<tokio::sync::mpsc::Sender<PresenceInput>>,
    /// Each shard's media engine counters, refreshed once a second; shard 0 publishes the sum.
    media_stats: Arc<std::sync::Mutex<Vec<Option<EngineStats>>>>,
    media_stats_at: Instant,
}

/// Sends what a core has to send, and passes its call events on.
fn flush(core: &mut B2bua, out: &mut Outputs) {
    while let Some(t) = core.poll_transmit() {
        out.transport.send(t.hop.peer, t.hop.tls_name.as_deref(), t.data);
    }
    while let Some(e) = core.poll_event() {
        tracing::debug!(shard = out.shard, event = ?e, "call event");
        if let Some(p) = &out.presence {
            if p.try_send(PresenceInput::Call(e)).is_err() {
                tracing::warn!("presence queue full: call event dropped");
            }
        }
    }
    if out.media_stats_at.elapsed() >= Duration::from_secs(1) {
        out.media_stats_at = Instant::now();
        if let (Some(s), Ok(mut v)) = (core.media_stats(), out.media_stats.lock()) {
            v[out.shard] = Some(s);
        }
    }
}

/// Routes one transport event: to this core (shard 0) or to the inbox of its shard. A
/// connection failure concerns every shard.
async fn dispatch(core: &mut B2bua, router: &mut ShardRouter, inboxes: &[tokio::sync::mpsc::Sender<ShardInput>], ev: TransportEvent, pbx: PbxWhere, now: Instant) {
    let shard = match &ev {
        TransportEvent::Message(inb) => router.route(&inb.msg, now),
        TransportEvent::ConnectFailed { .. } => {
            for tx in inboxes {
                forward(tx, ShardInput::Event(ev.clone())).await;
            }
            0
        }
    };
    match shard.checked_sub(1).and_then(|i| inboxes.get(i)) {
        Some(tx) => forward(tx, ShardInput::Event(ev)).await,
        None => handle(core, ev, pbx, now),
    }
}

/// Queues for another shard; a full inbox holds this shard back (backpressure, as the
/// transport's own queue does) rather than drop a message.
async fn forward(tx: &tokio::sync::mpsc::Sender<ShardInput>, x: ShardInput) {
    if let Err(tokio::sync::mpsc::error::TrySendError::Full(x)) = tx.try_send(x) {
        let _ = tx.send(x).await;
    }
}

/// The loop of shards 1..: what shard 0 routed here, this core's media events and timers.
async fn shard_loop(mut core: B2bua, mut inbox: tokio::sync::mpsc::Receiver<ShardInput>, mut media_events: tokio::sync::mpsc::Receiver<MediaEvent>, mut out: Outputs, pbx: PbxWhere) {
    let input = |core: &mut B2bua, x: ShardInput, now: Instant| match x {
        ShardInput::Event(ev) => handle(core, ev, pbx, now),
        ShardInput::Health(n) => core.apply_health(n, now),
        ShardInput::PresenceDoc(d) => core.set_presence_document(d.package, &d.key, d.body, now),
    };
    loop {
        let wake = core.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            x = inbox.recv() => {
                let Some(x) = x else { break };
                let now = Instant::now();
                input(&mut core, x, now);
                for _ in 0..256 {
                    match inbox.try_recv() {
                        Ok(x) => input(&mut core, x, now),
                        Err(_) => break,
                    }
                }
            }
            Some(ev) = media_events.recv() => core.handle_media_event(ev, Instant::now()),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                core.handle_timeout(Instant::now());
            }
        }
        flush(&mut core, &mut out);
    }
    tracing::info!(shard = out.shard, stats = ?core.stats, "signalling shard stopping");
}

/// Presence (table, PBX subscriptions, Graph publisher with its store) and the admin server, as
/// configured. Returns the presence task and the admin server task.
/// The Graph client of `[presence]` (its client secret loaded from the file or environment).
fn graph_client(cfg: &config::Config) -> Result<GraphClient, String> {
    let p = &cfg.presence;
    let file = cfg.source.display();
    let secret = SecretSource::from_parts(p.client_secret_file.as_ref(), p.client_secret_env.as_deref())
        .ok_or_else(|| format!("{file}: presence.client_secret_file: set client_secret_file or client_secret_env"))?
        .load()
        .map_err(|e| format!("{file}: presence.client_secret_file: {e}"))?;
    GraphClient::new(GraphSettings {
        tenant: p.tenant.clone(),
        client_id: p.client_id.clone(),
        client_secret: secret,
        identity_base: p.identity_base.clone(),
        graph_base: p.graph_base.clone(),
        scope: p.scope.clone(),
        expiration: Duration::from_secs(p.expiration_minutes * 60),
        request_timeout: Duration::from_secs(p.request_timeout_secs),
    })
    .map_err(|e| format!("{file}: presence: {e}"))
}

/// What `start_presence` started: the presence task, the admin server, and the Teams -> PBX
/// presence documents for the signalling shards.
type Started = (Option<PresenceService>, Option<tokio::task::JoinHandle<()>>, Option<tokio::sync::mpsc::Receiver<PresenceDoc>>);

/// The webhook's client state (Graph echoes it in every notification), when configured.
fn webhook_client_state(cfg: &config::Config) -> Result<Option<drbridge::presence::graph::Secret>, String> {
    let a = &cfg.admin;
    let file = cfg.source.display();
    match SecretSource::from_parts(a.webhook_client_state_file.as_ref(), a.webhook_client_state_env.as_deref()) {
        Some(src) => src.load().map(Some).map_err(|e| format!("{file}: admin.webhook_client_state_file: {e}")),
        None => Ok(None),
    }
}

async fn start_presence(cfg: &config::Config, media_metrics: MediaMetrics) -> Result<Started, String> {
    let file = cfg.source.display().to_string();
    let mut registry = prometheus_client::registry::Registry::default();
    if cfg.media.enabled {
        media_metrics.register(&mut registry);
    }
    let mut presence = None;
    let mut teams: Option<teams_sync::TeamsSync> = None;
    let mut view: Arc<dyn drbridge::admin::PresenceView> = Arc::new(drbridge::admin::NoPresence);
    if cfg.presence.enabled {
        let p = &cfg.presence;
        let users = p.users_file.clone().unwrap_or_default();
        let dir = Arc::new(UserDirectory::load(&users).map_err(|e| e.to_string())?);
        let store: Arc<dyn PresenceStore> = Arc::new(RedbStore::open(&cfg.sbc.data_dir).map_err(|e| format!("{file}: sbc.data_dir: {e}"))?);
        let expiration = Duration::from_secs(p.expiration_minutes * 60);
        let graph = Arc::new(graph_client(cfg)?);
        let pcfg = PublisherConfig {
            expiration,
            rate_limit: p.rate_limit,
            rate_window: Duration::from_secs(p.rate_window_secs),
            rate_burst: p.rate_burst,
            batch_max: p.batch_max,
            max_in_flight: p.max_in_flight,
            retry_initial: Duration::from_millis(p.retry_initial_ms),
            retry_max: Duration::from_secs(p.retry_max_secs),
            ..PublisherConfig::default()
        };
        let mut publisher = Publisher::new(pcfg, Instant::now(), std::time::SystemTime::now(), rand::random())
            .with_log(Box::new(StoreLog { store: store.clone(), expiration }));
        restore_from_store(&*store, &mut publisher, Instant::now());
        let ids = Arc::new(std::sync::Mutex::new(cached_object_ids(&dir, &*store)));
        tokio::spawn(resolve_object_ids(dir.clone(), store.clone(), graph.clone(), ids.clone()));
        let metrics = PublishMetrics::register(&mut registry);
        let publishing = publish::spawn(publisher, Arc::new(DirectorySink { graph: graph.clone(), object_ids: ids.clone() }), p.queue, metrics);
        let t = &p.teams_to_pbx;
        if t.enabled {
            let client_state = webhook_client_state(cfg)?.ok_or_else(|| format!("{file}: admin.webhook_client_state_file: required with presence.teams_to_pbx"))?;
            for (i, m) in t.monitors.iter().enumerate() {
                let token = SecretSource::File(m.refresh_token_file.clone()).load().map_err(|e| format!("{file}: presence.teams_to_pbx.monitors[{i}].refresh_token_file: {e}"))?;
                graph.add_monitor_with_file(&m.upn, token, m.refresh_token_file.clone()).await;
            }
            let publisher = publishing.core.clone();
            let published: teams_sync::PublishedFn = Arc::new(move |user: &drbridge::presence::UserId| {
                let p = publisher.lock().ok()?.published(user.as_str())?;
                Some((p.availability().to_string(), p.activity().to_string()))
            });
            let publisher = publishing.core.clone();
            let charge: teams_sync::ChargeFn = Arc::new(move |now| match publisher.lock() {
                Ok(mut p) => p.try_charge(1, now),
                Err(_) => Ok(()),
            });
            let watch = WatchConfig {
                monitors: t.monitors.iter().map(|m| m.upn.clone()).collect(),
                users_per_subscription: t.users_per_subscription,
                lifetime: Duration::from_secs(t.subscription_minutes * 60),
                resync_interval: Duration::from_secs(t.resync_minutes * 60),
                ..WatchConfig::default()
            };
            let sync = teams_sync::spawn(
                TeamsSyncSetup {
                    watch,
                    graph: graph.clone(),
                    directory: dir.clone(),
                    object_ids: ids.clone(),
                    notification_url: t.notification_url.clone(),
                    client_state,
                    entity_host: cfg.pbx.domain.clone(),
                    published,
                    charge,
                    to_pbx: NumberPlan::new(&cfg.numbers).to_pbx,
                    store: store.clone(),
                },
                4096,
            );
            tracing::info!(monitors = t.monitors.len(), "Teams -> PBX presence enabled");
            teams = Some(sync);
        }
        let svc = service::spawn(
            PresenceSetup {
                directory: dir,
                mapping: Mapping::default(),
                store,
                publish: Some(publishing.handle.clone()),
                subscribe_pbx: p.subscribe_pbx,
            },
            4096,
        );
        let table = svc.table.clone();
        let core = publishing.core.clone();
        let statuses = teams.as_ref().map(|t| t.statuses.clone());
        view = Arc::new(move |user: &str| {
            let id = drbridge::presence::UserId::new(user);
            let v = table.lock().ok()?.view(&id)?;
            let published = core.lock().ok().and_then(|c| c.user_view(id.as_str(), Instant::now()));
            let from_teams = statuses.as_ref().and_then(|s| s.lock().ok()?.get(id.as_str()).cloned());
            Some(serde_json::json!({ "user": v, "graph": published, "teams": from_teams }))
        });
        tracing::info!(users = %users.display(), "presence to Teams enabled");
        presence = Some(svc);
    }
    let mut admin_task = None;
    if cfg.admin.enabled {
        let a = &cfg.admin;
        let token = SecretSource::from_parts(a.token_file.as_ref(), a.token_env.as_deref())
            .ok_or_else(|| format!("{file}: admin.token_file: set token_file or token_env"))?
            .load()
            .map_err(|e| format!("{file}: admin.token_file: {e}"))?;
        let client_state = webhook_client_state(cfg)?;
        let (ingest_tx, mut ingest_rx) = tokio::sync::mpsc::channel::<drbridge::admin::IngestEvent>(1024);
        let (webhook_tx, mut webhook_rx) = tokio::sync::mpsc::channel::<drbridge::admin::GraphNotification>(1024);
        let metrics = drbridge::admin::AdminMetrics::register(&mut registry);
        let admin = drbridge::admin::Admin { token, client_state, registry: Arc::new(registry), metrics, view, ingest: ingest_tx, webhook: webhook_tx };
        let listener = drbridge::admin::bind(a.listen).await.map_err(|e| format!("{file}: admin.listen: {e}"))?;
        let to_presence = presence.as_ref().map(|p| p.input.clone());
        tokio::spawn(async move {
            while let Some(ev) = ingest_rx.recv().await {
                let Some(tx) = &to_presence else { continue };
                let json = serde_json::json!({ "user": ev.user, "source": ev.source, "device": ev.device, "state": ev.state });
                match serde_json::to_vec(&json).ok().and_then(|b| IngestEvent::from_json(&b).ok()) {
                    Some(ev) => {
                        let _ = tx.try_send(PresenceInput::Ingest(ev));
                    }
                    None => tracing::info!("presence ingest event not understood"),
                }
            }
        });
        let to_teams_sync = teams.as_ref().map(|t| t.notes.clone());
        tokio::spawn(async move {
            while let Some(n) = webhook_rx.recv().await {
                tracing::debug!(subscription = %n.subscription_id, lifecycle = ?n.lifecycle_event, "Graph notification");
                if let Some(tx) = &to_teams_sync {
                    let note = WebhookNote { subscription_id: n.subscription_id, resource: n.resource, lifecycle: n.lifecycle_event };
                    if tx.try_send(note).is_err() {
                        tracing::warn!("Teams presence queue full: Graph notification dropped (the next resync repairs it)");
                    }
                }
            }
        });
        admin_task = Some(tokio::spawn(async move {
            if let Err(e) = drbridge::admin::serve(listener, admin, std::future::pending()).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        }));
    }
    let docs = teams.map(|t| t.docs);
    Ok((presence, admin_task, docs))
}

/// `drbridge monitor-login`: the device authorization grant for one presence monitor. Prints
/// the identity platform's instructions (page and code) on stdout, waits for the sign-in, checks
/// that the monitor itself signed in and writes its refresh token to its `refresh_token_file`
/// (0600, temporary file + rename). The token is never printed or logged.
async fn monitor_login(path: &Path, upn: &str) -> Result<(), String> {
    use std::io::Write as _;
    // The token file does not exist yet: no file checks.
    let cfg = config::load_with(path, config::LoadOptions { check_files: false }).map_err(|e| e.to_string())?;
    let file = path.display();
    let p = &cfg.presence;
    let m = p
        .teams_to_pbx
        .monitors
        .iter()
        .find(|m| m.upn.eq_ignore_ascii_case(upn))
        .ok_or_else(|| format!("{file}: presence.teams_to_pbx.monitors: no monitor {upn}"))?;
    for (key, v) in [("presence.tenant", &p.tenant), ("presence.client_id", &p.client_id)] {
        if v.trim().is_empty() {
            return Err(format!("{file}: {key}: required to sign a monitor in"));
        }
    }
    let graph = graph_client(&cfg)?;
    let token = graph
        .device_login(&m.upn, |code| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", code.message);
            let _ = writeln!(out, "Sign in as the monitor {}; waiting up to {} min.", m.upn, code.expires_in.as_secs().div_ceil(60));
            let _ = out.flush();
        })
        .await
        .map_err(|e| e.to_string())?;
    let target = &m.refresh_token_file;
    drbridge::presence::graph_watch::write_secret_file(target, &token).map_err(|e| format!("{}: {e}", target.display()))?;
    println!("monitor {} signed in; refresh token written to {}", m.upn, target.display());
    Ok(())
}

/// Where the PBX trunk is, to tell which side a message came from.
#[derive(Clone, Copy, Debug)]
struct PbxWhere {
    proto: Proto,
    /// The trunk's address (connections drbridge opened to it).
    addr: SocketAddr,
    /// drbridge's listener toward it (connections the PBX opened).
    listen: SocketAddr,
}

impl PbxWhere {
    /// UDP and TCP are the PBX's; TLS is the PBX's on a connection to its address or accepted
    /// on its listener, and the Teams proxies' otherwise.
    fn side(&self, peer: Peer, local: SocketAddr) -> Side {
        let on_pbx_listener = local.port() == self.listen.port() && (self.listen.ip().is_unspecified() || local.ip() == self.listen.ip());
        if peer.proto != Proto::Tls || (self.proto == Proto::Tls && (peer.addr == self.addr || on_pbx_listener)) {
            Side::Pbx
        } else {
            Side::Teams
        }
    }
}

fn handle(core: &mut B2bua, ev: TransportEvent, pbx: PbxWhere, now: Instant) {
    match ev {
        TransportEvent::Message(inb) => {
            let side = pbx.side(inb.peer, inb.local);
            core.handle_message(inb.msg, inb.peer, side, now);
        }
        TransportEvent::ConnectFailed { peer, reason } => {
            tracing::debug!(%peer, %reason, "connection failed");
            core.handle_connect_failed(peer, now);
        }
    }
}
