//! SIP transports: UDP, TCP and TLS (mutual toward Teams), stream framing, connection reuse.
