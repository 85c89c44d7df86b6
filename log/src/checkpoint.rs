//! Small durable files in a partition directory: the recovery-point checkpoint and the
//! clean-shutdown marker.
//!
//! Checkpoints are replaced atomically (write a temp file, fsync, rename, fsync the directory), so
//! a crash leaves either the old or the new value, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, LogError, Result};

/// Offset up to which the log is known to be fsynced; recovery scans only past it.
pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
/// Present only while the partition is cleanly closed; a restart that finds it skips recovery.
pub const CLEAN_SHUTDOWN_FILE: &str = ".kafka_cleanshutdown";

const VERSION: &str = "0";

pub fn write_offset(dir: &Path, name: &str, offset: u64) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = File::create(&tmp).ctx("create checkpoint", &tmp)?;
        write!(f, "{VERSION}\n{offset}\n").ctx("write checkpoint", &tmp)?;
        f.sync_all().ctx("fsync checkpoint", &tmp)?;
    }
    fs::rename(&tmp, &path).ctx("rename checkpoint", &path)?;
    sync_dir(dir)
}

/// Reads a checkpoint; `None` if it does not exist.
pub fn read_offset(dir: &Path, name: &str) -> Result<Option<u64>> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("read checkpoint", &path),
    };
    let mut lines = text.lines();
    let bad = |reason: &str| LogError::Corrupt {
        path: path.clone(),
        reason: reason.to_string(),
    };
    if lines.next() != Some(VERSION) {
        return Err(bad("unknown checkpoint version"));
    }
    let offset = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| bad("no offset in checkpoint"))?;
    Ok(Some(offset))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_offset(dir.path(), "x").unwrap(), None);
        write_offset(dir.path(), "x", 42).unwrap();
        write_offset(dir.path(), "x", 43).unwrap();
        assert_eq!(read_offset(dir.path(), "x").unwrap(), Some(43));
        fs::write(dir.path().join("x"), "garbage").unwrap();
        assert!(read_offset(dir.path(), "x").is_err());
    }
}
