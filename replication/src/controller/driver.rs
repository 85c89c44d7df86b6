//! The metadata quorum at run time: a [`MetadataNode`] on its own thread, fed by a bounded
//! command queue, talking to peers through a [`RaftTransport`].
//!
//! One OS thread owns the node: it ticks every `tick`, steps the messages peers sent, proposes
//! decisions, and runs the Ready loop, whose fsyncs would otherwise stall an async runtime. The
//! rest of the broker holds a cloneable [`QuorumHandle`]: it proposes and waits for the commit,
//! and reads the latest [`MetadataImage`] and [`QuorumStatus`] from watch channels. Every queue
//! is bounded: a full command queue drops Raft messages (Raft retransmits) and refuses proposals
//! with [`ProposeError::Busy`].

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::{Message, MessageType};
use tokio::sync::{oneshot, watch};

use super::raft_node::{Committed, MetadataNode, MetadataNodeError, ProposalId};
use crate::metadata::{MetadataImage, MetadataRecord};

/// Carries Raft messages to peers. Implementations queue and return at once (bounded); the
/// driver is told of failures through [`QuorumHandle::report_unreachable`] and
/// [`QuorumHandle::report_snapshot`].
pub trait RaftTransport: Send + Sync + 'static {
    fn send(&self, msg: Message);
}

/// Why a proposal did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the active controller (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the controller's queue is full; retry")]
    Busy,
    #[error("leadership changed before the proposal committed; its outcome is unknown")]
    LeadershipLost,
    #[error("the controller stopped")]
    Stopped,
    #[error("the metadata log failed: {0}")]
    Storage(String),
}

/// What the quorum looks like from this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumStatus {
    pub node_id: u64,
    pub voters: Vec<u64>,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// As leader: (voter, highest index replicated on it). Empty on followers.
    pub voter_progress: Vec<(u64, u64)>,
}

enum Command {
    Step(Message),
    Propose {
        records: Vec<MetadataRecord>,
        reply: oneshot::Sender<Result<u64, ProposeError>>,
    },
    ReportSnapshot {
        to: u64,
        delivered: bool,
    },
    ReportUnreachable(u64),
    Stop,
}

/// The broker's view of the quorum. Cheap to clone.
#[derive(Clone)]
pub struct QuorumHandle {
    tx: SyncSender<Command>,
    /// Set at stop: a write retrying on a full disk gives up.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    image: watch::Receiver<Arc<MetadataImage>>,
    status: watch::Receiver<QuorumStatus>,
    committed: tokio::sync::broadcast::Sender<Arc<Committed>>,
}

impl QuorumHandle {
    /// Hands a peer's message to the node; dropped when the queue is full (Raft retransmits).
    pub fn step(&self, msg: Message) {
        let _ = self.tx.try_send(Command::Step(msg));
    }

    pub fn report_snapshot(&self, to: u64, delivered: bool) {
        let _ = self.tx.try_send(Command::ReportSnapshot { to, delivered });
    }

    pub fn report_unreachable(&self, to: u64) {
        let _ = self.tx.try_send(Command::ReportUnreachable(to));
    }

    /// Proposes one decision and waits until it is committed and applied here: returns its
    /// metadata offset. Only the leader accepts.
    pub async fn propose(&self, records: Vec<MetadataRecord>) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Command::Propose { records, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ProposeError::Stopped),
        }
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// The latest applied image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn watch_image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.clone()
    }

    pub fn status(&self) -> QuorumStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<QuorumStatus> {
        self.status.clone()
    }

    /// Every batch applied from now on, in order (a lagging subscriber sees `Lagged` and should
    /// resynchronise from [`QuorumHandle::image`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Committed>> {
        self.committed.subscribe()
    }

    /// Stops the driver thread (the node's state is all on disk already). Blocks while the
    /// command queue is full: call it from a blocking context.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.tx.send(Command::Stop);
    }
}

/// Bounds and pacing of the driver.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    /// Raft tick (`controller_tick_ms`): elections after `election_tick` of these.
    pub tick: Duration,
    /// Commands (peer messages, proposals) queued for the node (`controller_queue_size`).
    pub queue: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            tick: Duration::from_millis(100),
            queue: 4096,
        }
    }
}

/// Starts the driver thread for `node`.
pub fn spawn(
    mut node: MetadataNode,
    voters: Vec<u64>,
    transport: Arc<dyn RaftTransport>,
    config: DriverConfig,
) -> std::io::Result<(QuorumHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = sync_channel(config.queue.max(16));
    let (image_tx, image) = watch::channel(Arc::new(node.image().clone()));
    let (status_tx, status) = watch::channel(QuorumStatus::default());
    let (committed, _) = tokio::sync::broadcast::channel(1024);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    node.retry_failed_writes(stopping.clone());
    let handle = QuorumHandle {
        tx,
        stopping,
        image,
        status,
        committed: committed.clone(),
    };
    let driver = Driver {
        node,
        voters,
        transport,
        image_tx,
        status_tx,
        committed,
        pending: BTreeMap::new(),
        next_seq: 0,
        last_term: 0,
    };
    let thread = std::thread::Builder::new()
        .name("sluice-controller".into())
        .spawn(move || driver.run(rx, config.tick))?;
    Ok((handle, thread))
}

struct Driver {
    node: MetadataNode,
    voters: Vec<u64>,
    transport: Arc<dyn RaftTransport>,
    image_tx: watch::Sender<Arc<MetadataImage>>,
    status_tx: watch::Sender<QuorumStatus>,
    committed: tokio::sync::broadcast::Sender<Arc<Committed>>,
    pending: BTreeMap<u64, oneshot::Sender<Result<u64, ProposeError>>>,
    next_seq: u64,
    last_term: u64,
}

impl Driver {
    fn run(mut self, rx: Receiver<Command>, tick: Duration) {
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(cmd) => {
                    self.handle(cmd);
                    // Take whatever else is queued before the (fsyncing) Ready turn.
                    while let Ok(cmd) = rx.try_recv() {
                        if matches!(cmd, Command::Stop) {
                            return self.fail_pending(ProposeError::Stopped);
                        }
                        self.handle(cmd);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick; // fell behind (a long fsync): no burst
                }
            }
            if let Err(e) = self.ready() {
                tracing::error!(error = %e, "metadata log write failed; the controller stops");
                self.fail_pending(ProposeError::Storage(e.to_string()));
                return;
            }
        }
        self.fail_pending(ProposeError::Stopped);
    }

    fn fail_pending(&mut self, e: ProposeError) {
        for (_, reply) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(e.clone()));
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Step(m) => {
                if let Err(e) = self.node.step(m) {
                    tracing::debug!(error = %e, "raft message not taken");
                }
            }
            Command::Propose { records, reply } => {
                self.next_seq += 1;
                let id = ProposalId {
                    node: self.node.id(),
                    seq: self.next_seq,
                };
                match self.node.propose(id, records) {
                    Ok(()) => {
                        self.pending.insert(id.seq, reply);
                    }
                    Err(MetadataNodeError::NotLeader { leader }) => {
                        let _ = reply.send(Err(ProposeError::NotLeader { leader }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Storage(e.to_string())));
                    }
                }
            }
            Command::ReportSnapshot { to, delivered } => self.node.report_snapshot(to, delivered),
            Command::ReportUnreachable(to) => self.node.report_unreachable(to),
            Command::Stop => {}
        }
    }

    fn ready(&mut self) -> Result<(), MetadataNodeError> {
        let out = self.node.handle_ready()?;
        for m in out.messages {
            let snap = m.get_msg_type() == MessageType::MsgSnapshot;
            let to = m.to;
            self.transport.send(m);
            if snap {
                tracing::info!(to, "sent a metadata snapshot");
            }
        }
        let applied_any = !out.committed.is_empty() || out.restored_from_snapshot.is_some();
        // The image first: a proposer that wakes up must find its decision in it.
        if applied_any {
            self.image_tx
                .send_replace(Arc::new(self.node.image().clone()));
        }
        for c in out.committed {
            if let Some(p) = c.proposal.filter(|p| p.node == self.node.id()) {
                if let Some(reply) = self.pending.remove(&p.seq) {
                    let _ = reply.send(Ok(c.index));
                }
            }
            let _ = self.committed.send(Arc::new(c));
        }
        // A proposal made under an older term may never commit: its caller must not wait forever.
        let term = self.node.term();
        if term != self.last_term {
            if self.last_term != 0 && !self.pending.is_empty() {
                self.fail_pending(ProposeError::LeadershipLost);
            }
            self.last_term = term;
        }
        let status = QuorumStatus {
            node_id: self.node.id(),
            voters: self.voters.clone(),
            leader: self.node.leader_id(),
            is_leader: self.node.is_leader(),
            term,
            commit_index: self.node.commit_index(),
            applied_index: self.node.applied_index(),
            snapshot_index: self.node.snapshot_index(),
            voter_progress: self.node.voter_progress(),
        };
        self.status_tx.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        Ok(())
    }
}
