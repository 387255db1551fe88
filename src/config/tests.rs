use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("drbridge-config-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes ca.crt, sbc.crt (signed by the CA, naming `names`) and sbc.key into `dir/certs`.
fn make_certs(dir: &TempDir, names: &[&str]) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "drbridge test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    dir.write("certs/ca.crt", &ca_cert.pem());
    dir.write("certs/sbc.crt", &format!("{}{}", cert.pem(), ca_cert.pem()));
    dir.write("certs/sbc.key", &key.serialize_pem());
}

const MINIMAL: &str = r#"
[sbc]
fqdn = "sbc.example.com"
[teams]
tls_cert = "certs/sbc.crt"
tls_key = "certs/sbc.key"
tls_ca = "certs/ca.crt"
[pbx]
address = "127.0.0.1:5080"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, Path::new("config/x.toml"), LoadOptions { check_files: false })
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.sbc.fqdn, "sbc.example.com");
    assert_eq!(c.sbc.user_agent, "drbridge");
    assert_eq!(c.sbc.max_calls, 10_000);
    assert_eq!(c.sbc.data_dir, Path::new("config/var"));
    assert_eq!(c.teams.proxies.len(), 3);
    assert_eq!(c.teams.proxies[1].host, "sip2.pstnhub.microsoft.com");
    assert_eq!(c.teams.proxies[2].port, 5061);
    assert_eq!(c.teams.failover_codes, vec![408, 503, 504]);
    assert_eq!(c.teams.tls_cert, Path::new("config/certs/sbc.crt"));
    assert_eq!(c.teams.peer_names.len(), 4);
    assert_eq!(c.pbx.transport, Transport::Udp);
    assert_eq!(c.pbx.domain, "127.0.0.1");
    assert_eq!(c.pbx.listen, "127.0.0.1:5060".parse().unwrap());
    assert_eq!(c.pbx.options_interval(), Some(Duration::from_secs(30)));
    assert_eq!(c.timers, Timers::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.log.level, "info");
    assert!(c.routes.is_empty());
}

#[test]
fn bad_socket_address() {
    let t = MINIMAL.replace("127.0.0.1:5080", "10.0.0.x:5060");
    assert_eq!(err(&t), r#"config/x.toml: pbx.address: "10.0.0.x:5060" is not an IP address and port"#);
    let t = MINIMAL.replace("[teams]", "[teams]\nlisten = \"0.0.0.0\"");
    assert_eq!(err(&t), r#"config/x.toml: teams.listen: "0.0.0.0" is not an IP address and port"#);
}

#[test]
fn unknown_keys_name_their_path() {
    let t = format!("{MINIMAL}\n[[teams.proxies]]\nhost = \"sip.pstnhub.microsoft.com\"\n[[teams.proxies]]\nhost = \"sip2.pstnhub.microsoft.com\"\nunknown = 1\n");
    let e = err(&t);
    assert!(e.starts_with("config/x.toml: teams.proxies[1].unknown: unknown key"), "{e}");
    assert!(e.contains("`address`"), "{e}");
    let e = err(&format!("{MINIMAL}\n[bogus]\na = 1\n"));
    assert!(e.starts_with("config/x.toml: bogus: unknown key"), "{e}");
    let e = err(&MINIMAL.replace("[pbx]", "[pbx]\nport = 5060"));
    assert!(e.starts_with("config/x.toml: pbx.port: unknown key"), "{e}");
    let e = err(&format!("{MINIMAL}\n[timers]\nt3_ms = 1\n"));
    assert!(e.starts_with("config/x.toml: timers.t3_ms: unknown key"), "{e}");
}

#[test]
fn missing_required() {
    let e = err(&MINIMAL.replace("fqdn = \"sbc.example.com\"", ""));
    assert_eq!(e, "config/x.toml: sbc.fqdn: required key is missing");
    let e = err(&MINIMAL.replace("address = \"127.0.0.1:5080\"", "name = \"x\""));
    assert_eq!(e, "config/x.toml: pbx.address: required key is missing");
    let e = err("[sbc]\nfqdn = \"a.b.c\"\n");
    assert_eq!(e, "config/x.toml: pbx: required section is missing");
    let e = err(&format!("{MINIMAL}\n[[teams.proxies]]\nport = 5061\n"));
    assert_eq!(e, "config/x.toml: teams.proxies[0].host: required key is missing");
}

#[test]
fn wrong_types_and_enums() {
    let e = err(&MINIMAL.replace("[pbx]", "[pbx]\ntransport = \"sctp\""));
    assert!(e.starts_with("config/x.toml: pbx.transport: unknown variant `sctp`"), "{e}");
    let e = err(&MINIMAL.replace("[teams]", "[teams]\noptions_interval_secs = \"60\""));
    assert!(e.starts_with("config/x.toml: teams.options_interval_secs: invalid type"), "{e}");
    let e = err(&format!("{MINIMAL}\n[[routes]]\nmatch = '^1'\ntrunk = \"sip\"\n"));
    assert!(e.starts_with("config/x.toml: routes[0].trunk: unknown variant `sip`"), "{e}");
    let e = err(&MINIMAL.replace("[teams]", "[teams]\nfailover_codes = [408, 70000]"));
    assert!(e.starts_with("config/x.toml: teams.failover_codes[1]:"), "{e}");
}

#[test]
fn syntax_errors_give_line_and_column() {
    let e = err("[sbc]\nfqdn = \"a.b\n[pbx]\n");
    assert!(e.starts_with("config/x.toml: "), "{e}");
    assert!(e.contains("line 2"), "{e}");
    assert!(e.contains("TOML syntax"), "{e}");
    let e = err("[sbc]\nfqdn = \"a.b\"\nfqdn = \"c.d\"\n");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("sbc.fqdn"), "{e}");
}

#[test]
fn regexes_compile_and_replacements_refer_to_groups() {
    let e = err(&format!("{MINIMAL}\n[[numbers.to_teams]]\nmatch = '^(47\\d\\d$'\nreplace = '+468123$1'\n"));
    assert!(e.starts_with("config/x.toml: numbers.to_teams[0].match: \"^(47\\\\d\\\\d$\" is not a valid regular expression"), "{e}");
    let e = err(&format!("{MINIMAL}\n[[numbers.to_pbx]]\nmatch = '^\\+46(\\d+)$'\nreplace = '0$2'\n"));
    assert!(e.starts_with("config/x.toml: numbers.to_pbx[0].replace: $2"), "{e}");
    let e = err(&format!("{MINIMAL}\n[[numbers.to_pbx]]\nmatch = '^\\+46(\\d+)$'\nreplace = '0$1234'\n"));
    assert!(e.contains("$1234"), "{e}");
    let ok = parse(&format!("{MINIMAL}\n[[numbers.to_pbx]]\nmatch = '^\\+46(?P<n>\\d+)$'\nreplace = '0${{n}}$$${{1}}9'\n")).unwrap();
    assert_eq!(ok.numbers.to_pbx[0].pattern.as_str(), "^\\+46(?P<n>\\d+)$");
    let e = err(&format!("{MINIMAL}\n[[routes]]\nmatch = '('\ntrunk = \"pbx\"\n"));
    assert!(e.starts_with("config/x.toml: routes[0].match:"), "{e}");
}

#[test]
fn fqdn_rules() {
    let e = err(&MINIMAL.replace("sbc.example.com", "192.0.2.1"));
    assert!(e.starts_with("config/x.toml: sbc.fqdn: \"192.0.2.1\" is an IP address"), "{e}");
    let e = err(&MINIMAL.replace("sbc.example.com", "sbc"));
    assert!(e.starts_with("config/x.toml: sbc.fqdn: \"sbc\" is not a fully qualified DNS name"), "{e}");
    let e = err(&MINIMAL.replace("sbc.example.com", "sbc_1 .example.com"));
    assert!(e.starts_with("config/x.toml: sbc.fqdn:"), "{e}");
    let c = parse(&MINIMAL.replace("sbc.example.com", "SBC.Example.COM")).unwrap();
    assert_eq!(c.sbc.fqdn, "sbc.example.com");
}

#[test]
fn teams_rules() {
    let e = err(&MINIMAL.replace("[teams]", "[teams]\nproxies = []"));
    assert_eq!(e, "config/x.toml: teams.proxies: at least one Teams proxy is required");
    let e = err(&MINIMAL.replace("[teams]", "[teams]\nfailover_codes = [408, 603]"));
    assert!(e.starts_with("config/x.toml: teams.failover_codes[1]: 603 is a global failure"), "{e}");
    let e = err(&MINIMAL.replace("[teams]", "[teams]\nfailover_codes = [200]"));
    assert!(e.starts_with("config/x.toml: teams.failover_codes[0]: 200 is not a final non-2xx status"), "{e}");
    let e = err(&MINIMAL.replace("[teams]", "[teams]\noptions_interval_secs = 600"));
    assert!(e.starts_with("config/x.toml: teams.options_interval_secs: 600 is out of range"), "{e}");
    let e = err(&format!("{MINIMAL}\n[[teams.proxies]]\nhost = \"10.1.1.1\"\n"));
    assert!(e.starts_with("config/x.toml: teams.proxies[0].host: \"10.1.1.1\" is not a DNS name"), "{e}");
    let e = err(&format!("{MINIMAL}\n[[teams.proxies]]\nhost = \"a.b\"\n[[teams.proxies]]\nhost = \"a.b\"\n"));
    assert_eq!(e, "config/x.toml: teams.proxies[1]: duplicates teams.proxies[0]");
    let e = err(&MINIMAL.replace("[teams]", "[teams]\npeer_names = [\"*.pstnhub.microsoft.com\", \"bad name\"]"));
    assert!(e.starts_with("config/x.toml: teams.peer_names[1]:"), "{e}");
    let c = parse(&format!("{MINIMAL}\n[[teams.proxies]]\nhost = \"sip.pstnhub.microsoft.com\"\naddress = \"127.0.0.1:15061\"\n")).unwrap();
    assert_eq!(c.teams.proxies, vec![TeamsProxy { host: "sip.pstnhub.microsoft.com".into(), port: 5061, address: Some("127.0.0.1:15061".parse().unwrap()) }]);
}

#[test]
fn timers_sane() {
    let e = err(&format!("{MINIMAL}\n[timers]\nt1_ms = 4000\nt2_ms = 500\n"));
    assert_eq!(e, "config/x.toml: timers.t2_ms: 500 must be greater than timers.t1_ms (4000)");
    let e = err(&format!("{MINIMAL}\n[timers]\nt1_ms = 0\n"));
    assert!(e.starts_with("config/x.toml: timers.t1_ms: 0 is out of range"), "{e}");
    let e = err(&format!("{MINIMAL}\n[timers]\nmin_se_secs = 30\n"));
    assert!(e.starts_with("config/x.toml: timers.min_se_secs: 30 is below 90"), "{e}");
    let e = err(&format!("{MINIMAL}\n[timers]\nsession_expires_secs = 100\nmin_se_secs = 120\n"));
    assert!(e.starts_with("config/x.toml: timers.session_expires_secs: 100 is below"), "{e}");
    let c = parse(&format!("{MINIMAL}\n[timers]\nt1_ms = 250\n")).unwrap();
    assert_eq!(c.timers.t1(), Duration::from_millis(250));
    assert_eq!(c.timers.t2(), Duration::from_millis(4000));
}

#[test]
fn pbx_rules() {
    let e = err(&MINIMAL.replace("[pbx]", "[pbx]\ntransport = \"tls\""));
    assert_eq!(e, "config/x.toml: pbx.tls_cert: required when pbx.transport = \"tls\"");
    let c = parse(&MINIMAL.replace("127.0.0.1:5080", "[::1]:5080")).unwrap();
    assert_eq!(c.pbx.domain, "[::1]");
    let c = parse(&MINIMAL.replace("[pbx]", "[pbx]\ndomain = \"mx1.example.local\"\noptions_interval_secs = 0")).unwrap();
    assert_eq!(c.pbx.domain, "mx1.example.local");
    assert_eq!(c.pbx.options_interval(), None);
    let e = err(&MINIMAL.replace("[pbx]", "[pbx]\ndomain = \"not a host\""));
    assert!(e.starts_with("config/x.toml: pbx.domain:"), "{e}");
    let e = err(&MINIMAL.replace("127.0.0.1:5080", "0.0.0.0:5080"));
    assert!(e.starts_with("config/x.toml: pbx.address:"), "{e}");
}

#[test]
fn pbx_tls_names_and_listener() {
    let tls = r#"[pbx]
transport = "tls"
tls_cert = "a.crt"
tls_key = "a.key"
tls_ca = "ca.crt"
listen = "127.0.0.1:5062""#;
    // The names the PBX certificate must carry default to pbx.domain, IPv6 without brackets.
    let c = parse(&MINIMAL.replace("[pbx]", tls)).unwrap();
    assert_eq!(c.pbx.tls_peer_names, ["127.0.0.1"]);
    let c = parse(&MINIMAL.replace("[pbx]", tls).replace("127.0.0.1:5080", "[::1]:5080")).unwrap();
    assert_eq!(c.pbx.tls_peer_names, ["::1"]);
    let c = parse(&MINIMAL.replace("[pbx]", &format!("{tls}\ndomain = \"MiVB.example.local\""))).unwrap();
    assert_eq!(c.pbx.tls_peer_names, ["mivb.example.local"]);
    let c = parse(&MINIMAL.replace("[pbx]", &format!("{tls}\ntls_peer_names = [\"*.pbx.example.local\", \"10.0.0.2\"]"))).unwrap();
    assert_eq!(c.pbx.tls_peer_names, ["*.pbx.example.local", "10.0.0.2"]);
    let e = err(&MINIMAL.replace("[pbx]", &format!("{tls}\ntls_peer_names = [\"pbx example\"]")));
    assert_eq!(e, "config/x.toml: pbx.tls_peer_names[0]: \"pbx example\" is not a DNS name, *.wildcard or IP address");
    let e = err(&MINIMAL.replace("[pbx]", "[pbx]\ntls_peer_names = [\"pbx.example.local\"]"));
    assert_eq!(e, "config/x.toml: pbx.tls_peer_names: only with pbx.transport = \"tls\"");
    let c = parse(&MINIMAL.replace("[pbx]", &format!("{tls}\ntls_client_cert = \"optional\""))).unwrap();
    assert_eq!(c.pbx.tls_client_cert, ClientCert::Optional);
    let e = err(&MINIMAL.replace("[pbx]", "[pbx]\ntls_client_cert = \"optional\""));
    assert_eq!(e, "config/x.toml: pbx.tls_client_cert: only with pbx.transport = \"tls\"");
    let e = err(&MINIMAL.replace("[pbx]", &format!("{tls}\ntls_client_cert = \"maybe\"")));
    assert!(e.starts_with("config/x.toml: pbx.tls_client_cert"), "{e}");
    // One TLS listener per side: the PBX's certificates and CA are not the Teams side's.
    let e = err(&MINIMAL.replace("[pbx]", tls).replace("127.0.0.1:5062", "127.0.0.1:5061"));
    assert!(e.starts_with("config/x.toml: pbx.listen: must differ from teams.listen"), "{e}");
}

#[test]
fn limits_and_log() {
    let e = err(&format!("{MINIMAL}\n[limits]\nmax_message_bytes = 100\n"));
    assert!(e.starts_with("config/x.toml: limits.max_message_bytes: 100 is out of range"), "{e}");
    let e = err(&format!("{MINIMAL}\n[log]\nlevel = \"drbridge=loud\"\n"));
    assert!(e.starts_with("config/x.toml: log.level:"), "{e}");
    let c = parse(&format!("{MINIMAL}\n[log]\nlevel = \"drbridge=debug,info\"\n[limits]\nmax_connections = 10\n")).unwrap();
    assert_eq!(c.limits.max_connections, 10);
}

#[test]
fn media_threads() {
    assert_eq!(parse(MINIMAL).unwrap().media.threads, 0, "default: one per core");
    let c = parse(&format!("{MINIMAL}\n[media]\nthreads = 64\n")).unwrap();
    assert_eq!(c.media.threads, 64);
    let e = err(&format!("{MINIMAL}\n[media]\nthreads = 65\n"));
    assert!(e.starts_with("config/x.toml: media.threads: 65 is out of range (0..=64"), "{e}");
    let e = err(&format!("{MINIMAL}\n[media]\nthreads = -1\n"));
    assert!(e.starts_with("config/x.toml: media.threads"), "{e}");
}

#[test]
fn signalling_threads() {
    assert_eq!(parse(MINIMAL).unwrap().sbc.signalling_threads, 0, "default: one per core");
    let c = parse(&MINIMAL.replace("[sbc]\n", "[sbc]\nsignalling_threads = 2\n")).unwrap();
    assert_eq!(c.sbc.signalling_threads, 2);
    let e = err(&MINIMAL.replace("[sbc]\n", "[sbc]\nsignalling_threads = 65\n"));
    assert!(e.starts_with("config/x.toml: sbc.signalling_threads: 65 is out of range (0..=64"), "{e}");
}

#[test]
fn routes_parse() {
    let c = parse(&format!("{MINIMAL}\n[[routes]]\nmatch = '^\\+468123\\d{{4}}$'\ntrunk = \"pbx\"\n[[routes]]\nmatch = '.'\ntrunk = \"teams\"\nfrom = \"teams\"\n")).unwrap();
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].trunk, Trunk::Pbx);
    assert_eq!(c.routes[0].from, None);
    assert_eq!(c.routes[1].from, Some(Trunk::Teams));
    assert!(c.routes[0].pattern.is_match("+4681234711"));
}

#[test]
fn unreadable_file() {
    let e = load(Path::new("/nonexistent/drbridge.toml")).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/drbridge.toml: cannot read configuration:"), "{e}");
}

#[test]
fn tls_files_checked() {
    let dir = TempDir::new();
    let path = dir.write("x.toml", MINIMAL);
    // missing files
    let e = load(&path).unwrap_err();
    assert_eq!(e.key, "teams.tls_cert");
    assert_eq!(e.reason, format!("file not found: {}", dir.0.join("certs/sbc.crt").display()));
    // good files
    make_certs(&dir, &["sbc.example.com"]);
    let c = load(&path).unwrap();
    validate_tls_files(&c).unwrap();
    // wildcard certificate names the FQDN
    make_certs(&dir, &["*.example.com"]);
    load(&path).unwrap();
    // wrong name
    make_certs(&dir, &["other.example.com", "*.example.org"]);
    let e = load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{}: teams.tls_cert: certificate does not name sbc.fqdn \"sbc.example.com\" (names: other.example.com, *.example.org)", path.display())
    );
    // key of another certificate
    make_certs(&dir, &["sbc.example.com"]);
    let other = rcgen::KeyPair::generate().unwrap();
    dir.write("certs/sbc.key", &other.serialize_pem());
    let e = load(&path).unwrap_err();
    assert_eq!(e.key, "teams.tls_key");
    assert!(e.reason.starts_with("private key does not match the certificate"), "{e}");
    // not PEM
    dir.write("certs/sbc.key", "hello");
    let e = load(&path).unwrap_err();
    assert_eq!(e.key, "teams.tls_key");
    assert!(e.reason.starts_with("no PEM private key in"), "{e}");
    make_certs(&dir, &["sbc.example.com"]);
    dir.write("certs/ca.crt", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let e = load(&path).unwrap_err();
    assert_eq!(e.key, "teams.tls_ca");
}

#[test]
fn lab_certs_defer_file_checks() {
    let dir = TempDir::new();
    let path = dir.write("x.toml", &MINIMAL.replace("[teams]", "[teams]\nlab_certs = true"));
    let c = load(&path).unwrap();
    let e = validate_tls_files(&c).unwrap_err();
    assert_eq!(e.key, "teams.tls_cert");
    assert!(e.reason.starts_with("file not found:"), "{e}");
    make_certs(&dir, &["sbc.example.com"]);
    validate_tls_files(&c).unwrap();
}

#[test]
fn pbx_tls_files_checked() {
    let dir = TempDir::new();
    make_certs(&dir, &["sbc.example.com"]);
    let text = MINIMAL.replace("[pbx]", "[pbx]\ntransport = \"tls\"\ntls_cert = \"certs/sbc.crt\"\ntls_key = \"certs/sbc.key\"\ntls_ca = \"certs/pbx-ca.crt\"");
    let path = dir.write("x.toml", &text);
    let e = load(&path).unwrap_err();
    assert_eq!(e.key, "pbx.tls_ca");
    let ca = std::fs::read_to_string(dir.0.join("certs/ca.crt")).unwrap();
    dir.write("certs/pbx-ca.crt", &ca);
    load(&path).unwrap();
}


#[test]
fn presence_and_admin_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert!(!c.presence.enabled && !c.admin.enabled);
    assert_eq!(c.presence.graph_base, "https://graph.microsoft.com/v1.0");
    assert_eq!(c.presence.identity_base, "https://login.microsoftonline.com");
    assert_eq!((c.presence.rate_limit, c.presence.rate_window_secs, c.presence.rate_burst), (1200, 30, 100));
    assert_eq!(c.presence.expiration(), Duration::from_secs(3600));
    assert_eq!(c.admin.listen, "127.0.0.1:8080".parse().unwrap());
}

#[test]
fn presence_rules() {
    let on = "[presence]\nenabled = true\nusers_file = \"users.toml\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"11111111-2222-3333-4444-555555555555\"\n";
    let e = err(&format!("{MINIMAL}\n{on}"));
    assert!(e.starts_with("config/x.toml: presence.client_secret_file: presence.client_secret_file or presence.client_secret_env is required"), "{e}");
    let c = parse(&format!("{MINIMAL}\n{on}client_secret_file = \"secret\"\n")).unwrap();
    assert_eq!(c.presence.users_file.as_deref(), Some(Path::new("config/users.toml")));
    let e = err(&format!("{MINIMAL}\n{}client_secret_file = \"secret\"\n", on.replace("users_file = \"users.toml\"\n", "")));
    assert!(e.contains("presence.users_file: required when presence.enabled = true"), "{e}");
    assert_eq!(c.presence.client_secret_file.as_deref(), Some(Path::new("config/secret")), "resolved against the config's directory");
    let e = err(&format!("{MINIMAL}\n{on}client_secret_file = \"s\"\nclient_secret_env = \"S\"\n"));
    assert!(e.contains("presence.client_secret_env: set either"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence]\nenabled = true\nclient_secret_env = \"S\"\nclient_id = \"x\"\n"));
    assert!(e.contains("presence.tenant: required when presence.enabled = true"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence]\nexpiration_minutes = 300\n"));
    assert!(e.contains("presence.expiration_minutes: 300 is out of range (5..=240 minutes"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence]\nrate_limit = 1600\n"));
    assert!(e.contains("presence.rate_limit: 1600 per 30 s exceeds Graph's presence limit"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence]\nrate_limit = 100\nrate_window_secs = 1\n"));
    assert!(e.contains("presence.rate_limit: 100 per 1 s exceeds"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence]\nrate_limit = 50\nrate_burst = 50\n"));
    assert!(e.contains("presence.rate_burst:"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence]\nbatch_max = 21\n"));
    assert!(e.contains("presence.batch_max: 21 is out of range"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence]\ngraph_base = \"graph.microsoft.com\"\n"));
    assert!(e.contains("presence.graph_base:"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence]\nsecret = \"x\"\n"));
    assert!(e.contains("presence.secret: unknown key"), "{e}");
    let c = parse(&format!("{MINIMAL}\n[presence]\ngraph_base = \"http://127.0.0.1:9999/v1.0\"\nrate_limit = 40\nrate_window_secs = 1\nrate_burst = 5\n")).unwrap();
    assert_eq!(c.presence.rate_window(), Duration::from_secs(1));
}

#[test]
fn admin_rules() {
    let e = err(&format!("{MINIMAL}\n[admin]\nenabled = true\n"));
    assert!(e.starts_with("config/x.toml: admin.token_file: admin.token_file or admin.token_env is required"), "{e}");
    let c = parse(&format!("{MINIMAL}\n[admin]\nenabled = true\ntoken_env = \"DRBRIDGE_ADMIN_TOKEN\"\nlisten = \"127.0.0.1:9090\"\n")).unwrap();
    assert_eq!(c.admin.token_env.as_deref(), Some("DRBRIDGE_ADMIN_TOKEN"));
    let e = err(&format!("{MINIMAL}\n[admin]\nlisten = \"localhost\"\n"));
    assert!(e.contains("admin.listen: \"localhost\" is not an IP address and port"), "{e}");
    let e = err(&format!("{MINIMAL}\n[admin]\ntoken_env = \"A B\"\n"));
    assert!(e.contains("admin.token_env:"), "{e}");
    // check_files: secret files must exist when the section is enabled.
    let dir = TempDir::new();
    let path = dir.write("d.toml", &format!("{MINIMAL}\n[admin]\nenabled = true\ntoken_file = \"nope.token\"\n"));
    let text = std::fs::read_to_string(&path).unwrap();
    let e = parse_str(&text, &path, LoadOptions { check_files: true }).unwrap_err();
    assert_eq!(e.key, "admin.token_file", "{e}");
}

#[test]
fn teams_to_pbx_rules() {
    let base = r#"
[presence]
enabled = true
users_file = "users.toml"
tenant = "contoso.example"
client_id = "c1"
client_secret_env = "X"
"#;
    let with = |t: &str| format!("{MINIMAL}{base}\n[presence.teams_to_pbx]\n{t}");
    let ok = "enabled = true\nnotification_url = \"https://sbc.example.com/graph/webhook\"\n[[presence.teams_to_pbx.monitors]]\nupn = \"mon1@contoso.example\"\nrefresh_token_file = \"m1.token\"";
    let c = parse(&with(ok)).unwrap();
    let t = &c.presence.teams_to_pbx;
    assert_eq!((t.users_per_subscription, t.subscription_minutes, t.max_watchers), (650, 55, 10_000));
    assert_eq!(t.monitors[0].refresh_token_file, Path::new("config/m1.token"), "relative to the config file");
    let e = err(&with("enabled = true\n[[presence.teams_to_pbx.monitors]]\nupn = \"mon1@contoso.example\"\nrefresh_token_file = \"m1.token\""));
    assert_eq!(e, "config/x.toml: presence.teams_to_pbx.notification_url: required when presence.teams_to_pbx.enabled = true");
    let e = err(&with("enabled = true\nnotification_url = \"https://sbc.example.com/graph/webhook\""));
    assert!(e.starts_with("config/x.toml: presence.teams_to_pbx.monitors: at least one monitor"), "{e}");
    let e = err(&with(&ok.replace("mon1@contoso.example", "not a upn")));
    assert!(e.starts_with("config/x.toml: presence.teams_to_pbx.monitors[0].upn:"), "{e}");
    let e = err(&with(&format!("{ok}\n[[presence.teams_to_pbx.monitors]]\nupn = \"MON1@contoso.example\"\nrefresh_token_file = \"m2.token\"")));
    assert_eq!(e, "config/x.toml: presence.teams_to_pbx.monitors[1].upn: duplicates presence.teams_to_pbx.monitors[0]");
    let e = err(&with(&format!("users_per_subscription = 651\n{ok}")));
    assert!(e.starts_with("config/x.toml: presence.teams_to_pbx.users_per_subscription: 651 is out of range"), "{e}");
    let e = err(&with(&format!("subscription_minutes = 90\n{ok}")));
    assert!(e.starts_with("config/x.toml: presence.teams_to_pbx.subscription_minutes: 90 is out of range"), "{e}");
    let e = err(&with(&ok.replace("https://sbc.example.com/graph/webhook", "sbc.example.com/hook")));
    assert!(e.starts_with("config/x.toml: presence.teams_to_pbx.notification_url:"), "{e}");
    let e = err(&format!("{MINIMAL}\n[presence.teams_to_pbx]\n{ok}"));
    assert_eq!(e, "config/x.toml: presence.teams_to_pbx.enabled: needs presence.enabled = true");
}
