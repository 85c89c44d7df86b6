#!/usr/bin/env bash
# Produce throughput and latency on loopback, in one run on one machine: a single broker
# (acks=1) beside a 3-broker cluster (replication factor 3, min.insync.replicas 2; acks=all and
# acks=1), 1 producer, 1 and 6 partitions.
#
#   RECORDS=300000 RECORD_SIZE=1000 scripts/bench-cluster.sh
#
# Release build; data in a temp dir removed at the end; ports from BASE_PORT (19100) up.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS="${RECORDS:-300000}"
RECORD_SIZE="${RECORD_SIZE:-1000}"
BASE="${BASE_PORT:-19100}"
cargo build -q --release -p sluice-broker
BIN="$PWD/target/release/sluice"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# serve NAME PORT_OFFSET [extra flags...]: grpc = base+off, kafka +1, http +2, controller +3
serve() {
  local name="$1" off="$2"
  shift 2
  local p=$((BASE + off))
  "$BIN" serve --data-dir "$work/$name" --grpc-addr "127.0.0.1:$p" \
    --kafka-addr "127.0.0.1:$((p + 1))" --http-addr "127.0.0.1:$((p + 2))" \
    --controller-addr "127.0.0.1:$((p + 3))" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}

# until_ok CMD...: retries for 60 s (brokers starting, a quorum forming).
until_ok() {
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "gave up: $*" >&2
  return 1
}

bench() { # LABEL BROKER TOPIC ACKS
  printf '%-44s ' "$1"
  "$BIN" bench produce --broker "$2" --topic "$3" --acks "$4" --records "$RECORDS" \
    --record-size "$RECORD_SIZE" --output json
}

single="127.0.0.1:$BASE"
serve single 0
until_ok "$BIN" topic create s1 --partitions 1 --broker "$single"
until_ok "$BIN" topic create s6 --partitions 6 --broker "$single"

voters="1@127.0.0.1:$((BASE + 13)),2@127.0.0.1:$((BASE + 23)),3@127.0.0.1:$((BASE + 33))"
for i in 1 2 3; do
  serve "node$i" $((i * 10)) --node-id "$i" --controller-quorum-voters "$voters"
done
c1="127.0.0.1:$((BASE + 10))"
for t in "c1 1" "c6 6"; do
  set -- $t
  until_ok "$BIN" topic create "$1" --partitions "$2" --replication-factor 3 \
    --config min.insync.replicas=2 --broker "$c1"
done

echo "records: $RECORDS x $RECORD_SIZE bytes, 1 producer; $(nproc) cores"
bench "single broker, 1 partition, acks=1" "$single" s1 1
bench "single broker, 6 partitions, acks=1" "$single" s6 1
bench "3 brokers rf=3, 1 partition, acks=all" "$c1" c1 all
bench "3 brokers rf=3, 6 partitions, acks=all" "$c1" c6 all
bench "3 brokers rf=3, 1 partition, acks=1" "$c1" c1 1
