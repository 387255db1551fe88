//! SIP: messages, transports and transactions.
pub mod msg;
pub mod transport;
pub mod txn;
