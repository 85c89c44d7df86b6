//! Fuzz: structurally valid batches with lying record sections.
//!
//! Each case builds an honest batch (random records, any codec), then lies about it the way a
//! hostile or buggy client could while keeping the frame and CRC valid: a different record count
//! (with a matching `lastOffsetDelta`), records added or cut, bytes of the record section
//! overwritten. The property: the log either refuses the append and stays as it was, or accepts
//! it and every offset it gave out decodes to a record. An accepted batch that a reader cannot
//! decode is the poisoned partition this guards against.
//!
//! `PROPTEST_CASES` sets the number of cases (the suite runs the default 256;
//! `CASES=100000 ./scripts/fuzz-lying-batches.sh` runs a long one).

use bytes::Bytes;
use proptest::prelude::*;
use sluice_log::batch::{self, HEADER_LEN};
use sluice_log::{decode_batches, BatchBuilder, Compression, Log, LogConfig, LogError, Record};

fn codec(i: u8) -> Compression {
    match i % 5 {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        _ => Compression::Zstd,
    }
}

#[derive(Debug, Clone)]
enum Lie {
    /// Claim this many records (lastOffsetDelta follows), whatever the section holds.
    Count(i32),
    /// Overwrite bytes of the (uncompressed form of the) record section.
    Overwrite(Vec<(usize, u8)>),
    /// Drop bytes from the end of the record section.
    Cut(usize),
    /// Append bytes after the last record.
    Extend(Vec<u8>),
}

fn lie_strategy() -> impl Strategy<Value = Lie> {
    prop_oneof![
        prop_oneof![Just(0i32), Just(1_000_000_000), 1i32..40, Just(i32::MAX)].prop_map(Lie::Count),
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..6).prop_map(Lie::Overwrite),
        (1usize..64).prop_map(Lie::Cut),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Lie::Extend),
    ]
}

fn records(n: usize, seed: u64) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: (!seed.wrapping_add(i as u64).is_multiple_of(3))
                .then(|| Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(vec![
                b'a' + (i % 26) as u8;
                (seed as usize + i) % 50
            ])),
            headers: vec![],
        })
        .collect()
}

/// Builds a batch whose record section is `section` (uncompressed) and whose header claims
/// `count` records, compressed with `c`, with a valid CRC.
fn assemble(c: Compression, section: &[u8], count: i32, base_ts: i64) -> Vec<u8> {
    let payload = match c {
        Compression::None => section.to_vec(),
        c => c.compress(section),
    };
    let mut b = vec![0u8; HEADER_LEN + payload.len()];
    b[batch::LENGTH_POS..batch::LENGTH_POS + 4].copy_from_slice(
        &((HEADER_LEN - batch::LOG_OVERHEAD + payload.len()) as i32).to_be_bytes(),
    );
    b[batch::MAGIC_POS] = 2;
    b[batch::ATTRIBUTES_POS..batch::ATTRIBUTES_POS + 2]
        .copy_from_slice(&c.attribute_bits().to_be_bytes());
    b[batch::LAST_OFFSET_DELTA_POS..batch::LAST_OFFSET_DELTA_POS + 4]
        .copy_from_slice(&count.wrapping_sub(1).to_be_bytes());
    b[batch::BASE_TIMESTAMP_POS..batch::BASE_TIMESTAMP_POS + 8]
        .copy_from_slice(&base_ts.to_be_bytes());
    b[batch::MAX_TIMESTAMP_POS..batch::MAX_TIMESTAMP_POS + 8]
        .copy_from_slice(&base_ts.to_be_bytes());
    b[batch::PRODUCER_ID_POS..batch::PRODUCER_ID_POS + 8].copy_from_slice(&(-1i64).to_be_bytes());
    b[batch::PRODUCER_EPOCH_POS..batch::PRODUCER_EPOCH_POS + 2]
        .copy_from_slice(&(-1i16).to_be_bytes());
    b[batch::BASE_SEQUENCE_POS..batch::BASE_SEQUENCE_POS + 4]
        .copy_from_slice(&(-1i32).to_be_bytes());
    b[batch::RECORDS_COUNT_POS..batch::RECORDS_COUNT_POS + 4].copy_from_slice(&count.to_be_bytes());
    b[HEADER_LEN..].copy_from_slice(&payload);
    let crc = batch::compute_crc(&b);
    b[batch::CRC_POS..batch::CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

proptest! {
    #[test]
    fn a_lying_batch_is_refused_or_fully_readable(
        n in 1usize..12,
        seed in any::<u64>(),
        c in any::<u8>(),
        compacted in any::<bool>(),
        lie in lie_strategy(),
    ) {
        let codec = codec(c);
        let mut b = BatchBuilder::new(Compression::None);
        for r in records(n, seed) {
            b.push(&r);
        }
        let honest = b.build().unwrap();
        let mut section = honest[HEADER_LEN..].to_vec();
        let mut count = n as i32;
        match &lie {
            Lie::Count(k) => count = *k,
            Lie::Overwrite(edits) => {
                for (at, v) in edits {
                    let i = at % section.len();
                    section[i] = *v;
                }
            }
            Lie::Cut(k) => section.truncate(section.len().saturating_sub(*k)),
            Lie::Extend(extra) => section.extend_from_slice(extra),
        }
        let data = assemble(codec, &section, count, 1_700_000_000_000);

        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            cleanup_compact: compacted,
            message_timestamp_after_max_ms: i64::MAX,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path().join("t-0"), config).unwrap();
        match log.append_as_leader(&data, 0) {
            Err(e) => {
                prop_assert!(matches!(
                    e,
                    LogError::InvalidBatch { .. }
                        | LogError::InvalidRecords { .. }
                        | LogError::RecordsRejected { .. }
                        | LogError::BatchTooLarge { .. }
                ), "unexpected error {e}");
                prop_assert_eq!(log.log_end_offset(), 0, "a refused append moved the log");
            }
            Ok(info) => {
                let leo = log.log_end_offset();
                prop_assert_eq!(leo, info.last_offset + 1);
                let (bytes, _) = log.read_bytes(0, 1 << 24, None).unwrap();
                let decoded = decode_batches(&bytes, 1 << 24);
                prop_assert!(decoded.is_ok(), "accepted but unreadable: {:?}", decoded.err());
                let recs = decoded.unwrap();
                let offsets: Vec<u64> = recs.iter().map(|r| r.offset).collect();
                let expected: Vec<u64> = (0..leo).collect();
                prop_assert_eq!(offsets, expected, "every offset given out holds one record");
                if compacted {
                    prop_assert!(recs.iter().all(|r| r.key.is_some()));
                }
            }
        }
    }
}
