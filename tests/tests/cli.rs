//! The `sluice` CLI against a real broker: topics, produce from stdin, consume, bench, errors.

mod common;

use common::Broker;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn topic_produce_consume_round_trip() {
    let b = Broker::start();
    let o = b.cli(
        &[
            "topic",
            "create",
            "cli",
            "--partitions",
            "2",
            "--config",
            "retention.ms=7200000",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Created topic cli"));

    let o = b.cli(&["topic", "list", "--output", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "cli");
    assert_eq!(v[0]["partitions"], 2);

    let o = b.cli(
        &[
            "produce",
            "cli",
            "--key-separator",
            ":",
            "--header",
            "src=test",
        ],
        Some("k1:one\nk2:two\nk1:three\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "produce prints nothing on success");

    let o = b.cli(
        &["consume", "cli", "--from-beginning", "--format", "%k=%s %h"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["k1=one src=test", "k1=three src=test", "k2=two src=test"]
    );
    // Records with the same key share a partition, in order.
    let o = b.cli(
        &["consume", "cli", "--from-beginning", "--output", "json"],
        None,
    );
    let recs: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let k1: Vec<&serde_json::Value> = recs.iter().filter(|r| r["key"] == "k1").collect();
    assert_eq!(k1[0]["partition"], k1[1]["partition"]);
    assert_eq!(k1[0]["value"], "one");
    assert_eq!(k1[1]["value"], "three");

    let o = b.cli(
        &["consume", "cli", "--from-beginning", "--max-messages", "1"],
        None,
    );
    assert_eq!(stdout(&o).lines().count(), 1);
    let o = b.cli(
        &[
            "consume",
            "cli",
            "--partition",
            "0",
            "--offset",
            "0",
            "--format",
            "%p:%o",
        ],
        None,
    );
    assert!(stdout(&o).lines().all(|l| l.starts_with("0:")));
    // Without --from-beginning a consumer starts at the end and exits there.
    let o = b.cli(&["consume", "cli"], None);
    assert!(o.status.success());
    assert!(stdout(&o).is_empty());

    let o = b.cli(&["topic", "describe", "cli"], None);
    assert!(
        stdout(&o).contains("retention.ms=7200000"),
        "{}",
        stdout(&o)
    );
    let o = b.cli(
        &["topic", "alter", "cli", "--config", "retention.ms=1000"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = b.cli(&["topic", "describe", "cli", "--output", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["configs"]["retention.ms"], "1000");
    let hw: u64 = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum();
    assert_eq!(hw, 3);

    let o = b.cli(&["topic", "delete", "cli"], None);
    assert!(o.status.success());
    let o = b.cli(&["topic", "list"], None);
    assert!(!stdout(&o).contains("cli"));
}

#[test]
fn errors_exit_nonzero_with_a_message_on_stderr() {
    let b = Broker::start();
    let o = b.cli(&["produce", "missing"], Some("x\n"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown topic \"missing\""),
        "{}",
        stderr(&o)
    );
    let o = b.cli(&["consume", "missing", "--from-beginning"], None);
    assert!(!o.status.success());
    let o = b.cli(&["topic", "create", "bad name"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("InvalidArgument"), "{}", stderr(&o));
    let o = b.cli(&["topic", "create", "x", "--config", "novalue"], None);
    assert!(!o.status.success());
    let mut cmd = std::process::Command::new(common::sluice_bin());
    let o = cmd
        .args([
            "topic",
            "list",
            "--broker",
            &format!("127.0.0.1:{}", common::free_port()),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn bench_produces_and_consumes_and_reports() {
    let b = Broker::start();
    let o = b.cli(
        &[
            "bench",
            "produce",
            "--topic",
            "bench",
            "--records",
            "5000",
            "--record-size",
            "100",
            "--batch-size",
            "250",
            "--concurrency",
            "2",
            "--output",
            "json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["records"], 5000);
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let o = b.cli(
        &[
            "bench",
            "consume",
            "--topic",
            "bench",
            "--records",
            "5000",
            "--output",
            "json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["records"], 5000);
    // The default batch form counts stored batch bytes (values plus record and batch
    // overhead), as the Kafka bench does; the typed form counts values.
    assert!(v["bytes"].as_u64().is_some_and(|b| b > 500_000), "{v}");
    let o = b.cli(
        &[
            "bench",
            "consume",
            "--topic",
            "bench",
            "--records",
            "5000",
            "--record-format",
            "records",
            "--output",
            "json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["records"], 5000);
    assert_eq!(v["bytes"], 500_000);
}

#[test]
fn topic_create_refuses_zero_and_negative_partition_counts() {
    let b = Broker::start();
    for bad in ["0", "-5"] {
        let o = b.cli(&["topic", "create", "z", "--partitions", bad], None);
        assert!(!o.status.success(), "--partitions {bad} was accepted");
        let e = stderr(&o);
        assert!(e.contains("--partitions"), "the error names the flag: {e}");
    }
    let o = b.cli(&["topic", "list", "--output", "json"], None);
    assert_eq!(stdout(&o).trim(), "[]", "nothing was created");
}

/// A script that starts `sluice serve` and creates a topic at once: when the listeners open, the
/// broker's own registration with the controller is still on the way. The creation waits for it
/// instead of failing with "replication factor 1 is larger than the 0 available broker(s)", and
/// `/ready` answers 200 once the broker is registered and unfenced.
#[test]
fn a_topic_created_while_the_broker_is_still_starting_is_created() {
    let mut b = Broker::unstarted(None, Vec::new());
    b.launch_listening();
    let o = b.cli(&["topic", "create", "early"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = b.cli(&["produce", "early"], Some("one\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = b.cli(
        &[
            "consume",
            "early",
            "--from-beginning",
            "--max-messages",
            "1",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "one");
    let ready = common::wait_for(
        "/ready to answer 200",
        std::time::Duration::from_secs(30),
        || {
            let r = b.http_get("/ready");
            r.starts_with("HTTP/1.0 200").then_some(r)
        },
    );
    assert!(ready.ends_with("ready\n"), "{ready}");
}
