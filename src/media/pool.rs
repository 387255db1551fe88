//! Port pool for one side: even RTP ports from a configured range, RTCP on port+1.
//!
//! Each pair has a fixed index (`(port - first) / 2`) and a fixed owning media thread
//! (`index % owners`): once its sockets are bound they stay bound, and watched by that thread,
//! for the life of the engine. The pool remembers which pairs are bound, so the engine binds a
//! pair only on its first use: start-up binds nothing.
//!
//! Free pairs wait in queues per owner: bound pairs first-in first-out (a pair freed at the end
//! of a call goes to the back), and pairs never bound in port order. A take prefers the oldest
//! freed bound pair once it has rested `reuse_after_ms`; before that, a pair never bound (bound
//! then, on first use); with none of those left, the oldest freed pair anyway. So:
//! - late packets of an old call (a far end still streaming after the BYE, or until a lost BYE
//!   is retransmitted) reach a pair without a session, where they are dropped, and not the
//!   next call on the same ports: a pair rests at least `reuse_after_ms` unless the range is
//!   short, and then goes out oldest freed first, as a plain FIFO would;
//! - file descriptors grow only to the peak number of pairs in use at once, plus those freed
//!   in the last `reuse_after_ms`, not to the whole range.
//!
//! A pair that could not be bound (a port taken by another process) goes to the back of the
//! unbound queue, and is retried last.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

/// One pair as the pool hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPair {
    /// Index in the range (`(port - first) / 2`); fixed for the pair.
    pub index: usize,
    /// The even (RTP) port; RTCP is `port + 1`.
    pub port: u16,
    /// Its sockets were bound before (they are kept bound by the owner thread).
    pub bound: bool,
}

#[derive(Debug)]
pub struct PortPool {
    /// Free bound pairs per owner, oldest freed first.
    bound_free: Vec<VecDeque<usize>>,
    /// Free unbound pairs per owner (port order, then bind failures at the back).
    unbound_free: Vec<VecDeque<usize>>,
    /// Pairs handed out and not released yet (used to refuse double frees).
    in_use: Vec<bool>,
    /// Pairs whose sockets are bound.
    bound: Vec<bool>,
    bound_count: usize,
    /// When each pair was last released (the caller's milliseconds).
    freed_at: Vec<u64>,
    reuse_after_ms: u64,
    first: u16,
    free: usize,
}

/// The pairs of `range`: its first even port (port 0 excluded; beyond 65535 when the range
/// starts at 65535, and then no pair) and how many even ports `p` from there have `p` and `p+1`
/// inside it.
pub fn pairs_in(range: &RangeInclusive<u16>) -> (u32, usize) {
    let start = u32::from((*range.start()).max(2));
    let first = start + (start & 1);
    let end = u32::from(*range.end());
    let n = if first < end { (end - first).div_ceil(2) as usize } else { 0 };
    (first, n)
}

impl PortPool {
    /// All even ports `p` with `p` and `p+1` inside `range` (port 0 excluded), pair `i` owned
    /// by thread `i % owners` (`owners` at least 1); a freed bound pair rests `reuse_after_ms`
    /// before it is preferred to an unbound one.
    pub fn new(range: RangeInclusive<u16>, owners: usize, reuse_after_ms: u64) -> PortPool {
        let (first, n) = pairs_in(&range);
        let owners = owners.max(1);
        let mut unbound_free = vec![VecDeque::with_capacity(n / owners + 1); owners];
        for i in 0..n {
            unbound_free[i % owners].push_back(i);
        }
        PortPool {
            bound_free: vec![VecDeque::new(); owners],
            unbound_free,
            in_use: vec![false; n],
            bound: vec![false; n],
            bound_count: 0,
            freed_at: vec![0; n],
            reuse_after_ms,
            // only read for pairs that exist (then it is a port)
            first: first as u16,
            free: n,
        }
    }

    /// Number of pairs in the range.
    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }

    /// Free pairs (all owners).
    pub fn available(&self) -> usize {
        self.free
    }

    /// Free pairs of one owner.
    pub fn available_on(&self, owner: usize) -> usize {
        self.bound_free.get(owner).map_or(0, VecDeque::len) + self.unbound_on(owner)
    }

    /// Free pairs of one owner that are not bound.
    pub fn unbound_on(&self, owner: usize) -> usize {
        self.unbound_free.get(owner).map_or(0, VecDeque::len)
    }

    /// Pairs whose sockets are bound.
    pub fn bound(&self) -> usize {
        self.bound_count
    }

    /// The thread that owns pair `index`.
    pub fn owner(&self, index: usize) -> usize {
        index % self.bound_free.len()
    }

    pub fn port(&self, index: usize) -> u16 {
        self.first + 2 * index as u16
    }

    /// Index of the pair whose even port is `port`.
    pub fn index_of(&self, port: u16) -> Option<usize> {
        if port < self.first || port & 1 == 1 {
            return None;
        }
        let i = ((port - self.first) / 2) as usize;
        (i < self.in_use.len()).then_some(i)
    }

    /// Takes a free pair of `owner` at `now_ms` (see the module doc for which); an unbound pair
    /// only when `allow_unbound`. None when it has none.
    pub fn take(&mut self, owner: usize, now_ms: u64, allow_unbound: bool) -> Option<PortPair> {
        let (bound, unbound) = (self.bound_free.get_mut(owner)?, self.unbound_free.get_mut(owner)?);
        let rested = bound.front().is_some_and(|&i| now_ms.saturating_sub(self.freed_at[i]) >= self.reuse_after_ms);
        let index = match (rested, allow_unbound && !unbound.is_empty()) {
            (false, true) => unbound.pop_front(),
            _ => bound.pop_front(),
        }?;
        self.in_use[index] = true;
        self.free -= 1;
        Some(PortPair { index, port: self.port(index), bound: self.bound[index] })
    }

    /// When pair `index` was last released (ms on the engine's clock; 0 if never).
    pub fn freed_at(&self, index: usize) -> u64 {
        self.freed_at.get(index).copied().unwrap_or(0)
    }

    /// Puts a pair just taken back at the front of its queue (an allocation that did not go
    /// through), as if it had not been taken.
    pub fn untake(&mut self, index: usize) {
        if let Some(q) = self.give_back(index) {
            q.push_front(index);
        }
    }

    /// Marks a taken pair free again and returns the queue it belongs in (bound or not, of its
    /// owner); None for an unknown pair or one that is not taken.
    fn give_back(&mut self, index: usize) -> Option<&mut VecDeque<usize>> {
        if self.in_use.get(index) != Some(&true) {
            return None;
        }
        self.in_use[index] = false;
        self.free += 1;
        let owner = self.owner(index);
        Some(if self.bound[index] { &mut self.bound_free[owner] } else { &mut self.unbound_free[owner] })
    }

    /// Returns a pair at `now_ms`, to the back of its queue; unknown or already free pairs are
    /// ignored.
    pub fn release(&mut self, index: usize, now_ms: u64) {
        if self.give_back(index).map(|q| q.push_back(index)).is_some() {
            self.freed_at[index] = now_ms;
        }
    }

    /// Records that the sockets of pair `index` (taken, not yet released) are bound, or not.
    pub fn set_bound(&mut self, index: usize, bound: bool) {
        if let Some(b) = self.bound.get_mut(index) {
            if *b != bound {
                *b = bound;
                if bound {
                    self.bound_count += 1;
                } else {
                    self.bound_count -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes every free pair of `owner` at `now`, as ports.
    fn ports(p: &mut PortPool, owner: usize, now: u64) -> Vec<u16> {
        std::iter::from_fn(|| p.take(owner, now, true)).map(|x| x.port).collect()
    }

    /// Takes a pair and binds it (as the engine does on first use).
    fn take_bound(p: &mut PortPool, now: u64) -> PortPair {
        let x = p.take(0, now, true).unwrap();
        p.set_bound(x.index, true);
        x
    }

    #[test]
    fn even_ports_in_range() {
        let mut p = PortPool::new(20001..=20010, 1, 0);
        assert_eq!(p.capacity(), 4); // 20002,20004,20006,20008 (20010 has no 20011)
        assert_eq!(ports(&mut p, 0, 0), vec![20002, 20004, 20006, 20008]);
        assert_eq!(p.index_of(20006), Some(2));
        assert_eq!(p.index_of(20007), None);
        assert_eq!(p.index_of(20010), None);
    }

    #[test]
    fn exhaustion_and_release() {
        let mut p = PortPool::new(30000..=30003, 1, 0);
        let a = p.take(0, 0, true).unwrap();
        let b = p.take(0, 0, true).unwrap();
        assert_eq!((a.port, b.port), (30000, 30002));
        assert_eq!(p.take(0, 0, true), None);
        p.release(a.index, 0);
        p.release(a.index, 0); // double free ignored
        p.release(7, 0); // outside: ignored
        assert_eq!(p.available(), 1);
        assert_eq!(p.take(0, 0, true).map(|x| x.port), Some(30000));
        assert_eq!(p.take(0, 0, true), None);
        assert_eq!(p.take(5, 0, true), None, "no such owner");
    }

    #[test]
    fn empty_or_tiny_ranges() {
        assert_eq!(PortPool::new(30000..=30000, 1, 0).capacity(), 0);
        assert_eq!(PortPool::new(30001..=30002, 1, 0).capacity(), 0);
        assert_eq!(PortPool::new(65534..=65535, 1, 0).capacity(), 1);
        assert_eq!(PortPool::new(0..=3, 1, 0).capacity(), 1); // port 0 skipped
        assert_eq!(PortPool::new(30000..=30003, 0, 0).capacity(), 2, "0 owners counts as 1");
    }

    #[test]
    fn pairs_have_fixed_owners() {
        let mut p = PortPool::new(30000..=30019, 3, 0); // 10 pairs
        assert_eq!((p.available_on(0), p.available_on(1), p.available_on(2)), (4, 3, 3));
        assert_eq!(ports(&mut p, 1, 0), vec![30002, 30008, 30014]);
        assert_eq!(p.available(), 7);
        for i in [1, 4, 7] {
            assert_eq!(p.owner(i), 1);
            p.release(i, 0);
        }
        assert_eq!(p.available_on(1), 3);
        assert_eq!(ports(&mut p, 0, 0), vec![30000, 30006, 30012, 30018]);
    }

    /// Reuse order: bound pairs go out oldest freed first, once rested; a pair freed a moment
    /// ago waits while a never-bound pair is left, and goes out (oldest first) when none is.
    #[test]
    fn bound_pairs_are_reused_in_fifo_order_once_rested() {
        let mut p = PortPool::new(30000..=30007, 1, 1000); // 4 pairs, rest 1 s
        let a = take_bound(&mut p, 0);
        let b = take_bound(&mut p, 0);
        p.release(b.index, 10);
        p.release(a.index, 20);
        assert_eq!(p.bound(), 2);
        // at 500 ms neither has rested: the unbound pairs first, then b and a (oldest freed first)
        let order: Vec<_> = std::iter::from_fn(|| p.take(0, 500, true)).map(|x| (x.port, x.bound)).collect();
        assert_eq!(order, vec![(30004, false), (30006, false), (30002, true), (30000, true)]);
        for i in 0..4 {
            p.release(i, 600);
        }
        // rested: a bound pair before the unbound ones; FIFO among the bound ones
        assert_eq!(p.take(0, 1600, true).map(|x| (x.port, x.bound)), Some((30000, true)));
        assert_eq!(p.take(0, 1600, true).map(|x| (x.port, x.bound)), Some((30002, true)));
        assert_eq!(p.take(0, 1600, true).map(|x| x.port), Some(30004));
    }

    /// Under a steady load of short calls, the pairs bound stay at the peak in use plus those
    /// freed within the rest time: not the whole range.
    #[test]
    fn bound_pairs_grow_to_the_peak_not_the_range() {
        let mut p = PortPool::new(30000..=31999, 1, 1000); // 1000 pairs
        let mut live = VecDeque::new();
        for ms in 0..20_000u64 {
            // a call every 10 ms, 2 s long: 200 at once, 100 freed per rest time
            if ms % 10 == 0 {
                let x = p.take(0, ms, true).unwrap();
                if !x.bound {
                    p.set_bound(x.index, true);
                }
                live.push_back((x.index, ms + 2000));
            }
            while live.front().is_some_and(|&(_, end)| end <= ms) {
                let (i, _) = live.pop_front().unwrap();
                p.release(i, ms);
            }
        }
        assert!((300..=310).contains(&p.bound()), "{} bound", p.bound());
    }

    /// However takes, releases and untakes interleave, a pair is never out twice and the
    /// counts add up.
    #[test]
    fn never_hands_out_a_pair_twice() {
        let mut p = PortPool::new(30000..=30039, 3, 50); // 20 pairs
        let mut out: Vec<usize> = Vec::new();
        let mut x: u32 = 12345;
        for now in 0..5000u64 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let r = (x >> 16) as usize;
            match r % 4 {
                0 | 1 => {
                    if let Some(pair) = p.take(r % 3, now, r % 8 != 0) {
                        assert!(!out.contains(&pair.index), "pair {} handed out twice (at {now})", pair.index);
                        assert_eq!(p.owner(pair.index), r % 3);
                        if r % 5 == 0 {
                            p.set_bound(pair.index, true);
                        }
                        out.push(pair.index);
                    }
                }
                2 if !out.is_empty() => {
                    let i = out.swap_remove(r % out.len());
                    p.release(i, now);
                    p.release(i, now); // double free ignored
                }
                _ if !out.is_empty() => {
                    let i = out.swap_remove(r % out.len());
                    p.untake(i);
                    p.untake(i);
                }
                _ => {}
            }
            assert_eq!(p.available() + out.len(), 20);
            assert_eq!((0..3).map(|o| p.available_on(o)).sum::<usize>(), p.available());
        }
    }

    /// A pair that could not be bound goes to the back of the unbound queue (retried last),
    /// an untaken one to the front (as if never taken); with unbound pairs not allowed (all
    /// failed), a bound pair that has not rested is taken.
    #[test]
    fn bind_failure_skipped_and_retried_last() {
        let mut p = PortPool::new(30000..=30007, 1, 1000); // 4 pairs
        let a = p.take(0, 0, true).unwrap(); // 30000: bind fails
        p.release(a.index, 0);
        let b = p.take(0, 0, true).unwrap(); // 30002: bound, but the other side had no pair
        assert_eq!(b.port, 30002);
        p.untake(b.index);
        let c = take_bound(&mut p, 0); // 30002 again
        assert_eq!(c.port, 30002);
        p.release(c.index, 0);
        assert_eq!(p.take(0, 10, false).map(|x| x.port), Some(30002), "only bound pairs");
        assert_eq!(ports(&mut p, 0, 10), vec![30004, 30006, 30000]);
        assert_eq!(p.take(0, 10, false), None);
    }
}
