//! Brokers as members of one cluster, on real `sluice serve` processes: topics created through
//! any broker exist on all of them (kcat -L against each sees the same), clients follow
//! partition leaders across brokers, a killed broker is fenced and its partitions get new
//! leaders, a killed controller is replaced and topic operations go on, SIGTERM moves leadership
//! away before exiting, a restart of everything keeps the metadata, and a single-node data
//! directory from before the cluster is taken over.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{kcat, start_cluster, wait_all_alive, wait_for, Broker};

/// Session timeout the fencing tests run with (the default is 9 s).
const SESSION_MS: u64 = 3_000;

/// `cluster brokers` from `b`: id -> (state, partitions led).
fn brokers(b: &Broker) -> Option<BTreeMap<i64, (String, u64)>> {
    let v = b.cli_json(&["cluster", "brokers"])?;
    v["brokers"]
        .as_array()?
        .iter()
        .map(|x| {
            Some((
                x["id"].as_i64()?,
                (x["state"].as_str()?.to_string(), x["leaders"].as_u64()?),
            ))
        })
        .collect()
}

/// `topic describe` from `b`: partition -> (leader, replicas, isr).
type Layout = BTreeMap<u64, (i64, Vec<i64>, Vec<i64>)>;

fn layout(b: &Broker, topic: &str) -> Option<Layout> {
    let v = b.cli_json(&["topic", "describe", topic])?;
    let ids = |x: &serde_json::Value| -> Option<Vec<i64>> {
        x.as_array()?.iter().map(|i| i.as_i64()).collect()
    };
    v["partitions"]
        .as_array()?
        .iter()
        .map(|p| {
            Some((
                p["partition"].as_u64()?,
                (p["leader"].as_i64()?, ids(&p["replicas"])?, ids(&p["isr"])?),
            ))
        })
        .collect()
}

/// `kcat -L -J` against `b`, reduced to what every broker must agree on: brokers (id, address)
/// and topics (partition, leader, replicas, ISR).
fn kcat_metadata(b: &Broker) -> Option<serde_json::Value> {
    let out = kcat(
        &[
            "-b",
            &format!("127.0.0.1:{}", b.kafka_port),
            "-L",
            "-J",
            "-m",
            "5",
        ],
        None,
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let mut brokers: Vec<(i64, String)> = v["brokers"]
        .as_array()?
        .iter()
        .filter_map(|b| Some((b["id"].as_i64()?, b["name"].as_str()?.to_string())))
        .collect();
    brokers.sort();
    let mut topics: Vec<serde_json::Value> = v["topics"]
        .as_array()?
        .iter()
        .filter(|t| t["topic"].as_str().is_some_and(|n| !n.starts_with("__")))
        .cloned()
        .collect();
    topics.sort_by_key(|t| t["topic"].as_str().unwrap_or("").to_string());
    Some(serde_json::json!({ "brokers": brokers, "topics": topics }))
}

#[test]
fn topics_created_through_any_broker_are_the_same_on_all_three_and_clients_follow_leaders() {
    let bs = start_cluster(3, &[]);
    wait_all_alive(&bs);

    // Replication factor 3 through broker 2; more replicas than brokers is refused.
    bs[1].topic_create("triple", 3, 3, &[]);
    let out = bs[2].cli(
        &["topic", "create", "too-many", "--replication-factor", "4"],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("replication factor 4 is larger than the 3 available broker(s)"),
        "{err}"
    );

    // Every broker describes it the same, with leaders spread over the three (Kafka's placement).
    let layouts: Vec<Layout> = wait_for(
        "the same layout everywhere",
        Duration::from_secs(30),
        || {
            let ls: Vec<Layout> = bs
                .iter()
                .map(|b| layout(b, "triple"))
                .collect::<Option<_>>()?;
            (ls.iter().all(|l| *l == ls[0]) && ls[0].len() == 3).then_some(ls)
        },
    );
    let leaders: std::collections::BTreeSet<i64> = layouts[0].values().map(|p| p.0).collect();
    assert_eq!(leaders.len(), 3, "leaders spread: {:?}", layouts[0]);
    for (leader, replicas, isr) in layouts[0].values() {
        assert_eq!(replicas.len(), 3);
        assert_eq!(replicas[0], *leader, "the preferred leader leads");
        assert_eq!(isr.len(), 3);
    }
    // kcat -L against each broker: the same brokers and the same partitions.
    let seen: Vec<serde_json::Value> =
        wait_for("kcat -L to agree", Duration::from_secs(30), || {
            let all: Vec<serde_json::Value> =
                bs.iter().map(kcat_metadata).collect::<Option<_>>()?;
            (all.iter().all(|m| *m == all[0]) && all[0]["brokers"].as_array()?.len() == 3)
                .then_some(all)
        });
    eprintln!("kcat -L (same from all three): {}", seen[0]);

    // A topic with one replica per partition, spread over the brokers: kcat produces through
    // broker 1 and consumes through broker 3, following each partition's leader.
    bs[0].topic_create("spread", 3, 1, &[]);
    let spread = wait_for("spread on every broker", Duration::from_secs(30), || {
        let ls: Vec<Layout> = bs
            .iter()
            .map(|b| layout(b, "spread"))
            .collect::<Option<_>>()?;
        (ls.iter().all(|l| *l == ls[0]) && ls[0].len() == 3).then(|| ls[0].clone())
    });
    let spread_leaders: std::collections::BTreeSet<i64> = spread.values().map(|p| p.0).collect();
    assert_eq!(spread_leaders.len(), 3, "{spread:?}");
    let b1 = format!("127.0.0.1:{}", bs[0].kafka_port);
    let b3 = format!("127.0.0.1:{}", bs[2].kafka_port);
    for p in 0..3 {
        let lines: String = (0..5).map(|i| format!("p{p}-m{i}\n")).collect();
        kcat(
            &["-b", &b1, "-P", "-t", "spread", "-p", &p.to_string()],
            Some(&lines),
        )
        .unwrap_or_else(|e| panic!("kcat produce to partition {p} through broker 1: {e}"));
    }
    let consumed = kcat(
        &["-b", &b3, "-C", "-t", "spread", "-e", "-f", "%p:%s\n"],
        None,
    )
    .unwrap_or_else(|e| panic!("kcat consume through broker 3: {e}"));
    let mut got: Vec<&str> = consumed.lines().collect();
    got.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|p| (0..5).map(move |i| format!("{p}:p{p}-m{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want);

    // A produce sent to a broker that does not lead the partition: NOT_LEADER_OR_FOLLOWER (6).
    let (p, (leader, _, _)) = spread.iter().next().unwrap();
    let other = &bs[(0..3).find(|i| *i as i64 + 1 != *leader).unwrap()];
    let batch = {
        let mut b = sluice_log::BatchBuilder::new(sluice_log::Compression::None);
        b.push(&sluice_log::Record {
            timestamp: 1,
            key: None,
            value: Some("x".into()),
            headers: vec![],
        });
        b.build().unwrap().to_vec()
    };
    let r = common::kafka_raw::produce_v8(other.kafka_port, "spread", *p as i32, &batch);
    assert_eq!(r.error_code, 6, "{r:?}");
}

#[test]
fn killed_brokers_are_fenced_and_replaced_and_a_full_restart_keeps_the_metadata() {
    let session = SESSION_MS.to_string();
    let mut bs = start_cluster(
        3,
        &[
            "--broker-session-timeout-ms",
            &session,
            "--broker-heartbeat-interval-ms",
            "500",
        ],
    );
    wait_all_alive(&bs);
    bs[0].topic_create("t", 6, 3, &[]);
    let controller = |b: &Broker| b.cli_json(&["cluster", "brokers"])?["controller_id"].as_i64();
    let ctl = wait_for("a controller", Duration::from_secs(30), || {
        controller(&bs[0])
    });

    // kill -9 a broker that is not the controller and leads partitions.
    let victim = (1..=3).find(|id| *id != ctl).unwrap();
    let vi = victim as usize - 1;
    let witness = (1..=3).find(|id| *id != victim).unwrap() as usize - 1;
    let before = wait_for("t everywhere", Duration::from_secs(30), || {
        layout(&bs[witness], "t")
    });
    assert!(before.values().any(|p| p.0 == victim), "{before:?}");
    let killed = Instant::now();
    bs[vi].kill9();
    let after = wait_for(
        "the victim fenced and its partitions moved",
        Duration::from_secs(30),
        || {
            let m = brokers(&bs[witness])?;
            let l = layout(&bs[witness], "t")?;
            (m.get(&victim)?.0 == "fenced"
                && l.values().all(|(leader, _, isr)| {
                    *leader != victim && *leader > 0 && !isr.contains(&victim)
                }))
            .then_some(l)
        },
    );
    let fenced_after = killed.elapsed();
    eprintln!(
        "broker {victim} killed: fenced and its partitions re-led after {fenced_after:?} (session timeout {SESSION_MS} ms)"
    );
    assert!(
        fenced_after >= Duration::from_millis(SESSION_MS / 2),
        "fenced before its session could have expired ({fenced_after:?})"
    );
    assert_eq!(after.len(), 6);

    // It comes back: registered again, unfenced once caught up.
    bs[vi].launch_listening();
    wait_for("the victim alive again", Duration::from_secs(30), || {
        bs[witness].sees_alive(&[1, 2, 3]).then_some(())
    });

    // kill -9 of the active controller: another takes over and topic operations go on.
    let ci = ctl as usize - 1;
    let killed = Instant::now();
    bs[ci].kill9();
    let survivor = (0..3).find(|i| *i != ci).unwrap();
    let out = wait_for(
        "a topic created after the controller died",
        Duration::from_secs(60),
        || {
            let out = bs[survivor].cli(
                &[
                    "topic",
                    "create",
                    "after-failover",
                    "--partitions",
                    "2",
                    "--replication-factor",
                    "2",
                ],
                None,
            );
            out.status.success().then_some(out)
        },
    );
    drop(out);
    let ops_back = killed.elapsed();
    let new_ctl = wait_for("a new controller", Duration::from_secs(30), || {
        controller(&bs[survivor]).filter(|c| *c != ctl)
    });
    eprintln!(
        "controller {ctl} killed: controller {new_ctl} took a CreateTopics after {ops_back:?}"
    );
    wait_for("the old controller fenced", Duration::from_secs(30), || {
        (brokers(&bs[survivor])?.get(&ctl)?.0 == "fenced").then_some(())
    });

    // Everything restarts: the metadata is all there, the same on every broker.
    bs[ci].launch_listening();
    let before: Vec<Layout> = wait_for("both topics described", Duration::from_secs(60), || {
        let ls: Vec<Layout> = ["t", "after-failover"]
            .iter()
            .map(|t| layout(&bs[0], t))
            .collect::<Option<_>>()?;
        Some(ls)
    });
    for b in bs.iter_mut() {
        b.kill9();
    }
    for b in bs.iter_mut() {
        b.launch_listening();
    }
    wait_for(
        "three alive brokers after a full restart",
        Duration::from_secs(60),
        || bs[0].sees_alive(&[1, 2, 3]).then_some(()),
    );
    for b in &bs {
        let t = wait_for("t after restart", Duration::from_secs(30), || {
            layout(b, "t")
        });
        let f = wait_for(
            "after-failover after restart",
            Duration::from_secs(30),
            || layout(b, "after-failover"),
        );
        assert_eq!(t.len(), before[0].len());
        assert_eq!(f.len(), before[1].len());
        let reps = |l: &Layout| l.values().map(|p| p.1.clone()).collect::<Vec<_>>();
        assert_eq!(reps(&t), reps(&before[0]), "replica assignment survives");
        assert_eq!(reps(&f), reps(&before[1]));
    }
}

#[test]
fn sigterm_moves_leadership_away_before_the_broker_exits() {
    let mut bs = start_cluster(3, &[]);
    wait_all_alive(&bs);
    bs[0].topic_create("t", 3, 3, &[]);
    let l = wait_for("t on broker 3", Duration::from_secs(30), || {
        layout(&bs[2], "t")
    });
    assert!(l.values().any(|p| p.0 == 1), "{l:?}");
    // The default session timeout is 9 s: seeing broker 1 lead nothing well before that means
    // the controlled shutdown moved its leadership, not the session expiry.
    let stopped = Instant::now();
    assert_eq!(bs[0].terminate(), Some(0));
    let mut last = None;
    let moved = wait_for("broker 1 leads nothing", Duration::from_secs(30), || {
        let l = layout(&bs[2], "t");
        let m = brokers(&bs[2]);
        if last.as_ref() != Some(&(l.clone(), m.clone())) {
            eprintln!("seen from broker 3: {l:?} {m:?}");
            last = Some((l.clone(), m.clone()));
        }
        let (l, m) = (l?, m?);
        (l.values().all(|p| p.0 != 1 && p.0 > 0) && m.get(&1)?.0 == "fenced").then_some(l)
    });
    let took = stopped.elapsed();
    eprintln!(
        "SIGTERM of broker 1: leadership moved and the broker fenced within {took:?}: {moved:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_single_node_data_directory_from_before_the_cluster_is_taken_over() {
    // Make a data directory, then turn it into the pre-cluster layout: topics.json, partition
    // directories without partition.metadata, no metadata log.
    let mut b = Broker::start();
    let out = b.cli(
        &[
            "topic",
            "create",
            "old",
            "--partitions",
            "2",
            "--config",
            "retention.ms=123456789",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b.cli(&["produce", "old", "--partition", "1"], Some("one\ntwo\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = b.cli_json(&["topic", "describe", "old"]).unwrap();
    assert_eq!(b.terminate(), Some(0));
    let data = b.data_dir();
    std::fs::remove_dir_all(data.join("meta/raft")).unwrap();
    for p in 0..2 {
        let _ = std::fs::remove_file(data.join(format!("old-{p}/partition.metadata")));
    }
    std::fs::write(
        data.join("meta/topics.json"),
        r#"{"old":{"partitions":2,"replication_factor":1,"configs":{"retention.ms":"123456789"}}}"#,
    )
    .unwrap();
    // A directory of no topic: set aside (not deleted) once the broker has caught up.
    std::fs::create_dir_all(data.join("ghost-0")).unwrap();

    b.launch();
    let d = wait_for("the old topic back", Duration::from_secs(30), || {
        b.cli_json(&["topic", "describe", "old"])
    });
    assert_eq!(d["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(d["configs"]["retention.ms"], "123456789");
    assert_eq!(d["partitions"][1]["log_end_offset"], 2, "{d}");
    assert_eq!(id["partitions"][1]["log_end_offset"], 2);
    let out = b.cli(
        &["consume", "old", "--partition", "1", "--from-beginning"],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    assert!(data.join("meta/topics.json.imported").exists());
    assert!(!data.join("meta/topics.json").exists());
    wait_for("the stray set aside", Duration::from_secs(30), || {
        let set_aside = std::fs::read_dir(&data).ok()?.flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("ghost-0.")
                && e.file_name().to_string_lossy().ends_with(".stray")
        });
        (set_aside && !data.join("ghost-0").exists()).then_some(())
    });
    // Restarted again: nothing is imported twice, the topic stays.
    assert_eq!(b.terminate(), Some(0));
    b.launch();
    let d = wait_for(
        "the old topic after another restart",
        Duration::from_secs(30),
        || b.cli_json(&["topic", "describe", "old"]),
    );
    assert_eq!(d["partitions"][1]["log_end_offset"], 2);
}

#[test]
fn consumer_groups_work_whichever_broker_clients_start_from() {
    let bs = start_cluster(3, &[]);
    wait_all_alive(&bs);
    bs[0].topic_create("events", 3, 1, &[]);
    wait_for("events everywhere", Duration::from_secs(30), || {
        bs.iter()
            .all(|b| layout(b, "events").is_some_and(|l| l.len() == 3))
            .then_some(())
    });
    let kafka = |i: usize| format!("127.0.0.1:{}", bs[i].kafka_port);
    for p in 0..3 {
        let lines: String = (0..10).map(|i| format!("e{p}-{i}\n")).collect();
        kcat(
            &["-b", &kafka(1), "-P", "-t", "events", "-p", &p.to_string()],
            Some(&lines),
        )
        .unwrap_or_else(|e| panic!("kcat produce: {e}"));
    }
    // librdkafka's balanced consumer, bootstrapped from broker 3: FindCoordinator sends it to
    // the leader of the group's __consumer_offsets partition, wherever that is.
    let out = kcat(
        &[
            "-b",
            &kafka(2),
            "-G",
            "kcat-cluster",
            "-X",
            "auto.offset.reset=earliest",
            "-c",
            "30",
            "-f",
            "%s\n",
            "events",
        ],
        None,
    )
    .unwrap_or_else(|e| panic!("kcat -G: {e}"));
    assert_eq!(out.lines().count(), 30);
    // sluice's own group consumer, bootstrapped from broker 1.
    let out = bs[0].cli(
        &[
            "consume",
            "events",
            "--group",
            "cli-cluster",
            "--from-beginning",
            "--max-messages",
            "30",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 30);
    // Both groups' commits are seen from broker 2, whoever coordinates them.
    for g in ["kcat-cluster", "cli-cluster"] {
        let lag = wait_for("committed offsets", Duration::from_secs(30), || {
            let v = bs[1].cli_json(&["group", "lag", g])?;
            (v["total_lag"] == 0
                && v["partitions"].as_array()?.len() == 3
                && v["partitions"]
                    .as_array()?
                    .iter()
                    .all(|p| p["committed_offset"] == 10 && p["log_end_offset"] == 10))
            .then_some(v)
        });
        eprintln!("{g}: {lag}");
    }
    let listed = wait_for("both groups listed", Duration::from_secs(30), || {
        let v = bs[2].cli_json(&["group", "list"])?;
        let names: Vec<String> = v
            .as_array()?
            .iter()
            .filter_map(|g| g["group"].as_str().map(String::from))
            .collect();
        (names.contains(&"kcat-cluster".to_string()) && names.contains(&"cli-cluster".to_string()))
            .then_some(names)
    });
    assert_eq!(listed.len(), 2, "{listed:?}");
}
