#!/usr/bin/env bash
# The whole test suite: installs the Kafka clients the interop tests use, then runs every test
# (unit, property, crash-recovery, end-to-end against real broker processes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
# The end-to-end tests start the real `sluice` binary; build it once up front.
cargo build --workspace --bins
cargo test --workspace
