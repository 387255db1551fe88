//! Trunks (Teams proxies, PBX), number normalization, routes, OPTIONS health and failover.
