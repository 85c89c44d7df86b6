//! Transaction markers: the coordinator's side (send a COMMIT or ABORT marker to the leader of
//! every partition in a transaction, Kafka's `TransactionMarkerChannelManager`) and the partition
//! leader's side (write them, Kafka's WriteTxnMarkers handler).
//!
//! Leaders are found in the metadata image; markers for partitions led here are written directly,
//! the others go over `BrokerInternal/WriteTxnMarkers` (one call per leader broker). What could
//! not be written is returned so the coordinator retries it; a partition whose topic no longer
//! exists is done (Kafka skips deleted partitions).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::internal::v1::broker_internal_client::BrokerInternalClient;
use sluice_proto::internal::v1::{
    TxnMarkerPartition, TxnMarkerResult, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use sluice_replication::controller::driver::QuorumHandle;
use tonic::transport::Channel;

use crate::groups::GroupCoordinator;
use crate::topics::{TopicError, TopicManager};

/// How long a marker write waits for the ISR.
const MARKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Kafka codes a marker write answers.
mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const TRANSACTION_COORDINATOR_FENCED: i16 = 52;
}

/// One transaction's markers.
#[derive(Debug, Clone)]
pub struct MarkerBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub coordinator_epoch: i32,
    pub commit: bool,
}

/// Writes markers to partitions this broker leads.
pub struct LocalMarkers {
    pub topics: Arc<TopicManager>,
    pub groups: Arc<GroupCoordinator>,
}

impl LocalMarkers {
    /// Writes `m` to each partition, all at once (each waits for its ISR): its Kafka code and
    /// message.
    pub async fn write(
        &self,
        m: &MarkerBatch,
        partitions: &[(String, u32)],
    ) -> Vec<(String, u32, i16, String)> {
        let writes = partitions.iter().map(|(topic, index)| async move {
            let (code, message) = self.write_one(m, topic, *index).await;
            if code != code::NONE {
                tracing::debug!(topic, partition = index, producer_id = m.producer_id, code, %message, "transaction marker not written");
            }
            (topic.clone(), *index, code, message)
        });
        futures::future::join_all(writes).await
    }

    async fn write_one(&self, m: &MarkerBatch, topic: &str, index: u32) -> (i16, String) {
        let p = match self.topics.partition(topic, index) {
            Err(TopicError::UnknownTopic(_) | TopicError::UnknownPartition { .. }) => {
                return (code::UNKNOWN_TOPIC_OR_PARTITION, "no such partition".into())
            }
            Err(e) => return (code::NOT_LEADER_OR_FOLLOWER, e.to_string()),
            Ok(p) => p,
        };
        let marker = sluice_log::Marker {
            commit: m.commit,
            coordinator_epoch: m.coordinator_epoch,
        };
        match p
            .append_marker(m.producer_id, m.producer_epoch, marker, MARKER_TIMEOUT)
            .await
        {
            Ok(_) => {
                if topic == crate::groups::offsets_log::TOPIC {
                    self.groups
                        .complete_transaction(index, m.producer_id, m.commit);
                }
                (code::NONE, String::new())
            }
            Err(e) => (
                crate::kafka::produce::partition_error_code(&e),
                e.to_string(),
            ),
        }
    }

    /// The WriteTxnMarkers RPC.
    pub async fn serve(&self, req: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
        let m = MarkerBatch {
            producer_id: req.producer_id,
            producer_epoch: req.producer_epoch as i16,
            coordinator_epoch: req.coordinator_epoch,
            commit: req.commit,
        };
        let partitions: Vec<(String, u32)> = req
            .partitions
            .into_iter()
            .map(|p| (p.topic, p.partition))
            .collect();
        let results = self.write(&m, &partitions).await;
        WriteTxnMarkersResponse {
            results: results
                .into_iter()
                .map(|(topic, partition, code, message)| TxnMarkerResult {
                    topic,
                    partition,
                    error_code: i32::from(code),
                    error_message: message,
                })
                .collect(),
        }
    }
}

/// Sends markers to partition leaders, wherever they are.
pub struct MarkerSender {
    local: Arc<LocalMarkers>,
    quorum: QuorumHandle,
    node_id: i32,
    clients: tokio::sync::Mutex<HashMap<String, BrokerInternalClient<Channel>>>,
}

impl MarkerSender {
    pub fn new(local: Arc<LocalMarkers>, quorum: QuorumHandle, node_id: i32) -> MarkerSender {
        MarkerSender {
            local,
            quorum,
            node_id,
            clients: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Writes `m` to every partition; returns those still to do (no leader, leader unreachable
    /// or refusing for a reason that may pass). Partitions gone, or whose log has seen a newer
    /// producer epoch or coordinator, are done.
    pub async fn send(
        &self,
        m: &MarkerBatch,
        partitions: &BTreeSet<(String, i32)>,
    ) -> BTreeSet<(String, i32)> {
        let image = self.quorum.image();
        let mut by_leader: BTreeMap<i32, Vec<(String, u32)>> = BTreeMap::new();
        let mut left = BTreeSet::new();
        for (topic, p) in partitions {
            let Ok(index) = u32::try_from(*p) else {
                continue;
            };
            let Some(t) = image.topic(topic) else {
                tracing::info!(
                    topic,
                    partition = p,
                    "transaction marker skipped: the topic no longer exists"
                );
                continue;
            };
            match t.partitions.get(&index) {
                None => continue,
                Some(reg) if reg.has_leader() => by_leader
                    .entry(reg.leader)
                    .or_default()
                    .push((topic.clone(), index)),
                Some(_) => {
                    left.insert((topic.clone(), *p));
                }
            }
        }
        // Every leader at once: a transaction's latency is its slowest leader's, not their sum.
        let calls = by_leader.into_iter().map(|(leader, parts)| {
            let addr = image.broker(leader).map(|b| b.endpoints.controller.clone());
            async move {
                let results = if leader == self.node_id {
                    self.local.write(m, &parts).await
                } else {
                    match addr {
                        Some(addr) => self.remote(&addr, m, &parts).await,
                        None => Vec::new(),
                    }
                };
                (parts, results)
            }
        });
        for (parts, results) in futures::future::join_all(calls).await {
            let mut answered: BTreeSet<(String, u32)> = BTreeSet::new();
            for (topic, index, code, message) in results {
                answered.insert((topic.clone(), index));
                match code {
                    code::NONE | code::UNKNOWN_TOPIC_OR_PARTITION => {}
                    code::INVALID_PRODUCER_EPOCH | code::TRANSACTION_COORDINATOR_FENCED => {
                        tracing::warn!(topic, partition = index, producer_id = m.producer_id, %message, "transaction marker refused as stale; not retried");
                    }
                    _ => {
                        left.insert((topic, index as i32));
                    }
                }
            }
            for (topic, index) in parts {
                if !answered.contains(&(topic.clone(), index)) {
                    left.insert((topic, index as i32));
                }
            }
        }
        left
    }

    async fn remote(
        &self,
        addr: &str,
        m: &MarkerBatch,
        parts: &[(String, u32)],
    ) -> Vec<(String, u32, i16, String)> {
        // Connect outside the lock: an unreachable leader must not hold up the others.
        let cached = self.clients.lock().await.get(addr).cloned();
        let mut client = match cached {
            Some(c) => c,
            None => match crate::replica_fetch::connect(addr).await {
                Some(c) => {
                    self.clients
                        .lock()
                        .await
                        .insert(addr.to_string(), c.clone());
                    c
                }
                None => return Vec::new(),
            },
        };
        let req = WriteTxnMarkersRequest {
            producer_id: m.producer_id,
            producer_epoch: i32::from(m.producer_epoch),
            coordinator_epoch: m.coordinator_epoch,
            commit: m.commit,
            partitions: parts
                .iter()
                .map(|(topic, partition)| TxnMarkerPartition {
                    topic: topic.clone(),
                    partition: *partition,
                })
                .collect(),
        };
        match tokio::time::timeout(
            MARKER_TIMEOUT + Duration::from_secs(5),
            client.write_txn_markers(req),
        )
        .await
        {
            Ok(Ok(resp)) => resp
                .into_inner()
                .results
                .into_iter()
                .map(|r| {
                    (
                        r.topic,
                        r.partition,
                        i16::try_from(r.error_code).unwrap_or(code::COORDINATOR_NOT_AVAILABLE),
                        r.error_message,
                    )
                })
                .collect(),
            Ok(Err(status)) => {
                tracing::debug!(addr, error = %status, "WriteTxnMarkers failed");
                self.clients.lock().await.remove(addr);
                Vec::new()
            }
            Err(_) => {
                tracing::debug!(addr, "WriteTxnMarkers timed out");
                Vec::new()
            }
        }
    }
}
