//! `sluice`: the broker (`sluice serve`) and its command-line client in one binary.
//!
//! - [`server`]: `serve` — start-up, listeners, background duties, clean shutdown.
//! - [`grpc`]: the `sluice.v1` gRPC services; [`kafka`]: the Kafka wire protocol;
//!   [`http`]: health, metrics, topics JSON.
//! - [`topics`]: the topic registry over the replication layer's partitions.
//! - [`cluster`]: this broker as a cluster member (controller client, lifecycle, node core);
//!   [`requests`]: the admin request layer both front-ends call.
//! - The client commands live in the `sluice-cli` crate (a client of the gRPC API and the
//!   Kafka protocol); this binary only dispatches to them.

/// jemalloc keeps freed pages for reuse instead of handing them back to the kernel at once, as
/// glibc's malloc does with a fetch's multi-MiB buffers: with glibc every such buffer came back
/// as fresh pages, and page faults and the kernel's page clearing were a third of a gRPC
/// consumer's CPU time. (TiKV uses the same allocator for the same reason.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it initialises (jemalloc declares `const char
/// *malloc_conf`; a reference to a byte array is that pointer). `oversize_threshold:0`: by default
/// jemalloc gives allocations over 8 MiB to an arena that returns their pages to the kernel at
/// once — exactly the 32 MiB Kafka fetch buffers, which then cost as much as with glibc (Kafka
/// consume 1.0 GB/s instead of 2.5 GB/s). `_RJEM_MALLOC_CONF` in the environment still overrides.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 21] = b"oversize_threshold:0\0";

mod cluster;
mod config;
mod connections;
mod fd_limit;
mod groups;
mod grpc;
mod http;
mod kafka;
mod memory_pool;
mod metrics;
mod quorum;
mod replica_fetch;
mod requests;
mod server;
mod topics;
mod transactions;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sluice_cli as cli;
use sluice_cli::bench;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a Kafka-style partitioned commit-log broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker. With no arguments: data in ./data, gRPC on 127.0.0.1:9093.
    Serve(ServeArgs),
    /// Create, list, describe, alter and delete topics.
    Topic(cli::TopicArgs),
    /// Produce one record per line of standard input.
    Produce(cli::ProduceArgs),
    /// Print records of a topic.
    Consume(cli::ConsumeArgs),
    /// Load generator: produce or consume at full speed and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Consumer groups: list, describe, lag, reset-offsets, delete.
    Group(cli::GroupArgs),
    /// Kafka transactions: list transactional ids, describe one, describe a partition's
    /// producers.
    Transactions(cli::transactions::TransactionsArgs),
    /// The cluster: the metadata quorum's status.
    Cluster(cli::ClusterArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:9093].
    #[arg(long)]
    grpc_addr: Option<std::net::SocketAddr>,
    /// Kafka protocol listen address [default: 127.0.0.1:9092].
    #[arg(long)]
    kafka_addr: Option<std::net::SocketAddr>,
    /// Address Kafka clients are told to connect to [default: the Kafka listen address].
    #[arg(long)]
    advertised_kafka_addr: Option<String>,
    /// HTTP (health, metrics) listen address [default: 127.0.0.1:9644].
    #[arg(long)]
    http_addr: Option<std::net::SocketAddr>,
    /// This broker's id [default: 1].
    #[arg(long)]
    node_id: Option<i32>,
    /// Broker-to-broker (metadata quorum) listen address [default: 127.0.0.1:9094].
    #[arg(long)]
    controller_addr: Option<std::net::SocketAddr>,
    /// The metadata quorum: `1@host:port,2@host:port,3@host:port` [default: this broker alone].
    #[arg(long)]
    controller_quorum_voters: Option<String>,
    /// Address other brokers and tools are told for the gRPC API [default: the gRPC listen address].
    #[arg(long)]
    advertised_grpc_addr: Option<String>,
    /// This broker's rack (replicas are spread over racks).
    #[arg(long)]
    broker_rack: Option<String>,
    /// Heartbeat interval to the active controller, ms [default: 2000].
    #[arg(long)]
    broker_heartbeat_interval_ms: Option<u64>,
    /// A broker silent this long is fenced, ms [default: 9000].
    #[arg(long)]
    broker_session_timeout_ms: Option<u64>,
    /// How often leadership is moved back to preferred leaders, ms [default: 300000].
    #[arg(long)]
    leader_imbalance_check_interval_ms: Option<u64>,
    /// A follower not caught up for this long leaves the ISR, ms [default: 30000].
    #[arg(long)]
    replica_lag_time_max_ms: Option<u64>,
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => config::BrokerConfig::load(path).map_err(|e| e.to_string())?,
        None => config::BrokerConfig::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(a) = args.grpc_addr {
        config.grpc_addr = a;
    }
    if let Some(a) = args.kafka_addr {
        config.kafka_addr = a;
    }
    if let Some(a) = args.advertised_kafka_addr {
        config.advertised_kafka_addr = Some(a);
    }
    if let Some(a) = args.http_addr {
        config.http_addr = a;
    }
    if let Some(n) = args.node_id {
        config.node_id = n;
    }
    if let Some(a) = args.controller_addr {
        config.controller_addr = a;
    }
    if let Some(v) = args.controller_quorum_voters {
        config.controller_quorum_voters = Some(v);
    }
    if let Some(a) = args.advertised_grpc_addr {
        config.advertised_grpc_addr = Some(a);
    }
    if let Some(r) = args.broker_rack {
        config.broker_rack = Some(r);
    }
    if let Some(v) = args.broker_heartbeat_interval_ms {
        config.broker_heartbeat_interval_ms = v;
    }
    if let Some(v) = args.broker_session_timeout_ms {
        config.broker_session_timeout_ms = v;
    }
    if let Some(v) = args.leader_imbalance_check_interval_ms {
        config.leader_imbalance_check_interval_ms = v;
    }
    if let Some(v) = args.replica_lag_time_max_ms {
        config.replica_lag_time_max_ms = v;
    }
    config.validate().map_err(|e| e.to_string())?;
    init_tracing(&config.log_level);
    fd_limit::raise();
    metrics::install();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime
        .block_on(server::run(config))
        .map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A client command piped into `head` should end quietly when the pipe closes, as Unix
        // tools do. SIGPIPE stays ignored (Rust's default) all the same: with its default
        // disposition a vectored write (`writev`, which has no MSG_NOSIGNAL) on a gRPC
        // connection to a broker that was just killed ended the process silently, mid-retry
        // (seen as `sluice produce --idempotent` exiting with no message 6 ms after a leader
        // was killed). `consume` checks for a closed stdout itself; `println!` panics on it,
        // and this hook turns that panic into a quiet exit.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
                std::process::exit(0);
            }
            default_hook(info)
        }));
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topic(args) => cli::run(cli::Client::Topic(args)),
        Command::Produce(args) => cli::run(cli::Client::Produce(args)),
        Command::Consume(args) => cli::run(cli::Client::Consume(args)),
        Command::Bench(args) => cli::run(cli::Client::Bench(args)),
        Command::Group(args) => cli::run(cli::Client::Group(args)),
        Command::Transactions(args) => cli::run(cli::Client::Transactions(args)),
        Command::Cluster(args) => cli::run(cli::Client::Cluster(args)),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
