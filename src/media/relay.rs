//! The per-call packet path, sans-IO: a [`Relay`] takes one datagram received on one of the
//! session's ports and says what to send where. One of the engine's media threads owns the
//! `Relay` and the sockets; nothing here is shared with signalling except the atomics in
//! [`SessionStats`] (written by that thread only) and the [`Pending`] commands, which reach the
//! thread over its control channel (never looked at per packet).
//!
//! The packet path neither allocates nor copies: SRTP is removed and applied in place in the
//! receive buffer (which has [`HEADROOM`] for the tag), and the bytes to send are a slice of it.
//!
//! Per leg (Teams, PBX):
//! - SRTP: a receive context (the far end's key, replay protection on) and a send context (our
//!   key, with the suite the far end chose). A side is plain RTP when either key is missing.
//! - Latching. PBX side: symmetric RTP, media goes to where the far end's packets come from once
//!   they arrive; before that to the SDP address. Teams side: an ICE nomination (USE-CANDIDATE)
//!   latches; without one, the first source whose SRTP authenticates (early media from forked
//!   183s: the first endpoint that streams wins). Once latched, packets from other sources are
//!   dropped and counted. A new SDP address (re-INVITE) un-latches, unless ICE nominated.
//! - Payload types are remapped with the leg's `pt_map` (e.g. telephone-event 101 <-> 96);
//!   SSRC, sequence numbers, timestamps and marker pass through.

use super::srtp::{SrtpError, SrtpStream, MAX_TRAILER};
use super::stun::{classify, CheckOutcome, IceLite, PacketKind};
use super::{IceCredentials, RemoteMedia, SrtpKey};
use crate::config::Trunk;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Room a receive buffer needs after the datagram: SRTP tag, or SRTCP index and tag.
pub const HEADROOM: usize = MAX_TRAILER;

/// One of the session's (up to) four sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    TeamsRtp,
    TeamsRtcp,
    PbxRtp,
    PbxRtcp,
}

impl Port {
    fn side(self) -> Trunk {
        match self {
            Port::TeamsRtp | Port::TeamsRtcp => Trunk::Teams,
            Port::PbxRtp | Port::PbxRtcp => Trunk::Pbx,
        }
    }
    fn is_rtcp(self) -> bool {
        matches!(self, Port::TeamsRtcp | Port::PbxRtcp)
    }
    fn rtp_of(side: Trunk) -> Port {
        match side {
            Trunk::Teams => Port::TeamsRtp,
            Trunk::Pbx => Port::PbxRtp,
        }
    }
    fn rtcp_of(side: Trunk) -> Port {
        match side {
            Trunk::Teams => Port::TeamsRtcp,
            Trunk::Pbx => Port::PbxRtcp,
        }
    }
}

/// Counters of one session, written by its media thread only (see `bump`).
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Milliseconds since the engine's epoch of the last accepted RTP/RTCP packet.
    pub last_rx_ms: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub dropped_unknown_source: AtomicU64,
    pub dropped_auth: AtomicU64,
    pub dropped_replay: AtomicU64,
    /// No key yet, no destination yet, malformed, send buffer full.
    pub dropped_other: AtomicU64,
    pub stun_answered: AtomicU64,
    pub stun_rejected: AtomicU64,
}

/// A copy of [`SessionStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStatsSnapshot {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub dropped_unknown_source: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub dropped_other: u64,
    pub stun_answered: u64,
    pub stun_rejected: u64,
}

impl SessionStats {
    pub fn snapshot(&self) -> SessionStatsSnapshot {
        SessionStatsSnapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            dropped_unknown_source: self.dropped_unknown_source.load(Relaxed),
            dropped_auth: self.dropped_auth.load(Relaxed),
            dropped_replay: self.dropped_replay.load(Relaxed),
            dropped_other: self.dropped_other.load(Relaxed),
            stun_answered: self.stun_answered.load(Relaxed),
            stun_rejected: self.stun_rejected.load(Relaxed),
        }
    }
}

impl SessionStatsSnapshot {
    pub fn add(&mut self, o: &SessionStatsSnapshot) {
        self.rx_packets += o.rx_packets;
        self.tx_packets += o.tx_packets;
        self.dropped_unknown_source += o.dropped_unknown_source;
        self.dropped_auth += o.dropped_auth;
        self.dropped_replay += o.dropped_replay;
        self.dropped_other += o.dropped_other;
        self.stun_answered += o.stun_answered;
        self.stun_rejected += o.stun_rejected;
    }
}

/// Commands from signalling, coalesced: the latest value of each wins.
#[derive(Debug, Default)]
pub struct Pending {
    pub teams: Option<RemoteMedia>,
    pub pbx: Option<RemoteMedia>,
    pub ice_restart: Option<IceCredentials>,
    pub stop: bool,
}

/// Static description of one leg at allocation.
#[derive(Clone, Debug)]
pub struct LegSetup {
    /// Our key on this leg (None: plain RTP toward this side).
    pub key: Option<SrtpKey>,
    /// Our ICE-lite credentials (Teams side).
    pub ice: Option<IceCredentials>,
    /// No separate RTCP socket: RTCP is muxed on the RTP port.
    pub rtcp_mux: bool,
}

struct Leg {
    local_key: Option<SrtpKey>,
    remote: Option<RemoteMedia>,
    rx: Option<SrtpStream>,
    tx: Option<SrtpStream>,
    ice: Option<IceLite>,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    nominated: bool,
    /// Payload type received on this leg -> payload type sent on the other leg.
    pt_map: [u8; 128],
    /// Payload type arriving from the other leg -> payload type sent on this leg: the reverse
    /// of `pt_map` (the map is negotiated once, on the answerer's leg, and holds both ways).
    pt_out: [u8; 128],
    local_mux: bool,
}

fn identity_map() -> [u8; 128] {
    let mut m = [0u8; 128];
    for (i, v) in m.iter_mut().enumerate() {
        *v = i as u8;
    }
    m
}

impl Leg {
    fn new(s: LegSetup) -> Leg {
        Leg {
            local_key: s.key,
            remote: None,
            rx: None,
            tx: None,
            ice: s.ice.as_ref().map(IceLite::new),
            latched_rtp: None,
            latched_rtcp: None,
            nominated: false,
            pt_map: identity_map(),
            pt_out: identity_map(),
            local_mux: s.rtcp_mux,
        }
    }

    /// SRTP is expected on this leg but the far end's key is not known yet.
    fn waiting_for_key(&self) -> bool {
        self.local_key.is_some() && self.remote.is_none()
    }

    fn apply(&mut self, remote: RemoteMedia) {
        let old = self.remote.take();
        match (&self.local_key, &remote.srtp) {
            (Some(ours), Some(theirs)) => {
                let same_rx = old.as_ref().and_then(|o| o.srtp.as_ref()) == Some(theirs) && self.rx.is_some();
                if !same_rx {
                    self.rx = SrtpStream::receiver(theirs).ok();
                }
                let same_tx = self.tx.as_ref().map(|t| t.suite()) == Some(theirs.suite);
                if !same_tx {
                    let mut k = ours.clone();
                    k.suite = theirs.suite;
                    self.tx = SrtpStream::sender(&k).ok();
                }
            }
            _ => {
                self.rx = None;
                self.tx = None;
            }
        }
        self.pt_map = identity_map();
        self.pt_out = identity_map();
        for &(from, to) in &remote.pt_map {
            if from < 128 && to < 128 {
                self.pt_map[from as usize] = to;
                self.pt_out[to as usize] = from;
            }
        }
        let moved = old.as_ref().map(|o| (o.rtp, o.rtcp)) != Some((remote.rtp, remote.rtcp));
        if moved && !self.nominated {
            self.latched_rtp = None;
            self.latched_rtcp = None;
        }
        self.remote = Some(remote);
    }

    /// RTCP travels on the RTP port of this leg.
    fn rtcp_muxed(&self) -> bool {
        self.local_mux || self.remote.as_ref().is_some_and(|r| r.rtcp_mux)
    }

    fn rtp_dest(&self) -> Option<SocketAddr> {
        self.latched_rtp.or(self.remote.as_ref().and_then(|r| r.rtp))
    }

    fn rtcp_dest(&self) -> Option<SocketAddr> {
        if self.rtcp_muxed() {
            return self.rtp_dest();
        }
        self.latched_rtcp.or_else(|| {
            let r = self.remote.as_ref()?;
            r.rtcp.or_else(|| r.rtp.map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1))))
        })
    }

    /// Source check before any processing: false = drop (unknown source on a latched port).
    fn source_ok(&self, rtcp_port: bool, src: SocketAddr) -> bool {
        let latch = if rtcp_port { self.latched_rtcp } else { self.latched_rtp };
        latch.is_none_or(|l| l == src)
    }

    fn latch(&mut self, rtcp_port: bool, src: SocketAddr) {
        let l = if rtcp_port { &mut self.latched_rtcp } else { &mut self.latched_rtp };
        if l.is_none() {
            *l = Some(src);
        }
    }
}

/// What to do after a datagram.
#[derive(Debug)]
pub enum Action<'a> {
    Nothing,
    /// Send `data` (a slice of the receive buffer, or of the relay's STUN answer buffer).
    Send { via: Port, to: SocketAddr, data: &'a [u8] },
}

/// Adds one to a counter that only the session's media thread writes: a plain load and store,
/// no locked read-modify-write on the packet path (readers see a value at most one behind).
#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

pub struct Relay {
    // Boxed: a leg's SRTP contexts make it ~4.5 KB, and a relay built by value was copied
    // whole on its way into the media thread (3 % of the instructions per call set up,
    // bench/PROFILE.md fifth pass).
    teams: Box<Leg>,
    pbx: Box<Leg>,
    stun_out: [u8; 512],
}

impl Relay {
    pub fn new(teams: LegSetup, pbx: LegSetup) -> Relay {
        Relay { teams: Box::new(Leg::new(teams)), pbx: Box::new(Leg::new(pbx)), stun_out: [0; 512] }
    }

    /// Applies what signalling left in the pending slot.
    pub fn apply(&mut self, p: Pending) {
        if let Some(r) = p.teams {
            self.teams.apply(r);
        }
        if let Some(r) = p.pbx {
            self.pbx.apply(r);
        }
        if let Some(c) = p.ice_restart {
            if let Some(ice) = self.teams.ice.as_mut() {
                ice.restart(&c);
            }
        }
    }

    /// Where RTP toward `side` currently goes (tests, diagnostics).
    pub fn destination(&self, side: Trunk) -> Option<SocketAddr> {
        match side {
            Trunk::Teams => self.teams.rtp_dest(),
            Trunk::Pbx => self.pbx.rtp_dest(),
        }
    }

    /// One datagram of `len` bytes received on `port` from `src` into `buf`. SRTP is removed
    /// and applied in place, so `buf` needs [`HEADROOM`] bytes of room after the datagram for
    /// the tag and SRTCP index (without it, packets that must be protected are dropped). The
    /// bytes to send are borrowed from `buf` (or, for a STUN answer, from the relay).
    pub fn on_packet<'a>(
        &'a mut self,
        port: Port,
        src: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
        now_ms: u64,
        stats: &SessionStats,
    ) -> Action<'a> {
        let len = len.min(buf.len());
        let side = port.side();
        let kind = classify(&buf[..len]);
        let Relay { teams, pbx, stun_out } = self;
        let (from, to) = match side {
            Trunk::Teams => (teams, pbx),
            Trunk::Pbx => (pbx, teams),
        };
        match kind {
            PacketKind::Stun => {
                let Some(ice) = from.ice.as_mut() else {
                    bump(&stats.dropped_other);
                    return Action::Nothing;
                };
                match ice.handle(&buf[..len], src, stun_out) {
                    CheckOutcome::Success { len, nominated } => {
                        bump(&stats.stun_answered);
                        if nominated {
                            from.nominated = true;
                            if port.is_rtcp() {
                                from.latched_rtcp = Some(src);
                            } else {
                                from.latched_rtp = Some(src);
                            }
                        }
                        Action::Send { via: port, to: src, data: &stun_out[..len] }
                    }
                    CheckOutcome::Error { len, .. } => {
                        bump(&stats.stun_rejected);
                        Action::Send { via: port, to: src, data: &stun_out[..len] }
                    }
                    CheckOutcome::Drop => {
                        bump(&stats.stun_rejected);
                        Action::Nothing
                    }
                }
            }
            PacketKind::Other => {
                bump(&stats.dropped_other);
                Action::Nothing
            }
            PacketKind::Rtp | PacketKind::Rtcp => {
                let rtcp = kind == PacketKind::Rtcp;
                if !rtcp && port.is_rtcp() {
                    // RTP arriving on an RTCP port
                    bump(&stats.dropped_other);
                    return Action::Nothing;
                }
                if !from.source_ok(port.is_rtcp(), src) {
                    bump(&stats.dropped_unknown_source);
                    return Action::Nothing;
                }
                if from.waiting_for_key() {
                    bump(&stats.dropped_other);
                    return Action::Nothing;
                }
                // 1. unprotect, in place
                let mut plain_len = len;
                if let Some(rx) = from.rx.as_mut() {
                    let pkt = &mut buf[..len];
                    let r = if rtcp { rx.unprotect_rtcp(pkt) } else { rx.unprotect_rtp(pkt) };
                    match r {
                        Ok(n) => plain_len = n,
                        Err(SrtpError::Replay) => {
                            bump(&stats.dropped_replay);
                            return Action::Nothing;
                        }
                        Err(SrtpError::Auth) | Err(SrtpError::Unencrypted) => {
                            bump(&stats.dropped_auth);
                            return Action::Nothing;
                        }
                        Err(_) => {
                            bump(&stats.dropped_other);
                            return Action::Nothing;
                        }
                    }
                } else if from.local_key.is_some() && from.remote.as_ref().is_some_and(|r| r.srtp.is_some()) {
                    // keys negotiated but the context could not be built
                    bump(&stats.dropped_other);
                    return Action::Nothing;
                }
                // 2. accepted: latch, count, timestamp
                from.latch(port.is_rtcp(), src);
                bump(&stats.rx_packets);
                stats.last_rx_ms.store(now_ms, Relaxed);
                // 3. payload type (an RTP packet is at least 12 bytes, with or without SRTP)
                if !rtcp && plain_len >= 2 {
                    let pt = buf[1] & 0x7f;
                    let mapped = to.pt_out[from.pt_map[pt as usize] as usize];
                    if mapped != pt {
                        buf[1] = (buf[1] & 0x80) | mapped;
                    }
                }
                // 4. destination and protect, in place
                let (via, dest) = if rtcp {
                    let via = if to.rtcp_muxed() { Port::rtp_of(side.other()) } else { Port::rtcp_of(side.other()) };
                    (via, to.rtcp_dest())
                } else {
                    (Port::rtp_of(side.other()), to.rtp_dest())
                };
                let Some(dest) = dest else {
                    bump(&stats.dropped_other);
                    return Action::Nothing;
                };
                if to.waiting_for_key() {
                    bump(&stats.dropped_other);
                    return Action::Nothing;
                }
                let out_len = if let Some(tx) = to.tx.as_mut() {
                    let r = if rtcp { tx.protect_rtcp(buf, plain_len) } else { tx.protect_rtp(buf, plain_len) };
                    match r {
                        Ok(n) => n,
                        Err(_) => {
                            bump(&stats.dropped_other);
                            return Action::Nothing;
                        }
                    }
                } else {
                    plain_len
                };
                bump(&stats.tx_packets);
                Action::Send { via, to: dest, data: &buf[..out_len] }
            }
        }
    }
}

trait OtherSide {
    fn other(self) -> Trunk;
}
impl OtherSide for Trunk {
    fn other(self) -> Trunk {
        match self {
            Trunk::Teams => Trunk::Pbx,
            Trunk::Pbx => Trunk::Teams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::stun::{build_check, verify_success};
    use crate::media::SrtpSuite;

    fn key(b: u8) -> SrtpKey {
        SrtpKey { suite: SrtpSuite::AesCm128HmacSha1_80, tag: 1, key: [b; 16], salt: [b ^ 0x55; 14] }
    }
    fn ours_ice() -> IceCredentials {
        IceCredentials { ufrag: "lite".into(), pwd: "0123456789abcdefghijklmn".into() }
    }
    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }
    fn rtp(pt: u8, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, pt, (seq >> 8) as u8, seq as u8, 0, 0, 0, 160, 1, 2, 3, 4];
        p.extend_from_slice(&[0xd5; 160]);
        p
    }
    fn relay() -> Relay {
        Relay::new(
            LegSetup { key: Some(key(1)), ice: Some(ours_ice()), rtcp_mux: true },
            LegSetup { key: None, ice: None, rtcp_mux: false },
        )
    }
    fn teams_remote() -> RemoteMedia {
        RemoteMedia {
            rtp: Some(addr(50000)),
            rtcp: Some(addr(50000)),
            rtcp_mux: true,
            srtp: Some(key(2)),
            pt_map: vec![(101, 96)],
            sends: true,
            receives: true,
            ..Default::default()
        }
    }
    fn pbx_remote() -> RemoteMedia {
        RemoteMedia { rtp: Some(addr(6000)), pt_map: vec![(96, 101)], sends: true, receives: true, ..Default::default() }
    }
    /// Feeds `p` as a datagram received from `src` on `port` (in a buffer with headroom).
    fn feed(r: &mut Relay, port: Port, src: SocketAddr, p: &[u8], now: u64, st: &SessionStats) -> Option<(Port, SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; p.len() + HEADROOM];
        buf[..p.len()].copy_from_slice(p);
        match r.on_packet(port, src, &mut buf, p.len(), now, st) {
            Action::Send { via, to, data } => Some((via, to, data.to_vec())),
            Action::Nothing => None,
        }
    }
    fn prot(tx: &mut SrtpStream, p: &[u8]) -> Vec<u8> {
        let mut b = p.to_vec();
        b.resize(p.len() + HEADROOM, 0);
        let n = tx.protect_rtp(&mut b, p.len()).unwrap();
        b.truncate(n);
        b
    }
    fn prot_rtcp(tx: &mut SrtpStream, p: &[u8]) -> Vec<u8> {
        let mut b = p.to_vec();
        b.resize(p.len() + HEADROOM, 0);
        let n = tx.protect_rtcp(&mut b, p.len()).unwrap();
        b.truncate(n);
        b
    }
    fn unprot(rx: &mut SrtpStream, p: &[u8], rtcp: bool) -> Vec<u8> {
        let mut b = p.to_vec();
        let n = if rtcp { rx.unprotect_rtcp(&mut b) } else { rx.unprotect_rtp(&mut b) }.unwrap();
        b.truncate(n);
        b
    }

    #[test]
    fn pbx_to_teams_encrypts_remaps_and_latches_symmetrically() {
        let mut r = relay();
        let st = SessionStats::default();
        r.apply(Pending { teams: Some(teams_remote()), pbx: Some(pbx_remote()), ..Default::default() });
        assert_eq!(r.destination(Trunk::Pbx), Some(addr(6000)));
        let p = rtp(96 | 0x80, 7);
        let (via, to, out) = feed(&mut r, Port::PbxRtp, addr(7000), &p, 5, &st).unwrap();
        assert_eq!((via, to), (Port::TeamsRtp, addr(50000)));
        let mut teams_rx = SrtpStream::receiver(&key(1)).unwrap();
        let plain = unprot(&mut teams_rx, &out, false);
        assert_eq!(plain[1], 0x80 | 101, "marker kept, PT remapped 96 -> 101");
        assert_eq!(&plain[2..], &rtp(96, 7)[2..]);
        // NAT: the PBX's packets came from 7000, so media goes there, not to the SDP's 6000
        assert_eq!(r.destination(Trunk::Pbx), Some(addr(7000)));
        // another source on the latched port is dropped and counted
        let p = rtp(0, 8);
        assert!(feed(&mut r, Port::PbxRtp, addr(7001), &p, 6, &st).is_none());
        assert_eq!(st.snapshot().dropped_unknown_source, 1);
        assert_eq!(st.last_rx_ms.load(Relaxed), 5);
        // a re-INVITE with a new address un-latches
        let mut moved = pbx_remote();
        moved.rtp = Some(addr(6100));
        r.apply(Pending { pbx: Some(moved), ..Default::default() });
        assert_eq!(r.destination(Trunk::Pbx), Some(addr(6100)));
    }

    #[test]
    fn teams_srtp_waits_for_key_then_first_streamer_wins() {
        let mut r = relay();
        let st = SessionStats::default();
        let mut tx = SrtpStream::sender(&key(2)).unwrap();
        let p = prot(&mut tx, &rtp(0, 1));
        assert!(feed(&mut r, Port::TeamsRtp, addr(50000), &p, 1, &st).is_none(), "no key yet");
        r.apply(Pending { teams: Some(teams_remote()), pbx: Some(pbx_remote()), ..Default::default() });
        // a forged packet does not latch
        let forged = prot(&mut SrtpStream::sender(&key(9)).unwrap(), &rtp(0, 2));
        assert!(feed(&mut r, Port::TeamsRtp, addr(50002), &forged, 2, &st).is_none());
        assert_eq!(st.snapshot().dropped_auth, 1);
        // first authenticated stream (fork B at 50004) wins
        let p = prot(&mut tx, &rtp(101, 3));
        let (via, to, out) = feed(&mut r, Port::TeamsRtp, addr(50004), &p, 3, &st).unwrap();
        assert_eq!((via, to), (Port::PbxRtp, addr(6000)));
        assert_eq!(out[1], 96, "telephone-event 101 -> 96");
        assert_eq!(r.destination(Trunk::Teams), Some(addr(50004)));
        let p = prot(&mut tx, &rtp(0, 4));
        assert!(feed(&mut r, Port::TeamsRtp, addr(50000), &p, 4, &st).is_none());
        assert_eq!(st.snapshot().dropped_unknown_source, 1);
        // replay of an accepted packet
        let p = prot(&mut tx, &rtp(0, 5));
        let again = p.clone();
        assert!(feed(&mut r, Port::TeamsRtp, addr(50004), &p, 5, &st).is_some());
        assert!(feed(&mut r, Port::TeamsRtp, addr(50004), &again, 5, &st).is_none());
        assert_eq!(st.snapshot().dropped_replay, 1);
    }

    #[test]
    fn nomination_relatches_and_muxed_rtcp_goes_to_pbx_rtcp() {
        let mut r = relay();
        let st = SessionStats::default();
        r.apply(Pending { teams: Some(teams_remote()), pbx: Some(pbx_remote()), ..Default::default() });
        let them = IceCredentials { ufrag: "full".into(), pwd: "x".repeat(22) };
        let chk = build_check(&them.ufrag, &ours_ice(), true);
        let (via, to, out) = feed(&mut r, Port::TeamsRtp, addr(50100), &chk, 1, &st).unwrap();
        assert_eq!((via, to), (Port::TeamsRtp, addr(50100)));
        assert_eq!(verify_success(&out, &ours_ice().pwd), Some(addr(50100)));
        assert_eq!(r.destination(Trunk::Teams), Some(addr(50100)));
        // a check alone is not media: the inactivity clock does not move
        assert_eq!(st.last_rx_ms.load(Relaxed), 0);
        // SRTCP from the nominated address, muxed, goes out of the PBX RTCP port to rtp+1
        let mut tx = SrtpStream::sender(&key(2)).unwrap();
        let mut rtcp = vec![0x81, 0xc9, 0x00, 0x01, 9, 9, 9, 9];
        let c = prot_rtcp(&mut tx, &rtcp);
        let (via, to, out) = feed(&mut r, Port::TeamsRtp, addr(50100), &c, 2, &st).unwrap();
        assert_eq!((via, to), (Port::PbxRtcp, addr(6001)));
        assert_eq!(out, rtcp);
        // RTCP from the PBX goes to Teams on the muxed RTP port, SRTCP-protected
        rtcp[1] = 0xc8;
        let (via, to, out) = feed(&mut r, Port::PbxRtcp, addr(6001), &rtcp, 3, &st).unwrap();
        assert_eq!((via, to), (Port::TeamsRtp, addr(50100)));
        let mut rx = SrtpStream::receiver(&key(1)).unwrap();
        assert_eq!(unprot(&mut rx, &out, true)[1], 0xc8);
        // RTP on an RTCP port is dropped
        let p = rtp(0, 1);
        assert!(feed(&mut r, Port::PbxRtcp, addr(6001), &p, 4, &st).is_none());
    }

    #[test]
    fn srtp_in_place_in_the_receive_buffer_and_headroom_needed() {
        let mut r = relay();
        let st = SessionStats::default();
        r.apply(Pending { teams: Some(teams_remote()), pbx: Some(pbx_remote()), ..Default::default() });
        let p = rtp(0, 1);
        let mut buf = vec![0u8; 2048];
        buf[..p.len()].copy_from_slice(&p);
        let base = buf.as_ptr();
        let Action::Send { data, .. } = r.on_packet(Port::PbxRtp, addr(6000), &mut buf, p.len(), 1, &st) else {
            panic!("not relayed")
        };
        assert_eq!((data.as_ptr(), data.len()), (base, p.len() + 10), "sent from the receive buffer");
        // Teams -> PBX: the plain packet is the front of the receive buffer
        let mut tx = SrtpStream::sender(&key(2)).unwrap();
        let c = prot(&mut tx, &rtp(0, 2));
        buf[..c.len()].copy_from_slice(&c);
        let Action::Send { data, .. } = r.on_packet(Port::TeamsRtp, addr(50000), &mut buf, c.len(), 2, &st) else {
            panic!("not relayed")
        };
        assert_eq!((data.as_ptr(), data), (base, &rtp(0, 2)[..]));
        // no room for the tag: dropped and counted, never a panic
        let mut tight = rtp(0, 3);
        let n = tight.len();
        assert!(matches!(r.on_packet(Port::PbxRtp, addr(6000), &mut tight, n, 3, &st), Action::Nothing));
        assert_eq!(st.snapshot().dropped_other, 1);
    }

    #[test]
    fn garbage_on_every_port_never_panics() {
        let mut r = relay();
        let st = SessionStats::default();
        r.apply(Pending { teams: Some(teams_remote()), pbx: Some(pbx_remote()), ..Default::default() });
        let mut seed = 0x1234_5678u32;
        for i in 0..5000usize {
            let len = i % 200;
            let mut p: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            if let Some(b) = p.first_mut() {
                *b = [0x00, 0x01, 0x80, 0x90, 0xbf][i % 5];
            }
            for port in [Port::TeamsRtp, Port::TeamsRtcp, Port::PbxRtp, Port::PbxRtcp] {
                let _ = feed(&mut r, port, addr(1), &p, 0, &st);
                // and without headroom, or with a length past the buffer
                let mut q = p.clone();
                let _ = r.on_packet(port, addr(1), &mut q, len, 0, &st);
                let _ = r.on_packet(port, addr(1), &mut q, len + 7, 0, &st);
            }
        }
    }
}
