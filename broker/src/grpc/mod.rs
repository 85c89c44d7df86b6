//! The gRPC listener (`sluice.v1`): Admin, Producer and Consumer services plus server reflection,
//! behind a connection limit and a request-size limit.

pub mod admin;
pub mod consumer;
pub mod groups;
pub mod internal;
mod oversize;
pub mod producer;
pub mod status;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sluice_proto::v1::{
    admin_server::AdminServer, consumer_server::ConsumerServer, producer_server::ProducerServer,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::BrokerConfig;

/// A connection that holds one of the listener's `max_connections` permits while it is open.
pub struct LimitedConn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
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
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections, refusing (closing) those beyond `max_connections`.
fn limited_incoming(
    listener: TcpListener,
    max_connections: usize,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<LimitedConn>> {
    let permits = Arc::new(Semaphore::new(max_connections));
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
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max_connections, "refusing gRPC connection: max_connections reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            if tx
                .send(Ok(LimitedConn {
                    stream,
                    _permit: permit,
                }))
                .await
                .is_err()
            {
                return; // the server stopped
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Serves the gRPC API on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: Arc<BrokerConfig>,
    admin: Arc<crate::requests::admin::Admin>,
    groups: Arc<crate::groups::GroupCoordinator>,
    quorum: (
        sluice_replication::controller::driver::QuorumHandle,
        Vec<(u64, String)>,
    ),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
        quorum: quorum.0,
        voters: quorum.1,
    })
    .max_decoding_message_size(max);
    let producer = ProducerServer::new(producer::ProducerService {
        topics: topics.clone(),
    })
    .max_decoding_message_size(max);
    let topics_for_groups = topics.clone();
    let consumer = ConsumerServer::new(consumer::ConsumerService {
        topics,
        default_max_bytes: config.fetch_max_bytes,
        max_bytes_limit: max,
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max.max(config.fetch_max_bytes) * 2);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
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
        .serve_with_incoming_shutdown(limited_incoming(listener, config.max_connections), shutdown)
        .await?;
    Ok(())
}
