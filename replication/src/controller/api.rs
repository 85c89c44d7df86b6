//! What brokers ask the active controller, and what it answers.
//!
//! Every broker sends these to the Raft leader over the internal service
//! (`BrokerInternal/Controller`); the leader's own broker calls [`super::active::ActiveController`]
//! directly. Calls are encoded as JSON, like the metadata records they turn into: the internal
//! protocol changes with the cluster's, and one serde codec keeps the Rust types the single
//! definition (the `.proto` carries them as bytes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state_machine::{
    AlterPartition, ControllerError, HeartbeatReply, ImportedTopic, Reassignment,
};
use crate::metadata::{BrokerId, ConfigResource, Endpoints};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerCall {
    RegisterBroker {
        broker_id: BrokerId,
        incarnation_id: Uuid,
        endpoints: Endpoints,
        rack: Option<String>,
    },
    Heartbeat {
        broker_id: BrokerId,
        broker_epoch: i64,
        /// The metadata offset the broker has applied.
        metadata_offset: u64,
        want_shutdown: bool,
    },
    CreateTopic {
        name: String,
        partitions: i64,
        replication_factor: i64,
        configs: BTreeMap<String, String>,
        /// Decide, but do not propose (Kafka's `validate_only`).
        validate_only: bool,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i64,
        validate_only: bool,
    },
    AlterConfigs {
        resource: ConfigResource,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
    ImportTopics {
        broker_id: BrokerId,
        topics: Vec<ImportedTopic>,
    },
    AlterPartition(AlterPartition),
    AlterReassignments(Vec<Reassignment>),
    AllocateProducerIds {
        broker_id: BrokerId,
        broker_epoch: i64,
    },
}

impl ControllerCall {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ControllerCall::RegisterBroker { .. } => "RegisterBroker",
            ControllerCall::Heartbeat { .. } => "Heartbeat",
            ControllerCall::CreateTopic { .. } => "CreateTopic",
            ControllerCall::DeleteTopic { .. } => "DeleteTopic",
            ControllerCall::CreatePartitions { .. } => "CreatePartitions",
            ControllerCall::AlterConfigs { .. } => "AlterConfigs",
            ControllerCall::ImportTopics { .. } => "ImportTopics",
            ControllerCall::AlterPartition(_) => "AlterPartition",
            ControllerCall::AlterReassignments(_) => "AlterReassignments",
            ControllerCall::AllocateProducerIds { .. } => "AllocateProducerIds",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerAnswer {
    BrokerEpoch(i64),
    Heartbeat(HeartbeatReply),
    TopicCreated {
        topic_id: Uuid,
        partitions: u32,
        replication_factor: u32,
    },
    Imported(Vec<String>),
    /// One result per requested reassignment, in order.
    Reassignments(Vec<Result<(), ControllerError>>),
    /// Producer ids `start .. start + len` are this broker's to hand out.
    ProducerIds {
        start: i64,
        len: i64,
    },
    Done,
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControllerFailure {
    /// The controller decided against it (a Kafka error code follows from the reason).
    #[error("{0}")]
    Refused(ControllerError),
    /// Not the active controller: nothing was done; ask `leader`.
    #[error("not the active controller (leader: {leader:?})")]
    NotController { leader: Option<u64> },
    /// The decision may or may not have committed (leadership changed under it, or the log
    /// failed): the caller cannot tell, so it must not blindly retry a non-idempotent call.
    #[error("the controller could not finish: {0}")]
    Unavailable(String),
}

/// The answer and the metadata offset at which its effects are in the image; a broker waits
/// until it has applied that offset before it answers its client, so the client's next request
/// sees what it just did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerResponse {
    pub result: Result<ControllerAnswer, ControllerFailure>,
    pub metadata_offset: u64,
}

impl ControllerResponse {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
    pub fn decode(b: &[u8]) -> Result<ControllerResponse, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

impl ControllerCall {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
    pub fn decode(b: &[u8]) -> Result<ControllerCall, serde_json::Error> {
        serde_json::from_slice(b)
    }
}
