#!/usr/bin/env bash
# CPU an idle broker uses: a single broker with one topic of PARTITIONS partitions (1000) and a
# few records, then 30 s idle; CPU seconds from /proc/PID/stat, and open files.
#   scripts/idle-cpu.sh [BINARY]      (default: a release build of this checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
PARTITIONS="${PARTITIONS:-1000}"
BASE="${BASE_PORT:-19200}"
BIN="${1:-}"
if [ -z "$BIN" ]; then
  cargo build -q --release -p sluice-broker
  BIN="$PWD/target/release/sluice"
fi
d="$(mktemp -d)"
ulimit -n 65536 2>/dev/null || true
"$BIN" serve --data-dir "$d/data" --grpc-addr "127.0.0.1:$BASE" --kafka-addr "127.0.0.1:$((BASE + 1))" \
  --http-addr "127.0.0.1:$((BASE + 2))" --controller-addr "127.0.0.1:$((BASE + 3))" >"$d/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$d"' EXIT
for _ in $(seq 1 150); do
  "$BIN" topic create idle --partitions "$PARTITIONS" --broker "127.0.0.1:$BASE" >/dev/null 2>&1 && break
  sleep 0.2
done
seq 1 20000 | "$BIN" produce idle --broker "127.0.0.1:$BASE" >/dev/null
sleep 10
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
a=$(ticks)
sleep 30
b=$(ticks)
hz=$(getconf CLK_TCK)
awk -v t=$((b - a)) -v hz="$hz" -v f="$(ls "/proc/$pid/fd" | wc -l)" -v p="$PARTITIONS" \
  'BEGIN { printf "idle broker, %d partitions: %.2f CPU s in 30 s (%.1f%% of a core), %d open files\n", p, t / hz, 100 * t / hz / 30, f }'
