//! Signalling shards: the B2BUA runs as N independent cores, one per signalling thread, each with
//! its own calls, dialogs, transactions and media engine. A message goes to the shard its
//! Call-ID hashes to ([`shard_of`]); every Call-ID a core makes up (the other leg of a call,
//! OPTIONS, SUBSCRIBE) is drawn until it hashes to that core's own shard ([`Shard::call_id`]),
//! so both legs of a call, and every answer to what a core sent, reach the same core.
//!
//! The one exception is an INVITE with Replaces: it carries a new Call-ID but must reach the
//! core that holds the dialog it replaces. [`ShardRouter`] sends it there and pins its Call-ID
//! to that shard until the dialog's BYE (plus a linger for retransmissions) or a maximum age.
//!
//! Sans-IO: the router takes `now`; nothing here reads a clock.

use crate::sip::msg::{Message, Method};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Which core this is, of how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// This shard's part of what is split between shards (calls, media ports, sessions): its
    /// buckets of [`shard_of`], `span` out of `of`.
    pub fn share(&self) -> (std::ops::Range<usize>, usize) {
        if self.count <= 1 {
            return (0..1, 1);
        }
        let start = (2 * self.index).saturating_sub(1);
        let end = 2 * self.index + 1;
        (start..end, 2 * self.count - 1)
    }

    /// `total` split by [`Shard::share`], rounded up (every shard gets at least one).
    pub fn part_of(&self, total: usize) -> usize {
        let (span, of) = self.share();
        (total * span.len()).div_ceil(of).max(1)
    }

    /// A fresh random Call-ID `<32 hex>@host` that hashes to this shard.
    pub fn call_id(&self, host: &str) -> String {
        use rand::Rng;
        let mut r = rand::rng();
        loop {
            let id = crate::fmt64!("{:032x}@{}", r.random::<u128>(), host);
            if shard_of(&id, self.count) == self.index {
                return id;
            }
        }
    }
}

/// The shard of a Call-ID: FNV-1a (64 bit) of its bytes picks one of `2 * count - 1` buckets;
/// shard 0 has one bucket, every other shard two. Shard 0 also runs every transport (reads,
/// TLS, parsing) and routes what it reads: at 4,500 calls/s with an even split its thread used
/// 68 % of a core and shard 1's 41 % (bench), so it takes half the calls of the others.
/// Call-IDs are compared byte for byte (RFC 3261 20.8), so the hash covers all of it.
pub fn shard_of(call_id: &str, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let h = crate::fnv::hash(call_id.as_bytes());
    // fold the high bits in: FNV's low bits alone mix poorly for a small modulus
    let bucket = ((h ^ (h >> 32)) % (2 * count as u64 - 1)) as usize;
    bucket.div_ceil(2)
}

#[derive(Clone, Copy, Debug)]
struct Pin {
    shard: usize,
    /// Set by the dialog's BYE: the pin is dropped at this instant.
    until: Option<Instant>,
    since: Instant,
}

/// Routes inbound messages to shards (see the module doc).
#[derive(Debug)]
pub struct ShardRouter {
    count: usize,
    pins: HashMap<String, Pin>,
    /// How long a pin outlives the BYE of its dialog (64*T1: retransmissions and the 200).
    linger: Duration,
    /// A pin whose dialog never saw a BYE here (ended by the other shard's timers) goes after this.
    max_age: Duration,
    max_pins: usize,
    next_purge: Option<Instant>,
    /// INVITEs with Replaces routed by the natural hash because the pin table was full.
    pub pins_refused: u64,
}

impl ShardRouter {
    pub fn new(count: usize, linger: Duration) -> ShardRouter {
        ShardRouter {
            count: count.max(1),
            pins: HashMap::new(),
            linger,
            max_age: Duration::from_secs(24 * 3600),
            max_pins: 100_000,
            next_purge: None,
            pins_refused: 0,
        }
    }

    /// Pins in force (for tests and stats).
    pub fn pinned(&self) -> usize {
        self.pins.len()
    }

    /// The shard that handles `msg`. Messages without a Call-ID go to shard 0, whose core
    /// answers or drops them as malformed.
    pub fn route(&mut self, msg: &Message, now: Instant) -> usize {
        if self.count <= 1 {
            return 0;
        }
        let (call_id, req) = match msg {
            Message::Request(r) => (r.call_id(), Some(r)),
            Message::Response(r) => (r.call_id(), None),
        };
        let Some(call_id) = call_id else { return 0 };
        if !self.pins.is_empty() {
            self.purge(now);
            if let Some(p) = self.pins.get_mut(call_id) {
                if req.is_some_and(|r| r.method == Method::Bye) {
                    p.until = Some(now + self.linger);
                }
                return p.shard;
            }
        }
        let natural = shard_of(call_id, self.count);
        let Some(replaces) = req.filter(|r| r.method == Method::Invite).and_then(|r| r.headers.get("Replaces")) else {
            return natural;
        };
        let target = shard_of(replaces.split(';').next().unwrap_or("").trim(), self.count);
        if target == natural {
            return natural;
        }
        if self.pins.len() >= self.max_pins {
            self.pins_refused += 1;
            return natural;
        }
        self.pins.insert(call_id.to_string(), Pin { shard: target, until: None, since: now });
        self.next_purge.get_or_insert(now + self.linger);
        target
    }

    fn purge(&mut self, now: Instant) {
        if self.next_purge.is_some_and(|t| t > now) {
            return;
        }
        let max_age = self.max_age;
        self.pins.retain(|_, p| p.until.is_none_or(|u| u > now) && now.duration_since(p.since) < max_age);
        self.next_purge = (!self.pins.is_empty()).then(|| now + self.linger);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::msg::{parse_datagram, Limits};

    fn msg(text: &str) -> Message {
        parse_datagram(bytes::Bytes::from(text.replace('\n', "\r\n")), &Limits::default()).expect("parses")
    }

    fn req(method: &str, call_id: &str, extra: &str) -> Message {
        msg(&format!(
            "{method} sip:a@example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\nFrom: <sip:b@example.com>;tag=1\nTo: <sip:a@example.com>\nCall-ID: {call_id}\nCSeq: 1 {method}\nMax-Forwards: 70\n{extra}Content-Length: 0\n\n"
        ))
    }

    fn resp(call_id: &str) -> Message {
        msg(&format!(
            "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\nFrom: <sip:b@example.com>;tag=1\nTo: <sip:a@example.com>;tag=2\nCall-ID: {call_id}\nCSeq: 1 BYE\nContent-Length: 0\n\n"
        ))
    }

    /// Two Call-IDs of different shards (of 2).
    fn split_pair() -> (String, String) {
        let a = Shard { index: 0, count: 2 }.call_id("x");
        let b = Shard { index: 1, count: 2 }.call_id("x");
        (a, b)
    }

    #[test]
    fn generated_call_ids_land_on_their_shard() {
        for count in 1..=4 {
            for index in 0..count {
                let s = Shard { index, count };
                for _ in 0..50 {
                    assert_eq!(shard_of(&s.call_id("sbc.example.com"), count), index);
                }
            }
        }
    }

    #[test]
    fn foreign_call_ids_spread_over_shards_with_half_a_share_for_shard_0() {
        let mut seen = [0usize; 4];
        for i in 0..7000 {
            seen[shard_of(&format!("{i}-1@10.0.0.1"), 4)] += 1;
        }
        // 1/7 for shard 0, 2/7 for each other shard
        assert!((800..1200).contains(&seen[0]), "{seen:?}");
        assert!(seen[1..].iter().all(|n| (1800..2200).contains(n)), "{seen:?}");
        let mut two = [0usize; 2];
        for i in 0..3000 {
            two[shard_of(&format!("a{i}b@host"), 2)] += 1;
        }
        assert!((850..1150).contains(&two[0]), "{two:?}");
    }

    #[test]
    fn shares_match_the_buckets() {
        assert_eq!(Shard { index: 0, count: 1 }.share(), (0..1, 1));
        assert_eq!(Shard { index: 0, count: 2 }.share(), (0..1, 3));
        assert_eq!(Shard { index: 1, count: 2 }.share(), (1..3, 3));
        assert_eq!(Shard { index: 2, count: 3 }.share(), (3..5, 5));
        assert_eq!(Shard { index: 0, count: 2 }.part_of(10_000), 3334);
        assert_eq!(Shard { index: 1, count: 2 }.part_of(10_000), 6667);
        assert_eq!(Shard { index: 1, count: 2 }.part_of(1), 1);
        // the buckets of shard_of are the shares: 3000 Call-IDs, a third to shard 0
        let mut seen = [0usize; 3];
        for i in 0..5000 {
            seen[shard_of(&format!("x{i}"), 3)] += 1;
        }
        assert!((800..1200).contains(&seen[0]) && (1800..2200).contains(&seen[2]), "{seen:?}");
    }

    #[test]
    fn one_shard_routes_everything_to_zero() {
        let mut r = ShardRouter::new(1, Duration::from_secs(32));
        let now = Instant::now();
        assert_eq!(r.route(&req("INVITE", "abc", ""), now), 0);
        assert_eq!(r.route(&resp("abc"), now), 0);
    }

    #[test]
    fn requests_and_responses_follow_the_call_id() {
        let mut r = ShardRouter::new(2, Duration::from_secs(32));
        let now = Instant::now();
        let (a, b) = split_pair();
        assert_eq!(r.route(&req("INVITE", &a, ""), now), 0);
        assert_eq!(r.route(&resp(&a), now), 0);
        assert_eq!(r.route(&req("BYE", &b, ""), now), 1);
        assert_eq!(r.route(&resp(&b), now), 1);
        assert_eq!(r.pinned(), 0);
    }

    #[test]
    fn replaces_goes_to_the_replaced_dialog_and_pins_until_bye_and_linger() {
        let linger = Duration::from_secs(32);
        let mut r = ShardRouter::new(2, linger);
        let t0 = Instant::now();
        let (old, new) = split_pair();
        // the replacing INVITE (Call-ID of shard 1) goes to shard 0, which holds `old`
        let inv = req("INVITE", &new, &format!("Replaces: {old};to-tag=7;from-tag=8\n"));
        assert_eq!(r.route(&inv, t0), 0);
        assert_eq!(r.pinned(), 1);
        // the rest of that dialog follows the pin, both ways
        assert_eq!(r.route(&req("ACK", &new, ""), t0), 0);
        assert_eq!(r.route(&resp(&new), t0), 0);
        let t1 = t0 + Duration::from_secs(600);
        assert_eq!(r.route(&req("BYE", &new, ""), t1), 0);
        // retransmissions of the BYE and answers within the linger still follow the pin
        assert_eq!(r.route(&resp(&new), t1 + linger / 2), 0);
        // after it, the pin is gone and the natural hash applies again
        assert_eq!(r.route(&resp(&new), t1 + linger * 3), 1);
        assert_eq!(r.pinned(), 0);
    }

    #[test]
    fn replaces_on_the_same_shard_pins_nothing() {
        let mut r = ShardRouter::new(2, Duration::from_secs(32));
        let now = Instant::now();
        let a = Shard { index: 1, count: 2 }.call_id("x");
        let b = Shard { index: 1, count: 2 }.call_id("y");
        assert_eq!(r.route(&req("INVITE", &b, &format!("Replaces: {a};to-tag=1;from-tag=2\n")), now), 1);
        assert_eq!(r.pinned(), 0);
    }

    #[test]
    fn pins_are_bounded_and_expire_without_bye() {
        let mut r = ShardRouter::new(2, Duration::from_secs(32));
        r.max_pins = 2;
        let t0 = Instant::now();
        let old = Shard { index: 0, count: 2 }.call_id("x");
        let news: Vec<String> = (0..3).map(|_| Shard { index: 1, count: 2 }.call_id("y")).collect();
        for n in &news {
            r.route(&req("INVITE", n, &format!("Replaces: {old};to-tag=1;from-tag=2\n")), t0);
        }
        assert_eq!(r.pinned(), 2);
        assert_eq!(r.pins_refused, 1);
        assert_eq!(r.route(&req("ACK", &news[2], ""), t0), 1, "the refused one is routed by its own hash");
        // never a BYE: gone after max_age
        let late = t0 + r.max_age + Duration::from_secs(1);
        assert_eq!(r.route(&resp(&news[0]), late), 1);
        assert_eq!(r.pinned(), 0);
    }
}
