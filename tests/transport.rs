//! Integration tests for sip::transport on 127.0.0.1 with ephemeral ports and lab certificates.
//! Synchronisation is by awaiting events/reads, each guarded by a timeout; no sleeps.

use bytes::Bytes;
use drbridge::sip::msg::{Limits, Message};
use drbridge::sip::transport::{
    ensure_lab_certs, issue_lab_cert, tls::sip_provider, Inbound, LabCerts, ListenerSpec, Peer,
    Proto, SipTransport, TlsSetup, TransportConfig, TransportEvent,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(10);
const SBC: &str = "sbc.lab.drbridge.test";

fn teams_names() -> Vec<String> {
    [
        "sip.pstnhub.microsoft.com",
        "sip2.pstnhub.microsoft.com",
        "sip3.pstnhub.microsoft.com",
        "*.pstnhub.microsoft.com",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Lab {
    dir: PathBuf,
    certs: LabCerts,
    /// Signed by the lab CA but for a name Teams would never use.
    evil: (PathBuf, PathBuf),
}

fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("transport-lab-certs");
        let _ = std::fs::remove_dir_all(&dir);
        let certs = ensure_lab_certs(&dir, SBC).expect("lab certs");
        let evil = issue_lab_cert(&dir, "evil", &["evil.example.com"]).expect("evil cert");
        Lab { dir, certs, evil }
    })
}

fn sbc_tls() -> TlsSetup {
    let c = &lab().certs;
    TlsSetup::from_files(&c.sbc_cert, &c.sbc_key, &c.ca_cert, teams_names()).unwrap()
}

fn teams_tls() -> TlsSetup {
    let c = &lab().certs;
    TlsSetup::from_files(
        &c.teams_cert,
        &c.teams_key,
        &c.ca_cert,
        vec![SBC.to_string()],
    )
    .unwrap()
}

fn local0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(
    protos: &[Proto],
    tls: Option<TlsSetup>,
    cfg: TransportConfig,
) -> (SipTransport, mpsc::Receiver<TransportEvent>) {
    let listeners = protos
        .iter()
        .map(|p| ListenerSpec {
            proto: *p,
            addr: local0(),
        })
        .collect();
    SipTransport::start_with(listeners, tls, cfg).await.unwrap()
}

fn options(call_id: &str, proto: &str) -> String {
    format!(
        "OPTIONS sip:{SBC};transport={proto} SIP/2.0\r\n\
         Via: SIP/2.0/{proto} 127.0.0.1:5061;branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:ping@sip.pstnhub.microsoft.com>;tag=f-{call_id}\r\n\
         To: <sip:{SBC}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

async fn next_event(rx: &mut mpsc::Receiver<TransportEvent>) -> TransportEvent {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("channel closed")
}

async fn next_msg(rx: &mut mpsc::Receiver<TransportEvent>) -> Inbound {
    match next_event(rx).await {
        TransportEvent::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn call_id(m: &Inbound) -> String {
    m.msg
        .headers()
        .get("Call-ID")
        .map(|v| v.to_string())
        .unwrap_or_default()
}

fn request_of(m: &Inbound) -> &drbridge::sip::msg::Request {
    match &m.msg {
        Message::Request(r) => r,
        Message::Response(r) => panic!("expected a request, got {}", r.status),
    }
}

/// Reads until EOF or error; true when the peer closed/refused the connection.
async fn refused<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> bool {
    let mut buf = [0u8; 1024];
    let res = tokio::time::timeout(GUARD, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    res.unwrap_or(false)
}

#[tokio::test]
async fn udp_round_trip_keepalive_and_garbage() {
    let (a, mut arx) = start(&[Proto::Udp], None, TransportConfig::default()).await;
    let (b, mut brx) = start(&[Proto::Udp], None, TransportConfig::default()).await;
    let a_addr = a.local_addr(Proto::Udp).unwrap();
    let b_addr = b.local_addr(Proto::Udp).unwrap();
    let to_b = Peer {
        proto: Proto::Udp,
        addr: b_addr,
    };

    // Keep-alive and garbage first: both dropped, neither kills the receive task.
    a.send(to_b, None, Bytes::from_static(b"\r\n\r\n"));
    a.send(
        to_b,
        None,
        Bytes::from_static(b"\x00\xffnot sip at all\r\n\r\n"),
    );
    a.send(to_b, None, Bytes::from(options("udp-1", "UDP")));

    let m = next_msg(&mut brx).await;
    assert_eq!(call_id(&m), "udp-1");
    assert_eq!(
        m.peer,
        Peer {
            proto: Proto::Udp,
            addr: a_addr
        }
    );
    assert_eq!(m.local, b_addr);
    assert_eq!(b.stats().udp_keepalives.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats().udp_parse_errors.load(Ordering::Relaxed), 1);

    // Answer to the source address.
    let resp = request_of(&m).response(200, Some("t1"));
    b.send(m.peer, None, resp.to_bytes());
    let r = next_msg(&mut arx).await;
    match r.msg {
        Message::Response(r) => assert_eq!(r.status, 200),
        _ => panic!("expected a response"),
    }
    assert_eq!(r.peer.addr, b_addr);
}

#[tokio::test]
async fn tcp_framing_reuse_and_ping() {
    let (sbc, mut rx) = start(&[Proto::Tcp], None, TransportConfig::default()).await;
    let addr = sbc.local_addr(Proto::Tcp).unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    let client_addr = c.local_addr().unwrap();

    // Two messages in one write, preceded by a stray CRLF.
    let two = format!("\r\n{}{}", options("tcp-1", "TCP"), options("tcp-2", "TCP"));
    c.write_all(two.as_bytes()).await.unwrap();
    let m1 = next_msg(&mut rx).await;
    let m2 = next_msg(&mut rx).await;
    assert_eq!(
        (call_id(&m1).as_str(), call_id(&m2).as_str()),
        ("tcp-1", "tcp-2")
    );
    assert_eq!(
        m1.peer,
        Peer {
            proto: Proto::Tcp,
            addr: client_addr
        }
    );

    // One message split over three writes, with a body.
    let body = "v=0\r\n";
    let msg = options("tcp-3", "TCP").replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    let (p1, rest) = msg.split_at(20);
    let (p2, p3) = rest.split_at(rest.len() - 3);
    for part in [p1, p2, p3] {
        c.write_all(part.as_bytes()).await.unwrap();
        c.flush().await.unwrap();
    }
    let m3 = next_msg(&mut rx).await;
    assert_eq!(call_id(&m3), "tcp-3");
    assert_eq!(&m3.msg.body()[..], body.as_bytes());

    // RFC 5626 ping -> pong.
    c.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(GUARD, c.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");

    // The answer goes back over the inbound connection.
    let resp = request_of(&m3).response(200, Some("x"));
    sbc.send(m3.peer, None, resp.to_bytes());
    let want = resp.to_bytes();
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(GUARD, c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, &want[..]);
    assert_eq!(sbc.stats().accepted.load(Ordering::Relaxed), 1);
    assert_eq!(sbc.stats().connected.load(Ordering::Relaxed), 0);
    assert_eq!(sbc.connection_count(), 1);
}

#[tokio::test]
async fn tcp_outbound_connect_and_reuse() {
    let (a, _arx) = start(&[], None, TransportConfig::default()).await;
    let (b, mut brx) = start(&[Proto::Tcp], None, TransportConfig::default()).await;
    let to_b = Peer {
        proto: Proto::Tcp,
        addr: b.local_addr(Proto::Tcp).unwrap(),
    };
    // Queued before the connection exists; both go over one connection, in order.
    a.send(to_b, None, Bytes::from(options("out-1", "TCP")));
    a.send(to_b, None, Bytes::from(options("out-2", "TCP")));
    assert_eq!(call_id(&next_msg(&mut brx).await), "out-1");
    let m = next_msg(&mut brx).await;
    assert_eq!(call_id(&m), "out-2");
    assert_eq!(b.stats().accepted.load(Ordering::Relaxed), 1);
    assert_eq!(a.stats().connected.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn tcp_connect_refused_emits_connect_failed() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (a, mut arx) = start(&[], None, TransportConfig::default()).await;
    let peer = Peer {
        proto: Proto::Tcp,
        addr: closed,
    };
    a.send(peer, None, Bytes::from(options("nowhere", "TCP")));
    match next_event(&mut arx).await {
        TransportEvent::ConnectFailed { peer: p, reason } => {
            assert_eq!(p, peer);
            assert!(reason.contains("connect"), "{reason}");
        }
        other => panic!("expected ConnectFailed, got {other:?}"),
    }
    assert_eq!(a.connection_count(), 0);
}

#[tokio::test]
async fn malformed_stream_input_does_not_kill_listener() {
    let (sbc, mut rx) = start(&[Proto::Tcp], None, TransportConfig::default()).await;
    let addr = sbc.local_addr(Proto::Tcp).unwrap();

    // Framing errors close that connection.
    for bad in [
        "OPTIONS sip:x SIP/2.0\r\nContent-Length: abc\r\n\r\n",
        "OPTIONS sip:x SIP/2.0\r\nContent-Length: 9999999\r\n\r\n",
        "OPTIONS sip:x SIP/2.0\r\nCall-ID: nolength\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(bad.as_bytes()).await.unwrap();
        assert!(refused(&mut c).await, "connection kept after {bad:?}");
    }
    assert_eq!(sbc.stats().framing_errors.load(Ordering::Relaxed), 3);

    // A well-framed but unparsable message is dropped; the connection stays usable.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let junk = "GARBAGE LINE\r\nContent-Length: 0\r\n\r\n";
    c.write_all(format!("{junk}{}", options("after-junk", "TCP")).as_bytes())
        .await
        .unwrap();
    let m = next_msg(&mut rx).await;
    assert_eq!(call_id(&m), "after-junk");
    assert_eq!(sbc.stats().stream_parse_errors.load(Ordering::Relaxed), 1);

    // A binary blob without header end beyond the size limit closes its connection only.
    let mut c2 = TcpStream::connect(addr).await.unwrap();
    c2.write_all(&vec![0xffu8; 70_000]).await.unwrap();
    assert!(refused(&mut c2).await);
    c.write_all(options("still-alive", "TCP").as_bytes())
        .await
        .unwrap();
    assert_eq!(call_id(&next_msg(&mut rx).await), "still-alive");
}

#[tokio::test]
async fn idle_connection_closed_and_connection_limit() {
    let cfg = TransportConfig {
        idle_timeout: Duration::from_millis(300),
        max_connections: 1,
        ..TransportConfig::default()
    };
    let (sbc, mut rx) = start(&[Proto::Tcp], None, cfg).await;
    let addr = sbc.local_addr(Proto::Tcp).unwrap();
    let mut c1 = TcpStream::connect(addr).await.unwrap();
    c1.write_all(options("first", "TCP").as_bytes())
        .await
        .unwrap();
    assert_eq!(call_id(&next_msg(&mut rx).await), "first");
    // The limit is one connection: a second one is closed at once.
    let mut c2 = TcpStream::connect(addr).await.unwrap();
    assert!(refused(&mut c2).await);
    assert_eq!(sbc.stats().rejected_limit.load(Ordering::Relaxed), 1);
    // The first connection is closed once idle.
    assert!(refused(&mut c1).await);
    assert_eq!(sbc.stats().idle_closed.load(Ordering::Relaxed), 1);
}

fn pem_chain(p: &PathBuf) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(p)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// A bare rustls client (not a SipTransport), for the refusal cases.
async fn raw_tls(
    addr: SocketAddr,
    client_cert: Option<(&PathBuf, &PathBuf)>,
    tls12_only: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_chain(&lab().certs.ca_cert) {
        roots.add(c).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(sip_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client_cert {
        Some((crt, key)) => b
            .with_client_auth_cert(pem_chain(crt), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    connector
        .connect(ServerName::try_from(SBC).unwrap(), tcp)
        .await
}

#[tokio::test]
async fn tls_mutual_both_directions_on_one_connection() {
    let (sbc, mut sbc_rx) = start(&[Proto::Tls], Some(sbc_tls()), TransportConfig::default()).await;
    let (teams, mut teams_rx) = start(&[], Some(teams_tls()), TransportConfig::default()).await;
    let sbc_addr = sbc.local_addr(Proto::Tls).unwrap();
    let to_sbc = Peer {
        proto: Proto::Tls,
        addr: sbc_addr,
    };

    // Teams opens the connection and sends OPTIONS.
    teams.send(to_sbc, Some(SBC), Bytes::from(options("tls-1", "TLS")));
    let m = next_msg(&mut sbc_rx).await;
    assert_eq!(call_id(&m), "tls-1");
    assert_eq!(m.peer.proto, Proto::Tls);
    assert_eq!(m.local, sbc_addr);

    // The SBC answers over that connection...
    let resp = request_of(&m).response(200, Some("sbc"));
    sbc.send(m.peer, None, resp.to_bytes());
    let r = next_msg(&mut teams_rx).await;
    assert!(matches!(&r.msg, Message::Response(x) if x.status == 200));
    assert_eq!(r.peer, to_sbc);

    // ...and sends its own request back over the same connection.
    sbc.send(m.peer, None, Bytes::from(options("tls-2", "TLS")));
    let back = next_msg(&mut teams_rx).await;
    assert_eq!(call_id(&back), "tls-2");
    assert_eq!(back.peer, to_sbc);
    // Teams answers; the SBC gets it from the same peer.
    teams.send(
        back.peer,
        Some(SBC),
        request_of(&back).response(200, Some("t")).to_bytes(),
    );
    let r2 = next_msg(&mut sbc_rx).await;
    assert_eq!(r2.peer, m.peer);

    // Exactly one TLS connection, opened by Teams.
    assert_eq!(sbc.stats().accepted.load(Ordering::Relaxed), 1);
    assert_eq!(sbc.stats().connected.load(Ordering::Relaxed), 0);
    assert_eq!(teams.stats().connected.load(Ordering::Relaxed), 1);
    assert_eq!(teams.stats().accepted.load(Ordering::Relaxed), 0);
    assert_eq!(sbc.connection_count(), 1);
}

#[tokio::test]
async fn tls12_client_with_teams_cert_accepted() {
    let (sbc, mut rx) = start(&[Proto::Tls], Some(sbc_tls()), TransportConfig::default()).await;
    let c = &lab().certs;
    let addr = sbc.local_addr(Proto::Tls).unwrap();
    let mut s = raw_tls(addr, Some((&c.teams_cert, &c.teams_key)), true)
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    s.write_all(options("tls12", "TLS").as_bytes())
        .await
        .unwrap();
    s.flush().await.unwrap();
    assert_eq!(call_id(&next_msg(&mut rx).await), "tls12");
    // Ping over TLS.
    s.write_all(b"\r\n\r\n").await.unwrap();
    s.flush().await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(GUARD, s.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");
}

#[tokio::test]
async fn tls_client_without_certificate_refused() {
    let (sbc, mut rx) = start(&[Proto::Tls], Some(sbc_tls()), TransportConfig::default()).await;
    let addr = sbc.local_addr(Proto::Tls).unwrap();
    for tls12 in [false, true] {
        // TLS 1.3: the client finishes its side first and learns of the refusal on read.
        if let Ok(mut s) = raw_tls(addr, None, tls12).await {
            let _ = s.write_all(options("no-cert", "TLS").as_bytes()).await;
            let _ = s.flush().await;
            assert!(refused(&mut s).await);
        }
    }
    // Nothing was delivered; the listener still serves a proper client.
    let (teams, _trx) = start(&[], Some(teams_tls()), TransportConfig::default()).await;
    teams.send(
        Peer {
            proto: Proto::Tls,
            addr,
        },
        Some(SBC),
        Bytes::from(options("good", "TLS")),
    );
    assert_eq!(call_id(&next_msg(&mut rx).await), "good");
    assert_eq!(sbc.stats().accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn tls_client_with_wrong_name_refused() {
    let (sbc, mut rx) = start(&[Proto::Tls], Some(sbc_tls()), TransportConfig::default()).await;
    let addr = sbc.local_addr(Proto::Tls).unwrap();
    let (crt, key) = &lab().evil;
    for tls12 in [false, true] {
        if let Ok(mut s) = raw_tls(addr, Some((crt, key)), tls12).await {
            let _ = s.write_all(options("evil", "TLS").as_bytes()).await;
            let _ = s.flush().await;
            assert!(refused(&mut s).await);
        }
    }
    // The SBC's own certificate is from the right CA but not a Teams name: refused too.
    let c = &lab().certs;
    if let Ok(mut s) = raw_tls(addr, Some((&c.sbc_cert, &c.sbc_key)), false).await {
        let _ = s
            .write_all(options("sbc-as-client", "TLS").as_bytes())
            .await;
        let _ = s.flush().await;
        assert!(refused(&mut s).await);
    }
    // A SipTransport with that certificate: under TLS 1.3 its handshake completes and the
    // refusal arrives as an alert on the first read; it is still reported as ConnectFailed.
    let evil_setup =
        TlsSetup::from_files(crt, key, &lab().certs.ca_cert, vec![SBC.to_string()]).unwrap();
    let (evil, mut evil_rx) = start(&[], Some(evil_setup), TransportConfig::default()).await;
    let to_sbc = Peer {
        proto: Proto::Tls,
        addr,
    };
    evil.send(to_sbc, Some(SBC), Bytes::from(options("evil-2", "TLS")));
    match next_event(&mut evil_rx).await {
        TransportEvent::ConnectFailed { peer, reason } => {
            assert_eq!(peer, to_sbc);
            assert!(reason.contains("BadCertificate"), "{reason}");
        }
        other => panic!("expected ConnectFailed, got {other:?}"),
    }
    assert_eq!(evil.connection_count(), 0);
    let (teams, _trx) = start(&[], Some(teams_tls()), TransportConfig::default()).await;
    teams.send(
        Peer {
            proto: Proto::Tls,
            addr,
        },
        Some(SBC),
        Bytes::from(options("good", "TLS")),
    );
    assert_eq!(call_id(&next_msg(&mut rx).await), "good");
    assert_eq!(sbc.stats().accepted.load(Ordering::Relaxed), 1);
    assert!(sbc.stats().tls_handshake_failures.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn tls_server_name_mismatch_connect_failed() {
    // "Teams" listens; the SBC connects expecting sip.pstnhub.microsoft.com but asks for
    // another name: the server certificate does not match the SNI name.
    let c = &lab().certs;
    let teams_setup = TlsSetup::from_files(
        &c.teams_cert,
        &c.teams_key,
        &c.ca_cert,
        vec![SBC.to_string()],
    )
    .unwrap();
    let (teams, mut teams_rx) =
        start(&[Proto::Tls], Some(teams_setup), TransportConfig::default()).await;
    let (sbc, mut sbc_rx) = start(&[], Some(sbc_tls()), TransportConfig::default()).await;
    let to_teams = Peer {
        proto: Proto::Tls,
        addr: teams.local_addr(Proto::Tls).unwrap(),
    };

    sbc.send(
        to_teams,
        Some("proxy.example.org"),
        Bytes::from(options("mismatch", "TLS")),
    );
    match next_event(&mut sbc_rx).await {
        TransportEvent::ConnectFailed { peer, reason } => {
            assert_eq!(peer, to_teams);
            assert!(reason.contains("TLS handshake"), "{reason}");
            assert!(reason.to_lowercase().contains("certificate"), "{reason}");
        }
        other => panic!("expected ConnectFailed, got {other:?}"),
    }
    assert_eq!(sbc.connection_count(), 0);

    // The right name (wildcard-free SAN) works on a fresh connection, and sip3 too.
    sbc.send(
        to_teams,
        Some("sip.pstnhub.microsoft.com"),
        Bytes::from(options("ok", "TLS")),
    );
    let m = next_msg(&mut teams_rx).await;
    assert_eq!(call_id(&m), "ok");
    // Teams sees the SBC's certificate as a client certificate with the SBC FQDN.
    assert_eq!(teams.stats().accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn tls_listener_needs_setup_and_bad_files_are_named() {
    let err = SipTransport::start(
        vec![ListenerSpec {
            proto: Proto::Tls,
            addr: local0(),
        }],
        None,
        Limits::default(),
        16,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");

    let c = &lab().certs;
    let missing = lab().dir.join("missing.crt");
    let e = TlsSetup::from_files(&missing, &c.sbc_key, &c.ca_cert, vec![]).unwrap_err();
    assert!(e.to_string().contains("missing.crt"), "{e}");
    // Key of another certificate.
    let e = TlsSetup::from_files(&c.sbc_cert, &c.teams_key, &c.ca_cert, vec![]).unwrap_err();
    assert!(e.to_string().contains("teams.key"), "{e}");
    // A key file given as CA file.
    let e = TlsSetup::from_files(&c.sbc_cert, &c.sbc_key, &c.sbc_key, vec![]).unwrap_err();
    assert!(e.to_string().contains("sbc.key"), "{e}");
    // Debug output never shows the key.
    let dbg = format!("{:?}", sbc_tls());
    assert!(!dbg.contains("PRIVATE") && !dbg.contains("key:"), "{dbg}");
}
