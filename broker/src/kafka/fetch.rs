//! Fetch: long poll (`max_wait_ms`/`min_bytes`), `max_bytes` and per-partition `partition_max_bytes`,
//! committed data only: below the high watermark, or for `isolation_level=read_committed` below
//! the last stable offset, with the aborted transactions in the returned range listed so the
//! client drops their records (Kafka's rule). Record bytes are sent with `sendfile` (see
//! [`super::zero_copy`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::ProducerId;
use kafka_protocol::ResponseError;
use sluice_log::{FileRegion, LogError};
use sluice_replication::{Isolation, Partition, PartitionError};

use super::metadata::topic_error_code;
use super::zero_copy;
use super::{err, frame::encode_response, Ctx, Reply};

struct Wanted {
    topic: usize,
    partition_index: i32,
    offset: i64,
    max_bytes: usize,
    partition: Result<Arc<Partition>, i16>,
}

struct Got {
    error_code: i16,
    regions: Vec<FileRegion>,
    size: u64,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    /// read_committed: (producer id, first offset) of aborted transactions in the range read.
    aborted: Vec<(i64, i64)>,
}

/// Reads one partition of a fetch within `budget` (what the response's `max_bytes` has left) and
/// the partition's own `partition_max_bytes`. `min_one`: Kafka's KIP-74 exception — the first
/// partition with data returns its first batch whole even if larger than both limits, so a
/// consumer always progresses; every later partition returns only what fits.
fn read_one(w: &Wanted, budget: usize, isolation: Isolation, min_one: bool) -> Got {
    let empty = |error_code, hw: i64, start: i64| Got {
        error_code,
        regions: Vec::new(),
        size: 0,
        high_watermark: hw,
        last_stable_offset: hw,
        log_start_offset: start,
        aborted: Vec::new(),
    };
    let p = match &w.partition {
        Ok(p) => p,
        Err(code) => return empty(*code, -1, -1),
    };
    let hw = p.high_watermark() as i64;
    let start = p.log().log_start_offset() as i64;
    let Ok(offset) = u64::try_from(w.offset) else {
        return empty(err(ResponseError::OffsetOutOfRange), hw, start);
    };
    if budget == 0 {
        return empty(0, hw, start);
    }
    let lso = p.last_stable_offset() as i64;
    let limit = w.max_bytes.min(budget);
    match p.read_isolated(offset, limit, isolation) {
        // The log returns a first batch larger than the limit alone: only the first partition
        // with data may take it.
        Ok(info) if !min_one && info.size as usize > limit => empty(0, hw, start),
        Ok(info) => Got {
            error_code: 0,
            size: info.size,
            aborted: if isolation == Isolation::ReadCommitted && info.size > 0 {
                p.aborted_transactions(offset, info.next_offset)
                    .iter()
                    .map(|a| (a.producer_id, a.first_offset as i64))
                    .collect()
            } else {
                Vec::new()
            },
            regions: info.regions,
            high_watermark: info.high_watermark as i64,
            last_stable_offset: lso.min(info.high_watermark as i64),
            log_start_offset: info.log_start_offset as i64,
        },
        Err(PartitionError::Log(LogError::OffsetOutOfRange { .. })) => {
            empty(err(ResponseError::OffsetOutOfRange), hw, start)
        }
        Err(PartitionError::Log(LogError::Deleted)) => {
            empty(err(ResponseError::UnknownTopicOrPartition), hw, start)
        }
        Err(e) => {
            tracing::error!(topic = p.topic(), partition = p.index(), error = %e, "fetch read failed");
            empty(err(ResponseError::KafkaStorageError), hw, start)
        }
    }
}

pub async fn fetch(ctx: &Ctx, corr: i32, version: i16, req: FetchRequest) -> Result<Reply, String> {
    let max_bytes = match req.max_bytes {
        n if n > 0 => (n as usize).min(ctx.config.max_request_bytes),
        _ => ctx.config.max_request_bytes,
    };
    let min_bytes = req.min_bytes.max(0) as u64;
    let isolation = Isolation::from_kafka(req.isolation_level);
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let mut wanted = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        // v13+ names topics by ID only.
        let name = if version >= 13 {
            ctx.topics
                .get_by_id(t.topic_id)
                .map(|topic| topic.name.clone())
        } else {
            Some(t.topic.0.to_string())
        };
        for p in &t.partitions {
            let partition = match &name {
                None => Err(err(ResponseError::UnknownTopicId)),
                Some(name) => u32::try_from(p.partition)
                    .map_err(|_| err(ResponseError::UnknownTopicOrPartition))
                    .and_then(|i| {
                        ctx.topics
                            .partition(name, i)
                            .and_then(|p| p.check_leader().map(|_| p).map_err(Into::into))
                            .map_err(|e| topic_error_code(&e))
                            .and_then(|part| {
                                match super::metadata::epoch_error(p.current_leader_epoch, &part) {
                                    Some(code) => Err(code),
                                    None => Ok(part),
                                }
                            })
                    }),
            };
            wanted.push(Wanted {
                topic: ti,
                partition_index: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                partition,
            });
        }
    }
    let got = loop {
        let mut budget = max_bytes;
        let mut min_one = true;
        let got: Vec<Got> = tokio::task::block_in_place(|| {
            wanted
                .iter()
                .map(|w| {
                    let g = read_one(w, budget, isolation, min_one);
                    budget = budget.saturating_sub(g.size as usize);
                    min_one &= g.size == 0;
                    g
                })
                .collect()
        });
        let total: u64 = got.iter().map(|g| g.size).sum();
        let now = Instant::now();
        if total >= min_bytes.max(1) || now >= deadline || got.iter().any(|g| g.error_code != 0) {
            break got;
        }
        // Wait until any partition's high watermark moves past what we just saw.
        let waits: Vec<_> = wanted
            .iter()
            .zip(&got)
            .filter_map(|(w, g)| {
                w.partition
                    .as_ref()
                    .ok()
                    .map(|p| (p.clone(), g.high_watermark.max(0) as u64))
            })
            .map(|(p, hw)| Box::pin(async move { p.wait_for_data(hw, deadline - now).await }))
            .collect();
        let _parked =
            sluice_replication::purgatory::Waiting::enter(&sluice_replication::purgatory::FETCH);
        if waits.is_empty() {
            tokio::time::sleep(deadline - now).await;
        } else {
            futures::future::select_all(waits).await;
        }
    };

    let nonce = zero_copy::next_nonce();
    let mut parts = Vec::new();
    let mut topics: Vec<FetchableTopicResponse> = req
        .topics
        .iter()
        .map(|t| {
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
        })
        .collect();
    for (w, g) in wanted.iter().zip(got) {
        let mut pd = PartitionData::default()
            .with_partition_index(w.partition_index)
            .with_error_code(g.error_code)
            .with_high_watermark(g.high_watermark)
            .with_last_stable_offset(g.last_stable_offset)
            .with_aborted_transactions(Some(
                g.aborted
                    .iter()
                    .map(|(pid, first)| {
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(*pid))
                            .with_first_offset(*first)
                    })
                    .collect(),
            ));
        if version >= 5 {
            pd = pd.with_log_start_offset(g.log_start_offset);
        }
        pd = if g.regions.is_empty() {
            pd.with_records(Some(bytes::Bytes::new()))
        } else {
            let m = zero_copy::marker(nonce, parts.len() as u32);
            parts.push(g.regions);
            pd.with_records(Some(m))
        };
        topics[w.topic].partitions.push(pd);
    }
    let resp = FetchResponse::default().with_responses(topics);
    let encoded = encode_response(corr, version, &resp)?;
    if parts.is_empty() {
        return Ok(Reply::Frame(encoded));
    }
    zero_copy::splice(encoded, nonce, parts, version >= 12).map(Reply::Chunks)
}
