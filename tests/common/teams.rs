//! The Microsoft Teams side, played by `SipPeer` over mutual TLS: proxies listening with the
//! Teams certificate (sip.pstnhub.microsoft.com, sip2..., sip3...) that require and verify
//! drbridge's client certificate against the lab CA, and connections to drbridge's listener
//! presenting the Teams certificate. Messages look like Microsoft's (Record-Route of the proxy,
//! FQDN Contact, E.164 numbers with user=phone, session timers, X-MS-* headers, SRTP SDP with
//! ICE candidates and rtcp-mux).

use super::certs::{load_certs, load_key, root_store, LabCerts};
use super::config::proxy_host;
use super::peer::{Call, ConnHandle, SipPeer};
use super::util::{base64, token, STEP};
use drbridge::sip::msg::{Method, Request};
use rustls::server::WebPkiClientVerifier;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};

pub const TEAMS_PROXY_HOSTS: [&str; 3] =
    ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com"];

/// Contact of a Teams media/signalling node, as Microsoft sends it.
pub const TEAMS_CONTACT: &str = "<sip:sip-du-a-eu.pstnhub.microsoft.com:443;transport=tls>";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side of a proxy: `cert`/`key`, client certificate required, chaining to `ca`.
pub fn server_config(cert: &Path, key: &Path, ca: &Path) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)), provider())
        .build()
        .expect("client verifier");
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert), load_key(key))
        .expect("server cert");
    Arc::new(cfg)
}

/// Client side: verifies the server against `ca`; presents `cert`/`key` when given.
pub fn client_config(client: Option<(&Path, &Path)>, ca: &Path) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(root_store(ca));
    let cfg = match client {
        Some((c, k)) => b.with_client_auth_cert(load_certs(c), load_key(k)).expect("client cert"),
        None => b.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// A Teams-style SDP offer/answer: SRTP (SDES, two crypto suites), ICE host candidates,
/// rtcp-mux, G.711, CN and telephone-event. `direction` e.g. "sendrecv", "inactive".
pub fn teams_sdp(port: u16, direction: &str) -> String {
    let key = |n: usize| {
        use rand::RngCore;
        let mut b = vec![0u8; n];
        rand::rng().fill_bytes(&mut b);
        base64(&b)
    };
    format!(
        "v=0\r\n\
o=- {sess} 0 IN IP4 127.0.0.1\r\n\
s=session\r\n\
c=IN IP4 127.0.0.1\r\n\
b=CT:10000000\r\n\
t=0 0\r\n\
m=audio {port} RTP/SAVP 8 0 13 101\r\n\
c=IN IP4 127.0.0.1\r\n\
a=rtcp:{port}\r\n\
a=ice-ufrag:{ufrag}\r\n\
a=ice-pwd:{pwd}\r\n\
a=candidate:1 1 UDP 2130706431 127.0.0.1 {port} typ host\r\n\
a=candidate:1 2 UDP 2130705918 127.0.0.1 {port} typ host\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{k1}|2^31\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{k2}|2^31\r\n\
a=maxptime:200\r\n\
a=rtcp-mux\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a={direction}\r\n",
        sess = rand::random::<u32>(),
        ufrag = token(4),
        pwd = token(24),
        k1 = key(30),
        k2 = key(30),
    )
}

/// The Teams side of a test: one `SipPeer` with N proxy listeners.
pub struct TeamsPeer {
    pub peer: SipPeer,
    pub certs: LabCerts,
    pub sbc_fqdn: String,
    pub proxy_addrs: Vec<SocketAddr>,
    client: Arc<ClientConfig>,
}

impl Deref for TeamsPeer {
    type Target = SipPeer;
    fn deref(&self) -> &SipPeer {
        &self.peer
    }
}

impl TeamsPeer {
    /// Starts `proxies` proxy listeners on free loopback ports (Teams certificate, drbridge's
    /// client certificate required). In-dialog requests to the SBC FQDN go to 127.0.0.1.
    pub async fn start(certs: &LabCerts, proxies: usize) -> TeamsPeer {
        let peer = SipPeer::new("teams");
        let server = server_config(&certs.teams_cert, &certs.teams_key, &certs.ca_cert);
        let proxy_addrs = peer.listen_tls(proxies, server).await;
        let client = client_config(Some((&certs.teams_cert, &certs.teams_key)), &certs.ca_cert);
        peer.set_client_config(client.clone());
        peer.resolve_host(&certs.fqdn, IpAddr::V4(Ipv4Addr::LOCALHOST));
        peer.set_via("TLS", "sip.pstnhub.microsoft.com:5061");
        peer.set_contact(TEAMS_CONTACT);
        peer.set_user_agent("Microsoft.PSTNHub.SIPProxy v.2026.11.1.1 i.EUWE.1");
        for i in 0..proxies {
            peer.set_listener_record_route(i, Some(format!("<sip:{}:5061;transport=tls;lr>", proxy_host(i))));
        }
        TeamsPeer { peer, certs: certs.clone(), sbc_fqdn: certs.fqdn.clone(), proxy_addrs, client }
    }

    /// Opens a TLS connection to drbridge's listener as proxy `proxy` would (Teams certificate,
    /// SNI = SBC FQDN, drbridge's certificate verified against the lab CA).
    pub async fn connect_sbc(&self, addr: SocketAddr, proxy: usize) -> ConnHandle {
        match self.peer.connect_tls(addr, &self.sbc_fqdn, self.client.clone(), Some(proxy)).await {
            Ok(c) => c,
            Err(e) => panic!("connect to drbridge at {addr}: {e}"),
        }
    }

    /// A Teams INVITE from `from` (E.164) to `to` (E.164) toward the SBC at `sbc_port`, as
    /// routed through proxy `proxy`.
    pub fn teams_invite(&self, from: &str, to: &str, sbc_port: u16, proxy: usize, sdp: &str) -> Request {
        let host = proxy_host(proxy);
        let fqdn = &self.sbc_fqdn;
        let uri = format!("sip:{to}@{fqdn}:{sbc_port};transport=tls");
        let mut r = self.peer.new_request(
            Method::Invite,
            &uri,
            &format!("<sip:{from}@sip.pstnhub.microsoft.com:5061;user=phone>"),
            &format!("<sip:{to}@{fqdn}:{sbc_port};user=phone>"),
        );
        r.headers.set("Via", format!("SIP/2.0/TLS {host}:5061;branch=z9hG4bK{}", token(16)));
        r.headers.set("Max-Forwards", "69");
        r.headers.push_first_of_name("Record-Route", format!("<sip:{host}:5061;transport=tls;lr>"));
        r.headers.set("Call-ID", format!("{}-{}", token(8), token(12)));
        r.headers.push("Supported", "timer, histinfo, replaces");
        r.headers.push("Session-Expires", "1800;refresher=uac");
        r.headers.push("Min-SE", "90");
        r.headers.push("Allow", "INVITE, ACK, OPTIONS, CANCEL, BYE, NOTIFY, REFER, UPDATE");
        r.headers.push("X-MS-Teams-Tenant-Id", "3c0f1c2e-6a6f-4b0e-9a7e-0d1f2a3b4c5d");
        r.headers.push("X-MS-UserLocation", "internet");
        r.headers.push("X-MS-MediaPath", "4,2");
        r.headers.push("Content-Type", "application/sdp");
        r.body = bytes::Bytes::from(sdp.to_string());
        r
    }

    /// Places a Teams call on `conn` (a connection from `connect_sbc`): `from` and `to` E.164.
    pub fn place_call(&self, conn: &ConnHandle, from: &str, to: &str) -> Call {
        let inv = self.teams_invite(from, to, conn.remote.port(), conn.proxy.unwrap_or(0), &teams_sdp(50_000, "sendrecv"));
        self.peer.send_invite(conn, inv)
    }

    /// Answers the next INVITE (100, 180, 200 with a Teams SDP) and waits for its ACK.
    pub async fn answer_call(&self, timeout: Duration) -> Call {
        self.peer.answer_call_with(&teams_sdp(50_010, "sendrecv"), timeout).await
    }

    /// Hold (a=inactive, the only hold Teams understands) or resume by re-INVITE.
    pub async fn reinvite(&self, call: &mut Call, direction: &str) -> drbridge::sip::msg::Response {
        self.peer.request(call, Method::Invite, &teams_sdp(50_020, direction), &[], STEP).await
    }

    /// Session refresh by UPDATE without SDP (RFC 4028).
    pub async fn refresh(&self, call: &mut Call) -> drbridge::sip::msg::Response {
        self.peer
            .request(call, Method::Update, "", &[("Supported", "timer"), ("Session-Expires", "1800;refresher=uac")], STEP)
            .await
    }

    /// REFER to `target` (a SIP URI, e.g. `sip:+4681234802@sip.pstnhub.microsoft.com;user=phone`).
    pub async fn refer(&self, call: &mut Call, target: &str) -> drbridge::sip::msg::Response {
        let refer_to = format!("<{target}>");
        let referred_by = format!("<sip:{}>", call.local_uri.trim_matches(|c| c == '<' || c == '>').trim_start_matches("sip:"));
        self.peer
            .request(call, Method::Refer, "", &[("Refer-To", &refer_to), ("Referred-By", &referred_by)], STEP)
            .await
    }
}
