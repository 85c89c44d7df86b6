"""Topic churn: create and delete topics in a loop while a confluent-kafka producer and consumer
work on them (issue 12 item 1). Deletion must look atomic to every client: the only errors
allowed are the ones saying the topic or partition does not exist (any other — a storage
error, a timeout — fails the run).

usage: topic_churn.py BOOTSTRAP ROUNDS [PREFIX]
prints: churn: ok created=N deleted=N delivered=N consumed=N refused={code: count}
"""
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = sys.argv[1]
ROUNDS = int(sys.argv[2])
PREFIX = sys.argv[3] if len(sys.argv) > 3 else "churn-"
PARTITIONS = 2
LIVE = 4  # topics alive at once; each round creates one and deletes the oldest

# "It is not there (any more)": what a client may be told about a deleted topic. librdkafka
# fails the messages it still queues for a partition that left the metadata with _DESTROY (the
# partition object is destroyed; the producer handle lives to the end of the run), and those
# refused by the broker with UNKNOWN_TOPIC_OR_PART or, once the topic is unknown for
# `topic.metadata.propagation.max.ms`, _UNKNOWN_PARTITION / _UNKNOWN_TOPIC.
GONE = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION, KafkaError._DESTROY}

lock = threading.Lock()
live = []  # topics created and not yet deleted
done = threading.Event()
errors = []  # (where, code name, message) of every error not in GONE
refused = {}  # GONE code name -> count
counts = {"created": 0, "deleted": 0, "delivered": 0, "consumed": 0}


def note(where, err):
    if err.code() in GONE:
        with lock:
            refused[err.name()] = refused.get(err.name(), 0) + 1
    else:
        with lock:
            errors.append((where, err.name(), err.str()))


def admin_loop():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    try:
        for i in range(ROUNDS):
            name = "%s%d-%s" % (PREFIX, i, uuid.uuid4().hex[:6])
            # Half of them compacted with tiny segments, so the cleaner has work on them too.
            config = {"segment.bytes": "4096", "cleanup.policy": "compact" if i % 2 else "delete",
                      "min.cleanable.dirty.ratio": "0.01", "flush.messages": "1"}
            try:
                admin.create_topics([NewTopic(name, PARTITIONS, 1, config=config)])[name].result(30)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    errors.append(("create", type(e).__name__, str(e)))
                continue
            with lock:
                live.append(name)
                counts["created"] += 1
                victim = live.pop(0) if len(live) > LIVE else None
            # Let the clients touch the new topic before the next deletion.
            time.sleep(0.05)
            if victim:
                delete(admin, victim)
        with lock:
            rest, live[:] = list(live), []
        for t in rest:
            delete(admin, t)
    finally:
        done.set()


def delete(admin, name):
    try:
        admin.delete_topics([name])[name].result(30)
        with lock:
            counts["deleted"] += 1
    except Exception as e:  # noqa: BLE001
        err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
        if err is None or err.code() not in GONE:
            with lock:
                errors.append(("delete", type(e).__name__, str(e)))


def producer_loop():
    def report(err, _msg):
        if err is None:
            with lock:
                counts["delivered"] += 1
        else:
            note("produce", err)

    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 2, "acks": "all",
                  "message.timeout.ms": 60000, "topic.metadata.refresh.interval.ms": 500,
                  "topic.metadata.propagation.max.ms": 1000})
    n = 0
    while not done.is_set():
        with lock:
            targets = list(live)
        for t in targets:
            for part in range(PARTITIONS):
                try:
                    p.produce(t, key=b"k%d" % (n % 7), value=b"v%d" % n, partition=part,
                              on_delivery=report)
                except BufferError:
                    p.poll(0.1)
                except Exception as e:  # noqa: BLE001
                    if isinstance(e.args[0], KafkaError):
                        note("produce", e.args[0])
                    else:
                        with lock:
                            errors.append(("produce", type(e).__name__, str(e)))
                n += 1
        p.poll(0.01)
    left = p.flush(90)
    if left:
        with lock:
            errors.append(("produce", "flush", "%d messages never reported" % left))


def consumer_loop():
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "churn-" + uuid.uuid4().hex[:6],
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "topic.metadata.refresh.interval.ms": 500})
    assigned = set()
    while not done.is_set():
        with lock:
            want = {(t, p) for t in live for p in range(PARTITIONS)}
        gone = assigned - want
        if gone:
            c.incremental_unassign([TopicPartition(t, p) for t, p in gone])
        new = want - assigned
        if new:
            c.incremental_assign([TopicPartition(t, p, 0) for t, p in new])
        assigned = want
        for m in c.consume(num_messages=500, timeout=0.05):
            if m.error():
                note("consume", m.error())
            else:
                with lock:
                    counts["consumed"] += 1
    c.close()


threads = [threading.Thread(target=f) for f in (admin_loop, producer_loop, consumer_loop)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    kinds = {}
    for where, name, _ in errors:
        kinds[(where, name)] = kinds.get((where, name), 0) + 1
    print("churn: FAILED %d error(s) %r; first: %r; counts %r" % (len(errors), kinds, errors[:10],
                                                                   counts))
    sys.exit(1)
if counts["created"] != ROUNDS or counts["deleted"] != ROUNDS:
    print("churn: FAILED counts %r" % counts)
    sys.exit(1)
if counts["delivered"] == 0 or counts["consumed"] == 0:
    print("churn: FAILED nothing went through: %r" % counts)
    sys.exit(1)
print("churn: ok created=%d deleted=%d delivered=%d consumed=%d refused=%r" % (
    counts["created"], counts["deleted"], counts["delivered"], counts["consumed"], refused))
