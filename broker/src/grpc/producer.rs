//! `sluice.v1.Producer`: records in, offsets out.
//!
//! A request's records are routed to partitions (explicit, murmur2 of the key, or sticky for null
//! keys), built into RecordBatch v2 batches (split so no batch exceeds the topic's
//! `max.message.bytes` unless a single record does), and appended to each partition's log.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use futures::{Stream, StreamExt};
use sluice_log::{BatchBuilder, Compression, Record};
use sluice_proto::v1::{self as pb, producer_server::Producer};
use sluice_replication::Acks;
use tonic::{Request, Response, Status, Streaming};

use crate::grpc::status;
use crate::topics::TopicManager;
use sluice_proto::routing as partitioner;

#[derive(Clone)]
pub struct ProducerService {
    pub topics: Arc<TopicManager>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Batches for one partition, built up to a size limit each.
struct PartitionBatches {
    compression: Compression,
    limit: usize,
    done: BytesMut,
    current: BatchBuilder,
}

impl PartitionBatches {
    fn push(&mut self, record: &Record) {
        let record_size = record.key.as_ref().map_or(0, |k| k.len())
            + record.value.as_ref().map_or(0, |v| v.len())
            + record
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>()
            + 32;
        if !self.current.is_empty() && self.current.estimated_size() + record_size > self.limit {
            self.seal();
        }
        self.current.push(record);
    }

    fn seal(&mut self) {
        let full = std::mem::replace(&mut self.current, BatchBuilder::new(self.compression));
        if let Some(b) = full.build() {
            self.done.extend_from_slice(&b);
        }
    }

    fn finish(mut self) -> BytesMut {
        self.seal();
        self.done
    }
}

impl ProducerService {
    pub async fn produce_one(
        &self,
        req: pb::ProduceRequest,
    ) -> Result<pb::ProduceResponse, Status> {
        let topic = self.topics.get(&req.topic)?;
        if req.records.is_empty() {
            return Err(Status::invalid_argument("produce request has no records"));
        }
        let acks = match pb::Acks::try_from(req.acks) {
            Ok(pb::Acks::Leader) => Acks::Leader,
            Ok(pb::Acks::None) => Acks::None,
            Ok(pb::Acks::All) => Acks::All,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown acks value {}",
                    req.acks
                )))
            }
        };
        let count = topic.partition_count;
        // How long acks=all waits for the ISR (0: Kafka's default request.timeout.ms, 30 s).
        let timeout = std::time::Duration::from_millis(if req.timeout_ms == 0 {
            30_000
        } else {
            u64::from(req.timeout_ms)
        });
        let settings = topic.settings();
        let compression = settings.compression.unwrap_or_default();
        // Leave room under max.message.bytes for the batch header and compression overhead.
        let limit = settings
            .log
            .max_message_bytes
            .saturating_sub(256)
            .clamp(1024, 1 << 20);
        let now = now_ms();
        let mut sticky = None;
        let mut by_partition: BTreeMap<u32, PartitionBatches> = BTreeMap::new();
        for r in req.records {
            let partition = match (r.partition, &r.key) {
                (Some(p), _) if p >= count => {
                    return Err(Status::not_found(format!(
                        "topic {:?} has no partition {p} (it has {count})",
                        topic.name
                    )))
                }
                (Some(p), _) => p,
                (None, Some(key)) => partitioner::partition_for_key(key, count),
                (None, None) => *sticky.get_or_insert_with(|| partitioner::sticky_partition(count)),
            };
            let record = Record {
                timestamp: r.timestamp_ms.unwrap_or(now),
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| sluice_log::Header {
                        key: h.key,
                        value: h.value,
                    })
                    .collect(),
            };
            by_partition
                .entry(partition)
                .or_insert_with(|| PartitionBatches {
                    compression,
                    limit,
                    done: BytesMut::new(),
                    current: BatchBuilder::new(compression),
                })
                .push(&record);
        }
        let mut results = Vec::with_capacity(by_partition.len());
        for (index, batches) in by_partition {
            let partition = topic.partition(index)?;
            let mut data = batches.finish();
            let info = partition
                .append(&mut data, acks, timeout)
                .await
                .map_err(|e| status::from_partition_error(&e))?;
            results.push(pb::PartitionProduceResult {
                partition: index,
                base_offset: info.first_offset,
                last_offset: info.last_offset,
                log_append_time_ms: info.log_append_time.unwrap_or(-1),
            });
        }
        if acks == Acks::None {
            results.clear();
        }
        Ok(pb::ProduceResponse {
            correlation_id: req.correlation_id,
            partitions: results,
            error: None,
        })
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ProduceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Producer for ProducerService {
    async fn produce(
        &self,
        req: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        Ok(Response::new(self.produce_one(req.into_inner()).await?))
    }

    type ProduceStreamStream = ResponseStream;

    async fn produce_stream(
        &self,
        req: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let inbound = req.into_inner();
        let service = self.clone();
        // Requests are processed one after another in arrival order (offsets follow the order the
        // client sent them); the client pipelines by sending ahead without waiting.
        let out = inbound.then(move |item| {
            let service = service.clone();
            async move {
                match item {
                    Ok(r) => {
                        let correlation_id = r.correlation_id;
                        match service.produce_one(r).await {
                            Ok(resp) => Ok(resp),
                            Err(s) => Ok(pb::ProduceResponse {
                                correlation_id,
                                partitions: Vec::new(),
                                error: Some(status::to_proto(&s)),
                            }),
                        }
                    }
                    Err(s) => Err(s),
                }
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}
