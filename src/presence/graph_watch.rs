//! Microsoft Graph calls for the Teams -> PBX presence direction: presence monitor accounts
//! (delegated refresh tokens, rotated on each use), change-notification subscriptions on
//! `/communications/presences` (create, renew, reauthorize, delete) and
//! `getPresencesByUserId`.
//!
//! Presence subscriptions accept delegated `Presence.Read.All` only, so every subscription call
//! runs with the access token of a "presence monitor" user; `getPresencesByUserId` runs with the
//! application token of [`GraphClient::token`]. Refresh tokens, access tokens and the
//! `clientState` are [`Secret`]s / [`AccessToken`]s and never reach a log or an error message.
//!
//! A monitor's first refresh token comes from [`GraphClient::device_login`] (the device
//! authorization grant, run by `drbridge monitor-login`), which checks that the account that
//! signed in is the monitor, and [`write_secret_file`] stores it (0600, temporary file + rename).
//!
//! Also here: RFC 3339 timestamps ([`rfc3339`], [`parse_rfc3339`]) for `expirationDateTime`,
//! without a date crate.

use super::graph::{transport, AccessToken, GraphClient, GraphError, Secret, TokenCache};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Scope of a presence monitor's delegated token.
pub const MONITOR_SCOPE: &str = "https://graph.microsoft.com/Presence.Read.All offline_access";
/// Most users in one presence subscription or one `getPresencesByUserId` (Graph's limit).
pub const PRESENCE_IDS_MAX: usize = 650;
/// Longest `clientState` Graph accepts.
pub const CLIENT_STATE_MAX: usize = 128;

/// A presence monitor account: its delegated refresh token (rotated by the identity platform
/// on each use) and the access token obtained with it. `Debug` is redacted.
#[derive(Debug, Clone)]
pub struct MonitorTokens {
    refresh: Secret,
    cache: TokenCache,
    /// Where a rotated refresh token is written at once ([`write_secret_file`]).
    file: Option<std::path::PathBuf>,
}

impl MonitorTokens {
    pub fn new(refresh_token: Secret) -> MonitorTokens {
        MonitorTokens { refresh: refresh_token, cache: TokenCache::default(), file: None }
    }
    /// The current refresh token.
    pub fn refresh_token(&self) -> &Secret {
        &self.refresh
    }
}

/// The monitors of a [`GraphClient`], by lower-cased UPN. One async lock per monitor serialises
/// its token refreshes: with rotation, two concurrent refreshes with one refresh token would
/// have the second refused.
#[derive(Debug, Default)]
pub struct Monitors(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<MonitorTokens>>>>);

impl Monitors {
    fn get(&self, monitor: &str) -> Option<Arc<tokio::sync::Mutex<MonitorTokens>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&monitor.to_ascii_lowercase()).cloned()
    }
    fn insert(&self, monitor: &str, tokens: MonitorTokens) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(monitor.to_ascii_lowercase(), Arc::new(tokio::sync::Mutex::new(tokens)));
    }
}

/// Checks that `id` looks like an Entra object id (hex digits and dashes).
fn check_id(id: &str) -> Result<(), GraphError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(GraphError::Setup(format!("user id {:?} is not an object id (GUID)", id.chars().take(64).collect::<String>())));
    }
    Ok(())
}

fn check_ids(ids: &[String]) -> Result<(), GraphError> {
    if ids.len() > PRESENCE_IDS_MAX {
        return Err(GraphError::Setup(format!("{} user ids (at most {PRESENCE_IDS_MAX})", ids.len())));
    }
    ids.iter().try_for_each(|id| check_id(id))
}

/// The `resource` of a presence subscription for these users:
/// `/communications/presences?$filter=id in ('ID1','ID2')`. Ids must be object ids (GUIDs), so
/// nothing in them needs quoting; 1 to [`PRESENCE_IDS_MAX`] of them.
pub fn presence_resource(ids: &[String]) -> Result<String, GraphError> {
    if ids.is_empty() {
        return Err(GraphError::Setup("presence subscription without user ids".into()));
    }
    check_ids(ids)?;
    let list: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    Ok(format!("/communications/presences?$filter=id in ({})", list.join(",")))
}

/// The JSON body of `POST /subscriptions` for a presence subscription.
pub fn subscription_body(ids: &[String], notification_url: &str, client_state: &Secret, expiration: SystemTime) -> Result<serde_json::Value, GraphError> {
    let resource = presence_resource(ids)?;
    let url = reqwest::Url::parse(notification_url).map_err(|e| GraphError::Setup(format!("notification URL {notification_url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(GraphError::Setup(format!("notification URL {notification_url:?} is not an http(s) URL")));
    }
    let cs = client_state.expose();
    if cs.is_empty() || cs.len() > CLIENT_STATE_MAX {
        return Err(GraphError::Setup(format!("clientState must be 1 to {CLIENT_STATE_MAX} characters")));
    }
    Ok(serde_json::json!({
        "changeType": "updated",
        "notificationUrl": notification_url,
        "lifecycleNotificationUrl": notification_url,
        "resource": resource,
        "expirationDateTime": rfc3339(expiration),
        "clientState": cs,
    }))
}

/// Lifetime left from now until an `expirationDateTime` in a Graph answer (at least 0).
fn granted(v: &serde_json::Value) -> Result<Duration, GraphError> {
    let exp = v
        .get("expirationDateTime")
        .and_then(|e| e.as_str())
        .and_then(parse_rfc3339)
        .ok_or_else(|| GraphError::Decode("subscription answer without a valid expirationDateTime".into()))?;
    Ok(exp.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

fn json_body(body: &[u8], what: &str) -> Result<serde_json::Value, GraphError> {
    // serde's message may quote parts of the body (which can echo the clientState): keep our own.
    serde_json::from_slice(body).map_err(|_| GraphError::Decode(format!("{what}: answer is not JSON")))
}

impl GraphClient {
    /// Registers a monitor (UPN) with the refresh token an administrator obtained for it
    /// (delegated Presence.Read.All + offline_access). Replaces a previous one.
    pub async fn add_monitor(&self, monitor: &str, refresh_token: Secret) {
        self.monitors.insert(monitor, MonitorTokens::new(refresh_token));
        tracing::debug!(monitor, "graph: presence monitor registered");
    }

    /// Registers a monitor whose refresh token lives in `file`: every rotated token is written
    /// there before it is used (a process killed right after a refresh must not restart with
    /// a token the identity platform no longer takes).
    pub async fn add_monitor_with_file(&self, monitor: &str, refresh_token: Secret, file: std::path::PathBuf) {
        let mut t = MonitorTokens::new(refresh_token);
        t.file = Some(file);
        self.monitors.insert(monitor, t);
        tracing::debug!(monitor, "graph: presence monitor registered");
    }

    /// The current refresh token of a monitor (the identity platform rotates it).
    pub async fn monitor_refresh_token(&self, monitor: &str) -> Option<Secret> {
        let entry = self.monitors.get(monitor)?;
        let m = entry.lock().await;
        Some(m.refresh.clone())
    }

    /// A delegated access token for the monitor: cached until shortly before expiry, else a
    /// `refresh_token` grant; a refresh token in the answer replaces the stored one.
    pub async fn monitor_token(&self, monitor: &str) -> Result<AccessToken, GraphError> {
        let entry = self.monitors.get(monitor).ok_or_else(|| GraphError::Token(format!("monitor {monitor}: no refresh token registered")))?;
        let mut m = entry.lock().await;
        if let Some(t) = m.cache.get(Instant::now()) {
            return Ok(t);
        }
        let form = [
            ("client_id", self.s.client_id.as_str()),
            ("client_secret", self.s.client_secret.expose()),
            ("grant_type", "refresh_token"),
            ("refresh_token", m.refresh.expose()),
            ("scope", MONITOR_SCOPE),
        ];
        let resp = self.http.post(self.token_url.clone()).timeout(self.s.request_timeout).form(&form).send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?;
        let v = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let field = |k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(|x| x.as_str()).unwrap_or("").to_string();
        if !(200..300).contains(&status) {
            // Only the error code: the description is free text.
            let code: String = field("error").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            tracing::debug!(monitor, status, code = %code, "graph: monitor token refused");
            return Err(GraphError::Token(format!("monitor {monitor}: identity platform answered {status} {code}").trim().to_string()));
        }
        let access = field("access_token");
        if access.is_empty() {
            return Err(GraphError::Token(format!("monitor {monitor}: answer without access_token")));
        }
        let secs = match v.as_ref().and_then(|v| v.get("expires_in")) {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3599)
        .clamp(10, 24 * 3600);
        let rotated = field("refresh_token");
        if !rotated.is_empty() {
            m.refresh = Secret::new(rotated);
            if let Some(f) = &m.file {
                if let Err(e) = write_secret_file(f, &m.refresh) {
                    tracing::warn!(monitor, file = %f.display(), error = %e, "cannot write the monitor's rotated refresh token: a restart will need monitor-login");
                }
            }
        }
        let token = AccessToken(access.into());
        m.cache.store(token.clone(), Duration::from_secs(secs), Instant::now());
        tracing::debug!(monitor, expires_in = secs, "graph: new monitor access token");
        Ok(token)
    }

    /// Drops the monitor's cached access token if it is still `used` (after a 401).
    async fn invalidate_monitor_token(&self, monitor: &str, used: &AccessToken) {
        if let Some(entry) = self.monitors.get(monitor) {
            let mut m = entry.lock().await;
            if m.cache.get(Instant::now()).is_some_and(|t| Arc::ptr_eq(&t.0, &used.0)) {
                m.cache.invalidate();
            }
        }
    }

    /// One request with the monitor's delegated token: (status, Retry-After, body).
    async fn send_monitor(
        &self,
        monitor: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Option<Duration>, bytes::Bytes), GraphError> {
        let token = self.monitor_token(monitor).await?;
        let mut req = self.http.request(method, url).timeout(self.s.request_timeout).bearer_auth(token.expose());
        req = match body {
            Some(b) => req.json(b),
            None => req.body(""),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(super::graph::parse_retry_after);
        let bytes = resp.bytes().await.map_err(transport)?;
        if status == 401 {
            self.invalidate_monitor_token(monitor, &token).await;
        }
        Ok((status, retry_after, bytes))
    }

    /// `POST /subscriptions` (monitor token) for the presence of `ids`, notifications and
    /// lifecycle events to `notification_url`, expiring `lifetime` from now. Ok((subscription
    /// id, lifetime granted by Graph)).
    pub async fn create_subscription(
        &self,
        monitor: &str,
        ids: &[String],
        notification_url: &str,
        client_state: &Secret,
        lifetime: Duration,
    ) -> Result<(String, Duration), GraphError> {
        let body = subscription_body(ids, notification_url, client_state, SystemTime::now() + lifetime)?;
        let (status, retry_after, bytes) = self.send_monitor(monitor, reqwest::Method::POST, self.url(&["subscriptions"]), Some(&body)).await?;
        if !(200..300).contains(&status) {
            return Err(Self::status_error(status, retry_after, &bytes));
        }
        let v = json_body(&bytes, "subscription")?;
        let id = match v.get("id").and_then(|i| i.as_str()) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => return Err(GraphError::Decode("subscription answer without id".into())),
        };
        let granted = granted(&v)?;
        tracing::debug!(monitor, subscription = %id, users = ids.len(), granted_secs = granted.as_secs(), "graph: presence subscription created");
        Ok((id, granted))
    }

    /// `PATCH /subscriptions/{id}` with a new `expirationDateTime` (monitor token). Ok(lifetime
    /// granted).
    pub async fn renew_subscription(&self, monitor: &str, id: &str, lifetime: Duration) -> Result<Duration, GraphError> {
        let body = serde_json::json!({ "expirationDateTime": rfc3339(SystemTime::now() + lifetime) });
        let (status, retry_after, bytes) = self.send_monitor(monitor, reqwest::Method::PATCH, self.url(&["subscriptions", id]), Some(&body)).await?;
        if !(200..300).contains(&status) {
            return Err(Self::status_error(status, retry_after, &bytes));
        }
        let granted = granted(&json_body(&bytes, "subscription")?)?;
        tracing::debug!(monitor, subscription = id, granted_secs = granted.as_secs(), "graph: presence subscription renewed");
        Ok(granted)
    }

    /// `POST /subscriptions/{id}/reauthorize` (monitor token), after a `reauthorizationRequired`
    /// lifecycle event.
    pub async fn reauthorize_subscription(&self, monitor: &str, id: &str) -> Result<(), GraphError> {
        let (status, retry_after, bytes) = self.send_monitor(monitor, reqwest::Method::POST, self.url(&["subscriptions", id, "reauthorize"]), None).await?;
        if !(200..300).contains(&status) {
            return Err(Self::status_error(status, retry_after, &bytes));
        }
        tracing::debug!(monitor, subscription = id, "graph: presence subscription reauthorized");
        Ok(())
    }

    /// `DELETE /subscriptions/{id}` (monitor token). A 404 counts as done.
    pub async fn delete_subscription(&self, monitor: &str, id: &str) -> Result<(), GraphError> {
        let (status, retry_after, bytes) = self.send_monitor(monitor, reqwest::Method::DELETE, self.url(&["subscriptions", id]), None).await?;
        if !(200..300).contains(&status) && status != 404 {
            return Err(Self::status_error(status, retry_after, &bytes));
        }
        tracing::debug!(monitor, subscription = id, status, "graph: presence subscription deleted");
        Ok(())
    }

    /// `POST /communications/getPresencesByUserId` (application token, at most
    /// [`PRESENCE_IDS_MAX`] ids): (id, availability, activity) per user, in Graph's order.
    pub async fn get_presences(&self, ids: &[String]) -> Result<Vec<(String, String, String)>, GraphError> {
        check_ids(ids)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = serde_json::json!({ "ids": ids });
        let (status, retry_after, bytes) = self.send_json(self.url(&["communications", "getPresencesByUserId"]), Some(&body)).await?;
        if !(200..300).contains(&status) {
            return Err(Self::status_error(status, retry_after, &bytes));
        }
        let v = json_body(&bytes, "getPresencesByUserId")?;
        let items = v.get("value").and_then(|x| x.as_array()).ok_or_else(|| GraphError::Decode("getPresencesByUserId: answer without value".into()))?;
        let s = |item: &serde_json::Value, k: &str| item.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        items
            .iter()
            .map(|item| match s(item, "id") {
                id if id.is_empty() => Err(GraphError::Decode("getPresencesByUserId: presence without id".into())),
                id => Ok((id, s(item, "availability"), s(item, "activity"))),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// A monitor's first refresh token: the OAuth 2.0 device authorization grant (RFC 8628) of the
// Microsoft identity platform, run by `drbridge monitor-login`.

/// `grant_type` of the device authorization grant's token requests.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Shortest wait between two token polls, whatever the identity platform says.
pub const DEVICE_POLL_MIN: Duration = Duration::from_secs(1);
/// What the identity platform's `slow_down` adds to the polling interval (RFC 8628 3.5).
pub const DEVICE_SLOW_DOWN: Duration = Duration::from_secs(5);

/// The scope asked for at a monitor's sign-in: [`MONITOR_SCOPE`] plus `openid profile`, so that
/// an `id_token` says who signed in.
pub fn device_login_scope() -> String {
    format!("{MONITOR_SCOPE} openid profile")
}

/// What the user must do to sign in: open `verification_uri` and enter `user_code`. `message`
/// is the identity platform's own sentence saying so. The device code itself stays inside
/// [`GraphClient::device_login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCode {
    pub user_code: String,
    pub verification_uri: String,
    pub message: String,
    /// How long the codes are good for.
    pub expires_in: Duration,
    /// The polling interval (at least [`DEVICE_POLL_MIN`]).
    pub interval: Duration,
}

/// One answer to a token poll of the device authorization grant, classified (sans-IO).
#[derive(Debug, Clone, PartialEq, Eq)]
enum DevicePoll {
    /// `authorization_pending`: nobody signed in yet.
    Pending,
    /// `slow_down`: poll less often.
    SlowDown,
    /// 5xx, 429 or `temporarily_unavailable`: try again at the next interval.
    Unavailable(String),
    /// Signed in: the refresh token and the `id_token`.
    Done { refresh: Secret, id_token: String },
    /// Any other answer: the sign-in is over (the error code or what was missing; no secrets).
    Failed(String),
}

/// The `error` code of an identity platform answer, reduced to the characters a code has
/// (its `error_description` is free text and stays out).
fn error_code(v: Option<&serde_json::Value>) -> String {
    let code = v.and_then(|v| v.get("error")).and_then(|e| e.as_str()).unwrap_or("");
    code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect()
}

/// A number of seconds given as a JSON number or string.
fn seconds(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn classify_device_poll(status: u16, body: &[u8]) -> DevicePoll {
    let v = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = |k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(|x| x.as_str()).unwrap_or("").to_string();
    if (200..300).contains(&status) {
        let refresh = field("refresh_token");
        if refresh.is_empty() {
            return DevicePoll::Failed("answer without refresh_token (was offline_access granted?)".into());
        }
        let id_token = field("id_token");
        if id_token.is_empty() {
            return DevicePoll::Failed("answer without id_token (was openid granted?)".into());
        }
        return DevicePoll::Done { refresh: Secret::new(refresh), id_token };
    }
    let code = error_code(v.as_ref());
    match code.as_str() {
        "authorization_pending" => DevicePoll::Pending,
        "slow_down" => DevicePoll::SlowDown,
        "temporarily_unavailable" => DevicePoll::Unavailable(code),
        _ if status >= 500 || status == 429 => DevicePoll::Unavailable(format!("{status} {code}").trim().to_string()),
        "authorization_declined" => DevicePoll::Failed("the sign-in was declined (authorization_declined)".into()),
        "expired_token" => DevicePoll::Failed("the code expired before anyone signed in (expired_token)".into()),
        "bad_verification_code" => DevicePoll::Failed("the identity platform does not know the device code (bad_verification_code)".into()),
        _ => DevicePoll::Failed(format!("identity platform answered {status} {code}").trim().to_string()),
    }
}

/// A claim value from the network, fit to be shown in a message: no control characters, at
/// most 256 characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// Who an `id_token` says signed in: its `preferred_username` claim, else `upn`. The token is
/// a JWT (`header.payload.signature`, base64url); the signature is not checked (the token came
/// over TLS straight from the token endpoint, in answer to our own request). `None` when the
/// token does not parse or names nobody.
pub fn id_token_username(id_token: &str) -> Option<String> {
    use base64::Engine as _;
    let mut parts = id_token.trim().split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    ["preferred_username", "upn"]
        .iter()
        .filter_map(|k| claims.get(*k).and_then(|v| v.as_str()))
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_string)
}

/// The signed-in user must be the monitor (case-insensitive UPN): an administrator who signs in
/// with their own account by mistake must not become the monitor.
fn check_signed_in(monitor: &str, id_token: &str) -> Result<(), GraphError> {
    match id_token_username(id_token) {
        Some(who) if who.eq_ignore_ascii_case(monitor) => Ok(()),
        Some(who) => Err(GraphError::Token(format!("signed in as {}, not the monitor {monitor}", printable(&who)))),
        None => Err(GraphError::Token(format!("monitor {monitor}: the id_token names no user (preferred_username / upn)"))),
    }
}

impl GraphClient {
    /// The monitor's first refresh token, through the device authorization grant: asks the
    /// identity platform for a device code (scope [`device_login_scope`]), hands what the user
    /// must do to `on_code`, then polls the token endpoint every `interval` (at least
    /// [`DEVICE_POLL_MIN`]; `slow_down` adds [`DEVICE_SLOW_DOWN`]) until someone signs in, the
    /// sign-in fails or the code expires. The account that signed in must be `monitor`. The
    /// refresh token is registered with [`GraphClient::add_monitor`] and returned; the caller
    /// stores it (see [`write_secret_file`]).
    pub async fn device_login(&self, monitor: &str, on_code: impl FnOnce(&DeviceCode)) -> Result<Secret, GraphError> {
        let mut url = self.token_url.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop().push("devicecode");
        }
        let scope = device_login_scope();
        let form = [("client_id", self.s.client_id.as_str()), ("scope", scope.as_str())];
        let resp = self.http.post(url).timeout(self.s.request_timeout).form(&form).send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?;
        let v = serde_json::from_slice::<serde_json::Value>(&body).ok();
        if !(200..300).contains(&status) {
            let code = error_code(v.as_ref());
            return Err(GraphError::Token(format!("monitor {monitor}: device code request: identity platform answered {status} {code}").trim().to_string()));
        }
        let field = |k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(|x| x.as_str()).unwrap_or("").to_string();
        // `verification_url` is the older spelling (v1 endpoints).
        let verification_uri = Some(field("verification_uri")).filter(|u| !u.is_empty()).unwrap_or_else(|| field("verification_url"));
        let (device_code, user_code) = (field("device_code"), field("user_code"));
        if device_code.is_empty() || user_code.is_empty() || verification_uri.is_empty() {
            return Err(GraphError::Token(format!("monitor {monitor}: device code answer without device_code, user_code or verification_uri")));
        }
        let expires_in = Duration::from_secs(seconds(v.as_ref().and_then(|v| v.get("expires_in"))).unwrap_or(900).clamp(1, 24 * 3600));
        let interval = Duration::from_secs(seconds(v.as_ref().and_then(|v| v.get("interval"))).unwrap_or(5).min(600)).max(DEVICE_POLL_MIN);
        let mut message = field("message");
        if message.is_empty() {
            message = format!("To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate.");
        }
        let code = DeviceCode { user_code: printable(&user_code), verification_uri: printable(&verification_uri), message: printable(&message), expires_in, interval };
        let device_code = Secret::new(device_code);
        tracing::info!(monitor, expires_in = expires_in.as_secs(), "graph: waiting for the monitor's sign-in (device code)");
        on_code(&code);

        let deadline = tokio::time::Instant::now() + expires_in;
        let mut interval = interval;
        let mut last_trouble: Option<String> = None;
        loop {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() >= deadline {
                let why = last_trouble.map(|t| format!(" (last answer: {t})")).unwrap_or_default();
                return Err(GraphError::Token(format!("monitor {monitor}: the code expired before anyone signed in (expired_token){why}")));
            }
            let form = [
                ("grant_type", DEVICE_CODE_GRANT),
                ("client_id", self.s.client_id.as_str()),
                ("client_secret", self.s.client_secret.expose()),
                ("device_code", device_code.expose()),
            ];
            let sent = self.http.post(self.token_url.clone()).timeout(self.s.request_timeout).form(&form).send().await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(b) => classify_device_poll(status, &b),
                        Err(e) => DevicePoll::Unavailable(transport(e).to_string()),
                    }
                }
                Err(e) => DevicePoll::Unavailable(transport(e).to_string()),
            };
            match answer {
                DevicePoll::Pending => {}
                DevicePoll::SlowDown => {
                    interval += DEVICE_SLOW_DOWN;
                    tracing::debug!(monitor, interval_secs = interval.as_secs(), "graph: device code poll: slow_down");
                }
                DevicePoll::Unavailable(why) => {
                    tracing::debug!(monitor, answer = %why, "graph: device code poll failed; polling on");
                    last_trouble = Some(why);
                }
                DevicePoll::Failed(why) => return Err(GraphError::Token(format!("monitor {monitor}: {why}"))),
                DevicePoll::Done { refresh, id_token } => {
                    check_signed_in(monitor, &id_token)?;
                    self.add_monitor(monitor, refresh.clone()).await;
                    tracing::info!(monitor, "graph: presence monitor signed in");
                    return Ok(refresh);
                }
            }
        }
    }
}

/// Writes a secret (a refresh token) to `path` as its first line, readable by the owner only
/// (0600): into a new temporary file beside it, synced, then renamed over `path`, so that a
/// reader sees the old token or the new one, never a part. The parent directory is created
/// (0700) if missing.
pub fn write_secret_file(path: &std::path::Path, secret: &Secret) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} is not a file name", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(&dir)?;
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A temporary file left by a crash may have other permissions: start from a new file.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(secret.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself survives a crash once the directory is synced (best effort).
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-24T19:00:00.000Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let nanos: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let millis = nanos.div_euclid(1_000_000);
    let secs = millis.div_euclid(1000) as i64;
    let ms = millis.rem_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Parses an RFC 3339 timestamp (`Z` or a numeric offset, any number of fraction digits, as
/// Graph writes them: `2026-11-24T19:00:00.1234567Z`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || !b.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset: i64 = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + sec) - offset;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos as u32))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?.checked_add(Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_868_800, 0)), "2000-03-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(at(1_709_210_096, 789)), "2024-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(at(1_795_546_800, 0)), "2026-11-24T19:00:00.000Z");
        assert_eq!(rfc3339(at(4_102_444_799, 999)), "2099-12-31T23:59:59.999Z");
        // Sub-millisecond parts are cut, not rounded.
        assert_eq!(rfc3339(at(0, 1) + Duration::from_micros(999)), "1970-01-01T00:00:00.001Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1969-12-31T23:59:59.000Z");
    }

    #[test]
    fn rfc3339_parses_graph_forms() {
        assert_eq!(parse_rfc3339("2026-11-24T19:00:00.000Z"), Some(at(1_795_546_800, 0)));
        assert_eq!(parse_rfc3339("2026-11-24T19:00:00Z"), Some(at(1_795_546_800, 0)));
        // Graph writes 7 fraction digits.
        assert_eq!(parse_rfc3339("2026-11-24T19:00:00.1234567Z"), Some(at(1_795_546_800, 0) + Duration::from_nanos(123_456_700)));
        assert_eq!(parse_rfc3339("2026-11-24T19:00:00.1234567891Z"), Some(at(1_795_546_800, 0) + Duration::from_nanos(123_456_789)));
        assert_eq!(parse_rfc3339("2026-11-24T20:30:00+01:30"), Some(at(1_795_546_800, 0)));
        assert_eq!(parse_rfc3339("2026-11-24T17:00:00-02:00"), Some(at(1_795_546_800, 0)));
        assert_eq!(parse_rfc3339("2024-02-29t12:34:56.789z"), Some(at(1_709_210_096, 789)));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.500Z"), Some(UNIX_EPOCH - Duration::from_millis(500)));
        for bad in [
            "",
            "2026-11-24",
            "2026-11-24T19:00:00",
            "2026-11-24T19:00:00.Z",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T19:60:00Z",
            "2026-11-24T19:00:00+0100",
            "2026-11-24T19:00:00+24:00",
            "2026-11-24T19:00:00Zjunk",
            "2026-1a-24T19:00:00Z",
            "+026-11-24T19:00:00Z",
            "2026-11-24T19:00:00.1é",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        // Every day from 1970 to 2100 and then some, at a varying time of day.
        for day in (-800..47_500i64).step_by(7) {
            let secs = day * 86_400 + (day.rem_euclid(86_400) * 7919) % 86_400;
            let t = if secs >= 0 { UNIX_EPOCH + Duration::from_secs(secs as u64) } else { UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) };
            let t = t + Duration::from_millis((day.rem_euclid(1000)) as u64);
            let s = rfc3339(t);
            assert_eq!(parse_rfc3339(&s), Some(t), "{s}");
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            assert!(d >= 1 && d <= days_in_month(y, m));
        }
        let now = SystemTime::now();
        let back = parse_rfc3339(&rfc3339(now)).unwrap();
        assert!(now.duration_since(back).unwrap() < Duration::from_millis(1));
    }

    #[test]
    fn resource_filter() {
        let ids = vec!["6e7c2b2e-1f0a-4c1e-9d1b-0a1b2c3d4e5f".to_string(), "ABCDEF01-0000-0000-0000-000000000000".to_string()];
        assert_eq!(
            presence_resource(&ids).unwrap(),
            "/communications/presences?$filter=id in ('6e7c2b2e-1f0a-4c1e-9d1b-0a1b2c3d4e5f','ABCDEF01-0000-0000-0000-000000000000')"
        );
        assert_eq!(presence_resource(&ids[..1]).unwrap(), "/communications/presences?$filter=id in ('6e7c2b2e-1f0a-4c1e-9d1b-0a1b2c3d4e5f')");
        for bad in ["a') or id in ('b", "x'", "", "6e7c2b2e 1f0a", "alice@contoso.example", "g0000000-0000-0000-0000-000000000000"] {
            let e = presence_resource(&[bad.to_string()]).unwrap_err();
            assert!(matches!(e, GraphError::Setup(_)), "{bad:?}: {e}");
        }
        assert!(matches!(presence_resource(&[]), Err(GraphError::Setup(_))));
        let many: Vec<String> = (0..PRESENCE_IDS_MAX + 1).map(|i| format!("{i:08x}-0000-0000-0000-000000000000")).collect();
        assert!(presence_resource(&many[..PRESENCE_IDS_MAX]).is_ok());
        assert!(matches!(presence_resource(&many), Err(GraphError::Setup(_))));
    }

    #[test]
    fn subscription_bodies() {
        let ids = vec!["00000000-0000-0000-0000-0000000000a1".to_string()];
        let cs = Secret::new("state-xyz");
        let b = subscription_body(&ids, "https://sbc.example/graph/webhook", &cs, at(1_795_546_800, 0)).unwrap();
        assert_eq!(
            b,
            serde_json::json!({
                "changeType": "updated",
                "notificationUrl": "https://sbc.example/graph/webhook",
                "lifecycleNotificationUrl": "https://sbc.example/graph/webhook",
                "resource": "/communications/presences?$filter=id in ('00000000-0000-0000-0000-0000000000a1')",
                "expirationDateTime": "2026-11-24T19:00:00.000Z",
                "clientState": "state-xyz",
            })
        );
        assert!(subscription_body(&ids, "not a url", &cs, UNIX_EPOCH).is_err());
        assert!(subscription_body(&ids, "ftp://x/", &cs, UNIX_EPOCH).is_err());
        let long = Secret::new("x".repeat(CLIENT_STATE_MAX + 1));
        let e = subscription_body(&ids, "https://sbc.example/", &long, UNIX_EPOCH).unwrap_err();
        assert!(!e.to_string().contains("xxxx"), "{e}");
    }

    #[test]
    fn granted_lifetime_is_never_negative() {
        let past = serde_json::json!({ "expirationDateTime": "2000-01-01T00:00:00.0000000Z" });
        assert_eq!(granted(&past).unwrap(), Duration::ZERO);
        let later = serde_json::json!({ "expirationDateTime": rfc3339(SystemTime::now() + Duration::from_secs(3600)) });
        let g = granted(&later).unwrap();
        assert!(g > Duration::from_secs(3590) && g <= Duration::from_secs(3600), "{g:?}");
        assert!(matches!(granted(&serde_json::json!({})), Err(GraphError::Decode(_))));
    }

    #[test]
    fn monitors_are_case_insensitive_and_redacted() {
        let m = Monitors::default();
        m.insert("Monitor1@Contoso.example", MonitorTokens::new(Secret::new("rt-secret")));
        assert!(m.get("monitor1@contoso.example").is_some());
        assert!(m.get("monitor2@contoso.example").is_none());
        assert!(!format!("{m:?}").contains("rt-secret"));
    }

    fn jwt(claims: &serde_json::Value) -> String {
        use base64::Engine as _;
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.", b(br#"{"alg":"none","typ":"JWT"}"#), b(claims.to_string().as_bytes()))
    }

    #[test]
    fn id_token_username_reads_preferred_username_or_upn() {
        let t = jwt(&serde_json::json!({"aud": "app", "preferred_username": "Monitor1@Contoso.example", "upn": "other@contoso.example", "name": "Monitor 1"}));
        assert_eq!(id_token_username(&t).as_deref(), Some("Monitor1@Contoso.example"));
        let t = jwt(&serde_json::json!({"upn": "monitor1@contoso.example"}));
        assert_eq!(id_token_username(&t).as_deref(), Some("monitor1@contoso.example"));
        // An empty preferred_username falls back to upn.
        let t = jwt(&serde_json::json!({"preferred_username": " ", "upn": "monitor1@contoso.example"}));
        assert_eq!(id_token_username(&t).as_deref(), Some("monitor1@contoso.example"));
        // A signed token and a padded payload read the same.
        let signed = format!("{}sig-nature", jwt(&serde_json::json!({"preferred_username": "a@b.example"})));
        assert_eq!(id_token_username(&signed).as_deref(), Some("a@b.example"));
        let parts: Vec<&str> = signed.split('.').collect();
        let padded = format!("{}.{}==.{}", parts[0], parts[1], parts[2]);
        assert_eq!(id_token_username(&padded).as_deref(), Some("a@b.example"));
    }

    #[test]
    fn id_token_username_without_the_claim_is_none() {
        for claims in [
            serde_json::json!({"name": "Monitor 1", "oid": "00000000-0000-0000-0000-000000000001"}),
            serde_json::json!({"preferred_username": ""}),
            serde_json::json!({"preferred_username": 42, "upn": null}),
            serde_json::json!(["preferred_username", "a@b.example"]),
        ] {
            assert_eq!(id_token_username(&jwt(&claims)), None, "{claims}");
        }
    }

    #[test]
    fn id_token_username_of_garbage_is_none() {
        use base64::Engine as _;
        let not_json = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"preferred_username=a@b.example");
        for bad in [
            String::new(),
            "not a token".into(),
            "a.b".into(),
            "..".into(),
            "eyJhbGciOiJub25lIn0.!!!.".into(),
            format!("eyJhbGciOiJub25lIn0.{not_json}."),
            "eyJhbGciOiJub25lIn0.eyJwcmVmZXJyZWRfdXNlcm5hbWUiOiJhQGIuZXhhbXBsZSJ9".into(),
        ] {
            assert_eq!(id_token_username(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_monitor_may_sign_in() {
        let monitor = "presence-monitor-1@contoso.example";
        assert!(check_signed_in(monitor, &jwt(&serde_json::json!({"preferred_username": "Presence-Monitor-1@CONTOSO.example"}))).is_ok());
        let e = check_signed_in(monitor, &jwt(&serde_json::json!({"preferred_username": "admin@contoso.example"}))).unwrap_err();
        assert_eq!(e, GraphError::Token(format!("signed in as admin@contoso.example, not the monitor {monitor}")));
        // A claim with control characters is shown without them.
        let e = check_signed_in(monitor, &jwt(&serde_json::json!({"preferred_username": "ev\u{1b}[2Jil@x.example"}))).unwrap_err();
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
        assert!(matches!(check_signed_in(monitor, "garbage"), Err(GraphError::Token(_))));
    }

    #[test]
    fn device_poll_answers() {
        let err = |code: &str| serde_json::json!({"error": code, "error_description": "AADSTS70016: secret-ish free text"}).to_string();
        assert_eq!(classify_device_poll(400, err("authorization_pending").as_bytes()), DevicePoll::Pending);
        assert_eq!(classify_device_poll(400, err("slow_down").as_bytes()), DevicePoll::SlowDown);
        assert!(matches!(classify_device_poll(503, b"<html>"), DevicePoll::Unavailable(_)));
        assert!(matches!(classify_device_poll(400, err("temporarily_unavailable").as_bytes()), DevicePoll::Unavailable(_)));
        for code in ["authorization_declined", "expired_token", "bad_verification_code", "invalid_client", "invalid_grant"] {
            match classify_device_poll(400, err(code).as_bytes()) {
                DevicePoll::Failed(why) => assert!(why.contains(code) && !why.contains("AADSTS"), "{why}"),
                other => panic!("{code}: {other:?}"),
            }
        }
        let ok = serde_json::json!({"access_token": "at", "refresh_token": "rt", "id_token": "h.p.", "expires_in": 3599}).to_string();
        assert_eq!(classify_device_poll(200, ok.as_bytes()), DevicePoll::Done { refresh: Secret::new("rt"), id_token: "h.p.".into() });
        let no_refresh = serde_json::json!({"access_token": "at", "id_token": "h.p."}).to_string();
        assert!(matches!(classify_device_poll(200, no_refresh.as_bytes()), DevicePoll::Failed(w) if w.contains("refresh_token")));
        let no_id = serde_json::json!({"access_token": "at", "refresh_token": "rt-secret"}).to_string();
        assert!(matches!(classify_device_poll(200, no_id.as_bytes()), DevicePoll::Failed(w) if w.contains("id_token") && !w.contains("rt-secret")));
        assert!(device_login_scope().starts_with(MONITOR_SCOPE) && device_login_scope().ends_with(" openid profile"));
    }

    #[test]
    fn secret_files_are_private_and_replaced_whole() {
        let base = std::env::temp_dir().join(format!("drbridge-secret-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&base);
        let path = base.join("tokens").join("monitor-1.token");
        write_secret_file(&path, &Secret::new("rt-1")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "rt-1\n");
        write_secret_file(&path, &Secret::new("rt-2")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "rt-2\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o077, 0);
        }
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("monitor-1.token")], "no temporary file left");
        assert!(write_secret_file(&base.join(".."), &Secret::new("x")).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
