//! SIP transports: UDP, TCP and TLS (mutual toward Teams), stream framing, connection reuse.
//!
//! [`SipTransport::start`] binds the listeners and returns a cloneable handle plus the receiver
//! of [`TransportEvent`]s. Every message from the network arrives there as an [`Inbound`] with
//! the peer's source address (the core applies `rport`/`received` itself). [`SipTransport::send`]
//! never blocks: UDP is sent at once; TCP/TLS data goes to the writer of an existing connection
//! to that `(proto, address)` (whichever side opened it), or a connection is opened in the
//! background and the data queued; if that fails a [`TransportEvent::ConnectFailed`] is emitted.
//!
//! Limits: the event queue, each connection's write queue, the number of connections and the
//! message size (`Limits`) are bounded; idle connections are closed. Counters are in
//! [`TransportStats`]. Nothing here panics on network input.
//!
//! TLS details (cipher suites, mutual verification) are in [`tls`]; lab certificates in
//! [`lab_certs`].
//!
//! Notes for the core:
//! - A connection is reused for its `(proto, address)` whatever `server_name` a later `send`
//!   gives; the name is only checked when a connection is opened.
//! - An outbound TLS connection whose first read fails before any message arrived (TLS 1.3:
//!   the server refused our certificate after our side of the handshake finished) is reported
//!   as `ConnectFailed` too.
//! - `Inbound::local` is the listener's bound address (for UDP bound to 0.0.0.0, that address).
//! - Stream keep-alives: a double-CRLF ping is answered with a CRLF pong; sending pings is the
//!   caller's choice (`send(peer, None, "\r\n\r\n")`). UDP CRLF keep-alives are ignored.
//! - Inbound TLS handshakes are bounded by `connect_timeout` as well.
//! - Tasks end when the event receiver is dropped (noticed at their next event).

pub mod lab_certs;
mod stream;
pub mod tls;
mod udp;

pub use lab_certs::{ensure_lab_certs, issue_lab_cert, LabCerts};
pub use tls::TlsSetup;

use crate::sip::msg::{Limits, Message};
use bytes::Bytes;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
    Tls,
}

impl Proto {
    /// Transport token as written in Via (`UDP`, `TCP`, `TLS`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
            Proto::Tls => "TLS",
        }
    }
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Proto::Udp)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The far end of a message: transport and socket address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub proto: Proto,
    pub addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.proto, self.addr)
    }
}

/// A message received, with where it came from and the local address it arrived on.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub msg: Message,
    pub peer: Peer,
    pub local: SocketAddr,
}

#[derive(Clone, Debug)]
pub enum TransportEvent {
    Message(Inbound),
    /// An outbound TCP/TLS connection (or a UDP send) could not be made; the data queued for
    /// it is dropped. `reason` is human readable (e.g. the TLS certificate error).
    ConnectFailed {
        peer: Peer,
        reason: String,
    },
}

/// One listening socket. A TLS listener needs a [`TlsSetup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    pub proto: Proto,
    pub addr: SocketAddr,
}

/// A second TLS identity, for one trunk peer (the PBX): its own certificate, key and roots, used
/// by one TLS listener and by the connections drbridge opens to one address. Everything else
/// (the Teams proxies) uses the main [`TlsSetup`].
#[derive(Clone, Debug)]
pub struct TrunkTls {
    /// Our chain and key toward the trunk, its roots, and in `peer_names` the names accepted in
    /// the certificate of a connection the trunk opens (DNS names or IP addresses).
    pub setup: TlsSetup,
    /// The TLS listener (its `ListenerSpec` address) whose connections use this identity.
    pub listen: SocketAddr,
    /// Outbound TLS connections to this address use this identity.
    pub peer: SocketAddr,
    /// SNI and the name the trunk's server certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// Accept the trunk's connections without a client certificate, from this address only
    /// (a PBX that presents none); `None`: a client certificate is required.
    pub no_client_cert_from: Option<std::net::IpAddr>,
}

/// The trunk identity as the connection code uses it.
pub(crate) struct TrunkConnector {
    pub(crate) peer: SocketAddr,
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: rustls::pki_types::ServerName<'static>,
}

/// Tunables; `Default` gives safe edge values.
#[derive(Clone, Copy, Debug)]
pub struct TransportConfig {
    pub limits: Limits,
    /// Capacity of the event channel toward the core.
    pub event_queue: usize,
    /// Most TCP+TLS connections at once (inbound and outbound, handshakes included).
    pub max_connections: usize,
    /// TCP connect + TLS handshake time limit, both directions.
    pub connect_timeout: Duration,
    /// A connection with no traffic either way (keep-alives count) for this long is closed.
    pub idle_timeout: Duration,
    /// Messages queued per connection writer; beyond it `send` drops and counts.
    pub write_queue: usize,
    /// Requested SO_RCVBUF / SO_SNDBUF for UDP sockets.
    pub udp_buffer: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            limits: Limits::default(),
            event_queue: 4096,
            max_connections: 1024,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            // One connection to a Teams proxy carries every call: a short queue drops INVITEs
            // and ACKs under load (measured in bench/PROFILE.md).
            write_queue: 8192,
            udp_buffer: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {proto} {addr}: {source}")]
    Bind {
        proto: Proto,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("a TLS listener on {0} needs TLS certificates")]
    NoTlsSetup(SocketAddr),
    #[error("{}: {reason}", path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{}: {reason}", path.display())]
    LabCerts { path: PathBuf, reason: String },
}

/// Counters, all monotonic. Read with `load(Ordering::Relaxed)`.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub udp_received: AtomicU64,
    /// Datagrams dropped because they did not parse.
    pub udp_parse_errors: AtomicU64,
    /// CRLF-only datagrams (keep-alives), ignored.
    pub udp_keepalives: AtomicU64,
    pub udp_send_errors: AtomicU64,
    /// Inbound TCP/TLS connections accepted (TLS: handshake completed).
    pub accepted: AtomicU64,
    /// Outbound TCP/TLS connections established (TLS: handshake completed).
    pub connected: AtomicU64,
    pub connect_failures: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Inbound connections refused because `max_connections` was reached.
    pub rejected_limit: AtomicU64,
    /// Connections closed for a framing error (bad Content-Length, too large).
    pub framing_errors: AtomicU64,
    /// Framed stream messages that failed to parse (dropped, connection kept).
    pub stream_parse_errors: AtomicU64,
    /// RFC 5626 double-CRLF pings answered with a CRLF pong.
    pub pings_answered: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Sends dropped because a connection's write queue was full.
    pub write_queue_full: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) type ConnKey = (Proto, SocketAddr);

pub(crate) struct ConnEntry {
    id: u64,
    tx: mpsc::Sender<Bytes>,
}

/// State shared by the handle and all tasks.
pub(crate) struct Shared {
    pub(crate) cfg: TransportConfig,
    pub(crate) events: mpsc::Sender<TransportEvent>,
    pub(crate) stats: Arc<TransportStats>,
    pub(crate) conns: Mutex<HashMap<ConnKey, ConnEntry>>,
    pub(crate) live: AtomicUsize,
    next_id: AtomicU64,
    pub(crate) udp: Vec<(Arc<UdpSocket>, SocketAddr)>,
    pub(crate) local: Vec<(Proto, SocketAddr)>,
    pub(crate) tls_connector: Option<tokio_rustls::TlsConnector>,
    pub(crate) trunk: Option<TrunkConnector>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Reference point for the idle clocks (milliseconds since).
    pub(crate) epoch: tokio::time::Instant,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<ConnKey, ConnEntry>> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a connection slot; `None` when `max_connections` is reached.
    pub(crate) fn reserve(self: &Arc<Self>, key: ConnKey) -> Option<ConnSlot> {
        let max = self.cfg.max_connections;
        let ok = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        ok.then(|| ConnSlot {
            shared: self.clone(),
            key,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        })
    }

    pub(crate) fn emit_failed(&self, peer: Peer, reason: String) {
        bump(&self.stats.connect_failures);
        tracing::info!(%peer, %reason, "SIP connection failed");
        let events = self.events.clone();
        self.runtime.spawn(async move {
            let _ = events
                .send(TransportEvent::ConnectFailed { peer, reason })
                .await;
        });
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A reserved connection slot. Dropping it frees the slot and removes its table entry (if the
/// entry is still this connection's).
pub(crate) struct ConnSlot {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: ConnKey,
    pub(crate) id: u64,
}

impl ConnSlot {
    /// Makes this connection the one `send` uses for its key.
    pub(crate) fn register(&self, tx: mpsc::Sender<Bytes>) {
        self.shared
            .conns()
            .insert(self.key, ConnEntry { id: self.id, tx });
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut conns = self.shared.conns();
        if conns.get(&self.key).is_some_and(|e| e.id == self.id) {
            conns.remove(&self.key);
        }
        drop(conns);
        self.shared.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Cloneable handle to the running transports.
#[derive(Clone)]
pub struct SipTransport {
    shared: Arc<Shared>,
}

impl fmt::Debug for SipTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipTransport")
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

impl SipTransport {
    /// Binds the listeners with default tunables and the given limits and event queue size.
    pub async fn start(
        listeners: Vec<ListenerSpec>,
        tls: Option<TlsSetup>,
        limits: Limits,
        queue: usize,
    ) -> Result<(SipTransport, mpsc::Receiver<TransportEvent>), TransportError> {
        let cfg = TransportConfig {
            limits,
            event_queue: queue,
            ..TransportConfig::default()
        };
        SipTransport::start_with(listeners, tls, cfg).await
    }

    /// Binds the listeners (port 0 picks an ephemeral port, see [`Self::local_addr`]) and starts
    /// their tasks. Tasks stop when the event receiver is dropped (checked on each event).
    pub async fn start_with(
        listeners: Vec<ListenerSpec>,
        tls: Option<TlsSetup>,
        cfg: TransportConfig,
    ) -> Result<(SipTransport, mpsc::Receiver<TransportEvent>), TransportError> {
        SipTransport::start_trunk(listeners, tls, None, cfg).await
    }

    /// [`Self::start_with`], plus a trunk with its own TLS identity ([`TrunkTls`]).
    pub async fn start_trunk(
        listeners: Vec<ListenerSpec>,
        tls: Option<TlsSetup>,
        trunk: Option<TrunkTls>,
        cfg: TransportConfig,
    ) -> Result<(SipTransport, mpsc::Receiver<TransportEvent>), TransportError> {
        let (events, rx) = mpsc::channel(cfg.event_queue.max(1));
        let (trunk_acceptor, trunk) = match trunk {
            Some(t) => {
                let server_name = rustls::pki_types::ServerName::try_from(t.server_name.trim_start_matches('[').trim_end_matches(']').to_owned())
                    .map_err(|e| TransportError::Tls(format!("trunk server name {:?}: {e}", t.server_name)))?;
                let acceptor = tokio_rustls::TlsAcceptor::from(t.setup.server_config_with(t.no_client_cert_from.is_none())?);
                let connector = tokio_rustls::TlsConnector::from(t.setup.client_config()?);
                (Some((t.listen, acceptor, t.no_client_cert_from)), Some(TrunkConnector { peer: t.peer, connector, server_name }))
            }
            None => (None, None),
        };
        let (acceptor, connector) = match &tls {
            Some(t) => (
                Some(tokio_rustls::TlsAcceptor::from(t.server_config()?)),
                Some(tokio_rustls::TlsConnector::from(t.client_config()?)),
            ),
            None => (None, None),
        };
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut local = Vec::new();
        for l in &listeners {
            let bind_err = |source| TransportError::Bind {
                proto: l.proto,
                addr: l.addr,
                source,
            };
            match l.proto {
                Proto::Udp => {
                    let sock = udp::bind(l.addr, cfg.udp_buffer).map_err(bind_err)?;
                    let addr = sock.local_addr().map_err(bind_err)?;
                    local.push((Proto::Udp, addr));
                    udp.push((Arc::new(sock), addr));
                }
                Proto::Tcp | Proto::Tls => {
                    let (acc, no_cert_from) = match (l.proto, &trunk_acceptor) {
                        (Proto::Tcp, _) => (None, None),
                        (_, Some((listen, a, from))) if *listen == l.addr => (Some(a.clone()), *from),
                        _ => (Some(acceptor.clone().ok_or(TransportError::NoTlsSetup(l.addr))?), None),
                    };
                    let lis = stream::bind(l.addr).map_err(bind_err)?;
                    let addr = lis.local_addr().map_err(bind_err)?;
                    local.push((l.proto, addr));
                    tcp.push((l.proto, lis, acc, no_cert_from));
                }
            }
        }
        let shared = Arc::new(Shared {
            cfg,
            events,
            stats: Arc::new(TransportStats::default()),
            conns: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            udp,
            local,
            tls_connector: connector,
            trunk,
            runtime: tokio::runtime::Handle::current(),
            epoch: tokio::time::Instant::now(),
        });
        for (sock, addr) in &shared.udp {
            tokio::spawn(udp::receive(shared.clone(), sock.clone(), *addr));
        }
        for (proto, lis, acc, no_cert_from) in tcp {
            tokio::spawn(stream::accept_loop(shared.clone(), proto, lis, acc, no_cert_from));
        }
        for (proto, addr) in &shared.local {
            tracing::info!(%proto, %addr, "SIP listening");
        }
        Ok((SipTransport { shared }, rx))
    }

    /// Sends one message (or keep-alive) to `peer`. Never blocks. `server_name` is the TLS SNI
    /// and the name the server certificate must carry (ignored for UDP/TCP and when a
    /// connection already exists); without it the peer's IP address is checked instead.
    pub fn send(&self, peer: Peer, server_name: Option<&str>, data: Bytes) {
        match peer.proto {
            Proto::Udp => udp::send(&self.shared, peer, data),
            Proto::Tcp | Proto::Tls => stream::send(&self.shared, peer, server_name, data),
        }
    }

    /// Address of the first listener of that transport (the real port when bound to port 0).
    pub fn local_addr(&self, proto: Proto) -> Option<SocketAddr> {
        self.shared
            .local
            .iter()
            .find(|(p, _)| *p == proto)
            .map(|(_, a)| *a)
    }

    /// Counters (shared, live).
    pub fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// Number of TCP/TLS connections open or being opened.
    pub fn connection_count(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Closes the connection to `peer` if there is one (e.g. a proxy answered 503: fail over).
    /// Queued data is still written; the connection ends when its writer drains.
    pub fn close(&self, peer: Peer) {
        self.shared.conns().remove(&(peer.proto, peer.addr));
    }
}
