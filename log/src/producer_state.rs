//! Idempotent producers' state in one partition: Kafka's `ProducerStateManager`.
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
//! Leaders check and update; followers and recovery only update (the leader decided). The state
//! is rebuilt from batch headers when a log opens or truncates ([`crate::Log`]), so it survives
//! restarts and leader changes: a retry sent to a new leader is still recognised.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;

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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first.
    pub batches: VecDeque<BatchMeta>,
    /// Max timestamp of its last batch (for expiry, later).
    pub last_timestamp: i64,
}

/// Why a producer's batch is refused.
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
}

/// What the leader should do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not from an idempotent producer, or next in its sequence: write it.
    Append,
    /// A retry of this batch, already written: answer with its offsets.
    Duplicate(BatchMeta),
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
}

impl ProducerStates {
    pub fn new() -> ProducerStates {
        ProducerStates::default()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
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
        Ok(Check::Append)
    }

    /// Records a batch written at its offsets (leader, follower or recovery).
    pub fn update(&mut self, h: &BatchHeader) {
        if !is_idempotent(h) {
            return;
        }
        let e = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        e.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_seq(h.base_sequence, h.last_offset_delta),
            first_offset: h.base_offset.max(0) as u64,
            last_offset: h.last_offset().max(0) as u64,
        });
        while e.batches.len() > BATCHES_KEPT {
            e.batches.pop_front();
        }
        e.last_timestamp = h.max_timestamp;
    }

    pub fn clear(&mut self) {
        self.producers.clear();
    }
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
        s.update(&b0);
        let b1 = header(7, 0, 15, 3, 105);
        assert_eq!(s.check(&b1), Ok(Check::Append));
        s.update(&b1);
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
        s2.update(&header(7, 1, 0, 1, 108));
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
            s.update(&header(1, 0, i, 1, i64::from(i)));
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
        w.update(&header(2, 0, i32::MAX - 1, 2, 0));
        assert_eq!(w.get(2).unwrap().batches[0].last_seq, i32::MAX);
        assert_eq!(w.check(&header(2, 0, 0, 1, -1)), Ok(Check::Append));
    }
}
