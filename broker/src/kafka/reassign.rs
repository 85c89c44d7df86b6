//! Partition reassignment over the Kafka protocol (KIP-455): AlterPartitionReassignments and
//! ListPartitionReassignments, codecs around [`crate::requests::admin`] (the gRPC Admin service
//! and `sluice topic reassign` use the same calls).

use bytes::BytesMut;
use kafka_protocol::messages::alter_partition_reassignments_request::AlterPartitionReassignmentsRequest;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    AlterPartitionReassignmentsResponse, ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsRequest;
use kafka_protocol::messages::list_partition_reassignments_response::{
    ListPartitionReassignmentsResponse, OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::BrokerId as KBrokerId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_replication::controller::api::ControllerFailure;
use sluice_replication::controller::Reassignment;

use super::metadata::{controller_failure_code, topic_error_code, topic_name};
use super::{err, frame::encode_response, Ctx};
use crate::requests::admin::ongoing_reassignments;

/// One requested partition: (topic, partition, `Some((code, message))` when refused here, or
/// `None` when the controller decides).
type Item = (String, i32, Option<(i16, String)>);

fn ids(v: &[i32]) -> Vec<KBrokerId> {
    v.iter().map(|b| KBrokerId(*b)).collect()
}

pub async fn alter_partition_reassignments(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: AlterPartitionReassignmentsRequest,
) -> Result<BytesMut, String> {
    let image = ctx.quorum.image();
    let mut items: Vec<Item> = Vec::new();
    let mut calls = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        for p in &t.partitions {
            let target: Option<Vec<i32>> =
                p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
            let Ok(index) = u32::try_from(p.partition_index) else {
                items.push((
                    name.clone(),
                    p.partition_index,
                    Some((
                        err(ResponseError::UnknownTopicOrPartition),
                        format!("no partition {}", p.partition_index),
                    )),
                ));
                continue;
            };
            // KIP-860: a client may forbid changing the replication factor.
            let current = image
                .topic(&name)
                .and_then(|t| t.partitions.get(&index))
                .map(|r| r.replicas.len() - r.adding.len());
            if let (false, Some(target), Some(current)) =
                (req.allow_replication_factor_change, &target, current)
            {
                if target.len() != current {
                    items.push((
                        name.clone(),
                        p.partition_index,
                        Some((
                            err(ResponseError::InvalidReplicationFactor),
                            format!(
                                "the reassignment changes the replication factor from {current} to {}",
                                target.len()
                            ),
                        )),
                    ));
                    continue;
                }
            }
            items.push((name.clone(), p.partition_index, None));
            calls.push(Reassignment {
                topic: name.clone(),
                partition: index,
                target,
            });
        }
    }
    let mut resp = AlterPartitionReassignmentsResponse::default();
    let results = match ctx.admin.alter_reassignments(calls).await {
        Ok(r) => r,
        Err(e) => {
            resp.error_code = topic_error_code(&e);
            resp.error_message = Some(StrBytes::from_string(e.to_string()));
            return encode_response(corr, version, &resp);
        }
    };
    let mut results = results.into_iter();
    let mut by_topic: Vec<ReassignableTopicResponse> = Vec::new();
    for (name, index, refused) in items {
        let (code, message) = match refused {
            Some((code, message)) => (code, Some(message)),
            None => match results.next() {
                Some(Ok(())) => (0, None),
                Some(Err(e)) => {
                    let message = e.to_string();
                    (
                        controller_failure_code(&ControllerFailure::Refused(e)),
                        Some(message),
                    )
                }
                None => (
                    err(ResponseError::UnknownServerError),
                    Some("the controller answered fewer partitions than asked".into()),
                ),
            },
        };
        let part = ReassignablePartitionResponse::default()
            .with_partition_index(index)
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string));
        match by_topic.iter_mut().find(|t| t.name.0.as_str() == name) {
            Some(t) => t.partitions.push(part),
            None => by_topic.push(
                ReassignableTopicResponse::default()
                    .with_name(topic_name(&name))
                    .with_partitions(vec![part]),
            ),
        }
    }
    resp.responses = by_topic;
    encode_response(corr, version, &resp)
}

pub fn list_partition_reassignments(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: ListPartitionReassignmentsRequest,
) -> Result<BytesMut, String> {
    let filter: Option<Vec<(String, u32)>> = req.topics.map(|ts| {
        ts.iter()
            .flat_map(|t| {
                t.partition_indexes
                    .iter()
                    .filter_map(|p| u32::try_from(*p).ok())
                    .map(|p| (t.name.0.to_string(), p))
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    let image = ctx.quorum.image();
    let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
    for r in ongoing_reassignments(&image, filter.as_deref()) {
        let part = OngoingPartitionReassignment::default()
            .with_partition_index(r.partition as i32)
            .with_replicas(ids(&r.replicas))
            .with_adding_replicas(ids(&r.adding))
            .with_removing_replicas(ids(&r.removing));
        match topics.iter_mut().find(|t| t.name.0.as_str() == r.topic) {
            Some(t) => t.partitions.push(part),
            None => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(topic_name(&r.topic))
                    .with_partitions(vec![part]),
            ),
        }
    }
    encode_response(
        corr,
        version,
        &ListPartitionReassignmentsResponse::default().with_topics(topics),
    )
}
