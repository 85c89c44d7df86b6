//! The broker's cluster core, started before any client listener: the metadata quorum voter,
//! the replica manager following its image, the admin request layer and the lifecycle
//! (registration, heartbeats). `sluice serve` wraps listeners around it; unit tests start one
//! on a temp directory to get a real single-node broker without sockets for clients.

use std::sync::Arc;
use std::time::Duration;

use sluice_replication::metadata::{Endpoints, MetadataImage};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::controller_client::ControllerClient;
use super::lifecycle::Lifecycle;
use crate::config::BrokerConfig;
use crate::quorum::{Quorum, QuorumError};
use crate::requests::admin::Admin;
use crate::topics::{TopicError, TopicManager};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the data directory: {0}")]
    Data(#[from] TopicError),
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    #[error("a start-up task failed: {0}")]
    Task(String),
}

pub struct Node {
    pub topics: Arc<TopicManager>,
    pub admin: Arc<Admin>,
    pub quorum: Quorum,
    pub lifecycle: Arc<Lifecycle>,
    pub producer_ids: Arc<crate::requests::producer_ids::ProducerIds>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Opens the data directory and the quorum voter (serving `controller_listener`), follows
    /// the image, and registers with `endpoints` (the controller endpoint is filled in here).
    pub async fn start(
        config: Arc<BrokerConfig>,
        controller_listener: TcpListener,
        mut endpoints: Endpoints,
    ) -> Result<Node, NodeError> {
        let cfg = config.clone();
        let topics = tokio::task::spawn_blocking(move || TopicManager::open(cfg))
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        let topics = Arc::new(topics);
        let quorum = Quorum::start(&config, controller_listener, topics.clone()).await?;
        let client = Arc::new(ControllerClient::new(
            config.node_id as u64,
            quorum.handle.clone(),
            quorum.controller.clone(),
            &quorum.voters,
        ));
        // The replica manager follows the image: now (what this voter's log already holds) and
        // on every change.
        {
            let t = topics.clone();
            let image = quorum.handle.image();
            tokio::task::spawn_blocking(move || t.sync(&image))
                .await
                .map_err(|e| NodeError::Task(e.to_string()))?;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(follow_image(
            quorum.handle.watch_image(),
            topics.clone(),
        ))];
        endpoints.controller = quorum
            .voters
            .iter()
            .find(|(id, _)| *id == config.node_id as u64)
            .map_or_else(|| config.controller_addr.to_string(), |(_, a)| a.clone());
        let lifecycle = Arc::new(Lifecycle::new(
            client.clone(),
            topics.clone(),
            config.node_id,
            endpoints,
            config.broker_rack.clone(),
            Duration::from_millis(config.broker_heartbeat_interval_ms),
            Duration::from_millis(config.controlled_shutdown_timeout_ms),
        ));
        let admin = Arc::new(Admin {
            config: config.clone(),
            topics: topics.clone(),
            controller: client.clone(),
            started: lifecycle.watch_started(),
        });
        tasks.push(tokio::spawn(lifecycle.clone().run(stop_rx.clone())));
        let producer_ids = Arc::new(crate::requests::producer_ids::ProducerIds::new(
            admin.controller.clone(),
            lifecycle.clone(),
        ));
        let settings = crate::replica_fetch::ReplicaSettings {
            fetch_max_bytes: config.replica_fetch_max_bytes,
            response_max_bytes: config.replica_fetch_response_max_bytes,
            fetch_wait_max_ms: config.replica_fetch_wait_max_ms,
            lag_time_max_ms: config.replica_lag_time_max_ms as i64,
        };
        let fetchers = crate::replica_fetch::ReplicaFetchers::new(
            config.node_id,
            topics.clone(),
            quorum.handle.clone(),
            settings,
        );
        tasks.push(tokio::spawn(fetchers.run(stop_rx.clone())));
        tasks.push(tokio::spawn(crate::replica_fetch::maintain_isr(
            topics.clone(),
            admin.controller.clone(),
            lifecycle.clone(),
            config.node_id,
            settings.lag_time_max_ms,
            stop_rx,
        )));
        Ok(Node {
            topics,
            admin,
            quorum,
            lifecycle,
            producer_ids,
            stop_tx,
            tasks,
        })
    }

    #[cfg(test)]
    /// Waits until the controller has unfenced this broker (it may lead), up to `timeout`.
    pub async fn wait_unfenced(&self, timeout: Duration) -> bool {
        let mut rx = self.lifecycle.watch();
        let ok = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.broker_epoch.is_some() && !s.fenced),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if ok {
            // And the replica manager has taken the image that unfenced it.
            let offset = self.quorum.handle.image().offset;
            self.admin.wait_applied(offset).await;
        }
        ok
    }

    /// Controlled shutdown (leadership moves away), then stops the lifecycle and the syncer.
    pub async fn shut_down_cluster_side(&mut self) {
        if *self.stop_tx.borrow() {
            return;
        }
        self.lifecycle.controlled_shutdown().await;
        let _ = self.stop_tx.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }

    /// Closes the logs and stops the voter.
    pub async fn stop(mut self) {
        self.shut_down_cluster_side().await;
        let t = self.topics.clone();
        let _ = tokio::task::spawn_blocking(move || t.close()).await;
        self.quorum.stop().await;
    }

    /// A single-node broker core on `dir`, unfenced and ready (for unit tests).
    #[cfg(test)]
    pub async fn start_for_tests(dir: &std::path::Path) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut config = BrokerConfig {
            data_dir: dir.to_path_buf(),
            broker_heartbeat_interval_ms: 200,
            ..BrokerConfig::default()
        };
        config.controller_addr = listener.local_addr().expect("addr");
        let node = Node::start(Arc::new(config), listener, Endpoints::default())
            .await
            .expect("node starts");
        assert!(
            node.wait_unfenced(Duration::from_secs(30)).await,
            "unfenced"
        );
        node
    }
}

/// Syncs the replica manager with every new image (the latest one when several queue up: the
/// sync is level-triggered, so skipping intermediate images loses nothing).
async fn follow_image(mut rx: watch::Receiver<Arc<MetadataImage>>, topics: Arc<TopicManager>) {
    while rx.changed().await.is_ok() {
        let image: Arc<MetadataImage> = rx.borrow_and_update().clone();
        let t = topics.clone();
        let _ = tokio::task::spawn_blocking(move || t.sync(&image)).await;
    }
}
