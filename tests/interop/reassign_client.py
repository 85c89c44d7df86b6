"""The Kafka-client side of tests/tests/reassignment.rs: an unmodified kafka-python moves a
partition through the Kafka protocol while its consumer reads across the leader change.

  reassign_client.py BOOTSTRAP TOPIC N TARGET
      TOPIC partition 0 holds records "0".."N-1". A kafka-python consumer reads them; the admin
      client refuses a bad move (broker 99) and cancelling a move that is not in progress, then
      moves the partition to TARGET (comma-separated broker ids) with
      AlterPartitionReassignments and polls ListPartitionReassignments until it is done; a
      producer writes "N".."2N-1" with acks=all; the same consumer, whose leader moved under it
      (so it validates its position with OffsetForLeaderEpoch, KIP-320), reads them without a
      truncation error or a reset. Prints a JSON summary; exits non-zero on any mismatch.
"""
import json
import logging
import os
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
import kafka.errors as Errors


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def read(consumer, want, deadline_s):
    got = []
    deadline = time.time() + deadline_s
    while len(got) < want and time.time() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(int(r.value.decode()) for r in records)
    return got


def main():
    if os.environ.get("REASSIGN_CLIENT_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, filename=os.environ["REASSIGN_CLIENT_DEBUG"])
    bootstrap, topic, n, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    target = [int(b) for b in target.split(",")]
    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="none",
        metadata_max_age_ms=1000,
    )
    consumer.assign([tp])
    consumer.seek(tp, 0)
    first = read(consumer, n, 60)
    if first != list(range(n)):
        fail("first read: %d records, not 0..%d" % (len(first), n))

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    bad = admin.alter_partition_reassignments({tp: [99]})
    if bad.get(tp) is not Errors.for_code(39):  # INVALID_REPLICA_ASSIGNMENT
        fail("a move to an unknown broker answered %r" % bad)
    cancel = admin.alter_partition_reassignments({tp: None})
    if cancel.get(tp) is not Errors.for_code(85):  # NO_REASSIGNMENT_IN_PROGRESS
        fail("cancelling nothing answered %r" % cancel)
    moved = admin.alter_partition_reassignments({tp: target})
    if moved.get(tp) is not None:
        fail("the move was refused: %r" % moved)
    polls, seen_moving = 0, False
    deadline = time.time() + 120
    while True:
        ongoing = admin.list_partition_reassignments()
        polls += 1
        if tp in ongoing:
            seen_moving = True
            if sorted(ongoing[tp]["replicas"]) != sorted(set(ongoing[tp]["replicas"])):
                fail("duplicate replicas while moving: %r" % ongoing[tp])
        else:
            break
        if time.time() > deadline:
            fail("still moving after 120 s: %r" % ongoing)
        time.sleep(0.2)

    # Not idempotent: InitProducerId is exactly-once work (issue 11), not served yet.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=20,
                             enable_idempotence=False,
                             metadata_max_age_ms=1000)
    sent = [producer.send(topic, value=str(i).encode(), partition=0) for i in range(n, 2 * n)]
    producer.flush(60)
    for f in sent:
        if f.exception is not None:
            fail("producing after the move: %r" % f.exception)
    producer.close()
    try:
        second = read(consumer, n, 90)
    except Errors.KafkaError as e:
        fail("reading after the move: %r" % e)
    if second != list(range(n, 2 * n)):
        fail("second read: %d records (first %r), not %d..%d"
             % (len(second), second[:3], n, 2 * n))
    print(json.dumps({"ok": True, "polls": polls, "seen_moving": seen_moving}))


main()
