//! Arbitrary bytes into the SIP parser: datagram and stream parse, stream framing, the typed
//! header views, and a write/re-parse round trip. Must never panic; a message that parses,
//! written and parsed again, keeps its header count and body.
#![no_main]

use bytes::Bytes;
use drbridge::sip::msg::{frame_len, parse, parse_datagram, CSeq, Limits, NameAddr, Uri, Via};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = frame_len(data, &limits);
    let _ = parse(Bytes::copy_from_slice(data), &limits);
    if let Ok(m) = parse_datagram(Bytes::copy_from_slice(data), &limits) {
        for h in m.headers().iter() {
            let _ = NameAddr::parse(&h.value);
            let _ = Via::parse(&h.value);
            let _ = CSeq::parse(&h.value);
        }
        let out = m.to_bytes();
        let n = frame_len(&out, &limits).expect("own output frames");
        assert_eq!(n, Some(out.len()));
        let again = parse(out.clone(), &limits).expect("own output parses");
        let count = |h: &drbridge::sip::msg::Headers| h.iter().filter(|x| !x.name.is("Content-Length")).count();
        assert_eq!(count(again.headers()), count(m.headers()));
        assert_eq!(again.body(), m.body());
        assert_eq!(again.to_bytes(), out);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(u) = Uri::parse(s) {
            let _ = Uri::parse(&u.to_string());
        }
        if let Ok(n) = NameAddr::parse(s) {
            let _ = NameAddr::parse(&n.to_string());
        }
        let _ = Via::parse(s);
    }
});
