//! Replication: how a partition's replicas agree on what is committed.
//!
//! Today: [`Partition`], the leader-side replica state every produce and fetch goes through —
//! leader epoch, ISR, high watermark, `acks` and `min.insync.replicas`, and the data-arrived
//! signal long polls wait on. With one replica per partition the HW follows the log end offset.
//!
//! Next (see docs/ARCHITECTURE.md): the Raft-backed controller (raft-rs) holding cluster
//! metadata, follower fetchers, ISR shrink/expand, leader-epoch truncation.

pub mod partition;

pub use partition::{Acks, Partition, PartitionError, ReplicaConfig};
