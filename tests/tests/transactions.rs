//! Transactions on real processes: an unmodified confluent-kafka consume-transform-produce loop
//! (read_committed consumer, transactional producer, send_offsets_to_transaction) copies a topic
//! across a three-broker cluster while the broker coordinating its transactions is killed with
//! kill -9. The output must hold every input record exactly once and the committed input offsets
//! must be the input's ends: the new coordinator finishes or aborts what the dead one left, and
//! the epoch fencing keeps any late write of the old one out.

mod common;

use std::time::{Duration, Instant};

use common::{start_cluster, wait_all_alive, wait_for};

#[test]
fn a_transactional_copy_loop_is_exactly_once_when_its_coordinator_is_killed() {
    let mut bs = start_cluster(
        3,
        &[
            "--broker-session-timeout-ms",
            "3000",
            "--broker-heartbeat-interval-ms",
            "500",
        ],
    );
    wait_all_alive(&bs);
    const TOTAL: u64 = 1500;
    bs[0].topic_create("txin", 3, 3, &["--config", "min.insync.replicas=2"]);
    bs[0].topic_create("txout", 3, 3, &["--config", "min.insync.replicas=2"]);
    common::produce_numbers(&bs[0], "txin", 3, TOTAL);
    let bootstrap = common::kafka_bootstrap(&bs);
    let txn_id = "copier";
    let work = tempfile::tempdir().unwrap();
    let progress = work.path().join("progress");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/txn_failover.py");
    let copier = std::process::Command::new(common::python())
        .arg(&script)
        .args([
            &bootstrap,
            "txin",
            "txout",
            "copier-group",
            txn_id,
            &TOTAL.to_string(),
        ])
        .arg(&progress)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let committed = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_or(0, |s| {
            s.lines()
                .last()
                .and_then(|l| l.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
    };
    wait_for("the copier committing", Duration::from_secs(90), || {
        (committed(&progress) >= 200).then_some(())
    });
    // Its coordinator: the leader of its __transaction_state partition.
    let partition = sluice_proto::routing::transaction_partition(txn_id);
    let coordinator = wait_for("the copier's coordinator", Duration::from_secs(30), || {
        let v = bs[0].cli_json(&["topic", "describe", "__transaction_state"])?;
        v["partitions"][partition as usize]["leader"]
            .as_i64()
            .filter(|l| *l > 0)
    });
    let before = committed(&progress);
    bs[coordinator as usize - 1].kill9();
    let killed = Instant::now();
    let out = copier.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "coordinator {coordinator} killed after {before} committed: copier {summary} ({:?} after the kill)",
        killed.elapsed()
    );
    assert!(
        out.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(before < TOTAL, "the kill came after the copy was done");
    let v: serde_json::Value = serde_json::from_str(summary.trim()).expect("summary is JSON");
    assert_eq!(v["out"], TOTAL);
    assert_eq!(v["duplicates"], 0);

    // The operator's view from whichever live broker is asked: `transactions list` asks every
    // broker, `describe` finds the id's new coordinator.
    let survivor = (1..=3i64).find(|id| *id != coordinator).unwrap_or(1);
    let asked = &bs[survivor as usize - 1];
    let described = wait_for(
        "the copier's new coordinator",
        Duration::from_secs(60),
        || {
            let d = asked.cli_json(&["transactions", "describe", "--transactional-id", txn_id])?;
            let c = d["coordinator_id"].as_i64()?;
            (c != coordinator && c > 0).then_some(d)
        },
    );
    assert!(
        ["CompleteCommit", "CompleteAbort", "Empty"]
            .contains(&described["state"].as_str().unwrap_or("")),
        "the copier finished, so no transaction is open: {described}"
    );
    assert!(
        described["producer_id"].as_i64().is_some_and(|p| p >= 0),
        "{described}"
    );
    wait_for(
        "the copier in the cluster-wide listing",
        Duration::from_secs(60),
        || {
            let list = asked.cli_json(&["transactions", "list"])?;
            list.as_array()?
                .iter()
                .any(|t| {
                    t["transactional_id"] == txn_id && t["producer_id"] == described["producer_id"]
                })
                .then_some(())
        },
    );
}

/// The single-broker transaction checks of `interop/kafka_clients.py` (commit, abort, fencing,
/// read_committed, send_offsets_to_transaction, kafka-python) on a three-broker cluster, with
/// topics of replication factor 1: most partitions in a transaction live on brokers other than
/// its coordinator. (AddPartitionsToTxn once checked the coordinator's own replicas and answered
/// NOT_LEADER_FOR_PARTITION for the rest, which librdkafka treats as fatal for the transaction.)
#[test]
fn transactions_span_partitions_their_coordinator_does_not_host() {
    let bs = start_cluster(3, &[]);
    wait_all_alive(&bs);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/kafka_clients.py");
    let out = std::process::Command::new(common::python())
        .arg(&script)
        .arg(common::kafka_bootstrap(&bs))
        .arg("transactions")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("transactions: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
