//! The Graph client calls of the Teams -> PBX presence direction (presence monitors' delegated
//! tokens, presence subscriptions, getPresencesByUserId) against the local stand-in for the
//! Microsoft identity platform and Graph (tests/common/graph.rs), with a small webhook server on
//! loopback that answers Graph's validation requests and collects notifications.
//! Every wait is bounded and wakes on an event; nothing sleeps to synchronise.

mod common;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use common::graph::{graph_time, parse_graph_time, plain_http_client, Fault, GraphStub, StubSubscription};
use drbridge::presence::graph::{GraphClient, GraphError, GraphSettings, PresenceOp, Secret, TeamsPresence};
use drbridge::presence::graph_watch::{parse_rfc3339, rfc3339, MONITOR_SCOPE};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

const TENANT: &str = "contoso.example";
const CLIENT_ID: &str = "0d7f1e2c-3b4a-4c5d-8e9f-a0b1c2d3e4f5";
const SECRET: &str = "lab-client-secret~not-a-real-one";
const MONITOR: &str = "Presence.Monitor1@contoso.example";
const REFRESH: &str = "rt-initial~0.AAAA-not-a-real-refresh-token";
const CLIENT_STATE: &str = "client-state~8d1f0c3b-secret";
const ID_A: &str = "6e7c2b2e-1f0a-4c1e-9d1b-0a1b2c3d4e5f";
const ID_B: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const ID_C: &str = "ffffffff-0000-4000-8000-000000000001";
const WAIT: Duration = Duration::from_secs(30);

fn settings(stub: &GraphStub) -> GraphSettings {
    stub.client_settings(TENANT, CLIENT_ID, SECRET, Duration::from_secs(5))
}

/// A stub with one monitor, and a client that knows the monitor's refresh token.
async fn setup() -> (GraphStub, GraphClient) {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    stub.add_monitor(MONITOR, REFRESH);
    let client = GraphClient::new(settings(&stub)).unwrap();
    client.add_monitor(MONITOR, Secret::new(REFRESH)).await;
    (stub, client)
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (common::graph::percent_decode(k), common::graph::percent_decode(&v.replace('+', " ")))).collect()
}

/// How the test webhook answers Graph's validation request.
#[derive(Debug, Clone, Copy)]
enum Validation {
    /// 200 text/plain with the token (right).
    Echo,
    /// 200 text/plain with something else.
    Wrong,
    /// Never answers.
    Hang,
}

/// A webhook on 127.0.0.1: validation tokens and notification bodies arrive on channels.
struct Webhook {
    url: String,
    validations: mpsc::UnboundedReceiver<String>,
    notifications: mpsc::UnboundedReceiver<serde_json::Value>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Webhook {
    async fn start(mode: Validation) -> Webhook {
        let (vtx, validations) = mpsc::unbounded_channel();
        let (ntx, notifications) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/graph/webhook",
            axum::routing::post(move |Query(q): Query<HashMap<String, String>>, body: Bytes| {
                let (vtx, ntx) = (vtx.clone(), ntx.clone());
                async move {
                    if let Some(token) = q.get("validationToken") {
                        let _ = vtx.send(token.clone());
                        return match mode {
                            Validation::Echo => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token.clone()).into_response(),
                            Validation::Wrong => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "not the token").into_response(),
                            Validation::Hang => std::future::pending::<Response>().await,
                        };
                    }
                    match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(v) => {
                            let _ = ntx.send(v);
                            StatusCode::ACCEPTED.into_response()
                        }
                        Err(_) => StatusCode::BAD_REQUEST.into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/graph/webhook", listener.local_addr().unwrap());
        let stop = common::graph::serve_until_stopped(listener, app);
        Webhook { url, validations, notifications, _stop: stop }
    }

    async fn next_notification(&mut self) -> serde_json::Value {
        tokio::time::timeout(WAIT, self.notifications.recv()).await.expect("notification in time").expect("webhook running")
    }
}

fn near(d: Duration, expected: Duration) -> bool {
    d <= expected && d + Duration::from_secs(10) > expected
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

#[tokio::test]
async fn monitor_token_is_refreshed_and_rotated() {
    let (stub, client) = setup().await;
    let t1 = client.monitor_token(MONITOR).await.unwrap();
    assert!(t1.expose().starts_with("stub-monitor-token-"), "a delegated token, not the app's");

    let reqs = stub.monitor_token_requests();
    assert_eq!(reqs.len(), 1);
    let f = form(&reqs[0].body);
    assert_eq!(f["grant_type"], "refresh_token");
    assert_eq!(f["refresh_token"], REFRESH);
    assert_eq!(f["scope"], MONITOR_SCOPE);
    assert_eq!((f["client_id"].as_str(), f["client_secret"].as_str()), (CLIENT_ID, SECRET));

    // Rotation: the identity platform issued a new refresh token, and the client holds it.
    let rotated = stub.monitor_refresh_token(MONITOR).unwrap();
    assert_ne!(rotated, REFRESH);
    assert_eq!(client.monitor_refresh_token(MONITOR).await.unwrap().expose(), rotated);
    assert_eq!(client.monitor_refresh_token("presence.monitor1@CONTOSO.example").await.unwrap().expose(), rotated, "UPNs are case-insensitive");

    // Cached: no second grant.
    let t2 = client.monitor_token(MONITOR).await.unwrap();
    assert_eq!(t2.expose(), t1.expose());
    assert_eq!(stub.monitor_token_requests().len(), 1);

    // The application token is a different one, from the client-credentials grant.
    let app = client.token().await.unwrap();
    assert_ne!(app.expose(), t1.expose());
    assert_eq!(client.token_fetches(), 1);

    // The old refresh token no longer works.
    let other = GraphClient::new(settings(&stub)).unwrap();
    other.add_monitor(MONITOR, Secret::new(REFRESH)).await;
    let e = other.monitor_token(MONITOR).await.unwrap_err();
    assert_eq!(e, GraphError::Token(format!("monitor {MONITOR}: identity platform answered 400 invalid_grant")));
    assert_eq!(other.monitor_refresh_token(MONITOR).await.unwrap().expose(), REFRESH, "a refused grant keeps the token");

    // Unknown monitor.
    let e = client.monitor_token("nobody@contoso.example").await.unwrap_err();
    assert!(matches!(&e, GraphError::Token(m) if m.starts_with("monitor nobody@contoso.example:")), "{e}");
    assert!(client.monitor_refresh_token("nobody@contoso.example").await.is_none());

    // add_monitor replaces the stored token.
    client.add_monitor(MONITOR, Secret::new("rt-replaced")).await;
    assert_eq!(client.monitor_refresh_token(MONITOR).await.unwrap().expose(), "rt-replaced");
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let (stub, client) = setup().await;
    // With rotation, two grants with one refresh token would see the second refused.
    let (a, b, c) = tokio::join!(client.monitor_token(MONITOR), client.monitor_token(MONITOR), client.monitor_token(MONITOR));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(a.expose() == b.expose() && b.expose() == c.expose());
    assert_eq!(stub.monitor_token_requests().len(), 1);
}

#[tokio::test]
async fn unauthorized_drops_the_monitor_token() {
    let (stub, client) = setup().await;
    let mut hook = Webhook::start(Validation::Echo).await;
    let (id, _) = client.create_subscription(MONITOR, &ids(&[ID_A]), &hook.url, &Secret::new(CLIENT_STATE), Duration::from_secs(3600)).await.unwrap();
    let first = client.monitor_token(MONITOR).await.unwrap();
    assert!(hook.validations.try_recv().is_ok());

    stub.revoke_monitor_tokens();
    let e = client.renew_subscription(MONITOR, &id, Duration::from_secs(3600)).await.unwrap_err();
    assert!(matches!(e, GraphError::Status { status: 401, .. }), "{e}");
    assert_eq!(stub.monitor_token_requests().len(), 1);

    // The next call fetches a new token with the rotated refresh token (a second rotation).
    let granted = client.renew_subscription(MONITOR, &id, Duration::from_secs(3600)).await.unwrap();
    assert!(near(granted, Duration::from_secs(3600)), "{granted:?}");
    let reqs = stub.monitor_token_requests();
    assert_eq!(reqs.len(), 2);
    assert_ne!(form(&reqs[1].body)["refresh_token"], REFRESH);
    assert_ne!(client.monitor_token(MONITOR).await.unwrap().expose(), first.expose());
    assert_eq!(client.monitor_refresh_token(MONITOR).await.unwrap().expose(), stub.monitor_refresh_token(MONITOR).unwrap());
}

#[tokio::test]
async fn subscription_create_renew_reauthorize_delete() {
    let (stub, client) = setup().await;
    let mut hook = Webhook::start(Validation::Echo).await;
    let cs = Secret::new(CLIENT_STATE);

    // Two hours asked, Graph grants 60 minutes at most.
    let (id, granted) = client.create_subscription(MONITOR, &ids(&[ID_A, ID_B]), &hook.url, &cs, Duration::from_secs(7200)).await.unwrap();
    assert!(near(granted, Duration::from_secs(3600)), "{granted:?}");
    let token = hook.validations.try_recv().expect("Graph validated the notification URL before answering");
    assert!(token.starts_with("Validation: Testing client application reachability"), "{token}");

    let subs = stub.subscriptions();
    assert_eq!(subs.len(), 1);
    let s: &StubSubscription = &subs[0];
    assert_eq!(s.id, id);
    assert_eq!(s.ids, [ID_A, ID_B]);
    assert_eq!(s.resource, format!("/communications/presences?$filter=id in ('{ID_A}','{ID_B}')"));
    assert_eq!(s.change_type, "updated");
    assert_eq!(s.notification_url, hook.url);
    assert_eq!(s.lifecycle_notification_url.as_deref(), Some(hook.url.as_str()));
    assert_eq!(s.client_state.as_deref(), Some(CLIENT_STATE));
    assert_eq!(s.monitor, MONITOR.to_ascii_lowercase());
    assert!(near(until(s.expiration), Duration::from_secs(3600)));

    // The request: the monitor's token, expirationDateTime two hours ahead in RFC 3339.
    let create = &stub.subscription_requests()[0];
    assert_eq!(create.auth.as_deref(), Some(format!("Bearer {}", client.monitor_token(MONITOR).await.unwrap().expose()).as_str()));
    let asked = parse_graph_time(create.json()["expirationDateTime"].as_str().unwrap()).unwrap();
    assert!(near(until(asked), Duration::from_secs(7200)), "{:?}", until(asked));

    let granted = client.renew_subscription(MONITOR, &id, Duration::from_secs(1800)).await.unwrap();
    assert!(near(granted, Duration::from_secs(1800)), "{granted:?}");
    assert!(near(until(stub.subscription(&id).unwrap().expiration), Duration::from_secs(1800)));

    client.reauthorize_subscription(MONITOR, &id).await.unwrap();
    assert_eq!(stub.subscription(&id).unwrap().reauthorizations, 1);

    client.delete_subscription(MONITOR, &id).await.unwrap();
    assert!(stub.subscriptions().is_empty());
    // Gone: delete again is fine, renew and reauthorize are 404.
    client.delete_subscription(MONITOR, &id).await.unwrap();
    assert_eq!(stub.subscription_requests().last().unwrap().status, 404);
    let e = client.renew_subscription(MONITOR, &id, Duration::from_secs(600)).await.unwrap_err();
    assert_eq!(e, GraphError::Status { status: 404, retry_after: None, code: Some("ResourceNotFound".into()) });
    let e = client.reauthorize_subscription(MONITOR, &id).await.unwrap_err();
    assert!(matches!(e, GraphError::Status { status: 404, .. }), "{e}");

    // An expired subscription cannot be renewed either.
    let (id2, _) = client.create_subscription(MONITOR, &ids(&[ID_C]), &hook.url, &cs, Duration::from_secs(600)).await.unwrap();
    assert_ne!(id2, id);
    assert!(stub.expire_subscription(&id2));
    let e = client.renew_subscription(MONITOR, &id2, Duration::from_secs(600)).await.unwrap_err();
    assert!(matches!(e, GraphError::Status { status: 404, .. }), "{e}");

    // Throttled: Retry-After reaches the caller.
    stub.push_watch_fault(Fault::throttle(7));
    let e = client.create_subscription(MONITOR, &ids(&[ID_A]), &hook.url, &cs, Duration::from_secs(600)).await.unwrap_err();
    assert_eq!(e, GraphError::Status { status: 429, retry_after: Some(Duration::from_secs(7)), code: Some("TooManyRequests".into()) });

    // Ids that are not object ids never reach Graph.
    let before = stub.requests().len();
    for bad in ["x') or true or ('", "alice@contoso.example"] {
        let e = client.create_subscription(MONITOR, &ids(&[ID_A, bad]), &hook.url, &cs, Duration::from_secs(600)).await.unwrap_err();
        assert!(matches!(e, GraphError::Setup(_)), "{e}");
    }
    assert_eq!(stub.requests().len(), before);
}

#[tokio::test]
async fn subscriptions_refuse_the_application_token() {
    let (stub, client) = setup().await;
    let hook = Webhook::start(Validation::Echo).await;
    let app = client.token().await.unwrap();
    let http = plain_http_client();
    let body = serde_json::json!({
        "changeType": "updated",
        "notificationUrl": hook.url,
        "resource": format!("/communications/presences?$filter=id in ('{ID_A}')"),
        "expirationDateTime": rfc3339(SystemTime::now() + Duration::from_secs(600)),
        "clientState": CLIENT_STATE,
    });
    let url = format!("{}/subscriptions", stub.graph_base());
    let r = http.post(&url).bearer_auth(app.expose()).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("application permission is not supported"), "{v}");
    assert!(stub.subscriptions().is_empty());

    // Without a token: 401. With the monitor's token: 201.
    assert_eq!(http.post(&url).json(&body).send().await.unwrap().status().as_u16(), 401);
    let monitor = client.monitor_token(MONITOR).await.unwrap();
    let r = http.post(&url).bearer_auth(monitor.expose()).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    // Graph's 7-digit fractions parse in drbridge.
    assert!(v["expirationDateTime"].as_str().unwrap().ends_with('Z'));
    assert!(parse_rfc3339(v["expirationDateTime"].as_str().unwrap()).is_some());

    // Renew / delete with the application token: 403 as well.
    let r = http.patch(format!("{url}/{id}")).bearer_auth(app.expose()).json(&serde_json::json!({"expirationDateTime": rfc3339(SystemTime::now() + Duration::from_secs(600))})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(http.delete(format!("{url}/{id}")).bearer_auth(app.expose()).send().await.unwrap().status().as_u16(), 403);
    assert_eq!(stub.subscriptions().len(), 1);
}

#[tokio::test]
async fn failed_validation_refuses_the_subscription() {
    let (stub, client) = setup().await;
    let cs = Secret::new(CLIENT_STATE);
    let mut wrong = Webhook::start(Validation::Wrong).await;
    let e = client.create_subscription(MONITOR, &ids(&[ID_A]), &wrong.url, &cs, Duration::from_secs(600)).await.unwrap_err();
    assert!(matches!(e, GraphError::Status { status: 400, .. }), "{e}");
    assert!(wrong.validations.try_recv().is_ok(), "the validation request was sent");

    let mut hang = Webhook::start(Validation::Hang).await;
    stub.set_validation_timeout(Duration::from_millis(300));
    let e = client.create_subscription(MONITOR, &ids(&[ID_A]), &hang.url, &cs, Duration::from_secs(600)).await.unwrap_err();
    assert!(matches!(e, GraphError::Status { status: 400, .. }), "{e}");
    assert!(hang.validations.try_recv().is_ok());

    // Nobody listening at all.
    let port = common::free_port();
    let e = client.create_subscription(MONITOR, &ids(&[ID_A]), &format!("http://127.0.0.1:{port}/graph/webhook"), &cs, Duration::from_secs(600)).await.unwrap_err();
    assert!(matches!(e, GraphError::Status { status: 400, .. }), "{e}");
    assert!(stub.subscriptions().is_empty());
}

#[tokio::test]
async fn get_presences_shows_the_user_state_over_the_app_session() {
    let (stub, client) = setup().await;
    client.presence(&PresenceOp { user_id: ID_A.into(), state: Some(TeamsPresence::InACall) }).await.unwrap();
    client.presence(&PresenceOp { user_id: ID_B.into(), state: Some(TeamsPresence::Available) }).await.unwrap();
    stub.set_user_presence(ID_A, "DoNotDisturb", "DoNotDisturb");

    let got = client.get_presences(&ids(&[ID_A, ID_B, ID_C])).await.unwrap();
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(got, [t(ID_A, "DoNotDisturb", "DoNotDisturb"), t(ID_B, "Available", "Available"), t(ID_C, "Offline", "Offline")]);
    let req = stub.requests().into_iter().rfind(|r| r.path.ends_with("/communications/getPresencesByUserId")).unwrap();
    assert_eq!(req.auth.as_deref(), Some(format!("Bearer {}", client.token().await.unwrap().expose()).as_str()), "application token");
    assert_eq!(req.json(), serde_json::json!({"ids": [ID_A, ID_B, ID_C]}));

    // The user clears their own state: the app session shows again.
    stub.clear_user_presence(ID_A);
    assert_eq!(client.get_presences(&ids(&[ID_A])).await.unwrap(), [t(ID_A, "Busy", "InACall")]);

    // 650 is the limit: the client refuses more without asking, the stand-in answers 400.
    let many: Vec<String> = (0..651).map(|i| format!("{i:08x}-0000-4000-8000-000000000000")).collect();
    assert_eq!(client.get_presences(&many[..650]).await.unwrap().len(), 650);
    let before = stub.requests().len();
    let e = client.get_presences(&many).await.unwrap_err();
    assert!(matches!(e, GraphError::Setup(_)), "{e}");
    assert_eq!(stub.requests().len(), before, "nothing sent");
    let r = plain_http_client()
        .post(format!("{}/communications/getPresencesByUserId", stub.graph_base()))
        .bearer_auth(client.token().await.unwrap().expose())
        .json(&serde_json::json!({ "ids": many }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    assert!(matches!(client.get_presences(&ids(&["x'"])).await, Err(GraphError::Setup(_))));
    assert_eq!(client.get_presences(&[]).await.unwrap(), []);

    stub.push_watch_fault(Fault::unavailable(Some(3)));
    let e = client.get_presences(&ids(&[ID_A])).await.unwrap_err();
    assert_eq!(e, GraphError::Status { status: 503, retry_after: Some(Duration::from_secs(3)), code: Some("ServiceUnavailable".into()) });
}

#[tokio::test]
async fn notifications_reach_the_webhook_with_the_client_state() {
    let (stub, client) = setup().await;
    let mut hook = Webhook::start(Validation::Echo).await;
    let (id, _) = client.create_subscription(MONITOR, &ids(&[ID_A, ID_B]), &hook.url, &Secret::new(CLIENT_STATE), Duration::from_secs(3600)).await.unwrap();

    assert_eq!(stub.notify_presence_change(ID_B).await, [202]);
    let v = hook.next_notification().await;
    let n = &v["value"][0];
    assert_eq!(n["subscriptionId"], id.as_str());
    assert_eq!(n["clientState"], CLIENT_STATE);
    assert_eq!(n["changeType"], "updated");
    assert_eq!(n["resource"], format!("communications/presences('{ID_B}')"));
    assert_eq!(n["resourceData"]["id"], ID_B);
    assert_eq!(n["tenantId"], TENANT);
    let exp = parse_rfc3339(n["subscriptionExpirationDateTime"].as_str().unwrap()).unwrap();
    let stub_exp = stub.subscription(&id).unwrap().expiration;
    assert!(stub_exp.duration_since(exp).unwrap_or_else(|e| e.duration()) < Duration::from_micros(1));

    // A user no subscription covers: nothing sent.
    assert!(stub.notify_presence_change(ID_C).await.is_empty());
    assert!(hook.notifications.try_recv().is_err());

    // Lifecycle: reauthorizationRequired, answered with reauthorize.
    assert_eq!(stub.send_lifecycle(&id, "reauthorizationRequired").await, Some(202));
    let v = hook.next_notification().await;
    assert_eq!(v["value"][0]["lifecycleEvent"], "reauthorizationRequired");
    assert_eq!(v["value"][0]["clientState"], CLIENT_STATE);
    assert_eq!(v["value"][0]["subscriptionId"], id.as_str());
    assert!(stub.subscription(&id).unwrap().needs_reauthorization);
    client.reauthorize_subscription(MONITOR, &id).await.unwrap();
    assert!(!stub.subscription(&id).unwrap().needs_reauthorization);
    assert_eq!(stub.send_lifecycle("no-such-subscription", "missed").await, None);

    // Expired or removed subscriptions get no notifications.
    assert!(stub.expire_subscription(&id));
    assert!(stub.notify_presence_change(ID_A).await.is_empty());
    assert!(stub.remove_subscription(&id).is_some());
    assert!(stub.subscriptions().is_empty());
}

#[tokio::test]
async fn secrets_never_reach_error_messages() {
    let (stub, client) = setup().await;
    let hook = Webhook::start(Validation::Wrong).await;
    let mut errors: Vec<GraphError> = Vec::new();

    // A refused grant (stale refresh token) and a refused client (wrong secret).
    let stale = GraphClient::new(settings(&stub)).unwrap();
    stale.add_monitor(MONITOR, Secret::new("rt-stale-very-secret")).await;
    errors.push(stale.monitor_token(MONITOR).await.unwrap_err());
    let bad_secret = GraphClient::new(GraphSettings { client_secret: Secret::new("wrong-secret-value"), ..settings(&stub) }).unwrap();
    bad_secret.add_monitor(MONITOR, Secret::new(REFRESH)).await;
    let e = bad_secret.monitor_token(MONITOR).await.unwrap_err();
    assert_eq!(e.to_string(), format!("token request: monitor {MONITOR}: identity platform answered 401 invalid_client"));
    errors.push(e);

    // A failed validation (the request body carried the clientState), a 401, a clientState too long.
    let cs = Secret::new(CLIENT_STATE);
    errors.push(client.create_subscription(MONITOR, &ids(&[ID_A]), &hook.url, &cs, Duration::from_secs(600)).await.unwrap_err());
    let monitor_token = client.monitor_token(MONITOR).await.unwrap();
    stub.revoke_monitor_tokens();
    errors.push(client.reauthorize_subscription(MONITOR, "00000000-0000-0000-0000-000000000000").await.unwrap_err());
    let long = Secret::new(format!("{CLIENT_STATE}{}", "x".repeat(200)));
    errors.push(client.create_subscription(MONITOR, &ids(&[ID_A]), &hook.url, &long, Duration::from_secs(600)).await.unwrap_err());
    let app_token = client.token().await.unwrap();

    let current_refresh = client.monitor_refresh_token(MONITOR).await.unwrap();
    let secrets = [SECRET, REFRESH, "rt-stale-very-secret", "wrong-secret-value", CLIENT_STATE, current_refresh.expose(), monitor_token.expose(), app_token.expose()];
    assert_eq!(errors.len(), 5);
    for e in &errors {
        for text in [e.to_string(), format!("{e:?}")] {
            for s in secrets {
                assert!(!text.contains(s), "{text:?} contains a secret");
            }
        }
    }
    let dbg = format!("{client:?} {current_refresh:?} {monitor_token:?}");
    for s in secrets {
        assert!(!dbg.contains(s), "Debug output contains a secret");
    }
}

#[test]
fn stand_in_and_drbridge_agree_on_timestamps() {
    for secs in [0u64, 951_782_400, 1_709_210_096, 1_795_546_800, 4_102_444_799] {
        let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(123_456_700);
        assert_eq!(parse_rfc3339(&graph_time(t)), Some(t), "{}", graph_time(t));
        assert_eq!(parse_graph_time(&rfc3339(t)), Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(123)));
    }
    assert_eq!(graph_time(UNIX_EPOCH + Duration::from_secs(1_795_546_800)), "2026-11-24T19:00:00.0000000Z");
}
