//! The transaction coordinator (Kafka's `TransactionCoordinator`): one per transactional id, the
//! leader of its `__transaction_state` partition.
//!
//! Each transactional id is a small state machine persisted in that partition ([`txn_log`]) before
//! it is acted on (acks=all), so a new leader replays it and carries on:
//!
//! ```text
//!  InitProducerId: Empty/Complete* ──(epoch+1)──▶ Empty
//!  AddPartitionsToTxn / AddOffsetsToTxn: Empty/Complete*/Ongoing ──▶ Ongoing (+partitions)
//!  EndTxn(commit|abort): Ongoing ──▶ PrepareCommit|PrepareAbort ──(markers written)──▶
//!                                     CompleteCommit|CompleteAbort
//!  timeout / InitProducerId during a transaction: Ongoing ──(epoch+1)──▶ PrepareAbort ──▶ …
//! ```
//!
//! A request that arrives while a state is being written or markers are being sent gets
//! CONCURRENT_TRANSACTIONS (clients retry). The producer epoch fences zombies: a request with an
//! older epoch than the id's gets PRODUCER_FENCED, and an epoch bump on a running transaction
//! aborts it with markers carrying the new epoch, which the partitions then enforce too. The
//! coordinator epoch (the leader epoch of the `__transaction_state` partition) goes in every
//! marker, so a deposed coordinator's late markers are refused.

pub mod markers;
pub mod txn_log;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sluice_log::{BatchBuilder, Clock, Compression, Record};
use sluice_replication::{Acks, PartitionError};

use self::markers::{MarkerBatch, MarkerSender};
use self::txn_log::{TxnRecord, TxnStatus};
use crate::requests::admin::Admin;
use crate::requests::producer_ids::ProducerIds;

/// Kafka error codes the transaction APIs answer.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
    pub const PRODUCER_FENCED: i16 = 90;
}

#[derive(Debug, Clone)]
pub struct TxnSettings {
    pub max_timeout_ms: i64,
    pub abort_check_interval: Duration,
    pub id_expiration_ms: i64,
    pub replication_factor: u32,
}

struct TxnMeta {
    record: TxnRecord,
    /// A state change is being written (Kafka's `pendingState`).
    pending: bool,
}

/// A transactional id as DescribeTransactions shows it.
#[derive(Debug, Clone)]
pub struct TxnView {
    pub transactional_id: String,
    pub record: TxnRecord,
}

pub struct TransactionCoordinator {
    txns: Mutex<HashMap<String, TxnMeta>>,
    /// `__transaction_state` partitions loaded here → coordinator epoch (their leader epoch).
    owned: Mutex<BTreeMap<u32, i32>>,
    loading: tokio::sync::Mutex<()>,
    admin: Arc<Admin>,
    producer_ids: Arc<ProducerIds>,
    markers: Arc<MarkerSender>,
    settings: TxnSettings,
    clock: Arc<dyn Clock>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds the coordinator and the marker writer, and hands the writer to the internal service
/// (`slot`) so peers' WriteTxnMarkers reach it.
pub fn start(
    admin: Arc<Admin>,
    producer_ids: Arc<ProducerIds>,
    groups: Arc<crate::groups::GroupCoordinator>,
    quorum: sluice_replication::controller::driver::QuorumHandle,
    slot: &crate::grpc::internal::TxnMarkersSlot,
) -> Arc<TransactionCoordinator> {
    let config = admin.config.clone();
    let local = Arc::new(markers::LocalMarkers {
        topics: admin.topics.clone(),
        groups,
    });
    let _ = slot.set(local.clone());
    let sender = Arc::new(MarkerSender::new(local, quorum, config.node_id));
    let settings = TxnSettings {
        max_timeout_ms: config.transaction_max_timeout_ms as i64,
        abort_check_interval: Duration::from_millis(
            config.transaction_abort_timed_out_transaction_cleanup_interval_ms,
        ),
        id_expiration_ms: config.transactional_id_expiration_ms as i64,
        replication_factor: config.transaction_state_log_replication_factor,
    };
    TransactionCoordinator::new(
        admin,
        producer_ids,
        sender,
        settings,
        Arc::new(sluice_log::SystemClock),
    )
}

impl TransactionCoordinator {
    pub fn new(
        admin: Arc<Admin>,
        producer_ids: Arc<ProducerIds>,
        markers: Arc<MarkerSender>,
        settings: TxnSettings,
        clock: Arc<dyn Clock>,
    ) -> Arc<TransactionCoordinator> {
        Arc::new(TransactionCoordinator {
            txns: Mutex::new(HashMap::new()),
            owned: Mutex::new(BTreeMap::new()),
            loading: tokio::sync::Mutex::new(()),
            admin,
            producer_ids,
            markers,
            settings,
            clock,
        })
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    // ---- ownership ---------------------------------------------------------------------------

    /// Loads the transactional ids of the `__transaction_state` partitions this broker now
    /// leads (finishing the markers of any transaction caught between prepare and complete) and
    /// drops those of partitions it no longer leads.
    pub async fn follow(self: &Arc<Self>) {
        let _one_at_a_time = self.loading.lock().await;
        let leading = self.admin.topics.led_partitions(txn_log::TOPIC);
        let owned = lock(&self.owned).clone();
        let lost: Vec<u32> = owned
            .iter()
            .filter(|(p, epoch)| leading.get(p).is_none_or(|l| l.leader_epoch() != **epoch))
            .map(|(p, _)| *p)
            .collect();
        if !lost.is_empty() {
            lock(&self.txns).retain(|id, _| !lost.contains(&txn_log::partition_for(id)));
            lock(&self.owned).retain(|p, _| !lost.contains(p));
            tracing::info!(partitions = ?lost, "no longer the transaction coordinator of these __transaction_state partitions");
        }
        for (index, p) in leading {
            if lock(&self.owned).contains_key(&index) {
                continue;
            }
            let epoch = p.leader_epoch();
            let replay = p.clone();
            let replayed = match tokio::task::spawn_blocking(move || {
                txn_log::replay_partition(&replay)
            })
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(partition = index, error = %e, "could not load __transaction_state partition");
                    continue;
                }
                Err(e) => {
                    tracing::error!(partition = index, error = %e, "loading task failed");
                    continue;
                }
            };
            let mut unfinished = Vec::new();
            {
                let mut txns = lock(&self.txns);
                for (id, record) in replayed {
                    if matches!(
                        record.status,
                        TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
                    ) {
                        unfinished.push((id.clone(), record.clone()));
                    }
                    txns.insert(
                        id,
                        TxnMeta {
                            record,
                            pending: false,
                        },
                    );
                }
            }
            lock(&self.owned).insert(index, epoch);
            tracing::info!(
                partition = index,
                coordinator_epoch = epoch,
                unfinished = unfinished.len(),
                "loaded transactional ids as their coordinator"
            );
            for (id, record) in unfinished {
                tokio::spawn(self.clone().complete(id, record, epoch));
            }
        }
    }

    /// Follows every change of this broker's replicas.
    pub async fn run_follower(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut synced = self.admin.topics.watch_synced();
        loop {
            self.follow().await;
            tokio::select! {
                r = synced.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    /// The coordinator epoch if this broker coordinates `id`, else Kafka's code for "ask
    /// elsewhere" or "not yet". The first use creates `__transaction_state`.
    pub async fn check(self: &Arc<Self>, id: &str) -> Result<i32, i16> {
        let p = txn_log::partition_for(id);
        if let Some(e) = lock(&self.owned).get(&p) {
            return Ok(*e);
        }
        if self.admin.topics.get(txn_log::TOPIC).is_err() {
            if let Err(e) = self
                .admin
                .ensure_internal_topic(
                    txn_log::TOPIC,
                    txn_log::PARTITIONS,
                    self.settings.replication_factor,
                )
                .await
            {
                tracing::warn!(error = %e, "cannot create __transaction_state");
                return Err(code::COORDINATOR_NOT_AVAILABLE);
            }
        }
        match self.owner_error(id) {
            None => Ok(lock(&self.owned).get(&p).copied().unwrap_or(0)),
            Some(code::COORDINATOR_LOAD_IN_PROGRESS) => {
                self.follow().await;
                match lock(&self.owned).get(&p) {
                    Some(e) => Ok(*e),
                    None => Err(code::COORDINATOR_LOAD_IN_PROGRESS),
                }
            }
            Some(c) => Err(c),
        }
    }

    /// `Some(code)` unless this broker coordinates `id`.
    pub fn owner_error(&self, id: &str) -> Option<i16> {
        let p = txn_log::partition_for(id);
        if lock(&self.owned).contains_key(&p) {
            return None;
        }
        match self.admin.topics.get(txn_log::TOPIC) {
            Err(_) => Some(code::COORDINATOR_NOT_AVAILABLE),
            Ok(t) => match t.partitions.get(&p) {
                Some(part) if part.is_leader() => Some(code::COORDINATOR_LOAD_IN_PROGRESS),
                _ => Some(code::NOT_COORDINATOR),
            },
        }
    }

    fn still_owner(&self, id: &str, coordinator_epoch: i32) -> bool {
        lock(&self.owned).get(&txn_log::partition_for(id)) == Some(&coordinator_epoch)
    }

    // ---- persistence -------------------------------------------------------------------------

    /// Writes an id's new state (or its tombstone) to its partition, acks=all.
    async fn persist(&self, id: &str, record: Option<&TxnRecord>) -> Result<(), i16> {
        let topic = self
            .admin
            .topics
            .get(txn_log::TOPIC)
            .map_err(|_| code::COORDINATOR_NOT_AVAILABLE)?;
        let partition = topic
            .partition(txn_log::partition_for(id))
            .map_err(|_| code::COORDINATOR_NOT_AVAILABLE)?
            .clone();
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record {
            timestamp: self.now(),
            key: Some(txn_log::encode_key(id)),
            value: record.map(txn_log::encode_value),
            headers: Vec::new(),
        });
        let Some(batch) = b.build() else {
            return Ok(());
        };
        match partition
            .append(&batch, Acks::All, Duration::from_secs(10))
            .await
        {
            Ok(_) => Ok(()),
            Err(PartitionError::NotLeader { .. }) => Err(code::NOT_COORDINATOR),
            Err(e) => {
                tracing::warn!(transactional_id = id, error = %e, "could not write transaction state");
                Err(code::COORDINATOR_NOT_AVAILABLE)
            }
        }
    }

    /// Writes `next` for `id` (already marked pending by the caller) and makes it the state.
    async fn transition(&self, id: &str, next: TxnRecord) -> Result<(), i16> {
        let written = self.persist(id, Some(&next)).await;
        let mut txns = lock(&self.txns);
        if let Some(m) = txns.get_mut(id) {
            m.pending = false;
            if written.is_ok() {
                m.record = next;
            }
        }
        written
    }

    // ---- the APIs ------------------------------------------------------------------------------

    /// InitProducerId with a transactional id: the id's producer id and a new epoch. A running
    /// transaction is aborted first (the caller retries on CONCURRENT_TRANSACTIONS until it is).
    /// `expected`: the producer id and epoch a client re-initialising passes (KIP-360).
    pub async fn init_producer_id(
        self: &Arc<Self>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), i16> {
        if timeout_ms <= 0 || i64::from(timeout_ms) > self.settings.max_timeout_ms {
            return Err(code::INVALID_TRANSACTION_TIMEOUT);
        }
        let coordinator_epoch = self.check(id).await?;
        let now = self.now();
        enum Plan {
            New,
            Bump(TxnRecord),
            Abort(TxnRecord),
        }
        let plan = {
            let mut txns = lock(&self.txns);
            match txns.get_mut(id) {
                None => {
                    txns.insert(
                        id.to_string(),
                        TxnMeta {
                            record: TxnRecord {
                                producer_id: -1,
                                producer_epoch: -1,
                                timeout_ms,
                                status: TxnStatus::Empty,
                                partitions: BTreeSet::new(),
                                last_update_ms: now,
                                start_ms: -1,
                            },
                            pending: true,
                        },
                    );
                    Plan::New
                }
                Some(m) if m.pending => return Err(code::CONCURRENT_TRANSACTIONS),
                Some(m) => {
                    let r = &m.record;
                    if let Some((pid, epoch)) = expected.filter(|(pid, _)| *pid >= 0) {
                        if pid != r.producer_id {
                            return Err(code::INVALID_PRODUCER_ID_MAPPING);
                        }
                        if epoch != r.producer_epoch {
                            return Err(code::PRODUCER_FENCED);
                        }
                    }
                    match r.status {
                        TxnStatus::PrepareCommit
                        | TxnStatus::PrepareAbort
                        | TxnStatus::PrepareEpochFence => {
                            return Err(code::CONCURRENT_TRANSACTIONS)
                        }
                        TxnStatus::Ongoing => {
                            m.pending = true;
                            Plan::Abort(TxnRecord {
                                producer_epoch: r.producer_epoch.saturating_add(1),
                                status: TxnStatus::PrepareAbort,
                                last_update_ms: now,
                                ..r.clone()
                            })
                        }
                        _ => {
                            m.pending = true;
                            Plan::Bump(TxnRecord {
                                producer_epoch: r.producer_epoch.saturating_add(1),
                                timeout_ms,
                                status: TxnStatus::Empty,
                                partitions: BTreeSet::new(),
                                last_update_ms: now,
                                start_ms: -1,
                                ..r.clone()
                            })
                        }
                    }
                }
            }
        };
        match plan {
            Plan::New => {
                let pid = match self.producer_ids.next().await {
                    Ok(pid) => pid,
                    Err(e) => {
                        tracing::warn!(error = %e, "no producer id to give");
                        lock(&self.txns).remove(id);
                        return Err(code::COORDINATOR_NOT_AVAILABLE);
                    }
                };
                let record = TxnRecord {
                    producer_id: pid,
                    producer_epoch: 0,
                    timeout_ms,
                    status: TxnStatus::Empty,
                    partitions: BTreeSet::new(),
                    last_update_ms: now,
                    start_ms: -1,
                };
                let written = self.persist(id, Some(&record)).await;
                let mut txns = lock(&self.txns);
                match written {
                    Ok(()) => {
                        txns.insert(
                            id.to_string(),
                            TxnMeta {
                                record,
                                pending: false,
                            },
                        );
                        Ok((pid, 0))
                    }
                    Err(e) => {
                        txns.remove(id);
                        Err(e)
                    }
                }
            }
            Plan::Bump(mut next) => {
                if next.producer_epoch >= i16::MAX - 1 {
                    // Epochs exhausted: a new producer id starts over (Kafka's rule).
                    match self.producer_ids.next().await {
                        Ok(pid) => {
                            next.producer_id = pid;
                            next.producer_epoch = 0;
                        }
                        Err(_) => {
                            if let Some(m) = lock(&self.txns).get_mut(id) {
                                m.pending = false;
                            }
                            return Err(code::COORDINATOR_NOT_AVAILABLE);
                        }
                    }
                }
                let answer = (next.producer_id, next.producer_epoch);
                self.transition(id, next).await.map(|()| answer)
            }
            Plan::Abort(next) => {
                tracing::info!(
                    transactional_id = id,
                    producer_id = next.producer_id,
                    epoch = next.producer_epoch,
                    "aborting the running transaction of a re-initialised producer"
                );
                self.transition(id, next.clone()).await?;
                tokio::spawn(
                    self.clone()
                        .complete(id.to_string(), next, coordinator_epoch),
                );
                Err(code::CONCURRENT_TRANSACTIONS)
            }
        }
    }

    /// Validates a request of the id's current producer; returns a clone of its record.
    fn validate(
        txns: &HashMap<String, TxnMeta>,
        id: &str,
        pid: i64,
        epoch: i16,
    ) -> Result<TxnRecord, i16> {
        let m = txns.get(id).ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        if m.record.producer_id != pid {
            return Err(code::INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch != m.record.producer_epoch {
            return Err(code::PRODUCER_FENCED);
        }
        if m.pending {
            return Err(code::CONCURRENT_TRANSACTIONS);
        }
        Ok(m.record.clone())
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's `__consumer_offsets`
    /// partition): the partitions join the transaction, which is Ongoing from now.
    pub async fn add_partitions(
        self: &Arc<Self>,
        id: &str,
        pid: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<(), i16> {
        self.check(id).await?;
        let now = self.now();
        let next = {
            let mut txns = lock(&self.txns);
            let r = Self::validate(&txns, id, pid, epoch)?;
            match r.status {
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                    return Err(code::CONCURRENT_TRANSACTIONS)
                }
                TxnStatus::Dead | TxnStatus::PrepareEpochFence => {
                    return Err(code::INVALID_TXN_STATE)
                }
                _ => {}
            }
            if r.status == TxnStatus::Ongoing && partitions.iter().all(|p| r.partitions.contains(p))
            {
                return Ok(());
            }
            let mut next = r.clone();
            if r.status != TxnStatus::Ongoing {
                next.partitions.clear();
                next.start_ms = now;
            }
            next.partitions.extend(partitions.iter().cloned());
            next.status = TxnStatus::Ongoing;
            next.last_update_ms = now;
            if let Some(m) = txns.get_mut(id) {
                m.pending = true;
            }
            next
        };
        self.transition(id, next).await
    }

    /// EndTxn: prepares the commit or abort (durably) and answers; the markers follow.
    pub async fn end_txn(
        self: &Arc<Self>,
        id: &str,
        pid: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), i16> {
        let coordinator_epoch = self.check(id).await?;
        let now = self.now();
        let next = {
            let mut txns = lock(&self.txns);
            let r = Self::validate(&txns, id, pid, epoch)?;
            match (r.status, commit) {
                (TxnStatus::Ongoing, _) => {}
                (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                    return Ok(()); // a retry of an EndTxn that completed
                }
                (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
                    return Err(code::CONCURRENT_TRANSACTIONS)
                }
                _ => return Err(code::INVALID_TXN_STATE),
            }
            if let Some(m) = txns.get_mut(id) {
                m.pending = true;
            }
            TxnRecord {
                status: if commit {
                    TxnStatus::PrepareCommit
                } else {
                    TxnStatus::PrepareAbort
                },
                last_update_ms: now,
                ..r
            }
        };
        self.transition(id, next.clone()).await?;
        tokio::spawn(
            self.clone()
                .complete(id.to_string(), next, coordinator_epoch),
        );
        Ok(())
    }

    /// Writes the markers of a prepared transaction until every partition has one, then
    /// records it complete. Stops if this broker stops coordinating the id (the new coordinator
    /// takes over from the stored PrepareCommit/PrepareAbort).
    async fn complete(self: Arc<Self>, id: String, prepared: TxnRecord, coordinator_epoch: i32) {
        let commit = prepared.status == TxnStatus::PrepareCommit;
        let batch = MarkerBatch {
            producer_id: prepared.producer_id,
            producer_epoch: prepared.producer_epoch,
            coordinator_epoch,
            commit,
        };
        let mut left = prepared.partitions.clone();
        let mut backoff = Duration::from_millis(20);
        while !left.is_empty() {
            if !self.still_owner(&id, coordinator_epoch) {
                return;
            }
            left = self.markers.send(&batch, &left).await;
            if !left.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        let done = TxnRecord {
            status: if commit {
                TxnStatus::CompleteCommit
            } else {
                TxnStatus::CompleteAbort
            },
            partitions: BTreeSet::new(),
            last_update_ms: self.now(),
            ..prepared
        };
        loop {
            if !self.still_owner(&id, coordinator_epoch) {
                return;
            }
            {
                let mut txns = lock(&self.txns);
                match txns.get_mut(&id) {
                    Some(m) if !m.pending => m.pending = true,
                    Some(_) => {}
                    None => return,
                }
            }
            if self.transition(&id, done.clone()).await.is_ok() {
                tracing::debug!(transactional_id = %id, commit, "transaction complete");
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Aborts transactions that ran past their timeout (bumping the epoch so the producer is
    /// fenced, as Kafka does) and forgets ids idle past `transactional.id.expiration.ms`.
    pub async fn tick(self: &Arc<Self>) {
        let now = self.now();
        let mut timed_out = Vec::new();
        let mut expired = Vec::new();
        {
            let mut txns = lock(&self.txns);
            for (id, m) in txns.iter_mut() {
                if m.pending {
                    continue;
                }
                let r = &m.record;
                match r.status {
                    TxnStatus::Ongoing if now - r.start_ms > i64::from(r.timeout_ms) => {
                        m.pending = true;
                        timed_out.push((
                            id.clone(),
                            TxnRecord {
                                producer_epoch: r.producer_epoch.saturating_add(1),
                                status: TxnStatus::PrepareAbort,
                                last_update_ms: now,
                                ..r.clone()
                            },
                        ));
                    }
                    TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
                        if now - r.last_update_ms > self.settings.id_expiration_ms =>
                    {
                        m.pending = true;
                        expired.push(id.clone());
                    }
                    _ => {}
                }
            }
        }
        for (id, next) in timed_out {
            let Some(epoch) = lock(&self.owned).get(&txn_log::partition_for(&id)).copied() else {
                continue;
            };
            tracing::info!(transactional_id = %id, producer_id = next.producer_id, "aborting a transaction that ran past its timeout");
            if self.transition(&id, next.clone()).await.is_ok() {
                tokio::spawn(self.clone().complete(id, next, epoch));
            }
        }
        for id in expired {
            let written = self.persist(&id, None).await;
            let mut txns = lock(&self.txns);
            if written.is_ok() {
                tracing::info!(transactional_id = %id, "transactional id expired");
                txns.remove(&id);
            } else if let Some(m) = txns.get_mut(&id) {
                m.pending = false;
            }
        }
    }

    pub async fn run_ticker(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(self.settings.abort_check_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.tick().await,
                _ = stop.changed() => return,
            }
        }
    }

    // ---- views -------------------------------------------------------------------------------

    /// DescribeTransactions of one id coordinated here.
    pub fn describe(&self, id: &str) -> Result<TxnView, i16> {
        if let Some(c) = self.owner_error(id) {
            return Err(c);
        }
        lock(&self.txns)
            .get(id)
            .map(|m| TxnView {
                transactional_id: id.to_string(),
                record: m.record.clone(),
            })
            .ok_or(code::TRANSACTIONAL_ID_NOT_FOUND)
    }

    /// ListTransactions: the ids coordinated here, filtered by state names (none: all) and
    /// producer ids (none: all).
    pub fn list(&self, states: &[String], producer_ids: &[i64]) -> Vec<TxnView> {
        let mut out: Vec<TxnView> = lock(&self.txns)
            .iter()
            .filter(|(_, m)| m.record.producer_id >= 0)
            .filter(|(_, m)| {
                states.is_empty() || states.iter().any(|s| s == m.record.status.name())
            })
            .filter(|(_, m)| {
                producer_ids.is_empty() || producer_ids.contains(&m.record.producer_id)
            })
            .map(|(id, m)| TxnView {
                transactional_id: id.clone(),
                record: m.record.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }
}

#[cfg(test)]
mod tests;
