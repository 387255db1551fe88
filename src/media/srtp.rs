//! SRTP/SRTCP (RFC 3711) for SDES keys (RFC 4568): AES_CM_128_HMAC_SHA1_80 and _32.
//!
//! A thin wrapper over `rtc-srtp` (webrtc-rs' sans-IO SRTP). One [`SrtpStream`] per leg and per
//! direction: a sender protects with the key drbridge announced on that leg, a receiver
//! unprotects with the key the far end announced. Receivers always have replay protection on
//! (the crate's default is off). The rollover counter is tracked per SSRC by the crate.
//!
//! Two things the wrapper adds on top of the crate:
//! - an SRTCP packet whose E flag is 0 is refused before it reaches the crate: `rtc-srtp` 0.21
//!   returns such a packet *without checking its authentication tag*, and drbridge never
//!   negotiates UNENCRYPTED_SRTCP, so an E=0 packet can only be forged or broken;
//! - errors are reduced to a small enum that never carries key material.

use super::{SrtpKey, SrtpSuite};
use bytes::BytesMut;
use rtc_srtp::context::Context;
use rtc_srtp::crypto::{self, RTCCryptoProvider};
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;
use std::sync::{Arc, OnceLock};

/// Replay window (packets), as libsrtp's default.
pub const REPLAY_WINDOW: usize = 128;

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
    #[error("SRTP protect failed")]
    Protect,
}

fn provider() -> Result<&'static Arc<dyn RTCCryptoProvider>, SrtpError> {
    static PROVIDER: OnceLock<Option<Arc<dyn RTCCryptoProvider>>> = OnceLock::new();
    PROVIDER.get_or_init(|| crypto::default_provider().ok()).as_ref().ok_or(SrtpError::Setup)
}

fn profile(suite: SrtpSuite) -> ProtectionProfile {
    match suite {
        SrtpSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
    }
}

/// SRTP auth tag length of a suite (RTP). SRTCP always uses 80 bits (RFC 4568 6.2.1).
pub fn rtp_tag_len(suite: SrtpSuite) -> usize {
    match suite {
        SrtpSuite::AesCm128HmacSha1_80 => 10,
        SrtpSuite::AesCm128HmacSha1_32 => 4,
    }
}
const SRTCP_TAG_LEN: usize = 10;

/// One direction of one leg.
pub struct SrtpStream {
    ctx: Context,
    suite: SrtpSuite,
}

impl std::fmt::Debug for SrtpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpStream").field("suite", &self.suite).finish_non_exhaustive()
    }
}

impl SrtpStream {
    /// A context that only protects (outgoing).
    pub fn sender(key: &SrtpKey) -> Result<Self, SrtpError> {
        let ctx = Context::new(&key.key, &key.salt, profile(key.suite), None, None, provider()?.crypto())
            .map_err(|_| SrtpError::Setup)?;
        Ok(SrtpStream { ctx, suite: key.suite })
    }

    /// A context that only unprotects (incoming), with replay protection.
    pub fn receiver(key: &SrtpKey) -> Result<Self, SrtpError> {
        let ctx = Context::new(
            &key.key,
            &key.salt,
            profile(key.suite),
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
            provider()?.crypto(),
        )
        .map_err(|_| SrtpError::Setup)?;
        Ok(SrtpStream { ctx, suite: key.suite })
    }

    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    pub fn protect_rtp(&mut self, plain: &[u8]) -> Result<BytesMut, SrtpError> {
        if plain.len() < 12 {
            return Err(SrtpError::Malformed);
        }
        self.ctx.encrypt_rtp(plain).map_err(|_| SrtpError::Protect)
    }

    pub fn unprotect_rtp(&mut self, srtp: &[u8]) -> Result<BytesMut, SrtpError> {
        if srtp.len() < 12 + rtp_tag_len(self.suite) {
            return Err(SrtpError::Malformed);
        }
        self.ctx.decrypt_rtp(srtp).map_err(map_rx_error)
    }

    pub fn protect_rtcp(&mut self, plain: &[u8]) -> Result<BytesMut, SrtpError> {
        if plain.len() < 8 {
            return Err(SrtpError::Malformed);
        }
        self.ctx.encrypt_rtcp(plain).map_err(|_| SrtpError::Protect)
    }

    pub fn unprotect_rtcp(&mut self, srtcp: &[u8]) -> Result<BytesMut, SrtpError> {
        if srtcp.len() < 8 + 4 + SRTCP_TAG_LEN {
            return Err(SrtpError::Malformed);
        }
        let e_word = srtcp.len() - SRTCP_TAG_LEN - 4;
        if srtcp[e_word] & 0x80 == 0 {
            return Err(SrtpError::Unencrypted);
        }
        self.ctx.decrypt_rtcp(srtcp).map_err(map_rx_error)
    }
}

fn map_rx_error(e: rtc_shared::error::Error) -> SrtpError {
    use rtc_shared::error::Error as E;
    match e {
        E::SrtpSsrcDuplicated(..) | E::SrtcpSsrcDuplicated(..) => SrtpError::Replay,
        E::RtpFailedToVerifyAuthTag | E::RtcpFailedToVerifyAuthTag => SrtpError::Auth,
        _ => SrtpError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
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
            assert_eq!(&tx.protect_rtp(&rtp(0x1234)).unwrap()[..], &unhex(first)[..]);
            tx.protect_rtp(&rtp(0xffff)).unwrap();
            // sequence wrapped: ROC = 1 goes into the keystream and the auth tag
            assert_eq!(&tx.protect_rtp(&rtp(0x0000)).unwrap()[..], &unhex(after_wrap)[..]);

            let mut rx = SrtpStream::receiver(&kat_key(suite)).unwrap();
            assert_eq!(&rx.unprotect_rtp(&unhex(first)).unwrap()[..], &rtp(0x1234)[..]);
        }
        let mut tx = SrtpStream::sender(&kat_key(SrtpSuite::AesCm128HmacSha1_80)).unwrap();
        let mut rtcp = vec![0x81, 0xc8, 0x00, 0x05, 0xca, 0xfe, 0xba, 0xbe];
        rtcp.extend(1..=16u8);
        assert_eq!(&tx.protect_rtcp(&rtcp).unwrap()[..], &unhex(SRTCP_1)[..]);
        let mut rx = SrtpStream::receiver(&kat_key(SrtpSuite::AesCm128HmacSha1_80)).unwrap();
        assert_eq!(&rx.unprotect_rtcp(&unhex(SRTCP_1)).unwrap()[..], &rtcp[..]);
    }

    #[test]
    fn roc_across_sequence_wrap() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut tx = SrtpStream::sender(&k).unwrap();
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let mut seq = 65500u16;
        for _ in 0..100 {
            let p = tx.protect_rtp(&rtp(seq)).unwrap();
            assert_eq!(&rx.unprotect_rtp(&p).unwrap()[..], &rtp(seq)[..], "seq {seq}");
            seq = seq.wrapping_add(1);
        }
        // a receiver that never saw the wrap assumes ROC 0: the ROC-1 packet does not authenticate
        let mut fresh = SrtpStream::receiver(&k).unwrap();
        assert_eq!(fresh.unprotect_rtp(&unhex(RTP80_ROC1_0000)), Err(SrtpError::Auth));
    }

    #[test]
    fn replay_rejected_rtp_and_rtcp() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_32);
        let mut tx = SrtpStream::sender(&k).unwrap();
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let p1 = tx.protect_rtp(&rtp(10)).unwrap();
        let p2 = tx.protect_rtp(&rtp(11)).unwrap();
        assert!(rx.unprotect_rtp(&p2).is_ok());
        assert!(rx.unprotect_rtp(&p1).is_ok()); // reordered inside the window: fine
        assert_eq!(rx.unprotect_rtp(&p1), Err(SrtpError::Replay));
        assert_eq!(rx.unprotect_rtp(&p2), Err(SrtpError::Replay));
        // far behind the window
        let mut seq = 12u16;
        let old = tx.protect_rtp(&rtp(seq)).unwrap();
        for _ in 0..300 {
            seq += 1;
            let p = tx.protect_rtp(&rtp(seq)).unwrap();
            rx.unprotect_rtp(&p).unwrap();
        }
        assert_eq!(rx.unprotect_rtp(&old), Err(SrtpError::Replay));

        let mut rtcp = vec![0x81, 0xc8, 0x00, 0x01, 1, 2, 3, 4];
        rtcp.extend_from_slice(&[9; 4]);
        let c = tx.protect_rtcp(&rtcp).unwrap();
        assert_eq!(&rx.unprotect_rtcp(&c).unwrap()[..], &rtcp[..]);
        assert_eq!(rx.unprotect_rtcp(&c), Err(SrtpError::Replay));
    }

    #[test]
    fn tampering_and_wrong_keys_fail_auth() {
        for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AesCm128HmacSha1_32] {
            let k = kat_key(suite);
            let mut tx = SrtpStream::sender(&k).unwrap();
            let p = tx.protect_rtp(&rtp(1)).unwrap();
            assert_eq!(p.len(), 28 + rtp_tag_len(suite));
            let mut bad = p.to_vec();
            bad[20] ^= 1;
            let mut rx = SrtpStream::receiver(&k).unwrap();
            assert_eq!(rx.unprotect_rtp(&bad), Err(SrtpError::Auth));
            let mut other = k.clone();
            other.key[0] ^= 1;
            let mut rx2 = SrtpStream::receiver(&other).unwrap();
            assert_eq!(rx2.unprotect_rtp(&p), Err(SrtpError::Auth));
            assert!(rx.unprotect_rtp(&p).is_ok());
        }
    }

    #[test]
    fn srtcp_with_e_flag_clear_is_refused() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let mut c = unhex(SRTCP_1);
        let e = c.len() - 10 - 4;
        c[e] &= 0x7f; // the crate would return this unauthenticated
        assert_eq!(rx.unprotect_rtcp(&c), Err(SrtpError::Unencrypted));
        let mut t = unhex(SRTCP_1);
        let n = t.len();
        t[n - 1] ^= 1;
        assert_eq!(rx.unprotect_rtcp(&t), Err(SrtpError::Auth));
    }

    #[test]
    fn garbage_never_panics() {
        let k = kat_key(SrtpSuite::AesCm128HmacSha1_80);
        let mut rx = SrtpStream::receiver(&k).unwrap();
        let good = unhex(RTP80_1234);
        for cut in 0..good.len() {
            let _ = rx.unprotect_rtp(&good[..cut]);
            let _ = rx.unprotect_rtcp(&good[..cut]);
        }
        // header claims CSRCs and an extension that are not there
        let mut p = good.clone();
        p[0] = 0x9f;
        let _ = rx.unprotect_rtp(&p);
        use proptest::prelude::*;
        let rx = std::cell::RefCell::new(rx);
        proptest!(ProptestConfig::with_cases(2000), |(data in proptest::collection::vec(any::<u8>(), 0..200))| {
            let mut rx = rx.borrow_mut();
            let _ = rx.unprotect_rtp(&data);
            let _ = rx.unprotect_rtcp(&data);
        });
    }
}
