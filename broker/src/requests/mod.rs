//! The request layer both front-ends call (Kafka and gRPC are codecs around it).
//!
//! - [`admin`]: topic creation, deletion, partition growth and config changes, decided by the
//!   active controller.
//! - [`producer_ids`]: producer ids for idempotent producers, in blocks from the controller.

pub mod admin;
pub mod producer_ids;
