//! The topic registry: which topics exist, their partitions and configs, persisted in the data
//! directory and reopened (with log recovery) at start-up.
//!
//! On disk: `<data_dir>/<topic>-<partition>/` per partition (Kafka's layout) and
//! `<data_dir>/meta/topics.json`, replaced atomically. A topic exists once its metadata is
//! written; partition directories without metadata (a crash mid-create or mid-delete) are removed
//! at start-up. When the Raft controller arrives, this metadata moves into its log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sluice_log::LogDirHealth;
use sluice_replication::{Partition, PartitionError};

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

/// What is persisted per topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct TopicRecord {
    /// Kafka topic ID (a UUID); topics created before IDs existed get one on the next start.
    #[serde(default)]
    id: Option<uuid::Uuid>,
    partitions: u32,
    replication_factor: u32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
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
    pub replication_factor: u32,
    overrides: RwLock<BTreeMap<String, String>>,
    settings: RwLock<TopicSettings>,
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    pub fn partition(&self, index: u32) -> Result<&Arc<Partition>, TopicError> {
        self.partitions
            .get(index as usize)
            .ok_or_else(|| TopicError::UnknownPartition {
                topic: self.name.clone(),
                partition: index,
                count: self.partitions.len() as u32,
            })
    }
    pub fn settings(&self) -> TopicSettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.overrides
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct TopicManager {
    config: Arc<BrokerConfig>,
    /// Write health of the data directory (offline for writes after a failed write).
    dir_health: Arc<LogDirHealth>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises metadata changes (create, delete, alter) and their persistence.
    changes: std::sync::Mutex<()>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TopicError {
    let context = context.into();
    move |source| TopicError::Io { context, source }
}

impl TopicManager {
    /// Loads the registry and opens (recovering) every partition log.
    pub fn open(config: Arc<BrokerConfig>) -> Result<TopicManager, TopicError> {
        let meta_dir = config.data_dir.join("meta");
        std::fs::create_dir_all(&meta_dir).map_err(io(format!("create {}", meta_dir.display())))?;
        let records: BTreeMap<String, TopicRecord> =
            match std::fs::read(meta_path(&config.data_dir)) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TopicError::Io {
                    context: "parse topics.json".into(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(io("read topics.json")(e)),
            };
        remove_orphan_partitions(&config.data_dir, &records)?;
        let needs_ids = records.values().any(|r| r.id.is_none());
        let dir_health = Arc::new(LogDirHealth::new(&config.data_dir));
        let mut topics = BTreeMap::new();
        for (name, rec) in records {
            let topic = open_topic(&config, &name, &rec, &dir_health)?;
            tracing::info!(topic = %name, partitions = rec.partitions, "opened topic");
            topics.insert(name, Arc::new(topic));
        }
        let manager = TopicManager {
            config,
            dir_health,
            topics: RwLock::new(topics),
            changes: std::sync::Mutex::new(()),
        };
        if needs_ids {
            manager.persist(&manager.records())?;
        }
        Ok(manager)
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

    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, TopicError> {
        validate_topic_name(name)?;
        let partitions = if partitions == 0 {
            self.config.num_partitions
        } else {
            partitions
        };
        if partitions > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(partitions));
        }
        let replication_factor = if replication_factor == 0 {
            self.config.default_replication_factor
        } else {
            replication_factor
        };
        // One broker until clustering lands: more replicas than brokers cannot be placed.
        if replication_factor > 1 {
            return Err(TopicError::InvalidReplicationFactor {
                requested: replication_factor,
                available: 1,
            });
        }
        self.config.topic_settings(&configs)?;
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if self.get(name).is_ok() {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        let rec = TopicRecord {
            id: Some(random_uuid()),
            partitions,
            replication_factor,
            configs,
        };
        let topic = Arc::new(open_topic(&self.config, name, &rec, &self.dir_health)?);
        let mut all = self.records();
        all.insert(name.to_string(), rec);
        self.persist(&all)?;
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), topic.clone());
        tracing::info!(topic = %name, partitions, "created topic");
        Ok(topic)
    }

    pub fn delete(&self, name: &str) -> Result<(), TopicError> {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let topic = self.get(name)?;
        let mut all = self.records();
        all.remove(name);
        // Metadata first: once it is gone the topic is gone, even if we crash before the files.
        self.persist(&all)?;
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        for p in &topic.partitions {
            let dir = p.log().dir().to_path_buf();
            let _ = p.log().close();
            std::fs::remove_dir_all(&dir).map_err(io(format!("delete {}", dir.display())))?;
        }
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    /// Grows a topic to `count` partitions (Kafka's CreatePartitions: never shrinks).
    pub fn add_partitions(&self, name: &str, count: u32) -> Result<Arc<Topic>, TopicError> {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.get(name)?;
        let current = old.partitions.len() as u32;
        if count <= current || count > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(count));
        }
        let settings = old.settings();
        let mut partitions = old.partitions.clone();
        for i in current..count {
            partitions.push(Arc::new(Partition::open(
                name,
                i,
                self.config.node_id,
                &partition_dir(&self.config.data_dir, name, i),
                settings.log.clone(),
                settings.replica,
                self.dir_health.clone(),
            )?));
        }
        let topic = Arc::new(Topic {
            name: name.to_string(),
            id: old.id,
            replication_factor: old.replication_factor,
            overrides: RwLock::new(old.overrides()),
            settings: RwLock::new(settings),
            partitions,
        });
        let mut all = self.records();
        if let Some(rec) = all.get_mut(name) {
            rec.partitions = count;
        }
        self.persist(&all)?;
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), topic.clone());
        tracing::info!(topic = %name, from = current, to = count, "added partitions");
        Ok(topic)
    }

    /// Sets and removes topic config overrides; takes effect immediately.
    pub fn alter_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<Arc<Topic>, TopicError> {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let topic = self.get(name)?;
        let mut overrides = topic.overrides();
        for k in delete {
            overrides.remove(k);
        }
        overrides.extend(set);
        let settings = self.config.topic_settings(&overrides)?;
        let mut all = self.records();
        if let Some(rec) = all.get_mut(name) {
            rec.configs = overrides.clone();
        }
        self.persist(&all)?;
        for p in &topic.partitions {
            p.set_configs(settings.log.clone(), settings.replica);
        }
        *topic.overrides.write().unwrap_or_else(|e| e.into_inner()) = overrides;
        *topic.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
        Ok(topic)
    }

    fn records(&self) -> BTreeMap<String, TopicRecord> {
        self.list()
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TopicRecord {
                        id: Some(t.id),
                        partitions: t.partitions.len() as u32,
                        replication_factor: t.replication_factor,
                        configs: t.overrides(),
                    },
                )
            })
            .collect()
    }

    fn persist(&self, all: &BTreeMap<String, TopicRecord>) -> Result<(), TopicError> {
        let path = meta_path(&self.config.data_dir);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(all).map_err(|e| TopicError::Io {
            context: "encode topics.json".into(),
            source: std::io::Error::other(e),
        })?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(io("write topics.json"))
    }

    /// Background duties: retention, `flush.ms`, recovery-point checkpoints.
    pub fn run_retention(&self) {
        for t in self.list() {
            for p in &t.partitions {
                match p.log().delete_old_segments() {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(topic = %t.name, partition = p.index(), segments = n, "retention deleted segments")
                    }
                    Err(e) => {
                        tracing::error!(topic = %t.name, partition = p.index(), error = %e, "retention failed")
                    }
                }
            }
        }
    }

    pub fn run_flush(&self) {
        for t in self.list() {
            for p in &t.partitions {
                if let Err(e) = p.log().flush_if_due().and_then(|_| p.log().checkpoint()) {
                    self.dir_health
                        .record_failure(&format!("{}-{}", t.name, p.index()), &e);
                    tracing::error!(topic = %t.name, partition = p.index(), error = %e, "flush failed");
                }
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
        for t in self.list() {
            if !t.settings().log.cleanup_compact {
                continue;
            }
            for p in &t.partitions {
                // Compaction writes new segments: not into a directory that is offline for writes.
                if self.dir_health.offline().is_some() {
                    return;
                }
                if let Err(e) = p.log().compact(&options) {
                    self.dir_health
                        .record_failure(&format!("{}-{}", t.name, p.index()), &e);
                    tracing::error!(topic = %t.name, partition = p.index(), error = %e, "compaction failed");
                }
            }
        }
    }

    /// The data directory's write health.
    pub fn dir_health(&self) -> &Arc<LogDirHealth> {
        &self.dir_health
    }

    /// Clean shutdown of every log.
    pub fn close(&self) {
        for t in self.list() {
            for p in &t.partitions {
                if let Err(e) = p.log().close() {
                    tracing::error!(topic = %t.name, partition = p.index(), error = %e, "close failed");
                }
            }
        }
    }
}

fn meta_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("topics.json")
}

fn partition_dir(data_dir: &Path, topic: &str, index: u32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

fn open_topic(
    config: &BrokerConfig,
    name: &str,
    rec: &TopicRecord,
    dir_health: &Arc<LogDirHealth>,
) -> Result<Topic, TopicError> {
    let settings = config.topic_settings(&rec.configs)?;
    let partitions = (0..rec.partitions)
        .map(|i| {
            Partition::open(
                name,
                i,
                config.node_id,
                &partition_dir(&config.data_dir, name, i),
                settings.log.clone(),
                settings.replica,
                dir_health.clone(),
            )
            .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Topic {
        name: name.to_string(),
        id: rec.id.unwrap_or_else(random_uuid),
        replication_factor: rec.replication_factor,
        overrides: RwLock::new(rec.configs.clone()),
        settings: RwLock::new(settings),
        partitions,
    })
}

/// Removes `<topic>-<n>` directories that belong to no known topic partition.
fn remove_orphan_partitions(
    data_dir: &Path,
    records: &BTreeMap<String, TopicRecord>,
) -> Result<(), TopicError> {
    let entries =
        std::fs::read_dir(data_dir).map_err(io(format!("list {}", data_dir.display())))?;
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
        let known = records.get(topic).is_some_and(|r| index < r.partitions);
        if !known {
            tracing::warn!(dir = %path.display(), "removing partition directory of no known topic");
            std::fs::remove_dir_all(&path).map_err(io(format!("remove {}", path.display())))?;
        }
    }
    Ok(())
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_persist_reopen_alter_delete() {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        });
        let tm = TopicManager::open(config.clone()).unwrap();
        tm.create(
            "orders",
            3,
            0,
            [("retention.ms".into(), "1000".into())].into(),
        )
        .unwrap();
        assert!(matches!(
            tm.create("orders", 1, 1, BTreeMap::new()),
            Err(TopicError::AlreadyExists(_))
        ));
        assert!(matches!(
            tm.create("r3", 1, 3, BTreeMap::new()),
            Err(TopicError::InvalidReplicationFactor { requested: 3, .. })
        ));
        assert!(tm
            .create("bad", 1, 1, [("nope".into(), "1".into())].into())
            .is_err());
        assert!(dir.path().join("orders-2").is_dir());
        tm.close();
        drop(tm);
        // A stray directory of no topic is removed at start-up.
        std::fs::create_dir(dir.path().join("ghost-0")).unwrap();
        let tm = TopicManager::open(config.clone()).unwrap();
        assert!(!dir.path().join("ghost-0").exists());
        let t = tm.get("orders").unwrap();
        assert_eq!(t.partitions.len(), 3);
        assert!(!t.id.is_nil());
        assert_eq!(tm.get_by_id(t.id).unwrap().name, "orders");
        assert_eq!(t.settings().log.retention_ms, 1000);
        tm.alter_config(
            "orders",
            [("retention.ms".into(), "2000".into())].into(),
            &[],
        )
        .unwrap();
        assert_eq!(
            tm.get("orders").unwrap().partitions[0]
                .log()
                .config()
                .retention_ms,
            2000
        );
        tm.alter_config("orders", BTreeMap::new(), &["retention.ms".into()])
            .unwrap();
        assert_eq!(
            tm.get("orders").unwrap().settings().log.retention_ms,
            7 * 24 * 3600 * 1000
        );
        tm.add_partitions("orders", 5).unwrap();
        assert!(matches!(
            tm.add_partitions("orders", 5),
            Err(TopicError::InvalidPartitions(5))
        ));
        assert_eq!(tm.get("orders").unwrap().partitions.len(), 5);
        assert!(dir.path().join("orders-4").is_dir());
        tm.delete("orders").unwrap();
        assert!(!dir.path().join("orders-0").exists());
        assert!(matches!(tm.get("orders"), Err(TopicError::UnknownTopic(_))));
        drop(tm);
        let tm = TopicManager::open(config).unwrap();
        assert!(tm.list().is_empty());
    }
}
