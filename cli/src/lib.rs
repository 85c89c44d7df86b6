//! Sluice's client commands: they talk gRPC (and, for `bench --protocol kafka`, the Kafka
//! protocol) to brokers, and know nothing of the server's internals. Results go to stdout
//! (tables, or JSON with `--output json`); progress and errors go to stderr; failures exit
//! non-zero.
//!
//! - this file: `topic`, `produce`, `consume`, `group`, `cluster`;
//! - [`leaders`]: where each partition's leader and each group's coordinator are;
//! - [`group_consume`]: `consume --group`, a consumer-group member;
//! - [`bench`] and `bench_kafka`: the load generator.

pub mod batches;
pub mod bench;
mod bench_kafka;

/// Resolves on SIGINT or SIGTERM (a long-running consume stops cleanly).
pub async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        r = tokio::signal::ctrl_c() => {
            if r.is_err() {
                std::future::pending::<()>().await
            }
        }
    }
}
pub mod group_consume;
pub mod leaders;
pub mod transactions;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use clap::{Args, Subcommand, ValueEnum};
use sluice_proto::v1 as pb;
use sluice_proto::v1::admin_client::AdminClient;
use sluice_proto::v1::consumer_client::ConsumerClient;
use sluice_proto::v1::producer_client::ProducerClient;
use tonic::transport::Channel;

use crate::leaders::Leaders;

/// Where the broker is.
#[derive(Args, Clone, Debug)]
pub struct ConnArgs {
    /// Broker gRPC address.
    #[arg(
        long,
        env = "SLUICE_BROKER",
        default_value = "127.0.0.1:9093",
        global = true
    )]
    pub broker: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    pub command: TopicCommand,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions, at least 1 [default: the broker's num_partitions].
        #[arg(long, allow_negative_numbers = true,
              value_parser = clap::value_parser!(i64).range(1..=i64::from(u32::MAX)))]
        partitions: Option<i64>,
        /// Replicas per partition, at least 1 [default: the broker's default_replication_factor].
        #[arg(long, allow_negative_numbers = true,
              value_parser = clap::value_parser!(i64).range(1..=i64::from(u32::MAX)))]
        replication_factor: Option<i64>,
        /// Topic config override, Kafka name: --config retention.ms=3600000 (repeatable).
        #[arg(long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List,
    /// Show partitions, offsets and effective configs of a topic.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Change topic configs: --config k=v sets, --delete-config k resets to the broker default.
    Alter {
        name: String,
        #[arg(long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        #[arg(long = "delete-config")]
        delete: Vec<String>,
    },
    /// Move partitions to other brokers: new replicas copy the data and join the ISR, then the
    /// old ones are removed and their data deleted (Kafka's kafka-reassign-partitions).
    Reassign {
        name: String,
        /// The partition to move (repeatable) [default: every partition of the topic].
        #[arg(long = "partition")]
        partitions: Vec<u32>,
        /// Target broker ids, preferred leader first: --replicas 2,3,4.
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the reassignment in progress instead (back to the original replicas).
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
        /// Bound the copy traffic to the new replicas, bytes/s, cluster-wide
        /// (`leader.replication.throttled.rate`); removed again by --wait once done.
        #[arg(long)]
        throttle: Option<u64>,
        /// Wait until the move is complete (then remove the throttle).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// List reassignments in progress (of one topic, or all).
    Reassignments { name: Option<String> },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcksArg {
    #[value(name = "0")]
    Zero,
    #[value(name = "1")]
    One,
    #[value(name = "all", alias = "-1")]
    All,
}

impl AcksArg {
    pub fn to_proto(self) -> pb::Acks {
        match self {
            AcksArg::Zero => pb::Acks::None,
            AcksArg::One => pb::Acks::Leader,
            AcksArg::All => pb::Acks::All,
        }
    }
}

#[derive(Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Send every record to this partition (default: by key, or sticky for records without one).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Split each line at the first SEP into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Header added to every record: --header k=v (repeatable).
    #[arg(long = "header", value_parser = parse_kv)]
    pub headers: Vec<(String, String)>,
    /// all: every in-sync replica has the records before they are acknowledged (Kafka's
    /// default since 3.0); 1: the leader has them; 0: do not wait.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// How long the leader may wait for the in-sync replicas (acks=all) before answering
    /// REQUEST_TIMED_OUT (Kafka's request.timeout.ms).
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u32,
    /// Idempotent produce (Kafka's enable.idempotence): take a producer id and number each
    /// partition's requests, so a request retried after a lost response, a timeout or a leader
    /// failover is written once. Without it only refusals that certainly wrote nothing are
    /// retried.
    #[arg(long)]
    pub idempotent: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    #[value(name = "read_uncommitted")]
    ReadUncommitted,
    #[value(name = "read_committed")]
    ReadCommitted,
}

impl IsolationArg {
    pub fn to_proto(self) -> pb::IsolationLevel {
        match self {
            IsolationArg::ReadUncommitted => pb::IsolationLevel::ReadUncommitted,
            IsolationArg::ReadCommitted => pb::IsolationLevel::ReadCommitted,
        }
    }
}

#[derive(Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Start at the earliest offset (default: the end, i.e. only new records).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Start at this offset.
    #[arg(long)]
    pub offset: Option<u64>,
    /// Exit after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Keep waiting for new records instead of exiting at the end of the log.
    #[arg(long)]
    pub follow: bool,
    /// kcat-style format: %s value, %k key, %p partition, %o offset, %T timestamp, %h headers,
    /// %t topic, \n, \t. A newline follows each record.
    #[arg(long, default_value = "%s")]
    pub format: String,
    /// read_committed: only records of committed transactions (and non-transactional ones),
    /// up to the last stable offset, as Kafka's isolation.level.
    #[arg(
        long,
        value_enum,
        default_value = "read_uncommitted",
        conflicts_with = "group"
    )]
    pub isolation_level: IsolationArg,
    /// Consume as a member of this consumer group: the broker assigns partitions, reading starts
    /// at the group's committed offsets (else --from-beginning or the end), and offsets are
    /// committed once records are printed. Runs until --max-messages, SIGINT or SIGTERM.
    #[arg(long, conflicts_with_all = ["partition", "offset", "follow"])]
    pub group: Option<String>,
    /// With --group: the session timeout; the group reassigns our partitions this long after we
    /// stop heartbeating.
    #[arg(long, default_value_t = 45_000, requires = "group",
          value_parser = clap::value_parser!(u32).range(1_000..=1_800_000))]
    pub session_timeout_ms: u32,
    /// With --group: commit printed offsets at most this often (and always on rebalance and exit).
    #[arg(long, default_value_t = 1_000, requires = "group",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub commit_interval_ms: u64,
    /// With --group: static membership (Kafka's group.instance.id).
    #[arg(long, requires = "group")]
    pub group_instance_id: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub enum Client {
    Topic(TopicArgs),
    Produce(ProduceArgs),
    Consume(ConsumeArgs),
    Bench(crate::bench::BenchArgs),
    Group(GroupArgs),
    Transactions(crate::transactions::TransactionsArgs),
    Cluster(ClusterArgs),
}

pub fn run(client: Client) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        match client {
            Client::Topic(a) => topic(a).await,
            Client::Produce(a) => produce(a).await,
            Client::Consume(a) => consume(a).await,
            Client::Bench(a) => crate::bench::run(a).await,
            Client::Group(a) => group(a).await,
            Client::Transactions(a) => crate::transactions::run(a).await,
            Client::Cluster(a) => cluster(a).await,
        }
    })
}

/// Largest message the client accepts (fetch responses).
const CLIENT_MAX_MESSAGE: usize = 256 << 20;

/// HTTP/2 flow-control windows of the client's connections: how much a broker may send ahead
/// on one stream and on the whole connection.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_FRAME: u32 = 1 << 20;

pub async fn channel(broker: &str) -> Result<Channel, String> {
    let url = if broker.contains("://") {
        broker.to_string()
    } else {
        format!("http://{broker}")
    };
    Channel::from_shared(url.clone())
        .map_err(|e| format!("bad broker address {broker:?}: {e}"))?
        .tcp_nodelay(true)
        // HTTP/2's default 64 KiB windows let a fetch response of megabytes arrive one window
        // (and one WINDOW_UPDATE round trip) at a time; these bound what may be in flight.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        // HTTP/2's default 16 KiB frames cut a fetch of megabytes into hundreds of frames, each
        // its own write on the broker; larger ones cost nothing extra to receive.
        .max_frame_size(MAX_FRAME)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to broker at {broker}: {e}"))
}

pub fn status_message(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

pub async fn admin(broker: &str) -> Result<AdminClient<Channel>, String> {
    Ok(AdminClient::new(channel(broker).await?).max_decoding_message_size(CLIENT_MAX_MESSAGE))
}
pub async fn producer(broker: &str) -> Result<ProducerClient<Channel>, String> {
    Ok(ProducerClient::new(channel(broker).await?)
        .max_decoding_message_size(CLIENT_MAX_MESSAGE)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE))
}
pub async fn consumer(broker: &str) -> Result<ConsumerClient<Channel>, String> {
    Ok(ConsumerClient::new(channel(broker).await?).max_decoding_message_size(CLIENT_MAX_MESSAGE))
}

// ---- topic ------------------------------------------------------------------------------------

fn print_description(d: &pb::TopicDescription, output: Output) {
    if output == Output::Json {
        let v = serde_json::json!({
            "name": d.name,
            "replication_factor": d.replication_factor,
            "configs": d.configs,
            "partitions": d.partitions.iter().map(|p| serde_json::json!({
                "partition": p.partition, "leader": p.leader, "replicas": p.replicas, "isr": p.isr,
                "log_start_offset": p.log_start_offset, "log_end_offset": p.log_end_offset,
                "high_watermark": p.high_watermark, "size_bytes": p.size_bytes,
                "adding": p.adding, "removing": p.removing, "leader_epoch": p.leader_epoch,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return;
    }
    println!(
        "Topic: {}  Partitions: {}  ReplicationFactor: {}",
        d.name,
        d.partitions.len(),
        d.replication_factor
    );
    let rows: Vec<Vec<String>> = d
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.leader.to_string(),
                if p.adding.is_empty() && p.removing.is_empty() {
                    format!("{:?}", p.replicas)
                } else {
                    format!(
                        "{:?} (adding {:?}, removing {:?})",
                        p.replicas, p.adding, p.removing
                    )
                },
                format!("{:?}", p.isr),
                p.log_start_offset.to_string(),
                p.log_end_offset.to_string(),
                p.high_watermark.to_string(),
                p.size_bytes.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "START",
            "END",
            "HW",
            "BYTES",
        ],
        &rows,
    );
    let configs: BTreeMap<_, _> = d.configs.iter().collect();
    println!("Configs:");
    for (k, v) in configs {
        println!("  {k}={v}");
    }
}

pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

async fn topic(args: TopicArgs) -> Result<(), String> {
    let mut c = admin(&args.conn.broker).await?;
    let output = args.conn.output;
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let r = c
                .create_topic(pb::CreateTopicRequest {
                    name,
                    // 0 asks for the broker's default.
                    partitions: partitions.map_or(0, |p| p as u32),
                    replication_factor: replication_factor.map_or(0, |r| r as u32),
                    configs: configs.into_iter().collect(),
                })
                .await
                .map_err(status_message)?
                .into_inner();
            if let Some(d) = r.topic {
                if output == Output::Json {
                    print_description(&d, output);
                } else {
                    println!(
                        "Created topic {} with {} partition(s).",
                        d.name,
                        d.partitions.len()
                    );
                }
            }
        }
        TopicCommand::List => {
            let r = c
                .list_topics(pb::ListTopicsRequest {})
                .await
                .map_err(status_message)?
                .into_inner();
            if output == Output::Json {
                let v: Vec<_> = r
                    .topics
                    .iter()
                    .map(|t| serde_json::json!({"name": t.name, "partitions": t.partitions, "replication_factor": t.replication_factor}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = r
                    .topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.partitions.to_string(),
                            t.replication_factor.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["TOPIC", "PARTITIONS", "REPLICATION"], &rows);
            }
        }
        TopicCommand::Describe { name } => {
            let r = c
                .describe_topic(pb::DescribeTopicRequest { name })
                .await
                .map_err(status_message)?
                .into_inner();
            if let Some(d) = r.topic {
                print_description(&d, output);
            }
        }
        TopicCommand::Delete { name } => {
            c.delete_topic(pb::DeleteTopicRequest { name: name.clone() })
                .await
                .map_err(status_message)?;
            if output == Output::Json {
                println!("{}", serde_json::json!({"deleted": name}));
            } else {
                println!("Deleted topic {name}.");
            }
        }
        TopicCommand::Reassign {
            name,
            partitions,
            replicas,
            cancel,
            throttle,
            wait,
            timeout_secs,
        } => {
            reassign(
                &mut c,
                Reassign {
                    topic: name,
                    partitions,
                    replicas,
                    cancel,
                    throttle,
                    wait,
                    timeout: std::time::Duration::from_secs(timeout_secs),
                },
                output,
            )
            .await?;
        }
        TopicCommand::Reassignments { name } => {
            let r = c
                .list_partition_reassignments(pb::ListPartitionReassignmentsRequest {
                    topics: name.into_iter().collect(),
                })
                .await
                .map_err(status_message)?
                .into_inner();
            print_reassignments(&r.reassignments, output);
        }
        TopicCommand::Alter {
            name,
            configs,
            delete,
        } => {
            if configs.is_empty() && delete.is_empty() {
                return Err("nothing to alter: give --config k=v or --delete-config k".into());
            }
            let r = c
                .alter_topic_config(pb::AlterTopicConfigRequest {
                    name,
                    set: configs.into_iter().collect(),
                    delete,
                })
                .await
                .map_err(status_message)?
                .into_inner();
            if let Some(d) = r.topic {
                print_description(&d, output);
            }
        }
    }
    Ok(())
}

// ---- reassign ---------------------------------------------------------------------------------

struct Reassign {
    topic: String,
    partitions: Vec<u32>,
    replicas: Vec<i32>,
    cancel: bool,
    throttle: Option<u64>,
    wait: bool,
    timeout: std::time::Duration,
}

async fn reassign(c: &mut AdminClient<Channel>, r: Reassign, output: Output) -> Result<(), String> {
    let partitions = if r.partitions.is_empty() {
        let d = c
            .describe_topic(pb::DescribeTopicRequest {
                name: r.topic.clone(),
            })
            .await
            .map_err(status_message)?
            .into_inner();
        d.topic
            .map(|t| t.partitions.iter().map(|p| p.partition).collect())
            .unwrap_or_default()
    } else {
        r.partitions.clone()
    };
    let resp = c
        .alter_partition_reassignments(pb::AlterPartitionReassignmentsRequest {
            reassignments: partitions
                .iter()
                .map(|p| pb::PartitionReassignment {
                    topic: r.topic.clone(),
                    partition: *p,
                    replicas: r.replicas.clone(),
                    cancel: r.cancel,
                })
                .collect(),
            throttle_bytes_per_sec: r.throttle,
        })
        .await
        .map_err(status_message)?
        .into_inner();
    let failed: Vec<String> = resp
        .results
        .iter()
        .filter(|x| x.code != 0)
        .map(|x| format!("{}-{}: {}", x.topic, x.partition, x.message))
        .collect();
    if output == Output::Json && !r.wait {
        let v: Vec<_> = resp
            .results
            .iter()
            .map(|x| serde_json::json!({"topic": x.topic, "partition": x.partition, "code": x.code, "message": x.message}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else if output == Output::Table {
        for x in resp.results.iter().filter(|x| x.code == 0) {
            println!(
                "{} {}-{}.",
                if r.cancel {
                    "Cancelled the move of"
                } else {
                    "Moving"
                },
                x.topic,
                x.partition
            );
        }
    }
    if !failed.is_empty() {
        return Err(failed.join("\n"));
    }
    if !r.wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + r.timeout;
    loop {
        let ongoing = c
            .list_partition_reassignments(pb::ListPartitionReassignmentsRequest {
                topics: vec![r.topic.clone()],
            })
            .await
            .map_err(status_message)?
            .into_inner()
            .reassignments;
        let moving: Vec<_> = ongoing
            .into_iter()
            .filter(|o| partitions.contains(&o.partition))
            .collect();
        if moving.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            print_reassignments(&moving, output);
            return Err(format!(
                "still moving after {} s (the throttle stays in force)",
                r.timeout.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if r.throttle.is_some() {
        // Done: the throttle goes, as kafka-reassign-partitions --verify removes it.
        c.alter_partition_reassignments(pb::AlterPartitionReassignmentsRequest {
            reassignments: Vec::new(),
            throttle_bytes_per_sec: Some(0),
        })
        .await
        .map_err(status_message)?;
    }
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"topic": r.topic, "partitions": partitions, "complete": true})
        );
    } else {
        println!("Reassignment of {} complete.", r.topic);
    }
    Ok(())
}

fn print_reassignments(list: &[pb::OngoingReassignment], output: Output) {
    if output == Output::Json {
        let v: Vec<_> = list
            .iter()
            .map(|o| serde_json::json!({"topic": o.topic, "partition": o.partition, "replicas": o.replicas, "adding": o.adding, "removing": o.removing}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|o| {
            vec![
                o.topic.clone(),
                o.partition.to_string(),
                format!("{:?}", o.replicas),
                format!("{:?}", o.adding),
                format!("{:?}", o.removing),
            ]
        })
        .collect();
    print_table(
        &["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"],
        &rows,
    );
}

// ---- produce ----------------------------------------------------------------------------------

const PRODUCE_BATCH_RECORDS: usize = 1000;
const PRODUCE_BATCH_BYTES: usize = 1 << 20;

async fn produce(args: ProduceArgs) -> Result<(), String> {
    let mut leaders = Leaders::load(&args.conn.broker, &args.topic).await?;
    if let Some(p) = args.partition {
        if p >= leaders.partition_count() {
            return Err(format!(
                "NotFound: topic {:?} has no partition {p} (it has {})",
                args.topic,
                leaders.partition_count()
            ));
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<String, String>>(1024);
    // stdin is blocking: read it on its own thread.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let item = line.map_err(|e| format!("reading stdin: {e}"));
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    let headers: Vec<pb::Header> = args
        .headers
        .iter()
        .map(|(k, v)| pb::Header {
            key: k.clone(),
            value: Some(v.clone().into()),
        })
        .collect();
    let mut idempotent = if args.idempotent {
        Some(IdempotentProducer::init(&args.conn.broker).await?)
    } else {
        None
    };
    // An idempotent request's records go to each partition as one batch, which must fit the
    // topic's max.message.bytes (1 MiB by default) with its record overhead.
    let batch_bytes = if args.idempotent {
        PRODUCE_BATCH_BYTES / 2
    } else {
        PRODUCE_BATCH_BYTES
    };
    let mut pending: Vec<pb::Record> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut sent = 0u64;
    loop {
        let line = rx.recv().await;
        let done = line.is_none();
        if let Some(line) = line {
            let line = line?;
            let (key, value) = match &args.key_separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(k.to_string()), v.to_string()),
                    None => (None, line),
                },
                None => (None, line),
            };
            pending_bytes += value.len() + key.as_ref().map_or(0, |k| k.len());
            pending.push(pb::Record {
                partition: args.partition,
                key: key.map(Into::into),
                value: Some(value.into()),
                headers: headers.clone(),
                timestamp_ms: None,
            });
        }
        // Send when a batch is full, or when input pauses (interactive use) or ends.
        let flush = pending.len() >= PRODUCE_BATCH_RECORDS
            || pending_bytes >= batch_bytes
            || (!pending.is_empty() && (done || rx.is_empty()));
        if flush {
            let records = std::mem::take(&mut pending);
            pending_bytes = 0;
            let n = records.len() as u64;
            send_to_leaders(&mut leaders, &args, idempotent.as_mut(), records)
                .await
                .map_err(|e| format!("produce failed after {sent} record(s): {e}"))?;
            sent += n;
        }
        if done {
            return Ok(());
        }
    }
}

/// An idempotent producer's id and epoch, and the next sequence number of each partition.
struct IdempotentProducer {
    producer_id: i64,
    epoch: i32,
    next: BTreeMap<u32, i32>,
}

impl IdempotentProducer {
    async fn init(bootstrap: &str) -> Result<IdempotentProducer, String> {
        let r = producer(bootstrap)
            .await?
            .init_producer_id(pb::InitProducerIdRequest {})
            .await
            .map_err(status_message)?
            .into_inner();
        Ok(IdempotentProducer {
            producer_id: r.producer_id,
            epoch: r.producer_epoch,
            next: BTreeMap::new(),
        })
    }

    fn fields(&self, partition: u32) -> pb::IdempotentProduce {
        pb::IdempotentProduce {
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            sequences: vec![pb::PartitionSequence {
                partition,
                first_sequence: self.next.get(&partition).copied().unwrap_or(0),
            }],
        }
    }

    /// `n` records written to `partition`: its sequence moves on, wrapping past i32::MAX to 0
    /// as Kafka's does.
    fn written(&mut self, partition: u32, n: usize) {
        let seq = self.next.entry(partition).or_insert(0);
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        *seq = if *seq > i32::MAX - n {
            n - (i32::MAX - *seq) - 1
        } else {
            *seq + n
        };
    }
}

/// Whether a failed idempotent request may be sent again: it may or may not have been written
/// (the broker or the connection went away, it timed out waiting for replicas), and a retry of
/// a written one is answered with its offsets rather than written twice.
fn retriable_idempotent(s: &tonic::Status) -> bool {
    use tonic::Code;
    crate::leaders::is_leadership_change(s)
        || matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        )
}

/// Partitions `records` as the broker would (explicit partition, key hash, or one sticky
/// partition for the unkeyed ones of this batch), then sends each partition's records to its
/// leader; a partition whose leader moved is retried at the new one (an idempotent producer's
/// request also after any failure that may have written it).
async fn send_to_leaders(
    leaders: &mut Leaders,
    args: &ProduceArgs,
    mut idempotent: Option<&mut IdempotentProducer>,
    records: Vec<pb::Record>,
) -> Result<(), String> {
    let count = leaders.partition_count();
    let mut sticky = None;
    let mut by_partition: BTreeMap<u32, Vec<pb::Record>> = BTreeMap::new();
    for mut r in records {
        let p = match (r.partition, &r.key) {
            (Some(p), _) => p,
            (None, Some(k)) => sluice_proto::routing::partition_for_key(k, count),
            (None, None) => {
                *sticky.get_or_insert_with(|| sluice_proto::routing::sticky_partition(count))
            }
        };
        r.partition = Some(p);
        by_partition.entry(p).or_default().push(r);
    }
    let deadline = tokio::time::Instant::now() + crate::leaders::LEADER_WAIT;
    for (p, records) in by_partition {
        let idempotence = idempotent.as_ref().map(|i| i.fields(p));
        loop {
            let outcome = match leaders.channel_to_leader(p).await {
                // No leader right now, or it cannot be reached: look again.
                Err(e) => Attempt::Retry(e),
                Ok(channel) => {
                    let mut client = ProducerClient::new(channel)
                        .max_decoding_message_size(CLIENT_MAX_MESSAGE)
                        .max_encoding_message_size(CLIENT_MAX_MESSAGE);
                    match client
                        .produce(pb::ProduceRequest {
                            topic: args.topic.clone(),
                            records: records.clone(),
                            acks: args.acks.to_proto() as i32,
                            timeout_ms: args.request_timeout_ms,
                            correlation_id: 0,
                            idempotence: idempotence.clone(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(_) => Attempt::Done,
                        Err(s) if crate::leaders::is_leadership_change(&s) => {
                            Attempt::Retry(status_message(s))
                        }
                        Err(s) if idempotence.is_some() && retriable_idempotent(&s) => {
                            Attempt::Retry(status_message(s))
                        }
                        Err(s) => Attempt::Fail(status_message(s)),
                    }
                }
            };
            match outcome {
                Attempt::Done => {
                    if let Some(i) = idempotent.as_deref_mut() {
                        i.written(p, records.len());
                    }
                    break;
                }
                Attempt::Retry(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    *leaders = Leaders::load(leaders.reload_source(), &args.topic).await?;
                }
                Attempt::Retry(e) | Attempt::Fail(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// One try at a partition's leader.
enum Attempt {
    Done,
    /// Not the leader any more, or no leader reachable: reload the map and try again.
    Retry(String),
    Fail(String),
}

// ---- consume ----------------------------------------------------------------------------------

fn render(format: &str, topic: &str, partition: u32, r: &pb::ConsumedRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(format.len() + r.value.as_ref().map_or(0, |v| v.len()));
    let mut chars = format.chars().peekable();
    let mut buf = [0u8; 4];
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('%', Some(t)) if "skpoTht%".contains(t) => {
                chars.next();
                match t {
                    's' => out.extend_from_slice(r.value.as_deref().unwrap_or(b"")),
                    'k' => out.extend_from_slice(r.key.as_deref().unwrap_or(b"")),
                    'p' => out.extend_from_slice(partition.to_string().as_bytes()),
                    'o' => out.extend_from_slice(r.offset.to_string().as_bytes()),
                    'T' => out.extend_from_slice(r.timestamp_ms.to_string().as_bytes()),
                    't' => out.extend_from_slice(topic.as_bytes()),
                    'h' => {
                        let hs: Vec<String> = r
                            .headers
                            .iter()
                            .map(|h| {
                                format!(
                                    "{}={}",
                                    h.key,
                                    h.value
                                        .as_deref()
                                        .map(String::from_utf8_lossy)
                                        .unwrap_or_default()
                                )
                            })
                            .collect();
                        out.extend_from_slice(hs.join(",").as_bytes());
                    }
                    _ => out.push(b'%'),
                }
            }
            ('\\', Some('n')) => {
                chars.next();
                out.push(b'\n');
            }
            ('\\', Some('t')) => {
                chars.next();
                out.push(b'\t');
            }
            _ => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
        }
    }
    out.push(b'\n');
    out
}

fn render_json(topic: &str, partition: u32, r: &pb::ConsumedRecord) -> Vec<u8> {
    let text = |b: &Option<bytes::Bytes>| {
        b.as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|h| (h.key.clone(), serde_json::json!(text(&h.value))))
        .collect();
    let mut line = serde_json::json!({
        "topic": topic, "partition": partition, "offset": r.offset, "timestamp": r.timestamp_ms,
        "key": text(&r.key), "value": text(&r.value), "headers": headers,
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

async fn consume(args: ConsumeArgs) -> Result<(), String> {
    if let Some(group) = args.group.clone() {
        return crate::group_consume::consume(args, group).await;
    }
    let leaders = Leaders::load(&args.conn.broker, &args.topic).await?;
    let d = leaders.topic.clone();
    let partitions: Vec<u32> = match args.partition {
        Some(p) if (p as usize) < d.partitions.len() => vec![p],
        Some(p) => {
            return Err(format!(
                "topic {} has no partition {p} (it has {})",
                d.name,
                d.partitions.len()
            ))
        }
        None => d.partitions.iter().map(|p| p.partition).collect(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(u32, pb::FetchResponse), String>>(16);
    for p in partitions {
        // The leader's offsets (a follower's copy of the description may lag behind).
        let (log_start, hw) = match leader_offsets(&leaders, &args.topic, p).await {
            Some(o) => o,
            None => {
                let desc = &d.partitions[p as usize];
                (desc.log_start_offset, desc.high_watermark)
            }
        };
        let start = match (args.offset, args.from_beginning) {
            (Some(o), _) => o,
            (None, true) => log_start,
            (None, false) => hw,
        };
        // Without --follow, stop at the end of the log as it is now.
        let end = hw;
        let tx = tx.clone();
        let topic = args.topic.clone();
        let follow = args.follow;
        let isolation_level = args.isolation_level.to_proto();
        let mut leaders = leaders.clone();
        tokio::spawn(async move {
            let mut offset = start;
            let mut client: Option<ConsumerClient<Channel>> = None;
            let mut lost_since: Option<tokio::time::Instant> = None;
            loop {
                if !follow && offset >= end {
                    return;
                }
                // Fetch from the partition's leader; when it moves, find the new one.
                let c = match &mut client {
                    Some(c) => c,
                    None => match leaders.channel_to_leader(p).await {
                        Ok(ch) => client.insert(
                            ConsumerClient::new(ch).max_decoding_message_size(CLIENT_MAX_MESSAGE),
                        ),
                        Err(e) => {
                            let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() > crate::leaders::LEADER_WAIT {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            if let Ok(l) = Leaders::load(leaders.reload_source(), &topic).await {
                                leaders = l;
                            }
                            continue;
                        }
                    },
                };
                let r = c
                    .fetch(pb::FetchRequest {
                        topic: topic.clone(),
                        partition: p,
                        offset,
                        max_bytes: 0,
                        max_wait_ms: if follow { 5_000 } else { 0 },
                        min_bytes: 1,
                        isolation_level: isolation_level as i32,
                        format: pb::RecordFormat::Batches as i32,
                    })
                    .await;
                match r {
                    Ok(resp) => {
                        let mut resp = resp.into_inner();
                        if let Err(e) = crate::batches::into_records(&mut resp, offset) {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        if resp.next_offset <= offset && !follow {
                            return;
                        }
                        offset = resp.next_offset.max(offset);
                        if tx.send(Ok((p, resp))).await.is_err() {
                            return;
                        }
                    }
                    Err(s) if crate::leaders::is_leadership_change(&s) => {
                        client = None;
                        lost_since.get_or_insert_with(tokio::time::Instant::now);
                        if let Ok(l) = Leaders::load(leaders.reload_source(), &topic).await {
                            leaders = l;
                        }
                        continue;
                    }
                    Err(s) => {
                        let _ = tx.send(Err(status_message(s))).await;
                        return;
                    }
                }
                lost_since = None;
            }
        });
    }
    drop(tx);
    let mut printed = 0u64;
    let max = args.max_messages.unwrap_or(u64::MAX);
    while let Some(item) = rx.recv().await {
        let (p, resp) = item?;
        match print_records(&args, p, &resp.records, max - printed)? {
            Some((n, _)) => printed += n,
            None => return Ok(()),
        }
        if printed >= max {
            break;
        }
    }
    Ok(())
}

/// Each voter's replicated index, as the Raft leader (broker `leader`) knows it.
async fn leader_progress(
    bootstrap: &str,
    leader: u64,
) -> Option<std::collections::HashMap<u64, Option<u64>>> {
    let cluster = admin(bootstrap)
        .await
        .ok()?
        .describe_cluster(pb::DescribeClusterRequest {})
        .await
        .ok()?
        .into_inner();
    let addr = cluster
        .brokers
        .iter()
        .find(|b| b.id as u64 == leader)?
        .grpc_address
        .clone();
    let q = admin(&addr)
        .await
        .ok()?
        .describe_quorum(pb::DescribeQuorumRequest {})
        .await
        .ok()?
        .into_inner();
    (q.node_id == leader).then(|| q.voters.iter().map(|v| (v.id, v.matched_index)).collect())
}

/// (log start, high watermark) of a partition, asked of its leader.
async fn leader_offsets(leaders: &Leaders, topic: &str, partition: u32) -> Option<(u64, u64)> {
    use crate::leaders::leader_offset;
    let start = leader_offset(leaders, topic, partition, pb::OffsetSpec::Earliest).await;
    let hw = leader_offset(leaders, topic, partition, pb::OffsetSpec::Latest).await;
    Some((start.ok()?, hw.ok()?))
}

/// Prints up to `limit` of a partition's records in the chosen format and flushes. Returns how
/// many were printed and the offset after the last one, or `None` when stdout was closed (`| head`),
/// which ends a consume quietly.
pub(crate) fn print_records(
    args: &ConsumeArgs,
    partition: u32,
    records: &[pb::ConsumedRecord],
    limit: u64,
) -> Result<Option<(u64, Option<u64>)>, String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut n = 0u64;
    let mut next = None;
    for r in records
        .iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
    {
        let line = match args.conn.output {
            Output::Json => render_json(&args.topic, partition, r),
            Output::Table => render(&args.format, &args.topic, partition, r),
        };
        match out.write_all(&line) {
            Ok(()) => {
                n += 1;
                next = Some(r.offset + 1);
            }
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(None),
            Err(e) => return Err(format!("writing stdout: {e}")),
        }
    }
    match out.flush() {
        Ok(()) => Ok(Some((n, next))),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(None),
        Err(e) => Err(format!("writing stdout: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kcat_style_format() {
        let r = pb::ConsumedRecord {
            offset: 7,
            timestamp_ms: 99,
            key: Some("k".into()),
            value: Some("v".into()),
            headers: vec![pb::Header {
                key: "a".into(),
                value: Some("b".into()),
            }],
        };
        assert_eq!(
            render("%t/%p@%o %k=%s %T [%h] 100%%", "t", 3, &r),
            b"t/3@7 k=v 99 [a=b] 100%\n"
        );
        assert_eq!(render("%s\\t%k", "t", 0, &r), b"v\tk\n");
    }

    #[test]
    fn datetimes_parse_as_utc_milliseconds() {
        assert_eq!(
            parse_datetime_ms("1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        // 2023-11-14T22:13:20Z is 1_700_000_000 s after the epoch.
        assert_eq!(
            parse_datetime_ms("2023-11-14T22:13:20").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_datetime_ms("2024-02-29T12:00:00").unwrap(),
            1_709_208_000_000
        );
        assert!(parse_datetime_ms("2024-13-01T00:00:00").is_err());
        assert!(parse_datetime_ms("yesterday").is_err());
    }

    #[test]
    fn key_value_flags_parse() {
        assert_eq!(parse_kv("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_kv("nokey").is_err());
        assert!(parse_kv("=v").is_err());
    }
}

// ---- group ------------------------------------------------------------------------------------

#[derive(Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    pub command: GroupCommand,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List,
    /// Show a group's state and members with their assigned partitions.
    Describe { group: String },
    /// Committed offset, log end offset and lag per partition, with totals.
    Lag {
        group: String,
        /// read_committed: measure to the last stable offset (what a read_committed consumer
        /// can reach; an open transaction's records are not counted), as Kafka's consumer
        /// reports lag under that isolation level.
        #[arg(long, value_enum, default_value = "read_uncommitted")]
        isolation_level: IsolationArg,
    },
    /// Move an inactive group's committed offsets for a topic (a dry run unless --execute).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, group = "to")]
        to_earliest: bool,
        #[arg(long, group = "to")]
        to_latest: bool,
        #[arg(long, group = "to")]
        to_offset: Option<u64>,
        /// Milliseconds since the epoch, or UTC `YYYY-MM-DDTHH:MM:SS`.
        #[arg(long, group = "to", value_parser = parse_datetime_ms)]
        to_datetime: Option<i64>,
        #[arg(long, group = "to", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Apply the new offsets (default: only show them).
        #[arg(long)]
        execute: bool,
    },
    /// Delete an inactive group and its committed offsets.
    Delete { group: String },
}

/// Milliseconds since the epoch, or a UTC `YYYY-MM-DDTHH:MM:SS[Z]` date-time.
fn parse_datetime_ms(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || format!("expected milliseconds or YYYY-MM-DDTHH:MM:SS, got {s:?}");
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (&[y, m, day], &[hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000)
}

pub async fn group(args: GroupArgs) -> Result<(), String> {
    use sluice_proto::v1::groups_client::GroupsClient;
    // A group's requests go to its coordinator; listing asks every broker.
    let target = match &args.command {
        GroupCommand::List => args.conn.broker.clone(),
        GroupCommand::Describe { group }
        | GroupCommand::Lag { group, .. }
        | GroupCommand::ResetOffsets { group, .. }
        | GroupCommand::Delete { group } => {
            crate::leaders::coordinator(&args.conn.broker, group).await
        }
    };
    let mut c = GroupsClient::new(channel(&target).await?);
    let json = args.conn.output == Output::Json;
    match args.command {
        GroupCommand::List => {
            let mut r = c
                .list_groups(pb::ListGroupsRequest {})
                .await
                .map_err(status_message)?
                .into_inner();
            // Each broker lists the groups it coordinates: ask the others too.
            for (id, address) in crate::leaders::other_brokers(&args.conn.broker).await? {
                let listed = async {
                    GroupsClient::new(channel(&address).await?)
                        .list_groups(pb::ListGroupsRequest {})
                        .await
                        .map_err(status_message)
                };
                match listed.await {
                    Ok(more) => r.groups.extend(more.into_inner().groups),
                    Err(e) => eprintln!("broker {id} did not answer: {e}"),
                }
            }
            r.groups.sort_by(|a, b| a.group.cmp(&b.group));
            if json {
                let v: Vec<_> = r.groups.iter().map(|g| serde_json::json!({"group": g.group, "state": g.state, "protocol_type": g.protocol_type, "members": g.members})).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = r
                    .groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.group.clone(),
                            g.state.clone(),
                            g.protocol_type.clone(),
                            g.members.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["GROUP", "STATE", "PROTOCOL-TYPE", "MEMBERS"], &rows);
            }
        }
        GroupCommand::Describe { group } => {
            let d = c
                .describe_group(pb::DescribeGroupRequest { group })
                .await
                .map_err(status_message)?
                .into_inner();
            let assignment = |m: &pb::GroupMember| {
                m.assignment
                    .iter()
                    .map(|tp| format!("{}-{}", tp.topic, tp.partition))
                    .collect::<Vec<_>>()
            };
            if json {
                let members: Vec<_> = d.members.iter().map(|m| serde_json::json!({"member_id": m.member_id, "group_instance_id": m.group_instance_id, "client_id": m.client_id, "client_host": m.client_host, "assignment": assignment(m)})).collect();
                println!(
                    "{}",
                    serde_json::json!({"group": d.group, "state": d.state, "protocol_type": d.protocol_type, "protocol": d.protocol, "members": members})
                );
            } else {
                println!(
                    "Group: {}  State: {}  Protocol: {} {}",
                    d.group, d.state, d.protocol_type, d.protocol
                );
                let rows: Vec<Vec<String>> = d
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.member_id.clone(),
                            m.client_id.clone(),
                            m.client_host.clone(),
                            assignment(m).join(","),
                        ]
                    })
                    .collect();
                print_table(&["MEMBER", "CLIENT-ID", "HOST", "ASSIGNMENT"], &rows);
            }
        }
        GroupCommand::Lag {
            group,
            isolation_level,
        } => {
            let mut l = c
                .group_lag(pb::GroupLagRequest { group })
                .await
                .map_err(status_message)?
                .into_inner();
            // The coordinator knows the log end only of partitions it holds: ask each leader.
            let mut total = 0;
            for p in &mut l.partitions {
                let end = match Leaders::load(&args.conn.broker, &p.topic).await {
                    Ok(l) => {
                        crate::leaders::leader_offset_at(
                            &l,
                            &p.topic,
                            p.partition,
                            pb::OffsetSpec::Latest,
                            isolation_level.to_proto(),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                if let Ok(end) = end {
                    p.log_end_offset = end;
                    p.lag = p.committed_offset.map(|c| end.saturating_sub(c));
                }
                total += p.lag.unwrap_or(0);
            }
            l.total_lag = total;
            let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
            for p in &l.partitions {
                *per_topic.entry(p.topic.clone()).or_default() += p.lag.unwrap_or(0);
            }
            if json {
                let parts: Vec<_> = l.partitions.iter().map(|p| serde_json::json!({"topic": p.topic, "partition": p.partition, "committed_offset": p.committed_offset, "log_end_offset": p.log_end_offset, "lag": p.lag, "owner": p.owner})).collect();
                println!(
                    "{}",
                    serde_json::json!({"group": l.group, "state": l.state, "isolation_level": isolation_level.to_proto().as_str_name(), "partitions": parts, "topic_lag": per_topic, "total_lag": l.total_lag})
                );
            } else {
                let dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                let rows: Vec<Vec<String>> = l
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            dash(p.committed_offset),
                            p.log_end_offset.to_string(),
                            dash(p.lag),
                            p.owner.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print_table(
                    &["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "OWNER"],
                    &rows,
                );
                for (t, lag) in &per_topic {
                    println!("Topic {t}: lag {lag}");
                }
                let uncommitted = l.partitions.iter().filter(|p| p.lag.is_none()).count();
                if uncommitted > 0 {
                    println!(
                        "Group {} ({}): total lag {} (and {uncommitted} partition(s) with no committed offset: lag unknown)",
                        l.group, l.state, l.total_lag
                    );
                } else {
                    println!("Group {} ({}): total lag {}", l.group, l.state, l.total_lag);
                }
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_datetime,
            shift_by,
            execute,
        } => {
            use sluice_proto::v1::reset_offsets_request::To;
            let to = if to_earliest {
                To::ToEarliest(true)
            } else if to_latest {
                To::ToLatest(true)
            } else if let Some(o) = to_offset {
                To::ToOffset(o)
            } else if let Some(t) = to_datetime {
                To::ToDatetimeMs(t)
            } else if let Some(n) = shift_by {
                To::ShiftBy(n)
            } else {
                return Err("say where to: --to-earliest, --to-latest, --to-offset N, --to-datetime T or --shift-by N".into());
            };
            let r = c
                .reset_offsets(pb::ResetOffsetsRequest {
                    group,
                    topic: topic.clone(),
                    to: Some(to),
                    execute,
                })
                .await
                .map_err(status_message)?
                .into_inner();
            if json {
                let v: Vec<_> = r.offsets.iter().map(|o| serde_json::json!({"topic": topic, "partition": o.partition, "offset": o.offset})).collect();
                println!("{}", serde_json::json!({"executed": execute, "offsets": v}));
            } else {
                let rows: Vec<Vec<String>> = r
                    .offsets
                    .iter()
                    .map(|o| vec![topic.clone(), o.partition.to_string(), o.offset.to_string()])
                    .collect();
                print_table(&["TOPIC", "PARTITION", "NEW-OFFSET"], &rows);
                if !execute {
                    eprintln!("Dry run: nothing changed. Add --execute to apply.");
                }
            }
        }
        GroupCommand::Delete { group } => {
            c.delete_group(pb::DeleteGroupRequest {
                group: group.clone(),
            })
            .await
            .map_err(status_message)?;
            if json {
                println!("{}", serde_json::json!({"deleted": group}));
            } else {
                println!("Deleted group {group}.");
            }
        }
    }
    Ok(())
}

// ---- cluster ----------------------------------------------------------------------------------

#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The metadata quorum as the broker sees it: voters, active controller, Raft term, and the
    /// metadata log's commit / applied / snapshot offsets.
    Status,
    /// The brokers: id, addresses, rack, alive or fenced, partitions led.
    Brokers,
}

pub async fn cluster(args: ClusterArgs) -> Result<(), String> {
    match args.command {
        ClusterCommand::Brokers => {
            let c = admin(&args.conn.broker)
                .await?
                .describe_cluster(pb::DescribeClusterRequest {})
                .await
                .map_err(status_message)?
                .into_inner();
            let state = |b: &pb::BrokerDescription| {
                if b.fenced {
                    "fenced"
                } else if b.in_controlled_shutdown {
                    "shutting-down"
                } else {
                    "alive"
                }
            };
            if args.conn.output == Output::Json {
                let v = serde_json::json!({
                    "controller_id": (c.controller_id != 0).then_some(c.controller_id),
                    "metadata_offset": c.metadata_offset,
                    "brokers": c.brokers.iter().map(|b| serde_json::json!({
                        "id": b.id,
                        "kafka_address": b.kafka_address,
                        "grpc_address": b.grpc_address,
                        "controller_address": b.controller_address,
                        "rack": b.rack,
                        "state": state(b),
                        "fenced": b.fenced,
                        "broker_epoch": b.broker_epoch,
                        "leaders": b.leaders,
                        "replicas": b.replicas,
                    })).collect::<Vec<_>>(),
                });
                println!("{v}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = c
                .brokers
                .iter()
                .map(|b| {
                    vec![
                        format!(
                            "{}{}",
                            b.id,
                            if b.id as u64 == c.controller_id {
                                "*"
                            } else {
                                ""
                            }
                        ),
                        b.kafka_address.clone(),
                        b.grpc_address.clone(),
                        b.rack.clone().unwrap_or_else(|| "-".into()),
                        state(b).to_string(),
                        b.leaders.to_string(),
                        b.replicas.to_string(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "KAFKA", "GRPC", "RACK", "STATE", "LEADS", "REPLICAS"],
                &rows,
            );
            println!("* active controller");
            Ok(())
        }
        ClusterCommand::Status => {
            let mut q = admin(&args.conn.broker)
                .await?
                .describe_quorum(pb::DescribeQuorumRequest {})
                .await
                .map_err(status_message)?
                .into_inner();
            // Only the leader knows how far each voter is: ask it for that part.
            if q.leader_id != 0 && q.leader_id != q.node_id {
                if let Some(progress) = leader_progress(&args.conn.broker, q.leader_id).await {
                    for v in &mut q.voters {
                        v.matched_index = progress.get(&v.id).copied().flatten();
                    }
                }
            }
            if args.conn.output == Output::Json {
                let v = serde_json::json!({
                    "node_id": q.node_id,
                    "leader_id": (q.leader_id != 0).then_some(q.leader_id),
                    "term": q.term,
                    "commit_index": q.commit_index,
                    "applied_index": q.applied_index,
                    "snapshot_index": q.snapshot_index,
                    "voters": q.voters.iter().map(|v| serde_json::json!({
                        "id": v.id, "address": v.address, "matched_index": v.matched_index,
                        "lag": v.matched_index.map(|m| q.commit_index.saturating_sub(m)),
                    })).collect::<Vec<_>>(),
                });
                println!("{v}");
                return Ok(());
            }
            let leader = match q.leader_id {
                0 => "none (election in progress)".to_string(),
                l => l.to_string(),
            };
            println!("Answered by: node {}", q.node_id);
            println!("Controller (Raft leader): {leader}");
            println!("Term: {}", q.term);
            println!(
                "Metadata log: commit {}  applied {}  snapshot {}  (lag {})",
                q.commit_index,
                q.applied_index,
                q.snapshot_index,
                q.commit_index.saturating_sub(q.applied_index)
            );
            let rows: Vec<Vec<String>> = q
                .voters
                .iter()
                .map(|v| {
                    let role = if v.id == q.leader_id {
                        "leader"
                    } else {
                        "follower"
                    };
                    let dash = |x: Option<u64>| x.map_or("-".to_string(), |x| x.to_string());
                    vec![
                        v.id.to_string(),
                        v.address.clone(),
                        role.to_string(),
                        dash(v.matched_index),
                        dash(v.matched_index.map(|m| q.commit_index.saturating_sub(m))),
                    ]
                })
                .collect();
            print_table(&["VOTER", "ADDRESS", "ROLE", "MATCHED", "LAG"], &rows);
            Ok(())
        }
    }
}
