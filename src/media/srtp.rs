//! SRTP/SRTCP (RFC 3711) for SDES keys (RFC 4568): AES_CM_128_HMAC_SHA1_80 and _32, in place.
//!
//! Written here rather than taken from a crate because the packet path must not allocate:
//! `rtc-srtp` (webrtc-rs' sans-IO SRTP, which drbridge used before) returns a new `BytesMut`
//! for every packet it protects or unprotects. This module encrypts, decrypts and authenticates
//! inside the caller's receive buffer and only needs room after the packet for the tag (and the
//! SRTCP index). It is built on the RustCrypto primitives:
//! - `aes` 0.8 (`Aes128Enc`, with its runtime AES-NI detection), expanded once per session key;
//! - `ctr` 0.9 (`Ctr128BE`) built per packet around a *reference* to that expanded cipher
//!   through `cipher::InnerIvInit`: no key expansion and no copy of the round keys per packet;
//! - `hmac` 0.12 + `sha1` 0.10 (SHA-NI detected at run time): the keyed HMAC state (ipad/opad
//!   absorbed) is computed once and cloned per packet;
//! - `subtle` for the constant-time tag comparison.
//!
//! What is implemented, and nothing more: key derivation (RFC 3711 4.3, key derivation rate 0,
//! no MKI), AES-CM (4.1.1), HMAC-SHA1 (4.2.1) with an 80- or 32-bit tag for SRTP and always 80
//! bits for SRTCP (RFC 4568 6.2.1), SRTCP always encrypted (E flag set, 31-bit index), rollover
//! counter estimation as in RFC 3711 Appendix A with libsrtp's guard for a fresh stream (no
//! guess of ROC-1 while the index is still below 2^15), and a 128-packet replay window per SSRC
//! for SRTP and for SRTCP on receive contexts. The state per SSRC lives in a small table created
//! with the context (at most [`MAX_SSRCS`]; the least recently used SSRC is forgotten when a new
//! one arrives on a full table); a receive context creates state only for a packet that
//! authenticated. Checked against libsrtp2's output and against `rtc-srtp` in the tests below.
//!
//! An SRTCP packet whose E flag is 0 is refused: drbridge never negotiates UNENCRYPTED_SRTCP,
//! so such a packet can only be forged or broken. Errors are a small enum that never carries
//! key material, and no key is reachable from `Debug`.

use super::{SrtpKey, SrtpSuite};
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128Enc;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;
type AesCtr<'a> = ctr::Ctr128BE<&'a Aes128Enc>;

/// AES-CM keystream from `iv` with an expanded key, borrowed (no copy of the round keys).
fn aes_ctr<'a>(enc: &'a Aes128Enc, iv: &[u8; 16]) -> AesCtr<'a> {
    AesCtr::from_core(ctr::CtrCore::inner_iv_init(enc, iv.into()))
}

/// Replay window (packets), as libsrtp's default.
pub const REPLAY_WINDOW: usize = 128;
/// SSRCs whose rollover counter / replay window a context tracks at once.
pub const MAX_SSRCS: usize = 16;
/// Room `protect_*` needs after the packet: the SRTCP index and the 80-bit tag.
pub const MAX_TRAILER: usize = 4 + SRTCP_TAG_LEN;

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    #[error("SRTP context could not be created")]
    Setup,
    #[error("packet too short or malformed")]
    Malformed,
    #[error("authentication failed")]
    Auth,
    #[error("replayed packet")]
    Replay,
    #[error("unencrypted SRTCP refused")]
    Unencrypted,
    /// No room after the packet for the trailer, or the SRTCP index is exhausted.
    #[error("SRTP protect failed")]
    Protect,
}

/// SRTP auth tag length of a suite (RTP). SRTCP always uses 80 bits (RFC 4568 6.2.1).
pub fn rtp_tag_len(suite: SrtpSuite) -> usize {
    match suite {
        SrtpSuite::AesCm128HmacSha1_80 => 10,
        SrtpSuite::AesCm128HmacSha1_32 => 4,
    }
}
const SRTCP_TAG_LEN: usize = 10;
const SEQ_MEDIAN: i64 = 1 << 15;
const SEQ_MAX: i64 = 1 << 16;
const SRTCP_INDEX_MAX: u32 = 0x7fff_ffff;

/// Session keys of one of the two protocols (SRTP or SRTCP).
struct SessionKeys {
    enc: Aes128Enc,
    salt: [u8; 14],
    auth: HmacSha1,
}

/// The AES round keys wipe themselves (`aes` with `zeroize`); the session salt is wiped here.
/// The HMAC state derived from the auth key is not (the `hmac` crate offers no way to).
impl Drop for SessionKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.salt.zeroize();
    }
}

impl SessionKeys {
    /// RFC 3711 4.3.1 with kdr = 0: labels (enc, auth, salt) = (0, 1, 2) for SRTP, (3, 4, 5) for SRTCP.
    fn derive(master: &Aes128Enc, master_salt: &[u8; 14], first_label: u8) -> SessionKeys {
        let mut key = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut salt = [0u8; 14];
        prf(master, master_salt, first_label, &mut key);
        prf(master, master_salt, first_label + 1, &mut auth);
        prf(master, master_salt, first_label + 2, &mut salt);
        let keys = SessionKeys {
            enc: Aes128Enc::new(&key.into()),
            salt,
            auth: <HmacSha1 as Mac>::new_from_slice(&auth).expect("HMAC takes keys of any length"),
        };
        // zeroize, not fill: writes to locals that are about to die may be optimized away
        zeroize::Zeroize::zeroize(&mut key);
        zeroize::Zeroize::zeroize(&mut auth);
        keys
    }

    /// XORs the AES-CM keystream of packet `index` of `ssrc` into `data` (RFC 3711 4.1.1):
    /// IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16).
    fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, i) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= i;
        }
        aes_ctr(&self.enc, &iv).apply_keystream(data);
    }

    /// HMAC-SHA1 over `a` then `b` (the packet, then the ROC for SRTP), all 20 bytes.
    fn tag(&self, a: &[u8], b: &[u8]) -> [u8; 20] {
        let mut m = self.auth.clone();
        m.update(a);
        m.update(b);
        m.finalize().into_bytes().into()
    }
}

/// AES-CM PRF of the key derivation: keystream from IV = (master_salt XOR label at byte 7) * 2^16.
fn prf(master: &Aes128Enc, master_salt: &[u8; 14], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    aes_ctr(master, &iv).apply_keystream(out);
}

/// Sliding window over a packet index: `top` is the highest index seen, bit k of `seen` is
/// index `top - k`.
#[derive(Clone, Copy, Default)]
struct ReplayWindow {
    top: u64,
    seen: u128,
}

impl ReplayWindow {
    /// `delta` = candidate index - top.
    fn check(&self, delta: i64) -> Result<(), SrtpError> {
        if delta > 0 {
            Ok(())
        } else if delta <= -(REPLAY_WINDOW as i64) || self.seen & (1u128 << (-delta) as u32) != 0 {
            Err(SrtpError::Replay)
        } else {
            Ok(())
        }
    }

    fn add(&mut self, delta: i64, index: u64) {
        if delta > 0 {
            self.seen = if delta >= REPLAY_WINDOW as i64 { 1 } else { (self.seen << delta as u32) | 1 };
            self.top = index;
        } else if delta > -(REPLAY_WINDOW as i64) {
            self.seen |= 1u128 << (-delta) as u32;
        }
    }
}

/// What a context remembers about one SSRC.
#[derive(Clone, Copy)]
struct SsrcState {
    ssrc: u32,
    last_used: u64,
    /// SRTP: highest 48-bit packet index (ROC * 2^16 + SEQ) and the window below it.
    rtp: ReplayWindow,
    /// SRTCP: receive: highest index and window; send: `top` is the last index sent.
    rtcp: ReplayWindow,
}

impl SsrcState {
    fn new(ssrc: u32) -> SsrcState {
        SsrcState { ssrc, last_used: 0, rtp: ReplayWindow::default(), rtcp: ReplayWindow::default() }
    }
}

/// The per-SSRC table: allocated once with the context, bounded, least recently used evicted.
struct SsrcTable {
    entries: Vec<SsrcState>,
    clock: u64,
}

impl SsrcTable {
    fn new() -> SsrcTable {
        SsrcTable { entries: Vec::with_capacity(MAX_SSRCS), clock: 0 }
    }

    fn find(&self, ssrc: u32) -> Option<usize> {
        self.entries.iter().position(|e| e.ssrc == ssrc)
    }

    /// Stores `st` (new or updated) as the most recently used entry.
    fn put(&mut self, at: Option<usize>, mut st: SsrcState) {
        self.clock += 1;
        st.last_used = self.clock;
        match at {
            Some(i) => self.entries[i] = st,
            None if self.entries.len() < MAX_SSRCS => self.entries.push(st),
            None => {
                let lru = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map_or(0, |(i, _)| i);
                self.entries[lru] = st;
            }
        }
    }

    fn get(&self, at: Option<usize>, ssrc: u32) -> SsrcState {
        at.map_or_else(|| SsrcState::new(ssrc), |i| self.entries[i])
    }
}

/// RFC 3711 Appendix A, as libsrtp: the 48-bit index a packet with `seq` most likely has given
/// the highest index seen (`top`), and its distance from `top`. While `top` is below 2^15 the
/// ROC is taken as 0 (a fresh stream never guesses ROC - 1).
fn estimate_index(top: u64, seq: u16) -> (u64, i64) {
    let s = seq as i64;
    if top <= SEQ_MEDIAN as u64 {
        return (seq as u64, s - top as i64);
    }
    let roc = (top >> 16) as u32;
    let local = (top & 0xffff) as i64;
    let (guess_roc, delta) = if local < SEQ_MEDIAN {
        if s - local > SEQ_MEDIAN {
            (roc.wrapping_sub(1), s - local - SEQ_MAX)
        } else {
            (roc, s - local)
        }
    } else if local - SEQ_MEDIAN > s {
        (roc.wrapping_add(1), s - local + SEQ_MAX)
    } else {
        (roc, s - local)
    };
    (((guess_roc as u64) << 16) | seq as u64, delta)
}

/// Length of the RTP header (fixed part, CSRCs, extension) of `pkt`, checked against its length.
fn rtp_header_len(pkt: &[u8]) -> Result<usize, SrtpError> {
    let first = *pkt.first().ok_or(SrtpError::Malformed)?;
    let mut len = 12 + 4 * (first & 0x0f) as usize;
    if first & 0x10 != 0 {
        let ext = pkt.get(len + 2..len + 4).ok_or(SrtpError::Malformed)?;
        len += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
    }
    if len > pkt.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One direction of one leg.
pub struct SrtpStream {
    suite: SrtpSuite,
    tag_len: usize,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    /// Receive context: replay protection on.
    replay: bool,
    ssrcs: SsrcTable,
}

impl std::fmt::Debug for SrtpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpStream").field("suite", &self.suite).field("replay", &self.replay).finish_non_exhaustive()
    }
}

impl SrtpStream {
    fn new(key: &SrtpKey, replay: bool) -> SrtpStream {
        let master = Aes128Enc::new(&key.key.into());
        SrtpStream {
            suite: key.suite,
            tag_len: rtp_tag_len(key.suite),
            rtp: SessionKeys::derive(&master, &key.salt, 0),
            rtcp: SessionKeys::derive(&master, &key.salt, 3),
            replay,
            ssrcs: SsrcTable::new(),
        }
    }

    /// A context that only protects (outgoing).
    pub fn sender(key: &SrtpKey) -> Result<Self, SrtpError> {
        Ok(SrtpStream::new(key, false))
    }

    /// A context that only unprotects (incoming), with replay protection.
    pub fn receiver(key: &SrtpKey) -> Result<Self, SrtpError> {
        Ok(SrtpStream::new(key, true))
    }

    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Encrypts the RTP packet `buf[..len]` in place and writes the tag after it; returns the
    /// SRTP length. `buf` must have room for the tag ([`rtp_tag_len`]).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let out_len = len.checked_add(self.tag_len).filter(|&n| n <= buf.len()).ok_or(SrtpError::Protect)?;
        let hl = rtp_header_len(&buf[..len])?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be32(buf, 8);
        let at = self.ssrcs.find(ssrc);
        let mut st = self.ssrcs.get(at, ssrc);
        let (index, delta) = estimate_index(st.rtp.top, seq);
        st.rtp.add(delta, index);
        self.ssrcs.put(at, st);
        self.rtp.apply_keystream(ssrc, index, &mut buf[hl..len]);
        let roc = ((index >> 16) as u32).to_be_bytes();
        let tag = self.rtp.tag(&buf[..len], &roc);
        buf[len..out_len].copy_from_slice(&tag[..self.tag_len]);
        Ok(out_len)
    }

    /// Authenticates and decrypts the SRTP packet `buf` in place; returns the RTP length.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let Some(len) = buf.len().checked_sub(self.tag_len) else { return Err(SrtpError::Malformed) };
        let hl = rtp_header_len(&buf[..len])?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be32(buf, 8);
        let at = self.ssrcs.find(ssrc);
        let mut st = self.ssrcs.get(at, ssrc);
        let (index, delta) = estimate_index(st.rtp.top, seq);
        if self.replay {
            st.rtp.check(delta)?;
        }
        let roc = ((index >> 16) as u32).to_be_bytes();
        let tag = self.rtp.tag(&buf[..len], &roc);
        if !bool::from(tag[..self.tag_len].ct_eq(&buf[len..])) {
            return Err(SrtpError::Auth);
        }
        self.rtp.apply_keystream(ssrc, index, &mut buf[hl..len]);
        st.rtp.add(delta, index);
        self.ssrcs.put(at, st);
        Ok(len)
    }

    /// Encrypts the RTCP compound packet `buf[..len]` in place and appends E || SRTCP index and
    /// the 80-bit tag; returns the SRTCP length. `buf` needs [`MAX_TRAILER`] bytes of room.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < 8 {
            return Err(SrtpError::Malformed);
        }
        let out_len = len.checked_add(MAX_TRAILER).filter(|&n| n <= buf.len()).ok_or(SrtpError::Protect)?;
        let ssrc = be32(buf, 4);
        let at = self.ssrcs.find(ssrc);
        let mut st = self.ssrcs.get(at, ssrc);
        if st.rtcp.top >= SRTCP_INDEX_MAX as u64 {
            return Err(SrtpError::Protect); // 2^31 SRTCP packets under one key
        }
        st.rtcp.top += 1;
        let index = st.rtcp.top;
        self.ssrcs.put(at, st);
        self.rtcp.apply_keystream(ssrc, index, &mut buf[8..len]);
        buf[len..len + 4].copy_from_slice(&(0x8000_0000 | index as u32).to_be_bytes());
        let tag = self.rtcp.tag(&buf[..len + 4], &[]);
        buf[len + 4..out_len].copy_from_slice(&tag[..SRTCP_TAG_LEN]);
        Ok(out_len)
    }

    /// Authenticates and decrypts the SRTCP packet `buf` in place; returns the RTCP length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        if buf.len() < 8 + MAX_TRAILER {
            return Err(SrtpError::Malformed);
        }
        let auth_len = buf.len() - SRTCP_TAG_LEN;
        let len = auth_len - 4;
        let e_index = be32(buf, len);
        if e_index & 0x8000_0000 == 0 {
            return Err(SrtpError::Unencrypted);
        }
        let index = (e_index & SRTCP_INDEX_MAX) as u64;
        let ssrc = be32(buf, 4);
        let at = self.ssrcs.find(ssrc);
        let mut st = self.ssrcs.get(at, ssrc);
        let delta = index as i64 - st.rtcp.top as i64;
        if self.replay {
            st.rtcp.check(delta)?;
        }
        let tag = self.rtcp.tag(&buf[..auth_len], &[]);
        if !bool::from(tag[..SRTCP_TAG_LEN].ct_eq(&buf[auth_len..])) {
            return Err(SrtpError::Auth);
        }
        self.rtcp.apply_keystream(ssrc, index, &mut buf[8..len]);
        st.rtcp.add(delta, index);
        self.ssrcs.put(at, st);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Protects a copy of `plain` (test convenience over the in-place API).
    fn protect(tx: &mut SrtpStream, plain: &[u8]) -> Vec<u8> {
        let mut b = plain.to_vec();
        b.resize(plain.len() + MAX_TRAILER, 0);
        let n = tx.protect_rtp(&mut b, plain.len()).unwrap();
        b.truncate(n);
        b
    }
    fn protect_rtcp(tx: &mut SrtpStream, plain: &[u8]) -> Vec<u8> {
        let mut b = plain.to_vec();
        b.resize(plain.len() + MAX_TRAILER, 0);
        let n = tx.protect_rtcp(&mut b, plain.len()).unwrap();
        b.truncate(n);
        b
    }
    fn unprotect(rx: &mut SrtpStream, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut b = srtp.to_vec();
        let n = rx.unprotect_rtp(&mut b)?;
        b.truncate(n);
        Ok(b)
    }
    fn unprotect_rtcp(rx: &mut SrtpStream, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut b = srtcp.to_vec();
        let n = rx.unprotect_rtcp(&mut b)?;
        b.truncate(n);
        Ok(b)
    }

    /// libsrtp's srtp_driver test key (master key || master salt).
    fn kat_key(suite: SrtpSuite) -> SrtpKey {
        let km = unhex("e1f97a0d3e018be0d64fa32c06de41390ec675ad498afeebb6960b3aabe6");
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.copy_from_slice(&km[..16]);
        salt.copy_from_slice(&km[16..]);
        SrtpKey { suite, tag: 1, key, salt }
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0x0f, (seq >> 8) as u8, seq as u8, 0xde, 0xca, 0xfb, 0xad, 0xca, 0xfe, 0xba, 0xbe];
        p.extend_from_slice(&[0xab; 16]);
        p
    }

    // Known answers produced with libsrtp2 2.5 (Debian libsrtp2-dev, srtp_protect /
    // srtp_protect_rtcp, see the report); rtp80_1234 is also libsrtp's own srtp_driver vector.
    const RTP80_1234: &str = "800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb";
    const RTP80_ROC1_0000: &str = "800f0000decafbadcafebabe24ecf92d9c97bf2ac679b796fdfd365a267beecdc56456590e62";
    const RTP32_1234: &str = "800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc";
    const RTP32_ROC1_0000: &str = "800f0000decafbadcafebabe24ecf92d9c97bf2ac679b796fdfd365a267beecd";
    const SRTCP_1: &str = "81c80005cafebabedb81abf44a2a151e1c5930e65fd2011380000001d2b85c86240c1d1d2338";

    #[test]
    fn known_answers_match_libsrtp() {
        for (suite, first, after_wrap) in [
            (SrtpSuite::AesCm128HmacSha1_80, RTP80_1234, RTP80_ROC1_0000),
            (SrtpSuite::AesCm128HmacSha1_32, RTP32_1234, RTP32_ROC1_0000),
        ] {
            let mut tx = SrtpStream::sender(&kat_key(suite)).unwrap();
            assert_eq!(&protect(&mut tx, &rtp(0x1234))[..], &unhex(first)[..]);
            protect(&mut tx, &rtp(0xffff));
            // sequence wrapped: ROC = 1 goes into the keystream and the auth tag
            assert_eq!(&protect(&mut tx, &rtp(0x0000))[..], &unhex(after_wrap)[..]);

            let mut rx = SrtpStream::receiver(&kat_key(suite)).unwrap();
            assert_eq!(&unprotect(&mut rx, &unhex(first)).unwrap()[..], &rtp(0x1234)[..]);
        }
        let mut tx = SrtpStream::sender(&kat_key(SrtpSuite::AesCm128HmacSha1_80)).unwrap();
        let mut rtcp = vec![0x81, 0xc8, 0x00, 0x05, 0xca, 0xfe, 0xba, 0xbe];
        rtcp.extend(1..=16u8);
        assert_eq!(&protect_rtcp(&mut tx, &rtcp)[..], &unhex(SRTCP_1)[..]);
        let mut rx = SrtpStream::receiver(&kat_key(SrtpSuite::AesCm128HmacSha1_80)).unwrap();
        assert_eq!(&unprotect_rtcp(&mut rx, &unhex(SRTCP_1)).unwrap()[..], &rtcp[..]);
    }

    #[test]
    fn key_derivation_matches_rfc3711_b3() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let master = Aes128Enc::new(&k.key.into());
        let mut out = [0u8; 20];
        prf(&master, &k.salt, 0, &mut out[..16]);
        assert_eq!(&out[..16], &unhex("c61e7a93744f39ee10734afe3ff7a087")[..]);
        prf(&master, &k.salt, 2, &mut out[..14]);
        assert_eq!(&out[..14], &unhex("30cbbc08863d8c85d49db34a9ae1")[..]);
        prf(&master, &k.salt, 1, &mut out);
        assert_eq!(&out[..], &unhex("cebe321f6ff7716b6fd4ab49af256a156d38baa4")[..]);
    }

    #[test]
    fn roc_across_sequence_wrap() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut tx = SrtpStream::sender(&k).unwrap();
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let mut seq = 65500u16;
        for _ in 0..100 {
            let p = protect(&mut tx, &rtp(seq));
            assert_eq!(&unprotect(&mut rx, &p).unwrap()[..], &rtp(seq)[..], "seq {seq}");
            seq = seq.wrapping_add(1);
        }
        // a receiver that never saw the wrap assumes ROC 0: the ROC-1 packet does not authenticate
        let mut fresh = SrtpStream::receiver(&k).unwrap();
        assert_eq!(unprotect(&mut fresh, &unhex(RTP80_ROC1_0000)), Err(SrtpError::Auth));
    }

    #[test]
    fn replay_rejected_rtp_and_rtcp() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_32);
        let mut tx = SrtpStream::sender(&k).unwrap();
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let p1 = protect(&mut tx, &rtp(10));
        let p2 = protect(&mut tx, &rtp(11));
        assert!(unprotect(&mut rx, &p2).is_ok());
        assert!(unprotect(&mut rx, &p1).is_ok()); // reordered inside the window: fine
        assert_eq!(unprotect(&mut rx, &p1), Err(SrtpError::Replay));
        assert_eq!(unprotect(&mut rx, &p2), Err(SrtpError::Replay));
        // far behind the window
        let mut seq = 12u16;
        let old = protect(&mut tx, &rtp(seq));
        for _ in 0..300 {
            seq += 1;
            let p = protect(&mut tx, &rtp(seq));
            unprotect(&mut rx, &p).unwrap();
        }
        assert_eq!(unprotect(&mut rx, &old), Err(SrtpError::Replay));

        let mut rtcp = vec![0x81, 0xc8, 0x00, 0x01, 1, 2, 3, 4];
        rtcp.extend_from_slice(&[9; 4]);
        let c = protect_rtcp(&mut tx, &rtcp);
        assert_eq!(&unprotect_rtcp(&mut rx, &c).unwrap()[..], &rtcp[..]);
        assert_eq!(unprotect_rtcp(&mut rx, &c), Err(SrtpError::Replay));
    }

    #[test]
    fn replay_window_edges_and_reordering() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut tx = SrtpStream::sender(&k).unwrap();
        let pkts: Vec<Vec<u8>> = (0..300u16).map(|s| protect(&mut tx, &rtp(s.wrapping_add(65400)))).collect();
        let mut rx = SrtpStream::receiver(&k).unwrap();
        unprotect(&mut rx, &pkts[0]).unwrap();
        // 200 later, past the wrap (65400 + 136 = seq 0, ROC 1)
        unprotect(&mut rx, &pkts[200]).unwrap();
        // 127 behind the highest: inside the window; 128 behind: outside
        assert!(unprotect(&mut rx, &pkts[73]).is_ok());
        assert_eq!(unprotect(&mut rx, &pkts[72]), Err(SrtpError::Replay));
        // reordered on both sides of the wrap
        for i in [140, 130, 137, 135, 136, 299, 250] {
            assert_eq!(&unprotect(&mut rx, &pkts[i]).unwrap()[2..4], &rtp(65400u16.wrapping_add(i as u16))[2..4]);
        }
        // a failed authentication does not move the window
        let mut bad = pkts[298].clone();
        bad[20] ^= 1;
        assert_eq!(unprotect(&mut rx, &bad), Err(SrtpError::Auth));
        assert!(unprotect(&mut rx, &pkts[298]).is_ok());
    }

    #[test]
    fn ssrc_table_is_bounded_and_forgets_the_least_recently_used() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut tx = SrtpStream::sender(&k).unwrap();
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let with_ssrc = |seq: u16, ssrc: u32| {
            let mut p = rtp(seq);
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            p
        };
        let first = protect(&mut tx, &with_ssrc(1, 1000));
        unprotect(&mut rx, &first).unwrap();
        for ssrc in 0..(MAX_SSRCS as u32 + 4) {
            let p = protect(&mut tx, &with_ssrc(5, ssrc));
            unprotect(&mut rx, &p).unwrap();
            assert!(rx.ssrcs.entries.len() <= MAX_SSRCS && tx.ssrcs.entries.len() <= MAX_SSRCS);
        }
        assert_eq!(rx.ssrcs.entries.capacity(), MAX_SSRCS, "no growth past the table");
        assert!(rx.ssrcs.find(1000).is_none(), "least recently used forgotten");
        assert!(rx.ssrcs.find(MAX_SSRCS as u32 + 3).is_some());
    }

    #[test]
    fn tampering_and_wrong_keys_fail_auth() {
        for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AesCm128HmacSha1_32] {
            let k = kat_key(suite);
            let mut tx = SrtpStream::sender(&k).unwrap();
            let p = protect(&mut tx, &rtp(1));
            assert_eq!(p.len(), 28 + rtp_tag_len(suite));
            let mut bad = p.to_vec();
            bad[20] ^= 1;
            let mut rx = SrtpStream::receiver(&k).unwrap();
            assert_eq!(unprotect(&mut rx, &bad), Err(SrtpError::Auth));
            let mut other = k.clone();
            other.key[0] ^= 1;
            let mut rx2 = SrtpStream::receiver(&other).unwrap();
            assert_eq!(unprotect(&mut rx2, &p), Err(SrtpError::Auth));
            assert!(unprotect(&mut rx, &p).is_ok());
        }
    }

    #[test]
    fn srtcp_with_e_flag_clear_is_refused() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let mut c = unhex(SRTCP_1);
        let e = c.len() - 10 - 4;
        c[e] &= 0x7f;
        assert_eq!(unprotect_rtcp(&mut rx, &c), Err(SrtpError::Unencrypted));
        let mut t = unhex(SRTCP_1);
        let n = t.len();
        t[n - 1] ^= 1;
        assert_eq!(unprotect_rtcp(&mut rx, &t), Err(SrtpError::Auth));
    }

    #[test]
    fn protect_needs_room_for_the_trailer() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut tx = SrtpStream::sender(&k).unwrap();
        let mut b = rtp(1);
        let n = b.len();
        assert_eq!(tx.protect_rtp(&mut b, n), Err(SrtpError::Protect));
        b.resize(n + 9, 0);
        assert_eq!(tx.protect_rtp(&mut b, n), Err(SrtpError::Protect));
        b.resize(n + 10, 0);
        assert_eq!(tx.protect_rtp(&mut b, n), Ok(n + 10));
        let mut c = vec![0x81, 0xc8, 0, 1, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(tx.protect_rtcp(&mut c, 8), Err(SrtpError::Protect));
        assert_eq!(tx.protect_rtcp(&mut c, 7), Err(SrtpError::Malformed));
        c.push(0);
        assert_eq!(tx.protect_rtcp(&mut c, 8), Ok(22));
        // a header that claims more than the packet holds
        let mut h = vec![0x9f; 40];
        assert_eq!(tx.protect_rtp(&mut h, 20), Err(SrtpError::Malformed));
    }

    #[test]
    fn garbage_never_panics() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let tx = SrtpStream::sender(&k).unwrap();
        let good = unhex(RTP80_1234);
        for cut in 0..good.len() {
            let _ = unprotect(&mut rx, &good[..cut]);
            let _ = unprotect_rtcp(&mut rx, &good[..cut]);
        }
        // header claims CSRCs and an extension that are not there
        let mut p = good.clone();
        p[0] = 0x9f;
        let _ = unprotect(&mut rx, &p);
        use proptest::prelude::*;
        let st = std::cell::RefCell::new((rx, tx));
        proptest!(ProptestConfig::with_cases(2000), |(data in proptest::collection::vec(any::<u8>(), 0..200), room in 0usize..20)| {
            let (rx, tx) = &mut *st.borrow_mut();
            let _ = unprotect(rx, &data);
            let _ = unprotect_rtcp(rx, &data);
            let mut b = data.clone();
            b.resize(data.len() + room, 0);
            let _ = tx.protect_rtp(&mut b, data.len());
            let _ = tx.protect_rtcp(&mut b, data.len());
            let past = b.len() + 1;
            let _ = tx.protect_rtp(&mut b, past);
        });
    }

    #[test]
    fn keys_not_in_debug() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let tx = SrtpStream::sender(&k).unwrap();
        let d = format!("{tx:?} {k:?}");
        assert!(!d.contains("225") && !d.contains('['), "no key bytes: {d}");
    }

    /// Same output as `rtc-srtp` (webrtc-rs) both ways: random payloads, CSRCs, extension
    /// headers, several SSRCs, sequence numbers across the wrap, RTCP.
    #[test]
    fn cross_check_with_rtc_srtp() {
        use rtc_srtp::context::Context;
        use rtc_srtp::protection_profile::ProtectionProfile;
        let provider = rtc_srtp::crypto::default_provider().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AesCm128HmacSha1_32] {
            let profile = match suite {
                SrtpSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
                SrtpSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            };
            let mut key = SrtpKey { suite, tag: 1, key: [0; 16], salt: [0; 14] };
            key.key.iter_mut().chain(key.salt.iter_mut()).for_each(|b| *b = rnd() as u8);
            let ctx = || Context::new(&key.key, &key.salt, profile, None, None, provider.crypto()).unwrap();
            let (mut theirs_tx, mut theirs_rx) = (ctx(), ctx());
            let mut ours_tx = SrtpStream::sender(&key).unwrap();
            let mut ours_rx = SrtpStream::receiver(&key).unwrap();
            let ssrcs = [0x1111_1111u32, 0xdead_beef, rnd() as u32];
            let mut seqs = [65_000u16, 65_530, 100];
            for i in 0..3000 {
                let s = i % 3;
                let seq = seqs[s];
                seqs[s] = seqs[s].wrapping_add(1);
                let cc = (rnd() % 4) as usize;
                let ext = rnd() % 3 == 0;
                let mut p = vec![0x80 | (cc as u8) | if ext { 0x10 } else { 0 }, (rnd() % 128) as u8];
                p.extend_from_slice(&seq.to_be_bytes());
                p.extend_from_slice(&(rnd() as u32).to_be_bytes());
                p.extend_from_slice(&ssrcs[s].to_be_bytes());
                (0..cc * 4).for_each(|_| p.push(rnd() as u8));
                if ext {
                    let words = (rnd() % 4) as u16;
                    p.extend_from_slice(&[0x12, 0x34]);
                    p.extend_from_slice(&words.to_be_bytes());
                    (0..words * 4).for_each(|_| p.push(rnd() as u8));
                }
                (0..rnd() % 300).for_each(|_| p.push(rnd() as u8));
                let ours = protect(&mut ours_tx, &p);
                let reference = theirs_tx.encrypt_rtp(&p).unwrap();
                assert_eq!(ours, &reference[..], "packet {i} seq {seq} cc {cc} ext {ext}");
                assert_eq!(&theirs_rx.decrypt_rtp(&ours).unwrap()[..], &p[..]);
                assert_eq!(unprotect(&mut ours_rx, &reference).unwrap(), p);

                if i % 7 == 0 {
                    let mut c = vec![0x80, 0xc8 + (i % 2) as u8, 0, 6];
                    c.extend_from_slice(&ssrcs[s].to_be_bytes());
                    (0..24 + rnd() % 40).for_each(|_| c.push(rnd() as u8));
                    let ours = protect_rtcp(&mut ours_tx, &c);
                    let reference = theirs_tx.encrypt_rtcp(&c).unwrap();
                    assert_eq!(ours, &reference[..], "rtcp {i}");
                    assert_eq!(&theirs_rx.decrypt_rtcp(&ours).unwrap()[..], &c[..]);
                    assert_eq!(unprotect_rtcp(&mut ours_rx, &reference).unwrap(), c);
                }
            }
        }
    }
}
