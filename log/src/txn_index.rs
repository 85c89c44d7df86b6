//! The aborted-transaction index of a partition: one entry per aborted transaction, so a
//! `read_committed` fetch can tell the consumer which producers' records to drop in the range it
//! returns (Kafka's `.txnindex`).
//!
//! Entries have Kafka's `.txnindex` entry layout (34 bytes, big-endian): `int16 version=0, int64
//! producer_id, int64 first_offset, int64 last_offset` (the ABORT marker's offset), `int64
//! last_stable_offset`. Unlike Kafka, one file per partition (`aborted.txnindex`) holds them all,
//! in marker order, and they are kept in memory too: a fetch looks them up without reading
//! files. Retention trims entries whose marker is below the log start; truncation drops those at
//! or after the truncation point. The file is appended as markers are written and rewritten
//! atomically when trimmed; entries past the producer-state snapshot are re-derived from the log
//! on recovery (see `Log::rebuild_producer_state`), so a torn tail costs nothing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

pub const FILE_NAME: &str = "aborted.txnindex";
const ENTRY_LEN: usize = 34;

/// An aborted transaction in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
    pub last_stable_offset: u64,
}

impl AbortedTxn {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&(self.first_offset as i64).to_be_bytes());
        out.extend_from_slice(&(self.last_offset as i64).to_be_bytes());
        out.extend_from_slice(&(self.last_stable_offset as i64).to_be_bytes());
    }

    fn decode(b: &[u8]) -> Option<AbortedTxn> {
        let i64_at = |p: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[p..p + 8]);
            i64::from_be_bytes(a)
        };
        if b.len() < ENTRY_LEN || i16::from_be_bytes([b[0], b[1]]) != 0 {
            return None;
        }
        let (first, last, lso) = (i64_at(10), i64_at(18), i64_at(26));
        if first < 0 || last < first || lso < 0 {
            return None;
        }
        Some(AbortedTxn {
            producer_id: i64_at(2),
            first_offset: first as u64,
            last_offset: last as u64,
            last_stable_offset: lso as u64,
        })
    }
}

/// fsyncs the index file of the partition in `dir` (before a producer-state snapshot that counts
/// on its entries).
pub fn sync(dir: &Path) -> Result<()> {
    let path = dir.join(FILE_NAME);
    match File::open(&path) {
        Ok(f) => f.sync_all().ctx("fsync aborted-transaction index", &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("open aborted-transaction index", &path),
    }
}

#[derive(Debug)]
pub struct TxnIndex {
    path: PathBuf,
    /// In marker (= last offset) order.
    entries: Vec<AbortedTxn>,
}

impl TxnIndex {
    /// Loads the index of the partition in `dir` (empty if there is none). A damaged entry ends
    /// it: what follows is re-derived from the log.
    pub fn open(dir: &Path) -> Result<TxnIndex> {
        let path = dir.join(FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).ctx("read aborted-transaction index", &path),
        };
        let mut entries: Vec<AbortedTxn> = Vec::new();
        for chunk in bytes.chunks(ENTRY_LEN) {
            match AbortedTxn::decode(chunk) {
                Some(e) if entries.last().is_none_or(|l| l.last_offset < e.last_offset) => {
                    entries.push(e)
                }
                _ => {
                    tracing::warn!(path = %path.display(), "aborted-transaction index damaged; the rest is rebuilt from the log");
                    break;
                }
            }
        }
        Ok(TxnIndex { path, entries })
    }

    pub fn entries(&self) -> &[AbortedTxn] {
        &self.entries
    }

    /// Adds an entry (its marker follows every indexed one).
    pub fn append(&mut self, e: AbortedTxn) -> Result<()> {
        if self
            .entries
            .last()
            .is_some_and(|l| l.last_offset >= e.last_offset)
        {
            return Ok(()); // already indexed (a replay over what the file kept)
        }
        let mut buf = Vec::with_capacity(ENTRY_LEN);
        e.encode(&mut buf);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ctx("open aborted-transaction index", &self.path)?;
        f.write_all(&buf)
            .ctx("append aborted-transaction index", &self.path)?;
        self.entries.push(e);
        Ok(())
    }

    /// Aborted transactions with records in `[from, upto)`: marker at or after `from`, first
    /// offset below `upto`.
    pub fn collect(&self, from: u64, upto: u64) -> Vec<AbortedTxn> {
        let start = self.entries.partition_point(|e| e.last_offset < from);
        self.entries[start..]
            .iter()
            .filter(|e| e.first_offset < upto)
            .copied()
            .collect()
    }

    /// Drops entries whose marker is at or after `offset` (truncation).
    pub fn truncate(&mut self, offset: u64) -> Result<()> {
        let keep = self.entries.partition_point(|e| e.last_offset < offset);
        if keep == self.entries.len() {
            return Ok(());
        }
        self.entries.truncate(keep);
        self.rewrite()
    }

    /// Drops entries whose marker is below the log start offset (retention).
    pub fn trim_before(&mut self, log_start: u64) -> Result<()> {
        let drop = self.entries.partition_point(|e| e.last_offset < log_start);
        if drop == 0 {
            return Ok(());
        }
        self.entries.drain(..drop);
        self.rewrite()
    }

    fn rewrite(&self) -> Result<()> {
        if self.entries.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).ctx("remove aborted-transaction index", &self.path)
                }
                _ => Ok(()),
            };
        }
        let mut buf = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            e.encode(&mut buf);
        }
        let tmp = self.path.with_extension("txnindex.tmp");
        {
            let mut f = File::create(&tmp).ctx("create aborted-transaction index", &tmp)?;
            f.write_all(&buf)
                .ctx("write aborted-transaction index", &tmp)?;
            f.sync_all().ctx("fsync aborted-transaction index", &tmp)?;
        }
        fs::rename(&tmp, &self.path).ctx("rename aborted-transaction index", &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pid: i64, first: u64, last: u64) -> AbortedTxn {
        AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: last + 1,
        }
    }

    #[test]
    fn entries_survive_reopen_and_are_found_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = TxnIndex::open(dir.path()).unwrap();
        idx.append(t(1, 0, 10)).unwrap();
        idx.append(t(2, 5, 20)).unwrap();
        idx.append(t(3, 25, 30)).unwrap();
        idx.append(t(3, 25, 30)).unwrap(); // replayed: not twice
        let idx = TxnIndex::open(dir.path()).unwrap();
        assert_eq!(idx.entries().len(), 3);
        let pids = |v: Vec<AbortedTxn>| v.iter().map(|e| e.producer_id).collect::<Vec<_>>();
        assert_eq!(pids(idx.collect(0, 100)), vec![1, 2, 3]);
        assert_eq!(pids(idx.collect(11, 100)), vec![2, 3]);
        assert_eq!(pids(idx.collect(11, 25)), vec![2], "3 starts at the bound");
        assert_eq!(pids(idx.collect(31, 100)), Vec::<i64>::new());
    }

    #[test]
    fn truncation_and_retention_rewrite_the_file_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = TxnIndex::open(dir.path()).unwrap();
        for i in 0..5u64 {
            idx.append(t(i as i64, i * 10, i * 10 + 5)).unwrap();
        }
        idx.truncate(35).unwrap();
        idx.trim_before(10).unwrap();
        let reopened = TxnIndex::open(dir.path()).unwrap();
        let lasts: Vec<u64> = reopened.entries().iter().map(|e| e.last_offset).collect();
        assert_eq!(lasts, vec![15, 25]);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0, 0, 1, 2, 3]);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(TxnIndex::open(dir.path()).unwrap().entries().len(), 2);
    }
}
