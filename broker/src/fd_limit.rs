//! The open-file limit: raised to the hard limit at start-up, as Kafka's packaging and Redpanda's
//! `rpk` do, because every partition needs a descriptor (its active segment's `.log`, plus any
//! sealed segment being read; indexes are only mapped) and every connection needs one. The common
//! default soft limit of 1024 stops a broker at a few hundred partitions.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors a partition holds while idle: the active segment's `.log`.
pub const PER_PARTITION: u64 = 1;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit now in force (`None`
/// if it could not be read).
pub fn raise() -> Option<u64> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return None;
        }
    };
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::debug!(from = soft, to = hard, "raised the open-file limit");
            Some(hard)
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            Some(soft)
        }
    }
}

/// The soft limit in force.
pub fn current() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Warns when `partitions` (hosted here) would need most of the `limit`.
pub fn check(limit: u64, partitions: usize) {
    let needed = partitions as u64 * PER_PARTITION;
    if needed + 1024 > limit {
        tracing::warn!(
            open_file_limit = limit,
            partitions,
            needed_for_partitions = needed,
            "the open-file limit is close to what this broker's partitions need; raise it \
             (ulimit -n, or LimitNOFILE= under systemd) to at least partitions + connections + 1024"
        );
    }
}
