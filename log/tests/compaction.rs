//! Log compaction: latest value per key, tombstone expiry, dirty-ratio and lag gating, offsets kept,
//! and crash safety of the segment swap.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use sluice_log::{
    BatchBuilder, CleanerOptions, Clock, Compression, Log, LogConfig, ManualClock, Record,
};

fn config() -> LogConfig {
    let mut c = LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        segment_index_bytes: 4096,
        ..LogConfig::default()
    };
    c.set("cleanup.policy", "compact").unwrap();
    c
}

/// Appends one batch of (key, value) records; `None` values are tombstones.
fn put(log: &Log, clock: &ManualClock, kvs: &[(&str, Option<&str>)], codec: Compression) {
    let mut b = BatchBuilder::new(codec);
    for (k, v) in kvs {
        b.push(&Record {
            timestamp: clock.now_ms(),
            key: Some(Bytes::from(k.to_string())),
            value: v.map(|v| Bytes::from(v.to_string())),
            headers: Vec::new(),
        });
    }
    log.append_as_leader(&b.build().unwrap(), 0).unwrap();
    log.set_high_watermark(log.log_end_offset());
}

/// key -> (offset, value) of every record in the log.
fn contents(log: &Log) -> Vec<(u64, String, Option<String>)> {
    read_all(log, log.log_start_offset(), 1 << 20)
        .into_iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
            )
        })
        .collect()
}

#[test]
fn many_updates_per_key_shrink_to_the_latest_value_at_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let log = Log::open_with_clock(dir.path(), config(), clock.clone()).unwrap();
    let mut model: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let codecs = [Compression::None, Compression::Lz4, Compression::Zstd];
    for round in 0..60 {
        let kvs: Vec<(String, String)> = (0..5)
            .map(|i| (format!("k{}", (round * 5 + i) % 8), format!("v{round}-{i}")))
            .collect();
        let first = log.log_end_offset();
        let refs: Vec<(&str, Option<&str>)> = kvs
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_str())))
            .collect();
        put(&log, &clock, &refs, codecs[round % 3]);
        for (i, (k, v)) in kvs.iter().enumerate() {
            model.insert(k.clone(), (first + i as u64, v.clone()));
        }
    }
    let before = log.size_bytes();
    let leo = log.log_end_offset();
    let stats = log
        .compact(&CleanerOptions::default())
        .unwrap()
        .expect("dirty log gets compacted");
    assert!(
        stats.records_removed > 0 && stats.segments_rewritten > 0,
        "{stats:?}"
    );
    assert!(
        log.size_bytes() < before,
        "{} -> {}",
        before,
        log.size_bytes()
    );
    assert_eq!(
        log.log_end_offset(),
        leo,
        "compaction never moves the log end"
    );
    // Every key's latest value survives at its original offset; older values of keys updated
    // again are gone from the cleaned (non-active) segments.
    let after = contents(&log);
    for (k, (off, v)) in &model {
        assert!(
            after
                .iter()
                .any(|(o, kk, vv)| o == off && kk == k && vv.as_deref() == Some(v.as_str())),
            "latest {k}={v}@{off} missing"
        );
    }
    // In the cleaned (sealed) segments each key appears once: at its latest offset there. As in
    // Kafka, a version superseded only by a record in the active segment waits for the next pass.
    let active_base = *log.segment_base_offsets().last().unwrap();
    let sealed: Vec<&(u64, String, Option<String>)> =
        after.iter().filter(|(o, _, _)| *o < active_base).collect();
    let mut seen = std::collections::HashSet::new();
    for (o, k, _) in &sealed {
        assert!(
            seen.insert(k.clone()),
            "key {k} appears twice in cleaned segments (again at {o})"
        );
    }
    assert!(
        after.windows(2).all(|w| w[0].0 < w[1].0),
        "offsets increase"
    );
    // A second pass right away has nothing dirty to do.
    assert_eq!(log.compact(&CleanerOptions::default()).unwrap(), None);
    // The compacted log survives a crash-restart (recovery accepts the offset gaps) and a clean one.
    drop(log);
    let log = Log::open_with_clock(dir.path(), config(), clock.clone()).unwrap();
    assert_eq!(contents(&log), after);
    log.close().unwrap();
    drop(log);
    let log = Log::open_with_clock(dir.path(), config(), clock).unwrap();
    assert_eq!(contents(&log), after);
}

#[test]
fn tombstones_vanish_after_delete_retention_ms() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let mut c = config();
    c.set("delete.retention.ms", "60000").unwrap();
    c.set("min.cleanable.dirty.ratio", "0").unwrap();
    let log = Log::open_with_clock(dir.path(), c, clock.clone()).unwrap();
    put(
        &log,
        &clock,
        &[("a", Some("1")), ("b", Some("1"))],
        Compression::None,
    );
    put(&log, &clock, &[("a", None)], Compression::None);
    // Fill past the tombstone so it sits in a sealed (cleanable) segment.
    for i in 0..40 {
        put(
            &log,
            &clock,
            &[("filler", Some(&format!("{i:0>60}")))],
            Compression::None,
        );
    }
    log.compact(&CleanerOptions::default()).unwrap();
    let c1 = contents(&log);
    assert!(
        c1.iter().any(|(_, k, v)| k == "a" && v.is_none()),
        "a fresh tombstone is kept"
    );
    assert!(
        !c1.iter().any(|(_, k, v)| k == "a" && v.is_some()),
        "the value it deletes is gone"
    );
    assert!(c1.iter().any(|(_, k, _)| k == "b"));
    clock.advance(60_001);
    // New dirty data (enough to seal a segment) triggers the next pass, which drops the tombstone.
    for i in 0..40 {
        put(
            &log,
            &clock,
            &[("filler", Some(&format!("{i:0>61}")))],
            Compression::None,
        );
    }
    log.compact(&CleanerOptions::default())
        .unwrap()
        .expect("compacts again");
    let c2 = contents(&log);
    assert!(
        !c2.iter().any(|(_, k, _)| k == "a"),
        "the expired tombstone is dropped: {c2:?}"
    );
    assert!(c2.iter().any(|(_, k, _)| k == "b"));
}

#[test]
fn dirty_ratio_and_compaction_lag_hold_cleaning_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let mut c = config();
    c.set("min.compaction.lag.ms", "10000").unwrap();
    let log = Log::open_with_clock(dir.path(), c, clock.clone()).unwrap();
    for i in 0..40 {
        put(
            &log,
            &clock,
            &[("k", Some(&format!("{i:0>60}")))],
            Compression::None,
        );
    }
    assert_eq!(
        log.compact(&CleanerOptions::default()).unwrap(),
        None,
        "records younger than min.compaction.lag.ms stay"
    );
    clock.advance(10_001);
    put(&log, &clock, &[("k", Some("last"))], Compression::None);
    assert!(log.compact(&CleanerOptions::default()).unwrap().is_some());
    // Non-compacted topics are never compacted.
    let dir2 = tempfile::tempdir().unwrap();
    let plain = Log::open(dir2.path(), LogConfig::default()).unwrap();
    assert_eq!(plain.compact(&CleanerOptions::default()).unwrap(), None);
}

#[test]
fn a_once_compacted_log_recovers_after_switching_to_delete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let log = Log::open_with_clock(dir.path(), config(), clock.clone()).unwrap();
    for i in 0..80 {
        put(
            &log,
            &clock,
            &[(&format!("k{}", i % 3), Some(&format!("{i:0>40}")))],
            Compression::None,
        );
    }
    log.compact(&CleanerOptions::default())
        .unwrap()
        .expect("compacted");
    let compacted = contents(&log);
    drop(log);
    // Forget what was flushed so every segment is scanned, and recover under cleanup.policy=delete:
    // the offset gaps compaction left are not damage.
    std::fs::remove_file(dir.path().join(sluice_log::checkpoint::RECOVERY_POINT_FILE)).unwrap();
    let plain = LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        segment_index_bytes: 4096,
        ..LogConfig::default()
    };
    let log = Log::open_with_clock(dir.path(), plain, clock).unwrap();
    assert_eq!(contents(&log), compacted);
}

#[test]
fn a_crash_mid_clean_leaves_a_consistent_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let log = Log::open_with_clock(dir.path(), config(), clock.clone()).unwrap();
    for i in 0..80 {
        put(
            &log,
            &clock,
            &[(&format!("k{}", i % 4), Some(&format!("{i:0>40}")))],
            Compression::None,
        );
    }
    let before = contents(&log);
    let bases = log.segment_base_offsets();
    drop(log);
    // Crash after writing the cleaned file but before the swap: the leftover is discarded.
    let first = dir.path().join(format!("{:020}.log", bases[0]));
    std::fs::write(
        format!("{}.cleaned", first.display()),
        b"half-written garbage",
    )
    .unwrap();
    // Crash after removing the old indexes but before the rename: indexes are rebuilt.
    std::fs::remove_file(dir.path().join(format!("{:020}.index", bases[1]))).unwrap();
    std::fs::remove_file(dir.path().join(format!("{:020}.timeindex", bases[1]))).unwrap();
    let log = Log::open_with_clock(dir.path(), config(), clock.clone()).unwrap();
    assert!(!std::path::Path::new(&format!("{}.cleaned", first.display())).exists());
    assert_eq!(contents(&log), before);
    assert!(dir.path().join(format!("{:020}.index", bases[1])).exists());
    // And a real pass still works afterwards.
    assert!(log.compact(&CleanerOptions::default()).unwrap().is_some());
    let after = contents(&log);
    for k in 0..4 {
        let key = format!("k{k}");
        let last = before.iter().rev().find(|(_, kk, _)| *kk == key).unwrap();
        assert!(after.contains(last), "latest {key} kept");
    }
}

#[test]
fn a_small_offset_map_cleans_in_several_passes_to_the_same_result() {
    let clock = Arc::new(ManualClock::new(TS0));
    let mut c = config();
    // Keep cleaning while anything is dirty, so the passes run to the end.
    c.set("min.cleanable.dirty.ratio", "0").unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let logs: Vec<Log> = dirs
        .iter()
        .map(|d| Log::open_with_clock(d.path(), c.clone(), clock.clone()).unwrap())
        .collect();
    // 150 keys, each written three times, ten records per batch.
    for round in 0..3 {
        for chunk in 0..15 {
            let kvs: Vec<(String, String)> = (0..10)
                .map(|i| {
                    let k = chunk * 10 + i;
                    (format!("key-{k:03}"), format!("v{round}-{k}"))
                })
                .collect();
            let refs: Vec<(&str, Option<&str>)> = kvs
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .collect();
            for log in &logs {
                put(log, &clock, &refs, Compression::None);
            }
        }
    }
    let unbounded = &logs[0];
    unbounded
        .compact(&CleanerOptions::default())
        .unwrap()
        .expect("compacts");
    // Room for 25 keys: far fewer than the 150 distinct ones.
    let small = CleanerOptions {
        io_bytes_per_sec: None,
        dedupe_buffer_bytes: 25 * ("key-000".len() + sluice_log::MAP_ENTRY_OVERHEAD),
    };
    let bounded = &logs[1];
    let mut passes = Vec::new();
    while let Some(stats) = bounded.compact(&small).unwrap() {
        passes.push(stats.cleaned_up_to);
        assert!(passes.len() < 100, "no progress: {passes:?}");
    }
    assert!(passes.len() > 3, "the map bound split the work: {passes:?}");
    assert!(
        passes.windows(2).all(|w| w[0] < w[1]),
        "each pass starts where the last one stopped: {passes:?}"
    );
    assert_eq!(contents(bounded), contents(unbounded));
    // And a fresh unbounded pass finds nothing more to do on the bounded result.
    assert_eq!(bounded.compact(&CleanerOptions::default()).unwrap(), None);
}

/// Appends one transactional batch of producer `pid` (epoch 0, sequence `seq`).
fn txn_put(log: &Log, clock: &ManualClock, pid: i64, seq: i32, kvs: &[(&str, &str)]) {
    let mut b = BatchBuilder::new(Compression::None);
    for (k, v) in kvs {
        b.push(&Record {
            timestamp: clock.now_ms(),
            key: Some(Bytes::from(k.to_string())),
            value: Some(Bytes::from(v.to_string())),
            headers: Vec::new(),
        });
    }
    let batch = b
        .build_with(&sluice_log::BatchTemplate {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0x10, // transactional
            last_offset_delta: kvs.len() as i32 - 1,
            max_timestamp: None,
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: seq,
        })
        .unwrap();
    log.append_as_leader(&batch, 0).unwrap();
    log.set_high_watermark(log.log_end_offset());
}

fn marker(log: &Log, pid: i64, commit: bool) {
    log.append_marker(
        pid,
        0,
        sluice_log::Marker {
            commit,
            coordinator_epoch: 0,
        },
        0,
    )
    .unwrap();
    log.set_high_watermark(log.log_end_offset());
}

/// Plain records with distinct keys, enough to roll a few 2 KiB segments so what came before is
/// cleanable.
fn filler(log: &Log, clock: &ManualClock, round: usize) {
    for i in 0..40 {
        let k = format!("filler-{round}-{i}");
        put(
            log,
            clock,
            &[(&k, Some("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"))],
            Compression::None,
        );
    }
}

fn value_of(log: &Log, key: &str) -> Vec<String> {
    contents(log)
        .into_iter()
        .filter(|(_, k, _)| k == key)
        .filter_map(|(_, _, v)| v)
        .collect()
}

/// Transactions under compaction, as Kafka's cleaner treats them: an aborted transaction's
/// record never supersedes the committed value it would have replaced, and is itself removed; a
/// committed transactional record supersedes like any other; an open transaction's records are
/// left alone (the cleaner stops at the last stable offset) until its marker decides them.
#[test]
fn aborted_and_open_transactions_never_supersede_committed_values() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let mut c = config();
    c.set("min.cleanable.dirty.ratio", "0.01").unwrap();
    let log = Log::open_with_clock(dir.path(), c, clock.clone()).unwrap();
    put(
        &log,
        &clock,
        &[("a", Some("a1")), ("b", Some("b1")), ("c", Some("c1"))],
        Compression::None,
    );
    txn_put(&log, &clock, 7, 0, &[("a", "a-aborted")]);
    marker(&log, 7, false);
    txn_put(&log, &clock, 8, 0, &[("b", "b-committed")]);
    marker(&log, 8, true);
    txn_put(&log, &clock, 9, 0, &[("c", "c-open")]);
    filler(&log, &clock, 0);
    assert!(
        log.last_stable_offset() < log.log_end_offset(),
        "pid 9's transaction is open"
    );

    let stats = log
        .compact(&CleanerOptions::default())
        .unwrap()
        .expect("a pass");
    assert_eq!(stats.aborted_records_removed, 1, "{stats:?}");
    assert_eq!(
        value_of(&log, "a"),
        ["a1"],
        "the aborted write is gone, a1 kept"
    );
    assert_eq!(
        value_of(&log, "b"),
        ["b-committed"],
        "the committed write superseded b1"
    );
    assert_eq!(
        value_of(&log, "c"),
        ["c1", "c-open"],
        "nothing decided about c while its transaction is open"
    );

    // The open transaction aborts: now c-open goes and c1 stays.
    marker(&log, 9, false);
    filler(&log, &clock, 1);
    log.compact(&CleanerOptions::default())
        .unwrap()
        .expect("a pass");
    assert_eq!(value_of(&log, "c"), ["c1"]);
    assert_eq!(value_of(&log, "a"), ["a1"]);
    assert_eq!(value_of(&log, "b"), ["b-committed"]);

    // And it all holds after a reopen (markers kept: the producers' transactions stay closed).
    drop(log);
    let log = Log::open_with_clock(
        dir.path(),
        {
            let mut c = config();
            c.set("min.cleanable.dirty.ratio", "0.01").unwrap();
            c
        },
        clock.clone(),
    )
    .unwrap();
    log.set_high_watermark(log.log_end_offset());
    assert_eq!(log.last_stable_offset(), log.log_end_offset());
    assert_eq!(value_of(&log, "a"), ["a1"]);
    assert_eq!(value_of(&log, "c"), ["c1"]);
}

/// Offsets of the control batches (transaction markers) in the log.
fn markers(log: &Log) -> Vec<u64> {
    let (data, _) = log
        .read_bytes(log.log_start_offset(), 1 << 24, None)
        .unwrap();
    sluice_log::batch::BatchFrames::new(&data)
        .map(|f| f.unwrap().1)
        .filter(|h| h.is_control())
        .map(|h| h.base_offset as u64)
        .collect()
}

/// Producer-state snapshot offsets in the log's directory, ascending.
fn snapshot_offsets(log: &Log) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(log.dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "snapshot").then_some(())?;
            p.file_stem()?.to_str()?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// Appends filler until the log has rolled `n` more segments.
fn roll(log: &Log, clock: &ManualClock, n: usize) {
    let target = log.segment_count() + n;
    let mut i = 0;
    while log.segment_count() < target {
        let k = format!("roll-{}-{i}", log.log_end_offset());
        put(
            log,
            clock,
            &[(&k, Some("yyyyyyyyyyyyyyyy"))],
            Compression::None,
        );
        i += 1;
    }
}

/// Kafka's rule for markers under compaction: a marker goes once nothing of its transaction is
/// left before it and it is older than `delete.retention.ms`; one whose transaction still has
/// records stays (a replay must see the transaction end), and so does one above the oldest
/// producer snapshot (a restart from that snapshot would replay the transaction's start without
/// its end, and the last stable offset would wait there for good).
#[test]
fn markers_go_once_their_transaction_left_nothing_and_delete_retention_passed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let cfg = || {
        let mut c = config();
        c.set("min.cleanable.dirty.ratio", "0.01").unwrap();
        c.set("delete.retention.ms", "60000").unwrap();
        c
    };
    let log = Log::open_with_clock(dir.path(), cfg(), clock.clone()).unwrap();
    txn_put(&log, &clock, 7, 0, &[("k", "v1")]);
    marker(&log, 7, true); // its data is superseded by pid 8's: the marker may go
    txn_put(&log, &clock, 8, 0, &[("k", "v2")]);
    marker(&log, 8, true); // v2 stays: the marker stays
    txn_put(&log, &clock, 9, 0, &[("z", "aborted")]);
    marker(&log, 9, false); // aborted data removed: the marker may go
    for round in 0..4 {
        filler(&log, &clock, round);
    }
    txn_put(&log, &clock, 11, 0, &[("q", "q1")]);
    marker(&log, 11, true); // superseded below, but above the oldest snapshot: stays
    put(&log, &clock, &[("q", Some("q2"))], Compression::None);
    roll(&log, &clock, 1);
    let m = markers(&log);
    assert_eq!(m.len(), 4, "{m:?}");

    // Within delete.retention.ms every marker stays, whatever its transaction left.
    let stats = log
        .compact(&CleanerOptions::default())
        .unwrap()
        .expect("a pass");
    assert_eq!(stats.markers_removed, 0, "{stats:?}");
    assert_eq!(markers(&log), m);
    assert_eq!(value_of(&log, "k"), ["v2"]);
    assert_eq!(value_of(&log, "q"), ["q2"]);

    // Past it (and with new dirty data, so there is a pass).
    clock.advance(120_000);
    filler(&log, &clock, 10);
    roll(&log, &clock, 1);
    let snapshots = snapshot_offsets(&log);
    let oldest = *snapshots.first().expect("snapshots at the rolls");
    assert!(m[2] < oldest && oldest <= m[3], "{m:?} {snapshots:?}");
    let stats = log
        .compact(&CleanerOptions::default())
        .unwrap()
        .expect("a pass");
    assert_eq!(stats.markers_removed, 2, "{stats:?}");
    assert_eq!(
        markers(&log),
        [m[1], m[3]],
        "pid 7's and pid 9's markers went"
    );
    assert_eq!(value_of(&log, "k"), ["v2"]);
    assert_eq!(value_of(&log, "z"), Vec::<String>::new());
    assert_eq!(log.last_stable_offset(), log.log_end_offset());

    // A restart, and a replay of the whole log (no snapshot, as a new replica's), both end with
    // every transaction closed.
    drop(log);
    for remove_snapshots in [false, true] {
        if remove_snapshots {
            for e in std::fs::read_dir(dir.path()).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "snapshot") {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        let log = Log::open_with_clock(dir.path(), cfg(), clock.clone()).unwrap();
        log.set_high_watermark(log.log_end_offset());
        assert_eq!(
            log.last_stable_offset(),
            log.log_end_offset(),
            "no transaction left open (snapshots removed: {remove_snapshots})"
        );
        assert_eq!(value_of(&log, "k"), ["v2"]);
    }
}
