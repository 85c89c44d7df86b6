//! Broker configuration: a TOML file, overridden by command-line flags, defaulting to a broker
//! that just works on a laptop (`./data`, loopback ports).
//!
//! Topic-level settings use Kafka's names (`retention.ms`, `segment.bytes`, ...). Their broker-wide
//! defaults live in the `[topic_defaults]` table; a topic's own overrides are set at creation or
//! with `topic alter`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_log::LogConfig;
use sluice_replication::ReplicaConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Every broker setting, with its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// This broker's id in the cluster.
    pub node_id: i32,
    /// Where partitions and metadata live.
    pub data_dir: PathBuf,
    /// gRPC API listener.
    pub grpc_addr: SocketAddr,
    /// Kafka wire-protocol listener.
    pub kafka_addr: SocketAddr,
    /// `host:port` Kafka clients are told to connect to (Metadata); default: `kafka_addr`.
    pub advertised_kafka_addr: Option<String>,
    /// Create unknown topics named in Kafka Metadata requests (Kafka `auto.create.topics.enable`).
    pub auto_create_topics_enable: bool,
    /// HTTP listener: `/health`, Prometheus `/metrics`, `/v1/topics`.
    pub http_addr: SocketAddr,
    /// Broker-to-broker listener (`sluice.internal.v1`: the metadata quorum's Raft traffic).
    pub controller_addr: SocketAddr,
    /// The metadata quorum's voters, KRaft's form: `1@host:port,2@host:port,3@host:port` (each
    /// a broker's `node_id` and `controller_addr`). Unset: this broker alone, a one-voter quorum.
    pub controller_quorum_voters: Option<String>,
    /// Raft tick of the metadata quorum; a leader is suspected dead after 10 ticks.
    pub controller_tick_ms: u64,
    /// Metadata records applied between two snapshots of the metadata image (the log before a
    /// snapshot is deleted; a restarted or lagging voter starts from the snapshot).
    pub metadata_snapshot_interval_records: u64,
    /// `host:port` other brokers and tools are told for the gRPC API; default: `grpc_addr`.
    pub advertised_grpc_addr: Option<String>,
    /// This broker's rack: replicas of a partition are spread over racks when set
    /// (Kafka `broker.rack`).
    pub broker_rack: Option<String>,
    /// How often this broker heartbeats to the active controller
    /// (Kafka `broker.heartbeat.interval.ms`).
    pub broker_heartbeat_interval_ms: u64,
    /// A broker silent this long is fenced: it leads nothing until it is back
    /// (Kafka `broker.session.timeout.ms`).
    pub broker_session_timeout_ms: u64,
    /// Move leadership back to each partition's first replica once it is in sync again
    /// (Kafka `auto.leader.rebalance.enable`).
    pub auto_leader_rebalance_enable: bool,
    /// How often the controller looks for leadership to move back
    /// (Kafka `leader.imbalance.check.interval.seconds`, in ms).
    pub leader_imbalance_check_interval_ms: u64,
    /// How long a SIGTERM waits for leadership to move away before the process exits anyway.
    pub controlled_shutdown_timeout_ms: u64,
    /// A follower that has not caught up with its leader for this long leaves the ISR
    /// (Kafka `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// Bytes a follower asks for per partition per fetch (Kafka `replica.fetch.max.bytes`).
    pub replica_fetch_max_bytes: u32,
    /// Bytes a follower's fetch response may carry in all (Kafka
    /// `replica.fetch.response.max.bytes`).
    pub replica_fetch_response_max_bytes: u32,
    /// How long a leader holds a follower's fetch that finds nothing new (Kafka
    /// `replica.fetch.wait.max.ms`).
    pub replica_fetch_wait_max_ms: u32,
    /// Bytes per second a leader sends to replicas a reassignment is adding, while they are out
    /// of sync (Kafka `leader.replication.throttled.rate`, applied to the moving replicas as
    /// `kafka-reassign-partitions --throttle` does); 0 = unlimited. The cluster-wide dynamic
    /// config `leader.replication.throttled.rate` (set by `sluice topic reassign --throttle`)
    /// overrides it.
    pub leader_replication_throttled_rate: u64,
    /// Partitions of a topic created without a count (Kafka `num.partitions`).
    pub num_partitions: u32,
    /// Replication factor of a topic created without one (Kafka `default.replication.factor`).
    pub default_replication_factor: u32,
    /// Largest request accepted, in bytes (Kafka `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// Request bytes all Kafka connections together may hold while reading and handling
    /// requests (Kafka `queued.max.request.bytes`); when spent, connections stop reading.
    pub queued_max_request_bytes: usize,
    /// Concurrent client connections; more are refused (Kafka `max.connections`).
    pub max_connections: usize,
    /// Connections from one client address, per listener; 0 = no limit (Kafka
    /// `max.connections.per.ip`).
    pub max_connections_per_ip: usize,
    /// A connection with no request for this long is closed (Kafka `connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// Kafka requests of one connection handled ahead of their responses: a produce's batches
    /// are written while the ones before it wait for their fsync or replicas (responses still
    /// go out in order). Beyond it the connection stops reading.
    pub max_in_flight_requests_per_connection: usize,
    /// A request that has started must arrive whole within this long, or the connection is
    /// closed (a client trickling bytes cannot hold a connection slot).
    pub request_read_timeout_ms: u64,
    /// Default `max_bytes` of a fetch that names none.
    pub fetch_max_bytes: usize,
    /// How often retention runs (Kafka `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// How often `flush.ms` is checked and recovery points are checkpointed.
    pub flush_check_interval_ms: u64,
    /// How often compacted topics are checked for cleaning (Kafka `log.cleaner.backoff.ms`).
    pub log_cleaner_backoff_ms: u64,
    /// Read rate cap of the cleaner, bytes/s; 0 = unlimited
    /// (Kafka `log.cleaner.io.max.bytes.per.second`).
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// Memory for the cleaner's key → offset map (Kafka `log.cleaner.dedupe.buffer.size`); a
    /// log with more distinct keys than fit is cleaned over several passes.
    pub log_cleaner_dedupe_buffer_size: usize,
    /// How long a new consumer group waits for more members before its first rebalance completes
    /// (Kafka `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// Replicas of `__consumer_offsets` when it is created, capped at the live brokers then
    /// (Kafka `offsets.topic.replication.factor`).
    pub offsets_topic_replication_factor: u32,
    /// How long an empty consumer group keeps its committed offsets, counted from when it
    /// emptied and from the commit (Kafka `offsets.retention.minutes`).
    pub offsets_retention_minutes: u64,
    /// How often expired offsets are looked for (Kafka `offsets.retention.check.interval.ms`).
    pub offsets_retention_check_interval_ms: u64,
    /// Replicas of `__transaction_state` when it is created, capped at the live brokers then
    /// (Kafka `transaction.state.log.replication.factor`).
    pub transaction_state_log_replication_factor: u32,
    /// The largest `transaction.timeout.ms` a producer may ask for (Kafka
    /// `transaction.max.timeout.ms`).
    pub transaction_max_timeout_ms: u64,
    /// How often open transactions are checked for having run past their timeout (Kafka
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`).
    pub transaction_abort_timed_out_transaction_cleanup_interval_ms: u64,
    /// How long a transactional id with no transaction is remembered (Kafka
    /// `transactional.id.expiration.ms`).
    pub transactional_id_expiration_ms: u64,
    /// How long a partition remembers an idle producer's sequences (Kafka
    /// `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: u64,
    /// How often a data directory that went offline for writes because it was full is checked
    /// for freed space (it comes back online by itself once a 1 MiB probe can be written).
    pub log_dir_recheck_interval_ms: u64,
    /// Log filter (`info`, `sluice=debug`, ...); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Broker-wide defaults for topic configs, by Kafka name.
    pub topic_defaults: BTreeMap<String, toml::Value>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            data_dir: PathBuf::from("data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9093)),
            kafka_addr: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_kafka_addr: None,
            auto_create_topics_enable: true,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9644)),
            controller_addr: SocketAddr::from(([127, 0, 0, 1], 9094)),
            controller_quorum_voters: None,
            controller_tick_ms: 100,
            metadata_snapshot_interval_records: 1_000,
            advertised_grpc_addr: None,
            broker_rack: None,
            broker_heartbeat_interval_ms: 2_000,
            broker_session_timeout_ms: 9_000,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: 300_000,
            controlled_shutdown_timeout_ms: 30_000,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_max_bytes: 1 << 20,
            replica_fetch_response_max_bytes: 10 << 20,
            replica_fetch_wait_max_ms: 500,
            leader_replication_throttled_rate: 0,
            num_partitions: 1,
            default_replication_factor: 1,
            max_request_bytes: 100 << 20,
            queued_max_request_bytes: 256 << 20,
            max_connections: 1000,
            max_connections_per_ip: 0,
            connections_max_idle_ms: 600_000,
            max_in_flight_requests_per_connection: 16,
            request_read_timeout_ms: 30_000,
            fetch_max_bytes: 1 << 20,
            retention_check_interval_ms: 300_000,
            flush_check_interval_ms: 1_000,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_io_max_bytes_per_second: 0,
            log_cleaner_dedupe_buffer_size: 128 << 20,
            group_initial_rebalance_delay_ms: 3_000,
            offsets_topic_replication_factor: 3,
            offsets_retention_minutes: 10_080,
            offsets_retention_check_interval_ms: 600_000,
            transaction_state_log_replication_factor: 3,
            transaction_max_timeout_ms: 900_000,
            transaction_abort_timed_out_transaction_cleanup_interval_ms: 10_000,
            transactional_id_expiration_ms: 604_800_000,
            producer_id_expiration_ms: 86_400_000,
            log_dir_recheck_interval_ms: 5_000,
            log_level: "info".into(),
            topic_defaults: BTreeMap::new(),
        }
    }
}

/// What kind of value an accepted-but-unused config takes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Long,
    Bool,
    /// Free text (a version, a list of `partition:broker` pairs or `*`).
    Text,
}

/// Kafka topic configs that Sluice accepts, validates, stores and describes but does not act
/// on (Kafka itself ignores the deprecated ones; the others tune mechanisms Sluice has no
/// equivalent of yet). With Kafka's defaults. Clients and tools that set them work unchanged.
const ACCEPTED_UNUSED: &[(&str, Kind, &str)] = &[
    ("message.format.version", Kind::Text, "3.0-IV1"),
    ("message.downconversion.enable", Kind::Bool, "true"),
    ("file.delete.delay.ms", Kind::Long, "60000"),
    ("preallocate", Kind::Bool, "false"),
    ("segment.jitter.ms", Kind::Long, "0"),
    ("max.compaction.lag.ms", Kind::Long, "9223372036854775807"),
    ("compression.gzip.level", Kind::Long, "-1"),
    ("compression.lz4.level", Kind::Long, "9"),
    ("compression.zstd.level", Kind::Long, "3"),
    ("local.retention.ms", Kind::Long, "-2"),
    ("local.retention.bytes", Kind::Long, "-2"),
    ("remote.storage.enable", Kind::Bool, "false"),
    ("leader.replication.throttled.replicas", Kind::Text, ""),
    ("follower.replication.throttled.replicas", Kind::Text, ""),
];

/// Topic configs whose value is a comma-separated list (IncrementalAlterConfigs APPEND and
/// SUBTRACT apply to these only, as in Kafka).
pub const LIST_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "leader.replication.throttled.replicas",
    "follower.replication.throttled.replicas",
];

/// The effective settings of one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSettings {
    pub log: LogConfig,
    pub replica: ReplicaConfig,
    /// `compression.type`: `producer` keeps what producers send; a codec name recompresses
    /// batches the broker builds (gRPC produce).
    pub compression: Option<sluice_log::Compression>,
    /// `unclean.leader.election.enable`: may an out-of-sync replica lead when no in-sync one
    /// is alive (losing what it lacks)? Decided by the controller, from the metadata's topic
    /// config or the active controller's broker default.
    pub unclean_leader_election: bool,
    /// Values of [`ACCEPTED_UNUSED`] configs that were set.
    unused: BTreeMap<String, String>,
}

impl TopicSettings {
    /// Applies `overrides` (Kafka names) on top of `base`. Unknown names and bad values are errors.
    pub fn resolve(overrides: &BTreeMap<String, String>) -> Result<TopicSettings, ConfigError> {
        let mut s = TopicSettings {
            log: LogConfig::default(),
            replica: ReplicaConfig::default(),
            compression: None,
            unclean_leader_election: false,
            unused: BTreeMap::new(),
        };
        for (k, v) in overrides {
            s.set(k, v)?;
        }
        Ok(s)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        if self
            .log
            .set(key, value)
            .map_err(|e| invalid(e.to_string()))?
        {
            return Ok(());
        }
        match key {
            "min.insync.replicas" => {
                let n: usize = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid(format!("min.insync.replicas must be >= 1, got {value:?}")))?;
                self.replica.min_insync_replicas = n;
            }
            "unclean.leader.election.enable" => {
                self.unclean_leader_election = match value.trim() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(invalid(format!(
                            "unclean.leader.election.enable must be true or false, got {other:?}"
                        )))
                    }
                };
            }
            "compression.type" => {
                self.compression = match value {
                    "producer" => None,
                    other => Some(sluice_log::Compression::from_name(other).ok_or_else(|| {
                        invalid(format!(
                            "compression.type must be producer, none, gzip, snappy, lz4 or zstd, got {other:?}"
                        ))
                    })?),
                }
            }
            other => {
                let Some((_, kind, _)) = ACCEPTED_UNUSED.iter().find(|(k, _, _)| *k == other)
                else {
                    return Err(invalid(format!("unknown topic config {other:?}")));
                };
                let ok = match kind {
                    Kind::Long => value.trim().parse::<i64>().is_ok(),
                    Kind::Bool => matches!(value.trim(), "true" | "false"),
                    Kind::Text => true,
                };
                if !ok {
                    return Err(invalid(format!(
                        "{other}: {value:?} is not a valid {}",
                        match kind {
                            Kind::Long => "number",
                            Kind::Bool => "boolean (true or false)",
                            Kind::Text => "value",
                        }
                    )));
                }
                self.unused.insert(other.to_string(), value.trim().to_string());
            }
        }
        Ok(())
    }

    /// Every setting by Kafka name, as text.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = sluice_log::LOG_CONFIG_KEYS
            .iter()
            .filter_map(|k| self.log.get(k).map(|v| (k.to_string(), v)))
            .collect();
        out.insert(
            "min.insync.replicas".into(),
            self.replica.min_insync_replicas.to_string(),
        );
        out.insert(
            "compression.type".into(),
            self.compression.map_or("producer", |c| c.name()).into(),
        );
        out.insert(
            "unclean.leader.election.enable".into(),
            self.unclean_leader_election.to_string(),
        );
        for (k, _, default) in ACCEPTED_UNUSED {
            let v = self.unused.get(*k).map_or(*default, String::as_str);
            out.insert(k.to_string(), v.to_string());
        }
        out
    }
}

impl BrokerConfig {
    pub fn load(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: BrokerConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queued_max_request_bytes == 0 {
            return Err(ConfigError::Invalid(
                "queued_max_request_bytes must be >= 1".into(),
            ));
        }
        if self.offsets_topic_replication_factor == 0 {
            return Err(ConfigError::Invalid(
                "offsets_topic_replication_factor must be >= 1".into(),
            ));
        }
        if self.transaction_state_log_replication_factor == 0 {
            return Err(ConfigError::Invalid(
                "transaction_state_log_replication_factor must be >= 1".into(),
            ));
        }
        if self.transaction_max_timeout_ms == 0
            || self.transaction_abort_timed_out_transaction_cleanup_interval_ms == 0
        {
            return Err(ConfigError::Invalid(
                "transaction_max_timeout_ms and \
                 transaction_abort_timed_out_transaction_cleanup_interval_ms must be >= 1"
                    .into(),
            ));
        }
        if self.num_partitions == 0 {
            return Err(ConfigError::Invalid("num_partitions must be >= 1".into()));
        }
        if self.max_in_flight_requests_per_connection == 0 {
            return Err(ConfigError::Invalid(
                "max_in_flight_requests_per_connection must be >= 1".into(),
            ));
        }
        if self.connections_max_idle_ms == 0 || self.request_read_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "connections_max_idle_ms and request_read_timeout_ms must be >= 1".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid("max_connections must be >= 1".into()));
        }
        TopicSettings::resolve(&self.topic_default_strings())?;
        if self.node_id < 1 {
            return Err(ConfigError::Invalid("node_id must be >= 1".into()));
        }
        if self.controller_tick_ms == 0 || self.metadata_snapshot_interval_records == 0 {
            return Err(ConfigError::Invalid(
                "controller_tick_ms and metadata_snapshot_interval_records must be >= 1".into(),
            ));
        }
        if self.broker_heartbeat_interval_ms == 0
            || self.broker_heartbeat_interval_ms >= self.broker_session_timeout_ms
        {
            return Err(ConfigError::Invalid(format!(
                "broker_heartbeat_interval_ms ({}) must be >= 1 and below broker_session_timeout_ms ({})",
                self.broker_heartbeat_interval_ms, self.broker_session_timeout_ms
            )));
        }
        let voters = self.quorum_voters()?;
        if !voters.iter().any(|(id, _)| *id == self.node_id as u64) {
            return Err(ConfigError::Invalid(format!(
                "node_id {} is not among controller_quorum_voters {:?} (every broker is a voter)",
                self.node_id,
                self.controller_quorum_voters.as_deref().unwrap_or("")
            )));
        }
        Ok(())
    }

    /// The voters as (node id, `host:port`), from `controller_quorum_voters` or this broker alone.
    pub fn quorum_voters(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        let Some(spec) = self
            .controller_quorum_voters
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(vec![(
                self.node_id.max(1) as u64,
                self.controller_addr.to_string(),
            )]);
        };
        let mut out: Vec<(u64, String)> = Vec::new();
        for part in spec.split(',').map(str::trim) {
            let parsed = part.split_once('@').and_then(|(id, addr)| {
                let id: u64 = id.trim().parse().ok().filter(|i| *i >= 1)?;
                let (host, port) = addr.trim().rsplit_once(':')?;
                port.parse::<u16>().ok().filter(|_| !host.is_empty())?;
                Some((id, addr.trim().to_string()))
            });
            match parsed {
                Some(v) if !out.iter().any(|(id, _)| *id == v.0) => out.push(v),
                Some(v) => {
                    return Err(ConfigError::Invalid(format!(
                        "controller_quorum_voters names node {} twice",
                        v.0
                    )))
                }
                None => {
                    return Err(ConfigError::Invalid(format!(
                        "controller_quorum_voters: {part:?} is not id@host:port"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// `[topic_defaults]` as strings (TOML lets operators write numbers unquoted).
    pub fn topic_default_strings(&self) -> BTreeMap<String, String> {
        self.topic_defaults
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    /// A topic's effective settings: broker defaults, then the topic's overrides.
    pub fn topic_settings(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicSettings, ConfigError> {
        let mut merged = self.topic_default_strings();
        merged.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        TopicSettings::resolve(&merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_voters_parse_as_kraft_names_them() {
        let mut c = BrokerConfig::default();
        assert_eq!(
            c.quorum_voters().unwrap(),
            vec![(1, "127.0.0.1:9094".to_string())]
        );
        c.controller_quorum_voters = Some("1@a:1, 2@b:2,3@c:3".into());
        assert_eq!(c.quorum_voters().unwrap().len(), 3);
        c.validate().unwrap();
        c.node_id = 4;
        assert!(c.validate().is_err(), "not a voter");
        for bad in ["1@a", "x@a:1", "1@a:1,1@b:2", "0@a:1", "1@:1"] {
            c.controller_quorum_voters = Some(bad.into());
            assert!(c.quorum_voters().is_err(), "{bad}");
        }
    }

    #[test]
    fn file_values_and_topic_defaults_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            r#"
node_id = 3
data_dir = "/var/lib/sluice"
grpc_addr = "0.0.0.0:19093"
[topic_defaults]
"retention.ms" = 3600000
"cleanup.policy" = "delete"
"#,
        )
        .unwrap();
        let c = BrokerConfig::load(&path).unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.grpc_addr.port(), 19093);
        let s = c.topic_settings(&BTreeMap::new()).unwrap();
        assert_eq!(s.log.retention_ms, 3_600_000);
        let s = c
            .topic_settings(&[("retention.ms".to_string(), "5".to_string())].into())
            .unwrap();
        assert_eq!(s.log.retention_ms, 5);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let e = BrokerConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("no_such_setting"), "{e}");
        std::fs::write(&path, "[topic_defaults]\n\"retention.ms\" = \"soon\"\n").unwrap();
        assert!(BrokerConfig::load(&path).is_err());
        assert!(
            TopicSettings::resolve(&[("bogus.key".to_string(), "1".to_string())].into()).is_err()
        );
    }

    #[test]
    fn kafka_configs_sluice_does_not_act_on_are_validated_stored_and_described() {
        let set =
            |k: &str, v: &str| TopicSettings::resolve(&[(k.to_string(), v.to_string())].into());
        let s = set("message.format.version", "2.8").unwrap();
        assert_eq!(s.describe()["message.format.version"], "2.8");
        assert_eq!(s.describe()["preallocate"], "false", "Kafka's default");
        assert!(set("preallocate", "maybe").is_err());
        assert!(set("file.delete.delay.ms", "soon").is_err());
        assert_eq!(
            set("leader.replication.throttled.replicas", "0:1,0:2")
                .unwrap()
                .describe()["leader.replication.throttled.replicas"],
            "0:1,0:2"
        );
    }
}
