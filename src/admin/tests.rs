//! Admin routes, driven in-process (no sockets) with tower's `oneshot`.

use super::*;
use axum::body::Body;
use axum::http::Request as HttpRequest;
use tower::ServiceExt;

struct Lab {
    router: Router,
    ingest: mpsc::Receiver<IngestEvent>,
    webhook: mpsc::Receiver<GraphNotification>,
}

fn lab(queue: usize) -> Lab {
    let mut reg = Registry::default();
    let metrics = AdminMetrics::register(&mut reg);
    let (itx, irx) = mpsc::channel(queue);
    let (wtx, wrx) = mpsc::channel(queue);
    let view = |user: &str| (user == "alice@contoso.example").then(|| serde_json::json!({"user": user, "aggregate": "Busy"}));
    let admin = Admin {
        token: Secret::new("s3cret-token"),
        client_state: Some(Secret::new("state-123")),
        registry: Arc::new(reg),
        metrics,
        view: Arc::new(view),
        ingest: itx,
        webhook: wtx,
    };
    Lab { router: router(admin), ingest: irx, webhook: wrx }
}

async fn call(r: &Router, method: &str, uri: &str, token: Option<&str>, body: &str) -> (StatusCode, HeaderMap, String) {
    let mut b = HttpRequest::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    let resp = r.clone().oneshot(b.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

use axum::http::HeaderMap;

const EVENT: &str = r#"{"user":"alice@contoso.example","source":"csta","device":"4711","state":"busy"}"#;

#[tokio::test]
async fn health_needs_no_token_the_rest_does() {
    let l = lab(16);
    let (s, _, b) = call(&l.router, "GET", "/health", None, "").await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
    for (m, u) in [("GET", "/metrics"), ("GET", "/presence/users/alice@contoso.example"), ("POST", "/presence/ingest")] {
        let (s, h, _) = call(&l.router, m, u, None, EVENT).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{u}");
        assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
        let (s, _, _) = call(&l.router, m, u, Some("wrong"), EVENT).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{u}");
    }
}

#[tokio::test]
async fn ingest_accepts_valid_events_only() {
    let mut l = lab(16);
    let (s, _, _) = call(&l.router, "POST", "/presence/ingest", Some("s3cret-token"), EVENT).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let ev = l.ingest.try_recv().unwrap();
    assert_eq!((ev.user.as_str(), ev.source.as_str(), ev.device.as_str(), ev.state.as_str()), ("alice@contoso.example", "csta", "4711", "busy"));
    for bad in [
        "{",
        "[]",
        r#"{"user":"a","source":"b","device":"c"}"#,
        r#"{"user":"a","source":"b","device":"c","state":"d","extra":1}"#,
        r#"{"user":"","source":"b","device":"c","state":"d"}"#,
        r#"{"user":"a\u0000","source":"b","device":"c","state":"d"}"#,
    ] {
        let (s, _, b) = call(&l.router, "POST", "/presence/ingest", Some("s3cret-token"), bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {b}");
    }
    assert!(l.ingest.try_recv().is_err());
    let big = format!(r#"{{"user":"{}","source":"b","device":"c","state":"d"}}"#, "x".repeat(INGEST_BODY_MAX));
    let (s, _, _) = call(&l.router, "POST", "/presence/ingest", Some("s3cret-token"), &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn ingest_full_queue_is_503() {
    let l = lab(1);
    assert_eq!(call(&l.router, "POST", "/presence/ingest", Some("s3cret-token"), EVENT).await.0, StatusCode::ACCEPTED);
    let (s, h, _) = call(&l.router, "POST", "/presence/ingest", Some("s3cret-token"), EVENT).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.get("retry-after").unwrap(), "1");
}

#[tokio::test]
async fn presence_view_and_metrics() {
    let l = lab(16);
    let (s, _, b) = call(&l.router, "GET", "/presence/users/alice@contoso.example", Some("s3cret-token"), "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&b).unwrap()["aggregate"], "Busy");
    let (s, _, _) = call(&l.router, "GET", "/presence/users/bob", Some("s3cret-token"), "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, h, b) = call(&l.router, "GET", "/metrics", Some("s3cret-token"), "").await;
    assert_eq!(s, StatusCode::OK);
    assert!(h.get("content-type").unwrap().to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(b.contains(r#"drbridge_admin_http_requests_total{endpoint="/presence/users/{user}",status="404"} 1"#), "{b}");
    assert!(b.ends_with("# EOF\n"));
}

#[tokio::test]
async fn webhook_validation_echoes_the_decoded_token() {
    let l = lab(16);
    let (s, h, b) = call(&l.router, "POST", "/graph/webhook?validationToken=Validation%3A%20Testing%20client%20application%20reachability", None, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.get("content-type").unwrap(), "text/plain; charset=utf-8");
    assert_eq!(b, "Validation: Testing client application reachability");
}

#[tokio::test]
async fn webhook_forwards_notifications_with_our_client_state() {
    let mut l = lab(16);
    let body = serde_json::json!({"value": [
        {"subscriptionId": "sub-1", "clientState": "state-123", "changeType": "updated",
         "resource": "communications/presences('u1')", "tenantId": "t",
         "resourceData": {"@odata.type": "#Microsoft.Graph.presence", "id": "u1", "availability": "Busy", "activity": "InACall"}},
        {"subscriptionId": "sub-2", "clientState": "forged", "changeType": "updated", "resource": "x"},
        {"subscriptionId": "sub-3", "changeType": "updated", "resource": "y"},
        {"subscriptionId": "sub-1", "clientState": "state-123", "lifecycleEvent": "reauthorizationRequired"}
    ]});
    let (s, _, _) = call(&l.router, "POST", "/graph/webhook", None, &body.to_string()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let n = l.webhook.try_recv().unwrap();
    assert_eq!(n.subscription_id, "sub-1");
    assert_eq!(n.resource_data.unwrap()["availability"], "Busy");
    let n = l.webhook.try_recv().unwrap();
    assert_eq!(n.lifecycle_event.as_deref(), Some("reauthorizationRequired"));
    assert!(l.webhook.try_recv().is_err(), "forged and missing clientState dropped");
    let (s, _, _) = call(&l.router, "POST", "/graph/webhook", None, "not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[test]
fn debug_hides_secrets() {
    let l = Admin {
        token: Secret::new("tok"),
        client_state: None,
        registry: Arc::new(Registry::default()),
        metrics: AdminMetrics::default(),
        view: Arc::new(NoPresence),
        ingest: mpsc::channel(1).0,
        webhook: mpsc::channel(1).0,
    };
    assert!(!format!("{l:?}").contains("tok\""));
}
