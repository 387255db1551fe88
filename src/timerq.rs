//! A queue of timers by deadline for the sans-IO cores (transactions, calls).
//!
//! Most timers of a SIP core are set at a fixed delay from now (64*T1 = 32 s for timers B, F,
//! H, J, L, M and a call's clean-up, T4 = 5 s for K, T1 for the first retransmission) and `now`
//! does not go back, so the timers of one delay arrive in deadline order. A timer goes to the
//! first of a few FIFO lanes whose last deadline is not later than its own (so each lane stays
//! sorted, and the delays sort themselves into lanes); push and pop there cost nothing. Only a
//! timer that fits no lane goes to a binary heap. With 10^5 transactions lingering, one heap
//! holding them all cost ~20 levels of cache-missing comparisons per pop: half of the time spent
//! on timers in a 40 s run at 5,000 calls/s (bench/PROFILE.md, sixth pass).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

/// FIFO lanes: one per delay in common use (64*T1, T4, T1, 2*T1, a call's ring timeout).
const LANES: usize = 5;

pub struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<(Instant, T)>>,
    lanes: [VecDeque<(Instant, T)>; LANES],
}

impl<T: Ord + Copy> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue { heap: BinaryHeap::new(), lanes: Default::default() }
    }
}

impl<T: Ord + Copy> TimerQueue<T> {
    pub fn push(&mut self, at: Instant, t: T) {
        match self.lanes.iter_mut().find(|l| l.back().is_none_or(|&(last, _)| last <= at)) {
            Some(lane) => lane.push_back((at, t)),
            None => self.heap.push(Reverse((at, t))),
        }
    }

    /// Where the earliest timer is: a lane's index, or `LANES` for the heap.
    fn earliest(&self) -> Option<(usize, (Instant, T))> {
        let mut best = self.heap.peek().map(|&Reverse(x)| (LANES, x));
        for (i, lane) in self.lanes.iter().enumerate() {
            if let Some(&f) = lane.front() {
                if best.is_none_or(|(_, b)| f.0 < b.0) {
                    best = Some((i, f));
                }
            }
        }
        best
    }

    /// The earliest timer.
    pub fn peek(&self) -> Option<(Instant, T)> {
        self.earliest().map(|(_, x)| x)
    }

    pub fn pop(&mut self) -> Option<(Instant, T)> {
        match self.earliest()?.0 {
            LANES => self.heap.pop().map(|Reverse(x)| x),
            i => self.lanes[i].pop_front(),
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len() + self.lanes.iter().map(VecDeque::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the timers for which `keep` is true (dropping stale entries).
    pub fn retain(&mut self, mut keep: impl FnMut(Instant, T) -> bool) {
        self.heap.retain(|Reverse((at, t))| keep(*at, *t));
        for lane in &mut self.lanes {
            lane.retain(|&(at, t)| keep(at, t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TimerQueue;
    use std::time::{Duration, Instant};

    /// Timers come out in deadline order whatever order they went in, through both paths.
    #[test]
    fn pops_in_deadline_order() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut q = TimerQueue::default();
        // 32 s timers in order (one lane), shorter ones in between (other lanes), and more
        // out-of-order ones than there are lanes (the heap)
        let pushes = [(32_000, 1), (500, 2), (32_001, 3), (1_000, 4), (32_001, 5), (40, 6), (32_500, 7), (32_200, 8), (0, 9), (30, 10), (20, 11), (10, 12), (5, 13), (2, 14)];
        for (at, id) in pushes {
            q.push(ms(at), id);
        }
        assert_eq!(q.len(), pushes.len());
        assert!(q.heap.len() >= 2 && q.lanes[0].len() >= 4, "both paths used: {} {}", q.heap.len(), q.lanes[0].len());
        let mut out = Vec::new();
        while let Some((at, id)) = q.peek() {
            assert_eq!(q.pop(), Some((at, id)));
            out.push((at, id));
        }
        assert!(q.is_empty());
        let mut want: Vec<_> = pushes.iter().map(|&(a, i)| (ms(a), i)).collect();
        want.sort();
        assert_eq!(out.iter().map(|x| x.0).collect::<Vec<_>>(), want.iter().map(|x| x.0).collect::<Vec<_>>());
        let mut ids: Vec<_> = out.iter().map(|x| x.1).collect();
        ids.sort();
        assert_eq!(ids, (1..=14).collect::<Vec<_>>());
    }

    /// Random deadlines, pushes and pops interleaved: every pop is the earliest pending timer.
    #[test]
    fn random_interleaving_pops_the_earliest() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let mut pending: Vec<(Instant, u32)> = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 && !pending.is_empty() {
                let got = q.pop().expect("pending timer");
                let min = pending.iter().map(|p| p.0).min().expect("pending");
                assert_eq!(got.0, min, "pop {i}");
                let k = pending.iter().position(|p| *p == got).expect("popped timer was pushed");
                pending.swap_remove(k);
            } else {
                // a clock that moves on, and one of a few delays, or any delay
                let now = t0 + Duration::from_millis(u64::from(i) * 7);
                let d = match x % 5 {
                    0 => 32_000,
                    1 => 5_000,
                    2 => 500,
                    3 => 1_000,
                    _ => (x >> 8) % 40_000,
                };
                let at = now + Duration::from_millis(d);
                q.push(at, i);
                pending.push((at, i));
            }
            assert_eq!(q.len(), pending.len());
        }
    }

    #[test]
    fn retain_drops_from_both() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        for i in 0..10u32 {
            // alternately late and early: lanes and heap
            let at = if i % 2 == 0 { t0 + Duration::from_secs(100 + i as u64) } else { t0 + Duration::from_secs(i as u64) };
            q.push(at, i);
        }
        q.retain(|_, i| i % 3 != 0);
        let mut left = Vec::new();
        while let Some((_, i)) = q.pop() {
            left.push(i);
        }
        left.sort();
        assert_eq!(left, vec![1, 2, 4, 5, 7, 8]);
    }
}
