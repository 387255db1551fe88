//! The PBX trunk over TLS, through the drbridge binary: the PBX side has its own certificates
//! (`pbx.tls_cert`, `pbx.tls_key`) and roots (`pbx.tls_ca`), separate from the Teams side's, as
//! a MiVoice Business or MX-ONE trunk with an internal CA has. The PBX is the Rust peer with a
//! certificate from a second CA ("trunk CA") that the Teams side does not trust.

mod common;

use common::certs::generate_pki;
use common::peer::SipPeer;
use common::teams::{client_config, server_config, TeamsPeer};
use common::util::STEP;
use common::{Drbridge, LabConfig};
use drbridge::sip::msg::Method;
use std::path::{Path, PathBuf};

const PBX_HOST: &str = "mivb.lab.drbridge.test";
const SBC_LAN: &str = "drbridge-lan.lab.drbridge.test";
const TEAMS_CALLER: &str = "+46701234567";
const PBX_EXT_E164: &str = "+4681234711";
const TEAMS_USER: &str = "+4681234801";

struct Lab {
    cfg: LabConfig,
    teams: TeamsPeer,
    pbx: SipPeer,
    trunk: PathBuf,
    dr: Drbridge,
}

fn pem(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}

/// drbridge with `pbx.transport = "tls"`, `pbx.domain = PBX_HOST` and the trunk CA's files; the
/// PBX peer listens on `pbx_address` with the trunk certificate `pbx_leaf` and requires a client
/// certificate from the trunk CA.
async fn lab(pbx_leaf: &str) -> Lab {
    lab_with(pbx_leaf, "").await
}

/// [`lab`] with extra `[pbx]` lines.
async fn lab_with(pbx_leaf: &str, pbx_extra: &str) -> Lab {
    let cfg = LabConfig::new();
    let trunk = cfg.dir.join("trunk");
    generate_pki(
        &trunk,
        "trunk-ca",
        "Contoso internal CA",
        &[
            ("pbx", vec![PBX_HOST.to_string()]),
            ("drbridge-lan", vec![SBC_LAN.to_string(), "127.0.0.1".to_string()]),
            ("other-host", vec!["other.lab.drbridge.test".to_string()]),
        ],
    );
    let teams = TeamsPeer::start(&cfg.certs, 1).await;
    let mut cfg = cfg.with_proxies(&teams.proxy_addrs);
    let (sbc_crt, sbc_key) = pem(&trunk, "drbridge-lan");
    cfg.pbx_transport = "tls".into();
    cfg.pbx_extra = format!(
        "domain = \"{PBX_HOST}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"",
        sbc_crt.display(),
        sbc_key.display(),
        trunk.join("trunk-ca.crt").display()
    ) + "\n" + pbx_extra;
    let pbx = SipPeer::new("pbx");
    let (crt, key) = pem(&trunk, pbx_leaf);
    pbx.listen_tls_at(cfg.pbx_address, server_config(&crt, &key, &trunk.join("trunk-ca.crt"))).await;
    pbx.set_client_config(client_config(Some((&crt, &key)), &trunk.join("trunk-ca.crt")));
    pbx.set_via("TLS", &format!("{PBX_HOST}:{}", cfg.pbx_address.port()));
    pbx.set_contact(&format!("<sip:{}:{};transport=tls>", cfg.pbx_address.ip(), cfg.pbx_address.port()));
    let dr = tokio::task::block_in_place(|| Drbridge::start(&cfg));
    let cfg = dr.cfg.clone();
    Lab { cfg, teams, pbx, trunk, dr }
}

fn pbx_sdp() -> String {
    "v=0\r\no=PBX 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n".to_string()
}

/// The PBX calls TEAMS_USER on `conn` (a TLS connection to drbridge's PBX listener); Teams
/// answers; the PBX hangs up. Returns the INVITE Teams got.
async fn pbx_call_on(lab: &Lab, conn: &common::peer::ConnHandle) -> drbridge::sip::msg::Request {
    let dr = lab.cfg.pbx_listen;
    let mut inv = lab.pbx.new_request(Method::Invite, &format!("sip:{TEAMS_USER}@{dr};transport=tls"), &format!("<sip:4711@{PBX_HOST}>"), &format!("<sip:{TEAMS_USER}@{dr}>"));
    inv.headers.push("Content-Type", "application/sdp");
    inv.body = bytes::Bytes::from(pbx_sdp());
    let mut caller = lab.pbx.send_invite(conn, inv);
    let t = lab.teams.answer_call(STEP).await;
    assert_eq!(lab.pbx.await_answer(&mut caller, STEP).await.status, 200);
    lab.pbx.ack(&mut caller).await;
    assert_eq!(lab.pbx.bye(&mut caller, STEP).await.status, 200);
    lab.teams.expect_bye(&t, STEP).await;
    t.invite
}

/// Teams calls a PBX extension: drbridge opens TLS to the PBX with its trunk certificate
/// (which the PBX checks against the trunk CA), checks the PBX's certificate against the trunk
/// CA and `pbx.domain`, and names its PBX-side TLS listener in Via and Contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_calls_pbx_over_tls_with_the_trunk_certificates() {
    let lab = lab("pbx").await;
    let conn = lab.teams.connect_sbc(lab.cfg.teams_listen, 0).await;
    let mut a = lab.teams.place_call(&conn, TEAMS_CALLER, PBX_EXT_E164);
    let (inv, pconn) = lab.pbx.expect_request(Method::Invite, STEP).await;
    assert!(lab.pbx.tls_failures().is_empty(), "{:?}", lab.pbx.tls_failures());
    let listen = lab.cfg.pbx_listen;
    let via = inv.headers.get("Via").unwrap_or_default().to_string();
    assert!(via.starts_with(&format!("SIP/2.0/TLS {listen}")), "Via names the PBX-side TLS listener: {via}");
    let contact = inv.headers.get("Contact").unwrap_or_default().to_string();
    assert!(contact.contains(&format!("@{listen};transport=tls>")), "Contact: {contact}");
    assert!(inv.uri.starts_with(&format!("sip:4711@{PBX_HOST}")), "Request-URI on pbx.domain: {}", inv.uri);
    lab.pbx.respond(&inv, 200, &pbx_sdp(), &[]);
    let pcall = lab.pbx.accept_call(&inv, &pconn);
    assert_eq!(lab.teams.await_answer(&mut a, STEP).await.status, 200);
    lab.teams.ack(&mut a).await;
    lab.pbx.expect_ack(&pcall, STEP).await;
    assert_eq!(lab.teams.bye(&mut a, STEP).await.status, 200);
    lab.pbx.expect_bye(&pcall, STEP).await;
}

/// The PBX calls a Teams user over its own TLS connection to drbridge's PBX-side listener,
/// which presents the trunk certificate and accepts the PBX's; the PBX hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_calls_teams_over_tls_on_the_pbx_listener() {
    let lab = lab("pbx").await;
    let dr = lab.cfg.pbx_listen;
    let client = client_config(Some((&lab.trunk.join("pbx.crt"), &lab.trunk.join("pbx.key"))), &lab.trunk.join("trunk-ca.crt"));
    let conn = lab.pbx.connect_tls(dr, SBC_LAN, client, None).await.expect("TLS to drbridge's PBX listener with the trunk CA");
    let teams_inv = pbx_call_on(&lab, &conn).await;
    assert!(teams_inv.uri.contains(TEAMS_USER), "to the Teams user: {}", teams_inv.uri);
}

/// Each side's listener trusts its own CA only: the Teams certificate is refused on the PBX
/// listener, and the PBX's trunk certificate on the Teams listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_refuses_the_other_sides_certificate() {
    let lab = lab("pbx").await;
    let c = &lab.cfg.certs;
    // Teams certificate, drbridge verified against the trunk CA: the handshake reaches drbridge,
    // which refuses the client certificate.
    let teams_cert_to_pbx_side = client_config(Some((&c.teams_cert, &c.teams_key)), &lab.trunk.join("trunk-ca.crt"));
    let intruder = SipPeer::new("intruder");
    let r = intruder.connect_tls(lab.cfg.pbx_listen, SBC_LAN, teams_cert_to_pbx_side, None).await;
    if let Ok(conn) = r {
        // TLS 1.3: our side finished; drbridge's alert arrives on the first read.
        let opt = intruder.new_request(Method::Options, &format!("sip:{}", lab.cfg.pbx_listen), "<sip:x@intruder>", &format!("<sip:{}>", lab.cfg.pbx_listen));
        intruder.send_request(&conn, &opt);
    }
    assert!(tokio::task::block_in_place(|| lab.dr.wait_log("inbound TLS handshake failed", STEP)), "Teams certificate accepted on the PBX listener");
    let pbx_cert_to_teams_side = client_config(Some((&lab.trunk.join("pbx.crt"), &lab.trunk.join("pbx.key"))), &c.ca_cert);
    let r = intruder.connect_tls(lab.cfg.teams_listen, SBC_FQDN_NAME, pbx_cert_to_teams_side, None).await;
    if let Ok(conn) = r {
        let opt = intruder.new_request(Method::Options, &format!("sip:{}", lab.cfg.teams_listen), "<sip:x@intruder>", &format!("<sip:{}>", lab.cfg.teams_listen));
        intruder.send_request(&conn, &opt);
    }
    let refused_twice = tokio::task::block_in_place(|| lab.dr.wait_log_count("inbound TLS handshake failed", 2, STEP));
    assert!(refused_twice, "PBX certificate accepted on the Teams listener");
    assert!(intruder.log().is_empty(), "a message reached an intruder: {}", intruder.summary());
}

const SBC_FQDN_NAME: &str = common::config::SBC_FQDN;

/// A PBX whose certificate chains to the trunk CA but does not name `pbx.domain` is refused:
/// no INVITE reaches it and the Teams caller gets a 5xx at once, not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_certificate_for_another_name_is_refused() {
    let lab = lab("other-host").await;
    let conn = lab.teams.connect_sbc(lab.cfg.teams_listen, 0).await;
    let a = lab.teams.place_call(&conn, TEAMS_CALLER, PBX_EXT_E164);
    let fin = lab.teams.expect_final(&a.call_id, Method::Invite, STEP).await;
    assert!(fin.status >= 500, "call through a PBX with the wrong certificate name: {}", fin.status);
    assert!(lab.pbx.requests(None, &Method::Invite).is_empty(), "INVITE sent to a PBX whose certificate names another host");
    assert!(lab.dr.stderr().contains("TLS handshake"), "the refusal is logged");
}

/// A TLS handshake to `to` from `from_ip` without a client certificate (server checked against
/// `ca`, name `name`), then an OPTIONS: true when drbridge answers anything on that connection.
async fn answers_without_client_cert(from_ip: &str, to: std::net::SocketAddr, name: &str, ca: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{from_ip}:0").parse().unwrap()).expect("bind");
    let tcp = sock.connect(to).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(client_config(None, ca));
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let Ok(mut tls) = connector.connect(server, tcp).await else { return false };
    let opt = format!("OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS {from_ip}:5061;branch=z9hG4bK-nocert\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{from_ip}>;tag=1\r\nTo: <sip:{to}>\r\nCall-ID: nocert-{from_ip}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    if tls.write_all(opt.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 2048];
    matches!(tokio::time::timeout(STEP, tls.read(&mut buf)).await, Ok(Ok(n)) if n > 0 && buf.starts_with(b"SIP/2.0 200"))
}

/// `pbx.tls_client_cert = "optional"`: the PBX's own address may connect without a client
/// certificate and call Teams; another address without one is refused. By default
/// ("required") the PBX's address is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_without_a_client_certificate_only_from_its_address_and_only_when_optional() {
    let lab = lab_with("pbx", "tls_client_cert = \"optional\"").await;
    let ca = lab.trunk.join("trunk-ca.crt");
    assert!(answers_without_client_cert("127.0.0.1", lab.cfg.pbx_listen, SBC_LAN, &ca).await, "the PBX's address, no certificate: served");
    assert!(!answers_without_client_cert("127.0.0.2", lab.cfg.pbx_listen, SBC_LAN, &ca).await, "another address without a certificate: refused");
    assert!(tokio::task::block_in_place(|| lab.dr.wait_log("no client certificate, and not from the trunk's address", STEP)));
    // a call from the PBX without a certificate
    let dr = lab.cfg.pbx_listen;
    let conn = lab.pbx.connect_tls(dr, SBC_LAN, client_config(None, &ca), None).await.expect("TLS without a client certificate");
    pbx_call_on(&lab, &conn).await;

    let strict = lab_with("pbx", "").await;
    let ca = strict.trunk.join("trunk-ca.crt");
    assert!(!answers_without_client_cert("127.0.0.1", strict.cfg.pbx_listen, SBC_LAN, &ca).await, "required: even the PBX's address needs a certificate");
}
