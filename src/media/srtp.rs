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
