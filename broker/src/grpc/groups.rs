//! `sluice.v1.Groups`: consumer groups over gRPC — membership with server-side (range)
//! assignment and offset commits for gRPC consumers, and the operators' view: list, describe,
//! lag, reset offsets, delete. Kafka clients form groups through the Kafka listener; both land in
//! the same [`GroupCoordinator`], so a group is the same group from either side.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_proto::v1::{self as pb, groups_server::Groups};
use tonic::{Request, Response, Status};

use crate::groups::consumer_protocol::{encode_subscription, range_assign, RANGE};
use crate::groups::{code, decode_assignment, Committed, GroupCoordinator, JoinRequest};
use crate::topics::TopicManager;

pub struct GroupsService {
    pub groups: Arc<GroupCoordinator>,
    pub topics: Arc<TopicManager>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl GroupsService {
    /// Refuses unless this broker coordinates `group` (a status naming the coordinator, so
    /// clients go there).
    fn here(&self, group: &str) -> Result<(), Status> {
        match self.groups.owner_error(group) {
            None => Ok(()),
            Some(code) => Err(coordinator_status(&self.topics, code, group)),
        }
    }

    fn state_of(
        &self,
        group: &str,
    ) -> Result<(String, String, String, Vec<crate::groups::Member>), Status> {
        self.here(group)?;
        match self.groups.describe(group) {
            Some((state, ptype, protocol, members)) => {
                Ok((state.name().to_string(), ptype, protocol, members))
            }
            None => Err(Status::not_found(format!("unknown group {group:?}"))),
        }
    }
}

/// NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS for `group`, as a status.
fn coordinator_status(topics: &TopicManager, code: i16, group: &str) -> Status {
    super::status::coordinator_status(
        topics,
        code,
        &format!("group {group:?}"),
        crate::groups::offsets_log::TOPIC,
        crate::groups::offsets_log::partition_for(group),
    )
}

/// The status for a group-protocol error code on a member's request.
fn member_status(code: i16, what: &str) -> Status {
    match code {
        code::REBALANCE_IN_PROGRESS => Status::aborted(format!(
            "{what}: the group is rebalancing; rejoin with the same member id"
        )),
        code::ILLEGAL_GENERATION => Status::aborted(format!(
            "{what}: the group has moved to a newer generation; rejoin"
        )),
        code::UNKNOWN_MEMBER_ID => Status::aborted(format!(
            "{what}: unknown member (its session may have expired); rejoin"
        )),
        code::INVALID_GROUP_ID => Status::invalid_argument(format!("{what}: empty group id")),
        code::INVALID_SESSION_TIMEOUT => {
            Status::invalid_argument(format!("{what}: session_timeout_ms must be 1000..=1800000"))
        }
        code::INCONSISTENT_GROUP_PROTOCOL => Status::failed_precondition(format!(
            "{what}: the group's members use a protocol that does not include \"range\""
        )),
        code::KAFKA_STORAGE_ERROR => {
            Status::unavailable(format!("{what}: could not write __consumer_offsets"))
        }
        code::NOT_COORDINATOR => Status::failed_precondition(format!(
            "{what}: this broker is not the group's coordinator"
        )),
        code::COORDINATOR_LOAD_IN_PROGRESS | code::COORDINATOR_NOT_AVAILABLE => {
            Status::unavailable(format!(
                "{what}: the group's coordinator is not ready; retry"
            ))
        }
        other => Status::internal(format!("{what}: Kafka error {other}")),
    }
}

/// How many join/sync rounds one JoinGroup call rides through before giving up; each round ends
/// in a rebalance that another member started, so this only trips under constant churn.
const MAX_JOIN_ROUNDS: usize = 10;

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn join_group(
        &self,
        req: Request<pb::JoinGroupRequest>,
    ) -> Result<Response<pb::JoinGroupResponse>, Status> {
        let host = req
            .remote_addr()
            .map_or_else(String::new, |a| format!("/{}", a.ip()));
        let r = req.into_inner();
        if r.topics.is_empty() {
            return Err(Status::invalid_argument("subscribe to at least one topic"));
        }
        let ms = |v: u32, default: u64| {
            std::time::Duration::from_millis(if v == 0 { default } else { u64::from(v) })
        };
        let subscription = encode_subscription(&r.topics.iter().cloned().collect());
        let mut member_id = r.member_id;
        for _ in 0..MAX_JOIN_ROUNDS {
            let joined = self
                .groups
                .join(JoinRequest {
                    group: r.group.clone(),
                    member_id: member_id.clone(),
                    instance_id: r.group_instance_id.clone(),
                    client_id: r.client_id.clone(),
                    client_host: host.clone(),
                    protocol_type: "consumer".into(),
                    protocols: vec![(RANGE.into(), subscription.clone())],
                    session_timeout: ms(r.session_timeout_ms, 45_000),
                    rebalance_timeout: ms(r.rebalance_timeout_ms, 60_000),
                })
                .await;
            match joined.error {
                code::NONE => {}
                // Forgotten (expired) members start over with a new id, as Kafka clients do.
                code::UNKNOWN_MEMBER_ID if !member_id.is_empty() => {
                    member_id.clear();
                    continue;
                }
                code::REBALANCE_IN_PROGRESS => continue,
                c @ (code::NOT_COORDINATOR | code::COORDINATOR_LOAD_IN_PROGRESS) => {
                    return Err(coordinator_status(&self.topics, c, &r.group))
                }
                other => return Err(member_status(other, "join")),
            }
            member_id = joined.member_id.clone();
            // The leader assigns for everyone; the others wait in SyncGroup for it.
            let assignments = if joined.leader == joined.member_id {
                let topics = &self.topics;
                let members: Vec<(String, bytes::Bytes)> = joined
                    .members
                    .iter()
                    .map(|(id, _, meta)| (id.clone(), meta.clone()))
                    .collect();
                range_assign(&members, |t| topics.get(t).ok().map(|t| t.partition_count))
            } else {
                Vec::new()
            };
            let synced = self
                .groups
                .sync(
                    &r.group,
                    joined.generation,
                    &member_id,
                    r.group_instance_id.as_deref(),
                    assignments,
                )
                .await;
            match synced.error {
                code::NONE => {
                    return Ok(Response::new(pb::JoinGroupResponse {
                        member_id,
                        generation: joined.generation,
                        leader_id: joined.leader,
                        assignment: decode_assignment(&synced.assignment)
                            .into_iter()
                            .map(|(topic, p)| pb::TopicPartition {
                                topic,
                                partition: p.max(0) as u32,
                            })
                            .collect(),
                    }))
                }
                code::UNKNOWN_MEMBER_ID => member_id.clear(),
                // A rebalance started between join and sync: go round again.
                _ => {}
            }
        }
        Err(Status::unavailable(format!(
            "group {:?} kept rebalancing; try again",
            r.group
        )))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let status = match self
            .groups
            .heartbeat(&r.group, r.generation, &r.member_id, None)
        {
            c @ (code::NOT_COORDINATOR | code::COORDINATOR_LOAD_IN_PROGRESS) => {
                return Err(coordinator_status(&self.topics, c, &r.group))
            }
            code::NONE => pb::MemberStatus::Ok,
            code::REBALANCE_IN_PROGRESS => pb::MemberStatus::Rebalance,
            _ => pb::MemberStatus::Fenced,
        };
        Ok(Response::new(pb::HeartbeatResponse {
            status: status as i32,
        }))
    }

    async fn leave_group(
        &self,
        req: Request<pb::LeaveGroupRequest>,
    ) -> Result<Response<pb::LeaveGroupResponse>, Status> {
        let r = req.into_inner();
        match self.groups.leave(&r.group, &r.member_id, None) {
            code::NONE => Ok(Response::new(pb::LeaveGroupResponse {})),
            c @ (code::NOT_COORDINATOR | code::COORDINATOR_LOAD_IN_PROGRESS) => {
                Err(coordinator_status(&self.topics, c, &r.group))
            }
            _ => Err(Status::not_found(format!(
                "group {:?} has no member {:?}",
                r.group, r.member_id
            ))),
        }
    }

    async fn commit_offsets(
        &self,
        req: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let r = req.into_inner();
        if r.group.is_empty() {
            return Err(Status::invalid_argument("empty group id"));
        }
        let mut offsets = Vec::with_capacity(r.offsets.len());
        for o in r.offsets {
            let offset = i64::try_from(o.offset)
                .map_err(|_| Status::invalid_argument("offset out of range"))?;
            offsets.push((
                o.topic,
                o.partition as i32,
                Committed {
                    offset,
                    leader_epoch: -1,
                    metadata: o.metadata,
                    timestamp: now_ms(),
                },
            ));
        }
        match self
            .groups
            .commit(&r.group, r.generation, &r.member_id, None, offsets)
            .await
        {
            code::NONE => Ok(Response::new(pb::CommitOffsetsResponse {})),
            c @ (code::NOT_COORDINATOR | code::COORDINATOR_LOAD_IN_PROGRESS) => {
                Err(coordinator_status(&self.topics, c, &r.group))
            }
            other => Err(member_status(other, "commit")),
        }
    }

    async fn fetch_offsets(
        &self,
        req: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let r = req.into_inner();
        self.here(&r.group)?;
        let wanted = (!r.partitions.is_empty()).then(|| {
            r.partitions
                .into_iter()
                .map(|tp| (tp.topic, tp.partition as i32))
                .collect()
        });
        let offsets = self
            .groups
            .fetch_offsets(&r.group, wanted)
            .into_iter()
            .map(|(topic, p, c)| pb::CommittedOffset {
                topic,
                partition: p.max(0) as u32,
                offset: c.as_ref().and_then(|c| u64::try_from(c.offset).ok()),
                metadata: c.map(|c| c.metadata).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        _req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let mut groups: Vec<pb::GroupSummary> = self
            .groups
            .list()
            .into_iter()
            .map(|(group, protocol_type, state)| pb::GroupSummary {
                members: self.groups.describe(&group).map_or(0, |d| d.3.len() as u32),
                group,
                state: state.name().into(),
                protocol_type,
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        req: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let group = req.into_inner().group;
        let (state, protocol_type, protocol, members) = self.state_of(&group)?;
        let members = members
            .into_iter()
            .map(|m| pb::GroupMember {
                assignment: decode_assignment(&m.assignment)
                    .into_iter()
                    .map(|(topic, p)| pb::TopicPartition {
                        topic,
                        partition: p.max(0) as u32,
                    })
                    .collect(),
                member_id: m.id,
                group_instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
            })
            .collect();
        Ok(Response::new(pb::DescribeGroupResponse {
            group,
            state,
            protocol_type,
            protocol,
            members,
        }))
    }

    async fn group_lag(
        &self,
        req: Request<pb::GroupLagRequest>,
    ) -> Result<Response<pb::GroupLagResponse>, Status> {
        let group = req.into_inner().group;
        let (state, _, _, members) = self.state_of(&group)?;
        let mut owners: BTreeMap<(String, i32), String> = BTreeMap::new();
        for m in &members {
            for tp in decode_assignment(&m.assignment) {
                owners.insert(tp, m.id.clone());
            }
        }
        let mut rows: BTreeMap<(String, i32), Option<i64>> =
            owners.keys().map(|k| (k.clone(), None)).collect();
        for (t, p, c) in self.groups.fetch_offsets(&group, None) {
            rows.insert((t, p), c.map(|c| c.offset));
        }
        let mut total = 0u64;
        let partitions = rows
            .into_iter()
            .map(|((topic, partition), committed)| {
                let end = u32::try_from(partition)
                    .ok()
                    .and_then(|i| self.topics.partition(&topic, i).ok())
                    .map_or(0, |p| p.high_watermark());
                let committed = committed.filter(|o| *o >= 0).map(|o| o as u64);
                let lag = committed.map(|c| end.saturating_sub(c));
                total += lag.unwrap_or(0);
                pb::PartitionLag {
                    owner: owners.get(&(topic.clone(), partition)).cloned(),
                    topic,
                    partition: partition.max(0) as u32,
                    committed_offset: committed,
                    log_end_offset: end,
                    lag,
                }
            })
            .collect();
        Ok(Response::new(pb::GroupLagResponse {
            group,
            state,
            partitions,
            total_lag: total,
        }))
    }

    async fn reset_offsets(
        &self,
        req: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        let r = req.into_inner();
        self.here(&r.group)?;
        if !self.groups.is_inactive(&r.group) {
            return Err(Status::failed_precondition(format!(
                "group {:?} has active members: stop its consumers before resetting offsets",
                r.group
            )));
        }
        let topic = self.topics.get(&r.topic)?;
        let committed: BTreeMap<i32, i64> = self
            .groups
            .fetch_offsets(&r.group, None)
            .into_iter()
            .filter(|(t, _, _)| *t == r.topic)
            .filter_map(|(_, p, c)| c.map(|c| (p, c.offset)))
            .collect();
        let mut plan = Vec::new();
        for p in topic.partitions.values() {
            let (start, end) = (p.log().log_start_offset(), p.high_watermark());
            let target: u64 = match r.to {
                Some(pb::reset_offsets_request::To::ToEarliest(_)) => start,
                Some(pb::reset_offsets_request::To::ToLatest(_)) => end,
                Some(pb::reset_offsets_request::To::ToOffset(o)) => o,
                Some(pb::reset_offsets_request::To::ShiftBy(n)) => {
                    let current = committed
                        .get(&(p.index() as i32))
                        .copied()
                        .unwrap_or(end as i64);
                    current.saturating_add(n).max(0) as u64
                }
                Some(pb::reset_offsets_request::To::ToDatetimeMs(ts)) => {
                    let found =
                        tokio::task::block_in_place(|| p.log().offset_for_timestamp(ts, Some(end)))
                            .map_err(|e| Status::internal(e.to_string()))?;
                    found.map_or(end, |(o, _)| o)
                }
                None => return Err(Status::invalid_argument("say where to reset to")),
            };
            // As kafka-consumer-groups does: clamp into the partition's valid range.
            plan.push(pb::PartitionOffset {
                partition: p.index(),
                offset: target.clamp(start, end),
            });
        }
        if r.execute {
            let offsets = plan
                .iter()
                .map(|o| {
                    (
                        r.topic.clone(),
                        o.partition as i32,
                        Committed {
                            offset: o.offset as i64,
                            leader_epoch: -1,
                            metadata: String::new(),
                            timestamp: now_ms(),
                        },
                    )
                })
                .collect();
            match self.groups.commit(&r.group, -1, "", None, offsets).await {
                code::NONE => {}
                other => {
                    return Err(Status::failed_precondition(format!(
                        "could not commit offsets: Kafka error {other}"
                    )))
                }
            }
        }
        Ok(Response::new(pb::ResetOffsetsResponse { offsets: plan }))
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let group = req.into_inner().group;
        self.here(&group)?;
        match self.groups.delete_group(&group).await {
            code::NONE => Ok(Response::new(pb::DeleteGroupResponse {})),
            code::GROUP_ID_NOT_FOUND => Err(Status::not_found(format!("unknown group {group:?}"))),
            code::NON_EMPTY_GROUP => Err(Status::failed_precondition(format!(
                "group {group:?} has active members"
            ))),
            other => Err(Status::internal(format!(
                "could not delete group: Kafka error {other}"
            ))),
        }
    }
}
