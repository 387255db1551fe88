use super::*;
use bytes::Bytes;

/// A Microsoft Teams Direct Routing offer (non-bypass), shaped like Microsoft's samples: SDES
/// with an MKI line, a plain _80 line and a _32 line, ICE candidates (RTP and RTCP, UDP and
/// TCP), rtcp-mux with a=rtcp fallback, SILK/G722/SIREN/G729/PCMU/PCMA/RED/CN, telephone-event
/// 101, and Teams' own attributes. Keys and passwords are made up.
const TEAMS_OFFER: &str = "v=0\r\n\
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
a=x-ssrc-range:1296512000-1296512000\r\n\
a=label:main-audio\r\n\
a=rtcp-fb:* x-message app send:dsh recv:dsh\r\n\
a=rtcp-rsize\r\n\
a=extmap:1 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:JaA5tFfJSfSN6bP29vsPEMkbGPjyxxP2YRpPERUa|2^31|1:1\r\n\
a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:L5ZIOpu7aBs9RF9CzOTQCAIZxyw7IoMBcE1jR3Fg|2^31\r\n\
a=crypto:4 AES_CM_128_HMAC_SHA1_32 inline:Kx9tRw2mPq7vLs3nYb8cZd4fGh6jJk1lMn5oPp0q|2^31\r\n\
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

const TEAMS_KEY_TAG3: &str = "L5ZIOpu7aBs9RF9CzOTQCAIZxyw7IoMBcE1jR3Fg";
const TEAMS_PWD: &str = "Fh2lP5sNwO9cVbWqXc8TY3Sn";

/// The MX-ONE answer to our offer: PCMA, telephone-event under its own number 96.
const PBX_ANSWER: &str = "v=0\n\
o=MXONE 99 100 IN IP4 10.10.20.5\n\
s=-\n\
c=IN IP4 10.10.20.6\n\
t=0 0\n\
m=audio 40002 RTP/AVP 8 96\n\
a=rtpmap:8 PCMA/8000\n\
a=rtpmap:96 telephone-event/8000\n\
a=fmtp:96 0-15\n\
a=ptime:20\n\
a=sendrecv\n";

/// An MX-ONE offer on a plain RTP trunk (telephone-event as 96).
const PBX_OFFER: &str = "v=0\r\n\
o=MXONE 1234567890 1234567891 IN IP4 10.10.20.5\r\n\
s=-\r\n\
c=IN IP4 10.10.20.6\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 8 0 9 96\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:96 telephone-event/8000\r\n\
a=fmtp:96 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

/// The Teams answer to our offer: PCMA and telephone-event 101, echoing our crypto tag 1.
const TEAMS_ANSWER: &str = "v=0\r\n\
o=- 0 1 IN IP4 52.114.76.77\r\n\
s=session\r\n\
c=IN IP4 52.114.76.77\r\n\
b=CT:10000000\r\n\
t=0 0\r\n\
m=audio 52000 RTP/SAVP 8 101\r\n\
c=IN IP4 52.114.76.77\r\n\
a=rtcp:52000\r\n\
a=ice-ufrag:Tq3x\r\n\
a=ice-pwd:Zz8Yy7Xx6Ww5Vv4Uu3Tt2Ss1\r\n\
a=rtcp-mux\r\n\
a=candidate:1 1 UDP 2130706431 52.114.76.77 52000 typ host\r\n\
a=x-ssrc-range:4000-4000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n";

fn sdp(s: &str) -> Sdp {
    Sdp::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
}

fn text(s: &Sdp) -> String {
    String::from_utf8(s.to_bytes().to_vec()).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const OUR_PWD: &str = "drbridgeIcePwd0123456789";

fn our_key() -> SrtpKey {
    SrtpKey { suite: SrtpSuite::AesCm128HmacSha1_80, tag: 1, key: [0x11; 16], salt: [0x22; 14] }
}

fn our_key_b64() -> String {
    let mut raw = vec![0x11u8; 16];
    raw.extend_from_slice(&[0x22; 14]);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn teams_local() -> LocalMedia {
    LocalMedia {
        rtp: addr("127.0.0.2:30000"),
        rtcp: addr("127.0.0.2:30001"),
        srtp: Some(our_key()),
        ice: Some(IceCredentials { ufrag: "dRbU".into(), pwd: OUR_PWD.into() }),
    }
}

fn pbx_local() -> LocalMedia {
    LocalMedia { rtp: addr("127.0.0.1:20000"), rtcp: addr("127.0.0.1:20001"), srtp: None, ice: None }
}

fn g711_g722_profile() -> CodecProfile {
    CodecProfile {
        allowed: vec!["pcmu".into(), "PCMA".into(), "G722".into(), "telephone-event".into()],
        strip_ice: true,
        max_codecs: None,
    }
}

#[test]
#[ignore]
fn print_samples() {
    let offer = sdp(TEAMS_OFFER);
    let (sent, _) =
        rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &g711_g722_profile(), &mut SdpSession::new(1))
            .unwrap();
    let (back, _) = rewrite_answer(
        &sdp(PBX_ANSWER),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &sent,
        &offer,
        &mut SdpSession::new(2),
    )
    .unwrap();
    let (o2, _) = rewrite_offer(
        &sdp(PBX_OFFER),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut SdpSession::new(3),
    )
    .unwrap();
    let (a2, _) = rewrite_answer(
        &sdp(TEAMS_ANSWER),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &o2,
        &sdp(PBX_OFFER),
        &mut SdpSession::new(4),
    )
    .unwrap();
    for s in [&sent, &back, &o2, &a2] {
        println!("{}---- {} bytes", text(s), encoded_len(s));
    }
}

// ---------------------------------------------------------------------------------------------
// Teams -> PBX

#[test]
fn teams_offer_to_pbx_is_plain_small_and_ours() {
    let offer = sdp(TEAMS_OFFER);
    let mut pbx_session = SdpSession::new(4711);
    let (out, remote) =
        rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &g711_g722_profile(), &mut pbx_session).unwrap();
    let t = text(&out);

    // Our origin and address only.
    let o = out.origin().unwrap();
    assert_eq!(&*o.username, "drbridge");
    assert_eq!(&*o.session_id, "4711");
    assert_eq!(o.session_version, 1);
    assert_eq!(&*o.address, "127.0.0.1");
    assert_eq!(out.session_name(), Some("-"));
    assert_eq!(out.connection().unwrap().ip(), Some("127.0.0.1".parse().unwrap()));
    assert!(!t.contains("52.114"), "{t}");
    assert!(!t.contains("10.0.0.5"));

    // One plain audio stream, codecs in Teams' order, telephone-event kept.
    assert_eq!(out.media.len(), 1);
    let m = &out.media[0];
    assert_eq!(m.port, 20000);
    assert_eq!(&*m.proto, "RTP/AVP");
    assert_eq!(m.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["9", "0", "8", "101"]);
    assert_eq!(m.rtpmap(101).unwrap().encoding.as_str(), "telephone-event");
    assert_eq!(m.fmtp(101), Some("0-16"));
    assert_eq!(m.ptime(), Some(20));
    assert_eq!(m.direction(), Some(Direction::SendRecv));

    // Nothing of SRTP, ICE, mux, Teams extensions; RTCP on port+1 (no a=rtcp needed).
    for gone in [
        "crypto",
        "ice-",
        "candidate",
        "rtcp-mux",
        "x-ssrc-range",
        "label",
        "rtcp-fb",
        "extmap",
        "rtcp-rsize",
        "SILK",
        "SIREN",
        "RED",
        "CN/",
        "b=CT",
    ] {
        assert!(!t.contains(gone), "{gone} left in {t}");
    }
    assert!(m.rtcp().is_none());
    assert!(encoded_len(&out) < 400, "{} bytes", encoded_len(&out));
    assert_eq!(encoded_len(&out), out.to_bytes().len());

    // What Teams told us.
    assert_eq!(remote.rtp, Some(addr("52.114.76.76:53110")));
    assert!(remote.rtcp_mux);
    assert_eq!(remote.rtcp, remote.rtp);
    let key = remote.srtp.clone().unwrap();
    assert_eq!(key.tag, 3, "the MKI line (tag 2) is skipped, the first usable one taken");
    assert_eq!(key.suite, SrtpSuite::AesCm128HmacSha1_80);
    let raw = base64::engine::general_purpose::STANDARD.decode(TEAMS_KEY_TAG3).unwrap();
    assert_eq!(&key.key[..], &raw[..16]);
    assert_eq!(&key.salt[..], &raw[16..]);
    assert_eq!(remote.ice, Some(IceCredentials { ufrag: "mQbN".into(), pwd: TEAMS_PWD.into() }));
    assert!(remote.sends && remote.receives);
    assert!(remote.pt_map.is_empty());
    assert_eq!(pbx_session.version(), 1);
}

#[test]
fn pbx_default_profile_caps_codecs() {
    let offer = sdp(TEAMS_OFFER);
    let (out, _) = rewrite_offer(
        &offer,
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &CodecProfile::pbx_default(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    // G722, G729 (with its fmtp), PCMU, PCMA: four codecs, then telephone-event.
    let m = &out.media[0];
    assert_eq!(m.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["9", "18", "0", "8", "101"]);
    assert_eq!(m.fmtp(18), Some("annexb=no"));
    let limited = CodecProfile { max_codecs: Some(1), ..CodecProfile::pbx_default() };
    let (out, _) =
        rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &limited, &mut SdpSession::new(1)).unwrap();
    assert_eq!(out.media[0].formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["9", "101"]);
}

#[test]
fn pbx_answer_back_to_teams_maps_pts_and_echoes_crypto() {
    let offer = sdp(TEAMS_OFFER);
    let mut pbx_session = SdpSession::new(10);
    let mut teams_session = SdpSession::new(20);
    let (sent, teams_remote) =
        rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &g711_g722_profile(), &mut pbx_session).unwrap();
    let answer = sdp(PBX_ANSWER);
    let (out, pbx_remote) =
        rewrite_answer(&answer, Trunk::Pbx, &teams_local(), Trunk::Teams, &sent, &offer, &mut teams_session).unwrap();
    let t = text(&out);

    // RFC 3264: the Teams offer's numbering; 96 (PBX) <-> 101 (Teams) for the relay.
    let m = &out.media[0];
    assert_eq!(m.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["8", "101"]);
    assert_eq!(m.rtpmap(101).unwrap().encoding.as_str(), "telephone-event");
    assert_eq!(m.fmtp(101), Some("0-15"));
    assert!(!t.contains(":96"));
    assert_eq!(pbx_remote.pt_map, vec![(96, 101)]);

    // SRTP: same profile as the offer, our key under the accepted tag and suite.
    assert_eq!(&*m.proto, "RTP/SAVP");
    let c = m.cryptos();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].tag, teams_remote.srtp.as_ref().unwrap().tag);
    assert_eq!(c[0].tag, 3);
    assert_eq!(&*c[0].suite, "AES_CM_128_HMAC_SHA1_80");
    assert_eq!(c[0].inline_key(), Some(our_key_b64().as_str()));
    assert_eq!(c[0].lifetime(), Some("2^31"));

    // ICE-lite with our credentials, one host candidate (mux accepted, so no component 2).
    assert!(out.ice_lite());
    assert_eq!(m.ice_ufrag(), Some("dRbU"));
    assert_eq!(m.ice_pwd(), Some(OUR_PWD));
    let cands = m.candidates();
    assert_eq!(cands.len(), 1);
    assert_eq!(cands[0].component, 1);
    assert_eq!(&*cands[0].address, "127.0.0.2");
    assert_eq!(cands[0].port, 30000);
    assert_eq!(cands[0].priority, 2130706431);
    assert_eq!(&*cands[0].typ, "host");
    assert!(m.rtcp_mux());
    assert_eq!(m.rtcp().unwrap().port, 30000);
    assert_eq!(m.direction(), Some(Direction::SendRecv));
    assert_eq!(out.connection().unwrap().ip(), Some("127.0.0.2".parse().unwrap()));
    assert!(!t.contains("10.10.20"));
    assert!(!t.contains("MXONE"));

    // What the PBX told us.
    assert_eq!(pbx_remote.rtp, Some(addr("10.10.20.6:40002")));
    assert_eq!(pbx_remote.rtcp, Some(addr("10.10.20.6:40003")));
    assert!(!pbx_remote.rtcp_mux);
    assert!(pbx_remote.srtp.is_none());
    assert!(pbx_remote.ice.is_none());
}

#[test]
fn answer_183_and_200_are_identical() {
    let offer = sdp(TEAMS_OFFER);
    let mut pbx_session = SdpSession::new(10);
    let mut teams_session = SdpSession::new(20);
    let (sent, _) =
        rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &g711_g722_profile(), &mut pbx_session).unwrap();
    let answer = sdp(PBX_ANSWER);
    let (a183, _) =
        rewrite_answer(&answer, Trunk::Pbx, &teams_local(), Trunk::Teams, &sent, &offer, &mut teams_session).unwrap();
    let (a200, _) =
        rewrite_answer(&answer, Trunk::Pbx, &teams_local(), Trunk::Teams, &sent, &offer, &mut teams_session).unwrap();
    let ice_lines = |s: &Sdp| -> Vec<String> {
        text(s).lines().filter(|l| l.starts_with("a=ice") || l.starts_with("a=candidate")).map(String::from).collect()
    };
    assert_eq!(ice_lines(&a183).len(), 4, "ice-lite, ufrag, pwd, candidate");
    assert_eq!(ice_lines(&a183), ice_lines(&a200));
    // Unchanged answer: the same SDP with the same o= version (RFC 3264 8).
    assert_eq!(a183.to_bytes(), a200.to_bytes());
    assert_eq!(teams_session.version(), 1);
}

#[test]
fn answer_keeps_offer_m_line_count_and_rejects_others() {
    let with_video = TEAMS_OFFER.replace("a=ptime:20\r\n", "a=ptime:20\r\nm=video 53120 RTP/SAVP 122 123\r\na=rtpmap:122 X-H264UC/90000\r\na=rtpmap:123 x-ulpfecuc/90000\r\n");
    let video_first = format!(
        "{}m=video 53120 RTP/AVP 122\r\na=rtpmap:122 H264/90000\r\n{}",
        &with_video[..with_video.find("m=audio").unwrap()],
        &TEAMS_OFFER[TEAMS_OFFER.find("m=audio").unwrap()..]
    );
    for (src, audio_at) in [(with_video.as_str(), 0), (video_first.as_str(), 1)] {
        let offer = sdp(src);
        let (sent, _) = rewrite_offer(
            &offer,
            Trunk::Teams,
            &pbx_local(),
            Trunk::Pbx,
            &g711_g722_profile(),
            &mut SdpSession::new(1),
        )
        .unwrap();
        assert_eq!(sent.media.len(), 1, "only audio is offered on");
        let (out, _) = rewrite_answer(
            &sdp(PBX_ANSWER),
            Trunk::Pbx,
            &teams_local(),
            Trunk::Teams,
            &sent,
            &offer,
            &mut SdpSession::new(2),
        )
        .unwrap();
        assert_eq!(out.media.len(), 2);
        let video = &out.media[1 - audio_at];
        assert_eq!(&*video.media, "video");
        assert_eq!(video.port, 0);
        assert_eq!(video.proto, offer.media[1 - audio_at].proto);
        assert_eq!(video.formats, offer.media[1 - audio_at].formats);
        assert_eq!(&*out.media[audio_at].media, "audio");
        assert_eq!(out.media[audio_at].port, 30000);
    }
}

// ---------------------------------------------------------------------------------------------
// PBX -> Teams

#[test]
fn pbx_offer_to_teams_has_srtp_ice_lite_and_mux() {
    let offer = sdp(PBX_OFFER);
    let mut teams_session = SdpSession::new(77);
    let (out, pbx_remote) =
        rewrite_offer(&offer, Trunk::Pbx, &teams_local(), Trunk::Teams, &CodecProfile::teams(), &mut teams_session)
            .unwrap();
    let t = text(&out);
    assert!(out.ice_lite());
    let m = &out.media[0];
    assert_eq!(&*m.proto, "RTP/SAVP");
    assert_eq!(m.port, 30000);
    assert_eq!(m.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["8", "0", "9", "96"]);
    let c = m.cryptos();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].tag, 1);
    assert_eq!(&*c[0].suite, "AES_CM_128_HMAC_SHA1_80");
    assert_eq!(c[0].inline_key(), Some(our_key_b64().as_str()));
    assert_eq!(m.ice_ufrag(), Some("dRbU"));
    assert_eq!(m.ice_pwd(), Some(OUR_PWD));
    assert!(m.rtcp_mux());
    assert_eq!(m.rtcp().unwrap().port, 30001, "fallback RTCP port in the offer");
    let cands = m.candidates();
    assert_eq!(cands.len(), 2);
    assert_eq!((cands[0].component, cands[0].port, cands[0].priority), (1, 30000, 2130706431));
    assert_eq!((cands[1].component, cands[1].port, cands[1].priority), (2, 30001, 2130706430));
    assert!(cands.iter().all(|c| &*c.transport == "UDP" && &*c.address == "127.0.0.2"));
    assert!(!t.contains("10.10.20"));
    assert!(!t.contains("0.0.0.0"));

    assert_eq!(pbx_remote.rtp, Some(addr("10.10.20.6:40000")));
    assert_eq!(pbx_remote.rtcp, Some(addr("10.10.20.6:40001")));
    assert!(!pbx_remote.rtcp_mux);
    assert!(pbx_remote.srtp.is_none());
}

#[test]
fn teams_answer_back_to_pbx() {
    let offer = sdp(PBX_OFFER);
    let mut teams_session = SdpSession::new(77);
    let mut pbx_session = SdpSession::new(78);
    let (sent, _) =
        rewrite_offer(&offer, Trunk::Pbx, &teams_local(), Trunk::Teams, &CodecProfile::teams(), &mut teams_session)
            .unwrap();
    let answer = sdp(TEAMS_ANSWER);
    let (out, teams_remote) =
        rewrite_answer(&answer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &sent, &offer, &mut pbx_session).unwrap();
    let t = text(&out);
    let m = &out.media[0];
    assert_eq!(&*m.proto, "RTP/AVP");
    assert_eq!(m.port, 20000);
    assert_eq!(m.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["8", "96"]);
    assert_eq!(m.fmtp(96), Some("0-16"));
    for gone in ["crypto", "ice", "candidate", "rtcp-mux", "x-ssrc", "52.114", "b=CT"] {
        assert!(!t.contains(gone), "{gone} in {t}");
    }
    assert!(m.rtcp().is_none(), "RTCP on port+1 toward the PBX");

    assert_eq!(teams_remote.pt_map, vec![(101, 96)]);
    assert_eq!(teams_remote.rtp, Some(addr("52.114.76.77:52000")));
    assert!(teams_remote.rtcp_mux);
    assert_eq!(teams_remote.rtcp, teams_remote.rtp);
    let k = teams_remote.srtp.as_ref().unwrap();
    assert_eq!(k.tag, 1);
    assert_eq!(k.suite, SrtpSuite::AesCm128HmacSha1_80);
    assert_eq!(teams_remote.ice.as_ref().unwrap().ufrag, "Tq3x");
}

#[test]
fn teams_answer_without_usable_crypto_is_refused() {
    let offer = sdp(PBX_OFFER);
    let (sent, _) = rewrite_offer(
        &offer,
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    let plain = TEAMS_ANSWER.replace("RTP/SAVP", "RTP/AVP");
    let r =
        rewrite_answer(&sdp(&plain), Trunk::Teams, &pbx_local(), Trunk::Pbx, &sent, &offer, &mut SdpSession::new(2));
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
    let bad_key = TEAMS_ANSWER.replace("inline:WVNf", "inline:!!!!");
    let r =
        rewrite_answer(&sdp(&bad_key), Trunk::Teams, &pbx_local(), Trunk::Pbx, &sent, &offer, &mut SdpSession::new(2));
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
    let rejected = TEAMS_ANSWER.replace("m=audio 52000", "m=audio 0");
    let r =
        rewrite_answer(&sdp(&rejected), Trunk::Teams, &pbx_local(), Trunk::Pbx, &sent, &offer, &mut SdpSession::new(2));
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Hold, versions, re-offers

#[test]
fn pbx_hold_with_zero_address_becomes_sendonly_toward_teams() {
    let mut teams_session = SdpSession::new(5);
    let (first, _) = rewrite_offer(
        &sdp(PBX_OFFER),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut teams_session,
    )
    .unwrap();
    assert_eq!(first.origin().unwrap().session_version, 1);

    // RFC 2543 hold: c=0.0.0.0 with sendrecv.
    let hold = PBX_OFFER.replace("c=IN IP4 10.10.20.6", "c=IN IP4 0.0.0.0");
    let (out, remote) = rewrite_offer(
        &sdp(&hold),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut teams_session,
    )
    .unwrap();
    let t = text(&out);
    assert!(!t.contains("0.0.0.0"), "{t}");
    assert_eq!(out.connection().unwrap().ip(), Some("127.0.0.2".parse().unwrap()));
    assert_eq!(out.media[0].direction(), Some(Direction::SendOnly));
    assert_eq!(out.media[0].port, 30000);
    assert_eq!(remote.rtp, None);
    assert_eq!(remote.rtcp, None);
    assert!(remote.sends && !remote.receives);
    let o = out.origin().unwrap();
    assert_eq!(&*o.session_id, "5");
    assert_eq!(o.session_version, 2);

    // c=0.0.0.0 with a=inactive (or recvonly): inactive.
    let inactive = hold.replace("a=sendrecv", "a=inactive");
    let (out, remote) = rewrite_offer(
        &sdp(&inactive),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut teams_session,
    )
    .unwrap();
    assert_eq!(out.media[0].direction(), Some(Direction::Inactive));
    assert!(!remote.sends && !remote.receives);
    assert_eq!(out.origin().unwrap().session_version, 3);

    // Resume: back to sendrecv, version 4, same id.
    let (out, remote) = rewrite_offer(
        &sdp(PBX_OFFER),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut teams_session,
    )
    .unwrap();
    assert_eq!(out.media[0].direction(), Some(Direction::SendRecv));
    assert!(remote.sends && remote.receives);
    let o = out.origin().unwrap();
    assert_eq!((&*o.session_id, o.session_version), ("5", 4));
    // ICE credentials stay through the re-offers.
    assert_eq!(out.media[0].ice_ufrag(), first.media[0].ice_ufrag());
    assert_eq!(out.media[0].ice_pwd(), first.media[0].ice_pwd());
}

#[test]
fn teams_hold_keeps_direction_toward_pbx() {
    let hold = TEAMS_OFFER.replace("a=ptime:20\r\n", "a=ptime:20\r\na=sendonly\r\n");
    let (out, remote) = rewrite_offer(
        &sdp(&hold),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &g711_g722_profile(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    assert_eq!(out.media[0].direction(), Some(Direction::SendOnly));
    assert_eq!(out.connection().unwrap().ip(), Some("127.0.0.1".parse().unwrap()));
    assert!(remote.sends && !remote.receives);
    assert_eq!(remote.rtp, Some(addr("52.114.76.76:53110")), "a sendonly party still has an address");

    // The PBX answers recvonly: the answer to Teams says recvonly.
    let (sent, _) = (out.clone(), ());
    let ans = PBX_ANSWER.replace("a=sendrecv", "a=recvonly");
    let (back, pbx_remote) = rewrite_answer(
        &sdp(&ans),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &sent,
        &sdp(&hold),
        &mut SdpSession::new(2),
    )
    .unwrap();
    assert_eq!(back.media[0].direction(), Some(Direction::RecvOnly));
    assert!(!pbx_remote.sends && pbx_remote.receives);

    // A careless answerer saying sendrecv to a sendonly offer: Teams gets recvonly.
    let (back, _) = rewrite_answer(
        &sdp(PBX_ANSWER),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &sent,
        &sdp(&hold),
        &mut SdpSession::new(2),
    )
    .unwrap();
    assert_eq!(back.media[0].direction(), Some(Direction::RecvOnly));
}

#[test]
fn version_increments_only_on_change_and_session_id_is_stable() {
    let mut s = SdpSession::new(900);
    let p = CodecProfile::teams();
    let (a, _) = rewrite_offer(&sdp(PBX_OFFER), Trunk::Pbx, &teams_local(), Trunk::Teams, &p, &mut s).unwrap();
    // A session refresh re-INVITE with the same offer: the same SDP, the same version.
    let (b, _) = rewrite_offer(&sdp(PBX_OFFER), Trunk::Pbx, &teams_local(), Trunk::Teams, &p, &mut s).unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    // A changed offer (codec dropped) on the same side: version + 1.
    let fewer = PBX_OFFER.replace("RTP/AVP 8 0 9 96", "RTP/AVP 8 96");
    let (c, _) = rewrite_offer(&sdp(&fewer), Trunk::Pbx, &teams_local(), Trunk::Teams, &p, &mut s).unwrap();
    // A new local address (engine moved the stream): version + 1 again.
    let mut moved = teams_local();
    moved.rtp = addr("127.0.0.2:30010");
    moved.rtcp = addr("127.0.0.2:30011");
    let (d, _) = rewrite_offer(&sdp(&fewer), Trunk::Pbx, &moved, Trunk::Teams, &p, &mut s).unwrap();
    let v: Vec<(String, u64)> = [&a, &b, &c, &d]
        .iter()
        .map(|x| x.origin().unwrap())
        .map(|o| (o.session_id.to_string(), o.session_version))
        .collect();
    assert_eq!(v, [("900".into(), 1), ("900".into(), 1), ("900".into(), 2), ("900".into(), 3)]);
    assert_eq!(s.version(), 3);
    assert_eq!(s.session_id(), 900);
    assert!(SdpSession::random().session_id() < (1 << 62));
}

// ---------------------------------------------------------------------------------------------
// Refusals, ICE restart, secrets

#[test]
fn no_common_codec_is_not_acceptable() {
    let silk_only = TEAMS_OFFER.replace("RTP/SAVP 104 9 103 111 18 0 8 97 101 13 118", "RTP/SAVP 104 103 101 13");
    let r = rewrite_offer(
        &sdp(&silk_only),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &g711_g722_profile(),
        &mut SdpSession::new(1),
    );
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");

    // A format without rtpmap and without a static meaning is unknown, not a codec.
    let unknown = PBX_OFFER.replace("RTP/AVP 8 0 9 96", "RTP/AVP 98 96");
    let r = rewrite_offer(
        &sdp(&unknown),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut SdpSession::new(1),
    );
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");

    // No audio at all.
    let no_audio = "v=0\r\no=x 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=image 4000 udptl t38\r\n";
    let r = rewrite_offer(
        &sdp(no_audio),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut SdpSession::new(1),
    );
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
}

#[test]
fn srtp_offer_without_usable_crypto_is_not_acceptable() {
    // Only the MKI line left.
    let mki_only: String = TEAMS_OFFER
        .lines()
        .filter(|l| !l.starts_with("a=crypto:3") && !l.starts_with("a=crypto:4"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let r = rewrite_offer(
        &sdp(&mki_only),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &g711_g722_profile(),
        &mut SdpSession::new(1),
    );
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
    // Only an AES_CM_128_HMAC_SHA1_32 line: accepted, and the answer echoes its suite.
    let only32: String = TEAMS_OFFER
        .lines()
        .filter(|l| !l.starts_with("a=crypto:2") && !l.starts_with("a=crypto:3"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let offer = sdp(&only32);
    let (sent, remote) =
        rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &g711_g722_profile(), &mut SdpSession::new(1))
            .unwrap();
    assert_eq!(remote.srtp.as_ref().map(|k| (k.tag, k.suite)), Some((4, SrtpSuite::AesCm128HmacSha1_32)));
    let (back, _) = rewrite_answer(
        &sdp(PBX_ANSWER),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &sent,
        &offer,
        &mut SdpSession::new(2),
    )
    .unwrap();
    let c = back.media[0].cryptos();
    assert_eq!((c[0].tag, c[0].suite.as_str()), (4, "AES_CM_128_HMAC_SHA1_32"));
    // An SRTP offer and no local key toward that side: refused.
    let mut no_key = teams_local();
    no_key.srtp = None;
    let r = rewrite_answer(&sdp(PBX_ANSWER), Trunk::Pbx, &no_key, Trunk::Teams, &sent, &offer, &mut SdpSession::new(2));
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
}

#[test]
fn ice_restart_is_detected_from_new_credentials() {
    let first = offer_remote_media(&sdp(TEAMS_OFFER)).unwrap();
    let same = offer_remote_media(&sdp(TEAMS_OFFER)).unwrap();
    assert!(!ice_restart_requested(&first, &same));
    let restarted =
        TEAMS_OFFER.replace("ice-ufrag:mQbN", "ice-ufrag:nEw1").replace(TEAMS_PWD, "NewPasswordNewPassword00");
    let new = offer_remote_media(&sdp(&restarted)).unwrap();
    assert!(ice_restart_requested(&first, &new));
    let no_ice = offer_remote_media(&sdp(PBX_OFFER)).unwrap();
    assert!(!ice_restart_requested(&no_ice, &first));
    assert!(!ice_restart_requested(&first, &no_ice));
}

#[test]
fn keys_never_in_debug_output() {
    let offer = sdp(TEAMS_OFFER);
    let (sent, teams_remote) =
        rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &g711_g722_profile(), &mut SdpSession::new(1))
            .unwrap();
    let mut teams_session = SdpSession::new(2);
    let (back, _) =
        rewrite_answer(&sdp(PBX_ANSWER), Trunk::Pbx, &teams_local(), Trunk::Teams, &sent, &offer, &mut teams_session)
            .unwrap();
    let ours = our_key_b64();
    let local = teams_local();
    let dumps = [
        format!("{teams_remote:?}"),
        format!("{teams_remote:#?}"),
        format!("{local:?}"),
        format!("{local:#?}"),
        format!("{back:?}"),
        format!("{teams_session:?}"),
    ];
    for d in &dumps {
        for secret in [TEAMS_KEY_TAG3, TEAMS_PWD, ours.as_str(), OUR_PWD] {
            assert!(!d.contains(secret), "secret in {d}");
        }
        // Raw key bytes as a Debug array would print them.
        assert!(!d.contains("17, 17, 17"), "raw key bytes in {d}");
    }
    // The wire form does carry our key and ICE password (it is what Teams needs).
    assert!(text(&back).contains(&ours));
    assert!(text(&back).contains(OUR_PWD));
}

#[test]
fn profile_matching() {
    let p = CodecProfile { allowed: vec!["silk/16000".into(), "pcma".into()], strip_ice: false, max_codecs: None };
    assert!(p.allows("SILK", 16000));
    assert!(!p.allows("SILK", 8000));
    assert!(p.allows("PCMA", 8000));
    assert!(!p.allows("PCMU", 8000));
    let t = CodecProfile::teams();
    for (e, r) in [
        ("PCMU", 8000),
        ("PCMA", 8000),
        ("G722", 8000),
        ("G729", 8000),
        ("SILK", 16000),
        ("telephone-event", 8000),
        ("CN", 8000),
    ] {
        assert!(t.allows(e, r), "{e}");
    }
    assert!(!t.allows("SIREN", 16000));
    let d = CodecProfile::pbx_default();
    assert!(d.strip_ice);
    assert!(!d.allows("SILK", 16000));
    assert!(!d.allows("CN", 8000));
}

#[test]
fn static_payload_types_without_rtpmap_and_cn_toward_teams() {
    // A bare PBX offer: static PTs only, CN 13, no rtpmap lines.
    let bare = "v=0\r\no=PBX 1 1 IN IP4 10.10.20.5\r\ns=-\r\nc=IN IP4 10.10.20.6\r\nt=0 0\r\nm=audio 40000 RTP/AVP 18 8 13 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let (out, _) = rewrite_offer(
        &sdp(bare),
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    let m = &out.media[0];
    assert_eq!(m.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["18", "8", "13", "101"]);
    assert_eq!(m.rtpmaps().len(), 4, "rtpmap written for every format");
    assert_eq!(m.rtpmap(13).unwrap().encoding.as_str(), "CN");
    // Toward the PBX, CN is dropped by the default profile.
    let (out, _) = rewrite_offer(
        &sdp(bare),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &CodecProfile::pbx_default(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    assert_eq!(out.media[0].formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["18", "8", "101"]);
}

#[test]
fn media_level_connection_wins_and_rtcp_attribute_is_read() {
    let s = "v=0\r\no=x 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\na=rtcp:4101 IN IP4 10.0.0.3\r\n";
    let r = offer_remote_media(&sdp(s)).unwrap();
    assert_eq!(r.rtp, Some(addr("10.0.0.2:4000")));
    assert_eq!(r.rtcp, Some(addr("10.0.0.3:4101")));
    let s2 = s.replace("a=rtcp:4101 IN IP4 10.0.0.3\r\n", "a=rtcp:4101\r\n");
    assert_eq!(offer_remote_media(&sdp(&s2)).unwrap().rtcp, Some(addr("10.0.0.2:4101")));
    let bad = s.replace("c=IN IP4 10.0.0.2", "c=IN IP4 not-an-ip");
    assert!(matches!(offer_remote_media(&sdp(&bad)), Err(MediaError::BadSdp(_))));
}

#[test]
fn teams_local_with_muxed_rtcp_only_has_one_candidate() {
    let mut local = teams_local();
    local.rtcp = local.rtp;
    let (out, _) = rewrite_offer(
        &sdp(PBX_OFFER),
        Trunk::Pbx,
        &local,
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    assert_eq!(out.media[0].candidates().len(), 1);
    assert_eq!(out.media[0].rtcp().unwrap().port, 30000);
}

#[test]
fn telephone_event_follows_kept_clock_rates() {
    let two_te = TEAMS_OFFER.replace("RTP/SAVP 104 9 103 111 18 0 8 97 101 13 118", "RTP/SAVP 104 0 102 101").replace(
        "a=rtpmap:101 telephone-event/8000\r\n",
        "a=rtpmap:102 telephone-event/16000\r\na=rtpmap:101 telephone-event/8000\r\n",
    );
    let (out, _) = rewrite_offer(
        &sdp(&two_te),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &g711_g722_profile(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    assert_eq!(out.media[0].formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["0", "101"]);
    let wide = CodecProfile { allowed: vec!["SILK".into(), "PCMU".into()], strip_ice: false, max_codecs: None };
    let (out, _) =
        rewrite_offer(&sdp(&two_te), Trunk::Teams, &pbx_local(), Trunk::Pbx, &wide, &mut SdpSession::new(1)).unwrap();
    assert_eq!(out.media[0].formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["104", "0", "102", "101"]);
    assert_eq!(out.media[0].fmtp(104), Some("useinbandfec=1; usedtx=0"));
    // A telephone-event at a rate no kept codec has is still kept (DTMF must pass).
    let only16 = two_te.replace("RTP/SAVP 104 0 102 101", "RTP/SAVP 0 102");
    let (out, _) = rewrite_offer(
        &sdp(&only16),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &g711_g722_profile(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    assert_eq!(out.media[0].formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["0", "102"]);
}

#[test]
fn answer_codecs_mapped_by_name_and_unknown_ones_dropped() {
    let offer = sdp(TEAMS_OFFER);
    let (sent, _) =
        rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &g711_g722_profile(), &mut SdpSession::new(1))
            .unwrap();
    // The PBX renumbers G722 to 100, adds a codec never offered, omits the rtpmap of 101.
    let odd = "v=0\r\no=P 1 1 IN IP4 10.10.20.5\r\ns=-\r\nc=IN IP4 10.10.20.6\r\nt=0 0\r\nm=audio 40002 RTP/AVP 100 4 101\r\na=rtpmap:100 g722/8000\r\n";
    let (out, r) =
        rewrite_answer(&sdp(odd), Trunk::Pbx, &teams_local(), Trunk::Teams, &sent, &offer, &mut SdpSession::new(2))
            .unwrap();
    assert_eq!(out.media[0].formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["9", "101"]);
    assert_eq!(out.media[0].rtpmap(9).unwrap().encoding.as_str(), "G722", "the offerer's spelling");
    assert_eq!(r.pt_map, vec![(100, 9)]);
    // Only a codec never offered: nothing to map.
    let none = odd.replace("RTP/AVP 100 4 101", "RTP/AVP 4");
    let e =
        rewrite_answer(&sdp(&none), Trunk::Pbx, &teams_local(), Trunk::Teams, &sent, &offer, &mut SdpSession::new(2));
    assert!(matches!(e, Err(MediaError::NotAcceptable(_))), "{e:?}");
    // No audio section in the answer.
    let empty = "v=0\r\no=P 1 1 IN IP4 10.10.20.5\r\ns=-\r\nt=0 0\r\n";
    let e =
        rewrite_answer(&sdp(empty), Trunk::Pbx, &teams_local(), Trunk::Teams, &sent, &offer, &mut SdpSession::new(2));
    assert!(matches!(e, Err(MediaError::BadSdp(_))), "{e:?}");
}

#[test]
fn pbx_offering_rtcp_mux_gets_it() {
    let offer = sdp(&PBX_OFFER.replace("a=sendrecv\r\n", "a=sendrecv\r\na=rtcp-mux\r\n"));
    let (sent, pbx_remote) = rewrite_offer(
        &offer,
        Trunk::Pbx,
        &teams_local(),
        Trunk::Teams,
        &CodecProfile::teams(),
        &mut SdpSession::new(1),
    )
    .unwrap();
    assert!(pbx_remote.rtcp_mux);
    assert_eq!(pbx_remote.rtcp, pbx_remote.rtp);
    let (out, _) = rewrite_answer(
        &sdp(TEAMS_ANSWER),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &sent,
        &offer,
        &mut SdpSession::new(2),
    )
    .unwrap();
    assert!(out.media[0].rtcp_mux());
    assert_eq!(out.media[0].rtcp().unwrap().port, 20000);
    // Toward the PBX drbridge itself never offers mux.
    let (o, _) = rewrite_offer(
        &sdp(TEAMS_OFFER),
        Trunk::Teams,
        &pbx_local(),
        Trunk::Pbx,
        &CodecProfile::pbx_default(),
        &mut SdpSession::new(3),
    )
    .unwrap();
    assert!(!o.media[0].rtcp_mux());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Whatever a parseable SDP says, the rewrite returns a value or an error, never panics.
    #[test]
    fn rewrite_never_panics(lines in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::strategy::Just("m=audio 4000 RTP/SAVP 0 8 96 101".to_string()),
            proptest::strategy::Just("m=audio 0 RTP/AVP 0".to_string()),
            proptest::strategy::Just("m=video 5000 RTP/AVP 99".to_string()),
            proptest::strategy::Just("c=IN IP4 0.0.0.0".to_string()),
            proptest::strategy::Just("c=IN IP6 ::1".to_string()),
            proptest::strategy::Just("a=rtcp-mux".to_string()),
            proptest::strategy::Just("a=inactive".to_string()),
            "a=rtpmap:[0-9]{1,3} [A-Za-z-]{1,8}/[0-9]{1,6}",
            "a=rtcp:[0-9]{1,6}( IN IP4 [0-9.]{1,15})?",
            "a=crypto:[0-9]{1,3} AES_CM_128_HMAC_SHA1_(80|32) inline:[A-Za-z0-9+/=|:^]{0,50}",
            "a=ice-(ufrag|pwd):[a-z]{0,4}",
            "c=IN IP4 [0-9.]{1,15}",
        ], 0..12)) {
        let mut text = String::from("v=0\r\no=x 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n");
        for l in &lines {
            text.push_str(l);
            text.push_str("\r\n");
        }
        if let Ok(offer) = Sdp::parse(Bytes::from(text.clone())) {
            let _ = offer_remote_media(&offer);
            if let Ok((sent, _)) = rewrite_offer(&offer, Trunk::Pbx, &teams_local(), Trunk::Teams, &CodecProfile::teams(), &mut SdpSession::new(1)) {
                let _ = rewrite_answer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &sent, &offer, &mut SdpSession::new(2));
                let _ = rewrite_answer(&sent, Trunk::Teams, &pbx_local(), Trunk::Pbx, &sent, &offer, &mut SdpSession::new(2));
            }
            let _ = rewrite_offer(&offer, Trunk::Teams, &pbx_local(), Trunk::Pbx, &CodecProfile::pbx_default(), &mut SdpSession::new(1));
        }
    }
}
