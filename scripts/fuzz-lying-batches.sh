#!/usr/bin/env bash
# Long run of the lying-batch fuzz: structurally valid batches (frame and CRC correct) whose
# record sections lie about their records, appended to a real log. Each must be refused, or be
# readable at every offset it was given. Bounded: CASES (default 100000) and a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${CASES:-100000}"
TIMEOUT="${TIMEOUT:-900}"
PROPTEST_CASES="$CASES" timeout "$TIMEOUT" cargo test --release -p sluice-log --test lying_batches -- --nocapture
