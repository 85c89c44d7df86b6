//! Client side: where each partition's leader is, so `sluice produce` and `sluice consume` send
//! to the broker that leads, as Kafka clients do, whichever broker they were pointed at.
//!
//! The map comes from the broker given with `--broker`: DescribeTopic (leader per partition),
//! DescribeCluster (each broker's advertised gRPC address) and DescribeQuorum (which broker
//! answered: that one is reached at the address the user gave, which works even when its
//! advertised address does not, e.g. a wildcard listen address). A refusal that names another
//! leader (FAILED_PRECONDITION with `sluice-leader-id`) or an unreachable leader makes the caller
//! reload the map and try again.

use std::collections::HashMap;
use std::time::Duration;

use sluice_proto::v1 as pb;
use tonic::transport::Channel;

use crate::{admin, channel, status_message};

/// How long a command keeps looking for a partition's leader before it gives up.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Leaders {
    bootstrap: String,
    pub topic: pb::TopicDescription,
    /// Broker id -> gRPC address to use.
    addresses: HashMap<i32, String>,
}

impl Leaders {
    pub async fn load(bootstrap: &str, topic: &str) -> Result<Leaders, String> {
        let mut a = admin(bootstrap).await?;
        let d = a
            .describe_topic(pb::DescribeTopicRequest {
                name: topic.to_string(),
            })
            .await
            .map_err(status_message)?
            .into_inner()
            .topic
            .ok_or("broker returned no topic description")?;
        let (me, brokers) = brokers(&mut a).await?;
        let mut addresses: HashMap<i32, String> = brokers
            .into_iter()
            .map(|b| (b.id, b.grpc_address))
            .collect();
        addresses.insert(me, bootstrap.to_string());
        Ok(Leaders {
            bootstrap: bootstrap.to_string(),
            topic: d,
            addresses,
        })
    }

    pub fn reload_source(&self) -> &str {
        &self.bootstrap
    }

    pub fn partition_count(&self) -> u32 {
        self.topic.partitions.len() as u32
    }

    /// The leader's broker id and address, if it has one.
    pub fn leader(&self, partition: u32) -> Option<(i32, String)> {
        let p = self.topic.partitions.get(partition as usize)?;
        if p.leader < 0 {
            return None;
        }
        Some((p.leader, self.addresses.get(&p.leader)?.clone()))
    }

    pub async fn channel_to_leader(&self, partition: u32) -> Result<Channel, String> {
        let (id, addr) = self
            .leader(partition)
            .ok_or_else(|| format!("partition {partition} of {} has no leader", self.topic.name))?;
        channel(&addr)
            .await
            .map_err(|e| format!("leader {id} of partition {partition}: {e}"))
    }
}

/// A refusal after which the map should be reloaded and the request sent again: the broker does
/// not lead (any more).
pub fn is_leadership_change(s: &tonic::Status) -> bool {
    s.metadata()
        .get(sluice_proto::routing::LEADER_ID_METADATA)
        .is_some()
}

/// The id of the broker `a` talks to, and every broker of the cluster.
async fn brokers(
    a: &mut sluice_proto::v1::admin_client::AdminClient<Channel>,
) -> Result<(i32, Vec<pb::BrokerDescription>), String> {
    let cluster = a
        .describe_cluster(pb::DescribeClusterRequest {})
        .await
        .map_err(status_message)?
        .into_inner();
    let me = a
        .describe_quorum(pb::DescribeQuorumRequest {})
        .await
        .map_err(status_message)?
        .into_inner()
        .node_id as i32;
    Ok((me, cluster.brokers))
}

/// The gRPC address of `group`'s coordinator (the leader of its `__consumer_offsets`
/// partition), or `bootstrap` while that is not known yet (the topic is created on first use).
pub async fn coordinator(bootstrap: &str, group: &str) -> String {
    let p = sluice_proto::routing::group_partition(group);
    leader_or_bootstrap(bootstrap, sluice_proto::routing::CONSUMER_OFFSETS_TOPIC, p).await
}

/// The gRPC address of a transactional id's coordinator (the leader of its
/// `__transaction_state` partition), or `bootstrap` while that is not known.
pub async fn transaction_coordinator(bootstrap: &str, transactional_id: &str) -> String {
    let p = sluice_proto::routing::transaction_partition(transactional_id);
    leader_or_bootstrap(bootstrap, sluice_proto::routing::TRANSACTION_STATE_TOPIC, p).await
}

async fn leader_or_bootstrap(bootstrap: &str, topic: &str, partition: u32) -> String {
    match Leaders::load(bootstrap, topic).await {
        Ok(l) => l
            .leader(partition)
            .map_or_else(|| bootstrap.to_string(), |(_, a)| a),
        Err(_) => bootstrap.to_string(),
    }
}

/// Every unfenced broker but the one at `bootstrap`, as (id, gRPC address): a listing each
/// broker answers for its own share (the groups or transactions it coordinates) asks them all.
pub async fn other_brokers(bootstrap: &str) -> Result<Vec<(i32, String)>, String> {
    let (me, brokers) = brokers(&mut admin(bootstrap).await?).await?;
    Ok(brokers
        .into_iter()
        .filter(|b| b.id != me && !b.fenced)
        .map(|b| (b.id, b.grpc_address))
        .collect())
}

/// An offset of a partition (`spec`: earliest, or latest = its high watermark), asked of its
/// leader.
pub async fn leader_offset(
    leaders: &Leaders,
    topic: &str,
    partition: u32,
    spec: pb::OffsetSpec,
) -> Result<u64, String> {
    leader_offset_at(
        leaders,
        topic,
        partition,
        spec,
        pb::IsolationLevel::ReadUncommitted,
    )
    .await
}

/// As [`leader_offset`]; with READ_COMMITTED, latest is the last stable offset (below any open
/// transaction), as Kafka's ListOffsets with `isolation_level=1`.
pub async fn leader_offset_at(
    leaders: &Leaders,
    topic: &str,
    partition: u32,
    spec: pb::OffsetSpec,
    isolation: pb::IsolationLevel,
) -> Result<u64, String> {
    let mut c = sluice_proto::v1::consumer_client::ConsumerClient::new(
        leaders.channel_to_leader(partition).await?,
    );
    let r = c
        .list_offsets(pb::ListOffsetsRequest {
            topic: topic.to_string(),
            partition,
            spec: spec as i32,
            timestamp_ms: 0,
            isolation_level: isolation as i32,
        })
        .await
        .map_err(status_message)?
        .into_inner();
    Ok(r.offset.unwrap_or(0))
}
