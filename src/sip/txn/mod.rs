//! RFC 3261 section 17 transactions as sans-IO state machines.
