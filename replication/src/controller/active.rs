//! The active controller at run time: [`ControllerState`]'s decisions, proposed through the
//! quorum, one at a time.
//!
//! Every voter holds an `ActiveController`; only the Raft leader's answers (the others reply
//! [`ControllerFailure::NotController`] naming the leader). Calls are serialised by one async
//! mutex and each waits until its decision is committed *and applied here*, so the next decision
//! is made on an image that includes the previous one — the state machine never sees a stale
//! image of its own making.
//!
//! Becoming leader is not enough to decide: the image may not yet hold everything earlier
//! leaders committed. A new term therefore starts with an empty decision (a barrier, as KRaft's
//! leader writes a `LeaderChangeMessage`); once it is applied, every earlier entry is too, and
//! every registered broker gets a fresh session from that moment (sessions are soft state).

use std::sync::Arc;

use sluice_log::Clock;
use tokio::sync::Mutex;

use super::api::{ControllerAnswer, ControllerCall, ControllerFailure, ControllerResponse};
use super::driver::{ProposeError, QuorumHandle};
use super::state_machine::{
    ControllerConfig, ControllerError, ControllerState, Heartbeat, RegisterBroker, SeededRandom,
};
use crate::metadata::{MetadataImage, MetadataRecord};

#[derive(Debug, Clone, Copy)]
pub struct ActiveControllerConfig {
    /// `broker_session_timeout_ms`.
    pub broker_session_timeout_ms: i64,
    /// `auto_leader_rebalance_enable`.
    pub auto_leader_rebalance: bool,
    /// `leader_imbalance_check_interval_ms`.
    pub leader_imbalance_check_interval_ms: i64,
    /// The broker's topic default of `unclean.leader.election.enable`.
    pub unclean_leader_election_default: bool,
}

impl Default for ActiveControllerConfig {
    fn default() -> Self {
        ActiveControllerConfig {
            broker_session_timeout_ms: 9_000,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_ms: 300_000,
            unclean_leader_election_default: false,
        }
    }
}

pub struct ActiveController {
    quorum: QuorumHandle,
    clock: Arc<dyn Clock>,
    config: ActiveControllerConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    state: ControllerState,
    /// The Raft term this node last activated in (None: not active).
    active_term: Option<u64>,
    rng: SeededRandom,
    last_rebalance_ms: i64,
}

fn propose_failure(e: ProposeError) -> ControllerFailure {
    match e {
        ProposeError::NotLeader { leader } => ControllerFailure::NotController { leader },
        other => ControllerFailure::Unavailable(other.to_string()),
    }
}

impl ActiveController {
    pub fn new(
        quorum: QuorumHandle,
        clock: Arc<dyn Clock>,
        config: ActiveControllerConfig,
        seed: u64,
    ) -> ActiveController {
        let now = clock.now_ms();
        ActiveController {
            quorum,
            clock,
            config,
            inner: Mutex::new(Inner {
                state: ControllerState::new(ControllerConfig {
                    broker_session_timeout_ms: config.broker_session_timeout_ms,
                    unclean_leader_election_default: config.unclean_leader_election_default,
                }),
                active_term: None,
                rng: SeededRandom(seed),
                last_rebalance_ms: now,
            }),
        }
    }

    /// True while this node is the Raft leader and has activated in its term.
    pub async fn is_active(&self) -> bool {
        let st = self.quorum.status();
        st.is_leader && self.inner.lock().await.active_term == Some(st.term)
    }

    /// Decides `call` and commits the decision.
    pub async fn call(&self, call: ControllerCall) -> ControllerResponse {
        let mut inner = self.inner.lock().await;
        if let Err(f) = self.ensure_active(&mut inner).await {
            return self.respond(Err(f), None);
        }
        let image = self.quorum.image();
        let now = self.clock.now_ms();
        let Inner { state, rng, .. } = &mut *inner;
        let decided = decide(state, rng, &image, now, call);
        let (records, answer) = match decided {
            Ok(d) => d,
            Err(e) => return self.respond(Err(ControllerFailure::Refused(e)), None),
        };
        let result = self.commit(records).await.map(|offset| (answer, offset));
        match result {
            Ok((answer, offset)) => self.respond(Ok(answer), Some(offset)),
            Err(f) => {
                // Whatever happened, the next call starts from a fresh activation.
                inner.active_term = None;
                self.respond(Err(f), None)
            }
        }
    }

    /// The timer's work, on the active controller only: fence brokers whose session expired,
    /// and (every `leader_imbalance_check_interval_ms`) move leadership back to preferred
    /// leaders.
    pub async fn tick(&self) {
        if !self.quorum.status().is_leader {
            return;
        }
        let mut inner = self.inner.lock().await;
        if self.ensure_active(&mut inner).await.is_err() {
            return;
        }
        let now = self.clock.now_ms();
        let image = self.quorum.image();
        let fenced = inner.state.fence_stale_brokers(&image, now);
        if !fenced.is_empty() {
            tracing::warn!(
                records = fenced.len(),
                "fencing brokers whose session expired"
            );
            if let Err(e) = self.commit(fenced).await {
                tracing::warn!(error = %e, "fencing did not commit");
                inner.active_term = None;
                return;
            }
        }
        // Partitions without a leader whose topic now allows an unclean election (the config
        // was just set) get one; clean elections happen when a replica is unfenced.
        let elected = inner
            .state
            .elect_offline_partitions(&self.quorum.image(), None);
        if !elected.is_empty() {
            if let Err(e) = self.commit(elected).await {
                tracing::warn!(error = %e, "electing leaders for offline partitions did not commit");
                inner.active_term = None;
                return;
            }
        }
        if self.config.auto_leader_rebalance
            && now - inner.last_rebalance_ms >= self.config.leader_imbalance_check_interval_ms
        {
            inner.last_rebalance_ms = now;
            let moves = inner.state.elect_preferred_leaders(&self.quorum.image());
            if !moves.is_empty() {
                tracing::info!(
                    partitions = moves.len(),
                    "moving leadership back to preferred leaders"
                );
                if let Err(e) = self.commit(moves).await {
                    tracing::warn!(error = %e, "preferred-leader election did not commit");
                    inner.active_term = None;
                }
            }
        }
    }

    async fn ensure_active(&self, inner: &mut Inner) -> Result<(), ControllerFailure> {
        let st = self.quorum.status();
        if !st.is_leader {
            inner.active_term = None;
            return Err(ControllerFailure::NotController { leader: st.leader });
        }
        if inner.active_term == Some(st.term) {
            return Ok(());
        }
        // The barrier: applied here only after every entry of earlier terms.
        self.quorum
            .propose(Vec::new())
            .await
            .map_err(propose_failure)?;
        let now = self.clock.now_ms();
        inner.state.activate(&self.quorum.image(), now);
        inner.last_rebalance_ms = now;
        inner.active_term = Some(st.term);
        tracing::info!(term = st.term, "this broker is the active controller");
        Ok(())
    }

    /// Proposes `records` (nothing to do if empty) and returns the offset they are applied at.
    async fn commit(&self, records: Vec<MetadataRecord>) -> Result<u64, ControllerFailure> {
        if records.is_empty() {
            return Ok(self.quorum.image().offset);
        }
        let image = self.quorum.image();
        for r in &records {
            if let MetadataRecord::PartitionChange(c) = r {
                if c.recovering == Some(true) {
                    let name = image
                        .topics
                        .get(&c.topic_id)
                        .map_or("?", |t| t.name.as_str());
                    let isr = image
                        .partition(c.topic_id, c.partition)
                        .map(|p| p.isr.clone());
                    tracing::warn!(
                        topic = name,
                        partition = c.partition,
                        leader = ?c.leader,
                        previous_isr = ?isr,
                        "unclean leader election: an out-of-sync replica leads; records it lacks are lost (the old replicas count them when they truncate)"
                    );
                }
            }
        }
        self.quorum.propose(records).await.map_err(propose_failure)
    }

    fn respond(
        &self,
        result: Result<ControllerAnswer, ControllerFailure>,
        offset: Option<u64>,
    ) -> ControllerResponse {
        ControllerResponse {
            result,
            metadata_offset: offset.unwrap_or_else(|| self.quorum.image().offset),
        }
    }
}

/// The state machine's decision for one call: the records to commit and the answer.
fn decide(
    state: &mut ControllerState,
    rng: &mut SeededRandom,
    image: &MetadataImage,
    now: i64,
    call: ControllerCall,
) -> Result<(Vec<MetadataRecord>, ControllerAnswer), ControllerError> {
    let unless = |validate_only: bool, records: Vec<MetadataRecord>| {
        if validate_only {
            Vec::new()
        } else {
            records
        }
    };
    Ok(match call {
        ControllerCall::RegisterBroker {
            broker_id,
            incarnation_id,
            endpoints,
            rack,
        } => {
            let req = RegisterBroker {
                broker_id,
                incarnation_id,
                endpoints,
                rack,
            };
            let d = state.register_broker(image, &req, now)?;
            (d.records, ControllerAnswer::BrokerEpoch(d.reply))
        }
        ControllerCall::Heartbeat {
            broker_id,
            broker_epoch,
            metadata_offset,
            want_shutdown,
        } => {
            let hb = Heartbeat {
                broker_id,
                broker_epoch,
                metadata_offset,
                want_shutdown,
            };
            let d = state.heartbeat(image, &hb, now)?;
            (d.records, ControllerAnswer::Heartbeat(d.reply))
        }
        ControllerCall::CreateTopic {
            name,
            partitions,
            replication_factor,
            configs,
            validate_only,
        } => {
            let d =
                state.create_topic(image, &name, partitions, replication_factor, &configs, rng)?;
            let answer = ControllerAnswer::TopicCreated {
                topic_id: d.reply,
                partitions: partitions as u32,
                replication_factor: replication_factor as u32,
            };
            (unless(validate_only, d.records), answer)
        }
        ControllerCall::DeleteTopic { name } => (
            state.delete_topic(image, &name)?.records,
            ControllerAnswer::Done,
        ),
        ControllerCall::CreatePartitions {
            name,
            count,
            validate_only,
        } => {
            let d = state.create_partitions(image, &name, count, rng)?;
            (unless(validate_only, d.records), ControllerAnswer::Done)
        }
        ControllerCall::AlterConfigs {
            resource,
            set,
            delete,
        } => (
            state
                .alter_configs(image, &resource, &set, &delete)?
                .records,
            ControllerAnswer::Done,
        ),
        ControllerCall::ImportTopics { broker_id, topics } => {
            let d = state.import_topics(image, broker_id, &topics)?;
            (d.records, ControllerAnswer::Imported(d.reply))
        }
        ControllerCall::AlterPartition(req) => (
            state.alter_partition(image, &req)?.records,
            ControllerAnswer::Done,
        ),
        ControllerCall::AllocateProducerIds {
            broker_id,
            broker_epoch,
        } => {
            let d = state.allocate_producer_ids(image, broker_id, broker_epoch)?;
            let (start, len) = d.reply;
            (d.records, ControllerAnswer::ProducerIds { start, len })
        }
        ControllerCall::AlterReassignments(reqs) => {
            let d = state.alter_reassignments(image, &reqs);
            (d.records, ControllerAnswer::Reassignments(d.reply))
        }
    })
}
