//! Arbitrary bytes into the SDP parser and every typed view; a parsed SDP written and parsed
//! again is equal to itself. Must never panic.
#![no_main]

use bytes::Bytes;
use drbridge::sip::msg::sdp::Sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = Sdp::parse(Bytes::copy_from_slice(data)) else { return };
    let _ = (s.origin(), s.connection(), s.direction(), s.ice_lite(), format!("{s:?}"));
    for (i, m) in s.media.iter().enumerate() {
        let _ = (s.media_connection(i), s.media_direction(i));
        let _ = (m.rtpmaps(), m.cryptos(), m.candidates(), m.rtcp(), m.ptime(), m.ice_pwd());
        for pt in m.payload_types() {
            let _ = (m.rtpmap(pt), m.fmtp(pt));
        }
    }
    let out = s.to_bytes();
    let again = Sdp::parse(out.clone()).expect("own output parses");
    assert_eq!(again, s);
    assert_eq!(again.to_bytes(), out);
});
