//! Typed errors of the storage engine.

use std::io;
use std::path::PathBuf;

/// Why a record batch was refused or could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("truncated batch: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch length {0} is below the RecordBatch v2 header size")]
    LengthTooSmall(i32),
    #[error("unsupported magic {0}: only RecordBatch v2 (magic 2) is stored")]
    UnsupportedMagic(i8),
    #[error("CRC mismatch: header says {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record count {count} does not match lastOffsetDelta {last_offset_delta}")]
    CountMismatch { count: i32, last_offset_delta: i32 },
    #[error("batch holds no records")]
    Empty,
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    #[error("corrupt record: {0}")]
    CorruptRecord(&'static str),
    #[error("decompression failed: {0}")]
    Decompression(String),
    #[error("decompressed records exceed {limit} bytes")]
    DecompressedTooLarge { limit: usize },
}

/// One record a validation rule refused (Kafka's `RecordError`, KIP-467): its index in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub batch_index: i32,
    pub message: String,
}

/// Errors returned by [`crate::Log`] and the types under it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid record batch at byte {position} of the request: {source}")]
    InvalidBatch {
        position: usize,
        #[source]
        source: BatchError,
    },
    /// The record section does not hold the records its header describes: INVALID_RECORD.
    #[error("invalid records in the batch at byte {position} of the request: {source}")]
    InvalidRecords {
        position: usize,
        #[source]
        source: BatchError,
    },
    /// Records refused by a topic rule (a key on a compacted topic, the timestamp window), named
    /// by index: INVALID_TIMESTAMP when any timestamp was out of range, else INVALID_RECORD.
    #[error("{}", records_rejected_message(*.timestamp, .errors))]
    RecordsRejected {
        timestamp: bool,
        errors: Vec<RecordError>,
    },
    #[error("record batch of {size} bytes exceeds max.message.bytes={max}")]
    BatchTooLarge { size: usize, max: usize },
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start_offset: u64,
        log_end_offset: u64,
    },
    #[error("follower batch base offset {got} does not follow log end offset {expected}")]
    NonContiguousOffset { expected: u64, got: u64 },
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    #[error("corrupt log data in {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The log directory is offline for writes after a failed write (see `log_dir.rs`).
    #[error("log directory {dir} is offline for writes: {reason}")]
    LogDirOffline { dir: PathBuf, reason: String },
    #[error("log is closed")]
    Closed,
    /// The partition was deleted (its topic deleted, or the replica moved away).
    #[error("the partition was deleted")]
    Deleted,
    /// An idempotent producer's batch out of its sequence or from a fenced epoch.
    #[error(transparent)]
    Producer(#[from] crate::producer_state::ProducerError),
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Kafka's wording: the first three errors at most, and how many there were.
fn records_rejected_message(timestamp: bool, errors: &[RecordError]) -> String {
    if timestamp {
        let first = errors.first().map_or("", |e| e.message.as_str());
        return format!(
            "one or more records have been rejected due to an invalid timestamp: {first}"
        );
    }
    let shown: Vec<String> = errors
        .iter()
        .take(3)
        .map(|e| format!("record {}: {}", e.batch_index, e.message))
        .collect();
    format!(
        "one or more records have been rejected due to {} record errors in total, and only showing the first three errors at most: [{}]",
        errors.len(),
        shown.join("; ")
    )
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Attaches what was being done, and to which file, to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| LogError::Io {
            context,
            path: path.to_path_buf(),
            source,
        })
    }
}
