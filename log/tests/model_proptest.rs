//! Random appends, reads, rolls, truncations, retention and restarts (clean and crash) against a
//! simple in-memory model: every read must equal the model.

mod common;

use common::*;
use proptest::prelude::*;
use sluice_log::{Compression, Log, LogConfig};

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, codec: u8 },
    Read { at: f64, max_bytes: usize },
    Truncate { at: f64 },
    Retention { keep_bytes: u64 },
    Restart { clean: bool },
    TimeLookup { at: f64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..20, 0u8..5).prop_map(|(records, codec)| Op::Append { records, codec }),
        4 => (0.0f64..1.0, 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        1 => (0u64..6000).prop_map(|keep_bytes| Op::Retention { keep_bytes }),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
        1 => (0.0f64..1.0).prop_map(|at| Op::TimeLookup { at }),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 128,
        segment_index_bytes: 1024,
        ..LogConfig::default()
    }
}

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap();
        // model[i] = value of offset i; offsets below `start` were deleted by retention.
        let mut model: Vec<String> = Vec::new();
        let mut model_ts: Vec<i64> = Vec::new();
        let mut start = 0u64;
        let mut next_value = 0u64;
        for op in ops {
            match op {
                Op::Append { records, codec } => {
                    let tag = format!("v{next_value}");
                    next_value += 1;
                    // Timestamps increase with offsets, so lookups have one right answer.
                    let ts = TS0 + 100 * model.len() as i64;
                    let b = batch_with(&tag, records, ts, CODECS[codec as usize]);
                    let info = log.append_as_leader(&b, 0).unwrap();
                    prop_assert_eq!(info.first_offset, model.len() as u64);
                    for i in 0..records {
                        model.push(format!("{tag}-{i}"));
                        model_ts.push(ts + i as i64);
                    }
                    log.set_high_watermark(log.log_end_offset());
                }
                Op::Read { at, max_bytes } => {
                    if model.len() as u64 > start {
                        let offset = start + ((model.len() as u64 - start) as f64 * at) as u64;
                        let (data, info) = log.read_bytes(offset, max_bytes, None).unwrap();
                        let recs = sluice_log::decode_batches(&data, 1 << 20).unwrap();
                        prop_assert!(!recs.is_empty());
                        prop_assert!(recs[0].offset <= offset);
                        prop_assert!(recs.iter().any(|r| r.offset == offset));
                        for r in &recs {
                            prop_assert_eq!(&values(std::slice::from_ref(r))[0], &model[r.offset as usize]);
                        }
                        prop_assert_eq!(info.next_offset, recs.last().unwrap().offset + 1);
                    }
                }
                Op::Truncate { at } => {
                    let target = start + ((model.len() as u64 - start) as f64 * at) as u64;
                    log.truncate_to(target).unwrap();
                    // A batch containing `target` goes whole: the log decides where it ends.
                    let leo = log.log_end_offset();
                    prop_assert!(leo <= target.max(start) && leo >= start);
                    model.truncate(leo as usize);
                    model_ts.truncate(leo as usize);
                }
                Op::Retention { keep_bytes } => {
                    let mut c = config();
                    c.retention_bytes = keep_bytes as i64;
                    log.set_config(c);
                    log.delete_old_segments().unwrap();
                    log.set_config(config());
                    prop_assert!(log.log_start_offset() >= start);
                    start = log.log_start_offset();
                    prop_assert!(start <= model.len() as u64);
                }
                Op::Restart { clean } => {
                    if clean {
                        log.close().unwrap();
                    }
                    drop(log);
                    log = Log::open(dir.path(), config()).unwrap();
                }
                Op::TimeLookup { at } => {
                    if model.len() as u64 > start {
                        let want = start + ((model.len() as u64 - start) as f64 * at) as u64;
                        let ts = model_ts[want as usize];
                        let found = log.offset_for_timestamp(ts, None).unwrap();
                        // Timestamps never decrease with offsets, so the first record at or after
                        // `ts` is the first offset holding exactly `ts`.
                        let first = (start..model.len() as u64).find(|&o| model_ts[o as usize] >= ts);
                        prop_assert_eq!(found.map(|f| f.0), first);
                        prop_assert_eq!(found.map(|f| f.1), Some(ts));
                        let past = log.offset_for_timestamp(model_ts.last().unwrap() + 1, None).unwrap();
                        prop_assert_eq!(past, None);
                    }
                }
            }
            prop_assert_eq!(log.log_end_offset(), model.len() as u64);
            prop_assert_eq!(log.log_start_offset(), start);
            let all = read_all(&log, start, 700);
            prop_assert_eq!(all.len() as u64, model.len() as u64 - start);
            for r in &all {
                prop_assert_eq!(&values(std::slice::from_ref(r))[0], &model[r.offset as usize]);
            }
        }
    }
}
