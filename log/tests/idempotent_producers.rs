//! Idempotent producers at the storage layer: a retried batch is answered with its original
//! offsets and not written twice — also after the log is reopened (state rebuilt from the batch
//! headers) and after a follower-style truncation; gaps and fenced epochs are refused.

mod common;

use sluice_log::{Log, LogConfig, LogError, ProducerError};

fn batch(pid: i64, epoch: i16, seq: i32, n: i32) -> bytes::BytesMut {
    common::producer_batch(pid, epoch, seq, n, false)
}

#[test]
fn a_retry_is_not_written_twice_even_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let first = log.append_as_leader(&batch(9, 0, 0, 3), 0).unwrap();
    assert_eq!((first.first_offset, first.last_offset), (0, 2));
    let second = log.append_as_leader(&batch(9, 0, 3, 2), 0).unwrap();
    assert_eq!((second.first_offset, second.last_offset), (3, 4));
    // Another producer interleaves.
    log.append_as_leader(&batch(10, 0, 0, 1), 0).unwrap();

    // The retry of the first batch: its offsets, nothing written.
    let retry = log.append_as_leader(&batch(9, 0, 0, 3), 0).unwrap();
    assert_eq!(
        (retry.first_offset, retry.last_offset, retry.bytes),
        (0, 2, 0)
    );
    assert_eq!(log.log_end_offset(), 6);

    // A gap, and an older epoch once a newer one wrote.
    assert!(matches!(
        log.append_as_leader(&batch(9, 0, 7, 1), 0),
        Err(LogError::Producer(ProducerError::OutOfOrder {
            last: 4,
            got: 7,
            ..
        }))
    ));
    log.append_as_leader(&batch(9, 1, 0, 1), 0).unwrap();
    assert!(matches!(
        log.append_as_leader(&batch(9, 0, 5, 1), 0),
        Err(LogError::Producer(ProducerError::InvalidEpoch {
            got: 0,
            current: 1,
            ..
        }))
    ));
    assert_eq!(log.log_end_offset(), 7);

    // Reopened (kill -9: no close): the state comes back from the batch headers.
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let retry = log.append_as_leader(&batch(9, 1, 0, 1), 0).unwrap();
    assert_eq!((retry.first_offset, retry.bytes), (6, 0));
    let retry = log.append_as_leader(&batch(10, 0, 0, 1), 0).unwrap();
    assert_eq!((retry.first_offset, retry.bytes), (5, 0));
    assert_eq!(log.log_end_offset(), 7);

    // A truncated batch is forgotten: sent again, it is written again.
    assert!(log.truncate_to(6).unwrap());
    let again = log.append_as_leader(&batch(9, 1, 0, 1), 0).unwrap();
    assert_eq!((again.first_offset, again.record_count), (6, 1));
}

#[test]
fn a_follower_tracks_the_leaders_producers() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(a.path(), LogConfig::default()).unwrap();
    let follower = Log::open(b.path(), LogConfig::default()).unwrap();
    leader.append_as_leader(&batch(3, 2, 0, 4), 5).unwrap();
    let (bytes, _) = leader.read_bytes(0, 1 << 20, None).unwrap();
    follower.append_as_follower(&bytes).unwrap();
    // Leadership moves: the retry reaching the new leader is still recognised.
    let retry = follower.append_as_leader(&batch(3, 2, 0, 4), 6).unwrap();
    assert_eq!(
        (retry.first_offset, retry.last_offset, retry.bytes),
        (0, 3, 0)
    );
    assert_eq!(follower.producer_states().get(3).unwrap().epoch, 2);
}

#[test]
fn two_batches_of_one_producer_in_one_request_follow_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append_as_leader(&batch(4, 0, 0, 2), 0).unwrap();
    let mut two = batch(4, 0, 2, 3);
    two.extend_from_slice(&batch(4, 0, 5, 1));
    let info = log.append_as_leader(&two, 0).unwrap();
    assert_eq!((info.first_offset, info.last_offset), (2, 5));
    // Both are remembered: the second's retry is a duplicate.
    let retry = log.append_as_leader(&batch(4, 0, 5, 1), 0).unwrap();
    assert_eq!((retry.first_offset, retry.bytes), (5, 0));
}
