//! Topic administration, once for both front-ends (and the group coordinator's own topic):
//! validate here, decide at the active controller, answer once this broker has applied the
//! decision — so the client's next request, to this broker, sees what it just did.
//!
//! What the controller cannot know is checked here: topic names, config keys and values (the
//! broker's parser is the definition), partition-count bounds. The controller checks what needs
//! the whole cluster: existence, the replication factor against registered brokers, placement.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_replication::controller::api::{ControllerAnswer, ControllerCall, ControllerFailure};
use sluice_replication::controller::{ControllerError, Reassignment};
use sluice_replication::metadata::{BrokerId, ConfigResource, MetadataImage};

use crate::cluster::controller_client::ControllerClient;
use crate::config::BrokerConfig;
use crate::topics::{validate_topic_name, TopicError, TopicManager, MAX_PARTITIONS};

/// How long an admin request waits for the controller.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long it then waits for this broker to apply the decision.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a topic creation waits for a broker that is still starting to be unfenced.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Admin {
    pub config: Arc<BrokerConfig>,
    pub topics: Arc<TopicManager>,
    pub controller: Arc<ControllerClient>,
    /// Whether this broker has been unfenced since it started (see `wait_started`).
    pub started: tokio::sync::watch::Receiver<bool>,
}

/// A created (or, with `validate_only`, a creatable) topic.
#[derive(Debug, Clone, Copy)]
pub struct CreatedTopic {
    pub topic_id: uuid::Uuid,
    pub partitions: u32,
    pub replication_factor: u32,
}

fn controller_error(f: ControllerFailure) -> TopicError {
    match f {
        ControllerFailure::Refused(ControllerError::TopicAlreadyExists(n)) => {
            TopicError::AlreadyExists(n)
        }
        ControllerFailure::Refused(ControllerError::UnknownTopicOrPartition(n)) => {
            TopicError::UnknownTopic(n)
        }
        ControllerFailure::Refused(ControllerError::InvalidReplicationFactor {
            requested,
            available,
        }) => TopicError::InvalidReplicationFactor {
            requested: requested.clamp(0, i64::from(u32::MAX)) as u32,
            available: available as u32,
        },
        other => TopicError::Controller(other),
    }
}

impl Admin {
    async fn call(&self, call: ControllerCall) -> Result<ControllerAnswer, TopicError> {
        let (answer, offset) = self
            .controller
            .call(call, CONTROLLER_TIMEOUT)
            .await
            .map_err(controller_error)?;
        self.wait_applied(offset).await;
        Ok(answer)
    }

    /// Waits (bounded) until this broker has been unfenced once. Right after `sluice serve`
    /// starts, its own registration is still on the way; a topic created then would find no
    /// usable broker and fail with INVALID_REPLICATION_FACTOR (a script that starts a broker and
    /// creates a topic at once). Once started, a broker fenced later does not wait here.
    async fn wait_started(&self) {
        let mut rx = self.started.clone();
        let _ = tokio::time::timeout(STARTUP_TIMEOUT, rx.wait_for(|s| *s)).await;
    }

    /// Waits (bounded) until the replica manager has synced an image at `offset` or later.
    pub async fn wait_applied(&self, offset: u64) {
        let mut rx = self.topics.watch_synced();
        let _ = tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|o| *o >= offset)).await;
    }

    /// `partitions` / `replication_factor` 0: the broker defaults (Kafka's -1).
    /// An internal topic (`__consumer_offsets`, `__transaction_state`): compacted, created on
    /// first use through the controller like any topic, with `replication_factor` capped at the
    /// brokers there are. Concurrent first uses on several brokers create it once.
    pub async fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<Arc<crate::topics::Topic>, TopicError> {
        match self.topics.get(name) {
            Err(TopicError::UnknownTopic(_)) => {}
            other => return other,
        }
        let usable = self
            .controller
            .quorum()
            .image()
            .brokers
            .values()
            .filter(|b| b.is_usable())
            .count() as u32;
        let configs = [
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("segment.bytes".to_string(), (100u32 << 20).to_string()),
        ]
        .into();
        let rf = replication_factor.min(usable.max(1));
        match self
            .create_topic(name, partitions, rf, configs, false)
            .await
        {
            Ok(_) => self.topics.get(name),
            // Someone else created it just now: wait (bounded) until this broker has it.
            Err(TopicError::AlreadyExists(_)) => {
                let mut synced = self.topics.watch_synced();
                let appeared = async {
                    while self.topics.get(name).is_err() {
                        if synced.changed().await.is_err() {
                            return;
                        }
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), appeared).await;
                self.topics.get(name)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<CreatedTopic, TopicError> {
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
        self.config.topic_settings(&configs)?;
        self.wait_started().await;
        match self
            .call(ControllerCall::CreateTopic {
                name: name.to_string(),
                partitions: i64::from(partitions),
                replication_factor: i64::from(replication_factor),
                configs,
                validate_only,
            })
            .await?
        {
            ControllerAnswer::TopicCreated {
                topic_id,
                partitions,
                replication_factor,
            } => Ok(CreatedTopic {
                topic_id,
                partitions,
                replication_factor,
            }),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        self.call(ControllerCall::DeleteTopic {
            name: name.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// Grows `name` to `count` partitions.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: u32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        if count > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(count));
        }
        let current = self.topics.get(name)?.partition_count;
        if count <= current {
            return Err(TopicError::InvalidPartitions(count));
        }
        self.call(ControllerCall::CreatePartitions {
            name: name.to_string(),
            count: i64::from(count),
            validate_only,
        })
        .await
        .map(|_| ())
    }

    /// Replaces `name`'s overrides by `overrides` (validated as a whole first).
    pub async fn set_topic_overrides(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let topic = self.topics.get(name)?;
        self.config.topic_settings(&overrides)?;
        if validate_only {
            return Ok(());
        }
        let delete: Vec<String> = topic
            .overrides()
            .into_keys()
            .filter(|k| !overrides.contains_key(k))
            .collect();
        self.call(ControllerCall::AlterConfigs {
            resource: ConfigResource::Topic(name.to_string()),
            set: overrides,
            delete,
        })
        .await
        .map(|_| ())
    }

    /// Sets and removes some of `name`'s overrides.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<(), TopicError> {
        let mut overrides = self.topics.get(name)?.overrides();
        for k in delete {
            overrides.remove(k);
        }
        overrides.extend(set);
        self.set_topic_overrides(name, overrides, false).await
    }
}

/// Broker configs that may be changed at run time (through the controller, for every broker or
/// one): Kafka's dynamic broker configs, as far as Sluice has them.
pub const DYNAMIC_BROKER_CONFIGS: &[&str] = &[crate::replica_fetch::THROTTLED_RATE_CONFIG];

/// Checks dynamic broker config changes: known keys, numeric values.
pub fn validate_broker_configs(
    changes: &BTreeMap<String, Option<String>>,
) -> Result<(), TopicError> {
    for (k, v) in changes {
        if !DYNAMIC_BROKER_CONFIGS.contains(&k.as_str()) {
            return Err(TopicError::InvalidConfig(
                crate::config::ConfigError::Invalid(format!(
                    "{k} cannot be changed at run time (dynamic broker configs: {})",
                    DYNAMIC_BROKER_CONFIGS.join(", ")
                )),
            ));
        }
        if let Some(v) = v {
            if v.parse::<u64>().is_err() {
                return Err(TopicError::InvalidConfig(
                    crate::config::ConfigError::Invalid(format!(
                        "{k}: {v:?} is not a number of bytes per second"
                    )),
                ));
            }
        }
    }
    Ok(())
}

impl Admin {
    /// Sets (`Some`) or removes (`None`) dynamic broker configs, cluster-wide (`broker: None`,
    /// Kafka's default resource "") or for one broker.
    pub async fn alter_broker_configs(
        &self,
        broker: Option<BrokerId>,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<(), TopicError> {
        validate_broker_configs(&changes)?;
        let set = changes
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        let delete = changes
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        self.call(ControllerCall::AlterConfigs {
            resource: ConfigResource::Broker(broker),
            set,
            delete,
        })
        .await
        .map(|_| ())
    }

    /// Starts, replaces or cancels (`target: None`) partition reassignments; one result per
    /// request, in order. The whole call fails only if the controller cannot be reached.
    pub async fn alter_reassignments(
        &self,
        reqs: Vec<Reassignment>,
    ) -> Result<Vec<Result<(), ControllerError>>, TopicError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let n = reqs.len();
        match self.call(ControllerCall::AlterReassignments(reqs)).await? {
            ControllerAnswer::Reassignments(r) if r.len() == n => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}

/// A partition being reassigned, as ListPartitionReassignments reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OngoingReassignment {
    pub topic: String,
    pub partition: u32,
    pub replicas: Vec<BrokerId>,
    pub adding: Vec<BrokerId>,
    pub removing: Vec<BrokerId>,
}

/// The reassignments in progress in `image`; with `filter`, only those partitions.
pub fn ongoing_reassignments(
    image: &MetadataImage,
    filter: Option<&[(String, u32)]>,
) -> Vec<OngoingReassignment> {
    image
        .partitions()
        .filter(|(_, _, r)| !r.adding.is_empty() || !r.removing.is_empty())
        .filter(|(t, p, _)| {
            filter.is_none_or(|f| f.iter().any(|(name, index)| *name == t.name && index == p))
        })
        .map(|(t, p, r)| OngoingReassignment {
            topic: t.name.clone(),
            partition: p,
            replicas: r.replicas.clone(),
            adding: r.adding.clone(),
            removing: r.removing.clone(),
        })
        .collect()
}

fn unexpected(a: ControllerAnswer) -> TopicError {
    TopicError::Controller(ControllerFailure::Unavailable(format!(
        "unexpected controller answer {a:?}"
    )))
}
