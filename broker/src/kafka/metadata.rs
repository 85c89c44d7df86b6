//! Metadata (with auto topic creation), ListOffsets and DescribeCluster.

use bytes::BytesMut;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use sluice_replication::controller::api::ControllerFailure;
use sluice_replication::controller::ControllerError;
use sluice_replication::metadata::MetadataImage;
use sluice_replication::OffsetQuery;

use super::{err, frame::encode_response, Ctx};
use crate::topics::{validate_topic_name, TopicError};

pub const CLUSTER_ID: &str = "sluice";

pub fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Kafka's error code for a topic-manager error.
pub fn topic_error_code(e: &TopicError) -> i16 {
    err(match e {
        TopicError::UnknownTopic(_) | TopicError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        TopicError::InvalidName { .. } => ResponseError::InvalidTopicException,
        TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        TopicError::InvalidReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
        TopicError::InvalidConfig(_) => ResponseError::InvalidConfig,
        TopicError::NotHosted { .. } => ResponseError::NotLeaderOrFollower,
        TopicError::Partition(p) => return super::produce::partition_error_code(p),
        TopicError::Io { .. } => ResponseError::KafkaStorageError,
        TopicError::Controller(f) => return controller_failure_code(f),
    })
}

/// Kafka's error code for a controller call that did not succeed.
pub fn controller_failure_code(f: &ControllerFailure) -> i16 {
    err(match f {
        ControllerFailure::NotController { .. } => ResponseError::NotController,
        ControllerFailure::Unavailable(_) => ResponseError::RequestTimedOut,
        ControllerFailure::Refused(e) => match e {
            ControllerError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
            ControllerError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
            ControllerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            ControllerError::InvalidReplicationFactor { .. } => {
                ResponseError::InvalidReplicationFactor
            }
            ControllerError::NotController => ResponseError::NotController,
            ControllerError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
            ControllerError::InvalidUpdateVersion { .. } => ResponseError::InvalidUpdateVersion,
            ControllerError::StaleBrokerEpoch { .. } => ResponseError::StaleBrokerEpoch,
            ControllerError::DuplicateBrokerRegistration(_) => {
                ResponseError::DuplicateBrokerRegistration
            }
            ControllerError::UnknownBroker(_) | ControllerError::IneligibleReplica(_) => {
                ResponseError::IneligibleReplica
            }
            ControllerError::InvalidRequest(_) => ResponseError::InvalidRequest,
            ControllerError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            ControllerError::NoReassignmentInProgress(_) => ResponseError::NoReassignmentInProgress,
        },
    })
}

/// KIP-320: a client request naming a leader epoch older than the partition's is fenced, a newer
/// one is from a future this broker has not seen yet (-1: the client does not say).
pub fn epoch_error(current_leader_epoch: i32, p: &sluice_replication::Partition) -> Option<i16> {
    let mine = p.leader_epoch();
    if current_leader_epoch < 0 || current_leader_epoch == mine {
        None
    } else if current_leader_epoch < mine {
        Some(err(ResponseError::FencedLeaderEpoch))
    } else {
        Some(err(ResponseError::UnknownLeaderEpoch))
    }
}

/// The controller's id for clients: the Raft leader, or -1 while there is none.
pub fn controller_id(ctx: &Ctx) -> i32 {
    ctx.quorum.status().leader.map_or(-1, |l| l as i32)
}

/// Brokers clients may connect to: registered and not fenced, with their advertised Kafka
/// address. Before this broker has registered (a lone broker starting), itself.
pub fn live_brokers(ctx: &Ctx, image: &MetadataImage) -> Vec<(i32, String, i32, Option<String>)> {
    let mut out: Vec<_> = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let (h, p) = b.endpoints.kafka.rsplit_once(':')?;
            Some((b.broker_id, h.to_string(), p.parse().ok()?, b.rack.clone()))
        })
        .collect();
    if !out.iter().any(|b| b.0 == ctx.config.node_id) {
        out.push((
            ctx.config.node_id,
            ctx.advertised_host.clone(),
            ctx.advertised_port,
            ctx.config.broker_rack.clone(),
        ));
    }
    out
}

/// One topic as the metadata image describes it: every partition, hosted here or not.
fn describe_topic(image: &MetadataImage, name: &str, version: i16) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default().with_name(Some(topic_name(name)));
    match image.topic(name) {
        Some(topic) => {
            t = t
                .with_topic_id(topic.id)
                .with_is_internal(name.starts_with("__"))
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|(index, p)| {
                            let mut mp = MetadataResponsePartition::default()
                                .with_partition_index(*index as i32)
                                .with_leader_id(p.leader.into())
                                .with_replica_nodes(
                                    p.replicas.iter().map(|b| (*b).into()).collect(),
                                )
                                .with_isr_nodes(p.isr.iter().map(|b| (*b).into()).collect());
                            if !p.has_leader() {
                                mp = mp.with_error_code(err(ResponseError::LeaderNotAvailable));
                            }
                            if version >= 7 {
                                mp = mp.with_leader_epoch(p.leader_epoch);
                            }
                            mp
                        })
                        .collect(),
                );
        }
        // Kafka's rule (KafkaApis.getTopicMetadata): a name no topic could have is
        // INVALID_TOPIC_EXCEPTION, which clients treat as permanent and fail the messages at
        // once; a valid one that does not exist (yet) is retriable.
        None if validate_topic_name(name).is_err() => {
            t = t.with_error_code(err(ResponseError::InvalidTopicException))
        }
        None => t = t.with_error_code(err(ResponseError::UnknownTopicOrPartition)),
    }
    t
}

pub async fn metadata(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: MetadataRequest,
) -> Result<BytesMut, String> {
    let wanted: Option<Vec<String>> = match req.topics {
        None => None,
        Some(ts) if ts.is_empty() && version == 0 => None,
        Some(ts) => Some(
            ts.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    let allow_auto =
        (version < 4 || req.allow_auto_topic_creation) && ctx.config.auto_create_topics_enable;
    let names: Vec<String> = match wanted {
        None => ctx.quorum.image().topic_ids.keys().cloned().collect(),
        Some(names) => {
            for n in &names {
                if allow_auto
                    && ctx.quorum.image().topic(n).is_none()
                    && validate_topic_name(n).is_ok()
                {
                    let created = ctx
                        .admin
                        .create_topic(n, 0, 0, Default::default(), false)
                        .await;
                    match created {
                        Ok(_) => {
                            tracing::info!(topic = %n, "auto-created topic on metadata request")
                        }
                        Err(TopicError::AlreadyExists(_)) => {}
                        Err(e) => {
                            tracing::warn!(topic = %n, error = %e, "auto topic creation failed")
                        }
                    }
                }
            }
            names
        }
    };
    let image = ctx.quorum.image();
    let resp = MetadataResponse::default()
        .with_brokers(
            live_brokers(ctx, &image)
                .into_iter()
                .map(|(id, host, port, rack)| {
                    MetadataResponseBroker::default()
                        .with_node_id(id.into())
                        .with_host(StrBytes::from_string(host))
                        .with_port(port)
                        .with_rack(rack.map(StrBytes::from_string))
                })
                .collect(),
        )
        .with_cluster_id(Some(StrBytes::from_static_str(CLUSTER_ID)))
        .with_controller_id(controller_id(ctx).into())
        .with_topics(
            names
                .iter()
                .map(|n| describe_topic(&image, n, version))
                .collect(),
        );
    encode_response(corr, version, &resp)
}

pub fn list_offsets(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: ListOffsetsRequest,
) -> Result<BytesMut, String> {
    const LATEST: i64 = -1;
    const EARLIEST: i64 = -2;
    const MAX_TIMESTAMP: i64 = -3;
    // v2+: read_committed consumers' "latest" is the last stable offset.
    let isolation = sluice_replication::Isolation::from_kafka(req.isolation_level);
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut r = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    let partition = match u32::try_from(p.partition_index)
                        .map_err(|_| TopicError::UnknownTopic(name.clone()))
                        .and_then(|i| ctx.topics.partition(&name, i))
                    {
                        Ok(partition) => partition,
                        Err(e) => return r.with_error_code(topic_error_code(&e)),
                    };
                    if version >= 4 {
                        r = r.with_leader_epoch(partition.leader_epoch());
                        if let Some(code) = epoch_error(p.current_leader_epoch, &partition) {
                            return r.with_error_code(code);
                        }
                    }
                    let query = match p.timestamp {
                        LATEST => OffsetQuery::Latest,
                        EARLIEST => OffsetQuery::Earliest,
                        MAX_TIMESTAMP if version >= 7 => OffsetQuery::MaxTimestamp,
                        ts if ts >= 0 => OffsetQuery::Timestamp(ts),
                        _ => return r.with_error_code(err(ResponseError::InvalidRequest)),
                    };
                    match partition.list_offset(query, isolation) {
                        Ok(Some((offset, ts))) => r.with_offset(offset as i64).with_timestamp(ts),
                        Ok(None) => r,
                        Err(e) => {
                            if !matches!(e, sluice_replication::PartitionError::NotLeader { .. }) {
                                tracing::error!(topic = %name, error = %e, "offset lookup failed");
                            }
                            r.with_error_code(super::produce::partition_error_code(&e))
                        }
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    encode_response(
        corr,
        version,
        &ListOffsetsResponse::default().with_topics(topics),
    )
}

/// OffsetForLeaderEpoch (API 23), as Kafka serves it to consumers validating their position
/// after a leader change (KIP-320): per partition, the end offset of the largest epoch ≤ the one
/// asked for, from the leader, after the KIP-320 check of the client's current leader epoch.
pub fn offset_for_leader_epoch(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: OffsetForLeaderEpochRequest,
) -> Result<BytesMut, String> {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.topic.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let r = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let partition = match u32::try_from(p.partition)
                        .map_err(|_| TopicError::UnknownTopic(name.clone()))
                        .and_then(|i| ctx.topics.partition(&name, i))
                    {
                        Ok(partition) => partition,
                        Err(e) => return r.with_error_code(topic_error_code(&e)),
                    };
                    if let Some(code) = epoch_error(p.current_leader_epoch, &partition) {
                        return r.with_error_code(code);
                    }
                    match partition.end_offset_for_epoch(p.leader_epoch) {
                        Ok(Some((epoch, end))) => {
                            r.with_leader_epoch(epoch).with_end_offset(end as i64)
                        }
                        Ok(None) => r,
                        Err(e) => r.with_error_code(super::produce::partition_error_code(&e)),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    encode_response(
        corr,
        version,
        &OffsetForLeaderEpochResponse::default().with_topics(topics),
    )
}

pub fn describe_cluster(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    _req: DescribeClusterRequest,
) -> Result<BytesMut, String> {
    let image = ctx.quorum.image();
    let resp = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_static_str(CLUSTER_ID))
        .with_controller_id(controller_id(ctx).into())
        .with_brokers(
            live_brokers(ctx, &image)
                .into_iter()
                .map(|(id, host, port, rack)| {
                    DescribeClusterBroker::default()
                        .with_broker_id(id.into())
                        .with_host(StrBytes::from_string(host))
                        .with_port(port)
                        .with_rack(rack.map(StrBytes::from_string))
                })
                .collect(),
        );
    encode_response(corr, version, &resp)
}
