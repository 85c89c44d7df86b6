//! Transaction state in `__transaction_state`, in Kafka's own schemas so Kafka tools can read it:
//!
//! - key `TransactionLogKey` v0: `int16 version=0, string transactional_id`;
//! - value `TransactionLogValue` v0: `int16 version=0, int64 producer_id, int16 producer_epoch,
//!   int32 transaction_timeout_ms, int8 transaction_status, int32 count` of partitions as `string
//!   topic, int32 count, int32 partition…`, then `int64 last_update_timestamp_ms, int64
//!   start_timestamp_ms`; a null value (tombstone) forgets the id.
//!
//! Strings are `int16 length + UTF-8`, big-endian. An id's records go to partition
//! `abs(javaHashCode(id)) % 50`; the topic is compacted, so the latest record per id survives.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use sluice_proto::routing::{
    transaction_partition as partition_for, TRANSACTION_STATE_PARTITIONS as PARTITIONS,
    TRANSACTION_STATE_TOPIC as TOPIC,
};

/// Kafka's `TransactionState`, with its stored ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnStatus {
    pub fn id(self) -> i8 {
        match self {
            TxnStatus::Empty => 0,
            TxnStatus::Ongoing => 1,
            TxnStatus::PrepareCommit => 2,
            TxnStatus::PrepareAbort => 3,
            TxnStatus::CompleteCommit => 4,
            TxnStatus::CompleteAbort => 5,
            TxnStatus::Dead => 6,
            TxnStatus::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnStatus> {
        Some(match id {
            0 => TxnStatus::Empty,
            1 => TxnStatus::Ongoing,
            2 => TxnStatus::PrepareCommit,
            3 => TxnStatus::PrepareAbort,
            4 => TxnStatus::CompleteCommit,
            5 => TxnStatus::CompleteAbort,
            6 => TxnStatus::Dead,
            7 => TxnStatus::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions use (Kafka's `TransactionState.name`).
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
            TxnStatus::Dead => "Dead",
            TxnStatus::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub const ALL: [TxnStatus; 8] = [
        TxnStatus::Empty,
        TxnStatus::Ongoing,
        TxnStatus::PrepareCommit,
        TxnStatus::PrepareAbort,
        TxnStatus::CompleteCommit,
        TxnStatus::CompleteAbort,
        TxnStatus::Dead,
        TxnStatus::PrepareEpochFence,
    ];
}

/// A transactional id's state as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    pub start_ms: i64,
}

fn put_string(b: &mut BytesMut, s: &str) {
    let n = s.len().min(i16::MAX as usize);
    b.put_i16(n as i16);
    b.put_slice(&s.as_bytes()[..n]);
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

pub fn encode_key(transactional_id: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    put_string(&mut b, transactional_id);
    b.freeze()
}

pub fn decode_key(mut b: Bytes) -> Option<String> {
    if b.remaining() < 2 || b.get_i16() != 0 {
        return None;
    }
    get_string(&mut b)
}

pub fn encode_value(r: &TxnRecord) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i64(r.producer_id);
    b.put_i16(r.producer_epoch);
    b.put_i32(r.timeout_ms);
    b.put_i8(r.status.id());
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in &r.partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    b.put_i32(by_topic.len() as i32);
    for (t, ps) in by_topic {
        put_string(&mut b, t);
        b.put_i32(ps.len() as i32);
        for p in ps {
            b.put_i32(p);
        }
    }
    b.put_i64(r.last_update_ms);
    b.put_i64(r.start_ms);
    b.freeze()
}

pub fn decode_value(mut b: Bytes) -> Option<TxnRecord> {
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16();
    if version != 0 && version != 1 {
        return None;
    }
    if b.remaining() < 8 + 2 + 4 + 1 + 4 {
        return None;
    }
    let producer_id = b.get_i64();
    let producer_epoch = b.get_i16();
    let timeout_ms = b.get_i32();
    let status = TxnStatus::from_id(b.get_i8())?;
    let topics = b.get_i32();
    let mut partitions = BTreeSet::new();
    for _ in 0..topics.max(0) {
        let t = get_string(&mut b)?;
        if b.remaining() < 4 {
            return None;
        }
        let n = b.get_i32();
        for _ in 0..n.max(0) {
            if b.remaining() < 4 {
                return None;
            }
            partitions.insert((t.clone(), b.get_i32()));
        }
    }
    if b.remaining() < 16 {
        return None;
    }
    Some(TxnRecord {
        producer_id,
        producer_epoch,
        timeout_ms,
        status,
        partitions,
        last_update_ms: b.get_i64(),
        start_ms: b.get_i64(),
    })
}

/// Every transactional id's latest state in one `__transaction_state` partition.
pub fn replay_partition(
    p: &sluice_replication::Partition,
) -> Result<BTreeMap<String, TxnRecord>, sluice_log::LogError> {
    let mut out = BTreeMap::new();
    let log = p.log();
    let mut offset = log.log_start_offset();
    loop {
        let (data, info) = log.read_bytes(offset, 1 << 20, None)?;
        if info.regions.is_empty() {
            break;
        }
        let records = sluice_log::decode_batches(&data, 64 << 20).map_err(|e| {
            sluice_log::LogError::Corrupt {
                path: log.dir().to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        for r in records {
            let Some(id) = r.key.and_then(decode_key) else {
                continue;
            };
            match r.value.and_then(decode_value) {
                Some(v) => {
                    out.insert(id, v);
                }
                None => {
                    out.remove(&id);
                }
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
    fn records_round_trip_in_kafkas_layout() {
        let k = encode_key("tx");
        assert_eq!(&k[..], &[0, 0, 0, 2, b't', b'x']);
        assert_eq!(decode_key(k).as_deref(), Some("tx"));
        let r = TxnRecord {
            producer_id: 7,
            producer_epoch: 3,
            timeout_ms: 60_000,
            status: TxnStatus::PrepareCommit,
            partitions: [
                ("a".to_string(), 0),
                ("a".to_string(), 2),
                ("b".to_string(), 1),
            ]
            .into(),
            last_update_ms: 11,
            start_ms: 10,
        };
        let v = encode_value(&r);
        // version, pid, epoch, timeout, status, then 2 topics.
        assert_eq!(&v[..2], &[0, 0]);
        assert_eq!(v[16], 2, "PrepareCommit's id");
        assert_eq!(&v[17..21], &[0, 0, 0, 2]);
        assert_eq!(decode_value(v), Some(r));
        assert_eq!(decode_value(Bytes::from_static(&[0, 0, 1])), None);
        for s in TxnStatus::ALL {
            assert_eq!(TxnStatus::from_id(s.id()), Some(s));
        }
    }
}
