//! Connections a hostile or broken client opens cannot lock real clients out: idle sockets and
//! half-sent requests are closed (`connections_max_idle_ms`, `request_read_timeout_ms`), one
//! address cannot take more than `max_connections_per_ip`, and a real client gets in once the
//! junk is gone.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{kcat, wait_for, Broker};

fn broker_with(settings: &str) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, settings).unwrap();
    let b = Broker::start_with(vec!["--config".into(), cfg.display().to_string()]);
    (dir, b)
}

/// Waits (up to `within`) for the server to close `s`; returns how long that took.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {} // a response to something sent: keep reading
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Some(start.elapsed())
            }
            Err(_) => return None, // timed out: still open
        }
        if start.elapsed() >= within {
            return None;
        }
    }
}

#[test]
fn idle_sockets_and_half_sent_requests_are_closed_on_both_listeners() {
    let (_d, b) = broker_with(
        "connections_max_idle_ms = 2000\nrequest_read_timeout_ms = 1000\nmax_connections = 4\n",
    );
    // Fill every Kafka slot: three idle sockets and one that sends 10 bytes of a 1000-byte
    // request and stops.
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", b.kafka_port)).unwrap())
        .collect();
    let mut slow = TcpStream::connect(("127.0.0.1", b.kafka_port)).unwrap();
    use std::io::Write;
    slow.write_all(&1000i32.to_be_bytes()).unwrap();
    slow.write_all(&[0u8; 6]).unwrap();
    let mut grpc_idle = TcpStream::connect(("127.0.0.1", b.grpc_port)).unwrap();
    // All of them are closed by the broker (without the timeouts they stay open for good).
    for s in idle.iter_mut().chain([&mut slow, &mut grpc_idle]) {
        let t = closed_within(s, Duration::from_secs(60));
        assert!(t.is_some(), "a junk connection was never closed");
    }
    // A real client gets in.
    let port = b.kafka_port.to_string();
    let bootstrap = format!("127.0.0.1:{port}");
    wait_for("kcat metadata", Duration::from_secs(60), || {
        kcat(&["-b", &bootstrap, "-L", "-m", "5"], None).ok()
    });
}

#[test]
fn one_address_cannot_take_more_than_max_connections_per_ip() {
    // Idle connections stay for two minutes: a refusal is told apart by being immediate.
    let (_d, b) = broker_with("max_connections_per_ip = 2\nconnections_max_idle_ms = 120000\n");
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", b.kafka_port)).unwrap())
        .collect();
    let mut third = TcpStream::connect(("127.0.0.1", b.kafka_port)).unwrap();
    let refused = closed_within(&mut third, Duration::from_secs(30));
    assert!(
        refused.is_some(),
        "a third connection from one address was admitted"
    );
    // The same on the gRPC listener.
    let g: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", b.grpc_port)).unwrap())
        .collect();
    let mut g3 = TcpStream::connect(("127.0.0.1", b.grpc_port)).unwrap();
    assert!(closed_within(&mut g3, Duration::from_secs(30)).is_some());
    // Closing one frees its place: a real client gets in.
    drop(held);
    drop(g);
    let bootstrap = format!("127.0.0.1:{}", b.kafka_port);
    wait_for("kcat metadata", Duration::from_secs(60), || {
        kcat(&["-b", &bootstrap, "-L", "-m", "5"], None).ok()
    });
    let out = b.cli(&["topic", "list"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
