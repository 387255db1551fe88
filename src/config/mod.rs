//! Typed configuration loaded from TOML (see config/*.toml), validated with errors naming file, key and reason.
//!
//! ```text
//! config/x.toml: pbx.address: "10.0.0.x:5060" is not an IP address and port
//! config/x.toml: teams.proxies[1].unknown: unknown key; expected one of `host`, `port`, `address`
//! config/x.toml: teams.tls_cert: file not found: /etc/drbridge/certs/sbc.crt
//! ```
//!
//! [`load`] reads, parses, validates and checks the TLS files (unless `teams.lab_certs` is set:
//! then the binary generates the lab certificates first and calls [`validate_tls_files`]).
//! Relative paths are resolved against the directory of the configuration file and stored
//! resolved. Every key has a default (documented in `config/drbridge.toml`) except
//! `sbc.fqdn` and `pbx.address`.

mod keypath;
mod tls;

use regex::Regex;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: `FILE: KEY: REASON` (`FILE: REASON` when no key applies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file, as given to [`load`].
    pub file: PathBuf,
    /// Dotted key path (`teams.proxies[1].port`), `line L, column C` for syntax errors, or empty.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// What [`load_with`] checks besides syntax and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Check that the TLS files exist, parse, match and name the FQDN. [`load`] sets it; with
    /// `teams.lab_certs = true` the Teams files are skipped anyway (they are generated at start).
    pub check_files: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { check_files: true }
    }
}

/// The whole configuration. See `config/drbridge.toml` for every key with its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub sbc: Sbc,
    #[serde(default)]
    pub teams: Teams,
    pub pbx: Pbx,
    #[serde(default)]
    pub numbers: Numbers,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub timers: Timers,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub media: Media,
    #[serde(default)]
    pub presence: Presence,
    #[serde(default)]
    pub admin: Admin,
    /// The file this was loaded from (for error messages); empty when built in code.
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[sbc]`: identity and global limits of this SBC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sbc {
    /// SBC FQDN (required): Contact/Record-Route toward Teams; must be named by `teams.tls_cert`.
    pub fqdn: String,
    /// Server/User-Agent header and vendor part of X-MS-SBC.
    #[serde(default = "d_user_agent")]
    pub user_agent: String,
    /// Concurrent calls; beyond it new INVITEs get 503 + Retry-After.
    #[serde(default = "d_max_calls")]
    pub max_calls: u32,
    /// Signalling threads: the B2BUA runs as this many shards, calls split by Call-ID
    /// (`b2bua::shard`); each has its share of `max_calls`, of the media port ranges and
    /// sessions (shard 0, which also runs the transports, half the share of the others).
    /// 0 = one per core, at most 8. At most 64.
    #[serde(default)]
    pub signalling_threads: u32,
    /// State directory (presence store), resolved against the config file's directory.
    #[serde(default = "d_data_dir")]
    pub data_dir: PathBuf,
}

/// `[teams]`: the Direct Routing side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teams {
    /// TLS listener the Microsoft proxies connect to.
    #[serde(default = "d_teams_listen", deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// Port written in Contact/Record-Route (`sip:fqdn:port;transport=tls`), e.g. the public port
    /// behind a NAT/port forward.
    #[serde(default = "d_tls_port")]
    pub contact_port: u16,
    /// OPTIONS keep-alive interval toward every proxy (Microsoft demotes after 5 min silence).
    #[serde(default = "d_teams_options")]
    pub options_interval_secs: u64,
    /// An INVITE without any response for this long fails over to the next proxy.
    #[serde(default = "d_failover_timeout")]
    pub failover_timeout_secs: u64,
    /// Final responses that fail over to the next proxy (3xx..5xx; 6xx never).
    #[serde(default = "d_failover_codes")]
    pub failover_codes: Vec<u16>,
    /// PEM chain (end-entity first) presented to the proxies, naming `sbc.fqdn`.
    #[serde(default = "d_tls_cert")]
    pub tls_cert: PathBuf,
    #[serde(default = "d_tls_key")]
    pub tls_key: PathBuf,
    /// Roots the proxies' certificates must chain to.
    #[serde(default = "d_tls_ca")]
    pub tls_ca: PathBuf,
    /// Names accepted in the certificate of an inbound (client) TLS connection; `*.` wildcards.
    #[serde(default = "d_peer_names")]
    pub peer_names: Vec<String>,
    /// Generate a lab CA + certificates into the tls_* paths when absent (never in production).
    #[serde(default)]
    pub lab_certs: bool,
    /// The Microsoft proxies, tried in this order.
    #[serde(default = "d_proxies")]
    pub proxies: Vec<TeamsProxy>,
}

/// `[[teams.proxies]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsProxy {
    /// Host name used in the Request-URI, TLS SNI and the certificate name check.
    pub host: String,
    #[serde(default = "d_tls_port")]
    pub port: u16,
    /// Connect here instead of resolving `host` (lab, tests).
    #[serde(default, deserialize_with = "de_opt_socket_addr")]
    pub address: Option<SocketAddr>,
}

/// Transport of the PBX trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// `[pbx]`: the Mitel SIP trunk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pbx {
    /// Name used in logs and metrics.
    #[serde(default = "d_pbx_name")]
    pub name: String,
    /// drbridge's address toward the PBX (UDP and TCP, or TLS, on this port).
    #[serde(default = "d_pbx_listen", deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// The PBX trunk address (required).
    #[serde(deserialize_with = "de_socket_addr")]
    pub address: SocketAddr,
    #[serde(default = "d_transport")]
    pub transport: Transport,
    /// OPTIONS keep-alive toward the PBX; 0 disables them (trunk then counts as always up).
    #[serde(default = "d_pbx_options")]
    pub options_interval_secs: u64,
    /// Host in Request-URI/To toward the PBX. Empty in the file means the address' IP
    /// (IPv6 in brackets); after [`load`] it is always set.
    #[serde(default)]
    pub domain: String,
    /// Required when `transport = "tls"`: our certificate chain, key, and the PBX's CA roots.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// With TLS: the names the PBX's certificate must carry, DNS names (`*.` wildcards) or IP
    /// addresses, checked both when drbridge connects (the first is the SNI and server name) and
    /// when the PBX connects. Empty in the file means `[domain]`; after [`load`] it is always set.
    #[serde(default)]
    pub tls_peer_names: Vec<String>,
    /// With TLS: `"required"` (default): the PBX's connections must present a certificate
    /// (checked like the server certificate); `"optional"`: a connection from the IP of
    /// `address` may come without one (a PBX that presents none), any other still needs one.
    #[serde(default)]
    pub tls_client_cert: ClientCert,
}

/// `pbx.tls_client_cert`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    #[default]
    Required,
    Optional,
}

/// `[numbers]`: number normalization, first matching rule wins, no match = unchanged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Numbers {
    /// Applied to numbers going toward Teams (PBX form -> E.164 with `+`).
    #[serde(default)]
    pub to_teams: Vec<NumberRule>,
    /// Applied to numbers going toward the PBX.
    #[serde(default)]
    pub to_pbx: Vec<NumberRule>,
}

/// `[[numbers.to_teams]]` / `[[numbers.to_pbx]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberRule {
    /// Regular expression (regex crate syntax); anchor it with `^...$`.
    #[serde(rename = "match")]
    pub pattern: Pattern,
    /// Replacement, `$1` / `${name}` refer to capture groups (checked at load).
    pub replace: String,
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trunk {
    Teams,
    Pbx,
}

impl fmt::Display for Trunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trunk::Teams => "teams",
            Trunk::Pbx => "pbx",
        })
    }
}

/// `[[routes]]`: first match wins; no match: calls from the PBX go to Teams and vice versa.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Regular expression on the normalized (E.164) target number.
    #[serde(rename = "match")]
    pub pattern: Pattern,
    pub trunk: Trunk,
    /// Only for calls that arrived from this trunk (absent: from either side).
    #[serde(default)]
    pub from: Option<Trunk>,
}

/// `[timers]`: RFC 3261 timers and RFC 4028 session timers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    /// Session-Expires offered / accepted.
    pub session_expires_secs: u64,
    /// Min-SE (RFC 4028: at least 90).
    pub min_se_secs: u64,
    /// A call not answered this long after its INVITE arrived is given up: CANCEL toward the
    /// callee, 408 to the caller (RFC 3261 Timer C, > 3 min for proxies). 0 = never.
    pub ring_timeout_secs: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { t1_ms: 500, t2_ms: 4000, t4_ms: 5000, session_expires_secs: 1800, min_se_secs: 90, ring_timeout_secs: 180 }
    }
}

impl Timers {
    pub fn t1(&self) -> Duration {
        Duration::from_millis(self.t1_ms)
    }
    pub fn t2(&self) -> Duration {
        Duration::from_millis(self.t2_ms)
    }
    pub fn t4(&self) -> Duration {
        Duration::from_millis(self.t4_ms)
    }
    /// `None` when disabled (0).
    pub fn ring_timeout(&self) -> Option<Duration> {
        (self.ring_timeout_secs > 0).then(|| Duration::from_secs(self.ring_timeout_secs))
    }
}

/// `[limits]`: bounds on what the network can make drbridge hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest SIP message accepted (start line + headers + body), bytes.
    pub max_message_bytes: usize,
    /// Most header lines in one SIP message.
    pub max_headers: usize,
    /// Most open TCP/TLS connections (both sides together).
    pub max_connections: usize,
    /// Most live SIP transactions; beyond it new requests get 503.
    pub max_transactions: usize,
    /// Capacity of the transport -> core event queue.
    pub event_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message_bytes: 65_535, max_headers: 256, max_connections: 1024, max_transactions: 65_536, event_queue: 4096 }
    }
}

/// `[media]`: media anchoring (every call's RTP through drbridge).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    /// false: SDP passes through unchanged and media flows end to end (lab/debug only: Teams
    /// then sees the PBX's media addresses).
    pub enabled: bool,
    /// Address the Teams-side media sockets bind to.
    pub teams_ip: IpAddr,
    /// Address written into SDP toward Teams (the public address behind a 1:1 NAT); default
    /// `teams_ip`.
    pub teams_advertised_ip: Option<IpAddr>,
    /// Address the PBX-side media sockets bind to.
    pub pbx_ip: IpAddr,
    /// Address written into SDP toward the PBX; default `pbx_ip`.
    pub pbx_advertised_ip: Option<IpAddr>,
    /// Port range toward Teams (even RTP ports; RTCP is muxed toward Teams).
    pub teams_port_min: u16,
    pub teams_port_max: u16,
    /// Port range toward the PBX (even RTP ports, RTCP on port+1).
    pub pbx_port_min: u16,
    pub pbx_port_max: u16,
    /// RTCP multiplexed on the RTP port toward Teams (Microsoft requires it).
    pub rtcp_mux_teams: bool,
    /// SRTP (SDES) toward the PBX as well (the trunk must support it).
    pub srtp_to_pbx: bool,
    /// SRTP suite drbridge offers: AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32.
    pub srtp_suite: String,
    /// No RTP/RTCP on a call for this long ends it (BYE on both legs).
    pub inactivity_timeout_secs: u64,
    /// Most media sessions at once; beyond it new calls get 503.
    pub max_sessions: usize,
    /// Media threads (the packet path); 0 = one per core. At most 64.
    pub threads: usize,
    /// Codecs offered/accepted toward Teams, by encoding name, in preference order.
    pub teams_codecs: Vec<String>,
    /// Codecs offered/accepted toward the PBX, by encoding name, in preference order.
    pub pbx_codecs: Vec<String>,
}

impl Default for Media {
    fn default() -> Self {
        let lo = IpAddr::from([127, 0, 0, 1]);
        Media {
            enabled: true,
            teams_ip: lo,
            teams_advertised_ip: None,
            pbx_ip: lo,
            pbx_advertised_ip: None,
            teams_port_min: 40_000,
            teams_port_max: 44_999,
            pbx_port_min: 45_000,
            pbx_port_max: 49_999,
            rtcp_mux_teams: true,
            srtp_to_pbx: false,
            srtp_suite: "AES_CM_128_HMAC_SHA1_80".into(),
            inactivity_timeout_secs: 60,
            max_sessions: 2000,
            threads: 0,
            teams_codecs: ["SILK", "G722", "PCMU", "PCMA", "G729", "telephone-event", "CN"].map(String::from).to_vec(),
            pbx_codecs: ["PCMA", "PCMU", "G722", "G729", "telephone-event"].map(String::from).to_vec(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// tracing filter directive (`info`, `drbridge=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into() }
    }
}

/// `[presence]`: publishing line state to Teams as an application presence session through
/// Microsoft Graph (client-credentials grant, application permission Presence.ReadWrite.All).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Presence {
    /// Publish presence at all. Off by default.
    pub enabled: bool,
    /// The user directory (TOML, see config/users.toml): PBX extensions, E.164 numbers and Teams
    /// UPN per user. Required when enabled.
    pub users_file: Option<PathBuf>,
    /// SUBSCRIBE to the PBX's `dialog` and `presence` packages for every extension in the
    /// directory (phones that never cross drbridge; DND and user presence). Default true.
    pub subscribe_pbx: bool,
    /// Directory (tenant) id or a verified domain of the tenant. Required when enabled.
    pub tenant: String,
    /// Application (client) id; also the `sessionId` of the presence session. Required when enabled.
    pub client_id: String,
    /// File whose first line is the client secret (resolved against the config's directory).
    pub client_secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret (when `client_secret_file` is not set).
    pub client_secret_env: Option<String>,
    /// Microsoft identity platform base URL (token endpoint: `{identity_base}/{tenant}/oauth2/v2.0/token`).
    pub identity_base: String,
    /// Microsoft Graph base URL, API version included.
    pub graph_base: String,
    /// Scope of the token request.
    pub scope: String,
    /// `expirationDuration` of the presence session, minutes (Graph: 5..=240); refreshed at 80%.
    pub expiration_minutes: u64,
    /// Graph presence requests (each request inside a `$batch` counts) in any window of
    /// `rate_window_secs`; at most Graph's 1500 per 30 s on average.
    pub rate_limit: u32,
    pub rate_window_secs: u64,
    /// Requests that may go at once after a quiet period (less than `rate_limit`).
    pub rate_burst: u32,
    /// Most requests in one `$batch` (1..=20).
    pub batch_max: usize,
    /// Most HTTP requests to Graph outstanding at once.
    pub max_in_flight: usize,
    /// Timeout of one HTTP request to Graph or the identity platform, seconds.
    pub request_timeout_secs: u64,
    /// First retry delay after a failed request, ms; doubles per attempt (with jitter) up to `retry_max_secs`.
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    /// Capacity of the queue of desired states into the publisher.
    pub queue: usize,
    /// `[presence.teams_to_pbx]`: Teams presence back to the PBX side.
    pub teams_to_pbx: TeamsToPbx,
}

/// `[presence.teams_to_pbx]`: each user's Teams presence, watched through Graph change
/// notifications (subscriptions held by "presence monitor" accounts with a delegated token:
/// Graph offers presence subscriptions to delegated permissions only), NOTIFYed to PBX-side
/// SUBSCRIBEs (`Event: presence`) as PIDF.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamsToPbx {
    /// Off by default. Needs `presence.enabled` and `[admin]` with a webhook client state.
    pub enabled: bool,
    /// The https URL Graph POSTs change notifications to: this server's `/graph/webhook`
    /// published through a TLS reverse proxy. Required when enabled.
    pub notification_url: String,
    /// The presence monitor accounts, each watching up to `users_per_subscription` users.
    pub monitors: Vec<Monitor>,
    /// Users per Graph subscription (1..=650). Default 650.
    pub users_per_subscription: usize,
    /// Lifetime asked for a subscription, minutes (5..=60; Graph caps presence at 60). Default 55.
    pub subscription_minutes: u64,
    /// Every user's Teams presence is fetched again this often, minutes (1..=1440). Default 15.
    pub resync_minutes: u64,
    /// Most PBX-side presence subscriptions per signalling shard (1..=1000000). Default 10000.
    pub max_watchers: usize,
}

/// `[[presence.teams_to_pbx.monitors]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    /// The monitor account (UPN), licensed for Teams, not an administrator.
    pub upn: String,
    /// File whose first line is the monitor's refresh token (delegated Presence.Read.All and
    /// offline_access). drbridge writes the rotated token back into it. Never logged.
    pub refresh_token_file: PathBuf,
}

impl Default for TeamsToPbx {
    fn default() -> Self {
        TeamsToPbx {
            enabled: false,
            notification_url: String::new(),
            monitors: Vec::new(),
            users_per_subscription: 650,
            subscription_minutes: 55,
            resync_minutes: 15,
            max_watchers: 10_000,
        }
    }
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            enabled: false,
            users_file: None,
            subscribe_pbx: true,
            tenant: String::new(),
            client_id: String::new(),
            client_secret_file: None,
            client_secret_env: None,
            identity_base: "https://login.microsoftonline.com".into(),
            graph_base: "https://graph.microsoft.com/v1.0".into(),
            scope: "https://graph.microsoft.com/.default".into(),
            expiration_minutes: 60,
            rate_limit: 1200,
            rate_window_secs: 30,
            rate_burst: 100,
            batch_max: 20,
            max_in_flight: 4,
            request_timeout_secs: 10,
            retry_initial_ms: 1000,
            retry_max_secs: 300,
            queue: 4096,
            teams_to_pbx: TeamsToPbx::default(),
        }
    }
}

impl Presence {
    pub fn expiration(&self) -> Duration {
        Duration::from_secs(self.expiration_minutes * 60)
    }
    pub fn rate_window(&self) -> Duration {
        Duration::from_secs(self.rate_window_secs)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn retry_initial(&self) -> Duration {
        Duration::from_millis(self.retry_initial_ms)
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_secs(self.retry_max_secs)
    }
}

/// `[admin]`: the HTTP admin server (health, metrics, presence view and ingest, Graph webhook).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Run the admin server. Off by default.
    pub enabled: bool,
    /// Listen address. Keep it on loopback or a management network; the Graph webhook path
    /// alone is meant to be published through a reverse proxy.
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// File whose first line is the bearer token every endpoint but /health and
    /// /graph/webhook requires. One of token_file / token_env is required when enabled.
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    /// The `clientState` Graph subscriptions carry; notifications without it are dropped.
    pub webhook_client_state_file: Option<PathBuf>,
    pub webhook_client_state_env: Option<String>,
    /// Capacity of the ingest and webhook queues (full: 503 with Retry-After).
    pub queue: usize,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_file: None,
            token_env: None,
            webhook_client_state_file: None,
            webhook_client_state_env: None,
            queue: 1024,
        }
    }
}

/// A compiled regular expression from the file (keeps its source text).
#[derive(Clone)]
pub struct Pattern(pub Regex);

impl Pattern {
    pub fn new(s: &str) -> Result<Pattern, String> {
        regex::RegexBuilder::new(s).size_limit(1 << 20).build().map(Pattern).map_err(|e| regex_reason(s, &e))
    }
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::ops::Deref for Pattern {
    type Target = Regex;
    fn deref(&self) -> &Regex {
        &self.0
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

fn regex_reason(s: &str, e: &regex::Error) -> String {
    let detail = match e {
        regex::Error::Syntax(text) => {
            text.lines().find_map(|l| l.trim().strip_prefix("error:")).map(|l| l.trim().to_string()).unwrap_or_else(|| text.clone())
        }
        other => other.to_string(),
    };
    format!("{s:?} is not a valid regular expression: {detail}")
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(|_| serde::de::Error::custom(format!("{s:?} is not an IP address and port")))
}

fn de_opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    de_socket_addr(d).map(Some)
}

fn d_user_agent() -> String {
    "drbridge".into()
}
fn d_max_calls() -> u32 {
    10_000
}
fn d_data_dir() -> PathBuf {
    "var".into()
}
fn d_teams_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5061))
}
fn d_tls_port() -> u16 {
    5061
}
fn d_teams_options() -> u64 {
    60
}
fn d_failover_timeout() -> u64 {
    10
}
fn d_failover_codes() -> Vec<u16> {
    vec![408, 503, 504]
}
fn d_tls_cert() -> PathBuf {
    "../certs/sbc.crt".into()
}
fn d_tls_key() -> PathBuf {
    "../certs/sbc.key".into()
}
fn d_tls_ca() -> PathBuf {
    "../certs/ca.crt".into()
}
/// The names Microsoft's proxies present.
pub const MICROSOFT_PROXIES: [&str; 3] = ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com"];
fn d_peer_names() -> Vec<String> {
    let mut v: Vec<String> = MICROSOFT_PROXIES.iter().map(|s| s.to_string()).collect();
    v.push("*.pstnhub.microsoft.com".into());
    v
}
fn d_proxies() -> Vec<TeamsProxy> {
    MICROSOFT_PROXIES.iter().map(|h| TeamsProxy { host: h.to_string(), port: 5061, address: None }).collect()
}
fn d_pbx_name() -> String {
    "pbx".into()
}
fn d_pbx_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5060))
}
fn d_transport() -> Transport {
    Transport::Udp
}
fn d_pbx_options() -> u64 {
    30
}

impl Default for Teams {
    fn default() -> Self {
        Teams {
            listen: d_teams_listen(),
            contact_port: d_tls_port(),
            options_interval_secs: d_teams_options(),
            failover_timeout_secs: d_failover_timeout(),
            failover_codes: d_failover_codes(),
            tls_cert: d_tls_cert(),
            tls_key: d_tls_key(),
            tls_ca: d_tls_ca(),
            peer_names: d_peer_names(),
            lab_certs: false,
            proxies: d_proxies(),
        }
    }
}

impl Teams {
    pub fn options_interval(&self) -> Duration {
        Duration::from_secs(self.options_interval_secs)
    }
    pub fn failover_timeout(&self) -> Duration {
        Duration::from_secs(self.failover_timeout_secs)
    }
}

impl Pbx {
    /// `None` when OPTIONS toward the PBX are disabled.
    pub fn options_interval(&self) -> Option<Duration> {
        (self.options_interval_secs > 0).then(|| Duration::from_secs(self.options_interval_secs))
    }
}

/// Reads, parses and validates `path`, including the TLS files (skipped for the Teams files
/// when `teams.lab_certs = true`; call [`validate_tls_files`] after generating them).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, LoadOptions::default())
}

/// [`load`] with options (e.g. `check_files: false` to check an example file without its certs).
pub fn load_with(path: &Path, opts: LoadOptions) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: String::new(),
        reason: format!("cannot read configuration: {e}"),
    })?;
    parse_str(&text, path, opts)
}

/// Parses and validates configuration `text` as if read from `source` (relative paths are
/// resolved against `source`'s directory; `source` names the file in errors).
pub fn parse_str(text: &str, source: &Path, opts: LoadOptions) -> Result<Config, ConfigError> {
    let err = |key: String, reason: String| ConfigError { file: source.to_path_buf(), key, reason };
    let tree = match toml::de::DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => return Err(syntax_error(text, source, &e)),
    };
    let mut cfg: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let (key, reason) = describe_de_error(text, &tree, &e);
            return Err(err(key, reason));
        }
    };
    cfg.source = source.to_path_buf();
    let base = source.parent().map(Path::to_path_buf).unwrap_or_default();
    resolve_paths(&mut cfg, &base);
    validate(&mut cfg).map_err(|(k, r)| err(k, r))?;
    if opts.check_files {
        check_files(&cfg, !cfg.teams.lab_certs)?;
    }
    Ok(cfg)
}

/// Checks every TLS file of the configuration (Teams and, for a TLS trunk, PBX), whatever
/// `teams.lab_certs` says. The binary calls it after generating the lab certificates.
pub fn validate_tls_files(cfg: &Config) -> Result<(), ConfigError> {
    check_files(cfg, true)
}

fn syntax_error(text: &str, source: &Path, e: &toml::de::Error) -> ConfigError {
    let reason = e.message().lines().next().unwrap_or("TOML syntax error").trim().to_string();
    let key = match e.span() {
        Some(span) => {
            let (l, c) = keypath::line_col(text, span.start);
            match keypath::enclosing_key(text, &span) {
                Some(p) => format!("{p} (line {l}, column {c})"),
                None => format!("line {l}, column {c}"),
            }
        }
        None => String::new(),
    };
    ConfigError { file: source.to_path_buf(), key, reason: format!("TOML syntax: {reason}") }
}

/// Key path and reason of a deserialization error.
fn describe_de_error(text: &str, tree: &toml::Spanned<toml::de::DeTable<'_>>, e: &toml::de::Error) -> (String, String) {
    let msg = e.message().trim();
    // An empty span (0..0) stands for the document itself.
    let located = e.span().filter(|s| !s.is_empty()).and_then(|s| keypath::path_for_span(tree, &s).map(|(p, _)| p));
    let at = || match e.span() {
        Some(s) => {
            let (l, c) = keypath::line_col(text, s.start);
            format!("line {l}, column {c}")
        }
        None => String::new(),
    };
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = tail.trim_start_matches(',').trim();
        let key = located.unwrap_or_else(|| name.to_string());
        let reason = if expected.is_empty() { "unknown key".to_string() } else { format!("unknown key; {expected}") };
        return (key, reason);
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let key = match located {
            Some(p) if !p.is_empty() => format!("{p}.{name}"),
            _ => name.to_string(),
        };
        let reason = if matches!(name, "sbc" | "pbx") { "required section is missing" } else { "required key is missing" };
        return (key, reason.to_string());
    }
    (located.filter(|p| !p.is_empty()).unwrap_or_else(at), msg.to_string())
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn resolve_paths(cfg: &mut Config, base: &Path) {
    cfg.sbc.data_dir = resolve(base, &cfg.sbc.data_dir);
    cfg.teams.tls_cert = resolve(base, &cfg.teams.tls_cert);
    cfg.teams.tls_key = resolve(base, &cfg.teams.tls_key);
    cfg.teams.tls_ca = resolve(base, &cfg.teams.tls_ca);
    for p in [
        &mut cfg.pbx.tls_cert,
        &mut cfg.pbx.tls_key,
        &mut cfg.pbx.tls_ca,
        &mut cfg.presence.client_secret_file,
        &mut cfg.presence.users_file,
        &mut cfg.admin.token_file,
        &mut cfg.admin.webhook_client_state_file,
    ]
    .into_iter()
    .flatten()
    {
        *p = resolve(base, p);
    }
    for m in &mut cfg.presence.teams_to_pbx.monitors {
        m.refresh_token_file = resolve(base, &m.refresh_token_file);
    }
}

type Invalid = (String, String);

fn bad(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    (key.into(), reason.into())
}

/// A DNS host name (not an IP literal, not a wildcard).
fn is_dns_name(s: &str) -> bool {
    matches!(rustls_pki_types::ServerName::try_from(s), Ok(rustls_pki_types::ServerName::DnsName(_))) && !s.ends_with('.')
}

fn range_check(key: &str, v: u64, lo: u64, hi: u64, unit: &str) -> Result<(), Invalid> {
    if v < lo || v > hi {
        return Err(bad(key, format!("{v} is out of range ({lo}..={hi} {unit})")));
    }
    Ok(())
}

fn validate(cfg: &mut Config) -> Result<(), Invalid> {
    // [sbc]
    let fqdn = cfg.sbc.fqdn.trim();
    if fqdn.is_empty() {
        return Err(bad("sbc.fqdn", "must not be empty"));
    }
    if fqdn.parse::<IpAddr>().is_ok() {
        return Err(bad("sbc.fqdn", format!("{fqdn:?} is an IP address; Teams requires an FQDN (Contact with an IP gets 403)")));
    }
    if !is_dns_name(fqdn) || !fqdn.contains('.') {
        return Err(bad("sbc.fqdn", format!("{fqdn:?} is not a fully qualified DNS name")));
    }
    cfg.sbc.fqdn = fqdn.to_ascii_lowercase();
    if cfg.sbc.user_agent.trim().is_empty() || cfg.sbc.user_agent.chars().any(|c| c.is_control()) {
        return Err(bad("sbc.user_agent", "must be non-empty printable text"));
    }
    if cfg.sbc.max_calls == 0 {
        return Err(bad("sbc.max_calls", "must be at least 1"));
    }
    range_check("sbc.signalling_threads", u64::from(cfg.sbc.signalling_threads), 0, 64, "threads, 0 = one per core")?;

    // [teams]
    let t = &cfg.teams;
    if t.contact_port == 0 {
        return Err(bad("teams.contact_port", "must not be 0"));
    }
    if t.listen.port() == 0 {
        return Err(bad("teams.listen", "port must not be 0"));
    }
    range_check("teams.options_interval_secs", t.options_interval_secs, 5, 240, "seconds; Microsoft demotes a trunk after 5 minutes without OPTIONS")?;
    range_check("teams.failover_timeout_secs", t.failover_timeout_secs, 1, 60, "seconds")?;
    for (i, &code) in t.failover_codes.iter().enumerate() {
        let key = format!("teams.failover_codes[{i}]");
        if !(300..=699).contains(&code) {
            return Err(bad(key, format!("{code} is not a final non-2xx status (300..=699)")));
        }
        if code >= 600 {
            return Err(bad(key, format!("{code} is a global failure (6xx), which never fails over")));
        }
    }
    if t.proxies.is_empty() {
        return Err(bad("teams.proxies", "at least one Teams proxy is required"));
    }
    for (i, p) in t.proxies.iter().enumerate() {
        if !is_dns_name(&p.host) {
            return Err(bad(format!("teams.proxies[{i}].host"), format!("{:?} is not a DNS name (needed for SNI and the certificate check)", p.host)));
        }
        if p.port == 0 {
            return Err(bad(format!("teams.proxies[{i}].port"), "must not be 0"));
        }
        if let Some(a) = p.address {
            if a.port() == 0 {
                return Err(bad(format!("teams.proxies[{i}].address"), "port must not be 0"));
            }
        }
        if let Some(j) = t.proxies[..i].iter().position(|q| q.host.eq_ignore_ascii_case(&p.host) && q.port == p.port && q.address == p.address) {
            return Err(bad(format!("teams.proxies[{i}]"), format!("duplicates teams.proxies[{j}]")));
        }
    }
    if t.peer_names.is_empty() {
        return Err(bad("teams.peer_names", "at least one accepted peer name is required"));
    }
    for (i, n) in t.peer_names.iter().enumerate() {
        let plain = n.strip_prefix("*.").unwrap_or(n);
        if !is_dns_name(plain) {
            return Err(bad(format!("teams.peer_names[{i}]"), format!("{n:?} is not a DNS name or *.wildcard")));
        }
    }
    for (k, p) in [("teams.tls_cert", &t.tls_cert), ("teams.tls_key", &t.tls_key), ("teams.tls_ca", &t.tls_ca)] {
        if p.as_os_str().is_empty() {
            return Err(bad(k, "must not be empty"));
        }
    }
    cfg.teams.peer_names = cfg.teams.peer_names.iter().map(|n| n.to_ascii_lowercase()).collect();

    // [pbx]
    let p = &cfg.pbx;
    if p.name.trim().is_empty() {
        return Err(bad("pbx.name", "must not be empty"));
    }
    if p.listen.port() == 0 {
        return Err(bad("pbx.listen", "port must not be 0"));
    }
    if p.address.port() == 0 {
        return Err(bad("pbx.address", "port must not be 0"));
    }
    if p.address.ip().is_unspecified() {
        return Err(bad("pbx.address", format!("\"{}\" is not a reachable address", p.address)));
    }
    if p.options_interval_secs != 0 {
        range_check("pbx.options_interval_secs", p.options_interval_secs, 5, 3600, "seconds, or 0 to disable")?;
    }
    if p.transport == Transport::Tls {
        for (k, v) in [("pbx.tls_cert", &p.tls_cert), ("pbx.tls_key", &p.tls_key), ("pbx.tls_ca", &p.tls_ca)] {
            if v.is_none() {
                return Err(bad(k, "required when pbx.transport = \"tls\""));
            }
        }
        if p.listen == cfg.teams.listen {
            return Err(bad("pbx.listen", "must differ from teams.listen when pbx.transport = \"tls\" (each side has its own certificates)"));
        }
    } else if !p.tls_peer_names.is_empty() {
        return Err(bad("pbx.tls_peer_names", "only with pbx.transport = \"tls\""));
    } else if p.tls_client_cert != ClientCert::Required {
        return Err(bad("pbx.tls_client_cert", "only with pbx.transport = \"tls\""));
    }
    for (i, n) in p.tls_peer_names.iter().enumerate() {
        let plain = n.strip_prefix("*.").unwrap_or(n);
        if !is_dns_name(plain) && n.parse::<IpAddr>().is_err() {
            return Err(bad(format!("pbx.tls_peer_names[{i}]"), format!("{n:?} is not a DNS name, *.wildcard or IP address")));
        }
    }
    let domain = p.domain.trim().to_string();
    if domain.is_empty() {
        cfg.pbx.domain = match cfg.pbx.address.ip() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
    } else {
        let ok = is_dns_name(&domain)
            || domain.parse::<IpAddr>().is_ok()
            || domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')).is_some_and(|d| d.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return Err(bad("pbx.domain", format!("{domain:?} is not a host name or IP address")));
        }
        cfg.pbx.domain = match domain.parse::<std::net::Ipv6Addr>() {
            Ok(a) => format!("[{a}]"),
            Err(_) => domain,
        };
    }
    if cfg.pbx.transport == Transport::Tls && cfg.pbx.tls_peer_names.is_empty() {
        cfg.pbx.tls_peer_names = vec![cfg.pbx.domain.trim_start_matches('[').trim_end_matches(']').to_string()];
    }
    cfg.pbx.tls_peer_names = cfg.pbx.tls_peer_names.iter().map(|n| n.to_ascii_lowercase()).collect();

    // [numbers]
    for (side, rules) in [("to_teams", &cfg.numbers.to_teams), ("to_pbx", &cfg.numbers.to_pbx)] {
        for (i, r) in rules.iter().enumerate() {
            check_replacement(&r.pattern, &r.replace).map_err(|why| bad(format!("numbers.{side}[{i}].replace"), why))?;
        }
    }

    // [timers]
    let tm = &cfg.timers;
    range_check("timers.t1_ms", tm.t1_ms, 50, 10_000, "ms")?;
    if tm.t2_ms <= tm.t1_ms {
        return Err(bad("timers.t2_ms", format!("{} must be greater than timers.t1_ms ({})", tm.t2_ms, tm.t1_ms)));
    }
    range_check("timers.t2_ms", tm.t2_ms, 51, 64_000, "ms")?;
    if tm.t4_ms < tm.t1_ms {
        return Err(bad("timers.t4_ms", format!("{} must not be less than timers.t1_ms ({})", tm.t4_ms, tm.t1_ms)));
    }
    range_check("timers.t4_ms", tm.t4_ms, 50, 64_000, "ms")?;
    if tm.min_se_secs < 90 {
        return Err(bad("timers.min_se_secs", format!("{} is below 90 (RFC 4028 minimum)", tm.min_se_secs)));
    }
    if tm.session_expires_secs < tm.min_se_secs {
        return Err(bad("timers.session_expires_secs", format!("{} is below timers.min_se_secs ({})", tm.session_expires_secs, tm.min_se_secs)));
    }
    range_check("timers.session_expires_secs", tm.session_expires_secs, 90, 86_400, "seconds")?;
    if tm.ring_timeout_secs != 0 {
        range_check("timers.ring_timeout_secs", tm.ring_timeout_secs, 5, 3600, "seconds, or 0 for never")?;
    }

    // [limits]
    let l = &cfg.limits;
    range_check("limits.max_message_bytes", l.max_message_bytes as u64, 1500, 1 << 20, "bytes")?;
    range_check("limits.max_headers", l.max_headers as u64, 16, 4096, "header lines")?;
    range_check("limits.max_connections", l.max_connections as u64, 1, 1_000_000, "connections")?;
    range_check("limits.max_transactions", l.max_transactions as u64, 16, 10_000_000, "transactions")?;
    range_check("limits.event_queue", l.event_queue as u64, 16, 1_000_000, "events")?;

    // [media]
    let m = &cfg.media;
    for (side, lo, hi) in [("teams", m.teams_port_min, m.teams_port_max), ("pbx", m.pbx_port_min, m.pbx_port_max)] {
        if lo < 1024 || lo >= hi || hi - lo < 3 {
            return Err(bad(format!("media.{side}_port_min"), format!("{lo}..{hi} is not a port range above 1023 with room for at least two RTP/RTCP pairs")));
        }
    }
    let overlap = m.teams_ip == m.pbx_ip && m.teams_port_min <= m.pbx_port_max && m.pbx_port_min <= m.teams_port_max;
    if overlap {
        return Err(bad("media.pbx_port_min", "the Teams and PBX port ranges overlap on the same address"));
    }
    if !matches!(m.srtp_suite.as_str(), "AES_CM_128_HMAC_SHA1_80" | "AES_CM_128_HMAC_SHA1_32") {
        return Err(bad("media.srtp_suite", format!("{:?} is not AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32", m.srtp_suite)));
    }
    range_check("media.inactivity_timeout_secs", m.inactivity_timeout_secs, 1, 86_400, "seconds")?;
    range_check("media.max_sessions", m.max_sessions as u64, 1, 1_000_000, "sessions")?;
    range_check("media.threads", m.threads as u64, 0, 64, "threads, 0 = one per core")?;
    for (key, list) in [("media.teams_codecs", &m.teams_codecs), ("media.pbx_codecs", &m.pbx_codecs)] {
        if !list.iter().any(|c| !c.eq_ignore_ascii_case("telephone-event") && !c.eq_ignore_ascii_case("CN")) {
            return Err(bad(key, "must name at least one audio codec"));
        }
    }
    validate_presence(&cfg.presence)?;
    validate_admin(&cfg.admin)?;

    // [log]
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.log.level) {
        return Err(bad("log.level", format!("{:?} is not a tracing filter: {e}", cfg.log.level)));
    }
    Ok(())
}

/// An http(s) base URL without query or fragment.
fn check_base_url(key: &str, v: &str) -> Result<(), Invalid> {
    let rest = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        let host = r.split('/').next().unwrap_or("");
        !host.is_empty() && !r.contains(['?', '#']) && !r.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if !ok {
        return Err(bad(key, format!("{v:?} is not an http(s) URL without query")));
    }
    Ok(())
}

/// A `file` / `env` pair naming a secret: at most one of them, and exactly one when `required`.
fn check_secret(section: &str, name: &str, file: &Option<PathBuf>, env: &Option<String>, required: bool) -> Result<(), Invalid> {
    let has_file = file.as_ref().is_some_and(|f| !f.as_os_str().is_empty());
    let has_env = env.as_ref().is_some_and(|e| !e.is_empty());
    if let Some(e) = env.as_ref().filter(|e| !e.is_empty()) {
        if e.contains('=') || e.contains('\0') || e.chars().any(char::is_whitespace) {
            return Err(bad(format!("{section}.{name}_env"), format!("{e:?} is not an environment variable name")));
        }
    }
    if has_file && has_env {
        return Err(bad(format!("{section}.{name}_env"), format!("set either {section}.{name}_file or {section}.{name}_env, not both")));
    }
    if required && !has_file && !has_env {
        return Err(bad(format!("{section}.{name}_file"), format!("{section}.{name}_file or {section}.{name}_env is required when {section}.enabled = true")));
    }
    Ok(())
}

fn validate_presence(p: &Presence) -> Result<(), Invalid> {
    check_base_url("presence.identity_base", &p.identity_base)?;
    check_base_url("presence.graph_base", &p.graph_base)?;
    if p.scope.trim().is_empty() {
        return Err(bad("presence.scope", "must not be empty"));
    }
    range_check("presence.expiration_minutes", p.expiration_minutes, 5, 240, "minutes; Graph accepts PT5M..PT4H")?;
    range_check("presence.rate_window_secs", p.rate_window_secs, 1, 300, "seconds")?;
    range_check("presence.rate_limit", p.rate_limit as u64, 2, 1_000_000, "requests")?;
    if p.rate_limit as u64 * 30 > 1500 * p.rate_window_secs {
        return Err(bad(
            "presence.rate_limit",
            format!("{} per {} s exceeds Graph's presence limit of 1500 requests per 30 s", p.rate_limit, p.rate_window_secs),
        ));
    }
    if p.rate_burst == 0 || p.rate_burst >= p.rate_limit {
        return Err(bad("presence.rate_burst", format!("{} must be at least 1 and below presence.rate_limit ({})", p.rate_burst, p.rate_limit)));
    }
    range_check("presence.batch_max", p.batch_max as u64, 1, 20, "requests; Graph's $batch takes at most 20")?;
    range_check("presence.max_in_flight", p.max_in_flight as u64, 1, 64, "requests")?;
    range_check("presence.request_timeout_secs", p.request_timeout_secs, 1, 120, "seconds")?;
    range_check("presence.retry_initial_ms", p.retry_initial_ms, 10, 60_000, "ms")?;
    range_check("presence.retry_max_secs", p.retry_max_secs, 1, 3600, "seconds")?;
    if p.retry_max_secs * 1000 < p.retry_initial_ms {
        return Err(bad("presence.retry_max_secs", format!("{} s is below presence.retry_initial_ms ({} ms)", p.retry_max_secs, p.retry_initial_ms)));
    }
    range_check("presence.queue", p.queue as u64, 16, 1_000_000, "entries")?;
    check_secret("presence", "client_secret", &p.client_secret_file, &p.client_secret_env, p.enabled)?;
    if p.enabled {
        for (k, v) in [("presence.tenant", &p.tenant), ("presence.client_id", &p.client_id)] {
            if v.trim().is_empty() {
                return Err(bad(k, "required when presence.enabled = true"));
            }
            if v.contains(['/', '?', '#']) || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(k, format!("{v:?} is not a GUID or domain name")));
            }
        }
    }
    if p.enabled && p.users_file.is_none() {
        return Err(bad("presence.users_file", "required when presence.enabled = true"));
    }
    let t = &p.teams_to_pbx;
    range_check("presence.teams_to_pbx.users_per_subscription", t.users_per_subscription as u64, 1, 650, "users; Graph takes at most 650 per subscription")?;
    range_check("presence.teams_to_pbx.subscription_minutes", t.subscription_minutes, 5, 60, "minutes; Graph caps presence subscriptions at 60")?;
    range_check("presence.teams_to_pbx.resync_minutes", t.resync_minutes, 1, 1440, "minutes")?;
    range_check("presence.teams_to_pbx.max_watchers", t.max_watchers as u64, 1, 1_000_000, "subscriptions")?;
    if t.enabled {
        if !p.enabled {
            return Err(bad("presence.teams_to_pbx.enabled", "needs presence.enabled = true"));
        }
        let url = t.notification_url.trim();
        if url.is_empty() {
            return Err(bad("presence.teams_to_pbx.notification_url", "required when presence.teams_to_pbx.enabled = true"));
        }
        check_base_url("presence.teams_to_pbx.notification_url", url)?;
        if t.monitors.is_empty() {
            return Err(bad("presence.teams_to_pbx.monitors", "at least one monitor is required when presence.teams_to_pbx.enabled = true"));
        }
    }
    for (i, m) in t.monitors.iter().enumerate() {
        if !m.upn.contains('@') || m.upn.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#')) {
            return Err(bad(format!("presence.teams_to_pbx.monitors[{i}].upn"), format!("{:?} is not a user principal name", m.upn)));
        }
        if let Some(j) = t.monitors[..i].iter().position(|o| o.upn.eq_ignore_ascii_case(&m.upn)) {
            return Err(bad(format!("presence.teams_to_pbx.monitors[{i}].upn"), format!("duplicates presence.teams_to_pbx.monitors[{j}]")));
        }
    }
    Ok(())
}

fn validate_admin(a: &Admin) -> Result<(), Invalid> {
    if a.listen.port() == 0 {
        return Err(bad("admin.listen", "port must not be 0"));
    }
    check_secret("admin", "token", &a.token_file, &a.token_env, a.enabled)?;
    check_secret("admin", "webhook_client_state", &a.webhook_client_state_file, &a.webhook_client_state_env, false)?;
    range_check("admin.queue", a.queue as u64, 16, 1_000_000, "entries")?;
    Ok(())
}

/// Every `$N` / `${N}` / `$name` / `${name}` in a replacement names a group of the pattern.
fn check_replacement(p: &Pattern, rep: &str) -> Result<(), String> {
    let names: Vec<&str> = p.capture_names().flatten().collect();
    let groups = p.captures_len();
    let b = rep.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let (name, next) = if b.get(i + 1) == Some(&b'{') {
            match rep[i + 2..].find('}') {
                Some(end) => (&rep[i + 2..i + 2 + end], i + 3 + end),
                None => return Err(format!("unterminated ${{ in {rep:?}")),
            }
        } else {
            let end = rep[i + 1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map(|e| i + 1 + e).unwrap_or(rep.len());
            (&rep[i + 1..end], end)
        };
        if name.is_empty() {
            return Err(format!("lone $ in {rep:?} (write $$ for a literal $)"));
        }
        let known = match name.parse::<usize>() {
            Ok(n) => n < groups,
            Err(_) => names.contains(&name),
        };
        if !known {
            return Err(format!(
                "${name} in {rep:?} refers to no group of {:?} (it has {} group(s); write ${{1}} when a digit follows)",
                p.as_str(),
                groups - 1
            ));
        }
        i = next;
    }
    Ok(())
}

fn check_files(cfg: &Config, teams_files: bool) -> Result<(), ConfigError> {
    let err = |key: &str, reason: String| ConfigError { file: cfg.source.clone(), key: key.to_string(), reason };
    // Secret files must exist when their section is enabled (their content is never shown).
    let secret_files = [
        (cfg.presence.enabled, "presence.client_secret_file", &cfg.presence.client_secret_file),
        (cfg.admin.enabled, "admin.token_file", &cfg.admin.token_file),
        (cfg.admin.enabled, "admin.webhook_client_state_file", &cfg.admin.webhook_client_state_file),
    ];
    for (on, key, file) in secret_files {
        if let (true, Some(f)) = (on, file) {
            if !f.is_file() {
                return Err(err(key, format!("file not found: {}", f.display())));
            }
        }
    }
    let t = &cfg.presence.teams_to_pbx;
    if t.enabled {
        if !cfg.admin.enabled {
            return Err(err("presence.teams_to_pbx.enabled", "needs [admin] enabled (Graph posts to its /graph/webhook)".into()));
        }
        if cfg.admin.webhook_client_state_file.is_none() && cfg.admin.webhook_client_state_env.is_none() {
            return Err(err("admin.webhook_client_state_file", "required with presence.teams_to_pbx (Graph notifications are checked against it)".into()));
        }
        for (i, m) in t.monitors.iter().enumerate() {
            if !m.refresh_token_file.is_file() {
                return Err(err(&format!("presence.teams_to_pbx.monitors[{i}].refresh_token_file"), format!("file not found: {}", m.refresh_token_file.display())));
            }
        }
    }
    if teams_files {
        let t = &cfg.teams;
        let chain = tls::read_certs(&t.tls_cert).map_err(|r| err("teams.tls_cert", r))?;
        tls::check_names(&chain[0], "sbc.fqdn", &cfg.sbc.fqdn).map_err(|r| err("teams.tls_cert", r))?;
        let key = tls::read_key(&t.tls_key).map_err(|r| err("teams.tls_key", r))?;
        tls::check_key_matches(&chain, &key).map_err(|r| err("teams.tls_key", format!("{r} in {}", t.tls_cert.display())))?;
        let ca = tls::read_certs(&t.tls_ca).map_err(|r| err("teams.tls_ca", r))?;
        tls::check_anchors(&t.tls_ca, &ca).map_err(|r| err("teams.tls_ca", r))?;
    }
    let p = &cfg.pbx;
    if p.transport == Transport::Tls {
        // With lab certificates the PBX trunk may share the generated files: skip those until
        // they exist (validate_tls_files checks them).
        let lab_shared = |f: &Path| !teams_files && [&cfg.teams.tls_cert, &cfg.teams.tls_key, &cfg.teams.tls_ca].iter().any(|t| t.as_path() == f);
        if let (Some(c), Some(k)) = (&p.tls_cert, &p.tls_key) {
            if !lab_shared(c) && !lab_shared(k) {
                let chain = tls::read_certs(c).map_err(|r| err("pbx.tls_cert", r))?;
                let key = tls::read_key(k).map_err(|r| err("pbx.tls_key", r))?;
                tls::check_key_matches(&chain, &key).map_err(|r| err("pbx.tls_key", format!("{r} in {}", c.display())))?;
            }
        }
        if let Some(ca) = &p.tls_ca {
            if !lab_shared(ca) {
                let certs = tls::read_certs(ca).map_err(|r| err("pbx.tls_ca", r))?;
                tls::check_anchors(ca, &certs).map_err(|r| err("pbx.tls_ca", r))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
