//! Leader elections on real processes: with `unclean.leader.election.enable` off (the default) a
//! partition whose in-sync replicas are all down stays offline rather than losing data; turned on,
//! an out-of-sync replica leads, and the old leader, back, discards what the new one lacks and
//! logs how many committed records were lost.

mod common;

use std::time::Duration;

use common::{start_cluster, wait_all_alive, wait_for, Broker};

/// Partition 0 of `topic` as `b` describes it: (leader, replicas, ISR).
fn p0(b: &Broker, topic: &str) -> Option<(i64, Vec<i64>, Vec<i64>)> {
    let v = b.cli_json(&["topic", "describe", topic])?;
    let p = &v["partitions"][0];
    let list = |k: &str| -> Option<Vec<i64>> {
        Some(p[k].as_array()?.iter().filter_map(|x| x.as_i64()).collect())
    };
    Some((p["leader"].as_i64()?, list("replicas")?, list("isr")?))
}

fn produce(b: &Broker, topic: &str, from: u64, to: u64) -> std::process::Output {
    let lines: String = (from..to).map(|i| format!("{i}\n")).collect();
    b.cli(
        &[
            "produce",
            topic,
            "--partition",
            "0",
            "--acks",
            "all",
            "--request-timeout-ms",
            "5000",
        ],
        Some(&lines),
    )
}

fn consume(b: &Broker, topic: &str, want: usize) -> Vec<u64> {
    b.consume_lines(topic, want)
        .iter()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// The HW the broker last checkpointed for partition 0 of `topic` (its data directory's
/// `replication-offset-checkpoint`: `0`, a count, then `<topic> <partition> <hw>` lines).
fn checkpointed_hw(b: &Broker, topic: &str) -> Option<u64> {
    let text = std::fs::read_to_string(b.data_dir().join("replication-offset-checkpoint")).ok()?;
    text.lines().skip(2).find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == topic && f.next()? == "0")
            .then(|| f.next()?.parse().ok())
            .flatten()
    })
}

#[test]
fn unclean_election_off_keeps_the_partition_offline_and_on_elects_and_counts_the_loss() {
    // Five voters, so the metadata quorum survives both replicas of the partition being down.
    let mut bs = start_cluster(
        5,
        &[
            "--broker-session-timeout-ms",
            "3000",
            "--broker-heartbeat-interval-ms",
            "500",
            "--replica-lag-time-max-ms",
            "10000",
            "--leader-imbalance-check-interval-ms",
            "3600000",
        ],
    );
    wait_all_alive(&bs);
    bs[0].topic_create("u", 1, 2, &[]);
    let (leader, replicas, _) = wait_for("both replicas in sync", Duration::from_secs(30), || {
        p0(&bs[0], "u").filter(|(l, _, isr)| *l > 0 && isr.len() == 2)
    });
    let follower = *replicas.iter().find(|r| **r != leader).unwrap();
    let (li, fi) = (leader as usize - 1, follower as usize - 1);
    let observer = (0..5).find(|i| *i != li && *i != fi).unwrap();
    let out = produce(&bs[observer], "u", 0, 100);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The follower dies: fenced, it leaves the ISR; the leader alone acknowledges 100..150.
    bs[fi].kill9();
    wait_for(
        "the ISR down to the leader",
        Duration::from_secs(30),
        || p0(&bs[observer], "u").filter(|(_, _, isr)| *isr == vec![leader]),
    );
    let out = wait_for(
        "acks=all with the leader alone",
        Duration::from_secs(30),
        || {
            let o = produce(&bs[observer], "u", 100, 150);
            o.status.success().then_some(o)
        },
    );
    drop(out);
    // Its HW (150: committed) is on disk before it dies.
    wait_for(
        "the leader's HW checkpointed",
        Duration::from_secs(30),
        || (checkpointed_hw(&bs[li], "u")? == 150).then_some(()),
    );
    bs[li].kill9();
    wait_for("the partition offline", Duration::from_secs(30), || {
        p0(&bs[observer], "u").filter(|(l, _, _)| *l == -1)
    });

    // The out-of-sync follower comes back: the only live replica, but not in the ISR. Unclean
    // elections are off: the partition stays offline. (Its unfencing and the controller's
    // election of offline partitions are one decision, so once it is alive the answer is final.)
    bs[fi].launch_listening();
    wait_for("the follower alive again", Duration::from_secs(60), || {
        bs[observer].sees_alive(&[follower]).then_some(())
    });
    let (l, _, isr) = p0(&bs[observer], "u").unwrap();
    assert_eq!(
        (l, isr),
        (-1, vec![leader]),
        "offline, the dead leader its last ISR member"
    );
    let out = bs[observer].cli(
        &[
            "produce",
            "u",
            "--partition",
            "0",
            "--request-timeout-ms",
            "2000",
        ],
        Some("x\n"),
    );
    assert!(!out.status.success(), "produced to an offline partition");

    // Allowed now: the follower leads, records 100..150 are gone, new ones go on.
    let out = bs[observer].cli(
        &[
            "topic",
            "alter",
            "u",
            "--config",
            "unclean.leader.election.enable=true",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the unclean leader", Duration::from_secs(30), || {
        p0(&bs[observer], "u").filter(|(l, _, _)| *l == follower)
    });
    let out = wait_for(
        "producing to the new leader",
        Duration::from_secs(30),
        || {
            let o = produce(&bs[observer], "u", 150, 170);
            o.status.success().then_some(o)
        },
    );
    drop(out);
    let mut expected: Vec<u64> = (0..100).collect();
    expected.extend(150..170);
    assert_eq!(consume(&bs[observer], "u", 120), expected);

    // The old leader returns as a follower: it discards the 50 records the new leader never had,
    // says they were committed and lost, and rejoins the ISR.
    bs[li].launch_listening();
    let line = wait_for("the loss logged", Duration::from_secs(60), || {
        bs[li]
            .log_lines("committed record(s) lost")
            .into_iter()
            .find(|l| l.contains("topic=u"))
    });
    eprintln!("{line}");
    assert!(line.contains("discarded=50"), "{line}");
    assert!(line.contains("lost_committed=50"), "{line}");
    wait_for(
        "both replicas in sync again",
        Duration::from_secs(60),
        || p0(&bs[observer], "u").filter(|(_, _, isr)| isr.len() == 2),
    );
    assert_eq!(consume(&bs[observer], "u", 120), expected);
}
