//! The B2BUA: every call has two legs, one toward Teams and one toward the PBX, each with its own
//! Call-ID, tags, Via, CSeq and Contact. Nothing of one side's topology reaches the other: requests
//! and responses are rebuilt for the other leg from a short list of headers that carry meaning
//! across (body, Content-Type, identity, diversion, Session-Expires, Reason ...), never copied
//! wholesale.
//!
//! Sans-IO: [`B2bua`] takes inbound messages, transport failures and the current time, and
//! returns datagrams/stream writes to send (`poll_transmit`), call events (`poll_event`) and the
//! next instant it wants to be woken (`poll_timeout`). It owns the transaction table
//! (`sip::txn`) and the dialog state; the tokio edge in `main.rs` owns sockets and the clock.

mod build;
mod core;
mod interwork;
mod notifier;
pub mod shard;
mod subscribe;

pub use self::core::{B2bua, Stats};
pub use self::shard::{shard_of, Shard, ShardRouter};
pub use self::subscribe::SubscriptionEvent;

use crate::sip::transport::Peer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Which side of the SBC a leg or trunk is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Teams,
    Pbx,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Teams => Side::Pbx,
            Side::Pbx => Side::Teams,
        }
    }
}

/// A next hop: where to send, and the TLS name to present as SNI / verify (Teams proxies).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hop {
    pub peer: Peer,
    pub tls_name: Option<Arc<str>>,
}

/// One Microsoft proxy (sip, sip2, sip3), resolved.
#[derive(Clone, Debug)]
pub struct TeamsProxy {
    /// Host name used in the Request-URI and TLS name checks, e.g. sip.pstnhub.microsoft.com.
    pub host: String,
    pub port: u16,
    pub addr: SocketAddr,
}

/// Number plan and routes, answered by `routing` (kept behind a trait so the B2BUA core is
/// tested with a plain plan).
pub trait Dialplan: Send {
    /// A number as it should appear toward Teams (E.164 with +).
    fn to_teams(&self, number: &str) -> String;
    /// A number as it should appear toward the PBX.
    fn to_pbx(&self, number: &str) -> String;
    /// Which side a call to `number` (already normalized toward `to_teams` form where possible)
    /// goes, given the side it came from.
    fn route(&self, number: &str, from: Side) -> Side;
}

/// Everything the core needs to know, built from `config::Config` by `main`.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub fqdn: String,
    pub user_agent: String,
    pub teams_contact_port: u16,
    pub teams_proxies: Vec<TeamsProxy>,
    pub options_interval: Duration,
    /// None: no OPTIONS toward the PBX.
    pub pbx_options_interval: Option<Duration>,
    pub failover_timeout: Duration,
    pub failover_codes: Vec<u16>,
    /// The PBX trunk's address and transport.
    pub pbx: Peer,
    /// Host written in Request-URI / To toward the PBX.
    pub pbx_domain: String,
    /// drbridge's own address on the PBX side (Via, Contact, From host).
    pub pbx_local: SocketAddr,
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    pub session_expires: u32,
    pub min_se: u32,
    /// An unanswered call is given up this long after its INVITE arrived (CANCEL toward the
    /// callee, 408 to the caller); `None`: never.
    pub ring_timeout: Option<Duration>,
    /// Live calls at once, over all shards: checked against `live_calls`.
    pub max_calls: usize,
    /// Live calls of every shard (the shards' cores share one counter, so that one shard does
    /// not refuse a call while another has room). Shards may overshoot `max_calls` by one call
    /// each in a race, never more.
    pub live_calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub max_transactions: usize,
    /// What drbridge writes of itself, made once from the fields above (`build::written`).
    /// Leave it `Default::default()`: it is filled on first use.
    pub written: std::sync::OnceLock<build::Written>,
}

/// What happened to a call, per leg, for presence and metrics. `user` is the number of the party
/// on that leg, in E.164 (Teams) form where the plan gives one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Ringing { call: u64, caller: String, callee: String },
    Answered { call: u64, caller: String, callee: String },
    Held { call: u64, by: Side },
    Resumed { call: u64, by: Side },
    /// The transfer target answered: `target` joins the call, `transferor` (its number, or the
    /// replaced party for INVITE with Replaces) leaves it.
    Transferred { call: u64, target: String, transferor: String },
    Ended { call: u64, caller: String, callee: String, reason: EndReason },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    Bye(Side),
    Cancelled,
    Rejected(u16),
    Timeout,
    SessionExpired,
    Transferred,
    Replaced,
    /// No RTP/RTCP on either leg for the configured time.
    MediaTimeout,
}

/// An OPTIONS result of the keep-alive core, passed to the other shards: `proxy` is the index
/// of a Teams proxy (configured order), None the PBX trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthNote {
    pub proxy: Option<usize>,
    pub up: bool,
}

/// One write for the transport.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub hop: Hop,
    pub data: bytes::Bytes,
}

#[cfg(test)]
mod tests;
