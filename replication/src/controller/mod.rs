//! The controller: the decisions of the active controller over the metadata image.
//!
//! - [`state_machine`]: placement, broker registration / heartbeat / fencing / controlled
//!   shutdown, leader election, AlterPartition validation, topic creation and deletion — pure
//!   functions of the image, the time and injected randomness, returning metadata records.
//!
//! - [`api`]: the calls brokers make to the active controller; [`active`]: the active
//!   controller at run time, deciding one call at a time and proposing through the quorum.
//! - [`raft_storage`]: raft-rs's storage made durable under `data_dir/meta/raft/`.
//! - [`raft_node`]: one voter of the metadata quorum (raft-rs `RawNode`), applying committed
//!   decisions to the [`crate::metadata::MetadataImage`]; synchronous, so a seeded simulation
//!   drives it (`tests/raft_sim.rs`).
//! - [`driver`]: the voter on its own thread with bounded queues, and the [`driver::QuorumHandle`]
//!   the broker proposes through; peers are reached through a [`driver::RaftTransport`] (gRPC in
//!   the broker).

pub mod active;
pub mod api;
pub mod driver;
pub mod raft_node;
pub mod raft_storage;
pub mod state_machine;

pub use state_machine::{
    target_replicas, AlterPartition, ControllerConfig, ControllerError, ControllerState, Decision,
    Heartbeat, HeartbeatReply, ImportedTopic, Randomness, Reassignment, RegisterBroker,
    SeededRandom, UNCLEAN_LEADER_ELECTION,
};
