//! Cluster metadata: the records of the controller's log and the image they build.
//!
//! - [`records`]: [`MetadataRecord`], the log's entries (KRaft's record types).
//! - [`image`]: [`MetadataImage`], what the cluster holds as of one log offset, and the
//!   [`MetadataChange`]s each record makes.

pub mod image;
pub mod records;

pub use image::{
    ApplyError, BrokerRegistration, MetadataChange, MetadataImage, PartitionRegistration,
    TopicImage,
};
pub use records::{
    BrokerId, ConfigResource, Endpoints, MetadataRecord, PartitionChangeRecord, PartitionRecord,
    RegisterBrokerRecord, NO_LEADER,
};
