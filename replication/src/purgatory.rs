//! How many requests are parked waiting on a partition (Kafka's purgatory sizes): fetches waiting
//! for data (consumers' `min_bytes` long polls and followers' fetches), and acks=all produces
//! waiting for the ISR. Exposed by the broker as `sluice_purgatory_size`.

use std::sync::atomic::{AtomicI64, Ordering};

/// Fetches (consumer or follower) waiting for data.
pub static FETCH: AtomicI64 = AtomicI64::new(0);
/// acks=all produces waiting for their batch to be replicated.
pub static PRODUCE: AtomicI64 = AtomicI64::new(0);

/// Counts one waiter for as long as it lives (dropped on every path out of the wait, including a
/// cancelled future).
pub struct Waiting(&'static AtomicI64);

impl Waiting {
    pub fn enter(gauge: &'static AtomicI64) -> Waiting {
        gauge.fetch_add(1, Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
