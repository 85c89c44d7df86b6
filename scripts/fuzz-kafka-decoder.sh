#!/usr/bin/env bash
# Longer run of the Kafka request-decoder fuzz (random and semi-structured frames through the real
# framing and dispatch). Bounded: CASES per property (default 50000) and a wall-clock timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${CASES:-50000}"
TIMEOUT="${TIMEOUT:-900}"
PROPTEST_CASES="$CASES" timeout "$TIMEOUT" cargo test --release -p sluice-broker kafka::fuzz -- --nocapture
