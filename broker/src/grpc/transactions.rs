//! `sluice.v1.Transactions`: the operators' read-only view of Kafka transactions — the
//! transactional ids this broker coordinates, one id's state, and the producers a partition
//! keeps state for (what `kafka-transactions.sh list|describe|describe-producers` shows).

use std::sync::Arc;

use sluice_proto::v1::{self as pb, transactions_server::Transactions};
use tonic::{Request, Response, Status};

use crate::topics::TopicManager;
use crate::transactions::{code, txn_log, TransactionCoordinator};

pub struct TransactionsService {
    pub txns: Arc<TransactionCoordinator>,
    pub topics: Arc<TopicManager>,
    pub node_id: i32,
}

#[tonic::async_trait]
impl Transactions for TransactionsService {
    async fn list_transactions(
        &self,
        req: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let r = req.into_inner();
        let unknown: Vec<&String> = r
            .states
            .iter()
            .filter(|s| !txn_log::TxnStatus::ALL.iter().any(|k| k.name() == *s))
            .collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = txn_log::TxnStatus::ALL.iter().map(|s| s.name()).collect();
            return Err(Status::invalid_argument(format!(
                "unknown transaction state(s) {unknown:?}; states are {known:?}"
            )));
        }
        let transactions = self
            .txns
            .list(&r.states, &r.producer_ids)
            .into_iter()
            .map(|v| pb::TransactionSummary {
                transactional_id: v.transactional_id,
                producer_id: v.record.producer_id,
                state: v.record.status.name().to_string(),
            })
            .collect();
        Ok(Response::new(pb::ListTransactionsResponse { transactions }))
    }

    async fn describe_transaction(
        &self,
        req: Request<pb::DescribeTransactionRequest>,
    ) -> Result<Response<pb::DescribeTransactionResponse>, Status> {
        let id = req.into_inner().transactional_id;
        let what = format!("transactional id {id:?}");
        let v = self.txns.describe(&id).map_err(|c| match c {
            code::TRANSACTIONAL_ID_NOT_FOUND => Status::not_found(format!("unknown {what}")),
            // Only when __transaction_state does not exist: no transaction has ever begun.
            code::COORDINATOR_NOT_AVAILABLE => Status::not_found(format!(
                "unknown {what}: no transactional producer has used this cluster yet"
            )),
            c => super::status::coordinator_status(
                &self.topics,
                c,
                &what,
                txn_log::TOPIC,
                txn_log::partition_for(&id),
            ),
        })?;
        let r = v.record;
        Ok(Response::new(pb::DescribeTransactionResponse {
            transactional_id: v.transactional_id,
            state: r.status.name().to_string(),
            producer_id: r.producer_id,
            producer_epoch: i32::from(r.producer_epoch),
            timeout_ms: r.timeout_ms,
            start_time_ms: r.start_ms,
            last_update_ms: r.last_update_ms,
            partitions: r
                .partitions
                .iter()
                .map(|(topic, p)| pb::TopicPartition {
                    topic: topic.clone(),
                    partition: (*p).max(0) as u32,
                })
                .collect(),
            coordinator_id: self.node_id,
        }))
    }

    async fn describe_producers(
        &self,
        req: Request<pb::DescribeProducersRequest>,
    ) -> Result<Response<pb::DescribeProducersResponse>, Status> {
        let r = req.into_inner();
        let part = self
            .topics
            .partition(&r.topic, r.partition)
            .map_err(super::status::from_topic_error)?;
        part.check_leader()
            .map_err(|e| super::status::from_partition_error(&e))?;
        let states = part.log().producer_states();
        let mut producers: Vec<pb::ActiveProducer> = states
            .entries()
            .map(|(pid, e)| pb::ActiveProducer {
                producer_id: pid,
                producer_epoch: i32::from(e.epoch),
                last_sequence: e.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp_ms: e.last_timestamp,
                coordinator_epoch: e.coordinator_epoch,
                current_txn_start_offset: e.txn_first_offset,
            })
            .collect();
        producers.sort_by_key(|p| p.producer_id);
        Ok(Response::new(pb::DescribeProducersResponse { producers }))
    }
}
