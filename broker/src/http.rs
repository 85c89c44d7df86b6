//! The HTTP admin listener: `/health`, Prometheus `/metrics`, and `/v1/topics` (JSON).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use sluice_replication::controller::driver::QuorumHandle;

use crate::topics::TopicManager;

#[derive(Clone)]
pub struct HttpState {
    topics: Arc<TopicManager>,
    quorum: QuorumHandle,
}

pub fn router(topics: Arc<TopicManager>, quorum: QuorumHandle) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/topics", get(topics_json))
        .with_state(HttpState { topics, quorum })
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
    let sent = crate::kafka::zero_copy::SENDFILE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP sluice_kafka_sendfile_bytes_total Record bytes sent to Kafka clients with sendfile.\n# TYPE sluice_kafka_sendfile_bytes_total counter\nsluice_kafka_sendfile_bytes_total {sent}"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
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
