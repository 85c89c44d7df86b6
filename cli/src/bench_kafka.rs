//! `sluice bench --protocol kafka`: a minimal native Kafka client on the `kafka-protocol` codecs.
//!
//! Produce: one pre-built RecordBatch v2 of `batch_size` records, sent as ProduceRequest v9 with
//! up to `pipeline` requests in flight per connection (the broker answers in order), optionally
//! paced to `throughput` records/s to measure latency below saturation. Consume: a
//! Fetch v12 loop per partition from the earliest offset. Topics are created with CreateTopics.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsResponse, FetchResponse, MetadataRequest, MetadataResponse,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench::{spawn_reporter, Progress};

fn encode_request<R: Encodable + HeaderVersion>(
    key: ApiKey,
    version: i16,
    corr: i32,
    req: &R,
) -> Result<BytesMut, String> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str("sluice-bench")))
        .encode(&mut buf, key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    req.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let n = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&n.to_be_bytes());
    Ok(buf)
}

async fn read_response(s: &mut (impl AsyncReadExt + Unpin)) -> Result<Bytes, String> {
    let n = s
        .read_i32()
        .await
        .map_err(|e| format!("reading response: {e}"))?;
    if !(4..=(512 << 20)).contains(&n) {
        return Err(format!("bad response size {n}"));
    }
    // Read into uninitialised capacity: zeroing a multi-MiB fetch buffer first costs a core.
    let mut buf = BytesMut::with_capacity(n as usize);
    while buf.len() < n as usize {
        let mut limited = (&mut *s).take((n as usize - buf.len()) as u64);
        if limited
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("reading response: {e}"))?
            == 0
        {
            return Err("connection closed mid-response".into());
        }
    }
    Ok(buf.freeze())
}

fn decode<R: Decodable + HeaderVersion>(mut b: Bytes, version: i16) -> Result<(i32, R), String> {
    let h =
        ResponseHeader::decode(&mut b, R::header_version(version)).map_err(|e| e.to_string())?;
    Ok((
        h.correlation_id,
        R::decode(&mut b, version).map_err(|e| e.to_string())?,
    ))
}

async fn roundtrip<Q: Encodable + HeaderVersion, R: Decodable + HeaderVersion>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Q,
) -> Result<R, String> {
    s.write_all(&encode_request(key, version, 1, req)?)
        .await
        .map_err(|e| e.to_string())?;
    decode::<R>(read_response(s).await?, version).map(|(_, r)| r)
}

async fn connect(addr: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Creates the topic if needed; returns its partition count.
async fn ensure_topic(addr: &str, topic: &str, partitions: u32) -> Result<u32, String> {
    let mut s = connect(addr).await?;
    let name = TopicName(StrBytes::from_string(topic.to_string()));
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(name.clone())
            .with_num_partitions(partitions as i32)
            .with_replication_factor(1)])
        .with_timeout_ms(10_000);
    let created: CreateTopicsResponse = roundtrip(&mut s, ApiKey::CreateTopics, 7, &req).await?;
    if let Some(t) = created.topics.first() {
        // 36: TOPIC_ALREADY_EXISTS, which is what a second run against the same topic gets.
        if t.error_code != 0 && t.error_code != 36 {
            return Err(format!(
                "creating {topic}: error {}{}",
                t.error_code,
                t.error_message
                    .as_ref()
                    .map(|m| format!(": {}", m.as_str()))
                    .unwrap_or_default()
            ));
        }
    }
    let md: MetadataResponse = roundtrip(
        &mut s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(name)),
        ])),
    )
    .await?;
    let t = md.topics.first().ok_or("no topic in metadata")?;
    if t.error_code != 0 {
        return Err(format!("metadata error {} for {topic}", t.error_code));
    }
    Ok(t.partitions.len() as u32)
}

#[allow(clippy::too_many_arguments)]
pub async fn produce(
    addr: &str,
    topic: &str,
    records: u64,
    record_size: usize,
    batch_size: usize,
    acks: i16,
    concurrency: usize,
    pipeline: usize,
    partitions: u32,
    throughput: u64,
) -> Result<(u64, u64, Duration, Histogram<u64>), String> {
    let partitions = ensure_topic(addr, topic, partitions).await?;
    let value = Bytes::from(
        (0..record_size)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let batch = crate::bench::build_batch(&value, batch_size as u64);
    if batch.is_empty() {
        return Err("empty batch".into());
    }
    let progress = Arc::new(Progress::default());
    let reporter = spawn_reporter(progress.clone(), "produce");
    let per_conn = records.div_ceil(concurrency as u64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let stream = connect(addr).await?;
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index((i as u32 % partitions) as i32)
                    .with_records(Some(batch.clone()))])]);
        let requests = per_conn
            .min(records.saturating_sub(per_conn * i as u64))
            .div_ceil(batch_size as u64);
        let progress = progress.clone();
        let value_bytes = (batch_size * record_size) as u64;
        let rate = throughput / concurrency as u64;
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = stream.into_split();
            // The writer paces and sends; the reader takes the answers (in order) and frees a
            // pipeline slot for each, so a paced send never delays reading an answer.
            let slots = Arc::new(tokio::sync::Semaphore::new(pipeline));
            let sent_at: Arc<std::sync::Mutex<VecDeque<Instant>>> = Default::default();
            let writer = {
                let (slots, sent_at, progress) = (slots.clone(), sent_at.clone(), progress.clone());
                tokio::spawn(async move {
                    let begin = Instant::now();
                    for n in 0..requests {
                        if rate > 0 {
                            let due = begin
                                + Duration::from_secs_f64(
                                    (n * batch_size as u64) as f64 / rate as f64,
                                );
                            tokio::time::sleep_until(due.into()).await;
                        }
                        if acks != 0 {
                            slots.acquire().await.map_err(|e| e.to_string())?.forget();
                        }
                        let buf = encode_request(ApiKey::Produce, 9, n as i32, &req)?;
                        if let Ok(mut q) = sent_at.lock() {
                            q.push_back(Instant::now());
                        }
                        wr.write_all(&buf).await.map_err(|e| e.to_string())?;
                        if acks == 0 {
                            progress
                                .records
                                .fetch_add(batch_size as u64, Ordering::Relaxed);
                            progress.bytes.fetch_add(value_bytes, Ordering::Relaxed);
                        }
                    }
                    // Handed back so the connection stays open until every answer is read.
                    Ok::<_, String>(wr)
                })
            };
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            if acks != 0 {
                for _ in 0..requests {
                    let (_, resp) = decode::<ProduceResponse>(read_response(&mut rd).await?, 9)?;
                    for t in &resp.responses {
                        for p in &t.partition_responses {
                            if p.error_code != 0 {
                                return Err(format!("produce error code {}", p.error_code));
                            }
                        }
                    }
                    let sent = sent_at.lock().ok().and_then(|mut q| q.pop_front());
                    if let Some(t) = sent {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    slots.add_permits(1);
                    progress
                        .records
                        .fetch_add(batch_size as u64, Ordering::Relaxed);
                    progress.bytes.fetch_add(value_bytes, Ordering::Relaxed);
                }
            }
            drop(writer.await.map_err(|e| e.to_string())??);
            Ok::<_, String>(hist)
        }));
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for t in tasks {
        hist.add(&t.await.map_err(|e| e.to_string())??)
            .map_err(|e| e.to_string())?;
    }
    reporter.abort();
    Ok((
        progress.records.load(Ordering::Relaxed),
        progress.bytes.load(Ordering::Relaxed),
        start.elapsed(),
        hist,
    ))
}

/// Consumes every partition from offset 0 until `records` are read (or the topic is drained).
pub async fn consume(
    addr: &str,
    topic: &str,
    records: u64,
) -> Result<(u64, u64, Duration), String> {
    let partitions = ensure_topic(addr, topic, 1).await?;
    let progress = Arc::new(Progress::default());
    let reporter = spawn_reporter(progress.clone(), "consume");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..partitions {
        let mut s = connect(addr).await?;
        let progress = progress.clone();
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            let mut offset = 0i64;
            let mut idle = 0;
            while progress.records.load(Ordering::Relaxed) < records && idle < 3 {
                let req = FetchRequest::default()
                    .with_replica_id((-1).into())
                    .with_max_wait_ms(500)
                    .with_min_bytes(1)
                    .with_max_bytes(64 << 20)
                    .with_session_epoch(-1)
                    .with_topics(vec![FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partitions(vec![FetchPartition::default()
                            .with_partition(p as i32)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(32 << 20)])]);
                let resp: FetchResponse = roundtrip(&mut s, ApiKey::Fetch, 12, &req).await?;
                let Some(pd) = resp.responses.first().and_then(|t| t.partitions.first()) else {
                    return Err("empty fetch response".to_string());
                };
                if pd.error_code != 0 {
                    return Err(format!("fetch error code {}", pd.error_code));
                }
                let data = pd.records.clone().unwrap_or_default();
                let (mut n, mut bytes) = (0u64, 0u64);
                let mut buf = data.clone();
                while buf.remaining() >= sluice_log::batch::HEADER_LEN {
                    let Ok(h) = sluice_log::BatchHeader::parse(&buf) else {
                        break;
                    };
                    if h.total_size() > buf.remaining() {
                        break;
                    }
                    n += h.record_count as u64;
                    bytes += h.total_size() as u64;
                    offset = h.next_offset();
                    buf.advance(h.total_size());
                }
                idle = if n == 0 { idle + 1 } else { 0 };
                progress.records.fetch_add(n, Ordering::Relaxed);
                progress.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    reporter.abort();
    Ok((
        progress.records.load(Ordering::Relaxed),
        progress.bytes.load(Ordering::Relaxed),
        start.elapsed(),
    ))
}
