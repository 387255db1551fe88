//! Media test support: RTP packets, pcap files (what SIPp plays), the media part of SDP bodies,
//! an SRTP endpoint with ICE credentials (the Teams media stack: SDES keys, STUN checks as a
//! controlling full agent) and a plain RTP endpoint (the PBX).
//!
//! SRTP and STUN come from drbridge itself (`drbridge::media::srtp::SrtpStream`,
//! `drbridge::media::stun::{build_check, verify_success}`); their own unit tests check them
//! against libsrtp known answers and the STUN RFCs. Everything else here is written
//! independently of drbridge's SDP code, so the tests do not read drbridge's output with the code
//! that wrote it. Every receive is bounded.

use super::util::{base64, loopback, token};
use base64::Engine as _;
use drbridge::media::srtp::{SrtpError, SrtpStream, MAX_TRAILER};
use drbridge::media::stun::{build_check, classify, verify_success, PacketKind};
use drbridge::media::{IceCredentials, SrtpKey, SrtpSuite};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// SIPp's sample files (Debian package sip-tester).
pub const SIPP_PCAP_DIR: &str = "/usr/share/sip-tester";

/// G.711 A-law audio, 236 packets of 30 ms (240 bytes) over 7.05 s, PT 8.
pub fn g711a_pcap() -> PathBuf {
    Path::new(SIPP_PCAP_DIR).join("g711a.pcap")
}

/// RFC 4733 event for `digit` ("0".."9", "star", "pound"), PT 101.
pub fn dtmf_pcap(digit: &str) -> PathBuf {
    Path::new(SIPP_PCAP_DIR).join(format!("dtmf_2833_{digit}.pcap"))
}

/// True when SIPp's pcap files are installed (they come with SIPp).
pub fn pcaps_available() -> bool {
    g711a_pcap().exists() && dtmf_pcap("1").exists()
}

// ------------------------------------------------------------------ RTP

/// An RTP packet (RFC 3550), CSRCs and header extension dropped, padding removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtp {
    pub marker: bool,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

impl Rtp {
    pub fn new(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Rtp {
        Rtp { marker: false, pt, seq, ts, ssrc, payload: payload.to_vec() }
    }

    /// None when `b` is not a well-formed RTP version 2 packet.
    pub fn parse(b: &[u8]) -> Option<Rtp> {
        if b.len() < 12 || b[0] >> 6 != 2 {
            return None;
        }
        let cc = (b[0] & 0x0f) as usize;
        let mut off = 12 + 4 * cc;
        if b[0] & 0x10 != 0 {
            let ext = b.get(off + 2..off + 4)?;
            off += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = *b.last()? as usize;
            end = end.checked_sub(pad)?;
        }
        if off > end {
            return None;
        }
        Some(Rtp {
            marker: b[1] & 0x80 != 0,
            pt: b[1] & 0x7f,
            seq: u16::from_be_bytes([b[2], b[3]]),
            ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: b[off..end].to_vec(),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + self.payload.len());
        p.push(0x80);
        p.push(self.pt & 0x7f | if self.marker { 0x80 } else { 0 });
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ts.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(&self.payload);
        p
    }
}

/// `n` packets of 20 ms G.711 A-law (PT 8) with recognisable payloads (160 bytes, first two
/// bytes = index), sequence numbers from `seq0`.
pub fn audio_packets(n: usize, ssrc: u32, seq0: u16) -> Vec<Rtp> {
    (0..n)
        .map(|i| {
            let mut payload = vec![0xd5u8; 160];
            payload[0] = (i >> 8) as u8;
            payload[1] = i as u8;
            payload[2] = (ssrc & 0xff) as u8;
            Rtp::new(8, seq0.wrapping_add(i as u16), 1000u32.wrapping_add(160 * i as u32), ssrc, &payload)
        })
        .collect()
}

// ------------------------------------------------------------------ pcap

/// The RTP packets of a classic pcap file (microsecond or nanosecond, either byte order;
/// link types Ethernet (with 802.1Q tags), raw IPv4 and Linux cooked), IPv4/UDP only, in file
/// order. Panics with the reason on a file it cannot read: the files are test inputs.
pub fn read_pcap_rtp(path: &Path) -> Vec<Rtp> {
    let d = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(d.len() >= 24, "{}: no pcap global header", path.display());
    let magic = [d[0], d[1], d[2], d[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("{}: not a classic pcap file (magic {magic:02x?})", path.display()),
    };
    let u32_at = |b: &[u8], o: usize| {
        let w = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le { u32::from_le_bytes(w) } else { u32::from_be_bytes(w) }
    };
    let linktype = u32_at(&d, 20);
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= d.len() {
        let incl = u32_at(&d, off + 8) as usize;
        off += 16;
        let Some(frame) = d.get(off..off + incl) else { panic!("{}: truncated record", path.display()) };
        off += incl;
        let ip = match linktype {
            1 => {
                // Ethernet, skipping 802.1Q tags
                let mut o = 12;
                let mut ethertype = u16::from_be_bytes([frame[o], frame[o + 1]]);
                while ethertype == 0x8100 {
                    o += 4;
                    ethertype = u16::from_be_bytes([frame[o], frame[o + 1]]);
                }
                if ethertype != 0x0800 {
                    continue;
                }
                &frame[o + 2..]
            }
            101 | 228 => frame,
            113 => {
                if u16::from_be_bytes([frame[14], frame[15]]) != 0x0800 {
                    continue;
                }
                &frame[16..]
            }
            other => panic!("{}: link type {other} not supported", path.display()),
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let Some(udp) = ip.get(ihl..) else { continue };
        if udp.len() < 8 {
            continue;
        }
        let ulen = (u16::from_be_bytes([udp[4], udp[5]]) as usize).min(udp.len());
        if let Some(rtp) = udp.get(8..ulen).and_then(Rtp::parse) {
            out.push(rtp);
        }
    }
    out
}

// ------------------------------------------------------------------ SDP

/// The audio stream of an SDP body, as a test needs it. Parsed line by line here (not with
/// drbridge's SDP code).
#[derive(Clone, Debug, Default)]
pub struct SdpMedia {
    /// Every address of a `c=` line (session and media level), as written.
    pub connections: Vec<String>,
    /// The address that applies to the audio stream (media level, else session level).
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub proto: String,
    pub payload_types: Vec<u8>,
    /// `(pt, "encoding/rate")` from `a=rtpmap`.
    pub rtpmap: Vec<(u8, String)>,
    /// Usable SDES keys from `a=crypto` (inline key of 30 bytes), in order.
    pub cryptos: Vec<SrtpKey>,
    /// Raw `a=crypto` lines (count, for assertions).
    pub crypto_lines: Vec<String>,
    pub ice: Option<IceCredentials>,
    pub ice_lite: bool,
    /// `a=candidate` addresses.
    pub candidates: Vec<SocketAddr>,
    pub rtcp_mux: bool,
    pub rtcp_port: Option<u16>,
    /// sendrecv / sendonly / recvonly / inactive (sendrecv when absent).
    pub direction: String,
}

impl SdpMedia {
    /// Panics when `body` has no audio stream: every test SDP must have one.
    pub fn parse(body: &str) -> SdpMedia {
        let mut m = SdpMedia { direction: "sendrecv".into(), ..Default::default() };
        let mut in_audio = false;
        let mut seen_audio = false;
        let mut session_ip = None;
        let mut media_ip = None;
        let mut session_ice = (None, None);
        let mut media_ice = (None, None);
        let mut session_dir = None;
        let mut media_dir = None;
        for line in body.lines().map(str::trim) {
            let Some((k, v)) = line.split_once('=') else { continue };
            if k == "m" {
                in_audio = !seen_audio && v.starts_with("audio ");
                if in_audio {
                    seen_audio = true;
                    let f: Vec<&str> = v.split_whitespace().collect();
                    m.port = f.get(1).and_then(|p| p.split('/').next()?.parse().ok()).unwrap_or(0);
                    m.proto = f.get(2).unwrap_or(&"").to_string();
                    m.payload_types = f.iter().skip(3).filter_map(|p| p.parse().ok()).collect();
                }
                continue;
            }
            let session = !seen_audio;
            if !session && !in_audio {
                continue;
            }
            match k {
                "c" => {
                    let addr = v.split_whitespace().nth(2).unwrap_or("").to_string();
                    let ip = addr.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
                    m.connections.push(addr);
                    if session { session_ip = ip } else { media_ip = ip }
                }
                "a" => {
                    let (name, val) = v.split_once(':').unwrap_or((v, ""));
                    match name {
                        "rtpmap" => {
                            if let Some((pt, enc)) = val.split_once(' ') {
                                if let Ok(pt) = pt.parse() {
                                    m.rtpmap.push((pt, enc.trim().to_string()));
                                }
                            }
                        }
                        "crypto" => {
                            m.crypto_lines.push(val.to_string());
                            if let Some(k) = parse_crypto(val) {
                                m.cryptos.push(k);
                            }
                        }
                        "ice-ufrag" => {
                            if session { session_ice.0 = Some(val.to_string()) } else { media_ice.0 = Some(val.to_string()) }
                        }
                        "ice-pwd" => {
                            if session { session_ice.1 = Some(val.to_string()) } else { media_ice.1 = Some(val.to_string()) }
                        }
                        "ice-lite" => m.ice_lite = true,
                        "candidate" => {
                            let f: Vec<&str> = val.split_whitespace().collect();
                            if let (Some(ip), Some(port)) = (f.get(4).and_then(|i| i.parse::<IpAddr>().ok()), f.get(5).and_then(|p| p.parse::<u16>().ok())) {
                                m.candidates.push(SocketAddr::new(ip, port));
                            }
                        }
                        "rtcp-mux" => m.rtcp_mux = true,
                        "rtcp" => m.rtcp_port = val.split_whitespace().next().and_then(|p| p.parse().ok()),
                        "sendrecv" | "sendonly" | "recvonly" | "inactive" => {
                            if session { session_dir = Some(name.to_string()) } else { media_dir = Some(name.to_string()) }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        assert!(seen_audio, "no m=audio in SDP:\n{body}");
        m.ip = media_ip.or(session_ip);
        let ufrag = media_ice.0.or(session_ice.0);
        let pwd = media_ice.1.or(session_ice.1);
        if let (Some(ufrag), Some(pwd)) = (ufrag, pwd) {
            m.ice = Some(IceCredentials { ufrag, pwd });
        }
        if let Some(d) = media_dir.or(session_dir) {
            m.direction = d;
        }
        m
    }

    /// Where RTP for this stream goes (panics without a usable address).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.expect("c= address"), self.port)
    }

    /// The payload type of `encoding` (case-insensitive name, e.g. "telephone-event"), from the
    /// rtpmap lines or the static table (PCMU 0, PCMA 8).
    pub fn pt_of(&self, encoding: &str) -> Option<u8> {
        let dynamic = self.rtpmap.iter().find(|(pt, e)| {
            self.payload_types.contains(pt) && e.split('/').next().is_some_and(|n| n.eq_ignore_ascii_case(encoding))
        });
        if let Some((pt, _)) = dynamic {
            return Some(*pt);
        }
        let stat = match encoding.to_ascii_uppercase().as_str() {
            "PCMU" => 0,
            "PCMA" => 8,
            _ => return None,
        };
        self.payload_types.contains(&stat).then_some(stat)
    }

    /// The first usable SDES key (panics without one).
    pub fn key(&self) -> SrtpKey {
        self.cryptos.first().cloned().unwrap_or_else(|| panic!("no usable a=crypto in {:?}", self.crypto_lines))
    }

    /// The ICE credentials (panics without them).
    pub fn ice(&self) -> IceCredentials {
        self.ice.clone().expect("a=ice-ufrag and a=ice-pwd")
    }

    /// Every port the SDP names (m=, a=rtcp, candidates).
    pub fn ports(&self) -> Vec<u16> {
        let mut p = vec![self.port];
        p.extend(self.rtcp_port);
        p.extend(self.candidates.iter().map(|c| c.port()));
        p
    }
}

/// `1 AES_CM_128_HMAC_SHA1_80 inline:<base64>|2^31` -> key (None for other forms).
fn parse_crypto(val: &str) -> Option<SrtpKey> {
    let mut f = val.split_whitespace();
    let tag = f.next()?.parse().ok()?;
    let suite = SrtpSuite::from_sdp_name(f.next()?)?;
    let inline = f.next()?.strip_prefix("inline:")?;
    let b64 = inline.split('|').next()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    if raw.len() != 30 {
        return None;
    }
    let mut key = [0u8; 16];
    let mut salt = [0u8; 14];
    key.copy_from_slice(&raw[..16]);
    salt.copy_from_slice(&raw[16..]);
    Some(SrtpKey { suite, tag, key, salt })
}

/// The SDP body of a SIP message as text (from SIPp's message log: after the blank line).
pub fn body_of(message: &str) -> String {
    let m = message.replace("\r\n", "\n");
    m.split_once("\n\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// A PBX-style SDP (plain RTP, PCMA, PCMU, telephone-event 101) for `addr` (which may be
/// 0.0.0.0 for an RFC 2543 hold).
pub fn pbx_sdp(addr: SocketAddr, direction: &str) -> String {
    pbx_sdp_te(addr, direction, 101)
}

/// The same with telephone-event as `te_pt`.
pub fn pbx_sdp_te(addr: SocketAddr, direction: &str, te_pt: u8) -> String {
    format!(
        "v=0\r\no=PBX 1 {v} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8 0 {te_pt}\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:{te_pt} telephone-event/8000\r\na=fmtp:{te_pt} 0-15\r\na=ptime:20\r\na={direction}\r\n",
        v = rand::random::<u16>(),
        ip = addr.ip(),
        port = addr.port(),
    )
}

// ------------------------------------------------------------------ endpoints

/// What one datagram on an SRTP endpoint was.
#[derive(Debug)]
pub struct SrtpReceived {
    pub from: SocketAddr,
    pub raw: Vec<u8>,
    /// The decrypted packet, or why not (a replayed duplicate, a bad tag...).
    pub plain: Result<Rtp, SrtpError>,
}

/// The media stack of a Teams endpoint: one UDP socket (RTP and RTCP muxed), its own SDES key
/// and ICE credentials, and the far end's (drbridge's) key once known.
pub struct SrtpEndpoint {
    pub sock: UdpSocket,
    pub key: SrtpKey,
    pub ice: IceCredentials,
    tx: SrtpStream,
    rx: Option<SrtpStream>,
    /// Media that arrived while `ice_check` waited for its answer.
    early: std::collections::VecDeque<(Vec<u8>, SocketAddr)>,
}

impl SrtpEndpoint {
    pub async fn bind() -> SrtpEndpoint {
        let sock = UdpSocket::bind(loopback(0)).await.expect("bind SRTP endpoint");
        let mut raw = [0u8; 30];
        rand::fill(&mut raw[..]);
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.copy_from_slice(&raw[..16]);
        salt.copy_from_slice(&raw[16..]);
        let key = SrtpKey { suite: SrtpSuite::AesCm128HmacSha1_80, tag: 1, key, salt };
        let ice = IceCredentials { ufrag: token(8), pwd: token(24) };
        let tx = SrtpStream::sender(&key).expect("SRTP sender");
        SrtpEndpoint { sock, key, ice, tx, rx: None, early: Default::default() }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// Our key as an `a=crypto` value under `tag` and our suite.
    fn crypto_value(&self, tag: u32) -> String {
        let mut raw = self.key.key.to_vec();
        raw.extend_from_slice(&self.key.salt);
        format!("{tag} {} inline:{}|2^31", self.key.suite.sdp_name(), base64(&raw))
    }

    /// A Teams-style SDP for this endpoint: RTP/SAVP, PCMA, PCMU, CN, telephone-event as
    /// `te_pt`, our crypto line under `crypto_tag`, our ICE credentials and host candidate,
    /// rtcp-mux, `a={direction}`.
    pub fn sdp(&self, direction: &str, te_pt: u8, crypto_tag: u32) -> String {
        let a = self.addr();
        let (ip, port) = (a.ip(), a.port());
        format!(
            "v=0\r\n\
o=- {sess} 0 IN IP4 {ip}\r\n\
s=session\r\n\
c=IN IP4 {ip}\r\n\
b=CT:10000000\r\n\
t=0 0\r\n\
m=audio {port} RTP/SAVP 8 0 13 {te_pt}\r\n\
c=IN IP4 {ip}\r\n\
a=rtcp:{port}\r\n\
a=ice-ufrag:{ufrag}\r\n\
a=ice-pwd:{pwd}\r\n\
a=candidate:1 1 UDP 2130706431 {ip} {port} typ host\r\n\
a=candidate:1 2 UDP 2130705918 {ip} {port} typ host\r\n\
a=crypto:{crypto}\r\n\
a=maxptime:200\r\n\
a=rtcp-mux\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:{te_pt} telephone-event/8000\r\n\
a=fmtp:{te_pt} 0-16\r\n\
a=ptime:20\r\n\
a={direction}\r\n",
            sess = rand::random::<u32>(),
            ufrag = self.ice.ufrag,
            pwd = self.ice.pwd,
            crypto = self.crypto_value(crypto_tag),
        )
    }

    /// Decrypt what arrives with `key` (drbridge's key from its SDP), replay protection on.
    pub fn set_remote_key(&mut self, key: &SrtpKey) {
        self.rx = Some(SrtpStream::receiver(key).expect("SRTP receiver"));
    }

    /// SRTCP with our key (RTCP is muxed on the RTP socket toward drbridge).
    pub fn protect_rtcp(&mut self, rtcp: &[u8]) -> Vec<u8> {
        let mut b = rtcp.to_vec();
        b.resize(rtcp.len() + MAX_TRAILER, 0);
        let n = self.tx.protect_rtcp(&mut b, rtcp.len()).expect("protect RTCP");
        b.truncate(n);
        b
    }

    /// Decrypts an SRTCP datagram received (with drbridge's key).
    pub fn unprotect_rtcp(&mut self, raw: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut b = raw.to_vec();
        let n = self.rx.as_mut().expect("set_remote_key first").unprotect_rtcp(&mut b)?;
        b.truncate(n);
        Ok(b)
    }

    /// The next datagram that is not STUN, undecoded (None after `wait`).
    pub async fn recv_raw(&mut self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        if let Some(e) = self.early.pop_front() {
            return Some(e);
        }
        let mut b = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut b)).await.ok()?.expect("recv");
            if classify(&b[..n]) != PacketKind::Stun {
                return Some((b[..n].to_vec(), from));
            }
        }
    }

    pub fn protect(&mut self, rtp: &Rtp) -> Vec<u8> {
        let mut b = rtp.to_bytes();
        let n = b.len();
        b.resize(n + MAX_TRAILER, 0);
        let n = self.tx.protect_rtp(&mut b, n).expect("protect");
        b.truncate(n);
        b
    }

    pub async fn send(&mut self, rtp: &Rtp, to: SocketAddr) {
        let p = self.protect(rtp);
        self.sock.send_to(&p, to).await.expect("send SRTP");
    }

    /// An ICE connectivity check as Teams (controlling, full ICE) sends it to drbridge's
    /// candidate `to` with drbridge's credentials `theirs`; asserts a Binding success from `to`
    /// with the same transaction id, valid MESSAGE-INTEGRITY (drbridge's pwd), a FINGERPRINT and
    /// XOR-MAPPED-ADDRESS = our address. Media arriving meanwhile is kept for `recv`.
    pub async fn ice_check(&mut self, to: SocketAddr, theirs: &IceCredentials, use_candidate: bool) {
        let req = build_check(&self.ice.ufrag, theirs, use_candidate);
        self.sock.send_to(&req, to).await.expect("send STUN");
        let (sock, early) = (&self.sock, &mut self.early);
        let resp = timeout(super::util::STEP, async {
            let mut b = vec![0u8; 2048];
            loop {
                let (n, from) = sock.recv_from(&mut b).await.expect("recv");
                if classify(&b[..n]) == PacketKind::Stun {
                    return (b[..n].to_vec(), from);
                }
                early.push_back((b[..n].to_vec(), from));
            }
        })
        .await
        .expect("no answer to the ICE check");
        let (resp, from) = resp;
        assert_eq!(from, to, "STUN answer from the candidate address");
        assert_eq!(&resp[8..20], &req[8..20], "transaction id echoed");
        assert_eq!(u16::from_be_bytes([resp[0], resp[1]]), 0x0101, "Binding success response");
        assert!(has_fingerprint(&resp), "FINGERPRINT in the answer");
        let mapped = verify_success(&resp, &theirs.pwd).expect("MESSAGE-INTEGRITY with drbridge's ice-pwd");
        assert_eq!(mapped, self.addr(), "XOR-MAPPED-ADDRESS = our address");
        assert!(verify_success(&resp, "wrong-password-wrong-pwd").is_none(), "integrity must depend on the pwd");
    }

    /// The next datagram that is not STUN (None after `wait`).
    pub async fn recv(&mut self, wait: Duration) -> Option<SrtpReceived> {
        let mut b = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (raw, from) = match self.early.pop_front() {
                Some(e) => e,
                None => {
                    let (n, from) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut b)).await.ok()?.expect("recv");
                    (b[..n].to_vec(), from)
                }
            };
            if classify(&raw) == PacketKind::Stun {
                continue;
            }
            let rx = self.rx.as_mut().expect("set_remote_key first");
            let mut p = raw.clone();
            let plain = rx.unprotect_rtp(&mut p).and_then(|n| Rtp::parse(&p[..n]).ok_or(SrtpError::Malformed));
            return Some(SrtpReceived { from, raw, plain });
        }
    }

    /// Receives until `want` packets decrypted or `wait` passed; returns every datagram
    /// (replayed duplicates and failures included, in order).
    pub async fn collect(&mut self, want: usize, wait: Duration) -> Vec<SrtpReceived> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut all: Vec<SrtpReceived> = Vec::new();
        while all.iter().filter(|r| r.plain.is_ok()).count() < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(r) = self.recv(left).await else { break };
            all.push(r);
        }
        all
    }
}

/// The packets that decrypted.
pub fn decrypted(all: &[SrtpReceived]) -> Vec<Rtp> {
    all.iter().filter_map(|r| r.plain.as_ref().ok().cloned()).collect()
}

/// True when the STUN message's last attribute is FINGERPRINT (0x8028).
fn has_fingerprint(msg: &[u8]) -> bool {
    msg.len() >= 28 && u16::from_be_bytes([msg[msg.len() - 8], msg[msg.len() - 7]]) == 0x8028
}

/// The PBX media: a plain RTP socket.
pub struct RtpEndpoint {
    pub sock: UdpSocket,
}

impl RtpEndpoint {
    pub async fn bind() -> RtpEndpoint {
        RtpEndpoint { sock: UdpSocket::bind(loopback(0)).await.expect("bind RTP endpoint") }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// An RTP socket on an even port and an RTCP socket on the next one (bounded attempts).
    pub async fn bind_pair() -> (RtpEndpoint, UdpSocket) {
        for _ in 0..50 {
            let rtp = UdpSocket::bind(loopback(0)).await.expect("bind");
            let port = rtp.local_addr().expect("addr").port();
            if port % 2 != 0 || port == u16::MAX {
                continue;
            }
            if let Ok(rtcp) = UdpSocket::bind(loopback(port + 1)).await {
                return (RtpEndpoint { sock: rtp }, rtcp);
            }
        }
        panic!("no free RTP/RTCP port pair on loopback");
    }

    pub async fn send(&self, rtp: &Rtp, to: SocketAddr) {
        self.sock.send_to(&rtp.to_bytes(), to).await.expect("send RTP");
    }

    /// The next RTP packet and its source (None after `wait`; non-RTP datagrams are skipped).
    pub async fn recv(&self, wait: Duration) -> Option<(Rtp, SocketAddr)> {
        let mut b = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut b)).await.ok()?.expect("recv");
            if let Some(r) = Rtp::parse(&b[..n]) {
                return Some((r, from));
            }
        }
    }

    /// Receives until `want` packets came or `wait` passed.
    pub async fn collect(&self, want: usize, wait: Duration) -> Vec<(Rtp, SocketAddr)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(r) = self.recv(left).await else { break };
            out.push(r);
        }
        out
    }
}

/// Sends `packets` from `send` paced at 20 ms (an interval, not a sleep: pacing, not
/// synchronisation).
pub async fn paced<F, Fut>(packets: &[Rtp], mut send: F)
where
    F: FnMut(Rtp) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for p in packets {
        tick.tick().await;
        send(p.clone()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_round_trip() {
        let mut r = Rtp::new(101, 65535, 7, 0xdeadbeef, &[1, 2, 3]);
        r.marker = true;
        assert_eq!(Rtp::parse(&r.to_bytes()), Some(r));
        assert_eq!(Rtp::parse(&[0x80; 11]), None);
    }

    #[test]
    fn sdp_media_reads_teams_sdp() {
        let m = SdpMedia::parse(&super::super::teams::teams_sdp(50_000, "inactive"));
        assert_eq!(m.addr(), "127.0.0.1:50000".parse().unwrap());
        assert_eq!(m.direction, "inactive");
        assert_eq!(m.cryptos.len(), 2);
        assert_eq!(m.pt_of("telephone-event"), Some(101));
        assert!(m.ice.is_some() && m.rtcp_mux);
    }
}
