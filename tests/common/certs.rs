//! Lab certificates: a lab CA, the SBC certificate (the SBC FQDN) and the "Teams" certificate
//! (sip.pstnhub.microsoft.com, sip2..., sip3..., *.pstnhub.microsoft.com), both with serverAuth
//! and clientAuth. Made by `drbridge lab-certs` (what the product ships) or, for the harness
//! self-test that must run without the binary, with rcgen here.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TEAMS_CERT_NAMES: [&str; 4] = [
    "sip.pstnhub.microsoft.com",
    "sip2.pstnhub.microsoft.com",
    "sip3.pstnhub.microsoft.com",
    "*.pstnhub.microsoft.com",
];

#[derive(Clone, Debug)]
pub struct LabCerts {
    pub dir: PathBuf,
    pub fqdn: String,
    pub ca_cert: PathBuf,
    pub sbc_cert: PathBuf,
    pub sbc_key: PathBuf,
    pub teams_cert: PathBuf,
    pub teams_key: PathBuf,
}

impl LabCerts {
    fn paths(dir: &Path, fqdn: &str) -> LabCerts {
        LabCerts {
            dir: dir.to_path_buf(),
            fqdn: fqdn.to_string(),
            ca_cert: dir.join("ca.crt"),
            sbc_cert: dir.join("sbc.crt"),
            sbc_key: dir.join("sbc.key"),
            teams_cert: dir.join("teams.crt"),
            teams_key: dir.join("teams.key"),
        }
    }

    /// Runs `drbridge lab-certs --dir DIR --fqdn FQDN` and returns the paths it wrote.
    pub fn with_binary(dir: &Path, fqdn: &str) -> LabCerts {
        let out = Command::new(crate::common::drbridge::binary())
            .args(["lab-certs", "--dir"])
            .arg(dir)
            .args(["--fqdn", fqdn])
            .output()
            .expect("run drbridge lab-certs");
        assert!(
            out.status.success(),
            "drbridge lab-certs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let c = LabCerts::paths(dir, fqdn);
        for p in [&c.ca_cert, &c.sbc_cert, &c.sbc_key, &c.teams_cert, &c.teams_key] {
            assert!(p.exists(), "drbridge lab-certs did not write {}", p.display());
        }
        c
    }

    /// Generates the same set with rcgen (no binary needed).
    pub fn generate(dir: &Path, fqdn: &str) -> LabCerts {
        let teams_names: Vec<String> = TEAMS_CERT_NAMES.iter().map(|s| s.to_string()).collect();
        let c = LabCerts::paths(dir, fqdn);
        generate_pki(dir, "ca", "drbridge lab CA", &[("sbc", vec![fqdn.to_string()]), ("teams", teams_names)]);
        c
    }
}

/// A CA (`{ca}.crt`, `{ca}.key`) and leaves signed by it (`{name}.crt`, `{name}.key`, with
/// serverAuth and clientAuth, the first name as CN) written into `dir`.
pub fn generate_pki(dir: &Path, ca: &str, ca_cn: &str, leaves: &[(&str, Vec<String>)]) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).expect("cert dir");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.distinguished_name.push(DnType::CommonName, ca_cn);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, &ca_key);
    std::fs::write(dir.join(format!("{ca}.crt")), ca_cert.pem()).expect("write ca");
    std::fs::write(dir.join(format!("{ca}.key")), ca_key.serialize_pem()).expect("write ca key");
    for (name, names) in leaves {
        let mut p = CertificateParams::new(names.clone()).expect("leaf params");
        p.distinguished_name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or(name));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &issuer).expect("sign leaf");
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).expect("write leaf");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write leaf key");
    }
}

pub fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

pub fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("read key {}: {e}", path.display()))
}

pub fn root_store(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca) {
        roots.add(c).expect("add lab CA");
    }
    roots
}
