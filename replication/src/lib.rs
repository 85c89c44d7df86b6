//! Replication: how a partition's replicas agree on what is committed, and the cluster's
//! metadata.
//!
//! - [`partition`]: [`Partition`], every replica's state — as leader it takes produces (acks,
//!   `min.insync.replicas`), serves followers' fetches, tracks their progress, moves the high
//!   watermark and proposes ISR changes; as follower it appends the leader's batches and
//!   truncates a diverging tail (leader epochs).
//! - [`metadata`]: the records of the controller's log and the [`metadata::MetadataImage`]
//!   every broker builds from them.
//! - [`controller`]: the active controller's decisions as a pure state machine (placement,
//!   fencing, elections, AlterPartition, reassignment), the raft-rs quorum that replicates the
//!   metadata log, and the driver brokers talk to.
//! - [`histogram`]: the acks=all wait histogram the broker exposes.
//!
//! docs/ARCHITECTURE.md describes the protocols.

pub mod controller;
pub mod histogram;
pub mod metadata;
pub mod partition;
pub mod purgatory;

pub use partition::{
    Acks, Appended, InitialHw, Isolation, OffsetQuery, Partition, PartitionError, ReplicaConfig,
    ReplicaState, HW_CHECKPOINT, LEGACY_HW_CHECKPOINT,
};
