//! drbridge command line: parses arguments and wires the parts together (see DESIGN.md).

use clap::{Parser, Subcommand};
use drbridge::b2bua::{B2bua, CoreConfig, Dialplan, Side, TeamsProxy};
use drbridge::config::{self, Trunk};
use drbridge::media::sdp::CodecProfile;
use drbridge::media::{MediaEngine, MediaEngineConfig, MediaEvent, MediaMetrics, SrtpSuite};
use drbridge::presence::graph::{GraphClient, GraphSettings, SecretSource};
use drbridge::presence::linestate::IngestEvent;
use drbridge::presence::publish::{self, PublishMetrics, Publisher, PublisherConfig};
use drbridge::presence::service::{self, cached_object_ids, resolve_object_ids, restore_from_store, DirectorySink, PresenceInput, PresenceService, PresenceSetup, StoreLog, SubscribeCommand};
use drbridge::presence::{Mapping, PresenceStore, RedbStore, UserDirectory};
use drbridge::routing::{NumberPlan, RouteTable};
use std::sync::Arc;
use drbridge::sip::msg::Limits;
use drbridge::sip::transport::{ensure_lab_certs, ListenerSpec, Peer, Proto, SipTransport, TlsSetup, TransportConfig, TransportEvent};
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
    let mut listeners = vec![
        ListenerSpec { proto: Proto::Tls, addr: cfg.teams.listen },
        ListenerSpec { proto: Proto::Udp, addr: cfg.pbx.listen },
        ListenerSpec { proto: Proto::Tcp, addr: cfg.pbx.listen },
    ];
    if pbx_proto == Proto::Tls && cfg.pbx.listen != cfg.teams.listen {
        listeners.push(ListenerSpec { proto: Proto::Tls, addr: cfg.pbx.listen });
    }
    let limits = Limits { max_message: cfg.limits.max_message_bytes, max_headers: cfg.limits.max_headers };
    let tcfg = TransportConfig {
        limits,
        max_connections: cfg.limits.max_connections,
        event_queue: cfg.limits.event_queue,
        ..TransportConfig::default()
    };
    let (transport, mut events) = SipTransport::start_with(listeners, Some(tls), tcfg).await.map_err(|e| e.to_string())?;

    let mut proxies = Vec::new();
    for p in &cfg.teams.proxies {
        proxies.push(TeamsProxy { host: p.host.clone(), port: p.port, addr: resolve(&p.host, p.port, p.address).await? });
    }
    let pbx = Peer { proto: pbx_proto, addr: cfg.pbx.address };
    let pbx_local = transport.local_addr(pbx_proto).unwrap_or(cfg.pbx.listen);
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
        max_calls: cfg.sbc.max_calls as usize,
        max_transactions: cfg.limits.max_transactions,
    };
    let pbx_addr = cfg.pbx.address;
    let plan = Plan { numbers: NumberPlan::new(&cfg.numbers), routes: RouteTable::new(&cfg.routes) };
    let mut core = B2bua::new(core_cfg, Box::new(plan), Instant::now());
    let (media_tx, mut media_events) = tokio::sync::mpsc::channel::<MediaEvent>(1);
    let _keep_media_tx = media_tx; // without media anchoring the channel stays empty
    if cfg.media.enabled {
        let m = &cfg.media;
        let ecfg = MediaEngineConfig {
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
        };
        // Media sockets stay bound once used (reused per call): at full use that is one socket
        // per Teams port (RTCP muxed: one per pair) and two per PBX pair. Raise the soft
        // descriptor limit to the hard one and say so if even that is short.
        let pairs = |lo: u16, hi: u16| (u64::from(hi.saturating_sub(lo)) + 1) / 2;
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
        let (engine, ev) = MediaEngine::new(ecfg, aux.clone());
        media_events = ev;
        let teams = CodecProfile { allowed: m.teams_codecs.clone(), ..CodecProfile::teams() };
        let pbx = CodecProfile { allowed: m.pbx_codecs.clone(), strip_ice: pbx_proto == Proto::Udp, ..CodecProfile::pbx_default() };
        core = core.with_media(Box::new(engine), teams, pbx);
    }
    let media_metrics = MediaMetrics::default();
    let mut media_metrics_at = Instant::now();
    let (mut presence, _admin) = {
        let c = cfg.clone();
        let mm = media_metrics.clone();
        aux.spawn(async move { start_presence(&c, mm).await }).await.map_err(|e| format!("presence start-up: {e}"))??
    };
    let (no_cmd_tx, mut no_cmds) = tokio::sync::mpsc::channel::<SubscribeCommand>(1);
    let _keep_no_cmd_tx = no_cmd_tx;
    let mut pbx_was_up = true;
    tracing::info!(config = %path.display(), "drbridge ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        let wake = core.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let now = Instant::now();
                handle(&mut core, ev, pbx_proto, pbx_addr, now);
                // Take what else is queued without waiting, then flush once.
                for _ in 0..256 {
                    match events.try_recv() {
                        Ok(ev) => handle(&mut core, ev, pbx_proto, pbx_addr, now),
                        Err(_) => break,
                    }
                }
            }
            Some(ev) = media_events.recv() => core.handle_media_event(ev, Instant::now()),
            Some(c) = async { match presence.as_mut() { Some(p) => p.commands.recv().await, None => no_cmds.recv().await } } => {
                core.subscribe(c.id, &c.user, c.event, c.accept, c.expires, c.initial, Instant::now());
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                core.handle_timeout(Instant::now());
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        if media_metrics_at.elapsed() >= Duration::from_secs(1) {
            media_metrics_at = Instant::now();
            if let Some(s) = core.media_stats() {
                media_metrics.set(&s);
            }
        }
        while let Some(t) = core.poll_transmit() {
            transport.send(t.hop.peer, t.hop.tls_name.as_deref(), t.data);
        }
        while let Some(e) = core.poll_event() {
            tracing::debug!(event = ?e, "call event");
            if let Some(p) = &presence {
                if p.input.try_send(PresenceInput::Call(e)).is_err() {
                    tracing::warn!("presence queue full: call event dropped");
                }
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
    tracing::info!(stats = ?core.stats, "drbridge stopping");
    Ok(())
}

/// Presence (table, PBX subscriptions, Graph publisher with its store) and the admin server, as
/// configured. Returns the presence task and the admin server task.
async fn start_presence(cfg: &config::Config, media_metrics: MediaMetrics) -> Result<(Option<PresenceService>, Option<tokio::task::JoinHandle<()>>), String> {
    let file = cfg.source.display().to_string();
    let mut registry = prometheus_client::registry::Registry::default();
    if cfg.media.enabled {
        media_metrics.register(&mut registry);
    }
    let mut presence = None;
    let mut view: Arc<dyn drbridge::admin::PresenceView> = Arc::new(drbridge::admin::NoPresence);
    if cfg.presence.enabled {
        let p = &cfg.presence;
        let users = p.users_file.clone().unwrap_or_default();
        let dir = Arc::new(UserDirectory::load(&users).map_err(|e| e.to_string())?);
        let store: Arc<dyn PresenceStore> = Arc::new(RedbStore::open(&cfg.sbc.data_dir).map_err(|e| format!("{file}: sbc.data_dir: {e}"))?);
        let secret = SecretSource::from_parts(p.client_secret_file.as_ref(), p.client_secret_env.as_deref())
            .ok_or_else(|| format!("{file}: presence.client_secret_file: set client_secret_file or client_secret_env"))?
            .load()
            .map_err(|e| format!("{file}: presence.client_secret_file: {e}"))?;
        let expiration = Duration::from_secs(p.expiration_minutes * 60);
        let graph = Arc::new(
            GraphClient::new(GraphSettings {
                tenant: p.tenant.clone(),
                client_id: p.client_id.clone(),
                client_secret: secret,
                identity_base: p.identity_base.clone(),
                graph_base: p.graph_base.clone(),
                scope: p.scope.clone(),
                expiration,
                request_timeout: Duration::from_secs(p.request_timeout_secs),
            })
            .map_err(|e| format!("{file}: presence: {e}"))?,
        );
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
        let publishing = publish::spawn(publisher, Arc::new(DirectorySink { graph, object_ids: ids }), p.queue, metrics);
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
        view = Arc::new(move |user: &str| {
            let id = drbridge::presence::UserId::new(user);
            let v = table.lock().ok()?.view(&id)?;
            let published = core.lock().ok().and_then(|c| c.user_view(id.as_str(), Instant::now()));
            Some(serde_json::json!({ "user": v, "graph": published }))
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
        let client_state = match &a.webhook_client_state_file {
            Some(f) => Some(SecretSource::File(f.clone()).load().map_err(|e| format!("{file}: admin.webhook_client_state_file: {e}"))?),
            None => None,
        };
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
        tokio::spawn(async move {
            // Teams -> PBX presence (Graph change notifications) is not mapped yet: counted and logged.
            while let Some(n) = webhook_rx.recv().await {
                tracing::debug!(subscription = %n.subscription_id, "Graph notification");
            }
        });
        admin_task = Some(tokio::spawn(async move {
            if let Err(e) = drbridge::admin::serve(listener, admin, std::future::pending()).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        }));
    }
    Ok((presence, admin_task))
}

fn handle(core: &mut B2bua, ev: TransportEvent, pbx_proto: Proto, pbx_addr: SocketAddr, now: Instant) {
    match ev {
        TransportEvent::Message(inb) => {
            let side = if inb.peer.proto == Proto::Tls && !(pbx_proto == Proto::Tls && inb.peer.addr == pbx_addr) {
                Side::Teams
            } else {
                Side::Pbx
            };
            core.handle_message(inb.msg, inb.peer, side, now);
        }
        TransportEvent::ConnectFailed { peer, reason } => {
            tracing::debug!(%peer, %reason, "connection failed");
            core.handle_connect_failed(peer, now);
        }
    }
}
