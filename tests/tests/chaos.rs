//! Faults on real processes while a real Kafka client (confluent-kafka) produces with acks=all:
//! three brokers, a topic with replication factor 3 and min.insync.replicas=2; each round kills
//! (kill -9, then restart) or pauses (SIGSTOP, then SIGCONT) a random broker — the active
//! controller and partition leaders included — and waits for the cluster to heal. At the end
//! every acknowledged record must be in the log at the offset it was acknowledged at, and every
//! partition's offsets contiguous. Duplicates (a retried batch whose first attempt was written)
//! are counted, not failed, for a plain producer (Kafka has them too); an idempotent producer
//! must have none. Under the same faults a transactional consume-transform-produce loop must
//! copy its input exactly once.
//!
//! The suite runs a few rounds; `CHAOS_ROUNDS=50 CHAOS_SEED=7 scripts/chaos.sh` runs long ones.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{start_cluster, Broker};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn client() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/chaos_client.py")
}

/// All three brokers alive and every partition of `topic` fully in sync, as `b` sees it.
fn healthy(b: &Broker, topic: &str) -> bool {
    let alive = b.cli_json(&["cluster", "brokers"]).is_some_and(|v| {
        v["brokers"]
            .as_array()
            .is_some_and(|bs| bs.len() == 3 && bs.iter().all(|x| x["state"] == "alive"))
    });
    alive
        && b.cli_json(&["topic", "describe", topic]).is_some_and(|v| {
            v["partitions"].as_array().is_some_and(|ps| {
                ps.iter().all(|p| {
                    p["leader"].as_i64().is_some_and(|l| l > 0)
                        && p["isr"].as_array().is_some_and(|i| i.len() == 3)
                })
            })
        })
}

/// Round `round`'s fault: kill -9 (then restart) or SIGSTOP (then SIGCONT) a random broker,
/// for 0.5-5 s. Returns what it did.
fn fault(bs: &mut [Broker], rng: &mut Rng, round: u64) -> String {
    let victim = rng.below(3) as usize;
    let kill = rng.below(2) == 0;
    let pause_ms = 1000 + rng.below(4000);
    let what = if kill {
        format!("round {round}: kill -9 broker {}", victim + 1)
    } else {
        format!(
            "round {round}: SIGSTOP broker {} for {pause_ms} ms",
            victim + 1
        )
    };
    eprintln!("{what}");
    if kill {
        bs[victim].kill9();
        // The fault's length, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(pause_ms / 2));
        bs[victim].launch_listening();
    } else {
        bs[victim].signal("STOP");
        std::thread::sleep(Duration::from_millis(pause_ms));
        bs[victim].signal("CONT");
    }
    what
}

fn rounds_and_seed() -> (u64, u64) {
    let rounds: u64 = std::env::var("CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    (rounds, seed)
}

/// The last `n` bytes of a child's log file (its stderr goes to a file, never to a pipe: a
/// pipe nobody reads until the end fills at 64 KiB of librdkafka's connection errors and stops
/// the client mid-run).
fn tail(path: &std::path::Path, n: usize) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&s[s.len().saturating_sub(n)..]).into_owned()
}

/// The last WARN and ERROR lines of each broker's log.
fn broker_warnings(bs: &[Broker]) -> String {
    let mut out = String::new();
    for (i, b) in bs.iter().enumerate() {
        let lines: Vec<String> = b
            .log_lines("")
            .into_iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        let from = lines.len().saturating_sub(15);
        out.push_str(&format!(
            "broker {}:\n{}\n",
            i + 1,
            lines[from..].join("\n")
        ));
    }
    out
}

fn acked_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Three brokers, the `chaos` topic (3 partitions, replication factor 3, min.insync.replicas 2)
/// fully in sync, and a confluent-kafka acks=all producer writing every acknowledgement down.
struct Run {
    bs: Vec<Broker>,
    bootstrap: String,
    _work: tempfile::TempDir,
    acked: std::path::PathBuf,
    stop: std::path::PathBuf,
    /// The producer's stderr.
    producer_log: std::path::PathBuf,
    producer: Option<std::process::Child>,
}

impl Run {
    /// With `idempotent`, the producer is an idempotent one (`enable.idempotence`).
    fn start(idempotent: bool) -> Run {
        let bs = start_cluster(
            3,
            &[
                "--broker-session-timeout-ms",
                "3000",
                "--broker-heartbeat-interval-ms",
                "500",
                "--replica-lag-time-max-ms",
                "5000",
            ],
        );
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let out = bs[0].cli(
                &[
                    "topic",
                    "create",
                    "chaos",
                    "--partitions",
                    "3",
                    "--replication-factor",
                    "3",
                    "--config",
                    "min.insync.replicas=2",
                ],
                None,
            );
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < end,
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let work = tempfile::tempdir().unwrap();
        let bootstrap = bs
            .iter()
            .map(|b| format!("127.0.0.1:{}", b.kafka_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut run = Run {
            bs,
            bootstrap,
            acked: work.path().join("acked"),
            stop: work.path().join("stop"),
            producer_log: work.path().join("producer.stderr"),
            _work: work,
            producer: None,
        };
        run.heal("creating the topic");
        run.producer = Some(
            Command::new(common::python())
                .arg(client())
                .args(["produce", &run.bootstrap, "chaos"])
                .arg(&run.acked)
                .arg(&run.stop)
                .args(idempotent.then_some("idempotent"))
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&run.producer_log).unwrap())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run python ({e}): run scripts/install-test-deps.sh")
                }),
        );
        run
    }

    /// Waits (90 s at most) until every broker is alive and every partition fully in sync.
    fn heal(&self, what: &str) -> Duration {
        let end = Instant::now() + Duration::from_secs(90);
        let started = Instant::now();
        loop {
            if self.bs.iter().any(|b| healthy(b, "chaos")) {
                return started.elapsed();
            }
            assert!(
                Instant::now() < end,
                "the cluster did not heal after {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until at least `min` records are acknowledged; returns how many are.
    fn progress(&self, min: usize, what: &str) -> usize {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let n = acked_lines(&self.acked);
            if n >= min {
                return n;
            }
            assert!(
                Instant::now() < end,
                "no acknowledgements after {what} ({n} so far); producer's log ends:\n{}",
                tail(&self.producer_log, 4000)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the producer and checks every acknowledged record. Returns the producer's and the
    /// checker's JSON summaries.
    fn finish(&mut self) -> (serde_json::Value, serde_json::Value) {
        std::fs::write(&self.stop, b"").unwrap();
        let out = self
            .producer
            .take()
            .expect("a producer")
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "producer failed: {}",
            tail(&self.producer_log, 4000)
        );
        let verify = Command::new(common::python())
            .arg(client())
            .args(["verify", &self.bootstrap, "chaos"])
            .arg(&self.acked)
            .arg("3")
            .output()
            .unwrap();
        let summary = String::from_utf8_lossy(&verify.stdout);
        assert!(
            verify.status.success(),
            "acknowledged records lost or moved: {summary} {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let parse = |b: &[u8]| {
            serde_json::from_slice(String::from_utf8_lossy(b).trim().as_bytes())
                .unwrap_or(serde_json::Value::Null)
        };
        (parse(&out.stdout), parse(&verify.stdout))
    }
}

/// Kills and pauses of random brokers, `CHAOS_ROUNDS` of them from `CHAOS_SEED`, under the
/// producer; returns the producer's and the checker's summaries.
fn chaos_rounds(idempotent: bool) -> (serde_json::Value, serde_json::Value) {
    let (rounds, seed) = rounds_and_seed();
    let mut rng = Rng(seed);
    let mut run = Run::start(idempotent);
    let mut acked_so_far = run.progress(200, "starting");
    let mut heal_times = Vec::new();
    for round in 0..rounds {
        let what = fault(&mut run.bs, &mut rng, round);
        let healed = run.heal(&what);
        heal_times.push(healed);
        acked_so_far = run.progress(acked_so_far + 100, &what);
    }
    let (producer, verify) = run.finish();
    heal_times.sort();
    let pct = |q: f64| {
        heal_times
            .get(((heal_times.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "chaos{}: seed {seed}, {rounds} rounds; producer {producer}; verify {verify}; time to heal after each fault: p50 {:?}, p99 {:?}, max {:?}",
        if idempotent { " (idempotent producer)" } else { "" },
        pct(0.5),
        pct(0.99),
        heal_times.last().copied().unwrap_or_default()
    );
    (producer, verify)
}

#[test]
fn acknowledged_records_survive_kills_and_pauses_of_any_broker() {
    chaos_rounds(false);
}

/// The same faults under an idempotent producer: every acknowledged record exactly once — the
/// retries of batches a failover left unacknowledged are recognised by the partition's producer
/// state (replicated with the batches) and not written again.
#[test]
fn an_idempotent_producer_writes_every_record_exactly_once_through_kills_and_pauses() {
    let (producer, verify) = chaos_rounds(true);
    assert_eq!(producer["failed"], 0, "{producer}");
    assert_eq!(verify["duplicates"], 0, "retries written twice: {verify}");
    assert!(verify["acked"].as_u64().is_some_and(|n| n > 0), "{verify}");
}

/// A rolling restart (SIGTERM, restart, wait until in sync; each broker in turn) under acks=all
/// load: controlled shutdown hands leadership over first, so the producer sees nothing beyond
/// retriable errors — every record is delivered, none fails — and nothing acknowledged is lost.
#[test]
fn a_rolling_restart_under_acks_all_load_fails_no_delivery() {
    let mut run = Run::start(false);
    let mut acked = run.progress(200, "starting");
    for i in 0..3 {
        let what = format!("restarting broker {}", i + 1);
        let started = Instant::now();
        assert_eq!(run.bs[i].terminate(), Some(0), "{what}: a clean exit");
        let stopped = started.elapsed();
        run.bs[i].launch_listening();
        let healed = run.heal(&what);
        eprintln!("{what}: exited after {stopped:?}, in sync again {healed:?} after restart");
        acked = run.progress(acked + 200, &what);
    }
    let (producer, verify) = run.finish();
    eprintln!("rolling restart: producer {producer}; verify {verify}");
    assert_eq!(
        producer["failed"], 0,
        "deliveries failed during a rolling restart: {producer}"
    );
    assert!(
        producer["sent"].as_u64().is_some_and(|n| n > 0),
        "{producer}"
    );
}

/// The same faults under a confluent-kafka consume-transform-produce loop
/// (`interop/txn_failover.py`: read_committed consumer in a group, transactional producer,
/// `send_offsets_to_transaction`): coordinators of the transaction and the group, partition
/// leaders and the controller die or stall mid-transaction. The output must hold every input
/// record exactly once and the committed input offsets be the input's ends.
#[test]
fn a_transactional_copy_is_exactly_once_through_kills_and_pauses() {
    let (rounds, seed) = rounds_and_seed();
    let mut rng = Rng(seed);
    let mut bs = start_cluster(
        3,
        &[
            "--broker-session-timeout-ms",
            "3000",
            "--broker-heartbeat-interval-ms",
            "500",
            "--replica-lag-time-max-ms",
            "5000",
        ],
    );
    common::wait_all_alive(&bs);
    // Enough input that the faults land mid-copy (a round lasts seconds; the copy runs at
    // thousands of records a second).
    let total: u64 = 2000 + 2500 * rounds;
    for t in ["txin", "txout"] {
        bs[0].topic_create(t, 3, 3, &["--config", "min.insync.replicas=2"]);
    }
    common::produce_numbers(&bs[0], "txin", 3, total);
    let work = tempfile::tempdir().unwrap();
    let progress = work.path().join("progress");
    let copier_log = work.path().join("copier.stderr");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/txn_failover.py");
    let mut copier = Command::new(common::python())
        .arg(&script)
        .args([
            &common::kafka_bootstrap(&bs),
            "txin",
            "txout",
            "chaos-copier-group",
            "chaos-copier",
            &total.to_string(),
        ])
        .arg(&progress)
        .env("TXN_DEADLINE_S", (150 + 30 * rounds).to_string())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&copier_log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python ({e}): run scripts/install-test-deps.sh"));
    let committed = || -> u64 {
        std::fs::read_to_string(&progress).map_or(0, |s| {
            s.lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0)
        })
    };
    let wait_progress = |min: u64, what: &str, copier: &mut std::process::Child, bs: &[Broker]| {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let n = committed();
            // Done copying (it exits after its check) also ends the wait.
            if n >= min || copier.try_wait().ok().flatten().is_some() {
                return n;
            }
            assert!(
                Instant::now() < end,
                "no commits after {what} ({n} so far); the copier's log ends:\n{}\nthe brokers' warnings:\n{}",
                tail(&copier_log, 4000),
                broker_warnings(bs)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut so_far = wait_progress(200, "starting", &mut copier, &bs);
    let mut mid_copy = 0;
    for round in 0..rounds {
        if so_far >= total || copier.try_wait().ok().flatten().is_some() {
            break;
        }
        let what = fault(&mut bs, &mut rng, round);
        mid_copy += 1;
        let end = Instant::now() + Duration::from_secs(90);
        while !bs.iter().any(|b| healthy(b, "txout")) {
            assert!(
                Instant::now() < end,
                "the cluster did not heal after {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        so_far = wait_progress(so_far + 50, &what, &mut copier, &bs);
    }
    let out = copier.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "chaos (transactions): seed {seed}, {mid_copy} of {rounds} faults mid-copy; copier {summary} ({} bytes of log)",
        std::fs::metadata(&copier_log).map_or(0, |m| m.len())
    );
    assert!(
        out.status.success(),
        "{summary}\n{}",
        tail(&copier_log, 4000)
    );
    assert!(mid_copy >= 1, "the copy finished before the first fault");
    let v: serde_json::Value = serde_json::from_str(summary.trim()).expect("summary is JSON");
    assert_eq!(v["out"], total);
    assert_eq!(v["duplicates"], 0);
}
