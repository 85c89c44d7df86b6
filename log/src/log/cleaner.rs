//! Log compaction (`cleanup.policy=compact`): keep the latest record per key.
//!
//! One pass, Kafka's shape: the *dirty* section is everything appended since the last pass (from
//! the `cleaner-offset-checkpoint` to the active segment); the cleanable section is every segment
//! but the active one (and none younger than `min.compaction.lag.ms`). When the dirty share of the
//! cleanable bytes reaches `min.cleanable.dirty.ratio`, the cleaner
//!
//! 1. builds an offset map, key → latest offset, over the dirty section. The map is bounded by
//!    `CleanerOptions::dedupe_buffer_bytes` (Kafka's `log.cleaner.dedupe.buffer.size`): when it
//!    is full the pass stops mapping at that batch, cleans only up to there, and the next pass
//!    starts from that offset, so a log with more distinct keys than fit is cleaned in several
//!    passes instead of in unbounded memory;
//! 2. rewrites each cleanable segment below the mapped end, dropping records whose key has a later
//!    offset, and
//!    tombstones (null value) older than `delete.retention.ms`. A batch that loses nothing is copied
//!    byte for byte; one that loses records is rebuilt with the survivors at their original offsets
//!    (same base offset, last offset delta, codec and producer fields); one that loses everything
//!    goes.
//!
//! Transactions, as Kafka's cleaner: only the stable part of the log is cleaned (below the last
//! stable offset), because an open transaction's records may yet be aborted and must not
//! supersede anything. Records of aborted transactions (per the aborted-transaction index) are
//! never mapped — an aborted write must not remove the committed value it would have replaced —
//! and are removed; committed transactional records are compacted like any others. A control
//! batch (a COMMIT or ABORT marker) goes once nothing of its transaction is left before it —
//! every batch of the transaction removed by this or an earlier pass — and it is older than
//! `delete.retention.ms` (as a tombstone: consumers that were reading get that long to see it).
//! Kafka's rule, with one more condition: the marker lies below every producer-state snapshot
//! kept, so no restart or truncation replays the log from a snapshot taken while its
//! transaction was open (that replay would wait for the removed marker and hold the last
//! stable offset there for good).
//! 3. swaps each rewritten segment in crash-safely: the new file is written as `.log.cleaned` and
//!    fsynced, the old indexes are removed, the file is renamed over the `.log` (atomic), the
//!    directory is fsynced, and indexes are rebuilt. A crash leaves either the old segment or the
//!    new one; leftover `.cleaned` files are removed at open, and missing indexes are rebuilt.
//!
//! Offsets never change, so consumers see gaps where records were removed. A segment is rewritten
//! straight to its `.cleaned` file, batch by batch, so memory stays at one batch plus the map.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Log;
use crate::batch::BatchHeader;
use crate::checkpoint;
use crate::error::{IoContext, LogError, Result};
use crate::record::{
    decode_batch, BatchBuilder, BatchTemplate, Record, DEFAULT_DECOMPRESSED_LIMIT,
};
use crate::segment::{self, LogSegment};

/// Where the next pass's dirty section starts.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
/// Suffix of a rewritten segment not yet swapped in.
pub const CLEANED_SUFFIX: &str = ".cleaned";

/// How a pass may use the machine.
#[derive(Debug, Clone, Copy)]
pub struct CleanerOptions {
    /// Read rate cap in bytes/s; `None` for unthrottled.
    pub io_bytes_per_sec: Option<u64>,
    /// Memory for the offset map: key bytes plus [`MAP_ENTRY_OVERHEAD`] per distinct key.
    pub dedupe_buffer_bytes: usize,
}

impl Default for CleanerOptions {
    fn default() -> Self {
        CleanerOptions {
            io_bytes_per_sec: None,
            dedupe_buffer_bytes: 128 << 20,
        }
    }
}

/// What a map entry costs besides its key: the offset, the `Bytes` handle and the hash table's
/// slot and control bytes, rounded up.
pub const MAP_ENTRY_OVERHEAD: usize = 64;

/// What one compaction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Records of aborted transactions removed.
    pub aborted_records_removed: u64,
    /// Transaction markers removed (their transactions left nothing behind).
    pub markers_removed: u64,
    /// The dirty section ended here this pass (the next pass starts from it); short of the
    /// cleanable end when the offset map filled up.
    pub cleaned_up_to: u64,
}

/// Caps the cleaner's read rate.
struct Throttle<'a> {
    limit: Option<u64>,
    start: Instant,
    bytes: u64,
    /// The log's deleted flag: a pass over a partition being deleted stops at the next batch.
    deleted: &'a AtomicBool,
}

impl Throttle<'_> {
    fn account(&mut self, n: u64) -> Result<()> {
        self.bytes += n;
        if let Some(limit) = self.limit.filter(|l| *l > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / limit as f64);
            while let Some(wait) = due.checked_sub(self.start.elapsed()) {
                if self.deleted.load(Ordering::Acquire) {
                    break;
                }
                // In slices, so a deletion does not wait out a long throttle.
                std::thread::sleep(wait.min(Duration::from_millis(100)));
            }
        }
        if self.deleted.load(Ordering::Acquire) {
            return Err(LogError::Deleted);
        }
        Ok(())
    }
}

fn for_each_batch(
    seg: &LogSegment,
    mut f: impl FnMut(BatchHeader, Bytes) -> Result<()>,
) -> Result<()> {
    let limit = seg.size();
    let mut pos = 0u64;
    while let Some(h) = seg.header_at(pos, limit)? {
        let bytes = seg.read_bytes(pos, h.total_size())?;
        f(h, bytes)?;
        pos += h.total_size() as u64;
    }
    Ok(())
}

fn corrupt(seg: &LogSegment, e: impl std::fmt::Display) -> LogError {
    LogError::Corrupt {
        path: seg.log_path().to_path_buf(),
        reason: e.to_string(),
    }
}

pub(super) fn compact(log: &Log, options: &CleanerOptions) -> Result<Option<CleanStats>> {
    let config = log.config();
    if !config.cleanup_compact {
        return Ok(None);
    }
    let _maintenance = super::lock(&log.maintenance);
    if log.is_deleted() {
        return Ok(None);
    }
    let now = log.clock.now_ms();
    let segments = log.segments_snapshot();
    let Some((_active, sealed)) = segments.split_last() else {
        return Ok(None);
    };
    let cleanable: Vec<Arc<LogSegment>> = sealed
        .iter()
        .take_while(|s| {
            config.min_compaction_lag_ms <= 0
                || s.max_timestamp() <= now - config.min_compaction_lag_ms
        })
        .cloned()
        .collect();
    let Some(last) = cleanable.last() else {
        return Ok(None);
    };
    // Nothing at or past the last stable offset: an open transaction may still abort.
    let end = last.next_offset().min(log.last_stable_offset());
    let aborted = AbortedRanges::new(&log.aborted_transactions(log.log_start_offset(), end));
    let first_dirty = log.first_dirty_offset.load(Ordering::Acquire);
    let total: u64 = cleanable.iter().map(|s| s.size()).sum();
    let dirty: u64 = cleanable
        .iter()
        .filter(|s| s.next_offset() > first_dirty)
        .map(|s| s.size())
        .sum();
    if dirty == 0 || (dirty as f64) < config.min_cleanable_dirty_ratio * total as f64 {
        return Ok(None);
    }
    let mut throttle = Throttle {
        limit: options.io_bytes_per_sec,
        start: Instant::now(),
        bytes: 0,
        deleted: &log.deleted,
    };

    // 1. key -> latest offset over the dirty section, until the map's budget is spent. Whole
    //    batches only: `map_end` is the offset after the last batch mapped.
    let mut latest: HashMap<Bytes, u64> = HashMap::new();
    let mut map_bytes = 0usize;
    let mut map_end = first_dirty;
    'segments: for seg in cleanable.iter().filter(|s| s.next_offset() > first_dirty) {
        let limit = seg.size();
        let mut pos = 0u64;
        while let Some(h) = seg.header_at(pos, limit)? {
            let bytes = seg.read_bytes(pos, h.total_size())?;
            pos += h.total_size() as u64;
            throttle.account(bytes.len() as u64)?;
            let next = (h.last_offset() + 1).max(0) as u64;
            if next <= first_dirty {
                continue;
            }
            if h.base_offset.max(0) as u64 >= end {
                break 'segments;
            }
            if !h.is_control() && !aborted.contains(&h) {
                let records = decode_batch(&bytes, DEFAULT_DECOMPRESSED_LIMIT)
                    .map_err(|e| corrupt(seg, e))?;
                let new_keys: usize = records
                    .iter()
                    .filter_map(|r| r.key.as_ref())
                    .filter(|k| !latest.contains_key(*k))
                    .map(|k| k.len() + MAP_ENTRY_OVERHEAD)
                    .sum();
                // Always map at least one batch, so every pass makes progress.
                if map_end > first_dirty && map_bytes + new_keys > options.dedupe_buffer_bytes {
                    break 'segments;
                }
                map_bytes += new_keys;
                for r in records {
                    if let Some(k) = r.key {
                        if r.offset >= first_dirty {
                            latest.insert(k, r.offset);
                        }
                    }
                }
            }
            map_end = next.max(map_end);
        }
    }
    let map_end = map_end.min(end);

    // The checkpoint file also marks the log as compacted, i.e. allowed to have offset gaps; it
    // must exist before the first swap so recovery never mistakes a gap for damage.
    if !log.dir.join(CLEANER_CHECKPOINT_FILE).exists() {
        checkpoint::write_offset(&log.dir, CLEANER_CHECKPOINT_FILE, first_dirty)?;
    }

    // 2 + 3. rewrite and swap every segment that starts below the mapped end. Batches at or
    //    above it are copied untouched: the map knows nothing of their keys, so neither their
    //    superseded records nor their tombstones (whose older values may sit below) can go yet.
    let tombstone_horizon = now.saturating_sub(config.delete_retention_ms);
    let oldest_snapshot = super::snapshots::list(&log.dir)?.first().copied();
    // Producers with a transactional batch kept since their last marker (segments are rewritten
    // in offset order from the log start, so this sees every batch before each marker).
    let mut txn_data_kept: HashSet<i64> = HashSet::new();
    let mut stats = CleanStats {
        cleaned_up_to: map_end,
        ..CleanStats::default()
    };
    for seg in cleanable.iter().filter(|s| s.base_offset() < map_end) {
        let base = seg.base_offset();
        let cleaned_path = log.dir.join(format!(
            "{}{CLEANED_SUFFIX}",
            segment::file_name(base, segment::LOG_EXT)
        ));
        let file = fs::File::create(&cleaned_path).ctx("create cleaned segment", &cleaned_path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut written = 0u64;
        let mut changed = false;
        let mut emit = |data: &[u8]| -> Result<()> {
            written += data.len() as u64;
            out.write_all(data)
                .ctx("write cleaned segment", &cleaned_path)
        };
        for_each_batch(seg, |h, bytes| {
            throttle.account(bytes.len() as u64)?;
            if h.is_control() {
                let data_left = txn_data_kept.remove(&h.producer_id);
                let offset = h.last_offset().max(0) as u64;
                let removable = !data_left
                    && offset < map_end
                    && h.max_timestamp < tombstone_horizon
                    && oldest_snapshot.is_none_or(|s| offset < s);
                if removable {
                    stats.markers_removed += 1;
                    changed = true;
                    return Ok(());
                }
                return emit(&bytes);
            }
            if h.base_offset as u64 >= map_end {
                if h.is_transactional() {
                    txn_data_kept.insert(h.producer_id);
                }
                return emit(&bytes);
            }
            if aborted.contains(&h) {
                stats.aborted_records_removed += u64::from(h.record_count.max(0).unsigned_abs());
                changed = true;
                return Ok(());
            }
            let records =
                decode_batch(&bytes, DEFAULT_DECOMPRESSED_LIMIT).map_err(|e| corrupt(seg, e))?;
            let n = records.len();
            let mut kept = Vec::with_capacity(n);
            for r in records {
                let superseded = r
                    .key
                    .as_ref()
                    .and_then(|k| latest.get(k))
                    .is_some_and(|&l| l > r.offset);
                let expired_tombstone =
                    r.key.is_some() && r.value.is_none() && r.timestamp < tombstone_horizon;
                if superseded {
                    stats.records_removed += 1;
                } else if expired_tombstone {
                    stats.tombstones_removed += 1;
                } else {
                    kept.push(r);
                }
            }
            if !kept.is_empty() && h.is_transactional() {
                txn_data_kept.insert(h.producer_id);
            }
            if kept.len() == n {
                return emit(&bytes);
            }
            changed = true;
            if kept.is_empty() {
                return Ok(());
            }
            let mut builder = BatchBuilder::new(h.compression().map_err(|e| corrupt(seg, e))?);
            for r in &kept {
                let delta = (r.offset as i64 - h.base_offset) as i32;
                builder.push_at(
                    &Record {
                        timestamp: r.timestamp,
                        key: r.key.clone(),
                        value: r.value.clone(),
                        headers: r.headers.clone(),
                    },
                    delta,
                );
            }
            match builder.build_with(&BatchTemplate::like(&h)) {
                Some(b) => emit(&b),
                None => Ok(()),
            }
        })?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("write cleaned segment", &cleaned_path)?;
        if changed {
            file.sync_all()
                .ctx("fsync cleaned segment", &cleaned_path)?;
            drop(file);
            stats.segments_rewritten += 1;
            stats.bytes_before += seg.size();
            stats.bytes_after += written;
            swap_in(log, seg, &cleaned_path, config.index_interval_bytes)?;
        } else {
            drop(file);
            fs::remove_file(&cleaned_path).ctx("remove unneeded cleaned segment", &cleaned_path)?;
        }
    }
    log.first_dirty_offset.fetch_max(map_end, Ordering::AcqRel);
    checkpoint::write_offset(
        &log.dir,
        CLEANER_CHECKPOINT_FILE,
        log.first_dirty_offset.load(Ordering::Acquire),
    )?;
    tracing::info!(dir = %log.dir.display(), ?stats, "compacted log");
    Ok(Some(stats))
}

/// The aborted transactions of the cleaned range, by producer: a transactional batch of
/// producer P at offset o belongs to an aborted transaction when an entry of P has
/// `first_offset <= o <= last_offset` (the ABORT marker's offset).
struct AbortedRanges(HashMap<i64, Vec<(u64, u64)>>);

impl AbortedRanges {
    fn new(entries: &[crate::txn_index::AbortedTxn]) -> AbortedRanges {
        let mut by_producer: HashMap<i64, Vec<(u64, u64)>> = HashMap::new();
        for e in entries {
            by_producer
                .entry(e.producer_id)
                .or_default()
                .push((e.first_offset, e.last_offset));
        }
        AbortedRanges(by_producer)
    }

    fn contains(&self, h: &BatchHeader) -> bool {
        if !h.is_transactional() || h.is_control() {
            return false;
        }
        let offset = h.base_offset.max(0) as u64;
        self.0
            .get(&h.producer_id)
            .is_some_and(|ranges| ranges.iter().any(|(f, l)| *f <= offset && offset <= *l))
    }
}

/// Replaces `old` with the fsynced segment file at `cleaned`, crash-safely (see the module docs).
fn swap_in(log: &Log, old: &Arc<LogSegment>, cleaned: &Path, index_interval: usize) -> Result<()> {
    let base = old.base_offset();
    let log_path = log.dir.join(segment::file_name(base, segment::LOG_EXT));
    // Readers still holding the old segment must keep its bytes, not reopen the new file.
    old.retire_file()?;
    // Old indexes go first: from here a crash leaves a .log without indexes, which open rebuilds.
    for ext in [segment::INDEX_EXT, segment::TIME_INDEX_EXT] {
        let p = log.dir.join(segment::file_name(base, ext));
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove old index", &p),
        }
    }
    fs::rename(cleaned, &log_path).ctx("swap in cleaned segment", &log_path)?;
    checkpoint::sync_dir(&log.dir)?;
    let new = LogSegment::open(&log.dir, base, log.clock.now_ms())?;
    new.recover(index_interval, usize::MAX, false)?;
    new.seal()?;
    new.flush()?;
    let mut segs = log.segments.write().unwrap_or_else(|e| e.into_inner());
    segs.insert(base, Arc::new(new));
    Ok(())
}
