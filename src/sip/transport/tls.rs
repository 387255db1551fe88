//! TLS for SIP: PEM loading, the restricted crypto provider, and mutual certificate checks.
//!
//! Both directions are mutual:
//! - **Inbound** (the Teams proxies connect to us): a client certificate is mandatory. It must
//!   chain to the configured roots (webpki path building, signatures, validity dates, basic
//!   constraints) with an Extended Key Usage of serverAuth *or* clientAuth (or no EKU at all),
//!   because Microsoft's proxy certificates may carry serverAuth only. Then one of its SAN DNS
//!   names must match one of `peer_names` (see [`PeerCertVerifier`]).
//! - **Outbound** (we connect to a proxy): we present our certificate, send SNI = the server
//!   name given to `send`, and verify the server's certificate against the roots and that name
//!   with rustls' standard `WebPkiServerVerifier`.

use super::TransportError;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{ring as ring_provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Certificates and names for the TLS listeners and outbound TLS connections.
pub struct TlsSetup {
    /// Our certificate chain, leaf first (presented as server and as client).
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key. Never logged (the `Debug` impl omits it).
    pub key: PrivateKeyDer<'static>,
    /// Roots that peer certificates must chain to (both directions).
    pub roots: Arc<RootCertStore>,
    /// Names accepted in the certificate of an inbound (client) TLS connection: exact DNS names,
    /// or `*.domain` patterns matching exactly one label (RFC 2818).
    pub peer_names: Vec<String>,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup")
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("peer_names", &self.peer_names)
            .finish_non_exhaustive()
    }
}

impl Clone for TlsSetup {
    fn clone(&self) -> Self {
        TlsSetup {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            peer_names: self.peer_names.clone(),
        }
    }
}

fn cert_err(path: &Path, reason: impl fmt::Display) -> TransportError {
    TransportError::Cert {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl TlsSetup {
    /// Loads our chain (`cert`, PEM, leaf first), our key (`key`, PEM: PKCS#8, PKCS#1 or SEC1)
    /// and the roots (`ca`, PEM, one or more certificates). Errors name the file and the reason.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        ca: &Path,
        peer_names: Vec<String>,
    ) -> Result<TlsSetup, TransportError> {
        let chain = load_certs(cert)?;
        let key_path = key;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TransportError::Key {
            path: key_path.to_path_buf(),
            // pki-types errors never include key material.
            reason: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for c in load_certs(ca)? {
            roots
                .add(c)
                .map_err(|e| cert_err(ca, format!("not a usable CA certificate: {e}")))?;
        }
        TlsSetup::new(chain, key, roots, peer_names).map_err(|e| match e {
            TransportError::Tls(reason) => TransportError::Key {
                path: key_path.to_path_buf(),
                reason: format!("{reason} (with certificate {})", cert.display()),
            },
            other => other,
        })
    }

    /// Builds a setup from already loaded material; checks that the key matches the leaf.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: RootCertStore,
        peer_names: Vec<String>,
    ) -> Result<TlsSetup, TransportError> {
        let setup = TlsSetup {
            chain,
            key,
            roots: Arc::new(roots),
            peer_names,
        };
        // Building a server config checks that the key fits the certificate.
        setup.server_config()?;
        Ok(setup)
    }

    /// rustls server configuration: client certificate required and checked by [`PeerCertVerifier`].
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, TransportError> {
        self.server_config_with(true)
    }

    /// [`Self::server_config`]; with `client_cert_mandatory` false a client may come without a
    /// certificate (one it presents is still checked); the caller decides whom to keep.
    pub(crate) fn server_config_with(&self, client_cert_mandatory: bool) -> Result<Arc<ServerConfig>, TransportError> {
        let provider = Arc::new(sip_provider());
        let mut verifier = PeerCertVerifier::new(
            &self.roots,
            self.peer_names.clone(),
            provider.signature_verification_algorithms,
        );
        verifier.mandatory = client_cert_mandatory;
        let cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(format!("certificate/key: {e}")))?;
        Ok(Arc::new(cfg))
    }

    /// rustls client configuration: presents our chain, verifies the server against the roots.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, TransportError> {
        let provider = Arc::new(sip_provider());
        let cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(format!("certificate/key: {e}")))?;
        Ok(Arc::new(cfg))
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    // Read first so that a missing file says so plainly.
    let pem = std::fs::read(path).map_err(|e| cert_err(path, e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(cert_err(path, "no CERTIFICATE block found"));
    }
    for c in &certs {
        webpki::EndEntityCert::try_from(c)
            .map_err(|e| cert_err(path, format!("not an X.509 certificate: {e}")))?;
    }
    Ok(certs)
}

/// The ring provider restricted to ECDHE with AES-GCM: TLS 1.3 AES-GCM suites and, for TLS 1.2,
/// ECDHE-RSA / ECDHE-ECDSA with AES-256-GCM-SHA384 and AES-128-GCM-SHA256 (Microsoft's list,
/// minus the CBC suites that rustls does not implement).
pub fn sip_provider() -> CryptoProvider {
    use ring_provider::cipher_suite as cs;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ],
        ..ring_provider::default_provider()
    }
}

/// Does a certificate name (possibly a `*.` wildcard, RFC 2818) match an accepted peer name
/// (possibly a `*.` pattern)? Case-insensitive; a wildcard covers exactly one non-empty label.
pub fn name_matches(cert_name: &str, accepted: &str) -> bool {
    let c = cert_name.trim_end_matches('.').to_ascii_lowercase();
    let a = accepted.trim_end_matches('.').to_ascii_lowercase();
    if c.is_empty() || a.is_empty() {
        return false;
    }
    if c == a {
        return true;
    }
    fn one_label_under(name: &str, pattern: &str) -> bool {
        let Some(suffix) = pattern.strip_prefix("*.") else {
            return false;
        };
        if name.starts_with('*') || suffix.is_empty() || suffix.contains('*') {
            return false;
        }
        match name.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == suffix,
            None => false,
        }
    }
    one_label_under(&c, &a) || one_label_under(&a, &c)
}

/// SAN DNS names of a certificate (for logs and name checks); empty when it does not parse.
pub fn cert_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// EKU policy for peer certificates: none present, or serverAuth, or clientAuth.
struct ServerOrClientAuth;

const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const OID_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

impl webpki::ExtendedKeyUsageValidator for ServerOrClientAuth {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let server = webpki::KeyPurposeId::new(OID_SERVER_AUTH);
        let client = webpki::KeyPurposeId::new(OID_CLIENT_AUTH);
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if id == server || id == client {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::client_auth(),
                present,
            },
        ))
    }
}

/// Client certificate verifier for inbound TLS: webpki chain check with the serverAuth-or-
/// clientAuth EKU policy, then a name check against `peer_names`.
pub struct PeerCertVerifier {
    roots: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    peer_names: Vec<String>,
    algs: WebPkiSupportedAlgorithms,
    /// A client without a certificate is refused (the default).
    pub mandatory: bool,
}

impl fmt::Debug for PeerCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertVerifier")
            .field("roots", &self.roots.len())
            .field("peer_names", &self.peer_names)
            .finish()
    }
}

impl PeerCertVerifier {
    pub fn new(
        roots: &RootCertStore,
        peer_names: Vec<String>,
        algs: WebPkiSupportedAlgorithms,
    ) -> PeerCertVerifier {
        PeerCertVerifier {
            roots: roots.roots.clone(),
            subjects: roots.subjects(),
            peer_names,
            algs,
            mandatory: true,
        }
    }

    fn names_ok(&self, ee: &webpki::EndEntityCert<'_>) -> bool {
        for accepted in &self.peer_names {
            if accepted.starts_with("*.") {
                // A pattern: compare with each SAN DNS name (which may itself be a wildcard).
                if ee.valid_dns_names().any(|n| name_matches(n, accepted)) {
                    return true;
                }
            } else if let Ok(sn) = ServerName::try_from(accepted.as_str()) {
                // An exact name: webpki's own check (handles wildcards in the certificate).
                if ee.verify_is_valid_for_subject_name(&sn).is_ok() {
                    return true;
                }
            }
        }
        false
    }
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } | E::InvalidCertValidity => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertNotValidForName(_) => CertificateError::NotValidForName,
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ClientCertVerifier for PeerCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        ee.verify_for_usage(
            self.algs.all,
            &self.roots,
            intermediates,
            now,
            ServerOrClientAuth,
            None,
            None,
        )
        .map_err(pki_error)?;
        if !self.names_ok(&ee) {
            let names: Vec<&str> = ee.valid_dns_names().collect();
            tracing::info!(?names, accepted = ?self.peer_names, "TLS client certificate names not accepted");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_rules() {
        assert!(name_matches(
            "sip.pstnhub.microsoft.com",
            "sip.pstnhub.microsoft.com"
        ));
        assert!(name_matches(
            "SIP.pstnhub.microsoft.com.",
            "sip.pstnhub.microsoft.com"
        ));
        assert!(name_matches(
            "sip-du-a-eu.pstnhub.microsoft.com",
            "*.pstnhub.microsoft.com"
        ));
        assert!(name_matches(
            "*.pstnhub.microsoft.com",
            "sip2.pstnhub.microsoft.com"
        ));
        assert!(name_matches(
            "*.pstnhub.microsoft.com",
            "*.pstnhub.microsoft.com"
        ));
        assert!(!name_matches(
            "a.b.pstnhub.microsoft.com",
            "*.pstnhub.microsoft.com"
        ));
        assert!(!name_matches(
            "pstnhub.microsoft.com",
            "*.pstnhub.microsoft.com"
        ));
        assert!(!name_matches(
            ".pstnhub.microsoft.com",
            "*.pstnhub.microsoft.com"
        ));
        assert!(!name_matches("evil.example.com", "*.pstnhub.microsoft.com"));
        assert!(!name_matches(
            "sip.pstnhub.microsoft.com.evil.com",
            "*.pstnhub.microsoft.com"
        ));
        assert!(!name_matches("*.com", "*.pstnhub.microsoft.com"));
        assert!(!name_matches("", "*.x"));
    }

    /// A CA and a leaf with the given EKUs and names, both DER, made in memory.
    fn ca_and_leaf(
        ekus: Vec<rcgen::ExtendedKeyUsagePurpose>,
        names: &[&str],
    ) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "unit CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.extended_key_usages = ekus;
        let leaf = p.signed_by(&key, &issuer).unwrap();
        (ca_cert.der().clone(), leaf.der().clone())
    }

    fn verify(
        ekus: Vec<rcgen::ExtendedKeyUsagePurpose>,
        names: &[&str],
        accepted: &[&str],
    ) -> Result<(), rustls::Error> {
        let (ca, leaf) = ca_and_leaf(ekus, names);
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let v = PeerCertVerifier::new(
            &roots,
            accepted.iter().map(|s| s.to_string()).collect(),
            sip_provider().signature_verification_algorithms,
        );
        assert_eq!(v.root_hint_subjects().len(), 1);
        v.verify_client_cert(&leaf, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn client_cert_eku_policy() {
        use rcgen::ExtendedKeyUsagePurpose as E;
        let names = ["sip.pstnhub.microsoft.com"];
        let ok = ["*.pstnhub.microsoft.com"];
        // Microsoft's case: serverAuth only is accepted.
        assert!(verify(vec![E::ServerAuth], &names, &ok).is_ok());
        assert!(verify(vec![E::ClientAuth], &names, &ok).is_ok());
        assert!(verify(vec![E::ServerAuth, E::ClientAuth], &names, &ok).is_ok());
        assert!(verify(vec![], &names, &ok).is_ok());
        assert_eq!(
            verify(vec![E::CodeSigning], &names, &ok),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose
            ))
        );
    }

    #[test]
    fn client_cert_name_policy() {
        use rcgen::ExtendedKeyUsagePurpose as E;
        let exact = ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com"];
        // Exact accepted names, certificate with a wildcard SAN.
        assert!(verify(vec![E::ServerAuth], &["*.pstnhub.microsoft.com"], &exact).is_ok());
        assert!(verify(vec![E::ServerAuth], &["sip2.pstnhub.microsoft.com"], &exact).is_ok());
        let bad = Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        assert_eq!(
            verify(vec![E::ServerAuth], &["sip4.pstnhub.microsoft.com"], &exact),
            bad
        );
        assert_eq!(
            verify(
                vec![E::ServerAuth],
                &["a.sip.pstnhub.microsoft.com"],
                &["*.pstnhub.microsoft.com"]
            ),
            bad
        );
        assert_eq!(
            verify(vec![E::ServerAuth], &["sip.pstnhub.microsoft.com"], &[]),
            bad
        );
    }

    #[test]
    fn client_cert_from_unknown_ca_refused() {
        use rcgen::ExtendedKeyUsagePurpose as E;
        let (ca, _) = ca_and_leaf(vec![E::ClientAuth], &["x.example"]);
        let (_, leaf) = ca_and_leaf(vec![E::ClientAuth], &["sip.pstnhub.microsoft.com"]);
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let v = PeerCertVerifier::new(
            &roots,
            vec!["sip.pstnhub.microsoft.com".into()],
            sip_provider().signature_verification_algorithms,
        );
        // Same issuer name, other key: webpki reports the signature as bad.
        let r = v
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .map(|_| ());
        assert!(
            matches!(
                r,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::BadSignature | CertificateError::UnknownIssuer
                ))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn provider_has_only_gcm_ecdhe() {
        let p = sip_provider();
        assert_eq!(p.cipher_suites.len(), 6);
        for s in &p.cipher_suites {
            let name = format!("{:?}", s.suite());
            assert!(name.contains("GCM"), "{name}");
        }
    }
}
