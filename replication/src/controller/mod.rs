//! The controller: the decisions of the active controller over the metadata image.
//!
//! - [`state_machine`]: placement, broker registration / heartbeat / fencing / controlled
//!   shutdown, leader election, AlterPartition validation, topic creation and deletion — pure
//!   functions of the image, the time and injected randomness, returning metadata records.
//!
//! Next (the cluster issue): the raft-rs node that replicates those records among the
//! `controller_quorum_voters`, its durable storage under `data_dir/meta/`, and the driver that
//! serialises requests through the state machine.

pub mod raft_node;
pub mod raft_storage;
pub mod state_machine;

pub use state_machine::{
    AlterPartition, ControllerConfig, ControllerError, ControllerState, Decision, Heartbeat,
    HeartbeatReply, Randomness, RegisterBroker, SeededRandom, UNCLEAN_LEADER_ELECTION,
};
