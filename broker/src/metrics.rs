//! Request, connection, byte, flush and group metrics, registered once per process and exposed
//! on `/metrics` beside the hand-written partition and replication gauges (`http.rs`).
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` histograms, base units);
//! the `protocol` label is `kafka` or `grpc`, `api` is the Kafka API name (`Produce`, `Fetch`, ...)
//! or the gRPC method path (`/sluice.v1.Producer/Produce`).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_errors: IntCounterVec,
    pub request_duration: HistogramVec,
    pub received_bytes: IntCounterVec,
    pub sent_bytes: IntCounterVec,
    pub connections_open: IntGaugeVec,
    pub connections_accepted: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub connections_idle_closed: IntCounterVec,
    pub log_flush_duration: Histogram,
    pub group_rebalances: IntCounter,
}

/// Latency buckets, seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        registry.register(Box::new(c.clone()))?;
        Ok::<_, prometheus::Error>(c)
    };
    let requests = counter(
        "sluice_requests_total",
        "Requests handled, by protocol and API.",
        &["protocol", "api"],
    )?;
    let request_errors = counter(
        "sluice_request_errors_total",
        "Errors answered, by protocol, API and error (Kafka error name, per partition where the \
         response has partitions; gRPC status code).",
        &["protocol", "api", "error"],
    )?;
    let request_duration = HistogramVec::new(
        HistogramOpts::new(
            "sluice_request_duration_seconds",
            "Time from a request's arrival to its response being ready (gRPC: to the response \
             headers), including waits in purgatory.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["protocol", "api"],
    )?;
    registry.register(Box::new(request_duration.clone()))?;
    let received_bytes = counter(
        "sluice_received_bytes_total",
        "Bytes received from clients (Kafka: request frames; gRPC: bytes read from the socket).",
        &["protocol"],
    )?;
    let sent_bytes = counter(
        "sluice_sent_bytes_total",
        "Bytes sent to clients (Kafka: response frames, sendfile included; gRPC: bytes written \
         to the socket).",
        &["protocol"],
    )?;
    let connections_open = IntGaugeVec::new(
        Opts::new("sluice_connections", "Client connections open now."),
        &["protocol"],
    )?;
    registry.register(Box::new(connections_open.clone()))?;
    let connections_accepted = counter(
        "sluice_connections_accepted_total",
        "Client connections accepted.",
        &["protocol"],
    )?;
    let connections_refused = counter(
        "sluice_connections_refused_total",
        "Client connections refused, by the limit that refused them.",
        &["protocol", "limit"],
    )?;
    let connections_idle_closed = counter(
        "sluice_connections_idle_closed_total",
        "Connections closed for idleness (connections_max_idle_ms) or a request not arriving \
         whole in time (request_read_timeout_ms).",
        &["protocol", "reason"],
    )?;
    let log_flush_duration = Histogram::with_opts(
        HistogramOpts::new(
            "sluice_log_flush_duration_seconds",
            "Duration of log flushes (fsync of a partition's unflushed segments).",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )?;
    registry.register(Box::new(log_flush_duration.clone()))?;
    let group_rebalances = IntCounter::new(
        "sluice_group_rebalances_total",
        "Consumer-group rebalances completed (a new generation formed).",
    )?;
    registry.register(Box::new(group_rebalances.clone()))?;
    Ok(Metrics {
        registry,
        requests,
        request_errors,
        request_duration,
        received_bytes,
        sent_bytes,
        connections_open,
        connections_accepted,
        connections_refused,
        connections_idle_closed,
        log_flush_duration,
        group_rebalances,
    })
}

/// The process's metrics. Registration can only fail on a programming error (a duplicate or
/// malformed name), which the unit test below catches.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| match build() {
    Ok(m) => m,
    Err(e) => unreachable!("metric definitions are static and tested: {e}"),
});

/// One protocol's byte counters, resolved once (the hot paths skip the label lookup).
pub struct ByteCounters {
    pub received: IntCounter,
    pub sent: IntCounter,
}

fn byte_counters(protocol: &str) -> ByteCounters {
    ByteCounters {
        received: METRICS.received_bytes.with_label_values(&[protocol]),
        sent: METRICS.sent_bytes.with_label_values(&[protocol]),
    }
}

pub static KAFKA_BYTES: LazyLock<ByteCounters> = LazyLock::new(|| byte_counters("kafka"));
pub static GRPC_BYTES: LazyLock<ByteCounters> = LazyLock::new(|| byte_counters("grpc"));

/// Connects the storage engine's flush timings to the histogram.
pub fn install() {
    sluice_log::set_flush_observer(|d: Duration| {
        METRICS.log_flush_duration.observe(d.as_secs_f64())
    });
}

/// One finished request.
pub fn observe_request(protocol: &str, api: &str, elapsed: Duration) {
    let labels = [protocol, api];
    METRICS.requests.with_label_values(&labels).inc();
    METRICS
        .request_duration
        .with_label_values(&labels)
        .observe(elapsed.as_secs_f64());
}

/// `n` answers with error `error` in one response.
pub fn observe_errors(protocol: &str, api: &str, error: &str, n: u64) {
    METRICS
        .request_errors
        .with_label_values(&[protocol, api, error])
        .inc_by(n);
}

/// The text exposition of everything registered here.
pub fn render() -> String {
    let families = METRICS.registry.gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        build().unwrap();
        observe_request("kafka", "Produce", Duration::from_millis(3));
        observe_errors("kafka", "Produce", "NotLeaderOrFollower", 2);
        let text = render();
        assert!(
            text.contains("sluice_requests_total{api=\"Produce\",protocol=\"kafka\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "sluice_request_errors_total{api=\"Produce\",error=\"NotLeaderOrFollower\",protocol=\"kafka\"} 2"
        ), "{text}");
        assert!(text.contains("sluice_request_duration_seconds_bucket{api=\"Produce\",protocol=\"kafka\",le=\"0.005\"} 1"), "{text}");
    }
}
