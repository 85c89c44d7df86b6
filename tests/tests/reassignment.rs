//! Partition reassignment on real processes (KIP-455): a partition moves to a broker that had no
//! replica of it and off its leader, with its data; a reorder; a throttled move copies no faster
//! than its throttle and can be cancelled, leaving nothing behind; OffsetForLeaderEpoch answers
//! for the moved partition; an unmodified kafka-python moves a partition through the Kafka
//! protocol while its consumer reads across the leader change.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka_raw::offset_for_leader_epoch_v3;
use common::{python, start_cluster, wait_all_alive, wait_for, Broker};

fn cluster() -> Vec<Broker> {
    start_cluster(
        3,
        &[
            "--broker-session-timeout-ms",
            "3000",
            "--broker-heartbeat-interval-ms",
            "500",
            // This is about moving replicas, not about slow followers on a loaded machine.
            "--replica-lag-time-max-ms",
            "10000",
        ],
    )
}

/// Partition `p` of `topic` as `b` describes it (offsets and size are `b`'s own replica's).
fn part(b: &Broker, topic: &str, p: usize) -> Option<serde_json::Value> {
    let v = b.cli_json(&["topic", "describe", topic])?;
    Some(v["partitions"][p].clone())
}

fn ids(v: &serde_json::Value) -> Vec<i32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_i64())
                .map(|x| x as i32)
                .collect()
        })
        .unwrap_or_default()
}

fn produce(b: &Broker, topic: &str, lines: &str, acks: &str) {
    let out = b.cli(
        &["produce", topic, "--partition", "0", "--acks", acks],
        Some(lines),
    );
    assert!(
        out.status.success(),
        "produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn replica_dir(b: &Broker, topic: &str) -> std::path::PathBuf {
    b.data_dir().join(format!("{topic}-0"))
}

fn cli_ok(b: &Broker, args: &[&str]) -> String {
    let out = b.cli(args, None);
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_partition_moves_to_a_fresh_broker_and_off_its_leader_with_its_data() {
    let bs = cluster();
    wait_all_alive(&bs);
    bs[0].topic_create("m", 1, 2, &[]);
    let lines: String = (0..1000).map(|i| format!("{i}\n")).collect();
    produce(&bs[1], "m", &lines, "all");
    let before = part(&bs[0], "m", 0).unwrap();
    let (leader, replicas) = (
        before["leader"].as_i64().unwrap() as i32,
        ids(&before["replicas"]),
    );
    let old_epoch = before["leader_epoch"].as_i64().unwrap() as i32;
    let other = *replicas.iter().find(|b| **b != leader).unwrap();
    let fresh = (1..=3).find(|b| !replicas.contains(b)).unwrap();
    let broker = |id: i32| &bs[id as usize - 1];
    assert!(!replica_dir(broker(fresh), "m").exists());

    // Refused with a reason: an unknown broker, duplicates.
    for bad in ["9", "1,1"] {
        let out = bs[0].cli(
            &[
                "topic",
                "reassign",
                "m",
                "--partition",
                "0",
                "--replicas",
                bad,
            ],
            None,
        );
        assert!(!out.status.success(), "moving to {bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid replica assignment"), "{err}");
    }

    // Onto the broker without a replica, off the leader.
    let target = format!("{fresh},{other}");
    let started = Instant::now();
    cli_ok(
        &bs[0],
        &[
            "topic",
            "reassign",
            "m",
            "--partition",
            "0",
            "--replicas",
            &target,
            "--wait",
            "--timeout-secs",
            "120",
        ],
    );
    eprintln!(
        "moved {replicas:?} -> [{target}] in {:?}",
        started.elapsed()
    );
    let after = wait_for(
        "the new replicas in every ISR",
        Duration::from_secs(30),
        || {
            let p = part(&bs[0], "m", 0)?;
            let mut isr = ids(&p["isr"]);
            isr.sort_unstable();
            let mut want = vec![fresh, other];
            want.sort_unstable();
            (ids(&p["replicas"]) == vec![fresh, other] && isr == want).then_some(p)
        },
    );
    assert!(ids(&after["adding"]).is_empty() && ids(&after["removing"]).is_empty());
    let new_leader = after["leader"].as_i64().unwrap() as i32;
    assert_ne!(new_leader, leader, "the removed leader handed over");
    assert!(after["leader_epoch"].as_i64().unwrap() as i32 > old_epoch);
    // The removed replica's data goes; the fresh one holds every record.
    wait_for(
        "the old leader's replica deleted",
        Duration::from_secs(30),
        || (!replica_dir(broker(leader), "m").exists()).then_some(()),
    );
    wait_for(
        "the fresh replica caught up",
        Duration::from_secs(30),
        || (part(broker(fresh), "m", 0)?["log_end_offset"].as_u64()? == 1000).then_some(()),
    );
    let got = bs[0].consume_lines("m", 1000);
    assert_eq!(got, (0..1000).map(|i| i.to_string()).collect::<Vec<_>>());

    // OffsetForLeaderEpoch (KIP-320) from the new leader: the old epoch ends where the records
    // end; a stale current epoch is fenced; an epoch from the future is unknown; the broker
    // that lost its replica refuses.
    let new_epoch = after["leader_epoch"].as_i64().unwrap() as i32;
    let port = broker(new_leader).kafka_port;
    assert_eq!(
        offset_for_leader_epoch_v3(port, "m", 0, new_epoch, old_epoch),
        (0, old_epoch, 1000)
    );
    assert_eq!(
        offset_for_leader_epoch_v3(port, "m", 0, old_epoch, old_epoch).0,
        74
    );
    assert_eq!(
        offset_for_leader_epoch_v3(port, "m", 0, -1, new_epoch + 5),
        (0, -1, -1)
    );
    assert_eq!(
        offset_for_leader_epoch_v3(broker(leader).kafka_port, "m", 0, -1, old_epoch).0,
        6,
        "NOT_LEADER_OR_FOLLOWER from a broker without the partition"
    );

    // A reorder changes only the preference: complete at once, nothing copied or deleted.
    let reordered = format!("{other},{fresh}");
    cli_ok(
        &bs[2],
        &[
            "topic",
            "reassign",
            "m",
            "--partition",
            "0",
            "--replicas",
            &reordered,
            "--wait",
        ],
    );
    let p = wait_for("the reorder", Duration::from_secs(30), || {
        part(&bs[0], "m", 0).filter(|p| ids(&p["replicas"]) == vec![other, fresh])
    });
    assert!(ids(&p["adding"]).is_empty());
    assert!(replica_dir(broker(fresh), "m").exists() && replica_dir(broker(other), "m").exists());

    // The Kafka protocol: kafka-python moves a second partition and reads across the move.
    bs[0].topic_create("k", 1, 2, &[]);
    let lines: String = (0..200).map(|i| format!("{i}\n")).collect();
    produce(&bs[0], "k", &lines, "all");
    let k = part(&bs[0], "k", 0).unwrap();
    let (kl, kr) = (k["leader"].as_i64().unwrap() as i32, ids(&k["replicas"]));
    let kfresh = (1..=3).find(|b| !kr.contains(b)).unwrap();
    let kother = *kr.iter().find(|b| **b != kl).unwrap();
    let bootstrap: String = common::kafka_bootstrap(&bs);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/reassign_client.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args([&bootstrap, "k", "200", &format!("{kfresh},{kother}")])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kafka-python: {stdout}");
    let k = part(&bs[0], "k", 0).unwrap();
    assert_eq!(ids(&k["replicas"]), vec![kfresh, kother]);
}

#[test]
fn a_throttled_move_copies_no_faster_than_its_throttle_and_a_cancel_leaves_nothing_behind() {
    let bs = cluster();
    wait_all_alive(&bs);
    bs[0].topic_create("t", 1, 1, &[]);
    // 3 MB in 100 KB batches (the throttle may overdraw by one batch).
    let value = "x".repeat(1000);
    let lines: String = (0..100).map(|_| format!("{value}\n")).collect();
    for _ in 0..30 {
        produce(&bs[0], "t", &lines, "1");
    }
    let before = part(&bs[0], "t", 0).unwrap();
    let from = ids(&before["replicas"])[0];
    let to = (1..=3).find(|b| *b != from).unwrap();
    let dest = &bs[to as usize - 1];

    const RATE: u64 = 50_000;
    let started = Instant::now();
    cli_ok(
        &bs[0],
        &[
            "topic",
            "reassign",
            "t",
            "--partition",
            "0",
            "--replicas",
            &format!("{from},{to}"),
            "--throttle",
            &RATE.to_string(),
        ],
    );
    // The copy progresses, never faster than the throttle (plus its one-second burst and one
    // batch): a busy machine only makes it slower, so the bound holds at every poll.
    let mut polls = 0;
    let copied = wait_for(
        "the throttled copy to progress",
        Duration::from_secs(120),
        || {
            let size = part(dest, "t", 0)?["size_bytes"].as_u64()?;
            polls += 1;
            let elapsed = started.elapsed().as_secs_f64();
            let bound = RATE as f64 * (elapsed + 1.0) + 250_000.0;
            assert!(
                (size as f64) <= bound,
                "copied {size} bytes in {elapsed:.1}s with a throttle of {RATE} B/s"
            );
            (size >= 150_000).then_some(size)
        },
    );
    eprintln!(
        "copied {copied} bytes in {:?} ({polls} polls)",
        started.elapsed()
    );
    let listed = bs[1]
        .cli_json(&["topic", "reassignments", "t"])
        .expect("list reassignments");
    assert_eq!(ids(&listed[0]["adding"]), vec![to], "{listed}");

    // Cancel: back to the original replica; the half-copied one is deleted.
    cli_ok(
        &bs[2],
        &["topic", "reassign", "t", "--partition", "0", "--cancel"],
    );
    wait_for("the original replicas", Duration::from_secs(30), || {
        let p = part(&bs[0], "t", 0)?;
        (ids(&p["replicas"]) == vec![from] && ids(&p["adding"]).is_empty()).then_some(())
    });
    wait_for(
        "the cancelled replica deleted",
        Duration::from_secs(30),
        || (!replica_dir(dest, "t").exists()).then_some(()),
    );
    assert!(bs[0]
        .cli_json(&["topic", "reassignments"])
        .is_some_and(|v| v.as_array().is_some_and(|a| a.is_empty())));
    assert_eq!(bs[0].consume_lines("t", 3000).len(), 3000);
}
