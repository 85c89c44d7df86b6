//! The gRPC listener (`sluice.v1`): Admin, Producer, Consumer, Groups and Transactions services
//! plus server reflection, behind connection limits (total, per address, idle timeout) and a
//! request-size limit.

pub mod admin;
pub mod consumer;
mod framed_fetch;
pub mod groups;
pub mod internal;
mod oversize;
pub mod producer;
mod request_metrics;
pub mod status;
pub mod transactions;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sluice_proto::v1::{admin_server::AdminServer, producer_server::ProducerServer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::BrokerConfig;
use crate::connections::{ConnectionLimits, ConnectionPermit};

/// A connection holding its place under the listener's limits while it is open, closed once
/// nothing has been read or written for `idle` (`connections_max_idle_ms`; HTTP/2 pings from
/// clients count as traffic).
pub struct LimitedConn {
    stream: TcpStream,
    _permit: ConnectionPermit,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl LimitedConn {
    fn touch(&mut self) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle);
    }
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    crate::metrics::GRPC_BYTES
                        .received
                        .inc_by((buf.filled().len() - before) as u64);
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err({
                    crate::metrics::METRICS
                        .connections_idle_closed
                        .with_label_values(&["grpc", "idle"])
                        .inc();
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("idle for {:?} (connections_max_idle_ms)", self.idle),
                    )
                })),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                crate::metrics::GRPC_BYTES.sent.inc_by(n as u64);
                self.touch();
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                crate::metrics::GRPC_BYTES.sent.inc_by(n as u64);
                self.touch();
            }
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections, refusing (closing) those beyond the listener's limits.
fn limited_incoming(
    listener: TcpListener,
    config: &BrokerConfig,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<LimitedConn>> {
    let limits = ConnectionLimits::new(
        "grpc",
        config.max_connections,
        config.max_connections_per_ip,
    );
    let idle = Duration::from_millis(config.connections_max_idle_ms);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Transient (EMFILE, ECONNABORTED): log and keep accepting after a pause.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(permit) = limits.admit(peer.ip()) else {
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = LimitedConn {
                stream,
                _permit: permit,
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
            };
            if tx.send(Ok(conn)).await.is_err() {
                return; // the server stopped
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What the gRPC services serve from: the broker's request layer and coordinators.
pub struct Backends {
    pub admin: Arc<crate::requests::admin::Admin>,
    pub groups: Arc<crate::groups::GroupCoordinator>,
    pub txns: Arc<crate::transactions::TransactionCoordinator>,
    pub producer_ids: Arc<crate::requests::producer_ids::ProducerIds>,
    pub quorum: sluice_replication::controller::driver::QuorumHandle,
    /// The metadata quorum's voters: (node id, address).
    pub voters: Vec<(u64, String)>,
}

/// Largest HTTP/2 frame this listener accepts (SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: u32 = 1 << 20;

/// Serves the gRPC API on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: Arc<BrokerConfig>,
    backends: Backends,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Backends {
        admin,
        groups,
        txns,
        producer_ids,
        quorum,
        voters,
    } = backends;
    let max = config.max_request_bytes;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Older grpcurl and Python reflection clients speak only v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let topics = admin.topics.clone();
    let admin = AdminServer::new(admin::AdminService {
        admin,
        quorum,
        voters,
    })
    .max_decoding_message_size(max);
    let producer = ProducerServer::new(producer::ProducerService {
        topics: topics.clone(),
        producer_ids,
    })
    .max_decoding_message_size(max);
    let topics_for_groups = topics.clone();
    let topics_for_txns = topics.clone();
    let consumer = framed_fetch::FramedConsumer::new(
        consumer::ConsumerService {
            topics,
            default_max_bytes: config.fetch_max_bytes,
            max_bytes_limit: max,
        },
        max,
    );
    let idle = Duration::from_millis(config.connections_max_idle_ms);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Lets clients send a produce request of megabytes in few HTTP/2 frames rather than in
        // 16 KiB ones (each its own read and header on this side).
        .max_frame_size(MAX_FRAME)
        // A live client answers pings, so a connection with an open stream and nothing to say
        // (a quiet Subscribe) is not idle; a dead peer, or a socket that never spoke HTTP/2, is
        // closed after `connections_max_idle_ms`.
        .http2_keepalive_interval(Some(idle / 2))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(request_metrics::RequestMetricsLayer)
        .layer(oversize::OversizeLayer)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(producer)
        .add_service(consumer)
        .add_service(
            sluice_proto::v1::groups_server::GroupsServer::new(groups::GroupsService {
                groups,
                topics: topics_for_groups,
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            sluice_proto::v1::transactions_server::TransactionsServer::new(
                transactions::TransactionsService {
                    txns,
                    topics: topics_for_txns,
                    node_id: config.node_id,
                },
            )
            .max_decoding_message_size(max),
        )
        .serve_with_incoming_shutdown(limited_incoming(listener, &config), shutdown)
        .await?;
    Ok(())
}
