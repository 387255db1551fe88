//! PLACEHOLDER (replaced by the transport branch).
use std::net::SocketAddr;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto { Udp, Tcp, Tls }
impl Proto { pub fn is_reliable(self) -> bool { !matches!(self, Proto::Udp) } }
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer { pub proto: Proto, pub addr: SocketAddr }
