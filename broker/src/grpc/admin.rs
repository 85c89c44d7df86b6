//! `sluice.v1.Admin`: topic lifecycle and configuration.

use std::sync::Arc;

use sluice_proto::v1::{self as pb, admin_server::Admin};
use tonic::{Request, Response, Status};

use sluice_replication::controller::Reassignment;
use sluice_replication::metadata::MetadataImage;

use super::status;
use crate::requests::admin::ongoing_reassignments;
use crate::topics::TopicManager;

pub struct AdminService {
    pub admin: Arc<crate::requests::admin::Admin>,
    pub quorum: sluice_replication::controller::driver::QuorumHandle,
    pub voters: Vec<(u64, String)>,
}

/// A topic as the metadata image describes it (every partition, with leader, replicas and
/// ISR); offsets and sizes come from this broker's replica where it holds one (0 elsewhere).
pub fn describe(
    image: &MetadataImage,
    topics: &TopicManager,
    name: &str,
) -> Result<pb::TopicDescription, Status> {
    let t = image
        .topic(name)
        .ok_or_else(|| Status::not_found(format!("unknown topic {name:?}")))?;
    let local = topics.get(name).ok().filter(|l| l.id == t.id);
    let configs = match &local {
        Some(l) => l.settings().describe().into_iter().collect(),
        None => Default::default(),
    };
    Ok(pb::TopicDescription {
        name: t.name.clone(),
        replication_factor: t
            .partitions
            .values()
            .next()
            .map_or(1, |p| (p.replicas.len() - p.removing.len()) as u32),
        partitions: t
            .partitions
            .iter()
            .map(|(index, reg)| {
                let replica = local.as_ref().and_then(|l| l.partitions.get(index));
                pb::PartitionDescription {
                    partition: *index,
                    leader: reg.leader,
                    replicas: reg.replicas.clone(),
                    isr: reg.isr.clone(),
                    log_start_offset: replica.map_or(0, |p| p.log().log_start_offset()),
                    log_end_offset: replica.map_or(0, |p| p.log().log_end_offset()),
                    high_watermark: replica.map_or(0, |p| p.high_watermark()),
                    size_bytes: replica.map_or(0, |p| p.log().size_bytes()),
                    adding: reg.adding.clone(),
                    removing: reg.removing.clone(),
                    leader_epoch: reg.leader_epoch,
                }
            })
            .collect(),
        configs,
    })
}

impl AdminService {
    fn describe(&self, name: &str) -> Result<pb::TopicDescription, Status> {
        describe(&self.quorum.image(), &self.admin.topics, name)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn describe_quorum(
        &self,
        _req: Request<pb::DescribeQuorumRequest>,
    ) -> Result<Response<pb::DescribeQuorumResponse>, Status> {
        let s = self.quorum.status();
        Ok(Response::new(pb::DescribeQuorumResponse {
            node_id: s.node_id,
            leader_id: s.leader.unwrap_or(0),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            voters: self
                .voters
                .iter()
                .map(|(id, address)| pb::QuorumVoter {
                    id: *id,
                    address: address.clone(),
                    matched_index: s
                        .voter_progress
                        .iter()
                        .find(|(v, _)| v == id)
                        .map(|(_, m)| *m),
                })
                .collect(),
        }))
    }

    async fn describe_cluster(
        &self,
        _req: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        let image = self.quorum.image();
        let brokers = image
            .brokers
            .values()
            .map(|b| {
                let (mut leaders, mut replicas) = (0, 0);
                for (_, _, p) in image.partitions() {
                    leaders += u32::from(p.leader == b.broker_id);
                    replicas += u32::from(p.replicas.contains(&b.broker_id));
                }
                pb::BrokerDescription {
                    id: b.broker_id,
                    kafka_address: b.endpoints.kafka.clone(),
                    grpc_address: b.endpoints.grpc.clone(),
                    controller_address: b.endpoints.controller.clone(),
                    rack: b.rack.clone(),
                    fenced: b.fenced,
                    in_controlled_shutdown: b.in_controlled_shutdown,
                    broker_epoch: b.broker_epoch,
                    leaders,
                    replicas,
                }
            })
            .collect();
        Ok(Response::new(pb::DescribeClusterResponse {
            controller_id: self.quorum.status().leader.unwrap_or(0),
            metadata_offset: image.offset,
            brokers,
        }))
    }

    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let r = req.into_inner();
        self.admin
            .create_topic(
                &r.name,
                r.partitions,
                r.replication_factor,
                r.configs.into_iter().collect(),
                false,
            )
            .await?;
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(self.describe(&r.name)?),
        }))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = req.into_inner().name;
        self.admin.delete_topic(&name).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _req: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self
            .quorum
            .image()
            .topics
            .values()
            .map(|t| pb::TopicSummary {
                name: t.name.clone(),
                partitions: t.partitions.len() as u32,
                replication_factor: t
                    .partitions
                    .values()
                    .next()
                    .map_or(1, |p| (p.replicas.len() - p.removing.len()) as u32),
            })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        req: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let name = req.into_inner().name;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(self.describe(&name)?),
        }))
    }

    async fn alter_partition_reassignments(
        &self,
        req: Request<pb::AlterPartitionReassignmentsRequest>,
    ) -> Result<Response<pb::AlterPartitionReassignmentsResponse>, Status> {
        let req = req.into_inner();
        if let Some(rate) = req.throttle_bytes_per_sec {
            let value = (rate > 0).then(|| rate.to_string());
            self.admin
                .alter_broker_configs(
                    None,
                    [(
                        crate::replica_fetch::THROTTLED_RATE_CONFIG.to_string(),
                        value,
                    )]
                    .into(),
                )
                .await?;
        }
        let items = req.reassignments;
        let calls = items
            .iter()
            .map(|r| Reassignment {
                topic: r.topic.clone(),
                partition: r.partition,
                target: (!r.cancel).then(|| r.replicas.clone()),
            })
            .collect();
        let answers = self.admin.alter_reassignments(calls).await?;
        let results = items
            .into_iter()
            .zip(answers)
            .map(|(r, a)| {
                let (code, message) = match a {
                    Ok(()) => (0, String::new()),
                    Err(e) => {
                        let st = status::from_controller_error(e);
                        (st.code() as i32, st.message().to_string())
                    }
                };
                pb::ReassignmentResult {
                    topic: r.topic,
                    partition: r.partition,
                    code,
                    message,
                }
            })
            .collect();
        Ok(Response::new(pb::AlterPartitionReassignmentsResponse {
            results,
        }))
    }

    async fn list_partition_reassignments(
        &self,
        req: Request<pb::ListPartitionReassignmentsRequest>,
    ) -> Result<Response<pb::ListPartitionReassignmentsResponse>, Status> {
        let topics = req.into_inner().topics;
        let reassignments = ongoing_reassignments(&self.quorum.image(), None)
            .into_iter()
            .filter(|r| topics.is_empty() || topics.contains(&r.topic))
            .map(|r| pb::OngoingReassignment {
                topic: r.topic,
                partition: r.partition,
                replicas: r.replicas,
                adding: r.adding,
                removing: r.removing,
            })
            .collect();
        Ok(Response::new(pb::ListPartitionReassignmentsResponse {
            reassignments,
        }))
    }

    async fn alter_topic_config(
        &self,
        req: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::AlterTopicConfigResponse>, Status> {
        let r = req.into_inner();
        self.admin
            .alter_topic_configs(&r.name, r.set.into_iter().collect(), &r.delete)
            .await?;
        Ok(Response::new(pb::AlterTopicConfigResponse {
            topic: Some(self.describe(&r.name)?),
        }))
    }
}
