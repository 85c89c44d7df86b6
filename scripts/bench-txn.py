"""Exactly-once costs, measured with confluent-kafka against a running broker (used by
scripts/bench-txn.sh): plain vs idempotent producer throughput in the same run (1 partition,
RECORD_SIZE-byte records, acks=all), then the commit latency of small transactions (TXN_RECORDS
records each, TXNS of them, one at a time).

  bench-txn.py BOOTSTRAP RECORDS RECORD_SIZE TXNS TXN_RECORDS
"""
import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, records, size, txns, txn_records = sys.argv[1], *map(int, sys.argv[2:6])
admin = AdminClient({"bootstrap.servers": bootstrap})


def topic():
    t = "bench-" + uuid.uuid4().hex[:8]
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1)])[t].result(10)
    return t


def throughput(label, extra):
    t = topic()
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 1 << 20, "queue.buffering.max.messages": 1 << 20, **extra})
    value = b"x" * size
    start = time.time()
    for _ in range(records):
        while True:
            try:
                p.produce(t, value, partition=0)
                break
            except BufferError:
                p.poll(0.01)
    p.flush(120)
    secs = time.time() - start
    print("%-11s %d records in %.2fs: %.0f records/s, %.1f MB/s" %
          (label, records, secs, records / secs, records * size / secs / 1e6))


throughput("plain", {})
throughput("idempotent", {"enable.idempotence": True})

t = topic()
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "bench-" + uuid.uuid4().hex[:6],
              "linger.ms": 0})
p.init_transactions(30)
lat = []
for i in range(txns):
    p.begin_transaction()
    for j in range(txn_records):
        p.produce(t, b"y" * size, partition=0)
    p.flush(30)
    start = time.time()
    p.commit_transaction(30)
    lat.append((time.time() - start) * 1000)
lat.sort()
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print("transactions: %d of %d records; commit_transaction p50 %.2f ms, p99 %.2f ms, max %.2f ms" %
      (txns, txn_records, pct(0.5), pct(0.99), lat[-1]))
