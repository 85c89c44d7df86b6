//! [`LogDirHealth`]: whether a log directory may be written, and its way back after a failure.
//!
//! Kafka takes a log directory offline when a write to it fails: the broker stops writing there
//! rather than carrying on with logs in an unknown state, and keeps serving what it can read.
//! Sluice does the same, per data directory. A failed write (`ENOSPC` from an append, an index
//! allocation, an fsync, a checkpoint) marks the directory offline for writes; every later write
//! is refused at once with [`LogError::LogDirOffline`] (KAFKA_STORAGE_ERROR on the wire) without
//! touching the disk, and reads go on.
//!
//! Unlike Kafka, which needs a restart, a directory that went offline because it was *full*
//! comes back by itself: [`LogDirHealth::probe`] (run periodically by the broker) checks that
//! space has been freed by really allocating and fsyncing a probe file, and brings the directory
//! back online when that works. A directory that failed for any other reason (EIO, a failed fsync
//! whose page-cache state is unknown) stays offline until the broker restarts, as in Kafka.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::LogError;

/// Bytes the probe must be able to allocate for a full directory to count as having room again.
pub const PROBE_BYTES: u64 = 1 << 20;
const PROBE_FILE: &str = ".sluice-space-probe";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    /// What failed, with the OS error.
    pub reason: String,
    /// The failure was "no space left" (or a quota): the probe may bring the directory back.
    pub no_space: bool,
}

/// The write health of one log directory, shared by every partition in it.
#[derive(Debug)]
pub struct LogDirHealth {
    dir: PathBuf,
    offline: Mutex<Option<Offline>>,
    /// Writes that failed on the disk.
    failed_writes: AtomicU64,
    /// Writes refused without trying because the directory was offline.
    refused_writes: AtomicU64,
}

/// True for the errors a full disk gives.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == ENOSPC || c == EDQUOT)
}
const ENOSPC: i32 = nix::errno::Errno::ENOSPC as i32;
const EDQUOT: i32 = nix::errno::Errno::EDQUOT as i32;

impl LogDirHealth {
    pub fn new(dir: impl AsRef<Path>) -> LogDirHealth {
        LogDirHealth {
            dir: dir.as_ref().to_path_buf(),
            offline: Mutex::new(None),
            failed_writes: AtomicU64::new(0),
            refused_writes: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<Offline>> {
        self.offline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `None` while the directory takes writes.
    pub fn offline(&self) -> Option<Offline> {
        self.state().clone()
    }

    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }

    pub fn refused_writes(&self) -> u64 {
        self.refused_writes.load(Ordering::Relaxed)
    }

    /// Call before a write: refuses it while the directory is offline.
    pub fn check_writable(&self) -> Result<(), LogError> {
        match &*self.state() {
            None => Ok(()),
            Some(o) => {
                self.refused_writes.fetch_add(1, Ordering::Relaxed);
                Err(LogError::LogDirOffline {
                    dir: self.dir.clone(),
                    reason: o.reason.clone(),
                })
            }
        }
    }

    /// Call with the error of a failed write to `what` (a partition name, a file). I/O errors take
    /// the directory offline; other errors (a refused batch) say nothing about the disk.
    pub fn record_failure(&self, what: &str, e: &LogError) {
        let LogError::Io { source, .. } = e else {
            return;
        };
        self.failed_writes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "sluice::storage", log_dir = %self.dir.display(), partition = what, error = %e, "write failed");
        let mut st = self.state();
        if st.is_none() {
            let no_space = is_no_space(source);
            tracing::error!(
                log_dir = %self.dir.display(),
                error = %e,
                "log directory offline for writes: produce to its partitions gets KAFKA_STORAGE_ERROR, reads continue; {}",
                if no_space {
                    "it comes back by itself once space is freed"
                } else {
                    "restart the broker once the disk is repaired"
                }
            );
            *st = Some(Offline {
                reason: e.to_string(),
                no_space,
            });
        }
    }

    /// For an offline-because-full directory: tries to allocate and fsync [`PROBE_BYTES`] there;
    /// on success the directory takes writes again. Returns true when it is online afterwards.
    pub fn probe(&self) -> bool {
        let no_space = match &*self.state() {
            None => return true,
            Some(o) => o.no_space,
        };
        if !no_space {
            return false;
        }
        match probe_space(&self.dir) {
            Ok(()) => {
                *self.state() = None;
                tracing::info!(log_dir = %self.dir.display(), "space freed: log directory back online for writes");
                true
            }
            Err(e) => {
                tracing::debug!(log_dir = %self.dir.display(), error = %e, "log directory still full");
                false
            }
        }
    }
}

fn probe_space(dir: &Path) -> io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        crate::index::allocate(&f, 0, PROBE_BYTES)?;
        f.sync_all()
    })();
    let _ = fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_failures_take_the_directory_offline_and_a_probe_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let h = LogDirHealth::new(dir.path());
        h.check_writable().unwrap();
        h.record_failure("t-0", &LogError::Closed);
        h.check_writable().unwrap();
        let full = LogError::Io {
            context: "append to segment",
            path: dir.path().join("x"),
            source: io::Error::from_raw_os_error(ENOSPC),
        };
        h.record_failure("t-0", &full);
        assert!(matches!(
            h.check_writable(),
            Err(LogError::LogDirOffline { .. })
        ));
        assert_eq!((h.failed_writes(), h.refused_writes()), (1, 1));
        // The temp dir has room: the probe succeeds and writes are taken again.
        assert!(h.probe());
        h.check_writable().unwrap();

        let eio = LogError::Io {
            context: "fsync segment",
            path: dir.path().join("x"),
            source: io::Error::from_raw_os_error(5),
        };
        h.record_failure("t-0", &eio);
        assert!(!h.probe(), "only a full directory comes back by itself");
        assert!(h.check_writable().is_err());
    }
}
