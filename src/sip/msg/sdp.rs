//! SDP (RFC 4566): parse and write. Filled in by the SDP work; until media anchoring lands,
//! bodies pass through unchanged.
