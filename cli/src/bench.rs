//! `sluice bench`: a load generator in the spirit of kafka-producer-perf-test.
//!
//! `produce`: C concurrent producers (each its own connection and pipelined `ProduceStream`),
//! producer i writing to partition i mod P, `--pipeline` requests in flight each; per-request
//! latency (send → acknowledgement) in an HDR histogram. `consume`: one `Subscribe` stream per
//! partition from the earliest offset until `--records` are read. A progress line every second,
//! then totals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use sluice_proto::v1 as pb;

use crate as cli;
use crate::{AcksArg, ConnArgs, Output};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Args, Clone)]
pub struct BenchOpts {
    /// Topic to use; created if missing.
    #[arg(long)]
    pub topic: String,
    /// Records to produce or consume.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Which API to drive.
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    pub protocol: Protocol,
    /// Kafka listener address (with --protocol kafka).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka_broker: String,
    /// gRPC: `batches` produces RecordBatch v2 bytes built here and fetches the stored batches,
    /// counting records from the batch headers, as Kafka clients do (the fast form); `records`
    /// sends and receives the typed per-record form, which the broker encodes and decodes.
    #[arg(long, value_enum, default_value_t = RecordFormat::Batches)]
    pub record_format: RecordFormat,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFormat {
    Records,
    Batches,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Kafka,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as acknowledgements allow.
    Produce {
        #[command(flatten)]
        opts: BenchOpts,
        /// Records per produce request.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        #[arg(long, value_enum, default_value_t = AcksArg::One)]
        acks: AcksArg,
        /// Concurrent producers (connections).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Requests in flight per producer.
        #[arg(long, default_value_t = 8)]
        pipeline: usize,
        /// Partitions when the topic is created [default: concurrency].
        #[arg(long)]
        partitions: Option<u32>,
        /// Cap the send rate, records/s (0 = unlimited): measure latency below saturation.
        #[arg(long, default_value_t = 0)]
        throughput: u64,
    },
    /// Consume a topic from the earliest offset.
    Consume {
        #[command(flatten)]
        opts: BenchOpts,
    },
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    match args.command {
        BenchCommand::Produce {
            opts,
            batch_size,
            acks,
            concurrency,
            pipeline,
            partitions,
            throughput,
        } => {
            let partitions = partitions.unwrap_or(concurrency as u32).max(1);
            if opts.protocol == Protocol::Kafka {
                let acks = match acks {
                    AcksArg::Zero => 0,
                    AcksArg::One => 1,
                    AcksArg::All => -1,
                };
                let (records, bytes, elapsed, hist) = crate::bench_kafka::produce(
                    &opts.kafka_broker,
                    &opts.topic,
                    opts.records,
                    opts.record_size,
                    batch_size.max(1),
                    acks,
                    concurrency.max(1),
                    pipeline.max(1),
                    partitions,
                    throughput,
                )
                .await?;
                report(
                    "produce",
                    records,
                    bytes,
                    elapsed,
                    (acks != 0).then_some(&hist),
                    opts.conn.output,
                );
                return Ok(());
            }
            produce(
                opts,
                batch_size.max(1),
                acks,
                concurrency.max(1),
                pipeline.max(1),
                partitions,
                throughput,
            )
            .await
        }
        BenchCommand::Consume { opts } if opts.protocol == Protocol::Kafka => {
            let (records, bytes, elapsed) =
                crate::bench_kafka::consume(&opts.kafka_broker, &opts.topic, opts.records).await?;
            report("consume", records, bytes, elapsed, None, opts.conn.output);
            Ok(())
        }
        BenchCommand::Consume { opts } => consume(opts).await,
    }
}

#[derive(Default)]
pub struct Progress {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
}

pub fn spawn_reporter(progress: Arc<Progress>, label: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = (0u64, 0u64);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let r = progress.records.load(Ordering::Relaxed);
            let b = progress.bytes.load(Ordering::Relaxed);
            eprintln!(
                "{label}: {r} records, {:.0} records/s, {:.1} MB/s ({:.0}s)",
                (r - last.0) as f64,
                (b - last.1) as f64 / 1e6,
                start.elapsed().as_secs_f64()
            );
            last = (r, b);
        }
    })
}

async fn ensure_topic(conn: &ConnArgs, topic: &str, partitions: u32) -> Result<u32, String> {
    let mut admin = cli::admin(&conn.broker).await?;
    match admin
        .describe_topic(pb::DescribeTopicRequest { name: topic.into() })
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .topic
            .map_or(1, |t| t.partitions.len() as u32)),
        Err(s) if s.code() == tonic::Code::NotFound => {
            admin
                .create_topic(pb::CreateTopicRequest {
                    name: topic.into(),
                    partitions,
                    replication_factor: 1,
                    configs: Default::default(),
                })
                .await
                .map_err(cli::status_message)?;
            Ok(partitions)
        }
        Err(s) => Err(cli::status_message(s)),
    }
}

fn report(
    label: &str,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Option<&Histogram<u64>>,
    output: Output,
) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (rps, mbps) = (records as f64 / secs, bytes as f64 / secs / 1e6);
    let lat = latency.map(|h| {
        let ms = |v: u64| v as f64 / 1000.0;
        (
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
        )
    });
    if output == Output::Json {
        let mut v = serde_json::json!({
            "mode": label, "records": records, "bytes": bytes, "seconds": secs,
            "records_per_sec": rps, "mb_per_sec": mbps,
        });
        if let Some((p50, p99, p999, max)) = lat {
            v["latency_ms"] =
                serde_json::json!({"p50": p50, "p99": p99, "p99.9": p999, "max": max});
        }
        println!("{v}");
    } else {
        print!("{label}: {records} records in {secs:.2}s: {rps:.0} records/s, {mbps:.1} MB/s");
        if let Some((p50, p99, p999, max)) = lat {
            print!(", latency ms p50 {p50:.2} p99 {p99:.2} p99.9 {p999:.2} max {max:.2}");
        }
        println!();
    }
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    opts: BenchOpts,
    batch_size: usize,
    acks: AcksArg,
    concurrency: usize,
    pipeline: usize,
    partitions: u32,
    throughput: u64,
) -> Result<(), String> {
    let partitions = ensure_topic(&opts.conn, &opts.topic, partitions).await?;
    // Each producer talks to the leader of its partition (in a cluster, not the broker given).
    let leaders = crate::leaders::Leaders::load(&opts.conn.broker, &opts.topic).await?;
    let value = Bytes::from(
        (0..opts.record_size)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let progress = Arc::new(Progress::default());
    let reporter = spawn_reporter(progress.clone(), "produce");
    let per_producer = opts.records.div_ceil(concurrency as u64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let leader = leaders
            .leader(i as u32 % partitions)
            .map_or_else(|| opts.conn.broker.clone(), |(_, addr)| addr);
        let mut client = cli::producer(&leader).await?;
        let topic = opts.topic.clone();
        let value = value.clone();
        let value_len = value.len() as u64;
        let progress = progress.clone();
        let count = per_producer.min(opts.records.saturating_sub(per_producer * i as u64));
        let partition = i as u32 % partitions;
        let rate = throughput / concurrency as u64;
        let format = opts.record_format;
        tasks.push(tokio::spawn(async move {
            let requests = count.div_ceil(batch_size as u64);
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::ProduceRequest>(pipeline);
            let sent_at: Arc<std::sync::Mutex<std::collections::VecDeque<Instant>>> =
                Default::default();
            // At most `pipeline` requests between send and answer, as in the Kafka bench: the
            // channel alone bounds only the queue in front of tonic, and requests waiting in the
            // HTTP/2 send buffer behind it were counted as latency (p99 of hundreds of ms).
            let slots = Arc::new(tokio::sync::Semaphore::new(pipeline.max(1)));
            let sender = {
                let (sent_at, slots) = (sent_at.clone(), slots.clone());
                tokio::spawn(async move {
                    let begin = Instant::now();
                    let mut sent_records = 0u64;
                    let mut full_batch: Option<Bytes> = None;
                    for n in 0..requests {
                        let records_here = (count - n * batch_size as u64).min(batch_size as u64);
                        if rate > 0 {
                            let due =
                                begin + Duration::from_secs_f64(sent_records as f64 / rate as f64);
                            tokio::time::sleep_until(due.into()).await;
                        }
                        let mut req = pb::ProduceRequest {
                            topic: topic.clone(),
                            acks: acks.to_proto() as i32,
                            correlation_id: n,
                            ..Default::default()
                        };
                        if format == RecordFormat::Batches {
                            // As a Kafka client: the batch is built here, the broker appends it.
                            // Built once and sent again, as the Kafka bench does, so both
                            // measure the broker rather than the client's batch building.
                            req.record_batches = if records_here == batch_size as u64 {
                                full_batch
                                    .get_or_insert_with(|| build_batch(&value, records_here))
                                    .clone()
                            } else {
                                build_batch(&value, records_here)
                            };
                            req.batch_partition = partition;
                        } else {
                            req.records = (0..records_here)
                                .map(|_| pb::Record {
                                    partition: Some(partition),
                                    key: None,
                                    value: Some(value.clone()),
                                    headers: Vec::new(),
                                    timestamp_ms: None,
                                })
                                .collect();
                        }
                        match slots.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => return,
                        }
                        if let Ok(mut q) = sent_at.lock() {
                            q.push_back(Instant::now());
                        }
                        if tx.send(req).await.is_err() {
                            return;
                        }
                        sent_records += records_here;
                    }
                })
            };
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let mut responses = client
                .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(cli::status_message)?
                .into_inner();
            let mut acked = 0u64;
            while let Some(resp) = responses.next().await {
                let resp = resp.map_err(cli::status_message)?;
                if let Some(e) = resp.error {
                    return Err(format!("produce failed: {} (code {})", e.message, e.code));
                }
                let sent = sent_at.lock().ok().and_then(|mut q| q.pop_front());
                if let Some(t) = sent {
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                }
                slots.add_permits(1);
                let n = (count - acked).min(batch_size as u64);
                acked += n;
                progress.records.fetch_add(n, Ordering::Relaxed);
                progress.bytes.fetch_add(n * value_len, Ordering::Relaxed);
                if acked >= count {
                    break;
                }
            }
            let _ = sender.await;
            Ok::<_, String>(hist)
        }));
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for t in tasks {
        let h = t.await.map_err(|e| e.to_string())??;
        hist.add(&h).map_err(|e| e.to_string())?;
    }
    let elapsed = start.elapsed();
    reporter.abort();
    let records = progress.records.load(Ordering::Relaxed);
    report(
        "produce",
        records,
        progress.bytes.load(Ordering::Relaxed),
        elapsed,
        Some(&hist),
        opts.conn.output,
    );
    Ok(())
}

/// One RecordBatch v2 of `count` records of `value`, timestamped now.
pub(crate) fn build_batch(value: &Bytes, count: u64) -> Bytes {
    let mut b = sluice_log::BatchBuilder::new(sluice_log::Compression::None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for _ in 0..count {
        b.push(&sluice_log::Record {
            timestamp: now,
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
        });
    }
    b.build().unwrap_or_default().freeze()
}

async fn consume(opts: BenchOpts) -> Result<(), String> {
    let mut admin = cli::admin(&opts.conn.broker).await?;
    let d = admin
        .describe_topic(pb::DescribeTopicRequest {
            name: opts.topic.clone(),
        })
        .await
        .map_err(cli::status_message)?
        .into_inner()
        .topic
        .ok_or("no topic description")?;
    let progress = Arc::new(Progress::default());
    let reporter = spawn_reporter(progress.clone(), "consume");
    let target = opts.records;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in &d.partitions {
        let mut client = cli::consumer(&opts.conn.broker).await?;
        let topic = opts.topic.clone();
        let progress = progress.clone();
        let (partition, from) = (p.partition, p.log_start_offset);
        let format = opts.record_format;
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .subscribe(pb::SubscribeRequest {
                    topic,
                    partition,
                    offset: from,
                    max_bytes: 4 << 20,
                    format: match format {
                        RecordFormat::Records => pb::RecordFormat::Records,
                        RecordFormat::Batches => pb::RecordFormat::Batches,
                    } as i32,
                    ..Default::default()
                })
                .await
                .map_err(cli::status_message)?
                .into_inner();
            let mut idle = Duration::ZERO;
            while progress.records.load(Ordering::Relaxed) < target {
                // Short waits, so a drained partition notices promptly when the others finish.
                let step = Duration::from_millis(50);
                let resp = match tokio::time::timeout(step, stream.next()).await {
                    Ok(Some(r)) => r.map_err(cli::status_message)?,
                    Ok(None) => break,
                    Err(_) if idle < Duration::from_secs(2) => {
                        idle += step;
                        continue;
                    }
                    // Nothing new for 2 s: the topic is drained.
                    Err(_) => break,
                };
                idle = Duration::ZERO;
                let (records, bytes) = if resp.record_batches.is_empty() {
                    let bytes: u64 = resp
                        .records
                        .iter()
                        .map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64)
                        .sum();
                    (resp.records.len() as u64, bytes)
                } else {
                    // As the Kafka bench counts: records from the batch headers, batch bytes.
                    let mut n = 0u64;
                    for (_, h) in sluice_log::batch::BatchFrames::new(&resp.record_batches)
                        .map_while(Result::ok)
                    {
                        n += h.record_count.max(0) as u64;
                    }
                    (n, resp.record_batches.len() as u64)
                };
                progress.records.fetch_add(records, Ordering::Relaxed);
                progress.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let elapsed = start.elapsed();
    reporter.abort();
    let records = progress.records.load(Ordering::Relaxed);
    report(
        "consume",
        records,
        progress.bytes.load(Ordering::Relaxed),
        elapsed,
        None,
        opts.conn.output,
    );
    if records < target {
        eprintln!("note: the topic held only {records} of the {target} records requested");
    }
    Ok(())
}
