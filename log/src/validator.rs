//! Record-level validation of batches a producer sent: Kafka's `LogValidator`.
//!
//! [`crate::batch::validate`] checks what the header says (framing, magic, CRC, count against
//! `lastOffsetDelta`). A CRC only proves the bytes arrived as the client wrote them, not that they
//! are records: a batch whose header claims a billion records but holds one, or whose record
//! section is garbage under a correct CRC, would move the log end offset by the claim and leave
//! every consumer unable to read past it. So before a batch is appended its records are walked,
//! as Kafka does (decompressing a compressed batch, bounded), and the batch is refused unless:
//!
//! - it holds exactly `records count` records, each exactly as long as its length prefix says,
//!   with offset deltas 0, 1, 2, … and nothing after the last record (INVALID_RECORD otherwise);
//! - it is not a control batch (clients may not write transaction markers);
//! - on a compacted topic every record has a key (INVALID_RECORD, per record, KIP-467);
//! - with `message.timestamp.type=CreateTime`, every record's timestamp lies within
//!   `message.timestamp.before.max.ms` before and `message.timestamp.after.max.ms` after the
//!   broker's clock (INVALID_TIMESTAMP, per record).
//!
//! The walk over an uncompressed batch reads varints of bytes that the CRC pass has just brought
//! into cache; it allocates nothing. The batch's `maxTimestamp` is checked against its records'
//! timestamps and corrected (Kafka rewrites it too) so a lying header cannot pin a segment past
//! retention.

use crate::batch::{BatchHeader, TimestampType, HEADER_LEN};
use crate::compression::Compression;
use crate::error::{BatchError, RecordError};

/// What record validation needs to know about the partition and the moment.
#[derive(Debug, Clone, Copy)]
pub struct RecordRules {
    /// `cleanup.policy` includes `compact`: every record needs a key.
    pub compacted: bool,
    /// `message.timestamp.type`: timestamps are checked only for CreateTime.
    pub timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms`: how far in the past a timestamp may be.
    pub before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far in the future a timestamp may be.
    pub after_max_ms: i64,
    /// The broker's clock.
    pub now_ms: i64,
    /// Cap on a compressed batch's decompressed record section.
    pub decompressed_limit: usize,
}

/// Why a batch's records were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsRejected {
    /// The record section does not hold the records the header describes (Kafka's
    /// InvalidRecordException: INVALID_RECORD).
    Invalid(BatchError),
    /// Some records break a rule of the topic; the list names them by index in the batch.
    Records {
        timestamp: bool,
        errors: Vec<RecordError>,
    },
}

/// What a valid batch's records showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordsSummary {
    /// The largest record timestamp (for CreateTime; -1 when every record has none).
    pub max_timestamp: i64,
}

/// Walks every record of one complete, CRC-checked batch and applies `rules`.
pub fn validate_records(
    batch: &[u8],
    header: &BatchHeader,
    rules: &RecordRules,
) -> Result<RecordsSummary, RecordsRejected> {
    let invalid = |e| RecordsRejected::Invalid(e);
    if header.is_control() {
        return Err(invalid(BatchError::CorruptRecord(
            "clients are not allowed to write control records",
        )));
    }
    let section = &batch[HEADER_LEN..header.total_size()];
    let decompressed;
    let data: &[u8] = match header.compression().map_err(invalid)? {
        Compression::None => section,
        c => {
            decompressed = c
                .decompress(section, rules.decompressed_limit)
                .map_err(invalid)?;
            &decompressed
        }
    };
    let check_time = rules.timestamp_type == TimestampType::CreateTime
        && header.timestamp_type() == TimestampType::CreateTime;
    // The hot loop only walks the structure and gathers what the rules need (the timestamp
    // range, whether any key is missing); naming the offending records is the rare slow path.
    let mut min_delta = i64::MAX;
    let mut max_delta = i64::MIN;
    let mut keyless = false;
    let mut pos = 0usize;
    for index in 0..header.record_count {
        if pos >= data.len() {
            return Err(invalid(BatchError::CorruptRecord(
                "the batch holds fewer records than its header's count",
            )));
        }
        let r = walk_record(data, &mut pos).map_err(invalid)?;
        if r.offset_delta != index {
            return Err(invalid(BatchError::CorruptRecord(
                "record offset deltas are not 0, 1, 2, ... in order",
            )));
        }
        keyless |= !r.has_key;
        min_delta = min_delta.min(r.timestamp_delta);
        max_delta = max_delta.max(r.timestamp_delta);
    }
    if pos != data.len() {
        return Err(invalid(BatchError::CorruptRecord(
            "the batch holds more record bytes than its header's count of records",
        )));
    }
    let base = header.base_timestamp;
    let max_timestamp = base.wrapping_add(max_delta);
    let (lo, hi) = (base.wrapping_add(min_delta), max_timestamp);
    let time_ok = !check_time || (lo >= 0 && in_window(lo, rules) && in_window(hi, rules));
    if (rules.compacted && keyless) || !time_ok {
        if let Some(refused) = name_refused_records(data, header, rules, check_time) {
            return Err(refused);
        }
    }
    Ok(RecordsSummary { max_timestamp })
}

fn in_window(ts: i64, rules: &RecordRules) -> bool {
    rules.now_ms.saturating_sub(ts) <= rules.before_max_ms
        && ts.saturating_sub(rules.now_ms) <= rules.after_max_ms
}

/// The slow path of [`validate_records`]: walks the (already validated) records again and names
/// every one a rule refuses; `None` when none is. Records without a timestamp (negative) are not
/// checked, as in Kafka.
fn name_refused_records(
    data: &[u8],
    header: &BatchHeader,
    rules: &RecordRules,
    check_time: bool,
) -> Option<RecordsRejected> {
    let mut errors = Vec::new();
    let mut timestamp = false;
    let mut pos = 0usize;
    for index in 0..header.record_count {
        let Ok(r) = walk_record(data, &mut pos) else {
            break;
        };
        if rules.compacted && !r.has_key {
            errors.push(RecordError {
                batch_index: index,
                message: "compacted topic cannot accept a record without a key".into(),
            });
        }
        let ts = header.base_timestamp.wrapping_add(r.timestamp_delta);
        if check_time && ts >= 0 && !in_window(ts, rules) {
            timestamp = true;
            errors.push(RecordError {
                batch_index: index,
                message: format!(
                    "timestamp {ts} of record {index} is out of range: it must be within \
                     [{}, {}] (message.timestamp.before.max.ms={}, after.max.ms={})",
                    rules.now_ms.saturating_sub(rules.before_max_ms),
                    rules.now_ms.saturating_add(rules.after_max_ms),
                    rules.before_max_ms,
                    rules.after_max_ms
                ),
            });
        }
    }
    // Empty when only records without a timestamp fell outside the fast path's range.
    (!errors.is_empty()).then_some(RecordsRejected::Records { timestamp, errors })
}

/// The fields of one record validation looks at.
struct RecordFields {
    timestamp_delta: i64,
    offset_delta: i32,
    has_key: bool,
}

/// Reads one record starting at `*pos` (its length varint) and moves `*pos` past it. The record
/// must consume exactly the bytes its length prefix claims.
#[inline(always)]
fn walk_record(data: &[u8], pos: &mut usize) -> Result<RecordFields, BatchError> {
    let len = varint(data, pos)?;
    if len < 0 {
        return Err(BatchError::CorruptRecord("negative record length"));
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|&e| e <= data.len())
        .ok_or(BatchError::CorruptRecord(
            "a record's length runs past the end of the batch",
        ))?;
    let body = &data[..end];
    let mut p = *pos;
    if p >= end {
        return Err(BatchError::CorruptRecord("empty record"));
    }
    p += 1; // attributes: unused in v2
    let timestamp_delta = varlong(body, &mut p)?;
    let offset_delta = varint(body, &mut p)?;
    let key_len = varint(body, &mut p)?;
    skip_nullable(body, &mut p, key_len)?;
    let value_len = varint(body, &mut p)?;
    skip_nullable(body, &mut p, value_len)?;
    let headers = varint(body, &mut p)?;
    if headers < 0 {
        return Err(BatchError::CorruptRecord("negative record header count"));
    }
    for _ in 0..headers {
        let k = varint(body, &mut p)?;
        if k < 0 {
            return Err(BatchError::CorruptRecord("null record header key"));
        }
        skip_nullable(body, &mut p, k)?;
        let v = varint(body, &mut p)?;
        skip_nullable(body, &mut p, v)?;
    }
    if p != end {
        return Err(BatchError::CorruptRecord(
            "a record's fields do not fill its declared length",
        ));
    }
    *pos = end;
    Ok(RecordFields {
        timestamp_delta,
        offset_delta,
        has_key: key_len >= 0,
    })
}

#[inline(always)]
fn skip_nullable(body: &[u8], p: &mut usize, len: i32) -> Result<(), BatchError> {
    if len < -1 {
        return Err(BatchError::CorruptRecord("invalid field length"));
    }
    if len > 0 {
        *p = p
            .checked_add(len as usize)
            .filter(|&e| e <= body.len())
            .ok_or(BatchError::CorruptRecord("a field runs past its record"))?;
    }
    Ok(())
}

/// Zig-zag varlong. One- and two-byte values (most lengths, deltas and counts) take a branch or
/// two; longer ones the general loop.
#[inline(always)]
pub(crate) fn varlong(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let p = *pos;
    if let Some(&b0) = buf.get(p) {
        if b0 < 0x80 {
            *pos = p + 1;
            return Ok(unzigzag(u64::from(b0)));
        }
        if let Some(&b1) = buf.get(p + 1) {
            if b1 < 0x80 {
                *pos = p + 2;
                return Ok(unzigzag(u64::from(b0 & 0x7f) | (u64::from(b1) << 7)));
            }
        }
    }
    varlong_slow(buf, pos)
}

#[inline(always)]
fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

#[cold]
fn varlong_slow(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let mut z: u64 = 0;
    for i in 0..10 {
        let b = *buf
            .get(*pos)
            .ok_or(BatchError::CorruptRecord("truncated varint"))?;
        *pos += 1;
        z |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(unzigzag(z));
        }
    }
    Err(BatchError::CorruptRecord("varint longer than 10 bytes"))
}

#[inline(always)]
fn varint(buf: &[u8], pos: &mut usize) -> Result<i32, BatchError> {
    i32::try_from(varlong(buf, pos)?).map_err(|_| BatchError::CorruptRecord("varint overflows i32"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch;
    use crate::record::{BatchBuilder, Record};
    use bytes::Bytes;

    const NOW: i64 = 1_700_000_000_000;

    fn rules() -> RecordRules {
        RecordRules {
            compacted: false,
            timestamp_type: TimestampType::CreateTime,
            before_max_ms: i64::MAX,
            after_max_ms: 3_600_000,
            now_ms: NOW,
            decompressed_limit: 1 << 20,
        }
    }

    fn build(c: Compression, keys: &[Option<&str>], ts: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new(c);
        for (i, k) in keys.iter().enumerate() {
            b.push(&Record {
                timestamp: ts + i as i64,
                key: k.map(|k| Bytes::from(k.to_string())),
                value: Some(Bytes::from(vec![b'v'; 20])),
                headers: vec![],
            });
        }
        b.build().unwrap().to_vec()
    }

    fn check(b: &[u8], r: &RecordRules) -> Result<RecordsSummary, RecordsRejected> {
        let h = batch::validate(b, true).unwrap();
        validate_records(b, &h, r)
    }

    /// Sets a header field and recomputes the CRC, as a lying client would.
    fn lie(b: &mut [u8], pos: usize, v: &[u8]) {
        b[pos..pos + v.len()].copy_from_slice(v);
        batch::refresh_crc(b);
    }

    #[test]
    fn honest_batches_pass_with_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = build(c, &[Some("a"), None, Some("c")], NOW);
            assert_eq!(check(&b, &rules()).unwrap().max_timestamp, NOW + 2, "{c:?}");
        }
    }

    #[test]
    fn a_count_larger_than_the_records_is_refused() {
        let mut b = build(Compression::None, &[Some("a")], NOW);
        lie(
            &mut b,
            batch::RECORDS_COUNT_POS,
            &1_000_000_000i32.to_be_bytes(),
        );
        lie(
            &mut b,
            batch::LAST_OFFSET_DELTA_POS,
            &999_999_999i32.to_be_bytes(),
        );
        assert!(matches!(
            check(&b, &rules()),
            Err(RecordsRejected::Invalid(_))
        ));
    }

    #[test]
    fn more_records_than_the_count_is_refused() {
        for c in [Compression::None, Compression::Zstd] {
            let mut b = build(c, &[Some("a"), Some("b"), Some("c")], NOW);
            lie(&mut b, batch::RECORDS_COUNT_POS, &1i32.to_be_bytes());
            lie(&mut b, batch::LAST_OFFSET_DELTA_POS, &0i32.to_be_bytes());
            assert!(
                matches!(check(&b, &rules()), Err(RecordsRejected::Invalid(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn garbage_under_a_valid_crc_is_refused() {
        let mut b = build(Compression::None, &[Some("a"), Some("b")], NOW);
        let end = b.len();
        for x in &mut b[HEADER_LEN..end] {
            *x = 0xee;
        }
        lie(&mut b, batch::ATTRIBUTES_POS, &0i16.to_be_bytes());
        assert!(matches!(
            check(&b, &rules()),
            Err(RecordsRejected::Invalid(_))
        ));
    }

    #[test]
    fn control_batches_from_clients_are_refused() {
        let mut b = build(Compression::None, &[Some("a")], NOW);
        lie(&mut b, batch::ATTRIBUTES_POS, &0x20i16.to_be_bytes());
        assert!(matches!(
            check(&b, &rules()),
            Err(RecordsRejected::Invalid(_))
        ));
    }

    #[test]
    fn keyless_records_on_a_compacted_topic_are_named() {
        let b = build(Compression::Lz4, &[Some("a"), None, Some("c"), None], NOW);
        let r = RecordRules {
            compacted: true,
            ..rules()
        };
        match check(&b, &r) {
            Err(RecordsRejected::Records { timestamp, errors }) => {
                assert!(!timestamp);
                let idx: Vec<i32> = errors.iter().map(|e| e.batch_index).collect();
                assert_eq!(idx, vec![1, 3]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_outside_the_window_are_named() {
        let future = build(Compression::None, &[Some("a")], NOW + 7_200_000);
        assert!(matches!(
            check(&future, &rules()),
            Err(RecordsRejected::Records {
                timestamp: true,
                ..
            })
        ));
        let old = build(Compression::None, &[Some("a")], NOW - 10_000);
        let strict = RecordRules {
            before_max_ms: 5_000,
            ..rules()
        };
        assert!(check(&old, &rules()).is_ok());
        assert!(matches!(
            check(&old, &strict),
            Err(RecordsRejected::Records {
                timestamp: true,
                ..
            })
        ));
        // LogAppendTime topics overwrite timestamps: nothing to check.
        let lat = RecordRules {
            timestamp_type: TimestampType::LogAppendTime,
            ..rules()
        };
        assert!(check(&future, &lat).is_ok());
    }

    #[test]
    fn records_without_a_timestamp_are_not_checked() {
        let b = build(Compression::None, &[Some("a"), Some("b")], -1);
        assert!(check(&b, &rules()).is_ok());
    }

    #[test]
    fn every_single_byte_mangling_is_caught_or_harmless() {
        // Whatever one byte of the record section becomes, the validator either refuses the batch
        // or the batch decodes to exactly its declared records: never accept-then-fail-to-read.
        let good = build(Compression::None, &[Some("k1"), None, Some("key3")], NOW);
        for i in HEADER_LEN..good.len() {
            for x in [0x00u8, 0x01, 0x7f, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] = x;
                batch::refresh_crc(&mut m);
                if check(&m, &rules()).is_ok() {
                    let recs = crate::record::decode_batch(&Bytes::from(m), 1 << 20)
                        .unwrap_or_else(|e| panic!("byte {i}={x:#x} accepted but: {e}"));
                    assert_eq!(recs.len(), 3);
                }
            }
        }
    }
}
