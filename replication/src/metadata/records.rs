//! Metadata records: the entries of the controller's replicated log (KRaft's
//! `__cluster_metadata`), and the only way the cluster's metadata changes.
//!
//! Each record is a fact the active controller decided; every broker applies the committed log,
//! in order, to its [`crate::metadata::MetadataImage`]. Names and semantics follow Kafka's
//! records (`metadata/src/main/resources/common/metadata/*.json`): a `PartitionChange` is a
//! delta whose absent fields mean "unchanged", setting `leader` bumps the leader epoch, and any
//! change bumps the partition epoch.
//!
//! Encoding: JSON (serde). Metadata changes are rare and small, so the readable form costs
//! nothing that matters and makes the log inspectable with `jq`; `#[serde(default)]` on new
//! fields lets a newer broker read an older log.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type BrokerId = i32;

/// `leader` of a partition that has none (offline).
pub const NO_LEADER: BrokerId = -1;

/// How a broker is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Endpoints {
    /// `host:port` Kafka clients connect to.
    pub kafka: String,
    /// `host:port` of the gRPC API.
    pub grpc: String,
    /// `host:port` of the broker-to-broker service.
    pub controller: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBrokerRecord {
    pub broker_id: BrokerId,
    /// A fresh id per process start: tells a restarted broker from a stale one.
    pub incarnation_id: Uuid,
    /// Grows with every registration; requests carry it so a stale incarnation is refused.
    pub broker_epoch: i64,
    pub endpoints: Endpoints,
    #[serde(default)]
    pub rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub topic_id: Uuid,
    pub partition: u32,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    #[serde(default)]
    pub adding: Vec<BrokerId>,
    #[serde(default)]
    pub removing: Vec<BrokerId>,
}

/// A change to one partition; `None` fields are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PartitionChangeRecord {
    pub topic_id: Uuid,
    pub partition: u32,
    /// A new leader (or [`NO_LEADER`]); setting it, even to the same broker, bumps the leader epoch.
    #[serde(default)]
    pub leader: Option<BrokerId>,
    #[serde(default)]
    pub isr: Option<Vec<BrokerId>>,
    #[serde(default)]
    pub replicas: Option<Vec<BrokerId>>,
    #[serde(default)]
    pub adding: Option<Vec<BrokerId>>,
    #[serde(default)]
    pub removing: Option<Vec<BrokerId>>,
    /// Set by an unclean election: the leader may have lost records, so its ISR stays {leader}
    /// until it has replicated a record of its own epoch (KIP-704's RECOVERING).
    #[serde(default)]
    pub recovering: Option<bool>,
}

/// What a config record configures.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfigResource {
    Topic(String),
    /// Broker-wide defaults (`None`) or one broker's.
    Broker(Option<BrokerId>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    RegisterBroker(RegisterBrokerRecord),
    /// The broker's session expired (or its controlled shutdown finished): it leads nothing and
    /// is no longer in any ISR it was not the last member of.
    FenceBroker {
        broker_id: BrokerId,
        broker_epoch: i64,
    },
    /// The broker has caught up with the metadata log and may lead again.
    UnfenceBroker {
        broker_id: BrokerId,
        broker_epoch: i64,
    },
    /// The broker asked to shut down; leadership moves away from it before it is told to go.
    BeginControlledShutdown {
        broker_id: BrokerId,
        broker_epoch: i64,
    },
    UnregisterBroker {
        broker_id: BrokerId,
        broker_epoch: i64,
    },
    Topic {
        name: String,
        topic_id: Uuid,
    },
    Partition(PartitionRecord),
    PartitionChange(PartitionChangeRecord),
    RemoveTopic {
        topic_id: Uuid,
    },
    /// Sets (or, with `None`, removes) one config of one resource.
    Config {
        resource: ConfigResource,
        name: String,
        value: Option<String>,
    },
    /// A block of producer ids handed to a broker (KRaft's ProducerIdsRecord): ids below
    /// `next_producer_id` are taken.
    ProducerIds {
        broker_id: BrokerId,
        broker_epoch: i64,
        next_producer_id: i64,
    },
}

impl MetadataRecord {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_old_logs_without_new_fields_still_read() {
        let id = Uuid::from_u128(7);
        let recs = vec![
            MetadataRecord::Topic {
                name: "t".into(),
                topic_id: id,
            },
            MetadataRecord::PartitionChange(PartitionChangeRecord {
                topic_id: id,
                partition: 2,
                leader: Some(3),
                ..Default::default()
            }),
            MetadataRecord::Config {
                resource: ConfigResource::Topic("t".into()),
                name: "retention.ms".into(),
                value: None,
            },
        ];
        for r in recs {
            assert_eq!(MetadataRecord::decode(&r.encode().unwrap()).unwrap(), r);
        }
        let old = br#"{"type":"PartitionChange","topic_id":"00000000-0000-0000-0000-000000000007","partition":1,"isr":[1,2]}"#;
        match MetadataRecord::decode(old).unwrap() {
            MetadataRecord::PartitionChange(c) => {
                assert_eq!(
                    (c.leader, c.isr, c.recovering),
                    (None, Some(vec![1, 2]), None)
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
