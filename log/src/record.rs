//! Records inside a RecordBatch v2: the builder that makes batches from (key, value, headers,
//! timestamp), and the decoder that turns stored batches back into records.
//!
//! Record layout (varints are zig-zag, as in protobuf's sint):
//! `length varint, attributes i8, timestampDelta varlong, offsetDelta varint, keyLength varint,
//! key, valueLength varint, value, headerCount varint, [keyLength varint, key, valueLength varint,
//! value]*`. A length of -1 means null.

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::compression::Compression;
use crate::error::BatchError;

/// A record header. Kafka header keys are strings; values may be null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record as a producer writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// A record read back from the log, with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

// ---- varints ------------------------------------------------------------------------------

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_varlong(out, i64::from(v));
}

fn varlong_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn varlong(&mut self) -> Result<i64, BatchError> {
        crate::validator::varlong(self.buf, &mut self.pos)
    }

    fn varint(&mut self) -> Result<i32, BatchError> {
        i32::try_from(self.varlong()?)
            .map_err(|_| BatchError::CorruptRecord("varint overflows i32"))
    }

    fn i8(&mut self) -> Result<i8, BatchError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(BatchError::CorruptRecord("truncated record"))?;
        self.pos += 1;
        Ok(b as i8)
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], BatchError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or(BatchError::CorruptRecord("field runs past the record"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// A length-prefixed nullable byte field.
    fn nullable(&mut self, src: &Bytes) -> Result<Option<Bytes>, BatchError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let start = self.pos;
        self.bytes(len as usize)?;
        Ok(Some(src.slice(start..self.pos)))
    }
}

// ---- building -----------------------------------------------------------------------------

/// Builds one RecordBatch v2 from records, as a non-idempotent, non-transactional producer does.
///
/// The batch is built with baseOffset 0; the log assigns the real offset on append.
pub struct BatchBuilder {
    compression: Compression,
    records: Vec<u8>,
    count: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        BatchBuilder {
            compression,
            records: Vec::new(),
            count: 0,
            base_timestamp: None,
            max_timestamp: -1,
        }
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Uncompressed size of the batch so far, header included.
    pub fn estimated_size(&self) -> usize {
        HEADER_LEN + self.records.len()
    }

    pub fn push(&mut self, record: &Record) {
        self.push_at(record, self.count);
    }

    /// Pushes a record with an explicit offset delta (the cleaner keeps records' original offsets
    /// when it rewrites a batch; deltas must increase).
    pub fn push_at(&mut self, record: &Record, offset_delta: i32) {
        let base_ts = *self.base_timestamp.get_or_insert(record.timestamp);
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        let mut body = Vec::with_capacity(
            16 + record.key.as_ref().map_or(0, |k| k.len())
                + record.value.as_ref().map_or(0, |v| v.len()),
        );
        body.push(0); // record attributes: unused
        put_varlong(&mut body, record.timestamp.wrapping_sub(base_ts));
        put_varint(&mut body, offset_delta);
        put_nullable(&mut body, record.key.as_deref());
        put_nullable(&mut body, record.value.as_deref());
        put_varint(&mut body, record.headers.len() as i32);
        for h in &record.headers {
            put_nullable(&mut body, Some(h.key.as_bytes()));
            put_nullable(&mut body, h.value.as_deref());
        }
        self.records
            .reserve(varlong_len(body.len() as i64) + body.len());
        put_varint(&mut self.records, body.len() as i32);
        self.records.extend_from_slice(&body);
        self.count += 1;
    }

    /// Finishes the batch. Returns `None` when no record was pushed (Kafka has no empty batches).
    pub fn build(self) -> Option<BytesMut> {
        self.build_for_producer(-1, -1, -1)
    }

    /// Finishes the batch as an idempotent producer's: its id, epoch and the sequence number of
    /// the first record (the following records take the next ones). -1s: no producer.
    pub fn build_for_producer(
        self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Option<BytesMut> {
        let template = BatchTemplate {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: self.compression.attribute_bits(),
            last_offset_delta: self.count - 1,
            max_timestamp: None,
            producer_id,
            producer_epoch,
            base_sequence,
        };
        self.build_with(&template)
    }

    /// Finishes the batch with the header fields of `t` (the cleaner rebuilding a batch it
    /// filtered: same base offset, last offset delta, producer fields and attributes).
    pub fn build_with(self, t: &BatchTemplate) -> Option<BytesMut> {
        if self.count == 0 {
            return None;
        }
        let max_timestamp = t.max_timestamp.unwrap_or(self.max_timestamp);
        let payload = match self.compression {
            Compression::None => self.records,
            c => c.compress(&self.records),
        };
        let mut buf = BytesMut::zeroed(HEADER_LEN + payload.len());
        let b = &mut buf[..];
        let put = |b: &mut [u8], pos: usize, v: &[u8]| b[pos..pos + v.len()].copy_from_slice(v);
        put(b, batch::BASE_OFFSET_POS, &t.base_offset.to_be_bytes());
        put(
            b,
            batch::LENGTH_POS,
            &((HEADER_LEN - batch::LOG_OVERHEAD + payload.len()) as i32).to_be_bytes(),
        );
        put(
            b,
            batch::PARTITION_LEADER_EPOCH_POS,
            &t.partition_leader_epoch.to_be_bytes(),
        );
        b[batch::MAGIC_POS] = batch::MAGIC_V2 as u8;
        put(b, batch::ATTRIBUTES_POS, &t.attributes.to_be_bytes());
        put(
            b,
            batch::LAST_OFFSET_DELTA_POS,
            &t.last_offset_delta.to_be_bytes(),
        );
        let base_ts = self.base_timestamp.unwrap_or(-1);
        put(b, batch::BASE_TIMESTAMP_POS, &base_ts.to_be_bytes());
        put(b, batch::MAX_TIMESTAMP_POS, &max_timestamp.to_be_bytes());
        put(b, batch::PRODUCER_ID_POS, &t.producer_id.to_be_bytes());
        put(
            b,
            batch::PRODUCER_EPOCH_POS,
            &t.producer_epoch.to_be_bytes(),
        );
        put(b, batch::BASE_SEQUENCE_POS, &t.base_sequence.to_be_bytes());
        put(b, batch::RECORDS_COUNT_POS, &self.count.to_be_bytes());
        b[HEADER_LEN..].copy_from_slice(&payload);
        let crc = batch::compute_crc(b);
        put(b, batch::CRC_POS, &crc.to_be_bytes());
        Some(buf)
    }
}

/// Header fields of a batch being built; see [`BatchBuilder::build_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTemplate {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    /// `None`: the largest record timestamp.
    pub max_timestamp: Option<i64>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchTemplate {
    /// The fields of an existing batch; `max_timestamp` is kept only for LogAppendTime batches
    /// (their records carry no timestamps of their own).
    pub fn like(h: &BatchHeader) -> BatchTemplate {
        BatchTemplate {
            base_offset: h.base_offset,
            partition_leader_epoch: h.partition_leader_epoch,
            attributes: h.attributes,
            last_offset_delta: h.last_offset_delta,
            max_timestamp: (h.timestamp_type() == crate::batch::TimestampType::LogAppendTime)
                .then_some(h.max_timestamp),
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            base_sequence: h.base_sequence,
        }
    }
}

fn put_nullable(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => put_varint(out, -1),
        Some(v) => {
            put_varint(out, v.len() as i32);
            out.extend_from_slice(v);
        }
    }
}

// ---- decoding -----------------------------------------------------------------------------

/// Default cap on a batch's decompressed record section.
pub const DEFAULT_DECOMPRESSED_LIMIT: usize = 64 << 20;

/// Decodes every record of one complete batch (`batch` starts at its baseOffset field).
///
/// The returned key/value/header slices share the decompressed buffer (or `batch` itself when
/// uncompressed), so no per-record copy is made.
pub fn decode_batch(batch: &Bytes, limit: usize) -> Result<Vec<StoredRecord>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    header.check()?;
    if batch.len() < header.total_size() {
        return Err(BatchError::Truncated {
            needed: header.total_size(),
            available: batch.len(),
        });
    }
    let section = batch.slice(HEADER_LEN..header.total_size());
    let data = match header.compression()? {
        Compression::None => section,
        c => Bytes::from(c.decompress(&section, limit)?),
    };
    let mut cur = Cursor { buf: &data, pos: 0 };
    let count = header.record_count as usize;
    // Each record takes at least 7 bytes; do not trust the header's count for the allocation.
    let mut out = Vec::with_capacity(count.min(data.len() / 7 + 1));
    for _ in 0..count {
        let len = cur.varint()?;
        if len < 0 {
            return Err(BatchError::CorruptRecord("negative record length"));
        }
        let end = cur
            .pos
            .checked_add(len as usize)
            .filter(|&e| e <= data.len())
            .ok_or(BatchError::CorruptRecord("record runs past the batch"))?;
        let mut rec = Cursor {
            buf: &data[..end],
            pos: cur.pos,
        };
        let _attributes = rec.i8()?;
        let ts_delta = rec.varlong()?;
        let offset_delta = rec.varint()?;
        let key = rec.nullable(&data)?;
        let value = rec.nullable(&data)?;
        let header_count = rec.varint()?;
        if header_count < 0 {
            return Err(BatchError::CorruptRecord("negative header count"));
        }
        let mut headers = Vec::with_capacity((header_count as usize).min(len as usize / 2));
        for _ in 0..header_count {
            let klen = rec.varint()?;
            if klen < 0 {
                return Err(BatchError::CorruptRecord("null header key"));
            }
            // Kafka decodes header keys leniently (invalid UTF-8 becomes U+FFFD); so do we, or a
            // batch Kafka accepts would be unreadable here.
            let key = String::from_utf8_lossy(rec.bytes(klen as usize)?).into_owned();
            let value = rec.nullable(&data)?;
            headers.push(Header { key, value });
        }
        cur.pos = end;
        let timestamp = match header.timestamp_type() {
            crate::batch::TimestampType::LogAppendTime => header.max_timestamp,
            crate::batch::TimestampType::CreateTime => header.base_timestamp.wrapping_add(ts_delta),
        };
        out.push(StoredRecord {
            offset: (header.base_offset + i64::from(offset_delta)) as u64,
            timestamp,
            key,
            value,
            headers,
        });
    }
    Ok(out)
}

/// Decodes all records of a buffer of back-to-back batches, as a consumer sees them: control
/// batches (transaction markers) are skipped. A trailing partial batch (as a fetch may return) is
/// ignored.
pub fn decode_batches(buf: &Bytes, limit: usize) -> Result<Vec<StoredRecord>, BatchError> {
    let mut out = Vec::new();
    for frame in batch::BatchFrames::new(buf) {
        match frame {
            Ok((_, h)) if h.is_control() => {}
            Ok((pos, h)) => out.extend(decode_batch(&buf.slice(pos..pos + h.total_size()), limit)?),
            Err(BatchError::Truncated { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> Record {
        Record {
            timestamp: 1_700_000_000_000 + i * 3,
            key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
            value: (i % 5 != 4).then(|| Bytes::from(vec![i as u8; (i * 37 % 300) as usize])),
            headers: (0..(i % 3))
                .map(|h| Header {
                    key: format!("h{h}"),
                    value: (h % 2 == 0).then(|| Bytes::from_static(b"hv")),
                })
                .collect(),
        }
    }

    #[test]
    fn varint_lengths_match_encoding() {
        for v in [0i64, 1, -1, 63, 64, -64, -65, 1 << 20, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(out.len(), varlong_len(v), "{v}");
            let mut c = Cursor { buf: &out, pos: 0 };
            assert_eq!(c.varlong().unwrap(), v);
        }
    }

    #[test]
    fn builder_round_trips_with_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = BatchBuilder::new(c);
            let recs: Vec<Record> = (0..50).map(rec).collect();
            for r in &recs {
                b.push(r);
            }
            let mut buf = b.build().unwrap();
            crate::batch::assign_offset(&mut buf, 1000, 7);
            let bytes = buf.freeze();
            let h = crate::batch::validate(&bytes, true).unwrap();
            assert_eq!(h.base_offset, 1000);
            assert_eq!(h.partition_leader_epoch, 7);
            assert_eq!(h.compression().unwrap(), c);
            let out = decode_batch(&bytes, DEFAULT_DECOMPRESSED_LIMIT).unwrap();
            assert_eq!(out.len(), 50);
            for (i, (o, r)) in out.iter().zip(&recs).enumerate() {
                assert_eq!(o.offset, 1000 + i as u64);
                assert_eq!(o.timestamp, r.timestamp);
                assert_eq!(o.key, r.key);
                assert_eq!(o.value, r.value);
                assert_eq!(o.headers, r.headers);
            }
        }
    }

    #[test]
    fn corrupt_record_bytes_are_errors() {
        let mut b = BatchBuilder::new(Compression::None);
        for i in 0..10 {
            b.push(&rec(i));
        }
        let good = b.build().unwrap().freeze();
        // Mangle every byte of the record section in turn: decoding must never panic.
        for i in HEADER_LEN..good.len() {
            for x in [0x00u8, 0xff, 0x80] {
                let mut m = good.to_vec();
                m[i] = x;
                let _ = decode_batch(&Bytes::from(m), 1 << 20);
            }
        }
    }
}
