//! RFC 3261 section 17 transactions as sans-IO state machines.
//!
//! # Design
//!
//! Modelled on `quinn-proto`: nothing here touches a socket or a clock. The owner (the core's
//! tokio task) feeds [`Transactions`] with messages and the current time and drains what it
//! wants done:
//!
//! * input: [`Transactions::on_request`], [`Transactions::on_response`] (messages from the
//!   network), [`Transactions::send_request`], [`Transactions::send_response`],
//!   [`Transactions::send_cancel`] (commands of the transaction user, TU), and
//!   [`Transactions::handle_timeout`];
//! * output: [`Transactions::poll_transmit`] (serialized bytes and the opaque destination `D`
//!   they go to, in order), [`Transactions::poll_event`] ([`TxnEvent`]: timeouts, transport
//!   errors, terminations) and [`Transactions::poll_timeout`] (when to call `handle_timeout`).
//!
//! Each transaction is a small struct holding its state and three optional deadlines
//! (retransmit: A/E/G; timeout: B/F/H; linger: D/I/J/K/L/M). The table keeps one queue of
//! `(deadline, id)` ([`crate::timerq::TimerQueue`]: a FIFO for the 64*T1 timers, which come in
//! deadline order, a binary heap for the rest) with lazy deletion: a transaction remembers the
//! deadline it last pushed, and a popped entry that no longer equals it is stale and skipped.
//! Lookups are hash tables keyed by id and by branch, so the table scales to ~10^5 live
//! transactions.
//!
//! # Behaviour
//!
//! * RFC 6026 is implemented: an INVITE server transaction that sends a 2xx goes to Accepted
//!   (timer L = 64*T1): retransmitted INVITEs are absorbed, further 2xx from the TU pass through
//!   (the TU retransmits its 2xx until the ACK), a matching ACK goes to the TU. An INVITE
//!   client transaction that receives a 2xx goes to Accepted (timer M = 64*T1) and hands every
//!   2xx (retransmissions, other forks) to the TU, which ACKs them itself.
//! * Over reliable transports there are no retransmissions (A, E, G) and D, I, J, K are zero:
//!   the transaction terminates at once. B, F, H, L, M keep their values.
//! * Timer B and H only run in Calling/Completed as in the RFC; an INVITE client transaction
//!   in Proceeding waits for the TU (Expires, CANCEL, failover timers are the TU's business).
//! * Server transactions do not send 100 Trying by themselves; the TU sends [`trying`].
//! * A server transaction waits for the TU's response without a timer: the TU must answer
//!   every request it is given (the table is bounded by `max`, so a leak shows as 503s).
//! * Matching: responses by top Via branch + CSeq method (17.1.3); requests by branch,
//!   sent-by and method, with ACK matched to its INVITE (17.2.3). CANCEL is its own
//!   transaction; [`RequestDisposition::Cancel`] also names the INVITE transaction it cancels.
//! * RFC 2543 requests (top Via branch without the `z9hG4bK` cookie) are matched by the
//!   fallback of 17.2.3, simplified: Request-URI, Call-ID, From tag, CSeq number and the top
//!   Via (the To tag is left out, so an ACK matches its INVITE and a CANCEL its INVITE).
//! * When `max` transactions are live, new requests get [`RequestDisposition::Overloaded`] (answer
//!   503 with [`Transactions::send_stateless`]) and `send_request` fails with [`TxnError::Full`].
//!   Retransmissions and ACKs are still matched.
//! * `on_request` borrows the request and returns only a disposition: the TU keeps the request
//!   (it needs it for `New`, `Cancel` and `Ack2xx` alike), so nothing is cloned here.
//! * Transport failures (a TLS connect that failed) end transactions with a
//!   `ClientTransportError`/`ServerTransportError` event, per id or by a predicate on `D`; the TU
//!   treats them like a timeout (fail over to the next proxy). Every transaction that ends, for
//!   whatever reason, emits `ClientTerminated`/`ServerTerminated` so the TU can drop its mapping.

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{build_ack, build_cancel};

use crate::sip::msg::{Method, Request, Response};
use bytes::Bytes;
use client::{ClientTxn, ResponseAction};
use rand::Rng;
use server::{AckAction, ServerTxn};
use rustc_hash::FxHashMap;
use crate::hashindex::HashIndex;
use crate::timerq::TimerQueue;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The RFC 3261 branch magic cookie.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// A fresh, globally unique branch parameter: `z9hG4bK` followed by 22 random alphanumerics.
pub fn new_branch() -> String {
    let mut s = String::with_capacity(MAGIC_COOKIE.len() + 22);
    s.push_str(MAGIC_COOKIE);
    s.extend(rand::rng().sample_iter(&rand::distr::Alphanumeric).take(22).map(char::from));
    s
}

/// The 100 Trying for a request (RFC 3261 8.2.6.1: no To tag, Timestamp copied).
pub fn trying(req: &Request) -> Response {
    req.response(100, None)
}

/// Timer base values (RFC 3261 table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnTimers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TxnTimers {
    fn default() -> Self {
        TxnTimers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl TxnTimers {
    /// Timer D over unreliable transports: at least 32 s.
    fn timer_d(&self) -> Duration {
        (self.t1 * 64).max(Duration::from_secs(32))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxnId(u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxnId(u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, no response yet.
    Calling,
    /// Non-INVITE sent, no response yet.
    Trying,
    Proceeding,
    Completed,
    /// RFC 6026: a 2xx to the INVITE came; further 2xx go to the TU until timer M.
    Accepted,
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE received, no response yet.
    Trying,
    Proceeding,
    Completed,
    /// INVITE: ACK received for the non-2xx final response.
    Confirmed,
    /// RFC 6026: a 2xx was sent to the INVITE.
    Accepted,
    Terminated,
}

/// What [`Transactions::on_request`] did with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestDisposition {
    /// A new server transaction: give the request to the TU, which answers with `send_response`.
    New(ServerTxnId),
    /// A retransmission, absorbed (the last response, if any, is queued for retransmission).
    Retransmission,
    /// An ACK that matched no transaction, or an INVITE transaction in Accepted: an ACK for a
    /// 2xx, which belongs to the TU (the dialog).
    Ack2xx,
    /// An ACK for a non-2xx final response, absorbed by its INVITE transaction.
    AckAbsorbed,
    /// A new CANCEL transaction. `invite` is the INVITE server transaction it cancels, if it
    /// still exists (see [`Transactions::server_state`]: a CANCEL after the final response has no
    /// effect but still gets its 200, a CANCEL with `invite: None` gets 481).
    Cancel { cancel: ServerTxnId, invite: Option<ServerTxnId> },
    /// The table is full: answer 503 statelessly (`send_stateless`).
    Overloaded,
    /// No usable top Via or CSeq (or the CSeq method differs from the request's): drop it.
    Malformed,
}

/// Something the TU must learn about, from [`Transactions::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnEvent {
    /// Timer B or F fired: no final response (the TU acts as if it got a 408).
    ClientTimeout(ClientTxnId),
    /// The transport reported that the request could not be sent (act as for a 503, fail over).
    ClientTransportError(ClientTxnId),
    /// Timer H fired: the ACK for a non-2xx final response never came.
    ServerTimeout(ServerTxnId),
    /// The transport could not deliver a response of this transaction.
    ServerTransportError(ServerTxnId),
    /// The transaction is gone (after any of the above, or normally); its id is free to forget.
    ClientTerminated(ClientTxnId),
    ServerTerminated(ServerTxnId),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TxnError {
    #[error("transaction table full ({0} transactions)")]
    Full(usize),
    #[error("request has no top Via with a z9hG4bK branch")]
    NoBranch,
    #[error("request has no valid CSeq matching its method")]
    BadCSeq,
    #[error("ACK for a 2xx is not a transaction; use send_stateless")]
    Ack,
    #[error("a client transaction with this branch and method exists already")]
    Duplicate,
    #[error("no such transaction")]
    NoTxn,
    #[error("no CANCEL possible: not an INVITE transaction waiting for a final response")]
    NotCancellable,
    #[error("response {status} not allowed in transaction state {state:?}")]
    InvalidState { status: u16, state: ServerState },
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnStats {
    /// Responses matching no client transaction, or absorbed by one.
    pub absorbed_responses: u64,
    /// Request retransmissions and ACKs absorbed by server transactions.
    pub absorbed_requests: u64,
    /// Requests refused because the table was full.
    pub overloaded: u64,
    /// Timer B, F or H expiries.
    pub timeouts: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: Method,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    method: Method,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Client(u64),
    Server(u64),
}

/// The transaction table: every client and server transaction of one SIP core.
pub struct Transactions<D> {
    timers: TxnTimers,
    max: usize,
    next_id: u64,
    clients: FxHashMap<u64, Box<(ClientKey, ClientTxn<D>)>>,
    /// Ids by key; the key lives in the transaction ([`HashIndex`]).
    client_keys: HashIndex<u64>,
    servers: FxHashMap<u64, Box<(ServerKey, ServerTxn<D>)>>,
    server_keys: HashIndex<u64>,
    queue: TimerQueue<TimerRef>,
    transmits: VecDeque<(D, Bytes)>,
    events: VecDeque<TxnEvent>,
    stats: TxnStats,
}

impl<D: Clone> Transactions<D> {
    /// A table holding at most `max` live transactions (client and server together).
    pub fn new(timers: TxnTimers, max: usize) -> Self {
        Transactions {
            timers,
            max,
            next_id: 0,
            clients: FxHashMap::default(),
            client_keys: HashIndex::default(),
            servers: FxHashMap::default(),
            server_keys: HashIndex::default(),
            queue: TimerQueue::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: TxnStats::default(),
        }
    }

    /// Live transactions, client and server.
    pub fn len(&self) -> usize {
        self.clients.len() + self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> TxnStats {
        self.stats
    }

    pub fn client_state(&self, id: ClientTxnId) -> Option<ClientState> {
        self.clients.get(&id.0).map(|e| e.1.state)
    }

    pub fn server_state(&self, id: ServerTxnId) -> Option<ServerState> {
        self.servers.get(&id.0).map(|e| e.1.state)
    }

    /// The request a client transaction sent.
    pub fn client_request(&self, id: ClientTxnId) -> Option<&Request> {
        self.clients.get(&id.0).map(|e| &e.1.request)
    }

    // ---- requests from the network -------------------------------------------------------

    /// A request arrived from `src` (where responses go: the TU/transport derive it from the
    /// Via and the packet source). `reliable` is true for TCP/TLS.
    pub fn on_request(&mut self, req: &Request, src: D, reliable: bool, now: Instant) -> RequestDisposition {
        let Some(key) = server_key(req) else {
            return RequestDisposition::Malformed;
        };
        if req.method == Method::Ack {
            let invite_key = ServerKey { method: Method::Invite, ..key };
            let Some(id) = self.find_server(&invite_key) else {
                return RequestDisposition::Ack2xx;
            };
            let Some(txn) = self.servers.get_mut(&id).map(|e| &mut e.1) else {
                return RequestDisposition::Ack2xx;
            };
            let action = txn.on_ack(&self.timers, now);
            self.after_server(id, now);
            return match action {
                AckAction::Deliver => RequestDisposition::Ack2xx,
                AckAction::Absorb => {
                    self.stats.absorbed_requests += 1;
                    RequestDisposition::AckAbsorbed
                }
            };
        }
        if let Some(id) = self.find_server(&key) {
            if let Some(txn) = self.servers.get_mut(&id).map(|e| &mut e.1) {
                txn.on_retransmission(&mut self.transmits);
            }
            self.stats.absorbed_requests += 1;
            return RequestDisposition::Retransmission;
        }
        if self.len() >= self.max {
            self.stats.overloaded += 1;
            return RequestDisposition::Overloaded;
        }
        let id = self.alloc_id();
        let invite_key = (req.method == Method::Cancel).then(|| ServerKey { method: Method::Invite, ..key.clone() });
        let txn = ServerTxn::new(req.method == Method::Invite, src, reliable, &self.timers);
        self.server_keys.insert(&key, id);
        self.servers.insert(id, Box::new((key, txn)));
        match invite_key {
            Some(k) => RequestDisposition::Cancel {
                cancel: ServerTxnId(id),
                invite: self.find_server(&k).map(ServerTxnId),
            },
            None => RequestDisposition::New(ServerTxnId(id)),
        }
    }

    /// The TU answers a server transaction. Provisional and final responses as the state machine
    /// allows; after a 2xx to an INVITE, further 2xx (the TU's retransmissions) pass through.
    pub fn send_response(&mut self, id: ServerTxnId, resp: &Response, now: Instant) -> Result<(), TxnError> {
        let txn = &mut self.servers.get_mut(&id.0).ok_or(TxnError::NoTxn)?.1;
        txn.send_response(resp.status, resp.to_bytes(), &self.timers, now, &mut self.transmits)?;
        self.after_server(id.0, now);
        Ok(())
    }

    /// Queues bytes outside any transaction: an ACK for a 2xx, a stateless 503 for
    /// [`RequestDisposition::Overloaded`], a response to a `Malformed` request.
    pub fn send_stateless(&mut self, dest: D, data: Bytes) {
        self.transmits.push_back((dest, data));
    }

    // ---- client side ---------------------------------------------------------------------

    /// Starts a client transaction for `req` (its top Via must carry a fresh [`new_branch`]) and
    /// queues its first transmission to `dest`.
    pub fn send_request(
        &mut self,
        req: Request,
        dest: D,
        reliable: bool,
        now: Instant,
    ) -> Result<ClientTxnId, TxnError> {
        if req.method == Method::Ack {
            return Err(TxnError::Ack);
        }
        let branch = req
            .top_via()
            .and_then(|v| v.branch().filter(|b| b.starts_with(MAGIC_COOKIE)).map(str::to_string))
            .ok_or(TxnError::NoBranch)?;
        if req.cseq().is_none_or(|c| c.method != req.method) {
            return Err(TxnError::BadCSeq);
        }
        let key = ClientKey { branch, method: req.method.clone() };
        if self.find_client(&key).is_some() {
            return Err(TxnError::Duplicate);
        }
        if self.len() >= self.max {
            return Err(TxnError::Full(self.max));
        }
        let id = self.alloc_id();
        let txn = ClientTxn::start(req, dest, reliable, &self.timers, now, &mut self.transmits);
        self.client_keys.insert(&key, id);
        self.clients.insert(id, Box::new((key, txn)));
        self.after_client(id, now);
        Ok(ClientTxnId(id))
    }

    /// A response arrived. Returns it with its transaction when the TU must see it; `None` when a
    /// transaction absorbed it or it matches none (stray).
    pub fn on_response(&mut self, resp: Response, now: Instant) -> Option<(ClientTxnId, Response)> {
        let key = resp
            .top_via()
            .and_then(|v| v.branch().map(str::to_string))
            .zip(resp.cseq())
            .map(|(branch, cseq)| ClientKey { branch, method: cseq.method });
        let Some(id) = key.as_ref().and_then(|k| self.find_client(k)) else {
            self.stats.absorbed_responses += 1;
            return None;
        };
        let txn = &mut self.clients.get_mut(&id)?.1;
        let action = txn.on_response(&resp, &self.timers, now, &mut self.transmits);
        self.after_client(id, now);
        match action {
            ResponseAction::Deliver => Some((ClientTxnId(id), resp)),
            ResponseAction::Absorb => {
                self.stats.absorbed_responses += 1;
                None
            }
        }
    }

    /// The CANCEL for an INVITE client transaction that has no final response yet (RFC 3261 9.1).
    /// RFC 3261 says not to send it before a provisional response came; that is up to the TU.
    pub fn cancel_request(&self, id: ClientTxnId) -> Option<Request> {
        let txn = &self.clients.get(&id.0)?.1;
        let cancellable =
            txn.request.method == Method::Invite && matches!(txn.state, ClientState::Calling | ClientState::Proceeding);
        cancellable.then(|| build_cancel(&txn.request))
    }

    /// Builds the CANCEL for `id` and sends it as its own non-INVITE client transaction, to the
    /// INVITE's destination over the same kind of transport.
    pub fn send_cancel(&mut self, id: ClientTxnId, now: Instant) -> Result<ClientTxnId, TxnError> {
        let cancel = self.cancel_request(id).ok_or(TxnError::NotCancellable)?;
        let invite = &self.clients.get(&id.0).ok_or(TxnError::NoTxn)?.1;
        let (dest, reliable) = (invite.dest.clone(), invite.reliable);
        self.send_request(cancel, dest, reliable, now)
    }

    // ---- transport failures --------------------------------------------------------------

    /// The transport could not send this transaction's request: it terminates with
    /// [`TxnEvent::ClientTransportError`]. Returns false if it was gone already.
    pub fn client_transport_failed(&mut self, id: ClientTxnId) -> bool {
        let Some(key) = self.clients.remove(&id.0).map(|e| e.0) else { return false };
        self.client_keys.remove(&key, id.0);
        self.events.push_back(TxnEvent::ClientTransportError(id));
        self.events.push_back(TxnEvent::ClientTerminated(id));
        true
    }

    /// The transport could not send this transaction's response (RFC 3261 17.2.4).
    pub fn server_transport_failed(&mut self, id: ServerTxnId) -> bool {
        let Some(key) = self.servers.remove(&id.0).map(|e| e.0) else { return false };
        self.server_keys.remove(&key, id.0);
        self.events.push_back(TxnEvent::ServerTransportError(id));
        self.events.push_back(TxnEvent::ServerTerminated(id));
        true
    }

    /// Fails every transaction whose destination matches (e.g. a TLS connection that could not
    /// be opened). Scans the whole table: meant for rare events. Returns how many failed.
    pub fn transport_failed(&mut self, mut dest: impl FnMut(&D) -> bool) -> usize {
        let mut clients: Vec<u64> =
            self.clients.iter().filter(|(_, e)| dest(&e.1.dest)).map(|(&id, _)| id).collect();
        let mut servers: Vec<u64> =
            self.servers.iter().filter(|(_, e)| dest(e.1.src())).map(|(&id, _)| id).collect();
        clients.sort_unstable();
        servers.sort_unstable();
        let n = clients.len() + servers.len();
        for id in clients {
            self.client_transport_failed(ClientTxnId(id));
        }
        for id in servers {
            self.server_transport_failed(ServerTxnId(id));
        }
        n
    }

    // ---- timers and output ---------------------------------------------------------------

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, r)) = self.queue.peek() {
            if at > now {
                break;
            }
            self.queue.pop();
            match r {
                TimerRef::Client(id) => {
                    let Some(txn) = self.clients.get_mut(&id).map(|e| &mut e.1) else { continue };
                    if txn.scheduled != Some(at) {
                        continue;
                    }
                    txn.scheduled = None;
                    if txn.on_timer(&self.timers, now, &mut self.transmits) {
                        self.stats.timeouts += 1;
                        self.events.push_back(TxnEvent::ClientTimeout(ClientTxnId(id)));
                    }
                    self.after_client(id, now);
                }
                TimerRef::Server(id) => {
                    let Some(txn) = self.servers.get_mut(&id).map(|e| &mut e.1) else { continue };
                    if txn.scheduled != Some(at) {
                        continue;
                    }
                    txn.scheduled = None;
                    if txn.on_timer(&self.timers, now, &mut self.transmits) {
                        self.stats.timeouts += 1;
                        self.events.push_back(TxnEvent::ServerTimeout(ServerTxnId(id)));
                    }
                    self.after_server(id, now);
                }
            }
        }
    }

    /// The next instant `handle_timeout` must be called, if any.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some((at, r)) = self.queue.peek() {
            if self.is_live(at, r) {
                return Some(at);
            }
            self.queue.pop();
        }
        None
    }

    /// The next datagram/stream write: destination and serialized message.
    pub fn poll_transmit(&mut self) -> Option<(D, Bytes)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TxnEvent> {
        self.events.pop_front()
    }

    // ---- internals -----------------------------------------------------------------------

    fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn find_server(&self, key: &ServerKey) -> Option<u64> {
        self.server_keys.find(key, |id| self.servers.get(&id).is_some_and(|e| e.0 == *key))
    }

    fn find_client(&self, key: &ClientKey) -> Option<u64> {
        self.client_keys.find(key, |id| self.clients.get(&id).is_some_and(|e| e.0 == *key))
    }

    fn is_live(&self, at: Instant, r: TimerRef) -> bool {
        let scheduled = match r {
            TimerRef::Client(id) => self.clients.get(&id).and_then(|e| e.1.scheduled),
            TimerRef::Server(id) => self.servers.get(&id).and_then(|e| e.1.scheduled),
        };
        scheduled == Some(at)
    }

    /// After a client transaction changed: remove it if terminated, else (re)schedule it.
    fn after_client(&mut self, id: u64, now: Instant) {
        let Some(txn) = self.clients.get_mut(&id).map(|e| &mut e.1) else { return };
        if txn.state == ClientState::Terminated {
            if let Some(key) = self.clients.remove(&id).map(|e| e.0) {
                self.client_keys.remove(&key, id);
            }
            self.events.push_back(TxnEvent::ClientTerminated(ClientTxnId(id)));
            return;
        }
        let next = txn.next_deadline().map(|at| at.max(now));
        if next != txn.scheduled {
            txn.scheduled = next;
            if let Some(at) = next {
                self.push_timer(at, TimerRef::Client(id));
            }
        }
    }

    fn after_server(&mut self, id: u64, now: Instant) {
        let Some(txn) = self.servers.get_mut(&id).map(|e| &mut e.1) else { return };
        if txn.state == ServerState::Terminated {
            if let Some(key) = self.servers.remove(&id).map(|e| e.0) {
                self.server_keys.remove(&key, id);
            }
            self.events.push_back(TxnEvent::ServerTerminated(ServerTxnId(id)));
            return;
        }
        let next = txn.next_deadline().map(|at| at.max(now));
        if next != txn.scheduled {
            txn.scheduled = next;
            if let Some(at) = next {
                self.push_timer(at, TimerRef::Server(id));
            }
        }
    }

    fn push_timer(&mut self, at: Instant, r: TimerRef) {
        self.queue.push(at, r);
        // Stale entries pile up when timers are cancelled early (a 1xx stopping timer A); drop
        // them when they outnumber the live ones, so memory stays proportional to the table.
        if self.queue.len() > 2 * self.len() + 1024 {
            let mut q = std::mem::take(&mut self.queue);
            q.retain(|at, r| self.is_live(at, r));
            self.queue = q;
        }
    }
}

/// The next retransmission: one interval after the planned instant, so a slightly late wake-up
/// does not shift the schedule; after a long stall, one interval from now (no burst).
fn next_retransmit(planned: Instant, interval: Duration, now: Instant) -> Instant {
    let next = planned + interval;
    if next > now {
        next
    } else {
        now + interval
    }
}

/// The server transaction key of 17.2.3, or the RFC 2543 fallback key for a request whose top
/// Via branch lacks the magic cookie. ACK keeps its own method here; the caller maps it.
fn server_key(req: &Request) -> Option<ServerKey> {
    let via = req.top_via()?;
    let cseq = req.cseq().filter(|c| c.method == req.method)?;
    // host (lower case) ":" port, without format!: this runs for every request received
    let mut sent_by = String::with_capacity(via.host.len() + 6);
    sent_by.push_str(&via.host);
    sent_by.make_ascii_lowercase();
    sent_by.push(':');
    {
        use std::fmt::Write;
        let _ = write!(sent_by, "{}", via.port.unwrap_or(0));
    }
    let branch = match via.branch() {
        Some(b) if b.starts_with(MAGIC_COOKIE) => b.to_string(),
        _ => format!(
            "rfc2543|{}|{}|{}|{}|{}",
            req.uri.as_str(),
            req.call_id().unwrap_or(""),
            req.from_tag().unwrap_or_default(),
            cseq.seq,
            req.headers.values("Via").first().map(|v| v.trim()).unwrap_or(""),
        ),
    };
    Some(ServerKey { branch, sent_by, method: req.method.clone() })
}
