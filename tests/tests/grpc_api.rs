//! The gRPC API of a real `sluice serve` process: topics, produce/consume, long poll, streaming,
//! offsets, and the errors bad input gets.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Broker;
use futures::StreamExt;
use sluice_proto::v1 as pb;
use tonic::Code;

fn record(key: Option<&str>, value: &str) -> pb::Record {
    pb::Record {
        partition: None,
        key: key.map(|k| k.to_string().into()),
        value: Some(value.to_string().into()),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

async fn create(b: &Broker, name: &str, partitions: u32) {
    b.create_topic(name, partitions, &[]).await;
}

async fn produce(
    b: &Broker,
    topic: &str,
    records: Vec<pb::Record>,
) -> Result<pb::ProduceResponse, tonic::Status> {
    b.producer()
        .await
        .produce(pb::ProduceRequest {
            idempotence: None,
            record_batches: Default::default(),
            batch_partition: 0,
            topic: topic.into(),
            records,
            acks: pb::Acks::Leader as i32,
            timeout_ms: 0,
            correlation_id: 0,
        })
        .await
        .map(|r| r.into_inner())
}

async fn fetch(
    b: &Broker,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<pb::FetchResponse, tonic::Status> {
    b.consumer()
        .await
        .fetch(pb::FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: 0,
            max_wait_ms: 0,
            min_bytes: 0,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle_and_admin_errors() {
    let b = Broker::start();
    let mut admin = b.admin().await;
    let created = admin
        .create_topic(pb::CreateTopicRequest {
            name: "orders".into(),
            partitions: 4,
            replication_factor: 1,
            configs: [("retention.ms".to_string(), "60000".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(created.partitions.len(), 4);
    assert_eq!(created.configs["retention.ms"], "60000");

    let err = |r: Result<tonic::Response<pb::CreateTopicResponse>, tonic::Status>| r.unwrap_err();
    let dup = err(admin
        .create_topic(pb::CreateTopicRequest {
            name: "orders".into(),
            ..Default::default()
        })
        .await);
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    for bad in ["", ".", "..", "has space", "x/y", &"z".repeat(250)] {
        let e = err(admin
            .create_topic(pb::CreateTopicRequest {
                name: bad.into(),
                ..Default::default()
            })
            .await);
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().contains("topic name"), "{}", e.message());
    }
    let e = err(admin
        .create_topic(pb::CreateTopicRequest {
            name: "rf3".into(),
            replication_factor: 3,
            ..Default::default()
        })
        .await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("replication factor"),
        "{}",
        e.message()
    );
    let e = err(admin
        .create_topic(pb::CreateTopicRequest {
            name: "cfg".into(),
            configs: [("retention.ms".to_string(), "soon".to_string())].into(),
            ..Default::default()
        })
        .await);
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = err(admin
        .create_topic(pb::CreateTopicRequest {
            name: "many".into(),
            partitions: 1_000_000,
            ..Default::default()
        })
        .await);
    assert_eq!(e.code(), Code::InvalidArgument);

    let listed = admin
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .topics
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["orders"]
    );

    let altered = admin
        .alter_topic_config(pb::AlterTopicConfigRequest {
            name: "orders".into(),
            set: [("cleanup.policy".to_string(), "compact,delete".to_string())].into(),
            delete: vec!["retention.ms".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(altered.configs["cleanup.policy"], "compact,delete");
    assert_eq!(altered.configs["retention.ms"], "604800000");

    admin
        .delete_topic(pb::DeleteTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap();
    let e = admin
        .describe_topic(pb::DescribeTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = admin
        .delete_topic(pb::DeleteTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(!b.data_dir().join("orders-0").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_keys_values_headers_timestamps_across_partitions() {
    let b = Broker::start();
    create(&b, "events", 3).await;
    let mut sent = Vec::new();
    for i in 0..60 {
        sent.push(pb::Record {
            partition: if i % 10 == 0 { Some(2) } else { None },
            key: (i % 4 != 0).then(|| format!("user-{}", i % 7).into()),
            value: Some(format!("event-{i}").into()),
            headers: vec![
                pb::Header {
                    key: "trace".into(),
                    value: Some(format!("t{i}").into()),
                },
                pb::Header {
                    key: "empty".into(),
                    value: None,
                },
            ],
            timestamp_ms: Some(1_700_000_000_000 + i),
        });
    }
    let resp = produce(&b, "events", sent.clone()).await.unwrap();
    let total: u64 = resp
        .partitions
        .iter()
        .map(|p| p.last_offset - p.base_offset + 1)
        .sum();
    assert_eq!(total, 60);

    let mut got: HashMap<String, (u32, pb::ConsumedRecord)> = HashMap::new();
    for p in 0..3 {
        let f = fetch(&b, "events", p, 0).await.unwrap();
        assert_eq!(f.high_watermark, f.next_offset);
        for (i, r) in f.records.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "offsets are contiguous from 0");
            let v = String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
            got.insert(v, (p, r.clone()));
        }
    }
    assert_eq!(got.len(), 60);
    let mut key_partition: HashMap<String, u32> = HashMap::new();
    for (i, s) in sent.iter().enumerate() {
        let (p, r) = &got[&format!("event-{i}")];
        assert_eq!(r.key, s.key);
        assert_eq!(r.timestamp_ms, s.timestamp_ms.unwrap());
        assert_eq!(r.headers, s.headers);
        if let Some(want) = s.partition {
            assert_eq!(*p, want);
        } else if let Some(k) = &s.key {
            let k = String::from_utf8(k.to_vec()).unwrap();
            // The same key always lands on the same partition.
            assert_eq!(*key_partition.entry(k).or_insert(*p), *p);
        }
    }
    // Kafka's default partitioner: murmur2("foobar") = -790332482 -> partition 0 of 3.
    let r = produce(&b, "events", vec![record(Some("foobar"), "x")])
        .await
        .unwrap();
    assert_eq!(r.partitions[0].partition, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_wakes_when_data_arrives_and_times_out_without() {
    let b = Broker::start();
    create(&b, "poll", 1).await;
    let mut consumer = b.consumer().await;
    let started = Instant::now();
    let empty = consumer
        .fetch(pb::FetchRequest {
            topic: "poll".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            max_wait_ms: 300,
            min_bytes: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.records.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "waited {:?}",
        started.elapsed()
    );

    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let r = consumer
            .fetch(pb::FetchRequest {
                topic: "poll".into(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
                max_wait_ms: 20_000,
                min_bytes: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(&b, "poll", vec![record(None, "wake up")])
        .await
        .unwrap();
    let (r, waited) = waiter.await.unwrap();
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.records[0].value.as_deref(), Some(&b"wake up"[..]));
    assert!(
        waited < Duration::from_secs(10),
        "fetch returned after {waited:?}, not when data arrived"
    );

    // The client's deadline (grpc-timeout) ends a long poll that would wait longer.
    let mut consumer = b.consumer().await;
    let mut req = tonic::Request::new(pb::FetchRequest {
        topic: "poll".into(),
        partition: 0,
        offset: 1,
        max_wait_ms: 20_000,
        min_bytes: 1,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e = consumer.fetch(req).await.unwrap_err();
    // tonic's server reports an expired grpc-timeout as CANCELLED ("Timeout expired").
    assert!(
        matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_existing_and_new_records() {
    let b = Broker::start();
    create(&b, "tail", 1).await;
    produce(
        &b,
        "tail",
        (0..5).map(|i| record(None, &format!("old-{i}"))).collect(),
    )
    .await
    .unwrap();
    let mut stream = b
        .consumer()
        .await
        .subscribe(pb::SubscribeRequest {
            topic: "tail".into(),
            partition: 0,
            offset: 2,
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut values = Vec::new();
    let producer_task = {
        let addr = b.addr();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut p = sluice_proto::v1::producer_client::ProducerClient::connect(format!(
                "http://{addr}"
            ))
            .await
            .unwrap();
            for i in 0..3 {
                p.produce(pb::ProduceRequest {
                    topic: "tail".into(),
                    records: vec![record(None, &format!("new-{i}"))],
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        })
    };
    while values.len() < 6 {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        values.extend(
            r.records
                .iter()
                .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()),
        );
    }
    producer_task.await.unwrap();
    assert_eq!(
        values,
        ["old-2", "old-3", "old-4", "new-0", "new-1", "new-2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_earliest_latest_and_by_timestamp() {
    let b = Broker::start();
    create(&b, "times", 1).await;
    let records = (0..10)
        .map(|i| pb::Record {
            timestamp_ms: Some(1_000 * i),
            ..record(None, &format!("r{i}"))
        })
        .collect();
    produce(&b, "times", records).await.unwrap();
    let mut c = b.consumer().await;
    let list = |spec: pb::OffsetSpec, ts: i64| {
        let req = pb::ListOffsetsRequest {
            topic: "times".into(),
            partition: 0,
            spec: spec as i32,
            timestamp_ms: ts,
            ..Default::default()
        };
        let mut c = c.clone();
        async move { c.list_offsets(req).await.unwrap().into_inner() }
    };
    assert_eq!(list(pb::OffsetSpec::Earliest, 0).await.offset, Some(0));
    assert_eq!(list(pb::OffsetSpec::Latest, 0).await.offset, Some(10));
    let t = list(pb::OffsetSpec::Timestamp, 4_500).await;
    assert_eq!((t.offset, t.timestamp_ms), (Some(5), 5_000));
    assert_eq!(list(pb::OffsetSpec::Timestamp, 99_000).await.offset, None);
    let e = c
        .list_offsets(pb::ListOffsetsRequest {
            topic: "times".into(),
            partition: 9,
            spec: 0,
            timestamp_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_broker_keeps_serving() {
    let b = Broker::start_with(vec![]);
    create(&b, "limits", 1).await;
    b.admin()
        .await
        .alter_topic_config(pb::AlterTopicConfigRequest {
            name: "limits".into(),
            set: [("max.message.bytes".to_string(), "10000".to_string())].into(),
            delete: vec![],
        })
        .await
        .unwrap();

    let e = produce(&b, "nope", vec![record(None, "x")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"), "{}", e.message());
    let e = produce(&b, "limits", vec![record(None, &"x".repeat(20_000))])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max.message.bytes"), "{}", e.message());
    let e = produce(
        &b,
        "limits",
        vec![pb::Record {
            partition: Some(5),
            ..record(None, "x")
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = produce(&b, "limits", vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Many small records split into batches under max.message.bytes: accepted.
    let ok = produce(
        &b,
        "limits",
        (0..100)
            .map(|i| record(None, &format!("{i:0>500}")))
            .collect(),
    )
    .await
    .unwrap();
    assert_eq!(ok.partitions[0].last_offset, 99);

    let e = fetch(&b, "limits", 0, 1_000).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("out of range"), "{}", e.message());

    // Garbage on the gRPC port: that connection fails, the broker does not.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
        let _ = s.write_all(junk).await;
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    }
    let f = fetch(&b, "limits", 0, 0).await.unwrap();
    assert_eq!(f.high_watermark, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        "max_connections = 2\nmax_request_bytes = 10000\n[topic_defaults]\n\"retention.ms\" = 123456\n",
    )
    .unwrap();
    let b = Broker::start_with(vec!["--config".into(), cfg.display().to_string()]);
    let c1 = b.channel().await;
    let c2 = b.channel().await;
    let mut a1 = sluice_proto::v1::admin_client::AdminClient::new(c1.clone());
    let mut a2 = sluice_proto::v1::admin_client::AdminClient::new(c2);
    a1.list_topics(pb::ListTopicsRequest {}).await.unwrap();
    a2.list_topics(pb::ListTopicsRequest {}).await.unwrap();
    let third = tonic::transport::Channel::from_shared(format!("http://{}", b.addr()))
        .unwrap()
        .connect()
        .await;
    let refused = match third {
        Err(_) => true,
        Ok(ch) => sluice_proto::v1::admin_client::AdminClient::new(ch)
            .list_topics(pb::ListTopicsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a third connection must be refused");
    // The config file's topic defaults apply.
    let t = a1
        .create_topic(pb::CreateTopicRequest {
            name: "d".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(t.configs["retention.ms"], "123456");
    // A request over max_request_bytes: RESOURCE_EXHAUSTED, as gRPC servers answer it.
    drop(a2);
    let mut p = sluice_proto::v1::producer_client::ProducerClient::new(c1.clone());
    let e = p
        .produce(pb::ProduceRequest {
            topic: "d".into(),
            records: vec![record(None, &"x".repeat(50_000))],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // The same on the consumer service's fetch and subscribe.
    let mut consumer = sluice_proto::v1::consumer_client::ConsumerClient::new(c1);
    let e = consumer
        .fetch(pb::FetchRequest {
            topic: "x".repeat(50_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_request_bytes"), "{e:?}");
    let e = consumer
        .subscribe(pb::SubscribeRequest {
            topic: "x".repeat(50_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let e = consumer
        .fetch(pb::FetchRequest {
            topic: "absent".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reflection_lists_the_sluice_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let b = Broker::start();
    let mut client = ServerReflectionClient::new(b.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response {resp:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "sluice.v1.Admin",
        "sluice.v1.Producer",
        "sluice.v1.Consumer",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

/// Older grpcurl and Python reflection clients speak only `grpc.reflection.v1alpha`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reflection_is_served_as_v1alpha_too() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let b = Broker::start();
    let mut client = ServerReflectionClient::new(b.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response {resp:?}");
    };
    assert!(
        list.service.iter().any(|s| s.name == "sluice.v1.Admin"),
        "{list:?}"
    );
}

/// Idempotent produce over gRPC: a request sent twice is written once and the retry is answered
/// with the original offsets; the next request continues the sequence; a gap, a missing
/// partition or sequence, and a bad epoch are refused with clear statuses. Each InitProducerId
/// gives a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_produce_writes_a_retried_request_once() {
    let b = Broker::start();
    create(&b, "idem", 2).await;
    let mut p = b.producer().await;
    let first = p
        .init_producer_id(pb::InitProducerIdRequest {})
        .await
        .unwrap()
        .into_inner();
    let second = p
        .init_producer_id(pb::InitProducerIdRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        first.producer_id >= 0 && first.producer_epoch == 0,
        "{first:?}"
    );
    assert_ne!(first.producer_id, second.producer_id);

    let records = |from: u32, n: u32| -> Vec<pb::Record> {
        (from..from + n)
            .map(|i| pb::Record {
                partition: Some(i % 2),
                ..record(None, &format!("v{i}"))
            })
            .collect()
    };
    let request = |records: Vec<pb::Record>, seqs: &[(u32, i32)], epoch: i32| pb::ProduceRequest {
        topic: "idem".into(),
        records,
        acks: pb::Acks::All as i32,
        timeout_ms: 0,
        correlation_id: 0,
        idempotence: Some(pb::IdempotentProduce {
            producer_id: first.producer_id,
            producer_epoch: epoch,
            sequences: seqs
                .iter()
                .map(|(partition, first_sequence)| pb::PartitionSequence {
                    partition: *partition,
                    first_sequence: *first_sequence,
                })
                .collect(),
        }),
        ..Default::default()
    };
    let offsets = |r: pb::ProduceResponse| -> Vec<(u32, u64, u64)> {
        r.partitions
            .iter()
            .map(|p| (p.partition, p.base_offset, p.last_offset))
            .collect()
    };
    // 10 records, 5 per partition, sequences 0..5 on each.
    let written = offsets(
        p.produce(request(records(0, 10), &[(0, 0), (1, 0)], 0))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(written, vec![(0, 0, 4), (1, 0, 4)]);
    // The same request again (a retry after a lost response): same offsets, nothing written.
    let retried = offsets(
        p.produce(request(records(0, 10), &[(0, 0), (1, 0)], 0))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(retried, written);
    // The next request continues at sequence 5 on each partition.
    let next = offsets(
        p.produce(request(records(10, 4), &[(0, 5), (1, 5)], 0))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(next, vec![(0, 5, 6), (1, 5, 6)]);
    for partition in 0..2 {
        let r = fetch(&b, "idem", partition, 0).await.unwrap();
        assert_eq!(r.records.len(), 7, "partition {partition}: {:?}", r.records);
    }
    // A gap: sequence 9 where 7 is next.
    let gap = p
        .produce(request(records(0, 2), &[(0, 9), (1, 7)], 0))
        .await
        .unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition, "{gap:?}");
    assert!(gap.message().contains("does not follow"), "{gap:?}");
    // Every record must name its partition; every partition written needs a sequence.
    let unnamed = p
        .produce(request(vec![record(None, "x")], &[(0, 7)], 0))
        .await
        .unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument, "{unnamed:?}");
    assert!(unnamed.message().contains("partition"), "{unnamed:?}");
    let unsequenced = p
        .produce(request(records(0, 2), &[(0, 7)], 0))
        .await
        .unwrap_err();
    assert_eq!(unsequenced.code(), Code::InvalidArgument, "{unsequenced:?}");
    let bad_epoch = p
        .produce(request(records(0, 2), &[(0, 7), (1, 7)], 70_000))
        .await
        .unwrap_err();
    assert_eq!(bad_epoch.code(), Code::InvalidArgument, "{bad_epoch:?}");
    // Nothing refused was written.
    for partition in 0..2 {
        let r = fetch(&b, "idem", partition, 0).await.unwrap();
        assert_eq!(r.records.len(), 7, "partition {partition}");
    }
}

/// RECORD_FORMAT_BATCHES: the stored RecordBatch v2 bytes come back untouched — whole batches,
/// the first possibly starting before the offset asked for — and decode to exactly the records
/// the typed form returns, for Fetch and for Subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_format_fetches_decode_to_the_typed_records() {
    let b = Broker::start();
    create(&b, "raw", 2).await;
    for round in 0..5 {
        let records = (0..12)
            .map(|i| pb::Record {
                partition: Some(i % 2),
                key: (i % 3 != 0).then(|| format!("k{i}").into()),
                value: Some(format!("r{round}-{i}").into()),
                headers: vec![pb::Header {
                    key: "h".into(),
                    value: Some(format!("{round}").into()),
                }],
                timestamp_ms: Some(1_700_000_000_000 + i64::from(i)),
            })
            .collect();
        produce(&b, "raw", records).await.unwrap();
    }
    let typed = |r: &pb::ConsumedRecord| {
        (
            r.offset,
            r.timestamp_ms,
            r.key.clone(),
            r.value.clone(),
            r.headers.clone(),
        )
    };
    let decoded = |data: &bytes::Bytes, from: u64| {
        sluice_log::decode_batches(data, 1 << 20)
            .unwrap()
            .into_iter()
            .filter(|r| r.offset >= from)
            .map(|r| {
                (
                    r.offset,
                    r.timestamp,
                    r.key,
                    r.value,
                    r.headers
                        .into_iter()
                        .map(|h| pb::Header {
                            key: h.key,
                            value: h.value,
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    for partition in 0..2 {
        // From the middle of the first batch: the batch comes whole, the client skips.
        let from = 3;
        let records = fetch(&b, "raw", partition, from).await.unwrap();
        let batches = b
            .consumer()
            .await
            .fetch(pb::FetchRequest {
                topic: "raw".into(),
                partition,
                offset: from,
                format: pb::RecordFormat::Batches as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(batches.records.is_empty());
        assert_eq!(batches.next_offset, records.next_offset);
        assert_eq!(batches.high_watermark, 30);
        let first = sluice_log::BatchHeader::parse(&batches.record_batches).unwrap();
        assert_eq!(first.base_offset, 0, "whole batches");
        let want: Vec<_> = records.records.iter().map(typed).collect();
        assert_eq!(want.len(), 27);
        assert_eq!(decoded(&batches.record_batches, from), want);

        let mut stream = b
            .consumer()
            .await
            .subscribe(pb::SubscribeRequest {
                topic: "raw".into(),
                partition,
                offset: from,
                format: pb::RecordFormat::Batches as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(decoded(&first.record_batches, from), want);
    }
}

/// Produce in the batch form: RecordBatch v2 bytes built by the client (several batches, one
/// lz4-compressed) go to the named partition as they are and read back as the same records;
/// damaged bytes, a mix with typed records, and a partition out of range are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_form_produce_appends_client_built_batches() {
    use sluice_log::{BatchBuilder, Compression, Record};
    let b = Broker::start();
    create(&b, "rawp", 2).await;
    let build = |values: &[&str], codec| {
        let mut builder = BatchBuilder::new(codec);
        for v in values {
            builder.push(&Record {
                timestamp: 1_700_000_000_000,
                key: Some(bytes::Bytes::from(format!("k-{v}"))),
                value: Some(bytes::Bytes::from(v.to_string())),
                headers: Vec::new(),
            });
        }
        builder.build().unwrap()
    };
    let mut data = build(&["a", "b"], Compression::None);
    data.extend_from_slice(&build(&["c", "d", "e"], Compression::Lz4));
    let req = |record_batches: bytes::Bytes, batch_partition: u32| pb::ProduceRequest {
        topic: "rawp".into(),
        acks: pb::Acks::All as i32,
        record_batches,
        batch_partition,
        ..Default::default()
    };
    let mut p = b.producer().await;
    let r = p
        .produce(req(data.clone().freeze(), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.partitions.len(), 1);
    assert_eq!(
        (
            r.partitions[0].partition,
            r.partitions[0].base_offset,
            r.partitions[0].last_offset
        ),
        (1, 0, 4)
    );
    let f = fetch(&b, "rawp", 1, 0).await.unwrap();
    let got: Vec<(u64, String, String)> = f
        .records
        .iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, format!("k-{v}"), v.to_string()))
            .collect::<Vec<_>>()
    );
    assert!(fetch(&b, "rawp", 0, 0).await.unwrap().records.is_empty());

    let mut damaged = data.clone();
    let n = damaged.len();
    damaged[n - 1] ^= 0xff;
    let e = p.produce(req(damaged.freeze(), 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut mixed = req(data.clone().freeze(), 1);
    mixed.records = vec![record(None, "x")];
    let e = p.produce(mixed).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = p.produce(req(data.freeze(), 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        fetch(&b, "rawp", 1, 0).await.unwrap().records.len(),
        5,
        "nothing refused was written"
    );
}
