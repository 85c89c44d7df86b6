//! The request layer both front-ends call (Kafka and gRPC are codecs around it).
//!
//! - [`admin`]: topic creation, deletion, partition growth and config changes, decided by the
//!   active controller.

pub mod admin;
