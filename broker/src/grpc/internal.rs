//! The broker-to-broker service (`sluice.internal.v1`, on `controller_addr`) and the gRPC
//! [`RaftTransport`] of the metadata quorum.
//!
//! Each peer gets one task with a bounded queue of outgoing Raft messages and one long-lived
//! client stream (`BrokerInternal/Raft`), TiKV's shape: messages are batched onto the stream as
//! they come; when the stream breaks the task reconnects with a capped backoff, and what could
//! not be sent is dropped and reported to Raft (unreachable peer, failed snapshot), which
//! retransmits. Nothing here blocks the driver: a full queue drops the message.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_proto::internal::v1::broker_internal_client::BrokerInternalClient;
use sluice_proto::internal::v1::broker_internal_server::{BrokerInternal, BrokerInternalServer};
use sluice_proto::internal::v1::{
    ControllerReply, ControllerRequest, RaftAck, RaftMessage, ReplicaFetchRequest,
    ReplicaFetchResponse, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use sluice_replication::controller::active::ActiveController;
use sluice_replication::controller::api::ControllerCall;
use sluice_replication::controller::driver::{QuorumHandle, RaftTransport};
use sluice_replication::controller::raft_node::wire::{self, Message};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Serves peers' Raft streams into the local quorum, and controller calls to this voter's
/// [`ActiveController`] (which answers NotController unless it leads).
pub struct InternalService {
    pub quorum: QuorumHandle,
    pub controller: Arc<ActiveController>,
    /// This broker's replicas (for followers' fetches); `None` in quorum-only tests.
    pub topics: Option<Arc<crate::topics::TopicManager>>,
    /// Bounds reassignment traffic to followers being added.
    pub throttle: crate::replica_fetch::ReplicationThrottle,
    /// Writes transaction markers here; set once the group coordinator exists.
    pub txn_markers: TxnMarkersSlot,
}

/// Where the broker puts its marker writer once it is built (after the internal service starts).
pub type TxnMarkersSlot = Arc<OnceLock<Arc<crate::transactions::markers::LocalMarkers>>>;

#[tonic::async_trait]
impl BrokerInternal for InternalService {
    async fn raft(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(item) = stream.next().await {
            let m = item?;
            match wire::decode(&m.message) {
                Ok(msg) => self.quorum.step(msg),
                Err(e) => {
                    return Err(Status::invalid_argument(format!(
                        "undecodable raft message: {e}"
                    )))
                }
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn replica_fetch(
        &self,
        request: Request<ReplicaFetchRequest>,
    ) -> Result<Response<ReplicaFetchResponse>, Status> {
        let topics = self
            .topics
            .as_ref()
            .ok_or_else(|| Status::unavailable("this node holds no replicas"))?;
        let req = request.into_inner();
        let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(10_000)));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Reads segment files: off the async workers' hot loop.
            let rate = crate::replica_fetch::throttled_rate(
                &self.quorum.image(),
                topics.config().node_id,
                topics.config().leader_replication_throttled_rate,
            );
            let (resp, any_data, waits) = tokio::task::block_in_place(|| {
                crate::replica_fetch::serve(topics, &self.throttle, rate, &req)
            });
            if any_data || waits.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(resp));
            }
            // Nothing new anywhere: wait for an append to any of them (a long poll).
            let polls = waits.iter().map(|(p, offset)| {
                let p = p.clone();
                let offset = *offset;
                Box::pin(async move { p.wait_for_append(offset, wait).await })
            });
            let _parked = sluice_replication::purgatory::Waiting::enter(
                &sluice_replication::purgatory::FETCH,
            );
            let _ = tokio::time::timeout_at(deadline, futures::future::select_all(polls)).await;
        }
    }

    async fn write_txn_markers(
        &self,
        request: Request<WriteTxnMarkersRequest>,
    ) -> Result<Response<WriteTxnMarkersResponse>, Status> {
        let markers = self
            .txn_markers
            .get()
            .ok_or_else(|| Status::unavailable("this broker is still starting"))?;
        Ok(Response::new(markers.serve(request.into_inner()).await))
    }

    async fn controller(
        &self,
        request: Request<ControllerRequest>,
    ) -> Result<Response<ControllerReply>, Status> {
        let call = ControllerCall::decode(&request.into_inner().call)
            .map_err(|e| Status::invalid_argument(format!("undecodable controller call: {e}")))?;
        let response = self.controller.call(call).await;
        let bytes = response
            .encode()
            .map_err(|e| Status::internal(format!("controller response does not encode: {e}")))?;
        Ok(Response::new(ControllerReply {
            response: bytes.into(),
        }))
    }
}

pub fn server(
    quorum: QuorumHandle,
    controller: Arc<ActiveController>,
    topics: Option<Arc<crate::topics::TopicManager>>,
    txn_markers: TxnMarkersSlot,
) -> BrokerInternalServer<InternalService> {
    // Snapshots of a large image and replica fetches can exceed tonic's 4 MiB default.
    BrokerInternalServer::new(InternalService {
        quorum,
        controller,
        topics,
        txn_markers,
        throttle: crate::replica_fetch::ReplicationThrottle::new(Arc::new(
            sluice_log::MonotonicClock::default(),
        )),
    })
    .max_decoding_message_size(256 << 20)
    .max_encoding_message_size(256 << 20)
}

/// Outgoing Raft messages, one bounded queue and stream per peer.
pub struct GrpcRaftTransport {
    peers: HashMap<u64, mpsc::Sender<Message>>,
    quorum: Arc<OnceLock<QuorumHandle>>,
}

impl GrpcRaftTransport {
    /// `peers`: node id -> `host:port` of its `controller_addr`. Must be called inside a tokio
    /// runtime (it starts one task per peer). Call [`GrpcRaftTransport::attach`] once the
    /// quorum's handle exists, so failures can be reported to it.
    pub fn start(peers: &HashMap<u64, String>, queue: usize) -> GrpcRaftTransport {
        let quorum = Arc::new(OnceLock::new());
        let peers = peers
            .iter()
            .map(|(id, addr)| {
                let (tx, rx) = mpsc::channel(queue.max(16));
                tokio::spawn(peer_task(*id, addr.clone(), rx, quorum.clone()));
                (*id, tx)
            })
            .collect();
        GrpcRaftTransport { peers, quorum }
    }

    pub fn attach(&self, quorum: QuorumHandle) {
        let _ = self.quorum.set(quorum);
    }
}

impl RaftTransport for GrpcRaftTransport {
    fn send(&self, msg: Message) {
        let Some(tx) = self.peers.get(&msg.to) else {
            tracing::warn!(to = msg.to, "raft message for an unknown voter dropped");
            return;
        };
        let (to, snap) = (msg.to, wire::is_snapshot(&msg));
        if tx.try_send(msg).is_err() {
            if let Some(q) = self.quorum.get() {
                q.report_unreachable(to);
                if snap {
                    q.report_snapshot(to, false);
                }
            }
        }
    }
}

async fn peer_task(
    id: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    quorum: Arc<OnceLock<QuorumHandle>>,
) {
    let mut backoff = Duration::from_millis(50);
    let report = |to: u64, snap: bool| {
        if let Some(q) = quorum.get() {
            q.report_unreachable(to);
            if snap {
                q.report_snapshot(to, false);
            }
        }
    };
    loop {
        let channel = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .connect()
                .await
                .ok(),
            Err(e) => {
                tracing::error!(peer = id, addr, error = %e, "bad controller address; peer disabled");
                return;
            }
        };
        let Some(channel) = channel else {
            // Unreachable: drop what is queued (Raft retransmits), wait, retry.
            while let Ok(m) = rx.try_recv() {
                report(m.to, wire::is_snapshot(&m));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(50);
        let (stream_tx, stream_rx) = mpsc::channel::<RaftMessage>(256);
        let mut client = BrokerInternalClient::new(channel).max_encoding_message_size(256 << 20);
        let call = tokio::spawn(async move {
            client
                .raft(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
                .await
        });
        // Forward until the stream breaks or the transport is dropped.
        loop {
            let Some(m) = rx.recv().await else {
                return; // the quorum stopped
            };
            let (to, snap) = (m.to, wire::is_snapshot(&m));
            let bytes = match wire::encode(&m) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "raft message does not encode");
                    continue;
                }
            };
            if call.is_finished()
                || stream_tx
                    .send(RaftMessage {
                        message: bytes.into(),
                    })
                    .await
                    .is_err()
            {
                report(to, snap);
                break;
            }
            if snap {
                if let Some(q) = quorum.get() {
                    q.report_snapshot(to, true);
                }
            }
        }
        call.abort();
        tracing::debug!(peer = id, addr, "raft stream closed; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_replication::controller::driver::{self, DriverConfig};
    use sluice_replication::controller::raft_node::{MetadataNode, MetadataNodeConfig};
    use sluice_replication::metadata::{ConfigResource, MetadataRecord};
    use std::time::Instant;

    /// A voter in its own runtime: shutting the runtime down drops its sockets like a process
    /// exit would (a graceful server shutdown would wait for peers' endless streams).
    struct Voter {
        handle: QuorumHandle,
        rt: tokio::runtime::Runtime,
    }

    impl Voter {
        fn kill(self) {
            self.handle.stop();
            self.rt.shutdown_background();
        }
    }

    fn free_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    fn start(id: u64, dir: &std::path::Path, addrs: &HashMap<u64, String>) -> Voter {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let voters: Vec<u64> = addrs.keys().copied().collect();
        let mut cfg = MetadataNodeConfig::new(id, voters.clone());
        cfg.snapshot_every = 10;
        let node = MetadataNode::open(dir, cfg).unwrap();
        let peers: HashMap<u64, String> = addrs
            .iter()
            .filter(|(p, _)| **p != id)
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let transport = {
            let _guard = rt.enter();
            Arc::new(GrpcRaftTransport::start(&peers, 1024))
        };
        let (handle, _thread) = driver::spawn(
            node,
            voters,
            transport.clone(),
            DriverConfig {
                tick: Duration::from_millis(20),
                queue: 1024,
            },
        )
        .unwrap();
        transport.attach(handle.clone());
        let std_listener = std::net::TcpListener::bind(&addrs[&id]).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let controller = Arc::new(ActiveController::new(
            handle.clone(),
            Arc::new(sluice_log::SystemClock),
            Default::default(),
            id,
        ));
        let svc = server(handle.clone(), controller, None, Default::default());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Voter { handle, rt }
    }

    fn record(n: u64) -> MetadataRecord {
        MetadataRecord::Config {
            resource: ConfigResource::Topic("t".into()),
            name: format!("k{n}"),
            value: Some(n.to_string()),
        }
    }

    /// Proposes through whichever voter leads, retrying while there is none (deadline 30 s).
    async fn propose(voters: &HashMap<u64, Voter>, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for v in voters.values() {
                if v.handle.status().is_leader {
                    if let Ok(idx) = v.handle.propose(vec![record(n)]).await {
                        return idx;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader accepted proposal {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_applied(voters: &HashMap<u64, Voter>, keys: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let counts: Vec<usize> = voters
                .values()
                .map(|v| v.handle.image().topic_configs("t").len())
                .collect();
            if counts.iter().all(|c| *c == keys) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "images did not converge: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_voters_over_grpc_elect_commit_fail_over_and_catch_up() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let addrs: HashMap<u64, String> = (1..=3).map(|i| (i, free_addr())).collect();
        let mut voters = HashMap::new();
        for i in 1..=3u64 {
            voters.insert(i, start(i, dirs[i as usize - 1].path(), &addrs));
        }
        for n in 0..20 {
            propose(&voters, n).await;
        }
        wait_applied(&voters, 20).await;

        // The leader goes away: the other two elect a new one and go on.
        let leader = voters
            .iter()
            .find(|(_, v)| v.handle.status().is_leader)
            .map(|(id, _)| *id)
            .expect("a leader");
        voters.remove(&leader).unwrap().kill();
        for n in 20..40 {
            propose(&voters, n).await;
        }
        wait_applied(&voters, 40).await;

        // It comes back from its directory and catches up (by snapshot: the log was compacted).
        voters.insert(
            leader,
            start(leader, dirs[leader as usize - 1].path(), &addrs),
        );
        wait_applied(&voters, 40).await;
        let back = &voters[&leader].handle;
        assert!(back.status().applied_index >= 40);
        for (_, v) in voters.drain() {
            v.kill();
        }
    }
}
