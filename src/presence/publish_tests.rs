//! Virtual-time tests of the publisher core and its driver.

use super::*;
use crate::presence::graph::TeamsPresence::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn cfg() -> PublisherConfig {
    PublisherConfig {
        expiration: Duration::from_secs(300),
        refresh_fraction: 0.8,
        rate_limit: 100,
        rate_window: S,
        rate_burst: 20,
        batch_max: 20,
        max_in_flight: 4,
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(5),
    }
}

fn core(c: PublisherConfig) -> (Publisher, Instant) {
    let t0 = Instant::now();
    (Publisher::new(c, t0, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000), 7), t0)
}

fn op(u: &str, s: Option<TeamsPresence>) -> PresenceOp {
    PresenceOp { user_id: u.into(), state: s }
}

fn done(p: &mut Publisher, r: &PublishRequest, now: Instant) {
    p.on_result(r.id, &vec![OpOutcome::Done; r.ops.len()], now);
}

#[test]
fn latest_state_only_and_no_resend_of_published() {
    let (mut p, t0) = core(cfg());
    p.desire("u", Some(Available), t0);
    p.desire("u", Some(InACall), t0 + MS);
    p.desire("u", Some(DoNotDisturb), t0 + 2 * MS);
    let r = p.poll_request(t0 + 3 * MS).unwrap();
    assert_eq!(r.ops, vec![op("u", Some(DoNotDisturb))]);
    assert!(p.poll_request(t0 + 3 * MS).is_none());
    done(&mut p, &r, t0 + 10 * MS);
    assert_eq!(p.published("u"), Some(DoNotDisturb));
    p.desire("u", Some(DoNotDisturb), t0 + 20 * MS);
    assert!(p.poll_request(t0 + 20 * MS).is_none(), "equal to published: not sent");
    assert_eq!(p.stats().coalesced, 2);
    // Latency: from the time DND became desired (t0+2ms) to the send (t0+3ms).
    assert_eq!(p.latency().count(), 1);
    assert!(p.latency().quantile(0.5).unwrap() <= Duration::from_micros(1100));
}

/// Teams -> PBX fetches spend the same Graph budget: once they took the burst, the publisher
/// waits for the bucket to refill, and a charge beyond the bucket says when it can go.
#[test]
fn charges_share_the_publishers_budget() {
    let (mut p, t0) = core(cfg()); // 100 per second, burst 20
    for _ in 0..20 {
        assert_eq!(p.try_charge(1, t0), Ok(()));
    }
    let at = p.try_charge(1, t0).expect_err("the burst is spent");
    assert!(at > t0 && at <= t0 + 20 * MS, "the next token comes with the refill (80/s): {:?}", at - t0);
    p.desire("u", Some(InACall), t0);
    assert!(p.poll_request(t0).is_none(), "the publisher has no token left either");
    let r = p.poll_request(at).expect("sent once a token is back");
    assert_eq!(r.ops, vec![op("u", Some(InACall))]);
}

#[test]
fn changes_while_in_flight_collapse() {
    let (mut p, t0) = core(cfg());
    p.desire("u", Some(Available), t0);
    let r = p.poll_request(t0).unwrap();
    p.desire("u", Some(InACall), t0 + MS);
    p.desire("u", Some(Available), t0 + 2 * MS);
    assert!(p.poll_request(t0 + 2 * MS).is_none(), "one request per user at a time");
    done(&mut p, &r, t0 + 5 * MS);
    assert!(p.poll_request(t0 + 5 * MS).is_none(), "back to what was sent: nothing to do");
    p.desire("u", Some(InACall), t0 + 6 * MS);
    let r = p.poll_request(t0 + 6 * MS).unwrap();
    p.desire("u", Some(Away), t0 + 7 * MS);
    done(&mut p, &r, t0 + 8 * MS);
    let r = p.poll_request(t0 + 8 * MS).unwrap();
    assert_eq!(r.ops, vec![op("u", Some(Away))]);
    assert!(p.is_idle() || p.stats().in_flight == 1);
}

#[test]
fn several_ready_users_go_in_batches() {
    let mut c = cfg();
    c.rate_burst = 50;
    let (mut p, t0) = core(c);
    for i in 0..30 {
        p.desire(&format!("u{i}"), Some(InACall), t0);
    }
    let a = p.poll_request(t0).unwrap();
    let b = p.poll_request(t0).unwrap();
    assert_eq!((a.ops.len(), b.ops.len()), (20, 10));
    assert_eq!(a.ops[0], op("u0", Some(InACall)));
    assert_eq!(b.ops[9], op("u29", Some(InACall)));
    assert!(p.poll_request(t0).is_none());
    assert_eq!(p.stats().batches, 2);
}

#[test]
fn clear_then_forget() {
    let (mut p, t0) = core(cfg());
    p.desire("u", None, t0);
    let r = p.poll_request(t0).unwrap();
    assert_eq!(r.ops, vec![op("u", None)]);
    done(&mut p, &r, t0 + MS);
    assert_eq!(p.users(), 0, "a cleared user with nothing going on is forgotten");
    p.desire("u", Some(Away), t0 + 2 * MS);
    let r = p.poll_request(t0 + 2 * MS).unwrap();
    done(&mut p, &r, t0 + 3 * MS);
    p.desire("u", None, t0 + 4 * MS);
    assert_eq!(p.poll_request(t0 + 4 * MS).unwrap().ops, vec![op("u", None)]);
}

/// Runs the core against an instant, always-successful Graph until idle, advancing virtual time
/// to each poll_timeout; returns the send time of every operation.
fn run_to_idle(p: &mut Publisher, mut now: Instant, limit: Duration) -> Vec<(Instant, PresenceOp)> {
    let end = now + limit;
    let mut sent = Vec::new();
    loop {
        while let Some(r) = p.poll_request(now) {
            for o in &r.ops {
                sent.push((now, o.clone()));
            }
            done(p, &r, now);
        }
        if p.is_idle() || now > end {
            return sent;
        }
        now = p.poll_timeout(now).expect("work left, so a timeout").max(now);
    }
}

fn max_in_window(times: &[Instant], w: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[test]
fn rate_limit_holds_in_every_window() {
    let (mut p, t0) = core(cfg());
    for i in 0..1000 {
        p.desire(&format!("u{i}"), Some(Available), t0);
    }
    let sent = run_to_idle(&mut p, t0, Duration::from_secs(60));
    assert_eq!(sent.len(), 1000);
    let times: Vec<Instant> = sent.iter().map(|(t, _)| *t).collect();
    assert!(max_in_window(&times, S) <= 100, "{}", max_in_window(&times, S));
    // Budget 100/s with a burst of 20: 1000 ops take about (1000 - 20) / 80 s.
    let took = *times.last().unwrap() - t0;
    assert!(took >= Duration::from_secs(12) && took <= Duration::from_millis(12_400), "{took:?}");
}

#[test]
fn token_bucket_never_exceeds_limit() {
    let t0 = Instant::now();
    let mut b = RateLimit::new(50, Duration::from_millis(500), 10, t0);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut now = t0;
    let mut times = Vec::new();
    for _ in 0..20_000 {
        now += Duration::from_micros(rng.random_range(0..3000));
        let n = b.available(now).min(rng.random_range(1..5));
        b.take(n, now);
        times.extend(std::iter::repeat_n(now, n as usize));
        assert!(b.next_token_at(now) >= now);
    }
    assert!(max_in_window(&times, Duration::from_millis(500)) <= 50);
    assert!(times.len() > 1000);
}

#[test]
fn throttle_pauses_everything_for_retry_after() {
    let (mut p, t0) = core(cfg());
    p.desire("a", Some(InACall), t0);
    let r = p.poll_request(t0).unwrap();
    p.desire("b", Some(Away), t0 + MS);
    p.on_result(r.id, &[OpOutcome::Throttled(Duration::from_secs(3))], t0 + 10 * MS);
    let resume = t0 + 10 * MS + Duration::from_secs(3);
    assert_eq!(p.poll_timeout(t0 + 10 * MS), Some(resume));
    assert!(p.poll_request(resume - MS).is_none(), "nothing before Retry-After, for any user");
    let r = p.poll_request(resume).unwrap();
    assert_eq!(r.ops, vec![op("a", Some(InACall)), op("b", Some(Away))], "the throttled user first");
    assert_eq!(p.stats().throttled, 1);
}

#[test]
fn unavailable_pauses_that_user_only() {
    let (mut p, t0) = core(cfg());
    p.desire("a", Some(InACall), t0);
    let r = p.poll_request(t0).unwrap();
    p.on_result(r.id, &[OpOutcome::Unavailable(Some(Duration::from_secs(2)))], t0 + MS);
    p.desire("b", Some(Away), t0 + 2 * MS);
    assert_eq!(p.poll_request(t0 + 2 * MS).unwrap().ops, vec![op("b", Some(Away))]);
    assert_eq!(p.poll_timeout(t0 + 2 * MS), Some(t0 + MS + Duration::from_secs(2)));
    assert!(p.poll_request(t0 + Duration::from_millis(2000)).is_none());
    let now = t0 + MS + Duration::from_secs(2);
    p.handle_timeout(now);
    assert_eq!(p.poll_request(now).unwrap().ops, vec![op("a", Some(InACall))]);
}

#[test]
fn failures_back_off_exponentially_with_bounded_jitter() {
    let (mut p, t0) = core(cfg());
    p.desire("a", Some(InACall), t0);
    let mut now = t0;
    let mut gaps = Vec::new();
    for _ in 0..10 {
        let r = p.poll_request(now).unwrap();
        p.on_result(r.id, &[OpOutcome::Failed], now);
        let next = p.poll_timeout(now).unwrap();
        assert!(p.poll_request(next - Duration::from_micros(1)).is_none());
        gaps.push(next - now);
        now = next;
    }
    // attempt n waits within [d/2, d] with d = min(100ms * 2^(n-1), 5s).
    for (i, g) in gaps.iter().enumerate() {
        let d = (Duration::from_millis(100) * (1 << i)).min(Duration::from_secs(5));
        assert!(*g >= d / 2 && *g <= d, "attempt {}: {g:?} not in [{:?}, {d:?}]", i + 1, d / 2);
    }
    // A success resets the backoff.
    let r = p.poll_request(now).unwrap();
    done(&mut p, &r, now);
    p.desire("a", Some(Away), now);
    let r = p.poll_request(now).unwrap();
    p.on_result(r.id, &[OpOutcome::Failed], now);
    assert!(p.poll_timeout(now).unwrap() - now <= Duration::from_millis(100));
    // A 503 without Retry-After backs off as well.
    let (mut p, t0) = core(cfg());
    p.desire("a", Some(InACall), t0);
    let r = p.poll_request(t0).unwrap();
    p.on_result(r.id, &[OpOutcome::Unavailable(None)], t0);
    let wait = p.poll_timeout(t0).unwrap() - t0;
    assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100));
}

#[test]
fn rejected_state_is_not_retried_until_it_changes() {
    let (mut p, t0) = core(cfg());
    p.desire("a", Some(InACall), t0);
    let r = p.poll_request(t0).unwrap();
    p.on_result(r.id, &[OpOutcome::Rejected(403)], t0);
    assert!(p.poll_request(t0 + Duration::from_secs(100)).is_none());
    assert_eq!(p.poll_timeout(t0), None);
    p.desire("a", Some(Away), t0 + S);
    assert_eq!(p.poll_request(t0 + S).unwrap().ops, vec![op("a", Some(Away))]);
}

#[test]
fn holding_state_is_refreshed_before_it_expires() {
    let (mut p, t0) = core(cfg()); // expiration 300 s, refresh at 240 s
    p.desire("a", Some(InACall), t0);
    let r = p.poll_request(t0).unwrap();
    done(&mut p, &r, t0 + MS);
    assert_eq!(p.poll_timeout(t0 + MS), Some(t0 + Duration::from_secs(240)));
    assert!(p.poll_request(t0 + Duration::from_secs(239)).is_none());
    let now = t0 + Duration::from_secs(240);
    let r = p.poll_request(now).unwrap();
    assert_eq!(r.ops, vec![op("a", Some(InACall))]);
    done(&mut p, &r, now);
    assert_eq!(p.stats().refreshes, 1);
    assert_eq!(p.latency().count(), 1, "refreshes are not publish latency");
    assert_eq!(p.poll_timeout(now), Some(now + Duration::from_secs(240)));
    // A refresh that fails is retried with backoff.
    let now = now + Duration::from_secs(240);
    let r = p.poll_request(now).unwrap();
    p.on_result(r.id, &[OpOutcome::Failed], now);
    let next = p.poll_timeout(now).unwrap();
    assert!(next > now && next <= now + Duration::from_millis(100));
    assert_eq!(p.poll_request(next).unwrap().ops, vec![op("a", Some(InACall))]);
    // Cleared sessions are not refreshed.
    let (mut p, t0) = core(cfg());
    p.desire("b", Some(Away), t0);
    let r = p.poll_request(t0).unwrap();
    done(&mut p, &r, t0);
    p.desire("b", None, t0 + S);
    let r = p.poll_request(t0 + S).unwrap();
    done(&mut p, &r, t0 + S);
    assert_eq!(p.poll_timeout(t0 + S), None);
}

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl PublishLog for Recorder {
    fn published(&mut self, user: &str, state: Option<TeamsPresence>, at: SystemTime) {
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
        self.0.lock().unwrap().push(format!("published {user} {state:?} {secs}"));
    }
    fn pending(&mut self, user: &str, state: Option<TeamsPresence>, since: SystemTime) {
        let secs = since.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
        self.0.lock().unwrap().push(format!("pending {user} {state:?} {secs}"));
    }
}

#[test]
fn log_sees_pending_and_published() {
    let rec = Recorder::default();
    let (p, t0) = core(cfg());
    let mut p = p.with_log(Box::new(rec.clone()));
    p.desire("u", Some(InACall), t0);
    let r = p.poll_request(t0).unwrap();
    p.desire("u", Some(Away), t0 + MS);
    done(&mut p, &r, t0 + 2 * MS);
    p.desire("u", Some(InACall), t0 + 3 * MS);
    let base = 1_700_000_000_000u128;
    assert_eq!(
        *rec.0.lock().unwrap(),
        vec![
            format!("pending u Some(InACall) {base}"),
            format!("pending u Some(Away) {}", base + 1),
            format!("published u Some(InACall) {base}"),
            format!("pending u Some(Away) {}", base + 1),
            // Reverted to what Graph shows: settled again.
            format!("published u Some(InACall) {base}"),
        ]
    );
}

#[test]
fn restore_resumes_pending_and_refreshes_old_sessions() {
    let (mut p, t0) = core(cfg());
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    // Published an hour ago: the 5-minute session lapsed, refresh at once.
    p.restore("old", Some((Some(InACall), wall - Duration::from_secs(3600))), None, t0);
    // Published a minute ago: refresh at 240 s after it.
    p.restore("fresh", Some((Some(Away), wall - Duration::from_secs(60))), None, t0);
    // Pending after a Graph outage.
    p.restore("pend", Some((Some(Available), wall - Duration::from_secs(10))), Some((Some(DoNotDisturb), wall - Duration::from_secs(5))), t0);
    let r = p.poll_request(t0).unwrap();
    assert_eq!(r.ops, vec![op("old", Some(InACall)), op("pend", Some(DoNotDisturb))]);
    done(&mut p, &r, t0);
    assert_eq!(p.poll_timeout(t0), Some(t0 + Duration::from_secs(180)));
    assert_eq!(p.user_view("fresh", t0).unwrap().next_action_in_secs, Some(180));
}

#[test]
fn latency_histogram_quantiles() {
    let mut h = LatencyHistogram::default();
    assert_eq!(h.quantile(0.5), None);
    for ms in 1..=1000u64 {
        h.record(Duration::from_millis(ms));
    }
    let p50 = h.quantile(0.5).unwrap().as_secs_f64();
    let p99 = h.quantile(0.99).unwrap().as_secs_f64();
    assert!((p50 - 0.5).abs() / 0.5 < 0.07, "{p50}");
    assert!((p99 - 0.99).abs() / 0.99 < 0.07, "{p99}");
    assert_eq!(h.max(), Some(Duration::from_secs(1)));
    for us in [0u64, 1, 15, 16, 17, 1000, 123_456, u32::MAX as u64 * 4] {
        let i = LatencyHistogram::index(us);
        assert!(LatencyHistogram::upper(i) > us || i == (POWERS * SUB - 1) as usize, "{us}");
        if i > 0 {
            assert!(LatencyHistogram::upper(i - 1) <= us, "{us}");
        }
    }
}

#[test]
fn admin_view() {
    let (mut p, t0) = core(cfg());
    assert!(p.user_view("x", t0).is_none());
    p.desire("x", Some(Away), t0);
    let v = p.user_view("x", t0).unwrap();
    assert!(!v.settled && !v.published_known && v.desired == Some(Away));
    let r = p.poll_request(t0).unwrap();
    done(&mut p, &r, t0);
    let v = p.user_view("x", t0).unwrap();
    assert!(v.settled && v.published == Some(Away));
    assert_eq!(v.published_at_unix, Some(1_700_000_000));
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["published"], "Away");
}

// --- driver, with tokio's paused clock --------------------------------------------------------

struct FakeGraph {
    log: Mutex<Vec<(tokio::time::Instant, Vec<PresenceOp>)>>,
    delay: Duration,
    answers: Mutex<VecDeque<OpOutcome>>,
}

impl PresenceSink for FakeGraph {
    async fn execute(&self, ops: Vec<PresenceOp>) -> Vec<OpOutcome> {
        self.log.lock().unwrap().push((tokio::time::Instant::now(), ops.clone()));
        tokio::time::sleep(self.delay).await;
        let mut a = self.answers.lock().unwrap();
        ops.iter().map(|_| a.pop_front().unwrap_or(OpOutcome::Done)).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn driver_coalesces_limits_and_honours_retry_after() {
    let sink = Arc::new(FakeGraph { log: Mutex::new(Vec::new()), delay: Duration::from_millis(40), answers: Mutex::new(VecDeque::new()) });
    sink.answers.lock().unwrap().push_back(OpOutcome::Throttled(Duration::from_secs(2)));
    let mut reg = Registry::default();
    let metrics = PublishMetrics::register(&mut reg);
    let core = Publisher::new(cfg(), clock(), SystemTime::now(), 1);
    let pubg = spawn(core, sink.clone(), 64, metrics);
    let start = tokio::time::Instant::now();
    for round in 0..5 {
        for u in 0..200 {
            let s = [Available, InACall, Away, DoNotDisturb, InAConferenceCall][(u + round) % 5];
            pubg.handle.desire(format!("u{u}"), Some(s)).await.unwrap();
        }
    }
    // Wait (virtual time) until all are published.
    loop {
        {
            let c = pubg.core.lock().unwrap();
            if c.is_idle() && c.stats().done >= 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(start.elapsed() < Duration::from_secs(60), "publisher did not settle");
    }
    let latency_n = pubg.core.lock().unwrap().latency().count();
    {
        let c = pubg.core.lock().unwrap();
        for u in 0..200 {
            assert_eq!(c.published(&format!("u{u}")), Some([Available, InACall, Away, DoNotDisturb, InAConferenceCall][(u + 4) % 5]));
        }
        let log = sink.log.lock().unwrap();
        let first = log[0].0;
        // The first request was throttled for 2 s once its answer came (40 ms): requests already
        // sent before it went, nothing else was sent until the pause ended.
        let resume = first + Duration::from_millis(40) + Duration::from_secs(2);
        assert!(log.iter().all(|(t, _)| *t < first + Duration::from_millis(40) || *t >= resume), "{:?}", log.iter().map(|(t, _)| *t - first).take(10).collect::<Vec<_>>());
        assert!(log.iter().any(|(t, _)| *t >= resume));
        let times: Vec<Instant> = log.iter().flat_map(|(t, ops)| std::iter::repeat_n(t.into_std(), ops.len())).collect();
        assert!(max_in_window(&times, S) <= 100);
        let ops: usize = log.iter().map(|(_, o)| o.len()).sum();
        assert!(ops < 1000 / 2, "coalesced: {ops} operations for 1000 changes");
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(text.contains("drbridge_presence_changes_total 1000"), "{text}");
    assert!(text.contains("drbridge_presence_publish_latency_p99_seconds"));
    assert!(text.contains(&format!("drbridge_presence_publish_latency_seconds_count {latency_n}\n")), "{text}");
    let Publishing { handle, task, .. } = pubg;
    drop(handle);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}
