//! A hook through which the embedding server learns how long log flushes (fsyncs) take, for its
//! metrics. The storage engine knows nothing of metrics systems; it reports durations here.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static OBSERVER: OnceLock<fn(Duration)> = OnceLock::new();

/// Sets the function called with the duration of every log flush (the first call wins).
pub fn set_flush_observer(f: fn(Duration)) {
    let _ = OBSERVER.set(f);
}

/// Runs `flush` and reports its duration.
pub(crate) fn timed<T>(flush: impl FnOnce() -> T) -> T {
    let Some(observe) = OBSERVER.get() else {
        return flush();
    };
    let start = Instant::now();
    let out = flush();
    observe(start.elapsed());
    out
}
