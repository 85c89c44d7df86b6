#!/usr/bin/env bash
# Long fault-injection runs on real processes (see tests/tests/chaos.rs):
#   CHAOS_ROUNDS=50 CHAOS_SEED=7 scripts/chaos.sh
# Each round kills or pauses a random broker of a 3-broker cluster while confluent-kafka produces
# with acks=all; at the end every acknowledged record must be where it was acknowledged. The same
# faults run under an idempotent producer (no duplicates either) and under a transactional
# consume-transform-produce loop (the output holds each input record exactly once).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh >/dev/null
cargo build -q -p sluice-broker
CHAOS_ROUNDS="${CHAOS_ROUNDS:-20}" CHAOS_SEED="${CHAOS_SEED:-$(date +%s)}" \
  cargo test -q --manifest-path tests/Cargo.toml --test chaos -- --nocapture
