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
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{err, frame::encode_response, Ctx};
use crate::topics::{validate_topic_name, TopicError};

pub const CLUSTER_ID: &str = "sluice-single-node";

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
        TopicError::Partition(_) | TopicError::Io { .. } => ResponseError::KafkaStorageError,
    })
}

fn describe_topic(ctx: &Ctx, name: &str, version: i16) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default().with_name(Some(topic_name(name)));
    match ctx.topics.get(name) {
        Ok(topic) => {
            t = t
                .with_topic_id(topic.id)
                .with_is_internal(name.starts_with("__"))
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut mp = MetadataResponsePartition::default()
                                .with_partition_index(p.index() as i32)
                                .with_leader_id(p.leader().into())
                                .with_replica_nodes(
                                    p.replicas().into_iter().map(Into::into).collect(),
                                )
                                .with_isr_nodes(p.isr().into_iter().map(Into::into).collect());
                            if version >= 7 {
                                mp = mp.with_leader_epoch(p.leader_epoch());
                            }
                            mp
                        })
                        .collect(),
                );
        }
        Err(e) => t = t.with_error_code(topic_error_code(&e)),
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
        None => ctx.topics.list().iter().map(|t| t.name.clone()).collect(),
        Some(names) => {
            for n in &names {
                if allow_auto && ctx.topics.get(n).is_err() && validate_topic_name(n).is_ok() {
                    let topics = ctx.topics.clone();
                    let name = n.clone();
                    let created = tokio::task::spawn_blocking(move || {
                        topics.create(&name, 0, 0, Default::default())
                    })
                    .await
                    .map_err(|e| e.to_string())?;
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
    let resp = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(ctx.config.node_id.into())
            .with_host(StrBytes::from_string(ctx.advertised_host.clone()))
            .with_port(ctx.advertised_port)])
        .with_cluster_id(Some(StrBytes::from_static_str(CLUSTER_ID)))
        .with_controller_id(ctx.config.node_id.into())
        .with_topics(
            names
                .iter()
                .map(|n| describe_topic(ctx, n, version))
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
                    }
                    let hw = partition.high_watermark();
                    match p.timestamp {
                        LATEST => r.with_offset(hw as i64),
                        EARLIEST => r.with_offset(partition.log().log_start_offset() as i64),
                        MAX_TIMESTAMP if version >= 7 => match tokio::task::block_in_place(|| partition.log().offset_of_max_timestamp()) {
                            Ok(Some((offset, ts))) if offset < hw => r.with_offset(offset as i64).with_timestamp(ts),
                            Ok(_) => r,
                            Err(e) => {
                                tracing::error!(topic = %name, error = %e, "max-timestamp lookup failed");
                                r.with_error_code(err(ResponseError::KafkaStorageError))
                            }
                        },
                        ts if ts >= 0 => match tokio::task::block_in_place(|| partition.log().offset_for_timestamp(ts, Some(hw))) {
                            Ok(Some((offset, found_ts))) => r.with_offset(offset as i64).with_timestamp(found_ts),
                            Ok(None) => r,
                            Err(e) => {
                                tracing::error!(topic = %name, error = %e, "offset lookup by timestamp failed");
                                r.with_error_code(err(ResponseError::KafkaStorageError))
                            }
                        },
                        _ => r.with_error_code(err(ResponseError::InvalidRequest)),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    encode_response(
        corr,
        version,
        &ListOffsetsResponse::default().with_topics(topics),
    )
}

pub fn describe_cluster(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    _req: DescribeClusterRequest,
) -> Result<BytesMut, String> {
    let resp = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_static_str(CLUSTER_ID))
        .with_controller_id(ctx.config.node_id.into())
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(ctx.config.node_id.into())
            .with_host(StrBytes::from_string(ctx.advertised_host.clone()))
            .with_port(ctx.advertised_port)]);
    encode_response(corr, version, &resp)
}
