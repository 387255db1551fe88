//! Client transactions: INVITE (RFC 3261 17.1.1 with RFC 6026 Accepted) and non-INVITE (17.1.2).

use super::{next_retransmit, ClientState, TxnTimers};
use crate::sip::msg::{Headers, Method, Request, Response};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a client transaction does with a response.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ResponseAction {
    /// Pass it to the TU.
    Deliver,
    /// Retransmission or out-of-state: swallow it.
    Absorb,
}

pub(super) struct ClientTxn<D> {
    pub(super) request: Request,
    wire: Bytes,
    pub(super) dest: D,
    pub(super) reliable: bool,
    pub(super) state: ClientState,
    /// The ACK for a non-2xx final response, resent on every retransmission of that response.
    ack: Option<Bytes>,
    interval: Duration,
    /// Timer A (INVITE) or E (non-INVITE).
    retransmit_at: Option<Instant>,
    /// Timer B (INVITE) or F (non-INVITE).
    timeout_at: Option<Instant>,
    /// Timer D, M (INVITE) or K (non-INVITE).
    end_at: Option<Instant>,
    /// The deadline last pushed on the table's heap (lazy deletion: heap entries that differ are stale).
    pub(super) scheduled: Option<Instant>,
}

impl<D: Clone> ClientTxn<D> {
    /// Creates the transaction and queues the first transmission of the request.
    pub(super) fn start(
        request: Request,
        dest: D,
        reliable: bool,
        t: &TxnTimers,
        now: Instant,
        tx: &mut VecDeque<(D, Bytes)>,
    ) -> Self {
        let wire = request.to_bytes();
        tx.push_back((dest.clone(), wire.clone()));
        let invite = request.method == Method::Invite;
        ClientTxn {
            request,
            wire,
            dest,
            reliable,
            state: if invite { ClientState::Calling } else { ClientState::Trying },
            ack: None,
            interval: t.t1,
            retransmit_at: (!reliable).then(|| now + t.t1),
            timeout_at: Some(now + t.t1 * 64),
            end_at: None,
            scheduled: None,
        }
    }

    fn is_invite(&self) -> bool {
        self.request.method == Method::Invite
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.end_at].into_iter().flatten().min()
    }

    /// Leaves for a final state that lasts `linger` (timer D, K or M); zero means terminate now.
    fn finish(&mut self, state: ClientState, linger: Duration, now: Instant) {
        self.retransmit_at = None;
        self.timeout_at = None;
        // Nothing is retransmitted or cancelled from here on: only the method stays (the
        // record lingers up to 64*T1 and held every sent request and its wire copy).
        self.wire = Bytes::new();
        self.request.headers = Headers::new();
        self.request.body = Bytes::new();
        if linger.is_zero() {
            self.state = ClientState::Terminated;
            self.end_at = None;
        } else {
            self.state = state;
            self.end_at = Some(now + linger);
        }
    }

    pub(super) fn on_response(
        &mut self,
        resp: &Response,
        t: &TxnTimers,
        now: Instant,
        tx: &mut VecDeque<(D, Bytes)>,
    ) -> ResponseAction {
        use ClientState::*;
        use ResponseAction::*;
        let provisional = resp.status < 200;
        let success = (200..300).contains(&resp.status);
        if self.is_invite() {
            match self.state {
                Calling | Proceeding if provisional => {
                    // 17.1.1.2: no more retransmissions, and timer B only runs in Calling.
                    self.state = Proceeding;
                    self.retransmit_at = None;
                    self.timeout_at = None;
                    Deliver
                }
                Calling | Proceeding if success => {
                    // RFC 6026 7.2: Accepted, timer M = 64*T1 on every transport.
                    self.finish(Accepted, t.t1 * 64, now);
                    Deliver
                }
                Calling | Proceeding => {
                    let ack = build_ack(&self.request, resp).to_bytes();
                    tx.push_back((self.dest.clone(), ack.clone()));
                    self.ack = Some(ack);
                    let d = if self.reliable { Duration::ZERO } else { t.timer_d() };
                    self.finish(Completed, d, now);
                    Deliver
                }
                Completed if !provisional && !success => {
                    if let Some(ack) = &self.ack {
                        tx.push_back((self.dest.clone(), ack.clone()));
                    }
                    Absorb
                }
                // 2xx retransmissions and 2xx from other forks reach the TU, which ACKs them.
                Accepted if success => Deliver,
                _ => Absorb,
            }
        } else {
            match self.state {
                Trying | Proceeding if provisional => {
                    self.state = Proceeding;
                    Deliver
                }
                Trying | Proceeding => {
                    let k = if self.reliable { Duration::ZERO } else { t.t4 };
                    self.finish(Completed, k, now);
                    Deliver
                }
                _ => Absorb,
            }
        }
    }

    /// Runs the timers due at `now`. Returns true when timer B or F fired (the TU must be told).
    pub(super) fn on_timer(&mut self, t: &TxnTimers, now: Instant, tx: &mut VecDeque<(D, Bytes)>) -> bool {
        if self.timeout_at.is_some_and(|at| at <= now) {
            self.state = ClientState::Terminated;
            return true;
        }
        if self.end_at.is_some_and(|at| at <= now) {
            self.state = ClientState::Terminated;
            return false;
        }
        if let Some(at) = self.retransmit_at.filter(|at| *at <= now) {
            tx.push_back((self.dest.clone(), self.wire.clone()));
            self.interval = if self.is_invite() {
                self.interval * 2 // timer A doubles without a cap
            } else if self.state == ClientState::Proceeding {
                t.t2 // 17.1.2.2: in Proceeding, E is reset to T2
            } else {
                (self.interval * 2).min(t.t2)
            };
            self.retransmit_at = Some(next_retransmit(at, self.interval, now));
        }
        false
    }
}

/// The ACK for a non-2xx final response (RFC 3261 17.1.1.3): Request-URI, Call-ID, From,
/// CSeq number and Route as in the INVITE, To from the response (with its tag), and only the
/// INVITE's top Via.
pub fn build_ack(invite: &Request, resp: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    copy_dialog_headers(invite, &mut ack, resp.headers.get("To"), Method::Ack);
    ack
}

/// The CANCEL for an INVITE (RFC 3261 9.1): Request-URI, Call-ID, From, To, CSeq number and
/// Route as in the INVITE, and only the INVITE's top Via (so the same branch).
pub fn build_cancel(invite: &Request) -> Request {
    let mut cancel = Request::new(Method::Cancel, invite.uri.clone());
    copy_dialog_headers(invite, &mut cancel, invite.headers.get("To"), Method::Cancel);
    cancel
}

fn copy_dialog_headers(invite: &Request, out: &mut Request, to: Option<&str>, method: Method) {
    let h = &mut out.headers;
    if let Some(via) = invite.headers.values("Via").first() {
        h.push("Via", via.to_string());
    }
    h.push("Max-Forwards", invite.headers.get("Max-Forwards").unwrap_or("70").to_string());
    for route in invite.headers.get_all("Route") {
        h.push("Route", route.to_string());
    }
    for name in ["From", "To", "Call-ID"] {
        let v = if name == "To" { to } else { invite.headers.get(name) };
        if let Some(v) = v {
            h.push(name, v.to_string());
        }
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(0);
    h.push("CSeq", crate::fmt64!("{seq} {method}"));
}
