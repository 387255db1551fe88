//! Port pool for one side: even RTP ports from a configured range, RTCP on port+1.
//!
//! Pairs are handed out first-in first-out: a pair freed at the end of a call goes to the back
//! of the queue, so late packets of an old call do not land in the next call on the same
//! ports, and a port that could not be bound (taken by another process) is retried last.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    /// Pairs that are not free (allocated); used to refuse double frees.
    in_use: Vec<bool>,
    first: u16,
}

impl PortPool {
    /// All even ports `p` with `p` and `p+1` inside `range`.
    pub fn new(range: RangeInclusive<u16>) -> PortPool {
        let start = (*range.start()).max(2);
        let first = start + (start & 1);
        let end = *range.end();
        let mut free = VecDeque::new();
        let mut p = first as u32;
        while p < end as u32 {
            free.push_back(p as u16);
            p += 2;
        }
        let n = free.len();
        PortPool { free, in_use: vec![false; n], first }
    }

    fn slot(&self, port: u16) -> Option<usize> {
        if port < self.first || port & 1 == 1 {
            return None;
        }
        let i = ((port - self.first) / 2) as usize;
        (i < self.in_use.len()).then_some(i)
    }

    /// Number of pairs in the range.
    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Takes the next free even port (its odd neighbour goes with it); None when exhausted.
    pub fn allocate(&mut self) -> Option<u16> {
        let p = self.free.pop_front()?;
        if let Some(i) = self.slot(p) {
            self.in_use[i] = true;
        }
        Some(p)
    }

    /// Returns a pair; unknown or already free ports are ignored.
    pub fn release(&mut self, port: u16) {
        if let Some(i) = self.slot(port) {
            if self.in_use[i] {
                self.in_use[i] = false;
                self.free.push_back(port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ports_in_range() {
        let mut p = PortPool::new(20001..=20010);
        assert_eq!(p.capacity(), 4); // 20002,20004,20006,20008 (20010 has no 20011)
        let mut got = vec![];
        while let Some(x) = p.allocate() {
            assert_eq!(x % 2, 0);
            assert!((20001..20010).contains(&x));
            got.push(x);
        }
        assert_eq!(got, vec![20002, 20004, 20006, 20008]);
    }

    #[test]
    fn exhaustion_and_release() {
        let mut p = PortPool::new(30000..=30003);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!((a, b), (30000, 30002));
        assert_eq!(p.allocate(), None);
        p.release(a);
        p.release(a); // double free ignored
        p.release(30001); // odd: ignored
        p.release(40000); // outside: ignored
        assert_eq!(p.available(), 1);
        assert_eq!(p.allocate(), Some(a));
        assert_eq!(p.allocate(), None);
    }

    #[test]
    fn freed_pairs_go_to_the_back() {
        let mut p = PortPool::new(30000..=30005);
        let a = p.allocate().unwrap();
        p.release(a);
        assert_eq!(p.allocate(), Some(30002));
        assert_eq!(p.allocate(), Some(30004));
        assert_eq!(p.allocate(), Some(30000));
    }

    #[test]
    fn empty_or_tiny_ranges() {
        assert_eq!(PortPool::new(30000..=30000).capacity(), 0);
        assert_eq!(PortPool::new(30001..=30002).capacity(), 0);
        assert_eq!(PortPool::new(65534..=65535).capacity(), 1);
        assert_eq!(PortPool::new(0..=3).capacity(), 1); // port 0 skipped
    }
}
