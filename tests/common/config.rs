//! The lab: a temporary directory with certificates and the free ports of one drbridge run, and
//! the TOML configuration written from it (schema: the brief's "Configuration" section).

use super::certs::LabCerts;
use super::util::{free_port, loopback, TempDir};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

pub const SBC_FQDN: &str = "sbc.lab.drbridge.test";

/// One `[[teams.proxies]]` entry.
#[derive(Clone, Debug)]
pub struct ProxySpec {
    pub host: String,
    pub port: u16,
    pub address: Option<SocketAddr>,
}

/// What a test wants of drbridge. Ports are chosen free at `new()`; the test starts its peers
/// (SIPp on `pbx_address`, `TeamsPeer` proxies) and then `Drbridge::start(&cfg)`.
#[derive(Clone)]
pub struct LabConfig {
    pub dir: Arc<TempDir>,
    pub certs: LabCerts,
    pub fqdn: String,
    pub user_agent: String,
    pub max_calls: u32,
    /// `[sbc] signalling_threads` (0 = one per core).
    pub signalling_threads: u32,
    /// drbridge's TLS listener for the Teams proxies; `contact_port` is the same port.
    pub teams_listen: SocketAddr,
    pub proxies: Vec<ProxySpec>,
    pub teams_options_interval_secs: u64,
    pub failover_timeout_secs: u64,
    pub failover_codes: Vec<u16>,
    /// drbridge's UDP/TCP address toward the PBX.
    pub pbx_listen: SocketAddr,
    /// The PBX trunk: where SIPp (or a UDP `SipPeer`) listens.
    pub pbx_address: SocketAddr,
    pub pbx_options_interval_secs: u64,
    /// `[pbx] transport`: "udp" (default), "tcp" or "tls".
    pub pbx_transport: String,
    /// Raw TOML lines added to `[pbx]` (e.g. `tls_cert = ...`).
    pub pbx_extra: String,
    pub to_teams: Vec<(String, String)>,
    pub to_pbx: Vec<(String, String)>,
    pub routes: Vec<(String, String)>,
    pub session_expires_secs: u32,
    pub min_se_secs: u32,
    /// `[timers] ring_timeout_secs`.
    pub ring_timeout_secs: u64,
    /// Raw TOML appended at the end (extra sections).
    pub extra_toml: String,
    /// `[media] inactivity_timeout_secs`.
    pub media_timeout_secs: u64,
    /// `[media] teams_port_min`, `teams_port_max` (even RTP ports; RTCP muxed toward Teams).
    pub teams_media_ports: (u16, u16),
    /// `[media] pbx_port_min`, `pbx_port_max` (even RTP ports, RTCP on port+1).
    pub pbx_media_ports: (u16, u16),
    /// `[presence]`, when set (see `with_presence`).
    pub presence: Option<PresenceSpec>,
    /// `[admin]`, when set (see `with_admin`).
    pub admin: Option<AdminSpec>,
}

/// `[presence]` of a lab: Graph and the identity platform are a local stand-in
/// (tests/common/graph.rs); the user directory and the client secret are files in the lab dir.
#[derive(Clone, Debug)]
pub struct PresenceSpec {
    pub tenant: String,
    pub client_id: String,
    /// Written to `<lab dir>/graph-client-secret` (`client_secret_file`).
    pub client_secret: String,
    /// e.g. `GraphStub::identity_base()`.
    pub identity_base: String,
    /// e.g. `GraphStub::graph_base()`.
    pub graph_base: String,
    pub subscribe_pbx: bool,
    /// Written to `<lab dir>/users.toml` (`users_file`).
    pub users_toml: String,
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    pub request_timeout_secs: u64,
    /// Raw `key = value` lines added to `[presence]`.
    pub extra: String,
}

/// The lab user directory (same users as config/users.toml): anna 4711 / +4681234711, bo 4712 /
/// +4681234712 (PBX), carl +4681234801, dora +4681234802 (Teams).
pub const LAB_USERS_TOML: &str = r#"
[[user]]
upn = "anna.andersson@lab.drbridge.test"
name = "Anna Andersson"
extensions = ["4711"]
numbers = ["+4681234711"]

[[user]]
upn = "bo.berg@lab.drbridge.test"
name = "Bo Berg"
extensions = ["4712"]
numbers = ["+4681234712"]

[[user]]
upn = "carl.carlsson@lab.drbridge.test"
name = "Carl Carlsson"
numbers = ["+4681234801"]

[[user]]
upn = "dora.dahl@lab.drbridge.test"
name = "Dora Dahl"
numbers = ["+4681234802"]
"#;

impl PresenceSpec {
    /// Presence against a stand-in at `identity_base` / `graph_base`, the lab users, no PBX
    /// subscriptions, fast retries.
    pub fn new(tenant: &str, client_id: &str, client_secret: &str, identity_base: &str, graph_base: &str) -> PresenceSpec {
        PresenceSpec {
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            identity_base: identity_base.into(),
            graph_base: graph_base.into(),
            subscribe_pbx: false,
            users_toml: LAB_USERS_TOML.into(),
            retry_initial_ms: 100,
            retry_max_secs: 1,
            request_timeout_secs: 5,
            extra: String::new(),
        }
    }
}

/// `[admin]` of a lab: the bearer token is written to `<lab dir>/admin-token`.
#[derive(Clone, Debug)]
pub struct AdminSpec {
    pub listen: SocketAddr,
    pub token: String,
    /// Written to `<lab dir>/webhook-client-state` (`webhook_client_state_file`) when set.
    pub webhook_client_state: Option<String>,
}

impl LabConfig {
    /// A lab whose certificates come from `drbridge lab-certs` (the binary must exist).
    pub fn new() -> LabConfig {
        let dir = TempDir::new("drbridge-lab");
        let certs = LabCerts::with_binary(&dir.join("certs"), SBC_FQDN);
        LabConfig::with_certs(dir, certs)
    }

    /// A lab whose certificates are made with rcgen (no binary needed).
    pub fn with_rcgen_certs() -> LabConfig {
        let dir = TempDir::new("drbridge-lab");
        let certs = LabCerts::generate(&dir.join("certs"), SBC_FQDN);
        LabConfig::with_certs(dir, certs)
    }

    fn with_certs(dir: TempDir, certs: LabCerts) -> LabConfig {
        LabConfig {
            dir: Arc::new(dir),
            certs,
            fqdn: SBC_FQDN.to_string(),
            user_agent: "drbridge".to_string(),
            max_calls: 100,
            signalling_threads: 0,
            teams_listen: loopback(free_port()),
            proxies: Vec::new(),
            teams_options_interval_secs: 60,
            failover_timeout_secs: 2,
            failover_codes: vec![408, 503, 504],
            pbx_listen: loopback(free_port()),
            pbx_address: loopback(free_port()),
            pbx_options_interval_secs: 3600,
            pbx_transport: "udp".into(),
            pbx_extra: String::new(),
            to_teams: vec![(r"^(47\d\d)$".into(), "+468123$1".into())],
            to_pbx: vec![(r"^\+468123(47\d\d)$".into(), "$1".into())],
            routes: vec![(r"^\+46812347\d\d$".into(), "pbx".into())],
            session_expires_secs: 1800,
            min_se_secs: 90,
            ring_timeout_secs: 180,
            extra_toml: String::new(),
            media_timeout_secs: 60,
            // Media ports below the ephemeral range the tests pick SIP ports from.
            teams_media_ports: (20000, 24999),
            pbx_media_ports: (25000, 29999),
            presence: None,
            admin: None,
        }
    }

    /// Enables `[presence]`: writes the user directory and the client secret into the lab dir.
    pub fn with_presence(mut self, spec: PresenceSpec) -> LabConfig {
        std::fs::write(self.dir.join("users.toml"), &spec.users_toml).expect("write users.toml");
        std::fs::write(self.dir.join("graph-client-secret"), format!("{}\n", spec.client_secret)).expect("write client secret");
        self.presence = Some(spec);
        self
    }

    /// Enables `[admin]` on `listen` with bearer `token` (written into the lab dir).
    pub fn with_admin(mut self, listen: SocketAddr, token: &str) -> LabConfig {
        std::fs::write(self.dir.join("admin-token"), format!("{token}\n")).expect("write admin token");
        self.admin = Some(AdminSpec { listen, token: token.into(), webhook_client_state: None });
        self
    }

    /// Sets the Teams proxies to the given listener addresses, with the Microsoft host names in
    /// order (sip, sip2, sip3, then sip4... which the wildcard certificate covers).
    pub fn with_proxies(mut self, addrs: &[SocketAddr]) -> LabConfig {
        self.proxies = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| ProxySpec { host: proxy_host(i), port: 5061, address: Some(*a) })
            .collect();
        self
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.join("drbridge.toml")
    }

    /// The configuration file's text.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml_str(s);
        let p = |p: &std::path::Path| toml_str(&p.display().to_string());
        let mut t = String::new();
        let _ = writeln!(t, "[sbc]");
        let _ = writeln!(t, "fqdn = {}", q(&self.fqdn));
        let _ = writeln!(t, "user_agent = {}", q(&self.user_agent));
        let _ = writeln!(t, "max_calls = {}", self.max_calls);
        let _ = writeln!(t, "signalling_threads = {}", self.signalling_threads);
        let _ = writeln!(t, "data_dir = {}", p(&self.dir.join("var")));
        let _ = writeln!(t, "\n[teams]");
        let _ = writeln!(t, "listen = {}", q(&self.teams_listen.to_string()));
        let _ = writeln!(t, "contact_port = {}", self.teams_listen.port());
        let _ = writeln!(t, "options_interval_secs = {}", self.teams_options_interval_secs);
        let _ = writeln!(t, "failover_timeout_secs = {}", self.failover_timeout_secs);
        let codes: Vec<String> = self.failover_codes.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(t, "failover_codes = [{}]", codes.join(", "));
        let _ = writeln!(t, "tls_cert = {}", p(&self.certs.sbc_cert));
        let _ = writeln!(t, "tls_key = {}", p(&self.certs.sbc_key));
        let _ = writeln!(t, "tls_ca = {}", p(&self.certs.ca_cert));
        let names: Vec<String> = super::certs::TEAMS_CERT_NAMES.iter().map(|n| q(n)).collect();
        let _ = writeln!(t, "peer_names = [{}]", names.join(", "));
        let _ = writeln!(t, "lab_certs = false");
        for pr in &self.proxies {
            let _ = writeln!(t, "\n[[teams.proxies]]");
            let _ = writeln!(t, "host = {}", q(&pr.host));
            let _ = writeln!(t, "port = {}", pr.port);
            if let Some(a) = pr.address {
                let _ = writeln!(t, "address = {}", q(&a.to_string()));
            }
        }
        let _ = writeln!(t, "\n[pbx]");
        let _ = writeln!(t, "name = \"mx-one\"");
        let _ = writeln!(t, "listen = {}", q(&self.pbx_listen.to_string()));
        let _ = writeln!(t, "address = {}", q(&self.pbx_address.to_string()));
        let _ = writeln!(t, "transport = {}", q(&self.pbx_transport));
        let _ = writeln!(t, "options_interval_secs = {}", self.pbx_options_interval_secs);
        if !self.pbx_extra.is_empty() {
            let _ = writeln!(t, "{}", self.pbx_extra);
        }
        let _ = writeln!(t, "\n[numbers]");
        for (m, r) in &self.to_teams {
            let _ = writeln!(t, "[[numbers.to_teams]]\nmatch = {}\nreplace = {}", q(m), q(r));
        }
        for (m, r) in &self.to_pbx {
            let _ = writeln!(t, "[[numbers.to_pbx]]\nmatch = {}\nreplace = {}", q(m), q(r));
        }
        for (m, trunk) in &self.routes {
            let _ = writeln!(t, "\n[[routes]]\nmatch = {}\ntrunk = {}", q(m), q(trunk));
        }
        let _ = writeln!(t, "\n[timers]");
        let _ = writeln!(t, "t1_ms = 500\nt2_ms = 4000\nt4_ms = 5000");
        let _ = writeln!(t, "session_expires_secs = {}", self.session_expires_secs);
        let _ = writeln!(t, "min_se_secs = {}", self.min_se_secs);
        let _ = writeln!(t, "ring_timeout_secs = {}", self.ring_timeout_secs);
        let _ = writeln!(t, "\n[media]");
        let _ = writeln!(t, "teams_port_min = {}\nteams_port_max = {}", self.teams_media_ports.0, self.teams_media_ports.1);
        let _ = writeln!(t, "pbx_port_min = {}\npbx_port_max = {}", self.pbx_media_ports.0, self.pbx_media_ports.1);
        let _ = writeln!(t, "inactivity_timeout_secs = {}", self.media_timeout_secs);
        if let Some(pr) = &self.presence {
            let _ = writeln!(t, "\n[presence]\nenabled = true");
            let _ = writeln!(t, "users_file = {}", p(&self.dir.join("users.toml")));
            let _ = writeln!(t, "subscribe_pbx = {}", pr.subscribe_pbx);
            let _ = writeln!(t, "tenant = {}\nclient_id = {}", q(&pr.tenant), q(&pr.client_id));
            let _ = writeln!(t, "client_secret_file = {}", p(&self.dir.join("graph-client-secret")));
            let _ = writeln!(t, "identity_base = {}\ngraph_base = {}", q(&pr.identity_base), q(&pr.graph_base));
            let _ = writeln!(t, "retry_initial_ms = {}\nretry_max_secs = {}", pr.retry_initial_ms, pr.retry_max_secs);
            let _ = writeln!(t, "request_timeout_secs = {}", pr.request_timeout_secs);
            if !pr.extra.is_empty() {
                let _ = writeln!(t, "{}", pr.extra);
            }
        }
        if let Some(a) = &self.admin {
            let _ = writeln!(t, "\n[admin]\nenabled = true");
            let _ = writeln!(t, "listen = {}", q(&a.listen.to_string()));
            let _ = writeln!(t, "token_file = {}", p(&self.dir.join("admin-token")));
            if let Some(cs) = &a.webhook_client_state {
                std::fs::write(self.dir.join("webhook-client-state"), format!("{cs}\n")).expect("write client state");
                let _ = writeln!(t, "webhook_client_state_file = {}", p(&self.dir.join("webhook-client-state")));
            }
        }
        if !self.extra_toml.is_empty() {
            let _ = writeln!(t, "\n{}", self.extra_toml);
        }
        t
    }
}

/// `sip.pstnhub.microsoft.com`, `sip2...`, `sip3...`, `sip4...`
pub fn proxy_host(i: usize) -> String {
    if i == 0 {
        "sip.pstnhub.microsoft.com".to_string()
    } else {
        format!("sip{}.pstnhub.microsoft.com", i + 1)
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}
