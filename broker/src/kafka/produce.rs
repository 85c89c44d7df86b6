//! Produce (v3+, RecordBatch v2): batches are stored as sent — codec and CRC untouched — after
//! validation by the log (magic, CRC, count, `max.message.bytes`).

use bytes::BytesMut;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_log::{BatchError, LogError, ProducerError};
use sluice_replication::{Acks, PartitionError};

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

pub async fn produce(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: ProduceRequest,
) -> Result<Reply, String> {
    let acks = match req.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for pd in topic.partition_data {
            let mut r = PartitionProduceResponse::default()
                .with_index(pd.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let Some(acks) = acks else {
                partitions.push(r.with_error_code(err(ResponseError::InvalidRequiredAcks)));
                continue;
            };
            let partition = match u32::try_from(pd.index)
                .map_err(|_| crate::topics::TopicError::UnknownTopic(name.clone()))
                .and_then(|i| ctx.topics.partition(&name, i))
            {
                Ok(p) => p,
                Err(e) => {
                    partitions.push(r.with_error_code(topic_error_code(&e)));
                    continue;
                }
            };
            let Some(records) = pd.records else {
                partitions.push(r.with_error_code(err(ResponseError::CorruptMessage)));
                continue;
            };
            // The log assigns offsets in place, so it needs the bytes to itself. The request
            // buffer is shared by every partition's slice, so this is one copy of the batch.
            let mut data = BytesMut::from(&records[..]);
            let timeout = std::time::Duration::from_millis(req.timeout_ms.max(0) as u64);
            match partition.append(&mut data, acks, timeout).await {
                Ok(info) => {
                    r = r
                        .with_base_offset(info.first_offset as i64)
                        .with_log_append_time_ms(info.log_append_time.unwrap_or(-1))
                        .with_log_start_offset(partition.log().log_start_offset() as i64);
                }
                Err(e) => {
                    tracing::debug!(topic = %name, partition = pd.index, error = %e, "produce rejected");
                    r = r.with_error_code(partition_error_code(&e));
                    if version >= 8 {
                        r = r
                            .with_error_message(Some(StrBytes::from_string(e.to_string())))
                            .with_record_errors(record_errors(&e));
                    }
                }
            }
            partitions.push(r);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions),
        );
    }
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
