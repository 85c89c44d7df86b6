//! [`Log`]: one partition's log — a directory of segments with a single writable (active) one.
//!
//! Offsets: the log start offset (first offset still stored), the log end offset (LEO: offset the
//! next record gets), and the high watermark (HW: offsets below it are committed and visible to
//! consumers). The log moves LEO; replication moves HW through [`Log::set_high_watermark`].
//!
//! Durability follows Kafka: appends go to the page cache; `flush.messages`/`flush.ms` force an
//! fsync; a rolled segment is fsynced in the background and the *recovery point* (offset below
//! which everything is on disk) advances. After an unclean stop only segments past the recovery
//! point are scanned and repaired; a clean shutdown leaves a marker that skips the scan.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::batch::{self, BatchFrames, BatchHeader, TimestampType, HEADER_LEN};
use crate::checkpoint::{self, CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE};
use crate::config::{Clock, LogConfig, SystemClock};
use crate::error::{IoContext, LogError, Result};
use crate::leader_epoch::{EpochEntry, LeaderEpochCache};
use crate::producer_state::{self, Check, CompletedTxn, Marker, ProducerError, ProducerStates};
use crate::segment::{self, FileRegion, LogSegment};
use crate::txn_index::{AbortedTxn, TxnIndex};
use crate::validator::{validate_records, RecordRules, RecordsRejected};

mod cleaner;
mod snapshots;
pub use cleaner::{
    CleanStats, CleanerOptions, CLEANED_SUFFIX, CLEANER_CHECKPOINT_FILE, MAP_ENTRY_OVERHEAD,
};

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
    /// Set when the log stamped the batches with `message.timestamp.type=LogAppendTime`.
    pub log_append_time: Option<i64>,
    pub record_count: u64,
    pub batch_count: usize,
    pub bytes: usize,
}

/// The result of a read: file regions of whole batches, and the log's offsets at read time.
#[derive(Debug, Clone)]
pub struct ReadInfo {
    pub regions: Vec<FileRegion>,
    /// Total bytes of `regions`.
    pub size: u64,
    /// The offset after the last batch returned (the requested offset when nothing was).
    pub next_offset: u64,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub high_watermark: u64,
}

/// Batches on their way to the segment: `data` as received, and for a leader's append the
/// headers as they are stored (offsets assigned), one per batch, which replace the first
/// [`HEADER_LEN`] bytes of each when written.
struct Batches<'a> {
    data: &'a [u8],
    headers: Option<&'a [[u8; HEADER_LEN]]>,
}

impl<'a> Batches<'a> {
    /// Batches stored exactly as they are (a follower's, a marker).
    fn as_is(data: &'a [u8]) -> Self {
        Batches {
            data,
            headers: None,
        }
    }

    /// The slices to write, in order.
    fn parts(&self, frames: &[(usize, BatchHeader)]) -> Vec<&'a [u8]> {
        match self.headers {
            None => vec![self.data],
            Some(headers) => frames
                .iter()
                .zip(headers)
                .flat_map(|((pos, h), head)| {
                    [
                        &head[..],
                        &self.data[*pos + HEADER_LEN..*pos + h.total_size()],
                    ]
                })
                .collect(),
        }
    }

    /// One batch as stored (a copy: for the rare control batch).
    fn batch(&self, frames: &[(usize, BatchHeader)], pos: usize, h: &BatchHeader) -> Bytes {
        let mut stored = self.data[pos..pos + h.total_size()].to_vec();
        if let (Some(headers), Some(i)) = (self.headers, frames.iter().position(|(p, _)| *p == pos))
        {
            stored[..HEADER_LEN].copy_from_slice(&headers[i]);
        }
        Bytes::from(stored)
    }
}

struct AppendState {
    closed: bool,
    unflushed_messages: u64,
    last_flush_ms: i64,
}

impl FlushState {
    /// One queued roll's flush (on the background flusher).
    fn flush_rolled(&self, job: RolledFlush) {
        let _guard = lock(&self.lock);
        let flushed =
            crate::flush_observer::timed(|| job.segments.iter().try_for_each(|s| s.flush()));
        if let Err(e) = flushed {
            tracing::error!(error = %e, "fsync of rolled segment failed");
            return;
        }
        // Sealed and durable: its descriptor goes back (a reader reopens it). Only the rolled
        // ones, never the new active segment, which is not in `segments`.
        for s in &job.segments {
            s.close_file();
        }
        if self.generation.load(Ordering::Acquire) != job.generation {
            return; // the log was truncated meanwhile: `upto` may no longer be valid
        }
        if let Some((offset, bytes)) = job.snapshot {
            // The aborted-transaction index entries below the snapshot are not re-derived
            // on recovery: durable first.
            let written = crate::txn_index::sync(&self.dir)
                .and_then(|()| snapshots::write(&self.dir, offset, &bytes));
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not write producer snapshot");
            }
        }
        self.recovery_point.fetch_max(job.upto, Ordering::AcqRel);
        let rp = self.recovery_point.load(Ordering::Acquire);
        if let Err(e) = self.write_recovery_point(rp) {
            tracing::warn!(error = %e, "could not write recovery point");
        }
    }

    fn write_recovery_point(&self, rp: u64) -> Result<()> {
        // A failed write leaves the last known value unknown: the next checkpoint writes again.
        self.checkpointed.store(u64::MAX, Ordering::Release);
        checkpoint::write_offset(&self.dir, RECOVERY_POINT_FILE, rp)?;
        self.checkpointed.store(rp, Ordering::Release);
        Ok(())
    }
}

/// Shared with the background threads that fsync rolled segments.
struct FlushState {
    dir: PathBuf,
    recovery_point: AtomicU64,
    /// The recovery point last written to the checkpoint file.
    checkpointed: AtomicU64,
    /// Bumped by every truncation: a background flush started before one must not advance the
    /// recovery point past data that no longer exists.
    generation: AtomicU64,
    /// Serialises fsync + recovery-point updates with truncation.
    lock: Mutex<()>,
    /// Rolled segments waiting for the log's background flusher, and whether one is running:
    /// at most one thread per log, however fast segments roll.
    rolled: Mutex<RolledQueue>,
}

#[derive(Default)]
struct RolledQueue {
    jobs: Vec<RolledFlush>,
    running: bool,
}

/// Rolled segments to fsync, then the recovery point (and a producer snapshot) to advance.
struct RolledFlush {
    segments: Vec<Arc<LogSegment>>,
    upto: u64,
    snapshot: Option<(u64, Vec<u8>)>,
    /// The truncation generation when the roll happened.
    generation: u64,
}

pub struct Log {
    dir: PathBuf,
    config: RwLock<LogConfig>,
    clock: Arc<dyn Clock>,
    segments: RwLock<BTreeMap<u64, Arc<LogSegment>>>,
    appender: Mutex<AppendState>,
    log_start_offset: AtomicU64,
    log_end_offset: AtomicU64,
    high_watermark: AtomicU64,
    flush_state: Arc<FlushState>,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Serialises segment-set maintenance: compaction, retention, truncation.
    maintenance: Mutex<()>,
    /// Set by [`Log::delete_dir`]: the partition is gone. Appends answer [`LogError::Deleted`],
    /// background duties (flush, checkpoint, retention, compaction) skip it.
    deleted: AtomicBool,
    /// Compaction's dirty section starts here (persisted in `cleaner-offset-checkpoint`).
    first_dirty_offset: AtomicU64,
    /// Leader epoch -> first offset (persisted in `leader-epoch-checkpoint`).
    epochs: Mutex<LeaderEpochCache>,
    /// Idempotent and transactional producers' state (snapshotted at each roll; rebuilt from
    /// the newest snapshot and the log after it on open and truncation).
    producers: Mutex<ProducerStates>,
    /// Aborted transactions (for `read_committed` fetches). Locked after `producers`, never
    /// before.
    txn_index: Mutex<TxnIndex>,
}

/// Without a usable snapshot (a log written before snapshots existed), how many of the newest
/// segments the producer state is rebuilt from: a producer retries a batch within seconds, and a
/// producer whose batches are older is accepted as unknown (any sequence), as Kafka does once
/// retention deleted them. Bounds the work of opening such a log.
const PRODUCER_STATE_SEGMENTS: usize = 2;

/// A deleted partition's directory ends in this until it is removed (Kafka's suffix).
pub const DELETE_SUFFIX: &str = "-delete";

/// 32 hex digits unique within this host (Kafka puts a UUID where this goes): the wall clock in
/// nanoseconds, the process and a counter.
fn unique_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:016x}{:08x}{:08x}", std::process::id(), n as u32)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering it if it was not closed cleanly.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        dir: impl AsRef<Path>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).ctx("create log directory", &dir)?;
        let now = clock.now_ms();

        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = marker.exists();
        if clean {
            // Removed before any append can happen, so a crash from here on triggers recovery.
            fs::remove_file(&marker).ctx("remove clean-shutdown marker", &marker)?;
            checkpoint::sync_dir(&dir)?;
        }
        let recovery_point =
            checkpoint::read_offset(&dir, RECOVERY_POINT_FILE).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unreadable recovery point; recovering the whole log");
                None
            });

        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).ctx("list log directory", &dir)? {
            let path = entry.ctx("list log directory", &dir)?.path();
            if path.to_str().is_some_and(|p| p.ends_with(CLEANED_SUFFIX)) {
                // A compaction that crashed before its swap: the original segment is intact.
                fs::remove_file(&path).ctx("remove unfinished cleaned segment", &path)?;
                continue;
            }
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let Ok(base) = stem.parse::<u64>() else {
                continue;
            };
            if stem.len() != 20 {
                continue;
            }
            match ext {
                segment::LOG_EXT => bases.push(base),
                segment::INDEX_EXT | segment::TIME_INDEX_EXT
                    if !dir
                        .join(segment::file_name(base, segment::LOG_EXT))
                        .exists() =>
                {
                    fs::remove_file(&path).ctx("remove orphan index", &path)?;
                }
                _ => {}
            }
        }
        bases.sort_unstable();

        let mut segments = BTreeMap::new();
        let mut damaged_at: Option<u64> = None;
        for (i, &base) in bases.iter().enumerate() {
            let seg = LogSegment::open(&dir, base, now)?;
            if damaged_at.is_some() {
                // Everything after a damaged segment is after the damage: not served.
                tracing::warn!(segment = %seg.log_path().display(), "deleting segment after damaged data");
                seg.delete_files()?;
                continue;
            }
            let next_base = bases.get(i + 1).copied();
            let below_recovery_point =
                matches!((recovery_point, next_base), (Some(rp), Some(nb)) if nb <= rp);
            let trusted = clean || below_recovery_point;
            let loaded = trusted && seg.load(config.index_interval_bytes).is_ok();
            if !loaded {
                // A log compacted at any time (even if no longer) may have offset gaps.
                let contiguous =
                    !config.cleanup_compact && !dir.join(CLEANER_CHECKPOINT_FILE).exists();
                let outcome = seg.recover(config.index_interval_bytes, usize::MAX, contiguous)?;
                if outcome.truncated_bytes > 0 {
                    damaged_at = Some(seg.next_offset());
                }
                if next_base.is_some() && damaged_at.is_none() {
                    seg.seal()?; // a sealed segment keeps trimmed indexes
                }
            }
            segments.insert(base, Arc::new(seg));
        }
        if let Some(at) = damaged_at {
            tracing::warn!(dir = %dir.display(), log_end_offset = at, "log recovered: truncated at damaged data");
        }
        if segments.is_empty() {
            let seg = LogSegment::create(&dir, 0, config.segment_index_bytes, now)?;
            segments.insert(0, Arc::new(seg));
        }
        let (first, active) = match (segments.values().next(), segments.values().next_back()) {
            (Some(f), Some(a)) => (f.clone(), a.clone()),
            _ => unreachable!("segments is non-empty"),
        };
        active.resize_indexes(config.segment_index_bytes)?;
        let leo = active.next_offset();
        let start = first.base_offset();
        let rp = recovery_point.unwrap_or(start).min(leo);

        let first_dirty = checkpoint::read_offset(&dir, CLEANER_CHECKPOINT_FILE)
            .unwrap_or(None)
            .unwrap_or(start)
            .min(leo);
        let loaded_epochs = match LeaderEpochCache::load(&dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "unreadable leader-epoch checkpoint; rebuilding it from the log");
                None
            }
        };
        let rebuild_epochs = loaded_epochs.is_none() && leo > start;
        let log = Log {
            epochs: Mutex::new(loaded_epochs.unwrap_or_else(|| LeaderEpochCache::empty(&dir))),
            producers: Mutex::new(ProducerStates::new()),
            txn_index: Mutex::new(TxnIndex::open(&dir)?),
            maintenance: Mutex::new(()),
            deleted: AtomicBool::new(false),
            first_dirty_offset: AtomicU64::new(first_dirty),
            flush_state: Arc::new(FlushState {
                dir: dir.clone(),
                recovery_point: AtomicU64::new(rp),
                // Unknown until the first write (a value no log reaches).
                checkpointed: AtomicU64::new(u64::MAX),
                generation: AtomicU64::new(0),
                lock: Mutex::new(()),
                rolled: Mutex::default(),
            }),
            dir,
            config: RwLock::new(config),
            clock,
            segments: RwLock::new(segments),
            appender: Mutex::new(AppendState {
                closed: false,
                unflushed_messages: 0,
                last_flush_ms: now,
            }),
            log_start_offset: AtomicU64::new(start),
            log_end_offset: AtomicU64::new(leo),
            high_watermark: AtomicU64::new(leo),
            background: Mutex::new(Vec::new()),
        };
        if rebuild_epochs {
            log.rebuild_epochs()?;
        } else {
            let mut epochs = lock(&log.epochs);
            if epochs.truncate_from_end(leo) {
                epochs.persist()?;
            }
        }
        log.rebuild_producer_state()?;
        // Loading opened every segment; sealed, flushed ones are rarely read again soon (consumers
        // read the tail), and a broker with many partitions would start out of descriptors.
        for s in log.sealed_flushed_segments() {
            s.close_file();
        }
        Ok(log)
    }

    /// Rebuilds the producers' state: from the newest snapshot at or above the log start (or,
    /// with none, the newest [`PRODUCER_STATE_SEGMENTS`] segments), replaying the batches after
    /// it — headers only, plus the one record of each transaction marker. Aborted transactions
    /// the replay meets are (re-)indexed.
    fn rebuild_producer_state(&self) -> Result<()> {
        let leo = self.log_end_offset();
        let start = self.log_start_offset();
        snapshots::remove_above(&self.dir, leo)?;
        let segments = self.segments_snapshot();
        let mut loaded = None;
        for offset in snapshots::list(&self.dir)?.into_iter().rev() {
            if offset < start {
                break;
            }
            if let Some(states) = snapshots::read(&self.dir, offset)? {
                loaded = Some((offset, states));
                break;
            }
        }
        let (from, mut states) = loaded.unwrap_or_else(|| {
            let i = segments.len().saturating_sub(PRODUCER_STATE_SEGMENTS);
            let from = segments.get(i).map_or(start, |s| s.base_offset());
            (from, ProducerStates::new())
        });
        let mut aborted = Vec::new();
        'segments: for seg in segments.iter().filter(|s| s.next_offset() > from) {
            let limit = seg.size();
            let mut pos = if seg.base_offset() >= from {
                0
            } else {
                match seg.find_batch(from) {
                    Ok(Some((p, _))) => p,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "producer state not rebuilt past a bad batch header");
                        break;
                    }
                }
            };
            loop {
                match seg.header_at(pos, limit) {
                    Ok(Some(h)) => {
                        if h.base_offset as u64 >= from {
                            let marker = if h.is_control() {
                                seg.read_bytes(pos, h.total_size())
                                    .ok()
                                    .and_then(|b| producer_state::parse_marker(&b))
                            } else {
                                None
                            };
                            if let Some(done) = states.update(&h, marker) {
                                aborted.extend(aborted_entry(&states, done));
                            }
                        }
                        pos += h.total_size() as u64;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // A damaged stored batch (readers report it where they meet it): the
                        // producers after it start as unknown rather than the log not opening.
                        tracing::warn!(dir = %self.dir.display(), error = %e, "producer state not rebuilt past a bad batch header");
                        break 'segments;
                    }
                }
            }
        }
        {
            let mut index = lock(&self.txn_index);
            index.truncate(from)?;
            for a in aborted {
                index.append(a)?;
            }
        }
        *lock(&self.producers) = states;
        Ok(())
    }

    /// The idempotent producers' state (for tests and tools).
    pub fn producer_states(&self) -> ProducerStates {
        lock(&self.producers).clone()
    }

    /// The last stable offset: `read_committed` consumers read below it. The high watermark,
    /// or the first offset of the earliest transaction not yet settled below it.
    pub fn last_stable_offset(&self) -> u64 {
        let hw = self.high_watermark();
        lock(&self.producers)
            .first_unstable_offset(hw)
            .map_or(hw, |o| o.min(hw))
    }

    /// Aborted transactions with records in `[from, upto)`, for a `read_committed` fetch.
    pub fn aborted_transactions(&self, from: u64, upto: u64) -> Vec<AbortedTxn> {
        lock(&self.txn_index).collect(from, upto)
    }

    /// Forgets producers idle for `expiration_ms` with no open transaction (Kafka's
    /// `producer.id.expiration.ms`); a later batch of one starts as from a new producer.
    pub fn expire_producers(&self, expiration_ms: i64) -> usize {
        let now = self.clock.now_ms();
        lock(&self.producers).expire(now, expiration_ms)
    }

    /// Builds the leader-epoch cache from the batches' headers (a log written before the cache
    /// existed, or whose checkpoint was unreadable).
    fn rebuild_epochs(&self) -> Result<()> {
        let mut cache = LeaderEpochCache::empty(&self.dir);
        let mut offset = self.log_start_offset();
        let end = self.log_end_offset();
        while offset < end {
            let (data, info) = self.read_bytes(offset, 1 << 20, None)?;
            let mut pos = 0;
            while pos + batch::HEADER_LEN <= data.len() {
                let Ok(h) = BatchHeader::parse(&data[pos..]) else {
                    break;
                };
                cache.observe(h.partition_leader_epoch, h.base_offset.max(0) as u64);
                pos += h.total_size();
            }
            if info.next_offset <= offset {
                break;
            }
            offset = info.next_offset;
        }
        cache.persist()?;
        *lock(&self.epochs) = cache;
        Ok(())
    }

    // ---- leader epochs -----------------------------------------------------------------------

    /// Where `epoch` ends in this log (Kafka's OffsetForLeaderEpoch): the largest epoch ≤
    /// `epoch` this log holds and the offset after its last record. `None`: no such epoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, u64)> {
        lock(&self.epochs).end_offset_for(epoch, self.log_end_offset())
    }

    /// The newest epoch that wrote to this log, and its first offset.
    pub fn latest_epoch(&self) -> Option<EpochEntry> {
        lock(&self.epochs).latest()
    }

    /// Every (epoch, first offset) of this log, oldest first.
    pub fn epoch_entries(&self) -> Vec<EpochEntry> {
        lock(&self.epochs).entries().to_vec()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> LogConfig {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Replaces the configuration; sizes of existing index files change at the next roll.
    pub fn set_config(&self, config: LogConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset.load(Ordering::Acquire)
    }
    pub fn log_end_offset(&self) -> u64 {
        self.log_end_offset.load(Ordering::Acquire)
    }
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }
    pub fn recovery_point(&self) -> u64 {
        self.flush_state.recovery_point.load(Ordering::Acquire)
    }
    /// Sets the high watermark, clamped to `[log start offset, log end offset]`.
    pub fn set_high_watermark(&self, hw: u64) -> u64 {
        let hw = hw.clamp(self.log_start_offset(), self.log_end_offset());
        self.high_watermark.store(hw, Ordering::Release);
        hw
    }

    fn segments_snapshot(&self) -> Vec<Arc<LogSegment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn active(&self) -> Arc<LogSegment> {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segs.values()
            .next_back()
            .cloned()
            .unwrap_or_else(|| unreachable!("a log always has an active segment"))
    }

    pub fn segment_count(&self) -> usize {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Bytes stored across all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments_snapshot().iter().map(|s| s.size()).sum()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.segments_snapshot()
            .iter()
            .map(|s| s.base_offset())
            .collect()
    }

    // ---- append ----------------------------------------------------------------------------

    /// Appends batches a producer sent: validates each (magic, CRC, count, `max.message.bytes`),
    /// assigns offsets from the log end offset, and writes them with one vectored write: each
    /// batch's header from a copy carrying its baseOffset and partitionLeaderEpoch (and, where
    /// rewritten, maxTimestamp and CRC), its records straight from `batches`, which is never
    /// modified — so a request buffer shared with anything else needs no copy.
    ///
    /// Every record is walked first ([`crate::validator`]): a batch whose record section does not
    /// match its header, or whose records break the topic's key or timestamp rules, is refused
    /// whole and nothing of the request is written.
    pub fn append_as_leader(&self, batches: &[u8], leader_epoch: i32) -> Result<AppendInfo> {
        let (info, flush) = self.append_as_leader_unflushed(batches, leader_epoch)?;
        if let Some(upto) = flush {
            self.flush_upto(upto)?;
        }
        Ok(info)
    }

    /// [`Log::append_as_leader`] without its flush: when `flush.messages` or `flush.ms` made one
    /// due, returns the offset to pass to [`Log::flush_upto`] before the append may be
    /// acknowledged. Lets a caller write the next batches while the fsync runs.
    pub fn append_as_leader_unflushed(
        &self,
        batches: &[u8],
        leader_epoch: i32,
    ) -> Result<(AppendInfo, Option<u64>)> {
        let config = self.config();
        let rules = RecordRules {
            compacted: config.cleanup_compact,
            timestamp_type: config.timestamp_type,
            before_max_ms: config.message_timestamp_before_max_ms,
            after_max_ms: config.message_timestamp_after_max_ms,
            now_ms: self.clock.now_ms(),
            decompressed_limit: crate::record::DEFAULT_DECOMPRESSED_LIMIT,
        };
        let mut frames = validate_incoming(batches, config.max_message_bytes, true)?;
        let mut max_timestamps = Vec::with_capacity(frames.len());
        for (pos, h) in &frames {
            let summary = validate_records(&batches[*pos..*pos + h.total_size()], h, &rules)
                .map_err(|e| match e {
                    RecordsRejected::Invalid(source) => LogError::InvalidRecords {
                        position: *pos,
                        source,
                    },
                    RecordsRejected::Records { timestamp, errors } => {
                        LogError::RecordsRejected { timestamp, errors }
                    }
                })?;
            max_timestamps.push(summary.max_timestamp);
        }
        let st = self.lock_appender()?;
        // Idempotent producers: a retry of a batch already written is answered with its offsets
        // and not written again; a gap or a fenced epoch is refused. Checked under the append
        // lock, so the check and the write are one step.
        {
            let producers = lock(&self.producers);
            // Several batches of one producer in a request: each follows the one before it, so
            // they are checked against a copy that takes them in turn (the usual single batch
            // needs no copy).
            let mut scratch = (frames.len() > 1).then(|| producers.clone());
            for (i, (_, h)) in frames.iter().enumerate() {
                let check = match scratch.as_mut() {
                    Some(sc) => {
                        let c = sc.check(h)?;
                        sc.update(h, None);
                        c
                    }
                    None => producers.check(h)?,
                };
                if let Check::Duplicate(b) = check {
                    if i == 0 && frames.len() == 1 {
                        let written = AppendInfo {
                            first_offset: b.first_offset,
                            last_offset: b.last_offset,
                            max_timestamp: -1,
                            log_append_time: None,
                            record_count: 0,
                            batch_count: 0,
                            bytes: 0,
                        };
                        // Durable only once an fsync covers it, like the original.
                        let flush = (self.recovery_point() <= b.last_offset)
                            .then_some(b.last_offset + 1)
                            .filter(|_| config.flush_messages != u64::MAX);
                        return Ok((written, flush));
                    }
                    // Kafka clients send one batch per partition; a retry mixed with new
                    // batches cannot be answered with one offset range.
                    return Err(LogError::Producer(ProducerError::OutOfOrder {
                        producer_id: h.producer_id,
                        epoch: h.producer_epoch,
                        last: b.last_seq,
                        got: h.base_sequence,
                    }));
                }
            }
        }
        let now = self.clock.now_ms();
        let log_append_time =
            (config.timestamp_type == TimestampType::LogAppendTime).then_some(now);
        let mut next = self.log_end_offset() as i64;
        let mut stored_headers = Vec::with_capacity(frames.len());
        for ((pos, h), max_ts) in frames.iter_mut().zip(max_timestamps) {
            let records = &batches[*pos + HEADER_LEN..*pos + h.total_size()];
            let mut head = [0u8; HEADER_LEN];
            head.copy_from_slice(&batches[*pos..*pos + HEADER_LEN]);
            batch::assign_offset(&mut head, next, leader_epoch);
            if let Some(t) = log_append_time {
                batch::set_log_append_time_split(&mut head, records, t);
            } else if h.timestamp_type() == TimestampType::CreateTime && h.max_timestamp != max_ts {
                // A header whose maxTimestamp is not its records' would mislead the time index
                // and retention; Kafka rewrites it the same way.
                batch::set_max_timestamp_split(&mut head, records, max_ts);
            }
            *h = BatchHeader::parse(&head).map_err(|source| LogError::InvalidBatch {
                position: *pos,
                source,
            })?;
            next = h.next_offset();
            stored_headers.push(head);
        }
        let written = Batches {
            data: batches,
            headers: Some(&stored_headers),
        };
        self.append_validated(st, &config, written, &frames, log_append_time)
    }

    /// Writes a transaction marker for `producer_id` as the leader (the transaction
    /// coordinator's WriteTxnMarkers): a control batch closing the producer's open transaction
    /// here as committed or aborted. Refused if the producer has moved to a newer epoch or a
    /// newer coordinator wrote its last marker.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        leader_epoch: i32,
    ) -> Result<AppendInfo> {
        let config = self.config();
        let now = self.clock.now_ms();
        let mut batch = producer_state::marker_batch(producer_id, producer_epoch, marker, now);
        let st = self.lock_appender()?;
        lock(&self.producers).check_marker(
            producer_id,
            producer_epoch,
            marker.coordinator_epoch,
        )?;
        batch::assign_offset(&mut batch, self.log_end_offset() as i64, leader_epoch);
        let h = BatchHeader::parse(&batch).map_err(|source| LogError::InvalidBatch {
            position: 0,
            source,
        })?;
        let appended = self.append_validated(st, &config, Batches::as_is(&batch), &[(0, h)], None);
        self.flushed(appended)
    }

    /// Appends batches replicated from a leader, keeping their offsets. The first must start at
    /// or after the log end offset (exactly at it unless the log is compacted).
    pub fn append_as_follower(&self, batches: &[u8]) -> Result<AppendInfo> {
        let config = self.config();
        let frames = validate_incoming(batches, usize::MAX, false)?;
        let st = self.lock_appender()?;
        let mut expected = self.log_end_offset();
        for (_, h) in &frames {
            let base = h.base_offset.max(0) as u64;
            if base < expected || (!config.cleanup_compact && base != expected) {
                return Err(LogError::NonContiguousOffset {
                    expected,
                    got: base,
                });
            }
            expected = h.next_offset() as u64;
        }
        let appended = self.append_validated(st, &config, Batches::as_is(batches), &frames, None);
        self.flushed(appended)
    }

    fn lock_appender(&self) -> Result<MutexGuard<'_, AppendState>> {
        let st = lock(&self.appender);
        if st.closed {
            return Err(if self.is_deleted() {
                LogError::Deleted
            } else {
                LogError::Closed
            });
        }
        Ok(st)
    }

    /// Writes validated batches under the append lock `st`; when `flush.messages` or
    /// `flush.ms` is due, fsyncs after releasing it (group commit: appends go on meanwhile, and
    /// one fsync covers every batch written before it began).
    fn append_validated(
        &self,
        mut st: MutexGuard<'_, AppendState>,
        config: &LogConfig,
        written: Batches<'_>,
        frames: &[(usize, BatchHeader)],
        log_append_time: Option<i64>,
    ) -> Result<(AppendInfo, Option<u64>)> {
        let data = written.data;
        let (Some((_, first)), Some((_, last))) = (frames.first(), frames.last()) else {
            unreachable!("validate_incoming rejects empty input")
        };
        let first_offset = first.base_offset as u64;
        let last_offset = last.last_offset() as u64;
        let headers: Vec<BatchHeader> = frames.iter().map(|(_, h)| *h).collect();
        let max_timestamp = headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1);
        let active = self.maybe_roll(
            config,
            data.len() as u64,
            (first_offset, last_offset),
            max_timestamp,
        )?;
        active.append(
            &written.parts(frames),
            &headers,
            config.index_interval_bytes,
        )?;
        self.log_end_offset
            .store(last_offset + 1, Ordering::Release);
        let mut aborted = Vec::new();
        {
            let mut producers = lock(&self.producers);
            for (pos, h) in frames {
                let marker = if h.is_control() {
                    producer_state::parse_marker(&written.batch(frames, *pos, h))
                } else {
                    None
                };
                if let Some(done) = producers.update(h, marker) {
                    aborted.extend(aborted_entry(&producers, done));
                }
            }
        }
        if !aborted.is_empty() {
            let mut index = lock(&self.txn_index);
            for a in aborted {
                index.append(a)?;
            }
        }
        {
            let mut epochs = lock(&self.epochs);
            let mut changed = false;
            for h in &headers {
                changed |= epochs.observe(h.partition_leader_epoch, h.base_offset.max(0) as u64);
            }
            if changed {
                epochs.persist()?;
            }
        }

        let record_count: u64 = headers.iter().map(|h| h.record_count as u64).sum();
        st.unflushed_messages += record_count;
        let now = self.clock.now_ms();
        let flush_due = st.unflushed_messages >= config.flush_messages
            || (now - st.last_flush_ms).max(0) as u64 >= config.flush_ms;
        if flush_due {
            // This append takes the flush on; the next ones count afresh.
            st.unflushed_messages = 0;
            st.last_flush_ms = now;
        }
        drop(st);
        let info = AppendInfo {
            first_offset,
            last_offset,
            max_timestamp,
            log_append_time,
            record_count,
            batch_count: headers.len(),
            bytes: data.len(),
        };
        Ok((info, flush_due.then_some(last_offset + 1)))
    }

    /// Returns the segment the next append goes to, rolling a new one when the active segment is
    /// full (`segment.bytes`, index space, relative-offset range) or old (`segment.ms`).
    ///
    /// Age is measured as Kafka does: the incoming batch's max timestamp minus the segment's first
    /// batch timestamp (wall clock minus creation time for an empty segment), so appending old
    /// records does not roll a segment per append.
    fn maybe_roll(
        &self,
        config: &LogConfig,
        size: u64,
        (first_offset, last_offset): (u64, u64),
        max_timestamp: i64,
    ) -> Result<Arc<LogSegment>> {
        let active = self.active();
        let now = self.clock.now_ms();
        let age = match active.first_timestamp() {
            Some(first) => max_timestamp.saturating_sub(first),
            None => now - active.created_ms(),
        };
        let full = active.size() + size > config.segment_bytes
            || age > config.segment_ms
            || active.indexes_full();
        let unaddressable =
            !active.can_hold_offset(first_offset) || !active.can_hold_offset(last_offset);
        if (active.is_empty() || !full) && !unaddressable {
            return Ok(active);
        }
        active.seal()?;
        // The producers' state as of the new segment's base offset (every batch below it is
        // applied: appends hold the append lock), written off the append path.
        let snapshot = (first_offset, lock(&self.producers).to_snapshot());
        let new = Arc::new(LogSegment::create(
            &self.dir,
            first_offset,
            config.segment_index_bytes,
            now,
        )?);
        let to_flush: Vec<Arc<LogSegment>> = {
            let mut segs = self.segments.write().unwrap_or_else(|e| e.into_inner());
            segs.insert(first_offset, new.clone());
            let rp = self.recovery_point();
            segs.range(..first_offset)
                .filter(|(_, s)| s.next_offset() > rp || s.base_offset() >= rp)
                .map(|(_, s)| s.clone())
                .collect()
        };
        tracing::debug!(dir = %self.dir.display(), base_offset = first_offset, "rolled segment");
        self.spawn_flush(to_flush, first_offset, Some(snapshot));
        Ok(new)
    }

    /// fsyncs rolled segments off the append path, then advances the recovery point to `upto`:
    /// queued for the log's background flusher, started here when none is running.
    fn spawn_flush(
        &self,
        segments: Vec<Arc<LogSegment>>,
        upto: u64,
        snapshot: Option<(u64, Vec<u8>)>,
    ) {
        let fs = self.flush_state.clone();
        let job = RolledFlush {
            segments,
            upto,
            snapshot,
            generation: fs.generation.load(Ordering::Acquire),
        };
        let start = {
            let mut q = lock(&fs.rolled);
            q.jobs.push(job);
            !std::mem::replace(&mut q.running, true)
        };
        if !start {
            return; // the running flusher takes it next
        }
        let handle = std::thread::spawn(move || loop {
            let jobs = {
                let mut q = lock(&fs.rolled);
                if q.jobs.is_empty() {
                    // Decided under the queue's lock: a job queued after this starts a flusher.
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.jobs)
            };
            for job in jobs {
                fs.flush_rolled(job);
            }
        });
        let mut bg = lock(&self.background);
        bg.retain(|h| !h.is_finished());
        bg.push(handle);
    }

    fn join_background(&self) {
        let handles: Vec<_> = lock(&self.background).drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }

    // ---- flush -----------------------------------------------------------------------------

    /// fsyncs everything appended so far and advances the recovery point to the log end offset.
    pub fn flush(&self) -> Result<()> {
        let mut st = lock(&self.appender);
        if st.closed {
            // Closing flushed everything; a deleted log has nothing worth an fsync.
            return Ok(());
        }
        self.flush_locked(&mut st)
    }

    /// Flushes if `flush.ms` has passed since the last flush (for a periodic task).
    pub fn flush_if_due(&self) -> Result<bool> {
        let mut st = lock(&self.appender);
        if st.closed {
            return Ok(false);
        }
        let due = (self.clock.now_ms() - st.last_flush_ms).max(0) as u64 >= self.config().flush_ms;
        if due && st.unflushed_messages > 0 {
            self.flush_locked(&mut st)?;
        }
        Ok(due)
    }

    /// An append's result once the flush it made due (if any) is done.
    fn flushed(&self, appended: Result<(AppendInfo, Option<u64>)>) -> Result<AppendInfo> {
        let (info, flush) = appended?;
        if let Some(upto) = flush {
            self.flush_upto(upto)?;
        }
        Ok(info)
    }

    fn flush_locked(&self, st: &mut AppendState) -> Result<()> {
        self.flush_upto(self.log_end_offset())?;
        st.unflushed_messages = 0;
        st.last_flush_ms = self.clock.now_ms();
        Ok(())
    }

    /// Makes everything below `offset` durable: at once if an fsync since has covered it,
    /// else fsyncs all that is written now (appends may go on meanwhile; the flush lock keeps
    /// truncation out) and advances the recovery point to the log end offset seen before it.
    pub fn flush_upto(&self, offset: u64) -> Result<()> {
        let _g = lock(&self.flush_state.lock);
        let rp = self.recovery_point();
        if rp >= offset {
            return Ok(());
        }
        let leo = self.log_end_offset();
        crate::flush_observer::timed(|| {
            for s in self.segments_snapshot() {
                if s.next_offset() > rp || s.base_offset() >= rp {
                    s.flush_log()?;
                }
            }
            Ok::<(), LogError>(())
        })?;
        self.flush_state
            .recovery_point
            .fetch_max(leo, Ordering::AcqRel);
        Ok(())
    }

    /// Persists the recovery point (a periodic task's job; roll and close do it too).
    pub fn checkpoint(&self) -> Result<()> {
        let _g = lock(&self.flush_state.lock);
        if self.is_deleted() {
            return Ok(());
        }
        let rp = self.recovery_point();
        // The recovery point moves only when segments are fsynced (a roll, `flush.*`): most
        // ticks have nothing to write, and a write is an fsync per partition.
        if self.flush_state.checkpointed.load(Ordering::Acquire) == rp {
            return Ok(());
        }
        self.flush_state.write_recovery_point(rp)
    }

    // ---- read ------------------------------------------------------------------------------

    /// Reads whole batches from `offset`, at most `max_bytes` (but always the first batch), and
    /// only batches below `max_offset` (the high watermark for consumers; `None` = log end).
    pub fn read(&self, offset: u64, max_bytes: usize, max_offset: Option<u64>) -> Result<ReadInfo> {
        let start = self.log_start_offset();
        let leo = self.log_end_offset();
        let hw = self.high_watermark();
        if offset < start || offset > leo {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: start,
                log_end_offset: leo,
            });
        }
        let bound = max_offset.unwrap_or(leo).min(leo);
        let mut info = ReadInfo {
            regions: Vec::new(),
            size: 0,
            next_offset: offset,
            log_start_offset: start,
            log_end_offset: leo,
            high_watermark: hw,
        };
        if offset >= bound {
            return Ok(info);
        }
        let segments: Vec<Arc<LogSegment>> = {
            let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
            let floor = segs.range(..=offset).next_back().map_or(0, |(b, _)| *b);
            segs.range(floor..).map(|(_, s)| s.clone()).collect()
        };
        let mut remaining = max_bytes as u64;
        for seg in segments {
            if info.next_offset >= bound || (remaining == 0 && !info.regions.is_empty()) {
                break;
            }
            if info.next_offset >= seg.next_offset() {
                continue;
            }
            let first = info.regions.is_empty();
            if let Some((region, next)) = seg.read(info.next_offset, remaining, bound, first)? {
                remaining = remaining.saturating_sub(region.len);
                info.size += region.len;
                info.next_offset = next;
                info.regions.push(region);
                if next < seg.next_offset() {
                    break; // stopped inside this segment (max_bytes or bound): never skip ahead
                }
            } else if !first {
                break;
            }
        }
        Ok(info)
    }

    /// [`Log::read`] into memory.
    pub fn read_bytes(
        &self,
        offset: u64,
        max_bytes: usize,
        max_offset: Option<u64>,
    ) -> Result<(Bytes, ReadInfo)> {
        let info = self.read(offset, max_bytes, max_offset)?;
        let mut buf = Vec::with_capacity(info.size as usize);
        for r in &info.regions {
            r.read_into(&mut buf).ctx("read segment", &self.dir)?;
        }
        Ok((Bytes::from(buf), info))
    }

    /// The first offset whose record timestamp is >= `timestamp` (and below `max_offset`), with
    /// that record's timestamp; `None` when there is none.
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
        max_offset: Option<u64>,
    ) -> Result<Option<(u64, i64)>> {
        let bound = max_offset.unwrap_or(u64::MAX).min(self.log_end_offset());
        let start = self.log_start_offset();
        for seg in self.segments_snapshot() {
            if seg.base_offset() >= bound {
                break;
            }
            if let Some((offset, ts)) = seg.find_offset_by_timestamp(timestamp, bound)? {
                if offset >= start {
                    return Ok(Some((offset, ts)));
                }
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp in the log (the first one, if several share it):
    /// `(offset, timestamp)`. Kafka's ListOffsets MAX_TIMESTAMP.
    pub fn offset_of_max_timestamp(&self) -> Result<Option<(u64, i64)>> {
        let segments = self.segments_snapshot();
        let Some(seg) = segments
            .iter()
            .filter(|s| s.max_timestamp() >= 0)
            .reduce(|best, s| {
                if s.max_timestamp() > best.max_timestamp() {
                    s
                } else {
                    best
                }
            })
        else {
            return Ok(None);
        };
        seg.max_timestamp_record()
    }

    /// Closes the `.log` files of sealed, flushed segments that nobody read since the previous
    /// call (a reader reopens them). Returns how many were closed now. Unflushed segments keep
    /// their descriptor so the fsync that covers them reports any write-back error.
    pub fn close_idle_segment_files(&self) -> usize {
        self.sealed_flushed_segments()
            .iter()
            .filter(|s| s.close_file_if_idle())
            .count()
    }

    /// Segments that are neither active nor holding unflushed data: the ones whose files may
    /// close.
    fn sealed_flushed_segments(&self) -> Vec<Arc<LogSegment>> {
        let recovery_point = self.recovery_point();
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let sealed = segs.len().saturating_sub(1);
        segs.values()
            .take(sealed)
            .filter(|s| s.next_offset() <= recovery_point)
            .cloned()
            .collect()
    }

    /// How many segments hold an open `.log` file (for the broker's metrics and tests).
    pub fn open_segment_files(&self) -> usize {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segs.values().filter(|s| s.is_file_open()).count()
    }

    // ---- retention and truncation --------------------------------------------------------------

    /// Deletes whole segments that `retention.ms` or `retention.bytes` no longer keep. Never the
    /// active segment, and never data above the high watermark. Returns how many were deleted.
    pub fn delete_old_segments(&self) -> Result<usize> {
        let config = self.config();
        if !config.cleanup_delete {
            return Ok(0);
        }
        let _maintenance = lock(&self.maintenance);
        if self.is_deleted() {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let hw = self.high_watermark();
        let segments = self.segments_snapshot();
        let mut total: u64 = segments.iter().map(|s| s.size()).sum();
        let mut doomed = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            let Some(next) = segments.get(i + 1) else {
                break;
            }; // the active segment stays
            if next.base_offset() > hw {
                break;
            }
            let expired = config.retention_ms >= 0
                && seg.max_timestamp() >= 0
                && now - seg.max_timestamp() > config.retention_ms;
            let oversized =
                config.retention_bytes >= 0 && total - seg.size() >= config.retention_bytes as u64;
            if !(expired || oversized) {
                break;
            }
            total -= seg.size();
            doomed.push(seg.clone());
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        {
            let mut segs = self.segments.write().unwrap_or_else(|e| e.into_inner());
            for s in &doomed {
                segs.remove(&s.base_offset());
            }
            if let Some(first) = segs.values().next() {
                self.log_start_offset
                    .fetch_max(first.base_offset(), Ordering::AcqRel);
            }
        }
        for s in &doomed {
            tracing::info!(segment = %s.log_path().display(), "deleting segment by retention");
            s.delete_files()?;
        }
        lock(&self.txn_index).trim_before(self.log_start_offset())?;
        Ok(doomed.len())
    }

    /// Removes every record at or after `offset` (a follower dropping a divergent tail). A batch
    /// containing `offset` goes whole. Returns true if anything was removed.
    pub fn truncate_to(&self, offset: u64) -> Result<bool> {
        let _maintenance = lock(&self.maintenance);
        let _st = self.lock_appender()?;
        if offset >= self.log_end_offset() {
            return Ok(false);
        }
        if offset < self.log_start_offset() {
            self.truncate_fully_locked(offset)?;
            return Ok(true);
        }
        let config = self.config();
        let _flush = lock(&self.flush_state.lock);
        self.flush_state.generation.fetch_add(1, Ordering::AcqRel);
        let (floor, doomed) = {
            let mut segs = self.segments.write().unwrap_or_else(|e| e.into_inner());
            let doomed: Vec<u64> = segs.range(offset + 1..).map(|(b, _)| *b).collect();
            let doomed: Vec<Arc<LogSegment>> =
                doomed.iter().filter_map(|b| segs.remove(b)).collect();
            let floor = segs
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s.clone())
                .ok_or(LogError::Closed)?;
            (floor, doomed)
        };
        for s in &doomed {
            s.delete_files()?;
        }
        floor.truncate_to(offset, config.index_interval_bytes)?;
        floor.resize_indexes(config.segment_index_bytes)?;
        let leo = floor.next_offset();
        self.log_end_offset.store(leo, Ordering::Release);
        {
            let mut epochs = lock(&self.epochs);
            if epochs.truncate_from_end(leo) {
                epochs.persist()?;
            }
        }
        self.high_watermark.fetch_min(leo, Ordering::AcqRel);
        self.first_dirty_offset.fetch_min(leo, Ordering::AcqRel);
        self.flush_state
            .recovery_point
            .fetch_min(leo, Ordering::AcqRel);
        self.flush_state
            .write_recovery_point(self.recovery_point())?;
        // The truncated batches' sequences and markers are no longer written: forget them
        // (snapshots above the new end go; the state is rebuilt from one below it).
        self.rebuild_producer_state()?;
        Ok(true)
    }

    /// Deletes all data and restarts the log empty at `offset`.
    pub fn truncate_fully_and_start_at(&self, offset: u64) -> Result<()> {
        let _maintenance = lock(&self.maintenance);
        let _st = self.lock_appender()?;
        self.truncate_fully_locked(offset)
    }

    fn truncate_fully_locked(&self, offset: u64) -> Result<()> {
        let config = self.config();
        let _flush = lock(&self.flush_state.lock);
        self.flush_state.generation.fetch_add(1, Ordering::AcqRel);
        let old: Vec<Arc<LogSegment>> = {
            let mut segs = self.segments.write().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *segs).into_values().collect()
        };
        for s in &old {
            s.delete_files()?;
        }
        let seg = LogSegment::create(
            &self.dir,
            offset,
            config.segment_index_bytes,
            self.clock.now_ms(),
        )?;
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(offset, Arc::new(seg));
        self.log_start_offset.store(offset, Ordering::Release);
        self.log_end_offset.store(offset, Ordering::Release);
        {
            let mut epochs = lock(&self.epochs);
            if epochs.clear() {
                epochs.persist()?;
            }
        }
        self.high_watermark.store(offset, Ordering::Release);
        self.first_dirty_offset.store(offset, Ordering::Release);
        self.flush_state
            .recovery_point
            .store(offset, Ordering::Release);
        lock(&self.producers).clear();
        snapshots::remove_all(&self.dir)?;
        lock(&self.txn_index).truncate(0)?;
        self.flush_state.write_recovery_point(offset)
    }

    // ---- compaction ------------------------------------------------------------------------

    /// One compaction pass if the topic is compacted and enough of the log is dirty (see
    /// `log/cleaner.rs`); `None` when there was nothing to do.
    pub fn compact(&self, options: &CleanerOptions) -> Result<Option<CleanStats>> {
        cleaner::compact(self, options)
    }

    // ---- shutdown --------------------------------------------------------------------------

    /// Clean shutdown: stop appends, trim indexes, fsync everything, persist the recovery point,
    /// and leave the clean-shutdown marker so the next open skips recovery.
    pub fn close(&self) -> Result<()> {
        let mut st = lock(&self.appender);
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        self.join_background();
        let active = self.active();
        active.seal()?;
        for s in self.segments_snapshot() {
            s.flush()?;
        }
        self.flush_state
            .recovery_point
            .fetch_max(self.log_end_offset(), Ordering::AcqRel);
        self.flush_state
            .write_recovery_point(self.recovery_point())?;
        // The next open starts from this snapshot and replays nothing.
        crate::txn_index::sync(&self.dir)?;
        snapshots::write(
            &self.dir,
            self.log_end_offset(),
            &lock(&self.producers).to_snapshot(),
        )?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        fs::write(&marker, b"").ctx("write clean-shutdown marker", &marker)?;
        checkpoint::sync_dir(&self.dir)
    }

    /// Deletes the partition: its segments and its directory.
    pub fn delete(self) -> Result<()> {
        let doomed = self.delete_dir()?;
        fs::remove_dir_all(&doomed).ctx("delete log directory", &doomed)
    }

    /// True once [`Log::delete_dir`] has begun.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Deletes the partition as Kafka does: appends stop (answering [`LogError::Deleted`]), the
    /// background duties in progress finish or abort (compaction), and the directory is renamed
    /// at once to `<dir>.<uuid>-delete` ([`DELETE_SUFFIX`]) — so a partition of the same name
    /// can be created right away and nothing touches the old one again. Returns the new path;
    /// the caller removes it (off any request path: a large log takes a while to unlink), and
    /// start-up removes any left over. Reads already holding the files go on working.
    pub fn delete_dir(&self) -> Result<PathBuf> {
        self.deleted.store(true, Ordering::Release);
        lock(&self.appender).closed = true;
        self.join_background();
        // Compaction and retention see the flag and stop; flush and checkpoint finish or skip.
        let _maintenance = lock(&self.maintenance);
        let _flush = lock(&self.flush_state.lock);
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let doomed = self
            .dir
            .with_file_name(format!("{name}.{}{DELETE_SUFFIX}", unique_hex()));
        // Requests already holding this log keep reading what it had: segment files closed for
        // idleness could not be reopened under the old path. Best effort: a file that cannot be
        // opened now makes only those late reads fail.
        for seg in self.segments_snapshot() {
            let _ = seg.retire_file();
        }
        fs::rename(&self.dir, &doomed).ctx("rename deleted log directory", &self.dir)?;
        if let Some(parent) = self.dir.parent() {
            checkpoint::sync_dir(parent)?;
        }
        Ok(doomed)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.join_background();
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("log_start_offset", &self.log_start_offset())
            .field("log_end_offset", &self.log_end_offset())
            .field("high_watermark", &self.high_watermark())
            .finish()
    }
}

/// The index entry of a transaction a marker closed, if it was aborted. Its last stable offset
/// is where the LSO stood once it closed (Kafka's rule): the next open transaction's first
/// offset, else just past the marker.
fn aborted_entry(states: &ProducerStates, done: CompletedTxn) -> Option<AbortedTxn> {
    if done.commit {
        return None;
    }
    let after = done.last_offset + 1;
    Some(AbortedTxn {
        producer_id: done.producer_id,
        first_offset: done.first_offset,
        last_offset: done.last_offset,
        last_stable_offset: states.first_open_offset().map_or(after, |o| o.min(after)),
    })
}

/// Splits a producer's record set into batches and validates each. Every byte must belong to a
/// complete, valid batch.
fn validate_incoming(
    buf: &[u8],
    max_message_bytes: usize,
    strict_count: bool,
) -> Result<Vec<(usize, BatchHeader)>> {
    let mut out = Vec::new();
    let mut frames = BatchFrames::new(buf);
    for frame in frames.by_ref() {
        let (pos, h) = frame.map_err(|source| LogError::InvalidBatch {
            position: out
                .last()
                .map_or(0, |(p, h): &(usize, BatchHeader)| p + h.total_size()),
            source,
        })?;
        if h.total_size() > max_message_bytes {
            return Err(LogError::BatchTooLarge {
                size: h.total_size(),
                max: max_message_bytes,
            });
        }
        batch::validate(&buf[pos..pos + h.total_size()], strict_count).map_err(|source| {
            LogError::InvalidBatch {
                position: pos,
                source,
            }
        })?;
        out.push((pos, h));
    }
    if out.is_empty() {
        return Err(LogError::InvalidBatch {
            position: 0,
            source: crate::error::BatchError::Empty,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod rolled_flush_tests {
    use super::*;

    fn batch(n: usize) -> bytes::BytesMut {
        let mut b = crate::BatchBuilder::new(crate::Compression::None);
        for _ in 0..n {
            b.push(&crate::Record {
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(Bytes::from(vec![7u8; 100])),
                headers: Vec::new(),
            });
        }
        b.build().unwrap_or_default()
    }

    /// Segments rolling faster than they can be fsynced queue for one flusher thread instead of
    /// starting a thread each; once the disk answers, every one is flushed.
    #[test]
    fn rolls_queue_for_one_background_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 4096,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config).unwrap();
        {
            // Held, the flush lock stands for a disk that does not answer.
            let _slow_disk = lock(&log.flush_state.lock);
            for _ in 0..40 {
                log.append_as_leader(&batch(30), 0).unwrap();
            }
            assert!(log.segments_snapshot().len() > 20, "the segments rolled");
            let running = lock(&log.background)
                .iter()
                .filter(|h| !h.is_finished())
                .count();
            assert_eq!(running, 1, "one flusher, the rolls queued for it");
        }
        let last_roll = log
            .segments_snapshot()
            .last()
            .map(|s| s.base_offset())
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while log.recovery_point() < last_roll {
            assert!(
                std::time::Instant::now() < deadline,
                "the queued rolls were not flushed"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
