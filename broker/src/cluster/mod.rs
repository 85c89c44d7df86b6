//! This broker as a member of the cluster: reaching the active controller
//! ([`controller_client`]) and the broker's own lifecycle — registration, heartbeats, fencing,
//! controlled shutdown ([`lifecycle`]).

pub mod controller_client;
pub mod lifecycle;
pub mod node;
