//! Storage-engine throughput: append (no fsync; fdatasync per 1 MiB) and sequential read.
//!
//! Shape: 1 KiB records, 100 records per batch (~100 KiB batches), one partition log.
//! Run: `cargo bench -p sluice-benches --bench log_append_read`
//! Data goes to a temp dir under `SLUICE_BENCH_DIR` (default: the system temp dir); put it on the
//! disk you want to measure.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_log::{BatchBuilder, Compression, Log, LogConfig, Record};

const RECORD_SIZE: usize = 1024;
const RECORDS_PER_BATCH: usize = 100;

fn make_batch() -> BytesMut {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..RECORDS_PER_BATCH {
        let value: Vec<u8> = (0..RECORD_SIZE)
            .map(|j| ((i * 31 + j) % 251) as u8)
            .collect();
        b.push(&Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
        });
    }
    b.build().expect("non-empty batch")
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("SLUICE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("bench dir"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 20,
        ..LogConfig::default()
    }
}

/// Appends `iters` batches to a fresh log; `fsync_every` batches, fdatasync.
fn timed_appends(iters: u64, fsync_every: Option<u64>) -> Duration {
    let dir = bench_dir();
    let log = Log::open(dir.path().join("p-0"), config()).expect("open log");
    let batch = make_batch();
    let start = Instant::now();
    for i in 0..iters {
        // The log rewrites baseOffset in place on every append, so one buffer serves.
        log.append_as_leader(&batch, 0).expect("append");
        if let Some(n) = fsync_every {
            if (i + 1) % n == 0 {
                log.flush().expect("flush");
            }
        }
    }
    if fsync_every.is_some() {
        log.flush().expect("flush");
    }
    let elapsed = start.elapsed();
    drop(log);
    elapsed
}

fn append(c: &mut Criterion) {
    let batch_len = make_batch().len() as u64;
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Bytes(batch_len));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("1KiB_x100_no_fsync", |b| {
        b.iter_custom(|iters| timed_appends(iters, None))
    });
    // ~1 MiB of batches between fdatasyncs.
    let per_mib = ((1u64 << 20) / batch_len).max(1);
    g.bench_function("1KiB_x100_fdatasync_per_MiB", |b| {
        b.iter_custom(|iters| timed_appends(iters, Some(per_mib)))
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let dir = bench_dir();
    let log = Log::open(dir.path().join("p-0"), config()).expect("open log");
    let batch = make_batch();
    let total_batches = (512u64 << 20) / batch.len() as u64;
    for _ in 0..total_batches {
        log.append_as_leader(&batch, 0).expect("append");
    }
    let leo = log.log_end_offset();
    let mut g = c.benchmark_group("read");
    const MAX_BYTES: usize = 1 << 20;
    // Each iteration reads up to 1 MiB of whole batches; the throughput figure counts 1 MiB.
    g.throughput(Throughput::Bytes(
        (MAX_BYTES / batch.len() * batch.len()) as u64,
    ));
    g.sample_size(30);
    let mut offset = 0u64;
    g.bench_function("sequential_1MiB_into_memory", |b| {
        b.iter(|| {
            let (data, info) = log.read_bytes(offset, MAX_BYTES, None).expect("read");
            offset = if info.next_offset >= leo {
                0
            } else {
                info.next_offset
            };
            data.len()
        })
    });
    let mut offset = 0u64;
    g.bench_function("sequential_1MiB_regions_only", |b| {
        b.iter(|| {
            let info = log.read(offset, MAX_BYTES, None).expect("read");
            offset = if info.next_offset >= leo {
                0
            } else {
                info.next_offset
            };
            info.size
        })
    });
    g.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
