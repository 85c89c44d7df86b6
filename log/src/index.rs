//! Sparse, memory-mapped segment indexes: `.index` (offset → file position) and `.timeindex`
//! (max timestamp → offset), in Kafka's on-disk layout.
//!
//! Both are arrays of fixed-size big-endian entries, sorted by key, over an mmap'd file that is
//! preallocated to `segment.index.bytes` while the segment is active and trimmed to its entries
//! when the segment rolls or the log closes. Lookups binary-search for the last entry at or before
//! the target; the caller scans the log forward from there.
//!
//! | file         | entry                                    | size |
//! |--------------|------------------------------------------|------|
//! | `.index`     | relative offset u32, file position u32   | 8    |
//! | `.timeindex` | timestamp i64, relative offset u32       | 12   |
//!
//! The preallocated file is sparse, and a store to a page of a sparse mapping that the file system
//! cannot back (a full disk) kills the process with SIGBUS. So no entry is written to a page that
//! has not been allocated first: [`IndexFile::reserve`] allocates disk blocks ahead of the entries
//! in [`ALLOCATION_CHUNK`]s with `fallocate`, where a full disk is an ordinary `ENOSPC` error, and
//! [`IndexFile::push`] refuses to write past what was allocated. Allocating in chunks rather than
//! the whole `segment.index.bytes` keeps a thousand idle partitions from reserving 20 GB.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::error::{IoContext, Result};

/// Index bytes allocated at a time: 8192 offset-index entries, about 32 MiB of log at the default
/// `index.interval.bytes`.
pub const ALLOCATION_CHUNK: usize = 64 << 10;

/// Really allocates `len` bytes of `file` from `offset` (disk blocks, not a sparse hole), so a
/// full disk shows up here as `ENOSPC` instead of later as SIGBUS in a mapping. File systems
/// without `fallocate` get zeros written instead.
pub fn allocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    if len == 0 {
        return Ok(());
    }
    match fallocate(
        file.as_raw_fd(),
        FallocateFlags::empty(),
        offset as i64,
        len as i64,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// An mmap'd file of fixed-size entries: the mechanism under both index kinds.
///
/// The mapping needs no open descriptor, so the file is opened only to be resized or allocated
/// (at a roll, and once per [`ALLOCATION_CHUNK`] of entries): a broker with thousands of partitions
/// would otherwise spend two descriptors per segment.
pub(crate) struct IndexFile {
    path: PathBuf,
    mmap: Option<MmapMut>,
    entry_size: usize,
    entries: usize,
    /// Bytes from the start known to be backed by disk blocks in this process; writes stay below.
    allocated: usize,
}

impl IndexFile {
    /// Opens (creating if absent) an index file. An existing file's entries are taken to be its
    /// whole length, as written by [`IndexFile::trim`]; callers sanity-check them.
    fn open(path: &Path, entry_size: usize) -> Result<IndexFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("open index", path)?;
        let len = file.metadata().ctx("stat index", path)?.len() as usize;
        let mut index = IndexFile {
            path: path.to_path_buf(),
            mmap: None,
            entry_size,
            entries: len / entry_size,
            // Not trusted from disk: a file left preallocated by a crash is sparse.
            allocated: 0,
        };
        index.map(&file, len)?;
        Ok(index)
    }

    /// Opens the file again. Never created here: an index whose file has gone (its segment was
    /// deleted) must not come back as an empty file.
    fn reopen(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .ctx("reopen index", &self.path)
    }

    fn map(&mut self, file: &File, len: usize) -> Result<()> {
        self.mmap = if len == 0 {
            None
        } else {
            // SAFETY: the file is private to this segment and only resized through `resize`, which
            // drops this mapping first; no other process is expected to truncate it underneath us.
            let m = unsafe { MmapMut::map_mut(file) }.ctx("mmap index", &self.path)?;
            // Lookups are binary searches and appends touch one page at a time. Without this, the
            // first fault on a fresh index reads around it by the device's read-ahead (8 MiB on
            // some disks): zero-filling megabytes of unwritten extents per index, which made the
            // first writes to a new 1000-partition topic take 20 s and filled the page cache with
            // zeros. A failed hint costs only speed.
            let _ = m.advise(memmap2::Advice::Random);
            Some(m)
        };
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mmap.as_ref().map_or(0, |m| m.len() / self.entry_size)
    }

    /// Sets the file length to `bytes` (rounded down to whole entries) and remaps it.
    fn resize(&mut self, bytes: usize) -> Result<()> {
        let bytes = (bytes / self.entry_size).max(self.entries) * self.entry_size;
        if self.mmap.as_ref().map_or(0, |m| m.len()) == bytes {
            return Ok(());
        }
        self.mmap = None;
        let file = self.reopen()?;
        file.set_len(bytes as u64).ctx("resize index", &self.path)?;
        self.allocated = self.allocated.min(bytes);
        self.map(&file, bytes)
    }

    /// Allocates disk space for `more` entries after the current ones (up to the capacity; a full
    /// index is the roll's business, not an error). `ENOSPC` comes back as an error.
    fn reserve(&mut self, more: usize) -> Result<()> {
        let cap = self.capacity() * self.entry_size;
        let need = ((self.entries + more) * self.entry_size).min(cap);
        if need <= self.allocated {
            return Ok(());
        }
        let target = need.div_ceil(ALLOCATION_CHUNK) * ALLOCATION_CHUNK;
        let target = target.min(cap);
        allocate(
            &self.reopen()?,
            self.allocated as u64,
            (target - self.allocated) as u64,
        )
        .ctx("allocate index space", &self.path)?;
        self.allocated = target;
        Ok(())
    }

    fn trim(&mut self) -> Result<()> {
        self.resize(self.entries * self.entry_size)
    }

    fn entry(&self, i: usize) -> &[u8] {
        let m = self.mmap.as_deref().unwrap_or(&[]);
        &m[i * self.entry_size..(i + 1) * self.entry_size]
    }

    fn is_full(&self) -> bool {
        self.entries >= self.capacity()
    }

    /// Writes an entry after the last. False when the index is full, or when its page was not
    /// allocated by [`IndexFile::reserve`] (then the entry is skipped: the index is sparse, so a
    /// missing entry costs a longer scan, never a wrong answer).
    fn push(&mut self, entry: &[u8]) -> bool {
        if self.is_full() {
            return false;
        }
        let at = self.entries * self.entry_size;
        if at + self.entry_size > self.allocated && self.reserve(1).is_err() {
            return false;
        }
        if let Some(m) = self.mmap.as_mut() {
            m[at..at + self.entry_size].copy_from_slice(entry);
            self.entries += 1;
            return true;
        }
        false
    }

    /// Number of leading entries for which `is_before` holds (entries are sorted).
    fn partition_point(&self, is_before: impl Fn(&[u8]) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.entries);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if is_before(self.entry(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn flush(&self) -> Result<()> {
        if let Some(m) = &self.mmap {
            m.flush().ctx("flush index", &self.path)?;
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.entries = 0;
    }
}

fn u32_at(b: &[u8], pos: usize) -> u32 {
    u32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]])
}

/// `.index`: relative offset of a batch's base offset → that batch's byte position in the `.log`.
pub struct OffsetIndex {
    inner: IndexFile,
    base_offset: u64,
}

/// One `.index` entry, offsets made absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetPosition {
    pub offset: u64,
    pub position: u32,
}

impl OffsetIndex {
    pub const ENTRY_SIZE: usize = 8;

    pub fn open(path: &Path, base_offset: u64) -> Result<OffsetIndex> {
        Ok(OffsetIndex {
            inner: IndexFile::open(path, Self::ENTRY_SIZE)?,
            base_offset,
        })
    }

    pub fn entries(&self) -> usize {
        self.inner.entries
    }

    pub fn is_full(&self) -> bool {
        self.inner.is_full()
    }

    fn get(&self, i: usize) -> OffsetPosition {
        let e = self.inner.entry(i);
        OffsetPosition {
            offset: self.base_offset + u64::from(u32_at(e, 0)),
            position: u32_at(e, 4),
        }
    }

    pub fn last(&self) -> Option<OffsetPosition> {
        self.entries().checked_sub(1).map(|i| self.get(i))
    }

    /// Appends an entry; false when the index is full (the segment must roll).
    pub fn append(&mut self, offset: u64, position: u32) -> bool {
        let rel = (offset - self.base_offset) as u32;
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&rel.to_be_bytes());
        e[4..].copy_from_slice(&position.to_be_bytes());
        self.inner.push(&e)
    }

    /// The last entry whose offset is <= `offset`, or the start of the segment.
    pub fn lookup(&self, offset: u64) -> OffsetPosition {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        match self.inner.partition_point(|e| u32_at(e, 0) <= rel) {
            0 => OffsetPosition {
                offset: self.base_offset,
                position: 0,
            },
            n => self.get(n - 1),
        }
    }

    /// Drops entries for offsets >= `offset`.
    pub fn truncate_to_offset(&mut self, offset: u64) {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        self.inner.entries = self.inner.partition_point(|e| u32_at(e, 0) < rel);
    }

    /// True when entries strictly increase in offset and position and all point inside the log.
    pub fn is_sane(&self, log_size: u64) -> bool {
        let mut prev: Option<OffsetPosition> = None;
        for i in 0..self.entries() {
            let e = self.get(i);
            if u64::from(e.position) >= log_size.max(1) {
                return false;
            }
            if let Some(p) = prev {
                if e.offset <= p.offset || e.position <= p.position {
                    return false;
                }
            }
            prev = Some(e);
        }
        true
    }

    /// Allocates disk space for `more` entries ahead of writing them (see the module docs).
    pub fn reserve(&mut self, more: usize) -> Result<()> {
        self.inner.reserve(more)
    }

    pub fn clear(&mut self) {
        self.inner.clear()
    }
    pub fn resize(&mut self, bytes: usize) -> Result<()> {
        self.inner.resize(bytes)
    }
    pub fn trim(&mut self) -> Result<()> {
        self.inner.trim()
    }
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

/// `.timeindex`: the largest timestamp seen so far → the offset of the batch that carried it.
pub struct TimeIndex {
    inner: IndexFile,
    base_offset: u64,
}

/// One `.timeindex` entry, offset made absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: u64,
}

impl TimeIndex {
    pub const ENTRY_SIZE: usize = 12;

    pub fn open(path: &Path, base_offset: u64) -> Result<TimeIndex> {
        Ok(TimeIndex {
            inner: IndexFile::open(path, Self::ENTRY_SIZE)?,
            base_offset,
        })
    }

    pub fn entries(&self) -> usize {
        self.inner.entries
    }

    /// Full one entry early: the slot left over takes the segment's final max timestamp when it
    /// rolls, so every sealed segment's largest timestamp is its last entry (as in Kafka).
    pub fn is_full(&self) -> bool {
        self.inner.entries + 1 >= self.inner.capacity()
    }

    fn get(&self, i: usize) -> TimestampOffset {
        let e = self.inner.entry(i);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&e[..8]);
        TimestampOffset {
            timestamp: i64::from_be_bytes(ts),
            offset: self.base_offset + u64::from(u32_at(e, 8)),
        }
    }

    pub fn last(&self) -> Option<TimestampOffset> {
        self.entries().checked_sub(1).map(|i| self.get(i))
    }

    /// Appends an entry if `timestamp` is larger than the last one (the index is monotonic).
    pub fn maybe_append(&mut self, timestamp: i64, offset: u64) -> bool {
        if let Some(last) = self.last() {
            if timestamp <= last.timestamp {
                return true;
            }
            if offset == last.offset {
                // Same batch, larger timestamp: replace the entry's timestamp in place.
                self.inner.entries -= 1;
            }
        }
        let mut e = [0u8; 12];
        e[..8].copy_from_slice(&timestamp.to_be_bytes());
        e[8..].copy_from_slice(&((offset - self.base_offset) as u32).to_be_bytes());
        self.inner.push(&e)
    }

    /// The last entry whose timestamp is < `timestamp`: scanning from its offset finds the first
    /// record with a timestamp >= `timestamp`.
    pub fn lookup(&self, timestamp: i64) -> Option<TimestampOffset> {
        match self.inner.partition_point(|e| {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&e[..8]);
            i64::from_be_bytes(ts) < timestamp
        }) {
            0 => None,
            n => Some(self.get(n - 1)),
        }
    }

    pub fn truncate_to_offset(&mut self, offset: u64) {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        self.inner.entries = self.inner.partition_point(|e| u32_at(e, 8) < rel);
    }

    /// True when timestamps strictly increase, offsets do not decrease, and stay below `next_offset`.
    pub fn is_sane(&self, next_offset: u64) -> bool {
        let mut prev: Option<TimestampOffset> = None;
        for i in 0..self.entries() {
            let e = self.get(i);
            if e.offset >= next_offset.max(self.base_offset + 1) {
                return false;
            }
            if let Some(p) = prev {
                if e.timestamp <= p.timestamp || e.offset < p.offset {
                    return false;
                }
            }
            prev = Some(e);
        }
        true
    }

    /// Allocates disk space for `more` entries ahead of writing them (see the module docs).
    pub fn reserve(&mut self, more: usize) -> Result<()> {
        self.inner.reserve(more)
    }

    pub fn clear(&mut self) {
        self.inner.clear()
    }
    pub fn resize(&mut self, bytes: usize) -> Result<()> {
        self.inner.resize(bytes)
    }
    pub fn trim(&mut self) -> Result<()> {
        self.inner.trim()
    }
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_lookup_floors() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = OffsetIndex::open(&dir.path().join("a.index"), 100).unwrap();
        idx.resize(80).unwrap();
        assert_eq!(
            idx.lookup(150),
            OffsetPosition {
                offset: 100,
                position: 0
            }
        );
        for (o, p) in [(110, 4096), (120, 8192), (130, 12288)] {
            assert!(idx.append(o, p));
        }
        assert_eq!(idx.lookup(99).position, 0);
        assert_eq!(idx.lookup(109).position, 0);
        assert_eq!(idx.lookup(110).position, 4096);
        assert_eq!(idx.lookup(125).position, 8192);
        assert_eq!(idx.lookup(1_000_000).position, 12288);
        assert!(idx.is_sane(20000));
        assert!(!idx.is_sane(12288));
        idx.truncate_to_offset(120);
        assert_eq!(idx.entries(), 1);
        assert_eq!(idx.lookup(125).position, 4096);
    }

    #[test]
    fn offset_index_fills_trims_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.index");
        let mut idx = OffsetIndex::open(&path, 0).unwrap();
        idx.resize(3 * 8 + 5).unwrap();
        assert!(idx.append(1, 10));
        assert!(idx.append(2, 20));
        assert!(idx.append(3, 30));
        assert!(idx.is_full());
        assert!(!idx.append(4, 40));
        idx.truncate_to_offset(3);
        idx.trim().unwrap();
        drop(idx);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        let idx = OffsetIndex::open(&path, 0).unwrap();
        assert_eq!(idx.entries(), 2);
        assert_eq!(
            idx.last(),
            Some(OffsetPosition {
                offset: 2,
                position: 20
            })
        );
    }

    #[test]
    fn preallocated_index_after_crash_is_not_sane() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.index");
        let mut idx = OffsetIndex::open(&path, 0).unwrap();
        idx.resize(1024).unwrap();
        idx.append(5, 100);
        idx.flush().unwrap();
        drop(idx);
        // Not trimmed: the zeros after the real entry read back as entries and fail the check.
        let idx = OffsetIndex::open(&path, 0).unwrap();
        assert_eq!(idx.entries(), 128);
        assert!(!idx.is_sane(1 << 20));
    }

    #[test]
    fn time_index_is_monotonic_and_floors() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = TimeIndex::open(&dir.path().join("d.timeindex"), 1000).unwrap();
        idx.resize(12 * 10).unwrap();
        assert!(idx.maybe_append(500, 1000));
        assert!(idx.maybe_append(400, 1005)); // not larger: ignored
        assert!(idx.maybe_append(700, 1010));
        assert!(idx.maybe_append(900, 1020));
        assert_eq!(idx.entries(), 3);
        assert_eq!(idx.lookup(500), None);
        assert_eq!(idx.lookup(501).unwrap().offset, 1000);
        assert_eq!(idx.lookup(900).unwrap().offset, 1010);
        assert_eq!(idx.lookup(i64::MAX).unwrap().offset, 1020);
        assert!(idx.is_sane(1021));
        assert!(!idx.is_sane(1020));
        idx.truncate_to_offset(1010);
        assert_eq!(idx.last().unwrap().timestamp, 500);
    }
}
