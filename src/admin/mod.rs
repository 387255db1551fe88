//! The admin HTTP server (axum 0.8): health, Prometheus metrics, the presence view of a user,
//! the JSON ingest of line states from other adapters, and the Microsoft Graph webhook.
//!
//! | endpoint | auth | answers |
//! |---|---|---|
//! | `GET /health` | none | 200 `{"status":"ok"}` |
//! | `GET /metrics` | bearer | 200, OpenMetrics text from the shared registry |
//! | `GET /presence/users/{user}` | bearer | 200 JSON from the [`PresenceView`], 404 when unknown |
//! | `POST /presence/ingest` | bearer | 202 forwarded, 400 bad JSON, 503 queue full |
//! | `POST /graph/webhook` | clientState | `?validationToken=` -> 200 text/plain token; notifications -> 202 |
//!
//! The webhook carries no bearer token (Graph cannot send one): validation requests are echoed,
//! notifications are forwarded only when their `clientState` matches the configured secret.
//! Nothing here waits on the rest of drbridge: forwarding is a `try_send` on a bounded channel.

use crate::presence::graph::Secret;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("admin: server failed: {0}")]
    Serve(std::io::Error),
}

/// Largest ingest body, bytes.
pub const INGEST_BODY_MAX: usize = 64 * 1024;
/// Largest webhook body, bytes (notifications with resource data can be large).
pub const WEBHOOK_BODY_MAX: usize = 1024 * 1024;
/// Longest accepted field of an ingest event, bytes.
pub const FIELD_MAX: usize = 256;
/// Longest validation token echoed, bytes.
pub const VALIDATION_TOKEN_MAX: usize = 4096;

/// What `GET /presence/users/{user}` shows: the presence core supplies it (aggregate state,
/// sources, last published). Closures `Fn(&str) -> Option<serde_json::Value>` implement it.
pub trait PresenceView: Send + Sync + 'static {
    fn user(&self, user: &str) -> Option<serde_json::Value>;
}

impl<F> PresenceView for F
where
    F: Fn(&str) -> Option<serde_json::Value> + Send + Sync + 'static,
{
    fn user(&self, user: &str) -> Option<serde_json::Value> {
        self(user)
    }
}

/// A view that knows no user (until the presence core is wired in).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPresence;

impl PresenceView for NoPresence {
    fn user(&self, _: &str) -> Option<serde_json::Value> {
        None
    }
}

/// `POST /presence/ingest` body: a device state of a user from some source (CSTA, MiTAI, ...).
/// The presence core interprets `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestEvent {
    pub user: String,
    pub source: String,
    pub device: String,
    pub state: String,
}

/// One Graph change notification (or lifecycle event), without its `clientState`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphNotification {
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default)]
    pub change_type: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub resource_data: Option<serde_json::Value>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub lifecycle_event: Option<String>,
    #[serde(default)]
    pub subscription_expiration_date_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNotification {
    #[serde(default)]
    client_state: Option<String>,
    #[serde(flatten)]
    n: GraphNotification,
}

#[derive(Deserialize)]
struct NotificationBatch {
    value: Vec<RawNotification>,
}

/// Counters of the admin server (prefix `drbridge_admin_`).
#[derive(Debug, Clone, Default)]
pub struct AdminMetrics {
    requests: Family<Vec<(String, String)>, Counter>,
    ingest: Family<Vec<(String, String)>, Counter>,
    notifications: Family<Vec<(String, String)>, Counter>,
}

impl AdminMetrics {
    pub fn register(reg: &mut Registry) -> AdminMetrics {
        let m = AdminMetrics::default();
        let sub = reg.sub_registry_with_prefix("drbridge_admin");
        sub.register("http_requests", "Admin HTTP requests by endpoint and status", m.requests.clone());
        sub.register("ingest_events", "Ingested line states by result", m.ingest.clone());
        sub.register("webhook_notifications", "Graph notifications by result", m.notifications.clone());
        m
    }

    fn count(f: &Family<Vec<(String, String)>, Counter>, labels: &[(&str, &str)]) {
        let l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        f.get_or_create(&l).inc();
    }
}

/// Everything the admin server needs.
#[derive(Clone)]
pub struct Admin {
    /// Bearer token of every endpoint but /health and /graph/webhook.
    pub token: Secret,
    /// `clientState` of the Graph subscriptions; `None`: notifications are dropped.
    pub client_state: Option<Secret>,
    /// The registry `/metrics` encodes (everyone registers before the server starts).
    pub registry: Arc<Registry>,
    pub metrics: AdminMetrics,
    pub view: Arc<dyn PresenceView>,
    pub ingest: mpsc::Sender<IngestEvent>,
    pub webhook: mpsc::Sender<GraphNotification>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("token", &self.token).field("client_state", &self.client_state).finish_non_exhaustive()
    }
}

/// The routes, with their auth and body limits.
pub fn router(admin: Admin) -> Router {
    let state = Arc::new(admin);
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/presence/users/{user}", get(presence_user))
        .route("/presence/ingest", post(ingest).layer(DefaultBodyLimit::max(INGEST_BODY_MAX)))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), bearer));
    Router::new()
        .route("/health", get(health))
        .route("/graph/webhook", post(webhook).layer(DefaultBodyLimit::max(WEBHOOK_BODY_MAX)))
        .merge(protected)
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Binds the listener (separately, so callers learn the port before serving).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AdminError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| AdminError::Bind { addr, source })
}

/// Serves until `shutdown` completes.
pub async fn serve(listener: tokio::net::TcpListener, admin: Admin, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), AdminError> {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(listen = %a, "admin server listening");
    }
    axum::serve(listener, router(admin)).with_graceful_shutdown(shutdown).await.map_err(AdminError::Serve)
}

type Shared = Arc<Admin>;

async fn count_requests(State(a): State<Shared>, req: Request, next: Next) -> Response {
    // Label by route, not by raw path (user names would make unbounded label sets).
    let path = req.uri().path();
    let endpoint = match path {
        "/health" | "/metrics" | "/presence/ingest" | "/graph/webhook" => path,
        p if p.starts_with("/presence/users/") => "/presence/users/{user}",
        _ => "other",
    }
    .to_string();
    let resp = next.run(req).await;
    AdminMetrics::count(&a.metrics.requests, &[("endpoint", &endpoint), ("status", resp.status().as_str())]);
    resp
}

async fn bearer(State(a): State<Shared>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, tok)| scheme.eq_ignore_ascii_case("bearer") && a.token.matches(tok.trim()));
    if !ok {
        let mut r = (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "bearer token required"}))).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(a): State<Shared>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &a.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn presence_user(State(a): State<Shared>, Path(user): Path<String>) -> Response {
    match a.view.user(&user) {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "unknown user"}))).into_response(),
    }
}

fn bad_request(why: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": why.into()}))).into_response()
}

fn unavailable() -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": "queue full"}))).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Checks an ingest event's fields; the reason names the field.
fn check_event(e: &IngestEvent) -> Result<(), String> {
    for (name, v) in [("user", &e.user), ("source", &e.source), ("device", &e.device), ("state", &e.state)] {
        if v.trim().is_empty() {
            return Err(format!("{name}: must not be empty"));
        }
        if v.len() > FIELD_MAX {
            return Err(format!("{name}: longer than {FIELD_MAX} bytes"));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("{name}: control characters"));
        }
    }
    Ok(())
}

async fn ingest(State(a): State<Shared>, body: Bytes) -> Response {
    let ev: IngestEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            AdminMetrics::count(&a.metrics.ingest, &[("result", "bad_request")]);
            return bad_request(format!("invalid JSON: {e}"));
        }
    };
    if let Err(why) = check_event(&ev) {
        AdminMetrics::count(&a.metrics.ingest, &[("result", "bad_request")]);
        return bad_request(why);
    }
    match a.ingest.try_send(ev) {
        Ok(()) => {
            AdminMetrics::count(&a.metrics.ingest, &[("result", "accepted")]);
            (StatusCode::ACCEPTED, Json(serde_json::json!({"status": "accepted"}))).into_response()
        }
        Err(_) => {
            AdminMetrics::count(&a.metrics.ingest, &[("result", "queue_full")]);
            unavailable()
        }
    }
}

async fn webhook(State(a): State<Shared>, Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    // Subscription validation: echo the (URL-decoded) token as text/plain, at once.
    if let Some(token) = q.get("validationToken") {
        if token.len() > VALIDATION_TOKEN_MAX {
            return bad_request("validationToken too long");
        }
        AdminMetrics::count(&a.metrics.notifications, &[("result", "validation")]);
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")), (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"))],
            token.clone(),
        )
            .into_response();
    }
    let batch: NotificationBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(format!("invalid notification JSON: {e}")),
    };
    for raw in batch.value {
        let ok = match (&a.client_state, raw.client_state.as_deref()) {
            (Some(secret), Some(cs)) => secret.matches(cs),
            _ => false,
        };
        if !ok {
            // Not ours (or no clientState configured): dropped, still 202 so Graph does not retry.
            tracing::debug!(subscription = %raw.n.subscription_id, "graph webhook: clientState mismatch, notification dropped");
            AdminMetrics::count(&a.metrics.notifications, &[("result", "bad_client_state")]);
            continue;
        }
        let result = if a.webhook.try_send(raw.n).is_ok() { "accepted" } else { "queue_full" };
        AdminMetrics::count(&a.metrics.notifications, &[("result", result)]);
    }
    (StatusCode::ACCEPTED, "").into_response()
}

/// A [`PresenceView`] of the publisher alone (aggregate and sources are `null` until the
/// presence core supplies its own view).
pub fn publisher_view(core: Arc<std::sync::Mutex<crate::presence::publish::Publisher>>) -> impl PresenceView {
    move |user: &str| {
        let now = tokio::time::Instant::now().into_std();
        let c = core.lock().unwrap_or_else(|p| p.into_inner());
        let v = c.user_view(user, now)?;
        Some(serde_json::json!({ "user": user, "aggregate": null, "sources": [], "publish": v }))
    }
}

#[cfg(test)]
mod tests;
