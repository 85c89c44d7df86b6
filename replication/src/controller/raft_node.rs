//! [`MetadataNode`]: one voter of the metadata quorum — raft-rs's `RawNode` over
//! [`RaftStorage`], applying committed entries to a [`MetadataImage`].
//!
//! It is synchronous and does no networking: the caller ticks it, steps it with messages from
//! peers, proposes batches of records, and calls [`MetadataNode::handle_ready`], which persists
//! what must be durable *before* returning the messages that depend on it (raft-rs's contract),
//! and returns the newly committed batches. The broker's async driver and the in-process
//! simulation are both just loops around these calls.
//!
//! One Raft entry holds one controller decision — a batch of records applied atomically — with
//! the proposer's id and a proposal number in its context, so the proposer can answer its caller
//! once that entry is applied. The image is snapshotted (and the log compacted) every
//! `snapshot_every` applied entries; a restarted or lagging voter starts from the snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raft::prelude::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};

use super::raft_storage::{RaftStorage, RaftStorageError};
use super::state_machine::Randomness;
use crate::metadata::{MetadataChange, MetadataImage, MetadataRecord};

#[derive(Debug, Clone)]
pub struct MetadataNodeConfig {
    /// This voter's id (the broker's `node_id`; must not be 0).
    pub id: u64,
    /// Every voter's id (`controller_quorum_voters`).
    pub voters: Vec<u64>,
    /// Ticks without a leader before an election (raft-rs `election_tick`).
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Applied entries between two snapshots (`metadata_snapshot_interval_records`).
    pub snapshot_every: u64,
    /// Bounds on what one peer may have in flight (raft-rs flow control).
    pub max_inflight_msgs: usize,
    pub max_size_per_msg: u64,
}

impl MetadataNodeConfig {
    pub fn new(id: u64, voters: Vec<u64>) -> MetadataNodeConfig {
        MetadataNodeConfig {
            id,
            voters,
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every: 1_000,
            max_inflight_msgs: 256,
            max_size_per_msg: 1 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataNodeError {
    #[error(transparent)]
    Storage(#[from] RaftStorageError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("this node is not the active controller (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("metadata (de)serialisation failed: {0}")]
    Snapshot(serde_json::Error),
}

/// The payload of one entry: a controller decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Batch {
    records: Vec<MetadataRecord>,
}

/// Who proposed an entry, so the proposer can answer once it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId {
    pub node: u64,
    pub seq: u64,
}

impl ProposalId {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.node.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v
    }
    fn decode(b: &[u8]) -> Option<ProposalId> {
        (b.len() == 16).then(|| ProposalId {
            node: u64::from_be_bytes(b[..8].try_into().unwrap_or_default()),
            seq: u64::from_be_bytes(b[8..].try_into().unwrap_or_default()),
        })
    }
}

/// A batch of records committed and applied at `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub term: u64,
    pub records: Vec<MetadataRecord>,
    pub proposal: Option<ProposalId>,
    pub changes: Vec<MetadataChange>,
}

/// What one [`MetadataNode::handle_ready`] produced.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// To send to peers (their `to` field says where). Already safe to send: what they depend
    /// on is persisted.
    pub messages: Vec<Message>,
    pub committed: Vec<Committed>,
    /// The image was replaced by a snapshot from the leader, at this index (the batches in
    /// `committed` follow it).
    pub restored_from_snapshot: Option<u64>,
}

pub struct MetadataNode {
    raw: RawNode<RaftStorage>,
    storage: RaftStorage,
    image: MetadataImage,
    applied: u64,
    snapshot_index: u64,
    config: MetadataNodeConfig,
    /// Seeded election timeouts for simulations (raft-rs draws its own otherwise).
    election_rng: Option<Box<dyn Randomness + Send>>,
    last_timeout: usize,
    /// Set: failed storage writes are retried until they succeed or this flag is set.
    retry_writes: Option<Arc<AtomicBool>>,
}

/// raft-rs logs through slog; forward to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "sluice::raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "sluice::raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "sluice::raft", "{}", record.msg()),
            _ => tracing::trace!(target: "sluice::raft", "{}", record.msg()),
        }
        Ok(())
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

impl MetadataNode {
    /// Opens (recovering from `dir`) the voter described by `config`.
    pub fn open(
        dir: impl AsRef<std::path::Path>,
        config: MetadataNodeConfig,
    ) -> Result<MetadataNode, MetadataNodeError> {
        let storage = RaftStorage::open(dir, &config.voters)?;
        let snap = storage.snapshot_data();
        let snapshot_index = snap.get_metadata().index;
        let image = if snapshot_index > 0 {
            MetadataImage::decode(snap.get_data()).map_err(MetadataNodeError::Snapshot)?
        } else {
            MetadataImage::default()
        };
        // Entries this voter already knows are committed are applied now, before any network:
        // a restarted broker's image (and so its replicas and coordinators) is complete as of
        // its last commit the moment it opens.
        let commit = storage.hard_state().commit;
        let known_committed = if commit > snapshot_index {
            raft::Storage::entries(
                &storage,
                snapshot_index + 1,
                commit + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )?
        } else {
            Vec::new()
        };
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied: snapshot_index.max(known_committed.last().map_or(0, |e| e.index)),
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let mut raw = RawNode::new(&raft_config, storage.clone(), &logger())?;
        // A lone voter needs no election timeout to know it wins: `sluice serve` with no
        // configuration is ready at once instead of after ~1-2 s of ticks.
        if config.voters == [config.id] {
            raw.campaign()?;
        }
        let mut node = MetadataNode {
            raw,
            storage,
            image,
            applied: snapshot_index,
            snapshot_index,
            config,
            election_rng: None,
            last_timeout: 0,
            retry_writes: None,
        };
        node.apply(known_committed, &mut ReadyOutput::default());
        Ok(node)
    }

    /// Draws election timeouts from `rng` instead of raft-rs's thread RNG, so a simulation
    /// replays from its seed.
    pub fn set_election_randomness(&mut self, rng: Box<dyn Randomness + Send>) {
        self.election_rng = Some(rng);
        self.reseed_timeout(true);
    }

    fn reseed_timeout(&mut self, force: bool) {
        let Some(rng) = self.election_rng.as_mut() else {
            return;
        };
        let current = self.raw.raft.randomized_election_timeout();
        if force || current != self.last_timeout {
            let e = self.config.election_tick;
            let t = e + (rng.next_u64() % e as u64) as usize;
            self.raw.raft.set_randomized_election_timeout(t);
            self.last_timeout = t;
        }
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }
    pub fn applied_index(&self) -> u64 {
        self.applied
    }
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }
    /// The leader this node knows of.
    pub fn leader_id(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|l| *l != 0)
    }
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// As leader: the highest log index known replicated on each voter (raft-rs's progress).
    pub fn voter_progress(&self) -> Vec<(u64, u64)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut v: Vec<(u64, u64)> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (*id, p.matched))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn tick(&mut self) {
        self.raw.tick();
        self.reseed_timeout(false);
    }

    /// Feeds a message from a peer. Messages for another node or from a stale term are
    /// dropped by raft-rs; errors here are not fatal.
    pub fn step(&mut self, msg: Message) -> Result<(), MetadataNodeError> {
        let r = self.raw.step(msg);
        self.reseed_timeout(false);
        r.map_err(Into::into)
    }

    /// The transport's verdict on a snapshot it carried to `to`: without it the leader waits
    /// for that follower forever (raft-rs pauses a peer while a snapshot is in flight).
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// The transport could not reach `to`: raft-rs stops pipelining to it and probes instead.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// Proposes one decision. Only the leader accepts; the batch is committed (or lost, if
    /// leadership changes first) later: watch [`ReadyOutput::committed`] for `id`.
    pub fn propose(
        &mut self,
        id: ProposalId,
        records: Vec<MetadataRecord>,
    ) -> Result<(), MetadataNodeError> {
        if !self.is_leader() {
            return Err(MetadataNodeError::NotLeader {
                leader: self.leader_id(),
            });
        }
        let data = serde_json::to_vec(&Batch { records }).map_err(MetadataNodeError::Snapshot)?;
        self.raw.propose(id.encode(), data)?;
        Ok(())
    }

    /// Persists, then releases messages, then applies: one turn of raft-rs's Ready loop.
    pub fn handle_ready(&mut self) -> Result<ReadyOutput, MetadataNodeError> {
        let mut out = ReadyOutput::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut rd = self.raw.ready();
        // A leader may send these before persisting (raft-rs's pipelining rule).
        out.messages.extend(rd.take_messages());
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.storage.apply_snapshot(&snap)?;
            self.image =
                MetadataImage::decode(snap.get_data()).map_err(MetadataNodeError::Snapshot)?;
            self.applied = snap.get_metadata().index;
            self.snapshot_index = self.applied;
            out.restored_from_snapshot = Some(self.applied);
        }
        let committed = rd.take_committed_entries();
        self.apply(committed, &mut out);
        let storage = self.storage.clone();
        let stop = self.retry_writes.clone();
        durably(stop.as_deref(), || storage.append(rd.entries()))?;
        if let Some(hs) = rd.hs() {
            durably(stop.as_deref(), || storage.set_hard_state(hs))?;
        }
        out.messages.extend(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            durably(stop.as_deref(), || storage.set_commit(commit))?;
        }
        out.messages.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed, &mut out);
        self.raw.advance_apply();
        if self.applied >= self.snapshot_index + self.config.snapshot_every {
            let data = self.image.encode().map_err(MetadataNodeError::Snapshot)?;
            match self.storage.compact_to(self.applied, data) {
                Ok(()) => self.snapshot_index = self.applied,
                // A snapshot is an optimisation: on a full disk, the log just stays longer.
                Err(RaftStorageError::Io { .. }) if self.retry_writes.is_some() => {
                    tracing::warn!(
                        index = self.applied,
                        "metadata snapshot not written (disk full?); retrying later"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Makes failed writes of the metadata log (a full disk, typically) block and retry until
    /// they succeed, instead of failing the node, unless `stop` is set (shutdown). The broker's
    /// voter uses this: a full disk stalls metadata changes but does not kill the quorum member,
    /// which carries on once space is freed. Simulations leave it off.
    pub fn retry_failed_writes(&mut self, stop: Arc<AtomicBool>) {
        self.retry_writes = Some(stop);
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut ReadyOutput) {
        for e in entries {
            if e.index <= self.applied {
                continue; // already in the image (restored from a snapshot that covers it)
            }
            self.applied = e.index;
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                continue; // a new leader's empty entry; voters are static for now
            }
            let batch: Batch = match serde_json::from_slice(&e.data) {
                Ok(b) => b,
                Err(err) => {
                    tracing::error!(index = e.index, error = %err, "metadata entry does not decode; skipped");
                    continue;
                }
            };
            let mut changes = Vec::new();
            for r in &batch.records {
                match self.image.apply(e.index, r) {
                    Ok(c) => changes.extend(c),
                    Err(err) => {
                        tracing::error!(index = e.index, record = ?r, error = %err, "metadata record does not apply; skipped")
                    }
                }
            }
            out.committed.push(Committed {
                index: e.index,
                term: e.term,
                records: batch.records,
                proposal: ProposalId::decode(&e.context),
                changes,
            });
        }
    }
}

/// Runs a metadata-log write; an I/O failure is retried (with backoff, blocking this thread)
/// until it succeeds or `stop` is set. Retrying is safe: every write either rewrites a whole
/// file atomically or first truncates the log back to where the failed append began.
fn durably<T>(
    stop: Option<&AtomicBool>,
    mut write: impl FnMut() -> Result<T, RaftStorageError>,
) -> Result<T, MetadataNodeError> {
    let mut delay = std::time::Duration::from_millis(50);
    let mut failing = false;
    loop {
        match write() {
            Ok(v) => {
                if failing {
                    tracing::info!("metadata log writes succeed again");
                }
                return Ok(v);
            }
            Err(e @ RaftStorageError::Io { .. })
                if stop.is_some_and(|s| !s.load(Ordering::Acquire)) =>
            {
                if !failing {
                    tracing::error!(error = %e, "metadata log write failed; metadata changes stall and the write is retried until it succeeds");
                    failing = true;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// raft-rs messages on the wire (the internal gRPC service carries them as opaque bytes).
pub mod wire {
    use protobuf::Message as _;
    pub use raft::prelude::Message;

    pub fn encode(m: &Message) -> Result<Vec<u8>, protobuf::ProtobufError> {
        m.write_to_bytes()
    }

    pub fn decode(b: &[u8]) -> Result<Message, protobuf::ProtobufError> {
        Message::parse_from_bytes(b)
    }

    /// True for the message kind whose delivery the transport must report.
    pub fn is_snapshot(m: &Message) -> bool {
        m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot
    }
}
