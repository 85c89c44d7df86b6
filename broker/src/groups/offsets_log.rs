//! Committed offsets in `__consumer_offsets`, in Kafka's own schemas so Kafka tools can read them:
//!
//! - key, `OffsetCommitKey` v1: `int16 version=1, string group, string topic, int32 partition`
//! - value, `OffsetCommitValue` v3: `int16 version=3, int64 offset, int32 leader_epoch,
//!   string metadata, int64 commit_timestamp` (v1 values are also read back)
//!
//! Strings are `int16 length + UTF-8`, big-endian like the rest of the protocol. A group's records
//! go to partition `abs(javaHashCode(group)) % 50`, as in Kafka; the topic is compacted, so the
//! latest commit per (group, topic, partition) is what survives.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_log::{BatchBuilder, Compression, Record};
use sluice_replication::Acks;

use super::Committed;
use crate::topics::{TopicError, TopicManager};

pub const TOPIC: &str = "__consumer_offsets";
pub const PARTITIONS: u32 = 50;

/// Java's `String.hashCode`, then Kafka's `Utils.abs`, modulo the partition count.
pub fn partition_for(group: &str) -> u32 {
    // Java chars are unsigned UTF-16 code units.
    let h = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs as u32 % PARTITIONS
}

fn put_string(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len().min(i16::MAX as usize) as i16);
    b.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn get_string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_i16();
    if n < 0 || b.remaining() < n as usize {
        return None;
    }
    String::from_utf8(b.split_to(n as usize).to_vec()).ok()
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

/// `(group, topic, partition)` of an offset-commit key; `None` for other record kinds (group
/// metadata keys are version 2).
pub fn decode_key(mut b: Bytes) -> Option<(String, String, i32)> {
    if b.remaining() < 2 {
        return None;
    }
    match b.get_i16() {
        0 | 1 => {
            let group = get_string(&mut b)?;
            let topic = get_string(&mut b)?;
            (b.remaining() >= 4).then(|| (group, topic, b.get_i32()))
        }
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

/// The `__consumer_offsets` topic, created (compacted, 50 partitions) on first use.
fn ensure_topic(topics: &TopicManager) -> Result<std::sync::Arc<crate::topics::Topic>, TopicError> {
    match topics.get(TOPIC) {
        Ok(t) => Ok(t),
        Err(TopicError::UnknownTopic(_)) => {
            let configs = [
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("segment.bytes".to_string(), (100u32 << 20).to_string()),
            ]
            .into();
            match topics.create(TOPIC, PARTITIONS, 1, configs) {
                Ok(t) => Ok(t),
                Err(TopicError::AlreadyExists(_)) => topics.get(TOPIC),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Appends one record per committed offset to the group's partition, as one batch.
pub async fn append(
    topics: &TopicManager,
    group: &str,
    offsets: &[(String, i32, Committed)],
) -> Result<(), String> {
    let records = offsets
        .iter()
        .map(|(t, p, c)| (encode_key(group, t, *p), Some(encode_value(c))))
        .collect();
    append_records(topics, group, records).await
}

/// Appends tombstones (null values) for these keys: compaction then removes the commits.
pub async fn append_tombstones(
    topics: &TopicManager,
    group: &str,
    keys: &[(String, i32)],
) -> Result<(), String> {
    let records = keys
        .iter()
        .map(|(t, p)| (encode_key(group, t, *p), None))
        .collect();
    append_records(topics, group, records).await
}

async fn append_records(
    topics: &TopicManager,
    group: &str,
    records: Vec<(Bytes, Option<Bytes>)>,
) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    let topic = tokio::task::block_in_place(|| ensure_topic(topics)).map_err(|e| e.to_string())?;
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
    let Some(mut batch) = b.build() else {
        return Ok(());
    };
    partition
        .append(&mut batch, Acks::Leader)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every committed offset in `__consumer_offsets`, latest per key, tombstones applied.
pub fn replay(topics: &TopicManager) -> Result<BTreeMap<(String, String, i32), Committed>, String> {
    let mut out = BTreeMap::new();
    let Ok(topic) = topics.get(TOPIC) else {
        return Ok(out);
    };
    for p in &topic.partitions {
        let log = p.log();
        let mut offset = log.log_start_offset();
        loop {
            let (data, info) = log
                .read_bytes(offset, 1 << 20, Some(p.high_watermark()))
                .map_err(|e| e.to_string())?;
            if info.regions.is_empty() {
                break;
            }
            for r in sluice_log::decode_batches(&data, 64 << 20).map_err(|e| e.to_string())? {
                let Some(key) = r.key.and_then(decode_key) else {
                    continue;
                };
                match r.value.and_then(decode_value) {
                    Some(c) => {
                        out.insert(key, c);
                    }
                    None => {
                        out.remove(&key);
                    }
                }
            }
            offset = info.next_offset;
        }
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
        assert_eq!(decode_key(k), Some(("g".into(), "orders".into(), 7)));
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            timestamp: 1_700_000_000_000,
        };
        assert_eq!(decode_value(encode_value(&c)), Some(c));
        assert_eq!(
            decode_key(Bytes::from_static(&[0, 2, 0, 1, b'g'])),
            None,
            "group metadata key"
        );
        assert_eq!(decode_value(Bytes::from_static(&[0, 3, 1])), None);
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
