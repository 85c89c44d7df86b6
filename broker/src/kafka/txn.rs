//! Transactions over the Kafka protocol: InitProducerId, AddPartitionsToTxn (v0-3),
//! AddOffsetsToTxn, EndTxn, TxnOffsetCommit, and the admin views DescribeTransactions,
//! ListTransactions and DescribeProducers. The state machine is the transaction coordinator's
//! ([`crate::transactions`]); transactional offsets are the group coordinator's.

use bytes::BytesMut;
use kafka_protocol::messages::add_offsets_to_txn_request::AddOffsetsToTxnRequest;
use kafka_protocol::messages::add_offsets_to_txn_response::AddOffsetsToTxnResponse;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnRequest;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResponse, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_request::DescribeProducersRequest;
use kafka_protocol::messages::describe_producers_response::{
    DescribeProducersResponse, PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_request::DescribeTransactionsRequest;
use kafka_protocol::messages::describe_transactions_response::{
    DescribeTransactionsResponse, TopicData, TransactionState,
};
use kafka_protocol::messages::end_txn_request::EndTxnRequest;
use kafka_protocol::messages::end_txn_response::EndTxnResponse;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::list_transactions_request::ListTransactionsRequest;
use kafka_protocol::messages::list_transactions_response;
use kafka_protocol::messages::list_transactions_response::ListTransactionsResponse;
use kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequest;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponse, TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ProducerId, TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::metadata::topic_error_code;
use super::{err, frame::encode_response, Ctx};
use crate::groups::offsets_log;
use crate::transactions::code;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// PRODUCER_FENCED is answered to request versions that know it (KIP-588); older ones get
/// INVALID_PRODUCER_EPOCH, as Kafka does.
fn fenced_for(version: i16, first_version_with_fenced: i16, code: i16) -> i16 {
    if code == code::PRODUCER_FENCED && version < first_version_with_fenced {
        code::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}

/// InitProducerId: with a transactional id, from its coordinator (a producer id kept across
/// sessions, the epoch bumped, a running transaction aborted); without one, a fresh idempotent
/// producer id at epoch 0.
pub async fn init_producer_id(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: InitProducerIdRequest,
) -> Result<BytesMut, String> {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let resp = if let Some(txn) = req.transactional_id.as_ref().filter(|t| !t.0.is_empty()) {
        let expected = (version >= 3 && req.producer_id.0 >= 0)
            .then_some((req.producer_id.0, req.producer_epoch));
        match ctx
            .txns
            .init_producer_id(&txn.0, req.transaction_timeout_ms, expected)
            .await
        {
            Ok((pid, epoch)) => resp
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch),
            Err(e) => resp.with_error_code(fenced_for(version, 4, e)),
        }
    } else {
        match ctx.producer_ids.next().await {
            Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
            Err(e) => {
                tracing::warn!(error = %e, "no producer id to give");
                resp.with_error_code(err(ResponseError::CoordinatorNotAvailable))
            }
        }
    };
    encode_response(corr, version, &resp)
}

/// AddPartitionsToTxn v0-3 (a producer adding partitions before it writes to them). Partitions
/// of unknown topics fail the request: they get UNKNOWN_TOPIC_OR_PARTITION, the others
/// OPERATION_NOT_ATTEMPTED, as Kafka answers.
pub async fn add_partitions_to_txn(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: AddPartitionsToTxnRequest,
) -> Result<BytesMut, String> {
    // Existence per the metadata image: the coordinator need not host the partition (with a
    // replication factor below the cluster size it usually does not), nor lead it.
    let image = ctx.quorum.image();
    let mut wanted: Vec<(String, i32, Option<i16>)> = Vec::new();
    for t in &req.v3_and_below_topics {
        for p in &t.partitions {
            let bad = (!super::groups::partition_exists(&image, &t.name.0, *p))
                .then(|| err(ResponseError::UnknownTopicOrPartition));
            wanted.push((t.name.0.to_string(), *p, bad));
        }
    }
    let codes: Vec<i16> = if wanted.iter().any(|(_, _, bad)| bad.is_some()) {
        wanted
            .iter()
            .map(|(_, _, bad)| bad.unwrap_or(err(ResponseError::OperationNotAttempted)))
            .collect()
    } else {
        let partitions: Vec<(String, i32)> =
            wanted.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let code = match ctx
            .txns
            .add_partitions(
                &req.v3_and_below_transactional_id.0,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                &partitions,
            )
            .await
        {
            Ok(()) => code::NONE,
            Err(e) => fenced_for(version, 2, e),
        };
        vec![code; wanted.len()]
    };
    let mut by_topic: std::collections::BTreeMap<String, Vec<AddPartitionsToTxnPartitionResult>> =
        Default::default();
    for ((topic, p, _), code) in wanted.into_iter().zip(codes) {
        by_topic.entry(topic).or_default().push(
            AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(p)
                .with_partition_error_code(code),
        );
    }
    let results = by_topic
        .into_iter()
        .map(|(t, ps)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(TopicName(s(t)))
                .with_results_by_partition(ps)
        })
        .collect();
    encode_response(
        corr,
        version,
        &AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
    )
}

/// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction, so its
/// TxnOffsetCommit is settled by the transaction's markers.
pub async fn add_offsets_to_txn(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: AddOffsetsToTxnRequest,
) -> Result<BytesMut, String> {
    let code = match offsets_log::ensure_topic(&ctx.admin).await {
        Err(e) => {
            tracing::warn!(error = %e, "cannot create __consumer_offsets");
            code::COORDINATOR_NOT_AVAILABLE
        }
        Ok(_) => {
            let partition = (
                offsets_log::TOPIC.to_string(),
                offsets_log::partition_for(&req.group_id.0) as i32,
            );
            match ctx
                .txns
                .add_partitions(
                    &req.transactional_id.0,
                    req.producer_id.0,
                    req.producer_epoch,
                    &[partition],
                )
                .await
            {
                Ok(()) => code::NONE,
                Err(e) => fenced_for(version, 2, e),
            }
        }
    };
    encode_response(
        corr,
        version,
        &AddOffsetsToTxnResponse::default().with_error_code(code),
    )
}

pub async fn end_txn(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: EndTxnRequest,
) -> Result<BytesMut, String> {
    let code = match ctx
        .txns
        .end_txn(
            &req.transactional_id.0,
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
        )
        .await
    {
        Ok(()) => code::NONE,
        Err(e) => fenced_for(version, 2, e),
    };
    encode_response(
        corr,
        version,
        &EndTxnResponse::default().with_error_code(code),
    )
}

/// TxnOffsetCommit: to the group's coordinator, pending until the transaction's marker.
pub async fn txn_offset_commit(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: TxnOffsetCommitRequest,
) -> Result<BytesMut, String> {
    let group = req.group_id.0.to_string();
    let now = super::groups::now_ms();
    let image = ctx.quorum.image();
    let exists = |topic: &str, p: i32| super::groups::partition_exists(&image, topic, p);
    let offsets = super::groups::existing_commits(
        &image,
        req.topics
            .iter()
            .map(|t| (t.name.0.as_str(), &t.partitions[..])),
        |p| {
            (
                p.partition_index,
                p.committed_offset,
                p.committed_leader_epoch,
                p.committed_metadata.as_ref(),
            )
        },
        now,
    );
    let code = if offsets.is_empty() {
        code::NONE
    } else {
        let generation = if version >= 3 { req.generation_id } else { -1 };
        let member = if version >= 3 {
            req.member_id.to_string()
        } else {
            String::new()
        };
        fenced_for(
            version,
            3,
            ctx.groups
                .txn_commit(
                    &group,
                    (req.producer_id.0, req.producer_epoch),
                    generation,
                    &member,
                    req.group_instance_id.as_deref(),
                    offsets,
                )
                .await,
        )
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let c = if exists(&t.name.0, p.partition_index) {
                                code
                            } else {
                                code::UNKNOWN_TOPIC_OR_PARTITION
                            };
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect();
    encode_response(
        corr,
        version,
        &TxnOffsetCommitResponse::default().with_topics(topics),
    )
}

fn topic_data(partitions: &std::collections::BTreeSet<(String, i32)>) -> Vec<TopicData> {
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for (t, p) in partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(t, ps)| {
            TopicData::default()
                .with_topic(TopicName(s(t)))
                .with_partitions(ps)
        })
        .collect()
}

pub fn describe_transactions(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: DescribeTransactionsRequest,
) -> Result<BytesMut, String> {
    let states = req
        .transactional_ids
        .iter()
        .map(|id| {
            let st = TransactionState::default()
                .with_transactional_id(id.clone())
                .with_transaction_state(s(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            match ctx.txns.describe(&id.0) {
                Ok(v) => st
                    .with_transaction_state(s(v.record.status.name()))
                    .with_transaction_timeout_ms(v.record.timeout_ms)
                    .with_transaction_start_time_ms(v.record.start_ms)
                    .with_producer_id(ProducerId(v.record.producer_id))
                    .with_producer_epoch(v.record.producer_epoch)
                    .with_topics(topic_data(&v.record.partitions)),
                Err(e) => st.with_error_code(e),
            }
        })
        .collect();
    encode_response(
        corr,
        version,
        &DescribeTransactionsResponse::default().with_transaction_states(states),
    )
}

/// ListTransactions: the ids this broker coordinates (clients ask every broker).
pub fn list_transactions(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: ListTransactionsRequest,
) -> Result<BytesMut, String> {
    let known: Vec<&str> = crate::transactions::txn_log::TxnStatus::ALL
        .iter()
        .map(|s| s.name())
        .collect();
    let filters: Vec<String> = req.state_filters.iter().map(|f| f.to_string()).collect();
    let unknown: Vec<StrBytes> = filters
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .map(|f| s(f.clone()))
        .collect();
    let pids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let now = super::groups::now_ms();
    let states = ctx
        .txns
        .list(&filters, &pids)
        .into_iter()
        // v1: only transactions running longer than duration_filter ms (-1: all).
        .filter(|v| {
            req.duration_filter < 0
                || (v.record.start_ms >= 0 && now - v.record.start_ms > req.duration_filter)
        })
        .map(|v| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(s(v.transactional_id)))
                .with_producer_id(ProducerId(v.record.producer_id))
                .with_transaction_state(s(v.record.status.name()))
        })
        .collect();
    encode_response(
        corr,
        version,
        &ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown)
            .with_transaction_states(states),
    )
}

/// DescribeProducers: the producers a partition leader remembers (KIP-664).
pub fn describe_producers(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: DescribeProducersRequest,
) -> Result<BytesMut, String> {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|p| {
                    let r = PartitionResponse::default().with_partition_index(*p);
                    let part = u32::try_from(*p)
                        .map_err(|_| err(ResponseError::UnknownTopicOrPartition))
                        .and_then(|i| {
                            ctx.topics
                                .partition(&t.name.0, i)
                                .map_err(|e| topic_error_code(&e))
                        })
                        .and_then(|part| {
                            part.check_leader()
                                .map(|_| part)
                                .map_err(|e| super::produce::partition_error_code(&e))
                        });
                    match part {
                        Err(code) => r.with_error_code(code),
                        Ok(part) => {
                            let states = part.log().producer_states();
                            let mut active: Vec<ProducerState> = states
                                .entries()
                                .map(|(pid, e)| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(pid))
                                        .with_producer_epoch(i32::from(e.epoch))
                                        .with_last_sequence(
                                            e.batches.back().map_or(-1, |b| b.last_seq),
                                        )
                                        .with_last_timestamp(e.last_timestamp)
                                        .with_coordinator_epoch(e.coordinator_epoch)
                                        .with_current_txn_start_offset(
                                            e.txn_first_offset.map_or(-1, |o| o as i64),
                                        )
                                })
                                .collect();
                            active.sort_by_key(|p| p.producer_id.0);
                            r.with_active_producers(active)
                        }
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    encode_response(
        corr,
        version,
        &DescribeProducersResponse::default().with_topics(topics),
    )
}
