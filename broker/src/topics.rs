//! The replica manager's store: the topics of the cluster as this broker serves them, and the
//! partition replicas this broker holds.
//!
//! What exists is the metadata image's business (the controller's log); this module follows it.
//! [`TopicManager::sync`] reconciles the local state with an image — level-triggered, so a
//! broker that restarts or restores a snapshot converges without having seen every delta: it
//! opens (or creates) the partition directories of replicas assigned to this broker, hands each
//! its leader / epoch / ISR, applies topic configs, and deletes the directories of topics the
//! image no longer has. Directories the image never knew are left alone until the broker has
//! caught up with the metadata log, then renamed `<dir>.<ms>.stray` (KIP-858's stray replicas: a
//! topic deleted, or recreated with a new id, while this broker was away); they are never
//! deleted on a guess.
//!
//! On disk: `<data_dir>/<topic>-<partition>/` per replica (Kafka's layout), each with a
//! `partition.metadata` file naming its topic id, so a directory of an older topic of the same
//! name is told apart. A single-node data directory from before the cluster has
//! `meta/topics.json`: its topics are handed to the controller once (see
//! [`TopicManager::legacy_topics`]) and the file is renamed `topics.json.imported`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sluice_log::LogDirHealth;
use sluice_replication::metadata::MetadataImage;
use sluice_replication::{
    InitialHw, Partition, PartitionError, ReplicaState, HW_CHECKPOINT, LEGACY_HW_CHECKPOINT,
};

use crate::config::{BrokerConfig, ConfigError, TopicSettings};

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition} (it has {count})")]
    UnknownPartition {
        topic: String,
        partition: u32,
        count: u32,
    },
    #[error(transparent)]
    Controller(#[from] sluice_replication::controller::api::ControllerFailure),
    #[error("this broker holds no replica of {topic}-{partition}")]
    NotHosted { topic: String, partition: u32 },
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid partition count {0}: must be between 1 and {MAX_PARTITIONS}")]
    InvalidPartitions(u32),
    #[error("replication factor {requested} is larger than the {available} available broker(s)")]
    InvalidReplicationFactor { requested: u32, available: u32 },
    #[error("invalid topic config: {0}")]
    InvalidConfig(#[from] ConfigError),
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

pub const MAX_PARTITIONS: u32 = 10_000;
const MAX_NAME_LEN: usize = 249;

/// Kafka's topic-name rules.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let bad = |reason| TopicError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name == "." || name == ".." {
        return Err(bad("'.' and '..' are not allowed"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("longer than 249 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// A random (version 4) UUID. std's `RandomState` is keyed from the OS's randomness per instance,
/// which is all a topic ID needs, without another dependency.
pub fn random_uuid() -> uuid::Uuid {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut halves = [0u64; 2];
    for h in &mut halves {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(now);
        *h = hasher.finish();
    }
    uuid::Builder::from_random_bytes(
        ((u128::from(halves[0]) << 64) | u128::from(halves[1])).to_be_bytes(),
    )
    .into_uuid()
}

pub struct Topic {
    pub name: String,
    pub id: uuid::Uuid,
    /// The partitions the cluster has (the image's count; this broker holds some of them).
    pub partition_count: u32,
    overrides: BTreeMap<String, String>,
    settings: TopicSettings,
    /// This broker's replicas, by partition index.
    pub partitions: BTreeMap<u32, Arc<Partition>>,
}

impl Topic {
    /// This broker's replica of partition `index`.
    pub fn partition(&self, index: u32) -> Result<&Arc<Partition>, TopicError> {
        if index >= self.partition_count {
            return Err(TopicError::UnknownPartition {
                topic: self.name.clone(),
                partition: index,
                count: self.partition_count,
            });
        }
        self.partitions
            .get(&index)
            .ok_or_else(|| TopicError::NotHosted {
                topic: self.name.clone(),
                partition: index,
            })
    }
    pub fn settings(&self) -> TopicSettings {
        self.settings.clone()
    }
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.overrides.clone()
    }
}

/// A topic of a pre-cluster `topics.json`, to hand to the controller.
pub type LegacyTopic = sluice_replication::controller::ImportedTopic;

pub struct TopicManager {
    config: Arc<BrokerConfig>,
    /// Write health of the data directory (offline for writes after a failed write).
    dir_health: Arc<LogDirHealth>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises syncs.
    changes: std::sync::Mutex<()>,
    /// The metadata offset of the last image synced.
    synced: tokio::sync::watch::Sender<u64>,
    /// Topics of a pre-cluster `topics.json` not yet handed to the controller.
    legacy: std::sync::Mutex<Option<Vec<LegacyTopic>>>,
    /// The data directory's `replication-offset-checkpoint`.
    hw_checkpoint: std::sync::Mutex<HwCheckpoint>,
}

/// Every replica's high watermark, checkpointed in one file per log directory (Kafka's
/// `replication-offset-checkpoint`): one fsync per flush tick whatever the partition count.
#[derive(Debug, Default)]
struct HwCheckpoint {
    /// The file existed when the broker started (else the data is from before it: a replica
    /// without an entry is a single replica's log, all committed).
    existed: bool,
    /// Its entries then, where replicas start.
    at_open: BTreeMap<(String, u32), u64>,
    /// What was last written.
    written: Option<BTreeMap<(String, u32), u64>>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TopicError {
    let context = context.into();
    move |source| TopicError::Io { context, source }
}

impl TopicManager {
    /// An empty store over `config.data_dir`; [`TopicManager::sync`] fills it from the image.
    pub fn open(config: Arc<BrokerConfig>) -> Result<TopicManager, TopicError> {
        let meta_dir = config.data_dir.join("meta");
        std::fs::create_dir_all(&meta_dir).map_err(io(format!("create {}", meta_dir.display())))?;
        remove_leftover_deletions(&config.data_dir);
        let legacy = read_legacy(&config.data_dir)?;
        if let Some(l) = &legacy {
            tracing::info!(
                topics = l.len(),
                "found a single-node topics.json: its topics will be handed to the controller"
            );
        }
        let hw_checkpoint = match sluice_log::checkpoint::read_offsets(
            &config.data_dir,
            HW_CHECKPOINT,
        ) {
            Ok(Some(at_open)) => HwCheckpoint {
                existed: true,
                at_open,
                written: None,
            },
            Ok(None) => HwCheckpoint::default(),
            Err(e) => {
                // Starting every replica at its log start hides records until the leaders say
                // what is committed; starting at the log end could expose uncommitted ones.
                tracing::warn!(error = %e, "unreadable HW checkpoint; replicas start at their log start");
                HwCheckpoint {
                    existed: true,
                    ..Default::default()
                }
            }
        };
        Ok(TopicManager {
            hw_checkpoint: std::sync::Mutex::new(hw_checkpoint),
            dir_health: Arc::new(LogDirHealth::new(&config.data_dir)),
            config,
            topics: RwLock::new(BTreeMap::new()),
            changes: std::sync::Mutex::new(()),
            synced: tokio::sync::watch::channel(0).0,
            legacy: std::sync::Mutex::new(legacy),
        })
    }

    /// The partitions of `name` this broker leads (none if it does not know the topic): what
    /// the group and transaction coordinators serve.
    pub fn led_partitions(&self, name: &str) -> BTreeMap<u32, Arc<Partition>> {
        self.get(name)
            .map(|t| {
                t.partitions
                    .iter()
                    .filter(|(_, p)| p.is_leader())
                    .map(|(i, p)| (*i, p.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| TopicError::UnknownTopic(name.to_string()))
    }

    /// The topic with this Kafka topic ID.
    pub fn get_by_id(&self, id: uuid::Uuid) -> Option<Arc<Topic>> {
        self.list().into_iter().find(|t| t.id == id)
    }

    pub fn partition(&self, topic: &str, index: u32) -> Result<Arc<Partition>, TopicError> {
        Ok(self.get(topic)?.partition(index)?.clone())
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// This broker's replicas, every topic.
    pub fn replicas(&self) -> Vec<(Arc<Topic>, Arc<Partition>)> {
        self.list()
            .into_iter()
            .flat_map(|t| {
                t.partitions
                    .values()
                    .map(|p| (t.clone(), p.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The metadata offset of the last image synced, to wait on.
    pub fn watch_synced(&self) -> tokio::sync::watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Reconciles the local replicas with `image` (blocking: opens and deletes logs).
    pub fn sync(&self, image: &MetadataImage) {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let me = self.config.node_id;
        let current: BTreeMap<String, Arc<Topic>> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut next = BTreeMap::new();
        let mut doomed = Vec::new();
        for t in image.topics.values() {
            let overrides = image.topic_configs(&t.name);
            let settings = match self.config.topic_settings(&overrides) {
                Ok(s) => s,
                Err(e) => {
                    // Validated before it was committed; a newer broker's key, perhaps.
                    tracing::warn!(topic = %t.name, error = %e, "topic configs not understood; using the defaults");
                    match self.config.topic_settings(&BTreeMap::new()) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(error = %e, "the broker's topic defaults are invalid");
                            continue;
                        }
                    }
                }
            };
            let old = current.get(&t.name).filter(|o| o.id == t.id);
            let configs_changed = old.is_some_and(|o| o.overrides != overrides);
            let mut partitions = BTreeMap::new();
            for (index, reg) in &t.partitions {
                if !reg.replicas.contains(&me) {
                    continue;
                }
                let part = match old.and_then(|o| o.partitions.get(index)) {
                    Some(p) => {
                        if configs_changed {
                            p.set_configs(settings.log.clone(), settings.replica);
                        }
                        p.clone()
                    }
                    None => match self.open_replica(&t.name, t.id, *index, &settings) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(topic = %t.name, partition = index, error = %e, "cannot open replica");
                            continue;
                        }
                    },
                };
                part.set_replica_state(ReplicaState {
                    leader: reg.leader,
                    leader_epoch: reg.leader_epoch,
                    partition_epoch: reg.partition_epoch,
                    replicas: reg.replicas.clone(),
                    isr: reg.isr.clone(),
                    adding: reg.adding.clone(),
                    recovering: reg.recovering,
                });
                partitions.insert(*index, part);
            }
            if let Some(o) = old {
                for (index, p) in &o.partitions {
                    if !partitions.contains_key(index) {
                        tracing::info!(topic = %t.name, partition = index, "replica moved away; deleting it");
                        doomed.push(p.clone());
                    }
                }
            }
            next.insert(
                t.name.clone(),
                Arc::new(Topic {
                    name: t.name.clone(),
                    id: t.id,
                    partition_count: t.partitions.len() as u32,
                    overrides,
                    settings,
                    partitions,
                }),
            );
        }
        for (name, old) in &current {
            if next.get(name).is_some_and(|n| n.id == old.id) {
                continue;
            }
            tracing::info!(topic = %name, "topic deleted; deleting its replicas");
            doomed.extend(old.partitions.values().cloned());
        }
        // Gone from the map first, so new requests answer UNKNOWN_TOPIC_OR_PARTITION; requests
        // already holding a doomed replica get the same from its log (`LogError::Deleted`).
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = next;
        // Renamed aside here, under `changes`: a topic of the same name created by a later image
        // opens a fresh directory, never the old one.
        for p in &doomed {
            delete_replica(p);
        }
        self.synced.send_replace(image.offset);
    }

    fn open_replica(
        &self,
        topic: &str,
        topic_id: uuid::Uuid,
        index: u32,
        settings: &TopicSettings,
    ) -> Result<Arc<Partition>, TopicError> {
        let dir = partition_dir(&self.config.data_dir, topic, index);
        let meta = dir.join(PARTITION_METADATA);
        if let Ok(text) = std::fs::read_to_string(&meta) {
            if parse_partition_metadata(&text) != Some(topic_id) {
                // A replica of an older topic of the same name: keep it aside, start afresh.
                let stray = stray_path(&dir);
                tracing::warn!(dir = %dir.display(), to = %stray.display(), "replica of another topic id; set aside");
                std::fs::rename(&dir, &stray).map_err(io(format!("rename {}", dir.display())))?;
            }
        }
        let initial_hw = self.initial_hw(topic, index, &dir);
        let p = Partition::open(
            topic,
            index,
            self.config.node_id,
            &dir,
            settings.log.clone(),
            settings.replica,
            self.dir_health.clone(),
            initial_hw,
        )?;
        if !meta.exists() {
            write_partition_metadata(&meta, topic_id)
                .map_err(io(format!("write {}", meta.display())))?;
        }
        Ok(Arc::new(p))
    }

    /// Where a replica opening now starts its HW: the directory checkpoint's entry, else an
    /// older version's per-replica file, else (the checkpoint existed, so the replica was not
    /// in it: new since, or unknown) its log start, else (data from before HW checkpoints) its
    /// log end.
    fn initial_hw(&self, topic: &str, index: u32, dir: &Path) -> InitialHw {
        let mut cp = self.hw_checkpoint.lock().unwrap_or_else(|e| e.into_inner());
        // Taken, not read: a replica opened again later (deleted and re-created, moved away and
        // back) is a new one.
        if let Some(hw) = cp.at_open.remove(&(topic.to_string(), index)) {
            return InitialHw::Checkpointed(hw);
        }
        match sluice_log::checkpoint::read_offset(dir, LEGACY_HW_CHECKPOINT) {
            Ok(Some(hw)) => InitialHw::Checkpointed(hw),
            Ok(None) if !cp.existed => InitialHw::LogEnd,
            Ok(None) => InitialHw::LogStart,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "unreadable HW checkpoint; starting from the log start");
                InitialHw::LogStart
            }
        }
    }

    /// Writes every replica's HW to the directory checkpoint if any moved since the last write.
    pub fn checkpoint_high_watermarks(&self) -> Result<(), TopicError> {
        let replicas = self.replicas();
        let now: BTreeMap<(String, u32), u64> = replicas
            .iter()
            .map(|(t, p)| ((t.name.clone(), p.index()), p.high_watermark()))
            .collect();
        let mut cp = self.hw_checkpoint.lock().unwrap_or_else(|e| e.into_inner());
        if cp.written.as_ref() == Some(&now) {
            return Ok(());
        }
        sluice_log::checkpoint::write_offsets(&self.config.data_dir, HW_CHECKPOINT, &now)
            .map_err(|e| TopicError::Partition(e.into()))?;
        if cp.written.is_none() {
            // The directory checkpoint has them now: an older version's per-replica files go.
            for (_, p) in &replicas {
                let _ = std::fs::remove_file(p.log().dir().join(LEGACY_HW_CHECKPOINT));
            }
        }
        cp.written = Some(now);
        Ok(())
    }

    /// Sets aside (renames `<dir>.<ms>.stray`) partition directories the synced image does not
    /// assign to this broker. Call once caught up with the metadata log, never before: a lagging
    /// image does not know recent topics.
    pub fn set_aside_strays(&self) {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .legacy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return; // its topics are not handed over yet
        }
        let topics = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Ok(entries) = std::fs::read_dir(&self.config.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((topic, index)) = name.rsplit_once('-') else {
                continue;
            };
            let Ok(index) = index.parse::<u32>() else {
                continue;
            };
            if !path.is_dir() || validate_topic_name(topic).is_err() {
                continue;
            }
            if topics
                .get(topic)
                .is_some_and(|t| t.partitions.contains_key(&index))
            {
                continue;
            }
            let stray = stray_path(&path);
            tracing::warn!(dir = %path.display(), to = %stray.display(), "stray replica (no such topic, or not assigned here) set aside");
            if let Err(e) = std::fs::rename(&path, &stray) {
                tracing::error!(dir = %path.display(), error = %e, "cannot set the stray replica aside");
            }
        }
    }

    /// The topics of a pre-cluster `topics.json` still to hand to the controller.
    pub fn legacy_topics(&self) -> Option<Vec<LegacyTopic>> {
        self.legacy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The controller has taken the legacy topics: `topics.json` becomes `topics.json.imported`.
    pub fn legacy_imported(&self) -> Result<(), TopicError> {
        let path = meta_path(&self.config.data_dir);
        let done = path.with_extension("json.imported");
        std::fs::rename(&path, &done).map_err(io(format!("rename {}", path.display())))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync meta directory"))?;
        }
        *self.legacy.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Background duties: retention, producer expiry, closing idle segment files.
    pub fn run_retention(&self) {
        for (t, p) in self.replicas() {
            match p.log().delete_old_segments() {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(topic = %t.name, partition = p.index(), segments = n, "retention deleted segments")
                }
                Err(_) if p.log().is_deleted() => {}
                Err(e) => {
                    tracing::error!(topic = %t.name, partition = p.index(), error = %e, "retention failed")
                }
            }
            // Sealed segments nobody read for a whole interval give their descriptors back.
            p.log().close_idle_segment_files();
            // Idle producers' sequences go too (`producer.id.expiration.ms`).
            let expired = p
                .log()
                .expire_producers(self.config.producer_id_expiration_ms as i64);
            if expired > 0 {
                tracing::debug!(topic = %t.name, partition = p.index(), producers = expired, "idle producers expired");
            }
        }
    }

    pub fn run_flush(&self) {
        if let Err(e) = self.checkpoint_high_watermarks() {
            tracing::warn!(error = %e, "HW checkpoint failed");
        }
        for (t, p) in self.replicas() {
            if let Err(e) = p.log().flush_if_due().and_then(|_| p.log().checkpoint()) {
                if p.log().is_deleted() {
                    continue; // deleted under our feet: nothing to say about the disk
                }
                self.dir_health
                    .record_failure(&format!("{}-{}", t.name, p.index()), &e);
                tracing::error!(topic = %t.name, partition = p.index(), error = %e, "flush failed");
            }
        }
    }

    /// One compaction pass over every compacted partition that is dirty enough.
    pub fn run_compaction(&self) {
        let options = sluice_log::CleanerOptions {
            io_bytes_per_sec: Some(self.config.log_cleaner_io_max_bytes_per_second)
                .filter(|r| *r > 0),
            dedupe_buffer_bytes: self.config.log_cleaner_dedupe_buffer_size,
        };
        for (t, p) in self.replicas() {
            if !t.settings.log.cleanup_compact {
                continue;
            }
            // Compaction writes new segments: not into a directory that is offline for writes.
            if self.dir_health.offline().is_some() {
                return;
            }
            if let Err(e) = p.log().compact(&options) {
                if p.log().is_deleted() {
                    continue;
                }
                self.dir_health
                    .record_failure(&format!("{}-{}", t.name, p.index()), &e);
                tracing::error!(topic = %t.name, partition = p.index(), error = %e, "compaction failed");
            }
        }
    }

    pub fn config(&self) -> &Arc<BrokerConfig> {
        &self.config
    }

    /// The data directory's write health.
    pub fn dir_health(&self) -> &Arc<LogDirHealth> {
        &self.dir_health
    }

    /// Clean shutdown of every log.
    pub fn close(&self) {
        if let Err(e) = self.checkpoint_high_watermarks() {
            tracing::warn!(error = %e, "HW checkpoint failed at shutdown");
        }
        for (t, p) in self.replicas() {
            if let Err(e) = p.log().close() {
                tracing::error!(topic = %t.name, partition = p.index(), error = %e, "close failed");
            }
        }
    }
}

/// Kafka's asynchronous delete: the replica's directory is renamed to `…-delete` at once (every
/// background duty done with it first) and removed by a thread of its own.
fn delete_replica(p: &Arc<Partition>) {
    match p.delete() {
        Ok(doomed) => remove_deleted_dir(doomed),
        Err(e) => {
            // The directory stays under its name (a topic of the same name set it aside as a
            // stray, by its topic id): disk space until removed by hand, never reopened as data.
            tracing::error!(topic = p.topic(), partition = p.index(), dir = %p.log().dir().display(), error = %e, "cannot delete replica directory");
        }
    }
}

fn remove_deleted_dir(dir: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("sluice-delete".into())
        .spawn(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::debug!(dir = %dir.display(), "deleted replica directory removed"),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot remove deleted replica directory")
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread to remove a deleted replica directory");
    }
}

/// Removes what deletions interrupted by a crash left behind (`<topic>-<p>.<id>-delete`).
fn remove_leftover_deletions(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(sluice_log::DELETE_SUFFIX) && e.path().is_dir() {
            tracing::info!(dir = %e.path().display(), "removing a replica directory deleted before the restart");
            remove_deleted_dir(e.path());
        }
    }
}

/// Kafka's per-replica file naming the topic id.
const PARTITION_METADATA: &str = "partition.metadata";

fn write_partition_metadata(path: &Path, id: uuid::Uuid) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    write!(f, "version: 0\ntopic_id: {id}\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn parse_partition_metadata(text: &str) -> Option<uuid::Uuid> {
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id:"))
        .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok())
}

fn stray_path(dir: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{stamp}.stray"));
    dir.with_file_name(name)
}

fn meta_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("topics.json")
}

fn partition_dir(data_dir: &Path, topic: &str, index: u32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

/// What a pre-cluster `topics.json` held per topic.
#[derive(Debug, Clone, Deserialize)]
struct LegacyRecord {
    #[serde(default)]
    id: Option<uuid::Uuid>,
    partitions: u32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

fn read_legacy(data_dir: &Path) -> Result<Option<Vec<LegacyTopic>>, TopicError> {
    let records: BTreeMap<String, LegacyRecord> = match std::fs::read(meta_path(data_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TopicError::Io {
            context: "parse topics.json".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read topics.json")(e)),
    };
    Ok(Some(
        records
            .into_iter()
            .map(|(name, r)| LegacyTopic {
                name,
                topic_id: r.id.unwrap_or_else(random_uuid),
                partitions: r.partitions,
                configs: r.configs,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_name_rules() {
        for ok in [
            "a",
            "orders.v1",
            "A_b-c",
            &"x".repeat(249),
            "__consumer_offsets",
        ] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "has space", "slash/", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
