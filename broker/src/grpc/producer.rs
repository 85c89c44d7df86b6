//! `sluice.v1.Producer`: records in, offsets out.
//!
//! A request's records are routed to partitions (explicit, murmur2 of the key, or sticky for null
//! keys), built into RecordBatch v2 batches (split so no batch exceeds the topic's
//! `max.message.bytes` unless a single record does), and appended to each partition's log.
//! Idempotent requests (`IdempotentProduce`) carry a producer id, epoch and per-partition first
//! sequence: each partition's records become one batch with those fields, and the log's
//! producer state answers a retry with its original offsets (see `sluice_log::producer_state`).

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
use crate::requests::producer_ids::ProducerIds;
use crate::topics::TopicManager;
use sluice_proto::routing as partitioner;

#[derive(Clone)]
pub struct ProducerService {
    pub topics: Arc<TopicManager>,
    pub producer_ids: Arc<ProducerIds>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Batches for one partition, built up to a size limit each.
struct PartitionBatches {
    compression: Compression,
    /// `usize::MAX` for an idempotent producer's records: one batch, as its sequence covers.
    limit: usize,
    done: BytesMut,
    current: BatchBuilder,
    /// An idempotent producer's id, epoch and first sequence.
    producer: Option<(i64, i16, i32)>,
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
        let built = match self.producer {
            Some((id, epoch, sequence)) => full.build_for_producer(id, epoch, sequence),
            None => full.build(),
        };
        if let Some(b) = built {
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
        if !req.record_batches.is_empty() {
            return self.produce_batches(&topic, req).await;
        }
        if req.records.is_empty() {
            return Err(Status::invalid_argument("produce request has no records"));
        }
        let acks = acks_of(req.acks)?;
        let count = topic.partition_count;
        let timeout = acks_timeout(req.timeout_ms);
        let settings = topic.settings();
        let compression = settings.compression.unwrap_or_default();
        // Leave room under max.message.bytes for the batch header and compression overhead.
        let limit = settings
            .log
            .max_message_bytes
            .saturating_sub(256)
            .clamp(1024, 1 << 20);
        let now = now_ms();
        let idempotence = match req.idempotence {
            Some(i) => Some(Idempotence::from_request(i)?),
            None => None,
        };
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
                (None, _) if idempotence.is_some() => {
                    return Err(Status::invalid_argument(
                        "an idempotent produce request must name every record's partition \
                         (a retry has to reach the same partition)",
                    ))
                }
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
            let batches = match by_partition.entry(partition) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let producer = match &idempotence {
                        Some(i) => Some(i.producer_for(partition)?),
                        None => None,
                    };
                    e.insert(PartitionBatches {
                        compression,
                        limit: if producer.is_some() {
                            usize::MAX
                        } else {
                            limit
                        },
                        done: BytesMut::new(),
                        current: BatchBuilder::new(compression),
                        producer,
                    })
                }
            };
            batches.push(&record);
        }
        let mut results = Vec::with_capacity(by_partition.len());
        for (index, batches) in by_partition {
            let partition = topic.partition(index)?;
            let data = batches.finish();
            let info = partition
                .append(&data, acks, timeout)
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

fn acks_of(acks: i32) -> Result<Acks, Status> {
    match pb::Acks::try_from(acks) {
        Ok(pb::Acks::Leader) => Ok(Acks::Leader),
        Ok(pb::Acks::None) => Ok(Acks::None),
        Ok(pb::Acks::All) => Ok(Acks::All),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown acks value {acks}"
        ))),
    }
}

/// How long acks=all waits for the ISR (0: Kafka's default request.timeout.ms, 30 s).
fn acks_timeout(timeout_ms: u32) -> std::time::Duration {
    std::time::Duration::from_millis(if timeout_ms == 0 {
        30_000
    } else {
        u64::from(timeout_ms)
    })
}

impl ProducerService {
    /// The batch form: the client's RecordBatch v2 bytes go to the log as they are (the log
    /// validates them as it does a Kafka client's), no per-record work here.
    async fn produce_batches(
        &self,
        topic: &crate::topics::Topic,
        req: pb::ProduceRequest,
    ) -> Result<pb::ProduceResponse, Status> {
        if !req.records.is_empty() || req.idempotence.is_some() {
            return Err(Status::invalid_argument(
                "a produce request carries either record_batches or records (and idempotence \
                 goes in the batch headers), not both",
            ));
        }
        let acks = acks_of(req.acks)?;
        let index = req.batch_partition;
        if index >= topic.partition_count {
            return Err(Status::not_found(format!(
                "topic {:?} has no partition {index} (it has {})",
                topic.name, topic.partition_count
            )));
        }
        let partition = topic.partition(index)?;
        // Written from the request's buffer as they are (the log never modifies them).
        let info = partition
            .append(&req.record_batches, acks, acks_timeout(req.timeout_ms))
            .await
            .map_err(|e| status::from_partition_error(&e))?;
        let partitions = if acks == Acks::None {
            Vec::new()
        } else {
            vec![pb::PartitionProduceResult {
                partition: index,
                base_offset: info.first_offset,
                last_offset: info.last_offset,
                log_append_time_ms: info.log_append_time.unwrap_or(-1),
            }]
        };
        Ok(pb::ProduceResponse {
            correlation_id: req.correlation_id,
            partitions,
            error: None,
        })
    }
}

/// A request's idempotent-producer fields, checked.
struct Idempotence {
    producer_id: i64,
    epoch: i16,
    sequences: BTreeMap<u32, i32>,
}

impl Idempotence {
    fn from_request(i: pb::IdempotentProduce) -> Result<Idempotence, Status> {
        if i.producer_id < 0 {
            return Err(Status::invalid_argument(format!(
                "producer id {} is not one InitProducerId gave",
                i.producer_id
            )));
        }
        let epoch = i16::try_from(i.producer_epoch)
            .ok()
            .filter(|e| *e >= 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "producer epoch {} is out of range (0..=32767)",
                    i.producer_epoch
                ))
            })?;
        let mut sequences = BTreeMap::new();
        for s in i.sequences {
            if s.first_sequence < 0 {
                return Err(Status::invalid_argument(format!(
                    "partition {}: first sequence {} is negative",
                    s.partition, s.first_sequence
                )));
            }
            if sequences.insert(s.partition, s.first_sequence).is_some() {
                return Err(Status::invalid_argument(format!(
                    "partition {} has two first sequences",
                    s.partition
                )));
            }
        }
        Ok(Idempotence {
            producer_id: i.producer_id,
            epoch,
            sequences,
        })
    }

    fn producer_for(&self, partition: u32) -> Result<(i64, i16, i32), Status> {
        match self.sequences.get(&partition) {
            Some(seq) => Ok((self.producer_id, self.epoch, *seq)),
            None => Err(Status::invalid_argument(format!(
                "idempotent produce: no first sequence for partition {partition}, which the \
                 request writes"
            ))),
        }
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

    async fn init_producer_id(
        &self,
        _req: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        match self.producer_ids.next().await {
            Ok(id) => Ok(Response::new(pb::InitProducerIdResponse {
                producer_id: id,
                producer_epoch: 0,
            })),
            Err(e) => Err(Status::unavailable(format!("no producer id to give: {e}"))),
        }
    }
}
