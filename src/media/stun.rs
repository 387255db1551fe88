//! ICE-lite (RFC 8445 section 2.5) answers to STUN Binding requests, and RFC 7983 demultiplexing.
//!
//! drbridge is the lite side toward Teams: it never sends checks, it answers them. A check is a
//! Binding request with USERNAME = "ourufrag:theirufrag", MESSAGE-INTEGRITY keyed with OUR pwd
//! (short-term credentials) and FINGERPRINT. The answer is a Binding success carrying
//! XOR-MAPPED-ADDRESS (the source the request came from), MESSAGE-INTEGRITY (our pwd) and
//! FINGERPRINT. USE-CANDIDATE in a valid check nominates the pair: the relay latches to its
//! source. Requests with wrong credentials are answered 401, malformed ones 400; anything that is
//! not a Binding request is dropped.
//!
//! Sans-IO: [`IceLite::handle`] takes the datagram and its source and writes the answer into a
//! caller buffer.

use super::IceCredentials;
use std::net::SocketAddr;
use stun_types::attribute::{ErrorCode, Fingerprint, MessageIntegrity, Username, XorMappedAddress};
use stun_types::message::{
    IntegrityAlgorithm, IntegrityKey, Message, MessageClass, MessageWriteMutSlice, ShortTermCredentials, BINDING,
};
use stun_types::prelude::*;

/// STUN attribute USE-CANDIDATE (RFC 8445 16.1).
pub const USE_CANDIDATE: u16 = 0x0025;
/// PRIORITY, ICE-CONTROLLED, ICE-CONTROLLING (RFC 8445 16.1).
pub const PRIORITY: u16 = 0x0024;
pub const ICE_CONTROLLED: u16 = 0x8029;
pub const ICE_CONTROLLING: u16 = 0x802A;

/// RFC 7983 demultiplexing by first byte, and RFC 5761 RTP/RTCP by payload type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    Rtp,
    Rtcp,
    Other,
}

pub fn classify(pkt: &[u8]) -> PacketKind {
    match pkt.first() {
        Some(0..=3) if pkt.len() >= 20 => PacketKind::Stun,
        Some(128..=191) if pkt.len() >= 8 => {
            // RTCP packet types 192..=223 (RFC 5761 section 4): with the marker bit masked,
            // RTP payload types 64..=95 are reserved for this.
            if (64..=95).contains(&(pkt[1] & 0x7f)) {
                PacketKind::Rtcp
            } else if pkt.len() >= 12 {
                PacketKind::Rtp
            } else {
                PacketKind::Other
            }
        }
        _ => PacketKind::Other,
    }
}

/// What to do with a STUN datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// A valid check: send `out[..len]` back to the source. `nominated`: USE-CANDIDATE was set.
    Success { len: usize, nominated: bool },
    /// An error response (400 or 401) in `out[..len]`.
    Error { len: usize, code: u16 },
    /// Not a Binding request, unparseable, or bad FINGERPRINT: no answer.
    Drop,
}

struct Creds {
    ufrag: String,
    key: IntegrityKey,
}

impl Creds {
    fn new(c: &IceCredentials) -> Creds {
        Creds { ufrag: c.ufrag.clone(), key: ShortTermCredentials::new(c.pwd.clone()).make_key() }
    }
}

/// Our side of ICE-lite for one stream.
pub struct IceLite {
    current: Creds,
    /// Credentials before the last restart: accepted until a check with the new ones succeeds.
    previous: Option<Creds>,
}

impl std::fmt::Debug for IceLite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceLite").field("ufrag", &self.current.ufrag).finish_non_exhaustive()
    }
}

impl IceLite {
    pub fn new(ours: &IceCredentials) -> IceLite {
        IceLite { current: Creds::new(ours), previous: None }
    }

    /// ICE restart: new local credentials.
    pub fn restart(&mut self, ours: &IceCredentials) {
        let old = std::mem::replace(&mut self.current, Creds::new(ours));
        self.previous = Some(old);
    }

    /// Handles one datagram classified as STUN. `out` should hold at least 512 bytes.
    pub fn handle(&mut self, pkt: &[u8], from: SocketAddr, out: &mut [u8]) -> CheckOutcome {
        let Ok(msg) = Message::from_bytes(pkt) else {
            return CheckOutcome::Drop; // includes a FINGERPRINT mismatch
        };
        if !msg.has_class(MessageClass::Request) || !msg.has_method(BINDING) {
            return CheckOutcome::Drop;
        }
        if !msg.has_attribute(Fingerprint::TYPE) {
            return CheckOutcome::Drop; // RFC 8445 7.2.2: checks carry FINGERPRINT
        }
        let username = msg.attribute::<Username>().ok();
        if username.is_none() || !msg.has_attribute(MessageIntegrity::TYPE) {
            return error(&msg, 400, out);
        }
        let username = username.as_ref().map(|u| u.username()).unwrap_or("");
        let ours = username.split(':').next().unwrap_or("");
        let use_current = ours == self.current.ufrag;
        let creds = if use_current {
            &self.current
        } else {
            match &self.previous {
                Some(p) if p.ufrag == ours => p,
                _ => return error(&msg, 401, out),
            }
        };
        if !username.contains(':') || msg.validate_integrity_with_key(&creds.key).is_err() {
            return error(&msg, 401, out);
        }
        let mut w = Message::builder_success(&msg, MessageWriteMutSlice::new(out));
        let ok = w.add_attribute(&XorMappedAddress::new(from, msg.transaction_id())).is_ok()
            && w.add_message_integrity_with_key(&creds.key, IntegrityAlgorithm::Sha1).is_ok()
            && w.add_fingerprint().is_ok();
        if !ok {
            return CheckOutcome::Drop;
        }
        let len = w.finish();
        if use_current {
            self.previous = None;
        }
        CheckOutcome::Success { len, nominated: msg.has_attribute(USE_CANDIDATE.into()) }
    }
}

fn error(req: &Message<'_>, code: u16, out: &mut [u8]) -> CheckOutcome {
    let mut w = Message::builder_error(req, MessageWriteMutSlice::new(out));
    let Ok(ec) = ErrorCode::builder(code).build() else {
        return CheckOutcome::Drop;
    };
    if w.add_attribute(&ec).is_err() || w.add_fingerprint().is_err() {
        return CheckOutcome::Drop;
    }
    CheckOutcome::Error { len: w.finish(), code }
}

/// Builds an ICE connectivity check as a controlling full agent would (tests, benchmarks).
pub fn build_check(
    ours_ufrag: &str,
    theirs: &IceCredentials,
    use_candidate: bool,
) -> Vec<u8> {
    use stun_types::attribute::RawAttribute;
    use stun_types::message::{MessageIntegrityCredentials, MessageWriteVec};
    let mut w = Message::builder_request(BINDING, MessageWriteVec::new());
    // USERNAME = "<receiver ufrag>:<sender ufrag>"; integrity with the receiver's pwd.
    let user = format!("{}:{}", theirs.ufrag, ours_ufrag);
    if let Ok(u) = Username::new(&user) {
        let _ = w.add_attribute(&u);
    }
    let prio = 0x6e00_1eff_u32.to_be_bytes();
    let _ = w.add_attribute(&RawAttribute::new(PRIORITY.into(), &prio));
    let _ = w.add_attribute(&RawAttribute::new(ICE_CONTROLLING.into(), &[1, 2, 3, 4, 5, 6, 7, 8]));
    if use_candidate {
        let _ = w.add_attribute(&RawAttribute::new(USE_CANDIDATE.into(), &[]));
    }
    let creds: MessageIntegrityCredentials = ShortTermCredentials::new(theirs.pwd.clone()).into();
    let _ = w.add_message_integrity(&creds, IntegrityAlgorithm::Sha1);
    let _ = w.add_fingerprint();
    w.finish()
}

/// Checks a Binding success answer (tests): integrity with `pwd`, and returns XOR-MAPPED-ADDRESS.
pub fn verify_success(resp: &[u8], pwd: &str) -> Option<SocketAddr> {
    use stun_types::message::MessageIntegrityCredentials;
    let msg = Message::from_bytes(resp).ok()?;
    if !msg.has_class(MessageClass::Success) || !msg.has_attribute(Fingerprint::TYPE) {
        return None;
    }
    let creds: MessageIntegrityCredentials = ShortTermCredentials::new(pwd.to_owned()).into();
    msg.validate_integrity(&creds).ok()?;
    let xor = msg.attribute::<XorMappedAddress>().ok()?;
    Some(xor.addr(msg.transaction_id()))
}

/// Error code of a STUN error response (tests).
pub fn error_code(resp: &[u8]) -> Option<u16> {
    let msg = Message::from_bytes(resp).ok()?;
    if !msg.has_class(MessageClass::Error) {
        return None;
    }
    msg.attribute::<ErrorCode>().ok().map(|e| e.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> IceCredentials {
        IceCredentials { ufrag: "drbr1234".into(), pwd: "abcdefghijklmnopqrstuvwx".into() }
    }
    fn src() -> SocketAddr {
        "127.0.0.1:50010".parse().unwrap()
    }

    #[test]
    fn classify_by_first_byte() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 0;
        assert_eq!(classify(&rtp), PacketKind::Rtp);
        rtp[1] = 0x80 | 101; // marker + telephone-event
        assert_eq!(classify(&rtp), PacketKind::Rtp);
        let mut rtcp = [0u8; 8];
        rtcp[0] = 0x81;
        rtcp[1] = 200;
        assert_eq!(classify(&rtcp), PacketKind::Rtcp);
        let stun = build_check("them", &ours(), false);
        assert_eq!(classify(&stun), PacketKind::Stun);
        assert_eq!(classify(&[20u8; 30]), PacketKind::Other); // DTLS range
        assert_eq!(classify(&[]), PacketKind::Other);
        assert_eq!(classify(&[0x80, 0]), PacketKind::Other);
    }

    #[test]
    fn valid_check_answered_with_integrity_and_mapped_address() {
        let mut ice = IceLite::new(&ours());
        let req = build_check("them", &ours(), false);
        let mut out = [0u8; 512];
        let CheckOutcome::Success { len, nominated } = ice.handle(&req, src(), &mut out) else {
            panic!("not answered")
        };
        assert!(!nominated);
        assert_eq!(verify_success(&out[..len], &ours().pwd), Some(src()));
        // the answer must carry the request's transaction id
        assert_eq!(&out[8..20], &req[8..20]);
        // and it must not verify with another password
        assert_eq!(verify_success(&out[..len], "another-password-xxxxxx"), None);
    }

    #[test]
    fn use_candidate_nominates() {
        let mut ice = IceLite::new(&ours());
        let req = build_check("them", &ours(), true);
        let mut out = [0u8; 512];
        assert!(matches!(ice.handle(&req, src(), &mut out), CheckOutcome::Success { nominated: true, .. }));
    }

    #[test]
    fn wrong_password_or_ufrag_gets_401() {
        let mut ice = IceLite::new(&ours());
        let mut out = [0u8; 512];
        let bad_pwd = IceCredentials { ufrag: ours().ufrag, pwd: "wrongwrongwrongwrongwrong".into() };
        let req = build_check("them", &bad_pwd, true);
        let CheckOutcome::Error { len, code: 401 } = ice.handle(&req, src(), &mut out) else { panic!() };
        assert_eq!(error_code(&out[..len]), Some(401));
        let bad_ufrag = IceCredentials { ufrag: "nobody".into(), pwd: ours().pwd };
        let req = build_check("them", &bad_ufrag, true);
        assert!(matches!(ice.handle(&req, src(), &mut out), CheckOutcome::Error { code: 401, .. }));
    }

    #[test]
    fn corrupted_fingerprint_or_non_request_dropped() {
        let mut ice = IceLite::new(&ours());
        let mut out = [0u8; 512];
        let mut req = build_check("them", &ours(), false);
        let n = req.len();
        req[n - 1] ^= 1;
        assert_eq!(ice.handle(&req, src(), &mut out), CheckOutcome::Drop);
        // a success response sent to us is not answered
        let good = build_check("them", &ours(), false);
        let CheckOutcome::Success { len, .. } = ice.handle(&good, src(), &mut out) else { panic!() };
        let resp = out[..len].to_vec();
        assert_eq!(ice.handle(&resp, src(), &mut out), CheckOutcome::Drop);
        // garbage and truncation never panic
        for cut in 0..good.len() {
            let _ = ice.handle(&good[..cut], src(), &mut out);
        }
    }

    #[test]
    fn restart_accepts_old_until_new_used() {
        let mut ice = IceLite::new(&ours());
        let new = IceCredentials { ufrag: "newufrag".into(), pwd: "NEWPWDnewpwdNEWPWDnewpwd".into() };
        ice.restart(&new);
        let mut out = [0u8; 512];
        assert!(matches!(ice.handle(&build_check("t", &ours(), false), src(), &mut out), CheckOutcome::Success { .. }));
        let CheckOutcome::Success { len, .. } = ice.handle(&build_check("t", &new, false), src(), &mut out) else {
            panic!()
        };
        assert_eq!(verify_success(&out[..len], &new.pwd), Some(src()));
        // once the new credentials were used, the old ones are gone
        assert!(matches!(ice.handle(&build_check("t", &ours(), false), src(), &mut out), CheckOutcome::Error { code: 401, .. }));
    }

    #[test]
    fn ipv6_source_mapped() {
        let mut ice = IceLite::new(&ours());
        let from: SocketAddr = "[::1]:40000".parse().unwrap();
        let mut out = [0u8; 512];
        let CheckOutcome::Success { len, .. } = ice.handle(&build_check("t", &ours(), false), from, &mut out) else {
            panic!()
        };
        assert_eq!(verify_success(&out[..len], &ours().pwd), Some(from));
    }
}
