//! `sluice serve`: opens the data directory, starts the listeners and background duties, and shuts
//! down cleanly on SIGTERM/SIGINT (stop accepting, drain in-flight requests, flush, write each
//! log's clean-shutdown marker).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use sluice_replication::metadata::Endpoints;

use crate::cluster::node::Node;
use crate::config::BrokerConfig;
use crate::topics::TopicManager;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open data directory {dir}: {source}")]
    Data {
        dir: std::path::PathBuf,
        source: crate::topics::TopicError,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Server(String),
}

pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => tracing::info!("SIGINT: shutting down"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<()>().await
            }
        },
    }
}

pub async fn run(config: BrokerConfig) -> Result<(), ServeError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServeError::Data {
        dir: config.data_dir.clone(),
        source: crate::topics::TopicError::Io {
            context: "create data directory".into(),
            source: e,
        },
    })?;
    let bind = |what: &'static str, addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { what, addr, source })
    };
    let grpc_listener = bind("gRPC", config.grpc_addr).await?;
    let kafka_listener = bind("Kafka", config.kafka_addr).await?;
    let controller_listener = bind("controller", config.controller_addr).await?;
    let http_listener = bind("HTTP", config.http_addr).await?;
    let local = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| ServeError::Server(e.to_string()))
    };
    let kafka_addr = local(&kafka_listener)?;
    let grpc_addr = local(&grpc_listener)?;
    let http_addr = local(&http_listener)?;
    let (advertised_host, advertised_port) = match &config.advertised_kafka_addr {
        Some(a) => {
            let (h, p) = a
                .rsplit_once(':')
                .and_then(|(h, p)| p.parse::<i32>().ok().map(|p| (h.to_string(), p)))
                .ok_or_else(|| {
                    ServeError::Server(format!("advertised_kafka_addr {a:?} is not host:port"))
                })?;
            (h, p)
        }
        None => (kafka_addr.ip().to_string(), i32::from(kafka_addr.port())),
    };
    let endpoints = Endpoints {
        kafka: format!("{advertised_host}:{advertised_port}"),
        grpc: config
            .advertised_grpc_addr
            .clone()
            .unwrap_or_else(|| grpc_addr.to_string()),
        controller: String::new(),
    };
    let mut node = Node::start(config.clone(), controller_listener, endpoints)
        .await
        .map_err(|e| ServeError::Server(e.to_string()))?;
    let topics = node.topics.clone();
    let admin = node.admin.clone();
    if let Some(limit) = crate::fd_limit::current() {
        crate::fd_limit::check(limit, topics.replicas().len());
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let groups = {
        let a = admin.clone();
        let settings = crate::groups::GroupSettings {
            initial_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms),
            offsets_retention: Duration::from_secs(
                config.offsets_retention_minutes.saturating_mul(60),
            ),
            retention_check_interval: Duration::from_millis(
                config.offsets_retention_check_interval_ms,
            ),
        };
        crate::groups::GroupCoordinator::open(a, settings)
    };
    // The groups of the __consumer_offsets partitions led here are loaded before clients come.
    groups.follow().await;
    let group_follower = tokio::spawn(groups.clone().run_follower(stop_rx.clone()));
    let txns = crate::transactions::start(
        admin.clone(),
        node.producer_ids.clone(),
        groups.clone(),
        node.quorum.handle.clone(),
        &node.quorum.txn_markers,
    );
    txns.follow().await;
    let txn_follower = tokio::spawn(txns.clone().run_follower(stop_rx.clone()));
    let txn_ticker = tokio::spawn(txns.clone().run_ticker(stop_rx.clone()));
    let grpc = tokio::spawn(crate::grpc::serve(
        grpc_listener,
        config.clone(),
        crate::grpc::Backends {
            admin: admin.clone(),
            groups: groups.clone(),
            txns: txns.clone(),
            producer_ids: node.producer_ids.clone(),
            quorum: node.quorum.handle.clone(),
            voters: node.quorum.voters.clone(),
        },
        stopped(stop_rx.clone()),
    ));
    let request_memory = Arc::new(crate::memory_pool::MemoryPool::new(
        config.queued_max_request_bytes,
    ));
    let http_server = axum::serve(
        http_listener,
        crate::http::router(
            topics.clone(),
            node.quorum.handle.clone(),
            request_memory.clone(),
            groups.clone(),
            node.lifecycle.watch(),
        ),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let http = tokio::spawn(async move { http_server.await });
    let ticker = tokio::spawn(groups.clone().run_ticker(stop_rx.clone()));
    let kafka_ctx = Arc::new(crate::kafka::Ctx {
        groups,
        txns,
        producer_ids: node.producer_ids.clone(),
        topics: topics.clone(),
        admin: admin.clone(),
        quorum: node.quorum.handle.clone(),
        config: config.clone(),
        advertised_host,
        advertised_port,
        request_memory: request_memory.clone(),
    });
    let kafka = tokio::spawn(crate::kafka::serve(
        kafka_listener,
        kafka_ctx,
        stop_rx.clone(),
    ));
    let duties = tokio::spawn(background_duties(
        config.clone(),
        topics.clone(),
        stop_rx.clone(),
    ));

    tracing::info!(
        grpc = %grpc_addr,
        kafka = %kafka_addr,
        http = %http_addr,
        controller = %config.controller_addr,
        voters = node.quorum.voters.len(),
        data_dir = %config.data_dir.display(),
        "sluice broker ready"
    );

    let grpc_result = tokio::select! {
        _ = shutdown_signal() => None,
        r = grpc => Some(r),
    };
    // Leadership moves away while this broker still answers (clients follow it), then stop.
    node.shut_down_cluster_side().await;
    let _ = stop_tx.send(true);
    let grpc_result = match grpc_result {
        Some(r) => r,
        None => Ok(Ok(())),
    };
    let _ = http.await;
    let _ = kafka.await;
    let _ = ticker.await;
    let _ = group_follower.await;
    let _ = txn_follower.await;
    let _ = txn_ticker.await;
    let _ = duties.await;
    // In-flight requests have drained (serve_with_shutdown waits for them): close the logs.
    node.stop().await;
    tracing::info!("sluice broker stopped cleanly");
    match grpc_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Server(e.to_string())),
        Err(e) => Err(ServeError::Server(e.to_string())),
    }
}

/// Retention, `flush.ms`, recovery-point checkpoints and compaction, on their intervals.
async fn background_duties(
    config: Arc<BrokerConfig>,
    topics: Arc<TopicManager>,
    mut stop: watch::Receiver<bool>,
) {
    let mut retention = tokio::time::interval(Duration::from_millis(
        config.retention_check_interval_ms.max(10),
    ));
    let mut flush = tokio::time::interval(Duration::from_millis(
        config.flush_check_interval_ms.max(10),
    ));
    let mut cleaner =
        tokio::time::interval(Duration::from_millis(config.log_cleaner_backoff_ms.max(10)));
    let mut dir_probe = tokio::time::interval(Duration::from_millis(
        config.log_dir_recheck_interval_ms.max(10),
    ));
    loop {
        tokio::select! {
            _ = retention.tick() => {
                let t = topics.clone();
                let _ = tokio::task::spawn_blocking(move || t.run_retention()).await;
            }
            _ = flush.tick() => {
                let t = topics.clone();
                let _ = tokio::task::spawn_blocking(move || t.run_flush()).await;
            }
            _ = cleaner.tick() => {
                let t = topics.clone();
                let _ = tokio::task::spawn_blocking(move || t.run_compaction()).await;
            }
            _ = dir_probe.tick() => {
                let h = topics.dir_health().clone();
                if h.offline().is_some() {
                    let _ = tokio::task::spawn_blocking(move || h.probe()).await;
                }
            }
            _ = stop.changed() => return,
        }
    }
}
