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
//! Replication to followers is the next step (follower fetch, ISR shrink/expand, HW = min LEO
//! over the ISR). Until it lands a leader can only commit what its ISR holds, which is all of it
//! only when the ISR is the leader alone: then the HW follows the log end offset on every
//! append. A partition whose ISR names other brokers refuses writes
//! ([`PartitionError::ReplicationUnavailable`]) rather than acknowledge a copy that no follower
//! will ever take.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_log::{AppendInfo, Log, LogConfig, LogDirHealth, LogError, ReadInfo};
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
    #[error(
        "{topic}-{partition} has in-sync followers {followers:?}, and this build does not \
         replicate to followers yet: writes are refused rather than acknowledged unreplicated"
    )]
    ReplicationUnavailable {
        topic: String,
        partition: u32,
        followers: Vec<i32>,
    },
}

/// The partition's registration in the metadata image, as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
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
    replica_config: std::sync::RwLock<ReplicaConfig>,
    hw_tx: watch::Sender<u64>,
    /// The write health of the log directory this replica lives in.
    dir_health: Arc<LogDirHealth>,
}

impl Partition {
    /// Opens (recovering if needed) the partition's log in `dir`, as the leader of a
    /// single-replica partition.
    pub fn open(
        topic: &str,
        index: u32,
        broker_id: i32,
        dir: &std::path::Path,
        log_config: LogConfig,
        replica_config: ReplicaConfig,
        dir_health: Arc<LogDirHealth>,
    ) -> Result<Partition, PartitionError> {
        let log = Log::open(dir, log_config)?;
        // Single replica: everything in the log is committed.
        let hw = log.set_high_watermark(log.log_end_offset());
        let (hw_tx, _) = watch::channel(hw);
        Ok(Partition {
            topic: topic.to_string(),
            index,
            broker_id,
            log: Arc::new(log),
            leader_epoch: AtomicI32::new(0),
            state: std::sync::RwLock::new(ReplicaState::sole(broker_id)),
            replica_config: std::sync::RwLock::new(replica_config),
            hw_tx,
            dir_health,
        })
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
        self.leader_epoch
            .store(state.leader_epoch, Ordering::Release);
        *cur = state;
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

    /// Appends a producer's batches as leader and returns once `acks` is satisfied.
    ///
    /// `min.insync.replicas` is checked before the append (Kafka's NOT_ENOUGH_REPLICAS). The write
    /// itself goes to the page cache; it runs under `block_in_place` because a topic's flush policy
    /// may make it fsync.
    pub async fn append(
        &self,
        batches: &mut [u8],
        acks: Acks,
    ) -> Result<AppendInfo, PartitionError> {
        self.check_leader()?;
        let state = self.state();
        if state.isr.iter().any(|b| *b != self.broker_id) {
            return Err(PartitionError::ReplicationUnavailable {
                topic: self.topic.clone(),
                partition: self.index,
                followers: state
                    .isr
                    .iter()
                    .copied()
                    .filter(|b| *b != self.broker_id)
                    .collect(),
            });
        }
        if acks == Acks::All {
            let isr = state.isr.len();
            let min_isr = self.replica_config().min_insync_replicas;
            if isr < min_isr {
                return Err(PartitionError::NotEnoughReplicas { isr, min_isr });
            }
        }
        // An offline log directory refuses at once: its logs' state after the failed write is
        // not trusted for more writes (KAFKA_STORAGE_ERROR), reads go on.
        self.dir_health.check_writable()?;
        let epoch = self.leader_epoch();
        let info = tokio::task::block_in_place(|| self.log.append_as_leader(batches, epoch))
            .inspect_err(|e| {
                self.dir_health
                    .record_failure(&format!("{}-{}", self.topic, self.index), e)
            })?;
        // The ISR is this replica alone, so the append is committed as soon as it is written.
        self.set_high_watermark(info.last_offset + 1);
        Ok(info)
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
        self.check_leader()?;
        Ok(self
            .log
            .read(offset, max_bytes, Some(self.high_watermark()))?)
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
            )
            .unwrap(),
        );
        assert!(!p.wait_for_data(0, Duration::from_millis(20)).await);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_for_data(0, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.append(&mut batch(), Acks::Leader).await.unwrap();
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
        )
        .unwrap();
        assert!(matches!(
            p.append(&mut batch(), Acks::All).await,
            Err(PartitionError::NotEnoughReplicas { isr: 1, min_isr: 2 })
        ));
        assert_eq!(p.log().log_end_offset(), 0, "nothing appended");
        p.append(&mut batch(), Acks::Leader).await.unwrap();
    }
}
