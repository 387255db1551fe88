#!/usr/bin/env bash
# The test command of drbridge: installs the test peers that are missing (SIPp from the Debian
# package sip-tester), builds the binaries and runs every test target. Exit code = cargo's.
# Works on a fresh Debian 12 with only the Rust toolchain, as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "tests/run.sh: need root or sudo to run: $*" >&2
        return 1
    fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

if ! command -v sipp >/dev/null 2>&1; then
    echo "tests/run.sh: installing SIPp (sip-tester)" >&2
    if command -v apt-get >/dev/null 2>&1; then
        if ! apt_install sip-tester; then
            echo "tests/run.sh: could not install sip-tester" >&2
            [ -z "${CI:-}" ] || exit 1
        fi
    else
        echo "tests/run.sh: no apt-get; SIPp tests will be skipped" >&2
    fi
fi
# `timeout` (coreutils) wraps every SIPp run; a C compiler builds ring. Both are usually there.
command -v timeout >/dev/null 2>&1 || apt_install coreutils
command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev

# One build: `cargo test` builds the drbridge binary the integration tests start. A separate
# `cargo build --bins` compiled every dependency a second time (dev-dependencies change features)
# and, with incremental caches, took more disk than a CI machine had.
export CARGO_INCREMENTAL=0
exec cargo test --all-targets
