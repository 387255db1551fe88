//! drbridge: a session border controller between Microsoft Teams Direct Routing and Mitel PBXs.
//! See ../shared/DESIGN.md for the module layout; lower layers never import higher ones.
pub mod b2bua;
pub mod config;
pub mod fnv;
pub mod media;
pub mod presence;
pub mod routing;
pub mod sip;
pub mod admin;
