//! The active controller's decisions, as a pure state machine.
//!
//! Every operation reads the current [`MetadataImage`] (plus the soft, unreplicated heartbeat
//! times) and answers with the [`MetadataRecord`]s that carry out its decision and a reply for the
//! caller. Nothing here does I/O or reads a clock: time comes in as `now_ms`, randomness through
//! [`Randomness`]. The driver proposes the records to Raft and applies them to the image once
//! committed, one operation at a time, so each decision sees the effects of the previous one.
//! That makes every rule testable without sockets or sleeps, and lets a seeded test drive it
//! through thousands of sequences (see the tests below).
//!
//! The rules are KRaft's (`ClusterControlManager`, `ReplicationControlManager`,
//! `PartitionChangeBuilder`, `BrokerHeartbeatManager`):
//! - a broker registers fenced and is unfenced once its heartbeat shows it has applied the
//!   metadata log up to its own registration; a broker silent for the session timeout is fenced;
//! - fencing or a controlled shutdown moves leadership to another usable ISR member (the first in
//!   replica order) and removes the broker from every ISR it is not the last member of; a
//!   partition with no usable ISR member goes offline (leader -1) unless the topic allows an
//!   unclean election, which takes any usable replica and resets the ISR to it;
//! - an unfenced broker takes back offline partitions it is in the ISR of;
//! - AlterPartition is a compare-and-swap on the partition epoch, from the leader only;
//! - replicas are placed round-robin from a random start with a shifting follower offset
//!   (Kafka's `assignReplicasToBrokers`), over a rack-alternating broker order when racks are set.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::metadata::image::merge_change;
use crate::metadata::{
    BrokerId, ConfigResource, Endpoints, MetadataImage, MetadataRecord, PartitionChangeRecord,
    PartitionRecord, PartitionRegistration, RegisterBrokerRecord, NO_LEADER,
};

/// Producer ids per block handed to a broker (Kafka's `ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`).
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// The topic config that allows electing an out-of-sync replica.
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

/// Randomness the controller needs (placement start, topic ids): injected so tests replay.
pub trait Randomness {
    fn next_u64(&mut self) -> u64;
    fn uuid(&mut self) -> Uuid {
        Uuid::from_u64_pair(self.next_u64(), self.next_u64())
    }
}

/// SplitMix64: small, seedable, good enough for placement and ids in tests and simulations.
#[derive(Debug, Clone)]
pub struct SeededRandom(pub u64);

impl Randomness for SeededRandom {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Why the controller refused an operation; the broker maps these to Kafka codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControllerError {
    #[error("broker {0} is already registered by another live process")]
    DuplicateBrokerRegistration(BrokerId),
    #[error("broker {broker_id}: stale broker epoch {got} (current {current})")]
    StaleBrokerEpoch {
        broker_id: BrokerId,
        got: i64,
        current: i64,
    },
    #[error("unknown broker {0}")]
    UnknownBroker(BrokerId),
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    #[error("unknown topic or partition: {0}")]
    UnknownTopicOrPartition(String),
    #[error("invalid partition count {0}: must be at least 1 and grow the topic")]
    InvalidPartitions(i64),
    #[error("replication factor {requested} is larger than the {available} available broker(s)")]
    InvalidReplicationFactor { requested: i64, available: usize },
    #[error("the leader epoch {got} is older than the partition's {current}")]
    FencedLeaderEpoch { got: i32, current: i32 },
    #[error("the request carries an epoch newer than this controller knows: not the controller")]
    NotController,
    #[error("partition epoch {got} is stale (current {current})")]
    InvalidUpdateVersion { got: i32, current: i32 },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("replica {0} is fenced, shutting down or unknown and cannot join the ISR")]
    IneligibleReplica(BrokerId),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("no reassignment in progress for {0}")]
    NoReassignmentInProgress(String),
}

/// What the controller decided and what to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    pub records: Vec<MetadataRecord>,
    pub reply: T,
}

fn decision<T>(records: Vec<MetadataRecord>, reply: T) -> Decision<T> {
    Decision { records, reply }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBroker {
    pub broker_id: BrokerId,
    pub incarnation_id: Uuid,
    pub endpoints: Endpoints,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub broker_id: BrokerId,
    pub broker_epoch: i64,
    /// The metadata offset the broker has applied.
    pub metadata_offset: u64,
    pub want_shutdown: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub is_caught_up: bool,
    pub is_fenced: bool,
    /// Controlled shutdown finished: the broker leads nothing and may exit.
    pub should_shutdown: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterPartition {
    pub broker_id: BrokerId,
    pub broker_epoch: i64,
    pub topic_id: Uuid,
    pub partition: u32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<BrokerId>,
}

/// One partition's reassignment (Kafka's AlterPartitionReassignments): move it to `target`
/// replicas, or with `None` cancel the reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    pub topic: String,
    pub partition: u32,
    pub target: Option<Vec<BrokerId>>,
}

/// A topic a broker held before it joined a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedTopic {
    pub name: String,
    pub topic_id: Uuid,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerConfig {
    /// `broker_session_timeout_ms` (9000).
    pub broker_session_timeout_ms: i64,
    /// `unclean.leader.election.enable` for topics that do not set it (the broker's topic
    /// default; false).
    pub unclean_leader_election_default: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            broker_session_timeout_ms: 9_000,
            unclean_leader_election_default: false,
        }
    }
}

/// The active controller's soft state; the durable state is the image.
#[derive(Debug, Clone, Default)]
pub struct ControllerState {
    pub config: ControllerConfig,
    /// Last heartbeat (or registration) per broker. Not replicated: a new active controller
    /// grants every broker a fresh session (KRaft does the same).
    last_contact_ms: BTreeMap<BrokerId, i64>,
}

impl ControllerState {
    pub fn new(config: ControllerConfig) -> ControllerState {
        ControllerState {
            config,
            last_contact_ms: BTreeMap::new(),
        }
    }

    /// A new active controller: every registered broker gets a full session from now.
    pub fn activate(&mut self, image: &MetadataImage, now_ms: i64) {
        self.last_contact_ms = image.brokers.keys().map(|b| (*b, now_ms)).collect();
    }

    // ---- broker lifecycle ----------------------------------------------------------------

    pub fn register_broker(
        &mut self,
        image: &MetadataImage,
        req: &RegisterBroker,
        now_ms: i64,
    ) -> Result<Decision<i64>, ControllerError> {
        if let Some(existing) = image.broker(req.broker_id) {
            let live = !existing.fenced && !self.session_expired(req.broker_id, now_ms);
            if existing.incarnation_id != req.incarnation_id && live {
                return Err(ControllerError::DuplicateBrokerRegistration(req.broker_id));
            }
        }
        let broker_epoch = image.max_broker_epoch + 1;
        self.last_contact_ms.insert(req.broker_id, now_ms);
        let mut records = Vec::new();
        // A re-registration replaces the old incarnation: whatever it led moves away first.
        if image.broker(req.broker_id).is_some_and(|b| !b.fenced) {
            records.extend(self.fence_records(image, req.broker_id));
        }
        records.push(MetadataRecord::RegisterBroker(RegisterBrokerRecord {
            broker_id: req.broker_id,
            incarnation_id: req.incarnation_id,
            broker_epoch,
            endpoints: req.endpoints.clone(),
            rack: req.rack.clone(),
        }));
        Ok(decision(records, broker_epoch))
    }

    pub fn heartbeat(
        &mut self,
        image: &MetadataImage,
        hb: &Heartbeat,
        now_ms: i64,
    ) -> Result<Decision<HeartbeatReply>, ControllerError> {
        let b = registered(image, hb.broker_id, hb.broker_epoch)?;
        self.last_contact_ms.insert(hb.broker_id, now_ms);
        let caught_up = hb.metadata_offset >= b.registered_at;
        let mut records = Vec::new();
        let mut reply = HeartbeatReply {
            is_caught_up: caught_up,
            is_fenced: b.fenced,
            should_shutdown: false,
        };
        if hb.want_shutdown {
            if b.fenced {
                reply.should_shutdown = true;
            } else if !b.in_controlled_shutdown {
                records.push(MetadataRecord::BeginControlledShutdown {
                    broker_id: b.broker_id,
                    broker_epoch: b.broker_epoch,
                });
                records.extend(self.move_leadership_away(image, b.broker_id));
            } else if leads_nothing(image, b.broker_id) {
                records.extend(self.fence_records(image, b.broker_id));
                reply.is_fenced = true;
                reply.should_shutdown = true;
            } else {
                // Leadership that could not move (no other usable ISR member) is given up now.
                records.extend(self.move_leadership_away(image, b.broker_id));
            }
        } else if b.fenced && caught_up {
            records.push(MetadataRecord::UnfenceBroker {
                broker_id: b.broker_id,
                broker_epoch: b.broker_epoch,
            });
            records.extend(self.elect_offline_partitions(image, Some(b.broker_id)));
            reply.is_fenced = false;
        }
        Ok(decision(records, reply))
    }

    fn session_expired(&self, broker: BrokerId, now_ms: i64) -> bool {
        self.last_contact_ms
            .get(&broker)
            .is_none_or(|t| now_ms - t > self.config.broker_session_timeout_ms)
    }

    /// The timer's job: fences every unfenced broker whose session expired.
    pub fn fence_stale_brokers(
        &mut self,
        image: &MetadataImage,
        now_ms: i64,
    ) -> Vec<MetadataRecord> {
        let stale: Vec<BrokerId> = image
            .brokers
            .values()
            .filter(|b| !b.fenced && self.session_expired(b.broker_id, now_ms))
            .map(|b| b.broker_id)
            .collect();
        // Fence one at a time on a scratch image, so the second fencing sees the first's moves.
        let mut scratch = image.clone();
        let mut out = Vec::new();
        for id in stale {
            let recs = self.fence_records(&scratch, id);
            apply_all(&mut scratch, &recs);
            out.extend(recs);
        }
        out
    }

    /// Fences `broker`: its partitions elect new leaders and it leaves every ISR it is not the
    /// last member of (a last member stays, so the partition can come back with it).
    fn fence_records(&self, image: &MetadataImage, broker: BrokerId) -> Vec<MetadataRecord> {
        let Some(b) = image.broker(broker) else {
            return Vec::new();
        };
        let mut out = vec![MetadataRecord::FenceBroker {
            broker_id: broker,
            broker_epoch: b.broker_epoch,
        }];
        let mut after = image.clone();
        apply_all(&mut after, &out);
        out.extend(remove_from_isrs(
            &after,
            broker,
            self.config.unclean_leader_election_default,
        ));
        out
    }

    fn move_leadership_away(&self, image: &MetadataImage, broker: BrokerId) -> Vec<MetadataRecord> {
        let mut after = image.clone();
        if let Some(b) = after.brokers.get_mut(&broker) {
            b.in_controlled_shutdown = true;
        }
        remove_from_isrs(&after, broker, self.config.unclean_leader_election_default)
    }

    /// Elects leaders for partitions that have none: from the ISR, or (where the topic allows it)
    /// any usable replica. With `only_with`, just the partitions that broker could lead.
    pub fn elect_offline_partitions(
        &self,
        image: &MetadataImage,
        only_with: Option<BrokerId>,
    ) -> Vec<MetadataRecord> {
        // The broker being unfenced counts as usable (a copy only then: the timer calls this
        // every tick with `None`).
        let after: std::borrow::Cow<'_, MetadataImage> = match only_with {
            Some(id) => {
                let mut img = image.clone();
                if let Some(b) = img.brokers.get_mut(&id) {
                    b.fenced = false;
                    b.in_controlled_shutdown = false;
                }
                std::borrow::Cow::Owned(img)
            }
            None => std::borrow::Cow::Borrowed(image),
        };
        let mut out = Vec::new();
        for (t, p, reg) in after.partitions() {
            if reg.has_leader() || only_with.is_some_and(|b| !reg.replicas.contains(&b)) {
                continue;
            }
            let unclean =
                unclean_allowed(&after, &t.name, self.config.unclean_leader_election_default);
            if let Some(mut change) = elect(&after, t.id, p, reg, None, unclean) {
                complete_after(&after, reg, &mut change);
                out.push(MetadataRecord::PartitionChange(change));
            }
        }
        out
    }

    /// Preferred-leader rebalancing (`auto_leader_rebalance_enable`): leadership returns to the
    /// first replica wherever it is a usable ISR member.
    pub fn elect_preferred_leaders(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        for (t, p, reg) in image.partitions() {
            let Some(pref) = reg.preferred_leader() else {
                continue;
            };
            if reg.leader != pref && reg.isr.contains(&pref) && image.is_usable(pref) {
                out.push(MetadataRecord::PartitionChange(PartitionChangeRecord {
                    topic_id: t.id,
                    partition: p,
                    leader: Some(pref),
                    ..Default::default()
                }));
            }
        }
        out
    }

    // ---- topics ---------------------------------------------------------------------------

    /// Usable brokers, for placement.
    fn usable_brokers(image: &MetadataImage) -> Vec<(BrokerId, Option<String>)> {
        image
            .brokers
            .values()
            .filter(|b| b.is_usable())
            .map(|b| (b.broker_id, b.rack.clone()))
            .collect()
    }

    pub fn create_topic(
        &self,
        image: &MetadataImage,
        name: &str,
        partitions: i64,
        replication_factor: i64,
        configs: &BTreeMap<String, String>,
        rng: &mut dyn Randomness,
    ) -> Result<Decision<Uuid>, ControllerError> {
        if image.topic(name).is_some() {
            return Err(ControllerError::TopicAlreadyExists(name.to_string()));
        }
        if partitions < 1 || partitions > i64::from(u32::MAX) {
            return Err(ControllerError::InvalidPartitions(partitions));
        }
        let assignment = place(
            &Self::usable_brokers(image),
            0,
            partitions as u32,
            replication_factor,
            rng,
        )?;
        let topic_id = rng.uuid();
        let mut records = vec![MetadataRecord::Topic {
            name: name.to_string(),
            topic_id,
        }];
        for (k, v) in configs {
            records.push(MetadataRecord::Config {
                resource: ConfigResource::Topic(name.to_string()),
                name: k.clone(),
                value: Some(v.clone()),
            });
        }
        records.extend(partition_records(topic_id, 0, assignment));
        Ok(decision(records, topic_id))
    }

    pub fn create_partitions(
        &self,
        image: &MetadataImage,
        name: &str,
        count: i64,
        rng: &mut dyn Randomness,
    ) -> Result<Decision<()>, ControllerError> {
        let t = image
            .topic(name)
            .ok_or_else(|| ControllerError::UnknownTopicOrPartition(name.to_string()))?;
        let current = t.partitions.len() as i64;
        if count <= current || count > i64::from(u32::MAX) {
            return Err(ControllerError::InvalidPartitions(count));
        }
        let rf = t
            .partitions
            .values()
            .next()
            .map_or(1, |p| p.replicas.len() as i64);
        let assignment = place(
            &Self::usable_brokers(image),
            current as u32,
            (count - current) as u32,
            rf,
            rng,
        )?;
        Ok(decision(
            partition_records(t.id, current as u32, assignment),
            (),
        ))
    }

    pub fn delete_topic(
        &self,
        image: &MetadataImage,
        name: &str,
    ) -> Result<Decision<Uuid>, ControllerError> {
        let t = image
            .topic(name)
            .ok_or_else(|| ControllerError::UnknownTopicOrPartition(name.to_string()))?;
        Ok(decision(
            vec![MetadataRecord::RemoveTopic { topic_id: t.id }],
            t.id,
        ))
    }

    /// Sets and removes configs of one resource (values were validated by the broker that took
    /// the request; the controller checks the resource exists).
    pub fn alter_configs(
        &self,
        image: &MetadataImage,
        resource: &ConfigResource,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<Decision<()>, ControllerError> {
        if let ConfigResource::Topic(name) = resource {
            if image.topic(name).is_none() {
                return Err(ControllerError::UnknownTopicOrPartition(name.clone()));
            }
        }
        let mut records: Vec<MetadataRecord> = delete
            .iter()
            .filter(|k| !set.contains_key(*k))
            .map(|k| MetadataRecord::Config {
                resource: resource.clone(),
                name: k.clone(),
                value: None,
            })
            .collect();
        records.extend(set.iter().map(|(k, v)| MetadataRecord::Config {
            resource: resource.clone(),
            name: k.clone(),
            value: Some(v.clone()),
        }));
        Ok(decision(records, ()))
    }

    /// Takes over the topics a broker held before the cluster existed (its old `topics.json`):
    /// each becomes a topic with its old id, its partitions hosted on that broker alone. Names
    /// the cluster already has are skipped (that broker's copies become strays).
    pub fn import_topics(
        &self,
        image: &MetadataImage,
        broker: BrokerId,
        topics: &[ImportedTopic],
    ) -> Result<Decision<Vec<String>>, ControllerError> {
        image
            .broker(broker)
            .ok_or(ControllerError::UnknownBroker(broker))?;
        let leader = if image.is_usable(broker) {
            broker
        } else {
            NO_LEADER
        };
        let mut records = Vec::new();
        let mut imported = Vec::new();
        for t in topics {
            if image.topic(&t.name).is_some() || image.topics.contains_key(&t.topic_id) {
                continue;
            }
            records.push(MetadataRecord::Topic {
                name: t.name.clone(),
                topic_id: t.topic_id,
            });
            for (k, v) in &t.configs {
                records.push(MetadataRecord::Config {
                    resource: ConfigResource::Topic(t.name.clone()),
                    name: k.clone(),
                    value: Some(v.clone()),
                });
            }
            for p in 0..t.partitions {
                records.push(MetadataRecord::Partition(PartitionRecord {
                    topic_id: t.topic_id,
                    partition: p,
                    replicas: vec![broker],
                    isr: vec![broker],
                    leader,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    adding: Vec::new(),
                    removing: Vec::new(),
                }));
            }
            imported.push(t.name.clone());
        }
        Ok(decision(records, imported))
    }

    // ---- AlterPartition -------------------------------------------------------------------

    /// The leader's ISR proposal (KIP-497), checked as `validateAlterPartitionData` does.
    pub fn alter_partition(
        &self,
        image: &MetadataImage,
        req: &AlterPartition,
    ) -> Result<Decision<PartitionRegistration>, ControllerError> {
        registered(image, req.broker_id, req.broker_epoch)?;
        let reg = image
            .partition(req.topic_id, req.partition)
            .ok_or_else(|| {
                ControllerError::UnknownTopicOrPartition(format!(
                    "{}/{}",
                    req.topic_id, req.partition
                ))
            })?;
        if req.leader_epoch > reg.leader_epoch || req.partition_epoch > reg.partition_epoch {
            return Err(ControllerError::NotController);
        }
        if req.leader_epoch < reg.leader_epoch {
            return Err(ControllerError::FencedLeaderEpoch {
                got: req.leader_epoch,
                current: reg.leader_epoch,
            });
        }
        if req.broker_id != reg.leader {
            return Err(ControllerError::InvalidRequest(format!(
                "broker {} is not the leader ({})",
                req.broker_id, reg.leader
            )));
        }
        if req.partition_epoch < reg.partition_epoch {
            return Err(ControllerError::InvalidUpdateVersion {
                got: req.partition_epoch,
                current: reg.partition_epoch,
            });
        }
        let unique: BTreeSet<BrokerId> = req.new_isr.iter().copied().collect();
        if unique.len() != req.new_isr.len()
            || !req.new_isr.contains(&reg.leader)
            || req.new_isr.iter().any(|r| !reg.replicas.contains(r))
        {
            return Err(ControllerError::InvalidRequest(format!(
                "ISR {:?} must be distinct replicas of {:?} including the leader",
                req.new_isr, reg.replicas
            )));
        }
        if reg.recovering && req.new_isr.len() > 1 {
            return Err(ControllerError::InvalidRequest(
                "a leader recovering from an unclean election may only have itself in the ISR"
                    .into(),
            ));
        }
        for r in &req.new_isr {
            if !reg.isr.contains(r) && !image.is_usable(*r) {
                return Err(ControllerError::IneligibleReplica(*r));
            }
        }
        let mut change = PartitionChangeRecord {
            topic_id: req.topic_id,
            partition: req.partition,
            isr: Some(req.new_isr.clone()),
            recovering: reg.recovering.then_some(false),
            ..Default::default()
        };
        let mut pending = reg.clone();
        pending.isr = req.new_isr.clone();
        // An ISR that now holds every target replica completes a reassignment in progress.
        complete_reassignment(image, &pending, &mut change);
        let mut after = reg.clone();
        merge_change(&mut after, &change);
        Ok(decision(
            vec![MetadataRecord::PartitionChange(change)],
            after,
        ))
    }

    // ---- producer ids -----------------------------------------------------------------------

    /// Hands a registered broker the next block of [`PRODUCER_ID_BLOCK`] producer ids (KRaft's
    /// `ProducerIdControlManager`): committed before it is used, so no two brokers — and no
    /// broker before and after a restart — hand out the same id.
    pub fn allocate_producer_ids(
        &self,
        image: &MetadataImage,
        broker_id: BrokerId,
        broker_epoch: i64,
    ) -> Result<Decision<(i64, i64)>, ControllerError> {
        registered(image, broker_id, broker_epoch)?;
        let start = image.next_producer_id;
        let next = start
            .checked_add(PRODUCER_ID_BLOCK)
            .ok_or_else(|| ControllerError::InvalidRequest("producer ids exhausted".into()))?;
        Ok(decision(
            vec![MetadataRecord::ProducerIds {
                broker_id,
                broker_epoch,
                next_producer_id: next,
            }],
            (start, PRODUCER_ID_BLOCK),
        ))
    }

    // ---- reassignment ---------------------------------------------------------------------

    /// Starts, replaces or cancels partition reassignments (KIP-455, as KRaft's
    /// `ReplicationControlManager.alterPartitionReassignments` does). Each partition is decided
    /// on the image holding the decisions before it; the reply has one result per request.
    ///
    /// Starting: the replicas become `target` followed by the current ones not in it, with
    /// `adding` = target − current and `removing` = current − target. The new replicas start as
    /// followers outside the ISR; once the ISR holds every target replica, the next
    /// AlterPartition (or this call, if that is already so) completes the move: replicas =
    /// target, the removed ones leave the ISR, and leadership moves to a target replica if the
    /// leader was removed. A new reassignment of a partition already moving starts from its
    /// original replicas; cancelling returns to them.
    pub fn alter_reassignments(
        &self,
        image: &MetadataImage,
        reqs: &[Reassignment],
    ) -> Decision<Vec<Result<(), ControllerError>>> {
        let mut scratch = image.clone();
        let mut records = Vec::new();
        let mut replies = Vec::with_capacity(reqs.len());
        for r in reqs {
            match reassign_one(&scratch, r) {
                Ok(change) => {
                    let recs = vec![MetadataRecord::PartitionChange(change)];
                    apply_all(&mut scratch, &recs);
                    records.extend(recs);
                    replies.push(Ok(()));
                }
                Err(e) => replies.push(Err(e)),
            }
        }
        decision(records, replies)
    }
}

/// The replicas a partition had before its reassignment in progress (all of them if none).
fn original_replicas(reg: &PartitionRegistration) -> Vec<BrokerId> {
    reg.replicas
        .iter()
        .copied()
        .filter(|r| !reg.adding.contains(r))
        .collect()
}

/// The replicas a partition is moving to (all of them if no reassignment is in progress).
pub fn target_replicas(reg: &PartitionRegistration) -> Vec<BrokerId> {
    reg.replicas
        .iter()
        .copied()
        .filter(|r| !reg.removing.contains(r))
        .collect()
}

fn reassign_one(
    image: &MetadataImage,
    r: &Reassignment,
) -> Result<PartitionChangeRecord, ControllerError> {
    let name = format!("{}-{}", r.topic, r.partition);
    let t = image
        .topic(&r.topic)
        .ok_or_else(|| ControllerError::UnknownTopicOrPartition(name.clone()))?;
    let reg = t
        .partitions
        .get(&r.partition)
        .ok_or_else(|| ControllerError::UnknownTopicOrPartition(name.clone()))?;
    let moving = !reg.adding.is_empty() || !reg.removing.is_empty();
    let original = original_replicas(reg);
    let target = match &r.target {
        None if !moving => return Err(ControllerError::NoReassignmentInProgress(name)),
        None => original.clone(),
        Some(target) => {
            let unique: BTreeSet<BrokerId> = target.iter().copied().collect();
            if target.is_empty() || unique.len() != target.len() {
                return Err(ControllerError::InvalidReplicaAssignment(format!(
                    "{name}: replicas {target:?} must be distinct and at least one"
                )));
            }
            if let Some(b) = target.iter().find(|b| image.broker(**b).is_none()) {
                return Err(ControllerError::InvalidReplicaAssignment(format!(
                    "{name}: broker {b} is not registered"
                )));
            }
            target.clone()
        }
    };
    // Replicas: the target first (its order is the new preference), then those leaving.
    let mut replicas = target.clone();
    replicas.extend(original.iter().copied().filter(|b| !target.contains(b)));
    let adding: Vec<BrokerId> = target
        .iter()
        .copied()
        .filter(|b| !original.contains(b))
        .collect();
    let removing: Vec<BrokerId> = original
        .iter()
        .copied()
        .filter(|b| !target.contains(b))
        .collect();
    let isr: Vec<BrokerId> = reg
        .isr
        .iter()
        .copied()
        .filter(|b| replicas.contains(b))
        .collect();
    if isr.is_empty() {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "{name}: no in-sync replica would remain (ISR {:?})",
            reg.isr
        )));
    }
    let mut change = PartitionChangeRecord {
        topic_id: t.id,
        partition: r.partition,
        replicas: Some(replicas.clone()),
        adding: Some(adding.clone()),
        removing: Some(removing.clone()),
        ..Default::default()
    };
    if isr != reg.isr {
        change.isr = Some(isr.clone());
    }
    let mut after = reg.clone();
    after.replicas = replicas;
    after.isr = isr;
    after.adding = adding;
    after.removing = removing;
    if reg.has_leader() && !after.isr.contains(&reg.leader) {
        // The leader was an added replica of the reassignment being replaced.
        after.leader = NO_LEADER;
        change.leader = Some(
            after
                .replicas
                .iter()
                .copied()
                .find(|b| after.isr.contains(b) && image.is_usable(*b))
                .unwrap_or(NO_LEADER),
        );
    }
    complete_reassignment(image, &after, &mut change);
    Ok(change)
}

/// Extends a change to `reg` (an election, an ISR shrink) to complete its reassignment if the
/// change leaves every target replica in sync (an unclean election of the only target replica).
fn complete_after(
    image: &MetadataImage,
    reg: &PartitionRegistration,
    change: &mut PartitionChangeRecord,
) {
    let mut after = reg.clone();
    merge_change(&mut after, change);
    complete_reassignment(image, &after, change);
}

/// If `after` (a partition's registration with `change` applied) is moving and its ISR holds
/// every target replica, extends `change` to finish the move.
fn complete_reassignment(
    image: &MetadataImage,
    after: &PartitionRegistration,
    change: &mut PartitionChangeRecord,
) {
    if after.adding.is_empty() && after.removing.is_empty() {
        return;
    }
    let target = target_replicas(after);
    if !target.iter().all(|b| after.isr.contains(b)) {
        return;
    }
    let isr: Vec<BrokerId> = after
        .isr
        .iter()
        .copied()
        .filter(|b| target.contains(b))
        .collect();
    let leader = change.leader.unwrap_or(after.leader);
    if !target.contains(&leader) {
        // The leader is leaving: the first target replica in the ISR that can lead takes over.
        change.leader = Some(
            target
                .iter()
                .copied()
                .find(|b| isr.contains(b) && image.is_usable(*b))
                .unwrap_or(NO_LEADER),
        );
    }
    change.replicas = Some(target);
    change.isr = Some(isr);
    change.adding = Some(Vec::new());
    change.removing = Some(Vec::new());
}

/// The broker's registration, if `epoch` is its current one (requests from an older incarnation
/// are refused).
fn registered(
    image: &MetadataImage,
    id: BrokerId,
    epoch: i64,
) -> Result<&crate::metadata::BrokerRegistration, ControllerError> {
    let b = image.broker(id).ok_or(ControllerError::UnknownBroker(id))?;
    if b.broker_epoch != epoch {
        return Err(ControllerError::StaleBrokerEpoch {
            broker_id: id,
            got: epoch,
            current: b.broker_epoch,
        });
    }
    Ok(b)
}

fn apply_all(image: &mut MetadataImage, records: &[MetadataRecord]) {
    let next = image.offset + 1;
    for r in records {
        // Records built from this image always apply; a failure would be a bug in this module,
        // and the real apply (after commit) reports it.
        let _ = image.apply(next, r);
    }
}

/// The topic's `unclean.leader.election.enable`, else the default.
fn unclean_allowed(image: &MetadataImage, topic: &str, default: bool) -> bool {
    image
        .topic_configs(topic)
        .get(UNCLEAN_LEADER_ELECTION)
        .map_or(default, |v| v == "true")
}

fn leads_nothing(image: &MetadataImage, broker: BrokerId) -> bool {
    image.partitions().all(|(_, _, r)| r.leader != broker)
}

/// For every partition whose ISR holds `broker` (already fenced or shutting down in `image`):
/// drop it from the ISR unless it is the last member, and if it led, elect another usable ISR
/// member (or none).
fn remove_from_isrs(
    image: &MetadataImage,
    broker: BrokerId,
    unclean_default: bool,
) -> Vec<MetadataRecord> {
    let mut out = Vec::new();
    for (t, p, reg) in image.partitions() {
        if !reg.isr.contains(&broker) && reg.leader != broker {
            continue;
        }
        let isr: Vec<BrokerId> = if reg.isr.len() > 1 {
            reg.isr.iter().copied().filter(|r| *r != broker).collect()
        } else {
            reg.isr.clone()
        };
        let mut change = PartitionChangeRecord {
            topic_id: t.id,
            partition: p,
            ..Default::default()
        };
        if isr != reg.isr {
            change.isr = Some(isr.clone());
        }
        if reg.leader == broker {
            let mut remaining = reg.clone();
            remaining.isr = isr.clone();
            let unclean = unclean_allowed(image, &t.name, unclean_default);
            match elect(image, t.id, p, &remaining, Some(broker), unclean) {
                Some(e) => {
                    change.leader = e.leader;
                    if e.isr.is_some() {
                        change.isr = e.isr;
                        change.recovering = e.recovering;
                    }
                }
                None => change.leader = Some(NO_LEADER),
            }
        }
        if change.isr.is_some() || change.leader.is_some() {
            complete_after(image, reg, &mut change);
            out.push(MetadataRecord::PartitionChange(change));
        }
    }
    out
}

/// Elects a leader for a partition without one: the first usable ISR member in replica order,
/// else (unclean allowed) the first usable replica, whose ISR becomes just itself.
fn elect(
    image: &MetadataImage,
    topic_id: Uuid,
    partition: u32,
    reg: &PartitionRegistration,
    exclude: Option<BrokerId>,
    unclean: bool,
) -> Option<PartitionChangeRecord> {
    let ok = |r: &BrokerId| Some(*r) != exclude && image.is_usable(*r);
    if let Some(l) = reg.replicas.iter().find(|r| reg.isr.contains(r) && ok(r)) {
        return Some(PartitionChangeRecord {
            topic_id,
            partition,
            leader: Some(*l),
            ..Default::default()
        });
    }
    if unclean {
        // A replica still being added may hold nothing yet: the last resort even here.
        let by_data = reg
            .replicas
            .iter()
            .filter(|r| !reg.adding.contains(r))
            .chain(reg.adding.iter());
        if let Some(l) = by_data.copied().find(|r| ok(r)).as_ref() {
            return Some(PartitionChangeRecord {
                topic_id,
                partition,
                leader: Some(*l),
                isr: Some(vec![*l]),
                recovering: Some(true),
                ..Default::default()
            });
        }
    }
    None
}

fn partition_records(
    topic_id: Uuid,
    first: u32,
    assignment: Vec<Vec<BrokerId>>,
) -> Vec<MetadataRecord> {
    assignment
        .into_iter()
        .enumerate()
        .map(|(i, replicas)| {
            MetadataRecord::Partition(PartitionRecord {
                topic_id,
                partition: first + i as u32,
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
                adding: vec![],
                removing: vec![],
            })
        })
        .collect()
}

/// Kafka's replica placement: partition `p`'s leader is broker `(start + p) % n`, followers follow
/// at a shift that grows every `n` partitions, so leaders and followers spread evenly. With racks,
/// brokers are ordered to alternate racks first and a follower is skipped while its rack already
/// holds a replica of the partition (until every rack does).
fn place(
    brokers: &[(BrokerId, Option<String>)],
    first_partition: u32,
    count: u32,
    replication_factor: i64,
    rng: &mut dyn Randomness,
) -> Result<Vec<Vec<BrokerId>>, ControllerError> {
    let n = brokers.len();
    if replication_factor < 1 || replication_factor as usize > n {
        return Err(ControllerError::InvalidReplicationFactor {
            requested: replication_factor,
            available: n,
        });
    }
    let rf = replication_factor as usize;
    let ordered = rack_alternating(brokers);
    let racks: BTreeSet<&str> = ordered.iter().filter_map(|(_, r)| r.as_deref()).collect();
    let rack_aware = !racks.is_empty();
    let start = (rng.next_u64() % n as u64) as usize;
    let mut shift = (rng.next_u64() % n as u64) as usize;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let p = first_partition as usize + i;
        if p > 0 && p.is_multiple_of(n) {
            shift += 1;
        }
        let first = (p + start) % n;
        let mut replicas = vec![ordered[first].0];
        let mut used_racks: BTreeSet<Option<&str>> = BTreeSet::new();
        used_racks.insert(ordered[first].1.as_deref());
        let mut j = 0usize;
        while replicas.len() < rf {
            // Every follower candidate, in the order Kafka's formula visits them.
            let idx = if n > 1 {
                (first + 1 + (shift + j) % (n - 1)) % n
            } else {
                first
            };
            j += 1;
            let (id, rack) = &ordered[idx];
            if replicas.contains(id) {
                if j > 4 * n {
                    break; // cannot happen with rf <= n; a bound instead of a hang
                }
                continue;
            }
            let all_racks_used = used_racks.len() >= racks.len();
            if rack_aware && !all_racks_used && used_racks.contains(&rack.as_deref()) && j <= 2 * n
            {
                continue;
            }
            used_racks.insert(rack.as_deref());
            replicas.push(*id);
        }
        out.push(replicas);
    }
    Ok(out)
}

/// Orders brokers so that consecutive ones sit in different racks where possible: rack A's
/// first, rack B's first, ..., rack A's second, ... Without racks, broker-id order.
fn rack_alternating(brokers: &[(BrokerId, Option<String>)]) -> Vec<(BrokerId, Option<String>)> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<BrokerId>> = BTreeMap::new();
    for (id, rack) in brokers {
        by_rack.entry(rack.as_deref()).or_default().push(*id);
    }
    if by_rack.len() <= 1 {
        let mut v = brokers.to_vec();
        v.sort_by_key(|(id, _)| *id);
        return v;
    }
    let mut out = Vec::with_capacity(brokers.len());
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for (rack, ids) in &by_rack {
            if let Some(id) = ids.get(i) {
                out.push((*id, rack.map(str::to_string)));
            }
        }
    }
    out
}
