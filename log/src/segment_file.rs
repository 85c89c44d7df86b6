//! A segment's `.log` file descriptor, opened on demand and closed when idle.
//!
//! A broker with thousands of partitions and small segments would otherwise hold a descriptor for
//! every segment it has ever loaded, and hit `ulimit -n` (commonly 1024) long before memory or
//! disk. The active segment's file stays open while it is used; a sealed segment's file is closed
//! by [`SegmentFile::close_if_idle`] when nothing touched it between two sweeps (a second-chance
//! clock: no timestamps on the read path) and reopened by the next reader.
//!
//! Readers keep an `Arc<File>` for as long as they need it (a `sendfile` region), so closing here
//! only drops this handle's reference. A segment leaving the log (retention, compaction's swap,
//! deletion) is first [`SegmentFile::retire`]d: its file is opened if it was closed and never
//! closed again, so readers that still hold the segment keep reading the unlinked file — exactly
//! as before this file became lazy — instead of reopening the path, which by then names nothing
//! or the segment's replacement.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::{IoContext, Result};

pub(crate) struct SegmentFile {
    path: PathBuf,
    file: RwLock<Option<Arc<File>>>,
    /// Set by every use, cleared by the idle sweep: a file untouched for a whole sweep interval
    /// is idle.
    touched: AtomicBool,
    retired: AtomicBool,
}

impl SegmentFile {
    /// Opens (creating if absent) the file at `path`.
    pub(crate) fn open(path: &Path) -> Result<SegmentFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("open segment", path)?;
        Ok(SegmentFile {
            path: path.to_path_buf(),
            file: RwLock::new(Some(Arc::new(file))),
            touched: AtomicBool::new(true),
            retired: AtomicBool::new(false),
        })
    }

    /// The file, reopened if the idle sweep closed it. Never created again: a segment whose file
    /// has gone gets an error, not an empty file.
    pub(crate) fn get(&self) -> Result<Arc<File>> {
        // A load before the store keeps readers from bouncing the cache line on every call.
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
        if let Some(f) = self.file.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(f.clone());
        }
        let mut slot = self.file.write().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let file = Arc::new(self.reopen()?);
        *slot = Some(file.clone());
        Ok(file)
    }

    /// Closes the file if nobody used it since the previous call; true if it was closed now.
    /// The caller decides which files may close (sealed and flushed ones).
    pub(crate) fn close_if_idle(&self) -> bool {
        if self.retired.load(Ordering::Acquire) || self.touched.swap(false, Ordering::Relaxed) {
            return false;
        }
        let mut slot = self.file.write().unwrap_or_else(|e| e.into_inner());
        if self.retired.load(Ordering::Acquire) {
            return false;
        }
        slot.take().is_some()
    }

    /// Closes the file now (unless retired); the next use reopens it.
    pub(crate) fn close(&self) {
        let mut slot = self.file.write().unwrap_or_else(|e| e.into_inner());
        if !self.retired.load(Ordering::Acquire) {
            slot.take();
        }
    }

    /// Pins the file open for the segment's remaining life (see the module docs). Call before the
    /// path is unlinked or replaced.
    pub(crate) fn retire(&self) -> Result<()> {
        let mut slot = self.file.write().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Arc::new(self.reopen()?));
        }
        self.retired.store(true, Ordering::Release);
        Ok(())
    }

    fn reopen(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .ctx("reopen segment", &self.path)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn an_idle_file_closes_after_a_full_sweep_and_reopens_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let f = SegmentFile::open(&path).unwrap();
        f.get().unwrap().write_all_at(b"abc", 0).unwrap();
        // Touched since the last sweep: survives one.
        assert!(!f.close_if_idle());
        assert!(f.is_open());
        assert!(f.close_if_idle());
        assert!(!f.is_open());
        let mut buf = [0u8; 3];
        f.get().unwrap().read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abc");
        assert!(f.is_open());
    }

    #[test]
    fn a_retired_file_stays_readable_after_its_path_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let f = SegmentFile::open(&path).unwrap();
        f.get().unwrap().write_all_at(b"old", 0).unwrap();
        assert!(!f.close_if_idle());
        assert!(f.close_if_idle());
        f.retire().unwrap();
        // The path now names another file (compaction's swap): the retired segment must keep
        // reading its own bytes, and the sweep must not close them away.
        std::fs::write(dir.path().join("new"), b"new").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        for _ in 0..3 {
            assert!(!f.close_if_idle());
        }
        let mut buf = [0u8; 3];
        f.get().unwrap().read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"old");
    }

    #[test]
    fn a_closed_file_whose_path_is_gone_is_an_error_not_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let f = SegmentFile::open(&path).unwrap();
        assert!(!f.close_if_idle());
        assert!(f.close_if_idle());
        std::fs::remove_file(&path).unwrap();
        assert!(f.get().is_err());
        assert!(!path.exists());
    }
}
