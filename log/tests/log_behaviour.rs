//! Behaviour of a partition log: offsets, roll, reads, indexes, retention, truncation, reopen.

mod common;

use std::sync::Arc;

use common::*;
use sluice_log::{Compression, Log, LogConfig, LogError, ManualClock, TimestampType};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        segment_index_bytes: 4096,
        ..LogConfig::default()
    }
}

#[test]
fn appends_assign_contiguous_offsets_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let a = log.append_as_leader(&batch("a", 3, TS0), 5).unwrap();
    let b = log.append_as_leader(&batch("b", 2, TS0), 5).unwrap();
    assert_eq!((a.first_offset, a.last_offset), (0, 2));
    assert_eq!((b.first_offset, b.last_offset), (3, 4));
    assert_eq!(log.log_end_offset(), 5);
    let recs = read_all(&log, 0, 1 << 20);
    assert_eq!(values(&recs), ["a-0", "a-1", "a-2", "b-0", "b-1"]);
    assert_eq!(
        recs.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    // Reading from the middle of a batch returns that whole batch.
    let (data, info) = log.read_bytes(1, 1 << 20, None).unwrap();
    assert_eq!(
        sluice_log::decode_batches(&data, 1 << 20).unwrap()[0].offset,
        0
    );
    assert_eq!(info.next_offset, 5);
    // The stored header carries the leader epoch.
    let h = sluice_log::BatchHeader::parse(&data).unwrap();
    assert_eq!(h.partition_leader_epoch, 5);
}

#[test]
fn out_of_range_reads_are_typed_errors_and_end_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append_as_leader(&batch("a", 3, TS0), 0).unwrap();
    assert!(log.read(3, 100, None).unwrap().regions.is_empty());
    assert!(matches!(
        log.read(4, 100, None),
        Err(LogError::OffsetOutOfRange {
            offset: 4,
            log_start_offset: 0,
            log_end_offset: 3
        })
    ));
}

#[test]
fn max_bytes_returns_whole_batches_but_always_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut sizes = Vec::new();
    for i in 0..5 {
        let b = batch(&format!("b{i}"), 10, TS0);
        sizes.push(b.len() as u64);
        log.append_as_leader(&b, 0).unwrap();
    }
    let info = log.read(0, 1, None).unwrap();
    assert_eq!(info.size, sizes[0]);
    assert_eq!(info.next_offset, 10);
    let info = log
        .read(0, (sizes[0] + sizes[1] + sizes[2] / 2) as usize, None)
        .unwrap();
    assert_eq!(info.size, sizes[0] + sizes[1]);
    assert_eq!(info.next_offset, 20);
    // A bound (the high watermark) hides batches at or above it.
    let info = log.read(0, 1 << 20, Some(20)).unwrap();
    assert_eq!(info.next_offset, 20);
    assert!(log.read(20, 1 << 20, Some(20)).unwrap().regions.is_empty());
}

#[test]
fn rolls_by_size_and_reads_across_segments_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..200 {
        log.append_as_leader(&batch(&format!("r{i}"), 3, TS0 + i), 0)
            .unwrap();
    }
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    for s in log.segment_base_offsets() {
        assert!(dir.path().join(format!("{s:020}.log")).exists());
        assert!(dir.path().join(format!("{s:020}.index")).exists());
        assert!(dir.path().join(format!("{s:020}.timeindex")).exists());
    }
    for offset in [0u64, 1, 2, 3, 250, 299, 300, 301, 599] {
        let (data, _) = log.read_bytes(offset, 1, None).unwrap();
        let recs = sluice_log::decode_batches(&data, 1 << 20).unwrap();
        assert!(recs.iter().any(|r| r.offset == offset), "offset {offset}");
    }
    let all = read_all(&log, 0, 1000);
    assert_eq!(all.len(), 600);
    assert!(all.windows(2).all(|w| w[1].offset == w[0].offset + 1));
}

#[test]
fn rolls_by_time_and_retention_deletes_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let config = LogConfig {
        segment_ms: 1000,
        retention_ms: 10_000,
        ..LogConfig::default()
    };
    let log = Log::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    for i in 0..5 {
        log.append_as_leader(&batch("t", 2, clock.now()), 0)
            .unwrap();
        clock.advance(1500);
        let _ = i;
    }
    assert_eq!(log.segment_count(), 5);
    log.set_high_watermark(log.log_end_offset());
    assert_eq!(log.delete_old_segments().unwrap(), 0);
    clock.advance(10_000 - 1500 * 2);
    // Segments whose newest record is older than retention.ms go, oldest first; never the active.
    let deleted = log.delete_old_segments().unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(log.log_start_offset(), 6);
    assert!(matches!(
        log.read(0, 100, None),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(&log, 6, 1 << 20).len(), 4);
    clock.advance(1_000_000);
    log.delete_old_segments().unwrap();
    assert_eq!(log.segment_count(), 1, "the active segment stays");
    assert_eq!(log.log_start_offset(), 8);
}

trait Now {
    fn now(&self) -> i64;
}
impl Now for ManualClock {
    fn now(&self) -> i64 {
        sluice_log::Clock::now_ms(self)
    }
}

#[test]
fn retention_bytes_keeps_the_log_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.retention_bytes = 10_000;
    let log = Log::open(dir.path(), config).unwrap();
    for i in 0..100 {
        log.append_as_leader(&batch(&format!("x{i}"), 3, TS0), 0)
            .unwrap();
    }
    let before = log.size_bytes();
    assert!(before > 10_000);
    log.set_high_watermark(log.log_end_offset());
    assert!(log.delete_old_segments().unwrap() > 0);
    assert!(
        log.size_bytes() <= 10_000 + 4096,
        "size {}",
        log.size_bytes()
    );
    assert!(log.log_start_offset() > 0);
    let recs = read_all(&log, log.log_start_offset(), 1 << 20);
    assert_eq!(recs.last().unwrap().offset, 299);
}

#[test]
fn retention_never_deletes_above_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.retention_bytes = 0;
    let log = Log::open(dir.path(), config).unwrap();
    for i in 0..50 {
        log.append_as_leader(&batch(&format!("x{i}"), 3, TS0), 0)
            .unwrap();
    }
    log.set_high_watermark(0);
    assert_eq!(log.delete_old_segments().unwrap(), 0);
    log.set_high_watermark(u64::MAX);
    assert!(log.delete_old_segments().unwrap() > 0);
}

#[test]
fn truncate_to_drops_the_tail_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..100 {
        log.append_as_leader(&batch(&format!("r{i}"), 2, TS0), 0)
            .unwrap();
    }
    let segs_before = log.segment_count();
    assert!(log.truncate_to(51).unwrap()); // mid-batch: batch 50..51 goes whole
    assert_eq!(log.log_end_offset(), 50);
    assert!(log.segment_count() < segs_before);
    assert!(log.high_watermark() <= 50);
    let a = log.append_as_leader(&batch("new", 2, TS0), 1).unwrap();
    assert_eq!(a.first_offset, 50);
    let recs = read_all(&log, 0, 1 << 20);
    assert_eq!(recs.len(), 52);
    assert_eq!(values(&recs[50..]), ["new-0", "new-1"]);
    assert!(!log.truncate_to(1000).unwrap());
    // Survives a reopen.
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(read_all(&log, 0, 1 << 20).len(), 52);
}

#[test]
fn truncate_fully_restarts_at_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append_as_leader(&batch("a", 5, TS0), 0).unwrap();
    log.truncate_fully_and_start_at(1000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1000));
    let a = log.append_as_leader(&batch("b", 1, TS0), 0).unwrap();
    assert_eq!(a.first_offset, 1000);
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1001));
}

#[test]
fn corrupt_and_oversized_batches_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_message_bytes: 2000,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let mut bad = batch("a", 3, TS0);
    let n = bad.len();
    bad[n - 1] ^= 0x40;
    assert!(matches!(
        log.append_as_leader(&bad, 0),
        Err(LogError::InvalidBatch { .. })
    ));
    let big = batch(&"v".repeat(3000), 1, TS0);
    assert!(matches!(
        log.append_as_leader(&big, 0),
        Err(LogError::BatchTooLarge { .. })
    ));
    let mut two = batch("a", 1, TS0);
    two.extend_from_slice(&batch("b", 1, TS0)[..20]); // trailing partial batch
    assert!(matches!(
        log.append_as_leader(&two, 0),
        Err(LogError::InvalidBatch { .. })
    ));
    let mut magic = batch("a", 1, TS0);
    magic[16] = 1;
    assert!(log.append_as_leader(&magic, 0).is_err());
    assert!(log.append_as_leader(&[], 0).is_err());
    assert!(log.append_as_leader(&[0u8; 7][..], 0).is_err());
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
}

#[test]
fn multi_batch_appends_get_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut set = batch("a", 2, TS0);
    set.extend_from_slice(&batch("b", 3, TS0));
    let info = log.append_as_leader(&set, 0).unwrap();
    assert_eq!(
        (info.first_offset, info.last_offset, info.batch_count),
        (0, 4, 2)
    );
    assert_eq!(
        values(&read_all(&log, 0, 1 << 20)),
        ["a-0", "a-1", "b-0", "b-1", "b-2"]
    );
}

#[test]
fn log_append_time_stamps_batches_and_keeps_crc_valid() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0 + 99_999));
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let log = Log::open_with_clock(dir.path(), config, clock).unwrap();
    let info = log.append_as_leader(&batch("a", 3, TS0), 0).unwrap();
    assert_eq!(info.log_append_time, Some(TS0 + 99_999));
    let (data, _) = log.read_bytes(0, 1 << 20, None).unwrap();
    sluice_log::batch::validate(&data, true).unwrap();
    let recs = sluice_log::decode_batches(&data, 1 << 20).unwrap();
    assert!(recs.iter().all(|r| r.timestamp == TS0 + 99_999));
}

/// A leader's append writes each batch's header from a copy (offsets, epoch, LogAppendTime and
/// CRC set there) and its records from the request, which it leaves as it was; a request of
/// many small batches takes more than one `pwritev` (over IOV_MAX slices).
#[test]
fn leader_appends_write_assigned_headers_and_leave_the_request_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0 + 5));
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let log = Log::open_with_clock(dir.path(), config, clock).unwrap();
    log.append_as_leader(&batch("first", 2, TS0), 7).unwrap();
    let mut request = Vec::new();
    for i in 0..700 {
        request.extend_from_slice(&batch(&format!("r{i}"), 1, TS0));
    }
    let sent = request.clone();
    let info = log.append_as_leader(&request, 7).unwrap();
    assert_eq!(request, sent, "the request buffer is not modified");
    assert_eq!((info.first_offset, info.last_offset), (2, 701));
    let (data, _) = log.read_bytes(0, 64 << 20, None).unwrap();
    let mut offset = 0i64;
    for frame in sluice_log::batch::BatchFrames::new(&data) {
        let (pos, h) = frame.unwrap();
        let stored = &data[pos..pos + h.total_size()];
        sluice_log::batch::validate(stored, true).unwrap();
        assert_eq!(h.base_offset, offset);
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(h.max_timestamp, TS0 + 5);
        offset = h.next_offset();
    }
    assert_eq!(offset, 702);
    let recs = sluice_log::decode_batches(&data, 64 << 20).unwrap();
    assert_eq!(recs.len(), 702);
    assert_eq!(values(&recs[2..3]), ["r0-0"]);
    assert_eq!(values(&recs[701..]), ["r699-0"]);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    // Record i (offset i) has timestamp TS0 + 10*i.
    for i in 0..300 {
        let mut b = sluice_log::BatchBuilder::new(Compression::None);
        b.push(&sluice_log::Record {
            timestamp: TS0 + 10 * i,
            value: Some(bytes::Bytes::from(vec![b'x'; 40])),
            ..Default::default()
        });
        log.append_as_leader(&b.build().unwrap(), 0).unwrap();
    }
    assert!(log.segment_count() > 2);
    for (ts, want) in [
        (0, 0),
        (TS0, 0),
        (TS0 + 1, 1),
        (TS0 + 10 * 150, 150),
        (TS0 + 10 * 299, 299),
    ] {
        assert_eq!(
            log.offset_for_timestamp(ts, None).unwrap().map(|(o, _)| o),
            Some(want),
            "ts {ts}"
        );
    }
    assert_eq!(
        log.offset_for_timestamp(TS0 + 10 * 299 + 1, None).unwrap(),
        None
    );
    assert_eq!(
        log.offset_for_timestamp(TS0 + 10 * 150, Some(100)).unwrap(),
        None
    );
    // Survives reopen (time index loaded from disk).
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        log.offset_for_timestamp(TS0 + 10 * 77 - 3, None).unwrap(),
        Some((77, TS0 + 770))
    );
}

#[test]
fn clean_shutdown_marker_and_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..100 {
        log.append_as_leader(&batch(&format!("r{i}"), 3, TS0), 0)
            .unwrap();
    }
    log.close().unwrap();
    assert!(log.append_as_leader(&batch("late", 1, TS0), 0).is_err());
    assert!(dir
        .path()
        .join(sluice_log::checkpoint::CLEAN_SHUTDOWN_FILE)
        .exists());
    assert_eq!(
        sluice_log::checkpoint::read_offset(
            dir.path(),
            sluice_log::checkpoint::RECOVERY_POINT_FILE
        )
        .unwrap(),
        Some(300)
    );
    // Sealed segments have trimmed indexes; the reopened active one is preallocated again.
    let bases = log.segment_base_offsets();
    drop(log);
    let first_index = dir.path().join(format!("{:020}.index", bases[0]));
    assert!(std::fs::metadata(&first_index).unwrap().len() < 4096);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert!(!dir
        .path()
        .join(sluice_log::checkpoint::CLEAN_SHUTDOWN_FILE)
        .exists());
    assert_eq!(log.log_end_offset(), 300);
    assert_eq!(log.recovery_point(), 300);
    let a = log.append_as_leader(&batch("more", 1, TS0), 0).unwrap();
    assert_eq!(a.first_offset, 300);
    assert_eq!(read_all(&log, 0, 777).len(), 301);
}

#[test]
fn flush_messages_advances_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush_messages: 4,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    log.append_as_leader(&batch("a", 3, TS0), 0).unwrap();
    assert_eq!(log.recovery_point(), 0);
    log.append_as_leader(&batch("b", 1, TS0), 0).unwrap();
    assert_eq!(log.recovery_point(), 4);
    log.append_as_leader(&batch("c", 1, TS0), 0).unwrap();
    log.flush().unwrap();
    assert_eq!(log.recovery_point(), 5);
}

#[test]
fn follower_appends_keep_offsets_and_must_be_contiguous() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = Log::open(leader_dir.path(), LogConfig::default()).unwrap();
    let follower = Log::open(follower_dir.path(), LogConfig::default()).unwrap();
    for i in 0..10 {
        leader
            .append_as_leader(&batch(&format!("l{i}"), 2, TS0), 3)
            .unwrap();
    }
    let (data, _) = leader.read_bytes(0, 1 << 20, None).unwrap();
    follower.append_as_follower(&data).unwrap();
    assert_eq!(follower.log_end_offset(), 20);
    let (copy, _) = follower.read_bytes(0, 1 << 20, None).unwrap();
    assert_eq!(copy, data, "replicated bytes are identical");
    let (again, _) = leader.read_bytes(10, 1 << 20, None).unwrap();
    assert!(matches!(
        follower.append_as_follower(&again),
        Err(LogError::NonContiguousOffset {
            expected: 20,
            got: 10
        })
    ));
}

#[test]
fn readers_run_concurrently_with_the_appender() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small_config()).unwrap());
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..2000 {
                log.append_as_leader(&batch(&format!("w{i}"), 2, TS0), 0)
                    .unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut offset = 0;
                while offset < 4000 {
                    let (data, info) = log.read_bytes(offset, 997, None).unwrap();
                    for r in sluice_log::decode_batches(&data, 1 << 20).unwrap() {
                        if r.offset >= offset {
                            assert_eq!(r.offset, offset, "no gaps, no partial batches");
                            offset += 1;
                        }
                    }
                    assert_eq!(info.next_offset, offset);
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn flush_ms_fsyncs_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let config = LogConfig {
        flush_ms: 1000,
        ..LogConfig::default()
    };
    let log = Log::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    log.append_as_leader(&batch("a", 2, TS0), 0).unwrap();
    assert_eq!(log.recovery_point(), 0);
    assert!(!log.flush_if_due().unwrap());
    clock.advance(1001);
    assert!(log.flush_if_due().unwrap());
    assert_eq!(log.recovery_point(), 2);
    // An append after the interval flushes on the append path too.
    clock.advance(1001);
    log.append_as_leader(&batch("b", 1, TS0), 0).unwrap();
    assert_eq!(log.recovery_point(), 3);
}

#[test]
fn delete_removes_the_partition_directory() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("t-0");
    let log = Log::open(&dir, small_config()).unwrap();
    for i in 0..50 {
        log.append_as_leader(&batch(&format!("x{i}"), 3, TS0), 0)
            .unwrap();
    }
    assert!(dir.join("00000000000000000000.log").exists());
    log.delete().unwrap();
    assert!(!dir.exists());
}

#[test]
fn delete_dir_renames_at_once_and_the_log_refuses_work_but_still_reads() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("t-0");
    let mut config = small_config();
    config.cleanup_compact = true;
    let log = Log::open(&dir, config).unwrap();
    for i in 0..50 {
        log.append_as_leader(&batch(&format!("x{i}"), 3, TS0), 0)
            .unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    let doomed = log.delete_dir().unwrap();
    // Renamed aside in the same directory, Kafka's `<name>.<id>-delete`: the name is free for a
    // new partition at once.
    assert!(!dir.exists());
    assert_eq!(doomed.parent(), dir.parent());
    let name = doomed.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("t-0.") && name.ends_with(sluice_log::DELETE_SUFFIX),
        "{name}"
    );
    assert!(log.is_deleted());
    // Writes are refused as deleted; the background duties are no-ops that touch nothing.
    assert!(matches!(
        log.append_as_leader(&batch("late", 1, TS0), 0),
        Err(LogError::Deleted)
    ));
    assert!(!log.flush_if_due().unwrap());
    log.flush().unwrap();
    log.checkpoint().unwrap();
    assert_eq!(log.delete_old_segments().unwrap(), 0);
    assert!(log
        .compact(&sluice_log::CleanerOptions::default())
        .unwrap()
        .is_none());
    log.close().unwrap();
    assert!(!dir.exists(), "nothing recreated the old directory");
    // A request that already held the log still reads what it had.
    assert_eq!(log.read(0, 1 << 20, None).unwrap().next_offset, 150);
    std::fs::remove_dir_all(&doomed).unwrap();
}

/// Descriptors this process holds on files under `dir`, by extension.
fn open_files_under(dir: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed between the listing and the read
        };
        if target.starts_with(dir) {
            let ext = target
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            *out.entry(ext).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn sealed_segments_hold_no_descriptors_once_idle_and_reopen_to_serve_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..200 {
        log.append_as_leader(&batch(&format!("r{i}"), 5, TS0), 0)
            .unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    let segments = log.segment_count();
    assert!(segments >= 5, "{segments} segments");
    // Indexes are only mapped: no descriptors.
    let open = open_files_under(dir.path());
    assert_eq!(open.get("index"), None, "{open:?}");
    assert_eq!(open.get("timeindex"), None, "{open:?}");

    log.flush().unwrap();
    // Rolled segments close once their background fsync is done; the sweep closes the rest (a
    // second chance first for any used since the previous sweep).
    common::wait_until(|| {
        log.close_idle_segment_files();
        log.open_segment_files() == 1 && open_files_under(dir.path()).get("log") == Some(&1)
    });

    // Reads reopen what they need and see every record.
    let recs = read_all(&log, 0, 1 << 20);
    assert_eq!(recs.len(), 1000);
    assert_eq!(values(&recs[..2]), ["r0-0", "r0-1"]);
    assert!(log.open_segment_files() > 1);
    // Truncating into a closed sealed segment (a follower dropping a divergent tail) reopens
    // it, and appends continue after it.
    common::wait_until(|| {
        log.close_idle_segment_files();
        log.open_segment_files() == 1
    });
    log.truncate_to(102).unwrap();
    assert_eq!(log.log_end_offset(), 100);
    log.append_as_leader(&batch("after", 1, TS0), 0).unwrap();
    log.set_high_watermark(log.log_end_offset());
    let recs = read_all(&log, 0, 1 << 20);
    assert_eq!(recs.len(), 101);
    assert_eq!(values(&recs[100..]), ["after-0"]);
}

#[test]
fn a_reopened_log_holds_one_descriptor_its_active_segments_log() {
    let dir = tempfile::tempdir().unwrap();
    let segments = {
        let log = Log::open(dir.path(), small_config()).unwrap();
        for i in 0..200 {
            log.append_as_leader(&batch(&format!("r{i}"), 5, TS0), 0)
                .unwrap();
        }
        log.flush().unwrap();
        log.close().unwrap();
        log.segment_count()
    };
    assert!(segments >= 5, "{segments} segments");
    let log = Log::open(dir.path(), small_config()).unwrap();
    let open = open_files_under(dir.path());
    assert_eq!(open.get("log"), Some(&1), "{open:?}");
    assert_eq!(open.get("index"), None, "{open:?}");
    assert_eq!(open.get("timeindex"), None, "{open:?}");
    log.set_high_watermark(log.log_end_offset());
    assert_eq!(read_all(&log, 0, 1 << 20).len(), 1000);
}
