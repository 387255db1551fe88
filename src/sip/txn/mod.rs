//! PLACEHOLDER (replaced by the txn branch).
use crate::sip::msg::{Request, Response};
use bytes::Bytes;
use std::time::{Duration, Instant};
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxnId(pub u64);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxnId(pub u64);
#[derive(Clone, Copy, Debug)]
pub struct TxnTimers { pub t1: Duration, pub t2: Duration, pub t4: Duration }
pub enum RequestDisposition { New(ServerTxnId), Retransmission, Ack2xx(Request), AckAbsorbed, Cancel { cancel: ServerTxnId, invite: Option<ServerTxnId> }, Overloaded }
pub enum TxnEvent { ClientTimeout(ClientTxnId), ServerTimeout(ServerTxnId) }
pub struct Transactions<D> { _d: Option<D> }
pub fn new_branch() -> String { todo!() }
impl<D: Clone> Transactions<D> {
    pub fn new(_t: TxnTimers, _max: usize) -> Self { todo!() }
    pub fn on_request(&mut self, _r: Request, _src: D, _rel: bool, _now: Instant) -> RequestDisposition { todo!() }
    pub fn on_response(&mut self, _r: Response, _now: Instant) -> Option<(ClientTxnId, Response)> { todo!() }
    pub fn send_request(&mut self, _r: Request, _d: D, _rel: bool, _now: Instant) -> Result<ClientTxnId, ()> { todo!() }
    pub fn send_response(&mut self, _id: ServerTxnId, _r: Response, _now: Instant) { todo!() }
    pub fn cancel_request(&self, _id: ClientTxnId) -> Option<Request> { todo!() }
    pub fn transport_failed(&mut self, _id: ClientTxnId) { todo!() }
    pub fn handle_timeout(&mut self, _now: Instant) { todo!() }
    pub fn poll_transmit(&mut self) -> Option<(D, Bytes)> { todo!() }
    pub fn poll_event(&mut self) -> Option<TxnEvent> { todo!() }
    pub fn poll_timeout(&self) -> Option<Instant> { todo!() }
    pub fn len(&self) -> usize { todo!() }
}
