//! Trunk health from OPTIONS, the ordered Teams proxy set, and the per-INVITE failover plan.
//! Sans-IO: every method takes `now`; nothing here reads a clock or touches a socket.

use crate::config::{Teams, TeamsProxy};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Index of a proxy in [`ProxySet`] (configured order).
pub type ProxyIdx = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    Up,
    Down,
}

/// What an OPTIONS probe came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// A final response with this status.
    Response(u16),
    /// Transaction timeout (no final response).
    Timeout,
    /// The connection could not be made (TCP refused, TLS handshake or certificate failure).
    ConnectFailed,
}

impl ProbeResult {
    /// Whether the peer counts as up: any final response except 503; never on timeout or a
    /// failed connection. (A 4xx such as 403 or 405 still shows a live SIP stack.)
    pub fn is_ok(self) -> bool {
        matches!(self, ProbeResult::Response(s) if s != 503)
    }
}

/// Up/down state of one trunk or proxy: down after one failed OPTIONS, up again after one
/// good one. A trunk starts up (calls may go out before the first probe returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkHealth {
    health: Health,
    since: Instant,
    failures: u32,
    last_probe: Option<Instant>,
}

impl TrunkHealth {
    pub fn new(now: Instant) -> TrunkHealth {
        TrunkHealth { health: Health::Up, since: now, failures: 0, last_probe: None }
    }
    pub fn health(&self) -> Health {
        self.health
    }
    pub fn is_up(&self) -> bool {
        self.health == Health::Up
    }
    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }
    /// Consecutive failed probes (0 when up).
    pub fn failures(&self) -> u32 {
        self.failures
    }
    pub fn last_probe(&self) -> Option<Instant> {
        self.last_probe
    }
    /// Records an OPTIONS result; returns the new state if it changed.
    pub fn on_options_result(&mut self, ok: bool, now: Instant) -> Option<Health> {
        self.last_probe = Some(now);
        if ok {
            self.failures = 0;
            self.set(Health::Up, now)
        } else {
            self.failures = self.failures.saturating_add(1);
            self.set(Health::Down, now)
        }
    }
    /// Marks the trunk down outside a probe (INVITE got 503, connection failed).
    pub fn mark_down(&mut self, now: Instant) -> Option<Health> {
        self.failures = self.failures.saturating_add(1);
        self.set(Health::Down, now)
    }
    fn set(&mut self, h: Health, now: Instant) -> Option<Health> {
        if self.health == h {
            return None;
        }
        self.health = h;
        self.since = now;
        Some(h)
    }
}

#[derive(Debug, Clone)]
struct Member {
    proxy: TeamsProxy,
    health: TrunkHealth,
    /// From a 503 + Retry-After: do not pick this proxy before then (unless nothing else).
    retry_after: Option<Instant>,
}

/// The Teams proxies in configured order, each with its health.
#[derive(Debug, Clone)]
pub struct ProxySet {
    members: Vec<Member>,
    failover_codes: Arc<[u16]>,
    failover_timeout: Duration,
}

impl ProxySet {
    pub fn new(proxies: Vec<TeamsProxy>, failover_codes: &[u16], failover_timeout: Duration, now: Instant) -> ProxySet {
        ProxySet {
            members: proxies.into_iter().map(|proxy| Member { proxy, health: TrunkHealth::new(now), retry_after: None }).collect(),
            failover_codes: failover_codes.into(),
            failover_timeout,
        }
    }

    pub fn from_config(teams: &Teams, now: Instant) -> ProxySet {
        ProxySet::new(teams.proxies.clone(), &teams.failover_codes, teams.failover_timeout(), now)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    pub fn proxy(&self, idx: ProxyIdx) -> Option<&TeamsProxy> {
        self.members.get(idx).map(|m| &m.proxy)
    }
    pub fn health(&self, idx: ProxyIdx) -> Option<&TrunkHealth> {
        self.members.get(idx).map(|m| &m.health)
    }
    /// Index of the proxy with this host name (for REFER / Record-Route matching).
    pub fn find_host(&self, host: &str) -> Option<ProxyIdx> {
        self.members.iter().position(|m| m.proxy.host.eq_ignore_ascii_case(host))
    }
    pub fn any_up(&self) -> bool {
        self.members.iter().any(|m| m.health.is_up())
    }

    /// Proxies to try, in order: the up ones in configured order, then the down ones as a last
    /// resort (configured order too). Proxies under an unexpired Retry-After go after the others
    /// of their group.
    pub fn candidates(&self, now: Instant) -> Vec<ProxyIdx> {
        let held = |m: &Member| m.retry_after.is_some_and(|t| t > now);
        let mut order: Vec<ProxyIdx> = (0..self.members.len()).collect();
        order.sort_by_key(|&i| {
            let m = &self.members[i];
            (!m.health.is_up(), held(m), i)
        });
        order
    }

    /// Records an OPTIONS result for a proxy (see [`ProbeResult::is_ok`]); returns the new state if
    /// it changed. An unknown index is ignored.
    pub fn on_options_result(&mut self, idx: ProxyIdx, ok: bool, now: Instant) -> Option<Health> {
        let m = self.members.get_mut(idx)?;
        if ok {
            m.retry_after = None;
        }
        m.health.on_options_result(ok, now)
    }

    /// An INVITE to this proxy failed in a way that says the proxy is unwell (503, no response,
    /// connection failure): mark it down until OPTIONS bring it back. `retry_after` from a 503.
    pub fn on_invite_failure(&mut self, idx: ProxyIdx, retry_after: Option<Duration>, now: Instant) -> Option<Health> {
        let m = self.members.get_mut(idx)?;
        if let Some(d) = retry_after {
            m.retry_after = Some(now + d);
        }
        m.health.mark_down(now)
    }

    /// A failover plan for one INVITE, fixed at the time of the call.
    pub fn failover_plan(&self, now: Instant) -> FailoverPlan {
        FailoverPlan {
            order: self.candidates(now),
            pos: 0,
            failover_codes: self.failover_codes.clone(),
            failover_timeout: self.failover_timeout,
        }
    }
}

/// The proxies one outgoing INVITE may try, in order. The caller sends to [`next`](Self::next);
/// on a final response it asks [`should_fail_over`](Self::should_fail_over); when no response
/// at all came within [`timeout`](Self::timeout) (or the transaction timed out, or the
/// connection failed) it fails over without asking.
#[derive(Debug, Clone)]
pub struct FailoverPlan {
    order: Vec<ProxyIdx>,
    pos: usize,
    failover_codes: Arc<[u16]>,
    failover_timeout: Duration,
}

impl FailoverPlan {
    /// The next proxy to try, or `None` when all have been tried.
    pub fn next(&mut self) -> Option<ProxyIdx> {
        let i = self.order.get(self.pos).copied();
        if i.is_some() {
            self.pos += 1;
        }
        i
    }
    /// Whether this final response to the INVITE means: try the next proxy. Only configured
    /// `failover_codes`; never 2xx, never 6xx (603 Decline is a user's answer).
    pub fn should_fail_over(&self, status: u16) -> bool {
        (300..600).contains(&status) && self.failover_codes.contains(&status)
    }
    /// How long to wait for any response before failing over (`failover_timeout_secs`).
    pub fn timeout(&self) -> Duration {
        self.failover_timeout
    }
    /// Proxies already handed out, in order.
    pub fn tried(&self) -> &[ProxyIdx] {
        &self.order[..self.pos]
    }
    /// Proxies still to try.
    pub fn remaining(&self) -> usize {
        self.order.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(now: Instant) -> ProxySet {
        let proxies = crate::config::MICROSOFT_PROXIES.iter().map(|h| TeamsProxy { host: h.to_string(), port: 5061, address: None }).collect();
        ProxySet::new(proxies, &[408, 503, 504], Duration::from_secs(10), now)
    }

    #[test]
    fn probe_results() {
        assert!(ProbeResult::Response(200).is_ok());
        assert!(ProbeResult::Response(403).is_ok());
        assert!(ProbeResult::Response(405).is_ok());
        assert!(!ProbeResult::Response(503).is_ok());
        assert!(!ProbeResult::Timeout.is_ok());
        assert!(!ProbeResult::ConnectFailed.is_ok());
    }

    #[test]
    fn trunk_health_transitions() {
        let t0 = Instant::now();
        let mut h = TrunkHealth::new(t0);
        assert!(h.is_up());
        assert_eq!(h.on_options_result(true, t0), None);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(h.on_options_result(false, t1), Some(Health::Down));
        assert_eq!(h.since(), t1);
        assert_eq!(h.failures(), 1);
        assert_eq!(h.on_options_result(false, t1 + Duration::from_secs(30)), None);
        assert_eq!(h.failures(), 2);
        assert_eq!(h.since(), t1);
        let t3 = t1 + Duration::from_secs(60);
        assert_eq!(h.on_options_result(true, t3), Some(Health::Up));
        assert_eq!(h.failures(), 0);
        assert_eq!(h.last_probe(), Some(t3));
        assert_eq!(h.mark_down(t3), Some(Health::Down));
    }

    #[test]
    fn candidates_up_first_then_down() {
        let t0 = Instant::now();
        let mut s = set(t0);
        assert_eq!(s.candidates(t0), vec![0, 1, 2]);
        assert_eq!(s.on_options_result(0, false, t0), Some(Health::Down));
        assert_eq!(s.candidates(t0), vec![1, 2, 0]);
        s.on_options_result(2, ProbeResult::Timeout.is_ok(), t0);
        assert_eq!(s.candidates(t0), vec![1, 0, 2]);
        s.on_options_result(1, ProbeResult::Response(503).is_ok(), t0);
        assert!(!s.any_up());
        assert_eq!(s.candidates(t0), vec![0, 1, 2], "all down: still all, in configured order");
        s.on_options_result(0, ProbeResult::Response(200).is_ok(), t0 + Duration::from_secs(60));
        assert_eq!(s.candidates(t0), vec![0, 1, 2]);
        s.on_options_result(2, true, t0);
        assert_eq!(s.candidates(t0), vec![0, 2, 1]);
        assert_eq!(s.on_options_result(7, true, t0), None);
        assert_eq!(s.find_host("SIP2.pstnhub.microsoft.com"), Some(1));
        assert_eq!(s.proxy(1).unwrap().host, "sip2.pstnhub.microsoft.com");
        assert!(s.health(1).is_some_and(|h| !h.is_up()));
    }

    #[test]
    fn retry_after_orders_last_until_it_expires() {
        let t0 = Instant::now();
        let mut s = set(t0);
        s.on_options_result(1, false, t0);
        assert_eq!(s.on_invite_failure(0, Some(Duration::from_secs(120)), t0), Some(Health::Down));
        // both down; 0 is held by Retry-After so 1 comes before it
        assert_eq!(s.candidates(t0), vec![2, 1, 0]);
        assert_eq!(s.candidates(t0 + Duration::from_secs(121)), vec![2, 0, 1]);
        // a good OPTIONS clears the hold
        s.on_options_result(0, true, t0 + Duration::from_secs(1));
        assert_eq!(s.candidates(t0 + Duration::from_secs(1)), vec![0, 2, 1]);
    }

    #[test]
    fn failover_plan() {
        let t0 = Instant::now();
        let mut s = set(t0);
        s.on_options_result(0, false, t0);
        let mut p = s.failover_plan(t0);
        assert_eq!(p.timeout(), Duration::from_secs(10));
        assert_eq!(p.remaining(), 3);
        assert_eq!(p.next(), Some(1));
        assert!(p.should_fail_over(503));
        assert!(p.should_fail_over(408));
        assert!(p.should_fail_over(504));
        assert!(!p.should_fail_over(486));
        assert!(!p.should_fail_over(404));
        assert!(!p.should_fail_over(603));
        assert!(!p.should_fail_over(200));
        assert!(!p.should_fail_over(180));
        assert_eq!(p.next(), Some(2));
        assert_eq!(p.next(), Some(0));
        assert_eq!(p.tried(), &[1, 2, 0]);
        assert_eq!(p.next(), None);
        assert_eq!(p.next(), None);
        assert_eq!(p.remaining(), 0);
        // the plan is a snapshot: later health changes do not reorder it
        let mut p2 = s.failover_plan(t0);
        s.on_options_result(0, true, t0);
        assert_eq!(p2.next(), Some(1));
        // 6xx in the configured list still never fails over
        let s6 = ProxySet::new(vec![], &[600, 603], Duration::from_secs(5), t0);
        let mut p6 = s6.failover_plan(t0);
        assert!(!p6.should_fail_over(603));
        assert!(!p6.should_fail_over(600));
        assert_eq!(p6.next(), None);
        assert!(s6.is_empty());
    }
}
