//! The [`SubscriptionSet`]: the sans-IO core of drbridge's SUBSCRIBEs toward the PBX, one per
//! monitored extension and event package (`dialog`, RFC 4235; `presence`, RFC 3856).
//!
//! It decides when to send what; the SIP core builds and sends the requests and feeds back what
//! happened:
//!
//! ```text
//!   set.add(ext, now) / set.remove(ext, now) / set.resubscribe_all(now)
//!   loop {
//!       set.handle_timeout(now);                         // when poll_timeout() is reached
//!       while let Some(a) = set.poll_action() { ... }    // send SUBSCRIBE (new dialog or refresh)
//!       set.on_response(a.id, status, expires, now);     // final response (408 on txn timeout)
//!       set.on_notify(id, subscription_state, body, now) // NOTIFY in that dialog -> LineUpdate
//!       while let Some(u) = set.poll_update() { ... }    // lapsed subscriptions -> PresenceTable
//!   }
//! ```
//!
//! Rules: a granted subscription is refreshed at 80 % of the granted Expires (RFC 6665 allows the
//! notifier to shorten it; the 2xx's Expires, or a NOTIFY's `expires=`, is authoritative). A
//! refresh answered 481, a NOTIFY with `Subscription-State: terminated`, a timeout (408 or no
//! response) or an expiry without a successful refresh starts a new subscription (a new dialog),
//! immediately the first time, then with exponential backoff (plus deterministic jitter) up to a
//! cap. 423 retries at once with the Min-Expires given; 489 (package not supported) waits the
//! cap. Actions are paced (at most `rate_per_sec`, bursts of `burst`) so that thousands of
//! extensions do not hit the PBX at once after a restart.

use super::dialoginfo;
use super::linestate::LineUpdate;
use super::pidf;
use super::PresenceError;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The event packages drbridge subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventPackage {
    Dialog,
    Presence,
}

impl EventPackage {
    /// The `Event` header value.
    pub fn event(self) -> &'static str {
        match self {
            EventPackage::Dialog => "dialog",
            EventPackage::Presence => "presence",
        }
    }

    /// The `Accept` header value.
    pub fn accept(self) -> &'static str {
        match self {
            EventPackage::Dialog => "application/dialog-info+xml",
            EventPackage::Presence => "application/pidf+xml",
        }
    }
}

/// A subscription's handle, stable across re-subscriptions of the same (extension, package).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SubId(pub u64);

/// What kind of SUBSCRIBE to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubscribeKind {
    /// Out of dialog: a new subscription. Any previous dialog of this id is forgotten (its
    /// NOTIFYs get 481).
    Initial,
    /// In the existing dialog: extend it.
    Refresh,
    /// In the existing dialog with `Expires: 0`; the id is gone afterwards.
    Unsubscribe,
}

/// "Send SUBSCRIBE for extension X, package P, with Expires E."
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubscribeAction {
    pub id: SubId,
    pub extension: String,
    pub package: EventPackage,
    pub kind: SubscribeKind,
    pub expires: u32,
}

/// A parsed `Subscription-State` header (RFC 6665 section 8.2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionState {
    Active { expires: Option<u32> },
    Pending { expires: Option<u32> },
    Terminated { reason: Option<String>, retry_after: Option<u32> },
}

impl SubscriptionState {
    pub fn parse(v: &str) -> Option<SubscriptionState> {
        let mut parts = v.split(';').map(str::trim);
        let state = parts.next()?.to_ascii_lowercase();
        let (mut expires, mut reason, mut retry_after) = (None, None, None);
        for p in parts {
            let (k, val) = p.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((p, ""));
            match k.to_ascii_lowercase().as_str() {
                "expires" => expires = val.parse().ok(),
                "reason" => reason = Some(val.to_ascii_lowercase()),
                "retry-after" => retry_after = val.parse().ok(),
                _ => {}
            }
        }
        Some(match state.as_str() {
            "active" => SubscriptionState::Active { expires },
            "pending" => SubscriptionState::Pending { expires },
            "terminated" => SubscriptionState::Terminated { reason, retry_after },
            _ => return None,
        })
    }
}

/// Settings.
#[derive(Clone, Copy, Debug)]
pub struct SubscriptionConfig {
    /// Expires asked for, seconds.
    pub expires: u32,
    /// Refresh at this share of the granted time, percent.
    pub refresh_percent: u32,
    /// First retry delay after a failure (the very first retry after a lost subscription is
    /// immediate).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A SUBSCRIBE without a final response for this long counts as timed out (the SIP
    /// transaction layer normally reports 408 first).
    pub response_timeout: Duration,
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Which packages to subscribe for each extension.
    pub packages: &'static [EventPackage],
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            expires: 3600,
            refresh_percent: 80,
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            response_timeout: Duration::from_secs(40),
            rate_per_sec: 50,
            burst: 20,
            packages: &[EventPackage::Dialog, EventPackage::Presence],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting to send an initial SUBSCRIBE (at `due`).
    Waiting,
    /// A SUBSCRIBE is out.
    Sent,
    /// Granted; refresh at `due`.
    Active,
}

/// One subscription as the admin page shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubscriptionView {
    pub id: SubId,
    pub extension: String,
    pub package: EventPackage,
    pub phase: Phase,
    /// Consecutive failures.
    pub failures: u32,
    /// Seconds until the next action / until expiry.
    pub next_in_secs: Option<u64>,
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug)]
struct Sub {
    extension: String,
    package: EventPackage,
    phase: Phase,
    /// Kind of the SUBSCRIBE out (when Sent).
    sent: Option<SubscribeKind>,
    /// Has a dialog (refreshes possible).
    dialog: bool,
    expires_req: u32,
    /// When the granted subscription ends.
    expires_at: Option<Instant>,
    /// The timer of this subscription.
    due: Option<Instant>,
    /// When what this subscription last reported stops being trustworthy (the granted expiry
    /// of the last good subscription); a new subscription's first NOTIFY replaces it before.
    lapse_at: Option<Instant>,
    failures: u32,
}

/// The set of PBX subscriptions. See the module documentation.
#[derive(Debug)]
pub struct SubscriptionSet {
    cfg: SubscriptionConfig,
    subs: BTreeMap<SubId, Sub>,
    by_key: HashMap<(String, EventPackage), SubId>,
    timers: BTreeSet<(Instant, SubId)>,
    lapses: BTreeSet<(Instant, SubId)>,
    actions: VecDeque<SubscribeAction>,
    updates: VecDeque<LineUpdate>,
    next_id: u64,
    /// Pacing (GCRA): the theoretical arrival time of the next action.
    tat: Option<Instant>,
}

impl SubscriptionSet {
    pub fn new(cfg: SubscriptionConfig) -> SubscriptionSet {
        SubscriptionSet {
            cfg,
            subs: BTreeMap::new(),
            by_key: HashMap::new(),
            timers: BTreeSet::new(),
            lapses: BTreeSet::new(),
            actions: VecDeque::new(),
            updates: VecDeque::new(),
            next_id: 1,
            tat: None,
        }
    }

    pub fn len(&self) -> usize {
        self.subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// The subscription for (extension, package).
    pub fn id_of(&self, extension: &str, package: EventPackage) -> Option<SubId> {
        self.by_key.get(&(extension.to_string(), package)).copied()
    }

    /// Starts monitoring an extension (every configured package). Idempotent.
    pub fn add(&mut self, extension: &str, now: Instant) {
        for &package in self.cfg.packages {
            let key = (extension.to_string(), package);
            if self.by_key.contains_key(&key) {
                continue;
            }
            let id = SubId(self.next_id);
            self.next_id += 1;
            self.by_key.insert(key, id);
            let sub = Sub {
                extension: extension.to_string(),
                package,
                phase: Phase::Waiting,
                sent: None,
                dialog: false,
                expires_req: self.cfg.expires,
                expires_at: None,
                due: None,
                lapse_at: None,
                failures: 0,
            };
            self.subs.insert(id, sub);
            self.arm(id, now);
        }
    }

    /// Stops monitoring an extension: an active subscription is ended with Expires 0.
    pub fn remove(&mut self, extension: &str, _now: Instant) {
        for &package in self.cfg.packages {
            let Some(id) = self.by_key.remove(&(extension.to_string(), package)) else { continue };
            self.disarm(id);
            self.lapse_now(id);
            if let Some(s) = self.subs.remove(&id) {
                if s.dialog {
                    self.actions.push_back(SubscribeAction {
                        id,
                        extension: s.extension,
                        package,
                        kind: SubscribeKind::Unsubscribe,
                        expires: 0,
                    });
                }
            }
        }
    }

    /// Makes the set monitor exactly these extensions (directory reload).
    pub fn sync<'a, I: IntoIterator<Item = &'a str>>(&mut self, extensions: I, now: Instant) {
        let want: BTreeSet<String> = extensions.into_iter().map(str::to_string).collect();
        let have: BTreeSet<String> = self.subs.values().map(|s| s.extension.clone()).collect();
        for e in have.difference(&want) {
            self.remove(e, now);
        }
        for e in &want {
            self.add(e, now);
        }
    }

    /// Starts every subscription anew (the PBX restarted, or the trunk came back).
    pub fn resubscribe_all(&mut self, now: Instant) {
        let ids: Vec<SubId> = self.subs.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.subs.get_mut(&id) {
                s.phase = Phase::Waiting;
                s.sent = None;
                s.dialog = false;
                s.failures = 0;
            }
            self.arm(id, now);
        }
    }

    // ---- time -------------------------------------------------------------------------------

    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.timers.first().map(|(t, _)| *t);
        let b = self.lapses.first().map(|(t, _)| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.lapses.first() {
            if t > now {
                break;
            }
            self.lapses.pop_first();
            if let Some(s) = self.subs.get_mut(&id) {
                s.lapse_at = None;
                self.updates.push_back(LineUpdate::Lapsed { extension: s.extension.clone(), package: s.package });
            }
        }
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let Some(s) = self.subs.get_mut(&id) else { continue };
            s.due = None;
            match s.phase {
                Phase::Waiting => self.send(id, SubscribeKind::Initial, now),
                Phase::Sent => {
                    // No final response in time.
                    let kind = s.sent;
                    self.failed(id, kind == Some(SubscribeKind::Refresh), now);
                }
                Phase::Active => self.send(id, SubscribeKind::Refresh, now),
            }
        }
    }

    // ---- out --------------------------------------------------------------------------------

    pub fn poll_action(&mut self) -> Option<SubscribeAction> {
        self.actions.pop_front()
    }

    /// Subscriptions that lapsed: what they said must be forgotten ([`LineUpdate::Lapsed`]).
    pub fn poll_update(&mut self) -> Option<LineUpdate> {
        self.updates.pop_front()
    }

    // ---- in ---------------------------------------------------------------------------------

    /// The final response to the last SUBSCRIBE of `id`. `expires` is the response's Expires
    /// header (2xx) or Min-Expires (423). A transaction timeout is reported as 408.
    pub fn on_response(&mut self, id: SubId, status: u16, expires: Option<u32>, now: Instant) {
        let Some(s) = self.subs.get_mut(&id) else { return };
        if s.phase != Phase::Sent || status < 200 {
            return;
        }
        let kind = s.sent.take();
        let refresh = kind == Some(SubscribeKind::Refresh);
        match status {
            200..=299 => {
                let granted = expires.unwrap_or(s.expires_req).min(s.expires_req.max(1));
                if granted == 0 {
                    self.lapse_now(id);
                    self.failed(id, refresh, now);
                    return;
                }
                s.dialog = true;
                s.failures = 0;
                self.activate(id, granted, now);
            }
            423 => {
                // Interval too brief: retry at once with the PBX's minimum.
                if let Some(min) = expires.filter(|&m| m > 0 && m <= 86_400) {
                    s.expires_req = min;
                }
                s.phase = if refresh { Phase::Active } else { Phase::Waiting };
                s.failures += 1;
                if s.failures > 3 {
                    self.failed(id, refresh, now);
                } else {
                    self.send(id, if refresh { SubscribeKind::Refresh } else { SubscribeKind::Initial }, now);
                }
            }
            481 => self.failed(id, refresh, now),
            489 => {
                // The PBX does not support this package: try again much later.
                s.phase = Phase::Waiting;
                s.dialog = false;
                s.failures += 1;
                let at = now + self.cfg.backoff_max;
                self.arm(id, at);
            }
            _ => self.failed(id, refresh, now),
        }
    }

    /// A NOTIFY in the dialog of `id`: `state` is its Subscription-State header, `body` its
    /// body. Returns what the body says for the [`PresenceTable`](super::PresenceTable).
    /// `Err(UnknownSubscription)`: answer 481. A bad body is an error after the subscription
    /// state was taken into account (answer 200 or 400 as the SIP core prefers).
    pub fn on_notify(&mut self, id: SubId, state: &str, body: &[u8], now: Instant) -> Result<Option<LineUpdate>, PresenceError> {
        let Some(s) = self.subs.get_mut(&id) else { return Err(PresenceError::UnknownSubscription) };
        let (extension, package) = (s.extension.clone(), s.package);
        match SubscriptionState::parse(state) {
            Some(SubscriptionState::Active { expires }) | Some(SubscriptionState::Pending { expires }) => {
                s.dialog = true;
                let left = s.expires_at.map(|e| e.saturating_duration_since(now).as_secs() as u32);
                let granted = expires.or(left).unwrap_or(s.expires_req).min(s.expires_req.max(1));
                if s.phase == Phase::Sent && s.sent == Some(SubscribeKind::Initial) {
                    // The NOTIFY overtook the 2xx: the subscription exists.
                    s.sent = None;
                    s.failures = 0;
                    self.activate(id, granted.max(1), now);
                } else if s.phase == Phase::Active && expires.is_some() {
                    self.activate(id, granted.max(1), now);
                }
            }
            Some(SubscriptionState::Terminated { reason, retry_after }) => {
                s.dialog = false;
                s.phase = Phase::Waiting;
                s.sent = None;
                s.expires_at = None;
                let delay = match reason.as_deref() {
                    None | Some("deactivated") | Some("timeout") => {
                        // Re-subscribe at once the first time.
                        s.failures += 1;
                        if s.failures <= 1 {
                            Duration::ZERO
                        } else {
                            Self::backoff(&self.cfg, id, s.failures - 1)
                        }
                    }
                    Some("probation") | Some("giveup") => match retry_after {
                        Some(r) => Duration::from_secs(u64::from(r).min(86_400)),
                        None => {
                            s.failures += 1;
                            Self::backoff(&self.cfg, id, s.failures)
                        }
                    },
                    // rejected, noresource, invariant, unknown: do not hammer, and what the
                    // subscription said is no longer maintained.
                    Some(_) => {
                        s.failures += 1;
                        self.lapse_now(id);
                        self.cfg.backoff_max
                    }
                };
                self.arm(id, now + delay);
            }
            None => {}
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Ok(Some(match package {
            EventPackage::Dialog => LineUpdate::Dialog { extension, info: dialoginfo::parse(body)? },
            EventPackage::Presence => LineUpdate::Presence { extension, doc: pidf::parse(body)? },
        }))
    }

    /// The subscriptions, for the admin page.
    pub fn views(&self, now: Instant) -> Vec<SubscriptionView> {
        self.subs
            .iter()
            .map(|(id, s)| SubscriptionView {
                id: *id,
                extension: s.extension.clone(),
                package: s.package,
                phase: s.phase,
                failures: s.failures,
                next_in_secs: s.due.map(|d| d.saturating_duration_since(now).as_secs()),
                expires_in_secs: s.expires_at.map(|d| d.saturating_duration_since(now).as_secs()),
            })
            .collect()
    }

    // ---- internals --------------------------------------------------------------------------

    fn arm(&mut self, id: SubId, at: Instant) {
        self.disarm(id);
        if let Some(s) = self.subs.get_mut(&id) {
            s.due = Some(at);
            self.timers.insert((at, id));
        }
    }

    fn disarm(&mut self, id: SubId) {
        if let Some(d) = self.subs.get_mut(&id).and_then(|s| s.due.take()) {
            self.timers.remove(&(d, id));
        }
    }

    /// Emits a SUBSCRIBE if pacing allows, else re-arms for the next slot.
    fn send(&mut self, id: SubId, kind: SubscribeKind, now: Instant) {
        let spacing = Duration::from_secs(1) / self.cfg.rate_per_sec.max(1);
        let tolerance = spacing * self.cfg.burst.saturating_sub(1);
        let tat = self.tat.unwrap_or(now).max(now);
        if tat > now + tolerance {
            let at = tat - tolerance;
            self.arm(id, at);
            return;
        }
        self.tat = Some(tat + spacing);
        let timeout = now + self.cfg.response_timeout;
        let Some(s) = self.subs.get_mut(&id) else { return };
        if kind == SubscribeKind::Initial {
            s.dialog = false;
            s.expires_at = None;
        }
        s.phase = Phase::Sent;
        s.sent = Some(kind);
        let action = SubscribeAction { id, extension: s.extension.clone(), package: s.package, kind, expires: s.expires_req };
        self.actions.push_back(action);
        self.arm(id, timeout);
    }

    fn activate(&mut self, id: SubId, granted: u32, now: Instant) {
        let pct = self.cfg.refresh_percent.clamp(10, 95);
        let Some(s) = self.subs.get_mut(&id) else { return };
        s.phase = Phase::Active;
        let g = Duration::from_secs(u64::from(granted));
        s.expires_at = Some(now + g);
        if let Some(old) = s.lapse_at.replace(now + g) {
            self.lapses.remove(&(old, id));
        }
        self.lapses.insert((now + g, id));
        let refresh = now + g * pct / 100;
        self.arm(id, refresh);
    }

    /// A SUBSCRIBE failed (error response or timeout): a new subscription, at once the first
    /// time, then with backoff. What the old one said stays valid until its lapse time.
    fn failed(&mut self, id: SubId, _refresh: bool, now: Instant) {
        let Some(s) = self.subs.get_mut(&id) else { return };
        s.failures += 1;
        s.dialog = false;
        s.sent = None;
        s.expires_at = None;
        s.phase = Phase::Waiting;
        let delay = if s.failures <= 1 { Duration::ZERO } else { Self::backoff(&self.cfg, id, s.failures - 1) };
        self.arm(id, now + delay);
    }

    /// What the subscription said is void now.
    fn lapse_now(&mut self, id: SubId) {
        let Some(s) = self.subs.get_mut(&id) else { return };
        if let Some(t) = s.lapse_at.take() {
            self.lapses.remove(&(t, id));
            self.updates.push_back(LineUpdate::Lapsed { extension: s.extension.clone(), package: s.package });
        }
    }

    /// Exponential backoff for the `n`th retry (n >= 1), capped, with 0..25 % jitter derived
    /// from the id and n (deterministic, so tests are exact and extensions spread out).
    fn backoff(cfg: &SubscriptionConfig, id: SubId, n: u32) -> Duration {
        let base = cfg.backoff_min.saturating_mul(1u32 << (n.saturating_sub(1)).min(16)).min(cfg.backoff_max);
        let mut x = id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(n).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
        let jitter = base.mul_f64((x % 1000) as f64 / 4000.0);
        (base + jitter).min(cfg.backoff_max + cfg.backoff_max / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> (SubscriptionSet, Instant) {
        (SubscriptionSet::new(SubscriptionConfig::default()), Instant::now())
    }

    fn drain(s: &mut SubscriptionSet) -> Vec<SubscribeAction> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    const DIALOG_BUSY: &[u8] = br#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:4711@pbx"><dialog id="x"><state>confirmed</state></dialog></dialog-info>"#;

    #[test]
    fn subscribe_refresh_at_80_percent() {
        let (mut s, t0) = set();
        s.add("4711", t0);
        s.add("4711", t0);
        assert_eq!(s.len(), 2);
        assert_eq!(s.poll_timeout(), Some(t0));
        s.handle_timeout(t0);
        let a = drain(&mut s);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].extension.as_str(), a[0].package, a[0].kind, a[0].expires), ("4711", EventPackage::Dialog, SubscribeKind::Initial, 3600));
        assert_eq!(a[1].package, EventPackage::Presence);
        let (d, p) = (a[0].id, a[1].id);
        // The PBX grants less than asked: 1000 s. Refresh at 800 s.
        s.on_response(d, 200, Some(1000), t0 + secs(1));
        s.on_response(p, 202, None, t0 + secs(1));
        let up = s.on_notify(d, "active;expires=999", DIALOG_BUSY, t0 + secs(1)).unwrap();
        assert!(matches!(up, Some(LineUpdate::Dialog { ref extension, .. }) if extension == "4711"));
        // The NOTIFY's expires is authoritative: 999 s from t0+1 -> refresh at t0+1+799.2.
        assert_eq!(s.poll_timeout(), Some(t0 + secs(1) + secs(999) * 80 / 100));
        s.handle_timeout(t0 + secs(799));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(t0 + secs(801));
        let a = drain(&mut s);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].id, a[0].kind), (d, SubscribeKind::Refresh));
        s.on_response(d, 200, Some(3600), t0 + secs(802));
        let v = s.views(t0 + secs(802));
        assert_eq!(v[0].phase, Phase::Active);
        assert_eq!(v[0].expires_in_secs, Some(3600));
        // Presence: granted 3600 (no Expires in the 2xx) -> refresh at 2880 s.
        s.handle_timeout(t0 + secs(2881));
        let a = drain(&mut s);
        assert_eq!((a.len(), a[0].id, a[0].kind), (1, p, SubscribeKind::Refresh));
        assert!(s.poll_update().is_none());
    }

    #[test]
    fn terminated_notify_resubscribes_then_backs_off() {
        let (mut s, t0) = set();
        s.add("4711", t0);
        s.handle_timeout(t0);
        let d = drain(&mut s)[0].id;
        s.on_response(d, 200, Some(3600), t0);
        // PBX restarts / deactivates: re-subscribe at once, as a new dialog.
        assert_eq!(s.on_notify(d, "terminated;reason=deactivated", b"", t0 + secs(10)).unwrap(), None);
        s.handle_timeout(t0 + secs(10));
        let a = drain(&mut s);
        assert_eq!((a.len(), a[0].id, a[0].kind), (1, d, SubscribeKind::Initial));
        // The new SUBSCRIBE fails: backoff 2 s (+ up to 25 %), then 4 s, 8 s ...
        s.on_response(d, 503, None, t0 + secs(11));
        let next = s.poll_timeout().unwrap();
        let wait = next - (t0 + secs(11));
        assert!(wait >= secs(2) && wait <= secs(2) * 5 / 4, "{wait:?}");
        s.handle_timeout(next);
        assert_eq!(drain(&mut s)[0].kind, SubscribeKind::Initial);
        s.on_response(d, 408, None, next);
        let wait2 = s.poll_timeout().unwrap() - next;
        assert!(wait2 >= secs(4) && wait2 <= secs(5), "{wait2:?}");
        // Success resets the failures.
        let n2 = s.poll_timeout().unwrap();
        s.handle_timeout(n2);
        drain(&mut s);
        s.on_response(d, 200, Some(600), n2);
        assert_eq!(s.views(n2).iter().find(|v| v.id == d).unwrap().failures, 0);
        // terminated;reason=rejected: wait the cap.
        s.on_notify(d, "terminated;reason=rejected", b"", n2).unwrap();
        // Rejected: what it said is void at once.
        assert_eq!(s.poll_update(), Some(LineUpdate::Lapsed { extension: "4711".into(), package: EventPackage::Dialog }));
        assert_eq!(s.views(n2).iter().find(|v| v.id == d).unwrap().next_in_secs, Some(300));
        // probation with retry-after.
        s.handle_timeout(n2 + secs(300));
        drain(&mut s);
        s.on_response(d, 200, Some(600), n2 + secs(300));
        s.on_notify(d, "terminated;reason=probation;retry-after=42", b"", n2 + secs(300)).unwrap();
        assert_eq!(s.views(n2 + secs(300)).iter().find(|v| v.id == d).unwrap().next_in_secs, Some(42));
    }

    #[test]
    fn refresh_481_starts_a_new_subscription_and_expiry_lapses() {
        let (mut s, t0) = set();
        s.add("4711", t0);
        s.handle_timeout(t0);
        let d = drain(&mut s)[0].id;
        s.on_response(d, 200, Some(100), t0);
        s.handle_timeout(t0 + secs(80));
        assert_eq!(drain(&mut s)[0].kind, SubscribeKind::Refresh);
        // The PBX lost the subscription (restart): 481 -> new subscription at once.
        s.on_response(d, 481, None, t0 + secs(81));
        s.handle_timeout(t0 + secs(81));
        let a = drain(&mut s);
        assert_eq!((a[0].id, a[0].kind), (d, SubscribeKind::Initial));
        // No answer at all: the response timeout (40 s) fires after the old expiry (t0+100):
        // the old state lapses.
        s.handle_timeout(t0 + secs(121));
        let lapsed: Vec<LineUpdate> = std::iter::from_fn(|| s.poll_update()).collect();
        assert!(lapsed.contains(&LineUpdate::Lapsed { extension: "4711".into(), package: EventPackage::Dialog }), "{lapsed:?}");
        // A refresh that is never answered before expiry also lapses.
        let (mut s, t0) = set();
        s.add("4711", t0);
        s.handle_timeout(t0);
        let ids: Vec<SubId> = drain(&mut s).iter().map(|a| a.id).collect();
        for id in &ids {
            s.on_response(*id, 200, Some(3600), t0);
        }
        s.handle_timeout(t0 + secs(2880));
        assert_eq!(drain(&mut s).len(), 2);
        s.handle_timeout(t0 + secs(2920));
        // Response timeout: the refresh failed, a new subscription starts (no lapse yet).
        assert!(s.poll_update().is_none());
        assert_eq!(drain(&mut s).iter().filter(|a| a.kind == SubscribeKind::Initial).count(), 2);
    }

    #[test]
    fn notify_before_2xx_and_unknown_ids() {
        let (mut s, t0) = set();
        s.add("4711", t0);
        s.handle_timeout(t0);
        let d = drain(&mut s)[0].id;
        let up = s.on_notify(d, "active;expires=3600", DIALOG_BUSY, t0).unwrap();
        assert!(up.is_some());
        assert_eq!(s.views(t0)[0].phase, Phase::Active);
        s.on_response(d, 200, Some(3600), t0); // late 2xx: ignored
        assert!(matches!(s.on_notify(SubId(999), "active", b"", t0), Err(PresenceError::UnknownSubscription)));
        // A bad body is an error, but the state was taken.
        assert!(matches!(s.on_notify(d, "active;expires=60", b"<junk", t0), Err(PresenceError::Body { .. })));
        assert_eq!(s.views(t0)[0].expires_in_secs, Some(60));
    }

    #[test]
    fn interval_too_brief_and_bad_event() {
        let (mut s, t0) = set();
        s.add("4711", t0);
        s.handle_timeout(t0);
        let a = drain(&mut s);
        s.on_response(a[0].id, 423, Some(7200), t0);
        let r = drain(&mut s);
        assert_eq!((r[0].id, r[0].expires, r[0].kind), (a[0].id, 7200, SubscribeKind::Initial));
        s.on_response(a[1].id, 489, None, t0);
        assert_eq!(s.views(t0)[1].next_in_secs, Some(300));
    }

    #[test]
    fn remove_unsubscribes_and_sync_follows_the_directory() {
        let (mut s, t0) = set();
        s.sync(["4711", "4712"], t0);
        s.handle_timeout(t0);
        for a in drain(&mut s) {
            s.on_response(a.id, 200, Some(3600), t0);
        }
        s.sync(["4712", "4713"], t0 + secs(1));
        let a = drain(&mut s);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|a| a.extension == "4711" && a.kind == SubscribeKind::Unsubscribe && a.expires == 0));
        assert_eq!(s.len(), 4);
        assert!(s.id_of("4711", EventPackage::Dialog).is_none());
        s.handle_timeout(t0 + secs(1));
        assert!(drain(&mut s).iter().all(|a| a.extension == "4713"));
        // resubscribe_all: every subscription starts anew.
        s.resubscribe_all(t0 + secs(2));
        s.handle_timeout(t0 + secs(2));
        let a = drain(&mut s);
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|a| a.kind == SubscribeKind::Initial));
    }

    #[test]
    fn pacing_spreads_a_large_start() {
        let (mut s, t0) = set();
        let exts: Vec<String> = (0..500).map(|i| format!("{}", 5000 + i)).collect();
        s.sync(exts.iter().map(String::as_str), t0);
        let mut sent = 0;
        let mut now = t0;
        let mut per_second = Vec::new();
        while sent < 1000 {
            let Some(next) = s.poll_timeout() else { break };
            now = now.max(next);
            s.handle_timeout(now);
            let n = drain(&mut s).len();
            let sec = (now - t0).as_secs() as usize;
            if per_second.len() <= sec {
                per_second.resize(sec + 1, 0);
            }
            per_second[sec] += n;
            sent += n;
        }
        assert_eq!(sent, 1000);
        // 50 per second plus a burst of 20: 1000 SUBSCRIBEs take about 20 s.
        assert!(per_second.iter().all(|&n| n <= 70), "{per_second:?}");
        assert!((19..=21).contains(&per_second.len()), "{}", per_second.len());
    }

    #[test]
    fn subscription_state_header() {
        assert_eq!(SubscriptionState::parse("active;expires=600"), Some(SubscriptionState::Active { expires: Some(600) }));
        assert_eq!(SubscriptionState::parse("Pending"), Some(SubscriptionState::Pending { expires: None }));
        assert_eq!(
            SubscriptionState::parse("terminated; reason=giveup ; retry-after=30"),
            Some(SubscriptionState::Terminated { reason: Some("giveup".into()), retry_after: Some(30) })
        );
        assert_eq!(SubscriptionState::parse("bogus"), None);
        assert_eq!(SubscriptionState::parse("active;expires=x"), Some(SubscriptionState::Active { expires: None }));
    }
}
