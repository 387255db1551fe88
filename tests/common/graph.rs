//! A local stand-in for the Microsoft identity platform and Microsoft Graph (presence), on
//! 127.0.0.1. It issues client-credentials tokens, answers `GET /users/{upn}`,
//! `setPresence`, `clearPresence` and `$batch`, keeps the presence it was told per user, and
//! records every request (method, path, body, arrival time, status; `$batch` items are recorded
//! one by one as well). It can be told to answer 429 with Retry-After, 503, or to be slow.
//!
//! Self-contained (only axum, tokio, serde_json) so the benchmark can include it by path.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

struct Inner {
    tenant: String,
    client_id: String,
    client_secret: String,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
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
            state: Mutex::new(State { expires_in: 3599, ..Default::default() }),
            changed: tokio::sync::Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind graph stub");
        let addr = listener.local_addr().expect("local addr");
        let i2 = inner.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let inner = i2.clone();
            async move { handle(inner, method, uri, headers, body).await }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        GraphStub { addr, inner, stop: Some(stop) }
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
    let (status, hdrs, value) = {
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
    if path == token_path {
        if method != Method::POST {
            return json(405, serde_json::Value::Null);
        }
        let f = form_decode(body);
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
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
