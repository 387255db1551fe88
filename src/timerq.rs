//! A queue of timers by deadline for the sans-IO cores (transactions, calls).
//!
//! Most timers of a SIP core are set at a fixed delay from now (64*T1 = 32 s for timers B, F,
//! H, J, L, M and a call's clean-up) and `now` does not go back, so they arrive in deadline
//! order. Those go to a FIFO, whose push and pop cost nothing; only a timer earlier than the last
//! one queued there (a retransmission, a T4) goes to a binary heap. With 10^5 transactions
//! lingering, a heap holding them all cost ~20 levels of cache-missing comparisons per pop: half
//! of the time spent on timers in a 40 s run at 5,000 calls/s (bench/PROFILE.md, sixth pass).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

pub struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<(Instant, T)>>,
    fifo: VecDeque<(Instant, T)>,
}

impl<T: Ord + Copy> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue { heap: BinaryHeap::new(), fifo: VecDeque::new() }
    }
}

impl<T: Ord + Copy> TimerQueue<T> {
    pub fn push(&mut self, at: Instant, t: T) {
        if self.fifo.back().is_none_or(|&(last, _)| last <= at) {
            self.fifo.push_back((at, t));
        } else {
            self.heap.push(Reverse((at, t)));
        }
    }

    /// The earliest timer (of equal deadlines, the heap's first).
    pub fn peek(&self) -> Option<(Instant, T)> {
        match (self.heap.peek(), self.fifo.front()) {
            (Some(&Reverse(h)), Some(&f)) => Some(if f.0 < h.0 { f } else { h }),
            (Some(&Reverse(h)), None) => Some(h),
            (None, f) => f.copied(),
        }
    }

    pub fn pop(&mut self) -> Option<(Instant, T)> {
        let from_fifo = match (self.heap.peek(), self.fifo.front()) {
            (Some(Reverse(h)), Some(f)) => f.0 < h.0,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if from_fifo {
            self.fifo.pop_front()
        } else {
            self.heap.pop().map(|Reverse(x)| x)
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len() + self.fifo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the timers for which `keep` is true (dropping stale entries).
    pub fn retain(&mut self, mut keep: impl FnMut(Instant, T) -> bool) {
        self.heap.retain(|Reverse((at, t))| keep(*at, *t));
        self.fifo.retain(|&(at, t)| keep(at, t));
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
        // 32 s timers in order (FIFO), retransmissions and early ones in between (heap)
        let pushes = [(32_000, 1), (500, 2), (32_001, 3), (1_000, 4), (32_001, 5), (40, 6), (32_500, 7), (32_200, 8), (0, 9)];
        for (at, id) in pushes {
            q.push(ms(at), id);
        }
        assert_eq!(q.len(), pushes.len());
        assert!(q.heap.len() >= 4 && q.fifo.len() >= 4, "both paths used: {} {}", q.heap.len(), q.fifo.len());
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
        assert_eq!(ids, (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn retain_drops_from_both() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        for i in 0..10u32 {
            // alternately late and early: half go to the heap
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
