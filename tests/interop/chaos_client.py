"""The client side of the chaos test (tests/tests/chaos.rs, scripts/chaos.sh).

  chaos_client.py produce BOOTSTRAP TOPIC ACKED_FILE STOP_FILE [idempotent]
      Produces numbered records (values "0", "1", ...) with acks=all until STOP_FILE exists,
      retrying through failovers; every record the broker acknowledged is written to ACKED_FILE
      as "partition offset value", flushed as it arrives. With "idempotent", as an idempotent
      producer (enable.idempotence): retries must not write a record twice.

  chaos_client.py verify BOOTSTRAP TOPIC ACKED_FILE PARTITIONS
      Reads every partition from the beginning to its end and checks the acknowledged records:
      each is present at the offset it was acknowledged at; offsets are contiguous. Prints a
      JSON summary (acked, lost, moved, duplicates) and exits non-zero on any loss or move.
"""
import json
import os
import sys
import time


def produce(bootstrap, topic, acked_path, stop_path, idempotent=False):
    from confluent_kafka import Producer

    p = Producer({
        "enable.idempotence": idempotent,
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120000,
        "retries": 1000000,
        "retry.backoff.ms": 100,
        "socket.timeout.ms": 5000,
        "metadata.max.age.ms": 1000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    out = open(acked_path, "a", buffering=1)
    errors = {"n": 0}

    def report(err, msg):
        if err is not None:
            errors["n"] += 1
            return
        out.write("%d %d %s\n" % (msg.partition(), msg.offset(), msg.value().decode()))

    i = 0
    while not os.path.exists(stop_path):
        try:
            p.produce(topic, value=str(i).encode(), on_delivery=report)
            i += 1
        except BufferError:
            p.poll(0.05)
            continue
        p.poll(0)
        if i % 50 == 0:
            time.sleep(0.01)
    p.flush(150)
    out.close()
    print(json.dumps({"sent": i, "failed": errors["n"]}))


def verify(bootstrap, topic, acked_path, partitions):
    from confluent_kafka import Consumer, TopicPartition

    acked = {}
    for line in open(acked_path):
        part, off, val = line.split()
        acked[(int(part), int(off))] = val
    seen = {}
    values = {}
    for part in range(partitions):
        c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": "chaos-verify-%d-%d" % (part, os.getpid()),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })
        low, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=30)
        c.assign([TopicPartition(topic, part, low)])
        expect = low
        deadline = time.time() + 120
        while expect < high and time.time() < deadline:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            if m.offset() != expect:
                print(json.dumps({"gap": [part, expect, m.offset()]}))
                sys.exit(1)
            seen[(part, m.offset())] = m.value().decode()
            values.setdefault(m.value().decode(), []).append((part, m.offset()))
            expect += 1
        c.close()
        if expect < high:
            print(json.dumps({"incomplete": [part, expect, high]}))
            sys.exit(1)
    lost = [k for k in acked if k not in seen]
    moved = [k for k in acked if k in seen and seen[k] != acked[k]]
    duplicates = sum(len(v) - 1 for v in values.values() if len(v) > 1)
    summary = {
        "acked": len(acked),
        "read": len(seen),
        "lost": len(lost),
        "moved": len(moved),
        "duplicates": duplicates,
        "examples": [list(k) for k in (lost + moved)[:5]],
    }
    print(json.dumps(summary))
    if lost or moved:
        sys.exit(1)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "produce":
        produce(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],
                len(sys.argv) > 6 and sys.argv[6] == "idempotent")
    elif mode == "verify":
        verify(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit("unknown mode " + mode)
