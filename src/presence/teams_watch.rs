//! The [`TeamsWatch`]: the sans-IO core that watches the Microsoft Teams presence of the
//! directory's users, for the Teams -> PBX direction.
//!
//! Graph change-notification subscriptions on `/communications/presences?$filter=id in (...)`
//! hold at most 650 users each, live at most 60 minutes and need the delegated token of a
//! "presence monitor" account; subscription chunk `i` belongs to monitor `i`. Notifications
//! reach drbridge's webhook without resource data, so the core asks for the current presence of
//! the changed users with `POST /communications/getPresencesByUserId` (application token). The
//! core decides what to ask when; the edge does the HTTP and feeds back what happened:
//!
//! ```text
//!   watch.set_users(object_ids_and_users, now)                // directory (re)load
//!   loop {
//!       watch.handle_timeout(now);                            // when poll_timeout() is reached
//!       while let Some(a) = watch.poll_action() { ... }       // Create/Renew/Reauthorize/Delete/Fetch
//!       watch.on_created(key, id, expires_in, now)            // results of Create
//!       watch.on_renewed(key, expires_in, now)                // ... of Renew / Reauthorize
//!       watch.on_failed(key, status, retry_after, now)        // ... any of the three failed
//!       watch.on_notification(sub_id, resource, lifecycle, now) // the webhook
//!       watch.on_fetched(presences, now) / on_fetch_failed(ids, status, retry_after, now)
//!       watch.set_published(user, pair)                       // what drbridge publishes itself
//!       while let Some(u) = watch.poll_update() { ... }       // Teams status changes -> PBX side
//!   }
//! ```
//!
//! Rules:
//! - Planning: users keep their chunk across [`TeamsWatch::set_users`] calls; new users fill the
//!   lowest chunk with room; users beyond `monitors.len() * users_per_subscription` are not
//!   watched ([`TeamsWatch::unwatched`]). A chunk whose ids are unchanged keeps its subscription;
//!   a changed chunk gets a new subscription, and the old one is deleted only once the new one is
//!   up (it keeps serving meanwhile); a chunk left without users is deleted at once.
//! - Lifetime: a subscription asks `lifetime` (at most 60 min) and is renewed `renew_before` its
//!   expiry (at 80 % of the grant when Graph grants less than `2 * renew_before`). One that
//!   expires without a successful renew, is removed by Graph (`subscriptionRemoved`) or whose
//!   renew is answered 404 is created again at once. A Create/Renew/Reauthorize without a result
//!   after 60 s counts as failed (status 0).
//! - Failures back off exponentially from `retry_initial` to `retry_max` (a hard cap), with a
//!   0..25 % jitter derived from the subscription key (deterministic: tests are exact and
//!   monitors spread out); 429/503 with Retry-After wait that long (capped at 1 h). A failed
//!   renew is retried until the subscription expires, then Create takes over.
//! - Fetches: after a subscription is created, all its users are fetched once; every
//!   `resync_interval`, all watched users. A notification marks its user dirty; dirty users are
//!   fetched `fetch_delay` after the first of them (coalescing), in batches of at most
//!   `fetch_batch`, each user once. A failed fetch holds every fetch for Retry-After or backoff.
//! - Echo suppression: when Teams reports exactly the pair drbridge itself publishes for the
//!   user ([`TeamsWatch::set_published`]), it is drbridge's own state reflected: no update, and
//!   the last Teams-originated status ([`TeamsWatch::status`]) stays.
//! - Network input (ids, resources, statuses, Retry-After) never panics; everything is bounded:
//!   subscriptions by the monitors, the dirty sets and updates by the watched users, the action
//!   queue by a cap (an action dropped at the cap is recovered by the response timeout, or is a
//!   Delete of a subscription that expires by itself within the hour).

use super::UserId;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Most users in one presence subscription, and in one `getPresencesByUserId` (Graph's limit).
pub const MAX_IDS: usize = 650;
/// Longest lifetime Graph grants a presence subscription.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// A Create/Renew/Reauthorize without a result for this long counts as failed (status 0).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest Retry-After honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest configurable delay.
const MAX_DELAY: Duration = Duration::from_secs(86_400);
/// Longest user object id accepted (a GUID has 36 characters).
const MAX_ID_LEN: usize = 64;
/// Longest subscription id accepted.
const MAX_SUBSCRIPTION_ID_LEN: usize = 128;
/// Longest availability / activity string accepted from Graph.
const MAX_STATUS_LEN: usize = 64;
/// Create results still awaited for subscriptions no longer wanted (Delete them if they come).
const MAX_ORPHANS: usize = 256;
/// Published pairs kept for users not (yet) given to `set_users`.
const SPARE_PUBLISHED: usize = 4096;
/// Jitter key of the fetch backoff (subscription keys count up from 1).
const FETCH_KEY: u64 = u64::MAX;

/// Settings. [`TeamsWatch::new`] clamps them into sane ranges (noted per field).
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Monitor account names (UPNs), in order: subscription chunk i uses monitors[i].
    pub monitors: Vec<String>,
    /// Users per subscription (1..=650). Default 650.
    pub users_per_subscription: usize,
    /// Lifetime asked for a subscription (Graph caps presence subscriptions at 60 min; clamped
    /// to 1 s..=60 min). Default 55 min.
    pub lifetime: Duration,
    /// Renew this long before a subscription expires. Default 10 min.
    pub renew_before: Duration,
    /// Backoff after a failure: first delay, cap. Defaults 2 s, 5 min.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Ids per getPresencesByUserId request (1..=650). Default 650.
    pub fetch_batch: usize,
    /// Notifications are collected this long before one fetch (coalescing). Default 200 ms.
    pub fetch_delay: Duration,
    /// Every user's presence is fetched again this often (missed notifications; at least 1 s).
    /// Default 15 min.
    pub resync_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            monitors: Vec::new(),
            users_per_subscription: MAX_IDS,
            lifetime: Duration::from_secs(55 * 60),
            renew_before: Duration::from_secs(10 * 60),
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            fetch_batch: MAX_IDS,
            fetch_delay: Duration::from_millis(200),
            resync_interval: Duration::from_secs(15 * 60),
        }
    }
}

/// Teams presence as Graph reports it (any availability/activity string Graph uses:
/// Available, AvailableIdle, Away, BeRightBack, Busy, BusyIdle, DoNotDisturb, Offline,
/// PresenceUnknown; activities such as InACall, InAMeeting, Presenting, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TeamsStatus {
    pub availability: String,
    pub activity: String,
}

/// What the edge must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchAction {
    /// POST /subscriptions with the monitor's delegated token; expirationDateTime = now (wall
    /// clock, the edge computes it) + lifetime.
    Create { key: u64, monitor: String, ids: Vec<String>, lifetime: Duration },
    /// PATCH /subscriptions/{subscription_id} with a new expirationDateTime = now + lifetime.
    Renew { key: u64, monitor: String, subscription_id: String, lifetime: Duration },
    /// POST /subscriptions/{subscription_id}/reauthorize (lifecycle event
    /// reauthorizationRequired).
    Reauthorize { key: u64, monitor: String, subscription_id: String },
    /// DELETE /subscriptions/{subscription_id} (its users left the directory, or a chunk was
    /// re-planned). Fire and forget.
    Delete { monitor: String, subscription_id: String },
    /// POST /communications/getPresencesByUserId with these ids (application token), at most
    /// fetch_batch.
    Fetch { ids: Vec<String> },
}

impl WatchAction {
    fn key(&self) -> Option<u64> {
        match self {
            WatchAction::Create { key, .. } | WatchAction::Renew { key, .. } | WatchAction::Reauthorize { key, .. } => Some(*key),
            WatchAction::Delete { .. } | WatchAction::Fetch { .. } => None,
        }
    }
}

/// A user's Teams status changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamsUpdate {
    pub user: UserId,
    pub status: TeamsStatus,
}

/// Counters and gauges for the admin page and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WatchStats {
    /// Subscriptions Graph confirmed (including one kept until its replacement is up).
    pub subscriptions_active: usize,
    /// Subscriptions being created or waiting to be created again.
    pub subscriptions_pending: usize,
    pub watched: usize,
    pub unwatched: usize,
    /// Calls of `on_notification`.
    pub notifications: u64,
    /// Notifications for unknown subscriptions, unparseable resources or users not watched,
    /// unknown lifecycle events, and fetched presences that could not be used.
    pub ignored: u64,
    /// Fetch actions handed out.
    pub fetches: u64,
    /// Updates handed out by `poll_update`.
    pub updates: u64,
    /// Teams reports that equalled what drbridge publishes.
    pub echoes_suppressed: u64,
    /// Failed (or timed out) Create / Renew / Reauthorize.
    pub failures: u64,
    /// Failed fetches.
    pub fetch_failures: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Create at `due` (backoff).
    Waiting,
    /// A Create is out (response timeout at `due`).
    Creating,
    /// Up; renew at `due`.
    Active,
    /// Up; a Renew is out.
    Renewing,
    /// Up; a Reauthorize is out.
    Reauthorizing,
}

#[derive(Debug)]
struct Sub {
    chunk: usize,
    monitor: String,
    /// Sorted, lower case.
    ids: Vec<String>,
    phase: Phase,
    /// As Graph gave it (set while up).
    subscription_id: Option<String>,
    expires_at: Option<Instant>,
    renew_at: Option<Instant>,
    due: Option<Instant>,
    /// Consecutive failures.
    failures: u32,
    /// A Create was handed out and its result is not known.
    create_sent: bool,
}

#[derive(Debug, Default)]
struct Chunk {
    /// The planned ids (sorted).
    ids: Vec<String>,
    /// The subscription serving the chunk.
    current: Option<u64>,
    /// Its replacement being created (after a re-plan), while `current` is up.
    next: Option<u64>,
}

#[derive(Debug)]
struct Watched {
    user: UserId,
    chunk: usize,
    /// Last Teams-originated status.
    status: Option<TeamsStatus>,
    /// Last status handed out by `poll_update`.
    delivered: Option<TeamsStatus>,
    /// In `updates`.
    queued: bool,
}

/// The Teams presence watch. See the module documentation.
#[derive(Debug)]
pub struct TeamsWatch {
    cfg: WatchConfig,
    chunks: Vec<Chunk>,
    subs: BTreeMap<u64, Sub>,
    /// Lower-cased subscription id -> key.
    by_sub_id: HashMap<String, u64>,
    timers: BTreeSet<(Instant, u64)>,
    actions: VecDeque<WatchAction>,
    action_cap: usize,
    /// Key -> monitor of Creates handed out for subscriptions dropped since.
    orphans: BTreeMap<u64, String>,
    /// Lower-cased object id -> user.
    watched: HashMap<String, Watched>,
    by_user: HashMap<UserId, String>,
    /// Every valid user of the last `set_users`, watched or not.
    known: HashSet<UserId>,
    unwatched: usize,
    published: HashMap<UserId, (String, String)>,
    /// Ids waiting for the coalescing flush at `flush_at`.
    dirty: BTreeSet<String>,
    /// Ids to hand out in Fetch actions now.
    flushing: BTreeSet<String>,
    flush_at: Option<Instant>,
    /// No fetch before this (after a failed fetch).
    hold_until: Option<Instant>,
    fetch_failures: u32,
    resync_at: Instant,
    updates: VecDeque<String>,
    next_key: u64,
    stats: WatchStats,
}

impl TeamsWatch {
    pub fn new(cfg: WatchConfig, now: Instant) -> TeamsWatch {
        let mut cfg = cfg;
        cfg.users_per_subscription = cfg.users_per_subscription.clamp(1, MAX_IDS);
        cfg.fetch_batch = cfg.fetch_batch.clamp(1, MAX_IDS);
        cfg.lifetime = cfg.lifetime.clamp(Duration::from_secs(1), MAX_LIFETIME);
        cfg.renew_before = cfg.renew_before.min(MAX_DELAY);
        cfg.retry_initial = cfg.retry_initial.clamp(Duration::from_millis(1), MAX_DELAY);
        cfg.retry_max = cfg.retry_max.clamp(cfg.retry_initial, MAX_DELAY);
        cfg.fetch_delay = cfg.fetch_delay.min(MAX_DELAY);
        cfg.resync_interval = cfg.resync_interval.clamp(Duration::from_secs(1), MAX_DELAY);
        let chunks = cfg.monitors.iter().map(|_| Chunk::default()).collect();
        let action_cap = 4 * cfg.monitors.len() + 64;
        let resync_at = later(now, cfg.resync_interval);
        TeamsWatch {
            cfg,
            chunks,
            subs: BTreeMap::new(),
            by_sub_id: HashMap::new(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            action_cap,
            orphans: BTreeMap::new(),
            watched: HashMap::new(),
            by_user: HashMap::new(),
            known: HashSet::new(),
            unwatched: 0,
            published: HashMap::new(),
            dirty: BTreeSet::new(),
            flushing: BTreeSet::new(),
            flush_at: None,
            hold_until: None,
            fetch_failures: 0,
            resync_at,
            updates: VecDeque::new(),
            next_key: 1,
            stats: WatchStats::default(),
        }
    }

    /// The watched users: (Azure object id, user). Replaces the previous set: chunks are
    /// re-planned (keep existing subscriptions whose id set is unchanged; new chunks Create;
    /// chunks whose ids changed: Create the new one and Delete the old one once the new one is
    /// up; vanished chunks Delete). Users beyond monitors.len() * users_per_subscription are not
    /// watched: `unwatched()` says how many. Ids are compared case-insensitively and must look
    /// like object ids (hex digits and dashes, at most 64): others are not watched either, nor
    /// is a second id of one user.
    pub fn set_users(&mut self, users: impl IntoIterator<Item = (String, UserId)>, now: Instant) {
        let per = self.cfg.users_per_subscription;
        let n_chunks = self.chunks.len();
        let mut seen: HashMap<String, UserId> = HashMap::new();
        let mut known: HashSet<UserId> = HashSet::new();
        let mut order: Vec<String> = Vec::new();
        let mut unwatched = 0usize;
        for (raw, user) in users {
            let Some(id) = canon_id(&raw) else {
                unwatched += 1;
                continue;
            };
            match seen.get(&id) {
                Some(u) if *u == user => continue,
                Some(_) => {
                    unwatched += 1;
                    continue;
                }
                None => {}
            }
            if !known.insert(user.clone()) {
                unwatched += 1;
                continue;
            }
            seen.insert(id.clone(), user);
            order.push(id);
        }
        // Users keep their chunk; newcomers fill the lowest chunk with room.
        let mut plan: Vec<Vec<String>> = vec![Vec::new(); n_chunks];
        let mut newcomers = Vec::new();
        for id in order {
            match self.watched.get(&id).map(|w| w.chunk) {
                Some(c) if c < n_chunks && plan[c].len() < per => plan[c].push(id),
                _ => newcomers.push(id),
            }
        }
        let mut cursor = 0;
        for id in newcomers {
            while cursor < n_chunks && plan[cursor].len() >= per {
                cursor += 1;
            }
            match plan.get_mut(cursor) {
                Some(p) => p.push(id),
                None => unwatched += 1,
            }
        }
        let mut watched = HashMap::new();
        for (i, ids) in plan.iter_mut().enumerate() {
            ids.sort();
            for id in ids.iter() {
                let Some(user) = seen.remove(id) else { continue };
                let w = match self.watched.remove(id) {
                    Some(mut w) if w.user == user => {
                        w.chunk = i;
                        w
                    }
                    _ => Watched { user, chunk: i, status: None, delivered: None, queued: false },
                };
                watched.insert(id.clone(), w);
            }
        }
        self.watched = watched;
        self.by_user = self.watched.iter().map(|(id, w)| (w.user.clone(), id.clone())).collect();
        self.dirty.retain(|id| self.watched.contains_key(id));
        self.flushing.retain(|id| self.watched.contains_key(id));
        self.updates.retain(|id| self.watched.get(id).is_some_and(|w| w.queued));
        self.published.retain(|u, _| known.contains(u));
        self.known = known;
        self.unwatched = unwatched;
        for (i, ids) in plan.into_iter().enumerate() {
            self.replan(i, ids, now);
        }
    }

    /// Users given to `set_users` that are not watched (beyond capacity, or unusable ids).
    pub fn unwatched(&self) -> usize {
        self.unwatched
    }

    // ---- out --------------------------------------------------------------------------------

    /// The next thing to do: subscription actions first, then fetches.
    pub fn poll_action(&mut self) -> Option<WatchAction> {
        if let Some(a) = self.actions.pop_front() {
            if let WatchAction::Create { key, .. } = &a {
                if let Some(s) = self.subs.get_mut(key) {
                    s.create_sent = true;
                }
            }
            return Some(a);
        }
        if self.flushing.is_empty() {
            return None;
        }
        let mut ids = Vec::new();
        while ids.len() < self.cfg.fetch_batch {
            let Some(id) = self.flushing.pop_first() else { break };
            ids.push(id);
        }
        self.stats.fetches += 1;
        Some(WatchAction::Fetch { ids })
    }

    /// Changed Teams statuses, each user at most once per poll round (the latest).
    pub fn poll_update(&mut self) -> Option<TeamsUpdate> {
        while let Some(id) = self.updates.pop_front() {
            let Some(w) = self.watched.get_mut(&id) else { continue };
            if !w.queued {
                continue;
            }
            w.queued = false;
            let Some(status) = w.status.clone() else { continue };
            if w.delivered.as_ref() == Some(&status) {
                continue;
            }
            w.delivered = Some(status.clone());
            self.stats.updates += 1;
            return Some(TeamsUpdate { user: w.user.clone(), status });
        }
        None
    }

    /// The last Teams-originated status of a user (for an admin view and for a PBX subscriber's
    /// first NOTIFY).
    pub fn status(&self, user: &UserId) -> Option<&TeamsStatus> {
        self.by_user.get(user).and_then(|id| self.watched.get(id)).and_then(|w| w.status.as_ref())
    }

    pub fn stats(&self) -> WatchStats {
        let active = self.subs.values().filter(|s| s.subscription_id.is_some()).count();
        WatchStats {
            subscriptions_active: active,
            subscriptions_pending: self.subs.len() - active,
            watched: self.watched.len(),
            unwatched: self.unwatched,
            ..self.stats.clone()
        }
    }

    // ---- time -------------------------------------------------------------------------------

    pub fn poll_timeout(&self) -> Option<Instant> {
        let resync = (!self.watched.is_empty()).then_some(self.resync_at);
        [self.timers.first().map(|(t, _)| *t), self.flush_at, resync].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Take the due timers first: what they re-arm waits for the next call.
        let mut due = Vec::new();
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            due.push(key);
        }
        for key in due {
            self.fire(key, now);
        }
        if self.hold_until.is_some_and(|h| h <= now) {
            self.hold_until = None;
        }
        if self.flush_at.is_some_and(|f| f <= now) {
            self.flush_at = None;
            self.flushing.append(&mut self.dirty);
        }
        if self.resync_at <= now {
            self.resync_at = later(now, self.cfg.resync_interval);
            let all: Vec<String> = self.watched.keys().cloned().collect();
            self.fetch_soon(all, now);
        }
    }

    // ---- in ---------------------------------------------------------------------------------

    /// A Create succeeded. `expires_in` is what Graph granted (may be shorter than asked).
    pub fn on_created(&mut self, key: u64, subscription_id: &str, expires_in: Duration, now: Instant) {
        let sid = subscription_id.trim();
        if let Some(monitor) = self.orphans.remove(&key) {
            // Created for a chunk that no longer wants it.
            if canon_sub_id(sid).is_some() {
                self.push_action(WatchAction::Delete { monitor, subscription_id: sid.to_string() });
            }
            return;
        }
        let Some(s) = self.subs.get_mut(&key) else {
            self.stats.ignored += 1;
            return;
        };
        s.create_sent = false;
        let Some(lower) = canon_sub_id(sid) else {
            // Not an id we can use in a URL: as good as failed.
            self.on_failed(key, 0, None, now);
            return;
        };
        match s.phase {
            Phase::Waiting | Phase::Creating => {}
            _ => {
                // A second Create of this key answered late (after a response timeout).
                if s.subscription_id.as_deref().map(str::to_ascii_lowercase) != Some(lower) {
                    let monitor = s.monitor.clone();
                    self.push_action(WatchAction::Delete { monitor, subscription_id: sid.to_string() });
                }
                return;
            }
        }
        if self.by_sub_id.get(&lower).is_some_and(|k| *k != key) {
            // Graph reused an id we hold for another subscription: refuse to mix them up.
            self.stats.ignored += 1;
            return;
        }
        s.subscription_id = Some(sid.to_string());
        s.failures = 0;
        let (chunk, ids) = (s.chunk, s.ids.clone());
        self.by_sub_id.insert(lower, key);
        self.actions.retain(|a| a.key() != Some(key));
        self.activate(key, expires_in, now);
        // The initial state of its users.
        let ids: Vec<String> = ids.into_iter().filter(|id| self.watched.contains_key(id)).collect();
        self.fetch_soon(ids, now);
        // A replacement is up: the one it replaces goes.
        if let Some(c) = self.chunks.get_mut(chunk) {
            if c.next == Some(key) {
                c.next = None;
                if let Some(old) = c.current.replace(key) {
                    self.retire(old);
                }
            }
        }
    }

    /// A Renew or Reauthorize succeeded. After a Renew, `expires_in` is what Graph granted;
    /// after a Reauthorize (Graph answers 204, the expiry does not change) it is ignored.
    pub fn on_renewed(&mut self, key: u64, expires_in: Duration, now: Instant) {
        let Some(s) = self.subs.get_mut(&key) else {
            self.stats.ignored += 1;
            return;
        };
        match s.phase {
            Phase::Renewing => {
                s.failures = 0;
                self.activate(key, expires_in, now);
            }
            Phase::Reauthorizing => {
                s.failures = 0;
                s.phase = Phase::Active;
                let at = s.renew_at.unwrap_or(now).max(now);
                self.arm(key, at);
            }
            _ => {}
        }
    }

    /// A Create/Renew/Reauthorize failed (status 0 = transport error or timeout). 404 on
    /// Renew/Reauthorize: the subscription is gone, Create again at once. 401/403: the monitor
    /// is not authorized: backoff (capped). 429/503 with retry_after: wait that long (at most
    /// 1 h), else exponential backoff with deterministic jitter. A failed Renew/Reauthorize is
    /// retried (as a Renew) until the subscription expires.
    pub fn on_failed(&mut self, key: u64, status: u16, retry_after: Option<Duration>, now: Instant) {
        if self.orphans.remove(&key).is_some() {
            return;
        }
        let Some(s) = self.subs.get_mut(&key) else {
            self.stats.ignored += 1;
            return;
        };
        let phase = s.phase;
        if !matches!(phase, Phase::Creating | Phase::Renewing | Phase::Reauthorizing) {
            return;
        }
        s.failures = s.failures.saturating_add(1);
        let (failures, expires_at) = (s.failures, s.expires_at);
        s.phase = if phase == Phase::Creating { Phase::Waiting } else { Phase::Active };
        self.stats.failures += 1;
        let delay = self.retry_delay(key, failures, status, retry_after);
        match phase {
            Phase::Creating => self.arm(key, later(now, delay)),
            _ if status == 404 => self.lose(key, now),
            // Still up until it expires: renew again (a renew reauthorizes too).
            _ => self.arm(key, later(now, delay).min(expires_at.unwrap_or(now))),
        }
    }

    /// A change notification (lifecycle None; resource like "communications/presences('ID')" or
    /// "/communications/presences/ID", ids compared case-insensitively) or a lifecycle event:
    /// "reauthorizationRequired" -> Reauthorize; "subscriptionRemoved" -> Create again;
    /// "missed" -> Fetch every id of that subscription. Unknown subscription ids, unparseable
    /// resources, users not watched and unknown lifecycle events are ignored and counted.
    pub fn on_notification(&mut self, subscription_id: &str, resource: Option<&str>, lifecycle: Option<&str>, now: Instant) {
        self.stats.notifications += 1;
        let Some(key) = canon_sub_id(subscription_id.trim()).and_then(|s| self.by_sub_id.get(&s).copied()) else {
            self.stats.ignored += 1;
            return;
        };
        match lifecycle.map(str::trim).filter(|l| !l.is_empty()) {
            Some(l) if l.eq_ignore_ascii_case("reauthorizationRequired") => self.reauthorize(key, now),
            Some(l) if l.eq_ignore_ascii_case("subscriptionRemoved") => self.lose(key, now),
            Some(l) if l.eq_ignore_ascii_case("missed") => {
                let ids: Vec<String> = match self.subs.get(&key) {
                    Some(s) => s.ids.iter().filter(|id| self.watched.contains_key(*id)).cloned().collect(),
                    None => Vec::new(),
                };
                self.dirty.extend(ids);
                self.schedule_flush(now, self.cfg.fetch_delay);
            }
            Some(_) => self.stats.ignored += 1,
            None => match resource.and_then(parse_resource) {
                Some(id) if self.watched.contains_key(&id) => {
                    self.dirty.insert(id);
                    self.schedule_flush(now, self.cfg.fetch_delay);
                }
                _ => self.stats.ignored += 1,
            },
        }
    }

    /// Result of a Fetch: (id, availability, activity) per user Graph returned.
    pub fn on_fetched(&mut self, presences: Vec<(String, String, String)>, _now: Instant) {
        self.fetch_failures = 0;
        for (id, availability, activity) in presences {
            let usable = availability.len() <= MAX_STATUS_LEN && activity.len() <= MAX_STATUS_LEN && !availability.trim().is_empty();
            let w = canon_id(&id).and_then(|id| self.watched.get_mut(&id).map(|w| (id, w)));
            let (Some((id, w)), true) = (w, usable) else {
                self.stats.ignored += 1;
                continue;
            };
            if let Some((pa, pact)) = self.published.get(&w.user) {
                if pa.eq_ignore_ascii_case(&availability) && pact.eq_ignore_ascii_case(&activity) {
                    self.stats.echoes_suppressed += 1;
                    continue;
                }
            }
            let status = TeamsStatus { availability, activity };
            if w.status.as_ref() == Some(&status) {
                continue;
            }
            w.status = Some(status);
            if !w.queued {
                w.queued = true;
                self.updates.push_back(id);
            }
        }
    }

    /// A Fetch failed: fetch these ids again after retry_after (429/503, at most 1 h) or
    /// backoff. Every fetch waits as long (Graph throttles per application).
    pub fn on_fetch_failed(&mut self, ids: Vec<String>, status: u16, retry_after: Option<Duration>, now: Instant) {
        self.stats.fetch_failures += 1;
        self.fetch_failures = self.fetch_failures.saturating_add(1);
        let delay = self.retry_delay(FETCH_KEY, self.fetch_failures, status, retry_after);
        for id in ids {
            if let Some(id) = canon_id(&id).filter(|id| self.watched.contains_key(id)) {
                self.dirty.insert(id);
            }
        }
        self.dirty.append(&mut self.flushing);
        let hold = later(now, delay);
        self.hold_until = Some(self.hold_until.map_or(hold, |h| h.max(hold)));
        self.flush_at = Some(self.flush_at.map_or(hold, |f| f.max(hold)));
    }

    /// What drbridge itself currently publishes to Teams for this user (its application
    /// presence session), as (availability, activity), None when it publishes nothing. Echo
    /// suppression: when Teams reports exactly the pair drbridge publishes, that is drbridge's
    /// own state reflected (e.g. the user is in a PBX call): no update is passed on and the last
    /// Teams-originated status stays what the PBX side knows.
    pub fn set_published(&mut self, user: &UserId, pair: Option<(String, String)>) {
        match pair {
            None => {
                self.published.remove(user);
            }
            Some(p) => {
                let room = self.published.len() < self.known.len() + SPARE_PUBLISHED;
                if room || self.known.contains(user) || self.published.contains_key(user) {
                    self.published.insert(user.clone(), p);
                }
            }
        }
    }

    // ---- internals --------------------------------------------------------------------------

    fn replan(&mut self, i: usize, ids: Vec<String>, now: Instant) {
        let Some(c) = self.chunks.get_mut(i) else { return };
        if c.ids == ids {
            return;
        }
        c.ids = ids.clone();
        let (current, next) = (c.current, c.next.take());
        if let Some(k) = next {
            self.retire(k);
        }
        if ids.is_empty() {
            if let Some(c) = self.chunks.get_mut(i) {
                c.current = None;
            }
            if let Some(k) = current {
                self.retire(k);
            }
            return;
        }
        let cur = current.and_then(|k| self.subs.get(&k));
        if cur.is_some_and(|s| s.ids == ids) {
            // Back to what the serving subscription has.
            return;
        }
        let live = cur.is_some_and(|s| s.subscription_id.is_some());
        let key = self.next_key;
        self.next_key += 1;
        let monitor = self.cfg.monitors.get(i).cloned().unwrap_or_default();
        let sub = Sub {
            chunk: i,
            monitor,
            ids,
            phase: Phase::Waiting,
            subscription_id: None,
            expires_at: None,
            renew_at: None,
            due: None,
            failures: 0,
            create_sent: false,
        };
        self.subs.insert(key, sub);
        if live {
            if let Some(c) = self.chunks.get_mut(i) {
                c.next = Some(key);
            }
        } else {
            if let Some(k) = current {
                self.retire(k);
            }
            if let Some(c) = self.chunks.get_mut(i) {
                c.current = Some(key);
            }
        }
        self.create_now(key, now);
    }

    /// A timer of a subscription fired.
    fn fire(&mut self, key: u64, now: Instant) {
        let Some(s) = self.subs.get_mut(&key) else { return };
        s.due = None;
        match s.phase {
            Phase::Waiting => self.create_now(key, now),
            Phase::Creating => self.on_failed(key, 0, None, now),
            Phase::Active | Phase::Renewing | Phase::Reauthorizing => {
                if s.expires_at.is_none_or(|e| e <= now) {
                    if s.phase != Phase::Active {
                        // A Renew/Reauthorize out and no result before the expiry.
                        self.stats.failures += 1;
                    }
                    self.lose(key, now);
                } else if s.phase == Phase::Active {
                    self.renew(key, now);
                } else {
                    self.on_failed(key, 0, None, now);
                }
            }
        }
    }

    fn create_now(&mut self, key: u64, now: Instant) {
        let lifetime = self.cfg.lifetime;
        let Some(s) = self.subs.get_mut(&key) else { return };
        s.phase = Phase::Creating;
        let a = WatchAction::Create { key, monitor: s.monitor.clone(), ids: s.ids.clone(), lifetime };
        self.push_action(a);
        self.arm(key, later(now, RESPONSE_TIMEOUT));
    }

    fn renew(&mut self, key: u64, now: Instant) {
        let lifetime = self.cfg.lifetime;
        let Some(s) = self.subs.get_mut(&key) else { return };
        let (Some(sid), Some(exp)) = (s.subscription_id.clone(), s.expires_at) else { return };
        s.phase = Phase::Renewing;
        let a = WatchAction::Renew { key, monitor: s.monitor.clone(), subscription_id: sid, lifetime };
        self.push_action(a);
        self.arm(key, later(now, RESPONSE_TIMEOUT).min(exp));
    }

    fn reauthorize(&mut self, key: u64, now: Instant) {
        let Some(s) = self.subs.get_mut(&key) else { return };
        // A Renew or Reauthorize already out reauthorizes too.
        if s.phase != Phase::Active {
            return;
        }
        let (Some(sid), Some(exp)) = (s.subscription_id.clone(), s.expires_at) else { return };
        s.phase = Phase::Reauthorizing;
        let a = WatchAction::Reauthorize { key, monitor: s.monitor.clone(), subscription_id: sid };
        self.push_action(a);
        self.arm(key, later(now, RESPONSE_TIMEOUT).min(exp));
    }

    /// Up for `granted` (capped at what was asked) from now: renew `renew_before` the expiry,
    /// or at 80 % of a short grant.
    fn activate(&mut self, key: u64, granted: Duration, now: Instant) {
        let g = granted.clamp(Duration::from_secs(1), self.cfg.lifetime);
        let rb = self.cfg.renew_before;
        let after = if g >= rb.saturating_mul(2) { g - rb } else { g * 4 / 5 };
        let Some(s) = self.subs.get_mut(&key) else { return };
        s.phase = Phase::Active;
        s.expires_at = Some(later(now, g));
        let at = later(now, after);
        s.renew_at = Some(at);
        self.arm(key, at);
    }

    /// The subscription is gone at Graph: Create it again at once, unless a replacement is
    /// already on its way.
    fn lose(&mut self, key: u64, now: Instant) {
        let Some(s) = self.subs.get_mut(&key) else { return };
        if let Some(sid) = s.subscription_id.take() {
            self.by_sub_id.remove(&sid.to_ascii_lowercase());
        }
        s.expires_at = None;
        s.renew_at = None;
        if let Some(c) = self.chunks.get_mut(s.chunk) {
            if c.current == Some(key) && c.next.is_some() {
                c.current = c.next.take();
                self.remove_sub(key);
                return;
            }
        }
        self.create_now(key, now);
    }

    /// No longer wanted: Delete it if it is up; remember a Create handed out.
    fn retire(&mut self, key: u64) {
        let Some(s) = self.remove_sub(key) else { return };
        if let Some(subscription_id) = s.subscription_id {
            self.push_action(WatchAction::Delete { monitor: s.monitor, subscription_id });
        } else if s.create_sent {
            self.orphans.insert(key, s.monitor);
            while self.orphans.len() > MAX_ORPHANS {
                self.orphans.pop_first();
            }
        }
    }

    fn remove_sub(&mut self, key: u64) -> Option<Sub> {
        self.disarm(key);
        let s = self.subs.remove(&key)?;
        if let Some(sid) = &s.subscription_id {
            self.by_sub_id.remove(&sid.to_ascii_lowercase());
        }
        self.actions.retain(|a| a.key() != Some(key));
        Some(s)
    }

    /// Queues an action; a subscription has at most one queued. At the cap the oldest goes.
    fn push_action(&mut self, a: WatchAction) {
        if let Some(k) = a.key() {
            self.actions.retain(|q| q.key() != Some(k));
        }
        self.actions.push_back(a);
        while self.actions.len() > self.action_cap {
            self.actions.pop_front();
        }
    }

    fn arm(&mut self, key: u64, at: Instant) {
        self.disarm(key);
        if let Some(s) = self.subs.get_mut(&key) {
            s.due = Some(at);
            self.timers.insert((at, key));
        }
    }

    fn disarm(&mut self, key: u64) {
        if let Some(d) = self.subs.get_mut(&key).and_then(|s| s.due.take()) {
            self.timers.remove(&(d, key));
        }
    }

    /// Fetch these ids as soon as fetches are allowed.
    fn fetch_soon(&mut self, ids: Vec<String>, now: Instant) {
        if self.hold_until.is_some_and(|h| h > now) {
            self.dirty.extend(ids);
            self.schedule_flush(now, Duration::ZERO);
        } else {
            for id in ids {
                self.dirty.remove(&id);
                self.flushing.insert(id);
            }
        }
    }

    /// Flush the dirty ids `delay` from now (or earlier if already planned), not before a hold.
    fn schedule_flush(&mut self, now: Instant, delay: Duration) {
        let mut at = later(now, delay);
        if let Some(h) = self.hold_until {
            at = at.max(h);
        }
        self.flush_at = Some(self.flush_at.map_or(at, |f| f.min(at)));
    }

    fn retry_delay(&self, key: u64, failures: u32, status: u16, retry_after: Option<Duration>) -> Duration {
        match (status, retry_after) {
            (429 | 503, Some(r)) => r.min(MAX_RETRY_AFTER),
            _ => self.backoff(key, failures),
        }
    }

    /// Exponential backoff for the `n`th failure (n >= 1): retry_initial, doubled each time,
    /// plus 0..25 % jitter derived from the key and n, never above retry_max.
    fn backoff(&self, key: u64, n: u32) -> Duration {
        let base = self.cfg.retry_initial.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(self.cfg.retry_max);
        let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(n).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
        x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 29;
        let jitter = base.mul_f64((x % 1000) as f64 / 4000.0);
        base.saturating_add(jitter).min(self.cfg.retry_max)
    }
}

fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// A user object id in canonical (lower) case, if it looks like one: 1 to 64 hex digits and
/// dashes (what the Graph edge accepts).
fn canon_id(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then(|| s.to_ascii_lowercase())
}

/// A subscription id in lower case, if it is usable in a URL path: 1 to 128 of
/// `[A-Za-z0-9._-]`.
fn canon_sub_id(s: &str) -> Option<String> {
    let ok = !s.is_empty() && s.len() <= MAX_SUBSCRIPTION_ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| s.to_ascii_lowercase())
}

/// The user id in a notification's resource: `communications/presences('ID')`,
/// `communications/presences(id='ID')` or `communications/presences/ID`, with or without a
/// leading `/`, any case.
fn parse_resource(r: &str) -> Option<String> {
    const PREFIX: &str = "communications/presences";
    let r = r.trim();
    let r = r.strip_prefix('/').unwrap_or(r);
    if !r.get(..PREFIX.len())?.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = r.get(PREFIX.len()..)?;
    let inner = match rest.strip_prefix('/') {
        Some(x) => x,
        None => rest.strip_prefix('(')?.strip_suffix(')')?,
    };
    let inner = inner.trim();
    let inner = match inner.get(..3) {
        Some(p) if p.eq_ignore_ascii_case("id=") => inner.get(3..)?.trim(),
        _ => inner,
    };
    let inner = inner.strip_prefix(['\'', '"']).unwrap_or(inner);
    let inner = inner.strip_suffix(['\'', '"']).unwrap_or(inner);
    canon_id(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn mins(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    /// The object id of test user `i` (GUID-shaped).
    fn oid(i: usize) -> String {
        format!("{i:08x}-0000-4000-8000-{i:012x}")
    }

    fn user(i: usize) -> UserId {
        UserId::new(&format!("user{i}@lab.drbridge.test"))
    }

    fn users(range: std::ops::Range<usize>) -> Vec<(String, UserId)> {
        range.map(|i| (oid(i), user(i))).collect()
    }

    fn cfg(monitors: usize) -> WatchConfig {
        WatchConfig { monitors: (0..monitors).map(|i| format!("monitor{i}@lab.drbridge.test")).collect(), ..WatchConfig::default() }
    }

    fn drain(w: &mut TeamsWatch) -> Vec<WatchAction> {
        std::iter::from_fn(|| w.poll_action()).collect()
    }

    fn updates(w: &mut TeamsWatch) -> Vec<TeamsUpdate> {
        std::iter::from_fn(|| w.poll_update()).collect()
    }

    fn creates(a: &[WatchAction]) -> Vec<(u64, String, Vec<String>)> {
        a.iter()
            .filter_map(|a| match a {
                WatchAction::Create { key, monitor, ids, .. } => Some((*key, monitor.clone(), ids.clone())),
                _ => None,
            })
            .collect()
    }

    fn fetched_ids(a: &[WatchAction]) -> Vec<Vec<String>> {
        a.iter()
            .filter_map(|a| match a {
                WatchAction::Fetch { ids } => Some(ids.clone()),
                _ => None,
            })
            .collect()
    }

    fn pres(i: usize, availability: &str, activity: &str) -> (String, String, String) {
        (oid(i), availability.to_string(), activity.to_string())
    }

    /// One monitor, users `0..n`, its subscription created as "sub-1" (granted 55 min) at t0,
    /// the initial fetch drained.
    fn one_up(n: usize, c: WatchConfig) -> (TeamsWatch, Instant, u64) {
        let t0 = Instant::now();
        let mut w = TeamsWatch::new(c, t0);
        w.set_users(users(0..n), t0);
        let c = creates(&drain(&mut w));
        assert_eq!(c.len(), 1);
        w.on_created(c[0].0, "sub-1", mins(55), t0);
        assert_eq!(fetched_ids(&drain(&mut w)).concat().len(), n);
        (w, t0, c[0].0)
    }

    #[test]
    fn chunks_1400_users_over_monitors() {
        let t0 = Instant::now();
        let mut w = TeamsWatch::new(cfg(3), t0);
        w.set_users(users(0..1400), t0);
        let c = creates(&drain(&mut w));
        assert_eq!(c.iter().map(|c| c.2.len()).collect::<Vec<_>>(), vec![650, 650, 100]);
        assert_eq!(
            c.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(),
            vec!["monitor0@lab.drbridge.test", "monitor1@lab.drbridge.test", "monitor2@lab.drbridge.test"]
        );
        let all: BTreeSet<String> = c.iter().flat_map(|c| c.2.iter().cloned()).collect();
        assert_eq!(all.len(), 1400);
        assert_eq!(w.unwatched(), 0);
        assert_eq!(w.stats().subscriptions_pending, 3);
        // Two monitors: 1300 watched, 100 not.
        let mut w = TeamsWatch::new(cfg(2), t0);
        w.set_users(users(0..1400), t0);
        let c = creates(&drain(&mut w));
        assert_eq!(c.iter().map(|c| c.2.len()).collect::<Vec<_>>(), vec![650, 650]);
        assert_eq!(w.unwatched(), 100);
        assert_eq!((w.stats().watched, w.stats().unwatched), (1300, 100));
        // The same set again changes nothing; ids that are not object ids are not watched.
        w.set_users(users(0..1400), t0);
        assert!(drain(&mut w).is_empty());
        let mut w = TeamsWatch::new(cfg(1), t0);
        w.set_users(vec![("not an id".to_string(), user(1)), (oid(2).to_uppercase(), user(2)), (oid(3), user(2))], t0);
        assert_eq!(creates(&drain(&mut w))[0].2, vec![oid(2)]);
        assert_eq!(w.unwatched(), 2);
    }

    #[test]
    fn created_subscription_fetches_its_users_once() {
        let t0 = Instant::now();
        let mut w = TeamsWatch::new(WatchConfig { fetch_batch: 300, ..cfg(1) }, t0);
        w.set_users(users(0..700), t0);
        let c = creates(&drain(&mut w));
        assert_eq!((c.len(), c[0].2.len(), w.unwatched()), (1, 650, 50));
        assert_eq!(w.stats().subscriptions_pending, 1);
        w.on_created(c[0].0, "sub-1", mins(55), t0 + secs(1));
        let f = fetched_ids(&drain(&mut w));
        assert_eq!(f.iter().map(Vec::len).collect::<Vec<_>>(), vec![300, 300, 50]);
        let ids: BTreeSet<String> = f.concat().into_iter().collect();
        assert_eq!(ids.len(), 650);
        assert_eq!(w.stats().subscriptions_active, 1);
        assert_eq!(w.stats().fetches, 3);
        w.on_fetched(vec![pres(0, "Available", "Available"), pres(1, "Busy", "InAMeeting")], t0 + secs(2));
        let u = updates(&mut w);
        assert_eq!(u.len(), 2);
        assert_eq!(w.status(&user(1)), Some(&TeamsStatus { availability: "Busy".into(), activity: "InAMeeting".into() }));
        assert!(w.status(&user(2)).is_none());
        // The same again: no update.
        w.on_fetched(vec![pres(0, "Available", "Available")], t0 + secs(3));
        assert!(w.poll_update().is_none());
        // Every resync_interval all watched users are fetched again.
        assert!(drain(&mut w).is_empty());
        w.handle_timeout(t0 + mins(15));
        assert_eq!(fetched_ids(&drain(&mut w)).concat().len(), 650);
    }

    #[test]
    fn renews_before_expiry_and_recreates_after_404() {
        let c = WatchConfig { resync_interval: secs(86_400), ..cfg(1) };
        let (mut w, t0, key) = one_up(3, c);
        // 55 min granted: renew 10 min before expiry.
        assert_eq!(w.poll_timeout(), Some(t0 + mins(45)));
        w.handle_timeout(t0 + mins(45) - secs(1));
        assert!(drain(&mut w).is_empty());
        w.handle_timeout(t0 + mins(45));
        let a = drain(&mut w);
        assert_eq!(a, vec![WatchAction::Renew { key, monitor: "monitor0@lab.drbridge.test".into(), subscription_id: "sub-1".into(), lifetime: mins(55) }]);
        // Graph grants only 15 min (< 2 * renew_before): renew at 80 %.
        let t1 = t0 + mins(45) + secs(1);
        w.on_renewed(key, mins(15), t1);
        assert_eq!(w.poll_timeout(), Some(t1 + mins(12)));
        w.handle_timeout(t1 + mins(12));
        assert!(matches!(drain(&mut w)[..], [WatchAction::Renew { .. }]));
        // 404: the subscription is gone: Create again at once, same key.
        w.on_failed(key, 404, None, t1 + mins(12));
        let c = creates(&drain(&mut w));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, key);
        assert_eq!(w.stats().subscriptions_pending, 1);
        // Notifications on the old id are ignored now.
        w.on_notification("sub-1", Some(&format!("communications/presences('{}')", oid(0))), None, t1 + mins(12));
        assert_eq!(w.stats().ignored, 1);
        // Created again; a renew never answered: at expiry, Create again.
        let t2 = t1 + mins(13);
        w.on_created(key, "sub-2", mins(5), t2);
        assert_eq!(fetched_ids(&drain(&mut w)).concat().len(), 3);
        w.handle_timeout(t2 + mins(4));
        assert!(matches!(drain(&mut w)[..], [WatchAction::Renew { .. }]));
        w.handle_timeout(t2 + mins(5));
        let c = creates(&drain(&mut w));
        assert_eq!(c.len(), 1, "expired without a renew: created again");
        assert_eq!(w.stats().failures, 2, "the 404 and the unanswered renew");
    }

    #[test]
    fn forbidden_backs_off_up_to_the_cap() {
        let t0 = Instant::now();
        let mut w = TeamsWatch::new(WatchConfig { resync_interval: secs(86_400), ..cfg(1) }, t0);
        w.set_users(users(0..5), t0);
        let key = creates(&drain(&mut w))[0].0;
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            w.on_failed(key, 403, None, now);
            assert!(drain(&mut w).is_empty(), "no retry before the backoff");
            let next = w.poll_timeout().unwrap();
            waits.push(next - now);
            now = next;
            w.handle_timeout(now);
            assert_eq!(creates(&drain(&mut w))[0].0, key);
        }
        assert!(waits[0] >= secs(2) && waits[0] <= ms(2500), "{waits:?}");
        assert!(waits[1] >= secs(4) && waits[1] <= secs(5), "{waits:?}");
        assert!(waits[2] >= secs(8) && waits[2] <= secs(10), "{waits:?}");
        assert!(waits.windows(2).all(|p| p[0] <= p[1]), "{waits:?}");
        assert!(waits.iter().all(|d| *d <= secs(300)), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), secs(300));
        assert_eq!(w.stats().failures, 12);
        // Success resets the backoff.
        w.on_created(key, "sub-1", mins(55), now);
        w.handle_timeout(now + mins(45));
        drain(&mut w);
        w.on_failed(key, 403, None, now + mins(45));
        let wait = w.poll_timeout().unwrap() - (now + mins(45));
        assert!(wait >= secs(2) && wait <= ms(2500), "{wait:?}");
    }

    #[test]
    fn retry_after_is_honoured() {
        let t0 = Instant::now();
        let mut w = TeamsWatch::new(cfg(1), t0);
        w.set_users(users(0..5), t0);
        let key = creates(&drain(&mut w))[0].0;
        w.on_failed(key, 429, Some(secs(120)), t0);
        assert_eq!(w.poll_timeout(), Some(t0 + secs(120)));
        w.handle_timeout(t0 + secs(119));
        assert!(drain(&mut w).is_empty());
        w.handle_timeout(t0 + secs(120));
        assert_eq!(creates(&drain(&mut w)).len(), 1);
        // 429 without Retry-After: backoff (second failure: 4..5 s).
        w.on_failed(key, 429, None, t0 + secs(121));
        let wait = w.poll_timeout().unwrap() - (t0 + secs(121));
        assert!(wait >= secs(4) && wait <= secs(5), "{wait:?}");
        // A throttled fetch holds every fetch, later notifications included.
        let (mut w, t0, _) = one_up(5, cfg(1));
        w.on_fetch_failed(vec![oid(0), oid(1)], 429, Some(secs(30)), t0 + secs(1));
        w.on_notification("sub-1", Some(&format!("/communications/presences/{}", oid(2))), None, t0 + secs(2));
        w.handle_timeout(t0 + secs(30));
        assert!(drain(&mut w).is_empty());
        assert_eq!(w.poll_timeout(), Some(t0 + secs(31)));
        w.handle_timeout(t0 + secs(31));
        assert_eq!(fetched_ids(&drain(&mut w)), vec![vec![oid(0), oid(1), oid(2)]]);
        assert_eq!(w.stats().fetch_failures, 1);
    }

    #[test]
    fn notifications_coalesce_into_batched_fetches() {
        let c = WatchConfig { fetch_batch: 4, ..cfg(1) };
        let (mut w, t0, _) = one_up(10, c);
        let t = t0 + secs(10);
        for (i, dt) in [(0, 0), (1, 50), (2, 50), (0, 60), (3, 100), (4, 150), (5, 150), (1, 190)] {
            let res =
                if i % 2 == 0 { format!("communications/presences('{}')", oid(i).to_uppercase()) } else { format!("/communications/presences/{}", oid(i)) };
            w.on_notification("SUB-1", Some(&res), None, t + ms(dt));
            assert!(drain(&mut w).is_empty(), "nothing before fetch_delay");
        }
        assert_eq!(w.poll_timeout(), Some(t + ms(200)));
        w.handle_timeout(t + ms(199));
        assert!(drain(&mut w).is_empty());
        w.handle_timeout(t + ms(200));
        let f = fetched_ids(&drain(&mut w));
        assert_eq!(f.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 2]);
        assert_eq!(f.concat(), (0..6).map(oid).collect::<Vec<_>>());
        // The next window starts with the next notification.
        w.on_notification("sub-1", Some(&format!("communications/presences(id='{}')", oid(7))), None, t + ms(210));
        assert_eq!(w.poll_timeout(), Some(t + ms(410)));
        w.handle_timeout(t + ms(410));
        assert_eq!(fetched_ids(&drain(&mut w)), vec![vec![oid(7)]]);
        assert_eq!(w.stats().notifications, 9);
        assert_eq!(w.stats().ignored, 0);
    }

    #[test]
    fn lifecycle_events() {
        let c = WatchConfig { resync_interval: secs(86_400), ..cfg(1) };
        let (mut w, t0, key) = one_up(3, c);
        let t = t0 + mins(1);
        w.on_notification("sub-1", None, Some("reauthorizationRequired"), t);
        assert_eq!(drain(&mut w), vec![WatchAction::Reauthorize { key, monitor: "monitor0@lab.drbridge.test".into(), subscription_id: "sub-1".into() }]);
        // Asked again while one is out: nothing more.
        w.on_notification("sub-1", None, Some("reauthorizationRequired"), t);
        assert!(drain(&mut w).is_empty());
        // Reauthorized: the renew time is unchanged.
        w.on_renewed(key, Duration::ZERO, t + secs(1));
        assert_eq!(w.poll_timeout(), Some(t0 + mins(45)));
        // missed: every user of the subscription is fetched (after fetch_delay).
        w.on_notification("sub-1", None, Some("missed"), t + secs(2));
        w.handle_timeout(t + secs(2) + ms(200));
        assert_eq!(fetched_ids(&drain(&mut w)), vec![(0..3).map(oid).collect::<Vec<_>>()]);
        // subscriptionRemoved: Create again at once.
        w.on_notification("sub-1", None, Some("subscriptionRemoved"), t + secs(3));
        let c = creates(&drain(&mut w));
        assert_eq!((c.len(), c[0].0), (1, key));
        assert_eq!(w.stats().subscriptions_active, 0);
        // An unknown lifecycle event is ignored.
        w.on_created(key, "sub-2", mins(55), t + secs(4));
        drain(&mut w);
        w.on_notification("sub-2", None, Some("somethingNew"), t + secs(5));
        assert!(drain(&mut w).is_empty());
        assert_eq!(w.stats().ignored, 1);
    }

    #[test]
    fn echo_of_own_publication_is_suppressed() {
        let (mut w, t0, _) = one_up(3, cfg(1));
        let anna = user(0);
        w.on_fetched(vec![pres(0, "Available", "Available")], t0);
        assert_eq!(updates(&mut w).len(), 1);
        // The user is in a PBX call: drbridge publishes Busy/InACall, Teams reflects it.
        w.set_published(&anna, Some(("Busy".into(), "InACall".into())));
        w.on_fetched(vec![pres(0, "Busy", "InACall")], t0 + secs(1));
        assert!(w.poll_update().is_none());
        assert_eq!(w.status(&anna).map(|s| s.availability.as_str()), Some("Available"));
        assert_eq!(w.stats().echoes_suppressed, 1);
        // The user sets DoNotDisturb in Teams: passed on.
        w.on_fetched(vec![pres(0, "DoNotDisturb", "DoNotDisturb")], t0 + secs(2));
        let u = updates(&mut w);
        assert_eq!(u, vec![TeamsUpdate { user: anna.clone(), status: TeamsStatus { availability: "DoNotDisturb".into(), activity: "DoNotDisturb".into() } }]);
        // Back to drbridge's own pair: no update, DoNotDisturb stays what the PBX knows.
        w.on_fetched(vec![pres(0, "Busy", "InACall")], t0 + secs(3));
        assert!(w.poll_update().is_none());
        assert_eq!(w.status(&anna).map(|s| s.availability.as_str()), Some("DoNotDisturb"));
        assert_eq!(w.stats().echoes_suppressed, 2);
        // drbridge stops publishing: Busy/InACall is Teams' own now.
        w.set_published(&anna, None);
        w.on_fetched(vec![pres(0, "Busy", "InACall")], t0 + secs(4));
        assert_eq!(updates(&mut w).len(), 1);
        // Several changes between polls: one update, the latest.
        w.on_fetched(vec![pres(0, "Away", "Away"), pres(0, "Available", "Available")], t0 + secs(5));
        let u = updates(&mut w);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].status.availability, "Available");
        assert_eq!(w.stats().updates, 4);
    }

    #[test]
    fn set_users_replans_chunks() {
        let t0 = Instant::now();
        let c = WatchConfig { users_per_subscription: 3, ..cfg(2) };
        let mut w = TeamsWatch::new(c, t0);
        w.set_users(users(0..3), t0);
        let c = creates(&drain(&mut w));
        assert_eq!(c.len(), 1);
        let a = c[0].0;
        w.on_created(a, "sub-a", mins(55), t0);
        drain(&mut w);
        // A user added while chunk 0 is full: a new subscription on monitor 1, chunk 0 kept.
        w.set_users(users(0..4), t0 + secs(1));
        let acts = drain(&mut w);
        let c = creates(&acts);
        assert_eq!(acts.len(), 1);
        assert_eq!((c[0].1.as_str(), c[0].2.clone()), ("monitor1@lab.drbridge.test", vec![oid(3)]));
        let b = c[0].0;
        w.on_created(b, "sub-b", mins(55), t0 + secs(1));
        drain(&mut w);
        // User 1 removed: chunk 0 gets a new subscription; the old one stays until it is up.
        w.on_fetched(vec![pres(1, "Busy", "InACall")], t0 + secs(1));
        w.set_users(users(0..4).into_iter().filter(|(id, _)| *id != oid(1)), t0 + secs(2));
        assert!(w.status(&user(1)).is_none());
        let acts = drain(&mut w);
        let c = creates(&acts);
        assert_eq!(acts.len(), 1, "{acts:?}");
        assert_eq!((c[0].1.as_str(), c[0].2.clone()), ("monitor0@lab.drbridge.test", vec![oid(0), oid(2)]));
        let a2 = c[0].0;
        assert_eq!(w.stats().subscriptions_active, 2);
        // The old subscription still serves its users meanwhile.
        w.on_notification("sub-a", Some(&format!("communications/presences('{}')", oid(2))), None, t0 + secs(3));
        w.handle_timeout(t0 + secs(4));
        assert_eq!(fetched_ids(&drain(&mut w)), vec![vec![oid(2)]]);
        // The new one is up: the old one is deleted, the new one's users fetched.
        w.on_created(a2, "sub-a2", mins(55), t0 + secs(5));
        let acts = drain(&mut w);
        assert_eq!(acts[0], WatchAction::Delete { monitor: "monitor0@lab.drbridge.test".into(), subscription_id: "sub-a".into() });
        assert_eq!(fetched_ids(&acts), vec![vec![oid(0), oid(2)]]);
        assert_eq!(w.stats().subscriptions_active, 2);
        // A newcomer fills the free slot of chunk 0; user 3 leaves: chunk 1 is deleted at once.
        let now = t0 + secs(6);
        w.set_users(vec![(oid(0), user(0)), (oid(2), user(2)), (oid(5), user(5))], now);
        let acts = drain(&mut w);
        assert!(acts.contains(&WatchAction::Delete { monitor: "monitor1@lab.drbridge.test".into(), subscription_id: "sub-b".into() }), "{acts:?}");
        let c = creates(&acts);
        assert_eq!((c.len(), c[0].2.clone()), (1, vec![oid(0), oid(2), oid(5)]));
        // Re-planned again before that Create is answered: its late result is deleted.
        w.set_users(vec![(oid(0), user(0)), (oid(2), user(2)), (oid(6), user(6))], now);
        let c2 = creates(&drain(&mut w));
        assert_eq!(c2[0].2, vec![oid(0), oid(2), oid(6)]);
        w.on_created(c[0].0, "sub-late", mins(55), now);
        assert_eq!(drain(&mut w), vec![WatchAction::Delete { monitor: "monitor0@lab.drbridge.test".into(), subscription_id: "sub-late".into() }]);
        assert_eq!(w.stats().subscriptions_active, 1);
        assert_eq!(w.stats().subscriptions_pending, 1);
    }

    #[test]
    fn unknown_subscriptions_and_garbage_are_ignored() {
        let (mut w, t0, key) = one_up(3, cfg(1));
        let before = w.poll_timeout();
        w.on_notification("no-such-subscription", Some(&format!("communications/presences('{}')", oid(0))), None, t0);
        w.on_notification("../../etc", None, Some("missed"), t0);
        w.on_notification("sub-1", Some("communications/presences('not-hex!')"), None, t0);
        w.on_notification("sub-1", Some("users/0000"), None, t0);
        w.on_notification("sub-1", Some(&format!("communications/presences('{}')", oid(99))), None, t0);
        w.on_notification("sub-1", Some("communications/presences('é')"), None, t0);
        w.on_notification("sub-1", None, None, t0);
        w.on_fetched(vec![pres(99, "Busy", "InACall"), ("x".into(), "Busy".into(), "InACall".into()), (oid(0), "A".repeat(100), String::new())], t0);
        w.on_created(key + 100, "sub-x", mins(55), t0);
        w.on_renewed(key + 100, mins(55), t0);
        w.on_failed(key + 100, 500, None, t0);
        assert!(drain(&mut w).is_empty());
        assert!(w.poll_update().is_none());
        assert_eq!(w.poll_timeout(), before);
        let s = w.stats();
        assert_eq!((s.notifications, s.ignored, s.subscriptions_active), (7, 7 + 3 + 3, 1));
    }

    #[test]
    fn resource_forms() {
        let id = oid(42);
        for r in [
            format!("communications/presences('{id}')"),
            format!("/communications/presences('{}')", id.to_uppercase()),
            format!("/communications/presences/{id}"),
            format!("Communications/Presences(id='{id}')"),
            format!("communications/presences(\"{id}\")"),
        ] {
            assert_eq!(parse_resource(&r), Some(id.clone()), "{r}");
        }
        for r in ["", "/", "communications/presences", "communications/presences()", "communications/presences/a/b", "communications/presencesé", "ö"] {
            assert_eq!(parse_resource(r), None, "{r}");
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            SetUsers(Vec<u8>),
            Created(u8, u8, u16),
            Renewed(u8, u16),
            Failed(u8, u16, Option<u16>),
            Notify(u8, u8, Option<String>, u8),
            Fetched(Vec<(u8, String, String)>),
            FetchFailed(Vec<u8>, u16, Option<u16>),
            Published(u8, Option<(String, String)>),
            Advance(u32),
            Poll(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..14).prop_map(Op::SetUsers),
                (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(k, s, e)| Op::Created(k, s, e)),
                (any::<u8>(), any::<u16>()).prop_map(|(k, e)| Op::Renewed(k, e)),
                (any::<u8>(), prop_oneof![Just(0u16), Just(401), Just(403), Just(404), Just(429), Just(503), any::<u16>()], proptest::option::of(any::<u16>()))
                    .prop_map(|(k, s, r)| Op::Failed(k, s, r)),
                (any::<u8>(), any::<u8>(), proptest::option::of(".{0,40}"), any::<u8>()).prop_map(|(s, u, r, l)| Op::Notify(s, u, r, l)),
                proptest::collection::vec((any::<u8>(), "[A-Za-z]{0,12}", "[A-Za-z]{0,12}"), 0..6).prop_map(Op::Fetched),
                (proptest::collection::vec(any::<u8>(), 0..6), any::<u16>(), proptest::option::of(any::<u16>())).prop_map(|(i, s, r)| Op::FetchFailed(i, s, r)),
                (any::<u8>(), proptest::option::of(("[A-Za-z]{0,8}", "[A-Za-z]{0,8}"))).prop_map(|(u, p)| Op::Published(u, p)),
                (0u32..4_000_000).prop_map(Op::Advance),
                any::<u8>().prop_map(Op::Poll),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// Random call sequences never panic, the action queue, the dirty sets and the
            /// orphans stay bounded, Fetches respect fetch_batch, and time always moves on.
            #[test]
            fn random_calls_never_panic(ops in proptest::collection::vec(op(), 1..120)) {
                let t0 = Instant::now();
                let c = WatchConfig { users_per_subscription: 3, fetch_batch: 2, retry_initial: ms(100), retry_max: secs(5), lifetime: secs(60), renew_before: secs(20), ..cfg(3) };
                let mut w = TeamsWatch::new(c, t0);
                let mut now = t0;
                let mut keys: Vec<u64> = vec![0, 1, 2, 3, u64::MAX];
                let mut sids: Vec<String> = vec!["sub-x".into(), String::new(), "a/b".into()];
                for op in ops {
                    match op {
                        Op::SetUsers(v) => w.set_users(v.iter().map(|i| (if *i == 255 { "zz".to_string() } else { oid(usize::from(*i % 16)) }, user(usize::from(*i % 12)))), now),
                        Op::Created(k, s, e) => {
                            let key = keys[usize::from(k) % keys.len()];
                            let sid = format!("sub-{s}");
                            w.on_created(key, &sid, Duration::from_secs(u64::from(e)), now);
                            sids.push(sid);
                        }
                        Op::Renewed(k, e) => w.on_renewed(keys[usize::from(k) % keys.len()], Duration::from_secs(u64::from(e)), now),
                        Op::Failed(k, s, r) => w.on_failed(keys[usize::from(k) % keys.len()], s, r.map(|r| Duration::from_secs(u64::from(r))), now),
                        Op::Notify(s, u, r, l) => {
                            let sid = sids[usize::from(s) % sids.len()].clone();
                            let res = match r {
                                Some(r) if u % 3 == 0 => Some(r),
                                _ => Some(format!("communications/presences('{}')", oid(usize::from(u % 16)))),
                            };
                            let life = ["reauthorizationRequired", "subscriptionRemoved", "missed", "bogus"].get(usize::from(l % 8)).copied();
                            w.on_notification(&sid, res.as_deref(), life, now);
                        }
                        Op::Fetched(v) => w.on_fetched(v.into_iter().map(|(i, a, b)| (oid(usize::from(i % 16)), a, b)).collect(), now),
                        Op::FetchFailed(v, s, r) => w.on_fetch_failed(v.iter().map(|i| oid(usize::from(*i % 16))).collect(), s, r.map(|r| Duration::from_secs(u64::from(r))), now),
                        Op::Published(u, p) => w.set_published(&user(usize::from(u % 12)), p),
                        Op::Advance(d) => {
                            now += Duration::from_millis(u64::from(d));
                            w.handle_timeout(now);
                            prop_assert!(w.poll_timeout().is_none_or(|t| t > now));
                        }
                        Op::Poll(n) => {
                            for _ in 0..n {
                                let Some(a) = w.poll_action() else { break };
                                match a {
                                    WatchAction::Create { key, ids, .. } => {
                                        prop_assert!(!ids.is_empty() && ids.len() <= 3);
                                        keys.push(key);
                                    }
                                    WatchAction::Fetch { ids } => prop_assert!(!ids.is_empty() && ids.len() <= 2),
                                    _ => {}
                                }
                            }
                            while w.poll_update().is_some() {}
                        }
                    }
                    prop_assert!(w.actions.len() <= w.action_cap);
                    prop_assert!(w.dirty.len() <= w.watched.len() && w.flushing.len() <= w.watched.len());
                    prop_assert!(w.updates.len() <= w.watched.len());
                    prop_assert!(w.orphans.len() <= MAX_ORPHANS);
                    prop_assert!(w.subs.len() <= 2 * w.chunks.len());
                    prop_assert!(w.watched.len() <= 9);
                    prop_assert_eq!(w.timers.len(), w.subs.values().filter(|s| s.due.is_some()).count());
                }
            }
        }
    }
}
