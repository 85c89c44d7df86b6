//! gRPC consumer groups end to end: real `sluice consume --group` processes (gRPC members with
//! server-side assignment) against a real broker.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sluice_bin, Broker};

/// A `sluice consume --group` process whose stdout lines (records) and stderr "joined group"
/// lines (one per generation it joined) are collected as they arrive.
struct GroupConsumer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    joins: Arc<Mutex<Vec<String>>>,
}

impl GroupConsumer {
    fn start(b: &Broker, topic: &str, group: &str, extra: &[&str]) -> GroupConsumer {
        Self::start_from(b, topic, group, true, extra)
    }

    /// `from_beginning: false`: without a committed offset, start at the end (Kafka's
    /// auto.offset.reset=latest, the console consumer's default).
    fn start_from(
        b: &Broker,
        topic: &str,
        group: &str,
        from_beginning: bool,
        extra: &[&str],
    ) -> GroupConsumer {
        let mut child = Command::new(sluice_bin())
            .args(["consume", topic, "--group", group])
            .args(if from_beginning {
                &["--from-beginning"][..]
            } else {
                &[][..]
            })
            .args([
                "--session-timeout-ms",
                "3000",
                "--commit-interval-ms",
                "200",
            ])
            .args(["--format", "%p %o %s"])
            .args(extra)
            .env("SLUICE_BROKER", b.addr())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice consume --group");
        let stderr = child.stderr.take().expect("stderr");
        let joins = Arc::new(Mutex::new(Vec::new()));
        let sink = joins.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[consumer] {line}");
                if line.starts_with("joined group") {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        GroupConsumer {
            child,
            lines,
            joins,
        }
    }

    /// (partition, offset, value) of every record printed so far.
    fn records(&self) -> Vec<(u32, u64, String)> {
        Self::parse(&self.lines.lock().unwrap())
    }

    fn parse(lines: &[String]) -> Vec<(u32, u64, String)> {
        lines
            .iter()
            .map(|l| {
                let mut f = l.splitn(3, ' ');
                let p = f.next().unwrap().parse().unwrap();
                let o = f.next().unwrap().parse().unwrap();
                (p, o, f.next().unwrap_or_default().to_string())
            })
            .collect()
    }

    fn joins(&self) -> usize {
        self.joins.lock().unwrap().len()
    }

    fn sigterm(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("consumer did not exit after SIGTERM");
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker config file that lives as long as the test process (the broker reads it at start).
fn write_config(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `json` for wait loops: `None` while the command fails (a group not formed yet, a broker
/// restarting), so the loop retries instead of panicking on its first poll.
fn try_json(b: &Broker, args: &[&str]) -> Option<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let o = b.cli(&all, None);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn json(b: &Broker, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let o = b.cli(&all, None);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("json output")
}

/// member id → assigned partitions of topic `t`.
fn assignment(b: &Broker, group: &str) -> (String, BTreeMap<String, BTreeSet<u64>>) {
    try_assignment(b, group).expect("group describe")
}

fn try_assignment(b: &Broker, group: &str) -> Option<(String, BTreeMap<String, BTreeSet<u64>>)> {
    let d = try_json(b, &["group", "describe", group])?;
    let members = d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let parts = m["assignment"]
                .as_array()
                .unwrap()
                .iter()
                .map(|tp| {
                    let tp = tp.as_str().unwrap(); // "topic-partition"
                    tp.rsplit_once('-').unwrap().1.parse().unwrap()
                })
                .collect();
            (m["member_id"].as_str().unwrap().to_string(), parts)
        })
        .collect();
    Some((d["state"].as_str()?.to_string(), members))
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn produce(b: &Broker, topic: &str, from: u32, to: u32) {
    let input: String = (from..to).map(|i| format!("k{i}:v{i}\n")).collect();
    let o = b.cli(&["produce", topic, "--key-separator", ":"], Some(&input));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Checks every partition's lag row: lag = log end offset − committed offset. Returns
/// partition → (committed, log end).
fn lag_rows(b: &Broker, group: &str) -> BTreeMap<u64, (Option<u64>, u64)> {
    try_lag_rows(b, group).expect("group lag")
}

/// `lag_rows` for wait loops: `None` while the command fails.
fn try_lag_rows(b: &Broker, group: &str) -> Option<BTreeMap<u64, (Option<u64>, u64)>> {
    let lag = try_json(b, &["group", "lag", group])?;
    let mut total = 0;
    let rows = lag["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let committed = r["committed_offset"].as_u64();
            let end = r["log_end_offset"].as_u64().unwrap();
            let lag = committed.map(|c| end - c);
            assert_eq!(r["lag"].as_u64(), lag, "{r}");
            total += lag.unwrap_or(0);
            (r["partition"].as_u64().unwrap(), (committed, end))
        })
        .collect();
    assert_eq!(lag["total_lag"].as_u64(), Some(total));
    Some(rows)
}

#[test]
fn grpc_group_members_split_rebalance_on_silent_death_commit_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, "group_initial_rebalance_delay_ms = 300\n").unwrap();
    let mut b = Broker::start_with(vec!["--config".into(), cfg.display().to_string()]);
    let topic = "orders";
    let out = b.cli(&["topic", "create", topic, "--partitions", "6"], None);
    assert!(out.status.success());

    // Three members split six partitions two each. The records come once they have (on a busy
    // machine the first member could otherwise read everything before the others join, and the
    // member killed below would have printed nothing).
    let mut consumers: Vec<GroupConsumer> = (0..3)
        .map(|_| GroupConsumer::start(&b, topic, "g", &[]))
        .collect();
    let members = wait_for("a 2/2/2 split", Duration::from_secs(30), || {
        let (state, m) = try_assignment(&b, "g")?;
        (state == "Stable" && m.len() == 3 && m.values().all(|p| p.len() == 2)).then_some(m)
    });
    let all: BTreeSet<u64> = members.values().flatten().copied().collect();
    assert_eq!(all, (0..6).collect(), "every partition has one owner");
    produce(&b, topic, 0, 600);
    wait_for(
        "the first 600 to be committed",
        Duration::from_secs(30),
        || {
            let rows = try_lag_rows(&b, "g")?;
            (rows.len() == 6 && rows.values().all(|(c, e)| *c == Some(*e))).then_some(())
        },
    );

    // Crash and restart the broker under the live members. The group's membership was stored in
    // __consumer_offsets, so it comes back as it was, and the members (which retry while the
    // broker is away) carry on in it: still there after a full session timeout.
    // SIGKILL, so nothing is written at shutdown: what comes back is what was stored.
    b.kill9();
    b.launch();
    assert_eq!(assignment(&b, "g"), ("Stable".to_string(), members.clone()));
    std::thread::sleep(Duration::from_millis(4000));
    assert_eq!(
        assignment(&b, "g"),
        ("Stable".to_string(), members.clone()),
        "the members kept heartbeating in the restored group"
    );

    // Kill one member outright (no LeaveGroup) while more records arrive.
    let victim = consumers.remove(1);
    let victim_partitions: BTreeSet<u32> = victim.records().iter().map(|r| r.0).collect();
    let victim_lines = victim.lines.clone();
    drop(victim); // SIGKILL
    std::thread::sleep(Duration::from_millis(100)); // its stdout reader drains the pipe
    let victim_records = GroupConsumer::parse(&victim_lines.lock().unwrap());
    produce(&b, topic, 600, 900);
    let (_, right_after) = assignment(&b, "g");
    assert_eq!(
        right_after.len(),
        3,
        "a silent member stays until its session expires"
    );
    let killed_at = Instant::now();
    let after = wait_for(
        "the survivors to take over",
        Duration::from_secs(30),
        || {
            let (state, m) = try_assignment(&b, "g")?;
            (state == "Stable" && m.len() == 2 && m.values().all(|p| p.len() == 3)).then_some(m)
        },
    );
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1000),
        "partitions moved before the 3 s session timeout could have passed"
    );
    let owned: BTreeSet<u64> = after.values().flatten().copied().collect();
    assert_eq!(owned, (0..6).collect());
    assert!(!victim_partitions.is_empty());
    wait_for("all 900 committed", Duration::from_secs(30), || {
        let rows = try_lag_rows(&b, "g")?;
        let total: u64 = rows.values().map(|(_, e)| e).sum();
        (total == 900 && rows.values().all(|(c, e)| *c == Some(*e))).then_some(())
    });

    // At least once, nothing skipped: every partition's offsets 0..end were printed by someone.
    let mut seen: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut values = BTreeSet::new();
    for (p, o, v) in consumers
        .iter()
        .flat_map(|c| c.records())
        .chain(victim_records)
    {
        seen.entry(p).or_default().insert(o);
        values.insert(v);
    }
    assert_eq!(values.len(), 900, "every produced record was consumed");
    let ends = lag_rows(&b, "g");
    for (p, (_, end)) in &ends {
        let offsets = &seen[&(*p as u32)];
        assert_eq!(offsets.len() as u64, *end, "partition {p}: a gap");
        assert_eq!(offsets.last().copied(), end.checked_sub(1));
    }

    // SIGTERM: members commit, leave and exit 0; the group is empty.
    for c in &mut consumers {
        assert_eq!(c.sigterm(), Some(0));
    }
    let (state, m) = assignment(&b, "g");
    assert_eq!((state.as_str(), m.len()), ("Empty", 0));

    // Lag is log end minus committed; 60 new records show up as lag 60.
    produce(&b, topic, 900, 960);
    let before = lag_rows(&b, "g");
    assert_eq!(
        before.values().map(|(c, e)| e - c.unwrap()).sum::<u64>(),
        60
    );

    // Committed offsets survive a broker restart.
    assert_eq!(b.terminate(), Some(0));
    b.launch();
    assert_eq!(lag_rows(&b, "g"), before);

    // A new member resumes from the commits: exactly the 60 new records.
    let mut resumed = GroupConsumer::start(&b, topic, "g", &["--max-messages", "60"]);
    let code = wait_for(
        "the resumed member to finish",
        Duration::from_secs(30),
        || resumed.child.try_wait().ok().flatten(),
    );
    assert_eq!(code.code(), Some(0));
    // The process has exited; its stdout reader thread may still be draining the pipe.
    wait_for(
        "the resumed member's output",
        Duration::from_secs(10),
        || (resumed.records().len() >= 60).then_some(()),
    );
    let got: BTreeSet<String> = resumed.records().into_iter().map(|r| r.2).collect();
    assert_eq!(got, (900..960).map(|i| format!("v{i}")).collect());
    assert!(lag_rows(&b, "g").values().all(|(c, e)| *c == Some(*e)));
}

#[test]
fn a_restarted_static_member_takes_its_place_without_a_rebalance() {
    let b = Broker::start_with(vec![
        "--config".into(),
        write_config("group_initial_rebalance_delay_ms = 300\n"),
    ]);
    assert!(b
        .cli(&["topic", "create", "st", "--partitions", "4"], None)
        .status
        .success());
    let a = GroupConsumer::start(&b, "st", "static", &["--group-instance-id", "a"]);
    let other = GroupConsumer::start(&b, "st", "static", &["--group-instance-id", "b"]);
    // Called inside wait loops: a describe caught mid-change (no members array yet, a member
    // without an id) reads as empty, never panics.
    let by_instance = |d: &serde_json::Value| -> BTreeMap<String, (String, serde_json::Value)> {
        d["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["group_instance_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    (
                        m["member_id"].as_str().unwrap_or_default().to_string(),
                        m["assignment"].clone(),
                    ),
                )
            })
            .collect()
    };
    let before = wait_for("a 2/2 split", Duration::from_secs(30), || {
        let d = try_json(&b, &["group", "describe", "static"])?;
        let m = by_instance(&d);
        (d["state"] == "Stable"
            && m.len() == 2
            && m.values()
                .all(|(_, a)| a.as_array().is_some_and(|a| a.len() == 2)))
        .then_some(m)
    });
    let other_joins = other.joins();
    // Instance "a" crashes and comes straight back: a new member id in its old place.
    drop(a); // SIGKILL
    let a2 = GroupConsumer::start(&b, "st", "static", &["--group-instance-id", "a"]);
    wait_for(
        "the restarted instance to join",
        Duration::from_secs(30),
        || (a2.joins() == 1).then_some(()),
    );
    // Past the 3 s session timeout of the dead incarnation: still no rebalance for anyone.
    std::thread::sleep(Duration::from_millis(4000));
    let d = json(&b, &["group", "describe", "static"]);
    let after = by_instance(&d);
    assert_eq!(d["state"], "Stable");
    assert_ne!(after["a"].0, before["a"].0, "a new member id");
    assert_eq!(after["a"].1, before["a"].1, "the same partitions");
    assert_eq!(after["b"], before["b"]);
    assert_eq!(
        other.joins(),
        other_joins,
        "the other member never rejoined"
    );
    assert_eq!(a2.joins(), 1);
}

#[test]
fn an_empty_groups_offsets_expire_after_offsets_retention() {
    // Retention 0: an empty group's offsets go at the next check (every 200 ms).
    let mut b = Broker::start_with(vec![
        "--config".into(),
        write_config(
            "group_initial_rebalance_delay_ms = 300\noffsets_retention_minutes = 0\n\
             offsets_retention_check_interval_ms = 200\n",
        ),
    ]);
    assert!(b
        .cli(&["topic", "create", "ret", "--partitions", "2"], None)
        .status
        .success());
    produce(&b, "ret", 0, 20);
    let groups = |b: &Broker| -> Vec<String> {
        try_json(b, &["group", "list"])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|g| g["group"].as_str().map(str::to_string))
            .collect()
    };
    // A member that stays keeps its group's offsets.
    let _kept = GroupConsumer::start(&b, "ret", "kept", &[]);
    wait_for("kept to form", Duration::from_secs(30), || {
        groups(&b).contains(&"kept".to_string()).then_some(())
    });
    wait_for("kept to commit", Duration::from_secs(30), || {
        let rows = try_lag_rows(&b, "kept")?;
        (rows.len() == 2 && rows.values().all(|(c, e)| *c == Some(*e))).then_some(())
    });
    // A member that reads everything, commits and leaves: its group is empty, then gone.
    let mut brief = GroupConsumer::start(&b, "ret", "brief", &["--max-messages", "20"]);
    let exit = wait_for("brief to finish", Duration::from_secs(30), || {
        brief.child.try_wait().ok().flatten()
    });
    assert_eq!(exit.code(), Some(0));
    assert_eq!(brief.records().len(), 20);
    wait_for("brief's offsets to expire", Duration::from_secs(10), || {
        (!groups(&b).contains(&"brief".to_string())).then_some(())
    });
    std::thread::sleep(Duration::from_millis(600));
    assert!(groups(&b).contains(&"kept".to_string()));
    assert_eq!(
        lag_rows(&b, "kept").len(),
        2,
        "a live group keeps its offsets"
    );
    // The expiry was written to __consumer_offsets: it holds after a restart.
    assert_eq!(b.terminate(), Some(0));
    b.launch();
    assert!(!groups(&b).contains(&"brief".to_string()));
}

#[test]
fn grpc_group_errors_are_statuses() {
    let b = Broker::start();
    // Out-of-range session timeouts are refused by the CLI before any request.
    let o = b.cli(
        &["consume", "t", "--group", "g", "--session-timeout-ms", "10"],
        None,
    );
    assert!(!o.status.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut groups = sluice_proto::v1::groups_client::GroupsClient::new(b.channel().await);
        let join =
            |group: &str, topics: Vec<String>, session: u32| sluice_proto::v1::JoinGroupRequest {
                group: group.into(),
                topics,
                session_timeout_ms: session,
                ..Default::default()
            };
        let e = groups.join_group(join("g", vec![], 0)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let e = groups
            .join_group(join("", vec!["t".into()], 0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let e = groups
            .join_group(join("g", vec!["t".into()], 10))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        // A commit from a member the group does not know: ABORTED (rejoin), nothing stored.
        groups
            .join_group(join("g2", vec!["t".into()], 5000))
            .await
            .expect("join");
        let e = groups
            .commit_offsets(sluice_proto::v1::CommitOffsetsRequest {
                group: "g2".into(),
                member_id: "stranger".into(),
                generation: 1,
                offsets: vec![sluice_proto::v1::OffsetToCommit {
                    topic: "t".into(),
                    partition: 0,
                    offset: 5,
                    metadata: String::new(),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted, "{e}");
        let fetched = groups
            .fetch_offsets(sluice_proto::v1::FetchOffsetsRequest {
                group: "g2".into(),
                partitions: vec![sluice_proto::v1::TopicPartition {
                    topic: "t".into(),
                    partition: 0,
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.offsets[0].offset, None);
        let hb = groups
            .heartbeat(sluice_proto::v1::HeartbeatRequest {
                group: "g2".into(),
                member_id: "stranger".into(),
                generation: 1,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hb.status(), sluice_proto::v1::MemberStatus::Fenced);
    });
}

/// A member that starts at the end and prints nothing still commits its position, so what is
/// produced while the group has no member is delivered when one comes back (issue 13 item 5).
#[test]
fn a_member_that_printed_nothing_commits_its_position() {
    let b = Broker::start();
    let o = b.cli(&["topic", "create", "pos", "--partitions", "1"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    produce(&b, "pos", 0, 3); // before the group exists: not for it
    let mut first = GroupConsumer::start_from(&b, "pos", "late", false, &[]);
    wait_for("the position committed", Duration::from_secs(30), || {
        // The group appears only once the member has joined: retry until it does.
        let o = b.cli(&["group", "lag", "late", "--output", "json"], None);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["partitions"][0]["committed_offset"]
            .as_u64()
            .filter(|c| *c == 3)
    });
    assert!(first.records().is_empty());
    assert_eq!(first.sigterm(), Some(0));
    produce(&b, "pos", 3, 8); // while the group has no member
    let second = GroupConsumer::start_from(&b, "pos", "late", false, &[]);
    let got = wait_for(
        "the records produced meanwhile",
        Duration::from_secs(30),
        || {
            let r = second.records();
            (r.len() >= 5).then_some(r)
        },
    );
    let offsets: Vec<u64> = got.iter().map(|(_, o, _)| *o).collect();
    assert_eq!(offsets, vec![3, 4, 5, 6, 7]);
}
