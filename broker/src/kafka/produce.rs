//! Produce (v3+, RecordBatch v2): batches are stored as sent — codec and CRC untouched — after
//! validation by the log (magic, CRC, count, `max.message.bytes`).

use bytes::Bytes;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_log::{BatchError, LogError, ProducerError};
use std::sync::Arc;

use sluice_replication::{Acks, Appended, Partition, PartitionError};

use super::metadata::topic_error_code;
use super::{err, frame::encode_response, Ctx, Reply};

/// Kafka's error code for a replica's refusal (one mapping for every Kafka handler).
pub fn partition_error_code(e: &PartitionError) -> i16 {
    err(match e {
        PartitionError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
        PartitionError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        PartitionError::NotEnoughReplicasAfterAppend { .. } => {
            ResponseError::NotEnoughReplicasAfterAppend
        }
        PartitionError::Timeout { .. } => ResponseError::RequestTimedOut,
        PartitionError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        PartitionError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
        PartitionError::UnknownReplica(_) => ResponseError::ReplicaNotAvailable,
        PartitionError::Task(_) => ResponseError::UnknownServerError,
        PartitionError::Log(l) => match l {
            LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
            LogError::InvalidBatch {
                source: BatchError::UnsupportedMagic(_),
                ..
            } => ResponseError::UnsupportedForMessageFormat,
            LogError::InvalidBatch { .. } => ResponseError::CorruptMessage,
            LogError::InvalidRecords { .. } => ResponseError::InvalidRecord,
            LogError::RecordsRejected {
                timestamp: true, ..
            } => ResponseError::InvalidTimestamp,
            LogError::RecordsRejected { .. } => ResponseError::InvalidRecord,
            LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            // Deleted while the request held it: as if it had arrived a moment later.
            LogError::Deleted => ResponseError::UnknownTopicOrPartition,
            // Shutting down: another broker leads it soon.
            LogError::Closed => ResponseError::NotLeaderOrFollower,
            LogError::Producer(ProducerError::OutOfOrder { .. }) => {
                ResponseError::OutOfOrderSequenceNumber
            }
            LogError::Producer(ProducerError::InvalidEpoch { .. }) => {
                ResponseError::InvalidProducerEpoch
            }
            LogError::Producer(ProducerError::InvalidTxnState { .. }) => {
                ResponseError::InvalidTxnState
            }
            LogError::Producer(ProducerError::CoordinatorFenced { .. }) => {
                ResponseError::TransactionCoordinatorFenced
            }
            _ => ResponseError::KafkaStorageError,
        },
    })
}

/// KIP-467: the records a rule refused, by index in their batch, so clients fail just those.
fn record_errors(e: &PartitionError) -> Vec<BatchIndexAndErrorMessage> {
    match e {
        PartitionError::Log(LogError::RecordsRejected { errors, .. }) => errors
            .iter()
            .map(|r| {
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(r.batch_index)
                    .with_batch_index_error_message(Some(StrBytes::from_string(r.message.clone())))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A partition's part of a produce request.
struct PartitionData {
    index: i32,
    records: Option<Bytes>,
}

/// A partition's part of a produce after its batches are written (or refused).
enum Started {
    /// Answered already (refused, or nothing to wait for).
    Done(PartitionProduceResponse),
    Written {
        partition: Arc<Partition>,
        appended: Appended,
        base: PartitionProduceResponse,
        name: String,
    },
}

fn refused(
    r: PartitionProduceResponse,
    name: &str,
    index: i32,
    e: &PartitionError,
    version: i16,
) -> PartitionProduceResponse {
    tracing::debug!(topic = %name, partition = index, error = %e, "produce rejected");
    let r = r.with_error_code(partition_error_code(e));
    if version >= 8 {
        r.with_error_message(Some(StrBytes::from_string(e.to_string())))
            .with_record_errors(record_errors(e))
    } else {
        r
    }
}

/// Writes one partition's records now (phase one: in the order requests arrive).
fn start_partition(
    ctx: &Ctx,
    name: String,
    pd: PartitionData,
    acks: Option<Acks>,
    version: i16,
) -> Started {
    let r = PartitionProduceResponse::default()
        .with_index(pd.index)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1);
    let Some(acks) = acks else {
        return Started::Done(r.with_error_code(err(ResponseError::InvalidRequiredAcks)));
    };
    let partition = match u32::try_from(pd.index)
        .map_err(|_| crate::topics::TopicError::UnknownTopic(name.clone()))
        .and_then(|i| ctx.topics.partition(&name, i))
    {
        Ok(p) => p,
        Err(e) => return Started::Done(r.with_error_code(topic_error_code(&e))),
    };
    let Some(records) = pd.records else {
        return Started::Done(r.with_error_code(err(ResponseError::CorruptMessage)));
    };
    match partition.start_append(&records, acks) {
        Ok(appended) => Started::Written {
            partition,
            appended,
            base: r,
            name,
        },
        Err(e) => Started::Done(refused(r, &name, pd.index, &e, version)),
    }
}

/// Phase two: the fsync and the replicas `acks` waits for; the partition's response.
async fn finish_partition(
    started: Started,
    acks: Acks,
    timeout: std::time::Duration,
    version: i16,
) -> PartitionProduceResponse {
    let (partition, appended, base, name) = match started {
        Started::Done(r) => return r,
        Started::Written {
            partition,
            appended,
            base,
            name,
        } => (partition, appended, base, name),
    };
    let index = base.index;
    match partition.finish_append(appended, acks, timeout).await {
        Ok(info) => base
            .with_base_offset(info.first_offset as i64)
            .with_log_append_time_ms(info.log_append_time.unwrap_or(-1))
            .with_log_start_offset(partition.log().log_start_offset() as i64),
        Err(e) => refused(base, &name, index, &e, version),
    }
}

/// A produce in two phases: every partition's batches are written before this returns, in
/// request order; the returned future waits for fsyncs and replicas and builds the response,
/// so a connection can write its next request's batches meanwhile (answering in order).
pub fn produce(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: ProduceRequest,
) -> impl std::future::Future<Output = Result<Reply, String>> + Send + 'static {
    let acks = match req.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let timeout = std::time::Duration::from_millis(req.timeout_ms.max(0) as u64);
    let mut shape = Vec::with_capacity(req.topic_data.len());
    let mut started = Vec::new();
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        shape.push((name.clone(), topic.partition_data.len()));
        for p in topic.partition_data {
            let pd = PartitionData {
                index: p.index,
                records: p.records,
            };
            started.push(start_partition(ctx, name.clone(), pd, acks, version));
        }
    }
    async move {
        // Every partition waits at once, as Kafka's purgatory holds one produce for all its
        // partitions: with acks=all the request takes its slowest partition's time.
        let wait = acks.unwrap_or(Acks::None);
        let finishing = started
            .into_iter()
            .map(|s| finish_partition(s, wait, timeout, version));
        let mut results = futures::future::join_all(finishing).await.into_iter();
        let responses = shape
            .into_iter()
            .map(|(name, n)| {
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partition_responses(results.by_ref().take(n).collect())
            })
            .collect();
        if acks == Some(Acks::None) {
            return Ok(Reply::Nothing);
        }
        encode_response(
            corr,
            version,
            &ProduceResponse::default().with_responses(responses),
        )
        .map(Reply::Frame)
    }
}
