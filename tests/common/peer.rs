//! A SIP peer for tests, over mutual TLS (the Teams proxies) or UDP (a PBX where SIPp cannot
//! go), built on drbridge's own message parser. It keeps a log of every message it received
//! (with the index of the listener, i.e. the proxy, it came in on) and a queue the test takes
//! requests and responses from, in order, with bounded waits. OPTIONS are answered 200
//! automatically (and logged); per-listener modes simulate failing proxies.

use super::util::token;
use bytes::{Buf, Bytes, BytesMut};
use drbridge::sip::msg::{frame_len, parse, parse_datagram, Limits, Message, Method, NameAddr, Request, Response, Uri};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("connection closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot route to {0}")]
    NoRoute(String),
}

/// How a listener (a simulated proxy) behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Queue everything for the test; answer OPTIONS 200.
    Normal,
    /// Accept TLS, read and log, never answer anything (not even OPTIONS), queue nothing.
    Silent,
    /// Answer every INVITE with this final status (503 gets Retry-After), absorb the ACKs.
    RejectInvite(u16),
}

/// One received message.
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// Index of the listener it came in on (None: a connection we opened, or UDP).
    pub proxy: Option<usize>,
    pub conn: u64,
    pub remote: SocketAddr,
    pub msg: Message,
    pub raw: Bytes,
    pub at: Instant,
}

impl LogEntry {
    pub fn is_request(&self, m: &Method) -> bool {
        matches!(&self.msg, Message::Request(r) if &r.method == m)
    }
    pub fn request(&self) -> Option<&Request> {
        match &self.msg {
            Message::Request(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Clone)]
enum Sender {
    Stream(mpsc::UnboundedSender<Bytes>),
    Udp(Arc<UdpSocket>),
}

/// A connection (TLS) or a remote address (UDP) to send on.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub proxy: Option<usize>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    tx: Sender,
    peer: std::sync::Weak<Inner>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn#{}({} -> {}, proxy {:?})", self.id, self.local, self.remote, self.proxy)
    }
}

impl ConnHandle {
    pub fn send(&self, data: Bytes) -> Result<(), PeerError> {
        if let Some(p) = self.peer.upgrade() {
            if let Ok(mut s) = p.sent.lock() {
                s.extend_from_slice(&data);
            }
        }
        match &self.tx {
            Sender::Stream(tx) => tx.send(data).map_err(|_| PeerError::Closed),
            // A direct send on the socket: tokio's try_send_to reports WouldBlock until the reactor
            // has seen the socket writable once, which a fresh socket has not.
            Sender::Udp(sock) => socket2::SockRef::from(&**sock).send_to(&data, &self.remote.into()).map(|_| ()).map_err(PeerError::Io),
        }
    }
    pub fn send_msg(&self, m: &Message) -> Result<(), PeerError> {
        self.send(m.to_bytes())
    }
    /// True while the connection's writer is alive (always true for UDP).
    pub fn is_open(&self) -> bool {
        match &self.tx {
            Sender::Stream(tx) => !tx.is_closed(),
            Sender::Udp(_) => true,
        }
    }
}

/// A received message with the connection to answer on.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub msg: Message,
    pub conn: ConnHandle,
}

/// A dialog (or an attempt at one) as seen by this peer.
#[derive(Clone, Debug)]
pub struct Call {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// From (UAC) / To (UAS) without tag, as name-addr.
    pub local_uri: String,
    pub remote_uri: String,
    /// Request-URI of in-dialog requests (the remote Contact).
    pub remote_target: String,
    /// Route headers of in-dialog requests, in order.
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub local_contact: String,
    /// Connection the dialog was set up on.
    pub conn: ConnHandle,
    /// Our INVITE (UAC side) / the INVITE we received (UAS side).
    pub invite: Request,
    pub is_uac: bool,
    /// Provisional statuses received for our INVITE, in order.
    pub provisional: Vec<u16>,
    /// CSeq number of our last INVITE (initial or re-INVITE), for its ACK.
    pub last_invite_cseq: u32,
}

struct Settings {
    transport: String,
    via_sent_by: String,
    contact: String,
    user_agent: String,
}

pub(crate) struct Inner {
    name: String,
    limits: Limits,
    log: Mutex<Vec<LogEntry>>,
    received: Mutex<Vec<u8>>,
    sent: Mutex<Vec<u8>>,
    queue: Mutex<VecDeque<Inbound>>,
    notify: Notify,
    modes: Mutex<Vec<ProxyMode>>,
    listen_addrs: Mutex<Vec<SocketAddr>>,
    conns: Mutex<Vec<ConnHandle>>,
    to_tags: Mutex<HashMap<(String, String), String>>,
    req_conns: Mutex<HashMap<String, ConnHandle>>,
    tls_failures: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
    hosts: Mutex<HashMap<String, (IpAddr, Option<u16>)>>,
    listener_rr: Mutex<Vec<Option<String>>>,
    client_cfg: Mutex<Option<Arc<ClientConfig>>>,
    udp: Mutex<Option<Arc<UdpSocket>>>,
    settings: Mutex<Settings>,
    auto_options: AtomicBool,
    next_id: AtomicU64,
}

/// The peer; cheap to clone (shared state).
#[derive(Clone)]
pub struct SipPeer {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SipPeer {
    pub fn new(name: &str) -> SipPeer {
        SipPeer {
            inner: Arc::new(Inner {
                name: name.to_string(),
                limits: Limits { max_message: 65_535, max_headers: 256 },
                log: Mutex::new(Vec::new()),
                received: Mutex::new(Vec::new()),
                sent: Mutex::new(Vec::new()),
                queue: Mutex::new(VecDeque::new()),
                notify: Notify::new(),
                modes: Mutex::new(Vec::new()),
                listen_addrs: Mutex::new(Vec::new()),
                conns: Mutex::new(Vec::new()),
                to_tags: Mutex::new(HashMap::new()),
                req_conns: Mutex::new(HashMap::new()),
                tls_failures: Mutex::new(Vec::new()),
                errors: Mutex::new(Vec::new()),
                hosts: Mutex::new(HashMap::new()),
                listener_rr: Mutex::new(Vec::new()),
                client_cfg: Mutex::new(None),
                udp: Mutex::new(None),
                settings: Mutex::new(Settings {
                    transport: "TLS".into(),
                    via_sent_by: "127.0.0.1".into(),
                    contact: "<sip:127.0.0.1;transport=tls>".into(),
                    user_agent: "drbridge-test-peer".into(),
                }),
                auto_options: AtomicBool::new(true),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    // ------------------------------------------------------------------ settings

    /// Via transport and sent-by, e.g. ("TLS", "sip.pstnhub.microsoft.com:5061").
    pub fn set_via(&self, transport: &str, sent_by: &str) {
        let mut s = lock(&self.inner.settings);
        s.transport = transport.to_string();
        s.via_sent_by = sent_by.to_string();
    }
    /// Our Contact (name-addr) in requests and dialog-creating responses.
    pub fn set_contact(&self, contact: &str) {
        lock(&self.inner.settings).contact = contact.to_string();
    }
    pub fn contact(&self) -> String {
        lock(&self.inner.settings).contact.clone()
    }
    pub fn set_user_agent(&self, ua: &str) {
        lock(&self.inner.settings).user_agent = ua.to_string();
    }
    /// Answer OPTIONS 200 automatically (default true).
    pub fn set_auto_options(&self, on: bool) {
        self.inner.auto_options.store(on, Ordering::Relaxed);
    }
    /// Name resolution for in-dialog routing (e.g. the SBC FQDN -> 127.0.0.1).
    pub fn resolve_host(&self, name: &str, ip: IpAddr) {
        lock(&self.inner.hosts).insert(name.to_ascii_lowercase(), (ip, None));
    }
    /// Like drbridge's `address` override: requests for host `name` (any port) go to `addr`.
    pub fn map_host(&self, name: &str, addr: SocketAddr) {
        lock(&self.inner.hosts).insert(name.to_ascii_lowercase(), (addr.ip(), Some(addr.port())));
    }
    /// The Record-Route a listener (a proxy) puts first in dialog-creating responses to the
    /// INVITEs it receives, e.g. `<sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>`.
    pub fn set_listener_record_route(&self, listener: usize, rr: Option<String>) {
        let mut v = lock(&self.inner.listener_rr);
        if v.len() <= listener {
            v.resize(listener + 1, None);
        }
        v[listener] = rr;
    }
    /// TLS client configuration for connections this peer opens for in-dialog requests.
    pub fn set_client_config(&self, cfg: Arc<ClientConfig>) {
        *lock(&self.inner.client_cfg) = Some(cfg);
    }
    pub fn set_mode(&self, proxy: usize, mode: ProxyMode) {
        let mut m = lock(&self.inner.modes);
        if m.len() <= proxy {
            m.resize(proxy + 1, ProxyMode::Normal);
        }
        m[proxy] = mode;
    }
    fn mode(&self, proxy: Option<usize>) -> ProxyMode {
        proxy.and_then(|p| lock(&self.inner.modes).get(p).copied()).unwrap_or(ProxyMode::Normal)
    }

    // ------------------------------------------------------------------ transports

    /// Opens `n` TLS listeners on 127.0.0.1 (free ports) with `cfg`; their indexes continue
    /// after the existing ones. Returns their addresses.
    pub async fn listen_tls(&self, n: usize, cfg: Arc<ServerConfig>) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.listen_tls_at("127.0.0.1:0".parse().expect("addr"), cfg.clone()).await);
        }
        out
    }

    pub async fn listen_tls_at(&self, addr: SocketAddr, cfg: Arc<ServerConfig>) -> SocketAddr {
        let listener = TcpListener::bind(addr).await.expect("bind TLS listener");
        let local = listener.local_addr().expect("local addr");
        let index = {
            let mut l = lock(&self.inner.listen_addrs);
            l.push(local);
            l.len() - 1
        };
        self.set_mode(index, self.mode(Some(index)));
        let acceptor = TlsAcceptor::from(cfg);
        let peer = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, remote)) = listener.accept().await else { break };
                let acceptor = acceptor.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            peer.run_stream(tls, remote, local, Some(index));
                        }
                        Ok(Err(e)) => peer.tls_failure(format!("listener {index}: accept from {remote}: {e}")),
                        Err(_) => peer.tls_failure(format!("listener {index}: handshake timeout from {remote}")),
                    }
                });
            }
        });
        local
    }

    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.inner.listen_addrs).clone()
    }

    /// Opens a TLS connection to `addr` (SNI / name check `server_name`).
    pub async fn connect_tls(
        &self,
        addr: SocketAddr,
        server_name: &str,
        cfg: Arc<ClientConfig>,
        proxy: Option<usize>,
    ) -> Result<ConnHandle, PeerError> {
        let tcp = TcpStream::connect(addr).await?;
        let local = tcp.local_addr()?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| PeerError::Tls(e.to_string()))?;
        let tls = tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(cfg).connect(name, tcp))
            .await
            .map_err(|_| PeerError::Tls("handshake timeout".into()))?
            .map_err(|e| PeerError::Tls(e.to_string()))?;
        Ok(self.run_stream(tls, addr, local, proxy))
    }

    /// Binds a UDP socket (a PBX trunk played by this peer).
    pub async fn bind_udp(&self, addr: SocketAddr) -> SocketAddr {
        let sock = Arc::new(UdpSocket::bind(addr).await.expect("bind UDP"));
        let local = sock.local_addr().expect("local addr");
        *lock(&self.inner.udp) = Some(sock.clone());
        self.set_via("UDP", &local.to_string());
        self.set_contact(&format!("<sip:{local}>"));
        let peer = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, remote)) = sock.recv_from(&mut buf).await else { break };
                let conn = peer.udp_conn(&sock, remote, local);
                peer.on_frame(Bytes::copy_from_slice(&buf[..n]), &conn, false);
            }
        });
        local
    }

    /// A handle to send to `remote` from our UDP socket (after `bind_udp`).
    pub fn udp_to(&self, remote: SocketAddr) -> ConnHandle {
        let sock = lock(&self.inner.udp).clone().expect("bind_udp first");
        let local = sock.local_addr().expect("local addr");
        self.udp_conn(&sock, remote, local)
    }

    fn udp_conn(&self, sock: &Arc<UdpSocket>, remote: SocketAddr, local: SocketAddr) -> ConnHandle {
        ConnHandle {
            id: 0,
            proxy: None,
            remote,
            local,
            tx: Sender::Udp(sock.clone()),
            peer: Arc::downgrade(&self.inner),
        }
    }

    fn run_stream<S>(&self, stream: S, remote: SocketAddr, local: SocketAddr, proxy: Option<usize>) -> ConnHandle
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let conn = ConnHandle {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            proxy,
            remote,
            local,
            tx: Sender::Stream(tx),
            peer: Arc::downgrade(&self.inner),
        };
        lock(&self.inner.conns).push(conn.clone());
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let peer = self.clone();
        let c2 = conn.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            loop {
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Ok(mut r) = peer.inner.received.lock() {
                    r.extend_from_slice(&buf);
                }
                loop {
                    // CRLF keep-alive (RFC 5626): "\r\n\r\n" ping -> "\r\n" pong.
                    let lead = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                    if lead > 0 {
                        if lead >= 4 && &buf[..4] == b"\r\n\r\n" {
                            let _ = c2.send(Bytes::from_static(b"\r\n"));
                        }
                        buf.advance(lead);
                    }
                    match frame_len(&buf, &peer.inner.limits) {
                        Ok(Some(n)) => {
                            let frame = buf.split_to(n).freeze();
                            peer.on_frame(frame, &c2, true);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            peer.error(format!("conn {}: framing: {e}", c2.id));
                            return;
                        }
                    }
                }
            }
            peer.inner.notify.notify_waiters();
        });
        conn
    }

    fn tls_failure(&self, e: String) {
        lock(&self.inner.tls_failures).push(e);
        self.inner.notify.notify_waiters();
    }
    fn error(&self, e: String) {
        lock(&self.inner.errors).push(e);
        self.inner.notify.notify_waiters();
    }

    fn on_frame(&self, raw: Bytes, conn: &ConnHandle, stream: bool) {
        if !stream {
            if let Ok(mut r) = self.inner.received.lock() {
                r.extend_from_slice(&raw);
            }
        }
        let parsed = if stream { parse(raw.clone(), &self.inner.limits) } else { parse_datagram(raw.clone(), &self.inner.limits) };
        let msg = match parsed {
            Ok(m) => m,
            Err(e) => {
                self.error(format!("conn {} from {}: unparsable message ({e}): {:?}", conn.id, conn.remote, String::from_utf8_lossy(&raw)));
                return;
            }
        };
        lock(&self.inner.log).push(LogEntry {
            proxy: conn.proxy,
            conn: conn.id,
            remote: conn.remote,
            msg: msg.clone(),
            raw,
            at: Instant::now(),
        });
        let mode = self.mode(conn.proxy);
        if let Message::Request(req) = &msg {
            if let Some(b) = req.top_via().and_then(|v| v.branch().map(str::to_string)) {
                lock(&self.inner.req_conns).insert(b, conn.clone());
            }
            match mode {
                ProxyMode::Silent => {
                    self.inner.notify.notify_waiters();
                    return;
                }
                ProxyMode::RejectInvite(code) if req.method == Method::Invite => {
                    let extra: &[(&str, &str)] = if code == 503 { &[("Retry-After", "10")] } else { &[] };
                    self.respond_on(conn, req, code, "", extra);
                    self.inner.notify.notify_waiters();
                    return;
                }
                ProxyMode::RejectInvite(_) if req.method == Method::Ack => {
                    self.inner.notify.notify_waiters();
                    return;
                }
                _ => {}
            }
            if req.method == Method::Options && self.inner.auto_options.load(Ordering::Relaxed) {
                self.respond_on(
                    conn,
                    req,
                    200,
                    "",
                    &[
                        ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER, UPDATE"),
                        ("Accept", "application/sdp"),
                        ("Supported", "timer, replaces"),
                    ],
                );
                self.inner.notify.notify_waiters();
                return;
            }
        }
        lock(&self.inner.queue).push_back(Inbound { msg, conn: conn.clone() });
        self.inner.notify.notify_waiters();
    }

    // ------------------------------------------------------------------ waiting

    /// Waits until `f` returns Some, re-checking on every received message.
    pub async fn wait_until<T>(&self, timeout: Duration, what: &str, mut f: impl FnMut(&SipPeer) -> Option<T> + Send) -> Result<T, PeerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f(self) {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(PeerError::Timeout(format!("{what} at {} after {timeout:?}", self.inner.name)));
            }
        }
    }

    fn take_queued(&self, pred: &mut (dyn FnMut(&Inbound) -> bool + Send)) -> Option<Inbound> {
        let mut q = lock(&self.inner.queue);
        let i = q.iter().position(pred)?;
        q.remove(i)
    }

    /// Next queued message matching `pred`; panics with the peer's log on timeout.
    pub async fn expect_where(&self, what: &str, timeout: Duration, mut pred: impl FnMut(&Inbound) -> bool + Send) -> Inbound {
        match self.try_expect_where(what, timeout, &mut pred).await {
            Ok(m) => m,
            Err(e) => panic!("{e}\n{}", self.summary()),
        }
    }

    pub async fn try_expect_where(&self, what: &str, timeout: Duration, pred: &mut (dyn FnMut(&Inbound) -> bool + Send)) -> Result<Inbound, PeerError> {
        self.wait_until(timeout, what, |p| p.take_queued(pred)).await
    }

    /// The next request of `method` (any listener or connection).
    pub async fn expect_request(&self, method: Method, timeout: Duration) -> (Request, ConnHandle) {
        let what = format!("request {method}");
        let m = self.expect_where(&what, timeout, |i| matches!(&i.msg, Message::Request(r) if r.method == method)).await;
        match m.msg {
            Message::Request(r) => (r, m.conn),
            Message::Response(_) => unreachable!(),
        }
    }

    /// The next request of `method` that came in on listener `proxy`.
    pub async fn expect_request_on(&self, proxy: usize, method: Method, timeout: Duration) -> (Request, ConnHandle) {
        let what = format!("request {method} on proxy {proxy}");
        let m = self
            .expect_where(&what, timeout, |i| i.conn.proxy == Some(proxy) && matches!(&i.msg, Message::Request(r) if r.method == method))
            .await;
        match m.msg {
            Message::Request(r) => (r, m.conn),
            Message::Response(_) => unreachable!(),
        }
    }

    /// The next response (any status) for `call_id` and CSeq method `method`.
    pub async fn expect_response(&self, call_id: &str, method: Method, timeout: Duration) -> Response {
        let what = format!("response to {method} of {call_id}");
        let m = self
            .expect_where(&what, timeout, |i| match &i.msg {
                Message::Response(r) => r.call_id() == Some(call_id) && r.cseq().map(|c| c.method == method).unwrap_or(false),
                _ => false,
            })
            .await;
        match m.msg {
            Message::Response(r) => r,
            Message::Request(_) => unreachable!(),
        }
    }

    /// The next final response for `call_id`/`method`; provisional ones are skipped.
    pub async fn expect_final(&self, call_id: &str, method: Method, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.expect_response(call_id, method.clone(), deadline.saturating_duration_since(Instant::now())).await;
            if r.status >= 200 {
                return r;
            }
        }
    }

    /// Asserts that no request of `method` arrives (on listener `proxy`, or anywhere) within
    /// `window` (a bounded wait for an absence, not a synchronisation).
    pub async fn assert_no_request(&self, proxy: Option<usize>, method: Method, window: Duration) {
        let seen = self
            .wait_until(window, "no request", |p| {
                lock(&p.inner.log)
                    .iter()
                    .find(|e| e.is_request(&method) && (proxy.is_none() || e.proxy == proxy))
                    .cloned()
            })
            .await;
        if let Ok(e) = seen {
            panic!("unexpected {method} on proxy {:?}:\n{}", e.proxy, String::from_utf8_lossy(&e.raw));
        }
    }

    /// Waits until the log (everything received, auto-answered messages included) has an
    /// entry matching `pred`; returns it.
    pub async fn expect_logged(&self, what: &str, timeout: Duration, mut pred: impl FnMut(&LogEntry) -> bool + Send) -> LogEntry {
        match self.wait_until(timeout, what, |p| lock(&p.inner.log).iter().find(|e| pred(e)).cloned()).await {
            Ok(e) => e,
            Err(e) => panic!("{e}\n{}", self.summary()),
        }
    }

    /// Waits for a failed TLS handshake on one of our listeners; returns its description.
    pub async fn expect_tls_failure(&self, timeout: Duration) -> String {
        match self.wait_until(timeout, "a TLS handshake failure", |p| lock(&p.inner.tls_failures).first().cloned()).await {
            Ok(e) => e,
            Err(e) => panic!("{e}\n{}", self.summary()),
        }
    }

    // ------------------------------------------------------------------ inspection

    pub fn log(&self) -> Vec<LogEntry> {
        lock(&self.inner.log).clone()
    }
    /// Requests of `method` received on listener `proxy` (None: all).
    pub fn requests(&self, proxy: Option<usize>, method: &Method) -> Vec<Request> {
        lock(&self.inner.log)
            .iter()
            .filter(|e| proxy.is_none() || e.proxy == proxy)
            .filter_map(|e| e.request().filter(|r| &r.method == method).cloned())
            .collect()
    }
    /// Every byte received, as text (for topology-hiding assertions).
    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.inner.received)).into_owned()
    }
    pub fn sent_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.inner.sent)).into_owned()
    }
    pub fn tls_failures(&self) -> Vec<String> {
        lock(&self.inner.tls_failures).clone()
    }
    pub fn errors(&self) -> Vec<String> {
        lock(&self.inner.errors).clone()
    }
    /// A readable account of what this peer received (for failure messages).
    pub fn summary(&self) -> String {
        let mut s = format!("--- {}: {} messages received ---\n", self.inner.name, lock(&self.inner.log).len());
        for e in lock(&self.inner.log).iter() {
            s.push_str(&format!("[proxy {:?} conn {} from {}]\n{}\n", e.proxy, e.conn, e.remote, String::from_utf8_lossy(&e.raw)));
        }
        for e in lock(&self.inner.tls_failures).iter() {
            s.push_str(&format!("TLS failure: {e}\n"));
        }
        for e in lock(&self.inner.errors).iter() {
            s.push_str(&format!("error: {e}\n"));
        }
        s
    }

    // ------------------------------------------------------------------ responding

    /// Our To-tag for the dialog of `req` (one per Call-ID + From-tag).
    pub fn to_tag_for(&self, req: &Request) -> String {
        let key = (req.call_id().unwrap_or("").to_string(), req.from_tag().unwrap_or_default().to_string());
        lock(&self.inner.to_tags).entry(key).or_insert_with(|| token(12)).clone()
    }

    /// Builds and sends a response to `req` on the connection it came in on. `body` non-empty:
    /// Content-Type application/sdp unless `extra` has one. 18x/2xx to INVITE (and 2xx to
    /// UPDATE/SUBSCRIBE) carry our Contact; dialog-creating responses copy Record-Route.
    pub fn respond(&self, req: &Request, status: u16, body: &str, extra: &[(&str, &str)]) -> Response {
        let branch = req.top_via().and_then(|v| v.branch().map(str::to_string)).unwrap_or_default();
        let conn = lock(&self.inner.req_conns).get(&branch).cloned();
        let Some(conn) = conn else { panic!("no connection known for request with branch {branch}") };
        self.respond_on(&conn, req, status, body, extra)
    }

    pub fn respond_on(&self, conn: &ConnHandle, req: &Request, status: u16, body: &str, extra: &[(&str, &str)]) -> Response {
        let tag = if status > 100 { Some(self.to_tag_for(req)) } else { None };
        let mut resp = req.response(status, tag.as_deref());
        let dialog_creating = req.method == Method::Invite && req.to_tag().is_none() && status > 100 && status < 300;
        if dialog_creating {
            let own = conn.proxy.and_then(|p| lock(&self.inner.listener_rr).get(p).cloned().flatten());
            if let Some(own) = own {
                if !req.headers.values("Record-Route").contains(&own.as_str()) {
                    resp.headers.push("Record-Route", own);
                }
            }
            for rr in req.headers.get_all("Record-Route") {
                resp.headers.push("Record-Route", rr.to_string());
            }
        }
        let with_contact = (req.method == Method::Invite && status > 100 && status < 300)
            || (matches!(req.method, Method::Update | Method::Subscribe) && (200..300).contains(&status));
        if with_contact {
            resp.headers.push("Contact", self.contact());
        }
        let ua = lock(&self.inner.settings).user_agent.clone();
        resp.headers.push("Server", ua);
        let mut has_ct = false;
        for (n, v) in extra {
            has_ct |= n.eq_ignore_ascii_case("Content-Type");
            resp.headers.push(n, v.to_string());
        }
        if !body.is_empty() {
            if !has_ct {
                resp.headers.push("Content-Type", "application/sdp");
            }
            resp.body = Bytes::from(body.to_string());
        }
        let _ = conn.send(resp.to_bytes());
        resp
    }

    // ------------------------------------------------------------------ requests

    pub fn send_request(&self, conn: &ConnHandle, req: &Request) {
        if let Err(e) = conn.send(req.to_bytes()) {
            panic!("{}: send {} on {conn:?}: {e}", self.inner.name, req.method);
        }
    }

    fn via(&self) -> String {
        let s = lock(&self.inner.settings);
        format!("SIP/2.0/{} {};branch=z9hG4bK{}", s.transport, s.via_sent_by, token(16))
    }

    /// Builds an out-of-dialog request with our Via, Max-Forwards, a new Call-ID and tag.
    pub fn new_request(&self, method: Method, uri: &str, from: &str, to: &str) -> Request {
        let mut r = Request::new(method.clone(), uri);
        r.headers.push("Via", self.via());
        r.headers.push("Max-Forwards", "70");
        r.headers.push("From", format!("{from};tag={}", token(10)));
        r.headers.push("To", to.to_string());
        r.headers.push("Call-ID", format!("{}@{}", token(24), self.inner.name));
        r.headers.push("CSeq", format!("1 {method}"));
        r.headers.push("Contact", self.contact());
        r.headers.push("User-Agent", lock(&self.inner.settings).user_agent.clone());
        r
    }

    /// Sends `invite` on `conn` and returns the call (UAC side) waiting for answers.
    pub fn send_invite(&self, conn: &ConnHandle, invite: Request) -> Call {
        self.send_request(conn, &invite);
        let from = invite.from_hdr().expect("From");
        let mut local = from.clone();
        local.params.remove("tag");
        let cseq = invite.cseq().map(|c| c.seq).unwrap_or(1);
        Call {
            call_id: invite.call_id().unwrap_or("").to_string(),
            local_tag: from.tag().unwrap_or("").to_string(),
            remote_tag: None,
            local_uri: local.to_string(),
            remote_uri: invite.headers.get("To").unwrap_or("").to_string(),
            remote_target: invite.uri.to_string(),
            route_set: Vec::new(),
            local_cseq: cseq,
            local_contact: self.contact(),
            conn: conn.clone(),
            invite,
            is_uac: true,
            provisional: Vec::new(),
            last_invite_cseq: cseq,
        }
    }

    /// Waits for the final response to our INVITE. On 2xx the dialog takes the remote tag,
    /// target (Contact) and route set (Record-Route reversed); a non-2xx is ACKed (same branch).
    pub async fn await_answer(&self, call: &mut Call, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.expect_response(&call.call_id, Method::Invite, deadline.saturating_duration_since(Instant::now())).await;
            if r.status < 200 {
                call.provisional.push(r.status);
                continue;
            }
            if r.is_success() {
                call.remote_tag = r.to_tag().map(str::to_string);
                if let Some(c) = r.headers.values("Contact").first().and_then(|c| NameAddr::parse(c).ok()) {
                    call.remote_target = c.uri.to_string();
                }
                let mut rr: Vec<String> = r.headers.values("Record-Route").iter().map(|s| s.to_string()).collect();
                rr.reverse();
                call.route_set = rr;
            } else {
                self.ack_non2xx(call, &r);
            }
            return r;
        }
    }

    fn ack_non2xx(&self, call: &Call, resp: &Response) {
        let inv = &call.invite;
        let mut ack = Request::new(Method::Ack, inv.uri.clone());
        if let Some(v) = inv.headers.get("Via") {
            ack.headers.push("Via", v.to_string());
        }
        ack.headers.push("Max-Forwards", "70");
        for r in inv.headers.get_all("Route") {
            ack.headers.push("Route", r.to_string());
        }
        ack.headers.push("From", inv.headers.get("From").unwrap_or("").to_string());
        ack.headers.push("To", resp.headers.get("To").unwrap_or("").to_string());
        ack.headers.push("Call-ID", call.call_id.clone());
        ack.headers.push("CSeq", format!("{} ACK", call.last_invite_cseq));
        self.send_request(&call.conn, &ack);
    }

    /// CANCEL for our pending INVITE (same Request-URI, Via branch and CSeq number, same
    /// connection). Returns the response to the CANCEL.
    pub async fn cancel(&self, call: &Call, timeout: Duration) -> Response {
        let inv = &call.invite;
        let mut c = Request::new(Method::Cancel, inv.uri.clone());
        if let Some(v) = inv.headers.get("Via") {
            c.headers.push("Via", v.to_string());
        }
        c.headers.push("Max-Forwards", "70");
        for r in inv.headers.get_all("Route") {
            c.headers.push("Route", r.to_string());
        }
        c.headers.push("From", inv.headers.get("From").unwrap_or("").to_string());
        c.headers.push("To", inv.headers.get("To").unwrap_or("").to_string());
        c.headers.push("Call-ID", call.call_id.clone());
        c.headers.push("CSeq", format!("{} CANCEL", call.last_invite_cseq));
        self.send_request(&call.conn, &c);
        self.expect_final(&call.call_id, Method::Cancel, timeout).await
    }

    /// UAS side: the call of an INVITE we received (its To-tag is the one `respond` uses).
    pub fn accept_call(&self, invite: &Request, conn: &ConnHandle) -> Call {
        let from = invite.from_hdr().expect("From");
        let mut remote = from.clone();
        remote.params.remove("tag");
        let target = invite
            .headers
            .values("Contact")
            .first()
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|c| c.uri.to_string())
            .unwrap_or_default();
        Call {
            call_id: invite.call_id().unwrap_or("").to_string(),
            local_tag: self.to_tag_for(invite),
            remote_tag: from.tag().map(str::to_string),
            local_uri: invite.headers.get("To").unwrap_or("").to_string(),
            remote_uri: remote.to_string(),
            remote_target: target,
            route_set: invite.headers.values("Record-Route").iter().map(|s| s.to_string()).collect(),
            local_cseq: 100,
            local_contact: self.contact(),
            conn: conn.clone(),
            invite: invite.clone(),
            is_uac: false,
            provisional: Vec::new(),
            last_invite_cseq: 0,
        }
    }

    /// UAS: waits for an INVITE, answers 100, 180 and 200 with `sdp`, then waits for the ACK.
    pub async fn answer_call_with(&self, sdp: &str, timeout: Duration) -> Call {
        let (inv, conn) = self.expect_request(Method::Invite, timeout).await;
        self.respond(&inv, 100, "", &[]);
        self.respond(&inv, 180, "", &[]);
        self.respond(&inv, 200, sdp, &[]);
        let call = self.accept_call(&inv, &conn);
        self.expect_ack(&call, timeout).await;
        call
    }

    /// Waits for the ACK of `call`.
    pub async fn expect_ack(&self, call: &Call, timeout: Duration) -> Request {
        let id = call.call_id.clone();
        let m = self
            .expect_where("ACK", timeout, |i| matches!(&i.msg, Message::Request(r) if r.method == Method::Ack && r.call_id() == Some(id.as_str())))
            .await;
        match m.msg {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    /// Waits for an in-dialog request of `method` in `call`.
    pub async fn expect_in_dialog(&self, call: &Call, method: Method, timeout: Duration) -> Request {
        let id = call.call_id.clone();
        let what = format!("{method} in call {id}");
        let m = self
            .expect_where(&what, timeout, |i| matches!(&i.msg, Message::Request(r) if r.method == method && r.call_id() == Some(id.as_str())))
            .await;
        match m.msg {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    /// Builds an in-dialog request (CSeq incremented, except for ACK which takes the last
    /// INVITE's number): Request-URI = remote target, Route = route set.
    pub fn dialog_request(&self, call: &mut Call, method: Method) -> Request {
        let cseq = if method == Method::Ack {
            call.last_invite_cseq
        } else {
            call.local_cseq += 1;
            call.local_cseq
        };
        if method == Method::Invite {
            call.last_invite_cseq = cseq;
        }
        let mut r = Request::new(method.clone(), call.remote_target.clone());
        r.headers.push("Via", self.via());
        r.headers.push("Max-Forwards", "70");
        for route in &call.route_set {
            r.headers.push("Route", route.clone());
        }
        r.headers.push("From", format!("{};tag={}", call.local_uri, call.local_tag));
        match &call.remote_tag {
            Some(t) => r.headers.push("To", format!("{};tag={t}", call.remote_uri)),
            None => r.headers.push("To", call.remote_uri.clone()),
        }
        r.headers.push("Call-ID", call.call_id.clone());
        r.headers.push("CSeq", format!("{cseq} {method}"));
        if method != Method::Ack {
            r.headers.push("Contact", call.local_contact.clone());
        }
        r
    }

    /// Where an in-dialog request goes: the first Route if any, else the remote target;
    /// resolved with `resolve_host`, reusing an open connection to that address or opening one
    /// (TLS with SNI = the host) — or the UDP socket.
    pub async fn next_hop(&self, call: &Call) -> Result<ConnHandle, PeerError> {
        let uri_text = match call.route_set.first() {
            Some(r) => NameAddr::parse(r).map(|n| n.uri.to_string()).unwrap_or_default(),
            None => call.remote_target.clone(),
        };
        let uri = Uri::parse(&uri_text).map_err(|_| PeerError::NoRoute(uri_text.clone()))?;
        let udp = lock(&self.inner.udp).clone();
        let host = uri.host.trim_matches(|c| c == '[' || c == ']').to_ascii_lowercase();
        let default_port = if udp.is_some() { 5060 } else { 5061 };
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, uri.port.unwrap_or(default_port)),
            Err(_) => {
                let (ip, port) = *lock(&self.inner.hosts).get(&host).ok_or_else(|| PeerError::NoRoute(uri_text.clone()))?;
                SocketAddr::new(ip, port.or(uri.port).unwrap_or(default_port))
            }
        };
        if let Some(sock) = udp {
            let local = sock.local_addr()?;
            return Ok(self.udp_conn(&sock, addr, local));
        }
        let existing = lock(&self.inner.conns).iter().find(|c| c.remote == addr && c.is_open()).cloned();
        if let Some(c) = existing {
            return Ok(c);
        }
        let cfg = lock(&self.inner.client_cfg).clone().ok_or_else(|| PeerError::NoRoute(format!("{uri_text}: no TLS client config")))?;
        self.connect_tls(addr, &host, cfg, None).await
    }

    /// Sends an in-dialog request built by `dialog_request` (after the caller added headers
    /// and body) to the next hop.
    pub async fn send_in_dialog(&self, call: &Call, req: &Request) -> ConnHandle {
        let conn = match self.next_hop(call).await {
            Ok(c) => c,
            Err(e) => panic!("{}: cannot send {} in call {}: {e}", self.inner.name, req.method, call.call_id),
        };
        self.send_request(&conn, req);
        conn
    }

    /// ACK for the 2xx of our last INVITE.
    pub async fn ack(&self, call: &mut Call) -> Request {
        let ack = self.dialog_request(call, Method::Ack);
        self.send_in_dialog(call, &ack).await;
        ack
    }

    /// Sends an in-dialog request with `body` (SDP when non-empty) and `extra` headers, waits
    /// for its final response. A 2xx to a re-INVITE is ACKed.
    pub async fn request(&self, call: &mut Call, method: Method, body: &str, extra: &[(&str, &str)], timeout: Duration) -> Response {
        let mut req = self.dialog_request(call, method.clone());
        let mut has_ct = false;
        for (n, v) in extra {
            has_ct |= n.eq_ignore_ascii_case("Content-Type");
            req.headers.push(n, v.to_string());
        }
        if !body.is_empty() {
            if !has_ct {
                req.headers.push("Content-Type", "application/sdp");
            }
            req.body = Bytes::from(body.to_string());
        }
        self.send_in_dialog(call, &req).await;
        let resp = self.expect_final(&call.call_id, method.clone(), timeout).await;
        if method == Method::Invite && resp.is_success() {
            self.ack(call).await;
        }
        resp
    }

    pub async fn bye(&self, call: &mut Call, timeout: Duration) -> Response {
        self.request(call, Method::Bye, "", &[], timeout).await
    }

    /// Waits for BYE in `call` and answers 200.
    pub async fn expect_bye(&self, call: &Call, timeout: Duration) -> Request {
        let bye = self.expect_in_dialog(call, Method::Bye, timeout).await;
        self.respond(&bye, 200, "", &[]);
        bye
    }
}
