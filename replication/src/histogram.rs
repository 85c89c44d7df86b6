//! A lock-free histogram of durations, exposed by the broker in Prometheus' histogram form.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in milliseconds (Prometheus' `le`); the last bucket is +Inf.
pub const BOUNDS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_MS.len() + 1],
    sum_ms: AtomicU64,
    count: AtomicU64,
}

/// How long acks=all produces waited, after their append, for the ISR to have the batch (the HW
/// to pass it), or until they timed out.
pub static ACKS_ALL_WAIT: Histogram = Histogram::new();

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS_MS.len() + 1],
            sum_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, ms: u64) {
        let i = BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BOUNDS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (`None` = +Inf), the sum in ms, and the count.
    pub fn snapshot(&self) -> (Vec<(Option<u64>, u64)>, u64, u64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                acc += b.load(Ordering::Relaxed);
                (BOUNDS_MS.get(i).copied(), acc)
            })
            .collect();
        (
            cumulative,
            self.sum_ms.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::new();
        for ms in [0, 1, 7, 7, 300, 20_000] {
            h.observe(ms);
        }
        let (b, sum, count) = h.snapshot();
        assert_eq!((sum, count), (20_315, 6));
        assert_eq!(b[0], (Some(1), 2));
        assert_eq!(b[2], (Some(10), 4));
        assert_eq!(b[7], (Some(500), 5));
        assert_eq!(*b.last().unwrap(), (None, 6));
    }
}
