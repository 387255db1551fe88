//! Server transactions: INVITE (RFC 3261 17.2.1 with RFC 6026 Accepted) and non-INVITE (17.2.2).

use super::{next_retransmit, ServerState, TxnError, TxnTimers};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What an INVITE server transaction does with an ACK that matched it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AckAction {
    Absorb,
    /// RFC 6026 7.1: an ACK matching an Accepted transaction goes to the TU.
    Deliver,
}

pub(super) struct ServerTxn<D> {
    invite: bool,
    src: D,
    reliable: bool,
    pub(super) state: ServerState,
    /// The last provisional or final response, resent when the request is retransmitted.
    last: Option<Bytes>,
    interval: Duration,
    /// Timer G.
    retransmit_at: Option<Instant>,
    /// Timer H.
    timeout_at: Option<Instant>,
    /// Timer I, J or L.
    end_at: Option<Instant>,
    pub(super) scheduled: Option<Instant>,
}

impl<D: Clone> ServerTxn<D> {
    pub(super) fn new(invite: bool, src: D, reliable: bool, t: &TxnTimers) -> Self {
        ServerTxn {
            invite,
            src,
            reliable,
            state: if invite { ServerState::Proceeding } else { ServerState::Trying },
            last: None,
            interval: t.t1,
            retransmit_at: None,
            timeout_at: None,
            end_at: None,
            scheduled: None,
        }
    }

    pub(super) fn src(&self) -> &D {
        &self.src
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.end_at].into_iter().flatten().min()
    }

    fn linger(&mut self, state: ServerState, d: Duration, now: Instant) {
        self.retransmit_at = None;
        self.timeout_at = None;
        if d.is_zero() {
            self.state = ServerState::Terminated;
            self.end_at = None;
        } else {
            self.state = state;
            self.end_at = Some(now + d);
        }
    }

    /// The request came again: resend the last response where the state machine says so.
    pub(super) fn on_retransmission(&mut self, tx: &mut VecDeque<(D, Bytes)>) {
        use ServerState::*;
        // INVITE: Proceeding and Completed resend; Confirmed and Accepted (RFC 6026) absorb.
        // Non-INVITE: Trying has nothing to send; Proceeding and Completed resend.
        if matches!(self.state, Proceeding | Completed) {
            if let Some(last) = &self.last {
                tx.push_back((self.src.clone(), last.clone()));
            }
        }
    }

    pub(super) fn on_ack(&mut self, t: &TxnTimers, now: Instant) -> AckAction {
        match self.state {
            ServerState::Completed => {
                let i = if self.reliable { Duration::ZERO } else { t.t4 };
                self.linger(ServerState::Confirmed, i, now);
                AckAction::Absorb
            }
            ServerState::Accepted => AckAction::Deliver,
            _ => AckAction::Absorb,
        }
    }

    pub(super) fn send_response(
        &mut self,
        status: u16,
        wire: Bytes,
        t: &TxnTimers,
        now: Instant,
        tx: &mut VecDeque<(D, Bytes)>,
    ) -> Result<(), TxnError> {
        use ServerState::*;
        let provisional = status < 200;
        let success = (200..300).contains(&status);
        match (self.invite, self.state) {
            (true, Proceeding) | (false, Trying | Proceeding) if provisional => {
                self.state = Proceeding;
            }
            (true, Proceeding) if success => {
                // RFC 6026 7.1: Accepted, timer L; the TU retransmits the 2xx itself.
                self.linger(Accepted, t.t1 * 64, now);
            }
            (true, Proceeding) => {
                self.state = Completed;
                self.timeout_at = Some(now + t.t1 * 64);
                self.retransmit_at = (!self.reliable).then(|| now + t.t1);
            }
            // 2xx retransmissions (and 2xx on other forks' behalf) from the TU pass through.
            (true, Accepted) if success => {
                tx.push_back((self.src.clone(), wire));
                return Ok(());
            }
            (false, Trying | Proceeding) => {
                let j = if self.reliable { Duration::ZERO } else { t.t1 * 64 };
                self.linger(Completed, j, now);
            }
            (_, state) => return Err(TxnError::InvalidState { status, state }),
        }
        if self.state == Accepted {
            // Accepted absorbs INVITE retransmissions: the 2xx is never resent from here, so
            // it is not kept for the 64*T1 this state lasts.
            tx.push_back((self.src.clone(), wire));
            self.last = None;
        } else {
            tx.push_back((self.src.clone(), wire.clone()));
            self.last = Some(wire);
        }
        Ok(())
    }

    /// Runs the timers due at `now`. Returns true when timer H fired (no ACK came).
    pub(super) fn on_timer(&mut self, t: &TxnTimers, now: Instant, tx: &mut VecDeque<(D, Bytes)>) -> bool {
        if self.timeout_at.is_some_and(|at| at <= now) {
            self.state = ServerState::Terminated;
            return true;
        }
        if self.end_at.is_some_and(|at| at <= now) {
            self.state = ServerState::Terminated;
            return false;
        }
        if let Some(at) = self.retransmit_at.filter(|at| *at <= now) {
            if let Some(last) = &self.last {
                tx.push_back((self.src.clone(), last.clone()));
            }
            self.interval = (self.interval * 2).min(t.t2);
            self.retransmit_at = Some(next_retransmit(at, self.interval, now));
        }
        false
    }
}
