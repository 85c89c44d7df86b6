#!/usr/bin/env bash
# What exactly-once costs on one broker (release build, loopback, temp data dir): plain vs
# idempotent confluent-kafka producer throughput in the same run, and the commit latency of
# small transactions.
#
#   RECORDS=200000 RECORD_SIZE=1000 TXNS=300 TXN_RECORDS=10 scripts/bench-txn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS="${RECORDS:-200000}"
RECORD_SIZE="${RECORD_SIZE:-1000}"
TXNS="${TXNS:-300}"
TXN_RECORDS="${TXN_RECORDS:-10}"
BASE="${BASE_PORT:-19200}"
scripts/install-test-deps.sh >/dev/null
cargo build -q --release -p sluice-broker
work="$(mktemp -d)"
target/release/sluice serve --data-dir "$work/data" --grpc-addr "127.0.0.1:$BASE" \
  --kafka-addr "127.0.0.1:$((BASE + 1))" --http-addr "127.0.0.1:$((BASE + 2))" \
  --controller-addr "127.0.0.1:$((BASE + 3))" >"$work/broker.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 150); do
  curl -sf "127.0.0.1:$((BASE + 2))/ready" >/dev/null && break
  sleep 0.2
done
.venv-test/bin/python scripts/bench-txn.py "127.0.0.1:$((BASE + 1))" "$RECORDS" "$RECORD_SIZE" \
  "$TXNS" "$TXN_RECORDS"
