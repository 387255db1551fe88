//! Microsoft Graph client for presence: OAuth2 client-credentials token (cached, renewed shortly
//! before expiry), user id lookup, `setPresence` / `clearPresence` and `$batch`.
//!
//! The HTTP client is reqwest with rustls (ring provider, platform roots), never native-tls. Base
//! URLs are configurable so that tests point them at a local stand-in server. Secrets and access
//! tokens are never logged: [`Secret`] and [`AccessToken`] redact themselves in `Debug`.
//!
//! Graph's wire vocabulary lives here too: [`TeamsPresence`] is one of the five
//! (availability, activity) pairs `setPresence` accepts, so an invalid pair cannot be built.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scope of the client-credentials grant for Microsoft Graph.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Default identity platform base URL.
pub const IDENTITY_BASE: &str = "https://login.microsoftonline.com";
/// Default Graph base URL (API version included).
pub const GRAPH_BASE: &str = "https://graph.microsoft.com/v1.0";
/// Most requests in one `$batch` (Graph's limit).
pub const BATCH_MAX: usize = 20;
/// Retry-After assumed when a 429 comes without one.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(5);

/// Errors of the Graph client (one type for the module's I/O side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Secret file unreadable / environment variable unset or empty.
    #[error("client secret: {0}")]
    Secret(String),
    /// Bad base URL or HTTP client setup.
    #[error("graph client setup: {0}")]
    Setup(String),
    /// Connection, TLS or timeout (no HTTP status).
    #[error("graph transport: {0}")]
    Transport(String),
    /// The identity platform refused or answered something unusable.
    #[error("token request: {0}")]
    Token(String),
    /// Graph answered a non-success status.
    #[error("graph answered {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status { status: u16, retry_after: Option<Duration>, code: Option<String> },
    /// A 2xx answer whose body did not parse.
    #[error("graph answer: {0}")]
    Decode(String),
}

/// A secret value (client secret, bearer token, clientState). `Debug` prints `Secret(***)`;
/// there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value, for building a request. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison (for bearer tokens and clientState).
    pub fn matches(&self, other: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), other.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a secret comes from: a file (first line, trimmed) or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl SecretSource {
    /// `file` wins over `env` when both are set; `None` when neither is.
    pub fn from_parts(file: Option<&PathBuf>, env: Option<&str>) -> Option<SecretSource> {
        match (file, env) {
            (Some(f), _) if !f.as_os_str().is_empty() => Some(SecretSource::File(f.clone())),
            (_, Some(e)) if !e.is_empty() => Some(SecretSource::Env(e.to_string())),
            _ => None,
        }
    }

    /// Reads the secret. The error names the file or variable, never the value.
    pub fn load(&self) -> Result<Secret, GraphError> {
        let raw = match self {
            SecretSource::File(p) => std::fs::read_to_string(p).map_err(|e| GraphError::Secret(format!("{}: {e}", p.display())))?,
            SecretSource::Env(name) => std::env::var(name).map_err(|_| GraphError::Secret(format!("environment variable {name} is not set")))?,
        };
        let value = raw.lines().next().unwrap_or("").trim().to_string();
        if value.is_empty() {
            let what = match self {
                SecretSource::File(p) => p.display().to_string(),
                SecretSource::Env(n) => format!("environment variable {n}"),
            };
            return Err(GraphError::Secret(format!("{what} is empty")));
        }
        Ok(Secret(value))
    }
}

/// The (availability, activity) pairs `setPresence` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TeamsPresence {
    /// Available / Available
    Available,
    /// Busy / InACall
    InACall,
    /// Busy / InAConferenceCall
    InAConferenceCall,
    /// Away / Away
    Away,
    /// DoNotDisturb / Presenting
    DoNotDisturb,
}

impl TeamsPresence {
    pub const ALL: [TeamsPresence; 5] =
        [TeamsPresence::Available, TeamsPresence::InACall, TeamsPresence::InAConferenceCall, TeamsPresence::Away, TeamsPresence::DoNotDisturb];

    pub fn availability(self) -> &'static str {
        match self {
            TeamsPresence::Available => "Available",
            TeamsPresence::InACall | TeamsPresence::InAConferenceCall => "Busy",
            TeamsPresence::Away => "Away",
            TeamsPresence::DoNotDisturb => "DoNotDisturb",
        }
    }

    pub fn activity(self) -> &'static str {
        match self {
            TeamsPresence::Available => "Available",
            TeamsPresence::InACall => "InACall",
            TeamsPresence::InAConferenceCall => "InAConferenceCall",
            TeamsPresence::Away => "Away",
            TeamsPresence::DoNotDisturb => "Presenting",
        }
    }

    /// The pair back from Graph's strings (`None` for a pair `setPresence` does not accept).
    pub fn from_pair(availability: &str, activity: &str) -> Option<TeamsPresence> {
        TeamsPresence::ALL.into_iter().find(|p| p.availability() == availability && p.activity() == activity)
    }
}

/// `expirationDuration` as ISO 8601 (`PT1H`, `PT5M`, `PT1H30M`).
pub fn iso_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if sec > 0 || out.len() == 2 {
        out.push_str(&format!("{sec}S"));
    }
    out
}

/// One presence operation for one user (by Azure AD object id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceOp {
    pub user_id: String,
    /// `Some`: setPresence with this pair; `None`: clearPresence.
    pub state: Option<TeamsPresence>,
}

/// How one operation ended, as the publisher needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpOutcome {
    /// 2xx (or 404 on clearPresence: there was no session).
    Done,
    /// 429: the whole app is throttled for this long.
    Throttled(Duration),
    /// 503 (or 502/504): this user's request may be retried, after `Retry-After` if given.
    Unavailable(Option<Duration>),
    /// Transport failure, 5xx, 401 (token), 408: retry with backoff.
    Failed,
    /// 400/403/404 on set and other 4xx: retrying the same request will not help.
    Rejected(u16),
}

impl OpOutcome {
    /// Classifies an HTTP answer to a presence request.
    pub fn from_status(status: u16, retry_after: Option<Duration>, clear: bool) -> OpOutcome {
        match status {
            200..=299 => OpOutcome::Done,
            404 if clear => OpOutcome::Done,
            429 => OpOutcome::Throttled(retry_after.unwrap_or(DEFAULT_THROTTLE)),
            502..=504 => OpOutcome::Unavailable(retry_after),
            401 | 408 | 500..=599 => OpOutcome::Failed,
            s => OpOutcome::Rejected(s),
        }
    }

    fn from_error(e: &GraphError, clear: bool) -> OpOutcome {
        match e {
            GraphError::Status { status, retry_after, .. } => OpOutcome::from_status(*status, *retry_after, clear),
            _ => OpOutcome::Failed,
        }
    }
}

/// `Retry-After` in delta-seconds (HTTP dates are not used by Graph; they count as absent).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s.min(24 * 3600)))
}

/// An access token. `Debug` is redacted.
#[derive(Clone)]
pub struct AccessToken(pub(super) Arc<str>);

impl AccessToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

/// Token cache logic (sans-IO): a token is reused until `margin` before it expires, where the
/// margin is 5 minutes but at most half the lifetime.
#[derive(Debug, Clone, Default)]
pub struct TokenCache {
    current: Option<(AccessToken, Instant)>,
}

impl TokenCache {
    /// The cached token if it is still good at `now`.
    pub fn get(&self, now: Instant) -> Option<AccessToken> {
        self.current.as_ref().filter(|(_, renew_at)| now < *renew_at).map(|(t, _)| t.clone())
    }

    /// Stores a token obtained at `now` valid for `expires_in`.
    pub fn store(&mut self, token: AccessToken, expires_in: Duration, now: Instant) {
        let margin = Duration::from_secs(300).min(expires_in / 2);
        self.current = Some((token, now + expires_in.saturating_sub(margin)));
    }

    /// Forget the token (Graph answered 401).
    pub fn invalidate(&mut self) {
        self.current = None;
    }

    pub fn renew_at(&self) -> Option<Instant> {
        self.current.as_ref().map(|(_, r)| *r)
    }
}

/// What the client needs to know.
#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// Directory (tenant) id or verified domain.
    pub tenant: String,
    /// Application (client) id; also the presence `sessionId`.
    pub client_id: String,
    pub client_secret: Secret,
    /// e.g. `https://login.microsoftonline.com` (no trailing slash needed).
    pub identity_base: String,
    /// e.g. `https://graph.microsoft.com/v1.0`.
    pub graph_base: String,
    pub scope: String,
    /// `expirationDuration` sent with setPresence.
    pub expiration: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct GraphErrorBody {
    error: Option<GraphErrorInner>,
}
#[derive(Deserialize)]
struct GraphErrorInner {
    code: Option<String>,
}

#[derive(Deserialize)]
struct BatchAnswer {
    responses: Vec<BatchItem>,
}
#[derive(Deserialize)]
struct BatchItem {
    id: String,
    status: u16,
    #[serde(default)]
    headers: std::collections::HashMap<String, String>,
}

/// The Graph client. Cheap to share behind an `Arc`; token fetches are serialised so that
/// concurrent callers share one.
pub struct GraphClient {
    pub(super) http: reqwest::Client,
    pub(super) s: GraphSettings,
    pub(super) token_url: reqwest::Url,
    graph_base: reqwest::Url,
    cache: tokio::sync::Mutex<TokenCache>,
    token_fetches: std::sync::atomic::AtomicU64,
    /// Presence monitor accounts (delegated tokens), see `graph_watch`.
    pub(super) monitors: super::graph_watch::Monitors,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient").field("settings", &self.s).finish_non_exhaustive()
    }
}

fn rustls_config() -> Result<rustls::ClientConfig, GraphError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| GraphError::Setup(format!("TLS roots: {e}")))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GraphError::Setup(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn base_url(s: &str, key: &str) -> Result<reqwest::Url, GraphError> {
    let mut u = reqwest::Url::parse(s.trim_end_matches('/')).map_err(|e| GraphError::Setup(format!("{key} {s:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.cannot_be_a_base() {
        return Err(GraphError::Setup(format!("{key} {s:?} is not an http(s) URL")));
    }
    // Make the path end without a slash so segments are appended cleanly.
    let path = u.path().trim_end_matches('/').to_string();
    u.set_path(&path);
    Ok(u)
}

impl GraphClient {
    pub fn new(s: GraphSettings) -> Result<GraphClient, GraphError> {
        let mut token_url = base_url(&s.identity_base, "identity_base")?;
        token_url
            .path_segments_mut()
            .map_err(|_| GraphError::Setup("identity_base".into()))?
            .pop_if_empty()
            .extend([s.tenant.as_str(), "oauth2", "v2.0", "token"]);
        let graph_base = base_url(&s.graph_base, "graph_base")?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(rustls_config()?)
            .timeout(s.request_timeout)
            .connect_timeout(s.request_timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(16)
            .user_agent(concat!("drbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::Setup(e.to_string()))?;
        Ok(GraphClient {
            http,
            s,
            token_url,
            graph_base,
            cache: tokio::sync::Mutex::new(TokenCache::default()),
            token_fetches: 0.into(),
            monitors: Default::default(),
        })
    }

    pub fn settings(&self) -> &GraphSettings {
        &self.s
    }

    /// How many tokens were fetched from the identity platform so far.
    pub fn token_fetches(&self) -> u64 {
        self.token_fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid access token: the cached one, or a new one from the identity platform.
    pub async fn token(&self) -> Result<AccessToken, GraphError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(t) = cache.get(now) {
            return Ok(t);
        }
        let form = [
            ("client_id", self.s.client_id.as_str()),
            ("client_secret", self.s.client_secret.expose()),
            ("scope", self.s.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        self.token_fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = self.http.post(self.token_url.clone()).form(&form).send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            // The identity platform's error body names the error (invalid_client, ...); it
            // never echoes the secret, but keep only the code to be safe.
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_default();
            return Err(GraphError::Token(format!("identity platform answered {status} {code}").trim().to_string()));
        }
        let ans: TokenAnswer = serde_json::from_slice(&body).map_err(|e| GraphError::Token(format!("unreadable answer: {e}")))?;
        if ans.access_token.is_empty() {
            return Err(GraphError::Token("empty access_token".into()));
        }
        let secs = match &ans.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3599)
        .clamp(10, 24 * 3600);
        let token = AccessToken(ans.access_token.into());
        cache.store(token.clone(), Duration::from_secs(secs), Instant::now());
        tracing::debug!(expires_in = secs, "graph: new access token");
        Ok(token)
    }

    /// Drops the cached token (after a 401).
    pub async fn invalidate_token(&self) {
        self.cache.lock().await.invalidate();
    }

    pub(super) fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut u = self.graph_base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        u
    }

    pub(super) async fn send_json(&self, url: reqwest::Url, body: Option<&serde_json::Value>) -> Result<(u16, Option<Duration>, bytes::Bytes), GraphError> {
        let token = self.token().await?;
        let req = match body {
            Some(b) => self.http.post(url).json(b),
            None => self.http.get(url),
        };
        let resp = req.bearer_auth(token.expose()).send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let bytes = resp.bytes().await.map_err(transport)?;
        if status == 401 {
            self.invalidate_token().await;
        }
        Ok((status, retry_after, bytes))
    }

    pub(super) fn status_error(status: u16, retry_after: Option<Duration>, body: &[u8]) -> GraphError {
        let code = serde_json::from_slice::<GraphErrorBody>(body).ok().and_then(|b| b.error).and_then(|e| e.code);
        GraphError::Status { status, retry_after, code }
    }

    /// `GET /users/{upn}?$select=id`: the object id, `None` when Graph does not know the user.
    pub async fn resolve_user(&self, upn: &str) -> Result<Option<String>, GraphError> {
        let mut url = self.url(&["users", upn]);
        url.set_query(Some("$select=id"));
        let (status, retry_after, body) = self.send_json(url, None).await?;
        match status {
            200..=299 => {
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| GraphError::Decode(e.to_string()))?;
                match v.get("id").and_then(|i| i.as_str()) {
                    Some(id) if !id.is_empty() => Ok(Some(id.to_string())),
                    _ => Err(GraphError::Decode("user without id".into())),
                }
            }
            404 => Ok(None),
            _ => Err(Self::status_error(status, retry_after, &body)),
        }
    }

    /// The JSON body of a setPresence / clearPresence.
    pub fn op_body(&self, state: Option<TeamsPresence>) -> serde_json::Value {
        match state {
            Some(p) => serde_json::json!({
                "sessionId": self.s.client_id,
                "availability": p.availability(),
                "activity": p.activity(),
                "expirationDuration": iso_duration(self.s.expiration),
            }),
            None => serde_json::json!({ "sessionId": self.s.client_id }),
        }
    }

    fn op_path(state: Option<TeamsPresence>) -> &'static str {
        if state.is_some() {
            "setPresence"
        } else {
            "clearPresence"
        }
    }

    /// One setPresence / clearPresence.
    pub async fn presence(&self, op: &PresenceOp) -> Result<(), GraphError> {
        let url = self.url(&["users", &op.user_id, "presence", Self::op_path(op.state)]);
        let (status, retry_after, body) = self.send_json(url, Some(&self.op_body(op.state))).await?;
        match OpOutcome::from_status(status, retry_after, op.state.is_none()) {
            OpOutcome::Done => Ok(()),
            _ => Err(Self::status_error(status, retry_after, &body)),
        }
    }

    /// `POST /$batch` with up to [`BATCH_MAX`] operations; one result per operation, in order.
    /// An `Err` means the batch itself failed (then every operation did).
    pub async fn batch(&self, ops: &[PresenceOp]) -> Result<Vec<OpOutcome>, GraphError> {
        if ops.len() > BATCH_MAX {
            return Err(GraphError::Setup(format!("$batch of {} requests (at most {BATCH_MAX})", ops.len())));
        }
        let requests: Vec<serde_json::Value> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let mut seg = reqwest::Url::parse("http://x/users").expect("static URL");
                if let Ok(mut p) = seg.path_segments_mut() {
                    p.extend([op.user_id.as_str(), "presence", Self::op_path(op.state)]);
                }
                serde_json::json!({
                    "id": (i + 1).to_string(),
                    "method": "POST",
                    "url": seg.path(),
                    "headers": { "Content-Type": "application/json" },
                    "body": self.op_body(op.state),
                })
            })
            .collect();
        let body = serde_json::json!({ "requests": requests });
        let (status, retry_after, bytes) = self.send_json(self.url(&["$batch"]), Some(&body)).await?;
        if !(200..300).contains(&status) {
            return Err(Self::status_error(status, retry_after, &bytes));
        }
        let ans: BatchAnswer = serde_json::from_slice(&bytes).map_err(|e| GraphError::Decode(format!("$batch: {e}")))?;
        let mut out = vec![OpOutcome::Failed; ops.len()];
        for item in ans.responses {
            let Some(i) = item.id.parse::<usize>().ok().and_then(|i| i.checked_sub(1)).filter(|&i| i < ops.len()) else {
                continue;
            };
            let ra = item.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")).and_then(|(_, v)| parse_retry_after(v));
            out[i] = OpOutcome::from_status(item.status, ra, ops[i].state.is_none());
            if item.status == 401 {
                self.invalidate_token().await;
            }
        }
        Ok(out)
    }

    /// Runs `ops` as one request (a single op directly, several as `$batch`) and classifies
    /// every operation's outcome.
    pub async fn execute(&self, ops: &[PresenceOp]) -> Vec<OpOutcome> {
        match ops {
            [] => Vec::new(),
            [op] => vec![match self.presence(op).await {
                Ok(()) => OpOutcome::Done,
                Err(e) => {
                    tracing::debug!(error = %e, "graph: presence request failed");
                    OpOutcome::from_error(&e, op.state.is_none())
                }
            }],
            _ => match self.batch(ops).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "graph: $batch failed");
                    // A throttled/unavailable batch throttles every op in it.
                    ops.iter().map(|op| OpOutcome::from_error(&e, op.state.is_none())).collect()
                }
            },
        }
    }
}

pub(super) fn transport(e: reqwest::Error) -> GraphError {
    // reqwest's error text names the URL (no credentials in it) and the cause.
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    GraphError::Transport(format!("{kind}: {}", e.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_the_accepted_ones() {
        let pairs: Vec<(&str, &str)> = TeamsPresence::ALL.iter().map(|p| (p.availability(), p.activity())).collect();
        assert_eq!(
            pairs,
            [("Available", "Available"), ("Busy", "InACall"), ("Busy", "InAConferenceCall"), ("Away", "Away"), ("DoNotDisturb", "Presenting")]
        );
        for p in TeamsPresence::ALL {
            assert_eq!(TeamsPresence::from_pair(p.availability(), p.activity()), Some(p));
        }
        assert_eq!(TeamsPresence::from_pair("Busy", "Available"), None);
    }

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration(Duration::from_secs(300)), "PT5M");
        assert_eq!(iso_duration(Duration::from_secs(3600)), "PT1H");
        assert_eq!(iso_duration(Duration::from_secs(4 * 3600)), "PT4H");
        assert_eq!(iso_duration(Duration::from_secs(5400)), "PT1H30M");
        assert_eq!(iso_duration(Duration::from_secs(301)), "PT5M1S");
        assert_eq!(iso_duration(Duration::ZERO), "PT0S");
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(s.matches("hunter2") && !s.matches("hunter3") && !s.matches("hunter"));
        let t = AccessToken("eyJ0eXAi".into());
        assert_eq!(format!("{t:?}"), "AccessToken(***)");
        let settings = GraphSettings {
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: s,
            identity_base: IDENTITY_BASE.into(),
            graph_base: GRAPH_BASE.into(),
            scope: GRAPH_SCOPE.into(),
            expiration: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn secret_sources() {
        let dir = std::env::temp_dir().join(format!("drbridge-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "  abc  \nignored\n").unwrap();
        assert_eq!(SecretSource::File(f.clone()).load().unwrap().expose(), "abc");
        std::fs::write(&f, "\n").unwrap();
        let e = SecretSource::File(f.clone()).load().unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = SecretSource::Env("DRBRIDGE_TEST_SURELY_UNSET_VAR".into()).load().unwrap_err();
        assert!(e.to_string().contains("DRBRIDGE_TEST_SURELY_UNSET_VAR is not set"));
        assert_eq!(SecretSource::from_parts(Some(&f), Some("X")), Some(SecretSource::File(f.clone())));
        assert_eq!(SecretSource::from_parts(None, Some("X")), Some(SecretSource::Env("X".into())));
        assert_eq!(SecretSource::from_parts(None, Some("")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_cache_renews_before_expiry() {
        let t0 = Instant::now();
        let mut c = TokenCache::default();
        assert!(c.get(t0).is_none());
        c.store(AccessToken("a".into()), Duration::from_secs(3600), t0);
        assert!(c.get(t0 + Duration::from_secs(3299)).is_some());
        assert!(c.get(t0 + Duration::from_secs(3300)).is_none(), "renewed 5 min before expiry");
        // Short lifetimes renew at half.
        c.store(AccessToken("b".into()), Duration::from_secs(60), t0);
        assert!(c.get(t0 + Duration::from_secs(29)).is_some());
        assert!(c.get(t0 + Duration::from_secs(30)).is_none());
        c.store(AccessToken("c".into()), Duration::from_secs(60), t0);
        c.invalidate();
        assert!(c.get(t0).is_none());
    }

    #[test]
    fn outcomes() {
        let ra = Some(Duration::from_secs(7));
        assert_eq!(OpOutcome::from_status(200, None, false), OpOutcome::Done);
        assert_eq!(OpOutcome::from_status(404, None, true), OpOutcome::Done);
        assert_eq!(OpOutcome::from_status(404, None, false), OpOutcome::Rejected(404));
        assert_eq!(OpOutcome::from_status(429, ra, false), OpOutcome::Throttled(Duration::from_secs(7)));
        assert_eq!(OpOutcome::from_status(429, None, false), OpOutcome::Throttled(DEFAULT_THROTTLE));
        assert_eq!(OpOutcome::from_status(503, ra, false), OpOutcome::Unavailable(ra));
        assert_eq!(OpOutcome::from_status(500, None, false), OpOutcome::Failed);
        assert_eq!(OpOutcome::from_status(401, None, false), OpOutcome::Failed);
        assert_eq!(OpOutcome::from_status(403, None, false), OpOutcome::Rejected(403));
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn urls_are_built_with_escaped_segments() {
        let c = GraphClient::new(GraphSettings {
            tenant: "contoso.example".into(),
            client_id: "cid".into(),
            client_secret: Secret::new("x"),
            identity_base: "http://127.0.0.1:1/".into(),
            graph_base: "http://127.0.0.1:2/v1.0/".into(),
            scope: GRAPH_SCOPE.into(),
            expiration: Duration::from_secs(300),
            request_timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(c.token_url.as_str(), "http://127.0.0.1:1/contoso.example/oauth2/v2.0/token");
        assert_eq!(c.url(&["users", "a#EXT#@b.example", "presence", "setPresence"]).as_str(), "http://127.0.0.1:2/v1.0/users/a%23EXT%23@b.example/presence/setPresence");
        assert_eq!(c.url(&["$batch"]).as_str(), "http://127.0.0.1:2/v1.0/$batch");
        let b = c.op_body(Some(TeamsPresence::InACall));
        assert_eq!(b, serde_json::json!({"sessionId":"cid","availability":"Busy","activity":"InACall","expirationDuration":"PT5M"}));
        assert_eq!(c.op_body(None), serde_json::json!({"sessionId":"cid"}));
        assert!(GraphClient::new(GraphSettings { graph_base: "ftp://x".into(), ..c.s.clone() }).is_err());
    }
}
