//! Property tests for sip::msg: arbitrary input never panics, generated messages round-trip,
//! Content-Length is checked against the datagram, stream framing cuts a byte stream into
//! exactly the messages that were sent, and the size caps hold.

use bytes::{Bytes, BytesMut};
use drbridge::sip::msg::sdp::Sdp;
use drbridge::sip::msg::{frame_len, parse, parse_datagram, Limits, Message, NameAddr, ParseError, Uri, Via};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Generators

const METHODS: &[&str] = &["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "REFER", "NOTIFY", "SUBSCRIBE", "UPDATE", "PRACK", "INFO", "MESSAGE", "PUBLISH", "X-CUSTOM"];

/// A header spelled in full, in compact form, or in random case.
fn spelled(full: &'static str, compact: Option<&'static str>) -> impl Strategy<Value = String> {
    let c = compact.map(str::to_string);
    (0u8..4, any::<u64>()).prop_map(move |(how, seed)| match (how, &c) {
        (0, Some(c)) => c.clone(),
        (1, _) => full.to_ascii_lowercase(),
        (2, _) => full
            .chars()
            .enumerate()
            .map(|(i, ch)| if (seed >> (i % 64)) & 1 == 1 { ch.to_ascii_uppercase() } else { ch.to_ascii_lowercase() })
            .collect(),
        _ => full.to_string(),
    })
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,15}"
}

fn value() -> impl Strategy<Value = String> {
    // Printable ASCII and some UTF-8, no leading/trailing whitespace (the parser trims it).
    "[!-~\u{e4}\u{f6}\u{43f}]([ !-~\u{e4}]{0,40}[!-~])?"
}

#[derive(Clone, Debug)]
struct Gen {
    request: bool,
    method: String,
    status: u16,
    /// (name as written, canonical name used for lookups, value)
    headers: Vec<(String, String, String)>,
    body: Vec<u8>,
    lf_only: bool,
}

impl Gen {
    fn text(&self) -> Vec<u8> {
        self.text_with_cl(self.body.len())
    }
    fn text_with_cl(&self, cl: usize) -> Vec<u8> {
        let eol = if self.lf_only { "\n" } else { "\r\n" };
        let mut s = if self.request {
            format!("{} sip:+4681234711@sbc.example.com;user=phone SIP/2.0{eol}", self.method)
        } else {
            format!("SIP/2.0 {} Some Reason{eol}", self.status)
        };
        for (n, _, v) in &self.headers {
            s.push_str(&format!("{n}: {v}{eol}"));
        }
        s.push_str(&format!("Content-Length: {cl}{eol}{eol}"));
        let mut b = s.into_bytes();
        b.extend_from_slice(&self.body);
        b
    }
}

prop_compose! {
    fn message()(
        request in any::<bool>(),
        m in 0..METHODS.len(),
        status in 100u16..700,
        via in spelled("Via", Some("v")),
        from in spelled("From", Some("f")),
        to in spelled("To", Some("t")),
        cid in spelled("Call-ID", Some("i")),
        cseq_n in spelled("CSeq", None),
        subj in spelled("Subject", Some("s")),
        branches in prop::collection::vec("[a-zA-Z0-9]{1,12}", 1..4),
        tag in "[a-zA-Z0-9]{1,10}",
        call_id in "[a-zA-Z0-9.@-]{1,30}",
        seq in 0u32..100000,
        extra in prop::collection::vec((token(), value()), 0..8),
        subject in prop::option::of(value()),
        body in prop::collection::vec(any::<u8>(), 0..300),
        lf_only in any::<bool>(),
    ) -> Gen {
        let method = METHODS[m].to_string();
        let vias = branches.iter().enumerate().map(|(i, b)| format!("SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bK{b}")).collect::<Vec<_>>().join(", ");
        let mut headers = vec![
            (via, "Via".to_string(), vias),
            (from, "From".to_string(), format!("\"Caller\" <sip:4711@pbx.example.com>;tag={tag}")),
            (to, "To".to_string(), "<sip:+4681234711@sbc.example.com>".to_string()),
            (cid, "Call-ID".to_string(), call_id),
            (cseq_n, "CSeq".to_string(), format!("{seq} {method}")),
        ];
        if let Some(v) = subject {
            headers.push((subj, "Subject".to_string(), v));
        }
        for (n, v) in extra {
            let n = format!("X-{n}");
            headers.push((n.clone(), n, v));
        }
        Gen { request, method, status, headers, body, lf_only }
    }
}

fn same_as_generated(m: &Message, g: &Gen) {
    let h = m.headers();
    let got: Vec<(&str, &str)> =
        h.iter().filter(|x| !x.name.is("Content-Length")).map(|x| (x.name.as_str(), x.value.as_str())).collect();
    assert_eq!(got.len(), g.headers.len(), "{got:?}");
    for ((name, value), (_, canon, v)) in got.iter().zip(&g.headers) {
        assert!(name.eq_ignore_ascii_case(canon), "{name} vs {canon}");
        assert_eq!(value, v);
    }
    assert_eq!(&m.body()[..], &g.body[..]);
    match m {
        Message::Request(r) => {
            assert!(g.request);
            assert_eq!(r.method.as_str(), g.method);
        }
        Message::Response(r) => {
            assert!(!g.request);
            assert_eq!(r.status, g.status);
        }
    }
}

fn headers_of(m: &Message) -> Vec<(String, String)> {
    m.headers()
        .iter()
        .filter(|x| !x.name.is("Content-Length"))
        .map(|x| (x.name.as_str().to_ascii_lowercase(), x.value.to_string()))
        .collect()
}

/// A valid message with random bytes changed, inserted or removed: input close to valid.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (message(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)).prop_map(|(g, edits)| {
        let mut b = g.text();
        for (at, byte, op) in edits {
            if b.is_empty() {
                break;
            }
            let i = at.index(b.len());
            match op {
                0 => b[i] = byte,
                1 => b.insert(i, byte),
                _ => {
                    b.remove(i);
                }
            }
        }
        b
    })
}

fn sdp_text() -> impl Strategy<Value = String> {
    let attr = prop_oneof![
        Just("a=rtcp-mux".to_string()),
        Just("a=sendonly".to_string()),
        Just("a=inactive".to_string()),
        "[0-9]{1,3}".prop_map(|p| format!("a=rtpmap:{p} PCMU/8000")),
        "[0-9]{1,3}".prop_map(|p| format!("a=fmtp:{p} 0-16")),
        "[A-Za-z0-9+/]{40}".prop_map(|k| format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^31")),
        (1u32..100000, 1u16..65535).prop_map(|(p, port)| format!("a=candidate:1 1 UDP {p} 192.0.2.1 {port} typ host")),
        "[a-z-]{1,10}(:[ -~]{0,20})?".prop_map(|a| format!("a={a}")),
        "[dfghjlnqwxy]=[ -~]{0,30}".prop_map(|l| l),
    ];
    let media = (prop::sample::select(vec!["audio", "video", "image"]), 0u16..65535, prop::collection::vec("[0-9]{1,3}", 0..6), prop::collection::vec(attr.clone(), 0..10))
        .prop_map(|(m, port, fmts, attrs)| {
            let fmts: String = fmts.iter().map(|f| format!(" {f}")).collect();
            let mut s = format!("m={m} {port} RTP/AVP{fmts}\n");
            for a in attrs {
                s.push_str(&a);
                s.push('\n');
            }
            s
        });
    (prop::collection::vec(attr, 0..6), prop::collection::vec(media, 0..4), any::<bool>()).prop_map(|(attrs, media, crlf)| {
        let mut s = String::from("v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n");
        for a in attrs {
            s.push_str(&a);
            s.push('\n');
        }
        for m in media {
            s.push_str(&m);
        }
        if crlf {
            s.replace('\n', "\r\n")
        } else {
            s
        }
    })
}

/// Strings made of the pieces a name-addr is made of, in any order: most are malformed, many
/// are not.
fn name_addr_pieces() -> impl Strategy<Value = String> {
    let pieces = vec![
        "<", ">", "sip:", "sips:", "tel:+49", "a", "@", "h.example", ":5060", ":x", ";", "tag", "=", "t1", " ", "\t", "\"", "\\",
        ",", "[::1]", "lr", "?", "Bob",
    ];
    prop::collection::vec(prop::sample::select(pieces), 0..14).prop_map(|v| v.concat())
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        let l = Limits::default();
        let _ = frame_len(&data, &l);
        let _ = parse(Bytes::from(data.clone()), &l);
        let _ = parse_datagram(Bytes::from(data.clone()), &l);
        let _ = Sdp::parse(Bytes::from(data.clone()));
        let s = String::from_utf8_lossy(&data);
        let _ = Uri::parse(&s);
        let _ = NameAddr::parse(&s);
        let _ = Via::parse(&s);
    }

    /// The parser's check of From/To and its tag reading agree with the full parse.
    #[test]
    fn name_addr_check_and_tag_agree_with_parse(s in name_addr_pieces()) {
        let full = NameAddr::parse(&s);
        prop_assert_eq!(NameAddr::check(&s).is_ok(), full.is_ok());
        if let Ok(n) = full {
            prop_assert_eq!(drbridge::sip::msg::tag_of(&s), n.tag());
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,200}") {
        let _ = Uri::parse(&s);
        let _ = NameAddr::parse(&s);
        let _ = Via::parse(&s);
        let _ = Sdp::parse(Bytes::from(s.clone()));
        let _ = parse_datagram(Bytes::from(s), &Limits::default());
    }

    #[test]
    fn near_valid_input_never_panics(data in mutated()) {
        let l = Limits::default();
        let _ = frame_len(&data, &l);
        let _ = parse(Bytes::from(data.clone()), &l);
        if let Ok(m) = parse_datagram(Bytes::from(data), &l) {
            // Whatever parses is written back as something that parses to the same.
            let again = parse(m.to_bytes(), &l).expect("own output parses");
            prop_assert_eq!(headers_of(&again), headers_of(&m));
            prop_assert_eq!(again.body(), m.body());
        }
    }

    #[test]
    fn near_valid_sdp_never_panics(s in sdp_text(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)) {
        let mut b = s.into_bytes();
        for (at, byte) in edits {
            if !b.is_empty() {
                let i = at.index(b.len());
                b[i] = byte;
            }
        }
        if let Ok(sdp) = Sdp::parse(Bytes::from(b)) {
            let _ = format!("{sdp:?}");
            let again = Sdp::parse(sdp.to_bytes()).expect("own output parses");
            prop_assert_eq!(again, sdp);
        }
    }

    #[test]
    fn generated_messages_round_trip(g in message()) {
        let l = Limits::default();
        let text = Bytes::from(g.text());
        let m = parse(text.clone(), &l).expect("generated message parses");
        same_as_generated(&m, &g);
        let dm = parse_datagram(text.clone(), &l).expect("as a datagram too");
        same_as_generated(&dm, &g);
        prop_assert_eq!(frame_len(&text, &l).unwrap(), Some(text.len()));
        let out = m.to_bytes();
        let m2 = parse(out.clone(), &l).expect("written message parses");
        same_as_generated(&m2, &g);
        prop_assert_eq!(m2.to_bytes(), out);
    }

    #[test]
    fn generated_sdp_round_trips(s in sdp_text()) {
        let sdp = Sdp::parse(Bytes::from(s.clone())).expect("generated SDP parses");
        let out = sdp.to_bytes();
        let again = Sdp::parse(out.clone()).unwrap();
        prop_assert_eq!(&again, &sdp);
        prop_assert_eq!(again.to_bytes(), out.clone());
        // In RFC order the generator wrote, so the text is the same up to line ends.
        prop_assert_eq!(String::from_utf8(out.to_vec()).unwrap(), s.replace("\r\n", "\n").replace('\n', "\r\n"));
    }

    #[test]
    fn content_length_beyond_datagram_is_error(g in message(), extra in 1usize..100_000) {
        let text = g.text_with_cl(g.body.len() + extra);
        let r = parse_datagram(Bytes::from(text.clone()), &Limits::default());
        prop_assert!(matches!(r, Err(ParseError::Truncated { .. }) | Err(ParseError::TooLarge(_))), "{:?}", r);
        // On a stream the frame is incomplete (or too large), never a shorter message.
        let f = frame_len(&text, &Limits::default());
        prop_assert!(matches!(f, Ok(None) | Err(ParseError::TooLarge(_))), "{:?}", f);
    }

    #[test]
    fn stream_framing_yields_exactly_the_messages(
        gs in prop::collection::vec(message(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let l = Limits::default();
        let sent: Vec<Bytes> = gs.iter().map(|g| parse(Bytes::from(g.text()), &l).unwrap().to_bytes()).collect();
        let stream: Vec<u8> = sent.iter().flat_map(|b| b.iter().copied()).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut prev = 0;
        for p in points {
            buf.extend_from_slice(&stream[prev..p]);
            prev = p;
            while let Some(n) = frame_len(&buf, &l).expect("valid stream") {
                let frame = buf.split_to(n).freeze();
                got.push(parse(frame, &l).expect("frame parses"));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got.len(), gs.len());
        for (m, g) in got.iter().zip(&gs) {
            same_as_generated(m, g);
        }
    }

    #[test]
    fn messages_above_the_cap_are_refused(g in message(), at in any::<prop::sample::Index>()) {
        let text = g.text();
        let cap = 100 + at.index(text.len() - 100);
        let l = Limits { max_message: cap, max_headers: 256 };
        prop_assert_eq!(parse(Bytes::from(text.clone()), &l).unwrap_err(), ParseError::TooLarge(cap));
        prop_assert_eq!(parse_datagram(Bytes::from(text.clone()), &l).unwrap_err(), ParseError::TooLarge(cap));
        prop_assert_eq!(frame_len(&text, &l).unwrap_err(), ParseError::TooLarge(cap));
        // A stream that never ends its headers is refused once past the cap too.
        let endless = vec![b'a'; cap + 1];
        prop_assert_eq!(frame_len(&endless, &l).unwrap_err(), ParseError::TooLarge(cap));
    }
}
