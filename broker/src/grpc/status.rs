//! Maps broker errors to gRPC statuses with messages a person can act on.

use sluice_log::LogError;
use sluice_replication::controller::api::ControllerFailure;
use sluice_replication::controller::ControllerError;
use sluice_replication::PartitionError;
use tonic::{Code, Status};

use crate::topics::{TopicError, TopicManager};

/// A controller's refusal of one item of a batch call (a reassignment), as a status.
pub fn from_controller_error(e: ControllerError) -> Status {
    from_topic_error(TopicError::Controller(ControllerFailure::Refused(e)))
}

pub fn from_topic_error(e: TopicError) -> Status {
    let code = match &e {
        TopicError::UnknownTopic(_) | TopicError::UnknownPartition { .. } => Code::NotFound,
        TopicError::AlreadyExists(_) => Code::AlreadyExists,
        TopicError::InvalidName { .. }
        | TopicError::InvalidPartitions(_)
        | TopicError::InvalidReplicationFactor { .. }
        | TopicError::InvalidConfig(_) => Code::InvalidArgument,
        TopicError::Partition(p) => return from_partition_error(p),
        TopicError::Io { .. } => Code::Internal,
        TopicError::NotHosted { .. } => Code::FailedPrecondition,
        TopicError::Controller(f) => match f {
            ControllerFailure::NotController { .. } | ControllerFailure::Unavailable(_) => {
                Code::Unavailable
            }
            ControllerFailure::Refused(r) => match r {
                ControllerError::TopicAlreadyExists(_) => Code::AlreadyExists,
                ControllerError::UnknownTopicOrPartition(_) => Code::NotFound,
                ControllerError::InvalidPartitions(_)
                | ControllerError::InvalidReplicationFactor { .. }
                | ControllerError::InvalidRequest(_)
                | ControllerError::InvalidReplicaAssignment(_) => Code::InvalidArgument,
                _ => Code::FailedPrecondition,
            },
        },
    };
    Status::new(code, e.to_string())
}

/// A coordinator's refusal: COORDINATOR_LOAD_IN_PROGRESS as UNAVAILABLE (retry), anything else
/// as NOT_COORDINATOR — FAILED_PRECONDITION naming the coordinator (the leader of `partition` of
/// `topic`, when this broker knows it) under `sluice-coordinator-id`, so clients go there.
/// `what` names the group or transactional id for the message.
pub fn coordinator_status(
    topics: &TopicManager,
    code: i16,
    what: &str,
    topic: &str,
    partition: u32,
) -> Status {
    if code == crate::groups::code::COORDINATOR_LOAD_IN_PROGRESS {
        return Status::unavailable(format!("{what}: its coordinator is loading it; retry"));
    }
    let mut st = Status::failed_precondition(format!(
        "this broker is not the coordinator of {what} (the leader of {topic} partition {partition} is)"
    ));
    let leader = topics
        .partition(topic, partition)
        .map_or(-1, |p| p.leader());
    if let Ok(v) = leader.to_string().parse() {
        st.metadata_mut()
            .insert(sluice_proto::routing::COORDINATOR_ID_METADATA, v);
    }
    st
}

/// Metadata key naming the partition's leader (broker id) on a NOT_LEADER refusal, so a client
/// can go there (`sluice cluster brokers` / DescribeCluster map ids to addresses).
use sluice_proto::routing::LEADER_ID_METADATA as LEADER_ID_KEY;

pub fn from_partition_error(e: &PartitionError) -> Status {
    let code = match e {
        PartitionError::NotLeader { leader, .. } => {
            let mut st = Status::new(Code::FailedPrecondition, e.to_string());
            if let Ok(v) = leader.to_string().parse() {
                st.metadata_mut().insert(LEADER_ID_KEY, v);
            }
            return st;
        }
        PartitionError::NotEnoughReplicas { .. }
        | PartitionError::NotEnoughReplicasAfterAppend { .. }
        | PartitionError::UnknownLeaderEpoch { .. } => Code::Unavailable,
        PartitionError::Timeout { .. } => Code::DeadlineExceeded,
        PartitionError::FencedLeaderEpoch { .. } | PartitionError::UnknownReplica(_) => {
            Code::FailedPrecondition
        }
        PartitionError::Task(_) => Code::Internal,
        PartitionError::Log(l) => match l {
            LogError::OffsetOutOfRange { .. } => Code::OutOfRange,
            LogError::BatchTooLarge { .. } => Code::ResourceExhausted,
            LogError::InvalidBatch { .. }
            | LogError::InvalidRecords { .. }
            | LogError::RecordsRejected { .. }
            | LogError::InvalidConfig(_) => Code::InvalidArgument,
            LogError::NonContiguousOffset { .. } | LogError::Producer(_) => {
                Code::FailedPrecondition
            }
            LogError::Closed | LogError::LogDirOffline { .. } => Code::Unavailable,
            LogError::Deleted => Code::NotFound,
            LogError::Corrupt { .. } | LogError::Io { .. } => Code::Internal,
        },
    };
    Status::new(code, e.to_string())
}

impl From<TopicError> for Status {
    fn from(e: TopicError) -> Status {
        from_topic_error(e)
    }
}

/// The wire form of a status inside a streamed response.
pub fn to_proto(s: &Status) -> sluice_proto::v1::Error {
    sluice_proto::v1::Error {
        code: s.code() as i32,
        message: s.message().to_string(),
    }
}
