//! `sluice.v1.Groups`: operators' view of consumer groups — list, describe, lag, reset offsets,
//! delete. The groups themselves are formed by Kafka clients through the Kafka listener.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_proto::v1::{self as pb, groups_server::Groups};
use tonic::{Request, Response, Status};

use crate::groups::{code, decode_assignment, Committed, GroupCoordinator};
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
    fn state_of(
        &self,
        group: &str,
    ) -> Result<(String, String, String, Vec<crate::groups::Member>), Status> {
        match self.groups.describe(group) {
            Some((state, ptype, protocol, members)) => {
                Ok((state.name().to_string(), ptype, protocol, members))
            }
            None => Err(Status::not_found(format!("unknown group {group:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
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
        for p in &topic.partitions {
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
            match self.groups.commit(&r.group, -1, "", offsets).await {
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
