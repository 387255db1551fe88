//! Checks of the PEM files named by the configuration: they exist, parse, the SBC certificate
//! names the SBC FQDN, the key matches the certificate, the CA file holds usable trust anchors.
//! Each check returns the reason as a `String`; the caller adds file and key.

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;

fn exists(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("not a regular file: {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("file not found: {}", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn pem_reason(path: &Path, what: &str, e: pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no PEM {what} in {}", path.display()),
        pem::Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        other => format!("bad PEM in {}: {other}", path.display()),
    }
}

/// Reads every certificate of a PEM file (at least one).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    exists(path)?;
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| pem_reason(path, "certificate", e))?;
    let certs: Vec<_> = iter.collect::<Result<_, _>>().map_err(|e| pem_reason(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_reason(path, "certificate", pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    exists(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_reason(path, "private key", e))
}

/// The end-entity certificate (first of the chain) is valid for `name` (SAN, wildcards per
/// RFC 6125 one label). `name_key` is the config key that holds the name, for the message.
pub(crate) fn check_names(cert: &CertificateDer<'_>, name_key: &str, name: &str) -> Result<(), String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("certificate does not parse: {e}"))?;
    let server_name = ServerName::try_from(name).map_err(|_| format!("{name_key} \"{name}\" is not a DNS name"))?;
    if ee.verify_is_valid_for_subject_name(&server_name).is_ok() {
        return Ok(());
    }
    let names: Vec<&str> = ee.valid_dns_names().collect();
    let names = if names.is_empty() { "no DNS names in subjectAltName".to_string() } else { names.join(", ") };
    Err(format!("certificate does not name {name_key} \"{name}\" (names: {names})"))
}

/// The private key is one rustls can sign with and, where it can tell, matches the certificate.
pub(crate) fn check_key_matches(chain: &[CertificateDer<'static>], key: &PrivateKeyDer<'static>) -> Result<(), String> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| format!("unusable private key: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(chain.to_vec(), signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("private key does not match the certificate".to_string())
        }
        Err(e) => Err(format!("cannot compare key and certificate: {e}")),
    }
}

/// Every certificate of a CA file can serve as a trust anchor.
pub(crate) fn check_anchors(path: &Path, certs: &[CertificateDer<'static>]) -> Result<(), String> {
    for (i, c) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(c)
            .map_err(|e| format!("certificate #{} in {} is not a usable CA certificate: {e}", i + 1, path.display()))?;
    }
    Ok(())
}
