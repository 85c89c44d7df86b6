//! Replication on real processes: three brokers, replication factor 3, min.insync.replicas 2.
//! acks=all records survive kill -9 of their leader and are read from the new one; the killed
//! broker comes back, catches up and rejoins the ISR with the same bytes; a paused (SIGSTOP)
//! follower leaves the ISR and returns after SIGCONT; with two of three brokers down, acks=all is
//! refused with NOT_ENOUGH_REPLICAS while acks=1 still works.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{start_cluster, wait_all_alive, wait_for, Broker};

/// Three brokers with short sessions (3 s) and heartbeats (0.5 s), plus `extra`.
fn cluster(extra: &[&str]) -> Vec<Broker> {
    let mut flags = vec![
        "--broker-session-timeout-ms",
        "3000",
        "--broker-heartbeat-interval-ms",
        "500",
    ];
    flags.extend_from_slice(extra);
    start_cluster(3, &flags)
}

/// Partition 0 of `topic` as `b` describes it: (leader, ISR, this broker's log end offset).
fn p0(b: &Broker, topic: &str) -> Option<(i64, Vec<i64>, u64)> {
    let v = b.cli_json(&["topic", "describe", topic])?;
    let p = &v["partitions"][0];
    Some((
        p["leader"].as_i64()?,
        p["isr"]
            .as_array()?
            .iter()
            .filter_map(|i| i.as_i64())
            .collect(),
        p["log_end_offset"].as_u64()?,
    ))
}

fn produce(b: &Broker, topic: &str, from: u64, to: u64, acks: &str) -> std::process::Output {
    let lines: String = (from..to).map(|i| format!("{i}\n")).collect();
    b.cli(
        &["produce", topic, "--partition", "0", "--acks", acks],
        Some(&lines),
    )
}

/// Partition 0 of `topic` from the beginning, through `b`; `None` while the CLI cannot read it
/// (a leader change in progress), for callers that poll.
fn try_consume(b: &Broker, topic: &str) -> Option<Vec<u64>> {
    let out = b.cli(
        &["consume", topic, "--partition", "0", "--from-beginning"],
        None,
    );
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().ok())
        .collect()
}

fn consume(b: &Broker, topic: &str) -> Vec<u64> {
    wait_for("a readable partition", Duration::from_secs(30), || {
        try_consume(b, topic)
    })
}

fn create(b: &Broker, topic: &str) {
    let out = b.cli(
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            "1",
            "--replication-factor",
            "3",
            "--config",
            "min.insync.replicas=2",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn acks_all_records_survive_killing_their_leader_and_it_rejoins_with_the_same_log() {
    // A generous lag bound: this test is about failover, and a loaded machine (nine brokers of
    // three tests on two cores) must not shrink the ISR under the first produce.
    let mut bs = cluster(&[
        "--replica-lag-time-max-ms",
        "10000",
        "--leader-imbalance-check-interval-ms",
        "1000",
    ]);
    wait_all_alive(&bs);
    create(&bs[0], "r");
    let out = produce(&bs[1], "r", 0, 500, "all");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (leader, isr, _) = p0(&bs[0], "r").unwrap();
    assert_eq!(isr.len(), 3, "{isr:?}");

    let li = leader as usize - 1;
    let survivor = (0..3).find(|i| *i != li).unwrap();
    let killed = Instant::now();
    bs[li].kill9();
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || {
        p0(&bs[survivor], "r").filter(|(l, _, _)| *l > 0 && *l != leader)
    })
    .0;
    eprintln!(
        "leader {leader} killed: {new_leader} leads after {:?}",
        killed.elapsed()
    );
    // Every acknowledged record is there, once, in order.
    let got = wait_for(
        "the records from the new leader",
        Duration::from_secs(30),
        || {
            let v = try_consume(&bs[survivor], "r")?;
            (v.len() >= 500).then_some(v)
        },
    );
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    let metric = |b: &Broker, name: &str| -> Option<u64> {
        b.http_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
    };
    wait_for(
        "the partition reported under-replicated",
        Duration::from_secs(30),
        || (metric(&bs[survivor], "sluice_under_replicated_partitions")? >= 1).then_some(()),
    );
    // Two in sync of three, min.insync.replicas=2: acks=all goes on.
    let out = wait_for(
        "acks=all on the new leader",
        Duration::from_secs(30),
        || {
            let o = produce(&bs[survivor], "r", 500, 700, "all");
            o.status.success().then_some(o)
        },
    );
    drop(out);
    // The new leader timed the acks=all waits it served.
    let waits = metric(
        &bs[new_leader as usize - 1],
        "sluice_produce_acks_all_wait_seconds_count",
    );
    assert!(waits.is_some_and(|n| n >= 1), "{waits:?}");

    // The old leader comes back, catches up, and rejoins the ISR; all three logs end alike.
    bs[li].launch_listening();
    wait_for("all three back in the ISR", Duration::from_secs(60), || {
        let (_, isr, _) = p0(&bs[survivor], "r")?;
        (isr.len() == 3).then_some(())
    });
    let ends: Vec<u64> = wait_for("equal log ends", Duration::from_secs(30), || {
        let ends: Vec<u64> = bs
            .iter()
            .map(|b| p0(b, "r").map(|p| p.2))
            .collect::<Option<_>>()?;
        ends.iter().all(|e| *e == 700).then_some(ends)
    });
    assert_eq!(ends, vec![700; 3]);
    wait_for(
        "no partition under-replicated",
        Duration::from_secs(30),
        || {
            (metric(&bs[survivor], "sluice_under_replicated_partitions")? == 0
                && metric(&bs[survivor], "sluice_offline_partitions")? == 0)
                .then_some(())
        },
    );
    // It was the preferred leader (first replica): back in the ISR, leadership returns to it
    // (auto_leader_rebalance_enable).
    wait_for(
        "leadership back at the preferred replica",
        Duration::from_secs(30),
        || {
            let (l, _, _) = p0(&bs[survivor], "r")?;
            (l == leader).then_some(())
        },
    );
    assert_eq!(consume(&bs[li], "r"), (0..700).collect::<Vec<_>>());
}

#[test]
fn a_paused_follower_leaves_the_isr_and_returns_and_two_down_refuse_acks_all() {
    // The lag bound is generous so that a busy machine does not push the live follower out too;
    // the paused one leaves when its session expires (3 s) and it is fenced.
    let mut bs = cluster(&["--replica-lag-time-max-ms", "8000"]);
    wait_all_alive(&bs);
    create(&bs[0], "s");
    let (leader, _, _) = wait_for("a leader", Duration::from_secs(30), || {
        p0(&bs[0], "s").filter(|p| p.0 > 0)
    });
    let li = leader as usize - 1;
    let followers: Vec<usize> = (0..3).filter(|i| *i != li).collect();
    let paused = followers[0];
    let paused_id = paused as i64 + 1;

    // SIGSTOP a follower: its session expires (it is fenced) and it leaves the ISR; acks=all
    // keeps working with two in sync.
    bs[paused].signal("STOP");
    let mut last = None;
    let stopped = Instant::now();
    wait_for(
        "the paused follower out of the ISR",
        Duration::from_secs(30),
        || {
            let seen = p0(&bs[li], "s");
            if seen != last {
                eprintln!("partition 0 (leader, ISR, log end) from the leader: {seen:?}");
                last = seen.clone();
            }
            let (_, isr, _) = seen?;
            (!isr.contains(&paused_id) && isr.len() == 2).then_some(())
        },
    );
    eprintln!(
        "paused follower {paused_id} left the ISR after {:?}",
        stopped.elapsed()
    );
    let out = wait_for("acks=all with two in sync", Duration::from_secs(30), || {
        let o = produce(&bs[li], "s", 0, 100, "all");
        o.status.success().then_some(o)
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bs[paused].signal("CONT");
    wait_for(
        "the resumed follower back in the ISR",
        Duration::from_secs(60),
        || {
            let (_, isr, _) = p0(&bs[li], "s")?;
            (isr.len() == 3).then_some(())
        },
    );

    // One follower down: two in sync. Asking for three in sync is refused before the append.
    bs[followers[1]].kill9();
    wait_for(
        "the killed follower out of the ISR",
        Duration::from_secs(30),
        || {
            let (_, isr, _) = p0(&bs[li], "s")?;
            (isr.len() == 2).then_some(())
        },
    );
    let out = bs[li].cli(
        &["topic", "alter", "s", "--config", "min.insync.replicas=3"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = wait_for("NOT_ENOUGH_REPLICAS", Duration::from_secs(30), || {
        let o = produce(&bs[li], "s", 100, 101, "all");
        String::from_utf8_lossy(&o.stderr)
            .contains("not enough in-sync replicas")
            .then_some(o)
    });
    assert!(!out.status.success());

    // Both followers down (and with them the metadata quorum's majority: nothing can shrink the
    // ISR now): acks=all is never acknowledged, it times out; acks=1 is.
    let out = bs[li].cli(
        &["topic", "alter", "s", "--config", "min.insync.replicas=2"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bs[followers[0]].kill9();
    let lines = "100\n";
    let out = bs[li].cli(
        &[
            "produce",
            "s",
            "--partition",
            "0",
            "--acks",
            "all",
            "--request-timeout-ms",
            "2000",
        ],
        Some(lines),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("DeadlineExceeded"),
        "{err}"
    );
    let out = produce(&bs[li], "s", 101, 110, "1");
    assert!(
        out.status.success(),
        "acks=1 still works: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The timed-out record is in the leader's log but not acknowledged; nothing is below the
    // HW that the lone leader holds alone (the HW waits for the ISR), so consumers see 0..100.
    let got: BTreeMap<u64, ()> = consume(&bs[li], "s").into_iter().map(|v| (v, ())).collect();
    assert_eq!(got.len(), 100, "{:?}", got.keys().last());
}

/// The group coordinator's broker is killed: `__consumer_offsets` is replicated, so the new
/// leader of the group's partition has the commits and a member resumes where the group was.
#[test]
fn a_group_survives_its_coordinators_broker_being_killed() {
    let mut bs = cluster(&[]);
    wait_all_alive(&bs);
    create(&bs[0], "g");
    let out = produce(&bs[0], "g", 0, 50, "all");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let consume_group = |b: &Broker, max: &str| {
        b.cli(
            &[
                "consume",
                "g",
                "--group",
                "grp",
                "--from-beginning",
                "--max-messages",
                max,
                "--session-timeout-ms",
                "6000",
            ],
            None,
        )
    };
    let out = consume_group(&bs[1], "50");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 50);

    // Who coordinates "grp": the leader of its __consumer_offsets partition (replicated 3 ways).
    let partition = sluice_proto::routing::group_partition("grp");
    let offsets = bs[0]
        .cli_json(&["topic", "describe", "__consumer_offsets"])
        .unwrap();
    let p = &offsets["partitions"][partition as usize];
    assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{p}");
    let coordinator = p["leader"].as_i64().unwrap();
    let ci = coordinator as usize - 1;
    let other = (0..3).find(|i| *i != ci).unwrap();
    bs[ci].kill9();
    let killed = Instant::now();

    // The commits are there at the new coordinator, and a member resumes after them.
    let lag = wait_for(
        "the group's offsets at the new coordinator",
        Duration::from_secs(60),
        || {
            let v = bs[other].cli_json(&["group", "lag", "grp"])?;
            (v["partitions"][0]["committed_offset"] == 50).then_some(v)
        },
    );
    eprintln!(
        "coordinator {coordinator} killed: offsets served again after {:?}: {lag}",
        killed.elapsed()
    );
    let out = produce(&bs[other], "g", 50, 60, "all");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = consume_group(&bs[other], "10");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        got,
        (50..60).collect::<Vec<_>>(),
        "resumed after the committed offset"
    );
}

/// A real group member (confluent-kafka, committing after every record) keeps consuming while
/// the broker coordinating its group is killed: it finds the new coordinator, nothing is skipped,
/// and its final commit lands at the end of every partition.
#[test]
fn a_confluent_kafka_group_member_carries_on_when_its_coordinator_is_killed() {
    let mut bs = cluster(&[]);
    wait_all_alive(&bs);
    bs[0].topic_create("cg", 3, 3, &["--config", "min.insync.replicas=2"]);
    for p in 0..3u64 {
        let lines: String = (p * 100..(p + 1) * 100).map(|i| format!("{i}\n")).collect();
        let out = bs[0].cli(
            &[
                "produce",
                "cg",
                "--partition",
                &p.to_string(),
                "--acks",
                "all",
            ],
            Some(&lines),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The group's coordinator: the leader of its __consumer_offsets partition (which exists
    // once the first member looks for it, so the member starts first).
    let group = "cg-group";
    let bootstrap = common::kafka_bootstrap(&bs);
    let work = tempfile::tempdir().unwrap();
    let progress = work.path().join("progress");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/group_failover.py");
    let member = std::process::Command::new(common::python())
        .arg(&script)
        .args([&bootstrap, "cg", group, "300"])
        .arg(&progress)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let consumed =
        |p: &std::path::Path| std::fs::read_to_string(p).map_or(0, |s| s.lines().count());
    wait_for("the member consuming", Duration::from_secs(60), || {
        (consumed(&progress) >= 100).then_some(())
    });
    let partition = sluice_proto::routing::group_partition(group);
    let coordinator = wait_for("the group's coordinator", Duration::from_secs(30), || {
        let v = bs[0].cli_json(&["topic", "describe", "__consumer_offsets"])?;
        v["partitions"][partition as usize]["leader"]
            .as_i64()
            .filter(|l| *l > 0)
    });
    let before = consumed(&progress);
    bs[coordinator as usize - 1].kill9();
    let killed = Instant::now();
    let out = member.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "coordinator {coordinator} killed after {before} records: member {summary} ({:?} after the kill)",
        killed.elapsed()
    );
    assert!(
        out.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(before < 300, "the kill came after the member was done");
    // Its final commit is at the end of every partition, as a survivor reports it.
    let other = (0..3).find(|i| *i + 1 != coordinator as usize).unwrap();
    wait_for(
        "zero lag at the new coordinator",
        Duration::from_secs(30),
        || {
            let v = bs[other].cli_json(&["group", "lag", group])?;
            let parts = v["partitions"].as_array()?;
            (parts.len() == 3
                && parts
                    .iter()
                    .all(|p| p["lag"] == 0 && p["committed_offset"] == 100))
            .then_some(())
        },
    );
}

/// `sluice produce --idempotent` (gRPC idempotent produce) streams records while the partition's
/// leader is killed with kill -9: the client retries whatever may have been written — requests
/// cut off mid-flight, acks=all waits the dead leader never answered — at the new leader, whose
/// producer state (rebuilt from the replicated batches) answers a retry of a written request
/// with its offsets. The partition then holds every record exactly once, in order. Without the
/// broker's duplicate check a retried request that had been replicated is written twice; without
/// the client's retries the produce fails.
#[test]
fn idempotent_grpc_produce_writes_each_record_once_across_a_leader_kill() {
    use std::io::Write;
    let mut bs = cluster(&["--replica-lag-time-max-ms", "10000"]);
    wait_all_alive(&bs);
    create(&bs[0], "idem");
    let (leader, _, _) = wait_for("a leader", Duration::from_secs(30), || {
        p0(&bs[0], "idem").filter(|(l, _, _)| *l > 0)
    });
    let li = leader as usize - 1;
    let client_broker = (0..3).find(|i| *i != li).unwrap_or(0);
    const TOTAL: u64 = 6000;
    let mut producer = std::process::Command::new(common::sluice_bin())
        .args([
            "produce",
            "idem",
            "--partition",
            "0",
            "--acks",
            "all",
            "--idempotent",
        ])
        .env("SLUICE_BROKER", bs[client_broker].addr())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sluice produce");
    let mut stdin = producer.stdin.take().expect("stdin");
    // Paced input, so the kill lands while requests are flowing (the pacing sets no outcome).
    let writer = std::thread::spawn(move || {
        for chunk in 0..TOTAL / 50 {
            let lines: String = (chunk * 50..(chunk + 1) * 50)
                .map(|i| format!("{i}\n"))
                .collect();
            if stdin.write_all(lines.as_bytes()).is_err() {
                return;
            }
            let _ = stdin.flush();
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    wait_for("records flowing", Duration::from_secs(60), || {
        p0(&bs[client_broker], "idem").filter(|(_, _, end)| *end >= 1000)
    });
    bs[li].kill9();
    let killed = Instant::now();
    writer.join().expect("writer");
    let out = producer.wait_with_output().expect("produce output");
    eprintln!(
        "leader {leader} killed; the producer finished {:?} later",
        killed.elapsed()
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = wait_for(
        "every record at the new leader",
        Duration::from_secs(30),
        || {
            let v = try_consume(&bs[client_broker], "idem")?;
            (v.len() as u64 >= TOTAL).then_some(v)
        },
    );
    let dups = got.len() as u64 - TOTAL;
    assert_eq!(dups, 0, "{dups} duplicate record(s)");
    assert_eq!(got, (0..TOTAL).collect::<Vec<_>>());
}
