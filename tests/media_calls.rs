//! Calls with media through the drbridge binary on loopback: SIPp (pcap play of G.711 audio and
//! RFC 4733 DTMF) or a Rust UDP peer as the PBX with plain RTP, the Rust Teams peer over mutual
//! TLS with its own SRTP (SDES) stack and ICE checks. drbridge anchors the media: toward Teams
//! RTP/SAVP with its own key, ICE-lite and one host candidate; toward the PBX plain RTP at its
//! own address.
//!
//! Numbers as in tests/calls.rs: PBX extension 4711 is +4681234711 on the Teams side, Teams
//! users are +46812348xx.

mod common;

use common::media::{
    audio_packets, body_of, decrypted, dtmf_pcap, g711a_pcap, paced, pbx_sdp, pbx_sdp_te, pcaps_available, read_pcap_rtp, Rtp,
    RtpEndpoint, SdpMedia, SrtpEndpoint,
};
use common::peer::{Call, SipPeer};
use common::sipp::{self, Sipp};
use common::teams::TeamsPeer;
use common::util::{free_port, loopback, STEP};
use common::{Drbridge, LabConfig};
use drbridge::media::srtp::SrtpError;
use drbridge::media::stun::{build_check, error_code};
use drbridge::media::{IceCredentials, SrtpSuite};
use drbridge::sip::msg::{Method, Response};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TEAMS_USER: &str = "+4681234801";
const PBX_EXT: &str = "4711";
const PBX_EXT_E164: &str = "+4681234711";
const TEAMS_CALLER: &str = "+46701234567";

/// How long a stream of packets may take to arrive after the last was sent.
const MEDIA_WAIT: Duration = Duration::from_secs(3);

struct Lab {
    cfg: LabConfig,
    teams: TeamsPeer,
    dr: Drbridge,
}

async fn lab(tweak: impl FnOnce(&mut LabConfig)) -> Lab {
    let cfg = LabConfig::new();
    let teams = TeamsPeer::start(&cfg.certs, 1).await;
    let mut cfg = cfg.with_proxies(&teams.proxy_addrs);
    tweak(&mut cfg);
    let dr = tokio::task::block_in_place(|| Drbridge::start(&cfg));
    let cfg = dr.cfg.clone();
    Lab { cfg, teams, dr }
}

fn in_range(port: u16, r: (u16, u16)) -> bool {
    (r.0..=r.1).contains(&port)
}

// ------------------------------------------------------------------ SDP checks (topology)

/// What drbridge sends toward Teams: RTP/SAVP with exactly one crypto line, ICE-lite with
/// credentials and one host candidate (drbridge's Teams-side address, in the Teams port range),
/// rtcp-mux; no address of the PBX side (none of `pbx_ports`), never 0.0.0.0.
fn assert_teams_side_sdp(lab: &Lab, sdp: &SdpMedia, pbx_ports: &[u16], what: &str) {
    assert_eq!(sdp.proto, "RTP/SAVP", "{what}: profile toward Teams");
    assert_eq!(sdp.crypto_lines.len(), 1, "{what}: one a=crypto toward Teams: {:?}", sdp.crypto_lines);
    assert_eq!(sdp.cryptos.len(), 1, "{what}: usable SDES key");
    assert!(sdp.ice_lite, "{what}: a=ice-lite");
    let ice = sdp.ice();
    assert!(ice.ufrag.len() >= 4 && ice.pwd.len() >= 22, "{what}: ICE ufrag/pwd lengths (RFC 8839)");
    assert_eq!(sdp.candidates, vec![sdp.addr()], "{what}: one host candidate = the m=/c= address");
    assert!(sdp.rtcp_mux, "{what}: a=rtcp-mux");
    assert!(in_range(sdp.port, lab.cfg.teams_media_ports), "{what}: port {} not in the Teams media range", sdp.port);
    for c in &sdp.connections {
        assert_eq!(c, "127.0.0.1", "{what}: c= toward Teams must be drbridge's Teams-side address (never 0.0.0.0)");
    }
    for p in sdp.ports() {
        assert!(!pbx_ports.contains(&p), "{what}: PBX media port {p} leaked toward Teams");
    }
}

/// What drbridge sends toward the PBX: plain RTP/AVP at drbridge's PBX-side address (in the PBX
/// port range), no crypto, no ICE, no candidates, no Teams media port.
fn assert_pbx_side_sdp(lab: &Lab, body: &str, teams_ports: &[u16], what: &str) -> SdpMedia {
    let sdp = SdpMedia::parse(body);
    assert_eq!(sdp.proto, "RTP/AVP", "{what}: profile toward the PBX");
    for needle in ["a=crypto", "a=candidate", "a=ice-", "RTP/SAVP", "a=rtcp-mux"] {
        assert!(!body.contains(needle), "{what}: {needle} toward the PBX:\n{body}");
    }
    assert!(in_range(sdp.port, lab.cfg.pbx_media_ports), "{what}: port {} not in the PBX media range", sdp.port);
    for c in &sdp.connections {
        assert_eq!(c, "127.0.0.1", "{what}: c= toward the PBX must be drbridge's PBX-side address");
    }
    for p in sdp.ports() {
        assert!(!teams_ports.contains(&p), "{what}: Teams media port {p} leaked toward the PBX");
    }
    sdp
}

// ------------------------------------------------------------------ call set-up helpers

/// Teams answers the next INVITE: 100, 180, 200 with `ep`'s SDP (telephone-event as `te_pt`,
/// crypto tag echoing drbridge's), then the ACK. Returns the call and drbridge's offer.
async fn teams_answers(teams: &TeamsPeer, ep: &SrtpEndpoint, te_pt: u8) -> (Call, SdpMedia) {
    let (inv, conn) = teams.expect_request(Method::Invite, STEP).await;
    let offer = SdpMedia::parse(&String::from_utf8_lossy(&inv.body));
    teams.respond(&inv, 100, "", &[]);
    teams.respond(&inv, 180, "", &[]);
    teams.respond(&inv, 200, &ep.sdp("sendrecv", te_pt, offer.key().tag), &[]);
    let call = teams.accept_call(&inv, &conn);
    teams.expect_ack(&call, STEP).await;
    (call, offer)
}

/// One established call with both media endpoints.
struct MediaCall {
    pbx: SipPeer,
    pbx_call: Call,
    pbx_rtp: RtpEndpoint,
    /// drbridge's PBX-side SDP (its address toward the PBX).
    dr_pbx: SdpMedia,
    teams_call: Call,
    ep: SrtpEndpoint,
    /// drbridge's Teams-side SDP.
    dr_teams: SdpMedia,
}

/// The PBX (a Rust UDP peer with a plain RTP socket) calls TEAMS_USER; Teams answers with its
/// SRTP endpoint (telephone-event `te_pt`), sends a nominating ICE check and gets drbridge's key.
async fn pbx_calls_teams(lab: &Lab, te_pt: u8) -> MediaCall {
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    pbx_calls_teams_with(lab, pbx, te_pt).await
}

async fn pbx_calls_teams_with(lab: &Lab, pbx: SipPeer, te_pt: u8) -> MediaCall {
    pbx_calls_teams_from(lab, pbx, RtpEndpoint::bind().await, te_pt).await
}

async fn pbx_calls_teams_from(lab: &Lab, pbx: SipPeer, pbx_rtp: RtpEndpoint, te_pt: u8) -> MediaCall {
    let mut ep = SrtpEndpoint::bind().await;
    let mut pbx_call = pbx_invite(lab, &pbx, &pbx_rtp);
    let (teams_call, dr_teams) = teams_answers(&lab.teams, &ep, te_pt).await;
    let ok = pbx.await_answer(&mut pbx_call, STEP).await;
    assert_eq!(ok.status, 200, "PBX call answered");
    pbx.ack(&mut pbx_call).await;
    assert_teams_side_sdp(lab, &dr_teams, &[pbx_rtp.addr().port()], "INVITE toward Teams");
    let dr_pbx = assert_pbx_side_sdp(lab, &String::from_utf8_lossy(&ok.body), &[ep.addr().port()], "200 toward the PBX");
    ep.set_remote_key(&dr_teams.key());
    ep.ice_check(dr_teams.candidates[0], &dr_teams.ice(), true).await;
    MediaCall { pbx, pbx_call, pbx_rtp, dr_pbx, teams_call, ep, dr_teams }
}

fn pbx_invite(lab: &Lab, pbx: &SipPeer, rtp: &RtpEndpoint) -> Call {
    let dr = lab.cfg.pbx_listen;
    let mut inv = pbx.new_request(
        Method::Invite,
        &format!("sip:{TEAMS_USER}@{dr}"),
        &format!("<sip:{PBX_EXT}@{}>", lab.cfg.pbx_address),
        &format!("<sip:{TEAMS_USER}@{dr}>"),
    );
    inv.headers.push("Content-Type", "application/sdp");
    inv.body = bytes::Bytes::from(pbx_sdp(rtp.addr(), "sendrecv"));
    pbx.send_invite(&pbx.udp_to(dr), inv)
}

impl MediaCall {
    /// `n` packets each way (PBX -> Teams decrypted equal, Teams -> PBX plain equal), SSRC,
    /// sequence numbers, timestamps and payloads passed through; each side sees them come from
    /// drbridge's address on its side.
    async fn assert_media_both_ways(&mut self, n: usize, seq0: u16) {
        let to_teams = audio_packets(n, 0x0000_4711, seq0);
        let dst = self.dr_pbx.addr();
        let sock = &self.pbx_rtp;
        paced(&to_teams, |p| async move { sock.send(&p, dst).await }).await;
        let got = self.ep.collect(n, MEDIA_WAIT).await;
        for r in &got {
            assert_eq!(r.from, self.dr_teams.addr(), "SRTP from drbridge's Teams-side address");
        }
        assert_eq!(decrypted(&got), to_teams, "PBX -> Teams: decrypted RTP differs from what the PBX sent");

        let to_pbx = audio_packets(n, 0x7ea3_5000, seq0);
        let dst = self.dr_teams.addr();
        for p in &to_pbx {
            self.ep.send(p, dst).await;
        }
        let got = self.pbx_rtp.collect(n, MEDIA_WAIT).await;
        for (_, from) in &got {
            assert_eq!(*from, self.dr_pbx.addr(), "RTP from drbridge's PBX-side address");
        }
        let got: Vec<Rtp> = got.into_iter().map(|(r, _)| r).collect();
        assert_eq!(got, to_pbx, "Teams -> PBX: plain RTP differs from what Teams encrypted");
    }

    async fn teams_hangs_up(mut self, lab: &Lab) {
        let (r, _) = tokio::join!(lab.teams.bye(&mut self.teams_call, STEP), self.pbx.expect_bye(&self.pbx_call, STEP));
        assert_eq!(r.status, 200);
    }
}

// ------------------------------------------------------------------ 1. PBX -> Teams, SIPp pcap

/// SIPp plays g711a.pcap then dtmf_2833_1.pcap; the Teams peer (telephone-event as 101, like
/// the PBX) checks ICE-lite and decrypts everything drbridge relays: the audio equals the pcap
/// packet for packet (payload, SSRC, sequence number, timestamp, marker), the DTMF events too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_to_teams_pcap_audio_and_dtmf_arrive_decrypted() {
    if !sipp::require("pbx_to_teams_pcap_audio_and_dtmf_arrive_decrypted") {
        return;
    }
    pcap_call_to_teams(101).await;
}

/// The same with Teams answering telephone-event as PT 96 (RFC 3264 allows the answerer its own
/// numbers; the PBX sends 101): DTMF must reach Teams as 96.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_to_teams_pcap_dtmf_gets_teams_payload_type() {
    if !sipp::require("pbx_to_teams_pcap_dtmf_gets_teams_payload_type") {
        return;
    }
    pcap_call_to_teams(96).await;
}

async fn pcap_call_to_teams(teams_te: u8) {
    if !pcaps_available() {
        eprintln!("SKIPPED: SIPp pcap files missing in {}", common::media::SIPP_PCAP_DIR);
        return;
    }
    let audio = read_pcap_rtp(&g711a_pcap());
    let dtmf = read_pcap_rtp(&dtmf_pcap("1"));
    assert_eq!(audio.len(), 236);
    assert!(dtmf.iter().all(|p| p.pt == 101) && dtmf.len() == 10);
    let mut dtmf_unique = dtmf.clone();
    dtmf_unique.dedup_by_key(|p| p.seq); // the end packet is sent 3 times with one sequence number

    let lab = lab(|_| {}).await;
    let run = Sipp::uac("uac_pcap_call.xml", lab.cfg.pbx_address, lab.cfg.pbx_listen, TEAMS_USER).limit(Duration::from_secs(30)).start();
    let mut ep = SrtpEndpoint::bind().await;
    let (mut call, offer) = teams_answers(&lab.teams, &ep, teams_te).await;
    assert_eq!(offer.pt_of("PCMA"), Some(8), "PCMA offered to Teams");
    ep.set_remote_key(&offer.key());
    ep.ice_check(offer.candidates[0], &offer.ice(), true).await;

    // every datagram SIPp plays, the replayed DTMF end packets included (bounded: the pcaps
    // last 7.2 s)
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut all = Vec::new();
    while all.len() < audio.len() + dtmf.len() {
        let Some(r) = ep.recv(deadline.saturating_duration_since(Instant::now())).await else { break };
        all.push(r);
    }
    for r in &all {
        assert_eq!(r.from, offer.addr(), "SRTP comes from drbridge's candidate");
    }
    let got = decrypted(&all);
    let got_audio: Vec<Rtp> = got.iter().filter(|p| p.pt == 8).cloned().collect();
    let got_dtmf: Vec<Rtp> = got.iter().filter(|p| p.pt != 8).cloned().collect();
    assert_eq!(got_audio.len(), audio.len(), "audio packets decrypted ({} datagrams in all)", all.len());
    assert!(got_audio == audio, "decrypted audio differs from g711a.pcap (payloads, SSRC, sequence, timestamps)");
    // DTMF: same events, SSRC, sequence numbers, with the payload type Teams negotiated
    assert_eq!(got_dtmf.len(), dtmf_unique.len(), "DTMF packets: {got_dtmf:?}");
    for (g, want) in got_dtmf.iter().zip(&dtmf_unique) {
        assert_eq!(g.pt, teams_te, "telephone-event must arrive with the PT Teams answered ({teams_te})");
        assert_eq!((g.seq, g.ts, g.ssrc, g.marker, &g.payload), (want.seq, want.ts, want.ssrc, want.marker, &want.payload));
    }
    // the retransmitted end packets: same sequence number -> byte-identical SRTP, refused as replays
    let replays: Vec<_> = all.iter().filter(|r| r.plain.is_err()).collect();
    assert_eq!(replays.len(), dtmf.len() - dtmf_unique.len(), "the two retransmitted end packets arrive");
    for r in replays {
        assert_eq!(r.plain.as_ref().err(), Some(&SrtpError::Replay), "only replays may fail to decrypt");
        assert!(all.iter().any(|o| o.plain.is_ok() && o.raw == r.raw), "a replay is a copy of a packet received");
    }

    assert_eq!(lab.teams.bye(&mut call, STEP).await.status, 200);
    let res = run.wait_async().await;
    res.assert_success();

    // topology: SDP both ways
    let sipp_invite = res.sent().into_iter().find(|m| m.starts_with("INVITE ")).expect("SIPp INVITE");
    let sipp_media_port = SdpMedia::parse(&body_of(&sipp_invite)).port;
    assert_teams_side_sdp(&lab, &offer, &[sipp_media_port], "INVITE toward Teams");
    let ok = res.received().into_iter().find(|m| m.starts_with("SIP/2.0 200") && m.contains("INVITE")).expect("200 at SIPp");
    let dr_pbx = assert_pbx_side_sdp(&lab, &body_of(&ok), &[ep.addr().port(), offer.port], "200 toward the PBX");
    assert_ne!(dr_pbx.port, sipp_media_port);
}

// ------------------------------------------------------------------ 2. Teams -> PBX

/// Teams encrypts with its own key; the PBX (Rust UDP peer) receives plain RTP equal to what
/// Teams encrypted, and the reverse direction decrypts equal too; DTMF passes both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_to_pbx_srtp_relayed_as_plain_rtp_both_ways() {
    let lab = lab(|_| {}).await;
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let pbx_rtp = RtpEndpoint::bind().await;
    let mut ep = SrtpEndpoint::bind().await;

    let conn = lab.teams.connect_sbc(lab.cfg.teams_listen, 0).await;
    let inv = lab.teams.teams_invite(TEAMS_CALLER, PBX_EXT_E164, conn.remote.port(), 0, &ep.sdp("sendrecv", 101, 1));
    let mut call = lab.teams.send_invite(&conn, inv);
    let (pinv, pconn) = pbx.expect_request(Method::Invite, STEP).await;
    let dr_pbx = assert_pbx_side_sdp(&lab, &String::from_utf8_lossy(&pinv.body), &[ep.addr().port()], "INVITE toward the PBX");
    pbx.respond(&pinv, 200, &pbx_sdp(pbx_rtp.addr(), "sendrecv"), &[]);
    let pcall = pbx.accept_call(&pinv, &pconn);
    let ok = lab.teams.await_answer(&mut call, STEP).await;
    assert_eq!(ok.status, 200);
    lab.teams.ack(&mut call).await;
    pbx.expect_ack(&pcall, STEP).await;
    let answer = SdpMedia::parse(&String::from_utf8_lossy(&ok.body));
    assert_teams_side_sdp(&lab, &answer, &[pbx_rtp.addr().port()], "200 toward Teams");
    let k = answer.key();
    assert_eq!((k.tag, k.suite), (1, SrtpSuite::AesCm128HmacSha1_80), "the answer echoes the offer's crypto tag and suite");
    assert_ne!(k.key, ep.key.key, "drbridge has its own key");
    ep.set_remote_key(&k);
    ep.ice_check(answer.candidates[0], &answer.ice(), true).await;

    // a check with a wrong password, from elsewhere, gets 401 and does not move the nomination
    let stranger = RtpEndpoint::bind().await;
    let bad = IceCredentials { ufrag: answer.ice().ufrag, pwd: "not-the-password-of-drbridge".into() };
    stranger.sock.send_to(&build_check("evil", &bad, true), answer.candidates[0]).await.expect("send");
    let mut b = [0u8; 1500];
    let (n, _) = tokio::time::timeout(STEP, stranger.sock.recv_from(&mut b)).await.expect("no answer to a bad check").expect("recv");
    assert_eq!(error_code(&b[..n]), Some(401), "a check with a wrong password gets 401");

    let mut mc = MediaCall { pbx, pbx_call: pcall, pbx_rtp, dr_pbx, teams_call: call, ep, dr_teams: answer };
    mc.assert_media_both_ways(50, 100).await;

    // RFC 4733 DTMF both ways (both sides use 101 here)
    let mut ev = Rtp::new(101, 200, 9000, 0x7ea3_5000, &[5, 0x0a, 0x00, 0xa0]);
    ev.marker = true;
    mc.ep.send(&ev, mc.dr_teams.addr()).await;
    let (got, _) = mc.pbx_rtp.recv(MEDIA_WAIT).await.expect("DTMF at the PBX");
    assert_eq!(got, ev);
    let ev2 = Rtp::new(101, 300, 9000, 0x4711, &[9, 0x8a, 0x03, 0x20]);
    mc.pbx_rtp.send(&ev2, mc.dr_pbx.addr()).await;
    let got = mc.ep.recv(MEDIA_WAIT).await.expect("DTMF at Teams");
    assert_eq!(got.plain.expect("decrypts"), ev2);

    mc.teams_hangs_up(&lab).await;
}

/// The PBX calls Teams with a delayed offer (INVITE without SDP), which Teams does not take:
/// drbridge offers SRTP to Teams itself, the PBX gets drbridge's offer in the 200 and answers
/// in its ACK, and RTP flows both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_delayed_offer_call_carries_media_both_ways() {
    let lab = lab(|_| {}).await;
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let pbx_rtp = RtpEndpoint::bind().await;
    let mut ep = SrtpEndpoint::bind().await;
    let dr = lab.cfg.pbx_listen;
    let inv = pbx.new_request(Method::Invite, &format!("sip:{TEAMS_USER}@{dr}"), &format!("<sip:{PBX_EXT}@{}>", lab.cfg.pbx_address), &format!("<sip:{TEAMS_USER}@{dr}>"));
    let mut pbx_call = pbx.send_invite(&pbx.udp_to(dr), inv);
    let (teams_call, dr_teams) = teams_answers(&lab.teams, &ep, 101).await;
    assert!(!dr_teams.candidates.is_empty(), "drbridge made a full ICE-lite SRTP offer to Teams");
    let ok = pbx.await_answer(&mut pbx_call, STEP).await;
    assert_eq!(ok.status, 200);
    let dr_pbx = assert_pbx_side_sdp(&lab, &String::from_utf8_lossy(&ok.body), &[ep.addr().port()], "offer in the 200 toward the PBX");
    let mut ack = pbx.dialog_request(&mut pbx_call, Method::Ack);
    ack.headers.push("Content-Type", "application/sdp");
    ack.body = bytes::Bytes::from(pbx_sdp(pbx_rtp.addr(), "sendrecv"));
    pbx.send_in_dialog(&pbx_call, &ack).await;
    ep.set_remote_key(&dr_teams.key());
    ep.ice_check(dr_teams.candidates[0], &dr_teams.ice(), true).await;
    let mut mc = MediaCall { pbx, pbx_call, pbx_rtp, dr_pbx, teams_call, ep, dr_teams };
    mc.assert_media_both_ways(30, 500).await;
    mc.teams_hangs_up(&lab).await;
}

/// The same direction with SIPp as the PBX, echoing RTP (`-rtp_echo`): what Teams encrypts comes
/// back through drbridge twice (SRTP -> RTP -> SIPp -> RTP -> SRTP) and decrypts equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_to_pbx_sipp_rtp_echo_round_trip() {
    if !sipp::require("teams_to_pbx_sipp_rtp_echo_round_trip") {
        return;
    }
    let lab = lab(|_| {}).await;
    let pbx = Sipp::uas("uas_answer.xml", lab.cfg.pbx_address).arg("-rtp_echo").start();
    let mut ep = SrtpEndpoint::bind().await;
    let conn = lab.teams.connect_sbc(lab.cfg.teams_listen, 0).await;
    let inv = lab.teams.teams_invite(TEAMS_CALLER, PBX_EXT_E164, conn.remote.port(), 0, &ep.sdp("sendrecv", 101, 1));
    let mut call = lab.teams.send_invite(&conn, inv);
    let ok = lab.teams.await_answer(&mut call, STEP).await;
    assert_eq!(ok.status, 200);
    lab.teams.ack(&mut call).await;
    let answer = SdpMedia::parse(&String::from_utf8_lossy(&ok.body));
    ep.set_remote_key(&answer.key());
    ep.ice_check(answer.candidates[0], &answer.ice(), true).await;

    let pkts = audio_packets(25, 0x7ea3_0001, 1000);
    for p in &pkts {
        ep.send(p, answer.addr()).await;
    }
    let got = ep.collect(pkts.len(), MEDIA_WAIT).await;
    assert_eq!(decrypted(&got), pkts, "echoed audio differs");

    assert_eq!(lab.teams.bye(&mut call, STEP).await.status, 200);
    let res = pbx.wait_async().await;
    res.assert_success();
    let sipp_200 = res.sent().into_iter().find(|m| m.starts_with("SIP/2.0 200") && m.contains("application/sdp")).expect("SIPp 200");
    let sipp_port = SdpMedia::parse(&body_of(&sipp_200)).port;
    assert_teams_side_sdp(&lab, &answer, &[sipp_port], "200 toward Teams");
    let invite = res.received().into_iter().find(|m| m.starts_with("INVITE ")).expect("INVITE at SIPp");
    assert_pbx_side_sdp(&lab, &body_of(&invite), &[ep.addr().port(), answer.port], "INVITE toward the PBX");
}

/// Teams offers telephone-event as 101, the PBX answers it as 96: each side must receive DTMF
/// with its own number (PBX 96 -> Teams 101, Teams 101 -> PBX 96), everything else unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_payload_types_mapped_both_ways() {
    let lab = lab(|_| {}).await;
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let pbx_rtp = RtpEndpoint::bind().await;
    let mut ep = SrtpEndpoint::bind().await;
    let conn = lab.teams.connect_sbc(lab.cfg.teams_listen, 0).await;
    let inv = lab.teams.teams_invite(TEAMS_CALLER, PBX_EXT_E164, conn.remote.port(), 0, &ep.sdp("sendrecv", 101, 1));
    let mut call = lab.teams.send_invite(&conn, inv);
    let (pinv, pconn) = pbx.expect_request(Method::Invite, STEP).await;
    let dr_pbx = SdpMedia::parse(&String::from_utf8_lossy(&pinv.body));
    assert_eq!(dr_pbx.pt_of("telephone-event"), Some(101), "the offer keeps the offerer's numbers");
    pbx.respond(&pinv, 200, &pbx_sdp_te(pbx_rtp.addr(), "sendrecv", 96), &[]);
    let pcall = pbx.accept_call(&pinv, &pconn);
    let ok = lab.teams.await_answer(&mut call, STEP).await;
    assert_eq!(ok.status, 200);
    lab.teams.ack(&mut call).await;
    pbx.expect_ack(&pcall, STEP).await;
    let answer = SdpMedia::parse(&String::from_utf8_lossy(&ok.body));
    assert_eq!(answer.pt_of("telephone-event"), Some(101), "the answer to Teams uses Teams' numbers");
    ep.set_remote_key(&answer.key());
    ep.ice_check(answer.candidates[0], &answer.ice(), true).await;
    let mut mc = MediaCall { pbx, pbx_call: pcall, pbx_rtp, dr_pbx, teams_call: call, ep, dr_teams: answer };

    let mut from_pbx = Rtp::new(96, 10, 800, 0x4711, &[1, 0x0a, 0, 0xa0]);
    from_pbx.marker = true;
    mc.pbx_rtp.send(&from_pbx, mc.dr_pbx.addr()).await;
    let got = mc.ep.recv(MEDIA_WAIT).await.expect("DTMF at Teams").plain.expect("decrypts");
    assert_eq!(got, Rtp { pt: 101, ..from_pbx }, "PBX 96 -> Teams 101");

    let from_teams = Rtp::new(101, 20, 900, 0x7ea3, &[2, 0x0a, 0, 0xa0]);
    mc.ep.send(&from_teams, mc.dr_teams.addr()).await;
    let (got, _) = mc.pbx_rtp.recv(MEDIA_WAIT).await.expect("DTMF at the PBX");
    assert_eq!(got, Rtp { pt: 96, ..from_teams }, "Teams 101 -> PBX 96");
    mc.teams_hangs_up(&lab).await;
}

/// Early media: the PBX answers 183 with SDP and streams at once; Teams gets drbridge's answer in
/// the 183, checks ICE and decrypts the early media; the 200 that follows carries the same ICE
/// credentials, key and address (RFC 8445: the credentials do not change within a session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_183_then_200_with_stable_ice_and_key() {
    let lab = lab(|_| {}).await;
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let pbx_rtp = RtpEndpoint::bind().await;
    let mut ep = SrtpEndpoint::bind().await;
    let conn = lab.teams.connect_sbc(lab.cfg.teams_listen, 0).await;
    let inv = lab.teams.teams_invite(TEAMS_CALLER, PBX_EXT_E164, conn.remote.port(), 0, &ep.sdp("sendrecv", 101, 1));
    let mut call = lab.teams.send_invite(&conn, inv);
    let (pinv, pconn) = pbx.expect_request(Method::Invite, STEP).await;
    let dr_pbx = assert_pbx_side_sdp(&lab, &String::from_utf8_lossy(&pinv.body), &[ep.addr().port()], "INVITE toward the PBX");
    let sdp = pbx_sdp(pbx_rtp.addr(), "sendrecv");
    pbx.respond(&pinv, 183, &sdp, &[]);
    let early = loop {
        let r = lab.teams.expect_response(&call.call_id, Method::Invite, STEP).await;
        assert!(r.status < 200, "final response {} before the 183", r.status);
        if r.status == 183 {
            break r;
        }
    };
    let early = SdpMedia::parse(&String::from_utf8_lossy(&early.body));
    assert_teams_side_sdp(&lab, &early, &[pbx_rtp.addr().port()], "183 toward Teams");
    ep.set_remote_key(&early.key());
    ep.ice_check(early.candidates[0], &early.ice(), true).await;
    let pkts = audio_packets(10, 0x183, 1);
    let dst = dr_pbx.addr();
    let sock = &pbx_rtp;
    paced(&pkts, |p| async move { sock.send(&p, dst).await }).await;
    assert_eq!(decrypted(&ep.collect(pkts.len(), MEDIA_WAIT).await), pkts, "early media decrypted");

    pbx.respond(&pinv, 200, &sdp, &[]);
    let pcall = pbx.accept_call(&pinv, &pconn);
    let ok = lab.teams.await_answer(&mut call, STEP).await;
    assert_eq!(ok.status, 200);
    lab.teams.ack(&mut call).await;
    pbx.expect_ack(&pcall, STEP).await;
    let answer = SdpMedia::parse(&String::from_utf8_lossy(&ok.body));
    assert_eq!(answer.ice(), early.ice(), "ICE credentials of the 200 = those of the 183");
    assert_eq!(answer.key(), early.key(), "SDES key of the 200 = that of the 183");
    assert_eq!(answer.addr(), early.addr(), "address of the 200 = that of the 183");
    let mut mc = MediaCall { pbx, pbx_call: pcall, pbx_rtp, dr_pbx, teams_call: call, ep, dr_teams: answer };
    mc.assert_media_both_ways(10, 100).await;
    mc.teams_hangs_up(&lab).await;
}

/// RTCP: a sender report from the PBX's RTCP port (RTP port + 1) reaches Teams as SRTCP on the
/// muxed port and decrypts equal; a receiver report from Teams (SRTCP, muxed) reaches the PBX's
/// RTCP port as plain RTCP from drbridge's PBX-side RTCP port (its RTP port + 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_relayed_both_ways() {
    let admin = loopback(free_port());
    let lab = lab(|c| *c = c.clone().with_admin(admin, "media-metrics-token")).await;
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let (pbx_rtp, pbx_rtcp) = RtpEndpoint::bind_pair().await;
    let mut mc = pbx_calls_teams_from(&lab, pbx, pbx_rtp, 101).await;
    mc.assert_media_both_ways(3, 1).await;
    let dr_pbx_rtcp = SocketAddr::new(mc.dr_pbx.addr().ip(), mc.dr_pbx.port + 1);

    let mut sr = vec![0x80u8, 200, 0x00, 0x06, 0x00, 0x00, 0x47, 0x11];
    sr.extend(1..=20u8);
    pbx_rtcp.send_to(&sr, dr_pbx_rtcp).await.expect("send RTCP");
    let (raw, from) = mc.ep.recv_raw(MEDIA_WAIT).await.expect("SRTCP at Teams");
    assert_eq!(from, mc.dr_teams.addr(), "SRTCP on the muxed port");
    assert_eq!(mc.ep.unprotect_rtcp(&raw).expect("SRTCP decrypts with drbridge's key"), sr);

    let mut rr = vec![0x81u8, 201, 0x00, 0x07, 0x7e, 0xa3, 0x50, 0x00];
    rr.extend(0..24u8);
    let srtcp = mc.ep.protect_rtcp(&rr);
    mc.ep.sock.send_to(&srtcp, mc.dr_teams.addr()).await.expect("send SRTCP");
    let mut b = [0u8; 1500];
    let (n, from) = tokio::time::timeout(MEDIA_WAIT, pbx_rtcp.recv_from(&mut b)).await.expect("RTCP at the PBX").expect("recv");
    assert_eq!(from, dr_pbx_rtcp, "from drbridge's PBX-side RTCP port");
    assert_eq!(&b[..n], &rr[..], "plain RTCP at the PBX");
    mc.teams_hangs_up(&lab).await;

    // The relay's counters reach /metrics (set once a second by the signalling loop): the
    // 3+1 RTP packets each way were received and sent.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + MEDIA_WAIT * 3;
    let count = |text: &str, what: &str| -> u64 {
        let key = format!("drbridge_media_packets{{what=\"{what}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    loop {
        let r = http.get(format!("http://{admin}/metrics")).bearer_auth("media-metrics-token").send().await.expect("GET /metrics");
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        if count(&text, "received") >= 8 && count(&text, "sent") >= 8 {
            assert!(text.contains("drbridge_media_bound_pairs{side=\"teams\"} 1"), "{text}");
            assert!(text.contains("drbridge_media_events{event=\"exhausted_sessions\"} 0"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "media counters never reached /metrics:\n{text}");
        tokio::time::sleep(STEP).await;
    }
}

// ------------------------------------------------------------------ 3. hold and resume

/// The PBX holds with an RFC 2543 hold (c=0.0.0.0, a=sendonly): Teams is offered a=sendonly
/// (or inactive) at drbridge's real address and port; after resume media flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_hold_with_zero_address_and_resume() {
    let lab = lab(|_| {}).await;
    let mut mc = pbx_calls_teams(&lab, 101).await;
    mc.assert_media_both_ways(10, 10).await;

    // hold
    let zero: SocketAddr = format!("0.0.0.0:{}", mc.pbx_rtp.addr().port()).parse().expect("addr");
    let hold = pbx_sdp(zero, "sendonly");
    let (resp, offer) = tokio::join!(
        mc.pbx.request(&mut mc.pbx_call, Method::Invite, &hold, &[], STEP),
        teams_answers_reinvite(&lab.teams, &mc.teams_call, &mc.ep, "recvonly")
    );
    assert_eq!(resp.status, 200);
    assert!(offer.direction == "sendonly" || offer.direction == "inactive", "hold toward Teams: a={}", offer.direction);
    assert_teams_side_sdp(&lab, &offer, &[mc.pbx_rtp.addr().port()], "hold re-INVITE toward Teams");
    assert_eq!(offer.addr(), mc.dr_teams.addr(), "hold keeps drbridge's Teams-side address");
    let held = assert_pbx_side_sdp(&lab, &String::from_utf8_lossy(&resp.body), &[mc.ep.addr().port()], "hold answer to the PBX");
    assert!(held.direction == "recvonly" || held.direction == "inactive", "hold answer: a={}", held.direction);
    if offer.key() != mc.dr_teams.key() {
        mc.ep.set_remote_key(&offer.key());
    }

    // resume
    let resume = pbx_sdp(mc.pbx_rtp.addr(), "sendrecv");
    let (resp, offer) = tokio::join!(
        mc.pbx.request(&mut mc.pbx_call, Method::Invite, &resume, &[], STEP),
        teams_answers_reinvite(&lab.teams, &mc.teams_call, &mc.ep, "sendrecv")
    );
    assert_eq!(resp.status, 200);
    assert_eq!(offer.direction, "sendrecv", "resume toward Teams");
    assert_teams_side_sdp(&lab, &offer, &[mc.pbx_rtp.addr().port()], "resume re-INVITE toward Teams");
    let resumed = assert_pbx_side_sdp(&lab, &String::from_utf8_lossy(&resp.body), &[mc.ep.addr().port()], "resume answer to the PBX");
    assert_eq!(resumed.direction, "sendrecv");
    assert_eq!(resumed.addr(), mc.dr_pbx.addr(), "same drbridge PBX-side address after resume");
    if offer.key() != mc.dr_teams.key() {
        mc.ep.set_remote_key(&offer.key());
    }
    mc.assert_media_both_ways(10, 500).await;
    mc.teams_hangs_up(&lab).await;
}

/// Teams holds (a=inactive, the way Teams does): the PBX is offered a=inactive at drbridge's
/// address; after resume media flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_hold_inactive_and_resume() {
    let lab = lab(|_| {}).await;
    let mut mc = pbx_calls_teams(&lab, 101).await;
    mc.assert_media_both_ways(10, 10).await;
    for (dir, seq0) in [("inactive", 0u16), ("sendrecv", 600)] {
        let body = mc.ep.sdp(dir, 101, 1);
        let (resp, pbx_offer) = tokio::join!(
            lab.teams.request(&mut mc.teams_call, Method::Invite, &body, &[], STEP),
            pbx_answers_reinvite(&mc.pbx, &mc.pbx_call, &mc.pbx_rtp)
        );
        assert_eq!(resp.status, 200, "re-INVITE a={dir}");
        let offer = assert_pbx_side_sdp(&lab, &pbx_offer, &[mc.ep.addr().port()], "re-INVITE toward the PBX");
        assert_eq!(offer.direction, dir, "direction toward the PBX");
        assert_eq!(offer.addr(), mc.dr_pbx.addr(), "drbridge's PBX-side address kept");
        let answer = SdpMedia::parse(&String::from_utf8_lossy(&resp.body));
        assert_teams_side_sdp(&lab, &answer, &[mc.pbx_rtp.addr().port()], "re-INVITE answer toward Teams");
        assert_eq!(answer.addr(), mc.dr_teams.addr());
        if answer.key() != mc.dr_teams.key() {
            mc.ep.set_remote_key(&answer.key());
        }
        if dir == "sendrecv" {
            mc.assert_media_both_ways(10, seq0).await;
        }
    }
    mc.teams_hangs_up(&lab).await;
}

/// ICE restart: Teams re-INVITEs with new ufrag/pwd; drbridge answers with new credentials of
/// its own (same address and key), checks with them succeed, media flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_ice_restart_by_reinvite() {
    let lab = lab(|_| {}).await;
    let mut mc = pbx_calls_teams(&lab, 101).await;
    mc.assert_media_both_ways(3, 1).await;
    mc.ep.ice = IceCredentials { ufrag: "rst1".into(), pwd: "restartedrestartedrestarted".into() };
    let body = mc.ep.sdp("sendrecv", 101, 1);
    let (resp, _) = tokio::join!(
        lab.teams.request(&mut mc.teams_call, Method::Invite, &body, &[], STEP),
        pbx_answers_reinvite(&mc.pbx, &mc.pbx_call, &mc.pbx_rtp)
    );
    assert_eq!(resp.status, 200);
    let answer = SdpMedia::parse(&String::from_utf8_lossy(&resp.body));
    assert_teams_side_sdp(&lab, &answer, &[mc.pbx_rtp.addr().port()], "ICE restart answer");
    assert_ne!(answer.ice().ufrag, mc.dr_teams.ice().ufrag, "new ufrag after an ICE restart");
    assert_ne!(answer.ice().pwd, mc.dr_teams.ice().pwd, "new pwd after an ICE restart");
    assert_eq!(answer.addr(), mc.dr_teams.addr());
    if answer.key() != mc.dr_teams.key() {
        mc.ep.set_remote_key(&answer.key());
    }
    mc.ep.ice_check(answer.candidates[0], &answer.ice(), true).await;
    mc.dr_teams = answer;
    mc.assert_media_both_ways(5, 100).await;
    mc.teams_hangs_up(&lab).await;
}

/// Teams side of a re-INVITE from drbridge: answers 200 with `ep`'s SDP (`direction`), waits for
/// the ACK; returns drbridge's offer.
async fn teams_answers_reinvite(teams: &TeamsPeer, call: &Call, ep: &SrtpEndpoint, direction: &str) -> SdpMedia {
    let inv = teams.expect_in_dialog(call, Method::Invite, STEP).await;
    let offer = SdpMedia::parse(&String::from_utf8_lossy(&inv.body));
    teams.respond(&inv, 200, &ep.sdp(direction, 101, offer.key().tag), &[]);
    teams.expect_ack(call, STEP).await;
    offer
}

/// PBX side of a re-INVITE from drbridge: answers with the mirrored direction; returns the
/// offer's body.
async fn pbx_answers_reinvite(pbx: &SipPeer, call: &Call, rtp: &RtpEndpoint) -> String {
    let inv = pbx.expect_in_dialog(call, Method::Invite, STEP).await;
    let body = String::from_utf8_lossy(&inv.body).into_owned();
    let dir = match SdpMedia::parse(&body).direction.as_str() {
        "sendonly" => "recvonly",
        "recvonly" => "sendonly",
        "inactive" => "inactive",
        _ => "sendrecv",
    };
    pbx.respond(&inv, 200, &pbx_sdp(rtp.addr(), dir), &[]);
    pbx.expect_ack(call, STEP).await;
    body
}

// ------------------------------------------------------------------ 4. media timeout

/// No RTP on an answered call: after `[media] inactivity_timeout_secs` drbridge sends BYE to
/// both legs (SIPp answers its BYE, the Teams peer its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_timeout_ends_call_on_both_legs() {
    if !sipp::require("media_timeout_ends_call_on_both_legs") {
        return;
    }
    const TIMEOUT_SECS: u64 = 2;
    let lab = lab(|c| c.media_timeout_secs = TIMEOUT_SECS).await;
    let started = Instant::now();
    let run = Sipp::uac("uac_call_remote_bye.xml", lab.cfg.pbx_address, lab.cfg.pbx_listen, TEAMS_USER).start();
    let call = lab.teams.answer_call(STEP).await;
    lab.teams.expect_bye(&call, Duration::from_secs(TIMEOUT_SECS + 8)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(TIMEOUT_SECS * 1000 - 500), "BYE after {took:?}, before the media timeout");
    let res = run.wait_async().await;
    res.assert_success(); // SIPp got its BYE (uac_call_remote_bye waits for it)
    assert!(res.received().iter().any(|m| m.starts_with("BYE ")), "BYE toward the PBX");
    assert!(lab.dr.stderr().contains("no media: ending the call"), "the reason is logged");
}

// ------------------------------------------------------------------ 5. port exhaustion

/// A [media] range with room for one call: a second concurrent call (from either side) gets 503
/// with Retry-After; once the first call ended its ports serve a new call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_port_exhaustion_503_then_ports_freed() {
    // One even port with its odd neighbour per side (30002/30003, 30012/30013): below the
    // ephemeral range and apart from the ranges the other tests use.
    let lab = lab(|c| {
        c.teams_media_ports = (30001, 30004);
        c.pbx_media_ports = (30011, 30014);
    })
    .await;
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let mut first = pbx_calls_teams_with(&lab, pbx.clone(), 101).await;
    assert_eq!(first.dr_teams.port, 30002);
    assert_eq!(first.dr_pbx.port, 30012);
    first.assert_media_both_ways(5, 1).await;

    // second call from the PBX: 503 + Retry-After, never reaches Teams
    let extra_rtp = RtpEndpoint::bind().await;
    let mut second = pbx_invite(&lab, &pbx, &extra_rtp);
    let r = pbx.await_answer(&mut second, STEP).await;
    assert_retry_503(&r, "PBX call beyond the media ports");
    // a call from Teams: 503 too
    let ep2 = SrtpEndpoint::bind().await;
    let conn = lab.teams.connect_sbc(lab.cfg.teams_listen, 0).await;
    let inv = lab.teams.teams_invite(TEAMS_CALLER, PBX_EXT_E164, conn.remote.port(), 0, &ep2.sdp("sendrecv", 101, 1));
    let mut tcall = lab.teams.send_invite(&conn, inv);
    let r = lab.teams.await_answer(&mut tcall, STEP).await;
    assert_retry_503(&r, "Teams call beyond the media ports");
    assert_eq!(lab.teams.requests(None, &Method::Invite).len(), 1, "the rejected PBX call must not reach Teams");

    // first call ends (PBX hangs up); its ports go back to the pool
    let (r, _) = tokio::join!(first.pbx.bye(&mut first.pbx_call, STEP), lab.teams.expect_bye(&first.teams_call, STEP));
    assert_eq!(r.status, 200);
    let mut again = pbx_calls_teams_with(&lab, pbx.clone(), 101).await;
    assert_eq!((again.dr_teams.port, again.dr_pbx.port), (30002, 30012), "the freed pair serves the new call");
    again.assert_media_both_ways(5, 100).await;
    again.teams_hangs_up(&lab).await;
}

/// With room for one call, each of these calls only gets ports if the previous one returned
/// them: a call refused by Teams (486), a call cancelled by the PBX while ringing, a call ended
/// by the media timeout, and finally a call with media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_ports_freed_after_busy_cancel_and_timeout() {
    let lab = lab(|c| {
        c.teams_media_ports = (30021, 30024);
        c.pbx_media_ports = (30031, 30034);
        c.media_timeout_secs = 2;
    })
    .await;
    let pbx = SipPeer::new("pbx");
    pbx.bind_udp(lab.cfg.pbx_address).await;
    let rtp = RtpEndpoint::bind().await;

    // busy
    let mut c = pbx_invite(&lab, &pbx, &rtp);
    let (inv, conn) = lab.teams.expect_request(Method::Invite, STEP).await;
    lab.teams.respond(&inv, 486, "", &[]);
    lab.teams.expect_ack(&lab.teams.accept_call(&inv, &conn), STEP).await;
    assert_eq!(pbx.await_answer(&mut c, STEP).await.status, 486);

    // cancelled while ringing
    let mut c = pbx_invite(&lab, &pbx, &rtp);
    let (inv, conn) = lab.teams.expect_request(Method::Invite, STEP).await;
    assert_eq!(SdpMedia::parse(&String::from_utf8_lossy(&inv.body)).port, 30022, "ports back after 486");
    lab.teams.respond(&inv, 180, "", &[]);
    pbx.expect_response(&c.call_id, Method::Invite, STEP).await; // 100 or 180
    let (cancel_resp, _) = tokio::join!(pbx.cancel(&c, STEP), async {
        let (cancel, _) = lab.teams.expect_request(Method::Cancel, STEP).await;
        lab.teams.respond(&cancel, 200, "", &[]);
        lab.teams.respond(&inv, 487, "", &[]);
        lab.teams.expect_ack(&lab.teams.accept_call(&inv, &conn), STEP).await;
    });
    assert_eq!(cancel_resp.status, 200);
    assert_eq!(pbx.await_answer(&mut c, STEP).await.status, 487);

    // answered, no media: the media timeout ends it
    let mut c = pbx_invite(&lab, &pbx, &rtp);
    let (inv, conn) = lab.teams.expect_request(Method::Invite, STEP).await;
    assert_eq!(SdpMedia::parse(&String::from_utf8_lossy(&inv.body)).port, 30022, "ports back after CANCEL");
    let ep = SrtpEndpoint::bind().await;
    lab.teams.respond(&inv, 200, &ep.sdp("sendrecv", 101, 1), &[]);
    let tcall = lab.teams.accept_call(&inv, &conn);
    lab.teams.expect_ack(&tcall, STEP).await;
    assert_eq!(pbx.await_answer(&mut c, STEP).await.status, 200);
    pbx.ack(&mut c).await;
    tokio::join!(lab.teams.expect_bye(&tcall, Duration::from_secs(8)), pbx.expect_bye(&c, Duration::from_secs(8)));

    // and a call with media on the same pair
    let mut mc = pbx_calls_teams_with(&lab, pbx.clone(), 101).await;
    assert_eq!((mc.dr_teams.port, mc.dr_pbx.port), (30022, 30032), "ports back after the media timeout");
    mc.assert_media_both_ways(5, 1).await;
    mc.teams_hangs_up(&lab).await;
}

fn assert_retry_503(r: &Response, what: &str) {
    assert_eq!(r.status, 503, "{what}");
    let ra = r.headers.get("Retry-After").unwrap_or_else(|| panic!("{what}: 503 without Retry-After"));
    assert!(ra.trim().split(';').next().is_some_and(|s| s.trim().parse::<u32>().is_ok()), "{what}: Retry-After {ra:?}");
}

// ------------------------------------------------------------------ 6. latching

/// After the PBX side latched to the PBX's RTP source, RTP from another local socket to
/// drbridge's PBX-side port is dropped while the latched source still gets through; after the
/// ICE nomination the same holds on the Teams side for SRTP (valid key) from another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_dropped_after_latching() {
    let lab = lab(|_| {}).await;
    let mut mc = pbx_calls_teams(&lab, 101).await;
    mc.assert_media_both_ways(5, 1).await; // latches the PBX side to mc.pbx_rtp

    let intruder = RtpEndpoint::bind().await;
    const INTRUDER_SSRC: u32 = 0x6666_6666;
    for i in 0..5u16 {
        intruder.send(&Rtp::new(8, 3000 + i, 0, INTRUDER_SSRC, &[1; 160]), mc.dr_pbx.addr()).await;
    }
    let marker = Rtp::new(8, 50, 9999, 0x0000_4711, &[2; 160]);
    mc.pbx_rtp.send(&marker, mc.dr_pbx.addr()).await;
    let got = mc.ep.recv(MEDIA_WAIT).await.expect("packet from the latched source");
    assert_eq!(got.plain.expect("decrypts"), marker, "the intruder's packets must not be relayed");
    assert!(mc.ep.recv(Duration::from_millis(300)).await.is_none(), "nothing else arrives at Teams");

    // Teams side: nominated by the ICE check; SRTP with Teams' key from elsewhere is dropped
    let other = RtpEndpoint::bind().await;
    let forged = mc.ep.protect(&Rtp::new(8, 7000, 0, 0x7ea3_5000, &[3; 160]));
    other.sock.send_to(&forged, mc.dr_teams.addr()).await.expect("send");
    let marker = Rtp::new(8, 7001, 0, 0x7ea3_5000, &[4; 160]);
    mc.ep.send(&marker, mc.dr_teams.addr()).await;
    let (got, _) = mc.pbx_rtp.recv(MEDIA_WAIT).await.expect("packet from the nominated source");
    assert_eq!(got, marker, "SRTP from an address other than the nominated one must not be relayed");
    assert!(mc.pbx_rtp.recv(Duration::from_millis(300)).await.is_none(), "nothing else arrives at the PBX");
    // the intruder gets nothing back either
    assert!(intruder.recv(Duration::from_millis(100)).await.is_none());
    mc.teams_hangs_up(&lab).await;
}

// ------------------------------------------------------------------ 7. topology, both ways

/// The SDP checks of the other tests, for a call whose both sides' own media addresses are
/// known: nothing of the PBX's media address in any message toward Teams, nothing of the Teams
/// media address, keys or ICE toward the PBX, across the whole call (INVITE, 200, re-INVITE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_addresses_hidden_both_ways() {
    let lab = lab(|_| {}).await;
    let mut mc = pbx_calls_teams(&lab, 101).await;
    mc.assert_media_both_ways(3, 1).await;
    let again = pbx_sdp(mc.pbx_rtp.addr(), "sendrecv");
    let (resp, _) = tokio::join!(
        mc.pbx.request(&mut mc.pbx_call, Method::Invite, &again, &[], STEP),
        teams_answers_reinvite(&lab.teams, &mc.teams_call, &mc.ep, "sendrecv")
    );
    assert_eq!(resp.status, 200);
    let pbx_port = mc.pbx_rtp.addr().port().to_string();
    let teams_port = mc.ep.addr().port().to_string();
    let teams_key = common::util::base64(&[&mc.ep.key.key[..], &mc.ep.key.salt[..]].concat());
    let (pbx, ice) = (mc.pbx.clone(), mc.ep.ice.clone());
    mc.teams_hangs_up(&lab).await;

    // every byte Teams received: no PBX media port as an SDP token
    for e in lab.teams.log() {
        let text = String::from_utf8_lossy(&e.raw).into_owned();
        let body = body_of(&text);
        if body.is_empty() {
            continue;
        }
        let tokens: Vec<&str> = body.split(|c: char| c.is_whitespace() || c == ':' || c == '/').collect();
        assert!(!tokens.contains(&pbx_port.as_str()), "PBX media port {pbx_port} toward Teams:\n{body}");
    }
    // every byte the PBX received: no Teams media port, key, ICE credentials
    for e in pbx.log() {
        let text = String::from_utf8_lossy(&e.raw).into_owned();
        let body = body_of(&text);
        let tokens: Vec<&str> = body.split(|c: char| c.is_whitespace() || c == ':' || c == '/').collect();
        assert!(!tokens.contains(&teams_port.as_str()), "Teams media port {teams_port} toward the PBX:\n{body}");
        for secret in [teams_key.as_str(), ice.ufrag.as_str(), ice.pwd.as_str(), "a=crypto", "a=candidate", "a=ice-"] {
            assert!(!text.contains(secret), "{secret} toward the PBX:\n{text}");
        }
    }
}
