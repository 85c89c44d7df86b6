//! Group commit: with `flush.messages=1` every append is durable when it returns, yet appends
//! that arrive while an fsync runs are not held behind it, and one later fsync covers them all.
//! (Its own test binary: the flush observer it installs is process-wide.)

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use sluice_log::{Log, LogConfig};

const WRITERS: u64 = 4;
static LOG: OnceLock<Arc<Log>> = OnceLock::new();
static FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Called after each fsync, still inside the flush: the first one holds on until every writer
/// has written its batch (or 10 s pass), as a slow disk would. Appends held behind the flush
/// (the append lock kept through the fsync) never arrive, and the test sees one flush each.
fn observe(_: Duration) {
    if FLUSHES.fetch_add(1, Ordering::SeqCst) == 0 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && LOG.get().is_some_and(|l| l.log_end_offset() < WRITERS) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn appends_during_an_fsync_share_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush_messages: 1,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(dir.path(), config).unwrap());
    let _ = LOG.set(log.clone());
    sluice_log::set_flush_observer(observe);
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let log = log.clone();
            std::thread::spawn(move || {
                let info = log
                    .append_as_leader(&batch(&format!("w{i}"), 1, 1_700_000_000_000), 0)
                    .unwrap();
                // Durable when acknowledged: flush.messages=1 still means it.
                assert!(
                    log.recovery_point() > info.last_offset,
                    "offset {} acknowledged above the recovery point {}",
                    info.last_offset,
                    log.recovery_point()
                );
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(log.log_end_offset(), WRITERS);
    assert_eq!(log.recovery_point(), WRITERS);
    // The first writer's fsync, then one for the three that wrote during it.
    assert_eq!(FLUSHES.load(Ordering::SeqCst), 2);
}
