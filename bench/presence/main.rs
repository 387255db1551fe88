//! Presence publisher benchmark against the local Graph stand-in (tests/common/graph.rs).
//!
//! 1. baseline: one bare HTTP POST setPresence at a time to the stand-in (reqwest), the
//!    round trip every publish pays at least;
//! 2. core: state changes per second the sans-IO core takes in (no channel, no I/O);
//! 3. absorb: state changes per second the whole pipeline (handle -> channel -> core, with
//!    Graph's default budget of 1200 requests / 30 s) takes in, 10,000 users;
//! 4. latency: desired state -> accepted request sent, p50/p99, at a paced offered load
//!    (a) below the default budget, (b) heavy load with a budget raised so it does not bind.
//!
//! Run: `bash bench/presence/run.sh` (or `cargo bench --bench presence`; `-- --quick` for a
//! shorter run). Everything stays on 127.0.0.1.

#[path = "../../tests/common/graph.rs"]
mod graph;

use drbridge::presence::graph::{GraphClient, GraphSettings, TeamsPresence};
use drbridge::presence::publish::{spawn, LatencyHistogram, PublishMetrics, Publisher, PublisherConfig, Publishing};
use graph::GraphStub;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const TENANT: &str = "bench.example";
const CLIENT_ID: &str = "00000000-0000-0000-0000-00000000b0b0";
const SECRET: &str = "bench-secret";

fn settings(stub: &GraphStub) -> GraphSettings {
    stub.client_settings(TENANT, CLIENT_ID, SECRET, Duration::from_secs(10))
}

fn start(stub: &GraphStub, cfg: PublisherConfig) -> Publishing {
    let client = Arc::new(GraphClient::new(settings(stub)).expect("client"));
    let core = Publisher::new(cfg, Instant::now(), SystemTime::now(), 1);
    let mut reg = Registry::default();
    spawn(core, client, 4096, PublishMetrics::register(&mut reg))
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} ms", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "-".into())
}

async fn wait_idle(p: &Publishing, limit: Duration) {
    let end = Instant::now() + limit;
    while !p.core.lock().unwrap().is_idle() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn baseline(stub: &GraphStub, n: usize) -> LatencyHistogram {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let client = GraphClient::new(settings(stub)).expect("client");
    let token = client.token().await.expect("token");
    let url = format!("{}/users/base/presence/setPresence", stub.graph_base());
    let mut h = LatencyHistogram::default();
    for i in 0..n {
        let p = TeamsPresence::ALL[i % 5];
        let body = serde_json::json!({"sessionId": CLIENT_ID, "availability": p.availability(), "activity": p.activity(), "expirationDuration": "PT1H"});
        let t = Instant::now();
        let r = http.post(&url).bearer_auth(token.expose()).json(&body).send().await.expect("send");
        let _ = r.bytes().await;
        h.record(t.elapsed());
    }
    h
}

fn core_intake(changes: usize, users: usize) -> f64 {
    let t0 = Instant::now();
    let mut p = Publisher::new(PublisherConfig::default(), t0, SystemTime::now(), 1);
    let names: Vec<String> = (0..users).map(|u| format!("user-{u}")).collect();
    let start = Instant::now();
    for i in 0..changes {
        let u = i % users;
        p.desire(&names[u], Some(TeamsPresence::ALL[(i / users + u) % 5]), t0);
        if i % 1000 == 0 {
            while let Some(r) = p.poll_request(t0) {
                p.on_result(r.id, &vec![drbridge::presence::graph::OpOutcome::Done; r.ops.len()], t0);
            }
        }
    }
    changes as f64 / start.elapsed().as_secs_f64()
}

async fn absorb(stub: &GraphStub, changes: usize, users: usize) -> (f64, usize) {
    let p = start(stub, PublisherConfig::default());
    let names: Vec<String> = (0..users).map(|u| format!("user-{u}")).collect();
    let t = Instant::now();
    for i in 0..changes {
        let u = i % users;
        p.handle.desire(names[u].clone(), Some(TeamsPresence::ALL[(i / users + u) % 5])).await.expect("desire");
    }
    // Taken in = counted by the core.
    while (p.core.lock().unwrap().stats().changes as usize) < changes {
        tokio::task::yield_now().await;
    }
    let rate = changes as f64 / t.elapsed().as_secs_f64();
    let sent = p.core.lock().unwrap().stats().ops_sent as usize;
    (rate, sent)
}

/// Offered load of `per_sec` changes over `users` for `secs`, paced in ticks of at least 10 ms.
async fn latency(stub: &GraphStub, cfg: PublisherConfig, per_sec: usize, users: usize, secs: u64) -> (LatencyHistogram, u64, u64) {
    let p = start(stub, cfg);
    let period = Duration::from_millis(10).max(Duration::from_secs(1) / per_sec.max(1) as u32);
    let per_tick = ((per_sec as f64 * period.as_secs_f64()).round() as usize).max(1);
    let mut tick = tokio::time::interval(period);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let u = (i * 7919) % users;
            p.handle.desire(format!("lat-{u}"), Some(TeamsPresence::ALL[(i / users + u) % 5])).await.expect("desire");
            i += 1;
        }
    }
    wait_idle(&p, Duration::from_secs(60)).await;
    let c = p.core.lock().unwrap();
    (c.latency().clone(), c.stats().changes, c.stats().ops_sent)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;

    let base = baseline(&stub, 2000 / scale).await;
    println!("baseline  bare POST setPresence round trip: p50 {}  p99 {}  (n={})", ms(base.quantile(0.5)), ms(base.quantile(0.99)), base.count());

    let core_rate = core_intake(2_000_000 / scale, 10_000);
    println!("core      sans-IO intake: {:.0} changes/s (10,000 users)", core_rate);

    let (rate, sent) = absorb(&stub, 1_000_000 / scale, 10_000).await;
    println!("absorb    pipeline intake: {:.0} changes/s (10,000 users, default budget 1200/30 s; {sent} operations sent meanwhile)", rate);

    let (h, changes, ops) = latency(&stub, PublisherConfig::default(), 20, 500, 10 / scale.min(2) as u64).await;
    println!(
        "latency   20 changes/s, default budget: p50 {}  p99 {}  ({changes} changes, {ops} operations)  p50/baseline {:.1}x",
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        h.quantile(0.5).unwrap_or_default().as_secs_f64() / base.quantile(0.5).unwrap_or(Duration::from_micros(1)).as_secs_f64()
    );

    let heavy = PublisherConfig { rate_limit: 1_000_000, rate_window: Duration::from_secs(1), rate_burst: 10_000, max_in_flight: 8, ..PublisherConfig::default() };
    let (h, changes, ops) = latency(&stub, heavy, 5000, 5000, 10 / scale.min(2) as u64).await;
    println!(
        "latency   5000 changes/s, budget not binding: p50 {}  p99 {}  ({changes} changes, {ops} operations)  p50/baseline {:.1}x",
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        h.quantile(0.5).unwrap_or_default().as_secs_f64() / base.quantile(0.5).unwrap_or(Duration::from_micros(1)).as_secs_f64()
    );
}
