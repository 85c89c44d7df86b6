//! Small durable files: in a partition directory, the recovery-point checkpoint and the
//! clean-shutdown marker; in a log directory, offsets of many partitions in Kafka's
//! `replication-offset-checkpoint` form ([`write_offsets`]).
//!
//! Checkpoints are replaced atomically (write a temp file, fsync, rename, fsync the directory), so
//! a crash leaves either the old or the new value, never a torn one.

use std::collections::BTreeMap;
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

/// Writes one offset per partition, Kafka's per-log-directory checkpoint format:
/// `0`, the entry count, then `<topic> <partition> <offset>` per line. Atomic like
/// [`write_offset`].
pub fn write_offsets(dir: &Path, name: &str, entries: &BTreeMap<(String, u32), u64>) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for ((topic, partition), offset) in entries {
        text.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    {
        let mut f = File::create(&tmp).ctx("create checkpoint", &tmp)?;
        f.write_all(text.as_bytes()).ctx("write checkpoint", &tmp)?;
        f.sync_all().ctx("fsync checkpoint", &tmp)?;
    }
    fs::rename(&tmp, &path).ctx("rename checkpoint", &path)?;
    sync_dir(dir)
}

/// Reads a [`write_offsets`] checkpoint; `None` if it does not exist.
pub fn read_offsets(dir: &Path, name: &str) -> Result<Option<BTreeMap<(String, u32), u64>>> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("read checkpoint", &path),
    };
    let bad = |reason: String| LogError::Corrupt {
        path: path.clone(),
        reason,
    };
    let mut lines = text.lines();
    if lines.next() != Some(VERSION) {
        return Err(bad("unknown checkpoint version".into()));
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| bad("no entry count".into()))?;
    let mut out = BTreeMap::new();
    for line in lines.by_ref().take(count) {
        let mut parts = line.split_whitespace();
        let entry = (|| {
            let topic = parts.next()?.to_string();
            let partition = parts.next()?.parse().ok()?;
            let offset = parts.next()?.parse().ok()?;
            Some(((topic, partition), offset))
        })()
        .ok_or_else(|| bad(format!("bad entry {line:?}")))?;
        out.insert(entry.0, entry.1);
    }
    if out.len() != count {
        return Err(bad(format!(
            "{} entries, the header says {count}",
            out.len()
        )));
    }
    Ok(Some(out))
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

    #[test]
    fn per_directory_offsets_round_trip_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_offsets(dir.path(), "c").unwrap(), None);
        let mut m = BTreeMap::new();
        m.insert(("orders".to_string(), 0), 17);
        m.insert(("orders".to_string(), 11), 0);
        m.insert(("__consumer_offsets".to_string(), 3), 99);
        write_offsets(dir.path(), "c", &m).unwrap();
        assert_eq!(read_offsets(dir.path(), "c").unwrap(), Some(m));
        let text = fs::read_to_string(dir.path().join("c")).unwrap();
        assert!(
            text.starts_with("0\n3\n__consumer_offsets 3 99\n"),
            "{text}"
        );
        fs::write(dir.path().join("c"), "0\n2\norders 0 17\n").unwrap();
        assert!(read_offsets(dir.path(), "c").is_err());
        write_offsets(dir.path(), "c", &BTreeMap::new()).unwrap();
        assert_eq!(
            read_offsets(dir.path(), "c").unwrap(),
            Some(BTreeMap::new())
        );
    }
}
