//! Consumer-group APIs over the Kafka protocol, backed by [`crate::groups::GroupCoordinator`]:
//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//! ListGroups, DescribeGroups.

use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{frame::encode_response, Ctx};
use crate::groups::{code, offsets_log, Committed, JoinRequest};

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The coordinator of a group (key type 0: the leader of its `__consumer_offsets` partition)
/// or of a transactional id (key type 1: of its `__transaction_state` partition), from the
/// metadata image. The topic is created on first use, as Kafka does.
async fn coordinator_of(ctx: &Ctx, key_type: i8, key: &str) -> (i16, i32, String, i32) {
    let none = |e| (e, -1, String::new(), -1);
    let (topic, partition, rf) = match key_type {
        0 => (
            offsets_log::TOPIC,
            offsets_log::partition_for(key),
            ctx.config.offsets_topic_replication_factor,
        ),
        1 => (
            crate::transactions::txn_log::TOPIC,
            crate::transactions::txn_log::partition_for(key),
            ctx.config.transaction_state_log_replication_factor,
        ),
        _ => return none(super::err(kafka_protocol::ResponseError::InvalidRequest)),
    };
    if ctx.topics.get(topic).is_err() {
        let partitions = if key_type == 0 {
            offsets_log::PARTITIONS
        } else {
            crate::transactions::txn_log::PARTITIONS
        };
        if let Err(e) = ctx.admin.ensure_internal_topic(topic, partitions, rf).await {
            tracing::warn!(topic, error = %e, "cannot create an internal topic");
            return none(code::COORDINATOR_NOT_AVAILABLE);
        }
    }
    let image = ctx.quorum.image();
    let leader = image
        .topic(topic)
        .and_then(|t| t.partitions.get(&partition))
        .map_or(-1, |p| p.leader);
    if leader == ctx.config.node_id {
        return (
            code::NONE,
            leader,
            ctx.advertised_host.clone(),
            ctx.advertised_port,
        );
    }
    let endpoint = image.broker(leader).filter(|b| !b.fenced).and_then(|b| {
        b.endpoints
            .kafka
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.parse::<i32>()))
    });
    match endpoint {
        Some((host, Ok(port))) => (code::NONE, leader, host, port),
        _ => none(code::COORDINATOR_NOT_AVAILABLE),
    }
}

pub async fn find_coordinator(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: FindCoordinatorRequest,
) -> Result<BytesMut, String> {
    // key_type 0 = group, 1 = transactional id.
    let answer = |key: String| async move { coordinator_of(ctx, req.key_type, &key).await };
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        let mut coordinators = Vec::with_capacity(req.coordinator_keys.len());
        for k in req.coordinator_keys.iter() {
            let (error, node, host, port) = answer(k.to_string()).await;
            coordinators.push(
                Coordinator::default()
                    .with_key(k.clone())
                    .with_node_id(node.into())
                    .with_host(s(host))
                    .with_port(port)
                    .with_error_code(error),
            );
        }
        resp = resp.with_coordinators(coordinators);
    } else {
        let (error, node, host, port) = answer(req.key.to_string()).await;
        resp = resp
            .with_error_code(error)
            .with_node_id(node.into())
            .with_host(s(host))
            .with_port(port);
    }
    encode_response(corr, version, &resp)
}

pub async fn join_group(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    client_id: &str,
    peer: &str,
    req: JoinGroupRequest,
) -> Result<BytesMut, String> {
    let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
    // v0 has no rebalance timeout: Kafka uses the session timeout.
    let rebalance = if version >= 1 {
        Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64)
    } else {
        session
    };
    let r = ctx
        .groups
        .join(JoinRequest {
            group: req.group_id.0.to_string(),
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.map(|i| i.to_string()),
            client_id: client_id.to_string(),
            client_host: peer.to_string(),
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            session_timeout: session,
            rebalance_timeout: rebalance,
        })
        .await;
    let mut resp = JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(if r.error == code::NONE {
            r.generation
        } else {
            -1
        })
        .with_protocol_name(Some(s(r.protocol)))
        .with_leader(s(r.leader))
        .with_member_id(s(r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|(id, iid, meta)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(s(id))
                        .with_group_instance_id(if version >= 5 { iid.map(s) } else { None })
                        .with_metadata(meta)
                })
                .collect(),
        );
    if version >= 7 {
        resp = resp.with_protocol_type(Some(s(r.protocol_type)));
    }
    encode_response(corr, version, &resp)
}

pub async fn sync_group(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: SyncGroupRequest,
) -> Result<BytesMut, String> {
    let r = ctx
        .groups
        .sync(
            &req.group_id.0,
            req.generation_id,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        )
        .await;
    let mut resp = SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_assignment(r.assignment);
    if version >= 5 {
        resp = resp
            .with_protocol_type(Some(s(r.protocol_type)))
            .with_protocol_name(Some(s(r.protocol)));
    }
    encode_response(corr, version, &resp)
}

pub fn heartbeat(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: HeartbeatRequest,
) -> Result<BytesMut, String> {
    let error = ctx.groups.heartbeat(
        &req.group_id.0,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
    );
    encode_response(
        corr,
        version,
        &HeartbeatResponse::default().with_error_code(error),
    )
}

pub fn leave_group(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: LeaveGroupRequest,
) -> Result<BytesMut, String> {
    let group = req.group_id.0.to_string();
    let resp = if version >= 3 {
        let members = req
            .members
            .into_iter()
            .map(|m| {
                let error = ctx
                    .groups
                    .leave(&group, &m.member_id, m.group_instance_id.as_deref());
                MemberResponse::default()
                    .with_member_id(m.member_id)
                    .with_group_instance_id(m.group_instance_id)
                    .with_error_code(error)
            })
            .collect();
        LeaveGroupResponse::default().with_members(members)
    } else {
        LeaveGroupResponse::default().with_error_code(ctx.groups.leave(
            &group,
            &req.member_id,
            None,
        ))
    };
    encode_response(corr, version, &resp)
}

/// Whether a partition exists per the metadata image: OffsetCommit and TxnOffsetCommit answer
/// UNKNOWN_TOPIC_OR_PARTITION for those that do not, as Kafka's KafkaApis.
pub(super) fn partition_exists(
    image: &sluice_replication::metadata::image::MetadataImage,
    topic: &str,
    partition: i32,
) -> bool {
    u32::try_from(partition).is_ok_and(|p| {
        image
            .topic(topic)
            .is_some_and(|t| t.partitions.contains_key(&p))
    })
}

/// The offsets of an OffsetCommit or TxnOffsetCommit whose partitions exist, as the group
/// coordinator stores them. `fields` reads a request partition's (index, offset, leader epoch,
/// metadata).
pub(super) fn existing_commits<'a, P: 'a>(
    image: &sluice_replication::metadata::image::MetadataImage,
    topics: impl IntoIterator<Item = (&'a str, &'a [P])>,
    fields: impl Fn(&P) -> (i32, i64, i32, Option<&StrBytes>),
    now: i64,
) -> Vec<(String, i32, Committed)> {
    let mut out = Vec::new();
    for (topic, partitions) in topics {
        for p in partitions {
            let (index, offset, leader_epoch, metadata) = fields(p);
            if partition_exists(image, topic, index) {
                out.push((
                    topic.to_string(),
                    index,
                    Committed {
                        offset,
                        leader_epoch,
                        metadata: metadata.map(|m| m.to_string()).unwrap_or_default(),
                        timestamp: now,
                    },
                ));
            }
        }
    }
    out
}

pub async fn offset_commit(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: OffsetCommitRequest,
) -> Result<BytesMut, String> {
    let group = req.group_id.0.to_string();
    let now = now_ms();
    // As Kafka's KafkaApis: partitions of topics that do not exist get UNKNOWN_TOPIC_OR_PARTITION
    // and are not committed; the others go to the coordinator.
    let image = ctx.quorum.image();
    let exists = |topic: &str, p: i32| partition_exists(&image, topic, p);
    let offsets = existing_commits(
        &image,
        req.topics
            .iter()
            .map(|t| (t.name.0.as_str(), &t.partitions[..])),
        |p| {
            (
                p.partition_index,
                p.committed_offset,
                p.committed_leader_epoch,
                p.committed_metadata.as_ref(),
            )
        },
        now,
    );
    let error = if offsets.is_empty() {
        code::NONE
    } else {
        ctx.groups
            .commit(
                &group,
                req.generation_id_or_member_epoch,
                &req.member_id,
                req.group_instance_id.as_deref(),
                offsets,
            )
            .await
    };
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            OffsetCommitResponseTopic::default()
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(if exists(&name, p.partition_index) {
                                    error
                                } else {
                                    code::UNKNOWN_TOPIC_OR_PARTITION
                                })
                        })
                        .collect(),
                )
                .with_name(t.name)
        })
        .collect();
    encode_response(
        corr,
        version,
        &OffsetCommitResponse::default().with_topics(topics),
    )
}

pub fn offset_fetch(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: OffsetFetchRequest,
) -> Result<BytesMut, String> {
    let group = req.group_id.0.to_string();
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partition_indexes
                    .into_iter()
                    .map(move |p| (name.clone(), p))
            })
            .collect::<Vec<_>>()
    });
    if let Some(e) = ctx.groups.owner_error(&group) {
        // The group-level error (v2+), and on every requested partition for older clients.
        let topics = wanted
            .unwrap_or_default()
            .into_iter()
            .map(|(t, p)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(s(t)))
                    .with_partitions(vec![OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(-1)
                        .with_error_code(e)])
            })
            .collect();
        return encode_response(
            corr,
            version,
            &OffsetFetchResponse::default()
                .with_error_code(e)
                .with_topics(topics),
        );
    }
    let mut by_topic: std::collections::BTreeMap<String, Vec<OffsetFetchResponsePartition>> =
        Default::default();
    // v7+ (KIP-447): a read_committed consumer asks for stable offsets only; a partition with a
    // transactional commit not settled yet answers UNSTABLE_OFFSET_COMMIT (it retries).
    let unstable = if req.require_stable {
        ctx.groups.unstable_partitions(&group)
    } else {
        Default::default()
    };
    for (topic, partition, c) in ctx.groups.fetch_offsets(&group, wanted) {
        let mut p = OffsetFetchResponsePartition::default().with_partition_index(partition);
        if unstable.contains(&(topic.clone(), partition)) {
            p = p.with_committed_offset(-1).with_error_code(super::err(
                kafka_protocol::ResponseError::UnstableOffsetCommit,
            ));
            by_topic.entry(topic).or_default().push(p);
            continue;
        }
        p = match c {
            Some(c) => {
                let mut p = p
                    .with_committed_offset(c.offset)
                    .with_metadata(Some(s(c.metadata)));
                if version >= 5 {
                    p = p.with_committed_leader_epoch(c.leader_epoch);
                }
                p
            }
            None => p.with_committed_offset(-1).with_metadata(Some(s(""))),
        };
        by_topic.entry(topic).or_default().push(p);
    }
    let topics = by_topic
        .into_iter()
        .map(|(t, ps)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(ps)
        })
        .collect();
    encode_response(
        corr,
        version,
        &OffsetFetchResponse::default().with_topics(topics),
    )
}

pub fn list_groups(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    _req: ListGroupsRequest,
) -> Result<BytesMut, String> {
    let groups = ctx
        .groups
        .list()
        .into_iter()
        .map(|(g, ptype, state)| {
            let mut l = ListedGroup::default()
                .with_group_id(GroupId(s(g)))
                .with_protocol_type(s(ptype));
            if version >= 4 {
                l = l.with_group_state(s(state.name()));
            }
            l
        })
        .collect();
    encode_response(
        corr,
        version,
        &ListGroupsResponse::default().with_groups(groups),
    )
}

pub async fn delete_groups(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: kafka_protocol::messages::DeleteGroupsRequest,
) -> Result<BytesMut, String> {
    use kafka_protocol::messages::delete_groups_response::{
        DeletableGroupResult, DeleteGroupsResponse,
    };
    let mut results = Vec::with_capacity(req.groups_names.len());
    for g in req.groups_names {
        let error = ctx.groups.delete_group(&g.0).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(error),
        );
    }
    encode_response(
        corr,
        version,
        &DeleteGroupsResponse::default().with_results(results),
    )
}

pub async fn offset_delete(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: kafka_protocol::messages::OffsetDeleteRequest,
) -> Result<BytesMut, String> {
    use kafka_protocol::messages::offset_delete_response::{
        OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
    };
    let wanted: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    let resp = match ctx.groups.delete_offsets(&req.group_id.0, wanted).await {
        Err(error) => OffsetDeleteResponse::default().with_error_code(error),
        Ok(codes) => {
            let mut codes = codes.into_iter();
            OffsetDeleteResponse::default().with_topics(
                req.topics
                    .into_iter()
                    .map(|t| {
                        let partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(codes.next().unwrap_or(0))
                            })
                            .collect();
                        OffsetDeleteResponseTopic::default()
                            .with_name(t.name)
                            .with_partitions(partitions)
                    })
                    .collect(),
            )
        }
    };
    encode_response(corr, version, &resp)
}

pub fn describe_groups(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: DescribeGroupsRequest,
) -> Result<BytesMut, String> {
    let groups = req
        .groups
        .into_iter()
        .map(|g| {
            let d = DescribedGroup::default().with_group_id(g.clone());
            if let Some(e) = ctx.groups.owner_error(&g.0) {
                return d.with_error_code(e);
            }
            match ctx.groups.describe(&g.0) {
                None => d.with_group_state(s("Dead")),
                Some((state, ptype, protocol, members)) => d
                    .with_group_state(s(state.name()))
                    .with_protocol_type(s(ptype))
                    .with_protocol_data(s(protocol.clone()))
                    .with_members(
                        members
                            .into_iter()
                            .map(|m| {
                                let meta = m
                                    .protocols
                                    .iter()
                                    .find(|(n, _)| *n == protocol)
                                    .map(|(_, b)| b.clone())
                                    .unwrap_or_default();
                                DescribedGroupMember::default()
                                    .with_member_id(s(m.id))
                                    .with_group_instance_id(if version >= 4 {
                                        m.instance_id.map(s)
                                    } else {
                                        None
                                    })
                                    .with_client_id(s(m.client_id))
                                    .with_client_host(s(m.client_host))
                                    .with_member_metadata(meta)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    encode_response(
        corr,
        version,
        &DescribeGroupsResponse::default().with_groups(groups),
    )
}
