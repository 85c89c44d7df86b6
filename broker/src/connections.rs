//! Connection admission shared by both listeners: a total limit (`max_connections`), a per-IP
//! limit (`max_connections_per_ip`, Kafka's `max.connections.per.ip`), and refusals logged at
//! most once a second with a count, so a flood of connections cannot flood the log too.
//!
//! Idle and slow connections are closed by the listeners themselves: after
//! `connections_max_idle_ms` without a request (Kafka's `connections.max.idle.ms`), and when a
//! request that has started does not arrive whole within `request_read_timeout_ms`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts open connections, in all and per client address.
pub struct ConnectionLimits {
    listener: &'static str,
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    refusals: Mutex<RefusalLog>,
}

struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Held while a connection is open; frees its place when dropped.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        crate::metrics::METRICS
            .connections_open
            .with_label_values(&[self.limits.listener])
            .dec();
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    /// `max_per_ip` 0 = no per-address limit.
    pub fn new(listener: &'static str, max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            listener,
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
            refusals: Mutex::new(RefusalLog {
                last: None,
                suppressed: 0,
            }),
        })
    }

    /// A place for a new connection from `ip`, or `None` (logged, rate-limited) when a limit is
    /// reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let refused = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let from_ip = open.1.get(&ip).copied().unwrap_or(0);
            if open.0 >= self.max_total {
                Some("max_connections")
            } else if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
                Some("max_connections_per_ip")
            } else {
                open.0 += 1;
                *open.1.entry(ip).or_default() += 1;
                None
            }
        };
        let m = &crate::metrics::METRICS;
        match refused {
            None => {
                m.connections_accepted
                    .with_label_values(&[self.listener])
                    .inc();
                m.connections_open.with_label_values(&[self.listener]).inc();
                Some(ConnectionPermit {
                    limits: self.clone(),
                    ip,
                })
            }
            Some(limit) => {
                m.connections_refused
                    .with_label_values(&[self.listener, limit])
                    .inc();
                self.log_refusal(ip, limit);
                None
            }
        }
    }

    fn log_refusal(&self, ip: IpAddr, limit: &str) {
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            log.suppressed += 1;
            return;
        }
        tracing::warn!(
            listener = self.listener,
            peer = %ip,
            limit,
            more_refused_since_last_log = log.suppressed,
            "refusing connection: {limit} reached"
        );
        log.last = Some(now);
        log.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_address_limits_free_their_place_on_drop() {
        let l = ConnectionLimits::new("test", 3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none(), "third from one address");
        let _b1 = l.admit(b).unwrap();
        assert!(l.admit(b).is_none(), "fourth in all");
        drop(a1);
        assert!(l.admit(b).is_some(), "a place freed");
        let unlimited = ConnectionLimits::new("test", 100, 0);
        let held: Vec<_> = (0..50).map(|_| unlimited.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 50);
    }
}
