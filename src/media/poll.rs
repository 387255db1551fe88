//! The readiness set of one media thread: a level-triggered epoll set keyed by `usize`, and an
//! eventfd that other threads write to wake it (control commands).
//!
//! Why epoll directly (through `rustix`'s safe wrappers, no `unsafe` here) and not the
//! `polling` crate: `polling` 3.11's `Poller::wait` costs five system calls on Linux, not one:
//! it re-arms a timerfd (`timerfd_settime` + `epoll_ctl`) and clears and re-arms its
//! notification eventfd (`read` + `epoll_ctl`) on *every* wait, whether or not a timeout was
//! asked for or a notification arrived. At media rates (about one wait per packet or two when
//! the load is spread over many sessions) that is more system calls than the packet itself
//! (one `recvfrom`, one `sendto`). Here a wait is one `epoll_wait`; the eventfd is read only
//! when it fired, and a wake-up while one is already pending costs no system call. Measured
//! with bench/media, 1000 streams (50 000 packets/s), three alternating runs each, relay CPU:
//! `polling` 0.36/0.45/0.43 cores (RTP) and 0.47/0.49/0.45 (SRTP); this set 0.34/0.36/0.37
//! (RTP) and 0.45/0.44/0.37 (SRTP): 12-14% less CPU for the same packets.

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::OwnedFd;
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// Key of the wake-up eventfd (socket keys are below it).
const WAKE: u64 = u64::MAX;

pub struct EventSet {
    epoll: OwnedFd,
    wake: OwnedFd,
    /// A wake-up is written and not yet consumed by the media thread.
    woken: AtomicBool,
}

/// Ready keys of one wait (the buffer is allocated once).
pub struct Ready {
    list: Vec<epoll::Event>,
}

impl Ready {
    pub fn with_capacity(n: usize) -> Ready {
        Ready { list: Vec::with_capacity(n.max(1)) }
    }

    /// Keys of the sockets that are readable (wake-ups are not listed).
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.list.iter().map(|e| e.data.u64()).filter(|&k| k != WAKE).map(|k| k as usize)
    }
}

impl EventSet {
    pub fn new() -> io::Result<EventSet> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &wake, EventData::new_u64(WAKE), EventFlags::IN)?;
        Ok(EventSet { epoll, wake, woken: AtomicBool::new(false) })
    }

    /// Watches `sock` for readability, level-triggered, under `key` (< `usize::MAX`).
    pub fn add(&self, sock: &UdpSocket, key: usize) -> io::Result<()> {
        Ok(epoll::add(&self.epoll, sock, EventData::new_u64(key as u64), EventFlags::IN)?)
    }

    pub fn delete(&self, sock: &UdpSocket) {
        let _ = epoll::delete(&self.epoll, sock);
    }

    /// Blocks until a socket is readable, `wake` was called or `timeout` passed (`None`: no
    /// timeout). Call from one thread only, and take the queued work after each return.
    pub fn wait(&self, ready: &mut Ready, timeout: Option<&rustix::event::Timespec>) -> io::Result<()> {
        ready.list.clear();
        epoll::wait(&self.epoll, spare_capacity(&mut ready.list), timeout)?;
        if ready.list.iter().any(|e| e.data.u64() == WAKE) {
            // Drain the eventfd, then clear the flag, in this order: a `wake` that still saw the
            // flag set queued its work before, and the caller takes the work after this
            // returns; a `wake` after the flag is cleared writes the eventfd again. (Clearing
            // first would let a write land before the read and be swallowed with the flag left
            // set: every later `wake` would then skip the write, and the thread would sleep.)
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&self.wake, &mut b);
            self.woken.store(false, SeqCst);
        }
        Ok(())
    }

    /// Wakes the thread blocked in `wait` (or makes its next `wait` return at once). Work for
    /// the thread must be queued before this is called.
    pub fn wake(&self) {
        if !self.woken.swap(true, SeqCst) {
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    /// Every command queued before a `wake` is seen by the waiting thread, however the wake-ups
    /// interleave with its waits (a lost wake-up leaves the consumer blocked forever).
    #[test]
    fn no_wake_up_is_lost() {
        const N: u32 = 100_000;
        let set = Arc::new(EventSet::new().unwrap());
        let (tx, rx) = mpsc::channel::<u32>();
        let (done_tx, done_rx) = mpsc::channel();
        let consumer = {
            let set = set.clone();
            std::thread::spawn(move || {
                let mut ready = Ready::with_capacity(4);
                let mut got = 0;
                while got < N {
                    set.wait(&mut ready, None).unwrap();
                    while rx.try_recv().is_ok() {
                        got += 1;
                    }
                }
                let _ = done_tx.send(got);
            })
        };
        for i in 0..N {
            tx.send(i).unwrap();
            set.wake();
            if i % 64 == 0 {
                std::thread::yield_now();
            }
        }
        // bounded: a lost wake-up shows as a timeout here, not as a hung test
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(20)), Ok(N), "the consumer missed a wake-up");
        consumer.join().unwrap();
    }

    #[test]
    fn sockets_reported_level_triggered_by_key() {
        let set = EventSet::new().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        set.add(&a, 7).unwrap();
        set.add(&b, 9).unwrap();
        b.send_to(b"x", a.local_addr().unwrap()).unwrap();
        let mut ready = Ready::with_capacity(8);
        for _ in 0..2 {
            // not read yet: reported again (level-triggered)
            set.wait(&mut ready, None).unwrap();
            assert_eq!(ready.keys().collect::<Vec<_>>(), vec![7]);
        }
        set.delete(&a);
        set.wake();
        set.wait(&mut ready, None).unwrap();
        assert_eq!(ready.keys().count(), 0, "only the wake-up");
    }
}
