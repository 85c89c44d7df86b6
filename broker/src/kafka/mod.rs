//! The Kafka wire-protocol listener: existing Kafka clients (librdkafka/kcat, kafka-python,
//! confluent-kafka, franz-go, Java) use Sluice unchanged.
//!
//! One task per connection reads requests in order and answers each before reading the next —
//! Kafka's own per-connection ordering, which gives clients pipelining with in-order responses.
//! Messages are decoded and encoded by the `kafka-protocol` crate; Fetch responses send record
//! bytes with `sendfile` ([`zero_copy`]).

mod admin;
mod error_codes;
mod fetch;
pub mod frame;
mod groups;
mod metadata;
pub mod produce;
mod reassign;
mod txn;
pub mod zero_copy;

use std::sync::Arc;

use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::BrokerConfig;
use crate::topics::TopicManager;
use frame::{encode_response, Frame, FrameError};
use zero_copy::Chunk;

/// Everything a request handler needs.
pub struct Ctx {
    pub topics: Arc<TopicManager>,
    pub admin: Arc<crate::requests::admin::Admin>,
    /// The metadata image and the quorum's status (who is controller).
    pub quorum: sluice_replication::controller::driver::QuorumHandle,
    pub groups: Arc<crate::groups::GroupCoordinator>,
    pub txns: Arc<crate::transactions::TransactionCoordinator>,
    pub producer_ids: Arc<crate::requests::producer_ids::ProducerIds>,
    pub config: Arc<BrokerConfig>,
    /// Host and port clients are told to connect to (Metadata, FindCoordinator).
    pub advertised_host: String,
    pub advertised_port: i32,
    /// `queued_max_request_bytes`: request bytes all connections may hold at once.
    pub request_memory: Arc<crate::memory_pool::MemoryPool>,
}

/// What a handler sends back.
pub enum Reply {
    Frame(bytes::BytesMut),
    Chunks(Vec<Chunk>),
    /// acks=0 produce: no response at all.
    Nothing,
}

/// API versions served, as advertised in ApiVersions. Produce is listed from v0 because
/// librdkafka needs that, but only v3+ (RecordBatch v2) is served.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 13),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 3),
    (ApiKey::Heartbeat, 0, 3),
    (ApiKey::LeaveGroup, 0, 3),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
];

fn served(key: ApiKey, version: i16) -> bool {
    let min_served = if key == ApiKey::Produce { 3 } else { i16::MIN };
    SUPPORTED
        .iter()
        .any(|(k, lo, hi)| *k == key && version >= (*lo).max(min_served) && version <= *hi)
}

/// The API's name for metrics labels: `Produce`, `Fetch`, ... (`Other` for one not served).
fn api_name(key: ApiKey) -> &'static str {
    static NAMES: std::sync::LazyLock<Vec<(ApiKey, &'static str)>> =
        std::sync::LazyLock::new(|| {
            SUPPORTED
                .iter()
                .map(|(k, _, _)| (*k, &*format!("{k:?}").leak()))
                .collect()
        });
    NAMES
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("Other", |(_, n)| n)
}

pub fn err(e: ResponseError) -> i16 {
    e.code()
}

/// Accepts Kafka connections until `stop` flips, at most `max_connections` at once.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let limits = crate::connections::ConnectionLimits::new(
        "kafka",
        ctx.config.max_connections,
        ctx.config.max_connections_per_ip,
    );
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = limits.admit(peer.ip()) else {
            continue; // dropped: closed
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let m = &crate::metrics::METRICS;
            match connection(stream, &ctx, stop, &peer.to_string()).await {
                Ok(()) | Err(FrameError::Closed) => {}
                Err(e @ (FrameError::Idle(_) | FrameError::ReadTimeout(_))) => {
                    let reason = match e {
                        FrameError::Idle(_) => "idle",
                        _ => "read_timeout",
                    };
                    m.connections_idle_closed
                        .with_label_values(&["kafka", reason])
                        .inc();
                    tracing::debug!(%peer, error = %e, "closing Kafka connection")
                }
                // The client went away mid-response (e.g. a consumer closing during a long poll).
                Err(FrameError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    tracing::debug!(%peer, error = %e, "Kafka client disconnected")
                }
                Err(e) => tracing::warn!(%peer, error = %e, "closing Kafka connection"),
            }
        });
    }
}

/// A request read and handled as far as it can be at once; `reply` finishes it (a produce's
/// fsync and replica waits) and is awaited in order by the connection's writer.
struct InFlight {
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    started: std::time::Instant,
    /// The request's bytes held from the memory pool until its response is written.
    _memory: Option<crate::memory_pool::Reservation>,
    reply: Pending,
}

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, String>> + Send>>;

/// Serves one connection. A reader takes requests in order and handles each as far as it can
/// at once (a produce writes its batches); a writer finishes them in the same order and sends
/// the responses. Up to `max_in_flight_requests_per_connection` sit between the two, so a
/// produce's batches are written while the ones before it wait for their fsync or replicas —
/// the pipelining Kafka clients already do on the wire, without reordering anything.
async fn connection(
    mut stream: TcpStream,
    ctx: &Ctx,
    mut stop: watch::Receiver<bool>,
    peer: &str,
) -> Result<(), FrameError> {
    let (mut rd, wr) = stream.split();
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<InFlight>(ctx.config.max_in_flight_requests_per_connection);
    let reader = async move {
        loop {
            let mut frame = tokio::select! {
                f = frame::read_frame_timed(
                    &mut rd,
                    ctx.config.max_request_bytes,
                    std::time::Duration::from_millis(ctx.config.connections_max_idle_ms),
                    std::time::Duration::from_millis(ctx.config.request_read_timeout_ms),
                    &ctx.request_memory,
                ) => f?,
                _ = stop.changed() => return Ok(()),
                // The writer stopped: its error is the connection's.
                _ = tx.closed() => return Ok(()),
            };
            crate::metrics::KAFKA_BYTES
                .received
                .inc_by(frame.wire_size as u64);
            let in_flight = InFlight {
                key: frame.api_key,
                version: frame.version,
                correlation_id: frame.header.correlation_id,
                started: std::time::Instant::now(),
                _memory: frame.memory.take(),
                reply: dispatch(ctx, frame, peer).await,
            };
            if tx.send(in_flight).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some(f) = rx.recv().await {
            let reply = match f.reply.await {
                Ok(r) => r,
                Err(e) => {
                    // A request we cannot decode or answer: Kafka closes the connection too.
                    return Err(FrameError::BadHeader(format!(
                        "{:?} v{} (correlation id {}): {e}",
                        f.key, f.version, f.correlation_id
                    )));
                }
            };
            // Latency to the response being ready, as Kafka's TotalTimeMs less the send.
            crate::metrics::observe_request("kafka", api_name(f.key), f.started.elapsed());
            match reply {
                Reply::Frame(buf) => {
                    crate::metrics::KAFKA_BYTES.sent.inc_by(buf.len() as u64);
                    zero_copy::write_all(wr.as_ref(), &buf).await?
                }
                Reply::Chunks(chunks) => {
                    crate::metrics::KAFKA_BYTES
                        .sent
                        .inc_by(chunks.iter().map(Chunk::len).sum::<u64>());
                    zero_copy::write_chunks(wr.as_ref(), &chunks).await?
                }
                Reply::Nothing => {}
            }
        }
        Ok::<(), FrameError>(())
    };
    let (read, written) = tokio::join!(reader, writer);
    written?;
    read
}

/// Handles a request as far as it can be at once. A produce writes its batches here, in the
/// order requests arrive, and leaves its waits to the returned future; anything else is done.
async fn dispatch(ctx: &Ctx, frame: Frame, peer: &str) -> Pending {
    if frame.api_key == ApiKey::Produce && served(ApiKey::Produce, frame.version) {
        let (corr, version) = (frame.header.correlation_id, frame.version);
        let mut body = frame.body;
        return match frame::decode_body(&mut body, version) {
            Ok(req) => Box::pin(produce::produce(ctx, corr, version, req)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        };
    }
    Box::pin(std::future::ready(handle(ctx, frame, peer).await))
}

async fn handle(ctx: &Ctx, mut frame: Frame, peer: &str) -> Result<Reply, String> {
    let version = frame.version;
    let corr = frame.header.correlation_id;
    if frame.api_key == ApiKey::ApiVersions {
        return api_versions(corr, version);
    }
    if !SUPPORTED.iter().any(|(k, _, _)| *k == frame.api_key) {
        // Not in ApiVersions: a client sending it anyway is closed on, as Kafka does.
        return Err(format!("{:?} is not served", frame.api_key));
    }
    if !served(frame.api_key, version) {
        return Err("unsupported version (see ApiVersions)".into());
    }
    let body = &mut frame.body;
    let reply = |buf: Result<bytes::BytesMut, String>| buf.map(Reply::Frame);
    match frame.api_key {
        ApiKey::Metadata => {
            reply(metadata::metadata(ctx, corr, version, frame::decode_body(body, version)?).await)
        }
        ApiKey::ListOffsets => reply(metadata::list_offsets(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::Produce => {
            produce::produce(ctx, corr, version, frame::decode_body(body, version)?).await
        }
        ApiKey::Fetch => fetch::fetch(ctx, corr, version, frame::decode_body(body, version)?).await,
        ApiKey::CreateTopics => reply(
            admin::create_topics(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::DeleteTopics => reply(
            admin::delete_topics(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::DescribeConfigs => reply(admin::describe_configs(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::AlterConfigs => reply(
            admin::alter_configs(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::IncrementalAlterConfigs => reply(
            admin::incremental_alter_configs(
                ctx,
                corr,
                version,
                frame::decode_body(body, version)?,
            )
            .await,
        ),
        ApiKey::CreatePartitions => reply(
            admin::create_partitions(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::DescribeCluster => reply(metadata::describe_cluster(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::InitProducerId => reply(
            txn::init_producer_id(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::AddPartitionsToTxn => reply(
            txn::add_partitions_to_txn(ctx, corr, version, frame::decode_body(body, version)?)
                .await,
        ),
        ApiKey::AddOffsetsToTxn => reply(
            txn::add_offsets_to_txn(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::EndTxn => {
            reply(txn::end_txn(ctx, corr, version, frame::decode_body(body, version)?).await)
        }
        ApiKey::TxnOffsetCommit => reply(
            txn::txn_offset_commit(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::DescribeProducers => reply(txn::describe_producers(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::DescribeTransactions => reply(txn::describe_transactions(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::ListTransactions => reply(txn::list_transactions(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::OffsetForLeaderEpoch => reply(metadata::offset_for_leader_epoch(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::AlterPartitionReassignments => reply(
            reassign::alter_partition_reassignments(
                ctx,
                corr,
                version,
                frame::decode_body(body, version)?,
            )
            .await,
        ),
        ApiKey::ListPartitionReassignments => reply(reassign::list_partition_reassignments(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::FindCoordinator => reply(
            groups::find_coordinator(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::JoinGroup => {
            let client_id = frame.header.client_id.as_deref().unwrap_or("").to_string();
            let req = frame::decode_body(body, version)?;
            reply(groups::join_group(ctx, corr, version, &client_id, peer, req).await)
        }
        ApiKey::SyncGroup => {
            reply(groups::sync_group(ctx, corr, version, frame::decode_body(body, version)?).await)
        }
        ApiKey::Heartbeat => reply(groups::heartbeat(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::LeaveGroup => reply(groups::leave_group(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::OffsetCommit => reply(
            groups::offset_commit(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::OffsetFetch => reply(groups::offset_fetch(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::ListGroups => reply(groups::list_groups(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::DescribeGroups => reply(groups::describe_groups(
            ctx,
            corr,
            version,
            frame::decode_body(body, version)?,
        )),
        ApiKey::DeleteGroups => reply(
            groups::delete_groups(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        ApiKey::OffsetDelete => reply(
            groups::offset_delete(ctx, corr, version, frame::decode_body(body, version)?).await,
        ),
        other => Err(format!("{other:?} is not served")),
    }
}

/// ApiVersions: the list of [`SUPPORTED`]; an unknown version is answered at v0 with
/// UNSUPPORTED_VERSION and the list, so the client can pick a version it shares with us.
fn api_versions(corr: i32, version: i16) -> Result<Reply, String> {
    let keys = SUPPORTED
        .iter()
        .map(|(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*lo)
                .with_max_version(*hi)
        })
        .collect();
    let (version, error_code) = if (0..=3).contains(&version) {
        (version, 0)
    } else {
        (0, err(ResponseError::UnsupportedVersion))
    };
    let resp = ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(keys);
    encode_response(corr, version, &resp).map(Reply::Frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_ranges_are_within_what_the_codec_knows() {
        for (k, lo, hi) in SUPPORTED {
            let v = k.valid_versions();
            let lo = if *k == ApiKey::Produce { 3 } else { *lo };
            assert!(
                lo >= v.min && *hi <= v.max,
                "{k:?} {lo}..{hi} vs codec {}..{}",
                v.min,
                v.max
            );
        }
        assert!(served(ApiKey::Produce, 9) && !served(ApiKey::Produce, 2));
        assert!(served(ApiKey::Fetch, 13) && !served(ApiKey::Fetch, 14));
    }
}

/// Random frames through the real framing and dispatch: errors are fine, panics and unbounded
/// allocations are not. `scripts/fuzz-kafka-decoder.sh` runs many more cases for longer.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// One real single-node broker core shared by every case (starting one per case would
    /// cost an election each).
    struct Shared {
        rt: tokio::runtime::Runtime,
        ctx: Ctx,
        _node: crate::cluster::node::Node,
        _dir: tempfile::TempDir,
    }

    fn shared() -> &'static Shared {
        static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (node, ctx) = rt.block_on(async {
                let node = crate::cluster::node::Node::start_for_tests(dir.path()).await;
                node.admin
                    .create_topic("fuzz", 2, 1, Default::default(), false)
                    .await
                    .unwrap();
                let admin = node.admin.clone();
                let groups = crate::groups::GroupCoordinator::open(
                    admin,
                    crate::groups::GroupSettings {
                        initial_delay: std::time::Duration::from_millis(10),
                        ..Default::default()
                    },
                );
                groups.follow().await;
                let txns = crate::transactions::start(
                    node.admin.clone(),
                    node.producer_ids.clone(),
                    groups.clone(),
                    node.quorum.handle.clone(),
                    &node.quorum.txn_markers,
                );
                let ctx = Ctx {
                    groups,
                    txns,
                    producer_ids: node.producer_ids.clone(),
                    topics: node.topics.clone(),
                    admin: node.admin.clone(),
                    quorum: node.quorum.handle.clone(),
                    config: node.admin.config.clone(),
                    advertised_host: "127.0.0.1".into(),
                    advertised_port: 9092,
                    request_memory: Arc::new(crate::memory_pool::MemoryPool::new(1 << 30)),
                };
                (node, ctx)
            });
            Shared {
                rt,
                ctx,
                _node: node,
                _dir: dir,
            }
        })
    }

    fn frame_bytes(key: i16, version: i16, flexible_header: bool, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&key.to_be_bytes());
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(&7i32.to_be_bytes());
        f.extend_from_slice(&(-1i16).to_be_bytes());
        if flexible_header {
            f.push(0);
        }
        f.extend_from_slice(body);
        let mut out = (f.len() as i32).to_be_bytes().to_vec();
        out.extend(f);
        out
    }

    fn run(ctx: &Ctx, rt: &tokio::runtime::Runtime, bytes: Vec<u8>) {
        rt.block_on(async {
            let mut r = &bytes[..];
            if let Ok(frame) = frame::read_frame(&mut r, 1 << 20).await {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    handle(ctx, frame, "fuzz"),
                )
                .await;
            }
        });
    }

    proptest! {
        // PROPTEST_CASES raises the count (scripts/fuzz-kafka-decoder.sh); 400 keeps CI quick.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400),
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_frames_never_panic(
            key_index in 0usize..SUPPORTED.len() + 12,
            version in -1i16..20,
            flexible in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let s = shared();
            let key = SUPPORTED.get(key_index).map_or(key_index as i16 - 3, |(k, _, _)| *k as i16);
            run(&s.ctx, &s.rt, frame_bytes(key, version, flexible, &body));
        }

        #[test]
        fn raw_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = shared();
            run(&s.ctx, &s.rt, bytes);
        }
    }
}
