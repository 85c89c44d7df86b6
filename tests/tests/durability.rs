//! Durability of the real broker process: kill -9 in the middle of a produce stream loses no
//! acknowledged record and leaves consistent logs; SIGTERM shuts down cleanly.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Broker;
use futures::StreamExt;
use sluice_proto::v1 as pb;

async fn create(b: &Broker, name: &str, partitions: u32) {
    b.create_topic(name, partitions, &[("segment.bytes", "65536")])
        .await;
}

/// Every record of a partition, by offset.
async fn read_partition(b: &Broker, topic: &str, partition: u32) -> (Vec<pb::ConsumedRecord>, u64) {
    let mut c = b.consumer().await;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = c
            .fetch(pb::FetchRequest {
                topic: topic.into(),
                partition,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                min_bytes: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if r.records.is_empty() {
            return (out, r.high_watermark);
        }
        offset = r.next_offset;
        out.extend(r.records);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_a_produce_stream_loses_no_acknowledged_record() {
    let mut b = Broker::start();
    create(&b, "durable", 2).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ProduceRequest>(16);
    let mut responses = b
        .producer()
        .await
        .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Request n carries 20 records "n-i" for partition n % 2.
    let sender = tokio::spawn(async move {
        for n in 0u64.. {
            let req = pb::ProduceRequest {
                idempotence: None,
                record_batches: Default::default(),
                batch_partition: 0,
                topic: "durable".into(),
                records: (0..20)
                    .map(|i| pb::Record {
                        partition: Some((n % 2) as u32),
                        key: None,
                        value: Some(format!("{n}-{i}-{}", "x".repeat(200)).into()),
                        headers: Vec::new(),
                        timestamp_ms: None,
                    })
                    .collect(),
                acks: pb::Acks::Leader as i32,
                timeout_ms: 0,
                correlation_id: n,
            };
            if tx.send(req).await.is_err() {
                return;
            }
        }
    });
    let mut acked: BTreeMap<u64, (u32, u64, u64)> = BTreeMap::new();
    while acked.len() < 400 {
        match responses.next().await {
            Some(Ok(r)) => {
                assert!(r.error.is_none(), "{:?}", r.error);
                let p = &r.partitions[0];
                acked.insert(
                    r.correlation_id,
                    (p.partition, p.base_offset, p.last_offset),
                );
            }
            other => panic!("stream ended early: {other:?}"),
        }
    }
    // Mid-stream: requests are still arriving and being written.
    b.kill9();
    sender.abort();
    b.launch();

    let mut logs = Vec::new();
    for p in 0..2 {
        let (records, hw) = read_partition(&b, "durable", p).await;
        assert_eq!(
            records.len() as u64,
            hw,
            "partition {p}: records up to the high watermark"
        );
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.offset, i as u64,
                "partition {p}: offsets contiguous, no gaps"
            );
        }
        // Whole requests only: a request's 20 records are one batch, present entirely or not at all.
        assert_eq!(records.len() % 20, 0, "partition {p}: no partial batch");
        logs.push(records);
    }
    for (n, (p, base, last)) in &acked {
        let log = &logs[*p as usize];
        assert!(
            (*last as usize) < log.len(),
            "acknowledged request {n} lost (partition {p}, offsets {base}..={last})"
        );
        for (i, off) in (*base..=*last).enumerate() {
            let v = String::from_utf8(log[off as usize].value.clone().unwrap().to_vec()).unwrap();
            assert!(
                v.starts_with(&format!("{n}-{i}-")),
                "offset {off} of partition {p} holds {v}"
            );
        }
    }
    // The recovered broker takes new writes after the recovered data.
    let r = b
        .producer()
        .await
        .produce(pb::ProduceRequest {
            topic: "durable".into(),
            records: vec![pb::Record {
                partition: Some(0),
                value: Some("after".into()),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.partitions[0].base_offset, logs[0].len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_restart_keeps_topics_configs_and_data() {
    let mut b = Broker::start();
    b.admin()
        .await
        .create_topic(pb::CreateTopicRequest {
            name: "kept".into(),
            partitions: 2,
            replication_factor: 1,
            configs: [("retention.ms".to_string(), "86400000".to_string())].into(),
        })
        .await
        .unwrap();
    b.producer()
        .await
        .produce(pb::ProduceRequest {
            topic: "kept".into(),
            records: (0..10)
                .map(|i| pb::Record {
                    partition: Some(i % 2),
                    value: Some(format!("v{i}").into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(b.terminate(), Some(0), "SIGTERM exits 0");
    for p in 0..2 {
        let dir = b.data_dir().join(format!("kept-{p}"));
        assert!(
            dir.join(".kafka_cleanshutdown").exists(),
            "clean-shutdown marker in {}",
            dir.display()
        );
    }
    b.launch();
    let d = b
        .admin()
        .await
        .describe_topic(pb::DescribeTopicRequest {
            name: "kept".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(d.configs["retention.ms"], "86400000");
    assert_eq!(
        d.partitions.iter().map(|p| p.high_watermark).sum::<u64>(),
        10
    );
    let (records, _) = read_partition(&b, "kept", 1).await;
    assert_eq!(records.len(), 5);
    assert_eq!(records[4].value.as_deref(), Some(&b"v9"[..]));
    // The marker is consumed at start-up, so a crash from now on triggers recovery.
    assert!(!b
        .data_dir()
        .join("kept-0")
        .join(".kafka_cleanshutdown")
        .exists());
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topic_keeps_the_latest_value_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, "log_cleaner_backoff_ms = 100\n").unwrap();
    let b = Broker::start_with(vec!["--config".into(), cfg.display().to_string()]);
    b.create_topic(
        "latest",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "4096"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    )
    .await;
    let mut producer = b.producer().await;
    for round in 0..40 {
        producer
            .produce(pb::ProduceRequest {
                topic: "latest".into(),
                records: (0..5)
                    .map(|k| pb::Record {
                        key: Some(format!("key-{k}").into()),
                        value: Some(format!("round-{round}-{}", "x".repeat(100)).into()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The background cleaner runs every 100 ms: wait until the sealed segments are compacted.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let records = loop {
        let (records, hw) = read_partition(&b, "latest", 0).await;
        assert_eq!(hw, 200, "compaction never moves the high watermark");
        if records.len() < 60 || std::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        records.len() < 60,
        "only {} of 200 records should remain after compaction",
        records.len()
    );
    for k in 0..5 {
        let last = records
            .iter()
            .rev()
            .find(|r| r.key.as_deref() == Some(format!("key-{k}").as_bytes()))
            .unwrap();
        assert!(
            last.value.as_deref().unwrap().starts_with(b"round-39-"),
            "key-{k} keeps its latest value"
        );
    }
    assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
}

/// What `kill9_mid_compaction_leaves_a_consistent_log` writes at `offset`.
fn kv_value(offset: u64, keys: u64) -> String {
    format!("{offset}-key-{}-{}", offset % keys, "x".repeat(900))
}

/// Produces `rounds` × `keys` records (one of each key per round) from offset `from`; returns the
/// new log end.
async fn produce_kv(b: &Broker, from: u64, rounds: u64, keys: u64) -> u64 {
    let mut p = b.producer().await;
    for offset in (from..from + rounds * keys).step_by(keys as usize) {
        p.produce(pb::ProduceRequest {
            topic: "kv".into(),
            records: (offset..offset + keys)
                .map(|o| pb::Record {
                    key: Some(format!("key-{}", o % keys).into()),
                    value: Some(kv_value(o, keys).into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    from + rounds * keys
}

/// Kill -9 while the cleaner is rewriting segments, restart, and check the log: every offset ever
/// written is either gone (compacted away: an older value of a key written again later) or holds
/// exactly what was written there; every key's latest value is there; offsets increase; the log
/// end did not move; and cleaning carries on. `SLUICE_COMPACTION_CRASH_ROUNDS` (default 3) sets
/// how many kills; `scripts/compaction-crash.sh` runs many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_compaction_leaves_a_consistent_log() {
    const KEYS: u64 = 200;
    let rounds: usize = std::env::var("SLUICE_COMPACTION_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    // A throttled cleaner (4 MB/s) takes long enough per segment to be caught in the act.
    std::fs::write(
        &cfg,
        "log_cleaner_backoff_ms = 50\nlog_cleaner_io_max_bytes_per_second = 4000000\n",
    )
    .unwrap();
    let mut b = Broker::start_with(vec!["--config".into(), cfg.display().to_string()]);
    b.create_topic(
        "kv",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "524288"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    )
    .await;
    let partition_dir = b.data_dir().join("kv-0");
    let value = |offset: u64| kv_value(offset, KEYS);
    let mut written = 0u64;
    let mut caught_mid_clean = 0;
    for round in 0..rounds {
        written = produce_kv(&b, written, 20, KEYS).await;
        // Wait for a rewrite in progress (a .cleaned file), then kill at a slightly random point.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let cleaning = || {
            std::fs::read_dir(&partition_dir)
                .unwrap()
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".cleaned"))
        };
        while !cleaning() {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the cleaner never started"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis((round as u64 * 37) % 60)).await;
        b.kill9();
        if cleaning() {
            caught_mid_clean += 1;
        }
        b.launch();
        let (records, hw) = read_partition(&b, "kv", 0).await;
        assert_eq!(hw, written, "round {round}: the log end moved");
        assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
        for r in &records {
            assert_eq!(
                r.value.as_deref(),
                Some(value(r.offset).as_bytes()),
                "round {round}: offset {} does not hold what was written there",
                r.offset
            );
        }
        let present: std::collections::HashSet<u64> = records.iter().map(|r| r.offset).collect();
        for latest in written - KEYS..written {
            assert!(
                present.contains(&latest),
                "round {round}: the latest value of key-{} (offset {latest}) is gone",
                latest % KEYS
            );
        }
    }
    eprintln!("{caught_mid_clean} of {rounds} kills landed while a segment was being rewritten");
    assert!(
        caught_mid_clean > 0,
        "no kill landed while a segment was being rewritten"
    );
    // After the crashes the cleaner finishes the job.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (records, _) = read_partition(&b, "kv", 0).await;
        if records.len() as u64 <= written / 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "compaction did not resume: {} of {written} records left",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
