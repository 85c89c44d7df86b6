//! The Sluice storage engine: durable, append-only, segmented partition logs in Kafka's format.
//!
//! A partition is a directory; a [`Log`] owns it. The log is a sequence of segments, each a
//! `<20-digit base offset>.log` file of Kafka RecordBatch v2 batches (byte-for-byte what Kafka
//! stores, CRC-32C included) with two sparse, memory-mapped indexes beside it: `.index` (offset →
//! file position) and `.timeindex` (timestamp → offset). Only the newest segment is written.
//!
//! - [`batch`]: the RecordBatch v2 header, validation, and offset assignment in place.
//! - [`record`]: building batches from records and decoding them back ([`compression`] codecs).
//! - [`validator`]: record-level checks of produced batches (Kafka's LogValidator).
//! - [`index`]: the two index kinds over one mmap'd entry-array mechanism.
//! - [`segment`]: one `.log` + indexes: append, read as [`FileRegion`]s, recovery, truncation.
//! - [`log`](crate::Log): the partition — offsets (log start, log end, high watermark), roll,
//!   flush policy and recovery point, crash recovery, retention, truncation, clean shutdown, and
//!   compaction (`cleanup.policy=compact`, `log/cleaner.rs`).
//! - [`log_dir`]: a log directory's write health: offline after a failed write, back once a full
//!   disk has room again.
//! - [`checkpoint`]: the recovery-point file and clean-shutdown marker.
//! - [`config`]: per-log settings under Kafka's topic-config names, and the [`Clock`].
//!
//! Reads return file regions (file handle, position, length) of whole batches so the network
//! layer can `sendfile` them; nothing here knows about sockets.
//!
//! ```
//! use sluice_log::{BatchBuilder, Compression, Log, LogConfig, Record};
//! # let dir = tempfile::tempdir().unwrap();
//! let log = Log::open(dir.path().join("orders-0"), LogConfig::default()).unwrap();
//! let mut batch = BatchBuilder::new(Compression::Lz4);
//! batch.push(&Record { timestamp: 1_700_000_000_000, value: Some("hello".into()), ..Default::default() });
//! let mut bytes = batch.build().unwrap();
//! let appended = log.append_as_leader(&mut bytes, 0).unwrap();
//! assert_eq!((appended.first_offset, log.log_end_offset()), (0, 1));
//! let (data, _) = log.read_bytes(0, 1 << 20, None).unwrap();
//! let records = sluice_log::decode_batches(&data, 1 << 20).unwrap();
//! assert_eq!(records[0].value.as_deref(), Some(&b"hello"[..]));
//! ```

pub mod batch;
pub mod checkpoint;
pub mod compression;
pub mod config;
pub mod error;
mod flush_observer;
pub mod index;
pub mod leader_epoch;
mod log;
pub mod log_dir;
pub mod producer_state;
pub mod record;
pub mod segment;
mod segment_file;
pub mod txn_index;
pub mod validator;

pub use crate::batch::{BatchHeader, TimestampType};
pub use crate::compression::Compression;
pub use crate::config::{
    Clock, LogConfig, ManualClock, MonotonicClock, SystemClock, LOG_CONFIG_KEYS,
};
pub use crate::error::{BatchError, LogError, RecordError, Result};
pub use crate::flush_observer::set_flush_observer;
pub use crate::leader_epoch::EpochEntry;
pub use crate::log::{
    AppendInfo, CleanStats, CleanerOptions, Log, ReadInfo, DELETE_SUFFIX, MAP_ENTRY_OVERHEAD,
};
pub use crate::log_dir::LogDirHealth;
pub use crate::producer_state::{Marker, ProducerError, ProducerStates};
pub use crate::record::{
    decode_batch, decode_batches, BatchBuilder, BatchTemplate, Header, Record, StoredRecord,
};
pub use crate::segment::FileRegion;
pub use crate::txn_index::AbortedTxn;
