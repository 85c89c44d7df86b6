//! `sluice transactions list|describe|describe-producers`: the operator's view of Kafka
//! transactions, as `kafka-transactions.sh` gives it. Listing asks every broker (each lists the
//! transactional ids it coordinates); describing goes to the id's coordinator; producers are
//! read from the partition's leader.

use clap::{Args, Subcommand};
use sluice_proto::v1 as pb;
use sluice_proto::v1::transactions_client::TransactionsClient;

use crate::leaders::Leaders;
use crate::{channel, print_table, status_message, ConnArgs, Output};

#[derive(Args)]
pub struct TransactionsArgs {
    #[command(subcommand)]
    pub command: TransactionsCommand,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand)]
pub enum TransactionsCommand {
    /// List transactional ids with their producer id and state.
    List {
        /// Only these states (Empty, Ongoing, PrepareCommit, PrepareAbort, CompleteCommit,
        /// CompleteAbort, ...); repeat for several.
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only this producer id; repeat for several.
        #[arg(long = "producer-id")]
        producer_ids: Vec<i64>,
    },
    /// One transactional id: state, producer id and epoch, timeout, open partitions.
    Describe {
        #[arg(long)]
        transactional_id: String,
    },
    /// The producers a partition's leader keeps state for: epoch, last sequence, open
    /// transaction's first offset.
    DescribeProducers {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: u32,
    },
}

/// A timestamp in ms since the epoch, as Kafka's tool prints it; "-" for none.
fn time_ms(ms: i64) -> String {
    if ms < 0 {
        "-".into()
    } else {
        ms.to_string()
    }
}

pub async fn run(args: TransactionsArgs) -> Result<(), String> {
    let json = args.conn.output == Output::Json;
    let bootstrap = &args.conn.broker;
    match args.command {
        TransactionsCommand::List {
            states,
            producer_ids,
        } => {
            let req = pb::ListTransactionsRequest {
                states,
                producer_ids,
            };
            let mut all = TransactionsClient::new(channel(bootstrap).await?)
                .list_transactions(req.clone())
                .await
                .map_err(status_message)?
                .into_inner()
                .transactions;
            // Each broker lists the ids it coordinates: ask the others too.
            for (id, address) in crate::leaders::other_brokers(bootstrap).await? {
                let listed = async {
                    TransactionsClient::new(channel(&address).await?)
                        .list_transactions(req.clone())
                        .await
                        .map_err(status_message)
                };
                match listed.await {
                    Ok(more) => all.extend(more.into_inner().transactions),
                    Err(e) => eprintln!("broker {id} did not answer: {e}"),
                }
            }
            all.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
            if json {
                let v: Vec<_> = all.iter().map(|t| serde_json::json!({"transactional_id": t.transactional_id, "producer_id": t.producer_id, "state": t.state})).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|t| {
                        vec![
                            t.transactional_id.clone(),
                            t.producer_id.to_string(),
                            t.state.clone(),
                        ]
                    })
                    .collect();
                print_table(&["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE"], &rows);
            }
        }
        TransactionsCommand::Describe { transactional_id } => {
            let target =
                crate::leaders::transaction_coordinator(bootstrap, &transactional_id).await;
            let d = TransactionsClient::new(channel(&target).await?)
                .describe_transaction(pb::DescribeTransactionRequest { transactional_id })
                .await
                .map_err(status_message)?
                .into_inner();
            let partitions: Vec<String> = d
                .partitions
                .iter()
                .map(|tp| format!("{}-{}", tp.topic, tp.partition))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"transactional_id": d.transactional_id, "coordinator_id": d.coordinator_id, "state": d.state, "producer_id": d.producer_id, "producer_epoch": d.producer_epoch, "timeout_ms": d.timeout_ms, "start_time_ms": d.start_time_ms, "last_update_ms": d.last_update_ms, "partitions": partitions})
                );
            } else {
                print_table(
                    &[
                        "COORDINATOR",
                        "TRANSACTIONAL-ID",
                        "PRODUCER-ID",
                        "EPOCH",
                        "STATE",
                        "TIMEOUT-MS",
                        "START-TIME-MS",
                        "PARTITIONS",
                    ],
                    &[vec![
                        d.coordinator_id.to_string(),
                        d.transactional_id,
                        d.producer_id.to_string(),
                        d.producer_epoch.to_string(),
                        d.state,
                        d.timeout_ms.to_string(),
                        time_ms(d.start_time_ms),
                        partitions.join(","),
                    ]],
                );
            }
        }
        TransactionsCommand::DescribeProducers { topic, partition } => {
            let leaders = Leaders::load(bootstrap, &topic).await?;
            let r = TransactionsClient::new(leaders.channel_to_leader(partition).await?)
                .describe_producers(pb::DescribeProducersRequest { topic, partition })
                .await
                .map_err(status_message)?
                .into_inner();
            if json {
                let v: Vec<_> = r.producers.iter().map(|p| serde_json::json!({"producer_id": p.producer_id, "producer_epoch": p.producer_epoch, "last_sequence": p.last_sequence, "last_timestamp_ms": p.last_timestamp_ms, "coordinator_epoch": p.coordinator_epoch, "current_txn_start_offset": p.current_txn_start_offset})).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = r
                    .producers
                    .iter()
                    .map(|p| {
                        vec![
                            p.producer_id.to_string(),
                            p.producer_epoch.to_string(),
                            p.last_sequence.to_string(),
                            time_ms(p.last_timestamp_ms),
                            p.coordinator_epoch.to_string(),
                            p.current_txn_start_offset
                                .map_or_else(|| "-".into(), |o| o.to_string()),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "PRODUCER-ID",
                        "EPOCH",
                        "LAST-SEQUENCE",
                        "LAST-TIMESTAMP-MS",
                        "COORDINATOR-EPOCH",
                        "CURRENT-TXN-START-OFFSET",
                    ],
                    &rows,
                );
            }
        }
    }
    Ok(())
}
