//! Test support for drbridge's integration tests: the lab (temporary directory, certificates,
//! configuration), the drbridge process, SIPp for the PBX side and a Rust SIP peer that plays the
//! Microsoft Teams proxies over mutual TLS (and, where SIPp cannot go, a PBX over UDP).
//!
//! Every wait is bounded by a timeout; nothing sleeps to synchronise.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod config;
pub mod drbridge;
pub mod graph;
pub mod hiding;
pub mod media;
pub mod peer;
pub mod sipp;
pub mod teams;
pub mod util;

pub use certs::LabCerts;
pub use config::{LabConfig, ProxySpec};
pub use drbridge::Drbridge;
pub use hiding::{assert_absent, assert_present};
pub use peer::{Call, ConnHandle, Inbound, LogEntry, PeerError, ProxyMode, SipPeer};
pub use sipp::{Sipp, SippResult, SippRun};
pub use teams::{teams_sdp, TeamsPeer, TEAMS_PROXY_HOSTS};
pub use util::{free_port, free_udp_port, TempDir, STEP};
