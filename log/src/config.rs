//! Per-partition log settings, named and defaulted as Kafka's topic configs, and the clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::batch::TimestampType;
use crate::error::{LogError, Result};

/// The settings one partition log runs with. Field docs give the Kafka name and default.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes` (1 GiB): roll the active segment at this size.
    pub segment_bytes: u64,
    /// `segment.ms` (7 days): roll the active segment when its first batch is this old.
    pub segment_ms: i64,
    /// `segment.index.bytes` (10 MiB): preallocated size of each index file.
    pub segment_index_bytes: usize,
    /// `index.interval.bytes` (4096): bytes of log between two offset index entries.
    pub index_interval_bytes: usize,
    /// `max.message.bytes` (1048588): the largest batch accepted.
    pub max_message_bytes: usize,
    /// `retention.ms` (7 days; -1 keeps forever): delete segments whose newest record is older.
    pub retention_ms: i64,
    /// `retention.bytes` (-1 = unlimited): delete the oldest segments while the log is larger.
    pub retention_bytes: i64,
    /// `flush.messages` (never): fsync after this many appended records.
    pub flush_messages: u64,
    /// `flush.ms` (never): fsync when the last fsync is older than this.
    pub flush_ms: u64,
    /// `cleanup.policy` contains `delete` (default `delete`).
    pub cleanup_delete: bool,
    /// `cleanup.policy` contains `compact`.
    pub cleanup_compact: bool,
    /// `message.timestamp.type` (CreateTime).
    pub timestamp_type: TimestampType,
    /// `delete.retention.ms` (1 day): how long compaction keeps tombstones.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio` (0.5): compact once this share of the cleanable log is dirty.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms` (0): records younger than this are not compacted.
    pub min_compaction_lag_ms: i64,
    /// `message.timestamp.before.max.ms` (unlimited): with CreateTime, the furthest in the past a
    /// record's timestamp may be from the broker's clock (INVALID_TIMESTAMP beyond).
    pub message_timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms` (1 hour, Kafka 4.0's default): the furthest in the future.
    pub message_timestamp_after_max_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            segment_index_bytes: 10 << 20,
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            flush_messages: u64::MAX,
            flush_ms: u64::MAX,
            cleanup_delete: true,
            cleanup_compact: false,
            timestamp_type: TimestampType::CreateTime,
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            message_timestamp_before_max_ms: i64::MAX,
            message_timestamp_after_max_ms: 3_600_000,
        }
    }
}

/// The Kafka topic config names [`LogConfig::set`] understands.
pub const LOG_CONFIG_KEYS: &[&str] = &[
    "segment.bytes",
    "segment.ms",
    "segment.index.bytes",
    "index.interval.bytes",
    "max.message.bytes",
    "retention.ms",
    "retention.bytes",
    "flush.messages",
    "flush.ms",
    "cleanup.policy",
    "message.timestamp.type",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.after.max.ms",
    "message.timestamp.difference.max.ms",
];

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| LogError::InvalidConfig(format!("{key}={value:?} is not a valid number")))
}

fn at_least<T: PartialOrd + std::fmt::Display>(key: &str, v: T, min: T) -> Result<T> {
    if v < min {
        return Err(LogError::InvalidConfig(format!(
            "{key} must be >= {min}, got {v}"
        )));
    }
    Ok(v)
}

impl LogConfig {
    /// Sets one setting by its Kafka name. Returns `Ok(false)` for a name that is not a log setting
    /// (the caller may know it), and an error for a bad value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            // Positions in a segment are u32 in the index; Kafka also caps segments at 2 GiB.
            "segment.bytes" => {
                let v: u64 = at_least(key, parse(key, value)?, 14)?;
                if v > i32::MAX as u64 {
                    return Err(LogError::InvalidConfig(format!(
                        "segment.bytes must be <= {}, got {v}",
                        i32::MAX
                    )));
                }
                self.segment_bytes = v;
            }
            "segment.ms" => self.segment_ms = at_least(key, parse(key, value)?, 1)?,
            "segment.index.bytes" => {
                self.segment_index_bytes = at_least(key, parse(key, value)?, 4 * 12)?
            }
            "index.interval.bytes" => self.index_interval_bytes = parse(key, value)?,
            "max.message.bytes" => self.max_message_bytes = at_least(key, parse(key, value)?, 0)?,
            "retention.ms" => self.retention_ms = at_least(key, parse(key, value)?, -1)?,
            "retention.bytes" => self.retention_bytes = at_least(key, parse(key, value)?, -1)?,
            "flush.messages" => self.flush_messages = at_least(key, parse(key, value)?, 1)?,
            "flush.ms" => self.flush_ms = parse(key, value)?,
            "cleanup.policy" => {
                let (mut delete, mut compact) = (false, false);
                for p in value.split(',').map(str::trim) {
                    match p {
                        "delete" => delete = true,
                        "compact" => compact = true,
                        other => {
                            return Err(LogError::InvalidConfig(format!(
                            "cleanup.policy: unknown policy {other:?} (expected delete, compact)"
                        )))
                        }
                    }
                }
                self.cleanup_delete = delete;
                self.cleanup_compact = compact;
            }
            "message.timestamp.type" => {
                self.timestamp_type = match value {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    other => {
                        return Err(LogError::InvalidConfig(format!(
                        "message.timestamp.type must be CreateTime or LogAppendTime, got {other:?}"
                    )))
                    }
                }
            }
            "delete.retention.ms" => {
                self.delete_retention_ms = at_least(key, parse(key, value)?, 0)?
            }
            "min.cleanable.dirty.ratio" => {
                let v: f64 = parse(key, value)?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(LogError::InvalidConfig(format!(
                        "min.cleanable.dirty.ratio must be between 0 and 1, got {v}"
                    )));
                }
                self.min_cleanable_dirty_ratio = v;
            }
            "min.compaction.lag.ms" => {
                self.min_compaction_lag_ms = at_least(key, parse(key, value)?, 0)?
            }
            "message.timestamp.before.max.ms" => {
                self.message_timestamp_before_max_ms = at_least(key, parse(key, value)?, 0)?
            }
            "message.timestamp.after.max.ms" => {
                self.message_timestamp_after_max_ms = at_least(key, parse(key, value)?, 0)?
            }
            // Deprecated in Kafka 3.6 for the two above; it bounds both directions.
            "message.timestamp.difference.max.ms" => {
                let v = at_least(key, parse(key, value)?, 0)?;
                self.message_timestamp_before_max_ms = v;
                self.message_timestamp_after_max_ms = v;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The value of a setting by its Kafka name, as text.
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "segment.index.bytes" => self.segment_index_bytes.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "flush.messages" => self.flush_messages.min(i64::MAX as u64).to_string(),
            "flush.ms" => self.flush_ms.min(i64::MAX as u64).to_string(),
            "cleanup.policy" => match (self.cleanup_delete, self.cleanup_compact) {
                (true, true) => "compact,delete".into(),
                (false, true) => "compact".into(),
                _ => "delete".into(),
            },
            "message.timestamp.type" => match self.timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
                TimestampType::LogAppendTime => "LogAppendTime".into(),
            },
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "message.timestamp.before.max.ms" => self.message_timestamp_before_max_ms.to_string(),
            "message.timestamp.after.max.ms" => self.message_timestamp_after_max_ms.to_string(),
            "message.timestamp.difference.max.ms" => self
                .message_timestamp_before_max_ms
                .max(self.message_timestamp_after_max_ms)
                .to_string(),
            _ => return None,
        })
    }
}

/// Wall-clock milliseconds, behind a trait so tests (and a future simulator) control time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// Milliseconds on a monotonic clock (from an arbitrary start): for timeouts and leases, which
/// must not jump when the wall clock is set.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock(std::time::Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> i64 {
        self.0.elapsed().as_millis() as i64
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst)
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_names_set_and_get() {
        let mut c = LogConfig::default();
        assert!(c.set("retention.ms", "1000").unwrap());
        assert!(c.set("cleanup.policy", "compact,delete").unwrap());
        assert!(c.set("message.timestamp.type", "LogAppendTime").unwrap());
        assert_eq!(c.get("retention.ms").unwrap(), "1000");
        assert_eq!(c.get("cleanup.policy").unwrap(), "compact,delete");
        assert!(!c.set("min.insync.replicas", "2").unwrap());
        assert!(c.set("segment.bytes", "abc").is_err());
        assert!(c.set("segment.bytes", "4294967296").is_err());
        assert!(c.set("retention.ms", "-2").is_err());
        assert!(c.set("cleanup.policy", "forever").is_err());
        for k in LOG_CONFIG_KEYS {
            assert!(c.get(k).is_some(), "{k}");
        }
    }
}
