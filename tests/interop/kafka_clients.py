"""Interop checks of real Kafka clients against a running Sluice broker.

Usage: kafka_clients.py BOOTSTRAP CHECK...   (checks: confluent, kafka_python)
Exits non-zero with a message on the first failed check.
"""
import os
import sys
import time
import uuid

BOOTSTRAP = sys.argv[1]
# RDKAFKA_DEBUG=cgrp,protocol turns on librdkafka's debug log (stderr) where a check passes it on.
DEBUG = {"debug": os.environ["RDKAFKA_DEBUG"]} if os.environ.get("RDKAFKA_DEBUG") else {}
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def check_confluent():
    from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
    from confluent_kafka.admin import AdminClient, NewTopic, ConfigResource

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    topic = "ck-" + uuid.uuid4().hex[:8]
    fs = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1, config={"retention.ms": "3600000"})])
    fs[topic].result(10)
    md = admin.list_topics(timeout=10)
    if topic not in md.topics or len(md.topics[topic].partitions) != 3:
        fail("created topic missing from metadata")
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = admin.describe_configs([res])[res].result(10)
    if cfg["retention.ms"].value != "3600000":
        fail("describe_configs retention.ms = %r" % cfg["retention.ms"].value)

    sent = {}
    for codec in CODECS:
        p = Producer({"bootstrap.servers": BOOTSTRAP, "compression.type": codec, "linger.ms": 5, "acks": "all"})
        errors = []
        for i in range(200):
            key = ("key-%d" % (i % 10)).encode()
            value = ("%s-%d-" % (codec, i)).encode() * 5
            p.produce(topic, value=value, key=key, headers=[("codec", codec.encode())],
                      on_delivery=lambda err, msg: errors.append(err) if err else None)
            sent[value] = key
        if p.flush(15) != 0:
            fail("%s: producer did not flush" % codec)
        if errors:
            fail("%s: delivery errors %r" % (codec, errors[:3]))

    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "unused", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    got = {}
    key_partition = {}
    deadline = time.time() + 30
    while len(got) < len(sent) and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        got[m.value()] = m.key()
        if key_partition.setdefault(m.key(), m.partition()) != m.partition():
            fail("key %r seen on two partitions" % m.key())
        if dict(m.headers() or [])["codec"].decode() not in CODECS:
            fail("bad header")
    c.close()
    if got != sent:
        fail("confluent consumer got %d of %d records" % (len(got), len(sent)))

    # Offsets by timestamp: everything was produced in the last minute.
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "unused"})
    ts = int((time.time() - 600) * 1000)
    offs = c.offsets_for_times([TopicPartition(topic, p, ts) for p in range(3)], timeout=10)
    if any(o.offset != 0 for o in offs):
        fail("offsets_for_times: %r" % offs)
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    if lo != 0 or hi <= 0:
        fail("watermarks %r" % ((lo, hi),))
    c.close()

    # A consumer assigned at the end sees only records produced after it started.
    from confluent_kafka import OFFSET_END
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "unused", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_END)])
    c.poll(1.0)  # let it resolve the end offset
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    p.produce(topic, value=b"after-latest", partition=0)
    p.flush(10)
    seen = []
    deadline = time.time() + 15
    while not seen and time.time() < deadline:
        m = c.poll(1.0)
        if m is not None and not m.error():
            seen.append(m.value())
    c.close()
    if seen != [b"after-latest"]:
        fail("consumer from latest saw %r" % seen)

    # ListOffsets through the admin API: earliest, latest, and max timestamp (v7).
    from confluent_kafka.admin import OffsetSpec
    tp = TopicPartition(topic, 0)
    for spec, check in [
        (OffsetSpec.earliest(), lambda o: o.offset == 0),
        (OffsetSpec.latest(), lambda o: o.offset == hi + 1),
        (OffsetSpec.max_timestamp(), lambda o: 0 <= o.offset <= hi and o.timestamp > 0),
    ]:
        res = admin.list_offsets({tp: spec})[tp].result(10)
        if not check(res):
            fail("list_offsets %r -> offset %r timestamp %r" % (spec, res.offset, res.timestamp))

    # max.message.bytes is enforced with MESSAGE_TOO_LARGE; LogAppendTime topics are stamped by the broker.
    from confluent_kafka import KafkaError, TIMESTAMP_LOG_APPEND_TIME
    small = topic + "-small"
    admin.create_topics([NewTopic(small, 1, 1, config={"max.message.bytes": "2000", "message.timestamp.type": "LogAppendTime"})])[small].result(10)
    errs = []
    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 0})
    p.produce(small, value=b"x" * 5000, on_delivery=lambda err, msg: errs.append(err))
    p.flush(10)  # separate batches: the broker rejects a too-large batch whole
    p.produce(small, value=b"fits", timestamp=1000, on_delivery=lambda err, msg: errs.append(err))
    p.flush(10)
    if len(errs) != 2 or errs[0] is None or errs[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or errs[1] is not None:
        fail("expected MSG_SIZE_TOO_LARGE then success, got %r" % errs)
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "unused"})
    c.assign([TopicPartition(small, 0, OFFSET_BEGINNING)])
    m = None
    deadline = time.time() + 10
    while m is None and time.time() < deadline:
        m = c.poll(1.0)
    c.close()
    if m is None or m.value() != b"fits":
        fail("LogAppendTime topic: no record")
    ts_type, ts = m.timestamp()
    if ts_type != TIMESTAMP_LOG_APPEND_TIME or ts < (time.time() - 60) * 1000:
        fail("LogAppendTime topic returned timestamp %r" % (m.timestamp(),))
    admin.delete_topics([small])[small].result(10)

    fs = admin.create_partitions([__import__("confluent_kafka.admin", fromlist=["NewPartitions"]).NewPartitions(topic, 5)])
    fs[topic].result(10)
    if len(admin.list_topics(timeout=10).topics[topic].partitions) != 5:
        fail("create_partitions did not grow the topic")
    fs = admin.delete_topics([topic])
    fs[topic].result(10)
    if topic in admin.list_topics(timeout=10).topics:
        fail("deleted topic still listed")
    print("confluent-kafka: ok (%d records, codecs %s)" % (len(sent), ",".join(CODECS)))


def check_kafka_python():
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    topic = "kp-" + uuid.uuid4().hex[:8]
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    sent = set()
    for codec in [None, "gzip", "snappy", "lz4", "zstd"]:
        p = KafkaProducer(bootstrap_servers=BOOTSTRAP, compression_type=codec, acks=1)
        for i in range(100):
            v = ("%s-%d" % (codec, i)).encode()
            p.send(topic, value=v, key=b"k%d" % (i % 5), headers=[("h", b"1")])
            sent.add(v)
        # A deadline past kafka-python's own request timeout (30 s), so one slow request on a
        # loaded machine is retried by the client before the check gives up.
        p.flush(60)
        p.close()
    c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, consumer_timeout_ms=5000)
    c.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    c.seek_to_beginning()
    got = set()
    for m in c:
        got.add(m.value)
        if len(got) == len(sent):
            break
    c.close()
    if got != sent:
        fail("kafka-python consumer got %d of %d" % (len(got), len(sent)))
    admin.delete_topics([topic])
    admin.close()
    print("kafka-python: ok (%d records)" % len(sent))


def check_idempotent():
    """Idempotent producers: confluent-kafka with enable.idempotence and kafka-python's default
    (idempotent with acks=all) get producer ids (InitProducerId) and write every record once."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = "idem-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(str(err))

    p = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "linger.ms": 2})
    for i in range(300):
        p.produce(topic, value=b"c%d" % i, partition=0, on_delivery=report)
        p.poll(0)
    if p.flush(30) != 0 or errors:
        fail("confluent-kafka idempotent producer: %s" % errors[:3])
    kp = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
    futures = [kp.send(topic, value=b"k%d" % i, partition=0) for i in range(300)]
    kp.flush(30)
    kp.close()
    bad = [repr(f.exception) for f in futures if f.exception is not None]
    if bad:
        fail("kafka-python idempotent producer: %s" % bad[:3])
    c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, consumer_timeout_ms=5000)
    c.assign([TopicPartition(topic, 0)])
    c.seek_to_beginning()
    got = [m.value for m in c]
    c.close()
    want = [b"c%d" % i for i in range(300)] + [b"k%d" % i for i in range(300)]
    if got != want:
        fail("idempotent producers: read %d records, want the 600 in order" % len(got))
    print("idempotent: ok (%d records)" % len(got))


def check_configs():
    """Topic configs as Kafka takes them: deprecated-but-accepted names are accepted and
    described, unknown names refused; IncrementalAlterConfigs APPEND/SUBTRACT on list configs."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource, NewTopic, ResourceType)

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    topic = "cfg-" + uuid.uuid4().hex[:8]
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config={
        "message.format.version": "2.8", "message.downconversion.enable": "false"})])[topic].result(10)
    bad = "cfg-bad-" + uuid.uuid4().hex[:8]
    try:
        admin.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1,
                                      config={"no.such.config": "1"})])[bad].result(10)
        fail("an unknown topic config was accepted")
    except KafkaException as e:
        if "no.such.config" not in str(e):
            fail("unknown config refused without naming it: %s" % e)

    def describe():
        res = ConfigResource(ResourceType.TOPIC, topic)
        return {k: v.value for k, v in admin.describe_configs([res])[res].result(10).items()}

    def incremental(entries):
        res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
        return admin.incremental_alter_configs([res])[res].result(10)

    d = describe()
    if d.get("message.format.version") != "2.8" or d.get("message.downconversion.enable") != "false":
        fail("accepted configs not described: %r" % {k: d.get(k) for k in ("message.format.version", "message.downconversion.enable")})
    incremental([ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND)])
    if sorted(describe()["cleanup.policy"].split(",")) != ["compact", "delete"]:
        fail("APPEND: cleanup.policy is %r" % describe()["cleanup.policy"])
    incremental([ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SUBTRACT)])
    if describe()["cleanup.policy"] != "compact":
        fail("SUBTRACT: cleanup.policy is %r" % describe()["cleanup.policy"])
    try:
        incremental([ConfigEntry("retention.ms", "5", incremental_operation=AlterConfigOpType.APPEND)])
        fail("APPEND on a non-list config was accepted")
    except KafkaException:
        pass
    print("configs: ok")


def check_commit_unknown():
    """Committing offsets of a topic that does not exist: UNKNOWN_TOPIC_OR_PARTITION for that
    partition, as Kafka answers (it used to succeed)."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "cu-" + uuid.uuid4().hex[:8],
                  "enable.auto.commit": False})
    tp = TopicPartition("no-such-topic-" + uuid.uuid4().hex[:8], 0, 5)
    try:
        res = c.commit(offsets=[tp], asynchronous=False)
        errors = [p.error for p in res if p.error is not None]
        code = errors[0].code() if errors else None
    except KafkaException as e:
        code = e.args[0].code()
    c.close()
    if code != KafkaError.UNKNOWN_TOPIC_OR_PART:
        fail("commit to a missing topic answered %r" % code)
    print("commit_unknown: ok")


def group_consumer(group, topic, name):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "client.id": name,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c.subscribe([topic])
    return c


def check_groups():
    """Two confluent-kafka members split a 4-partition topic 2/2, consume everything, commit."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    group, topic = GROUP, TOPIC
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(10)
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(400):
        p.produce(topic, value=b"m%d" % i, key=b"k%d" % i)
    p.flush(10)
    a = group_consumer(group, topic, "a")
    seen = set()
    deadline = time.time() + 30
    while len(seen) < 50 and time.time() < deadline:
        m = a.poll(0.5)
        if m is not None and not m.error():
            seen.add(m.value())
    if sorted(tp.partition for tp in a.assignment()) != [0, 1, 2, 3]:
        fail("a lone member should own all 4 partitions, has %r" % a.assignment())
    b = group_consumer(group, topic, "b")
    deadline = time.time() + 40
    while time.time() < deadline:
        for c in (a, b):
            m = c.poll(0.2)
            if m is not None and not m.error():
                seen.add(m.value())
        if len(a.assignment()) == 2 and len(b.assignment()) == 2 and len(seen) == 400:
            break
    if (len(a.assignment()), len(b.assignment())) != (2, 2):
        fail("after a second member joined: a %r, b %r" % (a.assignment(), b.assignment()))
    if len(seen) != 400:
        fail("the group consumed %d of 400 records" % len(seen))
    for c in (a, b):
        c.commit(asynchronous=False)
    a.close()
    b.close()
    print("groups: ok (2 members, 2/2 partitions, 400 records, committed)")


def check_groups_resume():
    """After a broker restart, a new member resumes from the committed offsets."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    p.produce(TOPIC, value=b"after-restart", key=b"x")
    p.flush(10)
    c = group_consumer(GROUP, TOPIC, "c")
    got = []
    deadline = time.time() + 30
    while time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
        if got and time.time() > deadline - 25:
            break
    c.close()
    if got != [b"after-restart"]:
        fail("resumed member got %r, expected only the new record" % got[:5])
    # kafka-python as a group member of the same group sees the same committed position.
    from kafka import KafkaConsumer
    k = KafkaConsumer(TOPIC, bootstrap_servers=BOOTSTRAP, group_id=GROUP, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=8000)
    rest = [m.value for m in k]
    k.close()
    if rest != [b"after-restart"]:
        fail("kafka-python group member got %r" % rest[:5])
    print("groups_resume: ok")


def check_group_admin():
    """Admin APIs over a group's committed offsets: list, delete some (OffsetDelete), delete all."""
    from confluent_kafka import Consumer, TopicPartition, ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    topic, group = "admin-groups", "admin-group"
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(10)
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 7)], asynchronous=False)
    c.close()
    req = ConsumerGroupTopicPartitions(group)
    res = admin.list_consumer_group_offsets([req])[group].result(10)
    got = sorted((tp.partition, tp.offset) for tp in res.topic_partitions)
    if got != [(0, 5), (1, 7)]:
        fail("list_consumer_group_offsets: %r" % got)
    # OffsetDelete through kafka-python's admin (confluent-kafka's Python API has no such call).
    from kafka.admin import KafkaAdminClient
    from kafka import TopicPartition as KTopicPartition
    kadmin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    kadmin.delete_group_offsets(group, [KTopicPartition(topic, 0)])
    kadmin.close()
    res = admin.list_consumer_group_offsets([req])[group].result(10)
    got = sorted((tp.partition, tp.offset) for tp in res.topic_partitions if tp.offset >= 0)
    if got != [(1, 7)]:
        fail("after delete_consumer_group_offsets: %r" % got)
    admin.delete_consumer_groups([group])[group].result(10)
    listed = admin.list_consumer_groups().result(10)
    if any(g.group_id == group for g in listed.valid):
        fail("deleted group still listed")
    print("group_admin: ok")


def check_mixed_group():
    """A confluent-kafka member (range assignor) joins a group a `sluice consume --group` member
    (gRPC) already holds: it gets half of the 6 partitions, reads what is produced to them from the
    group's committed offsets, commits, and leaves."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "mixed", "client.id": "rdkafka-member",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "partition.assignment.strategy": "range",
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c.subscribe(["mixed"])
    got = {}
    deadline = time.time() + 40
    while time.time() < deadline and len(c.assignment()) != 3:
        c.poll(0.2)
    mine = sorted(tp.partition for tp in c.assignment())
    if len(mine) != 3:
        fail("mixed group: the Kafka member was assigned %r" % mine)
    # New records on every partition; this member must read those on its own partitions.
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(120):
        p.produce("mixed", value=b"new-%d" % i, partition=i % 6)
    p.flush(10)
    ends = {q: c.get_watermark_offsets(TopicPartition("mixed", q), timeout=5)[1] for q in mine}
    while time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.setdefault(m.partition(), set()).add(m.offset())
        if all(q in got and max(got[q]) + 1 == ends[q] for q in mine):
            break
    read = {q: len(got.get(q, ())) for q in mine}
    if not all(q in got and max(got[q]) + 1 == ends[q] for q in mine) or set(got) - set(mine):
        fail("mixed group: partitions %r, read %r, ends %r" % (mine, read, ends))
    c.commit(offsets=[TopicPartition("mixed", q, ends[q]) for q in mine], asynchronous=False)
    c.close()
    print("mixed_group: ok partitions=%s records=%d" % (",".join(map(str, mine)), sum(read.values())))


def read_all(topic, partitions, isolation, timeout=10.0):
    """Every record of `topic` (values, per partition in offset order) as a consumer at
    `isolation` sees it, reading up to the end its isolation level allows."""
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "reader-" + uuid.uuid4().hex[:6],
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, q, OFFSET_BEGINNING) for q in range(partitions)])
    got = {q: [] for q in range(partitions)}
    eof = set()
    deadline = time.time() + timeout
    while len(eof) < partitions and time.time() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                eof.add(m.partition())
                continue
            fail("%s consumer: %s" % (isolation, m.error()))
        got[m.partition()].append(m.value())
        eof.discard(m.partition())
    c.close()
    if len(eof) < partitions:
        fail("%s consumer did not reach the end of %s: %r" % (isolation, topic, got))
    return got


def check_transactions():
    """Transactions with confluent-kafka: committed records are read by read_committed
    consumers, aborted ones only by read_uncommitted; an open transaction holds read_committed
    readers back (LSO); consume-transform-produce with send_offsets_to_transaction commits the
    input offsets with the output; a second producer with the same transactional.id fences the
    first; kafka-python's transactional producer and read_committed consumer agree."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    tin, tout = "txin-" + uuid.uuid4().hex[:8], "txout-" + uuid.uuid4().hex[:8]
    for t in (tin, tout):
        admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)])[t].result(10)
    tid = "tx-" + uuid.uuid4().hex[:8]
    p = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": tid, "linger.ms": 5})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(10):
        p.produce(tin, value=b"c%d" % i, partition=i % 2)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(10):
        p.produce(tin, value=b"a%d" % i, partition=i % 2)
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    for i in range(6):
        p.produce(tin, value=b"d%d" % i, partition=i % 2)
    p.commit_transaction(30)

    committed = read_all(tin, 2, "read_committed")
    everything = read_all(tin, 2, "read_uncommitted")
    want_committed = {q: [b"c%d" % i for i in range(q, 10, 2)] + [b"d%d" % i for i in range(q, 6, 2)]
                      for q in range(2)}
    if committed != want_committed:
        fail("read_committed saw %r, want %r" % (committed, want_committed))
    n_all = sum(len(v) for v in everything.values())
    if n_all != 26 or not any(v.startswith(b"a") for vs in everything.values() for v in vs):
        fail("read_uncommitted saw %d records (want 26 with the aborted ones): %r" % (n_all, everything))

    # An open transaction holds read_committed consumers at its first offset.
    p.begin_transaction()
    p.produce(tin, value=b"open", partition=0)
    p.flush(30)
    lo, hi = None, None
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "lso-" + uuid.uuid4().hex[:6],
                  "isolation.level": "read_committed"})
    lo, hi = c.get_watermark_offsets(TopicPartition(tin, 0), timeout=10)
    c.close()
    uncommitted_hi = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "x",
                               "isolation.level": "read_uncommitted"})
    _, hw = uncommitted_hi.get_watermark_offsets(TopicPartition(tin, 0), timeout=10)
    uncommitted_hi.close()
    if not hi < hw:
        fail("an open transaction: read_committed end %d should be below the high watermark %d" % (hi, hw))
    p.abort_transaction(30)

    # Consume-transform-produce: the input offsets are committed with the output.
    group = "txgroup-" + uuid.uuid4().hex[:6]
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    c.subscribe([tin])
    seen = 0
    deadline = time.time() + 30
    p.begin_transaction()
    while seen < 16 and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        seen += 1
        p.produce(tout, value=m.value().upper(), partition=m.partition())
    if seen != 16:
        fail("transform loop read %d input records, want 16" % seen)
    ends = {}
    for q in range(2):
        probe = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "x"})
        ends[q] = probe.get_watermark_offsets(TopicPartition(tin, q), timeout=10)[1]
        probe.close()
    # The consumer's position passes a partition's trailing transaction marker once it has
    # polled past it (a marker is not a message, but it moves the position).
    while time.time() < deadline:
        if {tp.partition: tp.offset for tp in c.position(c.assignment())} == ends:
            break
        m = c.poll(0.2)
        if m is not None and not m.error():
            fail("transform loop: an unexpected record %r" % m.value())
    p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 30)
    p.commit_transaction(30)
    offsets = c.committed([TopicPartition(tin, q) for q in range(2)], timeout=10)
    c.close()
    got_offsets = {tp.partition: tp.offset for tp in offsets}
    if got_offsets != ends:
        fail("transactional offsets %r, want the input ends %r" % (got_offsets, ends))
    out = read_all(tout, 2, "read_committed")
    if sorted(v for vs in out.values() for v in vs) != sorted(v.upper() for vs in want_committed.values() for v in vs):
        fail("transform output %r" % out)

    # A second producer with the same transactional.id fences the first.
    p2 = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": tid})
    p2.init_transactions(30)
    try:
        p.begin_transaction()
        p.produce(tout, value=b"zombie", partition=0)
        p.commit_transaction(10)
        fail("a fenced producer committed")
    except KafkaException as e:
        if not e.args[0].fatal() and "fenced" not in str(e).lower():
            fail("the zombie got %s, want a fatal fencing error" % e)
    p2.begin_transaction()
    p2.produce(tout, value=b"p2", partition=0)
    p2.commit_transaction(30)
    if b"zombie" in read_all(tout, 2, "read_committed")[0]:
        fail("the zombie's record is visible")

    # kafka-python: its transactional producer and read_committed consumer.
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition as KTP
    kp = KafkaProducer(bootstrap_servers=BOOTSTRAP, transactional_id="kp-" + tid)
    kp.init_transactions()
    kp.begin_transaction()
    kp.send(tout, value=b"kp-aborted", partition=1)
    kp.flush()
    kp.abort_transaction()
    kp.begin_transaction()
    kp.send(tout, value=b"kp-committed", partition=1)
    kp.commit_transaction()
    kp.close()
    kc = KafkaConsumer(bootstrap_servers=BOOTSTRAP, isolation_level="read_committed",
                       enable_auto_commit=False, consumer_timeout_ms=5000)
    kc.assign([KTP(tout, 1)])
    kc.seek_to_beginning()
    vals = [m.value for m in kc]
    kc.close()
    if b"kp-committed" not in vals or b"kp-aborted" in vals:
        fail("kafka-python read_committed saw %r" % vals)
    print("transactions: ok input=%s" % tin)


def check_fetch_limits():
    """A fetch answer stays within the consumer's fetch.max.bytes: only the first partition with
    data may return a batch larger than what is left (KIP-74). Four partitions of one 250 kB
    record each, a consumer allowing 600 kB per response (and receiving at most that + 512):
    before, the third partition's batch came whole too, the response was ~750 kB, and librdkafka
    dropped the connection ("Invalid response size") and retried forever."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    topic = "limits-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(10)
    p = Producer({"bootstrap.servers": BOOTSTRAP, "compression.type": "none"})
    value = b"x" * 250_000
    for part in range(4):
        p.produce(topic, value=value, partition=part)
    if p.flush(60):
        fail("fetch_limits: produce did not complete")
    errors = []
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "limits-" + uuid.uuid4().hex[:8],
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.max.bytes": 600_000, "receive.message.max.bytes": 600_512,
                  "message.max.bytes": 600_000,
                  "error_cb": lambda e: errors.append(e)})
    c.subscribe([topic])
    got = set()
    deadline = time.time() + 60
    while len(got) < 4 and time.time() < deadline and not errors:
        m = c.poll(0.5)
        if m is not None and not m.error() and len(m.value()) == len(value):
            got.add(m.partition())
    c.close()
    if errors:
        fail("fetch_limits: client error %s" % errors[0])
    if len(got) != 4:
        fail("fetch_limits: read partitions %r of 4" % sorted(got))
    print("fetch_limits: ok")


def check_invalid_records():
    """Records Kafka refuses get their delivery report with Kafka's error, one per record: a
    keyless record on a compacted topic INVALID_RECORD, a timestamp outside the topic's
    message.timestamp.difference.max.ms INVALID_TIMESTAMP; the valid ones are written."""
    from confluent_kafka import KafkaError, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    compacted = "inv-c-" + uuid.uuid4().hex[:8]
    strict = "inv-t-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    fs = admin.create_topics([
        NewTopic(compacted, 1, 1, config={"cleanup.policy": "compact"}),
        NewTopic(strict, 1, 1, config={"message.timestamp.difference.max.ms": "60000"})])
    for f in fs.values():
        f.result(10)
    reports = []
    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 0, "retries": 0})

    def report(err, msg):
        reports.append((msg.topic(), msg.value(), err.code() if err else None))

    now = int(time.time() * 1000)
    p.produce(compacted, key=b"k", value=b"keyed", on_delivery=report)
    p.flush(30)
    p.produce(compacted, value=b"keyless", on_delivery=report)
    p.flush(30)
    p.produce(strict, value=b"old", timestamp=now - 3_600_000, on_delivery=report)
    p.flush(30)
    p.produce(strict, value=b"future", timestamp=now + 3_600_000, on_delivery=report)
    p.flush(30)
    p.produce(strict, value=b"now", timestamp=now, on_delivery=report)
    if p.flush(30):
        fail("invalid_records: delivery reports missing")
    got = {v: code for _, v, code in reports}
    want = {b"keyed": None, b"keyless": KafkaError.INVALID_RECORD,
            b"old": KafkaError.INVALID_TIMESTAMP, b"future": KafkaError.INVALID_TIMESTAMP,
            b"now": None}
    if len(reports) != len(want) or got != want:
        fail("invalid_records: reports %r" % reports)
    print("invalid_records: ok")


def check_invalid_topic_names():
    """Producing to a name no topic can have fails at once with Kafka's INVALID_TOPIC_EXCEPTION
    (Metadata answers it for that topic); before, the messages sat queued until their timeout."""
    from confluent_kafka import KafkaError, Producer
    reports = []
    p = Producer({"bootstrap.servers": BOOTSTRAP, "message.timeout.ms": 120000})
    names = ["bad name!", "x" * 250, "a/b"]
    start = time.time()
    for n in names:
        p.produce(n, value=b"v", on_delivery=lambda e, m: reports.append(
            (m.topic(), e.code() if e else None)))
    left = p.flush(30)
    took = time.time() - start
    if left or len(reports) != len(names):
        fail("invalid_topic_names: %d message(s) still queued after %.1f s" % (left, took))
    bad = [r for r in reports if r[1] != KafkaError.TOPIC_EXCEPTION]
    if bad:
        fail("invalid_topic_names: reports %r" % bad)
    print("invalid_topic_names: ok (%.1f s)" % took)


def check_fenced_instance():
    """Two consumers with the same group.instance.id: the newer takes the place, the older is
    told FENCED_INSTANCE_ID — a fatal error for librdkafka, so it stops instead of rejoining and
    fighting the newer one for the assignment (before: UNKNOWN_MEMBER_ID, and both kept
    rejoining)."""
    from confluent_kafka import Consumer, KafkaError, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    topic = "fence-" + uuid.uuid4().hex[:8]
    group = "fence-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(10)
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(10):
        p.produce(topic, value=b"m%d" % i, partition=i % 2)
    p.flush(30)

    def consumer(errors):
        return Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group,
                         "group.instance.id": "instance-1", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "session.timeout.ms": 30000,
                         "heartbeat.interval.ms": 300,
                         "error_cb": lambda e: errors.append(e)})

    old_errors, new_errors = [], []
    old = consumer(old_errors)
    old.subscribe([topic])
    deadline = time.time() + 60
    while not old.assignment() and time.time() < deadline:
        old.poll(0.2)
    if not old.assignment():
        fail("fenced_instance: the first instance got no assignment")
    new = consumer(new_errors)
    new.subscribe([topic])
    fenced = None
    got = 0
    deadline = time.time() + 60
    while time.time() < deadline and (fenced is None or got < 10):
        if fenced is None:
            m = old.poll(0.1)
            if m is not None and m.error() and m.error().code() == KafkaError._FATAL:
                fenced = m.error()
            for e in old_errors:
                if e.fatal() or e.code() == KafkaError.FENCED_INSTANCE_ID:
                    fenced = e
        m = new.poll(0.1)
        if m is not None and not m.error():
            got += 1
    if fenced is None:
        fail("fenced_instance: the older instance was never fenced; its errors: %r" % old_errors)
    if got < 10:
        fail("fenced_instance: the newer instance read %d of 10 (errors %r)" % (got, new_errors))
    new.close()
    print("fenced_instance: ok (%s)" % fenced.str())


def check_open_txn():
    """Leaves a transaction open for the CLI to inspect: 5 plain records on a 1-partition topic,
    the group `<topic>-group` committed at 5, then a transaction (`<topic>-txn`, 60 s timeout)
    with 3 records that is neither committed nor aborted (the process exits without closing)."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
    topic = "opentxn-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(5):
        p.produce(topic, value=b"plain%d" % i)
    if p.flush(60):
        fail("open_txn: plain records not delivered")
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": topic + "-group"})
    c.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    c.close()
    t = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": topic + "-txn",
                  "transaction.timeout.ms": 60000})
    t.init_transactions(30)
    t.begin_transaction()
    for i in range(3):
        t.produce(topic, value=b"open%d" % i)
    if t.flush(60):
        fail("open_txn: transactional records not delivered")
    print("open_txn: ok topic=%s" % topic, flush=True)
    os._exit(0)  # no close: the transaction stays open at the broker


def check_cooperative_commits():
    """Consumers with the cooperative-sticky assignor commit synchronously while members join and
    leave (each change is two rebalance rounds). Kafka refuses a commit only while a generation
    is being completed (CompletingRebalance, between the joins and the leader's SyncGroup), so a
    retry after a short backoff succeeds: no commit may need more than MAX_RETRIES. (Refusing
    commits for the whole PreparingRebalance phase — up to a heartbeat interval, 3 s — fails this.)"""
    import faulthandler
    import threading
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    # The run takes ~25 s. A client call that never returns (a consumer's close() hung once, in
    # session 7, holding the GIL) must fail the check, not hang the suite: faulthandler's
    # watchdog is a C thread that needs no GIL; it prints every thread's stack and exits.
    faulthandler.dump_traceback_later(180, exit=True)
    MAX_RETRIES = 5  # at 100 ms: room for a slow leader on a busy machine
    topic = "coop-" + uuid.uuid4().hex[:8]
    group = "coop-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])[topic].result(10)
    stop = threading.Event()
    lock = threading.Lock()
    worst, commits, problems, joined = [0], [0], [], []

    def produce():
        p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
        i = 0
        while not stop.is_set():
            p.produce(topic, value=b"%d" % i)
            i += 1
            if i % 50 == 0:
                p.poll(0)
                time.sleep(0.02)
        p.flush(30)

    def consume(name, start, end):
        time.sleep(start)
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "client.id": name,
                      "partition.assignment.strategy": "cooperative-sticky",
                      "enable.auto.commit": False, "auto.offset.reset": "earliest",
                      **DEBUG})
        c.subscribe([topic])
        until = time.time() + (end - start)
        n = 0
        while time.time() < until:
            m = c.poll(0.1)
            if m is None or m.error():
                continue
            n += 1
            if n % 20:
                continue
            fails = 0
            while True:
                try:
                    c.commit(message=m, asynchronous=False)
                    break
                except KafkaException as e:
                    err = e.args[0]
                    # A commit from the generation a rebalance just replaced: Kafka answers
                    # the same; the next message commits with the new one.
                    if err.code() == KafkaError.ILLEGAL_GENERATION:
                        break
                    fails += 1
                    if err.code() != KafkaError.REBALANCE_IN_PROGRESS or fails > MAX_RETRIES:
                        with lock:
                            problems.append((name, err.str(), fails))
                        break
                    time.sleep(0.1)
            with lock:
                commits[0] += 1
                worst[0] = max(worst[0], fails)
        with lock:
            joined.append(name)
        c.close()

    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=consume, args=a)
        for a in [("c1", 0, 20), ("c2", 0, 8), ("c3", 4, 20), ("c4", 10, 20)]]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    if problems:
        fail("cooperative_commits: %r (worst %d retries)" % (problems[:5], worst[0]))
    if commits[0] < 10:
        fail("cooperative_commits: only %d commits" % commits[0])
    faulthandler.cancel_dump_traceback_later()
    print("cooperative_commits: ok (%d commits, at most %d retries)" % (commits[0], worst[0]))


def check_pipelined():
    """Many produce requests in flight on one connection, to a topic that fsyncs every batch
    (flush.messages=1): the broker writes each request's batches as it reads them and answers
    in order while earlier ones wait for their fsync. Every record arrives once, in order per
    partition, for a plain producer (librdkafka keeps up to 1M requests in flight) and an
    idempotent one (5 in flight, sequence numbers checked by the broker)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = "pipelined-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1,
                                  config={"flush.messages": "1"})])[topic].result(10)
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(str(err))

    want = {q: [] for q in range(3)}
    for name, conf in (("plain", {}), ("idempotent", {"enable.idempotence": True})):
        p = Producer(dict({"bootstrap.servers": BOOTSTRAP, "linger.ms": 0,
                           "batch.num.messages": 20}, **conf))
        for i in range(3000):
            value = b"%s-%d" % (name.encode(), i)
            p.produce(topic, value=value, partition=i % 3, on_delivery=report)
            want[i % 3].append(value)
            p.poll(0)
        if p.flush(60) != 0 or errors:
            fail("pipelined %s producer: %s" % (name, errors[:3]))
    got = read_all(topic, 3, "read_uncommitted", timeout=30.0)
    for q in range(3):
        if got[q] != want[q]:
            fail("pipelined: partition %d read %d records, want the %d in order"
                 % (q, len(got[q]), len(want[q])))
    print("pipelined: ok (%d records)" % sum(len(v) for v in got.values()))


GROUP = "interop-group"
TOPIC = "interop-groups"
for check in sys.argv[2:]:
    {"confluent": check_confluent, "kafka_python": check_kafka_python, "groups": check_groups,
     "groups_resume": check_groups_resume, "group_admin": check_group_admin,
     "mixed_group": check_mixed_group, "idempotent": check_idempotent,
     "configs": check_configs, "commit_unknown": check_commit_unknown,
     "transactions": check_transactions, "fetch_limits": check_fetch_limits,
     "invalid_records": check_invalid_records,
     "invalid_topic_names": check_invalid_topic_names,
     "fenced_instance": check_fenced_instance,
     "cooperative_commits": check_cooperative_commits, "open_txn": check_open_txn,
     "pipelined": check_pipelined}[check]()
