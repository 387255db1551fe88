//! drbridge command line: parses arguments and wires the parts together (see DESIGN.md).

use clap::{Parser, Subcommand};
use drbridge::b2bua::{B2bua, CoreConfig, Dialplan, Side, TeamsProxy};
use drbridge::config::{self, Trunk};
use drbridge::media::sdp::CodecProfile;
use drbridge::media::{MediaEngine, MediaEngineConfig, MediaEvent, SrtpSuite};
use drbridge::routing::{NumberPlan, RouteTable};
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
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(&config)) {
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

async fn run(path: &Path) -> Result<(), String> {
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
            ..MediaEngineConfig::default()
        };
        let (engine, ev) = MediaEngine::new(ecfg, tokio::runtime::Handle::current());
        media_events = ev;
        let teams = CodecProfile { allowed: m.teams_codecs.clone(), ..CodecProfile::teams() };
        let pbx = CodecProfile { allowed: m.pbx_codecs.clone(), strip_ice: pbx_proto == Proto::Udp, ..CodecProfile::pbx_default() };
        core = core.with_media(Box::new(engine), teams, pbx);
    }
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
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                core.handle_timeout(Instant::now());
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        while let Some(t) = core.poll_transmit() {
            transport.send(t.hop.peer, t.hop.tls_name.as_deref(), t.data);
        }
        while let Some(e) = core.poll_event() {
            tracing::debug!(event = ?e, "call event");
        }
    }
    tracing::info!(stats = ?core.stats, "drbridge stopping");
    Ok(())
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
