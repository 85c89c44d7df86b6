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

/// Errors returned by [`crate::Log`] and the types under it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid record batch at byte {position} of the request: {source}")]
    InvalidBatch {
        position: usize,
        #[source]
        source: BatchError,
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
    #[error("log is closed")]
    Closed,
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
