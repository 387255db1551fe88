//! The readiness set of one media thread: level-triggered, keyed by `usize`, with a wake-up
//! that other threads can trigger (control messages). A thin layer over `polling`.

use polling::{Event, Events, PollMode, Poller};
use std::io;
use std::net::UdpSocket;
use std::num::NonZeroUsize;

pub struct EventSet {
    poller: Poller,
}

/// Ready keys of one wait.
pub struct Ready {
    events: Events,
}

impl Ready {
    pub fn with_capacity(n: usize) -> Ready {
        Ready { events: Events::with_capacity(NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN)) }
    }

    /// Keys of the sockets that are readable (wake-ups are not listed).
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.events.iter().map(|e| e.key).filter(|&k| k != usize::MAX)
    }
}

impl EventSet {
    pub fn new() -> io::Result<EventSet> {
        Ok(EventSet { poller: Poller::new()? })
    }

    /// Watches `sock` for readability, level-triggered, under `key` (< `usize::MAX`).
    pub fn add(&self, sock: &UdpSocket, key: usize) -> io::Result<()> {
        // SAFETY: every socket added is deleted before it is closed (the media thread calls
        // `delete` before dropping a session's sockets).
        unsafe { self.poller.add_with_mode(sock, Event::readable(key), PollMode::Level) }
    }

    pub fn delete(&self, sock: &UdpSocket) {
        let _ = self.poller.delete(sock);
    }

    /// Blocks until a socket is readable or `wake` was called.
    pub fn wait(&self, ready: &mut Ready) -> io::Result<()> {
        ready.events.clear();
        self.poller.wait(&mut ready.events, None).map(|_| ())
    }

    /// Wakes the thread blocked in `wait` (or makes its next `wait` return at once).
    pub fn wake(&self) {
        let _ = self.poller.notify();
    }
}
