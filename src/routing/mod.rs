//! Trunks (Teams proxies, PBX), number normalization, routes, OPTIONS health and failover.
//!
//! All sans-IO: state machines fed with results and the current time.
//! - [`NumberRules`] / [`NumberPlan`]: `[numbers]` rules on numbers, URIs and name-addr headers;
//!   [`teams_uri`], [`teams_request_uri`], [`teams_party`] build what Teams expects
//!   (`sip:+E164@host;user=phone`), [`pbx_party`] / [`pbx_request_uri`] the PBX side.
//! - [`RouteTable`]: `[[routes]]`, default to the other side.
//! - [`ProxySet`], [`TrunkHealth`], [`FailoverPlan`]: up/down from OPTIONS, candidate order, failover.
//! - [`OptionsSchedule`]: when each proxy / the PBX gets its next OPTIONS.

mod health;
mod numbers;
mod options;
mod routes;

pub use crate::config::Trunk;
pub use health::{FailoverPlan, Health, ProbeResult, ProxyIdx, ProxySet, TrunkHealth};
pub use numbers::{is_e164, pbx_party, pbx_request_uri, phone_number, teams_party, teams_request_uri, teams_uri, NumberPlan, NumberRules};
pub use options::{Jitter, OptionsSchedule, ProbeTarget, JITTER};
pub use routes::{other_side, RouteDecision, RouteTable};

/// Errors of the routing layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// The number is not `+` and 1..15 digits after the `to_teams` rules.
    #[error("number {0:?} is not E.164 after normalization")]
    NotE164(String),
    /// A header value that should be a name-addr did not parse.
    #[error("header value {0:?} is not a name-addr")]
    BadHeader(String),
}
