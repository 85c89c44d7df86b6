//! [`Partition`]: one replica of a topic partition as the broker serves it.
//!
//! It owns the partition's [`Log`] and the replica state on top of it: leader epoch, in-sync
//! replica set, and the high watermark (HW) — the offset below which records are committed and
//! visible to consumers. Consumers wait on a watch channel that the HW drives, so long polls wake
//! the moment data is committed.
//!
//! Who leads, the leader epoch, the replicas and the ISR come from the metadata image: the
//! replica manager calls [`Partition::set_replica_state`] whenever the controller changes them,
//! and a replica that does not lead refuses produce and consumer fetch
//! ([`PartitionError::NotLeader`]) so clients go to the leader.
//!
//! Replication (Kafka's `Partition`): as leader, it serves followers' fetches
//! ([`Partition::fetch_for_follower`]) — checking their leader epoch (KIP-320) and their last
//! fetched epoch against the leader-epoch cache, answering a divergence so they truncate
//! (KIP-101/279/595) — and tracks each follower's log end offset and when it last caught up. The
//! HW is the minimum log end offset over the ISR and only moves forward; `acks=all` waits for it
//! to pass the batch. [`Partition::isr_change`] proposes dropping followers that have not caught
//! up for `replica.lag.time.max.ms` and taking back those that have; the ISR changes only when
//! the controller commits it (AlterPartition), which comes back through the image. As follower
//! it appends the leader's batches with their offsets and takes the leader's HW.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_log::{
    AppendInfo, Clock, Log, LogConfig, LogDirHealth, LogError, MonotonicClock, ReadInfo,
};
use tokio::sync::watch;

/// How many replicas must have a produce before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: the producer does not wait for anything.
    None,
    /// acks=1: the leader appended to its log.
    Leader,
    /// acks=all (-1): every in-sync replica has it, and the ISR has at least
    /// `min.insync.replicas` members.
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("not enough in-sync replicas: {isr} in sync, min.insync.replicas={min_isr}")]
    NotEnoughReplicas { isr: usize, min_isr: usize },
    #[error("a storage task failed: {0}")]
    Task(String),
    #[error("broker {broker} is not the leader of {topic}-{partition} (leader: {leader})")]
    NotLeader {
        topic: String,
        partition: u32,
        broker: i32,
        /// The leader per this broker's metadata, or -1 if none.
        leader: i32,
    },
    #[error("leader epoch {got} is older than the current {current}")]
    FencedLeaderEpoch { got: i32, current: i32 },
    #[error("leader epoch {got} is newer than the {current} this broker knows")]
    UnknownLeaderEpoch { got: i32, current: i32 },
    #[error("broker {0} is not a replica of this partition")]
    UnknownReplica(i32),
    #[error("acks=all: the batch was not replicated to the ISR within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("appended, but the ISR shrank to {isr} below min.insync.replicas={min_isr} before it was replicated")]
    NotEnoughReplicasAfterAppend { isr: usize, min_isr: usize },
}

/// The per-replica HW checkpoint of earlier versions, read once when upgrading (HWs are now
/// checkpointed per log directory, in [`HW_CHECKPOINT`]).
pub const LEGACY_HW_CHECKPOINT: &str = "high-watermark-checkpoint";

/// Every replica's high watermark, one file per log directory (Kafka's name and format).
pub const HW_CHECKPOINT: &str = "replication-offset-checkpoint";

/// What ListOffsets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    /// The high watermark (the end of what consumers may read).
    Latest,
    /// The offset of the record with the largest timestamp (Kafka's -3).
    MaxTimestamp,
    /// The first offset whose timestamp is at or after this.
    Timestamp(i64),
}

/// What a consumer may read: Kafka's `isolation_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Up to the high watermark, records of open and aborted transactions included.
    #[default]
    ReadUncommitted,
    /// Up to the last stable offset; the fetch names the aborted transactions to drop.
    ReadCommitted,
}

impl Isolation {
    /// Kafka's wire value: 0 read_uncommitted, 1 read_committed.
    pub fn from_kafka(level: i8) -> Isolation {
        if level == 1 {
            Isolation::ReadCommitted
        } else {
            Isolation::ReadUncommitted
        }
    }
}

/// A follower as its leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FollowerState {
    /// Its log end offset: the offset it last fetched from.
    pub log_end_offset: u64,
    /// The last time it had everything the leader had (Kafka's lastCaughtUpTimeMs).
    pub last_caught_up_ms: i64,
    /// The leader's log end offset and the time at its previous fetch.
    last_fetch_leader_leo: u64,
    last_fetch_ms: i64,
}

/// What a follower's fetch gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerFetch {
    pub records: bytes::Bytes,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    /// The follower's log diverges: truncate to (at most) the end of this epoch, then fetch again.
    pub diverging: Option<(i32, u64)>,
}

/// Where a replica's high watermark starts when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialHw {
    /// As last checkpointed (bounded by the log).
    Checkpointed(u64),
    /// A log from before HW checkpoints existed: a single replica's, all committed.
    LogEnd,
    /// Unknown (no entry in a checkpoint that should have one, or an unreadable one): nothing
    /// is exposed until the leader says what is committed.
    LogStart,
}

/// The partition's registration in the metadata image, as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Replicas a reassignment is adding (their copy traffic may be throttled).
    pub adding: Vec<i32>,
    /// Led after an unclean election and not yet confirmed (KIP-704's RECOVERING): the ISR stays
    /// the leader alone until the leader's AlterPartition marks it recovered.
    pub recovering: bool,
}

impl ReplicaState {
    /// A single-replica partition led by `broker` (before the image says otherwise).
    pub fn sole(broker: i32) -> ReplicaState {
        ReplicaState {
            leader: broker,
            leader_epoch: 0,
            partition_epoch: 0,
            replicas: vec![broker],
            isr: vec![broker],
            adding: Vec::new(),
            recovering: false,
        }
    }
}

/// Replica settings that are not log settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// `min.insync.replicas` (1).
    pub min_insync_replicas: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            min_insync_replicas: 1,
        }
    }
}

pub struct Partition {
    topic: String,
    index: u32,
    broker_id: i32,
    log: Arc<Log>,
    leader_epoch: AtomicI32,
    state: std::sync::RwLock<ReplicaState>,
    /// As leader: each follower's progress (reset when leadership changes).
    followers: std::sync::Mutex<std::collections::HashMap<i32, FollowerState>>,
    /// The log end offset, for followers' long polls.
    leo_tx: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
    replica_config: std::sync::RwLock<ReplicaConfig>,
    hw_tx: watch::Sender<u64>,
    /// The write health of the log directory this replica lives in.
    dir_health: Arc<LogDirHealth>,
    /// True once the replica is deleted: wakes acks=all waiters with an error at once.
    deleted_tx: watch::Sender<bool>,
}

/// Batches written to the leader's log by [`Partition::start_append`], not yet acknowledged.
#[derive(Debug)]
pub struct Appended {
    info: AppendInfo,
    /// The offset an fsync must cover first (the topic's flush policy made one due).
    flush: Option<u64>,
    min_isr: usize,
}

impl Partition {
    /// Opens (recovering if needed) the partition's log in `dir`, as the leader of a
    /// single-replica partition, with its high watermark where `initial_hw` says.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        topic: &str,
        index: u32,
        broker_id: i32,
        dir: &std::path::Path,
        log_config: LogConfig,
        replica_config: ReplicaConfig,
        dir_health: Arc<LogDirHealth>,
        initial_hw: InitialHw,
    ) -> Result<Partition, PartitionError> {
        let log = Log::open(dir, log_config)?;
        // A restarted replica must not expose records that were never committed (if it leads
        // again before its followers catch up, and dies, those records would vanish from under
        // the consumers that saw them): it starts from the HW last checkpointed.
        let hw = log.set_high_watermark(match initial_hw {
            InitialHw::Checkpointed(hw) => hw,
            InitialHw::LogEnd => log.log_end_offset(),
            InitialHw::LogStart => log.log_start_offset(),
        });
        let (hw_tx, _) = watch::channel(hw);
        let log = Arc::new(log);
        let (leo_tx, _) = watch::channel(log.log_end_offset());
        Ok(Partition {
            topic: topic.to_string(),
            index,
            broker_id,
            log,
            leader_epoch: AtomicI32::new(0),
            state: std::sync::RwLock::new(ReplicaState::sole(broker_id)),
            followers: std::sync::Mutex::new(std::collections::HashMap::new()),
            leo_tx,
            clock: Arc::new(MonotonicClock::default()),
            replica_config: std::sync::RwLock::new(replica_config),
            hw_tx,
            dir_health,
            deleted_tx: watch::channel(false).0,
        })
    }

    /// Deletes this replica (its topic was deleted, or it moved to other brokers): writes stop
    /// with [`LogError::Deleted`], producers waiting for acks=all are answered at once, and the
    /// log directory is renamed aside (see [`Log::delete_dir`]); returns where it now is, for
    /// the caller to remove.
    pub fn delete(&self) -> Result<std::path::PathBuf, PartitionError> {
        self.deleted_tx.send_replace(true);
        Ok(self.log.delete_dir()?)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn index(&self) -> u32 {
        self.index
    }
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }
    pub fn dir_health(&self) -> &Arc<LogDirHealth> {
        &self.dir_health
    }
    pub fn state(&self) -> ReplicaState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Takes the image's view of this partition (leader, epochs, replicas, ISR).
    pub fn set_replica_state(&self, state: ReplicaState) {
        let mut cur = self.state.write().unwrap_or_else(|e| e.into_inner());
        if *cur == state {
            let leads = cur.leader == self.broker_id;
            drop(cur);
            if leads {
                // A leader alone in its ISR commits what it has (a restart from a lagging HW
                // checkpoint).
                self.maybe_advance_hw();
            }
            return;
        }
        if cur.leader != state.leader || cur.leader_epoch != state.leader_epoch {
            tracing::debug!(
                topic = %self.topic,
                partition = self.index,
                leader = state.leader,
                leader_epoch = state.leader_epoch,
                "{}",
                if state.leader == self.broker_id { "leading" } else { "not leading" }
            );
        }
        let new_leadership = cur.leader != state.leader || cur.leader_epoch != state.leader_epoch;
        self.leader_epoch
            .store(state.leader_epoch, Ordering::Release);
        let leads = state.leader == self.broker_id;
        *cur = state;
        let replicas = cur.replicas.clone();
        drop(cur);
        if !new_leadership && leads {
            // A reassignment changed the replicas: forget the progress of those that left.
            self.followers().retain(|r, _| replicas.contains(r));
        }
        if new_leadership {
            let mut f = self.followers();
            f.clear();
            if leads {
                // Kafka's makeLeader: every follower starts unknown (log end 0) but counts as
                // caught up now, so a new leader does not shrink the ISR before a first fetch.
                let now = self.clock.now_ms();
                for r in replicas.into_iter().filter(|r| *r != self.broker_id) {
                    f.insert(
                        r,
                        FollowerState {
                            last_caught_up_ms: now,
                            last_fetch_ms: now,
                            ..Default::default()
                        },
                    );
                }
            }
        }
        if leads {
            self.maybe_advance_hw();
        }
    }

    fn followers(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<i32, FollowerState>> {
        self.followers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each follower's progress as this leader sees it.
    pub fn follower_states(&self) -> Vec<(i32, FollowerState)> {
        let mut v: Vec<_> = self.followers().iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// As leader: HW = the minimum log end offset over the ISR, moved forward only.
    fn maybe_advance_hw(&self) {
        let st = self.state();
        if st.leader != self.broker_id {
            return;
        }
        let mut hw = self.log.log_end_offset();
        {
            let f = self.followers();
            for b in st.isr.iter().filter(|b| **b != self.broker_id) {
                hw = hw.min(f.get(b).map_or(0, |s| s.log_end_offset));
            }
        }
        if hw > self.high_watermark() {
            self.set_high_watermark(hw);
        }
    }
    pub fn leader(&self) -> i32 {
        self.state.read().unwrap_or_else(|e| e.into_inner()).leader
    }
    pub fn is_leader(&self) -> bool {
        self.leader() == self.broker_id
    }
    pub fn replicas(&self) -> Vec<i32> {
        self.state().replicas
    }
    pub fn isr(&self) -> Vec<i32> {
        self.state().isr
    }
    /// Refuses unless this replica leads.
    pub fn check_leader(&self) -> Result<(), PartitionError> {
        let leader = self.leader();
        if leader == self.broker_id {
            Ok(())
        } else {
            Err(PartitionError::NotLeader {
                topic: self.topic.clone(),
                partition: self.index,
                broker: self.broker_id,
                leader,
            })
        }
    }
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }
    pub fn high_watermark(&self) -> u64 {
        self.log.high_watermark()
    }
    pub fn replica_config(&self) -> ReplicaConfig {
        *self
            .replica_config
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }
    pub fn set_configs(&self, log_config: LogConfig, replica_config: ReplicaConfig) {
        self.log.set_config(log_config);
        *self
            .replica_config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = replica_config;
    }

    /// Appends a producer's batches as leader and returns once `acks` is satisfied: acks=1 after
    /// the append, acks=all once the HW has passed the batch (every ISR member has it), or
    /// [`PartitionError::Timeout`] after `timeout`.
    ///
    /// `min.insync.replicas` is checked before the append (NOT_ENOUGH_REPLICAS) and again once
    /// replicated (NOT_ENOUGH_REPLICAS_AFTER_APPEND). The write itself goes to the page cache; it
    /// runs under `block_in_place` because a topic's flush policy may make it fsync.
    pub async fn append(
        &self,
        batches: &[u8],
        acks: Acks,
        timeout: Duration,
    ) -> Result<AppendInfo, PartitionError> {
        let appended = self.start_append(batches, acks)?;
        self.finish_append(appended, acks, timeout).await
    }

    /// The first half of [`Partition::append`]: checks and writes the batches (in the order
    /// calls are made), without waiting for the fsync a flush policy asks for nor for followers.
    /// A connection writes its next request's batches while [`Partition::finish_append`] for
    /// the one before waits, and answers them in order.
    pub fn start_append(&self, batches: &[u8], acks: Acks) -> Result<Appended, PartitionError> {
        self.check_leader()?;
        let min_isr = self.replica_config().min_insync_replicas;
        if acks == Acks::All {
            let isr = self.isr().len();
            if isr < min_isr {
                return Err(PartitionError::NotEnoughReplicas { isr, min_isr });
            }
        }
        self.dir_health.check_writable()?;
        let epoch = self.leader_epoch();
        let (info, flush) =
            tokio::task::block_in_place(|| self.log.append_as_leader_unflushed(batches, epoch))
                .inspect_err(|e| {
                    self.dir_health
                        .record_failure(&format!("{}-{}", self.topic, self.index), e)
                })?;
        self.leo_tx.send_replace(self.log.log_end_offset());
        if flush.is_none() {
            self.maybe_advance_hw();
        }
        Ok(Appended {
            info,
            flush,
            min_isr,
        })
    }

    /// The second half of [`Partition::append`]: the fsync the flush policy asked for (on the
    /// blocking pool; one fsync covers every append written before it began), then what `acks`
    /// waits for.
    pub async fn finish_append(
        &self,
        appended: Appended,
        acks: Acks,
        timeout: Duration,
    ) -> Result<AppendInfo, PartitionError> {
        let Appended {
            info,
            flush,
            min_isr,
        } = appended;
        if let Some(upto) = flush {
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || log.flush_upto(upto))
                .await
                .map_err(|e| PartitionError::Task(e.to_string()))?
                .inspect_err(|e| {
                    self.dir_health
                        .record_failure(&format!("{}-{}", self.topic, self.index), e)
                })?;
            // As Kafka: the leader's own append counts toward the HW once flushed.
            self.maybe_advance_hw();
        }
        self.await_acks(info, acks, timeout, min_isr).await
    }

    /// Writes a transaction marker for a producer (the transaction coordinator's
    /// WriteTxnMarkers) and waits until every in-sync replica has it, as Kafka writes markers
    /// with acks=all.
    pub async fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: sluice_log::Marker,
        timeout: Duration,
    ) -> Result<AppendInfo, PartitionError> {
        self.check_leader()?;
        let min_isr = self.replica_config().min_insync_replicas;
        let isr = self.isr().len();
        if isr < min_isr {
            return Err(PartitionError::NotEnoughReplicas { isr, min_isr });
        }
        self.append_and_wait(Acks::All, timeout, min_isr, |log, epoch| {
            log.append_marker(producer_id, producer_epoch, marker, epoch)
        })
        .await
    }

    async fn append_and_wait(
        &self,
        acks: Acks,
        timeout: Duration,
        min_isr: usize,
        write: impl FnOnce(&Log, i32) -> Result<AppendInfo, LogError>,
    ) -> Result<AppendInfo, PartitionError> {
        // An offline log directory refuses at once: its logs' state after the failed write is
        // not trusted for more writes (KAFKA_STORAGE_ERROR), reads go on.
        self.dir_health.check_writable()?;
        let epoch = self.leader_epoch();
        let info = tokio::task::block_in_place(|| write(&self.log, epoch)).inspect_err(|e| {
            self.dir_health
                .record_failure(&format!("{}-{}", self.topic, self.index), e)
        })?;
        // (Not `last_offset + 1`: a producer's retry is answered with the offsets of a batch
        // written earlier, below the log end.)
        self.leo_tx.send_replace(self.log.log_end_offset());
        // With the leader alone in the ISR this commits the batch at once.
        self.maybe_advance_hw();
        self.await_acks(info, acks, timeout, min_isr).await
    }

    /// Waits as `acks` asks for an append that is written (and flushed where due): for
    /// `Acks::All`, until the HW passes it with at least `min_isr` replicas in sync.
    async fn await_acks(
        &self,
        info: AppendInfo,
        acks: Acks,
        timeout: Duration,
        min_isr: usize,
    ) -> Result<AppendInfo, PartitionError> {
        if acks != Acks::All {
            return Ok(info);
        }
        let mut hw = self.hw_tx.subscribe();
        let mut deleted = self.deleted_tx.subscribe();
        let waiting_since = self.clock.now_ms();
        let parked = crate::purgatory::Waiting::enter(&crate::purgatory::PRODUCE);
        let replicated = tokio::time::timeout(timeout, async {
            tokio::select! {
                r = hw.wait_for(|hw| *hw > info.last_offset) => r.is_ok(),
                _ = deleted.wait_for(|d| *d) => false,
            }
        })
        .await;
        drop(parked);
        crate::histogram::ACKS_ALL_WAIT
            .observe((self.clock.now_ms() - waiting_since).max(0) as u64);
        if *self.deleted_tx.borrow() {
            return Err(LogError::Deleted.into());
        }
        if !matches!(replicated, Ok(true)) {
            return Err(PartitionError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            });
        }
        let isr = self.isr().len();
        if isr < min_isr {
            return Err(PartitionError::NotEnoughReplicasAfterAppend { isr, min_isr });
        }
        Ok(info)
    }

    // ---- leader: serving followers ---------------------------------------------------------

    /// A follower's fetch from `fetch_offset` (its log end offset), as leader.
    pub fn fetch_for_follower(
        &self,
        replica: i32,
        fetch_offset: u64,
        current_leader_epoch: i32,
        last_fetched_epoch: i32,
        max_bytes: usize,
    ) -> Result<FollowerFetch, PartitionError> {
        self.check_leader()?;
        let st = self.state();
        if current_leader_epoch < st.leader_epoch {
            return Err(PartitionError::FencedLeaderEpoch {
                got: current_leader_epoch,
                current: st.leader_epoch,
            });
        }
        if current_leader_epoch > st.leader_epoch {
            return Err(PartitionError::UnknownLeaderEpoch {
                got: current_leader_epoch,
                current: st.leader_epoch,
            });
        }
        if replica == self.broker_id || !st.replicas.contains(&replica) {
            return Err(PartitionError::UnknownReplica(replica));
        }
        let leo = self.log.log_end_offset();
        let start = self.log.log_start_offset();
        let answer = |records: bytes::Bytes, diverging| FollowerFetch {
            records,
            high_watermark: self.high_watermark(),
            log_start_offset: start,
            log_end_offset: leo,
            diverging,
        };
        // Does the follower's log agree with ours up to where it is? Its last fetched epoch must
        // end, here, at or after its log end (KIP-595's check in the fetch itself).
        if last_fetched_epoch >= 0 {
            match self.log.end_offset_for_epoch(last_fetched_epoch) {
                Some((e, end)) if e == last_fetched_epoch && end >= fetch_offset => {}
                Some((e, end)) => {
                    return Ok(answer(
                        bytes::Bytes::new(),
                        Some((e, end.min(fetch_offset))),
                    ))
                }
                None => return Ok(answer(bytes::Bytes::new(), Some((-1, start)))),
            }
        }
        if fetch_offset > leo {
            // Ahead without a known epoch: truncate to our end.
            let latest = self.log.latest_epoch().map_or(-1, |e| e.epoch);
            return Ok(answer(bytes::Bytes::new(), Some((latest, leo))));
        }
        let now = self.clock.now_ms();
        {
            let mut f = self.followers();
            let s = f.entry(replica).or_default();
            s.log_end_offset = fetch_offset.max(start);
            if fetch_offset >= leo {
                s.last_caught_up_ms = now;
            } else if fetch_offset >= s.last_fetch_leader_leo {
                s.last_caught_up_ms = s.last_caught_up_ms.max(s.last_fetch_ms);
            }
            s.last_fetch_leader_leo = leo;
            s.last_fetch_ms = now;
        }
        self.maybe_advance_hw();
        if fetch_offset < start {
            // Retention moved on: the follower restarts at our log start.
            return Ok(answer(bytes::Bytes::new(), None));
        }
        let (data, _) = self.log.read_bytes(fetch_offset, max_bytes, None)?;
        Ok(answer(data, None))
    }

    /// Whether `replica`'s fetches are reassignment traffic (Kafka throttles a replica being
    /// added while it is out of sync; an in-sync follower never is).
    pub fn is_throttled_follower(&self, replica: i32) -> bool {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.adding.contains(&replica) && !st.isr.contains(&replica)
    }

    /// The ISR this leader should propose (AlterPartition), if it should change: followers not
    /// caught up for `lag_max_ms` leave; replicas that have caught up with the HW (and the
    /// leader's current epoch) come back. `None` when nothing changes or this replica does not
    /// lead.
    pub fn isr_change(&self, lag_max_ms: i64) -> Option<Vec<i32>> {
        let st = self.state();
        if st.leader != self.broker_id {
            return None;
        }
        if st.recovering {
            // Nothing to recover beyond the log itself (no transactions yet): confirm at once,
            // alone in the ISR, so the controller lets followers rejoin afterwards.
            return Some(vec![self.broker_id]);
        }
        let now = self.clock.now_ms();
        let hw = self.high_watermark();
        let epoch_start = self
            .log
            .latest_epoch()
            .filter(|e| e.epoch == st.leader_epoch)
            .map_or(0, |e| e.start_offset);
        let f = self.followers();
        let keep = |b: &i32| {
            *b == self.broker_id
                || f.get(b)
                    .is_some_and(|s| now - s.last_caught_up_ms <= lag_max_ms)
        };
        let rejoin = |b: &i32| {
            f.get(b).is_some_and(|s| {
                s.log_end_offset >= hw
                    && s.log_end_offset >= epoch_start
                    && now - s.last_caught_up_ms <= lag_max_ms
            })
        };
        let new: Vec<i32> = st
            .replicas
            .iter()
            .copied()
            .filter(|b| {
                if st.isr.contains(b) {
                    keep(b)
                } else {
                    rejoin(b)
                }
            })
            .collect();
        let mut old = st.isr.clone();
        old.sort_unstable();
        let mut sorted = new.clone();
        sorted.sort_unstable();
        (sorted != old && new.contains(&self.broker_id)).then_some(new)
    }

    /// Waits until the log end offset moves past `offset` or `timeout` passes (a follower's long
    /// poll).
    pub async fn wait_for_append(&self, offset: u64, timeout: Duration) -> bool {
        let mut rx = self.leo_tx.subscribe();
        let woke = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|leo| *leo > offset)).await,
            Ok(Ok(_))
        );
        woke
    }

    // ---- follower ----------------------------------------------------------------------------

    /// Appends batches fetched from the leader, with the leader's offsets, and takes the leader's
    /// HW (bounded by what this replica has).
    pub fn append_as_follower(
        &self,
        batches: &[u8],
        leader_hw: u64,
    ) -> Result<Option<AppendInfo>, PartitionError> {
        if self.is_leader() {
            return Err(PartitionError::UnknownReplica(self.broker_id));
        }
        let info = if batches.is_empty() {
            None
        } else {
            self.dir_health.check_writable()?;
            let info = tokio::task::block_in_place(|| self.log.append_as_follower(batches))
                .inspect_err(|e| {
                    self.dir_health
                        .record_failure(&format!("{}-{}", self.topic, self.index), e)
                })?;
            self.leo_tx.send_replace(info.last_offset + 1);
            Some(info)
        };
        let hw = leader_hw.min(self.log.log_end_offset());
        self.set_high_watermark(hw);
        Ok(info)
    }

    /// The leader says this replica's log diverges after `epoch`, which ends at `leader_end` on
    /// the leader: truncate to the end of the largest common epoch (KIP-279).
    pub fn truncate_diverging(&self, epoch: i32, leader_end: u64) -> Result<u64, PartitionError> {
        let mine = if epoch < 0 {
            Some((epoch, self.log.log_start_offset()))
        } else {
            self.log.end_offset_for_epoch(epoch)
        };
        let to = match mine {
            Some((e, end)) if e == epoch => end.min(leader_end),
            Some((_, end)) => end.min(leader_end),
            None => self.log.log_start_offset().min(leader_end),
        };
        let (leo, hw) = (self.log.log_end_offset(), self.high_watermark());
        tokio::task::block_in_place(|| self.log.truncate_to(to))?;
        self.leo_tx.send_replace(self.log.log_end_offset());
        self.hw_tx.send_replace(self.high_watermark());
        let discarded = leo.saturating_sub(to);
        // Below the HW the records were committed (acks=all acknowledged, consumers may have read
        // them): only an unclean election makes a leader that lacks them.
        let committed = hw.saturating_sub(to).min(discarded);
        if committed > 0 {
            tracing::error!(
                topic = %self.topic,
                partition = self.index,
                epoch,
                from = to,
                to = leo,
                discarded,
                lost_committed = committed,
                "{committed} committed record(s) lost: the leader elected uncleanly does not have them"
            );
        } else {
            tracing::info!(topic = %self.topic, partition = self.index, epoch, to, discarded, "truncated a diverging tail");
        }
        Ok(to)
    }

    /// The leader's log starts after this replica's end (retention): start over there.
    pub fn restart_at(&self, offset: u64) -> Result<(), PartitionError> {
        tokio::task::block_in_place(|| self.log.truncate_fully_and_start_at(offset))?;
        self.leo_tx.send_replace(offset);
        self.set_high_watermark(offset);
        Ok(())
    }

    /// Moves the high watermark and wakes consumers waiting for data.
    pub fn set_high_watermark(&self, hw: u64) {
        let hw = self.log.set_high_watermark(hw);
        self.hw_tx.send_if_modified(|cur| {
            let changed = *cur != hw;
            *cur = hw;
            changed
        });
    }

    /// Reads committed batches (below the HW) from `offset`: a consumer's read, from the leader.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadInfo, PartitionError> {
        self.read_isolated(offset, max_bytes, Isolation::ReadUncommitted)
    }

    /// A consumer's read at an isolation level: below the HW, or below the last stable offset
    /// for `read_committed`.
    pub fn read_isolated(
        &self,
        offset: u64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadInfo, PartitionError> {
        self.check_leader()?;
        Ok(self
            .log
            .read(offset, max_bytes, Some(self.visible_end(isolation)))?)
    }

    /// The end of what a consumer at `isolation` may read.
    pub fn visible_end(&self, isolation: Isolation) -> u64 {
        match isolation {
            Isolation::ReadUncommitted => self.high_watermark(),
            Isolation::ReadCommitted => self.log.last_stable_offset(),
        }
    }

    /// The last stable offset (the high watermark when no transaction is open).
    pub fn last_stable_offset(&self) -> u64 {
        self.log.last_stable_offset()
    }

    /// Aborted transactions with records in `[from, upto)` (for a `read_committed` fetch).
    pub fn aborted_transactions(&self, from: u64, upto: u64) -> Vec<sluice_log::AbortedTxn> {
        self.log.aborted_transactions(from, upto)
    }

    /// Committed batches from `offset` as bytes (a consumer's read, from the leader).
    pub fn read_committed_bytes(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<(bytes::Bytes, ReadInfo), PartitionError> {
        self.read_bytes_isolated(offset, max_bytes, Isolation::ReadUncommitted)
    }

    /// [`Partition::read_isolated`] into memory.
    pub fn read_bytes_isolated(
        &self,
        offset: u64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<(bytes::Bytes, ReadInfo), PartitionError> {
        self.check_leader()?;
        Ok(self
            .log
            .read_bytes(offset, max_bytes, Some(self.visible_end(isolation)))?)
    }

    /// Kafka's ListOffsets on this partition, from the leader: (offset, timestamp) — the
    /// timestamp is -1 for the log start and the end (the HW, or the last stable offset for
    /// `read_committed`). `None`: no record matches.
    pub fn list_offset(
        &self,
        query: OffsetQuery,
        isolation: Isolation,
    ) -> Result<Option<(u64, i64)>, PartitionError> {
        self.check_leader()?;
        let hw = self.visible_end(isolation);
        Ok(match query {
            OffsetQuery::Earliest => Some((self.log.log_start_offset(), -1)),
            OffsetQuery::Latest => Some((hw, -1)),
            OffsetQuery::MaxTimestamp => {
                tokio::task::block_in_place(|| self.log.offset_of_max_timestamp())?
                    .filter(|(offset, _)| *offset < hw)
            }
            OffsetQuery::Timestamp(ts) => {
                tokio::task::block_in_place(|| self.log.offset_for_timestamp(ts, Some(hw)))?
            }
        })
    }

    /// Kafka's OffsetForLeaderEpoch for a client, from the leader (`LeaderEpochFileCache
    /// .endOffsetFor`): the largest epoch ≤ `epoch` this log has and the offset where it ends —
    /// the log end for the latest epoch. An epoch newer than the latest, or -1, is unknown
    /// (`None`); one older than every entry ends where the log's first epoch starts.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Result<Option<(i32, u64)>, PartitionError> {
        self.check_leader()?;
        let entries = self.log.epoch_entries();
        let latest = entries.last().map(|e| e.epoch);
        if epoch < 0 || latest.is_none_or(|l| epoch > l) {
            return Ok(None);
        }
        Ok(match self.log.end_offset_for_epoch(epoch) {
            Some(found) => Some(found),
            None => entries.first().map(|first| (epoch, first.start_offset)),
        })
    }

    /// Waits until the HW passes `offset` or `timeout` elapses. Returns true if it did.
    pub async fn wait_for_data(&self, offset: u64, timeout: Duration) -> bool {
        let mut rx = self.hw_tx.subscribe();
        let woke = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|hw| *hw > offset)).await,
            Ok(Ok(_))
        );
        woke
    }

    /// A receiver of HW changes, for streaming consumers.
    pub fn subscribe_high_watermark(&self) -> watch::Receiver<u64> {
        self.hw_tx.subscribe()
    }
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("topic", &self.topic)
            .field("index", &self.index)
            .field("log", &self.log)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_log::{BatchBuilder, Compression, Record};

    fn batch() -> bytes::BytesMut {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record {
            timestamp: 1,
            value: Some("v".into()),
            ..Default::default()
        });
        b.build().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_moves_hw_and_wakes_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(
            Partition::open(
                "t",
                0,
                1,
                dir.path(),
                LogConfig::default(),
                ReplicaConfig::default(),
                Arc::new(LogDirHealth::new(dir.path())),
                InitialHw::LogStart,
            )
            .unwrap(),
        );
        assert!(!p.wait_for_data(0, Duration::from_millis(20)).await);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_for_data(0, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.append(&batch(), Acks::Leader, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(waiter.await.unwrap());
        assert_eq!(p.high_watermark(), 1);
        assert_eq!(p.read(0, 1000).unwrap().next_offset, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acks_all_respects_min_insync_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(
            "t",
            0,
            1,
            dir.path(),
            LogConfig::default(),
            ReplicaConfig {
                min_insync_replicas: 2,
            },
            Arc::new(LogDirHealth::new(dir.path())),
            InitialHw::LogStart,
        )
        .unwrap();
        assert!(matches!(
            p.append(&batch(), Acks::All, Duration::from_secs(5)).await,
            Err(PartitionError::NotEnoughReplicas { isr: 1, min_isr: 2 })
        ));
        assert_eq!(p.log().log_end_offset(), 0, "nothing appended");
        p.append(&batch(), Acks::Leader, Duration::from_secs(5))
            .await
            .unwrap();
    }

    fn replica(dir: &std::path::Path, broker: i32, state: &ReplicaState) -> Arc<Partition> {
        replica_from(dir, broker, state, InitialHw::LogStart)
    }

    fn replica_from(
        dir: &std::path::Path,
        broker: i32,
        state: &ReplicaState,
        initial_hw: InitialHw,
    ) -> Arc<Partition> {
        let p = Partition::open(
            "t",
            0,
            broker,
            dir,
            LogConfig::default(),
            ReplicaConfig {
                min_insync_replicas: 2,
            },
            Arc::new(LogDirHealth::new(dir)),
            initial_hw,
        )
        .unwrap();
        p.set_replica_state(state.clone());
        Arc::new(p)
    }

    fn led_by(leader: i32, epoch: i32, isr: Vec<i32>) -> ReplicaState {
        ReplicaState {
            adding: Vec::new(),
            recovering: false,
            leader,
            leader_epoch: epoch,
            partition_epoch: epoch,
            replicas: vec![1, 2],
            isr,
        }
    }

    /// One follower fetch round: what the follower asks, what the leader answers, applied.
    fn fetch_round(leader: &Partition, follower: &Partition, follower_id: i32) -> FollowerFetch {
        let f = leader
            .fetch_for_follower(
                follower_id,
                follower.log().log_end_offset(),
                follower.leader_epoch(),
                follower.log().latest_epoch().map_or(-1, |e| e.epoch),
                1 << 20,
            )
            .unwrap();
        match f.diverging {
            Some((e, end)) => {
                follower.truncate_diverging(e, end).unwrap();
            }
            None => {
                follower
                    .append_as_follower(&f.records, f.high_watermark)
                    .unwrap();
            }
        }
        f
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_a_replica_answers_its_acks_all_waiters_at_once() {
        let (base, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dir = base.path().join("t-0");
        let leader = replica(&dir, 1, &led_by(1, 1, vec![1, 2]));
        let _follower = replica(other.path(), 2, &led_by(1, 1, vec![1, 2]));
        // The follower never fetches: without the deletion this waits its full 60 s.
        let waiting = {
            let leader = leader.clone();
            tokio::spawn(async move {
                leader
                    .append(&batch(), Acks::All, Duration::from_secs(60))
                    .await
            })
        };
        while leader.log().log_end_offset() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let doomed = leader.delete().unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("answered well before the acks=all timeout")
            .unwrap();
        assert!(
            matches!(answer, Err(PartitionError::Log(LogError::Deleted))),
            "{answer:?}"
        );
        assert!(!dir.exists() && doomed.exists());
        assert!(matches!(
            leader
                .append(&batch(), Acks::Leader, Duration::from_secs(5))
                .await,
            Err(PartitionError::Log(LogError::Deleted))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hw_is_the_isrs_minimum_and_acks_all_waits_for_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let state = led_by(1, 1, vec![1, 2]);
        let leader = replica(a.path(), 1, &state);
        let follower = replica(b.path(), 2, &state);
        leader
            .append(&batch(), Acks::Leader, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(leader.high_watermark(), 0, "the follower has nothing yet");
        assert!(
            leader.read(0, 1000).unwrap().regions.is_empty(),
            "consumers see nothing above the HW"
        );
        fetch_round(&leader, &follower, 2);
        assert_eq!(follower.log().log_end_offset(), 1);
        assert_eq!(leader.high_watermark(), 0, "known only at the next fetch");
        fetch_round(&leader, &follower, 2);
        assert_eq!(leader.high_watermark(), 1);
        fetch_round(&leader, &follower, 2);
        assert_eq!(
            follower.high_watermark(),
            1,
            "followers take the leader's HW"
        );

        // acks=all returns once the follower has fetched past the batch.
        let waiting = {
            let leader = leader.clone();
            tokio::spawn(async move {
                leader
                    .append(&batch(), Acks::All, Duration::from_secs(10))
                    .await
            })
        };
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !waiting.is_finished() {
            assert!(std::time::Instant::now() < end, "acks=all never completed");
            fetch_round(&leader, &follower, 2);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(waiting.await.unwrap().unwrap().last_offset, 1);
        assert_eq!(leader.high_watermark(), 2);
        // Without the follower fetching, acks=all times out (the record stays, uncommitted).
        let r = leader
            .append(&batch(), Acks::All, Duration::from_millis(50))
            .await;
        assert!(matches!(r, Err(PartitionError::Timeout { .. })), "{r:?}");
        // A stale leader epoch is fenced, a future one unknown.
        assert!(matches!(
            leader.fetch_for_follower(2, 2, 0, 1, 1000),
            Err(PartitionError::FencedLeaderEpoch { got: 0, current: 1 })
        ));
        assert!(matches!(
            leader.fetch_for_follower(2, 2, 2, 1, 1000),
            Err(PartitionError::UnknownLeaderEpoch { .. })
        ));
        assert!(matches!(
            follower
                .append(&batch(), Acks::Leader, Duration::from_secs(1))
                .await,
            Err(PartitionError::NotLeader { leader: 1, .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_truncates_the_tail_that_diverges_from_the_new_leader() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Broker 2 led epoch 1 and wrote 5 records; broker 1 got 3 of them.
        let old = led_by(2, 1, vec![1, 2]);
        let old_leader = replica(b.path(), 2, &old);
        let new_leader = replica(a.path(), 1, &old);
        for _ in 0..5 {
            old_leader
                .append(&batch(), Acks::Leader, Duration::from_secs(1))
                .await
                .unwrap();
        }
        let (first3, _) = old_leader.log().read_bytes(0, 1 << 20, None).unwrap();
        let headers: usize = (0..3)
            .map(|_| ())
            .fold((0usize, 0usize), |(pos, n), _| {
                let h = sluice_log::BatchHeader::parse(&first3[pos..]).unwrap();
                (pos + h.total_size(), n + 1)
            })
            .0;
        new_leader
            .append_as_follower(&first3[..headers], 0)
            .unwrap();
        assert_eq!(new_leader.log().log_end_offset(), 3);
        // Broker 1 becomes leader in epoch 2 and writes 2 records of its own at offsets 3, 4.
        let new = led_by(1, 2, vec![1, 2]);
        new_leader.set_replica_state(new.clone());
        old_leader.set_replica_state(new);
        for _ in 0..2 {
            new_leader
                .append(&batch(), Acks::Leader, Duration::from_secs(1))
                .await
                .unwrap();
        }
        // The old leader's offsets 3 and 4 (epoch 1) are not the new leader's (epoch 2): its
        // fetch is answered with the divergence, it truncates to 3, then fetches epoch 2's.
        let f = fetch_round(&new_leader, &old_leader, 2);
        assert_eq!(f.diverging, Some((1, 3)));
        assert_eq!(old_leader.log().log_end_offset(), 3);
        fetch_round(&new_leader, &old_leader, 2);
        assert_eq!(old_leader.log().log_end_offset(), 5);
        assert_eq!(
            old_leader.log().read_bytes(0, 1 << 20, None).unwrap().0,
            new_leader.log().read_bytes(0, 1 << 20, None).unwrap().0,
            "the replicas hold the same bytes"
        );
        assert_eq!(
            old_leader.log().epoch_entries(),
            new_leader.log().epoch_entries()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_replica_keeps_its_checkpointed_hw_not_its_log_end() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let state = led_by(1, 1, vec![1, 2]);
        let leader = replica(a.path(), 1, &state);
        let follower = replica(b.path(), 2, &state);
        leader
            .append(&batch(), Acks::Leader, Duration::from_secs(1))
            .await
            .unwrap();
        fetch_round(&leader, &follower, 2);
        fetch_round(&leader, &follower, 2);
        assert_eq!(leader.high_watermark(), 1);
        // Two more records the follower never gets: not committed.
        for _ in 0..2 {
            leader
                .append(&batch(), Acks::Leader, Duration::from_secs(1))
                .await
                .unwrap();
        }
        let checkpointed = leader.high_watermark();
        leader.log().close().unwrap();
        drop(leader);
        let reopened = replica_from(a.path(), 1, &state, InitialHw::Checkpointed(checkpointed));
        assert_eq!(reopened.log().log_end_offset(), 3);
        assert_eq!(
            reopened.high_watermark(),
            1,
            "uncommitted records stay hidden after a restart"
        );
    }
}
