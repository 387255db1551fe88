//! Typed configuration loaded from TOML (see config/*.toml), validated with errors naming file, key and reason.
