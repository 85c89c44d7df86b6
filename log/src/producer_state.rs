//! Idempotent and transactional producers' state in one partition: Kafka's
//! `ProducerStateManager`.
//!
//! Per producer id: its epoch and the sequence ranges and offsets of its last five batches
//! ([`BATCHES_KEPT`], Kafka's `NUM_BATCHES_TO_RETAIN`, as many as a client keeps in flight). A
//! batch from an idempotent producer (producer id ≥ 0, base sequence ≥ 0) is checked before it
//! is written:
//! - an epoch older than the producer's is refused (`INVALID_PRODUCER_EPOCH`);
//! - a batch equal to one of the last five (same epoch, same first and last sequence) is a retry
//!   of a batch already written: it is not written again, and the producer is answered with the
//!   original offsets;
//! - otherwise its first sequence must follow the producer's last one (`OUT_OF_ORDER_SEQUENCE`),
//!   or be 0 for a new epoch; a producer not known here (new, or its batches deleted by
//!   retention) may start anywhere, as Kafka accepts.
//!
//! Transactions: a producer's first transactional batch opens its transaction here (its offset is
//! the transaction's first offset); the transaction marker (a control batch, written by the
//! transaction coordinator through [`crate::Log::append_marker`]) closes it as committed or
//! aborted. The earliest first offset of an open transaction bounds the last stable offset
//! (LSO): `read_committed` consumers read below it. Aborted transactions go to the partition's
//! aborted-transaction index (`txn_index.rs`) so fetches can tell consumers what to drop.
//!
//! Leaders check and update; followers and recovery only update (the leader decided). The state
//! is snapshotted when a segment rolls and on clean shutdown ([`ProducerStates::to_snapshot`],
//! `<offset>.snapshot` beside the segments) and rebuilt from the newest snapshot plus the batches
//! after it when a log opens or truncates ([`crate::Log`]), so it survives restarts and leader
//! changes: a retry sent to a new leader is still recognised and an open transaction stays open.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::batch::BatchHeader;
use crate::compression::Compression;
use crate::record::{BatchBuilder, BatchTemplate, Record};

/// Batches remembered per producer.
pub const BATCHES_KEPT: usize = 5;

/// One batch of a producer, as remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first.
    pub batches: VecDeque<BatchMeta>,
    /// Max timestamp of its last batch or marker: the producer expires
    /// `producer.id.expiration.ms` after it.
    pub last_timestamp: i64,
    /// The epoch of the transaction coordinator that wrote its last marker (-1: none yet).
    pub coordinator_epoch: i32,
    /// First offset of its open transaction in this partition.
    pub txn_first_offset: Option<u64>,
}

impl Default for ProducerEntry {
    fn default() -> Self {
        ProducerEntry {
            epoch: 0,
            batches: VecDeque::new(),
            last_timestamp: -1,
            coordinator_epoch: -1,
            txn_first_offset: None,
        }
    }
}

/// Why a producer's batch (or a marker for it) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("producer {producer_id}: epoch {got} is older than its current epoch {current}")]
    InvalidEpoch {
        producer_id: i64,
        got: i16,
        current: i16,
    },
    #[error(
        "producer {producer_id}: sequence {got} does not follow {last} (epoch {epoch}): \
         a batch is missing"
    )]
    OutOfOrder {
        producer_id: i64,
        epoch: i16,
        last: i32,
        got: i32,
    },
    #[error(
        "producer {producer_id}: a non-transactional batch while its transaction (from offset \
         {txn_first_offset}) is open"
    )]
    InvalidTxnState {
        producer_id: i64,
        txn_first_offset: u64,
    },
    #[error(
        "producer {producer_id}: marker from coordinator epoch {got}, older than {current}: \
         a newer transaction coordinator owns it"
    )]
    CoordinatorFenced {
        producer_id: i64,
        got: i32,
        current: i32,
    },
}

/// What the leader should do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not from an idempotent producer, or next in its sequence: write it.
    Append,
    /// A retry of this batch, already written: answer with its offsets.
    Duplicate(BatchMeta),
}

/// A transaction marker: the one record of a control batch (Kafka's `EndTransactionMarker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A transaction a marker closed in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    /// The marker's offset.
    pub last_offset: u64,
    pub commit: bool,
}

const CONTROL_ATTRIBUTES: i16 = 0x10 | 0x20; // transactional | control

/// The control batch of a transaction marker, as Kafka writes it: attributes transactional and
/// control, the producer's id and epoch, no sequence, one record with key `int16 version=0,
/// int16 type` (0 abort, 1 commit) and value `int16 version=0, int32 coordinator_epoch`.
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    timestamp: i64,
) -> BytesMut {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(i16::from(marker.commit));
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(0);
    value.put_i32(marker.coordinator_epoch);
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        timestamp,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Vec::new(),
    });
    let template = BatchTemplate {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: CONTROL_ATTRIBUTES,
        last_offset_delta: 0,
        max_timestamp: None,
        producer_id,
        producer_epoch,
        base_sequence: -1,
    };
    match b.build_with(&template) {
        Some(batch) => batch,
        None => unreachable!("one record was pushed"),
    }
}

/// The marker of a control batch (`batch` starts at its baseOffset field); `None` if it does not
/// hold one (a control type this broker does not know, or damaged bytes).
pub fn parse_marker(batch: &Bytes) -> Option<Marker> {
    let records = crate::record::decode_batch(batch, 1 << 20).ok()?;
    let r = records.first()?;
    let mut key = r.key.clone()?;
    let mut value = r.value.clone()?;
    if key.remaining() < 4 || value.remaining() < 6 {
        return None;
    }
    let _version = key.get_i16();
    let kind = key.get_i16();
    let _value_version = value.get_i16();
    let coordinator_epoch = value.get_i32();
    match kind {
        0 | 1 => Some(Marker {
            commit: kind == 1,
            coordinator_epoch,
        }),
        _ => None,
    }
}

/// The last sequence of a batch starting at `first` with `count` records (sequences wrap at
/// `i32::MAX` to 0, as Kafka's).
fn last_seq(first: i32, last_offset_delta: i32) -> i32 {
    ((i64::from(first) + i64::from(last_offset_delta)) % (i64::from(i32::MAX) + 1)) as i32
}

fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

fn is_idempotent(h: &BatchHeader) -> bool {
    h.producer_id >= 0 && h.base_sequence >= 0
}

#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions: first offset → producer id.
    ongoing: BTreeMap<u64, i64>,
    /// Transactions closed by a marker the high watermark has not passed yet: still unstable.
    completed: VecDeque<CompletedTxn>,
}

impl ProducerStates {
    pub fn new() -> ProducerStates {
        ProducerStates::default()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every producer, by id.
    pub fn entries(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(id, e)| (*id, e))
    }

    /// The leader's check of an incoming batch (offsets not assigned yet).
    pub fn check(&self, h: &BatchHeader) -> Result<Check, ProducerError> {
        if !is_idempotent(h) {
            return Ok(Check::Append);
        }
        let first = h.base_sequence;
        let last = last_seq(first, h.last_offset_delta);
        let Some(e) = self.producers.get(&h.producer_id) else {
            return Ok(Check::Append);
        };
        if h.producer_epoch < e.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id: h.producer_id,
                got: h.producer_epoch,
                current: e.epoch,
            });
        }
        if h.producer_epoch == e.epoch {
            if let Some(dup) = e
                .batches
                .iter()
                .find(|b| b.first_seq == first && b.last_seq == last)
            {
                return Ok(Check::Duplicate(*dup));
            }
            if let Some(prev) = e.batches.back() {
                if !in_sequence(prev.last_seq, first) {
                    return Err(ProducerError::OutOfOrder {
                        producer_id: h.producer_id,
                        epoch: e.epoch,
                        last: prev.last_seq,
                        got: first,
                    });
                }
            }
        } else if first != 0 {
            // A new epoch starts its sequence over.
            return Err(ProducerError::OutOfOrder {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                last: -1,
                got: first,
            });
        }
        if let (false, Some(txn_first_offset)) = (h.is_transactional(), e.txn_first_offset) {
            return Err(ProducerError::InvalidTxnState {
                producer_id: h.producer_id,
                txn_first_offset,
            });
        }
        Ok(Check::Append)
    }

    /// The leader's check of a marker about to be written: it may not come from an older
    /// producer epoch or an older coordinator than the last marker's.
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), ProducerError> {
        let Some(e) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if producer_epoch < e.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id,
                got: producer_epoch,
                current: e.epoch,
            });
        }
        if coordinator_epoch < e.coordinator_epoch {
            return Err(ProducerError::CoordinatorFenced {
                producer_id,
                got: coordinator_epoch,
                current: e.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Records a batch written at its offsets (leader, follower or recovery); `marker` is the
    /// marker a control batch holds. Returns the transaction a marker closed.
    pub fn update(&mut self, h: &BatchHeader, marker: Option<Marker>) -> Option<CompletedTxn> {
        if h.is_control() {
            let m = marker?;
            if h.producer_id < 0 {
                return None;
            }
            let offset = h.base_offset.max(0) as u64;
            let e = self.producers.entry(h.producer_id).or_default();
            if h.producer_epoch > e.epoch {
                // A marker from a bumped epoch (the coordinator fenced the producer).
                e.epoch = h.producer_epoch;
                e.batches.clear();
            }
            e.coordinator_epoch = m.coordinator_epoch;
            e.last_timestamp = h.max_timestamp;
            // Kafka's rule: a marker with no open transaction closes an empty one at itself.
            let first_offset = e.txn_first_offset.take().unwrap_or(offset);
            self.ongoing.remove(&first_offset);
            let done = CompletedTxn {
                producer_id: h.producer_id,
                first_offset,
                last_offset: offset,
                commit: m.commit,
            };
            self.completed.push_back(done);
            return Some(done);
        }
        // A transactional batch without a sequence is a coordinator's (TxnOffsetCommit's
        // offsets in `__consumer_offsets`): it opens the transaction but has no sequence to
        // track.
        let sequenced = is_idempotent(h);
        if !(sequenced || (h.is_transactional() && h.producer_id >= 0)) {
            return None;
        }
        let e = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        if sequenced {
            e.batches.push_back(BatchMeta {
                first_seq: h.base_sequence,
                last_seq: last_seq(h.base_sequence, h.last_offset_delta),
                first_offset: h.base_offset.max(0) as u64,
                last_offset: h.last_offset().max(0) as u64,
            });
            while e.batches.len() > BATCHES_KEPT {
                e.batches.pop_front();
            }
        }
        e.last_timestamp = h.max_timestamp;
        if h.is_transactional() && e.txn_first_offset.is_none() {
            let first = h.base_offset.max(0) as u64;
            e.txn_first_offset = Some(first);
            self.ongoing.insert(first, h.producer_id);
        }
        None
    }

    /// The first offset a `read_committed` consumer may not read yet, given the high watermark:
    /// the first offset of the earliest transaction still open, or closed by a marker not yet
    /// below the high watermark. `None` when every transaction is settled.
    pub fn first_unstable_offset(&mut self, high_watermark: u64) -> Option<u64> {
        self.completed.retain(|t| t.last_offset >= high_watermark);
        let open = self.ongoing.keys().next().copied();
        let closing = self.completed.iter().map(|t| t.first_offset).min();
        match (open, closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The first offset of the earliest open transaction.
    pub fn first_open_offset(&self) -> Option<u64> {
        self.ongoing.keys().next().copied()
    }

    /// Open transactions: (producer id, first offset), oldest first.
    pub fn open_transactions(&self) -> Vec<(i64, u64)> {
        self.ongoing.iter().map(|(o, p)| (*p, *o)).collect()
    }

    /// Forgets producers idle for `expiration_ms` (by their last batch's timestamp) with no open
    /// transaction, as Kafka's `producer.id.expiration.ms` does. Returns how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.txn_first_offset.is_some() || now_ms.saturating_sub(e.last_timestamp) < expiration_ms
        });
        before - self.producers.len()
    }

    pub fn clear(&mut self) {
        *self = ProducerStates::default();
    }

    /// The snapshot file's bytes: `int16 version=1, uint32 crc32c` of the rest, `int32 count`,
    /// then per producer `int64 id, int16 epoch, int64 last_timestamp, int32 coordinator_epoch,
    /// int64 txn_first_offset (-1: none), int8 batches` and per batch `int32 first_seq, int32
    /// last_seq, int64 first_offset, int64 last_offset`. (Kafka's snapshot keeps only the last
    /// batch; this one keeps all five so every retry in flight is still recognised.)
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut body = BytesMut::with_capacity(4 + self.producers.len() * 64);
        body.put_i32(self.producers.len() as i32);
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.producers[id];
            body.put_i64(*id);
            body.put_i16(e.epoch);
            body.put_i64(e.last_timestamp);
            body.put_i32(e.coordinator_epoch);
            body.put_i64(e.txn_first_offset.map_or(-1, |o| o as i64));
            body.put_i8(e.batches.len() as i8);
            for b in &e.batches {
                body.put_i32(b.first_seq);
                body.put_i32(b.last_seq);
                body.put_i64(b.first_offset as i64);
                body.put_i64(b.last_offset as i64);
            }
        }
        let mut out = Vec::with_capacity(6 + body.len());
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads [`ProducerStates::to_snapshot`] bytes; `None` if they are damaged or of an unknown
    /// version.
    pub fn from_snapshot(bytes: &[u8]) -> Option<ProducerStates> {
        if bytes.len() < 6 || i16::from_be_bytes([bytes[0], bytes[1]]) != SNAPSHOT_VERSION {
            return None;
        }
        let crc = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let mut b = &bytes[6..];
        if crc32c::crc32c(b) != crc {
            return None;
        }
        let mut states = ProducerStates::new();
        let count = read(&mut b, |b| b.get_i32())?;
        for _ in 0..count.max(0) {
            let id = read(&mut b, |b| b.get_i64())?;
            let mut e = ProducerEntry {
                epoch: read(&mut b, |b| b.get_i16())?,
                last_timestamp: read(&mut b, |b| b.get_i64())?,
                coordinator_epoch: read(&mut b, |b| b.get_i32())?,
                ..ProducerEntry::default()
            };
            let txn = read(&mut b, |b| b.get_i64())?;
            if txn >= 0 {
                e.txn_first_offset = Some(txn as u64);
                states.ongoing.insert(txn as u64, id);
            }
            let n = read(&mut b, |b| b.get_i8())?;
            for _ in 0..n.max(0) {
                e.batches.push_back(BatchMeta {
                    first_seq: read(&mut b, |b| b.get_i32())?,
                    last_seq: read(&mut b, |b| b.get_i32())?,
                    first_offset: read(&mut b, |b| b.get_i64())?.max(0) as u64,
                    last_offset: read(&mut b, |b| b.get_i64())?.max(0) as u64,
                });
            }
            states.producers.insert(id, e);
        }
        Some(states)
    }
}

const SNAPSHOT_VERSION: i16 = 1;

/// Reads one fixed-size value, or `None` when the buffer is too short.
fn read<T>(b: &mut &[u8], get: impl FnOnce(&mut &[u8]) -> T) -> Option<T> {
    (b.remaining() >= std::mem::size_of::<T>()).then(|| get(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, records: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: records,
        }
    }

    #[test]
    fn sequences_follow_retries_are_duplicates_gaps_and_old_epochs_are_refused() {
        let mut s = ProducerStates::new();
        // Unknown producer: any first sequence (its earlier batches may have been deleted).
        let b0 = header(7, 0, 10, 5, 100);
        assert_eq!(s.check(&b0), Ok(Check::Append));
        s.update(&b0, None);
        let b1 = header(7, 0, 15, 3, 105);
        assert_eq!(s.check(&b1), Ok(Check::Append));
        s.update(&b1, None);
        // The retry of either is a duplicate with its original offsets.
        assert_eq!(
            s.check(&header(7, 0, 10, 5, -1)),
            Ok(Check::Duplicate(BatchMeta {
                first_seq: 10,
                last_seq: 14,
                first_offset: 100,
                last_offset: 104
            }))
        );
        assert!(
            matches!(s.check(&header(7, 0, 15, 3, -1)), Ok(Check::Duplicate(b)) if b.first_offset == 105)
        );
        // A gap, or a batch overlapping differently, is out of order.
        assert!(matches!(
            s.check(&header(7, 0, 19, 1, -1)),
            Err(ProducerError::OutOfOrder {
                last: 17,
                got: 19,
                ..
            })
        ));
        assert!(matches!(
            s.check(&header(7, 0, 16, 2, -1)),
            Err(ProducerError::OutOfOrder { .. })
        ));
        // Epochs: older refused; newer must start at 0.
        let mut s2 = s.clone();
        s2.update(&header(7, 1, 0, 1, 108), None);
        assert!(matches!(
            s2.check(&header(7, 0, 18, 1, -1)),
            Err(ProducerError::InvalidEpoch {
                got: 0,
                current: 1,
                ..
            })
        ));
        assert!(matches!(
            s.check(&header(7, 1, 5, 1, -1)),
            Err(ProducerError::OutOfOrder { .. })
        ));
        assert_eq!(s.check(&header(7, 1, 0, 1, -1)), Ok(Check::Append));
        // Non-idempotent batches are not checked.
        assert_eq!(s.check(&header(-1, -1, -1, 4, -1)), Ok(Check::Append));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::new();
        for i in 0..7 {
            s.update(&header(1, 0, i, 1, i64::from(i)), None);
        }
        assert_eq!(s.get(1).unwrap().batches.len(), BATCHES_KEPT);
        assert!(
            s.check(&header(1, 0, 1, 1, -1)).is_err(),
            "too old to recognise"
        );
        assert!(matches!(
            s.check(&header(1, 0, 2, 1, -1)),
            Ok(Check::Duplicate(_))
        ));
        let mut w = ProducerStates::new();
        w.update(&header(2, 0, i32::MAX - 1, 2, 0), None);
        assert_eq!(w.get(2).unwrap().batches[0].last_seq, i32::MAX);
        assert_eq!(w.check(&header(2, 0, 0, 1, -1)), Ok(Check::Append));
    }

    #[test]
    fn a_snapshot_reads_back_as_the_live_state() {
        let mut s = ProducerStates::new();
        let mut offset = 0i64;
        for i in 0..40i64 {
            let pid = i % 7;
            let seq = s
                .get(pid)
                .and_then(|e| e.batches.back())
                .map_or(0, |b| b.last_seq + 1);
            let mut h = header(pid, (i % 3) as i16 / 2, seq, 2, offset);
            if pid % 2 == 0 {
                h.attributes = 0x10; // transactional
            }
            s.update(&h, None);
            offset += 2;
            if i % 9 == 8 {
                let mut m = header(pid, h.producer_epoch, -1, 1, offset);
                m.attributes = 0x30;
                let marker = Marker {
                    commit: i % 2 == 0,
                    coordinator_epoch: i as i32,
                };
                assert!(s.update(&m, Some(marker)).is_some());
                offset += 1;
            }
        }
        let back = ProducerStates::from_snapshot(&s.to_snapshot()).unwrap();
        let sorted = |s: &ProducerStates| {
            let mut v: Vec<(i64, ProducerEntry)> =
                s.entries().map(|(i, e)| (i, e.clone())).collect();
            v.sort_by_key(|(i, _)| *i);
            v
        };
        assert_eq!(sorted(&back), sorted(&s));
        assert_eq!(back.open_transactions(), s.open_transactions());
        assert!(!s.open_transactions().is_empty());
        let mut bytes = s.to_snapshot();
        bytes[10] ^= 1;
        assert!(
            ProducerStates::from_snapshot(&bytes).is_none(),
            "a damaged snapshot is refused"
        );
    }
}
