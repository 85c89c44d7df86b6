//! [`RaftStorage`]: raft-rs's `Storage`, made durable under `data_dir/meta/raft/`.
//!
//! raft-rs asks its caller to persist entries, the hard state and snapshots before the messages
//! of a `Ready` that depend on them go out (a voter that forgets a vote or an entry after a
//! restart can elect two leaders in one term). The in-memory side is raft-rs's own `MemStorage`
//! (its `Storage` logic is the tested one); this type writes through to disk first:
//!
//! | file        | content                                                               | write |
//! |-------------|-----------------------------------------------------------------------|-------|
//! | `log`       | entries, each `[len u32][crc32c u32][eraftpb::Entry]`, indexes ascending | append + fdatasync; truncated where a new leader overwrites a suffix |
//! | `hardstate` | `eraftpb::HardState` (term, vote, commit)                             | temp file, fsync, rename, fsync dir |
//! | `confstate` | `eraftpb::ConfState`: the voters, fixed when the storage is created        | same |
//! | `snapshot`  | `eraftpb::Snapshot`: metadata (index, term, conf state) + the serialised metadata image | same |
//!
//! Opening replays the snapshot, then the hard state, then the log; a torn last frame (a crash
//! mid-append) is cut off. After a snapshot the log is rewritten without the entries it covers,
//! so replay time and disk use stay bounded by the snapshot interval.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::storage::{MemStorage, Storage};
use raft::{GetEntriesContext, RaftState, StorageError};

const LOG_FILE: &str = "log";
const HARDSTATE_FILE: &str = "hardstate";
const SNAPSHOT_FILE: &str = "snapshot";
const CONF_STATE_FILE: &str = "confstate";
const FRAME_HEADER: usize = 8;
/// A frame longer than this is damage, not an entry (metadata entries are small).
const MAX_ENTRY_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RaftStorageError {
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Raft(#[from] raft::Error),
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RaftStorageError {
    let path = path.to_path_buf();
    move |source| RaftStorageError::Io {
        context,
        path,
        source,
    }
}

struct LogFile {
    path: PathBuf,
    file: File,
    /// Entry index -> byte position of its frame.
    positions: BTreeMap<u64, u64>,
    len: u64,
}

struct Inner {
    dir: PathBuf,
    mem: MemStorage,
    /// The newest snapshot, with its data: what a lagging follower is sent.
    snapshot: RwLock<Snapshot>,
    log: Mutex<LogFile>,
}

/// Durable raft-rs storage; clones share it (the `RawNode` holds one, its driver another).
#[derive(Clone)]
pub struct RaftStorage {
    inner: Arc<Inner>,
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), RaftStorageError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn persist_conf_state(dir: &Path, cs: &ConfState) -> Result<(), RaftStorageError> {
    let bytes = cs.write_to_bytes().map_err(|e| RaftStorageError::Corrupt {
        path: dir.join(CONF_STATE_FILE),
        reason: e.to_string(),
    })?;
    write_atomically(dir, CONF_STATE_FILE, &bytes)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, RaftStorageError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn frame(e: &Entry) -> Result<Vec<u8>, RaftStorageError> {
    let body = e
        .write_to_bytes()
        .map_err(|err| RaftStorageError::Corrupt {
            path: PathBuf::from(LOG_FILE),
            reason: format!("cannot encode entry {}: {err}", e.index),
        })?;
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads frames until the end or the first damaged one; returns the entries and where the good
/// part ends.
fn read_frames(bytes: &[u8]) -> (Vec<Entry>, u64) {
    let mut pos = 0usize;
    let mut out: Vec<Entry> = Vec::new();
    while pos + FRAME_HEADER <= bytes.len() {
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_be_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        let start = pos + FRAME_HEADER;
        if len > MAX_ENTRY_BYTES || start + len > bytes.len() {
            break;
        }
        let body = &bytes[start..start + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(e) = Entry::parse_from_bytes(body) else {
            break;
        };
        if out.last().is_some_and(|last| e.index != last.index + 1) {
            break;
        }
        out.push(e);
        pos = start + len;
    }
    (out, pos as u64)
}

impl RaftStorage {
    /// Opens the storage in `dir` (created if absent). A new one starts with `voters` as its
    /// configuration; an existing one keeps what it stored.
    pub fn open(dir: impl AsRef<Path>, voters: &[u64]) -> Result<RaftStorage, RaftStorageError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mem = MemStorage::new();
        let snapshot = match read_optional(&dir.join(SNAPSHOT_FILE))? {
            Some(b) => Snapshot::parse_from_bytes(&b).map_err(|e| RaftStorageError::Corrupt {
                path: dir.join(SNAPSHOT_FILE),
                reason: e.to_string(),
            })?,
            None => Snapshot::default(),
        };
        let snap_index = snapshot.get_metadata().index;
        if snap_index > 0 {
            mem.wl().apply_snapshot(snapshot.clone())?;
        }
        let conf_state = match read_optional(&dir.join(CONF_STATE_FILE))? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(|e| RaftStorageError::Corrupt {
                path: dir.join(CONF_STATE_FILE),
                reason: e.to_string(),
            })?,
            None => {
                let cs = ConfState::from((voters.to_vec(), vec![]));
                persist_conf_state(&dir, &cs)?;
                cs
            }
        };
        if conf_state.voters != voters {
            tracing::warn!(stored = ?conf_state.voters, configured = ?voters, "controller_quorum_voters differs from the voters this node's metadata log was created with; the stored voters are used");
        }
        mem.wl().set_conf_state(conf_state);
        let hs =
            match read_optional(&dir.join(HARDSTATE_FILE))? {
                Some(b) => Some(HardState::parse_from_bytes(&b).map_err(|e| {
                    RaftStorageError::Corrupt {
                        path: dir.join(HARDSTATE_FILE),
                        reason: e.to_string(),
                    }
                })?),
                None => None,
            };

        let log_path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(io_err("open", &log_path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("read", &log_path))?;
        let (entries, good) = read_frames(&bytes);
        if good < bytes.len() as u64 {
            tracing::warn!(path = %log_path.display(), valid_bytes = good, torn_bytes = bytes.len() as u64 - good, "metadata log: cutting a torn tail");
            file.set_len(good).map_err(io_err("truncate", &log_path))?;
            file.sync_all().map_err(io_err("fsync", &log_path))?;
        }
        let mut positions = BTreeMap::new();
        let mut pos = 0u64;
        let mut kept = Vec::new();
        for e in entries {
            let size = FRAME_HEADER as u64 + e.compute_size() as u64;
            positions.insert(e.index, pos);
            pos += size;
            // Entries the snapshot covers stay in the file until the next rewrite; raft-rs
            // keeps the one at the snapshot index as its first.
            if e.index >= snap_index.max(1) {
                kept.push(e);
            }
        }
        if let Some(first) = kept.first() {
            if snap_index > 0 && first.index > snap_index + 1 {
                return Err(RaftStorageError::Corrupt {
                    path: log_path,
                    reason: format!(
                        "log starts at {} but the snapshot ends at {snap_index}",
                        first.index
                    ),
                });
            }
            let from = kept
                .iter()
                .position(|e| e.index > snap_index)
                .unwrap_or(kept.len());
            mem.wl().append(&kept[from..])?;
        }
        if let Some(mut hs) = hs {
            let last = mem.last_index()?;
            if hs.commit > last {
                tracing::warn!(
                    commit = hs.commit,
                    last_index = last,
                    "metadata log: commit index beyond the log; clamping"
                );
                hs.commit = last;
            }
            hs.commit = hs.commit.max(snap_index);
            mem.wl().set_hardstate(hs);
        }
        Ok(RaftStorage {
            inner: Arc::new(Inner {
                dir,
                mem,
                snapshot: RwLock::new(snapshot),
                log: Mutex::new(LogFile {
                    path: log_path,
                    file,
                    positions,
                    len: pos,
                }),
            }),
        })
    }

    fn log(&self) -> MutexGuard<'_, LogFile> {
        self.inner.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest snapshot (metadata and data).
    pub fn snapshot_data(&self) -> Snapshot {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn hard_state(&self) -> HardState {
        self.inner.mem.rl().hard_state().clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.inner
            .mem
            .initial_state()
            .map(|s| s.conf_state)
            .unwrap_or_default()
    }

    /// Appends (or, from a new leader, overwrites a suffix with) `entries`: on disk and synced
    /// first, then in memory.
    pub fn append(&self, entries: &[Entry]) -> Result<(), RaftStorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut log = self.log();
        if let Some(&at) = log.positions.get(&first.index) {
            log.file
                .set_len(at)
                .map_err(io_err("truncate", &log.path))?;
            log.len = at;
            let stale: Vec<u64> = log
                .positions
                .range(first.index..)
                .map(|(i, _)| *i)
                .collect();
            for i in stale {
                log.positions.remove(&i);
            }
        }
        let mut buf = Vec::new();
        let mut pos = log.len;
        for e in entries {
            let f = frame(e)?;
            log.positions.insert(e.index, pos);
            pos += f.len() as u64;
            buf.extend_from_slice(&f);
        }
        log.file
            .write_all(&buf)
            .map_err(io_err("append", &log.path))?;
        log.file.sync_data().map_err(io_err("fsync", &log.path))?;
        log.len = pos;
        drop(log);
        self.inner.mem.wl().append(entries)?;
        Ok(())
    }

    /// Persists the hard state (term, vote, commit), then takes it in memory.
    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), RaftStorageError> {
        let bytes = hs.write_to_bytes().map_err(|e| RaftStorageError::Corrupt {
            path: self.inner.dir.join(HARDSTATE_FILE),
            reason: e.to_string(),
        })?;
        write_atomically(&self.inner.dir, HARDSTATE_FILE, &bytes)?;
        self.inner.mem.wl().set_hardstate(hs.clone());
        Ok(())
    }

    /// Only the commit index changed (a `LightReady`): persisted the same way.
    pub fn set_commit(&self, commit: u64) -> Result<(), RaftStorageError> {
        let mut hs = self.hard_state();
        if commit <= hs.commit {
            return Ok(());
        }
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    pub fn set_conf_state(&self, cs: ConfState) -> Result<(), RaftStorageError> {
        persist_conf_state(&self.inner.dir, &cs)?;
        self.inner.mem.wl().set_conf_state(cs);
        Ok(())
    }

    /// A snapshot received from the leader replaces everything: persisted, then applied.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), RaftStorageError> {
        self.persist_snapshot(snap)?;
        self.inner.mem.wl().apply_snapshot(snap.clone())?;
        self.rewrite_log_from(snap.get_metadata().index + 1)
    }

    /// Takes a snapshot of the applied state at `index` (`data` is the serialised image) and
    /// drops the log entries before it.
    pub fn compact_to(&self, index: u64, data: Vec<u8>) -> Result<(), RaftStorageError> {
        let term = self.inner.mem.term(index)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state());
        self.persist_snapshot(&snap)?;
        self.inner.mem.wl().compact(index)?;
        self.rewrite_log_from(index)
    }

    fn persist_snapshot(&self, snap: &Snapshot) -> Result<(), RaftStorageError> {
        let bytes = snap
            .write_to_bytes()
            .map_err(|e| RaftStorageError::Corrupt {
                path: self.inner.dir.join(SNAPSHOT_FILE),
                reason: e.to_string(),
            })?;
        write_atomically(&self.inner.dir, SNAPSHOT_FILE, &bytes)?;
        *self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(|e| e.into_inner()) = snap.clone();
        Ok(())
    }

    /// Rewrites the log file with the in-memory entries from `first` on (temp file, fsync,
    /// rename), so a snapshot bounds the file.
    fn rewrite_log_from(&self, first: u64) -> Result<(), RaftStorageError> {
        let entries: Vec<Entry> = {
            let lo = self.inner.mem.first_index()?.max(first);
            let hi = self.inner.mem.last_index()? + 1;
            if lo < hi {
                self.inner
                    .mem
                    .entries(lo, hi, None, GetEntriesContext::empty(false))?
            } else {
                Vec::new()
            }
        };
        let mut log = self.log();
        let mut buf = Vec::new();
        let mut positions = BTreeMap::new();
        for e in &entries {
            positions.insert(e.index, buf.len() as u64);
            buf.extend_from_slice(&frame(e)?);
        }
        write_atomically(&self.inner.dir, LOG_FILE, &buf)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&log.path)
            .map_err(io_err("open", &log.path))?;
        log.file = file;
        log.len = buf.len() as u64;
        log.positions = positions;
        Ok(())
    }
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.inner.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.inner.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = self.snapshot_data();
        if snap.get_metadata().index < request_index || snap.get_metadata().index == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_hard_state_and_snapshots_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
            .unwrap();
        // A new leader overwrites the suffix from index 2.
        s.append(&[entry(2, 2, b"B"), entry(3, 2, b"C"), entry(4, 2, b"D")])
            .unwrap();
        let hs = HardState {
            term: 2,
            vote: 3,
            commit: 3,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        drop(s);

        let s = RaftStorage::open(dir.path(), &[9]).unwrap();
        assert_eq!(s.conf_state().voters, vec![1, 2, 3], "stored voters win");
        assert_eq!(s.hard_state(), hs);
        let got = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = got.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, vec![&b"a"[..], b"B", b"C", b"D"]);

        s.compact_to(3, b"image@3".to_vec()).unwrap();
        s.append(&[entry(5, 2, b"E")]).unwrap();
        drop(s);
        let s = RaftStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(s.snapshot_data().get_data(), b"image@3");
        assert_eq!(s.first_index().unwrap(), 4);
        assert_eq!(s.last_index().unwrap(), 5);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(matches!(
            s.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }

    #[test]
    fn a_torn_last_frame_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStorage::open(dir.path(), &[1]).unwrap();
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
        drop(s);
        let path = dir.path().join(LOG_FILE);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let s = RaftStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!(s.last_index().unwrap(), 1);
        s.append(&[entry(2, 1, b"b2")]).unwrap();
        drop(s);
        let s = RaftStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
    }
}
