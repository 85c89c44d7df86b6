//! Kafka RecordBatch v2 (magic 2): the header layout, validation, and in-place offset assignment.
//!
//! A batch on disk is byte-for-byte what a Kafka producer sends:
//!
//! ```text
//! offset  size  field
//!      0     8  baseOffset            \ "log overhead": not covered by the CRC
//!      8     4  batchLength           /  (bytes after this field)
//!     12     4  partitionLeaderEpoch  not covered by the CRC either
//!     16     1  magic (= 2)
//!     17     4  crc (CRC-32C of bytes 21..end)
//!     21     2  attributes            bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control
//!     23     4  lastOffsetDelta
//!     27     8  baseTimestamp
//!     35     8  maxTimestamp
//!     43     8  producerId
//!     51     2  producerEpoch
//!     53     4  baseSequence
//!     57     4  records count
//!     61     …  records (compressed as a whole when the codec is not none)
//! ```
//!
//! All integers are big-endian. The log rewrites only `baseOffset` and `partitionLeaderEpoch` when it
//! assigns offsets, so the CRC of a batch a client sent stays valid and compressed payloads are never
//! re-encoded.

use crate::compression::Compression;
use crate::error::BatchError;

pub const BASE_OFFSET_POS: usize = 0;
pub const LENGTH_POS: usize = 8;
pub const PARTITION_LEADER_EPOCH_POS: usize = 12;
pub const MAGIC_POS: usize = 16;
pub const CRC_POS: usize = 17;
pub const ATTRIBUTES_POS: usize = 21;
pub const LAST_OFFSET_DELTA_POS: usize = 23;
pub const BASE_TIMESTAMP_POS: usize = 27;
pub const MAX_TIMESTAMP_POS: usize = 35;
pub const PRODUCER_ID_POS: usize = 43;
pub const PRODUCER_EPOCH_POS: usize = 51;
pub const BASE_SEQUENCE_POS: usize = 53;
pub const RECORDS_COUNT_POS: usize = 57;
/// Size of the batch header; records start here.
pub const HEADER_LEN: usize = 61;
/// baseOffset + batchLength: the bytes of a batch not counted by `batchLength`.
pub const LOG_OVERHEAD: usize = 12;
pub const MAGIC_V2: i8 = 2;

const TIMESTAMP_TYPE_MASK: i16 = 0x08;
const TRANSACTIONAL_MASK: i16 = 0x10;
const CONTROL_MASK: i16 = 0x20;

/// How a batch's timestamps were assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The decoded fixed-size header of a RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn i16_at(b: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes([b[pos], b[pos + 1]])
}
fn i32_at(b: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]])
}
fn i64_at(b: &[u8], pos: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[pos..pos + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Parses the 61-byte header. Checks only that the bytes are there, not that they are valid.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET_POS),
            batch_length: i32_at(buf, LENGTH_POS),
            partition_leader_epoch: i32_at(buf, PARTITION_LEADER_EPOCH_POS),
            magic: buf[MAGIC_POS] as i8,
            crc: i32_at(buf, CRC_POS) as u32,
            attributes: i16_at(buf, ATTRIBUTES_POS),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA_POS),
            base_timestamp: i64_at(buf, BASE_TIMESTAMP_POS),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP_POS),
            producer_id: i64_at(buf, PRODUCER_ID_POS),
            producer_epoch: i16_at(buf, PRODUCER_EPOCH_POS),
            base_sequence: i32_at(buf, BASE_SEQUENCE_POS),
            record_count: i32_at(buf, RECORDS_COUNT_POS),
        })
    }

    /// Bytes the whole batch occupies, log overhead included.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// Offset of the last record (`baseOffset + lastOffsetDelta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_MASK != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_MASK != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_MASK != 0
    }

    /// Checks the fields that do not need the body: length, magic, count.
    pub fn check(&self) -> Result<(), BatchError> {
        if (self.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::LengthTooSmall(self.batch_length));
        }
        if self.magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(self.magic));
        }
        if self.record_count <= 0 {
            return Err(BatchError::Empty);
        }
        if self.last_offset_delta < 0 {
            return Err(BatchError::CountMismatch {
                count: self.record_count,
                last_offset_delta: self.last_offset_delta,
            });
        }
        self.compression()?;
        Ok(())
    }
}

/// CRC-32C of a batch as Kafka defines it: attributes to the end.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_POS..])
}

/// Validates one complete batch (`batch.len()` is its total size): header fields and CRC.
///
/// `strict_count` additionally demands `records count == lastOffsetDelta + 1`, which holds for every
/// batch a producer builds (compaction may later leave gaps, so stored batches are not held to it).
pub fn validate(batch: &[u8], strict_count: bool) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    header.check()?;
    if header.total_size() != batch.len() {
        return Err(BatchError::Truncated {
            needed: header.total_size(),
            available: batch.len(),
        });
    }
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if strict_count && i64::from(header.record_count) != i64::from(header.last_offset_delta) + 1 {
        return Err(BatchError::CountMismatch {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Sets the fields the log owns: baseOffset and partitionLeaderEpoch. The CRC does not cover them.
pub fn assign_offset(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH_POS..PARTITION_LEADER_EPOCH_POS + 4]
        .copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

/// Marks a batch as LogAppendTime with the given time as maxTimestamp, and recomputes the CRC
/// (these fields are covered by it). Kafka does the same for `message.timestamp.type=LogAppendTime`.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let (header, records) = batch.split_at_mut(HEADER_LEN);
    set_log_append_time_split(header, records, now_ms);
}

/// [`set_log_append_time`] on a batch held as its header (a copy being prepared for the write)
/// and its records (left where they are).
pub fn set_log_append_time_split(header: &mut [u8], records: &[u8], now_ms: i64) {
    let attributes = i16_at(header, ATTRIBUTES_POS) | TIMESTAMP_TYPE_MASK;
    header[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
    header[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&now_ms.to_be_bytes());
    refresh_crc_split(header, records);
}

/// Recomputes and stores the CRC after a change to the fields it covers.
pub fn refresh_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// [`refresh_crc`] for a batch held as header and records apart (the CRC covers both).
fn refresh_crc_split(header: &mut [u8], records: &[u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[ATTRIBUTES_POS..HEADER_LEN]), records);
    header[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Sets a CreateTime batch's maxTimestamp and recomputes the CRC (which covers it).
pub fn set_max_timestamp(batch: &mut [u8], max_timestamp: i64) {
    let (header, records) = batch.split_at_mut(HEADER_LEN);
    set_max_timestamp_split(header, records, max_timestamp);
}

/// [`set_max_timestamp`] on a batch held as header and records apart.
pub fn set_max_timestamp_split(header: &mut [u8], records: &[u8], max_timestamp: i64) {
    header[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    refresh_crc_split(header, records);
}

/// Walks a buffer of back-to-back batches, yielding `(position, header)` for each complete one.
///
/// It checks framing only (header present, length sane, batch fully inside the buffer); callers
/// decide whether to verify CRCs. Iteration stops at the first batch that does not fit, which
/// [`BatchFrames::position`] then reports.
pub struct BatchFrames<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BatchFrames<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BatchFrames { buf, pos: 0 }
    }

    /// Position of the first byte not consumed as a complete batch.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchFrames<'a> {
    type Item = Result<(usize, BatchHeader), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let header = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        if let Err(e) = header.check() {
            return Some(Err(e));
        }
        let size = header.total_size();
        if size > rest.len() {
            return Some(Err(BatchError::Truncated {
                needed: size,
                available: rest.len(),
            }));
        }
        let at = self.pos;
        self.pos += size;
        Some(Ok((at, header)))
    }
}
