//! A local stand-in for the Microsoft identity platform and Microsoft Graph (presence), on
//! 127.0.0.1. It issues client-credentials tokens, answers `GET /users/{upn}`,
//! `setPresence`, `clearPresence` and `$batch`, keeps the presence it was told per user, and
//! records every request (method, path, body, arrival time, status; `$batch` items are recorded
//! one by one as well). It can be told to answer 429 with Retry-After, 503, or to be slow.
//!
//! The Teams -> PBX direction too: presence monitor accounts (`refresh_token` grant with
//! rotation, delegated tokens), presence subscriptions (`POST /subscriptions` with Graph's
//! validation request to the notification URL, `PATCH`, `DELETE`, `/reauthorize`),
//! `getPresencesByUserId`, and change / lifecycle notifications sent on a test's request.
//! A monitor's first sign-in: the device authorization grant (`/devicecode`, then
//! `grant_type=urn:ietf:params:oauth:grant-type:device_code` polls answered
//! `authorization_pending` until a test approves or declines the user code).
//!
//! Self-contained (only axum, tokio, serde_json, reqwest, rustls) so the benchmark can include it by path.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One request as the stub saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path as received (percent-encoded), e.g. `/v1.0/users/u1/presence/setPresence`.
    pub path: String,
    pub query: String,
    pub body: String,
    /// `Authorization` header value.
    pub auth: Option<String>,
    pub at: Instant,
    pub status: u16,
    /// An item of a `$batch` (its `at` is the arrival of the batch).
    pub in_batch: bool,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn is_presence_op(&self) -> bool {
        is_presence_path(&self.path)
    }
    /// The user segment of a presence path.
    pub fn user(&self) -> Option<String> {
        let rest = self.path.split("/users/").nth(1)?;
        Some(percent_decode(rest.split('/').next()?))
    }
}

fn is_presence_path(p: &str) -> bool {
    p.ends_with("/presence/setPresence") || p.ends_with("/presence/clearPresence")
}

/// A canned answer for the next presence operation(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (429, 503, 500, ...) with an optional `Retry-After` in seconds.
    Status { status: u16, retry_after: Option<u64> },
}

impl Fault {
    pub fn throttle(secs: u64) -> Fault {
        Fault::Status { status: 429, retry_after: Some(secs) }
    }
    pub fn unavailable(retry_after: Option<u64>) -> Fault {
        Fault::Status { status: 503, retry_after }
    }
}

/// The presence session drbridge holds for a user, as Graph keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub availability: String,
    pub activity: String,
    pub session_id: String,
    pub expiration: String,
}

#[derive(Debug, Default)]
struct State {
    log: Vec<Recorded>,
    tokens: Vec<String>,
    revoked: bool,
    expires_in: u64,
    users: HashMap<String, String>,
    sessions: HashMap<String, Session>,
    faults: VecDeque<Fault>,
    user_faults: HashMap<String, VecDeque<Fault>>,
    /// Answer for every presence operation without a queued fault ("Graph down").
    sticky: Option<Fault>,
    delay: Duration,
    presence_ops: usize,
    /// Current refresh token -> monitor UPN (lower case).
    refresh_tokens: HashMap<String, String>,
    /// Monitor access token -> monitor UPN (lower case).
    monitor_tokens: HashMap<String, String>,
    monitor_grants: usize,
    subscriptions: Vec<StubSubscription>,
    subscriptions_created: u64,
    /// User-set presence (what the user chose in Teams), by object id.
    user_presence: HashMap<String, (String, String)>,
    /// Answers for the next subscription / getPresencesByUserId requests.
    watch_faults: VecDeque<Fault>,
    validation_timeout: Duration,
    /// Device authorization requests (`/devicecode`), in order.
    device_auths: Vec<DeviceAuth>,
    /// `interval` of device code answers, seconds.
    device_interval: u64,
    /// `expires_in` of device code answers, seconds.
    device_expires_in: u64,
}

/// Where a device code stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuthState {
    /// Nobody signed in yet: polls get `authorization_pending`.
    Pending,
    /// This user (lower-case UPN) signed in; the next poll gets the tokens.
    Approved(String),
    /// The user declined: polls get `authorization_declined`.
    Declined,
    /// The tokens were issued (the device code is used up: `invalid_grant`).
    Redeemed,
}

/// One device authorization request as the stub keeps it.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    pub device_code: String,
    pub user_code: String,
    pub scope: String,
    pub issued: Instant,
    pub expires_in: Duration,
    pub state: DeviceAuthState,
}

struct Inner {
    tenant: String,
    client_id: String,
    client_secret: String,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
    /// Client for validation requests and notifications to webhooks.
    http: reqwest::Client,
}

/// The running stub. Dropping it stops the server.
pub struct GraphStub {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for GraphStub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Graph's accepted (availability, activity) pairs.
pub const PAIRS: [(&str, &str); 5] =
    [("Available", "Available"), ("Busy", "InACall"), ("Busy", "InAConferenceCall"), ("Away", "Away"), ("DoNotDisturb", "Presenting")];

/// `PT..H..M..S` to seconds.
pub fn parse_iso_duration(s: &str) -> Option<u64> {
    let mut rest = s.strip_prefix("PT")?;
    if rest.is_empty() {
        return None;
    }
    let mut total = 0u64;
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..n_end].parse().ok()?;
        let unit = rest[n_end..].chars().next()?;
        total += n * match unit {
            'H' => 3600,
            'M' => 60,
            'S' => 1,
            _ => return None,
        };
        rest = &rest[n_end + 1..];
    }
    Some(total)
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_decode(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " "))))
        .collect()
}

fn json(status: u16, v: serde_json::Value) -> (u16, Vec<(String, String)>, serde_json::Value) {
    (status, Vec::new(), v)
}

fn graph_error(status: u16, code: &str) -> (u16, Vec<(String, String)>, serde_json::Value) {
    json(status, serde_json::json!({"error": {"code": code, "message": code}}))
}

impl GraphStub {
    /// Starts on 127.0.0.1 (a free port) for this tenant / app.
    pub async fn start(tenant: &str, client_id: &str, client_secret: &str) -> GraphStub {
        let inner = Arc::new(Inner {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            state: Mutex::new(State { expires_in: 3599, validation_timeout: VALIDATION_TIMEOUT, device_interval: 1, device_expires_in: 900, ..Default::default() }),
            changed: tokio::sync::Notify::new(),
            http: plain_http_client(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind graph stub");
        let addr = listener.local_addr().expect("local addr");
        let i2 = inner.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let inner = i2.clone();
            async move { handle(inner, method, uri, headers, body).await }
        });
        let stop = serve_until_stopped(listener, app);
        GraphStub { addr, inner, stop: Some(stop) }
    }

    /// Settings of a drbridge Graph client pointed at this stand-in (requests time out after
    /// `request_timeout`).
    pub fn client_settings(&self, tenant: &str, client_id: &str, secret: &str, request_timeout: Duration) -> drbridge::presence::graph::GraphSettings {
        drbridge::presence::graph::GraphSettings {
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret: drbridge::presence::graph::Secret::new(secret),
            identity_base: self.identity_base(),
            graph_base: self.graph_base(),
            scope: drbridge::presence::graph::GRAPH_SCOPE.into(),
            expiration: Duration::from_secs(3600),
            request_timeout,
        }
    }

    pub fn identity_base(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn graph_base(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap()
    }

    pub fn add_user(&self, upn: &str, id: &str) {
        self.st().users.insert(upn.to_ascii_lowercase(), id.to_string());
    }
    /// `expires_in` of the tokens issued from now on.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.st().expires_in = secs;
    }
    /// Every token issued so far is refused (401) until a new one is fetched.
    pub fn revoke_tokens(&self) {
        self.st().revoked = true;
    }
    /// The next presence operations (single or `$batch` items, any user) get these answers.
    pub fn push_fault(&self, f: Fault) {
        self.st().faults.push_back(f);
    }
    /// The next presence operations for this user get these answers.
    pub fn push_user_fault(&self, user_id: &str, f: Fault) {
        self.st().user_faults.entry(user_id.to_string()).or_default().push_back(f);
    }
    /// Every presence operation without a queued fault gets this answer until cleared with
    /// `None` ("Graph down": e.g. `Some(Fault::unavailable(None))`).
    pub fn set_sticky_fault(&self, f: Option<Fault>) {
        self.st().sticky = f;
    }
    /// Every request waits this long before it is answered ("slow Graph").
    pub fn set_delay(&self, d: Duration) {
        self.st().delay = d;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.st().log.clone()
    }
    pub fn token_requests(&self) -> Vec<Recorded> {
        self.st().log.iter().filter(|r| r.path.ends_with("/oauth2/v2.0/token")).cloned().collect()
    }
    /// setPresence / clearPresence operations, `$batch` items included, in arrival order.
    pub fn presence_ops(&self) -> Vec<Recorded> {
        self.st().log.iter().filter(|r| r.is_presence_op()).cloned().collect()
    }
    pub fn presence_op_count(&self) -> usize {
        self.st().presence_ops
    }
    pub fn session(&self, user_id: &str) -> Option<Session> {
        self.st().sessions.get(user_id).cloned()
    }
    pub fn sessions(&self) -> HashMap<String, Session> {
        self.st().sessions.clone()
    }

    /// Waits (bounded) until `cond` holds; re-checked after every request the stub answers.
    pub async fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&GraphStub) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(self);
            }
        }
    }
}

async fn handle(inner: Arc<Inner>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let delay = inner.state.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (status, hdrs, value) = if method == Method::POST && path == "/v1.0/subscriptions" {
        // Graph validates the notification URL before it answers: not under the state lock.
        let answer = create_subscription(&inner, &body_text, auth.as_deref()).await;
        let mut st = inner.state.lock().unwrap();
        st.log.push(Recorded { method: method.to_string(), path: path.clone(), query, body: body_text, auth, at, status: answer.0, in_batch: false });
        answer
    } else {
        let mut st = inner.state.lock().unwrap();
        let answer = route(&inner, &mut st, &method, &path, &query, &body_text, auth.as_deref(), at);
        st.log.push(Recorded { method: method.to_string(), path: path.clone(), query, body: body_text, auth, at, status: answer.0, in_batch: false });
        if is_presence_path(&path) {
            st.presence_ops += 1;
        }
        answer
    };
    inner.changed.notify_waiters();
    let mut resp = if value.is_null() { StatusCode::from_u16(status).unwrap().into_response() } else { (StatusCode::from_u16(status).unwrap(), axum::Json(value)).into_response() };
    for (k, v) in hdrs {
        resp.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    resp
}

type Answer = (u16, Vec<(String, String)>, serde_json::Value);

#[allow(clippy::too_many_arguments)]
fn route(inner: &Inner, st: &mut State, method: &Method, path: &str, query: &str, body: &str, auth: Option<&str>, at: Instant) -> Answer {
    let token_path = format!("/{}/oauth2/v2.0/token", inner.tenant);
    if path == format!("/{}/oauth2/v2.0/devicecode", inner.tenant) {
        if method != Method::POST {
            return json(405, serde_json::Value::Null);
        }
        return device_code_request(inner, st, &form_decode(body));
    }
    if path == token_path {
        if method != Method::POST {
            return json(405, serde_json::Value::Null);
        }
        let f = form_decode(body);
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        if get("grant_type") == "refresh_token" {
            return refresh_grant(inner, st, &f);
        }
        if get("grant_type") == DEVICE_CODE_GRANT {
            return device_code_grant(inner, st, &f);
        }
        if get("grant_type") != "client_credentials" {
            return json(400, serde_json::json!({"error": "unsupported_grant_type"}));
        }
        if get("client_id") != inner.client_id || get("client_secret") != inner.client_secret {
            return json(401, serde_json::json!({"error": "invalid_client"}));
        }
        if get("scope") != "https://graph.microsoft.com/.default" {
            return json(400, serde_json::json!({"error": "invalid_scope"}));
        }
        let tok = format!("stub-token-{}", st.tokens.len() + 1);
        st.tokens.push(tok.clone());
        st.revoked = false;
        return json(200, serde_json::json!({"token_type": "Bearer", "expires_in": st.expires_in, "ext_expires_in": st.expires_in, "access_token": tok}));
    }
    let Some(rest) = path.strip_prefix("/v1.0") else {
        return graph_error(404, "NotFound");
    };
    if rest == "/subscriptions" || rest.starts_with("/subscriptions/") || rest == "/communications/getPresencesByUserId" {
        return watch_route(inner, st, method, rest, body, auth);
    }
    // Bearer check: only the newest token is valid (unless revoked).
    let valid = auth.and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|t| !st.revoked && st.tokens.last().is_some_and(|l| l == t));
    if !valid {
        return graph_error(401, "InvalidAuthenticationToken");
    }
    if rest == "/$batch" && method == Method::POST {
        return batch(inner, st, body, at);
    }
    if method == Method::GET {
        if let Some(upn) = rest.strip_prefix("/users/") {
            if upn.contains('/') {
                return graph_error(404, "NotFound");
            }
            let upn = percent_decode(upn).to_ascii_lowercase();
            if !query.contains("select=id") {
                return graph_error(400, "BadRequest");
            }
            return match st.users.get(&upn) {
                Some(id) => json(200, serde_json::json!({"id": id})),
                None => graph_error(404, "Request_ResourceNotFound"),
            };
        }
    }
    if method == Method::POST && rest.starts_with("/users/") {
        return presence_op(inner, st, rest, body);
    }
    graph_error(404, "NotFound")
}

fn presence_op(inner: &Inner, st: &mut State, rest: &str, body: &str) -> Answer {
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let (user, op) = match parts.as_slice() {
        ["users", user, "presence", op] => (percent_decode(user), *op),
        _ => return graph_error(404, "NotFound"),
    };
    let fault = st.user_faults.get_mut(&user).and_then(|q| q.pop_front()).or_else(|| st.faults.pop_front()).or_else(|| st.sticky.clone());
    if let Some(Fault::Status { status, retry_after }) = fault {
        let mut a = graph_error(status, if status == 429 { "TooManyRequests" } else { "ServiceUnavailable" });
        if let Some(s) = retry_after {
            a.1.push(("Retry-After".into(), s.to_string()));
        }
        return a;
    }
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return graph_error(400, "BadRequest"),
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    if s("sessionId") != inner.client_id {
        return graph_error(400, "BadRequest");
    }
    match op {
        "setPresence" => {
            let (av, ac, exp) = (s("availability"), s("activity"), s("expirationDuration"));
            if !PAIRS.contains(&(av.as_str(), ac.as_str())) {
                return graph_error(400, "BadRequest");
            }
            if !exp.is_empty() && !parse_iso_duration(&exp).is_some_and(|d| (300..=4 * 3600).contains(&d)) {
                return graph_error(400, "BadRequest");
            }
            st.sessions.insert(user, Session { availability: av, activity: ac, session_id: s("sessionId"), expiration: exp });
            json(200, serde_json::Value::Null)
        }
        "clearPresence" => match st.sessions.remove(&user) {
            Some(_) => json(200, serde_json::Value::Null),
            None => graph_error(404, "NotFound"),
        },
        _ => graph_error(404, "NotFound"),
    }
}

fn batch(inner: &Inner, st: &mut State, body: &str, at: Instant) -> Answer {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return graph_error(400, "BadRequest"),
    };
    let Some(reqs) = v.get("requests").and_then(|r| r.as_array()) else {
        return graph_error(400, "BadRequest");
    };
    if reqs.is_empty() || reqs.len() > 20 {
        return graph_error(400, "BadRequest");
    }
    let mut responses = Vec::new();
    for r in reqs {
        let id = r.get("id").and_then(|i| i.as_str()).unwrap_or("").to_string();
        let url = r.get("url").and_then(|u| u.as_str()).unwrap_or("");
        let method = r.get("method").and_then(|m| m.as_str()).unwrap_or("");
        let item_body = r.get("body").map(|b| b.to_string()).unwrap_or_default();
        let (status, hdrs, value) = if method == "POST" && url.starts_with("/users/") {
            presence_op(inner, st, url, &item_body)
        } else {
            graph_error(400, "BadRequest")
        };
        st.log.push(Recorded {
            method: method.to_string(),
            path: format!("/v1.0{url}"),
            query: String::new(),
            body: item_body,
            auth: None,
            at,
            status,
            in_batch: true,
        });
        st.presence_ops += 1;
        let headers: serde_json::Map<String, serde_json::Value> = hdrs.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
        responses.push(serde_json::json!({"id": id, "status": status, "headers": headers, "body": value}));
    }
    json(200, serde_json::json!({"responses": responses}))
}

/// Most events in any window of length `w` (times need not be sorted).
pub fn max_in_window(times: &[Instant], w: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

// ---------------------------------------------------------------------------------------------
// Teams -> PBX direction: presence monitors, subscriptions, getPresencesByUserId, notifications.

/// How long Graph waits for the answer to its validation request.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest presence subscription Graph grants (60 minutes).
pub const SUBSCRIPTION_MAX: Duration = Duration::from_secs(3600);
/// Most users in one presence subscription or one getPresencesByUserId.
pub const PRESENCE_IDS_MAX: usize = 650;
/// How long the stub waits for a webhook to answer a notification.
pub const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A presence subscription as the stub keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubSubscription {
    pub id: String,
    pub resource: String,
    /// The user ids of the resource filter, in order.
    pub ids: Vec<String>,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub client_state: Option<String>,
    pub expiration: SystemTime,
    /// UPN (lower case) of the monitor whose token created it.
    pub monitor: String,
    /// `POST /subscriptions/{id}/reauthorize` calls so far.
    pub reauthorizations: u32,
    /// A `reauthorizationRequired` lifecycle event was sent and not answered yet.
    pub needs_reauthorization: bool,
}

impl StubSubscription {
    pub fn expired(&self) -> bool {
        self.expiration <= SystemTime::now()
    }
    pub fn covers(&self, user_id: &str) -> bool {
        self.ids.iter().any(|i| i.eq_ignore_ascii_case(user_id))
    }
    fn json(&self, client_id: &str) -> serde_json::Value {
        serde_json::json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": client_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": graph_time(self.expiration),
            "creatorId": self.monitor,
            "includeResourceData": false,
            "latestSupportedTlsVersion": "v1_2",
            "notificationUrlAppId": null,
        })
    }
}

/// Who presented a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    App,
    Monitor(String),
    Nobody,
}

fn caller(st: &State, auth: Option<&str>) -> Caller {
    let Some(t) = auth.and_then(|a| a.strip_prefix("Bearer ")) else {
        return Caller::Nobody;
    };
    if !st.revoked && st.tokens.last().is_some_and(|l| l == t) {
        return Caller::App;
    }
    match st.monitor_tokens.get(t) {
        Some(upn) => Caller::Monitor(upn.clone()),
        None => Caller::Nobody,
    }
}

fn graph_error_msg(status: u16, code: &str, message: &str) -> Answer {
    json(status, serde_json::json!({"error": {"code": code, "message": message}}))
}

fn fault_answer(f: Fault) -> Answer {
    let Fault::Status { status, retry_after } = f;
    let mut a = graph_error(status, if status == 429 { "TooManyRequests" } else { "ServiceUnavailable" });
    if let Some(s) = retry_after {
        a.1.push(("Retry-After".into(), s.to_string()));
    }
    a
}

/// A GUID-looking id, unique per stub.
fn guid(n: u64, salt: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (n, salt).hash(&mut h);
    let x = h.finish();
    format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", x >> 32, (x >> 16) & 0xffff, x & 0xfff, n & 0xfff, (x ^ n.rotate_left(17)) & 0xffff_ffff_ffff)
}

/// `grant_type=refresh_token` for a presence monitor: a delegated access token and a new
/// refresh token; the presented one stops working (rotation).
fn refresh_grant(inner: &Inner, st: &mut State, f: &HashMap<String, String>) -> Answer {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != inner.client_id || get("client_secret") != inner.client_secret {
        return json(401, serde_json::json!({"error": "invalid_client"}));
    }
    if !get("scope").split_whitespace().any(|s| s == "https://graph.microsoft.com/Presence.Read.All") {
        return json(400, serde_json::json!({"error": "invalid_scope"}));
    }
    let Some(upn) = st.refresh_tokens.remove(get("refresh_token")) else {
        return json(400, serde_json::json!({"error": "invalid_grant", "error_description": "AADSTS70000: The provided grant is invalid or expired."}));
    };
    st.monitor_grants += 1;
    let n = st.monitor_grants;
    let (access, refresh) = (format!("stub-monitor-token-{n}"), format!("stub-refresh-token-{n}"));
    st.monitor_tokens.insert(access.clone(), upn.clone());
    st.refresh_tokens.insert(refresh.clone(), upn);
    json(
        200,
        serde_json::json!({
            "token_type": "Bearer",
            "scope": "https://graph.microsoft.com/Presence.Read.All",
            "expires_in": st.expires_in,
            "ext_expires_in": st.expires_in,
            "access_token": access,
            "refresh_token": refresh,
        }),
    )
}

/// The user ids of `/communications/presences?$filter=id in ('a','b')`.
fn parse_presence_resource(r: &str) -> Option<Vec<String>> {
    let list = r.trim_start_matches('/').strip_prefix("communications/presences?$filter=id in (")?.strip_suffix(')')?;
    let ids: Option<Vec<String>> = list
        .split(',')
        .map(|q| {
            let id = q.trim().strip_prefix('\'')?.strip_suffix('\'')?;
            (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then(|| id.to_string())
        })
        .collect();
    ids.filter(|v| (1..=PRESENCE_IDS_MAX).contains(&v.len()))
}

/// A requested `expirationDateTime`: in the future, capped at 60 minutes from now.
fn requested_expiration(v: &serde_json::Value) -> Result<SystemTime, Answer> {
    let Some(exp) = v.get("expirationDateTime").and_then(|e| e.as_str()).and_then(parse_graph_time) else {
        return Err(graph_error_msg(400, "InvalidRequest", "expirationDateTime is missing or invalid"));
    };
    let now = SystemTime::now();
    if exp <= now {
        return Err(graph_error_msg(400, "InvalidRequest", "Subscription expiration can only be 0-60 minutes in the future."));
    }
    Ok(exp.min(now + SUBSCRIPTION_MAX))
}

fn is_http_url(u: &str) -> bool {
    u.starts_with("http://") || u.starts_with("https://")
}

async fn create_subscription(inner: &Arc<Inner>, body: &str, auth: Option<&str>) -> Answer {
    let (sub, timeout) = {
        let mut st = inner.state.lock().unwrap();
        match caller(&st, auth) {
            Caller::Nobody => return graph_error(401, "InvalidAuthenticationToken"),
            Caller::App => {
                return graph_error_msg(
                    403,
                    "ExtensionError",
                    "Operation: Create; Exception: [Status Code: Forbidden; Reason: The application permission is not supported for presence subscriptions]",
                )
            }
            Caller::Monitor(upn) => {
                if let Some(f) = st.watch_faults.pop_front() {
                    return fault_answer(f);
                }
                let v: serde_json::Value = match serde_json::from_str(body) {
                    Ok(v) => v,
                    Err(_) => return graph_error(400, "BadRequest"),
                };
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
                if s("changeType").as_deref() != Some("updated") {
                    return graph_error_msg(400, "InvalidRequest", "changeType must be 'updated' for presence");
                }
                let resource = s("resource").unwrap_or_default();
                let Some(ids) = parse_presence_resource(&resource) else {
                    return graph_error_msg(400, "InvalidRequest", "Invalid resource filter");
                };
                let notification_url = s("notificationUrl").unwrap_or_default();
                let lifecycle = s("lifecycleNotificationUrl");
                if !is_http_url(&notification_url) || lifecycle.as_deref().is_some_and(|u| !is_http_url(u)) {
                    return graph_error_msg(400, "InvalidRequest", "Invalid notification URL");
                }
                let client_state = s("clientState");
                if client_state.as_ref().is_some_and(|c| c.len() > 128) {
                    return graph_error_msg(400, "InvalidRequest", "clientState is longer than 128 characters");
                }
                let expiration = match requested_expiration(&v) {
                    Ok(e) => e,
                    Err(a) => return a,
                };
                let sub = StubSubscription {
                    id: String::new(),
                    resource,
                    ids,
                    change_type: "updated".into(),
                    notification_url,
                    lifecycle_notification_url: lifecycle,
                    client_state,
                    expiration,
                    monitor: upn,
                    reauthorizations: 0,
                    needs_reauthorization: false,
                };
                (sub, st.validation_timeout)
            }
        }
    };
    // Graph's validation request to every notification URL.
    let mut urls = vec![sub.notification_url.clone()];
    if let Some(l) = &sub.lifecycle_notification_url {
        if *l != sub.notification_url {
            urls.push(l.clone());
        }
    }
    for (k, url) in urls.iter().enumerate() {
        let token = format!("Validation: Testing client application reachability for subscription Request-Id: {}", guid(k as u64, SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64));
        if !validate(&inner.http, url, &token, timeout).await {
            return graph_error_msg(400, "InvalidRequest", "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.");
        }
    }
    let mut st = inner.state.lock().unwrap();
    st.subscriptions_created += 1;
    let mut sub = sub;
    sub.id = guid(st.subscriptions_created, Arc::as_ptr(inner) as u64);
    let v = sub.json(&inner.client_id);
    st.subscriptions.push(sub);
    json(201, v)
}

/// A reqwest client for plain-HTTP webhooks on loopback. reqwest is built without a default
/// rustls provider, so it gets its own (ring, no roots) instead of a process-wide default.
pub fn plain_http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().tls_backend_preconfigured(tls).no_proxy().build().expect("stub HTTP client")
}

/// Graph's validation request: POST `url?validationToken=...`; 200 text/plain echoing the token
/// within `timeout`.
async fn validate(http: &reqwest::Client, url: &str, token: &str, timeout: Duration) -> bool {
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}validationToken={}", percent_encode(token));
    let attempt = async {
        let resp = http.post(full).header("content-type", "text/plain; charset=utf-8").body("").send().await.ok()?;
        let ok_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.to_ascii_lowercase().starts_with("text/plain"));
        let status = resp.status().as_u16();
        let text = resp.text().await.ok()?;
        Some(status == 200 && ok_type && text == token)
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

fn watch_route(inner: &Inner, st: &mut State, method: &Method, rest: &str, body: &str, auth: Option<&str>) -> Answer {
    let who = caller(st, auth);
    if who == Caller::Nobody {
        return graph_error(401, "InvalidAuthenticationToken");
    }
    if rest == "/communications/getPresencesByUserId" {
        if method != Method::POST {
            return graph_error(405, "MethodNotAllowed");
        }
        if let Some(f) = st.watch_faults.pop_front() {
            return fault_answer(f);
        }
        return get_presences(st, body);
    }
    let monitor = match who {
        Caller::Monitor(upn) => upn,
        _ => return graph_error_msg(403, "ExtensionError", "Operation: Subscription; Exception: [Status Code: Forbidden; Reason: The application permission is not supported for presence subscriptions]"),
    };
    if let Some(f) = st.watch_faults.pop_front() {
        return fault_answer(f);
    }
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let (id, action) = match parts.as_slice() {
        ["subscriptions", id] => (percent_decode(id), None),
        ["subscriptions", id, action] => (percent_decode(id), Some(*action)),
        _ => return graph_error(404, "NotFound"),
    };
    let Some(pos) = st.subscriptions.iter().position(|s| s.id == id && !s.expired()) else {
        return graph_error_msg(404, "ResourceNotFound", "The object was not found.");
    };
    if st.subscriptions[pos].monitor != monitor {
        return graph_error_msg(403, "ExtensionError", "Operation: Subscription; Exception: [Status Code: Forbidden; Reason: Subscription belongs to another user]");
    }
    match (method.as_str(), action) {
        ("PATCH", None) => {
            let v: serde_json::Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(_) => return graph_error(400, "BadRequest"),
            };
            match requested_expiration(&v) {
                Ok(e) => {
                    st.subscriptions[pos].expiration = e;
                    json(200, st.subscriptions[pos].json(&inner.client_id))
                }
                Err(a) => a,
            }
        }
        ("DELETE", None) => {
            st.subscriptions.remove(pos);
            json(204, serde_json::Value::Null)
        }
        ("POST", Some("reauthorize")) => {
            let s = &mut st.subscriptions[pos];
            s.reauthorizations += 1;
            s.needs_reauthorization = false;
            json(204, serde_json::Value::Null)
        }
        ("GET", None) => json(200, st.subscriptions[pos].json(&inner.client_id)),
        _ => graph_error(405, "MethodNotAllowed"),
    }
}

/// What Teams shows for a user: the user-set state beats drbridge's app session; else Offline.
fn shown_presence(st: &State, id: &str) -> (String, String) {
    if let Some(p) = st.user_presence.get(id) {
        return p.clone();
    }
    match st.sessions.get(id) {
        Some(s) => (s.availability.clone(), s.activity.clone()),
        None => ("Offline".into(), "Offline".into()),
    }
}

fn get_presences(st: &State, body: &str) -> Answer {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return graph_error(400, "BadRequest"),
    };
    let ids: Option<Vec<&str>> = v.get("ids").and_then(|i| i.as_array()).map(|a| a.iter().filter_map(|x| x.as_str()).collect());
    let Some(ids) = ids.filter(|ids| !ids.is_empty() && ids.len() == v["ids"].as_array().map_or(0, Vec::len)) else {
        return graph_error_msg(400, "BadRequest", "ids must be a non-empty array of strings");
    };
    if ids.len() > PRESENCE_IDS_MAX {
        return graph_error_msg(400, "BadRequest", "The maximum number of ids per request is 650");
    }
    let value: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            let (availability, activity) = shown_presence(st, id);
            serde_json::json!({"id": id, "availability": availability, "activity": activity, "statusMessage": null})
        })
        .collect();
    json(200, serde_json::json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(presence)", "value": value}))
}

impl GraphStub {
    /// Registers a presence monitor (UPN) with the refresh token its `refresh_token` grant must
    /// present; a previous refresh token of that monitor stops working.
    pub fn add_monitor(&self, upn: &str, refresh_token: &str) {
        let upn = upn.to_ascii_lowercase();
        let mut st = self.st();
        st.refresh_tokens.retain(|_, u| *u != upn);
        st.refresh_tokens.insert(refresh_token.to_string(), upn);
    }
    /// The refresh token that works now for this monitor (changes on every grant).
    pub fn monitor_refresh_token(&self, upn: &str) -> Option<String> {
        let upn = upn.to_ascii_lowercase();
        self.st().refresh_tokens.iter().find(|(_, u)| **u == upn).map(|(t, _)| t.clone())
    }
    /// Every monitor access token issued so far is refused (401); refresh tokens still work.
    pub fn revoke_monitor_tokens(&self) {
        self.st().monitor_tokens.clear();
    }
    /// Token requests with `grant_type=refresh_token`.
    pub fn monitor_token_requests(&self) -> Vec<Recorded> {
        self.token_requests().into_iter().filter(|r| form_decode(&r.body).get("grant_type").map(String::as_str) == Some("refresh_token")).collect()
    }
    /// The presence the user set in Teams (beats drbridge's app session).
    pub fn set_user_presence(&self, user_id: &str, availability: &str, activity: &str) {
        self.st().user_presence.insert(user_id.to_string(), (availability.to_string(), activity.to_string()));
    }
    pub fn clear_user_presence(&self, user_id: &str) {
        self.st().user_presence.remove(user_id);
    }
    /// What getPresencesByUserId answers for this user now.
    pub fn shown_presence(&self, user_id: &str) -> (String, String) {
        shown_presence(&self.st(), user_id)
    }
    /// The next subscription / getPresencesByUserId requests get these answers.
    pub fn push_watch_fault(&self, f: Fault) {
        self.st().watch_faults.push_back(f);
    }
    /// How long the validation request may take (default [`VALIDATION_TIMEOUT`]).
    pub fn set_validation_timeout(&self, d: Duration) {
        self.st().validation_timeout = d;
    }
    /// Every subscription, expired ones included, in creation order.
    pub fn subscriptions(&self) -> Vec<StubSubscription> {
        self.st().subscriptions.clone()
    }
    pub fn subscription(&self, id: &str) -> Option<StubSubscription> {
        self.st().subscriptions.iter().find(|s| s.id == id).cloned()
    }
    /// Requests on `/subscriptions...` (creation included).
    pub fn subscription_requests(&self) -> Vec<Recorded> {
        self.st().log.iter().filter(|r| r.path.starts_with("/v1.0/subscriptions")).cloned().collect()
    }
    /// The subscription expires now (Graph then refuses PATCH / reauthorize with 404 and sends
    /// no notifications for it). False for an unknown id.
    pub fn expire_subscription(&self, id: &str) -> bool {
        let mut st = self.st();
        match st.subscriptions.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.expiration = SystemTime::now() - Duration::from_secs(1);
                true
            }
            None => false,
        }
    }
    /// Graph drops the subscription (as after a `subscriptionRemoved`).
    pub fn remove_subscription(&self, id: &str) -> Option<StubSubscription> {
        let mut st = self.st();
        let pos = st.subscriptions.iter().position(|s| s.id == id)?;
        Some(st.subscriptions.remove(pos))
    }

    /// Sends a change notification for this user's presence to the notification URL of every
    /// live subscription covering it; the HTTP statuses of the answers, in subscription order
    /// (0: no answer within [`NOTIFICATION_TIMEOUT`] or no connection).
    pub async fn notify_presence_change(&self, user_id: &str) -> Vec<u16> {
        let targets: Vec<StubSubscription> = self.st().subscriptions.iter().filter(|s| !s.expired() && s.covers(user_id)).cloned().collect();
        let mut out = Vec::new();
        for s in targets {
            let resource = format!("communications/presences('{user_id}')");
            let mut n = serde_json::json!({
                "subscriptionId": s.id,
                "changeType": "updated",
                "resource": resource,
                "subscriptionExpirationDateTime": graph_time(s.expiration),
                "resourceData": {"@odata.type": "#Microsoft.Graph.presence", "@odata.id": resource, "id": user_id},
                "tenantId": self.inner.tenant,
            });
            if let Some(cs) = &s.client_state {
                n["clientState"] = cs.clone().into();
            }
            out.push(self.post_notification(&s.notification_url, serde_json::json!({ "value": [n] })).await);
        }
        out
    }

    /// Sends a lifecycle event (`reauthorizationRequired`, `subscriptionRemoved`, `missed`) for
    /// this subscription to its lifecycle URL (else its notification URL). `subscriptionRemoved`
    /// drops the subscription first, as Graph has. `None` for an unknown id, else the status
    /// (0: no answer).
    pub async fn send_lifecycle(&self, sub_id: &str, event: &str) -> Option<u16> {
        let s = {
            let mut st = self.st();
            let pos = st.subscriptions.iter().position(|s| s.id == sub_id)?;
            match event {
                "subscriptionRemoved" => st.subscriptions.remove(pos),
                "reauthorizationRequired" => {
                    st.subscriptions[pos].needs_reauthorization = true;
                    st.subscriptions[pos].clone()
                }
                _ => st.subscriptions[pos].clone(),
            }
        };
        let mut n = serde_json::json!({
            "subscriptionId": s.id,
            "subscriptionExpirationDateTime": graph_time(s.expiration),
            "tenantId": self.inner.tenant,
            "lifecycleEvent": event,
        });
        if let Some(cs) = &s.client_state {
            n["clientState"] = cs.clone().into();
        }
        let url = s.lifecycle_notification_url.clone().unwrap_or(s.notification_url.clone());
        Some(self.post_notification(&url, serde_json::json!({ "value": [n] })).await)
    }

    async fn post_notification(&self, url: &str, body: serde_json::Value) -> u16 {
        let send = self.inner.http.post(url).header("content-type", "application/json; charset=utf-8").body(body.to_string()).send();
        match tokio::time::timeout(NOTIFICATION_TIMEOUT, send).await {
            Ok(Ok(resp)) => resp.status().as_u16(),
            _ => 0,
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_leap(y: u64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_lengths(y: u64) -> [u64; 12] {
    [31, if is_leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
}

/// A time as Graph writes it: UTC with 7 fraction digits, `2026-11-24T19:00:00.0000000Z`
/// (written independently of drbridge's own conversion, by counting years and months).
pub fn graph_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).expect("after 1970");
    let mut days = d.as_secs() / 86_400;
    let sod = d.as_secs() % 86_400;
    let mut y = 1970;
    while days >= if is_leap(y) { 366 } else { 365 } {
        days -= if is_leap(y) { 366 } else { 365 };
        y += 1;
    }
    let mut m = 0;
    for len in month_lengths(y) {
        if days < len {
            break;
        }
        days -= len;
        m += 1;
    }
    format!("{y:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z", m + 1, days + 1, sod / 3600, sod / 60 % 60, sod % 60, d.subsec_nanos() / 100)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (from 1970) back to a time.
pub fn parse_graph_time(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (main, frac) = match s.split_once('.') {
        Some((m, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (m, f),
        Some(_) => return None,
        None => (s, ""),
    };
    let (date, time) = main.split_once('T')?;
    let n: Vec<u64> = date.split('-').chain(time.split(':')).map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [y, mo, d, h, mi, sec] = n[..] else { return None };
    if y < 1970 || !(1..=12).contains(&mo) || d == 0 || d > month_lengths(y)[mo as usize - 1] || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = (1970..y).map(|yy| if is_leap(yy) { 366 } else { 365 }).sum::<u64>() + month_lengths(y)[..mo as usize - 1].iter().sum::<u64>() + d - 1;
    let nanos: u32 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    Some(UNIX_EPOCH + Duration::new(days * 86_400 + h * 3600 + mi * 60 + sec, nanos))
}

/// Serves `app` on `listener` until the returned sender is dropped or used.
pub fn serve_until_stopped(listener: tokio::net::TcpListener, app: axum::Router) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}

// ---------------------------------------------------------------------------------------------
// A monitor's first sign-in: the device authorization grant.

/// `grant_type` of the device authorization grant's token polls.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The page the user opens to enter the code.
pub const DEVICE_LOGIN_PAGE: &str = "https://microsoft.com/devicelogin";

/// Base64url without padding (JWT segments).
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned JWT (`header.payload.`) as the stub's `id_token`.
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    format!("{}.{}.", b64url(br#"{"typ":"JWT","alg":"none"}"#), b64url(claims.to_string().as_bytes()))
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: a device code and the user code to enter.
fn device_code_request(inner: &Inner, st: &mut State, f: &HashMap<String, String>) -> Answer {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != inner.client_id {
        return json(400, serde_json::json!({"error": "invalid_client", "error_description": "AADSTS700016: Application not found in the directory."}));
    }
    if get("scope").trim().is_empty() {
        return json(400, serde_json::json!({"error": "invalid_request", "error_description": "AADSTS900144: The request body must contain the following parameter: 'scope'."}));
    }
    let n = st.device_auths.len() as u64 + 1;
    let salt = inner as *const Inner as u64;
    let h = guid(n, salt).replace('-', "");
    let user_code: String = h.chars().rev().take(8).collect::<String>().to_ascii_uppercase();
    let device_code = format!("stub-device-code-{n}-{h}");
    let auth = DeviceAuth {
        device_code: device_code.clone(),
        user_code: user_code.clone(),
        scope: get("scope").to_string(),
        issued: Instant::now(),
        expires_in: Duration::from_secs(st.device_expires_in),
        state: DeviceAuthState::Pending,
    };
    st.device_auths.push(auth);
    json(
        200,
        serde_json::json!({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": DEVICE_LOGIN_PAGE,
            "expires_in": st.device_expires_in,
            "interval": st.device_interval,
            "message": format!("To sign in, use a web browser to open the page {DEVICE_LOGIN_PAGE} and enter the code {user_code} to authenticate."),
        }),
    )
}

/// `grant_type=urn:ietf:params:oauth:grant-type:device_code`: pending until approved; then a
/// delegated access token, a refresh token (registered as the user's monitor refresh token) and
/// an `id_token` (when `openid` was asked for).
fn device_code_grant(inner: &Inner, st: &mut State, f: &HashMap<String, String>) -> Answer {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != inner.client_id || get("client_secret") != inner.client_secret {
        return json(401, serde_json::json!({"error": "invalid_client"}));
    }
    let err = |code: &str, text: &str| json(400, serde_json::json!({"error": code, "error_description": text}));
    let Some(pos) = st.device_auths.iter().position(|a| a.device_code == get("device_code")) else {
        return err("bad_verification_code", "AADSTS70019: Verification code expired or not recognized.");
    };
    let a = &mut st.device_auths[pos];
    let expired = a.issued.elapsed() >= a.expires_in;
    let upn = match (&a.state, expired) {
        (DeviceAuthState::Redeemed, _) => return err("invalid_grant", "AADSTS54005: OAuth2 Authorization code was already redeemed."),
        (_, true) => return err("expired_token", "AADSTS70020: The provided value for the input parameter 'device_code' is not valid. This device code has expired."),
        (DeviceAuthState::Pending, _) => return err("authorization_pending", "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling."),
        (DeviceAuthState::Declined, _) => return err("authorization_declined", "AADSTS70000: The user declined the sign-in."),
        (DeviceAuthState::Approved(upn), _) => upn.clone(),
    };
    a.state = DeviceAuthState::Redeemed;
    let openid = a.scope.split_whitespace().any(|s| s == "openid");
    st.monitor_grants += 1;
    let n = st.monitor_grants;
    let (access, refresh) = (format!("stub-monitor-token-{n}"), format!("stub-refresh-token-{n}"));
    st.monitor_tokens.insert(access.clone(), upn.clone());
    st.refresh_tokens.retain(|_, u| *u != upn);
    st.refresh_tokens.insert(refresh.clone(), upn.clone());
    let mut answer = serde_json::json!({
        "token_type": "Bearer",
        "scope": "https://graph.microsoft.com/Presence.Read.All openid profile",
        "expires_in": st.expires_in,
        "ext_expires_in": st.expires_in,
        "access_token": access,
        "refresh_token": refresh,
    });
    if openid {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = serde_json::json!({
            "aud": inner.client_id,
            "iss": format!("https://login.microsoftonline.com/{}/v2.0", inner.tenant),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": upn.split('@').next().unwrap_or(""),
            "oid": guid(n as u64, 7),
            "preferred_username": upn,
            "tid": inner.tenant,
            "ver": "2.0",
        });
        answer["id_token"] = unsigned_jwt(&claims).into();
    }
    json(200, answer)
}

impl GraphStub {
    /// `interval` (seconds) of the device codes issued from now on (default 1).
    pub fn set_device_code_interval(&self, secs: u64) {
        self.st().device_interval = secs;
    }
    /// `expires_in` (seconds) of the device codes issued from now on (default 900).
    pub fn set_device_code_lifetime(&self, secs: u64) {
        self.st().device_expires_in = secs;
    }
    /// Every device authorization request so far, in order.
    pub fn device_auths(&self) -> Vec<DeviceAuth> {
        self.st().device_auths.clone()
    }
    /// `upn` signs in with this user code (the user opened the page, entered the code and
    /// consented). False for an unknown code or one that is no longer pending.
    pub fn approve_device_code(&self, user_code: &str, upn: &str) -> bool {
        self.set_device_state(user_code, DeviceAuthState::Approved(upn.to_ascii_lowercase()))
    }
    /// The user declines the sign-in for this user code.
    pub fn decline_device_code(&self, user_code: &str) -> bool {
        self.set_device_state(user_code, DeviceAuthState::Declined)
    }
    fn set_device_state(&self, user_code: &str, state: DeviceAuthState) -> bool {
        let changed = {
            let mut st = self.st();
            match st.device_auths.iter_mut().find(|a| a.user_code.eq_ignore_ascii_case(user_code) && a.state == DeviceAuthState::Pending) {
                Some(a) => {
                    a.state = state;
                    true
                }
                None => false,
            }
        };
        self.inner.changed.notify_waiters();
        changed
    }
    /// Requests to `/devicecode`.
    pub fn device_code_requests(&self) -> Vec<Recorded> {
        self.st().log.iter().filter(|r| r.path.ends_with("/oauth2/v2.0/devicecode")).cloned().collect()
    }
    /// Token requests with the device code grant (the polls).
    pub fn device_code_polls(&self) -> Vec<Recorded> {
        self.token_requests().into_iter().filter(|r| form_decode(&r.body).get("grant_type").map(String::as_str) == Some(DEVICE_CODE_GRANT)).collect()
    }
}
