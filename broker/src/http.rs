//! The HTTP admin listener: `/health` (the process answers), `/ready` (registered and unfenced:
//! it may lead partitions and create topics), Prometheus `/metrics`, and `/v1/topics` (JSON).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use sluice_replication::controller::driver::QuorumHandle;

use crate::cluster::lifecycle::BrokerState;
use crate::groups::{GroupCoordinator, State as GroupState};
use crate::memory_pool::MemoryPool;
use crate::topics::TopicManager;

#[derive(Clone)]
pub struct HttpState {
    topics: Arc<TopicManager>,
    quorum: QuorumHandle,
    request_memory: Arc<MemoryPool>,
    groups: Arc<GroupCoordinator>,
    broker: tokio::sync::watch::Receiver<BrokerState>,
}

pub fn router(
    topics: Arc<TopicManager>,
    quorum: QuorumHandle,
    request_memory: Arc<MemoryPool>,
    groups: Arc<GroupCoordinator>,
    broker: tokio::sync::watch::Receiver<BrokerState>,
) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/topics", get(topics_json))
        .with_state(HttpState {
            topics,
            quorum,
            request_memory,
            groups,
            broker,
        })
}

/// 200 once the controller has this broker registered and unfenced; 503 with the reason before
/// (starting, no controller reachable) and whenever it is fenced again.
async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let b = *state.broker.borrow();
    match (b.broker_epoch, b.fenced) {
        (Some(_), false) => (StatusCode::OK, "ready\n"),
        (None, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not registered with the controller yet\n",
        ),
        (Some(_), true) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: fenced (catching up with the metadata log, or the controller is unreachable)\n",
        ),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let topics = state.topics;
    let mut out = String::new();
    let q = state.quorum.status();
    for (name, help, v) in [
        (
            "sluice_metadata_quorum_leader",
            "The active controller's node id (0: none).",
            q.leader.unwrap_or(0),
        ),
        (
            "sluice_metadata_quorum_term",
            "Raft term of the metadata quorum.",
            q.term,
        ),
        (
            "sluice_metadata_commit_index",
            "Metadata-log offset committed by the quorum.",
            q.commit_index,
        ),
        (
            "sluice_metadata_applied_index",
            "Metadata-log offset applied by this broker.",
            q.applied_index,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    // Replication, cluster-wide from the image (the same on every broker).
    let image = state.quorum.image();
    let (mut offline, mut under) = (0u64, 0u64);
    for (_, _, p) in image.partitions() {
        offline += u64::from(!p.has_leader());
        under += u64::from(p.isr.len() < p.replicas.len());
    }
    let _ = writeln!(
        out,
        "# HELP sluice_offline_partitions Partitions with no leader (no live in-sync replica).\n# TYPE sluice_offline_partitions gauge\nsluice_offline_partitions {offline}\n\
         # HELP sluice_under_replicated_partitions Partitions whose ISR is smaller than their replica set.\n# TYPE sluice_under_replicated_partitions gauge\nsluice_under_replicated_partitions {under}\n\
         # HELP sluice_isr_changes_total ISR shrinks and expands this broker proposed and the controller committed.\n# TYPE sluice_isr_changes_total counter\nsluice_isr_changes_total{{change=\"shrink\"}} {}\nsluice_isr_changes_total{{change=\"expand\"}} {}",
        crate::replica_fetch::ISR_SHRINKS.load(std::sync::atomic::Ordering::Relaxed),
        crate::replica_fetch::ISR_EXPANDS.load(std::sync::atomic::Ordering::Relaxed),
    );
    let (buckets, sum_ms, count) = sluice_replication::histogram::ACKS_ALL_WAIT.snapshot();
    let _ = writeln!(
        out,
        "# HELP sluice_produce_acks_all_wait_seconds How long acks=all produces waited after their append for the ISR (until replicated or timed out).\n# TYPE sluice_produce_acks_all_wait_seconds histogram"
    );
    for (le, n) in buckets {
        let le = le.map_or("+Inf".to_string(), |ms| format!("{}", ms as f64 / 1000.0));
        let _ = writeln!(
            out,
            "sluice_produce_acks_all_wait_seconds_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "sluice_produce_acks_all_wait_seconds_sum {}\nsluice_produce_acks_all_wait_seconds_count {count}",
        sum_ms as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "# HELP sluice_follower_lag_records How far each follower is behind this leader's log end.\n# TYPE sluice_follower_lag_records gauge"
    );
    for (t, p) in topics.replicas() {
        if !p.is_leader() {
            continue;
        }
        let leo = p.log().log_end_offset();
        for (f, s) in p.follower_states() {
            let _ = writeln!(
                out,
                "sluice_follower_lag_records{{topic=\"{}\",partition=\"{}\",follower=\"{f}\"}} {}",
                t.name,
                p.index(),
                leo.saturating_sub(s.log_end_offset)
            );
        }
    }
    let gauges: [(&str, &str); 4] = [
        (
            "sluice_partition_log_start_offset",
            "First offset still stored.",
        ),
        (
            "sluice_partition_log_end_offset",
            "Offset the next record will get.",
        ),
        (
            "sluice_partition_high_watermark",
            "Offsets below this are committed.",
        ),
        (
            "sluice_partition_size_bytes",
            "Bytes stored in the partition's segments.",
        ),
    ];
    for (i, (name, help)) in gauges.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (t, p) in topics.replicas() {
            {
                let log = p.log();
                let v = match i {
                    0 => log.log_start_offset(),
                    1 => log.log_end_offset(),
                    2 => p.high_watermark(),
                    _ => log.size_bytes(),
                };
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",partition=\"{}\"}} {v}",
                    t.name,
                    p.index()
                );
            }
        }
    }
    let h = topics.dir_health();
    let _ = writeln!(
        out,
        "# HELP sluice_log_dir_offline 1 while the data directory refuses writes after a failed write.\n# TYPE sluice_log_dir_offline gauge\nsluice_log_dir_offline{{dir=\"{dir}\"}} {}\n\
         # HELP sluice_storage_write_errors_total Writes that failed on the disk.\n# TYPE sluice_storage_write_errors_total counter\nsluice_storage_write_errors_total{{dir=\"{dir}\"}} {}\n\
         # HELP sluice_storage_writes_refused_total Writes refused because the directory was offline.\n# TYPE sluice_storage_writes_refused_total counter\nsluice_storage_writes_refused_total{{dir=\"{dir}\"}} {}",
        u8::from(h.offline().is_some()),
        h.failed_writes(),
        h.refused_writes(),
        dir = h.dir().display(),
    );
    let pool = &state.request_memory;
    let _ = writeln!(
        out,
        "# HELP sluice_request_memory_pool_capacity_bytes Kafka request bytes all connections may hold (queued_max_request_bytes).\n# TYPE sluice_request_memory_pool_capacity_bytes gauge\nsluice_request_memory_pool_capacity_bytes {}\n\
         # HELP sluice_request_memory_pool_available_bytes Of those, free now (0: connections wait before reading more).\n# TYPE sluice_request_memory_pool_available_bytes gauge\nsluice_request_memory_pool_available_bytes {}",
        pool.capacity(),
        pool.available(),
    );
    let sent = crate::kafka::zero_copy::SENDFILE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP sluice_kafka_sendfile_bytes_total Record bytes sent to Kafka clients with sendfile.\n# TYPE sluice_kafka_sendfile_bytes_total counter\nsluice_kafka_sendfile_bytes_total {sent}"
    );
    storage_and_waiters(&mut out, &topics);
    let mut by_state = [0u64; 4];
    for (_, _, s) in state.groups.list() {
        by_state[s as usize] += 1;
    }
    let _ = writeln!(
        out,
        "# HELP sluice_consumer_groups Consumer groups this broker coordinates, by state.\n# TYPE sluice_consumer_groups gauge"
    );
    for s in [
        GroupState::Empty,
        GroupState::PreparingRebalance,
        GroupState::CompletingRebalance,
        GroupState::Stable,
    ] {
        let _ = writeln!(
            out,
            "sluice_consumer_groups{{state=\"{}\"}} {}",
            s.name(),
            by_state[s as usize]
        );
    }
    out.push_str(&crate::metrics::render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Disk usage of the data directory, open segment files, and requests parked in purgatory.
fn storage_and_waiters(out: &mut String, topics: &TopicManager) {
    let dir = topics.dir_health().dir().display().to_string();
    let replicas = topics.replicas();
    let log_bytes: u64 = replicas.iter().map(|(_, p)| p.log().size_bytes()).sum();
    let open_files: usize = replicas
        .iter()
        .map(|(_, p)| p.log().open_segment_files())
        .sum();
    let _ = writeln!(
        out,
        "# HELP sluice_log_dir_log_bytes Bytes of partition segments in the data directory.\n# TYPE sluice_log_dir_log_bytes gauge\nsluice_log_dir_log_bytes{{dir=\"{dir}\"}} {log_bytes}\n\
         # HELP sluice_log_segment_files_open Segment .log files open now (idle sealed ones are closed).\n# TYPE sluice_log_segment_files_open gauge\nsluice_log_segment_files_open {open_files}"
    );
    if let Ok(fs) = nix::sys::statvfs::statvfs(topics.dir_health().dir()) {
        let frag = fs.fragment_size();
        let _ = writeln!(
            out,
            "# HELP sluice_log_dir_free_bytes Space left for writes on the data directory's file system.\n# TYPE sluice_log_dir_free_bytes gauge\nsluice_log_dir_free_bytes{{dir=\"{dir}\"}} {}\n\
             # HELP sluice_log_dir_total_bytes Size of the data directory's file system.\n# TYPE sluice_log_dir_total_bytes gauge\nsluice_log_dir_total_bytes{{dir=\"{dir}\"}} {}",
            fs.blocks_available() * frag,
            fs.blocks() * frag,
        );
    }
    let waiting = |g: &std::sync::atomic::AtomicI64| g.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP sluice_purgatory_size Requests waiting: fetches for data (consumer long polls, follower fetches), produces for acks=all replication.\n# TYPE sluice_purgatory_size gauge\n\
         sluice_purgatory_size{{kind=\"fetch\"}} {}\nsluice_purgatory_size{{kind=\"produce\"}} {}",
        waiting(&sluice_replication::purgatory::FETCH),
        waiting(&sluice_replication::purgatory::PRODUCE),
    );
}

async fn topics_json(State(state): State<HttpState>) -> impl IntoResponse {
    let topics = state.topics;
    let image = state.quorum.image();
    let list: Vec<serde_json::Value> = image
        .topic_ids
        .keys()
        .filter_map(|name| crate::grpc::admin::describe(&image, &topics, name).ok())
        .map(|d| {
            serde_json::json!({
                "name": d.name,
                "replication_factor": d.replication_factor,
                "configs": d.configs,
                "partitions": d.partitions.iter().map(|p| serde_json::json!({
                    "partition": p.partition,
                    "leader": p.leader,
                    "replicas": p.replicas,
                    "isr": p.isr,
                    "log_start_offset": p.log_start_offset,
                    "log_end_offset": p.log_end_offset,
                    "high_watermark": p.high_watermark,
                    "size_bytes": p.size_bytes,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(list)
}
