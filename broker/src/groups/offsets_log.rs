//! Group state in `__consumer_offsets`, in Kafka's own schemas so Kafka tools can read it:
//!
//! - committed offsets: key `OffsetCommitKey` v1 (`int16 version=1, string group, string topic,
//!   int32 partition`), value `OffsetCommitValue` v3 (`int16 version=3, int64 offset, int32
//!   leader_epoch, string metadata, int64 commit_timestamp`; v0/v1 values are read back too);
//! - group membership: key `GroupMetadataKey` v2 (`int16 version=2, string group`), value
//!   `GroupMetadataValue` v3 (`int16 version=3, string protocol_type, int32 generation, nullable
//!   string protocol, nullable string leader, int64 current_state_timestamp, int32 count` of
//!   members: `string member_id, nullable string group_instance_id, string client_id, string
//!   client_host, int32 rebalance_timeout, int32 session_timeout, bytes subscription, bytes
//!   assignment`; v0–v2 are read back too).
//!
//! Strings are `int16 length + UTF-8` (−1 for null), bytes `int32 length`, big-endian like the
//! rest of the protocol. A group's records go to partition `abs(javaHashCode(group)) % 50`, as in
//! Kafka; the topic is compacted, so the latest record per key is what survives, and a null value
//! (tombstone) deletes the key.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_log::{BatchBuilder, Compression, Record};
use sluice_replication::Acks;

use super::Committed;
use crate::requests::admin::Admin;
use crate::topics::TopicError;

pub use sluice_proto::routing::{
    group_partition as partition_for, CONSUMER_OFFSETS_PARTITIONS as PARTITIONS,
    CONSUMER_OFFSETS_TOPIC as TOPIC,
};

fn put_string(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len().min(i16::MAX as usize) as i16);
    b.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_nullable_string(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

fn get_string(b: &mut Bytes) -> Option<String> {
    get_nullable_string(b)?
}

/// `Some(None)` for a null string, `None` for malformed bytes.
fn get_nullable_string(b: &mut Bytes) -> Option<Option<String>> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_i16();
    if n == -1 {
        return Some(None);
    }
    if n < 0 || b.remaining() < n as usize {
        return None;
    }
    String::from_utf8(b.split_to(n as usize).to_vec())
        .ok()
        .map(Some)
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_i32();
    if n < 0 {
        return Some(Bytes::new());
    }
    (b.remaining() >= n as usize).then(|| b.split_to(n as usize))
}

fn get_i32(b: &mut Bytes) -> Option<i32> {
    (b.remaining() >= 4).then(|| b.get_i32())
}

/// A group's membership as it is stored (Kafka's GroupMetadataValue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// When the group entered its current state (ms since the epoch), -1 if unknown.
    pub state_timestamp: i64,
    pub members: Vec<MemberSnapshot>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberSnapshot {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

pub fn encode_group_key(group: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(2);
    put_string(&mut b, group);
    b.freeze()
}

pub fn encode_group_value(g: &GroupSnapshot) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(3);
    put_string(&mut b, &g.protocol_type);
    b.put_i32(g.generation);
    put_nullable_string(&mut b, g.protocol.as_deref());
    put_nullable_string(&mut b, g.leader.as_deref());
    b.put_i64(g.state_timestamp);
    b.put_i32(g.members.len() as i32);
    for m in &g.members {
        put_string(&mut b, &m.id);
        put_nullable_string(&mut b, m.instance_id.as_deref());
        put_string(&mut b, &m.client_id);
        put_string(&mut b, &m.client_host);
        b.put_i32(m.rebalance_timeout_ms);
        b.put_i32(m.session_timeout_ms);
        put_bytes(&mut b, &m.subscription);
        put_bytes(&mut b, &m.assignment);
    }
    b.freeze()
}

/// Versions 0–3 (version 4 is a flexible encoding Kafka writes only with newer metadata
/// versions; it is not read here).
pub fn decode_group_value(mut b: Bytes) -> Option<GroupSnapshot> {
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16();
    if !(0..=3).contains(&version) {
        return None;
    }
    let protocol_type = get_string(&mut b)?;
    let generation = get_i32(&mut b)?;
    let protocol = get_nullable_string(&mut b)?;
    let leader = get_nullable_string(&mut b)?;
    let state_timestamp = if version >= 2 {
        (b.remaining() >= 8).then(|| b.get_i64())?
    } else {
        -1
    };
    let count = get_i32(&mut b)?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        let id = get_string(&mut b)?;
        let instance_id = if version >= 3 {
            get_nullable_string(&mut b)?
        } else {
            None
        };
        let client_id = get_string(&mut b)?;
        let client_host = get_string(&mut b)?;
        let first = get_i32(&mut b)?;
        // v0 has only the session timeout, which then also bounds rebalances.
        let (rebalance_timeout_ms, session_timeout_ms) = if version >= 1 {
            (first, get_i32(&mut b)?)
        } else {
            (first, first)
        };
        members.push(MemberSnapshot {
            id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription: get_bytes(&mut b)?,
            assignment: get_bytes(&mut b)?,
        });
    }
    Some(GroupSnapshot {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

/// A `__consumer_offsets` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Offset(String, String, i32),
    Group(String),
}

pub fn encode_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(1);
    put_string(&mut b, group);
    put_string(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

pub fn encode_value(c: &Committed) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(3);
    b.put_i64(c.offset);
    b.put_i32(c.leader_epoch);
    put_string(&mut b, &c.metadata);
    b.put_i64(c.timestamp);
    b.freeze()
}

/// An offset-commit key (versions 0 and 1) or a group-metadata key (version 2); `None` for
/// anything else.
pub fn decode_key(mut b: Bytes) -> Option<Key> {
    if b.remaining() < 2 {
        return None;
    }
    match b.get_i16() {
        0 | 1 => {
            let group = get_string(&mut b)?;
            let topic = get_string(&mut b)?;
            (b.remaining() >= 4).then(|| Key::Offset(group, topic, b.get_i32()))
        }
        2 => Some(Key::Group(get_string(&mut b)?)),
        _ => None,
    }
}

pub fn decode_value(mut b: Bytes) -> Option<Committed> {
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16();
    if b.remaining() < 8 {
        return None;
    }
    let offset = b.get_i64();
    let leader_epoch = if version >= 3 {
        if b.remaining() < 4 {
            return None;
        }
        b.get_i32()
    } else {
        -1
    };
    let metadata = get_string(&mut b)?;
    let timestamp = if b.remaining() >= 8 { b.get_i64() } else { -1 };
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        timestamp,
    })
}

/// The `__consumer_offsets` topic, created (compacted, 50 partitions) on first use, through the
/// controller like any topic.
pub async fn ensure_topic(
    admin: &Admin,
) -> Result<std::sync::Arc<crate::topics::Topic>, TopicError> {
    admin
        .ensure_internal_topic(
            TOPIC,
            PARTITIONS,
            admin.config.offsets_topic_replication_factor,
        )
        .await
}

pub fn offset_record(
    group: &str,
    topic: &str,
    partition: i32,
    c: Option<&Committed>,
) -> (Bytes, Option<Bytes>) {
    (encode_key(group, topic, partition), c.map(encode_value))
}

/// The record storing (or, with `None`, deleting) a group's membership.
pub fn group_record(group: &str, g: Option<&GroupSnapshot>) -> (Bytes, Option<Bytes>) {
    (encode_group_key(group), g.map(encode_group_value))
}

/// Appends one record per committed offset to the group's partition, as one batch.
pub async fn append(
    admin: &Admin,
    group: &str,
    offsets: &[(String, i32, Committed)],
) -> Result<(), String> {
    let records = offsets
        .iter()
        .map(|(t, p, c)| offset_record(group, t, *p, Some(c)))
        .collect();
    append_records(admin, group, records).await
}

/// Appends these key/value records, as one batch, to the group's partition.
/// Offsets of a transaction (TxnOffsetCommit): one transactional batch of the producer, settled
/// by the transaction's marker on this partition. No sequence number: the coordinator writes it,
/// as Kafka's does.
pub async fn append_transactional(
    admin: &Admin,
    group: &str,
    (producer_id, producer_epoch): (i64, i16),
    offsets: &[(String, i32, Committed)],
) -> Result<(), String> {
    let records = offsets
        .iter()
        .map(|(t, p, c)| offset_record(group, t, *p, Some(c)))
        .collect();
    let template = sluice_log::BatchTemplate {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: 0x10, // transactional
        last_offset_delta: offsets.len() as i32 - 1,
        max_timestamp: None,
        producer_id,
        producer_epoch,
        base_sequence: -1,
    };
    append_batch(admin, group, records, Some(template)).await
}

pub async fn append_records(
    admin: &Admin,
    group: &str,
    records: Vec<(Bytes, Option<Bytes>)>,
) -> Result<(), String> {
    append_batch(admin, group, records, None).await
}

async fn append_batch(
    admin: &Admin,
    group: &str,
    records: Vec<(Bytes, Option<Bytes>)>,
    template: Option<sluice_log::BatchTemplate>,
) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    let topic = ensure_topic(admin).await.map_err(|e| e.to_string())?;
    let partition = topic
        .partition(partition_for(group))
        .map_err(|e| e.to_string())?
        .clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut b = BatchBuilder::new(Compression::None);
    for (key, value) in records {
        b.push(&Record {
            timestamp: now,
            key: Some(key),
            value,
            headers: Vec::new(),
        });
    }
    let built = match template {
        Some(t) => b.build_with(&t),
        None => b.build(),
    };
    let Some(batch) = built else {
        return Ok(());
    };
    partition
        // Commits are acks=all (Kafka's offsets.commit.required.acks): a commit acknowledged
        // to a client survives the coordinator's broker.
        .append(&batch, Acks::All, std::time::Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What `__consumer_offsets` holds: the latest record per key, tombstones applied.
/// A transaction's offsets not settled by a marker yet: producer id → (group, topic, partition,
/// offset).
pub type PendingOffsets = BTreeMap<i64, Vec<(String, String, i32, Committed)>>;

#[derive(Debug, Default)]
pub struct Replayed {
    pub offsets: BTreeMap<(String, String, i32), Committed>,
    pub groups: BTreeMap<String, GroupSnapshot>,
    /// Transactional offsets whose transaction is still open at the end of the partition.
    pub pending: PendingOffsets,
}

impl Replayed {
    fn apply(&mut self, r: sluice_log::StoredRecord) {
        match r.key.and_then(decode_key) {
            Some(Key::Offset(g, t, p)) => match r.value.and_then(decode_value) {
                Some(c) => {
                    self.offsets.insert((g, t, p), c);
                }
                None => {
                    self.offsets.remove(&(g, t, p));
                }
            },
            Some(Key::Group(g)) => match r.value.and_then(decode_group_value) {
                Some(snapshot) => {
                    self.groups.insert(g, snapshot);
                }
                None => {
                    self.groups.remove(&g);
                }
            },
            None => {}
        }
    }
}

/// Everything a `__consumer_offsets` partition holds: plain records apply in order;
/// transactional ones wait for their producer's marker (COMMIT applies them, ABORT drops them).
pub fn replay_partition(p: &sluice_replication::Partition) -> Result<Replayed, String> {
    let mut out = Replayed::default();
    let log = p.log();
    let mut offset = log.log_start_offset();
    loop {
        let (data, info) = log
            .read_bytes(offset, 1 << 20, None)
            .map_err(|e| e.to_string())?;
        if info.regions.is_empty() {
            break;
        }
        for frame in sluice_log::batch::BatchFrames::new(&data) {
            let (pos, h) = match frame {
                Ok(f) => f,
                Err(sluice_log::BatchError::Truncated { .. }) => break,
                Err(e) => return Err(e.to_string()),
            };
            let batch = data.slice(pos..pos + h.total_size());
            if h.is_control() {
                let marker = sluice_log::producer_state::parse_marker(&batch);
                if let (Some(m), Some(records)) = (marker, out.pending.remove(&h.producer_id)) {
                    if m.commit {
                        for (g, t, p, c) in records {
                            out.offsets.insert((g, t, p), c);
                        }
                    }
                }
                continue;
            }
            let records = sluice_log::decode_batch(&batch, 64 << 20).map_err(|e| e.to_string())?;
            if h.is_transactional() {
                let pending = out.pending.entry(h.producer_id).or_default();
                for r in records {
                    if let (Some(Key::Offset(g, t, p)), Some(c)) =
                        (r.key.and_then(decode_key), r.value.and_then(decode_value))
                    {
                        pending.push((g, t, p, c));
                    }
                }
                continue;
            }
            for r in records {
                out.apply(r);
            }
        }
        offset = info.next_offset;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip_in_kafkas_layout() {
        let k = encode_key("g", "orders", 7);
        assert_eq!(
            &k[..],
            &[0, 1, 0, 1, b'g', 0, 6, b'o', b'r', b'd', b'e', b'r', b's', 0, 0, 0, 7]
        );
        assert_eq!(
            decode_key(k),
            Some(Key::Offset("g".into(), "orders".into(), 7))
        );
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            timestamp: 1_700_000_000_000,
        };
        assert_eq!(decode_value(encode_value(&c)), Some(c));
        assert_eq!(
            decode_key(Bytes::from_static(&[0, 2, 0, 1, b'g'])),
            Some(Key::Group("g".into())),
            "group metadata key"
        );
        assert_eq!(decode_key(Bytes::from_static(&[0, 9, 0, 1, b'g'])), None);
        assert_eq!(decode_value(Bytes::from_static(&[0, 3, 1])), None);
    }

    #[test]
    fn group_metadata_round_trips_in_kafkas_layout() {
        let g = GroupSnapshot {
            protocol_type: "consumer".into(),
            generation: 4,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_timestamp: 1_700_000_000_000,
            members: vec![MemberSnapshot {
                id: "m1".into(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "/h".into(),
                rebalance_timeout_ms: 60_000,
                session_timeout_ms: 10_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"as"),
            }],
        };
        let v = encode_group_value(&g);
        let mut expected = vec![0, 3, 0, 8];
        expected.extend(b"consumer");
        expected.extend([0, 0, 0, 4, 0, 5]);
        expected.extend(b"range");
        expected.extend([0, 2, b'm', b'1']);
        expected.extend(1_700_000_000_000i64.to_be_bytes());
        expected.extend([
            0, 0, 0, 1, 0, 2, b'm', b'1', 0xff, 0xff, 0, 1, b'c', 0, 2, b'/', b'h',
        ]);
        expected.extend(60_000i32.to_be_bytes());
        expected.extend(10_000i32.to_be_bytes());
        expected.extend([0, 0, 0, 3, b's', b'u', b'b', 0, 0, 0, 2, b'a', b's']);
        assert_eq!(&v[..], &expected[..]);
        assert_eq!(decode_group_value(v.clone()), Some(g));
        // Truncated values are refused, not misread.
        for cut in 0..v.len() {
            assert_eq!(decode_group_value(v.slice(..cut)), None, "cut at {cut}");
        }
        assert_eq!(&encode_group_key("g")[..], &[0, 2, 0, 1, b'g']);
    }

    #[test]
    fn partition_matches_kafkas_hashing() {
        // Java: "test".hashCode() = 3556498, "hello".hashCode() = 99162322, "".hashCode() = 0,
        // "polygenelubricants".hashCode() = Integer.MIN_VALUE (Utils.abs maps it to 0).
        assert_eq!(partition_for("test"), 3_556_498 % 50);
        assert_eq!(partition_for("hello"), 99_162_322 % 50);
        assert_eq!(partition_for(""), 0);
        assert_eq!(partition_for("polygenelubricants"), 0);
    }
}
