//! TCP and TLS: listeners, outbound connects, per-connection reader (framing, RFC 5626
//! keep-alives, idle timeout) and writer (bounded queue).

use super::{bump, ConnSlot, Inbound, Peer, Proto, Shared, TransportEvent};
use crate::sip::msg::{frame_len, parse};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

const PONG: &[u8] = b"\r\n";
const READ_CHUNK: usize = 16 * 1024;

pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    proto: Proto,
    lis: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    no_cert_from: Option<std::net::IpAddr>,
) {
    loop {
        if shared.events.is_closed() {
            return;
        }
        let (tcp, remote) = match lis.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!(%proto, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = shared.reserve((proto, remote)) else {
            bump(&shared.stats.rejected_limit);
            warn!(%proto, %remote, "connection refused: max_connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| lis.local_addr().unwrap_or(remote));
        match &acceptor {
            None => {
                bump(&shared.stats.accepted);
                debug!(%remote, "TCP connection accepted");
                tokio::spawn(run(tcp, slot, local, None));
            }
            Some(acc) => {
                let acc = acc.clone();
                let timeout = shared.cfg.connect_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acc.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let (_, conn) = tls.get_ref();
                            if conn.peer_certificates().is_none_or(|c| c.is_empty()) && no_cert_from != Some(remote.ip()) {
                                // Only the trunk's own address may come without a certificate.
                                bump(&slot.shared.stats.tls_handshake_failures);
                                info!(%remote, "inbound TLS handshake failed: no client certificate, and not from the trunk's address");
                                return;
                            }
                            let names: Vec<String> = conn
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(super::tls::cert_dns_names)
                                .unwrap_or_default();
                            debug!(%remote, ?names, version = ?conn.protocol_version(),
                                suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
                                "TLS connection accepted");
                            bump(&slot.shared.stats.accepted);
                            run(tls, slot, local, None).await;
                        }
                        Ok(Err(e)) => {
                            bump(&slot.shared.stats.tls_handshake_failures);
                            info!(%remote, error = %e, "inbound TLS handshake failed");
                        }
                        Err(_) => {
                            bump(&slot.shared.stats.tls_handshake_failures);
                            info!(%remote, "inbound TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

/// `send` for TCP/TLS: reuse the connection for `(proto, addr)` or open one.
pub(super) fn send(shared: &Arc<Shared>, peer: Peer, server_name: Option<&str>, data: Bytes) {
    let key = (peer.proto, peer.addr);
    {
        let mut conns = shared.conns();
        if let Some(entry) = conns.get(&key) {
            match entry.tx.try_send(data) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    bump(&shared.stats.write_queue_full);
                    warn!(%peer, "write queue full, message dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    // The connection just ended: forget it and open a new one below.
                    conns.remove(&key);
                    return open(shared, peer, server_name, d, conns);
                }
            }
        }
        open(shared, peer, server_name, data, conns);
    }
}

fn open(
    shared: &Arc<Shared>,
    peer: Peer,
    server_name: Option<&str>,
    data: Bytes,
    mut conns: std::sync::MutexGuard<
        '_,
        std::collections::HashMap<super::ConnKey, super::ConnEntry>,
    >,
) {
    let trunk = shared.trunk.as_ref().filter(|t| peer.proto == Proto::Tls && t.peer == peer.addr);
    let connector = match (peer.proto, trunk, &shared.tls_connector) {
        (Proto::Tls, Some(t), _) => Some(t.connector.clone()),
        (Proto::Tls, None, None) => {
            drop(conns);
            return shared.emit_failed(peer, "TLS is not configured".into());
        }
        (Proto::Tls, None, Some(c)) => Some(c.clone()),
        _ => None,
    };
    let tls_name = match (&connector, trunk) {
        (None, _) => None,
        // The trunk's own name, whatever the caller passed.
        (Some(_), Some(t)) => Some(t.server_name.clone()),
        (Some(_), None) => {
            let name = match server_name {
                Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned()),
                None => Ok(rustls::pki_types::ServerName::IpAddress(
                    peer.addr.ip().into(),
                )),
            };
            match name {
                Ok(n) => Some(n),
                Err(e) => {
                    drop(conns);
                    return shared.emit_failed(peer, format!("bad TLS server name: {e}"));
                }
            }
        }
    };
    let Some(slot) = shared.reserve((peer.proto, peer.addr)) else {
        drop(conns);
        return shared.emit_failed(peer, "max_connections reached".into());
    };
    let (tx, rx) = mpsc::channel(shared.cfg.write_queue.max(1));
    // Capacity is at least 1 and the channel is new: this cannot fail.
    let _ = tx.try_send(data);
    conns.insert(slot.key, super::ConnEntry { id: slot.id, tx });
    drop(conns);
    let timeout = shared.cfg.connect_timeout;
    shared.runtime.spawn(async move {
        let connect = async {
            let tcp = TcpStream::connect(peer.addr).await?;
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr()?;
            Ok::<_, io::Error>((tcp, local))
        };
        let (tcp, local) = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return fail(slot, peer, format!("connect: {e}")),
            Err(_) => return fail(slot, peer, "connect: timed out".into()),
        };
        match (connector, tls_name) {
            (Some(c), Some(name)) => {
                match tokio::time::timeout(timeout, c.connect(name, tcp)).await {
                    Ok(Ok(tls)) => {
                        bump(&slot.shared.stats.connected);
                        debug!(%peer, "TLS connection established");
                        run(tls, slot, local, Some(rx)).await;
                    }
                    Ok(Err(e)) => {
                        bump(&slot.shared.stats.tls_handshake_failures);
                        fail(slot, peer, format!("TLS handshake: {e}"))
                    }
                    Err(_) => fail(slot, peer, "TLS handshake: timed out".into()),
                }
            }
            _ => {
                bump(&slot.shared.stats.connected);
                debug!(%peer, "TCP connection established");
                run(tcp, slot, local, Some(rx)).await;
            }
        }
    });
}

fn fail(slot: ConnSlot, peer: Peer, reason: String) {
    let shared = slot.shared.clone();
    // Free the slot and the table entry before telling the core, so that a retry opens anew.
    drop(slot);
    shared.emit_failed(peer, reason);
}

/// Runs one established connection until EOF, error, idle timeout, framing error, `close`,
/// or the core going away. `rx` is the write queue for outbound connections (registered at
/// `send`); inbound connections create and register theirs here.
async fn run<S>(stream: S, slot: ConnSlot, local: SocketAddr, rx: Option<mpsc::Receiver<Bytes>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let outbound = rx.is_some();
    let rx = match rx {
        Some(rx) => rx,
        None => {
            let (tx, rx) = mpsc::channel(slot.shared.cfg.write_queue.max(1));
            slot.register(tx);
            rx
        }
    };
    // The reader answers pings through a weak sender so that removing the table entry
    // (`close`) lets the writer drain and finish.
    let weak = {
        let conns = slot.shared.conns();
        conns
            .get(&slot.key)
            .filter(|e| e.id == slot.id)
            .map(|e| e.tx.downgrade())
    };
    let last_activity = AtomicU64::new(slot.shared.now_ms());
    let (rd, wr) = tokio::io::split(stream);
    let peer = Peer {
        proto: slot.key.0,
        addr: slot.key.1,
    };
    let mut received = false;
    let now_ms = || slot.shared.now_ms();
    let (why, read_error) = tokio::select! {
        r = read_loop(rd, &slot, local, weak, &last_activity, &mut received) => r,
        r = write_loop(wr, rx, &now_ms, &last_activity) => (r, false),
    };
    debug!(%peer, reason = %why, "SIP connection closed");
    let shared = slot.shared.clone();
    drop(slot);
    if outbound && read_error && !received {
        // Typically TLS 1.3 with our client certificate refused: the handshake looked fine on
        // our side and the peer's alert arrives on the first read. Report it like a failed
        // connect so the core can fail over instead of waiting for a transaction timeout.
        shared.emit_failed(peer, why);
    }
}

/// Bytes of queued messages joined into one write (a TLS record holds up to 16 KB of data).
const WRITE_BATCH: usize = 16 * 1024;

async fn write_loop<W: AsyncWrite>(
    mut wr: tokio::io::WriteHalf<W>,
    mut rx: mpsc::Receiver<Bytes>,
    now_ms: &(dyn Fn() -> u64 + Sync),
    last_activity: &AtomicU64,
) -> String {
    // Messages queued together go out in one write (one TLS record, one system call) up to
    // WRITE_BATCH bytes: at thousands of calls per second the core queues several per loop,
    // and a `write_all` each cost a `writev` each.
    let mut batch = BytesMut::new();
    while let Some(first) = rx.recv().await {
        let mut data = first;
        loop {
            while batch.len() + data.len() <= WRITE_BATCH {
                batch.extend_from_slice(&data);
                match rx.try_recv() {
                    Ok(more) => data = more,
                    Err(_) => {
                        data = Bytes::new();
                        break;
                    }
                }
            }
            // what is batched, then a message too big to join it (written on its own)
            for chunk in [batch.split().freeze(), std::mem::take(&mut data)] {
                if !chunk.is_empty() {
                    if let Err(e) = wr.write_all(&chunk).await {
                        return format!("write: {e}");
                    }
                }
            }
            match rx.try_recv() {
                Ok(more) => data = more,
                Err(_) => break,
            }
        }
        if let Err(e) = wr.flush().await {
            return format!("write: {e}");
        }
        last_activity.store(now_ms(), Ordering::Relaxed);
    }
    let _ = wr.shutdown().await;
    "closed locally".into()
}

/// Outcome of scanning the head of the buffer for CRLF keep-alives.
enum Crlf {
    /// Consumed a double-CRLF ping; answer with a pong.
    Ping,
    /// Consumed a single CRLF (a pong, or a stray line end before a message).
    Skipped,
    /// The buffer holds only a possible start of a ping; wait for more bytes.
    NeedMore,
    /// No CRLF at the head.
    None,
}

fn take_crlf(buf: &mut BytesMut) -> Crlf {
    if buf.starts_with(b"\r\n\r\n") {
        buf.advance(4);
        return Crlf::Ping;
    }
    match buf.first() {
        Some(b'\n') => {
            buf.advance(1);
            Crlf::Skipped
        }
        Some(b'\r') => {
            if b"\r\n\r\n".starts_with(&buf[..]) {
                // "\r", "\r\n" or "\r\n\r": could still become a ping.
                return Crlf::NeedMore;
            }
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                Crlf::Skipped
            } else {
                Crlf::None
            }
        }
        _ => Crlf::None,
    }
}

async fn read_loop<R: AsyncRead>(
    mut rd: tokio::io::ReadHalf<R>,
    slot: &ConnSlot,
    local: SocketAddr,
    pong_tx: Option<mpsc::WeakSender<Bytes>>,
    last_activity: &AtomicU64,
    received: &mut bool,
) -> (String, bool) {
    let shared = &slot.shared;
    let peer = Peer {
        proto: slot.key.0,
        addr: slot.key.1,
    };
    let limits = shared.cfg.limits;
    let idle_ms = shared.cfg.idle_timeout.as_millis() as u64;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Deliver everything complete in the buffer.
        loop {
            match take_crlf(&mut buf) {
                Crlf::Ping => {
                    bump(&shared.stats.pings_answered);
                    if let Some(tx) = pong_tx.as_ref().and_then(|w| w.upgrade()) {
                        let _ = tx.try_send(Bytes::from_static(PONG));
                    }
                    continue;
                }
                Crlf::Skipped => continue,
                Crlf::NeedMore => break,
                Crlf::None => {}
            }
            if buf.is_empty() {
                break;
            }
            match frame_len(&buf, &limits) {
                Ok(Some(n)) => {
                    // Copied out, so that a message kept for 32 s (transactions, calls) holds its
                    // own ~1 KB and not the whole read chunk it arrived in.
                    let frame = bytes::Bytes::copy_from_slice(&buf[..n]);
                    bytes::Buf::advance(&mut buf, n);
                    match parse(frame, &limits) {
                        Ok(msg) => {
                            *received = true;
                            let ev = TransportEvent::Message(Inbound { msg, peer, local });
                            if shared.events.send(ev).await.is_err() {
                                return ("event receiver gone".into(), false);
                            }
                        }
                        Err(e) => {
                            bump(&shared.stats.stream_parse_errors);
                            debug!(%peer, error = %e, "unparsable SIP message dropped");
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    bump(&shared.stats.framing_errors);
                    info!(%peer, error = %e, "framing error, closing connection");
                    return (format!("framing: {e}"), false);
                }
            }
        }
        // Wait for bytes or for the idle deadline (activity either way counts).
        buf.reserve(READ_CHUNK);
        let deadline = last_activity
            .load(Ordering::Relaxed)
            .saturating_add(idle_ms);
        let wait = Duration::from_millis(deadline.saturating_sub(shared.now_ms()));
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => return ("closed by peer".into(), false),
                Ok(_) => last_activity.store(shared.now_ms(), Ordering::Relaxed),
                Err(e) => return (format!("read: {e}"), true),
            },
            _ = tokio::time::sleep(wait) => {
                let last = last_activity.load(Ordering::Relaxed);
                if shared.now_ms() >= last.saturating_add(idle_ms) {
                    bump(&shared.stats.idle_closed);
                    return ("idle".into(), false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_keepalives() {
        let mut b = BytesMut::from(&b"\r\n\r\nINVITE"[..]);
        assert!(matches!(take_crlf(&mut b), Crlf::Ping));
        assert!(matches!(take_crlf(&mut b), Crlf::None));
        assert_eq!(&b[..], b"INVITE");

        let mut b = BytesMut::from(&b"\r\nINVITE"[..]);
        assert!(matches!(take_crlf(&mut b), Crlf::Skipped));
        assert_eq!(&b[..], b"INVITE");

        for partial in [&b"\r"[..], b"\r\n", b"\r\n\r"] {
            let mut b = BytesMut::from(partial);
            assert!(matches!(take_crlf(&mut b), Crlf::NeedMore));
            assert_eq!(b.len(), partial.len());
        }

        let mut b = BytesMut::from(&b"\nX"[..]);
        assert!(matches!(take_crlf(&mut b), Crlf::Skipped));
        let mut b = BytesMut::from(&b"\rX"[..]);
        assert!(matches!(take_crlf(&mut b), Crlf::None));
        let mut b = BytesMut::new();
        assert!(matches!(take_crlf(&mut b), Crlf::None));
    }

    /// Queued messages are written joined (up to WRITE_BATCH), in order, and a message bigger
    /// than a batch is written whole, between the batches around it.
    #[tokio::test]
    async fn write_loop_batches_in_order() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (_rd, wr) = tokio::io::split(ours);
        let (tx, rx) = mpsc::channel(64);
        let big = Bytes::from(vec![b'B'; 3 * WRITE_BATCH]);
        let mut sent = Vec::new();
        for m in [Bytes::from_static(b"one\r\n"), Bytes::from_static(b"two\r\n"), big, Bytes::from(vec![b'x'; WRITE_BATCH - 10]), Bytes::from_static(b"last\r\n")] {
            sent.extend_from_slice(&m);
            tx.send(m).await.unwrap();
        }
        drop(tx);
        let activity = AtomicU64::new(0);
        let why = write_loop(wr, rx, &|| 7, &activity).await;
        assert_eq!(why, "closed locally");
        assert_eq!(activity.load(Ordering::Relaxed), 7);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes out of order");
    }
}
