"""The client side of tests/tests/transactions.rs's coordinator failover: an unmodified
confluent-kafka consume-transform-produce loop (read_committed consumer in a group, transactional
producer, send_offsets_to_transaction) copies a topic while the test kill -9s the broker that
coordinates its transactions.

  txn_failover.py BOOTSTRAP IN OUT GROUP TXN_ID TOTAL PROGRESS_FILE
      Copies IN to OUT in transactions of up to 50 records, each committing the input offsets
      with the output, until TOTAL input records are committed or 150 s (env TXN_DEADLINE_S)
      pass. Appends the committed count to PROGRESS_FILE after each commit (the test watches it
      to time its faults).
      On an abortable error it aborts and rewinds the consumer to the committed offsets; on a
      fatal one it starts a new producer with the same transactional.id. Then reads OUT with a
      read_committed consumer and prints a JSON summary; exits non-zero unless OUT holds every
      input value exactly once and the committed offsets are the ends of IN.
"""
import json
import os
import sys
import time

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaException, Producer,
                             TopicPartition)


def producer(bootstrap, txn_id):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": txn_id,
        "transaction.timeout.ms": 20000,
        "socket.timeout.ms": 5000,
        "topic.metadata.refresh.interval.ms": 1000,
        "linger.ms": 5,
    })
    p.init_transactions(60)
    return p


def rewind(c):
    """Back to the committed offsets (what the last committed transaction consumed)."""
    for tp in c.committed(c.assignment(), timeout=30):
        if tp.offset < 0:
            tp.offset = OFFSET_BEGINNING
        c.seek(tp)


def main():
    bootstrap, tin, tout, group, txn_id, total, progress = sys.argv[1:8]
    total = int(total)
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "topic.metadata.refresh.interval.ms": 1000,
        "socket.timeout.ms": 5000,
    })
    c.subscribe([tin])
    p = producer(bootstrap, txn_id)
    committed, aborts, fatal, errors = 0, 0, 0, []
    out = open(progress, "a", buffering=1)
    deadline = time.time() + float(os.environ.get("TXN_DEADLINE_S", "150"))
    while committed < total and time.time() < deadline:
        batch = [m for m in c.consume(num_messages=50, timeout=1.0) if not m.error()]
        if not batch:
            continue
        try:
            p.begin_transaction()
            for m in batch:
                p.produce(tout, key=m.key(), value=m.value(), partition=m.partition())
            p.send_offsets_to_transaction(c.position(c.assignment()),
                                          c.consumer_group_metadata(), 30)
            while True:
                try:
                    p.commit_transaction(30)
                    break
                except KafkaException as e:
                    if not e.args[0].retriable():
                        raise
            committed += len(batch)
            out.write("%d\n" % committed)
        except KafkaException as e:
            err = e.args[0]
            errors.append(str(err))
            if err.txn_requires_abort():
                aborts += 1
                try:
                    p.abort_transaction(30)
                except KafkaException as e2:
                    errors.append("abort: %s" % e2)
                    fatal += 1
                    p = producer(bootstrap, txn_id)
            else:
                fatal += 1
                p = producer(bootstrap, txn_id)
            rewind(c)
    positions = {tp.partition: tp.offset for tp in c.committed(c.assignment(), timeout=30)}
    c.close()

    # What the output holds for a read_committed reader.
    r = Consumer({"bootstrap.servers": bootstrap, "group.id": group + "-check",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "enable.partition.eof": True})
    parts = sorted(positions)
    r.assign([TopicPartition(tout, q, OFFSET_BEGINNING) for q in parts])
    seen, eof = {}, set()
    end = time.time() + 60
    while len(eof) < len(parts) and time.time() < end:
        m = r.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                eof.add(m.partition())
            continue
        eof.discard(m.partition())
        v = m.value().decode()
        seen[v] = seen.get(v, 0) + 1
    ends = {}
    for q in parts:
        ends[q] = r.get_watermark_offsets(TopicPartition(tin, q), timeout=10)[1]
    r.close()
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    missing = [i for i in range(total) if str(i) not in seen]
    summary = {"committed": committed, "out": len(seen), "duplicates": duplicates,
               "missing": len(missing), "aborts": aborts, "fatal": fatal,
               "positions": positions, "ends": ends, "errors": errors[:5]}
    print(json.dumps(summary))
    ok = committed == total and duplicates == 0 and not missing and positions == ends
    sys.exit(0 if ok else 1)


main()
