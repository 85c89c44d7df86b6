//! The gRPC fetch path's per-response work, both forms of `sluice.v1.FetchResponse`:
//!
//! - `records` (typed): the broker decodes the stored batches into `ConsumedRecord`s and
//!   protobuf-encodes them; the client protobuf-decodes them.
//! - `batches` (`RECORD_FORMAT_BATCHES`): the broker protobuf-encodes the stored bytes as one
//!   `bytes` field; the client decodes the message and then parses the batches itself.
//!
//! Shape: 4 MiB of stored batches (the bench consumer's `max_bytes`) of 1000 records each, values
//! of 1000 and 100 bytes, no keys, uncompressed. Throughput is stored bytes per second.
//! Run: `cargo bench -p sluice-benches --bench grpc_fetch_encoding`

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use sluice_log::{decode_batches, BatchBuilder, Compression, Record};
use sluice_proto::v1 as pb;

const LIMIT: usize = 64 << 20;

/// About 4 MiB of stored batches of 1000 records of `value_size` bytes, offsets from 0.
fn stored(value_size: usize) -> Bytes {
    let mut out = BytesMut::new();
    let mut offset = 0i64;
    while out.len() < 4 << 20 {
        let mut b = BatchBuilder::new(Compression::None);
        for i in 0..1000usize {
            b.push(&Record {
                timestamp: 1_700_000_000_000 + i as i64,
                key: None,
                value: Some(Bytes::from(vec![(i % 251) as u8; value_size])),
                headers: Vec::new(),
            });
        }
        let mut batch = b.build().expect("non-empty batch");
        batch[..8].copy_from_slice(&offset.to_be_bytes());
        offset += 1000;
        out.extend_from_slice(&batch);
    }
    out.freeze()
}

fn typed(data: &Bytes) -> pb::FetchResponse {
    let records = decode_batches(data, LIMIT)
        .expect("decodes")
        .into_iter()
        .map(|r| pb::ConsumedRecord {
            offset: r.offset,
            timestamp_ms: r.timestamp,
            key: r.key,
            value: r.value,
            headers: Vec::new(),
        })
        .collect();
    pb::FetchResponse {
        topic: "perf".into(),
        records,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    for value_size in [1000usize, 100] {
        let data = stored(value_size);
        let mut g = c.benchmark_group(format!("grpc_fetch_{value_size}B"));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function("broker_encode_records", |b| {
            b.iter(|| typed(&data).encode_to_vec())
        });
        g.bench_function("broker_encode_batches", |b| {
            b.iter(|| {
                pb::FetchResponse {
                    topic: "perf".into(),
                    record_batches: data.clone(),
                    ..Default::default()
                }
                .encode_to_vec()
            })
        });
        let wire_records = Bytes::from(typed(&data).encode_to_vec());
        let wire_batches = Bytes::from(
            pb::FetchResponse {
                topic: "perf".into(),
                record_batches: data.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        g.bench_function("client_decode_records", |b| {
            b.iter(|| {
                pb::FetchResponse::decode(wire_records.clone())
                    .expect("decodes")
                    .records
                    .len()
            })
        });
        g.bench_function("client_decode_batches", |b| {
            b.iter(|| {
                let resp = pb::FetchResponse::decode(wire_batches.clone()).expect("decodes");
                decode_batches(&resp.record_batches, LIMIT)
                    .expect("decodes")
                    .len()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
