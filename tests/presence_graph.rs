//! The Graph client and the presence publisher against a local stand-in for the Microsoft
//! identity platform and Graph (tests/common/graph.rs), and the admin server over loopback HTTP.
//! Every wait is bounded and wakes on the stub's requests; nothing sleeps to synchronise.

mod common;

use common::graph::{max_in_window, parse_iso_duration, Fault, GraphStub, PAIRS};
use drbridge::admin::{self, Admin, AdminMetrics, GraphNotification, IngestEvent};
use drbridge::presence::graph::{GraphClient, GraphSettings, PresenceOp, Secret, TeamsPresence};
use drbridge::presence::publish::{spawn, PublishMetrics, Publisher, PublisherConfig, Publishing};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

const TENANT: &str = "contoso.example";
const CLIENT_ID: &str = "0d7f1e2c-3b4a-4c5d-8e9f-a0b1c2d3e4f5";
const SECRET: &str = "lab-client-secret~not-a-real-one";
const WAIT: Duration = Duration::from_secs(30);

fn settings(stub: &GraphStub) -> GraphSettings {
    stub.client_settings(TENANT, CLIENT_ID, SECRET, Duration::from_secs(5))
}

fn pcfg() -> PublisherConfig {
    PublisherConfig {
        expiration: Duration::from_secs(3600),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(2),
        ..PublisherConfig::default()
    }
}

async fn start(stub: &GraphStub, cfg: PublisherConfig) -> (Publishing, Arc<GraphClient>) {
    let client = Arc::new(GraphClient::new(settings(stub)).unwrap());
    let core = Publisher::new(cfg, tokio::time::Instant::now().into_std(), SystemTime::now(), 42);
    let mut reg = Registry::default();
    (spawn(core, client.clone(), 4096, PublishMetrics::register(&mut reg)), client)
}

/// Waits (bounded) until the publisher has taken in every answer: the stub records a request
/// before its answer reaches the core.
async fn idle(pubg: &Publishing) {
    tokio::time::timeout(WAIT, async {
        while !pubg.core.lock().unwrap().is_idle() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("publisher idle");
}

fn shows(stub: &GraphStub, user: &str, p: TeamsPresence) -> bool {
    stub.session(user).is_some_and(|s| s.availability == p.availability() && s.activity == p.activity())
}

#[tokio::test]
async fn token_is_fetched_once_and_reused() {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    stub.add_user("alice@contoso.example", "id-alice");
    let client = GraphClient::new(settings(&stub)).unwrap();
    assert_eq!(client.resolve_user("Alice@contoso.example").await.unwrap().as_deref(), Some("id-alice"));
    assert_eq!(client.resolve_user("nobody@contoso.example").await.unwrap(), None);
    for p in TeamsPresence::ALL {
        client.presence(&PresenceOp { user_id: "id-alice".into(), state: Some(p) }).await.unwrap();
    }
    client.presence(&PresenceOp { user_id: "id-alice".into(), state: None }).await.unwrap();
    // clearPresence without a session: Graph's 404 is fine.
    client.presence(&PresenceOp { user_id: "id-alice".into(), state: None }).await.unwrap();

    let tokens = stub.token_requests();
    assert_eq!(tokens.len(), 1, "one token for all requests");
    assert_eq!(client.token_fetches(), 1);
    let t = &tokens[0];
    assert_eq!(t.method, "POST");
    assert_eq!(t.path, format!("/{TENANT}/oauth2/v2.0/token"));
    for part in ["grant_type=client_credentials", &format!("client_id={CLIENT_ID}"), "scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"] {
        assert!(t.body.contains(part), "token form lacks {part}");
    }
    let graph: Vec<_> = stub.requests().into_iter().filter(|r| r.path.starts_with("/v1.0")).collect();
    assert_eq!(graph.len(), 9);
    assert!(graph.iter().all(|r| r.auth.as_deref() == Some("Bearer stub-token-1")));
    assert_eq!(graph[0].query, "$select=id");
    // The secret is not in anything but the token request.
    assert!(graph.iter().all(|r| !r.body.contains(SECRET)));
    assert!(!format!("{client:?}").contains(SECRET));

    // A refused token (401) is dropped; the next request fetches a new one.
    stub.revoke_tokens();
    assert!(client.presence(&PresenceOp { user_id: "id-alice".into(), state: Some(TeamsPresence::Away) }).await.is_err());
    client.presence(&PresenceOp { user_id: "id-alice".into(), state: Some(TeamsPresence::Away) }).await.unwrap();
    assert_eq!(stub.token_requests().len(), 2);
}

#[tokio::test]
async fn publisher_sends_correct_bodies_and_batches() {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    let (pubg, client) = start(&stub, pcfg()).await;
    let users: Vec<String> = (0..5).map(|i| format!("user-{i}")).collect();
    for (u, p) in users.iter().zip(TeamsPresence::ALL) {
        pubg.handle.desire(u.clone(), Some(p)).await.unwrap();
    }
    assert!(stub.wait_until(WAIT, |s| users.iter().zip(TeamsPresence::ALL).all(|(u, p)| shows(s, u, p))).await);
    pubg.handle.desire("user-0", None).await.unwrap();
    assert!(stub.wait_until(WAIT, |s| s.session("user-0").is_none()).await);

    let ops = stub.presence_ops();
    assert_eq!(ops.len(), 6, "{ops:?}");
    for r in &ops {
        let b = r.json();
        assert_eq!(b["sessionId"], CLIENT_ID);
        if r.path.ends_with("setPresence") {
            let pair = (b["availability"].as_str().unwrap(), b["activity"].as_str().unwrap());
            assert!(PAIRS.contains(&pair), "{pair:?}");
            assert_eq!(b["expirationDuration"], "PT1H");
            assert_eq!(parse_iso_duration(b["expirationDuration"].as_str().unwrap()), Some(3600));
            assert_eq!(b.as_object().unwrap().len(), 4);
        } else {
            assert_eq!(b, serde_json::json!({"sessionId": CLIENT_ID}));
        }
    }
    assert!(ops.iter().any(|r| r.in_batch), "several ready users went in a $batch");
    assert_eq!(client.token_fetches(), 1);
    idle(&pubg).await;
    let c = pubg.core.lock().unwrap();
    assert_eq!(c.published("user-1"), Some(TeamsPresence::InACall));
    assert!(c.latency().count() >= 6);
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    stub.push_fault(Fault::throttle(1));
    let (pubg, _) = start(&stub, pcfg()).await;
    pubg.handle.desire("u1", Some(TeamsPresence::InACall)).await.unwrap();
    // The throttled answer has come back once the core knows of it.
    assert!(stub.wait_until(WAIT, |s| s.presence_op_count() >= 1).await);
    tokio::time::timeout(WAIT, async {
        while pubg.core.lock().unwrap().paused_until().is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the 429 reached the publisher");
    // Another user's change during the pause must wait too (a 429 pauses the whole app).
    pubg.handle.desire("u2", Some(TeamsPresence::Away)).await.unwrap();
    assert!(stub.wait_until(WAIT, |s| shows(s, "u1", TeamsPresence::InACall) && shows(s, "u2", TeamsPresence::Away)).await);
    let ops = stub.presence_ops();
    assert_eq!(ops[0].status, 429);
    let first = ops[0].at;
    for r in &ops[1..] {
        assert!(r.at >= first + Duration::from_secs(1), "request {:?} after the 429, before Retry-After (1 s) elapsed", r.at - first);
    }
    assert_eq!(ops.iter().filter(|r| r.status == 200).count(), 2);
}

#[tokio::test]
async fn unavailable_503_is_retried_with_backoff() {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    for _ in 0..3 {
        stub.push_user_fault("u1", Fault::unavailable(None));
    }
    stub.push_user_fault("u2", Fault::unavailable(Some(1)));
    let (pubg, _) = start(&stub, pcfg()).await;
    pubg.handle.desire("u1", Some(TeamsPresence::DoNotDisturb)).await.unwrap();
    assert!(stub.wait_until(WAIT, |s| shows(s, "u1", TeamsPresence::DoNotDisturb)).await);
    pubg.handle.desire("u2", Some(TeamsPresence::Available)).await.unwrap();
    assert!(stub.wait_until(WAIT, |s| shows(s, "u2", TeamsPresence::Available)).await);

    let ops = stub.presence_ops();
    let u1: Vec<_> = ops.iter().filter(|r| r.user().as_deref() == Some("u1")).collect();
    assert_eq!(u1.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 503, 503, 200]);
    let gaps: Vec<Duration> = u1.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Backoff 100 ms doubling, equal jitter: attempt n waits within [d/2, d] (+ the round trip).
    for (i, g) in gaps.iter().enumerate() {
        let d = Duration::from_millis(100) * (1 << i);
        assert!(*g >= d / 2, "retry {} after {g:?}, before {:?}", i + 1, d / 2);
        assert!(*g < d + Duration::from_millis(500), "retry {} after {g:?}", i + 1);
    }
    assert!(gaps[2] > gaps[0], "backoff grows: {gaps:?}");
    let u2: Vec<_> = ops.iter().filter(|r| r.user().as_deref() == Some("u2")).collect();
    assert_eq!(u2.len(), 2);
    assert!(u2[1].at - u2[0].at >= Duration::from_secs(1), "503 Retry-After honoured");
}

#[tokio::test]
async fn flood_is_coalesced_and_stays_under_the_rate_limit() {
    // Scaled down: 500 requests per 1 s window (Graph's 1500 / 30 s, sped up), 2,000 users,
    // 10,000 changes sent as fast as the queue takes them.
    const USERS: usize = 2000;
    const ROUNDS: usize = 5;
    const LIMIT: u32 = 500;
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    let cfg = PublisherConfig { rate_limit: LIMIT, rate_window: Duration::from_secs(1), rate_burst: 50, ..pcfg() };
    let (pubg, client) = start(&stub, cfg).await;
    let state = |u: usize, r: usize| TeamsPresence::ALL[(u * 7 + r) % 5];
    let t0 = Instant::now();
    for r in 0..ROUNDS {
        for u in 0..USERS {
            pubg.handle.desire(format!("u{u}"), Some(state(u, r))).await.unwrap();
        }
    }
    let fed = t0.elapsed();
    let all_final = |s: &GraphStub| {
        let sessions = s.sessions();
        (0..USERS).all(|u| sessions.get(&format!("u{u}")).is_some_and(|x| (x.availability.as_str(), x.activity.as_str()) == PAIRS[(u * 7 + ROUNDS - 1) % 5]))
    };
    assert!(stub.wait_until(Duration::from_secs(60), all_final).await, "every user ends in its last state");
    let ops = stub.presence_ops();
    let changes = USERS * ROUNDS;
    assert!(ops.len() < changes / 2, "{} requests for {changes} changes: not coalesced", ops.len());
    assert!(ops.iter().all(|r| r.status == 200));
    // Recorded arrival times: no 1 s window holds more than the budget. The window is measured
    // 25 ms short to allow for delivery skew between the send (where the limit applies) and the
    // arrival (where the stub records).
    let times: Vec<Instant> = ops.iter().map(|r| r.at).collect();
    let worst = max_in_window(&times, Duration::from_millis(975));
    assert!(worst <= LIMIT as usize, "{worst} requests in one window (limit {LIMIT})");
    let batches = stub.requests().iter().filter(|r| r.path.ends_with("/$batch")).count();
    assert!(batches > 0);
    assert_eq!(client.token_fetches(), 1);
    idle(&pubg).await;
    let c = pubg.core.lock().unwrap();
    let st = c.stats();
    eprintln!(
        "flood: {changes} changes fed in {fed:?}; {} ops in {} requests ({batches} batches); worst window {worst}; latency {:?}",
        ops.len(),
        st.requests,
        c.latency()
    );
}

#[tokio::test]
async fn slow_graph_does_not_block_intake() {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    stub.set_delay(Duration::from_millis(300));
    let cfg = PublisherConfig { max_in_flight: 2, ..pcfg() };
    let (pubg, _) = start(&stub, cfg).await;
    // Intake keeps going while both request slots wait on the slow server.
    let t0 = Instant::now();
    for i in 0..3000 {
        pubg.handle.desire(format!("s{}", i % 100), Some(TeamsPresence::ALL[i % 5])).await.unwrap();
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    let last = |i: usize| TeamsPresence::ALL[(2900 + i) % 5];
    assert!(stub.wait_until(WAIT, |s| (0..100).all(|i| shows(s, &format!("s{i}"), last(i)))).await);
}

// --- admin over loopback HTTP ---------------------------------------------------------------------

struct AdminLab {
    base: String,
    ingest: mpsc::Receiver<IngestEvent>,
    webhook: mpsc::Receiver<GraphNotification>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for AdminLab {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn admin_lab(pubg: &Publishing) -> AdminLab {
    let mut reg = Registry::default();
    let metrics = AdminMetrics::register(&mut reg);
    let (itx, irx) = mpsc::channel(64);
    let (wtx, wrx) = mpsc::channel(64);
    let a = Admin {
        token: Secret::new("admin-token-xyz"),
        client_state: Some(Secret::new("cs-abc")),
        registry: Arc::new(reg),
        metrics,
        view: Arc::new(admin::publisher_view(pubg.core.clone())),
        ingest: itx,
        webhook: wtx,
    };
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(admin::serve(listener, a, async move {
        let _ = stopped.await;
    }));
    AdminLab { base, ingest: irx, webhook: wrx, stop: Some(stop) }
}

#[tokio::test]
async fn admin_endpoints_over_http() {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    let (pubg, _) = start(&stub, pcfg()).await;
    pubg.handle.desire("alice", Some(TeamsPresence::InACall)).await.unwrap();
    assert!(stub.wait_until(WAIT, |s| shows(s, "alice", TeamsPresence::InACall)).await);
    let mut lab = admin_lab(&pubg).await;
    // drbridge builds its own rustls config (ring); this plain client needs a process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", lab.base);

    let r = http.get(url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let event = serde_json::json!({"user": "alice@contoso.example", "source": "csta", "device": "4711", "state": "ringing"});
    let r = http.post(url("/presence/ingest")).json(&event).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.post(url("/presence/ingest")).bearer_auth("admin-token-xyz").header("content-type", "application/json").body("{\"user\":").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http.post(url("/presence/ingest")).bearer_auth("admin-token-xyz").json(&event).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let got = tokio::time::timeout(WAIT, lab.ingest.recv()).await.unwrap().unwrap();
    assert_eq!((got.user.as_str(), got.state.as_str()), ("alice@contoso.example", "ringing"));

    let r = http.get(url("/presence/users/alice")).bearer_auth("admin-token-xyz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["publish"]["published"], "InACall");
    assert_eq!(v["publish"]["settled"], true);
    let r = http.get(url("/presence/users/nobody")).bearer_auth("admin-token-xyz").send().await.unwrap();
    assert_eq!(r.status(), 404);

    let r = http.get(url("/metrics")).bearer_auth("admin-token-xyz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("drbridge_admin_ingest_events_total{result=\"accepted\"} 1"));

    // Graph's subscription validation: the decoded token back as text/plain, at once.
    let t0 = Instant::now();
    let r = http.post(url("/graph/webhook?validationToken=Validation%3A+Testing+client+application+reachability+for+subscription+Request-Id%3A+abc")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "Validation: Testing client application reachability for subscription Request-Id: abc");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let note = serde_json::json!({"value": [
        {"subscriptionId": "s1", "clientState": "cs-abc", "changeType": "updated", "resource": "communications/presences('id-alice')",
         "resourceData": {"availability": "DoNotDisturb", "activity": "Presenting"}},
        {"subscriptionId": "s2", "clientState": "wrong", "changeType": "updated", "resource": "x"}]});
    let r = http.post(url("/graph/webhook")).json(&note).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let n = tokio::time::timeout(WAIT, lab.webhook.recv()).await.unwrap().unwrap();
    assert_eq!(n.subscription_id, "s1");
    assert!(lab.webhook.try_recv().is_err());
}
