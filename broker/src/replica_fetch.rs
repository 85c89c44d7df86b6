//! Replication between brokers: the leader side of `BrokerInternal/ReplicaFetch`, the
//! followers' fetchers, and the leader's ISR upkeep.
//!
//! - [`serve`]: a follower's fetch, partition by partition, through
//!   [`sluice_replication::Partition::fetch_for_follower`] (epoch checks, divergence, follower
//!   progress, HW); the caller long-polls when nothing is new.
//! - [`ReplicaFetchers`]: one task per leader broker (Kafka's replica fetcher threads), pulling
//!   every partition this broker follows from that leader in one request per round, appending
//!   with the leader's offsets, truncating a diverging tail first. It follows the replica
//!   manager: partitions move between fetchers as leadership moves.
//! - [`maintain_isr`]: every so often each partition this broker leads is asked whether its ISR
//!   should change ([`sluice_replication::Partition::isr_change`]); a change is proposed to the
//!   controller (AlterPartition, stamped with the partition epoch) and takes effect when the
//!   committed decision comes back through the image.
//!
//! Broker-to-broker gRPC rather than Kafka Fetch with a replica id: the internal service already
//! connects the brokers (one port, one TLS story later), and the request carries exactly what
//! replication needs (topic ids, last fetched epoch) with no Kafka version negotiation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_log::Clock;
use sluice_proto::internal::v1::broker_internal_client::BrokerInternalClient;
use sluice_proto::internal::v1::{
    ReplicaFetchPartition, ReplicaFetchPartitionData, ReplicaFetchRequest, ReplicaFetchResponse,
};
use sluice_replication::controller::api::ControllerCall;
use sluice_replication::controller::driver::QuorumHandle;
use sluice_replication::controller::AlterPartition;
use sluice_replication::metadata::{ConfigResource, MetadataImage};
use sluice_replication::{Partition, PartitionError};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::cluster::controller_client::ControllerClient;
use crate::cluster::lifecycle::Lifecycle;
use crate::topics::TopicManager;

/// ISR changes this broker proposed that the controller committed (for `/metrics`).
pub static ISR_SHRINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static ISR_EXPANDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The most a leader puts in one replica fetch response, whatever a follower asks.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Replication settings (`replica_*` in the broker config).
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSettings {
    /// `replica_fetch_max_bytes`: per partition per fetch.
    pub fetch_max_bytes: u32,
    /// `replica_fetch_response_max_bytes`: per fetch response.
    pub response_max_bytes: u32,
    /// `replica_fetch_wait_max_ms`: how long a leader holds an empty fetch.
    pub fetch_wait_max_ms: u32,
    /// `replica_lag_time_max_ms`: a follower not caught up for this long leaves the ISR.
    pub lag_time_max_ms: i64,
}

/// The dynamic (cluster-wide or per-broker) config that overrides
/// `leader_replication_throttled_rate`.
pub const THROTTLED_RATE_CONFIG: &str = "leader.replication.throttled.rate";

/// The leader's bandwidth bound for reassignment traffic: a token bucket of `rate` bytes per
/// second (one second of burst) shared by every fetch of a throttled replica
/// ([`Partition::is_throttled_follower`]). Kafka's `ReplicationQuotaManager` bounds the same
/// traffic: once over quota, throttled partitions are left out of the response and the follower
/// asks again, while in-sync followers (and so acks=all) are never held back.
pub struct ReplicationThrottle {
    clock: Arc<dyn Clock>,
    bucket: std::sync::Mutex<Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: i64,
}

impl ReplicationThrottle {
    pub fn new(clock: Arc<dyn Clock>) -> ReplicationThrottle {
        let now = clock.now_ms();
        ReplicationThrottle {
            clock,
            bucket: std::sync::Mutex::new(Bucket {
                tokens: 0.0,
                last_ms: now,
            }),
        }
    }

    /// Bytes throttled replicas may take now at `rate` bytes/s (0 = unlimited); `None` while the
    /// bucket is empty. A read may overdraw by one batch (the first is always whole); the
    /// overdraft is paid back before the next.
    fn allowance(&self, rate: u64) -> Option<usize> {
        if rate == 0 {
            return Some(usize::MAX);
        }
        let now = self.clock.now_ms();
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = (now - b.last_ms).max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * rate as f64).min(rate as f64);
        b.last_ms = now;
        (b.tokens >= 1.0).then_some(b.tokens as usize)
    }

    fn spend(&self, rate: u64, bytes: usize) {
        if rate == 0 {
            return;
        }
        self.bucket.lock().unwrap_or_else(|e| e.into_inner()).tokens -= bytes as f64;
    }
}

/// The throttle rate in force: the image's per-broker, then cluster-wide dynamic config, then
/// the static `leader_replication_throttled_rate`.
pub fn throttled_rate(image: &MetadataImage, me: i32, static_rate: u64) -> u64 {
    [Some(me), None]
        .into_iter()
        .find_map(|b| {
            image
                .configs
                .get(&ConfigResource::Broker(b))
                .and_then(|c| c.get(THROTTLED_RATE_CONFIG))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(static_rate)
}

fn kafka_code(e: &PartitionError) -> i32 {
    i32::from(crate::kafka::produce::partition_error_code(e))
}

/// Answers one follower fetch. Returns the response, whether any partition had records (or
/// anything else to say), and the partitions that had nothing yet with the offset they wait
/// past — for the caller's long poll.
pub fn serve(
    topics: &TopicManager,
    throttle: &ReplicationThrottle,
    rate: u64,
    req: &ReplicaFetchRequest,
) -> (ReplicaFetchResponse, bool, Vec<(Arc<Partition>, u64)>) {
    let mut out = Vec::with_capacity(req.partitions.len());
    // The follower's bound, within the leader's own (a peer's request is not trusted to be sane).
    let mut budget = (req.max_bytes as usize).clamp(1, MAX_RESPONSE_BYTES);
    let mut eventful = false;
    let mut waits = Vec::new();
    for p in &req.partitions {
        let mut d = ReplicaFetchPartitionData {
            topic_id: p.topic_id.clone(),
            partition: p.partition,
            ..Default::default()
        };
        let replica = uuid::Uuid::from_slice(&p.topic_id)
            .ok()
            .and_then(|id| topics.get_by_id(id))
            .and_then(|t| t.partitions.get(&p.partition).cloned());
        let Some(part) = replica else {
            d.error_code = i32::from(crate::kafka::err(
                kafka_protocol::ResponseError::NotLeaderOrFollower,
            ));
            d.error_message = "this broker holds no replica of the partition".into();
            eventful = true;
            out.push(d);
            continue;
        };
        let mut max = (p.max_bytes.max(1) as usize).min(budget);
        let throttled = part.is_throttled_follower(req.replica_id);
        if throttled {
            match throttle.allowance(rate) {
                Some(allowed) => max = max.min(allowed.max(1)),
                None => {
                    // Over quota: no records for this replica now (the offsets it is told are
                    // current); it asks again after the long poll.
                    d.high_watermark = part.high_watermark();
                    d.log_start_offset = part.log().log_start_offset();
                    d.log_end_offset = part.log().log_end_offset();
                    waits.push((part.clone(), u64::MAX));
                    out.push(d);
                    continue;
                }
            }
        }
        match part.fetch_for_follower(
            req.replica_id,
            p.fetch_offset,
            p.current_leader_epoch,
            p.last_fetched_epoch,
            max,
        ) {
            Ok(f) => {
                d.high_watermark = f.high_watermark;
                d.log_start_offset = f.log_start_offset;
                d.log_end_offset = f.log_end_offset;
                if let Some((epoch, end)) = f.diverging {
                    d.diverging_epoch = Some(epoch);
                    d.diverging_end_offset = end;
                    eventful = true;
                } else if f.records.is_empty() {
                    if p.fetch_offset < f.log_start_offset {
                        eventful = true; // the follower must start over
                    } else {
                        waits.push((part.clone(), p.fetch_offset));
                    }
                } else {
                    budget = budget.saturating_sub(f.records.len());
                    if throttled {
                        throttle.spend(rate, f.records.len());
                    }
                    eventful = true;
                }
                d.records = f.records;
            }
            Err(e) => {
                d.error_code = kafka_code(&e);
                d.error_message = e.to_string();
                eventful = true;
            }
        }
        out.push(d);
    }
    (ReplicaFetchResponse { partitions: out }, eventful, waits)
}

/// A partition this broker follows.
#[derive(Clone)]
struct Followed {
    topic_id: uuid::Uuid,
    partition: Arc<Partition>,
}

/// The followers' fetchers, one task per leader broker.
pub struct ReplicaFetchers {
    me: i32,
    topics: Arc<TopicManager>,
    quorum: QuorumHandle,
    settings: ReplicaSettings,
    fetchers: std::sync::Mutex<HashMap<i32, watch::Sender<Vec<Followed>>>>,
}

impl ReplicaFetchers {
    pub fn new(
        me: i32,
        topics: Arc<TopicManager>,
        quorum: QuorumHandle,
        settings: ReplicaSettings,
    ) -> Arc<ReplicaFetchers> {
        Arc::new(ReplicaFetchers {
            me,
            topics,
            quorum,
            settings,
            fetchers: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Re-plans the fetchers whenever the replica manager syncs, until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut synced = self.topics.watch_synced();
        loop {
            self.plan();
            tokio::select! {
                r = synced.changed() => if r.is_err() { break },
                _ = stop.changed() => break,
            }
        }
        // Dropping the senders ends every fetcher.
        self.fetchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn plan(self: &Arc<Self>) {
        let mut by_leader: BTreeMap<i32, Vec<Followed>> = BTreeMap::new();
        for (t, p) in self.topics.replicas() {
            let leader = p.leader();
            if leader >= 0 && leader != self.me {
                by_leader.entry(leader).or_default().push(Followed {
                    topic_id: t.id,
                    partition: p,
                });
            }
        }
        let mut fetchers = self.fetchers.lock().unwrap_or_else(|e| e.into_inner());
        fetchers.retain(|leader, tx| {
            let keep = by_leader.contains_key(leader);
            if !keep {
                let _ = tx.send(Vec::new());
            }
            keep
        });
        for (leader, set) in by_leader {
            match fetchers.get(&leader) {
                Some(tx) => {
                    let _ = tx.send(set);
                }
                None => {
                    let (tx, rx) = watch::channel(set);
                    tokio::spawn(self.clone().fetch_from(leader, rx));
                    fetchers.insert(leader, tx);
                }
            }
        }
    }

    /// One leader's fetcher: rounds of one request for all partitions followed from it.
    async fn fetch_from(self: Arc<Self>, leader: i32, mut set: watch::Receiver<Vec<Followed>>) {
        let mut client: Option<(String, BrokerInternalClient<Channel>)> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let followed = set.borrow_and_update().clone();
            if followed.is_empty() {
                if set.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let Some(addr) = self
                .quorum
                .image()
                .broker(leader)
                .map(|b| b.endpoints.controller.clone())
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if client.as_ref().is_none_or(|(a, _)| *a != addr) {
                client = connect(&addr).await.map(|c| (addr.clone(), c));
            }
            let Some((_, c)) = client.as_mut() else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            };
            let req = ReplicaFetchRequest {
                replica_id: self.me,
                max_wait_ms: self.settings.fetch_wait_max_ms,
                max_bytes: self.settings.response_max_bytes,
                partitions: followed
                    .iter()
                    .map(|f| ReplicaFetchPartition {
                        topic_id: f.topic_id.as_bytes().to_vec().into(),
                        partition: f.partition.index(),
                        fetch_offset: f.partition.log().log_end_offset(),
                        current_leader_epoch: f.partition.leader_epoch(),
                        last_fetched_epoch: f
                            .partition
                            .log()
                            .latest_epoch()
                            .map_or(-1, |e| e.epoch),
                        max_bytes: self.settings.fetch_max_bytes,
                    })
                    .collect(),
            };
            let resp = tokio::select! {
                r = c.replica_fetch(req) => r,
                // The set changed (leadership moved): start a new round with the new set.
                _ = set.changed() => continue,
            };
            let resp = match resp {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    tracing::debug!(leader, error = %s, "replica fetch failed");
                    client = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            let mut errors = 0;
            for d in resp.partitions {
                let Some(f) = followed.iter().find(|f| {
                    f.partition.index() == d.partition
                        && f.topic_id.as_bytes()[..] == d.topic_id[..]
                }) else {
                    continue;
                };
                if let Err(e) = apply(&f.partition, d) {
                    errors += 1;
                    tracing::debug!(leader, topic = %f.partition.topic(), partition = f.partition.index(), error = %e, "replica fetch not applied");
                }
            }
            if errors > 0 {
                // Mostly a leadership change the image has not brought here yet.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A client of a peer's internal service (`controller_addr`).
pub(crate) async fn connect(addr: &str) -> Option<BrokerInternalClient<Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await
        .ok()?;
    Some(
        BrokerInternalClient::new(ch)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20),
    )
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("the leader refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Partition(#[from] PartitionError),
}

/// Applies one partition's answer on the follower.
fn apply(p: &Partition, d: ReplicaFetchPartitionData) -> Result<(), ApplyError> {
    if d.error_code != 0 {
        return Err(ApplyError::Refused(d.error_message));
    }
    if let Some(epoch) = d.diverging_epoch {
        p.truncate_diverging(epoch, d.diverging_end_offset)?;
        return Ok(());
    }
    let leo = p.log().log_end_offset();
    if leo < d.log_start_offset {
        p.restart_at(d.log_start_offset)?;
        return Ok(());
    }
    p.append_as_follower(&d.records, d.high_watermark)?;
    Ok(())
}

/// The leader's ISR upkeep: proposes ISR changes for the partitions this broker leads, every
/// `interval`, until `stop`.
pub async fn maintain_isr(
    topics: Arc<TopicManager>,
    controller: Arc<ControllerClient>,
    lifecycle: Arc<Lifecycle>,
    me: i32,
    lag_time_max_ms: i64,
    mut stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis((lag_time_max_ms / 4).clamp(100, 5_000) as u64);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let Some(broker_epoch) = lifecycle.state().broker_epoch else {
            continue;
        };
        for (t, p) in topics.replicas() {
            let Some(new_isr) = p.isr_change(lag_time_max_ms) else {
                continue;
            };
            let st = p.state();
            tracing::info!(topic = %t.name, partition = p.index(), from = ?st.isr, to = ?new_isr, "proposing an ISR change");
            // The same ISR is a leader confirming its recovery after an unclean election.
            let counter = match new_isr.len().cmp(&st.isr.len()) {
                std::cmp::Ordering::Less => Some(&ISR_SHRINKS),
                std::cmp::Ordering::Greater => Some(&ISR_EXPANDS),
                std::cmp::Ordering::Equal => None,
            };
            let call = ControllerCall::AlterPartition(AlterPartition {
                broker_id: me,
                broker_epoch,
                topic_id: t.id,
                partition: p.index(),
                leader_epoch: st.leader_epoch,
                partition_epoch: st.partition_epoch,
                new_isr,
            });
            match controller.call(call, Duration::from_secs(5)).await {
                Ok((_, offset)) => {
                    if let Some(c) = counter {
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Wait for it to come back through the image before judging again.
                    let mut synced = topics.watch_synced();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        synced.wait_for(|o| *o >= offset),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(topic = %t.name, partition = p.index(), error = %e, "ISR change refused")
                }
            }
        }
    }
}
