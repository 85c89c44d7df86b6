//! Record validation on produce (`sluice_log::validator`): what walking every record costs.
//!
//! Shape: 1000 uncompressed records per batch, values of 100 and 1000 bytes, no keys; and the same
//! 100-byte batch lz4-compressed (validation decompresses it).
//! Run: `cargo bench -p sluice-benches --bench record_validation`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_log::batch;
use sluice_log::validator::{validate_records, RecordRules};
use sluice_log::{BatchBuilder, Compression, Record, TimestampType};

fn make_batch(value_size: usize, codec: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec);
    for i in 0..1000usize {
        b.push(&Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(vec![(i % 251) as u8; value_size])),
            headers: Vec::new(),
        });
    }
    b.build().expect("non-empty batch").to_vec()
}

fn rules() -> RecordRules {
    RecordRules {
        compacted: false,
        timestamp_type: TimestampType::CreateTime,
        before_max_ms: i64::MAX,
        after_max_ms: 3_600_000,
        now_ms: 1_700_000_000_000,
        decompressed_limit: 64 << 20,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate_records");
    for (name, size, codec) in [
        ("1000x100B", 100, Compression::None),
        ("1000x1000B", 1000, Compression::None),
        ("1000x100B-lz4", 100, Compression::Lz4),
    ] {
        let b = make_batch(size, codec);
        let h = batch::validate(&b, true).expect("valid batch");
        g.throughput(Throughput::Elements(1000));
        g.bench_function(name, |bench| {
            bench.iter(|| validate_records(&b, &h, &rules()).expect("valid records"))
        });
        g.bench_function(format!("{name}-crc-only"), |bench| {
            bench.iter(|| batch::validate(&b, true).expect("valid batch"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
