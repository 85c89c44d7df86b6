"""The client side of tests/tests/replication.rs's coordinator failover with a real group
member: an unmodified confluent-kafka consumer in a group, committing after every record, reads
a topic while the test kill -9s the broker coordinating its group.

  group_failover.py BOOTSTRAP TOPIC GROUP TOTAL PROGRESS_FILE
      Consumes until it has seen all TOTAL values ("0".."TOTAL-1") or 150 s pass, writing each
      record to PROGRESS_FILE as it comes (the test watches it to time the kill); then commits
      its final positions (retrying while the group's coordinator moves). Prints a JSON summary
      (seen, duplicates, errors) and exits non-zero unless every value was seen and the final
      commit succeeded.
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException


def main():
    bootstrap, topic, group, total, progress = sys.argv[1:6]
    total = int(total)
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "topic.metadata.refresh.interval.ms": 1000,
        "socket.timeout.ms": 5000,
    })
    c.subscribe([topic])
    seen, duplicates, errors = set(), 0, []
    out = open(progress, "a", buffering=1)
    deadline = time.time() + 150
    while len(seen) < total and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            errors.append(str(m.error()))
            continue
        v = int(m.value().decode())
        if v in seen:
            duplicates += 1
        seen.add(v)
        out.write("%d %d %d\n" % (m.partition(), m.offset(), v))
        try:
            c.commit(message=m, asynchronous=False)
        except KafkaException as e:
            # The coordinator moving: retriable; the next commit carries the position on.
            errors.append(str(e))
        time.sleep(0.005)
    committed = False
    end = time.time() + 60
    while not committed and time.time() < end:
        try:
            c.commit(asynchronous=False)
            committed = True
        except KafkaException as e:
            if "NO_OFFSET" in str(e):
                committed = True  # nothing new since the last successful commit
            else:
                errors.append(str(e))
                c.poll(0.5)
    c.close()
    print(json.dumps({
        "seen": len(seen), "duplicates": duplicates, "final_commit": committed,
        "error_count": len(errors), "errors": errors[:5],
    }))
    sys.exit(0 if len(seen) == total and committed else 1)


main()
