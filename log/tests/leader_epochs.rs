//! The leader-epoch cache kept by the log: epochs observed on append (as leader and as
//! follower), dropped by truncation, persisted, rebuilt from the batches when the checkpoint is
//! missing.

use sluice_log::{BatchBuilder, Compression, EpochEntry, Log, LogConfig, Record};

fn batch(n: usize) -> bytes::BytesMut {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..n {
        b.push(&Record {
            timestamp: 1,
            key: None,
            value: Some(format!("v{i}").into()),
            headers: vec![],
        });
    }
    b.build().unwrap()
}

fn e(epoch: i32, start_offset: u64) -> EpochEntry {
    EpochEntry {
        epoch,
        start_offset,
    }
}

#[test]
fn epochs_follow_appends_truncation_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append_as_leader(&batch(3), 0).unwrap(); // 0..=2
    log.append_as_leader(&batch(2), 0).unwrap(); // 3..=4
    log.append_as_leader(&batch(2), 3).unwrap(); // 5..=6
    log.append_as_leader(&batch(1), 4).unwrap(); // 7
    assert_eq!(log.epoch_entries(), vec![e(0, 0), e(3, 5), e(4, 7)]);
    assert_eq!(log.end_offset_for_epoch(0), Some((0, 5)));
    assert_eq!(log.end_offset_for_epoch(2), Some((0, 5)));
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 7)));
    assert_eq!(log.end_offset_for_epoch(9), Some((4, 8)));

    // A follower truncating its divergent tail drops the epochs that started there.
    log.truncate_to(7).unwrap();
    assert_eq!(log.epoch_entries(), vec![e(0, 0), e(3, 5)]);
    assert_eq!(log.end_offset_for_epoch(4), Some((3, 7)));

    // Appends as a follower carry the leader's epochs.
    let other = tempfile::tempdir().unwrap();
    let leader = Log::open(other.path(), LogConfig::default()).unwrap();
    for _ in 0..7 {
        leader.append_as_leader(&batch(1), 3).unwrap();
    }
    leader.append_as_leader(&batch(1), 7).unwrap(); // offset 7, epoch 7
    let (tail, _) = leader.read_bytes(7, 1 << 20, None).unwrap();
    log.append_as_follower(&tail).unwrap();
    assert_eq!(log.epoch_entries(), vec![e(0, 0), e(3, 5), e(7, 7)]);

    // Persisted across a clean restart and a crash.
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.epoch_entries(), vec![e(0, 0), e(3, 5), e(7, 7)]);
    drop(log);

    // Without the checkpoint (a log from before it existed) it is rebuilt from the batches.
    std::fs::remove_file(dir.path().join("leader-epoch-checkpoint")).unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.epoch_entries(), vec![e(0, 0), e(3, 5), e(7, 7)]);
    log.truncate_fully_and_start_at(100).unwrap();
    assert!(log.epoch_entries().is_empty());
}
