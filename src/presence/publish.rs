//! Publishing presence to Microsoft Graph: a sans-IO core ([`Publisher`]) and a tokio driver
//! ([`spawn`]).
//!
//! Input: "user U wants `Some(pair)` or nothing (`None` = clearPresence)". The core keeps per user
//! the latest desired state, what Graph was last told, and at most one request in flight:
//!
//! - **Coalescing**: only the latest desired state is sent; a state equal to the published one is
//!   not sent again (changes that come and go while a request is in flight cost nothing).
//! - **Refresh**: while a set state holds, it is sent again at 80% of `expirationDuration` so the
//!   application session never lapses.
//! - **Rate limit**: a token bucket of `burst` tokens refilled at `(limit - burst) / window`, one
//!   token per Graph request (a `$batch` of n costs n: Graph throttles each inner request), so no
//!   window of `window` length ever holds more than `limit` requests.
//! - **Failures**: 429 pauses everything for Retry-After; 503 (502/504) pauses that user for
//!   Retry-After; other failures back off exponentially with jitter, bounded by `retry_max`;
//!   4xx rejections are not retried until the desired state changes.
//! - **`$batch`**: when more than one user is ready, up to `batch_max` go in one request.
//! - **Latency**: from the time a state became desired to the send of the request that Graph
//!   accepted, into a [`LatencyHistogram`] (p50/p99).
//! - **Persistence**: every change of the pending / published state goes to a [`PublishLog`].

use crate::presence::graph::{GraphClient, OpOutcome, PresenceOp, TeamsPresence};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Errors of the publisher's handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("presence publisher stopped")]
    Closed,
    #[error("presence publisher queue full")]
    Full,
}

/// Where the publisher records what it has to do and what Graph accepted, so that a restart
/// resumes (see [`Publisher::restore`]). Called synchronously from the core; keep it cheap.
pub trait PublishLog: Send {
    /// Graph shows `state` (`None`: drbridge's session is cleared) since `at`; nothing is pending
    /// for `user` any more (also called when a pending state reverts to the published one).
    fn published(&mut self, user: &str, state: Option<TeamsPresence>, at: SystemTime);
    /// `state` is wanted since `since` but not yet accepted by Graph.
    fn pending(&mut self, user: &str, state: Option<TeamsPresence>, since: SystemTime);
}

/// A log that forgets everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLog;

impl PublishLog for NoLog {
    fn published(&mut self, _: &str, _: Option<TeamsPresence>, _: SystemTime) {}
    fn pending(&mut self, _: &str, _: Option<TeamsPresence>, _: SystemTime) {}
}

/// Tunables of the publisher (see `[presence]` in config/drbridge.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherConfig {
    /// `expirationDuration` sent with setPresence (Graph: PT5M..PT4H).
    pub expiration: Duration,
    /// Fraction of `expiration` after which a holding state is sent again.
    pub refresh_fraction: f64,
    /// Graph requests allowed in any window of `rate_window`.
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// Requests that may go at once after a quiet period (< rate_limit).
    pub rate_burst: u32,
    /// Most operations in one `$batch` (1..=20).
    pub batch_max: usize,
    /// Most HTTP requests outstanding at once.
    pub max_in_flight: usize,
    /// First retry delay after a failure; doubles per attempt, with jitter, up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            expiration: Duration::from_secs(3600),
            refresh_fraction: 0.8,
            rate_limit: 1200,
            rate_window: Duration::from_secs(30),
            rate_burst: 100,
            batch_max: 20,
            max_in_flight: 4,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

/// Token bucket in exact integer arithmetic: one token is `window_ns` units, and every
/// nanosecond adds `limit - burst` units, up to `burst` tokens. Any window of `window` length
/// then admits at most `burst + (limit - burst) = limit` tokens.
#[derive(Debug, Clone)]
pub struct RateLimit {
    unit: u128,
    refill_per_ns: u128,
    capacity: u128,
    level: u128,
    last: Instant,
}

impl RateLimit {
    pub fn new(limit: u32, window: Duration, burst: u32, now: Instant) -> RateLimit {
        let burst = burst.clamp(1, limit.max(2) - 1);
        let unit = window.as_nanos().max(1);
        let capacity = burst as u128 * unit;
        RateLimit { unit, refill_per_ns: (limit.max(2) - burst) as u128, capacity, level: capacity, last: now }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let dt = (now - self.last).as_nanos();
            self.level = (self.level + dt.saturating_mul(self.refill_per_ns)).min(self.capacity);
            self.last = now;
        }
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        (self.level / self.unit) as u32
    }

    /// Takes `n` tokens (callers check [`available`](Self::available) first).
    pub fn take(&mut self, n: u32, now: Instant) {
        self.refill(now);
        self.level = self.level.saturating_sub(n as u128 * self.unit);
    }

    /// When the next whole token will be there (`now` if one is).
    pub fn next_token_at(&mut self, now: Instant) -> Instant {
        self.tokens_at(1, now)
    }

    /// When `n` whole tokens will be there (`n` is capped at the bucket's capacity).
    pub fn tokens_at(&mut self, n: u32, now: Instant) -> Instant {
        self.refill(now);
        let need = (n as u128 * self.unit).min(self.capacity).max(self.unit);
        if self.level >= need {
            return now;
        }
        let missing = need - self.level;
        let ns = missing.div_ceil(self.refill_per_ns.max(1));
        now + Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }
}

/// Log-linear latency histogram (16 sub-buckets per power of two of microseconds, ~4% error),
/// from 1 us to ~71 minutes; larger values land in the last bucket.
#[derive(Clone)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
    sum_us: u128,
    max_us: u64,
}

const SUB: u32 = 16;
const POWERS: u32 = 33;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: vec![0; (POWERS * SUB) as usize], count: 0, sum_us: 0, max_us: 0 }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LatencyHistogram(n={}, p50={:?}, p99={:?})", self.count, self.quantile(0.5), self.quantile(0.99))
    }
}

impl LatencyHistogram {
    fn index(us: u64) -> usize {
        if us < SUB as u64 {
            return us as usize;
        }
        let p = 63 - us.leading_zeros(); // >= 4
        let sub = (us >> (p - 4)) & (SUB as u64 - 1);
        (((p - 3) * SUB) as u64 + sub).min((POWERS * SUB - 1) as u64) as usize
    }

    /// Upper bound (exclusive) of bucket `i`, in microseconds.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB as u64 {
            return i + 1;
        }
        let p = i / SUB as u64 + 3;
        let sub = i % SUB as u64;
        (SUB as u64 + sub + 1) << (p - 4)
    }

    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[Self::index(us)] += 1;
        self.count += 1;
        self.sum_us += us as u128;
        self.max_us = self.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros((self.sum_us / self.count as u128) as u64))
    }

    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.max_us))
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket (capped at the maximum seen).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(Self::upper(i).min(self.max_us.max(1))));
            }
        }
        self.max()
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }
}

/// One HTTP request the driver must make: a single operation, or a `$batch` when several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub id: u64,
    pub ops: Vec<PresenceOp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    state: Option<TeamsPresence>,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    state: Option<TeamsPresence>,
    desired_at: Instant,
    sent_at: Instant,
    refresh: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    /// What Graph shows from us; `None` = unknown (never sent since start, nothing restored).
    published: Option<Published>,
    desired: Option<TeamsPresence>,
    desired_at: Instant,
    in_flight: Option<Flight>,
    /// Not before this (backoff, 503 Retry-After).
    not_before: Option<Instant>,
    refresh_at: Option<Instant>,
    attempts: u32,
    /// Graph refused this desired state (4xx): not retried until the desire changes.
    rejected: Option<Option<TeamsPresence>>,
    queued: bool,
    /// The entry in `timers`, if any.
    timer: Option<Instant>,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            published: None,
            desired: None,
            desired_at: now,
            in_flight: None,
            not_before: None,
            refresh_at: None,
            attempts: 0,
            rejected: None,
            queued: false,
            timer: None,
        }
    }

    fn dirty(&self) -> bool {
        self.published.map(|p| p.state) != Some(self.desired) && self.rejected != Some(self.desired)
    }

    /// What to send now, and whether it is a refresh.
    fn due(&self, now: Instant) -> Option<(Option<TeamsPresence>, bool)> {
        if self.in_flight.is_some() || self.not_before.is_some_and(|t| t > now) {
            return None;
        }
        if self.dirty() {
            return Some((self.desired, false));
        }
        if self.desired.is_some() && self.refresh_at.is_some_and(|t| t <= now) {
            return Some((self.desired, true));
        }
        None
    }

    /// The next instant this slot wants attention by itself.
    fn wake(&self, now: Instant) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some(t) = self.not_before.filter(|t| *t > now) {
            return (self.dirty() || (self.refresh_at.is_some() && self.desired.is_some())).then_some(t);
        }
        if self.dirty() {
            return None; // ready now: belongs in the ready queue
        }
        // A refresh already due is ready now, not a timer.
        self.refresh_at.filter(|t| *t > now && self.desired.is_some())
    }
}

/// Counters of the core (monotonic unless said otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Desired-state changes received.
    pub changes: u64,
    /// Changes that were replaced by a later one (or reverted) before being sent.
    pub coalesced: u64,
    pub requests: u64,
    pub batches: u64,
    pub ops_sent: u64,
    pub refreshes: u64,
    pub done: u64,
    pub throttled: u64,
    pub unavailable: u64,
    pub failed: u64,
    pub rejected: u64,
    /// Users with a state not yet accepted by Graph (gauge).
    pub pending_users: u64,
    /// Requests outstanding (gauge).
    pub in_flight: u64,
}

/// The per-user view for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserPublishView {
    /// What drbridge wants Graph to show (`null`: nothing, i.e. cleared).
    pub desired: Option<TeamsPresence>,
    /// `false` while the desired state is not yet accepted by Graph.
    pub settled: bool,
    /// Whether Graph's state is known; when it is, `published` is what Graph shows from us.
    pub published_known: bool,
    pub published: Option<TeamsPresence>,
    /// Wall-clock time of the accepted request (seconds since the Unix epoch).
    pub published_at_unix: Option<u64>,
    pub in_flight: bool,
    pub retry_attempts: u32,
    /// Seconds until the next retry or refresh, if one is scheduled.
    pub next_action_in_secs: Option<u64>,
    pub rejected: bool,
}

/// The sans-IO publisher core. Drive it with [`desire`](Self::desire),
/// [`poll_request`](Self::poll_request), [`on_result`](Self::on_result),
/// [`poll_timeout`](Self::poll_timeout) and [`handle_timeout`](Self::handle_timeout).
pub struct Publisher {
    cfg: PublisherConfig,
    slots: HashMap<Arc<str>, Slot>,
    ready: VecDeque<Arc<str>>,
    timers: BTreeSet<(Instant, Arc<str>)>,
    bucket: RateLimit,
    paused_until: Option<Instant>,
    requests: HashMap<u64, Vec<Arc<str>>>,
    next_id: u64,
    rng: rand::rngs::SmallRng,
    log: Box<dyn PublishLog>,
    anchor: (Instant, SystemTime),
    latency: LatencyHistogram,
    /// Samples not yet taken by the driver (for the Prometheus histogram), bounded.
    samples: Vec<Duration>,
    stats: PublisherStats,
}

/// Most latency samples kept for [`Publisher::take_latency_samples`].
const SAMPLES_MAX: usize = 65_536;

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("users", &self.slots.len()).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl Publisher {
    /// `now` and `wall` anchor the core's monotonic time to wall-clock time for the log;
    /// `seed` seeds the retry jitter.
    pub fn new(cfg: PublisherConfig, now: Instant, wall: SystemTime, seed: u64) -> Publisher {
        let bucket = RateLimit::new(cfg.rate_limit, cfg.rate_window, cfg.rate_burst, now);
        Publisher {
            cfg,
            slots: HashMap::new(),
            ready: VecDeque::new(),
            timers: BTreeSet::new(),
            bucket,
            paused_until: None,
            requests: HashMap::new(),
            next_id: 1,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
            log: Box::new(NoLog),
            anchor: (now, wall),
            latency: LatencyHistogram::default(),
            samples: Vec::new(),
            stats: PublisherStats::default(),
        }
    }

    /// Sets the persistence log (default: [`NoLog`]).
    pub fn with_log(mut self, log: Box<dyn PublishLog>) -> Publisher {
        self.log = log;
        self
    }

    pub fn config(&self) -> &PublisherConfig {
        &self.cfg
    }

    fn wall(&self, t: Instant) -> SystemTime {
        let (i, w) = self.anchor;
        if t >= i {
            w + (t - i)
        } else {
            w.checked_sub(i - t).unwrap_or(w)
        }
    }

    fn instant(&self, w: SystemTime, now: Instant) -> Instant {
        let (i, aw) = self.anchor;
        let base = if w >= aw { i.checked_add(w.duration_since(aw).unwrap_or_default()) } else { i.checked_sub(aw.duration_since(w).unwrap_or_default()) };
        base.map(|b| b.min(now)).unwrap_or(now)
    }

    fn refresh_after(&self) -> Duration {
        self.cfg.expiration.mul_f64(self.cfg.refresh_fraction.clamp(0.1, 0.95))
    }

    /// Resumes a user from the log: what Graph was last told and when, and what was pending.
    /// A restored set state older than the refresh point is refreshed at once.
    pub fn restore(&mut self, user: &str, published: Option<(Option<TeamsPresence>, SystemTime)>, pending: Option<(Option<TeamsPresence>, SystemTime)>, now: Instant) {
        let mut slot = Slot::new(now);
        if let Some((state, at)) = published {
            let at = self.instant(at, now);
            slot.published = Some(Published { state, at });
            slot.desired = state;
            slot.desired_at = at;
            if state.is_some() {
                slot.refresh_at = Some(at.checked_add(self.refresh_after()).unwrap_or(now));
            }
        }
        if let Some((state, since)) = pending {
            slot.desired = state;
            slot.desired_at = self.instant(since, now);
        }
        let key: Arc<str> = user.into();
        if let Some(old) = self.slots.insert(key.clone(), slot) {
            if let Some(t) = old.timer {
                self.timers.remove(&(t, key.clone()));
            }
        }
        self.settle(&key, now);
    }

    /// User `user` wants `state` (`None`: drbridge has nothing to say, clearPresence) since `at`.
    pub fn desire(&mut self, user: &str, state: Option<TeamsPresence>, at: Instant) {
        self.stats.changes += 1;
        let key: Arc<str> = match self.slots.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = user.into();
                self.slots.insert(k.clone(), Slot::new(at));
                k
            }
        };
        let (pending_before, dirty, published) = {
            let slot = self.slots.get_mut(&key).expect("just inserted");
            let fresh = slot.published.is_none() && slot.in_flight.is_none() && slot.desired.is_none() && !slot.queued;
            if slot.desired == state && !fresh {
                return;
            }
            let pending_before = !fresh && slot.dirty() || slot.in_flight.is_some_and(|f| Some(f.state) != slot.published.map(|p| p.state));
            slot.desired = state;
            slot.desired_at = at;
            slot.rejected = None;
            (pending_before, slot.dirty(), slot.published)
        };
        if pending_before {
            self.stats.coalesced += 1;
        }
        if dirty {
            self.log.pending(user, state, self.wall(at));
        } else if let Some(p) = published {
            self.log.published(user, p.state, self.wall(p.at));
        }
        self.settle(&key, at);
    }

    /// Puts a user in the ready queue or the timer set, as its state says.
    fn settle(&mut self, key: &Arc<str>, now: Instant) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        let wake = slot.wake(now);
        if slot.timer != wake {
            if let Some(t) = slot.timer.take() {
                self.timers.remove(&(t, key.clone()));
            }
            if let Some(t) = wake {
                self.timers.insert((t, key.clone()));
                slot.timer = Some(t);
            }
        }
        if slot.due(now).is_some() && !slot.queued {
            slot.queued = true;
            self.ready.push_back(key.clone());
        }
        // Forget users that are cleared and have nothing going on.
        if slot.published.is_some_and(|p| p.state.is_none())
            && slot.desired.is_none()
            && slot.in_flight.is_none()
            && !slot.queued
            && slot.timer.is_none()
        {
            self.slots.remove(key);
        }
    }

    /// Moves users whose timer is due into the ready queue.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((t, _)) = self.timers.first() {
            if *t > now {
                break;
            }
            let (_, key) = self.timers.pop_first().expect("non-empty");
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.timer = None;
                if slot.not_before.is_some_and(|t| t <= now) {
                    slot.not_before = None;
                }
            }
            self.settle(&key, now);
        }
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
    }

    /// The next request to make now, if the rate limit, pauses and concurrency allow one.
    pub fn poll_request(&mut self, now: Instant) -> Option<PublishRequest> {
        self.handle_timeout(now);
        if self.requests.len() >= self.cfg.max_in_flight.max(1) || self.paused_until.is_some_and(|t| t > now) || self.ready.is_empty() {
            return None;
        }
        // With a backlog, wait until a whole batch can go: Graph counts every request inside a
        // $batch anyway, so this costs no throughput and saves HTTP round trips.
        let want = self.batch_want();
        let room = (self.bucket.available(now) as usize).min(self.cfg.batch_max.clamp(1, crate::presence::graph::BATCH_MAX));
        if room == 0 || room < want {
            return None;
        }
        let mut users = Vec::new();
        let mut ops = Vec::new();
        while users.len() < room {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(slot) = self.slots.get_mut(&key) else { continue };
            slot.queued = false;
            let Some((state, refresh)) = slot.due(now) else { continue };
            slot.in_flight = Some(Flight { state, desired_at: slot.desired_at, sent_at: now, refresh });
            if slot.timer.is_some() {
                let t = slot.timer.take().expect("checked");
                self.timers.remove(&(t, key.clone()));
            }
            if refresh {
                self.stats.refreshes += 1;
            }
            ops.push(PresenceOp { user_id: key.to_string(), state });
            users.push(key);
        }
        if ops.is_empty() {
            return None;
        }
        self.bucket.take(ops.len() as u32, now);
        let id = self.next_id;
        self.next_id += 1;
        self.stats.requests += 1;
        self.stats.ops_sent += ops.len() as u64;
        if ops.len() > 1 {
            self.stats.batches += 1;
        }
        self.requests.insert(id, users);
        Some(PublishRequest { id, ops })
    }

    /// Operations worth waiting for before sending: the ready users, up to a batch (and the
    /// bucket's capacity).
    fn batch_want(&self) -> usize {
        self.ready.len().min(self.cfg.batch_max.clamp(1, crate::presence::graph::BATCH_MAX)).min(self.cfg.rate_burst.max(1) as usize)
    }

    fn backoff(&mut self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let d = self.cfg.retry_initial.saturating_mul(1u32 << exp).min(self.cfg.retry_max).max(Duration::from_millis(1));
        // "Equal jitter": half fixed, half random, so retries of many users spread out.
        let half = d / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }

    /// The outcome of request `id`, one per operation in the order of the request. Missing
    /// outcomes count as failures.
    pub fn on_result(&mut self, id: u64, outcomes: &[OpOutcome], now: Instant) {
        let Some(users) = self.requests.remove(&id) else { return };
        for (i, key) in users.iter().enumerate() {
            let outcome = outcomes.get(i).copied().unwrap_or(OpOutcome::Failed);
            let Some(flight) = self.slots.get_mut(key).and_then(|s| s.in_flight.take()) else { continue };
            match outcome {
                OpOutcome::Done => {
                    self.stats.done += 1;
                    let refresh_after = self.refresh_after();
                    let slot = self.slots.get_mut(key).expect("present");
                    slot.published = Some(Published { state: flight.state, at: flight.sent_at });
                    slot.attempts = 0;
                    slot.not_before = None;
                    slot.refresh_at = flight.state.map(|_| flight.sent_at + refresh_after);
                    let settled = !slot.dirty();
                    if !flight.refresh {
                        let d = flight.sent_at.saturating_duration_since(flight.desired_at);
                        self.latency.record(d);
                        if self.samples.len() < SAMPLES_MAX {
                            self.samples.push(d);
                        }
                    }
                    let (desired, desired_at) = (slot.desired, slot.desired_at);
                    self.log.published(key, flight.state, self.wall(flight.sent_at));
                    if !settled {
                        self.log.pending(key, desired, self.wall(desired_at));
                    }
                }
                OpOutcome::Throttled(d) => {
                    self.stats.throttled += 1;
                    let until = now + d;
                    self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
                    let slot = self.slots.get_mut(key).expect("present");
                    if flight.refresh {
                        slot.refresh_at = Some(now);
                    }
                }
                OpOutcome::Unavailable(ra) => {
                    self.stats.unavailable += 1;
                    let attempts = self.slots.get(key).map_or(0, |s| s.attempts) + 1;
                    let wait = match ra {
                        Some(d) => d,
                        None => self.backoff(attempts),
                    };
                    let slot = self.slots.get_mut(key).expect("present");
                    slot.attempts = attempts;
                    slot.not_before = Some(now + wait);
                    if flight.refresh {
                        slot.refresh_at = Some(now);
                    }
                }
                OpOutcome::Failed => {
                    self.stats.failed += 1;
                    let attempts = self.slots.get(key).map_or(0, |s| s.attempts) + 1;
                    let wait = self.backoff(attempts);
                    let slot = self.slots.get_mut(key).expect("present");
                    slot.attempts = attempts;
                    slot.not_before = Some(now + wait);
                    if flight.refresh {
                        slot.refresh_at = Some(now);
                    }
                }
                OpOutcome::Rejected(code) => {
                    self.stats.rejected += 1;
                    tracing::warn!(user = %key, status = code, "graph refused a presence request; not retried until the state changes");
                    let slot = self.slots.get_mut(key).expect("present");
                    slot.attempts = 0;
                    slot.not_before = None;
                    if flight.refresh {
                        slot.refresh_at = None;
                    } else if slot.desired == flight.state {
                        slot.rejected = Some(flight.state);
                    }
                }
            }
            // A throttled user goes back to the front: it was next in line.
            let throttled = matches!(outcome, OpOutcome::Throttled(_));
            if throttled {
                if let Some(slot) = self.slots.get_mut(key) {
                    if slot.due(now).is_some() && !slot.queued {
                        slot.queued = true;
                        self.ready.push_front(key.clone());
                    }
                }
            }
            self.settle(key, now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) / [`poll_request`](Self::poll_request)
    /// should be called next, if nothing else happens first.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let mut next = self.timers.first().map(|(t, _)| *t);
        if !self.ready.is_empty() && self.requests.len() < self.cfg.max_in_flight.max(1) {
            let want = self.batch_want().max(1) as u32;
            let mut t = self.bucket.tokens_at(want, now);
            if let Some(p) = self.paused_until {
                t = t.max(p);
            }
            next = Some(next.map_or(t, |n| n.min(t)));
        } else if let Some(p) = self.paused_until.filter(|p| *p > now) {
            next = Some(next.map_or(p, |n| n.min(p)));
        }
        next
    }

    /// Nothing pending, in flight or queued (refresh timers may still be set).
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.requests.is_empty() && self.slots.values().all(|s| !s.dirty() && s.in_flight.is_none())
    }

    pub fn stats(&self) -> PublisherStats {
        let mut s = self.stats.clone();
        s.pending_users = self.slots.values().filter(|s| s.dirty() || s.in_flight.is_some_and(|f| !f.refresh)).count() as u64;
        s.in_flight = self.requests.len() as u64;
        s
    }

    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Publish latencies recorded since the last call (at most 65,536 are kept in between).
    pub fn take_latency_samples(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.samples)
    }

    /// Graph is paused (429) until this instant.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Users known to the core.
    pub fn users(&self) -> usize {
        self.slots.len()
    }

    /// Takes `n` requests from the publisher's rate limit for another user of the same Graph
    /// budget (Teams -> PBX presence fetches): `Err(when)` if they are not there yet.
    pub fn try_charge(&mut self, n: u32, now: Instant) -> Result<(), Instant> {
        if self.bucket.available(now) >= n {
            self.bucket.take(n, now);
            Ok(())
        } else {
            Err(self.bucket.tokens_at(n, now))
        }
    }

    /// What Graph shows from us for `user` (`None` when unknown or cleared).
    pub fn published(&self, user: &str) -> Option<TeamsPresence> {
        self.slots.get(user).and_then(|s| s.published).and_then(|p| p.state)
    }

    /// The admin view of one user.
    pub fn user_view(&self, user: &str, now: Instant) -> Option<UserPublishView> {
        let s = self.slots.get(user)?;
        let next = s.not_before.filter(|t| *t > now).or(s.refresh_at.filter(|_| s.desired.is_some()));
        Some(UserPublishView {
            desired: s.desired,
            settled: !s.dirty() && s.in_flight.is_none_or(|f| f.refresh),
            published_known: s.published.is_some(),
            published: s.published.and_then(|p| p.state),
            published_at_unix: s.published.and_then(|p| self.wall(p.at).duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            in_flight: s.in_flight.is_some(),
            retry_attempts: s.attempts,
            next_action_in_secs: next.map(|t| t.saturating_duration_since(now).as_secs()),
            rejected: s.rejected.is_some(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// tokio driver

/// Executes publish requests (the Graph client; something else in tests).
pub trait PresenceSink: Send + Sync + 'static {
    fn execute(&self, ops: Vec<PresenceOp>) -> impl Future<Output = Vec<OpOutcome>> + Send;
}

impl PresenceSink for GraphClient {
    async fn execute(&self, ops: Vec<PresenceOp>) -> Vec<OpOutcome> {
        GraphClient::execute(self, &ops).await
    }
}

/// Prometheus metrics of the publisher.
#[derive(Clone, Default)]
pub struct PublishMetrics {
    changes: Counter,
    requests: Family<Vec<(String, String)>, Counter>,
    ops: Family<Vec<(String, String)>, Counter>,
    latency: Option<Histogram>,
    p50: Gauge<f64, AtomicU64>,
    p99: Gauge<f64, AtomicU64>,
    pending: Gauge,
}

impl std::fmt::Debug for PublishMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublishMetrics")
    }
}

impl PublishMetrics {
    /// Registers the metrics (prefix `drbridge_presence_`).
    pub fn register(reg: &mut Registry) -> PublishMetrics {
        let latency = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]);
        let m = PublishMetrics { latency: Some(latency), ..Default::default() };
        let sub = reg.sub_registry_with_prefix("drbridge_presence");
        sub.register("changes", "Desired presence changes received by the publisher", m.changes.clone());
        sub.register("graph_requests", "HTTP requests to Graph by kind (single, batch)", m.requests.clone());
        sub.register("graph_ops", "Presence operations by outcome", m.ops.clone());
        sub.register("publish_latency_seconds", "Desired state to accepted request sent", m.latency.clone().expect("set"));
        sub.register("publish_latency_p50_seconds", "Median publish latency", m.p50.clone());
        sub.register("publish_latency_p99_seconds", "99th percentile publish latency", m.p99.clone());
        sub.register("pending_users", "Users whose state is not yet accepted by Graph", m.pending.clone());
        m
    }

    fn label(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_string(), v.to_string())]
    }
}

/// A desired state on its way to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desire {
    pub user: String,
    pub state: Option<TeamsPresence>,
    pub at: Instant,
}

/// Sends desired states to the publisher task. Cloneable.
#[derive(Debug, Clone)]
pub struct PublishHandle {
    tx: tokio::sync::mpsc::Sender<Desire>,
}

fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl PublishHandle {
    /// Waits for room in the queue.
    pub async fn desire(&self, user: impl Into<String>, state: Option<TeamsPresence>) -> Result<(), PublishError> {
        self.tx.send(Desire { user: user.into(), state, at: clock() }).await.map_err(|_| PublishError::Closed)
    }

    /// Never waits.
    pub fn try_desire(&self, user: impl Into<String>, state: Option<TeamsPresence>) -> Result<(), PublishError> {
        use tokio::sync::mpsc::error::TrySendError;
        self.tx.try_send(Desire { user: user.into(), state, at: clock() }).map_err(|e| match e {
            TrySendError::Full(_) => PublishError::Full,
            TrySendError::Closed(_) => PublishError::Closed,
        })
    }
}

/// The running publisher: its handle, the shared core (for views and stats) and the task.
#[derive(Debug)]
pub struct Publishing {
    pub handle: PublishHandle,
    pub core: Arc<Mutex<Publisher>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the driver task. It runs until every [`PublishHandle`] is dropped and the requests in
/// flight have finished (pending retries are then left to the log).
pub fn spawn<S: PresenceSink>(core: Publisher, sink: Arc<S>, queue: usize, metrics: PublishMetrics) -> Publishing {
    let (tx, rx) = tokio::sync::mpsc::channel(queue.max(1));
    let core = Arc::new(Mutex::new(core));
    let task = tokio::spawn(drive(core.clone(), sink, rx, metrics));
    Publishing { handle: PublishHandle { tx }, core, task }
}

fn lock(core: &Mutex<Publisher>) -> std::sync::MutexGuard<'_, Publisher> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

async fn drive<S: PresenceSink>(core: Arc<Mutex<Publisher>>, sink: Arc<S>, mut rx: tokio::sync::mpsc::Receiver<Desire>, m: PublishMetrics) {
    let mut tasks: tokio::task::JoinSet<(u64, Vec<OpOutcome>)> = tokio::task::JoinSet::new();
    let mut task_ids: HashMap<tokio::task::Id, u64> = HashMap::new();
    let mut open = true;
    let mut recorded = 0u64;
    loop {
        let now = clock();
        let deadline = {
            let mut c = lock(&core);
            while let Some(req) = c.poll_request(now) {
                let kind = if req.ops.len() > 1 { "batch" } else { "single" };
                m.requests.get_or_create(&PublishMetrics::label("kind", kind)).inc();
                let id = req.id;
                let sink = sink.clone();
                let h = tasks.spawn(async move { (id, sink.execute(req.ops).await) });
                task_ids.insert(h.id(), id);
            }
            if let Some(h) = &m.latency {
                for d in c.take_latency_samples() {
                    h.observe(d.as_secs_f64());
                }
            }
            if c.latency().count() != recorded {
                recorded = c.latency().count();
                if let Some(q) = c.latency().quantile(0.5) {
                    m.p50.set(q.as_secs_f64());
                }
                if let Some(q) = c.latency().quantile(0.99) {
                    m.p99.set(q.as_secs_f64());
                }
            }
            m.pending.set(c.stats().pending_users as i64);
            c.poll_timeout(now)
        };
        if !open && tasks.is_empty() {
            break;
        }
        tokio::select! {
            msg = rx.recv(), if open => match msg {
                Some(d) => {
                    let mut c = lock(&core);
                    m.changes.inc();
                    c.desire(&d.user, d.state, d.at);
                    // Take what else is queued in one go (bounded, so results are not starved).
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(d) => {
                                m.changes.inc();
                                c.desire(&d.user, d.state, d.at);
                            }
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            Some(res) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (id, outcomes) = match res {
                    Ok((tid, (id, outcomes))) => {
                        task_ids.remove(&tid);
                        (id, outcomes)
                    }
                    Err(e) => match task_ids.remove(&e.id()) {
                        Some(id) => (id, Vec::new()),
                        None => continue,
                    },
                };
                for o in &outcomes {
                    let label = match o {
                        OpOutcome::Done => "done",
                        OpOutcome::Throttled(_) => "throttled",
                        OpOutcome::Unavailable(_) => "unavailable",
                        OpOutcome::Failed => "failed",
                        OpOutcome::Rejected(_) => "rejected",
                    };
                    m.ops.get_or_create(&PublishMetrics::label("outcome", label)).inc();
                }
                lock(&core).on_result(id, &outcomes, clock());
            }
            _ = sleep_until_opt(deadline) => {}
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
