//! `/metrics` tells an operator what the broker is doing (issue 13 item 9): requests by protocol
//! and API with errors and latency, bytes in and out, purgatory sizes, log flushes, disk usage,
//! consumer groups and rebalances — driven here by real clients (kcat, gRPC).

mod common;

use std::time::Duration;

use common::{kcat, wait_for, Broker};
use sluice_proto::v1 as pb;

/// The value of the series `series` (name with labels, as printed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_requests_errors_bytes_waiters_flushes_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    // Every produce is flushed: flush latency gets observations.
    std::fs::write(
        &cfg,
        "auto_create_topics_enable = false\n[topic_defaults]\n\"flush.messages\" = 1\n",
    )
    .unwrap();
    let b = Broker::start_with(vec!["--config".into(), cfg.display().to_string()]);
    b.create_topic("m", 1, &[]).await;
    let bootstrap = format!("127.0.0.1:{}", b.kafka_port);

    // Kafka: produce 100 records, consume them in a group, and ask for an unknown topic.
    let input: String = (0..100).map(|i| format!("v{i}\n")).collect();
    kcat(&["-b", &bootstrap, "-t", "m", "-P"], Some(&input)).unwrap();
    let consumed = kcat(
        &[
            "-b",
            &bootstrap,
            "-G",
            "mg",
            "m",
            "-o",
            "beginning",
            "-e",
            "-q",
        ],
        None,
    )
    .unwrap();
    assert_eq!(consumed.lines().count(), 100);
    let _ = kcat(
        &["-b", &bootstrap, "-t", "nope", "-C", "-e", "-m", "3"],
        None,
    );

    // gRPC: a produce, and one to an unknown topic (NOT_FOUND).
    let mut p = b.producer().await;
    let req = |topic: &str| pb::ProduceRequest {
        topic: topic.into(),
        records: vec![pb::Record {
            value: Some(b"g".to_vec().into()),
            ..Default::default()
        }],
        acks: pb::Acks::Leader as i32,
        timeout_ms: 0,
        idempotence: None,
        record_batches: Default::default(),
        batch_partition: 0,
        correlation_id: 0,
    };
    p.produce(req("m")).await.unwrap();
    assert!(p.produce(req("nope")).await.is_err());

    // A long poll parks a fetch in purgatory while it waits.
    let mut c = b.consumer().await;
    let poll = tokio::spawn(async move {
        c.fetch(pb::FetchRequest {
            topic: "m".into(),
            partition: 0,
            offset: 101,
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait_ms: 20_000,
            ..Default::default()
        })
        .await
    });
    wait_for("a fetch in purgatory", Duration::from_secs(30), || {
        let text = b.http_get("/metrics");
        (value(&text, r#"sluice_purgatory_size{kind="fetch"}"#)? >= 1.0).then_some(())
    });
    p.produce(req("m")).await.unwrap();
    poll.await.unwrap().unwrap();

    let text = wait_for("request metrics", Duration::from_secs(30), || {
        let text = b.http_get("/metrics");
        let v = |s: &str| value(&text, s).unwrap_or(0.0);
        (v(r#"sluice_requests_total{api="Produce",protocol="kafka"}"#) >= 1.0
            && v(r#"sluice_requests_total{api="Fetch",protocol="kafka"}"#) >= 1.0
            && v(r#"sluice_requests_total{api="/sluice.v1.Producer/Produce",protocol="grpc"}"#)
                >= 3.0
            && v(r#"sluice_consumer_groups{state="Empty"}"#) >= 1.0
            // Nothing waiting any more, every kcat gone.
            && v(r#"sluice_purgatory_size{kind="fetch"}"#) == 0.0
            && v(r#"sluice_connections{protocol="kafka"}"#) == 0.0)
            .then_some(text)
    });
    let v = |s: &str| value(&text, s).unwrap_or(0.0);
    // Errors by name: Kafka's per topic, gRPC's by status.
    assert!(
        v(
            r#"sluice_request_errors_total{api="Metadata",error="UnknownTopicOrPartition",protocol="kafka"}"#
        ) >= 1.0,
        "{text}"
    );
    assert!(
        v(
            r#"sluice_request_errors_total{api="/sluice.v1.Producer/Produce",error="NOT_FOUND",protocol="grpc"}"#
        ) >= 1.0,
        "{text}"
    );
    // Latency histograms count every request.
    assert!(
        v(r#"sluice_request_duration_seconds_count{api="Produce",protocol="kafka"}"#) >= 1.0,
        "{text}"
    );
    // Bytes: at least the records themselves went each way.
    assert!(
        v(r#"sluice_received_bytes_total{protocol="kafka"}"#) > 200.0,
        "{text}"
    );
    assert!(
        v(r#"sluice_sent_bytes_total{protocol="kafka"}"#) > 200.0,
        "{text}"
    );
    assert!(
        v(r#"sluice_received_bytes_total{protocol="grpc"}"#) > 0.0,
        "{text}"
    );
    assert!(
        v(r#"sluice_sent_bytes_total{protocol="grpc"}"#) > 0.0,
        "{text}"
    );
    // flush.messages=1: every produce fsyncs.
    assert!(
        v("sluice_log_flush_duration_seconds_count") >= 3.0,
        "{text}"
    );
    // The group formed once, then emptied when kcat left.
    assert!(v("sluice_group_rebalances_total") >= 1.0, "{text}");
    // Disk: the file system's size and free space, and the bytes of our segments.
    assert!(
        v(&format!(
            r#"sluice_log_dir_total_bytes{{dir="{}"}}"#,
            b.data_dir().display()
        )) > 0.0,
        "{text}"
    );
    assert!(
        v(&format!(
            r#"sluice_log_dir_log_bytes{{dir="{}"}}"#,
            b.data_dir().display()
        )) > 100.0,
        "{text}"
    );
}
