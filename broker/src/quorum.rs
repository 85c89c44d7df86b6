//! The metadata quorum inside `sluice serve`: this broker's voter (raft-rs over durable storage
//! in `data_dir/meta/raft/`), its driver thread, the gRPC transport to the other voters, and the
//! broker-to-broker listener on `controller_addr`.
//!
//! With no `controller_quorum_voters` the broker is a one-voter quorum of itself (KRaft's
//! combined mode with a single node), so `sluice serve` with no configuration still just works.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_replication::controller::active::{ActiveController, ActiveControllerConfig};
use sluice_replication::controller::driver::{self, DriverConfig, QuorumHandle};
use sluice_replication::controller::raft_node::{MetadataNode, MetadataNodeConfig};
use tokio::net::TcpListener;

use crate::config::BrokerConfig;
use crate::grpc::internal::{self, GrpcRaftTransport};

/// Outgoing Raft messages queued per peer before they are dropped (Raft retransmits).
const PEER_QUEUE: usize = 1024;

/// How often the active controller looks for expired broker sessions.
const CONTROLLER_TICK: Duration = Duration::from_millis(250);

pub struct Quorum {
    pub handle: QuorumHandle,
    /// This voter's controller (answers only while it leads).
    pub controller: Arc<ActiveController>,
    ticker: tokio::task::JoinHandle<()>,
    /// Voter id -> `host:port` of its `controller_addr`.
    pub voters: Vec<(u64, String)>,
    /// The internal service's transaction-marker writer, filled in once the broker has one.
    pub txn_markers: internal::TxnMarkersSlot,
    thread: Option<std::thread::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("invalid quorum configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the metadata log in {dir}: {source}")]
    Open {
        dir: std::path::PathBuf,
        source: sluice_replication::controller::raft_node::MetadataNodeError,
    },
    #[error("cannot start the controller thread: {0}")]
    Thread(std::io::Error),
}

impl Quorum {
    /// Opens this broker's voter and starts serving `listener` (bound to `controller_addr`).
    pub async fn start(
        config: &BrokerConfig,
        listener: TcpListener,
        topics: Arc<crate::topics::TopicManager>,
    ) -> Result<Quorum, QuorumError> {
        let voters = config.quorum_voters()?;
        let id = config.node_id as u64;
        let ids: Vec<u64> = voters.iter().map(|(i, _)| *i).collect();
        let dir = config.data_dir.join("meta").join("raft");
        let mut node_config = MetadataNodeConfig::new(id, ids.clone());
        node_config.snapshot_every = config.metadata_snapshot_interval_records;
        let open_dir = dir.clone();
        let node = tokio::task::spawn_blocking(move || MetadataNode::open(&open_dir, node_config))
            .await
            .map_err(|e| QuorumError::Thread(std::io::Error::other(e.to_string())))?
            .map_err(|source| QuorumError::Open { dir, source })?;
        let peers: HashMap<u64, String> = voters
            .iter()
            .filter(|(i, _)| *i != id)
            .map(|(i, a)| (*i, a.clone()))
            .collect();
        let transport = Arc::new(GrpcRaftTransport::start(&peers, PEER_QUEUE));
        let (handle, thread) = driver::spawn(
            node,
            ids,
            transport.clone(),
            DriverConfig {
                tick: Duration::from_millis(config.controller_tick_ms),
                ..DriverConfig::default()
            },
        )
        .map_err(QuorumError::Thread)?;
        transport.attach(handle.clone());
        let controller = Arc::new(ActiveController::new(
            handle.clone(),
            Arc::new(sluice_log::MonotonicClock::default()),
            ActiveControllerConfig {
                broker_session_timeout_ms: config.broker_session_timeout_ms as i64,
                auto_leader_rebalance: config.auto_leader_rebalance_enable,
                leader_imbalance_check_interval_ms: config.leader_imbalance_check_interval_ms
                    as i64,
                unclean_leader_election_default: config
                    .topic_settings(&Default::default())
                    .is_ok_and(|s| s.unclean_leader_election),
            },
            u64::from_le_bytes(
                crate::topics::random_uuid().as_bytes()[..8]
                    .try_into()
                    .unwrap_or_default(),
            ),
        ));
        let ticker = {
            let c = controller.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(CONTROLLER_TICK);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    c.tick().await;
                }
            })
        };
        let txn_markers = internal::TxnMarkersSlot::default();
        let svc = internal::server(
            handle.clone(),
            controller.clone(),
            Some(topics),
            txn_markers.clone(),
        );
        // Peers hold their Raft streams open for good, so a graceful server shutdown would wait
        // forever: the server is aborted at shutdown instead (the process exits right after).
        let server = tokio::spawn(async move {
            // The builder's `tcp_nodelay` applies only to connections it accepts itself, not to
            // an incoming stream: set it on each socket. With Nagle on, a small response (a
            // replica fetch answer after an append) waited for the peer's delayed ACK — ~40 ms
            // on every acks=all produce and every transaction marker.
            let incoming = futures::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |s| {
                    s.inspect(|s| {
                        if let Err(e) = s.set_nodelay(true) {
                            tracing::debug!(error = %e, "TCP_NODELAY not set on a peer connection");
                        }
                    })
                },
            );
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(error = %e, "controller listener failed");
            }
        });
        Ok(Quorum {
            handle,
            controller,
            txn_markers,
            ticker,
            voters,
            thread: Some(thread),
            server,
        })
    }

    /// Stops the voter (its state is on disk already) and the listener.
    pub async fn stop(mut self) {
        self.ticker.abort();
        self.server.abort();
        // The stop command may wait for room in a full queue: not on a runtime thread.
        let handle = self.handle.clone();
        let thread = self.thread.take();
        let _ = tokio::task::spawn_blocking(move || {
            handle.stop();
            if let Some(t) = thread {
                let _ = t.join();
            }
        })
        .await;
    }
}
