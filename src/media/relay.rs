//! The per-call packet path, sans-IO: a [`Relay`] takes one datagram received on one of the
//! session's ports and says what to send where. The engine's session task owns a `Relay` and the
//! sockets; nothing here is shared with signalling except the atomics in [`SessionStats`] and the
//! [`Pending`] slot, which the task reads only when signalling has notified it (never per packet).
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

use super::srtp::{SrtpError, SrtpStream};
use super::stun::{classify, CheckOutcome, IceLite, PacketKind};
use super::{IceCredentials, RemoteMedia, SrtpKey};
use crate::config::Trunk;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

/// Counters of one session, written by its relay task only.
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
        for &(from, to) in &remote.pt_map {
            if from < 128 && to < 128 {
                self.pt_map[from as usize] = to;
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

/// Bytes to send: either a slice of the receive buffer or a buffer the SRTP layer produced.
#[derive(Debug)]
pub enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(BytesMut),
}

impl AsRef<[u8]> for Payload<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(b) => b,
        }
    }
}

/// What to do after a datagram.
#[derive(Debug)]
pub enum Action<'a> {
    Nothing,
    Send { via: Port, to: SocketAddr, data: Payload<'a> },
}

pub struct Relay {
    teams: Leg,
    pbx: Leg,
    stun_out: [u8; 512],
}

impl Relay {
    pub fn new(teams: LegSetup, pbx: LegSetup) -> Relay {
        Relay { teams: Leg::new(teams), pbx: Leg::new(pbx), stun_out: [0; 512] }
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

    /// One datagram received on `port` from `src`.
    pub fn on_packet<'a>(
        &'a mut self,
        port: Port,
        src: SocketAddr,
        pkt: &'a mut [u8],
        now_ms: u64,
        stats: &SessionStats,
    ) -> Action<'a> {
        let side = port.side();
        let kind = classify(pkt);
        let Relay { teams, pbx, stun_out } = self;
        let (from, to) = match side {
            Trunk::Teams => (teams, pbx),
            Trunk::Pbx => (pbx, teams),
        };
        match kind {
            PacketKind::Stun => {
                let Some(ice) = from.ice.as_mut() else {
                    stats.dropped_other.fetch_add(1, Relaxed);
                    return Action::Nothing;
                };
                match ice.handle(pkt, src, stun_out) {
                    CheckOutcome::Success { len, nominated } => {
                        stats.stun_answered.fetch_add(1, Relaxed);
                        if nominated {
                            from.nominated = true;
                            if port.is_rtcp() {
                                from.latched_rtcp = Some(src);
                            } else {
                                from.latched_rtp = Some(src);
                            }
                        }
                        Action::Send { via: port, to: src, data: Payload::Borrowed(&stun_out[..len]) }
                    }
                    CheckOutcome::Error { len, .. } => {
                        stats.stun_rejected.fetch_add(1, Relaxed);
                        Action::Send { via: port, to: src, data: Payload::Borrowed(&stun_out[..len]) }
                    }
                    CheckOutcome::Drop => {
                        stats.stun_rejected.fetch_add(1, Relaxed);
                        Action::Nothing
                    }
                }
            }
            PacketKind::Other => {
                stats.dropped_other.fetch_add(1, Relaxed);
                Action::Nothing
            }
            PacketKind::Rtp | PacketKind::Rtcp => {
                let rtcp = kind == PacketKind::Rtcp;
                if !rtcp && port.is_rtcp() {
                    // RTP arriving on an RTCP port
                    stats.dropped_other.fetch_add(1, Relaxed);
                    return Action::Nothing;
                }
                if !from.source_ok(port.is_rtcp(), src) {
                    stats.dropped_unknown_source.fetch_add(1, Relaxed);
                    return Action::Nothing;
                }
                if from.waiting_for_key() {
                    stats.dropped_other.fetch_add(1, Relaxed);
                    return Action::Nothing;
                }
                // 1. unprotect
                let mut owned: Option<BytesMut> = None;
                if let Some(rx) = from.rx.as_mut() {
                    let r = if rtcp { rx.unprotect_rtcp(pkt) } else { rx.unprotect_rtp(pkt) };
                    match r {
                        Ok(p) => owned = Some(p),
                        Err(SrtpError::Replay) => {
                            stats.dropped_replay.fetch_add(1, Relaxed);
                            return Action::Nothing;
                        }
                        Err(SrtpError::Auth) | Err(SrtpError::Unencrypted) => {
                            stats.dropped_auth.fetch_add(1, Relaxed);
                            return Action::Nothing;
                        }
                        Err(_) => {
                            stats.dropped_other.fetch_add(1, Relaxed);
                            return Action::Nothing;
                        }
                    }
                } else if from.local_key.is_some() && from.remote.as_ref().is_some_and(|r| r.srtp.is_some()) {
                    // keys negotiated but the context could not be built
                    stats.dropped_other.fetch_add(1, Relaxed);
                    return Action::Nothing;
                }
                // 2. accepted: latch, count, timestamp
                from.latch(port.is_rtcp(), src);
                stats.rx_packets.fetch_add(1, Relaxed);
                stats.last_rx_ms.store(now_ms, Relaxed);
                // 3. payload type
                let plain: &mut [u8] = match owned.as_mut() {
                    Some(b) => &mut b[..],
                    None => &mut *pkt,
                };
                if !rtcp {
                    let pt = plain[1] & 0x7f;
                    let mapped = from.pt_map[pt as usize];
                    if mapped != pt {
                        plain[1] = (plain[1] & 0x80) | mapped;
                    }
                }
                // 4. destination and protect
                let (via, dest) = if rtcp {
                    let via = if to.rtcp_muxed() { Port::rtp_of(side.other()) } else { Port::rtcp_of(side.other()) };
                    (via, to.rtcp_dest())
                } else {
                    (Port::rtp_of(side.other()), to.rtp_dest())
                };
                let Some(dest) = dest else {
                    stats.dropped_other.fetch_add(1, Relaxed);
                    return Action::Nothing;
                };
                if to.waiting_for_key() {
                    stats.dropped_other.fetch_add(1, Relaxed);
                    return Action::Nothing;
                }
                let data = if let Some(tx) = to.tx.as_mut() {
                    let r = if rtcp { tx.protect_rtcp(plain) } else { tx.protect_rtp(plain) };
                    match r {
                        Ok(p) => Payload::Owned(p),
                        Err(_) => {
                            stats.dropped_other.fetch_add(1, Relaxed);
                            return Action::Nothing;
                        }
                    }
                } else {
                    match owned {
                        Some(b) => Payload::Owned(b),
                        None => Payload::Borrowed(pkt),
                    }
                };
                stats.tx_packets.fetch_add(1, Relaxed);
                Action::Send { via, to: dest, data }
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
    fn send(a: Action<'_>) -> Option<(Port, SocketAddr, Vec<u8>)> {
        match a {
            Action::Send { via, to, data } => Some((via, to, data.as_ref().to_vec())),
            Action::Nothing => None,
        }
    }

    #[test]
    fn pbx_to_teams_encrypts_remaps_and_latches_symmetrically() {
        let mut r = relay();
        let st = SessionStats::default();
        r.apply(Pending { teams: Some(teams_remote()), pbx: Some(pbx_remote()), ..Default::default() });
        assert_eq!(r.destination(Trunk::Pbx), Some(addr(6000)));
        let mut p = rtp(96 | 0x80, 7);
        let (via, to, out) = send(r.on_packet(Port::PbxRtp, addr(7000), &mut p, 5, &st)).unwrap();
        assert_eq!((via, to), (Port::TeamsRtp, addr(50000)));
        let mut teams_rx = SrtpStream::receiver(&key(1)).unwrap();
        let plain = teams_rx.unprotect_rtp(&out).unwrap();
        assert_eq!(plain[1], 0x80 | 101, "marker kept, PT remapped 96 -> 101");
        assert_eq!(&plain[2..], &rtp(96, 7)[2..]);
        // NAT: the PBX's packets came from 7000, so media goes there, not to the SDP's 6000
        assert_eq!(r.destination(Trunk::Pbx), Some(addr(7000)));
        // another source on the latched port is dropped and counted
        let mut p = rtp(0, 8);
        assert!(send(r.on_packet(Port::PbxRtp, addr(7001), &mut p, 6, &st)).is_none());
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
        let mut p = tx.protect_rtp(&rtp(0, 1)).unwrap().to_vec();
        assert!(send(r.on_packet(Port::TeamsRtp, addr(50000), &mut p, 1, &st)).is_none(), "no key yet");
        r.apply(Pending { teams: Some(teams_remote()), pbx: Some(pbx_remote()), ..Default::default() });
        // a forged packet does not latch
        let mut forged = SrtpStream::sender(&key(9)).unwrap().protect_rtp(&rtp(0, 2)).unwrap().to_vec();
        assert!(send(r.on_packet(Port::TeamsRtp, addr(50002), &mut forged, 2, &st)).is_none());
        assert_eq!(st.snapshot().dropped_auth, 1);
        // first authenticated stream (fork B at 50004) wins
        let mut p = tx.protect_rtp(&rtp(101, 3)).unwrap().to_vec();
        let (via, to, out) = send(r.on_packet(Port::TeamsRtp, addr(50004), &mut p, 3, &st)).unwrap();
        assert_eq!((via, to), (Port::PbxRtp, addr(6000)));
        assert_eq!(out[1], 96, "telephone-event 101 -> 96");
        assert_eq!(r.destination(Trunk::Teams), Some(addr(50004)));
        let mut p = tx.protect_rtp(&rtp(0, 4)).unwrap().to_vec();
        assert!(send(r.on_packet(Port::TeamsRtp, addr(50000), &mut p, 4, &st)).is_none());
        assert_eq!(st.snapshot().dropped_unknown_source, 1);
        // replay of an accepted packet
        let mut p = tx.protect_rtp(&rtp(0, 5)).unwrap().to_vec();
        let mut again = p.clone();
        assert!(send(r.on_packet(Port::TeamsRtp, addr(50004), &mut p, 5, &st)).is_some());
        assert!(send(r.on_packet(Port::TeamsRtp, addr(50004), &mut again, 5, &st)).is_none());
        assert_eq!(st.snapshot().dropped_replay, 1);
    }

    #[test]
    fn nomination_relatches_and_muxed_rtcp_goes_to_pbx_rtcp() {
        let mut r = relay();
        let st = SessionStats::default();
        r.apply(Pending { teams: Some(teams_remote()), pbx: Some(pbx_remote()), ..Default::default() });
        let them = IceCredentials { ufrag: "full".into(), pwd: "x".repeat(22) };
        let mut chk = build_check(&them.ufrag, &ours_ice(), true);
        let (via, to, out) = send(r.on_packet(Port::TeamsRtp, addr(50100), &mut chk, 1, &st)).unwrap();
        assert_eq!((via, to), (Port::TeamsRtp, addr(50100)));
        assert_eq!(verify_success(&out, &ours_ice().pwd), Some(addr(50100)));
        assert_eq!(r.destination(Trunk::Teams), Some(addr(50100)));
        // a check alone is not media: the inactivity clock does not move
        assert_eq!(st.last_rx_ms.load(Relaxed), 0);
        // SRTCP from the nominated address, muxed, goes out of the PBX RTCP port to rtp+1
        let mut tx = SrtpStream::sender(&key(2)).unwrap();
        let mut rtcp = vec![0x81, 0xc9, 0x00, 0x01, 9, 9, 9, 9];
        let mut c = tx.protect_rtcp(&rtcp).unwrap().to_vec();
        let (via, to, out) = send(r.on_packet(Port::TeamsRtp, addr(50100), &mut c, 2, &st)).unwrap();
        assert_eq!((via, to), (Port::PbxRtcp, addr(6001)));
        assert_eq!(out, rtcp);
        // RTCP from the PBX goes to Teams on the muxed RTP port, SRTCP-protected
        rtcp[1] = 0xc8;
        let (via, to, out) = send(r.on_packet(Port::PbxRtcp, addr(6001), &mut rtcp, 3, &st)).unwrap();
        assert_eq!((via, to), (Port::TeamsRtp, addr(50100)));
        let mut rx = SrtpStream::receiver(&key(1)).unwrap();
        assert_eq!(rx.unprotect_rtcp(&out).unwrap()[1], 0xc8);
        // RTP on an RTCP port is dropped
        let mut p = rtp(0, 1);
        assert!(send(r.on_packet(Port::PbxRtcp, addr(6001), &mut p, 4, &st)).is_none());
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
                let mut q = p.clone();
                let _ = send(r.on_packet(port, addr(1), &mut q, 0, &st));
            }
        }
    }
}
