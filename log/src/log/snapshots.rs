//! Producer-state snapshot files: `<20-digit offset>.snapshot` in the partition directory holds
//! the producers' state as of that offset (everything below it applied), Kafka's name. Written
//! when a segment rolls (at the new segment's base offset) and on clean shutdown (at the log end);
//! a log opens from the newest one and replays only the batches after it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::error::{IoContext, Result};
use crate::producer_state::ProducerStates;
use crate::segment;

pub const EXT: &str = "snapshot";

/// Snapshots kept: the newest few are enough to restart from or truncate back to.
pub const KEPT: usize = 3;

fn path(dir: &Path, offset: u64) -> PathBuf {
    dir.join(segment::file_name(offset, EXT))
}

/// Offsets of the snapshots in `dir`, ascending.
pub fn list(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).ctx("list log directory", dir)? {
        let p = entry.ctx("list log directory", dir)?.path();
        if p.extension().and_then(|e| e.to_str()) != Some(EXT) {
            continue;
        }
        if let Some(o) = p
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(o);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Writes a snapshot atomically (temp file, fsync, rename) and keeps only the newest [`KEPT`].
pub fn write(dir: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let final_path = path(dir, offset);
    let tmp = final_path.with_extension("snapshot.tmp");
    {
        let mut f = File::create(&tmp).ctx("create producer snapshot", &tmp)?;
        f.write_all(bytes).ctx("write producer snapshot", &tmp)?;
        f.sync_all().ctx("fsync producer snapshot", &tmp)?;
    }
    fs::rename(&tmp, &final_path).ctx("rename producer snapshot", &final_path)?;
    checkpoint::sync_dir(dir)?;
    let all = list(dir)?;
    for old in &all[..all.len().saturating_sub(KEPT)] {
        remove(dir, *old)?;
    }
    Ok(())
}

/// The snapshot at `offset`; `None` (with a warning) if it is damaged.
pub fn read(dir: &Path, offset: u64) -> Result<Option<ProducerStates>> {
    let p = path(dir, offset);
    let bytes = fs::read(&p).ctx("read producer snapshot", &p)?;
    let states = ProducerStates::from_snapshot(&bytes);
    if states.is_none() {
        tracing::warn!(path = %p.display(), "damaged producer snapshot ignored");
    }
    Ok(states)
}

fn remove(dir: &Path, offset: u64) -> Result<()> {
    let p = path(dir, offset);
    match fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).ctx("remove producer snapshot", &p)
        }
        _ => Ok(()),
    }
}

/// Removes snapshots above `offset` (they describe batches truncated away).
pub fn remove_above(dir: &Path, offset: u64) -> Result<()> {
    for o in list(dir)? {
        if o > offset {
            remove(dir, o)?;
        }
    }
    Ok(())
}

pub fn remove_all(dir: &Path) -> Result<()> {
    for o in list(dir)? {
        remove(dir, o)?;
    }
    Ok(())
}
