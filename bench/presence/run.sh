#!/usr/bin/env bash
# Presence publisher benchmark against the local Graph stand-in (127.0.0.1 only).
# Usage: bash bench/presence/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo bench --bench presence -- "$@"
