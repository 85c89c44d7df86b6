//! Replication: how a partition's replicas agree on what is committed.
//!
//! Today: [`Partition`], the leader-side replica state every produce and fetch goes through —
//! leader epoch, ISR, high watermark, `acks` and `min.insync.replicas`, and the data-arrived
//! signal long polls wait on. With one replica per partition the HW follows the log end offset.
//!
//! The cluster's metadata: [`metadata`] (the records of the controller's log and the
//! [`metadata::MetadataImage`] every broker builds from them) and [`controller`] (the active
//! controller's decisions as a pure state machine: placement, fencing, elections, AlterPartition).
//!
//! Next (see docs/ARCHITECTURE.md): the raft-rs quorum that replicates the metadata log, the
//! replica manager that reacts to image changes, follower fetchers, ISR shrink/expand,
//! leader-epoch truncation.

pub mod controller;
pub mod metadata;
pub mod partition;

pub use partition::{Acks, OffsetQuery, Partition, PartitionError, ReplicaConfig, ReplicaState};
