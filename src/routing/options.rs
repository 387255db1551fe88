//! When to send OPTIONS keep-alives, sans-IO: the caller asks [`OptionsSchedule::poll_due`] at
//! `now`, sends one OPTIONS per returned target, and sleeps until [`OptionsSchedule::poll_timeout`].

use super::health::ProxyIdx;
use crate::config::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Who gets an OPTIONS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeTarget {
    /// A Teams proxy, by its index in `teams.proxies`.
    Teams(ProxyIdx),
    /// The PBX trunk.
    Pbx,
}

/// How intervals are spread so that probes to many peers (and of many SBCs) do not line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the configured interval (tests, or when determinism matters).
    None,
    /// ±10% from a seeded generator (reproducible).
    Seeded(u64),
    /// ±10% from an OS-seeded generator.
    Random,
}

/// Jitter bound: the interval is scaled by a factor in `[1 - JITTER, 1 + JITTER]`.
pub const JITTER: f64 = 0.10;

#[derive(Debug, Clone)]
struct Slot {
    target: ProbeTarget,
    interval: Duration,
    due: Instant,
}

#[derive(Debug, Clone)]
pub struct OptionsSchedule {
    slots: Vec<Slot>,
    rng: Option<StdRng>,
}

impl OptionsSchedule {
    pub fn new(jitter: Jitter) -> OptionsSchedule {
        let rng = match jitter {
            Jitter::None => None,
            Jitter::Seeded(seed) => Some(StdRng::seed_from_u64(seed)),
            Jitter::Random => Some(StdRng::from_os_rng()),
        };
        OptionsSchedule { slots: Vec::new(), rng }
    }

    /// Every Teams proxy every `teams.options_interval_secs`, and the PBX every
    /// `pbx.options_interval_secs` unless that is 0. The first probes are due at `now`.
    pub fn from_config(cfg: &Config, now: Instant, jitter: Jitter) -> OptionsSchedule {
        let mut s = OptionsSchedule::new(jitter);
        for i in 0..cfg.teams.proxies.len() {
            s.add(ProbeTarget::Teams(i), cfg.teams.options_interval(), now);
        }
        if let Some(iv) = cfg.pbx.options_interval() {
            s.add(ProbeTarget::Pbx, iv, now);
        }
        s
    }

    /// Probes `target` every `interval` (jittered), the first at `first_due`. Replaces an
    /// existing entry for the same target. A zero interval removes it.
    pub fn add(&mut self, target: ProbeTarget, interval: Duration, first_due: Instant) {
        self.slots.retain(|s| s.target != target);
        if !interval.is_zero() {
            self.slots.push(Slot { target, interval, due: first_due });
        }
    }

    pub fn remove(&mut self, target: ProbeTarget) {
        self.slots.retain(|s| s.target != target);
    }

    /// One target whose probe is due at `now` (the most overdue first), already rescheduled for
    /// `now + interval ± jitter`. Call until it returns `None`.
    pub fn poll_due(&mut self, now: Instant) -> Option<ProbeTarget> {
        let i = self.slots.iter().enumerate().filter(|(_, s)| s.due <= now).min_by_key(|(i, s)| (s.due, *i)).map(|(i, _)| i)?;
        let interval = self.slots[i].interval;
        let next = now + self.jittered(interval);
        let slot = &mut self.slots[i];
        slot.due = next;
        Some(slot.target)
    }

    /// Earliest time a probe is due (`None` with nothing scheduled).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots.iter().map(|s| s.due).min()
    }

    /// When `target` is next probed.
    pub fn next_due(&self, target: ProbeTarget) -> Option<Instant> {
        self.slots.iter().find(|s| s.target == target).map(|s| s.due)
    }

    /// Probe `target` at `at` instead of its scheduled time (e.g. soon after a failed INVITE).
    pub fn probe_at(&mut self, target: ProbeTarget, at: Instant) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.target == target) {
            s.due = at;
        }
    }

    fn jittered(&mut self, interval: Duration) -> Duration {
        match &mut self.rng {
            None => interval,
            Some(rng) => interval.mul_f64(rng.random_range((1.0 - JITTER)..=(1.0 + JITTER))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut OptionsSchedule, now: Instant) -> Vec<ProbeTarget> {
        std::iter::from_fn(|| s.poll_due(now)).collect()
    }

    #[test]
    fn deterministic_intervals() {
        let t0 = Instant::now();
        let mut s = OptionsSchedule::new(Jitter::None);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.poll_due(t0), None);
        for i in 0..3 {
            s.add(ProbeTarget::Teams(i), Duration::from_secs(60), t0);
        }
        s.add(ProbeTarget::Pbx, Duration::from_secs(30), t0);
        assert_eq!(s.poll_timeout(), Some(t0));
        assert_eq!(drain(&mut s, t0), vec![ProbeTarget::Teams(0), ProbeTarget::Teams(1), ProbeTarget::Teams(2), ProbeTarget::Pbx]);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(drain(&mut s, t0 + Duration::from_secs(29)), vec![]);
        assert_eq!(drain(&mut s, t0 + Duration::from_secs(30)), vec![ProbeTarget::Pbx]);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        // late wake-up: everything overdue comes out once, most overdue first
        let late = t0 + Duration::from_secs(75);
        assert_eq!(drain(&mut s, late), vec![ProbeTarget::Teams(0), ProbeTarget::Teams(1), ProbeTarget::Teams(2), ProbeTarget::Pbx]);
        assert_eq!(s.next_due(ProbeTarget::Teams(1)), Some(late + Duration::from_secs(60)));
        assert_eq!(s.next_due(ProbeTarget::Pbx), Some(late + Duration::from_secs(30)));
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_is_reproducible() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut s = OptionsSchedule::new(Jitter::Seeded(seed));
            s.add(ProbeTarget::Teams(0), Duration::from_secs(60), t0);
            let mut now = t0;
            let mut gaps = Vec::new();
            for _ in 0..200 {
                assert_eq!(s.poll_due(now), Some(ProbeTarget::Teams(0)));
                let next = s.poll_timeout().unwrap();
                gaps.push(next - now);
                now = next;
            }
            gaps
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        for g in &a {
            assert!(*g >= Duration::from_secs(54) && *g <= Duration::from_secs(66), "{g:?}");
        }
        assert!(a.iter().any(|g| *g < Duration::from_secs(58)) && a.iter().any(|g| *g > Duration::from_secs(62)), "spread");
        let mut r = OptionsSchedule::new(Jitter::Random);
        r.add(ProbeTarget::Pbx, Duration::from_secs(30), t0);
        assert_eq!(r.poll_due(t0), Some(ProbeTarget::Pbx));
        let d = r.poll_timeout().unwrap() - t0;
        assert!(d >= Duration::from_secs(27) && d <= Duration::from_secs(33));
    }

    #[test]
    fn add_replace_remove_and_probe_at() {
        let t0 = Instant::now();
        let mut s = OptionsSchedule::new(Jitter::None);
        s.add(ProbeTarget::Pbx, Duration::from_secs(30), t0 + Duration::from_secs(5));
        s.add(ProbeTarget::Pbx, Duration::from_secs(10), t0 + Duration::from_secs(1));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        s.probe_at(ProbeTarget::Pbx, t0);
        assert_eq!(s.poll_due(t0), Some(ProbeTarget::Pbx));
        assert_eq!(s.next_due(ProbeTarget::Pbx), Some(t0 + Duration::from_secs(10)));
        s.add(ProbeTarget::Pbx, Duration::ZERO, t0);
        assert_eq!(s.poll_timeout(), None);
        s.add(ProbeTarget::Teams(0), Duration::from_secs(60), t0);
        s.remove(ProbeTarget::Teams(0));
        assert_eq!(s.poll_due(t0 + Duration::from_secs(999)), None);
    }

    #[test]
    fn from_config_covers_proxies_and_pbx() {
        let text = "[sbc]\nfqdn = \"sbc.example.com\"\n[pbx]\naddress = \"127.0.0.1:5080\"\noptions_interval_secs = 20\n";
        let cfg = crate::config::parse_str(text, std::path::Path::new("x.toml"), crate::config::LoadOptions { check_files: false }).unwrap();
        let t0 = Instant::now();
        let mut s = OptionsSchedule::from_config(&cfg, t0, Jitter::None);
        assert_eq!(drain(&mut s, t0).len(), 4);
        assert_eq!(s.next_due(ProbeTarget::Teams(2)), Some(t0 + Duration::from_secs(60)));
        assert_eq!(s.next_due(ProbeTarget::Pbx), Some(t0 + Duration::from_secs(20)));
        let off = crate::config::parse_str(&text.replace("= 20", "= 0"), std::path::Path::new("x.toml"), crate::config::LoadOptions { check_files: false }).unwrap();
        let s = OptionsSchedule::from_config(&off, t0, Jitter::None);
        assert_eq!(s.next_due(ProbeTarget::Pbx), None);
    }
}
