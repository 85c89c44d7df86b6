//! `sluice.v1.Admin`: topic lifecycle and configuration.

use std::sync::Arc;

use sluice_proto::v1::{self as pb, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::topics::{Topic, TopicManager};

pub struct AdminService {
    pub topics: Arc<TopicManager>,
    pub quorum: sluice_replication::controller::driver::QuorumHandle,
    pub voters: Vec<(u64, String)>,
}

pub fn describe(topic: &Topic) -> pb::TopicDescription {
    pb::TopicDescription {
        name: topic.name.clone(),
        replication_factor: topic.replication_factor,
        partitions: topic
            .partitions
            .iter()
            .map(|p| pb::PartitionDescription {
                partition: p.index(),
                leader: p.leader(),
                replicas: p.replicas(),
                isr: p.isr(),
                log_start_offset: p.log().log_start_offset(),
                log_end_offset: p.log().log_end_offset(),
                high_watermark: p.high_watermark(),
                size_bytes: p.log().size_bytes(),
            })
            .collect(),
        configs: topic.settings().describe().into_iter().collect(),
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
                })
                .collect(),
        }))
    }

    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let r = req.into_inner();
        let topics = self.topics.clone();
        let topic = tokio::task::spawn_blocking(move || {
            topics.create(
                &r.name,
                r.partitions,
                r.replication_factor,
                r.configs.into_iter().collect(),
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(describe(&topic)),
        }))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = req.into_inner().name;
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || topics.delete(&name))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _req: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self
            .topics
            .list()
            .iter()
            .map(|t| pb::TopicSummary {
                name: t.name.clone(),
                partitions: t.partitions.len() as u32,
                replication_factor: t.replication_factor,
            })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        req: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let topic = self.topics.get(&req.into_inner().name)?;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(describe(&topic)),
        }))
    }

    async fn alter_topic_config(
        &self,
        req: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::AlterTopicConfigResponse>, Status> {
        let r = req.into_inner();
        let topics = self.topics.clone();
        let topic = tokio::task::spawn_blocking(move || {
            topics.alter_config(&r.name, r.set.into_iter().collect(), &r.delete)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::AlterTopicConfigResponse {
            topic: Some(describe(&topic)),
        }))
    }
}
