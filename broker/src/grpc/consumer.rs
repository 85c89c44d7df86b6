//! `sluice.v1.Consumer`: long-poll fetch, streaming subscribe, list offsets.
//!
//! Consumers see only committed records (below the high watermark; with READ_COMMITTED, below
//! the last stable offset and without aborted transactions' records). A fetch waits on the
//! partition's HW signal, so it returns as soon as `min_bytes` are committed or `max_wait_ms` ends.
//! Transaction markers are never returned as records. RECORD_FORMAT_BATCHES returns the stored
//! batches as bytes instead of decoded records (`consumer_batches`): no per-record work at all.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use sluice_log::record::DEFAULT_DECOMPRESSED_LIMIT;
use sluice_proto::v1::{self as pb, consumer_server::Consumer};
use sluice_replication::{Isolation, OffsetQuery, Partition};
use tonic::{Request, Response, Status};

use crate::grpc::status;
use crate::topics::TopicManager;

pub struct ConsumerService {
    pub topics: Arc<TopicManager>,
    pub default_max_bytes: usize,
    pub max_bytes_limit: usize,
}

fn isolation(level: i32) -> Isolation {
    match pb::IsolationLevel::try_from(level) {
        Ok(pb::IsolationLevel::ReadCommitted) => Isolation::ReadCommitted,
        _ => Isolation::ReadUncommitted,
    }
}

/// Reads committed records from `offset`, up to `max_bytes` of batches, decoded or (`batches`)
/// as the stored batches.
fn read_records(
    p: &Partition,
    topic: &str,
    offset: u64,
    max_bytes: usize,
    level: Isolation,
    batches: bool,
) -> Result<pb::FetchResponse, Status> {
    let lso = p.last_stable_offset();
    let (data, info) =
        tokio::task::block_in_place(|| p.read_bytes_isolated(offset, max_bytes, level))
            .map_err(|e| status::from_partition_error(&e))?;
    let aborted = if level == Isolation::ReadCommitted && info.size > 0 {
        p.aborted_transactions(offset, info.next_offset)
    } else {
        Vec::new()
    };
    if batches {
        return Ok(pb::FetchResponse {
            topic: topic.to_string(),
            partition: p.index(),
            high_watermark: info.high_watermark,
            log_start_offset: info.log_start_offset,
            next_offset: info.next_offset,
            records: Vec::new(),
            last_stable_offset: lso.min(info.high_watermark),
            record_batches: consumer_batches(&data, &aborted),
        });
    }
    let (records, next_offset) =
        decode_stored(&data, topic, p.index(), info.next_offset, &aborted)?;
    let records: Vec<pb::ConsumedRecord> = records
        .into_iter()
        .filter(|r| r.offset >= offset)
        .map(|r| pb::ConsumedRecord {
            offset: r.offset,
            timestamp_ms: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|h| pb::Header {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
        })
        .collect();
    Ok(pb::FetchResponse {
        topic: topic.to_string(),
        partition: p.index(),
        high_watermark: info.high_watermark,
        log_start_offset: info.log_start_offset,
        next_offset,
        records,
        last_stable_offset: lso.min(info.high_watermark),
        record_batches: bytes::Bytes::new(),
    })
}

/// The batches of a read a consumer gets as bytes: whole batches, without transaction markers
/// or aborted transactions' batches (`aborted`, for READ_COMMITTED). Headers are only scanned,
/// never decoded; when nothing is left out the read's buffer is passed on as it is.
fn consumer_batches(data: &bytes::Bytes, aborted: &[sluice_log::AbortedTxn]) -> bytes::Bytes {
    let mut keep: Vec<std::ops::Range<usize>> = Vec::new();
    for frame in sluice_log::batch::BatchFrames::new(data) {
        let Ok((pos, h)) = frame else { break };
        let end = pos + h.total_size();
        let base = h.base_offset.max(0) as u64;
        let left_out = h.is_control()
            || (h.is_transactional()
                && aborted.iter().any(|a| {
                    a.producer_id == h.producer_id
                        && a.first_offset <= base
                        && base <= a.last_offset
                }));
        if left_out {
            continue;
        }
        match keep.last_mut() {
            Some(r) if r.end == pos => r.end = end,
            _ => keep.push(pos..end),
        }
    }
    match keep.as_slice() {
        [] => bytes::Bytes::new(),
        [only] => data.slice(only.clone()),
        many => {
            let mut out = bytes::BytesMut::with_capacity(many.iter().map(|r| r.len()).sum());
            for r in many {
                out.extend_from_slice(&data[r.clone()]);
            }
            out.freeze()
        }
    }
}

/// Decodes the batches a read returned, one by one. A batch that does not decode (written by an
/// older version that did not validate records, or damaged on disk under a valid CRC) is reported
/// as DATA_LOSS naming its offsets when it comes first, so a consumer learns where it is stuck and
/// how to step past it; when good batches precede it, those are returned and the next fetch
/// starts at the bad one.
fn decode_stored(
    data: &bytes::Bytes,
    topic: &str,
    partition: u32,
    read_next_offset: u64,
    aborted: &[sluice_log::AbortedTxn],
) -> Result<(Vec<sluice_log::StoredRecord>, u64), Status> {
    let mut records = Vec::new();
    for frame in sluice_log::batch::BatchFrames::new(data) {
        let (pos, h) = match frame {
            Ok(f) => f,
            Err(sluice_log::BatchError::Truncated { .. }) => break,
            Err(e) => return Err(Status::data_loss(format!("{topic}-{partition}: {e}"))),
        };
        if h.is_control() {
            continue; // a transaction marker: not a record for the consumer
        }
        let base = h.base_offset.max(0) as u64;
        if h.is_transactional()
            && aborted.iter().any(|a| {
                a.producer_id == h.producer_id && a.first_offset <= base && base <= a.last_offset
            })
        {
            continue; // a batch of an aborted transaction (read_committed)
        }
        let batch = data.slice(pos..pos + h.total_size());
        match sluice_log::decode_batch(&batch, DEFAULT_DECOMPRESSED_LIMIT) {
            Ok(r) => records.extend(r),
            Err(e) if records.is_empty() => {
                tracing::warn!(topic, partition, base_offset = h.base_offset, last_offset = h.last_offset(), error = %e, "stored batch does not decode");
                return Err(Status::data_loss(format!(
                    "{topic}-{partition}: the stored batch at offsets {}..={} does not decode ({e}); \
                     read on from offset {}",
                    h.base_offset,
                    h.last_offset(),
                    h.next_offset()
                )));
            }
            Err(_) => return Ok((records, h.base_offset as u64)),
        }
    }
    Ok((records, read_next_offset))
}

impl ConsumerService {
    fn max_bytes(&self, requested: u32) -> usize {
        match requested {
            0 => self.default_max_bytes,
            n => (n as usize).min(self.max_bytes_limit),
        }
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::FetchResponse, Status>> + Send>>;

/// What a subscription's reader sends: responses in order, then at most one error.
pub type SubscribeReceiver = tokio::sync::mpsc::Receiver<Result<pb::FetchResponse, Status>>;

impl ConsumerService {
    /// A Fetch: waits (up to `max_wait_ms`) for `min_bytes` committed bytes, then reads.
    pub async fn fetch_response(&self, r: pb::FetchRequest) -> Result<pb::FetchResponse, Status> {
        let p = self.topics.partition(&r.topic, r.partition)?;
        let max_bytes = self.max_bytes(r.max_bytes);
        let deadline = Instant::now() + Duration::from_millis(u64::from(r.max_wait_ms));
        let min_bytes = r.min_bytes.max(1) as usize;
        let level = isolation(r.isolation_level);
        loop {
            let hw = p.high_watermark();
            let info = tokio::task::block_in_place(|| p.read_isolated(r.offset, max_bytes, level))
                .map_err(|e| status::from_partition_error(&e))?;
            let now = Instant::now();
            if info.size as usize >= min_bytes || now >= deadline {
                break;
            }
            // Not enough yet: wait for the HW to move past what we have seen.
            let _parked = sluice_replication::purgatory::Waiting::enter(
                &sluice_replication::purgatory::FETCH,
            );
            p.wait_for_data(hw.max(r.offset), deadline - now).await;
        }
        read_records(
            &p,
            &r.topic,
            r.offset,
            max_bytes,
            level,
            r.format == pb::RecordFormat::Batches as i32,
        )
    }

    /// A Subscribe: validates the request, then starts the reader that feeds the returned
    /// channel until the client goes away.
    pub fn subscribe_channel(&self, r: pb::SubscribeRequest) -> Result<SubscribeReceiver, Status> {
        let p = self.topics.partition(&r.topic, r.partition)?;
        let max_bytes = self.max_bytes(r.max_bytes);
        // Validate the starting offset now so a bad one fails the call, not the stream.
        tokio::task::block_in_place(|| p.read(r.offset, 1))
            .map_err(|e| status::from_partition_error(&e))?;
        // A small channel is the flow control: the reader waits while the client is behind.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let level = isolation(r.isolation_level);
        let batches = r.format == pb::RecordFormat::Batches as i32;
        tokio::spawn(async move {
            let mut offset = r.offset;
            loop {
                let resp = read_records(&p, &r.topic, offset, max_bytes, level, batches);
                match resp {
                    Ok(resp) if resp.next_offset > offset => {
                        offset = resp.next_offset;
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {
                        // Wait for the HW to move past what is known (with READ_COMMITTED the
                        // stable end can sit below it; it only moves when the HW does).
                        let seen = p.high_watermark().max(offset);
                        let _parked = sluice_replication::purgatory::Waiting::enter(
                            &sluice_replication::purgatory::FETCH,
                        );
                        tokio::select! {
                            _ = p.wait_for_data(seen, Duration::from_secs(30)) => {}
                            _ = tx.closed() => return,
                        }
                    }
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// The generated service. The listener serves Fetch and Subscribe through
/// `framed_fetch::FramedConsumer` (same logic, no copy of the batches) and only ListOffsets
/// through this; Fetch and Subscribe here serve anyone who mounts the generated server directly.
#[tonic::async_trait]
impl Consumer for ConsumerService {
    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        Ok(Response::new(self.fetch_response(req.into_inner()).await?))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let rx = self.subscribe_channel(req.into_inner())?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_offsets(
        &self,
        req: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let r = req.into_inner();
        let p = self.topics.partition(&r.topic, r.partition)?;
        let query = match pb::OffsetSpec::try_from(r.spec) {
            Ok(pb::OffsetSpec::Earliest) => OffsetQuery::Earliest,
            Ok(pb::OffsetSpec::Latest) => OffsetQuery::Latest,
            Ok(pb::OffsetSpec::Timestamp) => OffsetQuery::Timestamp(r.timestamp_ms),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown offset spec {}",
                    r.spec
                )))
            }
        };
        let (offset, timestamp_ms) = match p
            .list_offset(query, isolation(r.isolation_level))
            .map_err(|e| status::from_partition_error(&e))?
        {
            Some((o, ts)) => (Some(o), ts),
            None => (None, -1),
        };
        Ok(Response::new(pb::ListOffsetsResponse {
            offset,
            timestamp_ms,
        }))
    }
}
