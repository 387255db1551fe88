//! Lab certificates: a private CA, the SBC certificate and a stand-in for the Microsoft proxies'
//! certificate, for tests and lab setups. **Not for production.**
//!
//! Keys are ECDSA P-256 (rcgen with `ring` cannot generate RSA keys). Microsoft requires RSA
//! keys of at least 2048 bits from a public CA in production; the cipher suite list therefore
//! includes the ECDHE-ECDSA AES-GCM suites next to the ECDHE-RSA ones.
//!
//! Leaf certificates carry both serverAuth and clientAuth EKUs (they are used in both roles).
//! Key files are created with mode 0600. Files that exist are never overwritten.

use super::TransportError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Paths of the lab files (all PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub sbc_cert: PathBuf,
    pub sbc_key: PathBuf,
    pub teams_cert: PathBuf,
    pub teams_key: PathBuf,
}

/// SANs of the stand-in Microsoft proxy certificate.
pub const TEAMS_NAMES: [&str; 4] = [
    "sip.pstnhub.microsoft.com",
    "sip2.pstnhub.microsoft.com",
    "sip3.pstnhub.microsoft.com",
    "*.pstnhub.microsoft.com",
];

const CA_CN: &str = "drbridge lab CA";
const CA_O: &str = "drbridge lab";

fn err(path: &Path, reason: impl std::fmt::Display) -> TransportError {
    TransportError::LabCerts {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, CA_O);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
    p
}

/// Writes a new file (never replaces one); `secret` files get mode 0600.
fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), TransportError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| err(path, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| err(path, e))?;
    f.sync_all().map_err(|e| err(path, e))
}

/// The pair state of `stem.crt` / `stem.key` in `dir`: both present, none, or an error.
fn pair(dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf, bool), TransportError> {
    let crt = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    match (crt.exists(), key.exists()) {
        (true, true) => Ok((crt, key, true)),
        (false, false) => Ok((crt, key, false)),
        (true, false) => Err(err(&key, format!("missing while {} exists", crt.display()))),
        (false, true) => Err(err(&crt, format!("missing while {} exists", key.display()))),
    }
}

/// Loads the lab CA from `dir`, creating it when absent.
fn lab_ca(dir: &Path) -> Result<Issuer<'static, KeyPair>, TransportError> {
    let (crt, key, exists) = pair(dir, "ca")?;
    if exists {
        let pem = std::fs::read_to_string(&key).map_err(|e| err(&key, e))?;
        let kp = KeyPair::from_pem(&pem).map_err(|e| err(&key, format!("bad CA key: {e}")))?;
        // Same parameters as at creation: the issuer name and key identifier match ca.crt.
        return Ok(Issuer::new(ca_params(), kp));
    }
    let kp = KeyPair::generate().map_err(|e| err(&key, e))?;
    let params = ca_params();
    let cert = params.self_signed(&kp).map_err(|e| err(&crt, e))?;
    write_new(&key, &kp.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok(Issuer::new(params, kp))
}

/// Checks that `leaf` (DER) chains to the CA certificate in `ca_crt`: catches a `ca.crt` that
/// was not made by this module (its name would differ from the issuer name we sign with).
fn check_chain(leaf_pem: &str, ca_crt: &Path) -> Result<(), TransportError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, UnixTime};
    let ca = CertificateDer::from_pem_file(ca_crt).map_err(|e| err(ca_crt, e))?;
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| err(ca_crt, e))?;
    let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).map_err(|e| err(ca_crt, e))?;
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| err(ca_crt, e))?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    ee.verify_for_usage(
        algs.all,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| {
        err(
            ca_crt,
            format!(
                "does not verify certificates signed with ca.key ({e}); not a drbridge lab CA?"
            ),
        )
    })
}

/// Issues `stem.crt` / `stem.key` in `dir`, signed by the lab CA there (created if absent),
/// with the given DNS names (the first is also the CN), serverAuth + clientAuth EKUs.
/// Leaves an existing pair alone. Returns (certificate path, key path).
pub fn issue_lab_cert(
    dir: &Path,
    stem: &str,
    names: &[&str],
) -> Result<(PathBuf, PathBuf), TransportError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let (crt, key, exists) = pair(dir, stem)?;
    if exists {
        return Ok((crt, key));
    }
    let ca = lab_ca(dir)?;
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).map_err(|e| err(&crt, e))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| stem.to_string()),
    );
    dn.push(DnType::OrganizationName, CA_O);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let kp = KeyPair::generate().map_err(|e| err(&key, e))?;
    let cert = params.signed_by(&kp, &ca).map_err(|e| err(&crt, e))?;
    let pem = cert.pem();
    check_chain(&pem, &dir.join("ca.crt"))?;
    write_new(&key, &kp.serialize_pem(), true)?;
    write_new(&crt, &pem, false)?;
    tracing::info!(cert = %crt.display(), ?names, "lab certificate created");
    Ok((crt, key))
}

/// Makes sure `dir` holds a lab CA (`ca.crt`, `ca.key`), the SBC certificate (`sbc.crt`,
/// `sbc.key`, SAN = `sbc_fqdn`) and the stand-in Microsoft proxy certificate (`teams.crt`,
/// `teams.key`, SANs [`TEAMS_NAMES`]). Creates what is missing; existing files stay as they are.
pub fn ensure_lab_certs(dir: &Path, sbc_fqdn: &str) -> Result<LabCerts, TransportError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let (sbc_cert, sbc_key) = issue_lab_cert(dir, "sbc", &[sbc_fqdn])?;
    let (teams_cert, teams_key) = issue_lab_cert(dir, "teams", &TEAMS_NAMES)?;
    // The CA exists now unless every leaf pre-existed; make sure it is there in any case.
    let (ca_cert, ca_key, ca_exists) = pair(dir, "ca")?;
    if !ca_exists {
        lab_ca(dir)?;
    }
    Ok(LabCerts {
        ca_cert,
        ca_key,
        sbc_cert,
        sbc_key,
        teams_cert,
        teams_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("drbridge-labcerts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn creates_then_keeps() {
        let d = tmp("keep");
        let c = ensure_lab_certs(&d, "sbc.lab.drbridge.test").unwrap();
        let before = std::fs::read(&c.sbc_cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for k in [&c.ca_key, &c.sbc_key, &c.teams_key] {
                let mode = std::fs::metadata(k).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", k.display());
            }
        }
        let c2 = ensure_lab_certs(&d, "other.example").unwrap();
        assert_eq!(c, c2);
        assert_eq!(before, std::fs::read(&c.sbc_cert).unwrap());
        // A new leaf later is still signed by the same CA.
        let (crt, _) = issue_lab_cert(&d, "pbx", &["pbx.lab.drbridge.test"]).unwrap();
        let pem = std::fs::read_to_string(crt).unwrap();
        check_chain(&pem, &c.ca_cert).unwrap();
        let setup =
            super::super::TlsSetup::from_files(&c.teams_cert, &c.teams_key, &c.ca_cert, vec![])
                .unwrap();
        let names = super::super::tls::cert_dns_names(&setup.chain[0]);
        assert_eq!(names, TEAMS_NAMES);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn half_pair_is_an_error() {
        let d = tmp("half");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("sbc.crt"), "x").unwrap();
        let e = ensure_lab_certs(&d, "sbc.lab.drbridge.test").unwrap_err();
        assert!(e.to_string().contains("sbc.key"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
