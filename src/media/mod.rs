//! Media anchoring: every call's RTP goes through drbridge. SRTP (SDES) with ICE-lite toward
//! Teams, plain RTP (or SRTP) toward the PBX, RTCP, RFC 4733 DTMF passed through, inactivity
//! timeout.
//!
//! Two halves with a small interface between them:
//! - `sdp` (pure): rewrites an offer/answer received on one side into the one sent on the other
//!   side with drbridge's own address, keys and ICE credentials ([`LocalMedia`]), and extracts
//!   what the far end told us ([`RemoteMedia`]).
//! - the engine (sockets, packet path): a port pool per side, one relay per call, SRTP
//!   protect/unprotect in place, STUN answers, latching, on a few dedicated media threads.
//!   Controlled through [`MediaControl`] by `b2bua`.

pub mod sdp;
pub mod engine;
pub mod poll;
pub mod pool;
pub mod relay;
pub mod srtp;
pub mod stun;

pub use engine::{EngineStats, MediaEngine, MediaEngineConfig};

use crate::config::Trunk;
use std::fmt;
use std::net::SocketAddr;

/// SRTP crypto suites offered/accepted (RFC 4568 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
}

impl SrtpSuite {
    pub fn sdp_name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }
    pub fn from_sdp_name(s: &str) -> Option<SrtpSuite> {
        match s {
            "AES_CM_128_HMAC_SHA1_80" => Some(SrtpSuite::AesCm128HmacSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Some(SrtpSuite::AesCm128HmacSha1_32),
            _ => None,
        }
    }
}

/// An SDES master key and salt (RFC 4568 inline key = base64(key || salt)). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKey {
    pub suite: SrtpSuite,
    /// The crypto attribute's tag (answer must echo the offer's tag).
    pub tag: u32,
    pub key: [u8; 16],
    pub salt: [u8; 14],
}

/// The key material is wiped when a key is dropped (copies that were moved are not: a best
/// effort against keys lingering in freed memory).
impl Drop for SrtpKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.key.zeroize();
        self.salt.zeroize();
    }
}

impl fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpKey").field("suite", &self.suite).field("tag", &self.tag).field("key", &"<redacted>").finish()
    }
}

/// ICE-lite credentials (RFC 8445): ufrag/pwd.
#[derive(Clone, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

impl fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceCredentials").field("ufrag", &self.ufrag).field("pwd", &"<redacted>").finish()
    }
}

/// What drbridge presents on one side of one call's audio stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMedia {
    /// RTP address (even port); RTCP is port+1 unless muxed.
    pub rtp: SocketAddr,
    pub rtcp: SocketAddr,
    /// Key drbridge encrypts with toward this side (None: plain RTP).
    pub srtp: Option<SrtpKey>,
    /// ICE-lite credentials (Teams side only); stable for the call unless an ICE restart.
    pub ice: Option<IceCredentials>,
}

/// What the far end on one side told us in its SDP.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RemoteMedia {
    /// Where it wants RTP (None: no usable address yet, e.g. c=0.0.0.0 hold).
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// Key it encrypts with (we decrypt with it).
    pub srtp: Option<SrtpKey>,
    /// Its ICE credentials (for checks it sends us: our answers use OUR pwd; kept for restarts).
    pub ice: Option<IceCredentials>,
    /// Payload types on this side -> the same codec's payload type on the other side, when they
    /// differ (e.g. telephone-event 101 <-> 96).
    pub pt_map: Vec<(u8, u8)>,
    /// a=sendrecv / sendonly / recvonly / inactive as seen from the far end.
    pub sends: bool,
    pub receives: bool,
}

/// Identifier of one call's media session in the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaSessionId(pub u64);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MediaError {
    #[error("no free media ports on the {0} side")]
    Exhausted(&'static str),
    #[error("unknown media session")]
    Unknown,
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("no acceptable codec or crypto: {0}")]
    NotAcceptable(String),
}

/// Events from the engine to the call layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// No media received on either side for the configured time: end the call.
    Inactive(MediaSessionId),
}

/// One of the two ends of a media session: the relay joins end A and end B. Each end faces a
/// side (Teams or PBX); both ends may face the same side (a PBX call transferred back to the PBX
/// is relayed PBX <-> PBX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaEnd {
    A,
    B,
}

impl MediaEnd {
    pub fn other(self) -> MediaEnd {
        match self {
            MediaEnd::A => MediaEnd::B,
            MediaEnd::B => MediaEnd::A,
        }
    }
}

/// The control API `b2bua` uses (synchronous; the engine does its socket work itself).
pub trait MediaControl: Send {
    /// Allocates a port pair for each end of a new session, end A facing side `a` and end B
    /// facing side `b`; `Exhausted` -> answer 503.
    fn allocate(&mut self, a: Trunk, b: Trunk) -> Result<MediaSessionId, MediaError>;
    /// What drbridge presents at `end` of this session.
    fn local(&self, id: MediaSessionId, end: MediaEnd) -> Option<LocalMedia>;
    /// New ICE credentials at `end` (ICE restart: a re-INVITE with new ufrag/pwd from Teams).
    fn restart_ice(&mut self, id: MediaSessionId, end: MediaEnd) -> Option<LocalMedia>;
    /// What the far end at `end` said (offer or answer); the relay applies it at once.
    fn update(&mut self, id: MediaSessionId, end: MediaEnd, remote: RemoteMedia) -> Result<(), MediaError>;
    /// Frees the ports and state; called on every end of a call.
    fn free(&mut self, id: MediaSessionId);
    /// Counters of the engine, for /metrics (engines without any: None).
    fn stats(&self) -> Option<engine::EngineStats> {
        None
    }
}

/// Gauges by one label (`what`, `event`, `side`).
type LabeledGauges = prometheus_client::metrics::family::Family<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge>;

/// The media engine's counters on /metrics (`drbridge_media_*`), set from [`EngineStats`] by the
/// signalling loop once a second. Packet counters are totals since start (freed + live sessions).
#[derive(Clone, Default)]
pub struct MediaMetrics {
    sessions: prometheus_client::metrics::gauge::Gauge,
    packets: LabeledGauges,
    events: LabeledGauges,
    bound: LabeledGauges,
}

impl MediaMetrics {
    /// Registers these (shared) gauges in `reg`; the clone kept by the caller sets them.
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        let m = self;
        let sub = reg.sub_registry_with_prefix("drbridge_media");
        sub.register("sessions", "Live media sessions", m.sessions.clone());
        sub.register("packets", "Relay packet counters since start, by what happened to them", m.packets.clone());
        sub.register("events", "Since start: allocations refused (ports, sessions), bind failures, sessions ended by the inactivity timeout", m.events.clone());
        sub.register("bound_pairs", "Port pairs whose sockets are bound, by side", m.bound.clone());
    }

    pub fn set(&self, s: &EngineStats) {
        let mut t = s.freed;
        t.add(&s.live);
        let g = |f: &LabeledGauges, k: &str, v: &str, n: u64| {
            f.get_or_create(&vec![(k.to_string(), v.to_string())]).set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        self.sessions.set(i64::try_from(s.sessions).unwrap_or(i64::MAX));
        for (what, n) in [
            ("received", t.rx_packets),
            ("sent", t.tx_packets),
            ("dropped_unknown_source", t.dropped_unknown_source),
            ("dropped_auth", t.dropped_auth),
            ("dropped_replay", t.dropped_replay),
            ("dropped_other", t.dropped_other),
            ("dropped_unassigned", s.dropped_unassigned),
            ("stun_answered", t.stun_answered),
            ("stun_rejected", t.stun_rejected),
        ] {
            g(&self.packets, "what", what, n);
        }
        for (why, n) in [
            ("exhausted_teams_ports", s.exhausted_teams),
            ("exhausted_pbx_ports", s.exhausted_pbx),
            ("exhausted_sessions", s.exhausted_sessions),
            ("bind_failures", s.bind_failures),
            ("inactivity_timeouts", s.inactive),
        ] {
            g(&self.events, "event", why, n);
        }
        g(&self.bound, "side", "teams", s.bound_teams as u64);
        g(&self.bound, "side", "pbx", s.bound_pbx as u64);
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    /// Dropping a key wipes its key and salt in place (the memory is read back after the drop,
    /// where it still lies in a `MaybeUninit`).
    #[test]
    fn dropped_key_is_wiped() {
        let mut slot = std::mem::MaybeUninit::new(SrtpKey { suite: SrtpSuite::AesCm128HmacSha1_80, tag: 1, key: [0xAB; 16], salt: [0xCD; 14] });
        // SAFETY: `slot` holds an initialized key, dropped once here and never used as a key again;
        // only its plain bytes (`[u8; N]` fields, valid for any value) are read afterwards.
        let (key, salt) = unsafe {
            std::ptr::drop_in_place(slot.as_mut_ptr());
            let p = slot.as_ptr();
            (std::ptr::addr_of!((*p).key).read(), std::ptr::addr_of!((*p).salt).read())
        };
        assert_eq!(key, [0; 16]);
        assert_eq!(salt, [0; 14]);
    }
}
