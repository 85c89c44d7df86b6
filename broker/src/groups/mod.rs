//! The group coordinator: Kafka's classic consumer-group protocol and committed offsets.
//!
//! Each group is a small state machine (Kafka's names): `Empty` → (JoinGroup) →
//! `PreparingRebalance` → (every member rejoined, or the rebalance timeout passed) →
//! `CompletingRebalance` → (the leader's SyncGroup) → `Stable`. A join, a leave or an expired
//! session sends a `Stable` group back to `PreparingRebalance`; members learn it from their
//! heartbeats (REBALANCE_IN_PROGRESS) and rejoin. Pending JoinGroup/SyncGroup requests wait on
//! oneshot channels that the transition completes. A ticker enforces rebalance deadlines and
//! session timeouts.
//!
//! Committed offsets are kept in memory and appended, in Kafka's own `__consumer_offsets` key and
//! value schemas, to partition `abs(hash(group)) % 50` of that compacted topic; they are replayed
//! from it at start-up (see [`offsets_log`]). This broker coordinates every group (single node).

pub mod consumer_protocol;
pub mod offsets_log;

pub use consumer_protocol::decode_assignment;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::requests::admin::Admin;

/// Kafka error codes the group protocol uses.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_heartbeat: Instant,
    joined: bool,
}

/// What a JoinGroup gets back.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: every member's id, instance id and metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug, Clone, Default)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: String,
    pub protocol: String,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub timestamp: i64,
}

#[derive(Default)]
struct Group {
    /// The group id (for logs).
    name: String,
    state: Option<State>,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    pending_joins: HashMap<String, oneshot::Sender<JoinResult>>,
    pending_syncs: HashMap<String, oneshot::Sender<SyncResult>>,
    rebalance_deadline: Option<Instant>,
    offsets: BTreeMap<(String, i32), Committed>,
    /// Offsets committed inside a transaction (TxnOffsetCommit), by producer id: they become
    /// committed offsets when the transaction's COMMIT marker reaches this group's partition,
    /// and are dropped on ABORT.
    pending_txn: HashMap<i64, BTreeMap<(String, i32), Committed>>,
    /// When the group entered its state (ms since the epoch; 0 if unknown): an empty group's
    /// offsets expire `offsets_retention_minutes` after it.
    state_since_ms: i64,
    /// The membership changed in a way worth storing (a completed rebalance, or empty again).
    needs_store: bool,
}

impl Group {
    fn state(&self) -> State {
        self.state.unwrap_or(State::Empty)
    }

    fn set_state(&mut self, state: State) {
        // Kafka logs these at INFO; here at DEBUG (`RUST_LOG=sluice::groups=debug`): busy groups
        // rebalance often.
        tracing::debug!(
            target: "sluice::groups",
            group = %self.name,
            from = self.state().name(),
            to = state.name(),
            generation = self.generation,
            members = self.members.len(),
            "group state"
        );
        self.state = Some(state);
        self.state_since_ms = now_ms();
        // Kafka stores a group when a rebalance completes and when it empties.
        if matches!(state, State::Stable | State::Empty) {
            self.needs_store = true;
        }
    }

    /// A member's metadata for the group's protocol.
    fn metadata_of(&self, m: &Member) -> Bytes {
        m.protocols
            .iter()
            .find(|(n, _)| *n == self.protocol)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }

    /// What the leader's JoinGroup response lists: every member's id, instance id and metadata.
    fn members_metadata(&self) -> Vec<(String, Option<String>, Bytes)> {
        self.members
            .values()
            .map(|m| (m.id.clone(), m.instance_id.clone(), self.metadata_of(m)))
            .collect()
    }

    /// What `__consumer_offsets` keeps of the membership.
    fn snapshot(&self) -> offsets_log::GroupSnapshot {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        offsets_log::GroupSnapshot {
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            protocol: non_empty(&self.protocol),
            leader: non_empty(&self.leader),
            state_timestamp: self.state_since_ms,
            members: self
                .members
                .values()
                .map(|m| offsets_log::MemberSnapshot {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as i32,
                    session_timeout_ms: m.session_timeout.as_millis() as i32,
                    subscription: self.metadata_of(m),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// A group as stored: members are back as they were, with a full session to heartbeat in
    /// (Kafka loads such groups as Stable), or Empty.
    fn restore(name: &str, snapshot: offsets_log::GroupSnapshot) -> Group {
        let protocol = snapshot.protocol.unwrap_or_default();
        let now = Instant::now();
        let members: BTreeMap<String, Member> = snapshot
            .members
            .into_iter()
            .map(|m| {
                let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
                (
                    m.id.clone(),
                    Member {
                        id: m.id,
                        instance_id: m.instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        session_timeout: ms(m.session_timeout_ms),
                        rebalance_timeout: ms(m.rebalance_timeout_ms),
                        protocols: vec![(protocol.clone(), m.subscription)],
                        assignment: m.assignment,
                        last_heartbeat: now,
                        joined: false,
                    },
                )
            })
            .collect();
        Group {
            name: name.to_string(),
            state: Some(if members.is_empty() {
                State::Empty
            } else {
                State::Stable
            }),
            generation: snapshot.generation,
            protocol_type: snapshot.protocol_type,
            protocol,
            leader: snapshot.leader.unwrap_or_default(),
            members,
            state_since_ms: snapshot.state_timestamp.max(0),
            ..Default::default()
        }
    }

    /// Starts (or keeps) a rebalance: everyone must rejoin before the deadline.
    fn prepare_rebalance(&mut self, initial_delay: Duration) {
        if self.state() == State::PreparingRebalance {
            return;
        }
        for (_, tx) in self.pending_syncs.drain() {
            let _ = tx.send(SyncResult {
                error: code::REBALANCE_IN_PROGRESS,
                ..Default::default()
            });
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let was_empty = self.state() == State::Empty;
        for m in self.members.values_mut() {
            m.joined = self.pending_joins.contains_key(&m.id);
        }
        self.set_state(State::PreparingRebalance);
        // A new group waits a little for more members (Kafka's group.initial.rebalance.delay.ms).
        let wait = if was_empty { initial_delay } else { timeout };
        self.rebalance_deadline = Some(Instant::now() + wait);
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.joined)
    }

    /// Ends the join phase: new generation, leader, protocol; answers every waiting join.
    fn complete_join(&mut self) {
        // Members that did not rejoin in time are out.
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.joined)
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            self.members.remove(&id);
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        if !self.members.is_empty() {
            crate::metrics::METRICS.group_rebalances.inc();
        }
        if self.members.is_empty() {
            self.set_state(State::Empty);
            self.leader.clear();
            self.protocol.clear();
            return;
        }
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        // The first of the leader's protocols that every member supports.
        let leader_protocols = self
            .members
            .get(&self.leader)
            .map(|m| m.protocols.clone())
            .unwrap_or_default();
        self.protocol = leader_protocols
            .iter()
            .map(|(name, _)| name.clone())
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .unwrap_or_default();
        self.set_state(State::CompletingRebalance);
        let members = self.members_metadata();
        let now = Instant::now();
        for m in self.members.values_mut() {
            m.last_heartbeat = now;
        }
        for (id, tx) in self.pending_joins.drain() {
            let _ = tx.send(JoinResult {
                error: code::NONE,
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                leader: self.leader.clone(),
                members: if id == self.leader {
                    members.clone()
                } else {
                    Vec::new()
                },
                member_id: id,
            });
        }
    }

    /// The current member id of a static member (`group.instance.id`).
    fn static_member(&self, instance_id: &str) -> Option<&str> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance_id))
            .map(|m| m.id.as_str())
    }

    /// Kafka's `validateCurrentMember`: a request naming an instance id must come from that
    /// instance's current member id — else a newer instance has taken its place and the sender
    /// is FENCED_INSTANCE_ID (fatal for the client, so two instances never fight over one
    /// assignment); otherwise the member must be in the group.
    fn check_member(&self, member: &str, instance_id: Option<&str>) -> Result<(), i16> {
        if let Some(current) = instance_id.and_then(|iid| self.static_member(iid)) {
            if current != member {
                tracing::info!(member, instance_id, current, "fenced static member refused");
                return Err(code::FENCED_INSTANCE_ID);
            }
            return Ok(());
        }
        if self.members.contains_key(member) {
            Ok(())
        } else {
            Err(code::UNKNOWN_MEMBER_ID)
        }
    }

    /// A static member's instance rejoining without its member id (a restarted consumer):
    /// it takes the member's place under `new_id`; the old id is fenced, and a join or sync the
    /// old instance has pending is answered FENCED_INSTANCE_ID.
    fn replace_static_member(&mut self, old_id: &str, new_id: &str, req: &JoinRequest) {
        let Some(mut m) = self.members.remove(old_id) else {
            return;
        };
        m.id = new_id.to_string();
        m.client_id = req.client_id.clone();
        m.client_host = req.client_host.clone();
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        m.protocols = req.protocols.clone();
        m.last_heartbeat = Instant::now();
        self.members.insert(new_id.to_string(), m);
        if self.leader == old_id {
            self.leader = new_id.to_string();
        }
        if let Some(tx) = self.pending_joins.remove(old_id) {
            let _ = tx.send(JoinResult {
                error: code::FENCED_INSTANCE_ID,
                member_id: old_id.to_string(),
                ..Default::default()
            });
        }
        if let Some(tx) = self.pending_syncs.remove(old_id) {
            let _ = tx.send(SyncResult {
                error: code::FENCED_INSTANCE_ID,
                ..Default::default()
            });
        }
        self.needs_store = true;
    }

    fn remove_member(&mut self, id: &str, initial_delay: Duration) {
        if self.members.remove(id).is_none() {
            return;
        }
        if let Some(tx) = self.pending_joins.remove(id) {
            let _ = tx.send(JoinResult {
                error: code::UNKNOWN_MEMBER_ID,
                ..Default::default()
            });
        }
        self.pending_syncs.remove(id);
        if self.members.is_empty() {
            self.set_state(State::Empty);
            self.generation += 1;
            self.leader.clear();
            self.rebalance_deadline = None;
        } else {
            self.prepare_rebalance(initial_delay);
            if self.all_joined() && self.pending_joins.len() == self.members.len() {
                self.complete_join();
            }
        }
    }
}

/// The group named `name`, created empty if unknown.
fn group_entry<'a>(groups: &'a mut HashMap<String, Group>, name: &str) -> &'a mut Group {
    groups.entry(name.to_string()).or_insert_with(|| Group {
        name: name.to_string(),
        ..Default::default()
    })
}

/// Join parameters from a JoinGroup request.
pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
}

/// The coordinator's settings (broker config).
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// `group_initial_rebalance_delay_ms`.
    pub initial_delay: Duration,
    /// `offsets_retention_minutes`: how long an empty group keeps its committed offsets.
    pub offsets_retention: Duration,
    /// `offsets_retention_check_interval_ms`.
    pub retention_check_interval: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            initial_delay: Duration::from_millis(3_000),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            retention_check_interval: Duration::from_secs(600),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    /// The `__consumer_offsets` partitions whose groups are loaded here (this broker leads them).
    owned: Mutex<BTreeSet<u32>>,
    /// Serialises loading and unloading.
    loading: tokio::sync::Mutex<()>,
    /// `__consumer_offsets` is created through the controller on first use.
    admin: Arc<Admin>,
    settings: GroupSettings,
    next_member: std::sync::atomic::AtomicU64,
}

impl GroupCoordinator {
    /// Creates the coordinator. It serves the groups of the `__consumer_offsets` partitions this
    /// broker leads: [`GroupCoordinator::follow`] loads a partition's groups (membership and
    /// committed offsets) when it becomes the leader and drops them when it stops being it.
    pub fn open(admin: Arc<Admin>, settings: GroupSettings) -> Arc<GroupCoordinator> {
        Arc::new(GroupCoordinator {
            groups: Mutex::new(HashMap::new()),
            owned: Mutex::new(BTreeSet::new()),
            loading: tokio::sync::Mutex::new(()),
            admin,
            settings,
            next_member: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn owned(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes on the groups of the `__consumer_offsets` partitions this broker now leads, and
    /// drops those of partitions it no longer leads (their new leader loads them).
    pub async fn follow(&self) {
        let _one_at_a_time = self.loading.lock().await;
        let leading = self.admin.topics.led_partitions(offsets_log::TOPIC);
        let owned = self.owned().clone();
        let lost: Vec<u32> = owned
            .iter()
            .filter(|p| !leading.contains_key(p))
            .copied()
            .collect();
        if !lost.is_empty() {
            let mut groups = self.lock();
            groups.retain(|name, _| !lost.contains(&offsets_log::partition_for(name)));
            self.owned().retain(|p| !lost.contains(p));
            tracing::info!(partitions = ?lost, "no longer the group coordinator of these __consumer_offsets partitions");
        }
        let mut loaded = Vec::new();
        for (index, p) in leading {
            if owned.contains(&index) {
                continue;
            }
            let replayed = match tokio::task::spawn_blocking(move || {
                offsets_log::replay_partition(&p)
            })
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(partition = index, error = %e, "could not load __consumer_offsets partition");
                    continue;
                }
                Err(e) => {
                    tracing::error!(partition = index, error = %e, "loading task failed");
                    continue;
                }
            };
            let mut groups = self.lock();
            for (name, snapshot) in replayed.groups {
                let g = Group::restore(&name, snapshot);
                groups.insert(name, g);
            }
            for ((group, topic, partition), c) in replayed.offsets {
                group_entry(&mut groups, &group)
                    .offsets
                    .insert((topic, partition), c);
            }
            for (pid, offsets) in replayed.pending {
                for (group, topic, partition, c) in offsets {
                    group_entry(&mut groups, &group)
                        .pending_txn
                        .entry(pid)
                        .or_default()
                        .insert((topic, partition), c);
                }
            }
            drop(groups);
            self.owned().insert(index);
            loaded.push(index);
        }
        if !loaded.is_empty() {
            tracing::info!(
                partitions = loaded.len(),
                groups = self.lock().len(),
                "loaded consumer groups as their coordinator"
            );
        }
    }

    /// Follows every change of this broker's replicas (as the replica manager syncs them).
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

    /// Whether this broker coordinates `group`: `Err` carries Kafka's code for "ask elsewhere"
    /// (NOT_COORDINATOR) or "not yet" (COORDINATOR_LOAD_IN_PROGRESS). The first group operation
    /// of a cluster creates `__consumer_offsets`, as Kafka's FindCoordinator does.
    pub async fn check(&self, group: &str) -> Result<(), i16> {
        let p = offsets_log::partition_for(group);
        if self.owned().contains(&p) {
            return Ok(());
        }
        if self.admin.topics.get(offsets_log::TOPIC).is_err() {
            // First use anywhere: create it (through the controller) and take what is ours.
            if let Err(e) = offsets_log::ensure_topic(&self.admin).await {
                tracing::warn!(error = %e, "cannot create __consumer_offsets");
                return Err(code::COORDINATOR_NOT_AVAILABLE);
            }
            self.follow().await;
            if self.owned().contains(&p) {
                return Ok(());
            }
        }
        match self.owner_error(group) {
            // Led here but not loaded yet: load now (waits for a load under way) and look again.
            Some(code::COORDINATOR_LOAD_IN_PROGRESS) => {
                self.follow().await;
                self.owner_error(group).map_or(Ok(()), Err)
            }
            other => other.map_or(Ok(()), Err),
        }
    }

    /// `Some(code)` unless this broker coordinates `group` (its partition is loaded here).
    /// Before `__consumer_offsets` exists no group exists anywhere: `None`, and the operation
    /// finds no group.
    pub fn owner_error(&self, group: &str) -> Option<i16> {
        let p = offsets_log::partition_for(group);
        if self.owned().contains(&p) {
            return None;
        }
        match self.admin.topics.get(offsets_log::TOPIC) {
            Err(_) => None,
            Ok(t) => match t.partitions.get(&p) {
                Some(part) if part.is_leader() => Some(code::COORDINATOR_LOAD_IN_PROGRESS),
                _ => Some(code::NOT_COORDINATOR),
            },
        }
    }

    /// `<client id>-<uuid>-<n>`, as Kafka names members.
    fn new_member_id(&self, client_id: &str) -> String {
        let n = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        format!("{prefix}-{}-{n}", crate::topics::random_uuid().simple())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn join(&self, req: JoinRequest) -> JoinResult {
        if req.group.is_empty() {
            return JoinResult {
                error: code::INVALID_GROUP_ID,
                ..Default::default()
            };
        }
        if req.session_timeout < Duration::from_millis(1000)
            || req.session_timeout > Duration::from_secs(1800)
        {
            return JoinResult {
                error: code::INVALID_SESSION_TIMEOUT,
                ..Default::default()
            };
        }
        if let Err(error) = self.check(&req.group).await {
            return JoinResult {
                error,
                ..Default::default()
            };
        }
        let rx = {
            let mut groups = self.lock();
            let g = group_entry(&mut groups, &req.group);
            if !g.members.is_empty() && g.protocol_type != req.protocol_type {
                return JoinResult {
                    error: code::INCONSISTENT_GROUP_PROTOCOL,
                    ..Default::default()
                };
            }
            let existing_static = req
                .instance_id
                .as_deref()
                .and_then(|iid| g.static_member(iid))
                .map(str::to_string);
            // Kafka's static membership: a known instance coming back (a restarted consumer, new
            // member id) takes its old place under a new id; the old id is fenced. Into a Stable
            // group it keeps its assignment without a rebalance.
            let replaced = match (req.member_id.is_empty(), &existing_static) {
                (true, Some(old_id)) => {
                    let new_id = self.new_member_id(&req.client_id);
                    g.replace_static_member(old_id, &new_id, &req);
                    Some(new_id)
                }
                _ => None,
            };
            if let (Some(new_id), State::Stable) = (&replaced, g.state()) {
                let new_id = new_id.clone();
                let members = if g.leader == new_id {
                    g.members_metadata()
                } else {
                    Vec::new()
                };
                return JoinResult {
                    error: code::NONE,
                    generation: g.generation,
                    protocol_type: g.protocol_type.clone(),
                    protocol: g.protocol.clone(),
                    leader: g.leader.clone(),
                    member_id: new_id,
                    members,
                };
            }
            let member_id = if let Some(id) = replaced {
                // Mid-rebalance: the instance joins the rebalance in its old place.
                id
            } else if !req.member_id.is_empty() {
                if let Err(error) = g.check_member(&req.member_id, req.instance_id.as_deref()) {
                    return JoinResult {
                        error,
                        member_id: req.member_id,
                        ..Default::default()
                    };
                }
                req.member_id.clone()
            } else {
                self.new_member_id(&req.client_id)
            };
            g.protocol_type = req.protocol_type.clone();
            let m = g
                .members
                .entry(member_id.clone())
                .or_insert_with(|| Member {
                    id: member_id.clone(),
                    instance_id: req.instance_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    session_timeout: req.session_timeout,
                    rebalance_timeout: req.rebalance_timeout,
                    protocols: Vec::new(),
                    assignment: Bytes::new(),
                    last_heartbeat: Instant::now(),
                    joined: false,
                });
            m.protocols = req.protocols;
            m.session_timeout = req.session_timeout;
            m.rebalance_timeout = req.rebalance_timeout;
            m.last_heartbeat = Instant::now();
            m.joined = true;
            let (tx, rx) = oneshot::channel();
            if let Some(old) = g.pending_joins.insert(member_id.clone(), tx) {
                let _ = old.send(JoinResult {
                    error: code::UNKNOWN_MEMBER_ID,
                    ..Default::default()
                });
            }
            if g.state() != State::PreparingRebalance {
                g.prepare_rebalance(self.settings.initial_delay);
                if let Some(m) = g.members.get_mut(&member_id) {
                    m.joined = true;
                }
            }
            // Everyone is back (and this is not a brand-new group still in its initial delay).
            if g.all_joined()
                && g.rebalance_deadline
                    .is_some_and(|d| d <= Instant::now() || g.generation > 0 || g.members.len() > 1)
            {
                g.complete_join();
            }
            rx
        };
        rx.await.unwrap_or(JoinResult {
            error: code::REBALANCE_IN_PROGRESS,
            ..Default::default()
        })
    }

    pub async fn sync(
        &self,
        group: &str,
        generation: i32,
        member: &str,
        instance_id: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        if let Some(error) = self.owner_error(group) {
            return SyncResult {
                error,
                ..Default::default()
            };
        }
        let rx = {
            let mut groups = self.lock();
            let Some(g) = groups.get_mut(group) else {
                return SyncResult {
                    error: code::UNKNOWN_MEMBER_ID,
                    ..Default::default()
                };
            };
            if let Err(error) = g.check_member(member, instance_id) {
                return SyncResult {
                    error,
                    ..Default::default()
                };
            }
            if generation != g.generation {
                return SyncResult {
                    error: code::ILLEGAL_GENERATION,
                    ..Default::default()
                };
            }
            let ok = |g: &Group, m: &str| SyncResult {
                error: code::NONE,
                protocol_type: g.protocol_type.clone(),
                protocol: g.protocol.clone(),
                assignment: g
                    .members
                    .get(m)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default(),
            };
            match g.state() {
                State::PreparingRebalance | State::Empty => {
                    return SyncResult {
                        error: code::REBALANCE_IN_PROGRESS,
                        ..Default::default()
                    };
                }
                State::Stable => return ok(g, member),
                State::CompletingRebalance => {}
            }
            if member == g.leader {
                for m in g.members.values_mut() {
                    m.assignment = Bytes::new();
                }
                for (id, a) in assignments {
                    if let Some(m) = g.members.get_mut(&id) {
                        m.assignment = a;
                    }
                }
                g.set_state(State::Stable);
                let waiting: Vec<(String, oneshot::Sender<SyncResult>)> =
                    g.pending_syncs.drain().collect();
                for (id, tx) in waiting {
                    let _ = tx.send(ok(g, &id));
                }
                return ok(g, member);
            }
            let (tx, rx) = oneshot::channel();
            g.pending_syncs.insert(member.to_string(), tx);
            rx
        };
        rx.await.unwrap_or(SyncResult {
            error: code::REBALANCE_IN_PROGRESS,
            ..Default::default()
        })
    }

    pub fn heartbeat(
        &self,
        group: &str,
        generation: i32,
        member: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        if let Some(e) = self.owner_error(group) {
            return e;
        }
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if let Err(e) = g.check_member(member, instance_id) {
            return e;
        }
        let state = g.state();
        let current = g.generation;
        let Some(m) = g.members.get_mut(member) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        m.last_heartbeat = Instant::now();
        if state == State::PreparingRebalance {
            return code::REBALANCE_IN_PROGRESS;
        }
        if generation != current {
            return code::ILLEGAL_GENERATION;
        }
        code::NONE
    }

    /// LeaveGroup. With an instance id (v3+), Kafka's rule: the static member leaves if
    /// `member` is its current id or empty (an admin removing it, KIP-345); another id is
    /// FENCED_INSTANCE_ID.
    pub fn leave(&self, group: &str, member: &str, instance_id: Option<&str>) -> i16 {
        if let Some(e) = self.owner_error(group) {
            return e;
        }
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let id = match instance_id {
            Some(iid) => match g.static_member(iid) {
                None => return code::UNKNOWN_MEMBER_ID,
                Some(current) if !member.is_empty() && current != member => {
                    return code::FENCED_INSTANCE_ID;
                }
                Some(current) => current.to_string(),
            },
            None if g.members.contains_key(member) => member.to_string(),
            None => return code::UNKNOWN_MEMBER_ID,
        };
        g.remove_member(&id, self.settings.initial_delay);
        code::NONE
    }

    /// Stores offsets. `generation < 0` is a commit outside group management (manual
    /// assignment), accepted while the group has no members.
    pub async fn commit(
        &self,
        group: &str,
        generation: i32,
        member: &str,
        instance_id: Option<&str>,
        offsets: Vec<(String, i32, Committed)>,
    ) -> i16 {
        if let Err(e) = self.check(group).await {
            return e;
        }
        {
            let mut groups = self.lock();
            let g = group_entry(&mut groups, group);
            if generation >= 0 || !g.members.is_empty() {
                if let Err(e) = g.check_member(member, instance_id) {
                    return e;
                }
                // Kafka's rule: while a rebalance is being prepared the current generation may
                // still commit (consumers commit what they processed before rejoining); once the
                // join phase is over, the old generation's assignment no longer holds.
                if g.state() == State::CompletingRebalance {
                    return code::REBALANCE_IN_PROGRESS;
                }
                if generation != g.generation {
                    return code::ILLEGAL_GENERATION;
                }
            }
        }
        // Durable first, then visible.
        if let Err(e) = offsets_log::append(&self.admin, group, &offsets).await {
            tracing::error!(group, error = %e, "could not persist committed offsets");
            return code::KAFKA_STORAGE_ERROR;
        }
        let mut groups = self.lock();
        let g = group_entry(&mut groups, group);
        for (topic, partition, c) in offsets {
            g.offsets.insert((topic, partition), c);
        }
        code::NONE
    }

    /// TxnOffsetCommit: offsets a transactional producer commits for the group, written to the
    /// group's partition in a transactional batch of the producer and visible once its
    /// transaction commits ([`GroupCoordinator::complete_transaction`]). Member and generation
    /// are checked when given (KIP-447), as for a plain commit.
    pub async fn txn_commit(
        &self,
        group: &str,
        producer: (i64, i16),
        generation: i32,
        member: &str,
        instance_id: Option<&str>,
        offsets: Vec<(String, i32, Committed)>,
    ) -> i16 {
        if let Err(e) = self.check(group).await {
            return e;
        }
        {
            let mut groups = self.lock();
            let g = group_entry(&mut groups, group);
            if !member.is_empty() || generation >= 0 {
                if let Err(e) = g.check_member(member, instance_id) {
                    return e;
                }
                if generation != g.generation {
                    return code::ILLEGAL_GENERATION;
                }
            }
        }
        if let Err(e) =
            offsets_log::append_transactional(&self.admin, group, producer, &offsets).await
        {
            tracing::error!(group, error = %e, "could not persist transactional offsets");
            return code::KAFKA_STORAGE_ERROR;
        }
        let mut groups = self.lock();
        let pending = group_entry(&mut groups, group)
            .pending_txn
            .entry(producer.0)
            .or_default();
        for (topic, partition, c) in offsets {
            pending.insert((topic, partition), c);
        }
        code::NONE
    }

    /// A transaction marker reached `__consumer_offsets` partition `partition`: the producer's
    /// pending offsets there become committed (COMMIT) or are dropped (ABORT).
    pub fn complete_transaction(&self, partition: u32, producer_id: i64, commit: bool) {
        let mut groups = self.lock();
        for (name, g) in groups.iter_mut() {
            if offsets_log::partition_for(name) != partition {
                continue;
            }
            if let Some(offsets) = g.pending_txn.remove(&producer_id) {
                tracing::debug!(group = %name, producer_id, commit, offsets = offsets.len(), "transactional offsets settled");
                if commit {
                    g.offsets.extend(offsets);
                }
            }
        }
    }

    /// Partitions of the group with transactional offsets not yet settled (OffsetFetch with
    /// `require_stable` answers UNSTABLE_OFFSET_COMMIT for them).
    pub fn unstable_partitions(&self, group: &str) -> BTreeSet<(String, i32)> {
        self.lock()
            .get(group)
            .map(|g| {
                g.pending_txn
                    .values()
                    .flat_map(|o| o.keys().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Committed offsets of a group: the requested partitions, or all when `None`.
    pub fn fetch_offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(String, i32)>>,
    ) -> Vec<(String, i32, Option<Committed>)> {
        let groups = self.lock();
        let g = groups.get(group);
        match wanted {
            Some(w) => w
                .into_iter()
                .map(|(t, p)| {
                    let c = g.and_then(|g| g.offsets.get(&(t.clone(), p)).cloned());
                    (t, p, c)
                })
                .collect(),
            None => g
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// (group, protocol type, state) of every known group.
    pub fn list(&self) -> Vec<(String, String, State)> {
        self.lock()
            .iter()
            .map(|(name, g)| (name.clone(), g.protocol_type.clone(), g.state()))
            .collect()
    }

    /// State, protocol type, protocol and members of a group, if known.
    pub fn describe(&self, group: &str) -> Option<(State, String, String, Vec<Member>)> {
        self.lock().get(group).map(|g| {
            (
                g.state(),
                g.protocol_type.clone(),
                g.protocol.clone(),
                g.members.values().cloned().collect(),
            )
        })
    }

    /// True when the group has no members (its offsets may be reset or deleted).
    pub fn is_inactive(&self, group: &str) -> bool {
        self.lock().get(group).is_none_or(|g| g.members.is_empty())
    }

    /// Deletes an inactive group and its committed offsets (tombstoned in `__consumer_offsets`).
    pub async fn delete_group(&self, group: &str) -> i16 {
        if let Some(e) = self.owner_error(group) {
            return e;
        }
        let keys: Vec<(String, i32)> = {
            let groups = self.lock();
            match groups.get(group) {
                None => return code::GROUP_ID_NOT_FOUND,
                Some(g) if !g.members.is_empty() => return code::NON_EMPTY_GROUP,
                Some(g) => g.offsets.keys().cloned().collect(),
            }
        };
        let mut records: Vec<_> = keys
            .iter()
            .map(|(t, p)| offsets_log::offset_record(group, t, *p, None))
            .collect();
        records.push(offsets_log::group_record(group, None));
        if let Err(e) = offsets_log::append_records(&self.admin, group, records).await {
            tracing::error!(group, error = %e, "could not delete committed offsets");
            return code::KAFKA_STORAGE_ERROR;
        }
        let mut groups = self.lock();
        if groups.get(group).is_some_and(|g| g.members.is_empty()) {
            groups.remove(group);
        }
        code::NONE
    }

    /// Deletes committed offsets (Kafka's OffsetDelete). A partition a current member is assigned
    /// keeps its offset (GROUP_SUBSCRIBED_TO_TOPIC). Returns an error code per partition.
    pub async fn delete_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<i16>, i16> {
        if let Some(e) = self.owner_error(group) {
            return Err(e);
        }
        let (codes, doomed) = {
            let groups = self.lock();
            let Some(g) = groups.get(group) else {
                return Err(code::GROUP_ID_NOT_FOUND);
            };
            let assigned: std::collections::HashSet<(String, i32)> = g
                .members
                .values()
                .flat_map(|m| decode_assignment(&m.assignment))
                .collect();
            let codes: Vec<i16> = partitions
                .iter()
                .map(|tp| {
                    if assigned.contains(tp) {
                        code::GROUP_SUBSCRIBED_TO_TOPIC
                    } else {
                        code::NONE
                    }
                })
                .collect();
            let doomed: Vec<(String, i32)> = partitions
                .into_iter()
                .zip(&codes)
                .filter(|(tp, c)| **c == code::NONE && g.offsets.contains_key(tp))
                .map(|(tp, _)| tp)
                .collect();
            (codes, doomed)
        };
        let records = doomed
            .iter()
            .map(|(t, p)| offsets_log::offset_record(group, t, *p, None))
            .collect();
        if let Err(e) = offsets_log::append_records(&self.admin, group, records).await {
            tracing::error!(group, error = %e, "could not delete committed offsets");
            return Err(code::KAFKA_STORAGE_ERROR);
        }
        if let Some(g) = self.lock().get_mut(group) {
            for tp in &doomed {
                g.offsets.remove(tp);
            }
        }
        Ok(codes)
    }

    /// Enforces rebalance deadlines and session timeouts; run every ~100 ms.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.lock();
        for (name, g) in groups.iter_mut() {
            if g.state() == State::PreparingRebalance
                && g.rebalance_deadline.is_some_and(|d| d <= now)
            {
                g.complete_join();
                continue;
            }
            // As in Kafka, a member waiting in JoinGroup or SyncGroup is alive; any other member
            // that has not been heard from within its session is gone, whatever the state (so a
            // member that died mid-rebalance, or one restored from __consumer_offsets that never
            // comes back, holds a rebalance up for its session timeout, not the rebalance timeout).
            let expired: Vec<String> = g
                .members
                .values()
                .filter(|m| {
                    !g.pending_joins.contains_key(&m.id)
                        && !g.pending_syncs.contains_key(&m.id)
                        && now.duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %name, member = %id, "session expired");
                g.remove_member(&id, self.settings.initial_delay);
            }
        }
    }

    /// Writes the membership of groups whose rebalance completed or that emptied.
    pub async fn store_groups(&self) {
        let pending: Vec<(String, offsets_log::GroupSnapshot)> = self
            .lock()
            .iter_mut()
            .filter(|(_, g)| g.needs_store)
            .map(|(name, g)| {
                g.needs_store = false;
                (name.clone(), g.snapshot())
            })
            .collect();
        for (name, snapshot) in pending {
            let record = offsets_log::group_record(&name, Some(&snapshot));
            if let Err(e) = offsets_log::append_records(&self.admin, &name, vec![record]).await {
                tracing::error!(group = %name, error = %e, "could not store group metadata");
                if let Some(g) = self.lock().get_mut(&name) {
                    g.needs_store = true;
                }
            }
        }
    }

    /// Kafka's offsets.retention.minutes: an empty group's committed offsets expire once the
    /// retention has passed since the group emptied and since the commit. A group left with no
    /// members and no offsets is deleted. Returns how many offsets expired.
    pub async fn expire_offsets(&self, now_ms: i64) -> usize {
        let retention = self.settings.offsets_retention.as_millis() as i64;
        // (group, its expired partitions, whether that was all it had)
        type Expired = (String, Vec<(String, i32)>, bool);
        let doomed: Vec<Expired> = self
            .lock()
            .iter()
            .filter(|(_, g)| g.state() == State::Empty)
            .filter_map(|(name, g)| {
                let expired: Vec<(String, i32)> = g
                    .offsets
                    .iter()
                    .filter(|(_, c)| c.timestamp.max(g.state_since_ms) + retention <= now_ms)
                    .map(|(tp, _)| tp.clone())
                    .collect();
                let drop_group = expired.len() == g.offsets.len();
                (!expired.is_empty()).then(|| (name.clone(), expired, drop_group))
            })
            .collect();
        let mut count = 0;
        for (name, expired, drop_group) in doomed {
            let mut records: Vec<_> = expired
                .iter()
                .map(|(t, p)| offsets_log::offset_record(&name, t, *p, None))
                .collect();
            if drop_group {
                records.push(offsets_log::group_record(&name, None));
            }
            if let Err(e) = offsets_log::append_records(&self.admin, &name, records).await {
                tracing::error!(group = %name, error = %e, "could not expire offsets");
                continue;
            }
            let mut groups = self.lock();
            if let Some(g) = groups.get_mut(&name) {
                for tp in &expired {
                    g.offsets.remove(tp);
                }
                count += expired.len();
                if g.offsets.is_empty() && g.members.is_empty() {
                    groups.remove(&name);
                }
            }
            tracing::info!(group = %name, offsets = expired.len(), "expired committed offsets");
        }
        count
    }

    /// Runs [`GroupCoordinator::tick`], stores changed groups and expires offsets until `stop`;
    /// then stores what changed last.
    pub async fn run_ticker(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut retention = tokio::time::interval(
            self.settings
                .retention_check_interval
                .max(Duration::from_millis(10)),
        );
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.tick();
                    self.store_groups().await;
                }
                _ = retention.tick() => {
                    self.expire_offsets(now_ms()).await;
                }
                _ = stop.changed() => break,
            }
        }
        self.store_groups().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coordinator over a real single-node broker core (quorum, replica manager) on `dir`.
    struct Opened {
        node: crate::cluster::node::Node,
        c: Arc<GroupCoordinator>,
    }

    impl std::ops::Deref for Opened {
        type Target = Arc<GroupCoordinator>;
        fn deref(&self) -> &Self::Target {
            &self.c
        }
    }

    impl Opened {
        /// Stops the broker core (as a process exit would), so the directory can be reopened.
        async fn close(self) {
            drop(self.c);
            self.node.stop().await;
        }
    }

    async fn open_with(dir: &std::path::Path, settings: GroupSettings) -> Opened {
        let node = crate::cluster::node::Node::start_for_tests(dir).await;
        let admin = node.admin.clone();
        let c = GroupCoordinator::open(admin, settings);
        c.follow().await;
        Opened { node, c }
    }

    async fn coordinator(dir: &std::path::Path) -> Opened {
        open_with(
            dir,
            GroupSettings {
                initial_delay: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .await
    }

    fn join(member: &str, session_ms: u64) -> JoinRequest {
        JoinRequest {
            group: "g".into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            session_timeout: Duration::from_millis(session_ms),
            rebalance_timeout: Duration::from_millis(2000),
        }
    }

    async fn ticking(c: Arc<GroupCoordinator>) {
        loop {
            c.tick();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_join_sync_heartbeat_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path()).await;
        let ticker = tokio::spawn(ticking(c.clone()));
        // One member: after the initial delay it leads generation 1 and sees itself.
        let a = c.join(join("", 1000)).await;
        assert_eq!((a.error, a.generation), (code::NONE, 1));
        assert_eq!(a.leader, a.member_id);
        assert_eq!(a.members.len(), 1);
        let s = c
            .sync(
                "g",
                1,
                &a.member_id,
                None,
                vec![(a.member_id.clone(), Bytes::from_static(b"all"))],
            )
            .await;
        assert_eq!((s.error, &s.assignment[..]), (code::NONE, &b"all"[..]));
        assert_eq!(c.heartbeat("g", 1, &a.member_id, None), code::NONE);
        assert_eq!(
            c.heartbeat("g", 0, &a.member_id, None),
            code::ILLEGAL_GENERATION
        );
        assert_eq!(c.heartbeat("g", 1, "nobody", None), code::UNKNOWN_MEMBER_ID);
        // A second member starts a rebalance; the first learns it from its heartbeat and rejoins.
        let c2 = c.clone();
        let b = tokio::spawn(async move { c2.join(join("", 1000)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            c.heartbeat("g", 1, &a.member_id, None),
            code::REBALANCE_IN_PROGRESS
        );
        // While the rebalance is being prepared, the current generation may still commit.
        assert_eq!(
            c.commit("g", 1, &a.member_id, None, offset(3, 0)).await,
            code::NONE
        );
        let a2 = c.join(join(&a.member_id, 1000)).await;
        let b = b.await.unwrap();
        assert_eq!((a2.generation, b.generation), (2, 2));
        assert_eq!(a2.leader, a.member_id, "the leader stays");
        assert_eq!(
            (a2.members.len(), b.members.len()),
            (2, 0),
            "only the leader sees the members"
        );
        // Commits are checked against the generation.
        assert_eq!(
            c.commit("g", 1, &a.member_id, None, offset(5, 0)).await,
            code::REBALANCE_IN_PROGRESS,
            "the join phase is over: generation 1's assignment no longer holds"
        );
        assert_eq!(
            c.fetch_offsets("g", None)[0].2.as_ref().map(|c| c.offset),
            Some(3)
        );
        // b stops heartbeating: its session (1 s) expires and a rebalance starts without it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.describe("g").map(|d| d.3.len()) != Some(1) && Instant::now() < deadline {
            c.heartbeat("g", 2, &a.member_id, None);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            c.describe("g").unwrap().3.len(),
            1,
            "the silent member expired"
        );
        ticker.abort();
    }

    fn offset(o: i64, timestamp: i64) -> Vec<(String, i32, Committed)> {
        vec![(
            "t".to_string(),
            0,
            Committed {
                offset: o,
                leader_epoch: -1,
                metadata: String::new(),
                timestamp,
            },
        )]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn membership_is_stored_and_rebuilt_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (member, assignment) = {
            let c = coordinator(dir.path()).await;
            let ticker = tokio::spawn(ticking(c.clone()));
            let a = c.join(join("", 5000)).await;
            let s = c
                .sync(
                    "g",
                    a.generation,
                    &a.member_id,
                    None,
                    vec![(a.member_id.clone(), Bytes::from_static(b"t:0,1"))],
                )
                .await;
            assert_eq!(s.error, code::NONE);
            assert_eq!(
                c.commit("g", 1, &a.member_id, None, offset(7, 1)).await,
                code::NONE
            );
            c.store_groups().await;
            ticker.abort();
            c.close().await;
            (a.member_id, s.assignment)
        };
        // Reopened: the member is still there with its assignment, in the same generation, so
        // its heartbeats go on without a rebalance (what Kafka clients expect after a failover).
        let c = coordinator(dir.path()).await;
        let (state, ptype, protocol, members) = c.describe("g").unwrap();
        assert_eq!(
            (state, ptype.as_str(), protocol.as_str()),
            (State::Stable, "consumer", "range")
        );
        assert_eq!(members.len(), 1);
        assert_eq!(
            (&members[0].id, &members[0].assignment),
            (&member, &assignment)
        );
        assert_eq!(members[0].session_timeout, Duration::from_millis(5000));
        assert_eq!(c.heartbeat("g", 1, &member, None), code::NONE);
        assert_eq!(c.fetch_offsets("g", None)[0].2.as_ref().unwrap().offset, 7);
        // It leaves; the empty group is stored too and comes back empty, offsets kept.
        assert_eq!(c.leave("g", &member, None), code::NONE);
        c.store_groups().await;
        c.close().await;
        let c = coordinator(dir.path()).await;
        let (state, _, _, members) = c.describe("g").unwrap();
        assert_eq!((state, members.len()), (State::Empty, 0));
        assert_eq!(c.fetch_offsets("g", None).len(), 1);
        // Deleting the group tombstones its membership as well as its offsets.
        assert_eq!(c.delete_group("g").await, code::NONE);
        c.close().await;
        let c = coordinator(dir.path()).await;
        assert!(c.describe("g").is_none());
        c.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_static_member_takes_its_place_without_a_rebalance() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path()).await;
        let ticker = tokio::spawn(ticking(c.clone()));
        let static_join = |member: &str, instance: &str| {
            let mut j = join(member, 5000);
            j.instance_id = Some(instance.into());
            j
        };
        let c2 = c.clone();
        let a = tokio::spawn(async move { c2.join(static_join("", "i-a")).await });
        let b = c.join(static_join("", "i-b")).await;
        let a = a.await.unwrap();
        let (leader, follower) = if a.leader == a.member_id {
            (a, b)
        } else {
            (b, a)
        };
        let assignments = vec![
            (leader.member_id.clone(), Bytes::from_static(b"L")),
            (follower.member_id.clone(), Bytes::from_static(b"F")),
        ];
        let c2 = c.clone();
        let fid = follower.member_id.clone();
        let gen = follower.generation;
        let f_sync = tokio::spawn(async move { c2.sync("g", gen, &fid, None, Vec::new()).await });
        c.sync("g", leader.generation, &leader.member_id, None, assignments)
            .await;
        assert_eq!(&f_sync.await.unwrap().assignment[..], b"F");
        let generation = follower.generation;
        // The follower's process restarts: it joins with no member id and its instance id.
        let instance = c
            .describe("g")
            .unwrap()
            .3
            .into_iter()
            .find(|m| m.id == follower.member_id)
            .and_then(|m| m.instance_id)
            .unwrap();
        let back = c.join(static_join("", &instance)).await;
        assert_eq!(back.error, code::NONE);
        assert_ne!(back.member_id, follower.member_id, "a new member id");
        assert_eq!(back.generation, generation, "no rebalance");
        assert_eq!(c.describe("g").unwrap().0, State::Stable);
        let s = c
            .sync("g", generation, &back.member_id, None, Vec::new())
            .await;
        assert_eq!((s.error, &s.assignment[..]), (code::NONE, &b"F"[..]));
        // The old incarnation is fenced; the leader never noticed.
        assert_eq!(
            c.heartbeat("g", generation, &follower.member_id, None),
            code::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.heartbeat("g", generation, &leader.member_id, None),
            code::NONE
        );
        // Naming its instance id, the old incarnation is told it was fenced (fatal for Kafka
        // clients) on every request, rather than UNKNOWN_MEMBER_ID (which makes it rejoin and
        // fight the new one for the assignment).
        let old = (follower.member_id.as_str(), Some(instance.as_str()));
        assert_eq!(
            c.heartbeat("g", generation, old.0, old.1),
            code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.sync("g", generation, old.0, old.1, Vec::new())
                .await
                .error,
            code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.commit("g", generation, old.0, old.1, offset(1, 0)).await,
            code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.join(static_join(old.0, &instance)).await.error,
            code::FENCED_INSTANCE_ID
        );
        assert_eq!(c.leave("g", old.0, old.1), code::FENCED_INSTANCE_ID);
        assert_eq!(c.describe("g").unwrap().0, State::Stable, "nothing moved");
        assert_eq!(
            c.heartbeat("g", generation, &back.member_id, old.1),
            code::NONE
        );
        // The current incarnation leaves by its instance id.
        assert_eq!(c.leave("g", &back.member_id, old.1), code::NONE);
        ticker.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_groups_offsets_expire_after_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            open_with(
                dir.path(),
                GroupSettings {
                    initial_delay: Duration::from_millis(10),
                    offsets_retention: Duration::from_secs(60),
                    ..Default::default()
                },
            )
        };
        let c = open().await;
        let t0 = now_ms();
        assert_eq!(
            c.commit("idle", -1, "", None, offset(5, t0)).await,
            code::NONE
        );
        // A group with a member keeps its offsets however old they are.
        let ticker = tokio::spawn(ticking(c.clone()));
        let mut j = join("", 30_000);
        j.group = "busy".into();
        let a = c.join(j).await;
        c.sync("busy", a.generation, &a.member_id, None, Vec::new())
            .await;
        assert_eq!(
            c.commit("busy", a.generation, &a.member_id, None, offset(9, t0))
                .await,
            code::NONE
        );
        assert_eq!(c.expire_offsets(t0 + 30_000).await, 0, "not yet");
        assert_eq!(c.expire_offsets(t0 + 61_000).await, 1);
        assert!(c.fetch_offsets("idle", None).is_empty());
        assert!(
            c.describe("idle").is_none(),
            "an empty group without offsets is gone"
        );
        assert_eq!(c.fetch_offsets("busy", None).len(), 1);
        ticker.abort();
        c.close().await;
        // The expiry was written to __consumer_offsets.
        let c = open().await;
        assert!(c.fetch_offsets("idle", None).is_empty());
        assert_eq!(c.fetch_offsets("busy", None).len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn manual_commits_persist_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = coordinator(dir.path()).await;
            let off = vec![(
                "t".to_string(),
                3,
                Committed {
                    offset: 42,
                    leader_epoch: 1,
                    metadata: "m".into(),
                    timestamp: 7,
                },
            )];
            assert_eq!(c.commit("manual", -1, "", None, off).await, code::NONE);
            assert_eq!(
                c.fetch_offsets("manual", Some(vec![("t".into(), 3), ("t".into(), 4)]))[1].2,
                None
            );
            c.close().await;
        }
        let c = coordinator(dir.path()).await;
        let got = c.fetch_offsets("manual", None);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0]
                .2
                .as_ref()
                .map(|c| (c.offset, c.leader_epoch, c.metadata.as_str())),
            Some((42, 1, "m"))
        );
    }
}
