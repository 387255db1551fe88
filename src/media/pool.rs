//! Port pool for one side: even RTP ports from a configured range, RTCP on port+1.
//!
//! Each pair has a fixed index (`(port - first) / 2`) and a fixed owning media thread
//! (`index % owners`): once its sockets are bound they stay bound, and watched by that thread,
//! for the life of the engine. The pool remembers which pairs are bound, so the engine binds a
//! pair only on its first use (start-up stays cheap, and file descriptors grow only to the peak
//! number of pairs in use at once).
//!
//! Free pairs wait in one first-in first-out queue per owner: a pair freed at the end of a call
//! goes to the back of its owner's queue, and the engine takes from the owners in turn, so a
//! freed pair is handed out again only after every other free pair was: late packets of an old
//! call (a far end still streaming after the BYE) reach a pair without a session, where they
//! are dropped, rather than the next call on the same ports. A pair that could not be bound
//! (a port taken by another process) goes to the back too, and is retried last.

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
    /// Free pair indices per owner, oldest free first.
    queues: Vec<VecDeque<usize>>,
    /// Pairs handed out and not released yet (used to refuse double frees).
    in_use: Vec<bool>,
    /// Pairs whose sockets are bound.
    bound: Vec<bool>,
    first: u16,
    free: usize,
}

impl PortPool {
    /// All even ports `p` with `p` and `p+1` inside `range` (port 0 excluded), pair `i` owned
    /// by thread `i % owners` (`owners` at least 1).
    pub fn new(range: RangeInclusive<u16>, owners: usize) -> PortPool {
        let start = (*range.start()).max(2);
        let first = start + (start & 1);
        let end = *range.end();
        let n = if (first as u32) < end as u32 { (end as u32 - first as u32).div_ceil(2) as usize } else { 0 };
        let owners = owners.max(1);
        let mut queues = vec![VecDeque::with_capacity(n / owners + 1); owners];
        for i in 0..n {
            queues[i % owners].push_back(i);
        }
        PortPool { queues, in_use: vec![false; n], bound: vec![false; n], first, free: n }
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
        self.queues.get(owner).map_or(0, VecDeque::len)
    }

    /// Pairs whose sockets are bound.
    pub fn bound(&self) -> usize {
        self.bound.iter().filter(|b| **b).count()
    }

    /// The thread that owns pair `index`.
    pub fn owner(&self, index: usize) -> usize {
        index % self.queues.len()
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

    /// Takes the oldest free pair of `owner`; None when it has none.
    pub fn take(&mut self, owner: usize) -> Option<PortPair> {
        let index = self.queues.get_mut(owner)?.pop_front()?;
        self.in_use[index] = true;
        self.free -= 1;
        Some(PortPair { index, port: self.port(index), bound: self.bound[index] })
    }

    /// Puts a pair just taken back at the front of its owner's queue (an allocation that did
    /// not go through), as if it had not been taken.
    pub fn untake(&mut self, index: usize) {
        if self.in_use.get(index) == Some(&true) {
            self.in_use[index] = false;
            self.free += 1;
            let owner = self.owner(index);
            self.queues[owner].push_front(index);
        }
    }

    /// Returns a pair to the back of its owner's queue; unknown or already free pairs are
    /// ignored.
    pub fn release(&mut self, index: usize) {
        if self.in_use.get(index) == Some(&true) {
            self.in_use[index] = false;
            self.free += 1;
            let owner = self.owner(index);
            self.queues[owner].push_back(index);
        }
    }

    /// Records whether the sockets of pair `index` are bound.
    pub fn set_bound(&mut self, index: usize, bound: bool) {
        if let Some(b) = self.bound.get_mut(index) {
            *b = bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(p: &mut PortPool, owner: usize) -> Vec<u16> {
        std::iter::from_fn(|| p.take(owner)).map(|x| x.port).collect()
    }

    #[test]
    fn even_ports_in_range() {
        let mut p = PortPool::new(20001..=20010, 1);
        assert_eq!(p.capacity(), 4); // 20002,20004,20006,20008 (20010 has no 20011)
        assert_eq!(ports(&mut p, 0), vec![20002, 20004, 20006, 20008]);
        assert_eq!(p.index_of(20006), Some(2));
        assert_eq!(p.index_of(20007), None);
        assert_eq!(p.index_of(20010), None);
    }

    #[test]
    fn exhaustion_and_release() {
        let mut p = PortPool::new(30000..=30003, 1);
        let a = p.take(0).unwrap();
        let b = p.take(0).unwrap();
        assert_eq!((a.port, b.port), (30000, 30002));
        assert_eq!(p.take(0), None);
        p.release(a.index);
        p.release(a.index); // double free ignored
        p.release(7); // outside: ignored
        assert_eq!(p.available(), 1);
        assert_eq!(p.take(0).map(|x| x.port), Some(30000));
        assert_eq!(p.take(0), None);
        assert_eq!(p.take(5), None, "no such owner");
    }

    #[test]
    fn freed_pairs_go_to_the_back() {
        let mut p = PortPool::new(30000..=30005, 1);
        let a = p.take(0).unwrap();
        p.release(a.index);
        assert_eq!(ports(&mut p, 0), vec![30002, 30004, 30000]);
    }

    #[test]
    fn empty_or_tiny_ranges() {
        assert_eq!(PortPool::new(30000..=30000, 1).capacity(), 0);
        assert_eq!(PortPool::new(30001..=30002, 1).capacity(), 0);
        assert_eq!(PortPool::new(65534..=65535, 1).capacity(), 1);
        assert_eq!(PortPool::new(0..=3, 1).capacity(), 1); // port 0 skipped
        assert_eq!(PortPool::new(30000..=30003, 0).capacity(), 2, "0 owners counts as 1");
    }

    #[test]
    fn pairs_have_fixed_owners() {
        let mut p = PortPool::new(30000..=30019, 3); // 10 pairs
        assert_eq!((p.available_on(0), p.available_on(1), p.available_on(2)), (4, 3, 3));
        assert_eq!(ports(&mut p, 1), vec![30002, 30008, 30014]);
        assert_eq!(p.available(), 7);
        for i in [1, 4, 7] {
            assert_eq!(p.owner(i), 1);
            p.release(i);
        }
        assert_eq!(p.available_on(1), 3);
        assert_eq!(ports(&mut p, 0), vec![30000, 30006, 30012, 30018]);
    }

    /// Reuse order: the bound flag travels with the pair, and a freed pair comes back only
    /// after every pair that was free before it.
    #[test]
    fn bound_pairs_are_reused_in_fifo_order() {
        let mut p = PortPool::new(30000..=30007, 1); // 4 pairs
        let a = p.take(0).unwrap();
        assert!(!a.bound);
        p.set_bound(a.index, true);
        let b = p.take(0).unwrap();
        p.set_bound(b.index, true);
        p.release(b.index);
        p.release(a.index);
        assert_eq!(p.bound(), 2);
        let order: Vec<_> = std::iter::from_fn(|| p.take(0)).map(|x| (x.port, x.bound)).collect();
        assert_eq!(order, vec![(30004, false), (30006, false), (30002, true), (30000, true)]);
    }

    /// However takes, releases and untakes interleave, a pair is never out twice and the
    /// counts add up.
    #[test]
    fn never_hands_out_a_pair_twice() {
        let mut p = PortPool::new(30000..=30039, 3); // 20 pairs
        let mut out: Vec<usize> = Vec::new();
        let mut x: u32 = 12345;
        for step in 0..5000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let r = (x >> 16) as usize;
            match r % 4 {
                0 | 1 => {
                    if let Some(pair) = p.take(r % 3) {
                        assert!(!out.contains(&pair.index), "pair {} handed out twice (step {step})", pair.index);
                        assert_eq!(p.owner(pair.index), r % 3);
                        out.push(pair.index);
                    }
                }
                2 if !out.is_empty() => {
                    let i = out.swap_remove(r % out.len());
                    p.release(i);
                    p.release(i); // double free ignored
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

    /// A pair that could not be bound goes to the back (retried last), an untaken one to the
    /// front (as if never taken).
    #[test]
    fn bind_failure_skipped_and_retried_last() {
        let mut p = PortPool::new(30000..=30007, 1); // 4 pairs
        let a = p.take(0).unwrap(); // 30000: bind fails
        p.release(a.index);
        let b = p.take(0).unwrap(); // 30002: bound, but the other side had no pair
        assert_eq!(b.port, 30002);
        p.untake(b.index);
        assert_eq!(ports(&mut p, 0), vec![30002, 30004, 30006, 30000]);
    }
}
