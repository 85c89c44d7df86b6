//! One segment: a `.log` file of back-to-back record batches plus its `.index` and `.timeindex`.
//!
//! Concurrency: one appender (the owning [`crate::Log`] serialises appends) and any number of
//! readers. Readers see only the bytes below `size`, which the appender publishes after the
//! write, so a reader never observes half a batch. Reads go through `pread`/file regions and take
//! the index read-locks only for a binary search; appends take the index write-locks only to add
//! an entry every `index.interval.bytes`.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::error::{BatchError, IoContext, LogError, Result};
use crate::index::{OffsetIndex, TimeIndex};
use crate::segment_file::SegmentFile;

/// A byte range of a segment file: what the network layer hands to `sendfile`.
#[derive(Debug, Clone)]
pub struct FileRegion {
    pub file: Arc<File>,
    pub position: u64,
    pub len: u64,
}

impl FileRegion {
    /// Copies the region into memory (the non-zero-copy path: TLS, gRPC, tests). Returns fewer
    /// bytes if the file shrank since the region was taken (retention or truncation).
    pub fn read_into(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        read_append(&self.file, out, self.len as usize, self.position).map(|_| ())
    }
}

/// File names: the base offset as 20 zero-padded digits plus the extension, as Kafka names them.
pub fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

pub const LOG_EXT: &str = "log";
pub const INDEX_EXT: &str = "index";
pub const TIME_INDEX_EXT: &str = "timeindex";

/// State only the appender touches.
#[derive(Debug)]
struct WriterState {
    bytes_since_last_index_entry: usize,
    /// Base offset of the batch holding the largest timestamp so far (for the time index).
    offset_of_max_timestamp: u64,
    /// The first batch's max timestamp, from which `segment.ms` is measured.
    rolling_base_ms: Option<i64>,
}

pub struct LogSegment {
    base_offset: u64,
    dir: PathBuf,
    log_path: PathBuf,
    file: SegmentFile,
    size: AtomicU64,
    next_offset: AtomicU64,
    max_timestamp: AtomicI64,
    offset_index: RwLock<OffsetIndex>,
    time_index: RwLock<TimeIndex>,
    writer: Mutex<WriterState>,
    created_ms: i64,
}

/// What a recovery scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryOutcome {
    pub valid_bytes: u64,
    pub truncated_bytes: u64,
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A panic while holding an index lock leaves the index consistent (entries are published by a
    // counter bump after the write), so poisoning carries no information here.
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl LogSegment {
    /// Creates a new, empty segment with preallocated indexes.
    pub fn create(dir: &Path, base_offset: u64, index_bytes: usize, now_ms: i64) -> Result<Self> {
        let log_path = dir.join(file_name(base_offset, LOG_EXT));
        if let Ok(meta) = fs::metadata(&log_path) {
            if meta.len() > 0 {
                return Err(LogError::Corrupt {
                    path: log_path,
                    reason: "a non-empty segment already exists at this base offset".into(),
                });
            }
        }
        let seg = Self::open(dir, base_offset, now_ms)?;
        write_lock(&seg.offset_index).clear();
        write_lock(&seg.time_index).clear();
        seg.resize_indexes(index_bytes)?;
        Ok(seg)
    }

    /// Opens an existing segment's files (creating missing ones). Nothing is validated: follow with
    /// [`LogSegment::load`] or [`LogSegment::recover`].
    pub fn open(dir: &Path, base_offset: u64, now_ms: i64) -> Result<Self> {
        let log_path = dir.join(file_name(base_offset, LOG_EXT));
        let file = SegmentFile::open(&log_path)?;
        let size = file.get()?.metadata().ctx("stat segment", &log_path)?.len();
        let offset_index =
            OffsetIndex::open(&dir.join(file_name(base_offset, INDEX_EXT)), base_offset)?;
        let time_index = TimeIndex::open(
            &dir.join(file_name(base_offset, TIME_INDEX_EXT)),
            base_offset,
        )?;
        Ok(LogSegment {
            base_offset,
            dir: dir.to_path_buf(),
            log_path,
            file,
            size: AtomicU64::new(size),
            next_offset: AtomicU64::new(base_offset),
            max_timestamp: AtomicI64::new(-1),
            offset_index: RwLock::new(offset_index),
            time_index: RwLock::new(time_index),
            writer: Mutex::new(WriterState {
                bytes_since_last_index_entry: 0,
                offset_of_max_timestamp: base_offset,
                rolling_base_ms: None,
            }),
            created_ms: now_ms,
        })
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }
    /// Bytes of complete batches.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    /// The offset after the last batch (the base offset when empty).
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }
    /// The largest batch max-timestamp in the segment, -1 when empty.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }
    pub fn is_empty(&self) -> bool {
        self.size() == 0
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first batch's max timestamp: `segment.ms` is measured from it.
    pub fn first_timestamp(&self) -> Option<i64> {
        self.writer().rolling_base_ms
    }

    /// When this process created or opened the segment.
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// True when either index has no room for another entry.
    pub fn indexes_full(&self) -> bool {
        read_lock(&self.offset_index).is_full() || read_lock(&self.time_index).is_full()
    }

    /// True when `offset` still fits the u32 relative offsets of the indexes.
    pub fn can_hold_offset(&self, offset: u64) -> bool {
        offset >= self.base_offset && offset - self.base_offset <= u64::from(u32::MAX)
    }

    pub fn resize_indexes(&self, bytes: usize) -> Result<()> {
        write_lock(&self.offset_index).resize(bytes)?;
        write_lock(&self.time_index).resize(bytes)
    }

    /// Appends batches that already carry their final offsets. `headers` are the parsed headers
    /// of the batches in `data`, in order.
    pub fn append(
        &self,
        parts: &[&[u8]],
        headers: &[BatchHeader],
        index_interval: usize,
    ) -> Result<()> {
        let position = self.size();
        // Index space first: once the batches are written their entries must not fail (a full
        // disk would otherwise surface as SIGBUS in the mapping). The time index may get one more
        // entry when the segment is sealed.
        write_lock(&self.offset_index).reserve(headers.len())?;
        write_lock(&self.time_index).reserve(headers.len() + 1)?;
        let file = self.file.get()?;
        if let Err(e) = write_all_vectored_at(&file, parts, position) {
            // Leave no partial batch behind for the next append to write after.
            let _ = file.set_len(position);
            return Err(e).ctx("append to segment", &self.log_path);
        }
        let mut w = self.writer();
        let mut pos = position;
        let mut max_ts = self.max_timestamp();
        for h in headers {
            if w.rolling_base_ms.is_none() {
                w.rolling_base_ms = Some(h.max_timestamp);
            }
            if h.max_timestamp > max_ts {
                max_ts = h.max_timestamp;
                w.offset_of_max_timestamp = h.base_offset as u64;
            }
            if w.bytes_since_last_index_entry > index_interval {
                write_lock(&self.offset_index).append(h.base_offset as u64, pos as u32);
                write_lock(&self.time_index).maybe_append(max_ts, w.offset_of_max_timestamp);
                w.bytes_since_last_index_entry = 0;
            }
            w.bytes_since_last_index_entry += h.total_size();
            pos += h.total_size() as u64;
        }
        self.max_timestamp.store(max_ts, Ordering::Release);
        if let Some(last) = headers.last() {
            self.next_offset
                .store(last.next_offset() as u64, Ordering::Release);
        }
        self.size.store(pos, Ordering::Release);
        Ok(())
    }

    /// Reads the header of the batch at `position`, or `None` at (or past) the end.
    pub fn header_at(&self, position: u64, limit: u64) -> Result<Option<BatchHeader>> {
        if position + HEADER_LEN as u64 > limit {
            return Ok(None);
        }
        let mut buf = [0u8; HEADER_LEN];
        self.file
            .get()?
            .read_exact_at(&mut buf, position)
            .ctx("read batch header", &self.log_path)?;
        let h = BatchHeader::parse(&buf).map_err(|e| self.corrupt(position, e))?;
        h.check().map_err(|e| self.corrupt(position, e))?;
        if position + h.total_size() as u64 > limit {
            return Ok(None);
        }
        Ok(Some(h))
    }

    fn corrupt(&self, position: u64, e: BatchError) -> LogError {
        LogError::Corrupt {
            path: self.log_path.clone(),
            reason: format!("at byte {position}: {e}"),
        }
    }

    /// Position and header of the first batch whose last offset is >= `offset`.
    pub fn find_batch(&self, offset: u64) -> Result<Option<(u64, BatchHeader)>> {
        let limit = self.size();
        let mut pos = u64::from(read_lock(&self.offset_index).lookup(offset).position);
        while let Some(h) = self.header_at(pos, limit)? {
            if h.last_offset() as u64 >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.total_size() as u64;
        }
        Ok(None)
    }

    /// Whole batches starting with the one containing `offset`, up to `max_bytes` (the first
    /// batch always, so a consumer can make progress past a batch larger than its limit), and
    /// only batches whose base offset is below `max_offset`.
    ///
    /// Returns the region and the offset after its last batch.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: u64,
        max_offset: u64,
        first_batch_always: bool,
    ) -> Result<Option<(FileRegion, u64)>> {
        let Some((start, first)) = self.find_batch(offset)? else {
            return Ok(None);
        };
        if first.base_offset as u64 >= max_offset
            || (!first_batch_always && first.total_size() as u64 > max_bytes)
        {
            return Ok(None);
        }
        let limit = self.size();
        let mut end = start + first.total_size() as u64;
        let mut next = first.next_offset() as u64;
        while end - start < max_bytes {
            match self.header_at(end, limit)? {
                Some(h)
                    if (h.base_offset as u64) < max_offset
                        && end - start + h.total_size() as u64 <= max_bytes =>
                {
                    end += h.total_size() as u64;
                    next = h.next_offset() as u64;
                }
                _ => break,
            }
        }
        Ok(Some((
            FileRegion {
                file: self.file.get()?,
                position: start,
                len: end - start,
            },
            next,
        )))
    }

    /// Reads bytes `[position, position + len)` of the `.log` file.
    pub fn read_bytes(&self, position: u64, len: usize) -> Result<Bytes> {
        let file = self.file.get()?;
        let buf = read_exact_uninit(&file, len, position).ctx("read segment", &self.log_path)?;
        Ok(Bytes::from(buf))
    }

    /// Finds the first record with timestamp >= `timestamp` below `max_offset`.
    pub fn find_offset_by_timestamp(
        &self,
        timestamp: i64,
        max_offset: u64,
    ) -> Result<Option<(u64, i64)>> {
        if self.max_timestamp() < timestamp {
            return Ok(None);
        }
        let from = read_lock(&self.time_index)
            .lookup(timestamp)
            .map_or(self.base_offset, |e| e.offset);
        let limit = self.size();
        let mut pos = u64::from(read_lock(&self.offset_index).lookup(from).position);
        while let Some(h) = self.header_at(pos, limit)? {
            if h.base_offset as u64 >= max_offset {
                return Ok(None);
            }
            if h.max_timestamp >= timestamp {
                let bytes = self.read_bytes(pos, h.total_size())?;
                let records =
                    crate::record::decode_batch(&bytes, crate::record::DEFAULT_DECOMPRESSED_LIMIT)
                        .map_err(|e| self.corrupt(pos, e))?;
                if let Some(r) = records
                    .iter()
                    .find(|r| r.timestamp >= timestamp && r.offset < max_offset)
                {
                    return Ok(Some((r.offset, r.timestamp)));
                }
            }
            pos += h.total_size() as u64;
        }
        Ok(None)
    }

    /// The record holding this segment's largest timestamp: `(offset, timestamp)`.
    pub fn max_timestamp_record(&self) -> Result<Option<(u64, i64)>> {
        let max_ts = self.max_timestamp();
        if max_ts < 0 {
            return Ok(None);
        }
        let batch_offset = self.writer().offset_of_max_timestamp;
        let Some((pos, h)) = self.find_batch(batch_offset)? else {
            return Ok(None);
        };
        let bytes = self.read_bytes(pos, h.total_size())?;
        let records =
            crate::record::decode_batch(&bytes, crate::record::DEFAULT_DECOMPRESSED_LIMIT)
                .map_err(|e| self.corrupt(pos, e))?;
        Ok(records
            .iter()
            .find(|r| r.timestamp == max_ts)
            .map(|r| (r.offset, r.timestamp)))
    }

    /// Loads a segment whose indexes are trusted (clean shutdown, or below the recovery point):
    /// checks the indexes and scans the tail after the last index entry to learn the next offset
    /// and max timestamp. An error means the segment needs [`LogSegment::recover`].
    pub fn load(&self, index_interval: usize) -> Result<()> {
        let size = self.size();
        let (start_pos, _) = {
            let idx = read_lock(&self.offset_index);
            if !idx.is_sane(size) {
                return Err(self.corrupt(0, BatchError::CorruptRecord("offset index is not sane")));
            }
            // A missing index (recreated empty) is consistent but would make every lookup scan
            // the whole segment: rebuild it instead.
            if idx.entries() == 0 && size > 2 * index_interval as u64 {
                return Err(self.corrupt(0, BatchError::CorruptRecord("offset index is missing")));
            }
            let last = idx.last();
            (last.map_or(0, |e| u64::from(e.position)), last)
        };
        let mut pos = start_pos;
        let mut next = self.base_offset;
        let (mut max_ts, mut max_ts_offset) = read_lock(&self.time_index)
            .last()
            .map_or((-1, self.base_offset), |e| (e.timestamp, e.offset));
        let mut since_index = 0usize;
        let mut first_ts = None;
        while pos < size {
            let Some(h) = self.header_at(pos, size)? else {
                return Err(self.corrupt(
                    pos,
                    BatchError::Truncated {
                        needed: HEADER_LEN,
                        available: 0,
                    },
                ));
            };
            first_ts.get_or_insert(h.max_timestamp);
            if h.max_timestamp > max_ts {
                max_ts = h.max_timestamp;
                max_ts_offset = h.base_offset as u64;
            }
            next = h.next_offset() as u64;
            since_index += h.total_size();
            pos += h.total_size() as u64;
        }
        if !read_lock(&self.time_index).is_sane(next.max(self.base_offset + 1)) {
            return Err(self.corrupt(0, BatchError::CorruptRecord("time index is not sane")));
        }
        self.next_offset.store(next, Ordering::Release);
        self.max_timestamp.store(max_ts, Ordering::Release);
        let mut w = self.writer();
        w.bytes_since_last_index_entry = since_index;
        w.offset_of_max_timestamp = max_ts_offset;
        w.rolling_base_ms = self.first_batch_timestamp()?.or(first_ts);
        Ok(())
    }

    fn first_batch_timestamp(&self) -> Result<Option<i64>> {
        Ok(self.header_at(0, self.size())?.map(|h| h.max_timestamp))
    }

    /// Validates every batch (framing, magic, CRC, offsets), rebuilds both indexes, and truncates
    /// the file at the first invalid byte. `contiguous` demands that each batch start exactly where
    /// the previous one ended (true for logs that are not compacted).
    pub fn recover(
        &self,
        index_interval: usize,
        max_batch: usize,
        contiguous: bool,
    ) -> Result<RecoveryOutcome> {
        let file = self.file.get()?;
        let file_len = file.metadata().ctx("stat segment", &self.log_path)?.len();
        {
            let mut oi = write_lock(&self.offset_index);
            let mut ti = write_lock(&self.time_index);
            oi.clear();
            ti.clear();
        }
        self.size.store(0, Ordering::Release);
        self.next_offset.store(self.base_offset, Ordering::Release);
        self.max_timestamp.store(-1, Ordering::Release);
        {
            let mut w = self.writer();
            w.bytes_since_last_index_entry = 0;
            w.offset_of_max_timestamp = self.base_offset;
            w.rolling_base_ms = None;
        }
        let mut pos = 0u64;
        let mut expected = self.base_offset;
        let mut buf = Vec::new();
        let mut header_buf = [0u8; HEADER_LEN];
        loop {
            if pos + HEADER_LEN as u64 > file_len {
                break;
            }
            file.read_exact_at(&mut header_buf, pos)
                .ctx("recover segment", &self.log_path)?;
            let Ok(h) = BatchHeader::parse(&header_buf) else {
                break;
            };
            if h.check().is_err()
                || h.total_size() > max_batch
                || pos + h.total_size() as u64 > file_len
                || h.base_offset < 0
                || (contiguous && h.base_offset as u64 != expected)
                || (h.base_offset as u64) < expected
                || !self.can_hold_offset(h.last_offset() as u64)
            {
                break;
            }
            buf.resize(h.total_size(), 0);
            file.read_exact_at(&mut buf, pos)
                .ctx("recover segment", &self.log_path)?;
            if batch::validate(&buf, false).is_err() {
                break;
            }
            self.append_index_only(&h, pos, index_interval);
            expected = h.next_offset() as u64;
            pos += h.total_size() as u64;
        }
        if pos < file_len {
            tracing::warn!(
                segment = %self.log_path.display(),
                valid_bytes = pos,
                truncated_bytes = file_len - pos,
                "truncating invalid tail found by recovery"
            );
            file.set_len(pos).ctx("truncate segment", &self.log_path)?;
        }
        self.size.store(pos, Ordering::Release);
        Ok(RecoveryOutcome {
            valid_bytes: pos,
            truncated_bytes: file_len - pos,
        })
    }

    /// The index bookkeeping of [`LogSegment::append`] for a batch already in the file.
    fn append_index_only(&self, h: &BatchHeader, pos: u64, index_interval: usize) {
        let mut w = self.writer();
        if w.rolling_base_ms.is_none() {
            w.rolling_base_ms = Some(h.max_timestamp);
        }
        let mut max_ts = self.max_timestamp();
        if h.max_timestamp > max_ts {
            max_ts = h.max_timestamp;
            w.offset_of_max_timestamp = h.base_offset as u64;
        }
        if w.bytes_since_last_index_entry > index_interval {
            write_lock(&self.offset_index).append(h.base_offset as u64, pos as u32);
            write_lock(&self.time_index).maybe_append(max_ts, w.offset_of_max_timestamp);
            w.bytes_since_last_index_entry = 0;
        }
        w.bytes_since_last_index_entry += h.total_size();
        self.max_timestamp.store(max_ts, Ordering::Release);
        self.next_offset
            .store(h.next_offset() as u64, Ordering::Release);
    }

    /// Removes every batch whose last offset is >= `offset` (a batch containing `offset` goes
    /// whole). Returns the bytes removed.
    pub fn truncate_to(&self, offset: u64, index_interval: usize) -> Result<u64> {
        let Some((pos, _)) = self.find_batch(offset)? else {
            return Ok(0);
        };
        let old = self.size();
        self.file
            .get()?
            .set_len(pos)
            .ctx("truncate segment", &self.log_path)?;
        self.size.store(pos, Ordering::Release);
        // Rebuilding the sparse indexes from the file leaves no entry pointing past the new end and
        // restores the max timestamp; truncation is rare (a follower dropping a divergent tail).
        self.recover(index_interval, usize::MAX, false)?;
        Ok(old - pos)
    }

    /// Called when this segment stops being the active one: records the final max timestamp in
    /// the time index and trims both indexes to their entries.
    pub fn seal(&self) -> Result<()> {
        let w = self.writer();
        let max_ts = self.max_timestamp();
        {
            let mut ti = write_lock(&self.time_index);
            if max_ts >= 0 {
                ti.maybe_append(max_ts, w.offset_of_max_timestamp);
            }
            ti.trim()?;
        }
        write_lock(&self.offset_index).trim()
    }

    /// fsyncs the log file and msyncs the indexes.
    pub fn flush(&self) -> Result<()> {
        self.file
            .get()?
            .sync_data()
            .ctx("fsync segment", &self.log_path)?;
        read_lock(&self.offset_index).flush()?;
        read_lock(&self.time_index).flush()
    }

    /// fsyncs the log file only: indexes are rebuilt by recovery, so the hot path skips them.
    pub fn flush_log(&self) -> Result<()> {
        self.file
            .get()?
            .sync_data()
            .ctx("fsync segment", &self.log_path)
    }

    /// Closes the `.log` file if nothing used it since the previous call (see
    /// [`crate::segment_file`]); true if it was closed now. For sealed, flushed segments only.
    pub fn close_file_if_idle(&self) -> bool {
        self.file.close_if_idle()
    }

    /// Closes the `.log` file now; the next use reopens it. For sealed, flushed segments only.
    pub fn close_file(&self) {
        self.file.close()
    }

    /// Whether the `.log` file is open now.
    pub fn is_file_open(&self) -> bool {
        self.file.is_open()
    }

    /// Keeps the `.log` file open for the segment's remaining life: call before its path is
    /// unlinked or replaced, so readers still holding the segment read its own bytes.
    pub(crate) fn retire_file(&self) -> Result<()> {
        self.file.retire()
    }

    /// Deletes the segment's files. Readers holding a region keep reading the unlinked file.
    pub fn delete_files(&self) -> Result<()> {
        // Best effort: if the file cannot be opened any more there is nothing left to read.
        let _ = self.file.retire();
        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            let p = self.dir.join(file_name(self.base_offset, ext));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("delete segment file", &p),
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for LogSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSegment")
            .field("base_offset", &self.base_offset)
            .field("size", &self.size())
            .field("next_offset", &self.next_offset())
            .finish()
    }
}

/// Reads exactly `len` bytes at `position` into a new buffer that is not zero-filled first: a
/// fetch of megabytes spent an eighth of its time in memset before the read overwrote it all.
fn read_exact_uninit(file: &File, len: usize, position: u64) -> std::io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    if read_append(file, &mut buf, len, position)? < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// Appends up to `len` bytes read at `position` to `out`, stopping early only at the end of the
/// file, without zero-filling the space first. Returns how many bytes were appended.
fn read_append(
    file: &File,
    out: &mut Vec<u8>,
    len: usize,
    position: u64,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    out.reserve(len);
    let start = out.len();
    let mut done = 0usize;
    while done < len {
        let at = i64::try_from(position + done as u64)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the destination is the spare capacity of `out` past its `start + done`
        // initialised bytes (`reserve` made room for `len - done` more, all inside the
        // allocation); pread writes at most that many through the raw pointer, and no reference
        // to uninitialised bytes is ever made.
        let n = unsafe {
            nix::libc::pread(
                file.as_raw_fd(),
                out.as_mut_ptr().add(start + done).cast(),
                len - done,
                at,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
        // SAFETY: pread has written the `n` bytes past the previous length.
        unsafe { out.set_len(start + done) };
    }
    Ok(done)
}

/// Writes `parts` back to back at `position` with as few `pwritev` calls as the kernel allows
/// (partial writes continue where they stopped; at most `IOV_MAX` slices per call).
fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut position: u64) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < parts.len() {
        let batch: Vec<std::io::IoSlice<'_>> = parts[first..parts.len().min(first + IOV_MAX)]
            .iter()
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        let mut n = match nix::sys::uio::pwritev(file, &batch, position as i64) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        position += n as u64;
        while n > 0 {
            let len = parts[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                parts[first] = &parts[first][n..];
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod read_tests {
    use super::{read_append, read_exact_uninit};
    use std::io::Write;

    #[test]
    fn reads_exactly_the_range_and_refuses_past_the_end() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        assert_eq!(
            read_exact_uninit(&f, 3000, 1234).unwrap(),
            &data[1234..4234]
        );
        assert_eq!(read_exact_uninit(&f, 0, 10_000).unwrap(), Vec::<u8>::new());
        let e = read_exact_uninit(&f, 10, 9995).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn appends_after_what_the_buffer_holds_and_stops_at_the_end_of_the_file() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let mut out = b"head".to_vec();
        assert_eq!(read_append(&f, &mut out, 100, 50).unwrap(), 100);
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..], &data[50..150]);
        // A region taken before the file shrank: what is there, no error.
        assert_eq!(read_append(&f, &mut out, 500, 9_800).unwrap(), 200);
        assert_eq!(out.len(), 304);
        assert_eq!(&out[104..], &data[9_800..]);
    }
}
