use super::*;

/// An offer from the Microsoft SIP proxy (non-bypass), shaped like the samples in Microsoft's
/// Direct Routing documentation: SRTP with SDES (two crypto lines), ICE candidates, rtcp-mux,
/// SILK/G722/PCMU/PCMA, CN and telephone-event. Keys are made up.
const TEAMS: &str = "v=0\r\n\
o=- 0 0 IN IP4 52.114.76.76\r\n\
s=session\r\n\
c=IN IP4 52.114.76.76\r\n\
b=CT:10000000\r\n\
t=0 0\r\n\
m=audio 53110 RTP/SAVP 104 9 103 111 18 0 8 97 101 13 118\r\n\
c=IN IP4 52.114.76.76\r\n\
a=rtcp:53111\r\n\
a=ice-ufrag:mQbN\r\n\
a=ice-pwd:Fh2lP5sNwO9cVbWqXc8TY3Sn\r\n\
a=rtcp-mux\r\n\
a=candidate:1 1 UDP 54001663 52.114.76.76 53110 typ relay raddr 10.0.0.5 rport 30524\r\n\
a=candidate:1 2 UDP 54001662 52.114.76.76 53111 typ relay raddr 10.0.0.5 rport 30525\r\n\
a=candidate:2 1 tcp-act 54002175 52.114.76.76 53110 typ relay raddr 10.0.0.5 rport 30524\r\n\
a=label:main-audio\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:JaA5tFfJSfSN6bP29vsPEMkbGPjyxxP2YRpPERUa|2^31|1:1\r\n\
a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:L5ZIOpu7aBs9RF9CzOTQCAIZxyw7IoMBcE1jR3Fg|2^31\r\n\
a=rtpmap:104 SILK/16000\r\n\
a=fmtp:104 useinbandfec=1; usedtx=0\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:103 SILK/8000\r\n\
a=fmtp:103 useinbandfec=1; usedtx=0\r\n\
a=rtpmap:111 SIREN/16000\r\n\
a=fmtp:111 bitrate=16000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:97 RED/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:118 CN/16000\r\n\
a=ptime:20\r\n";

/// A Mitel MX-ONE style offer on a plain RTP trunk, LF line ends.
const MITEL: &str = "v=0\n\
o=MXONE 1234567890 1234567891 IN IP4 10.10.20.5\n\
s=-\n\
c=IN IP4 10.10.20.6\n\
t=0 0\n\
m=audio 40000 RTP/AVP 8 0 9 101\n\
a=rtpmap:8 PCMA/8000\n\
a=rtpmap:0 PCMU/8000\n\
a=rtpmap:9 G722/8000\n\
a=rtpmap:101 telephone-event/8000\n\
a=fmtp:101 0-15\n\
a=ptime:20\n\
a=sendrecv\n";

fn teams() -> Sdp {
    Sdp::parse(Bytes::from_static(TEAMS.as_bytes())).unwrap()
}

#[test]
fn teams_offer_typed_views() {
    let s = teams();
    assert_eq!(s.origin().unwrap().address, "52.114.76.76");
    assert_eq!(s.session_name(), Some("session"));
    assert_eq!(s.field('b'), Some("CT:10000000"));
    assert_eq!(s.media.len(), 1);
    let m = &s.media[0];
    assert_eq!(m.media, "audio");
    assert_eq!(m.port, 53110);
    assert_eq!(m.proto, "RTP/SAVP");
    assert!(m.is_secure());
    assert_eq!(m.payload_types(), vec![104, 9, 103, 111, 18, 0, 8, 97, 101, 13, 118]);
    assert_eq!(m.connection().unwrap().ip(), Some("52.114.76.76".parse().unwrap()));
    assert_eq!(m.rtcp(), Some(Rtcp { port: 53111, connection: None }));
    assert!(m.rtcp_mux());
    assert_eq!(m.ice_ufrag(), Some("mQbN"));
    assert_eq!(m.ice_pwd(), Some("Fh2lP5sNwO9cVbWqXc8TY3Sn"));
    assert!(!s.ice_lite());
    assert_eq!(m.ptime(), Some(20));
    assert_eq!(s.media_direction(0), Direction::SendRecv);

    let silk = m.rtpmap(104).unwrap();
    assert_eq!((silk.encoding.as_str(), silk.clock_rate), ("SILK", 16000));
    assert_eq!(m.fmtp(104), Some("useinbandfec=1; usedtx=0"));
    assert_eq!(m.fmtp(101), Some("0-16"));
    assert_eq!(m.rtpmap(101).unwrap().encoding, "telephone-event");
    assert_eq!(m.rtpmap(118).unwrap().clock_rate, 16000);
    assert_eq!(m.rtpmaps().len(), 11);

    let c = m.candidates();
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].component, 1);
    assert_eq!(c[0].priority, 54001663);
    assert_eq!(c[0].port, 53110);
    assert_eq!(c[0].typ, "relay");
    assert_eq!(c[0].raddr(), Some("10.0.0.5"));
    assert_eq!(c[0].rport(), Some(30524));
    assert_eq!(c[2].transport, "tcp-act");
    assert_eq!(
        c[0].to_string(),
        "1 1 UDP 54001663 52.114.76.76 53110 typ relay raddr 10.0.0.5 rport 30524"
    );

    let cr = m.cryptos();
    assert_eq!(cr.len(), 2);
    assert_eq!(cr[0].tag, 2);
    assert_eq!(cr[0].suite, "AES_CM_128_HMAC_SHA1_80");
    assert_eq!(cr[0].inline_key(), Some("JaA5tFfJSfSN6bP29vsPEMkbGPjyxxP2YRpPERUa"));
    assert_eq!(cr[0].lifetime(), Some("2^31"));
    assert_eq!(cr[1].key_params, "inline:L5ZIOpu7aBs9RF9CzOTQCAIZxyw7IoMBcE1jR3Fg|2^31");
    assert_eq!(cr[1].session_params, None);
}

#[test]
fn zero_copy_slices_of_body() {
    let body = Bytes::from_static(TEAMS.as_bytes());
    let s = Sdp::parse(body.clone()).unwrap();
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    // values longer than a SipStr holds inline are slices of the body
    let long: Vec<_> = s.lines().chain(s.media[0].lines()).filter(|l| l.value().len() > crate::sip::msg::text::INLINE).collect();
    assert!(long.len() >= 3);
    for l in long {
        assert!(range.contains(&(l.value().as_ptr() as usize)), "{l:?} copied");
    }
    let cr = &s.media[0].cryptos()[0];
    assert!(range.contains(&(cr.key_params.as_ptr() as usize)));
}

#[test]
fn roundtrip_unchanged_teams() {
    let s = teams();
    assert_eq!(&s.to_bytes()[..], TEAMS.as_bytes());
    let s2 = Sdp::parse(s.to_bytes()).unwrap();
    assert_eq!(s, s2);
}

#[test]
fn mitel_lf_only_and_crlf_on_write() {
    let s = Sdp::parse(Bytes::from_static(MITEL.as_bytes())).unwrap();
    assert_eq!(s.origin().unwrap().session_version, 1234567891);
    let m = &s.media[0];
    assert!(!m.is_secure());
    assert!(m.cryptos().is_empty());
    assert!(m.connection().is_none());
    assert_eq!(s.media_connection(0).unwrap().address, "10.10.20.6");
    assert_eq!(m.rtpmap(8).unwrap().encoding, "PCMA");
    assert_eq!(m.fmtp(101), Some("0-15"));
    assert_eq!(m.direction(), Some(Direction::SendRecv));
    let out = s.to_bytes();
    assert_eq!(String::from_utf8(out.to_vec()).unwrap(), MITEL.replace('\n', "\r\n"));
}

#[test]
fn static_payload_without_rtpmap() {
    let s = Sdp::parse(Bytes::from_static(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0 8 18\r\n")).unwrap();
    assert_eq!(s.media[0].rtpmap(18).unwrap().encoding, "G729");
    assert_eq!(s.media[0].rtpmap(96), None);
}

#[test]
fn sbc_edits() {
    let mut s = teams();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    s.set_connection(&Connection::from_ip(ip));
    assert!(s.bump_version());
    assert_eq!(s.origin().unwrap().session_version, 1);
    {
        let m = &mut s.media[0];
        m.port = 20000;
        m.set_connection(&Connection::from_ip(ip));
        m.set_direction(Direction::Inactive);
        m.retain_formats(|f| f == "0" || f == "8" || f == "101");
        m.remove_attr("candidate");
        m.set_ice_credentials("abcd", "0123456789abcdefghijklmn");
        m.set_cryptos(&[Crypto::new(1, "AES_CM_128_HMAC_SHA1_80", "inline:AAAABBBBCCCCDDDDEEEEFFFFGGGGHHHHIIIIJJJJ|2^31")]);
        m.set_rtcp(&Rtcp { port: 20001, connection: None });
        m.set_ptime(30);
    }
    let out = String::from_utf8(s.to_bytes().to_vec()).unwrap();
    let again = Sdp::parse(Bytes::from(out.clone())).unwrap();
    let m = &again.media[0];
    assert_eq!(m.port, 20000);
    assert_eq!(m.payload_types(), vec![0, 8, 101]);
    assert_eq!(m.rtpmaps().len(), 3);
    assert_eq!(m.fmtp(104), None);
    assert_eq!(m.fmtp(101), Some("0-16"));
    assert!(m.candidates().is_empty());
    assert_eq!(m.direction(), Some(Direction::Inactive));
    assert_eq!(again.media_direction(0), Direction::Inactive);
    assert_eq!(m.cryptos().len(), 1);
    assert_eq!(m.ice_ufrag(), Some("abcd"));
    assert_eq!(m.ptime(), Some(30));
    assert_eq!(again.connection().unwrap().address, "192.0.2.10");
    // c= stays before b= and a= in the media section, a direction line is an attribute.
    assert!(out.contains("m=audio 20000 RTP/SAVP 0 8 101\r\nc=IN IP4 192.0.2.10\r\na=rtcp:20001\r\n"));
    assert!(out.contains("a=inactive\r\n"));
    // Direction replaced, never doubled.
    let mut m2 = again.media[0].clone();
    m2.set_direction(Direction::SendOnly);
    assert_eq!(m2.attrs("inactive").count() + m2.attrs("sendonly").count(), 1);
}

#[test]
fn debug_never_shows_keys() {
    let s = teams();
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("JaA5tFfJSfSN6bP29vsPEMkbGPjyxxP2YRpPERUa"), "{dbg}");
    assert!(!dbg.contains("L5ZIOpu7aBs9RF9CzOTQCAIZxyw7IoMBcE1jR3Fg"));
    assert!(!dbg.contains("Fh2lP5sNwO9cVbWqXc8TY3Sn"));
    assert!(dbg.contains("inline:<redacted>|2^31|1:1"));
    let c = &s.media[0].cryptos()[0];
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("JaA5tFf"), "{dbg}");
    assert!(dbg.contains("AES_CM_128_HMAC_SHA1_80"));
    let red = redact_secrets(TEAMS);
    assert!(!red.contains("JaA5tFf") && !red.contains("Fh2lP5"));
    assert!(red.contains("a=rtpmap:104 SILK/16000\r\n"));
}

#[test]
fn attribute_api() {
    let mut s = teams();
    let m = &mut s.media[0];
    assert_eq!(m.attr("label"), Some("main-audio"));
    assert_eq!(m.attr("LABEL"), Some("main-audio"));
    assert_eq!(m.attr("rtcp-mux"), Some(""));
    assert_eq!(m.attrs("crypto").count(), 2);
    m.set_attr("label", "x");
    assert_eq!(m.attr("label"), Some("x"));
    assert_eq!(m.remove_attr("crypto"), 2);
    m.push_attr("x-evil", "a\r\nm=video 1 RTP/AVP 0");
    assert_eq!(m.attr("x-evil"), Some("a  m=video 1 RTP/AVP 0"));
    let again = Sdp::parse(s.to_bytes()).unwrap();
    assert_eq!(again.media.len(), 1);
}

#[test]
fn order_regenerated_and_unknown_lines_kept() {
    // a= before c= and an unknown y= line, out of order in the session section.
    let src = "v=0\no=- 1 2 IN IP4 1.1.1.1\na=ice-lite\ns=-\ny=unknown stuff\nc=IN IP4 1.1.1.1\nt=0 0\nr=7d 1h 0 25h\nt=1 2\nm=audio 1000/2 RTP/AVP 0\na=sendonly\nc=IN IP4 2.2.2.2\nm=image 0 udptl t38\n";
    let s = Sdp::parse(Bytes::from(src)).unwrap();
    assert!(s.ice_lite());
    let out = String::from_utf8(s.to_bytes().to_vec()).unwrap();
    assert_eq!(
        out,
        "v=0\r\no=- 1 2 IN IP4 1.1.1.1\r\ns=-\r\ny=unknown stuff\r\nc=IN IP4 1.1.1.1\r\nt=0 0\r\nr=7d 1h 0 25h\r\nt=1 2\r\na=ice-lite\r\n\
m=audio 1000/2 RTP/AVP 0\r\nc=IN IP4 2.2.2.2\r\na=sendonly\r\nm=image 0 udptl t38\r\n"
    );
    assert_eq!(s.media[0].port_count, Some(2));
    assert_eq!(s.media[1].formats, vec![SipStr::from("t38")]);
}

#[test]
fn malformed_is_error() {
    let bad: &[&[u8]] = &[
        b"",
        b"\r\n\r\n",
        b"o=- 1 1 IN IP4 1.1.1.1\r\n",
        b"v=1\r\n",
        b"v=0\r\nthis is no line\r\n",
        b"v=0\r\n=x\r\n",
        b"v=0\r\nm=audio\r\n",
        b"v=0\r\nm=audio 99999 RTP/AVP 0\r\n",
        b"v=0\r\nm=audio x RTP/AVP 0\r\n",
        b"v=0\r\nm=audio 1/ RTP/AVP 0\r\n",
        b"v=0\r\ns=\xff\r\n",
    ];
    for b in bad {
        assert!(Sdp::parse(Bytes::from_static(b)).is_err(), "{:?}", String::from_utf8_lossy(b));
    }
}

#[test]
fn limits() {
    let mut s = String::from("v=0\r\n");
    for _ in 0..40 {
        s.push_str("m=audio 1 RTP/AVP 0\r\n");
    }
    assert_eq!(Sdp::parse(Bytes::from(s.clone())), Err(SdpError::TooManyMedia(32)));
    let l = SdpLimits { max_lines: 10, max_media: 100 };
    assert_eq!(Sdp::parse_with(Bytes::from(s), &l), Err(SdpError::TooManyLines(10)));
}

#[test]
fn malformed_attributes_are_skipped_not_fatal() {
    let src = "v=0\r\nm=audio 1 RTP/SAVP 0\r\na=crypto:x AES inline:k\r\na=crypto:1\r\na=candidate:1 1 UDP notanumber 1.1.1.1 1 typ host\r\na=rtpmap:abc PCMU\r\na=rtcp:99999\r\na=ptime:abc\r\n";
    let s = Sdp::parse(Bytes::from(src)).unwrap();
    let m = &s.media[0];
    assert!(m.cryptos().is_empty());
    assert!(m.candidates().is_empty());
    assert!(m.rtpmaps().is_empty());
    assert!(m.rtcp().is_none());
    assert!(m.ptime().is_none());
}

#[test]
fn build_from_scratch() {
    let o = Origin {
        username: "drbridge".into(),
        session_id: "42".into(),
        session_version: 1,
        net_type: "IN".into(),
        addr_type: "IP4".into(),
        address: "192.0.2.1".into(),
    };
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let mut s = Sdp::new(&o, Some(&Connection::from_ip(ip)));
    s.set_attr("ice-lite", "");
    let mut m = Media::new("audio", 30000, "RTP/SAVP", &["0", "101"]);
    m.set_rtpmap(&RtpMap { payload_type: 0, encoding: "PCMU".into(), clock_rate: 8000, channels: None });
    m.set_rtpmap(&RtpMap { payload_type: 101, encoding: "telephone-event".into(), clock_rate: 8000, channels: None });
    m.set_fmtp(101, "0-16");
    m.set_rtcp_mux(true);
    m.set_direction(Direction::SendRecv);
    s.media.push(m);
    let out = String::from_utf8(s.to_bytes().to_vec()).unwrap();
    assert_eq!(
        out,
        "v=0\r\no=drbridge 42 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=ice-lite\r\n\
m=audio 30000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=rtcp-mux\r\na=sendrecv\r\n"
    );
}

#[test]
fn direction_answer() {
    assert_eq!(Direction::SendOnly.answer(), Direction::RecvOnly);
    assert_eq!(Direction::Inactive.answer(), Direction::Inactive);
    assert!(Direction::SendRecv.sends() && !Direction::Inactive.receives());
}
