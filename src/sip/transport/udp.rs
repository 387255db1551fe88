//! UDP: socket2 sockets with large buffers, one receive task per socket.

use super::{bump, Inbound, Peer, Proto, Shared, TransportEvent};
use crate::sip::msg::parse_datagram;
use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// Largest UDP payload (IPv4: 65535 - 8 - 20; the IPv6 jumbogram case does not apply).
const MAX_DATAGRAM: usize = 65_535;

pub(super) fn bind(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel may cap these (net.core.rmem_max); a smaller buffer is not an error.
    if let Err(e) = sock.set_recv_buffer_size(buffer) {
        warn!(%addr, error = %e, "cannot set UDP receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(buffer) {
        warn!(%addr, error = %e, "cannot set UDP send buffer");
    }
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(true);
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    if let (Ok(r), Ok(s)) = (sock.recv_buffer_size(), sock.send_buffer_size()) {
        debug!(%addr, recv = r, send = s, "UDP socket buffers");
    }
    UdpSocket::from_std(sock.into())
}

fn is_keepalive(d: &[u8]) -> bool {
    d.iter().all(|b| *b == b'\r' || *b == b'\n')
}

pub(super) async fn receive(shared: Arc<Shared>, sock: Arc<UdpSocket>, local: SocketAddr) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let limits = shared.cfg.limits;
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors (ECONNREFUSED) surface here on some systems: not fatal.
                debug!(%local, error = %e, "UDP receive error");
                if shared.events.is_closed() {
                    return;
                }
                continue;
            }
        };
        let data = &buf[..n];
        if is_keepalive(data) {
            // RFC 5626 keep-alives over UDP use STUN; bare CRLFs are ignored.
            bump(&shared.stats.udp_keepalives);
            continue;
        }
        bump(&shared.stats.udp_received);
        match parse_datagram(Bytes::copy_from_slice(data), &limits) {
            Ok(msg) => {
                let peer = Peer {
                    proto: Proto::Udp,
                    addr: src,
                };
                let ev = TransportEvent::Message(Inbound { msg, peer, local });
                if shared.events.send(ev).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                bump(&shared.stats.udp_parse_errors);
                debug!(%src, error = %e, len = n, "unparsable datagram dropped");
            }
        }
    }
}

/// Picks the UDP socket for a destination: first one of the same address family.
fn socket_for(shared: &Shared, dest: SocketAddr) -> Option<&Arc<UdpSocket>> {
    shared
        .udp
        .iter()
        .find(|(_, a)| a.is_ipv4() == dest.is_ipv4())
        .or_else(|| shared.udp.first())
        .map(|(s, _)| s)
}

pub(super) fn send(shared: &Arc<Shared>, peer: Peer, data: Bytes) {
    let Some(sock) = socket_for(shared, peer.addr) else {
        return shared.emit_failed(peer, "no UDP listener".into());
    };
    match sock.try_send_to(&data, peer.addr) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            // Socket buffer full: finish in the background rather than block the caller.
            let sock = sock.clone();
            let shared = shared.clone();
            shared.runtime.clone().spawn(async move {
                if let Err(e) = sock.send_to(&data, peer.addr).await {
                    bump(&shared.stats.udp_send_errors);
                    debug!(%peer, error = %e, "UDP send failed");
                }
            });
        }
        Err(e) => {
            bump(&shared.stats.udp_send_errors);
            debug!(%peer, error = %e, "UDP send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keepalive_detection() {
        assert!(super::is_keepalive(b"\r\n\r\n"));
        assert!(super::is_keepalive(b"\r\n"));
        assert!(!super::is_keepalive(b"\r\nOPTIONS"));
    }
}
