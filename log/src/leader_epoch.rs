//! The leader-epoch cache: for each leader epoch that wrote to this log, the offset of its first
//! record (Kafka's `LeaderEpochFileCache`, persisted as `leader-epoch-checkpoint`).
//!
//! Replication needs it to answer "where does epoch E end in your log?" (OffsetForLeaderEpoch,
//! KIP-101/279): a follower whose last fetched epoch is E truncates to the end of E on the
//! leader (or its own, if shorter) before fetching, so replicas never keep a divergent tail.
//!
//! Entries only grow in both epoch and start offset. A batch carrying a higher epoch than the
//! latest entry adds one (at its base offset); truncating the log's end drops entries that start
//! at or after the new end. The file is rewritten atomically (temp, fsync, rename) whenever an
//! entry is added or dropped — once per leader change, not per append.
//!
//! File format (Kafka's): a version line `0`, a count line, then `epoch offset` per line.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};

pub const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: u64,
}

#[derive(Debug)]
pub struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io {
        context,
        path,
        source,
    }
}

impl LeaderEpochCache {
    /// Loads `dir/leader-epoch-checkpoint`; `None` when there is none (a log from before the
    /// cache existed: the caller rebuilds it from the batches).
    pub fn load(dir: &Path) -> Result<Option<LeaderEpochCache>> {
        let path = dir.join(LEADER_EPOCH_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read leader-epoch checkpoint", &path)(e)),
        };
        let corrupt = |reason: &str| LogError::Corrupt {
            path: path.clone(),
            reason: format!("leader-epoch checkpoint: {reason}"),
        };
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some("0") {
            return Err(corrupt("unknown version"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| corrupt("no entry count"))?;
        let mut entries = Vec::with_capacity(count.min(1 << 16));
        for line in lines.take(count) {
            let mut parts = line.split_whitespace();
            let (Some(e), Some(o)) = (parts.next(), parts.next()) else {
                return Err(corrupt("malformed entry"));
            };
            let epoch: i32 = e.parse().map_err(|_| corrupt("bad epoch"))?;
            let start_offset: u64 = o.parse().map_err(|_| corrupt("bad offset"))?;
            if entries
                .last()
                .is_some_and(|l: &EpochEntry| l.epoch >= epoch || l.start_offset > start_offset)
            {
                return Err(corrupt("entries out of order"));
            }
            entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        if entries.len() != count {
            return Err(corrupt("fewer entries than counted"));
        }
        Ok(Some(LeaderEpochCache { path, entries }))
    }

    /// An empty cache for `dir` (nothing written until the first entry).
    pub fn empty(dir: &Path) -> LeaderEpochCache {
        LeaderEpochCache {
            path: dir.join(LEADER_EPOCH_FILE),
            entries: Vec::new(),
        }
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` wrote a batch at `offset`: a new entry if `epoch` is newer than the
    /// latest. Returns whether the cache changed (the caller persists it).
    pub fn observe(&mut self, epoch: i32, offset: u64) -> bool {
        if epoch < 0 || self.latest().is_some_and(|l| l.epoch >= epoch) {
            return false;
        }
        // A start offset below the latest's would mean the log went backwards without a
        // truncation: drop what it contradicts (Kafka does the same).
        self.entries.retain(|e| e.start_offset < offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset: offset,
        });
        true
    }

    /// The log's end moved back to `end`: entries starting at or after it go.
    pub fn truncate_from_end(&mut self, end: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end);
        self.entries.len() != before
    }

    pub fn clear(&mut self) -> bool {
        let changed = !self.entries.is_empty();
        self.entries.clear();
        changed
    }

    /// Where `epoch` ends in this log whose end offset is `log_end`: the largest epoch ≤ `epoch`
    /// and the start offset of the epoch after it (or `log_end` for the latest) — Kafka's
    /// `endOffsetFor`. `None` when the log holds no epoch ≤ `epoch`.
    pub fn end_offset_for(&self, epoch: i32, log_end: u64) -> Option<(i32, u64)> {
        let i = self.entries.iter().rposition(|e| e.epoch <= epoch)?;
        let end = self
            .entries
            .get(i + 1)
            .map_or(log_end, |next| next.start_offset);
        Some((self.entries[i].epoch, end))
    }

    /// The epoch that wrote `offset` (the latest entry starting at or before it).
    pub fn epoch_of(&self, offset: u64) -> Option<i32> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.start_offset <= offset)
            .map(|e| e.epoch)
    }

    /// Writes the file atomically.
    pub fn persist(&self) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut text = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(io_err("write leader-epoch checkpoint", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_follow_kafkas_rules_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LeaderEpochCache::empty(dir.path());
        assert!(c.observe(0, 0));
        assert!(!c.observe(0, 5), "same epoch: no new entry");
        assert!(c.observe(2, 10));
        assert!(c.observe(5, 20));
        assert_eq!(c.end_offset_for(0, 30), Some((0, 10)));
        assert_eq!(
            c.end_offset_for(1, 30),
            Some((0, 10)),
            "largest epoch <= 1 is 0"
        );
        assert_eq!(c.end_offset_for(2, 30), Some((2, 20)));
        assert_eq!(
            c.end_offset_for(7, 30),
            Some((5, 30)),
            "the latest ends at the log end"
        );
        assert_eq!(c.end_offset_for(-1, 30), None);
        assert_eq!(c.epoch_of(15), Some(2));
        c.persist().unwrap();
        let r = LeaderEpochCache::load(dir.path()).unwrap().unwrap();
        assert_eq!(r.entries(), c.entries());
        assert!(c.truncate_from_end(20));
        assert_eq!(c.latest().map(|e| e.epoch), Some(2));
        assert!(!c.truncate_from_end(25));
        // An entry whose start goes backwards replaces what it contradicts.
        assert!(c.observe(6, 5));
        assert_eq!(
            c.entries(),
            &[
                EpochEntry {
                    epoch: 0,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 6,
                    start_offset: 5
                }
            ]
        );
        std::fs::write(dir.path().join(LEADER_EPOCH_FILE), "0\n2\n3 10\n2 20\n").unwrap();
        assert!(
            LeaderEpochCache::load(dir.path()).is_err(),
            "out of order is corrupt"
        );
    }
}
