#!/usr/bin/env bash
# Topic churn, longer than the suite's run (tests/kafka_clients.rs
# topics_deleted_under_load_vanish_atomically): ROUNDS (default 2000) topics created and deleted
# while a confluent-kafka producer and consumer work on them, the flush, retention and compaction
# loops at their shortest intervals. Fails on any client error but "unknown topic/partition", on
# any storage error in the broker log, or if a deleted directory is left behind.
#   ROUNDS=5000 scripts/topic-churn.sh [BINARY]      (default: a release build of this checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2000}"
BASE="${BASE_PORT:-19300}"
BIN="${1:-}"
if [ -z "$BIN" ]; then
  cargo build -q --release -p sluice-broker
  BIN="$PWD/target/release/sluice"
fi
PY="${PYTHON:-$PWD/.venv-test/bin/python}"
[ -x "$PY" ] || { scripts/install-test-deps.sh >/dev/null; PY="$PWD/.venv-test/bin/python"; }
d="$(mktemp -d)"
cat >"$d/sluice.toml" <<CFG
data_dir = "$d/data"
grpc_addr = "127.0.0.1:$BASE"
kafka_addr = "127.0.0.1:$((BASE + 1))"
http_addr = "127.0.0.1:$((BASE + 2))"
controller_addr = "127.0.0.1:$((BASE + 3))"
flush_check_interval_ms = 10
retention_check_interval_ms = 10
log_cleaner_backoff_ms = 10
auto_create_topics_enable = false
CFG
"$BIN" serve --config "$d/sluice.toml" >"$d/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null && wait $pid; rm -rf "$d"' EXIT
for _ in $(seq 1 150); do
  curl -sf "http://127.0.0.1:$((BASE + 2))/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
start=$(date +%s)
"$PY" tests/interop/topic_churn.py "127.0.0.1:$((BASE + 1))" "$ROUNDS" 2> >(grep -v '^%' >&2)
echo "$ROUNDS rounds in $(($(date +%s) - start)) s"
if grep -E "write failed|flush failed|retention failed|compaction failed|log directory offline|cannot (delete|remove)" "$d/log"; then
  echo "storage errors in the broker log (above)"; exit 1
fi
for _ in $(seq 1 300); do
  left=$(find "$d/data" -maxdepth 1 -name 'churn-*' | wc -l)
  [ "$left" -eq 0 ] && break
  sleep 0.2
done
[ "$left" -eq 0 ] || { echo "$left churned directories left on disk"; exit 1; }
echo "topic churn: ok"
