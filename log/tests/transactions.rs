//! Transactions at the storage layer: open transactions bound the last stable offset, markers
//! close them, aborted ones are indexed for `read_committed` fetches — and all of it survives a
//! kill (reopen without close) through producer snapshots, many segments later, and truncation.

mod common;

use sluice_log::{Log, LogConfig, LogError, Marker, ProducerError};

fn batch(pid: i64, epoch: i16, seq: i32, n: i32, transactional: bool) -> bytes::BytesMut {
    common::producer_batch(pid, epoch, seq, n, transactional)
}

fn plain(n: i32) -> bytes::BytesMut {
    batch(-1, -1, -1, n, false)
}

const COMMIT: Marker = Marker {
    commit: true,
    coordinator_epoch: 0,
};
const ABORT: Marker = Marker {
    commit: false,
    coordinator_epoch: 0,
};

fn settle(log: &Log) {
    log.set_high_watermark(log.log_end_offset());
}

#[test]
fn markers_close_transactions_and_aborted_ones_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append_as_leader(&batch(1, 0, 0, 3, true), 0).unwrap(); // 0..=2
    log.append_as_leader(&plain(1), 0).unwrap(); // 3
    log.append_as_leader(&batch(2, 0, 0, 2, true), 0).unwrap(); // 4..=5
    settle(&log);
    assert_eq!(log.high_watermark(), 6);
    assert_eq!(log.last_stable_offset(), 0, "pid 1's transaction is open");

    // A non-transactional batch of a producer in a transaction is refused.
    assert!(matches!(
        log.append_as_leader(&batch(2, 0, 2, 1, false), 0),
        Err(LogError::Producer(ProducerError::InvalidTxnState { .. }))
    ));

    let c = log.append_marker(1, 0, COMMIT, 0).unwrap();
    assert_eq!(c.first_offset, 6);
    assert_eq!(
        log.last_stable_offset(),
        0,
        "the commit marker is not below the high watermark yet"
    );
    settle(&log);
    assert_eq!(log.last_stable_offset(), 4, "pid 2's transaction is open");

    log.append_marker(2, 0, ABORT, 0).unwrap(); // 7
    settle(&log);
    assert_eq!(log.last_stable_offset(), 8);
    let aborted = log.aborted_transactions(0, 8);
    assert_eq!(aborted.len(), 1);
    assert_eq!(
        (
            aborted[0].producer_id,
            aborted[0].first_offset,
            aborted[0].last_offset
        ),
        (2, 4, 7)
    );
    assert!(log.aborted_transactions(8, 100).is_empty());
    assert!(log.aborted_transactions(0, 4).is_empty());

    // Fencing: a marker of an older producer epoch, or from an older coordinator.
    log.append_marker(
        2,
        1,
        Marker {
            commit: false,
            coordinator_epoch: 5,
        },
        0,
    )
    .unwrap();
    assert!(matches!(
        log.append_marker(2, 0, ABORT, 0),
        Err(LogError::Producer(ProducerError::InvalidEpoch { .. }))
    ));
    assert!(matches!(
        log.append_marker(
            2,
            1,
            Marker {
                commit: true,
                coordinator_epoch: 4
            },
            0
        ),
        Err(LogError::Producer(ProducerError::CoordinatorFenced { .. }))
    ));
    // The bumped epoch fences the producer's old batches too.
    assert!(matches!(
        log.append_as_leader(&batch(2, 0, 2, 1, true), 0),
        Err(LogError::Producer(ProducerError::InvalidEpoch { .. }))
    ));

    // Killed (no close): everything comes back from the log.
    let end = log.log_end_offset();
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.log_end_offset(), end);
    settle(&log);
    assert_eq!(log.last_stable_offset(), end);
    let aborted: Vec<(i64, u64, u64)> = log
        .aborted_transactions(0, end)
        .iter()
        .map(|a| (a.producer_id, a.first_offset, a.last_offset))
        .collect();
    assert_eq!(aborted, vec![(2, 4, 7), (2, 8, 8)]);

    // Truncating below a marker re-opens its transaction and forgets the abort.
    assert!(log.truncate_to(7).unwrap());
    settle(&log);
    assert_eq!(log.last_stable_offset(), 4);
    assert!(log.aborted_transactions(0, 100).is_empty());
}

#[test]
fn an_open_transaction_survives_many_segments_and_a_kill_through_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    log.append_as_leader(&batch(7, 3, 0, 1, true), 0).unwrap(); // offset 0, stays open
    let mut seq = 1;
    for _ in 0..400 {
        log.append_as_leader(&batch(8, 0, seq, 5, false), 0)
            .unwrap();
        seq += 5;
    }
    assert!(log.segment_count() > 5, "{}", log.segment_count());
    settle(&log);
    assert_eq!(log.last_stable_offset(), 0);
    drop(log); // joins the background snapshot writes, writes nothing else: a kill
    let log = Log::open(dir.path(), config.clone()).unwrap();
    settle(&log);
    assert_eq!(
        log.last_stable_offset(),
        0,
        "the open transaction was remembered across {} segments",
        log.segment_count()
    );
    // Producer 8's last batch is still a duplicate; producer 7 still at epoch 3.
    let retry = log
        .append_as_leader(&batch(8, 0, seq - 5, 5, false), 0)
        .unwrap();
    assert_eq!(retry.bytes, 0);
    assert_eq!(log.producer_states().get(7).unwrap().epoch, 3);
    log.append_marker(7, 3, ABORT, 0).unwrap();
    settle(&log);
    assert_eq!(log.last_stable_offset(), log.log_end_offset());
    assert_eq!(log.aborted_transactions(0, 1)[0].first_offset, 0);

    // A clean close leaves a snapshot at the log end: the next open replays nothing.
    let end = log.log_end_offset();
    log.close().unwrap();
    drop(log);
    let name = format!("{end:020}.snapshot");
    assert!(dir.path().join(&name).exists(), "{name}");
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.aborted_transactions(0, end).len(), 1);
    assert!(log
        .producer_states()
        .get(7)
        .unwrap()
        .txn_first_offset
        .is_none());
}

#[test]
fn idle_producers_expire_but_not_inside_a_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append_as_leader(&batch(1, 0, 0, 1, false), 0).unwrap();
    log.append_as_leader(&batch(2, 0, 0, 1, true), 0).unwrap();
    // Their batches' timestamps are from 2023: long idle by now.
    assert_eq!(log.expire_producers(86_400_000), 1);
    assert!(log.producer_states().get(1).is_none());
    assert!(log.producer_states().get(2).is_some());
    // An expired producer is new again: any sequence.
    log.append_as_leader(&batch(1, 0, 40, 1, false), 0).unwrap();
}
