#!/usr/bin/env bash
# Kill -9 the broker mid-compaction many times (default 30) and check the log after each restart.
# The suite runs the same test with 3 kills; this is the long run.
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_COMPACTION_CRASH_ROUNDS="${ROUNDS:-30}"
cargo build -q --workspace --bins
exec cargo test -q -p sluice-e2e --test durability kill9_mid_compaction -- --nocapture
