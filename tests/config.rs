//! The example configurations under config/ load and mean what their comments say.

use drbridge::config::{self, LoadOptions, Transport, Trunk};
use drbridge::routing::{teams_request_uri, NumberPlan, OptionsSchedule, ProxySet, RouteTable};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name)
}

/// A temp copy of the repository layout: DIR/config/<name> and DIR/certs/.
struct Lab(PathBuf);

impl Lab {
    fn new(tag: &str) -> Lab {
        let dir = std::env::temp_dir().join(format!("drbridge-test-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        Lab(dir)
    }
    fn copy(&self, name: &str) -> PathBuf {
        let to = self.0.join("config").join(name);
        std::fs::copy(example(name), &to).unwrap();
        to
    }
    /// A lab CA and an SBC certificate for `fqdn` signed by it, as the lab-certs step makes them.
    fn certs(&self, fqdn: &str) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "drbridge lab CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![fqdn.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        std::fs::write(self.0.join("certs/ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(self.0.join("certs/sbc.crt"), cert.pem() + &ca_cert.pem()).unwrap();
        std::fs::write(self.0.join("certs/sbc.key"), key.serialize_pem()).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn lab_config_loads_and_validates_after_certs() {
    let lab = Lab::new("lab");
    let path = lab.copy("drbridge.toml");
    // lab_certs = true: load succeeds before the certificates exist ...
    let cfg = config::load(&path).unwrap();
    assert!(cfg.teams.lab_certs);
    assert_eq!(cfg.sbc.fqdn, "sbc.lab.drbridge.test");
    assert_eq!(cfg.teams.listen, "127.0.0.1:5061".parse().unwrap());
    assert_eq!(cfg.teams.tls_cert, lab.0.join("config/../certs/sbc.crt"));
    let addrs: Vec<_> = cfg.teams.proxies.iter().map(|p| p.address.unwrap().to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:15061", "127.0.0.1:15062", "127.0.0.1:15063"]);
    assert_eq!(cfg.pbx.address, "127.0.0.1:5080".parse().unwrap());
    assert_eq!(cfg.pbx.listen, "127.0.0.1:5060".parse().unwrap());
    assert_eq!(cfg.pbx.transport, Transport::Udp);
    assert_eq!(cfg.pbx.domain, "127.0.0.1");
    // ... and the files are checked once generated
    let e = config::validate_tls_files(&cfg).unwrap_err();
    assert_eq!(e.key, "teams.tls_cert");
    lab.certs("sbc.lab.drbridge.test");
    config::validate_tls_files(&cfg).unwrap();
    // a certificate for another name is refused
    lab.certs("other.lab.drbridge.test");
    let e = config::validate_tls_files(&cfg).unwrap_err().to_string();
    assert!(e.contains("teams.tls_cert: certificate does not name sbc.fqdn \"sbc.lab.drbridge.test\" (names: other.lab.drbridge.test)"), "{e}");
}

#[test]
fn lab_numbers_and_routes() {
    let cfg = config::load_with(&example("drbridge.toml"), LoadOptions { check_files: false }).unwrap();
    let plan = NumberPlan::new(&cfg.numbers);
    let routes = RouteTable::new(&cfg.routes);
    assert_eq!(plan.toward(Trunk::Teams).apply("4711"), "+4681234711");
    assert_eq!(plan.toward(Trunk::Teams).apply("0701234567"), "+46701234567");
    assert_eq!(plan.toward(Trunk::Pbx).apply("+4681234711"), "4711");
    assert_eq!(routes.route("+4681234711", Trunk::Teams), Trunk::Pbx);
    assert_eq!(routes.route("+4681234711", Trunk::Pbx), Trunk::Pbx);
    assert_eq!(routes.route("+46701234567", Trunk::Pbx), Trunk::Teams);
    let now = Instant::now();
    let proxies = ProxySet::from_config(&cfg.teams, now);
    let first = proxies.failover_plan(now).next().unwrap();
    let uri = teams_request_uri("4712", plan.toward(Trunk::Teams), proxies.proxy(first).unwrap()).unwrap();
    assert_eq!(uri.to_string(), "sip:+4681234712@sip.pstnhub.microsoft.com;user=phone");
    let mut opts = OptionsSchedule::from_config(&cfg, now, drbridge::routing::Jitter::None);
    assert_eq!(std::iter::from_fn(|| opts.poll_due(now)).count(), 4);
}

#[test]
fn production_examples_parse_and_fail_only_on_cert_files() {
    for name in ["mx-one.toml", "mivoice-business.toml"] {
        let path = example(name);
        let cfg = config::load_with(&path, LoadOptions { check_files: false }).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.sbc.fqdn, "sbc.contoso.com", "{name}");
        assert!(!cfg.teams.lab_certs);
        assert_eq!(cfg.teams.proxies.len(), 3);
        assert!(cfg.teams.proxies.iter().all(|p| p.address.is_none() && p.port == 5061));
        assert!(cfg.pbx.address.ip().is_ipv4() && !cfg.pbx.address.ip().is_loopback());
        // full load: the only complaint is the (absent) certificate
        let e = config::load(&path).unwrap_err();
        assert_eq!(e.key, "teams.tls_cert", "{name}: {e}");
        assert!(e.reason.starts_with("file not found: /etc/drbridge/tls/"), "{name}: {e}");
    }
}

#[test]
fn mx_one_numbers() {
    let cfg = config::load_with(&example("mx-one.toml"), LoadOptions { check_files: false }).unwrap();
    assert_eq!(cfg.pbx.transport, Transport::Tcp);
    assert_eq!(cfg.pbx.domain, "mx-one.contoso.local");
    let plan = NumberPlan::new(&cfg.numbers);
    let (t, p) = (plan.toward(Trunk::Teams), plan.toward(Trunk::Pbx));
    assert_eq!(t.apply("12345"), "+46855512345");
    assert_eq!(t.apply("0046701234567"), "+46701234567");
    assert_eq!(t.apply("0701234567"), "+46701234567");
    assert_eq!(p.apply("+46855512345"), "12345");
    assert_eq!(p.apply("+46701234567"), "00701234567");
    assert_eq!(p.apply("+4420799990000"), "0004420799990000");
    let routes = RouteTable::new(&cfg.routes);
    assert_eq!(routes.route("+46855512345", Trunk::Teams), Trunk::Pbx);
    assert_eq!(routes.route("+46855512345", Trunk::Pbx), Trunk::Pbx);
    assert_eq!(routes.route("+46701234567", Trunk::Teams), Trunk::Pbx);
}

#[test]
fn mivoice_business_numbers() {
    let cfg = config::load_with(&example("mivoice-business.toml"), LoadOptions { check_files: false }).unwrap();
    assert_eq!(cfg.pbx.transport, Transport::Tls);
    assert_eq!(cfg.pbx.domain, "172.16.10.2");
    assert_eq!(cfg.pbx.tls_ca.as_deref(), Some(Path::new("/etc/drbridge/tls/contoso-internal-ca.crt")));
    let plan = NumberPlan::new(&cfg.numbers);
    let (t, p) = (plan.toward(Trunk::Teams), plan.toward(Trunk::Pbx));
    assert_eq!(t.apply("2101"), "+16135552101");
    assert_eq!(t.apply("6135550199"), "+16135550199");
    assert_eq!(t.apply("916135550199"), "+16135550199");
    assert_eq!(t.apply("9011442079999000"), "+442079999000");
    assert_eq!(p.apply("+16135552101"), "2101");
    assert_eq!(p.apply("+12125550100"), "912125550100");
    assert_eq!(p.apply("+442079999000"), "9011442079999000");
    let routes = RouteTable::new(&cfg.routes);
    assert_eq!(routes.route("+16135552950", Trunk::Pbx), Trunk::Pbx);
    assert_eq!(routes.route("911", Trunk::Teams), Trunk::Pbx);
    assert_eq!(routes.route("+16135552101", Trunk::Pbx), Trunk::Teams);
}
