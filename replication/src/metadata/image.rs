//! [`MetadataImage`]: the cluster's metadata as of one offset of the metadata log.
//!
//! Built by applying committed [`MetadataRecord`]s in order — the same code on every broker, so
//! every broker that has applied the same prefix holds the same image. It says what *exists*
//! (brokers, topics, partitions with their replicas, leader, epochs and ISR, configs); what this
//! broker *stores* is the replica manager's business, driven by the [`MetadataChange`]s that
//! [`MetadataImage::apply`] reports. The image is serialisable: it is the controller's snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::records::{
    BrokerId, ConfigResource, Endpoints, MetadataRecord, PartitionChangeRecord, PartitionRecord,
    NO_LEADER,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub broker_id: BrokerId,
    pub incarnation_id: Uuid,
    pub broker_epoch: i64,
    pub endpoints: Endpoints,
    pub rack: Option<String>,
    /// Fenced brokers lead nothing and are not elected; a registered broker starts fenced.
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
    /// Metadata offset of the registration: the broker is caught up once it has applied this.
    pub registered_at: u64,
}

impl BrokerRegistration {
    /// May lead and join ISRs.
    pub fn is_usable(&self) -> bool {
        !self.fenced && !self.in_controlled_shutdown
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRegistration {
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub adding: Vec<BrokerId>,
    pub removing: Vec<BrokerId>,
    /// Led after an unclean election, not yet confirmed (KIP-704).
    pub recovering: bool,
}

impl PartitionRegistration {
    pub fn has_leader(&self) -> bool {
        self.leader != NO_LEADER
    }
    /// The preferred leader: the first replica.
    pub fn preferred_leader(&self) -> Option<BrokerId> {
        self.replicas.first().copied()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    pub partitions: BTreeMap<u32, PartitionRegistration>,
}

/// What applying one record changed, for those who react (the replica manager, caches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataChange {
    Broker(BrokerId),
    TopicCreated { topic_id: Uuid, name: String },
    TopicDeleted { topic_id: Uuid, name: String },
    Partition { topic_id: Uuid, partition: u32 },
    Config(ConfigResource),
}

/// A record that does not fit the image it is applied to: a controller bug or a damaged log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("unknown broker {0}")]
    UnknownBroker(BrokerId),
    #[error("unknown topic id {0}")]
    UnknownTopic(Uuid),
    #[error("topic {name} already exists")]
    TopicExists { name: String },
    #[error("unknown partition {topic_id}/{partition}")]
    UnknownPartition { topic_id: Uuid, partition: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetadataImage {
    /// The metadata-log offset (Raft index) of the last record applied.
    pub offset: u64,
    pub brokers: BTreeMap<BrokerId, BrokerRegistration>,
    pub topics: BTreeMap<Uuid, TopicImage>,
    pub topic_ids: BTreeMap<String, Uuid>,
    /// JSON maps need string keys: stored as a list of pairs.
    #[serde(with = "pairs")]
    pub configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    /// The largest broker epoch handed out (the next registration gets a larger one).
    pub max_broker_epoch: i64,
    /// Producer ids below this are handed out (idempotent producers).
    #[serde(default)]
    pub next_producer_id: i64,
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    pub fn partition(&self, topic_id: Uuid, partition: u32) -> Option<&PartitionRegistration> {
        self.topics
            .get(&topic_id)
            .and_then(|t| t.partitions.get(&partition))
    }

    pub fn broker(&self, id: BrokerId) -> Option<&BrokerRegistration> {
        self.brokers.get(&id)
    }

    /// Unfenced and not shutting down.
    pub fn is_usable(&self, id: BrokerId) -> bool {
        self.brokers.get(&id).is_some_and(|b| b.is_usable())
    }

    /// The configs of a topic (overrides only).
    pub fn topic_configs(&self, name: &str) -> BTreeMap<String, String> {
        self.configs
            .get(&ConfigResource::Topic(name.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every (topic, partition, registration), in topic-id order.
    pub fn partitions(&self) -> impl Iterator<Item = (&TopicImage, u32, &PartitionRegistration)> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter().map(move |(p, r)| (t, *p, r)))
    }

    /// The image as bytes (a controller snapshot's data).
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<MetadataImage, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Applies the record committed at `offset`. On error the image is unchanged.
    pub fn apply(
        &mut self,
        offset: u64,
        record: &MetadataRecord,
    ) -> Result<Vec<MetadataChange>, ApplyError> {
        let changes = self.apply_record(offset, record)?;
        self.offset = self.offset.max(offset);
        Ok(changes)
    }

    fn broker_mut(
        &mut self,
        id: BrokerId,
        epoch: i64,
    ) -> Result<&mut BrokerRegistration, ApplyError> {
        match self.brokers.get_mut(&id) {
            Some(b) if b.broker_epoch == epoch => Ok(b),
            _ => Err(ApplyError::UnknownBroker(id)),
        }
    }

    fn apply_record(
        &mut self,
        offset: u64,
        record: &MetadataRecord,
    ) -> Result<Vec<MetadataChange>, ApplyError> {
        use MetadataRecord as R;
        Ok(match record {
            R::RegisterBroker(r) => {
                self.max_broker_epoch = self.max_broker_epoch.max(r.broker_epoch);
                self.brokers.insert(
                    r.broker_id,
                    BrokerRegistration {
                        broker_id: r.broker_id,
                        incarnation_id: r.incarnation_id,
                        broker_epoch: r.broker_epoch,
                        endpoints: r.endpoints.clone(),
                        rack: r.rack.clone(),
                        fenced: true,
                        in_controlled_shutdown: false,
                        registered_at: offset,
                    },
                );
                vec![MetadataChange::Broker(r.broker_id)]
            }
            R::FenceBroker {
                broker_id,
                broker_epoch,
            } => {
                self.broker_mut(*broker_id, *broker_epoch)?.fenced = true;
                vec![MetadataChange::Broker(*broker_id)]
            }
            R::UnfenceBroker {
                broker_id,
                broker_epoch,
            } => {
                let b = self.broker_mut(*broker_id, *broker_epoch)?;
                b.fenced = false;
                b.in_controlled_shutdown = false;
                vec![MetadataChange::Broker(*broker_id)]
            }
            R::BeginControlledShutdown {
                broker_id,
                broker_epoch,
            } => {
                self.broker_mut(*broker_id, *broker_epoch)?
                    .in_controlled_shutdown = true;
                vec![MetadataChange::Broker(*broker_id)]
            }
            R::UnregisterBroker {
                broker_id,
                broker_epoch,
            } => {
                self.broker_mut(*broker_id, *broker_epoch)?;
                self.brokers.remove(broker_id);
                vec![MetadataChange::Broker(*broker_id)]
            }
            R::Topic { name, topic_id } => {
                if self.topic_ids.contains_key(name) || self.topics.contains_key(topic_id) {
                    return Err(ApplyError::TopicExists { name: name.clone() });
                }
                self.topic_ids.insert(name.clone(), *topic_id);
                self.topics.insert(
                    *topic_id,
                    TopicImage {
                        name: name.clone(),
                        id: *topic_id,
                        partitions: BTreeMap::new(),
                    },
                );
                vec![MetadataChange::TopicCreated {
                    topic_id: *topic_id,
                    name: name.clone(),
                }]
            }
            R::Partition(p) => {
                let t = self
                    .topics
                    .get_mut(&p.topic_id)
                    .ok_or(ApplyError::UnknownTopic(p.topic_id))?;
                t.partitions.insert(p.partition, registration(p));
                vec![MetadataChange::Partition {
                    topic_id: p.topic_id,
                    partition: p.partition,
                }]
            }
            R::PartitionChange(c) => {
                let reg = self
                    .topics
                    .get_mut(&c.topic_id)
                    .and_then(|t| t.partitions.get_mut(&c.partition))
                    .ok_or(ApplyError::UnknownPartition {
                        topic_id: c.topic_id,
                        partition: c.partition,
                    })?;
                merge_change(reg, c);
                vec![MetadataChange::Partition {
                    topic_id: c.topic_id,
                    partition: c.partition,
                }]
            }
            R::RemoveTopic { topic_id } => {
                let t = self
                    .topics
                    .remove(topic_id)
                    .ok_or(ApplyError::UnknownTopic(*topic_id))?;
                self.topic_ids.remove(&t.name);
                self.configs.remove(&ConfigResource::Topic(t.name.clone()));
                vec![MetadataChange::TopicDeleted {
                    topic_id: *topic_id,
                    name: t.name,
                }]
            }
            R::Config {
                resource,
                name,
                value,
            } => {
                let entry = self.configs.entry(resource.clone()).or_default();
                match value {
                    Some(v) => {
                        entry.insert(name.clone(), v.clone());
                    }
                    None => {
                        entry.remove(name);
                    }
                }
                if entry.is_empty() {
                    self.configs.remove(resource);
                }
                vec![MetadataChange::Config(resource.clone())]
            }
            R::ProducerIds {
                next_producer_id, ..
            } => {
                self.next_producer_id = self.next_producer_id.max(*next_producer_id);
                Vec::new()
            }
        })
    }
}

/// Serialises a map with structured keys as a list of `[key, value]` pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

fn registration(p: &PartitionRecord) -> PartitionRegistration {
    PartitionRegistration {
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        adding: p.adding.clone(),
        removing: p.removing.clone(),
        recovering: false,
    }
}

/// Kafka's `PartitionRegistration.merge`: setting the leader bumps the leader epoch; any change
/// bumps the partition epoch.
pub(crate) fn merge_change(reg: &mut PartitionRegistration, c: &PartitionChangeRecord) {
    if let Some(l) = c.leader {
        reg.leader = l;
        reg.leader_epoch += 1;
    }
    if let Some(isr) = &c.isr {
        reg.isr = isr.clone();
    }
    if let Some(r) = &c.replicas {
        reg.replicas = r.clone();
    }
    if let Some(a) = &c.adding {
        reg.adding = a.clone();
    }
    if let Some(r) = &c.removing {
        reg.removing = r.clone();
    }
    if let Some(r) = c.recovering {
        reg.recovering = r;
    }
    reg.partition_epoch += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::records::RegisterBrokerRecord;

    #[test]
    fn an_image_round_trips_through_its_snapshot_form() {
        let mut img = MetadataImage::default();
        let id = Uuid::from_u128(42);
        let recs = [
            MetadataRecord::RegisterBroker(RegisterBrokerRecord {
                broker_id: 1,
                incarnation_id: Uuid::from_u128(1),
                broker_epoch: 1,
                endpoints: Endpoints::default(),
                rack: Some("r1".into()),
            }),
            MetadataRecord::Topic {
                name: "t".into(),
                topic_id: id,
            },
            MetadataRecord::Partition(PartitionRecord {
                topic_id: id,
                partition: 0,
                replicas: vec![1],
                isr: vec![1],
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
                adding: vec![],
                removing: vec![],
            }),
            MetadataRecord::Config {
                resource: ConfigResource::Topic("t".into()),
                name: "retention.ms".into(),
                value: Some("1000".into()),
            },
            MetadataRecord::Config {
                resource: ConfigResource::Broker(None),
                name: "x".into(),
                value: Some("y".into()),
            },
        ];
        for (i, r) in recs.iter().enumerate() {
            img.apply(i as u64 + 1, r).unwrap();
        }
        let back = MetadataImage::decode(&img.encode().unwrap()).unwrap();
        assert_eq!(back, img);
    }
}
