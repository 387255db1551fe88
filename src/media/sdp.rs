//! SDP rewrite (RFC 3264 offer/answer through a B2BUA): pure functions, no sockets.
//!
//! Every offer and answer that crosses drbridge is rebuilt, not edited: the SDP sent to a side
//! is made from drbridge's own origin, address, keys and ICE credentials on that side
//! ([`LocalMedia`]) and from the codecs of the received SDP that the receiving side accepts
//! ([`CodecProfile`]). Nothing of the far side's topology (o= line, addresses, candidates,
//! session name, bandwidth, Teams `a=x-*` attributes) is copied. What the far end told us is
//! returned as a [`RemoteMedia`] for the relay.
//!
//! Rules (see the functions for details):
//! - One audio stream is relayed: the first `m=audio` with a non-zero port and an RTP profile.
//!   Other media sections are not offered to the other side and are rejected (port 0) in the
//!   answer to the original offerer, so the answer keeps the offer's m-line count and order.
//! - Codecs: formats whose encoding is in the receiving side's profile, in the offerer's order,
//!   at most `max_codecs`; telephone-event (RFC 4733) is always kept (the instance(s) whose
//!   clock rate matches a kept codec); CN only when the profile allows it. No codec left:
//!   [`MediaError::NotAcceptable`]. Offers keep the offerer's payload type numbers; answers are
//!   mapped back to the original offer's numbers and the differences go to
//!   [`RemoteMedia::pt_map`] of the answerer.
//! - SRTP (SDES, RFC 4568): `RTP/SAVP` and one `a=crypto` line with our key when the side has a
//!   key, `RTP/AVP` otherwise. From an offer, the first usable crypto line (known suite, one
//!   key, no MKI, no session parameters) is accepted; the answer echoes its tag and suite.
//! - ICE-lite (Teams): `a=ice-lite` at session level, `a=ice-ufrag`/`a=ice-pwd` from
//!   [`LocalMedia::ice`], one host candidate per component, `a=rtcp-mux`. The engine keeps the
//!   credentials stable for a call, so the 183 and the 200 of one call carry identical ICE
//!   lines (and, when the answer did not change, an identical SDP with the same `o=` version).
//! - Hold: a `c=0.0.0.0` (RFC 2543 hold) takes away the "receives" half of the direction, and
//!   the direction is always written explicitly (`a=sendonly` / `a=inactive`); drbridge's own
//!   address is always written, never 0.0.0.0 (Teams does not understand it).
//! - RTCP: toward Teams `a=rtcp-mux` is offered (with `a=rtcp` and a component 2 candidate as
//!   fallback when the engine gave a separate RTCP port); toward the PBX RTCP stays on its own
//!   port (port+1 by default) unless the PBX itself offered rtcp-mux, which is then accepted.
//! - Origin: `o=drbridge <id> <version> IN IP4 <our address>`, `s=-`; the id is stable per call
//!   side and the version grows by one whenever the SDP sent to that side changes
//!   ([`SdpSession`]; RFC 3264 section 8: an unchanged SDP keeps its version).
//!
//! Secrets: keys and ICE passwords appear only in the returned SDP's wire form. `Debug` of
//! [`Sdp`], [`RemoteMedia`], [`LocalMedia`] and [`SdpSession`] hides them; nothing is logged
//! here.

use super::{IceCredentials, LocalMedia, MediaError, RemoteMedia, SrtpKey, SrtpSuite};
use crate::config::Trunk;
use crate::sip::msg::sdp::{static_rtpmap, Connection, Crypto, Direction, Media, Origin, Rtcp, RtpMap, Sdp};
use crate::sip::msg::{push_u64, SipStr};
use base64::Engine as _;
use std::net::{IpAddr, SocketAddr};

/// The ICE priority of a host candidate for component 1 (RFC 8445 5.1.2.1: type preference
/// 126, local preference 65535); component 2 is one less.
const HOST_PRIORITY: u32 = 2_130_706_431;

/// The SRTP key lifetime written after our inline keys (RFC 4568 default maximum).
const KEY_LIFETIME: &str = "2^31";

/// Which codecs a side accepts, and how lean its SDP must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecProfile {
    /// Encoding names (case-insensitive), optionally with a clock rate (`SILK/16000`):
    /// `PCMU`, `PCMA`, `G722`, `G729`, `SILK`, `telephone-event`, `CN` ... telephone-event is
    /// kept even when not listed (RFC 4733 DTMF must pass).
    pub allowed: Vec<String>,
    /// No ICE lines toward this side (set for PBX trunks, and what keeps a UDP trunk's SDP
    /// small).
    pub strip_ice: bool,
    /// At most this many codecs (telephone-event and CN not counted) in an offer to this side.
    pub max_codecs: Option<usize>,
}

impl CodecProfile {
    /// What Teams Direct Routing accepts on the SBC leg: G.711 u/A-law, G.722, G.729, SILK,
    /// telephone-event and CN.
    pub fn teams() -> CodecProfile {
        CodecProfile {
            allowed: ["PCMU", "PCMA", "G722", "G729", "SILK", "telephone-event", "CN"].map(String::from).to_vec(),
            strip_ice: false,
            max_codecs: None,
        }
    }

    /// A Mitel trunk without a configured list: G.711 A/u-law, G.722, G.729, telephone-event;
    /// no ICE, at most four codecs.
    pub fn pbx_default() -> CodecProfile {
        CodecProfile {
            allowed: ["PCMA", "PCMU", "G722", "G729", "telephone-event"].map(String::from).to_vec(),
            strip_ice: true,
            max_codecs: Some(4),
        }
    }

    /// True if a codec with this encoding name and clock rate is allowed.
    pub fn allows(&self, encoding: &str, clock_rate: u32) -> bool {
        self.allowed.iter().any(|a| {
            let a = a.trim_ascii();
            match a.split_once('/') {
                Some((name, rate)) => name.eq_ignore_ascii_case(encoding) && rate.trim_ascii().parse() == Ok(clock_rate),
                None => a.eq_ignore_ascii_case(encoding),
            }
        })
    }
}

/// The SDP state of one call on one side: drbridge's `o=` line toward that side. Create one per
/// call per side and pass it to every rewrite whose result goes to that side (initial
/// offer/answer, 183, 200, re-INVITE, UPDATE).
#[derive(Clone, Debug)]
pub struct SdpSession {
    session_id: u64,
    version: u64,
    /// A digest of the last SDP sent (with its `o=` line), for "changed or not". A digest, not
    /// a copy: a copy cost a clone of every line per SDP sent and held the message it came
    /// from until the call ended (bench/PROFILE.md, fourth pass).
    last_sent: Option<u64>,
}

impl SdpSession {
    /// A session with this `o=` session id; the first SDP sent has version 1.
    pub fn new(session_id: u64) -> SdpSession {
        SdpSession { session_id, version: 1, last_sent: None }
    }
    /// Forgets the last SDP sent (the call ended; its record lingers for retransmissions only).
    pub fn forget(&mut self) {
        self.last_sent = None;
    }

    /// A session with a random id (62 bits, so it prints as a positive number everywhere).
    pub fn random() -> SdpSession {
        SdpSession::new(rand::random::<u64>() >> 2)
    }

    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The version of the last SDP sent (or of the first one, if none was sent yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    fn origin(&self, ip: IpAddr) -> Origin {
        Origin {
            username: SipStr::from_static("drbridge"),
            session_id: SipStr::from_u64(self.session_id),
            session_version: self.version,
            net_type: SipStr::from_static("IN"),
            addr_type: SipStr::from_static(if ip.is_ipv4() { "IP4" } else { "IP6" }),
            address: SipStr::from_ip(ip),
        }
    }

    /// Writes our `o=` line into `sdp`: the same version as the last SDP sent if `sdp` is
    /// identical to it, the next version otherwise (RFC 3264 section 8); records it as sent.
    fn stamp(&mut self, sdp: &mut Sdp, ip: IpAddr) {
        sdp.set_origin(&self.origin(ip));
        let digest = |sdp: &Sdp| {
            use std::hash::{Hash, Hasher};
            let mut h = crate::fnv::Fnv1a::default();
            sdp.hash(&mut h);
            h.finish()
        };
        let mut d = digest(sdp);
        if self.last_sent.is_some_and(|prev| prev != d) {
            self.version = self.version.wrapping_add(1);
            sdp.set_origin(&self.origin(ip));
            d = digest(sdp);
        }
        self.last_sent = Some(d);
    }
}

/// The size of the SDP on the wire (CRLF line ends), to check a UDP trunk's MTU budget.
pub fn encoded_len(sdp: &Sdp) -> usize {
    sdp.to_bytes().len()
}

/// True when a new SDP from the far end carries ICE credentials different from the previous
/// ones (RFC 8839 4.4.1.1.1: an ICE restart). The caller then asks the engine for new local
/// credentials (`MediaControl::restart_ice`) before it answers. No credentials on either side
/// is not a restart.
pub fn ice_restart_requested(prev: &RemoteMedia, new: &RemoteMedia) -> bool {
    match (&prev.ice, &new.ice) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

/// The index of the media section drbridge relays: the first `m=audio` with a non-zero port
/// and an RTP profile (`RTP/AVP`, `RTP/SAVP`, `RTP/AVPF`, `RTP/SAVPF`).
pub fn audio_index(sdp: &Sdp) -> Option<usize> {
    sdp.media.iter().position(|m| {
        m.media.eq_ignore_ascii_case("audio")
            && m.port != 0
            && matches!(m.proto.to_ascii_uppercase().as_str(), "RTP/AVP" | "RTP/SAVP" | "RTP/AVPF" | "RTP/SAVPF")
    })
}

/// What the sender of an offer told us, without rewriting it (e.g. to detect an ICE restart
/// before deciding how to answer). The crypto line chosen is the one [`rewrite_offer`] and
/// [`rewrite_answer`] accept.
pub fn offer_remote_media(offer: &Sdp) -> Result<RemoteMedia, MediaError> {
    let idx = audio_index(offer).ok_or_else(|| MediaError::NotAcceptable("no audio stream".into()))?;
    let m = &offer.media[idx];
    let srtp = if m.is_secure() {
        Some(choose_offered_crypto(m).ok_or_else(|| MediaError::NotAcceptable("no usable SDES crypto line".into()))?)
    } else {
        None
    };
    remote_of(offer, idx, m.rtcp_mux(), srtp)
}

/// Rewrites an offer received from `from` into the offer drbridge sends to `to`, and returns
/// it with the offerer's [`RemoteMedia`].
///
/// The offer sent has drbridge's origin (from `session`, the `to` side's), `c=` and port from
/// `to_local`, the offerer's codecs that `profile_to` allows (offerer's payload type numbers
/// and order), its `a=ptime`/`a=maxptime`, its direction (with `c=0.0.0.0` turned into
/// sendonly/inactive), `RTP/SAVP` with our crypto line when `to_local.srtp` is set, and ICE-lite
/// lines when `to_local.ice` is set and the profile keeps ICE. Toward Teams `a=rtcp-mux` is
/// offered. Nothing else of the received offer is copied.
///
/// Errors: no audio stream, an `RTP/SAVP` offer without a usable crypto line, or no codec in
/// common: [`MediaError::NotAcceptable`] (answer 488).
pub fn rewrite_offer(
    offer: &Sdp,
    from: Trunk,
    to_local: &LocalMedia,
    to: Trunk,
    profile_to: &CodecProfile,
    session: &mut SdpSession,
) -> Result<(Sdp, RemoteMedia), MediaError> {
    let idx = audio_index(offer)
        .ok_or_else(|| MediaError::NotAcceptable(format!("no audio stream in the offer from {from}")))?;
    let m = &offer.media[idx];
    let remote = offer_remote_media(offer)?;

    let codecs = filter_codecs(&codecs_of(m), profile_to);
    if !codecs.iter().any(|c| !c.is_dtmf() && !c.is_cn()) {
        return Err(MediaError::NotAcceptable(format!("no codec of the offer from {from} is accepted by {to}")));
    }

    let hold = is_unspecified(offer.media_connection(idx).as_ref());
    let direction = effective_direction(offer.media_direction(idx), hold);
    let mux = to == Trunk::Teams;
    let ice = to_local.ice.as_ref().filter(|_| !profile_to.strip_ice);
    let crypto = to_local.srtp.as_ref().map(|k| (k.tag, k.suite, k));

    let mut out = new_sdp(session, to_local, ice.is_some());
    out.media.push(audio_section(m, &codecs, to_local, direction, mux, ice, crypto, true));
    session.stamp(&mut out, to_local.rtp.ip());
    Ok((out, remote))
}

/// Rewrites an answer received from `from` (to `offer_sent_to_from`, the offer drbridge sent
/// it) into the answer drbridge sends to `to`, whose offer was `original_offer`; returns it
/// with the answerer's [`RemoteMedia`].
///
/// The answer sent matches the original offer (RFC 3264 6): same number and order of media
/// sections (the ones not relayed get port 0), the same transport profile, the original
/// offer's payload type numbers for the codecs the answerer chose (matched by encoding name,
/// clock rate and channels); [`RemoteMedia::pt_map`] of the answerer lists
/// `(answerer's pt, offerer's pt)` where they differ, e.g. `(96, 101)` for telephone-event,
/// and the relay maps both ways. The crypto line echoes the tag and suite of the original
/// offer's accepted crypto line with the key of `to_local.srtp`. ICE-lite lines (credentials
/// of `to_local.ice`, kept stable by the engine, so a 183 and a 200 are identical) are written
/// when the original offer used ICE. rtcp-mux is accepted when the original offer had it.
///
/// Errors: the answerer rejected the audio stream, chose no codec we can map, or answered
/// SRTP without a usable crypto line, or the original offer needs SRTP and `to_local` has no
/// key: [`MediaError::NotAcceptable`]; an answer without the audio section:
/// [`MediaError::BadSdp`].
pub fn rewrite_answer(
    answer: &Sdp,
    from: Trunk,
    to_local: &LocalMedia,
    to: Trunk,
    offer_sent_to_from: &Sdp,
    original_offer: &Sdp,
    session: &mut SdpSession,
) -> Result<(Sdp, RemoteMedia), MediaError> {
    let sent_idx =
        audio_index(offer_sent_to_from).ok_or_else(|| MediaError::BadSdp("our offer has no audio stream".into()))?;
    let orig_idx = audio_index(original_offer)
        .ok_or_else(|| MediaError::BadSdp("the original offer has no audio stream".into()))?;
    let sent = &offer_sent_to_from.media[sent_idx];
    let orig = &original_offer.media[orig_idx];
    let am = answer
        .media
        .get(sent_idx)
        .filter(|m| m.media.eq_ignore_ascii_case("audio"))
        .ok_or_else(|| MediaError::BadSdp(format!("the answer from {from} has no audio section")))?;
    if am.port == 0 {
        return Err(MediaError::NotAcceptable(format!("{from} rejected the audio stream")));
    }

    // The answerer's key: the crypto line echoing the tag of ours.
    let srtp = if sent.is_secure() {
        if !am.is_secure() {
            return Err(MediaError::NotAcceptable(format!("{from} answered plain RTP to an SRTP offer")));
        }
        let our_tag = sent.cryptos().first().map(|c| c.tag);
        let usable: Vec<SrtpKey> = am.cryptos().iter().filter_map(usable_key).collect();
        let key = usable.iter().find(|k| Some(k.tag) == our_tag).or(usable.first()).cloned();
        Some(key.ok_or_else(|| MediaError::NotAcceptable(format!("no usable crypto line in the answer from {from}")))?)
    } else {
        None
    };
    let mut remote = remote_of(answer, sent_idx, sent.rtcp_mux() && am.rtcp_mux(), srtp)?;

    // Map the answerer's codecs to the original offer's payload types.
    let orig_codecs = codecs_of(orig);
    let mut codecs = Vec::new();
    for pt in am.payload_types() {
        let Some(map) = am.rtpmap(pt).or_else(|| sent.rtpmap(pt)) else { continue };
        let Some(o) = orig_codecs.iter().find(|o| o.same_codec(&map)) else { continue };
        if codecs.iter().any(|c: &Codec| c.pt == o.pt) {
            continue;
        }
        if o.pt != pt {
            remote.pt_map.push((pt, o.pt));
        }
        codecs.push(Codec {
            pt: o.pt,
            encoding: o.encoding.clone(),
            clock_rate: o.clock_rate,
            channels: o.channels,
            fmtp: am.fmtp(pt).map(SipStr::from),
        });
    }
    if !codecs.iter().any(|c| !c.is_dtmf() && !c.is_cn()) {
        return Err(MediaError::NotAcceptable(format!(
            "no codec of the answer from {from} maps to the offer from {to}"
        )));
    }

    // Our key toward the offerer, under the tag and suite of the crypto line we accepted.
    let crypto = if orig.is_secure() {
        let accepted = choose_offered_crypto(orig)
            .ok_or_else(|| MediaError::NotAcceptable(format!("no usable crypto line in the offer from {to}")))?;
        let key = to_local
            .srtp
            .as_ref()
            .ok_or_else(|| MediaError::NotAcceptable(format!("no local SRTP key toward {to}")))?;
        Some((accepted.tag, accepted.suite, key))
    } else {
        None
    };

    let hold = is_unspecified(answer.media_connection(sent_idx).as_ref());
    // RFC 3264 6.1: what the answer allows, within what the original offer allowed.
    let offered = effective_direction(
        original_offer.media_direction(orig_idx),
        is_unspecified(original_offer.media_connection(orig_idx).as_ref()),
    );
    let direction = intersect(effective_direction(answer.media_direction(sent_idx), hold), offered.answer());
    let offered_ice = orig.ice_ufrag().or(original_offer.ice_ufrag()).is_some();
    let ice = to_local.ice.as_ref().filter(|_| offered_ice);

    let mut out = new_sdp(session, to_local, ice.is_some());
    for (i, om) in original_offer.media.iter().enumerate() {
        if i == orig_idx {
            let mut a = audio_section(orig, &codecs, to_local, direction, orig.rtcp_mux(), ice, crypto, false);
            a.proto = orig.proto.clone();
            out.media.push(a);
        } else {
            let formats: Vec<&str> = om.formats.iter().map(|f| f.as_str()).collect();
            let formats = if formats.is_empty() { vec!["0"] } else { formats };
            out.media.push(Media::new(&om.media, 0, &om.proto, &formats));
        }
    }
    session.stamp(&mut out, to_local.rtp.ip());
    Ok((out, remote))
}

// ---------------------------------------------------------------------------------------------
// Codecs

/// One RTP format of a media section.
#[derive(Clone, Debug)]
struct Codec {
    pt: u8,
    encoding: SipStr,
    clock_rate: u32,
    channels: u16,
    fmtp: Option<SipStr>,
}

impl Codec {
    fn is_dtmf(&self) -> bool {
        self.encoding.eq_ignore_ascii_case("telephone-event")
    }
    fn is_cn(&self) -> bool {
        self.encoding.eq_ignore_ascii_case("CN")
    }
    fn same_codec(&self, r: &RtpMap) -> bool {
        self.encoding.eq_ignore_ascii_case(&r.encoding)
            && self.clock_rate == r.clock_rate
            && self.channels == r.channels.unwrap_or(1)
    }
}

/// The formats of a media section that have a known encoding (an `a=rtpmap` or a static
/// payload type), in order, without duplicates.
fn codecs_of(m: &Media) -> Vec<Codec> {
    // the rtpmap and fmtp lines read once, not once per payload type (`Media::rtpmap` and
    // `Media::fmtp` each scan every line: 4 % of the instructions per call before)
    let maps = m.rtpmaps();
    let fmtps = m.fmtps();
    let mut out: Vec<Codec> = Vec::new();
    for pt in m.payload_types() {
        if out.iter().any(|c| c.pt == pt) {
            continue;
        }
        let map = maps.iter().find(|r| r.payload_type == pt).cloned().or_else(|| static_rtpmap(pt));
        if let Some(r) = map {
            out.push(Codec {
                pt,
                encoding: r.encoding.clone(),
                clock_rate: r.clock_rate,
                channels: r.channels.unwrap_or(1),
                fmtp: fmtps.iter().find(|(p, _)| *p == pt).map(|(_, f)| SipStr::from(*f)),
            });
        }
    }
    out
}

/// The codecs a side with `profile` is offered, in the offerer's order: the allowed ones (at
/// most `max_codecs`), then telephone-event and (if allowed) CN at the clock rates of those
/// (a telephone-event at another rate is kept when none matches).
fn filter_codecs(codecs: &[Codec], profile: &CodecProfile) -> Vec<Codec> {
    let mut keep = vec![false; codecs.len()];
    let mut n = 0;
    for (i, c) in codecs.iter().enumerate() {
        if c.is_dtmf() || c.is_cn() || !profile.allows(&c.encoding, c.clock_rate) {
            continue;
        }
        if profile.max_codecs.is_some_and(|max| n >= max) {
            break;
        }
        keep[i] = true;
        n += 1;
    }
    let rates: Vec<u32> = codecs.iter().zip(&keep).filter(|(_, k)| **k).map(|(c, _)| c.clock_rate).collect();
    let mut dtmf = false;
    for (i, c) in codecs.iter().enumerate() {
        if (c.is_dtmf() || (c.is_cn() && profile.allows(&c.encoding, c.clock_rate))) && rates.contains(&c.clock_rate) {
            keep[i] = true;
            dtmf |= c.is_dtmf();
        }
    }
    if !dtmf && n > 0 {
        if let Some(i) = codecs.iter().position(Codec::is_dtmf) {
            keep[i] = true;
        }
    }
    codecs.iter().zip(keep).filter(|(_, k)| *k).map(|(c, _)| c.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// SRTP

/// The key of a crypto line drbridge can use: a known suite, one `inline:` key of 30 bytes
/// (16 key + 14 salt), no MKI, no session parameters.
fn usable_key(c: &Crypto) -> Option<SrtpKey> {
    let suite = SrtpSuite::from_sdp_name(c.suite.trim_ascii())?;
    if c.session_params.is_some() || c.key_params.contains(';') {
        return None;
    }
    let first = c.key_params.trim_ascii().strip_prefix("inline:")?;
    if first.split('|').skip(1).any(|p| p.contains(':')) {
        return None; // MKI
    }
    let b64 = c.inline_key()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .ok()?;
    if raw.len() != 30 {
        return None;
    }
    let mut key = [0u8; 16];
    let mut salt = [0u8; 14];
    key.copy_from_slice(&raw[..16]);
    salt.copy_from_slice(&raw[16..]);
    Some(SrtpKey { suite, tag: c.tag, key, salt })
}

/// The crypto line of an offer drbridge accepts: the first usable one.
fn choose_offered_crypto(m: &Media) -> Option<SrtpKey> {
    m.cryptos().iter().find_map(usable_key)
}

/// Our `a=crypto` value: `<tag> <suite> inline:<key||salt, base64>|2^31`.
fn push_crypto_line(line: &mut String, tag: u32, suite: SrtpSuite, key: &SrtpKey) {
    let mut raw = [0u8; 30];
    raw[..16].copy_from_slice(&key.key);
    raw[16..].copy_from_slice(&key.salt);
    push_u64(line, tag.into());
    line.push(' ');
    line.push_str(suite.sdp_name());
    line.push_str(" inline:");
    base64::engine::general_purpose::STANDARD.encode_string(raw, line);
    line.push('|');
    line.push_str(KEY_LIFETIME);
}

// ---------------------------------------------------------------------------------------------
// Reading and writing

fn is_unspecified(c: Option<&Connection>) -> bool {
    c.and_then(Connection::ip).is_some_and(|ip| ip.is_unspecified())
}

/// The direction as it applies: a `c=0.0.0.0` (old-style hold) means "do not send to me".
fn effective_direction(d: Direction, unspecified_addr: bool) -> Direction {
    if !unspecified_addr {
        return d;
    }
    match d {
        Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
        Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
    }
}

/// The direction allowing only what both allow.
fn intersect(a: Direction, b: Direction) -> Direction {
    match (a.sends() && b.sends(), a.receives() && b.receives()) {
        (true, true) => Direction::SendRecv,
        (true, false) => Direction::SendOnly,
        (false, true) => Direction::RecvOnly,
        (false, false) => Direction::Inactive,
    }
}

/// What the sender of `sdp` told us about media section `idx`.
fn remote_of(sdp: &Sdp, idx: usize, rtcp_mux: bool, srtp: Option<SrtpKey>) -> Result<RemoteMedia, MediaError> {
    let m = sdp.media.get(idx).ok_or_else(|| MediaError::BadSdp("no such media section".into()))?;
    let conn = sdp.media_connection(idx);
    let ip = conn.as_ref().and_then(Connection::ip);
    if conn.is_some() && ip.is_none() {
        return Err(MediaError::BadSdp("c= address is not an IP address".into()));
    }
    let usable_ip = ip.filter(|ip| !ip.is_unspecified());
    let rtp = usable_ip.filter(|_| m.port != 0).map(|ip| SocketAddr::new(ip, m.port));
    let rtcp = if rtcp_mux {
        rtp
    } else {
        match m.rtcp() {
            Some(Rtcp { port, connection }) => {
                let rip = connection.as_ref().and_then(Connection::ip).or(usable_ip).filter(|ip| !ip.is_unspecified());
                rip.filter(|_| port != 0).map(|ip| SocketAddr::new(ip, port))
            }
            None => rtp.and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p))),
        }
    };
    let direction = effective_direction(sdp.media_direction(idx), ip.is_some_and(|ip| ip.is_unspecified()));
    let ufrag = m.ice_ufrag().or(sdp.ice_ufrag());
    let pwd = m.ice_pwd().or(sdp.ice_pwd());
    let ice = match (ufrag, pwd) {
        (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {
            Some(IceCredentials { ufrag: u.to_string(), pwd: p.to_string() })
        }
        _ => None,
    };
    Ok(RemoteMedia {
        rtp,
        rtcp,
        rtcp_mux,
        srtp,
        ice,
        pt_map: Vec::new(),
        sends: direction.sends(),
        receives: direction.receives(),
    })
}

/// `v=0`, our `o=` (version set when stamped), `s=-`, our `c=`, `t=0 0`, `a=ice-lite`.
fn new_sdp(session: &SdpSession, local: &LocalMedia, ice_lite: bool) -> Sdp {
    let ip = local.rtp.ip();
    let mut sdp = Sdp::new(&session.origin(ip), Some(&Connection::from_ip(ip)));
    if ice_lite {
        sdp.push_attr("ice-lite", "");
    }
    sdp
}

/// Our audio section (`offer`: in an offer, else an answer): `like` gives ptime/maxptime; `codecs` the formats (with their fmtp).
#[allow(clippy::too_many_arguments)]
fn audio_section(
    like: &Media,
    codecs: &[Codec],
    local: &LocalMedia,
    direction: Direction,
    rtcp_mux: bool,
    ice: Option<&IceCredentials>,
    crypto: Option<(u32, SrtpSuite, &SrtpKey)>,
    offer: bool,
) -> Media {
    // The section is new: every line is pushed after the others (each `set_*` would first
    // look for a line to replace; the order written is the same). Lines are written into one
    // buffer with `push_u64`/`push_ip`, not `format!`: formatting was about half of the
    // instructions of building an SDP (callgrind, seventh pass).
    let mut line = String::with_capacity(96);
    let pts: Vec<SipStr> = codecs.iter().map(|c| SipStr::from_u64(c.pt.into())).collect();
    let pts: Vec<&str> = pts.iter().map(|p| p.as_str()).collect();
    let proto = if crypto.is_some() { "RTP/SAVP" } else { "RTP/AVP" };
    let mut m = Media::new("audio", local.rtp.port(), proto, &pts);
    for c in codecs {
        line.clear();
        push_u64(&mut line, c.pt.into());
        line.push(' ');
        line.push_str(&c.encoding);
        line.push('/');
        push_u64(&mut line, c.clock_rate.into());
        if c.channels != 1 {
            line.push('/');
            push_u64(&mut line, c.channels.into());
        }
        m.push_attr("rtpmap", &line);
        if let Some(f) = c.fmtp.as_deref().filter(|f| !f.is_empty()) {
            line.clear();
            push_u64(&mut line, c.pt.into());
            line.push(' ');
            line.push_str(f);
            m.push_attr("fmtp", &line);
        }
    }
    if let Some(p) = like.ptime() {
        m.push_attr("ptime", &SipStr::from_u64(p.into()));
    }
    if let Some(p) = like.attr("maxptime").map(str::trim_ascii).filter(|p| p.parse::<u32>().is_ok()) {
        m.push_attr("maxptime", p);
    }
    m.push_attr(direction.as_str(), "");
    let muxed_answer = rtcp_mux && !offer;
    let rtcp_port = if muxed_answer { local.rtp.port() } else { local.rtcp.port() };
    // A component 2 candidate for a separate RTCP port: in offers (fallback if mux is
    // refused) and in answers that do not mux.
    let separate_rtcp = !muxed_answer && local.rtcp != local.rtp;
    if rtcp_mux {
        // RFC 5761 5.1.3: in an offer a=rtcp names the fallback port; in an answer that
        // accepts mux, the RTP port.
        m.push_attr("rtcp", &SipStr::from_u64(rtcp_port.into()));
        m.push_attr("rtcp-mux", "");
    } else if rtcp_port != local.rtp.port().wrapping_add(1) || local.rtcp.ip() != local.rtp.ip() {
        let connection = (local.rtcp.ip() != local.rtp.ip()).then(|| Connection::from_ip(local.rtcp.ip()));
        m.push_attr("rtcp", &Rtcp { port: rtcp_port, connection }.to_string());
    }
    if let Some(ice) = ice {
        m.push_attr("ice-ufrag", &ice.ufrag);
        m.push_attr("ice-pwd", &ice.pwd);
        let mut candidate = |component: u64, priority: u32, addr: SocketAddr, line: &mut String| {
            line.clear();
            line.push_str("1 ");
            push_u64(line, component);
            line.push_str(" UDP ");
            push_u64(line, priority.into());
            line.push(' ');
            line.push_str(&SipStr::from_ip(addr.ip()));
            line.push(' ');
            push_u64(line, addr.port().into());
            line.push_str(" typ host");
            m.push_attr("candidate", line);
        };
        candidate(1, HOST_PRIORITY, local.rtp, &mut line);
        if separate_rtcp {
            candidate(2, HOST_PRIORITY - 1, SocketAddr::new(local.rtcp.ip(), rtcp_port), &mut line);
        }
    }
    if let Some((tag, suite, key)) = crypto {
        line.clear();
        push_crypto_line(&mut line, tag, suite, key);
        m.push_attr("crypto", &line);
    }
    m
}

#[cfg(test)]
#[path = "sdp_tests.rs"]
mod tests;
