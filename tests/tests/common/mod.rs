//! Starts real `sluice` broker processes on free loopback ports with temporary data directories.
#![allow(dead_code)]

pub mod kafka_raw;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_proto::v1::admin_client::AdminClient;
use sluice_proto::v1::consumer_client::ConsumerClient;
use sluice_proto::v1::producer_client::ProducerClient;
use tonic::transport::Channel;

/// Path of the `sluice` binary, built once per test process (a no-op when up to date), so a plain
/// `cargo test --workspace` works from a clean checkout. `SLUICE_BIN` names another binary (to
/// show that a test fails against a build without the fix it guards).
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SLUICE_BIN") {
            return PathBuf::from(bin);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            // The same command scripts/test.sh runs first, so this is a no-op there. (`-p
            // sluice-broker` would resolve features differently and rebuild many dependencies.)
            .args(["build", "-q", "--workspace", "--bins"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the sluice binary failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("debug").join("sluice")
    })
    .clone()
}

/// A port free now, picked below Linux's ephemeral range (32768-60999): a port handed out by
/// binding port 0 is an ephemeral one, which any test's outgoing connection may take before the
/// broker binds it (seen as "Address already in use" under a parallel suite). Each test process
/// walks its own stretch of 10000-32000 (by pid), checking that each port binds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + (std::process::id() % 200) * 110;
    for _ in 0..22_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (10_000 + (base - 10_000 + n) % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Broker {
    pub dir: tempfile::TempDir,
    pub grpc_port: u16,
    pub kafka_port: u16,
    pub http_port: u16,
    /// Broker-to-broker (metadata quorum) port.
    pub controller_port: u16,
    pub extra_args: Vec<String>,
    /// Where the data lives when not under `dir` (a test's own file system).
    pub data_dir_override: Option<PathBuf>,
    /// `RLIMIT_NOFILE` (soft, hard) for the process, as `ulimit -n` would set it.
    pub open_file_limit: Option<(u64, u64)>,
    child: Option<Child>,
    /// Every log line of every launch (the last `LOG_LINES`), for tests that look for one.
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

const LOG_LINES: usize = 50_000;

impl Broker {
    pub fn start() -> Broker {
        Self::start_with(Vec::new())
    }

    pub fn start_with(extra_args: Vec<String>) -> Broker {
        Self::start_in(None, extra_args)
    }

    /// Starts a broker whose data directory is `data_dir` (default: inside its temp dir).
    pub fn start_in(data_dir: Option<PathBuf>, extra_args: Vec<String>) -> Broker {
        let mut b = Self::unstarted(data_dir, extra_args);
        // A port picked free can be taken by someone else (a parallel test's client socket)
        // before the broker binds it: pick new ones and try again.
        for _ in 0..5 {
            match b.try_launch(true) {
                Ok(()) => return b,
                Err(log) if log.contains("in use") => {
                    b.grpc_port = free_port();
                    b.kafka_port = free_port();
                    b.http_port = free_port();
                    b.controller_port = free_port();
                }
                Err(log) => panic!("broker did not start:\n{log}"),
            }
        }
        panic!("broker did not start: its ports kept being taken");
    }

    /// A broker with its ports picked but no process yet (a cluster needs every voter's
    /// address before the first starts): set `extra_args`, then [`Broker::launch`].
    pub fn unstarted(data_dir: Option<PathBuf>, extra_args: Vec<String>) -> Broker {
        Broker {
            dir: tempfile::tempdir().expect("temp dir"),
            grpc_port: free_port(),
            kafka_port: free_port(),
            http_port: free_port(),
            controller_port: free_port(),
            extra_args,
            data_dir_override: data_dir,
            open_file_limit: None,
            child: None,
            log: Default::default(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir_override
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// Starts the process and waits for its "ready" log line.
    pub fn launch(&mut self) {
        if let Err(log) = self.try_launch(true) {
            panic!("broker did not become ready:\n{log}");
        }
    }

    /// Starts the process and waits only for its listeners: a cluster member cannot be
    /// unfenced before a quorum of voters is up.
    pub fn launch_listening(&mut self) {
        if let Err(log) = self.try_launch(false) {
            panic!("broker did not start listening:\n{log}");
        }
    }

    /// Starts the process; on failure returns its log. With `until_unfenced`, also waits until
    /// the controller has unfenced it (a lone broker is its own controller: it may lead).
    fn try_launch(&mut self, until_unfenced: bool) -> Result<(), String> {
        let mut command = Command::new(sluice_bin());
        if let Some((soft, hard)) = self.open_file_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent's.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--grpc-addr")
            .arg(self.addr())
            .arg("--kafka-addr")
            .arg(format!("127.0.0.1:{}", self.kafka_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--controller-addr")
            .arg(format!("127.0.0.1:{}", self.controller_port))
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let early_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = early_log.clone();
        let all = self.log.clone();
        std::thread::spawn(move || {
            let mut ready_sent = false;
            let (mut listening, mut unfenced) = (false, !until_unfenced);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SLUICE_TEST_LOGS").is_some() {
                    eprintln!("[broker] {line}");
                }
                if !ready_sent {
                    log.lock().unwrap().push(line.clone());
                }
                {
                    let mut all = all.lock().unwrap();
                    if all.len() >= LOG_LINES {
                        all.pop_front();
                    }
                    all.push_back(line.clone());
                }
                listening |= line.contains("sluice broker ready");
                unfenced |= line.contains("broker is unfenced");
                if !ready_sent && listening && unfenced {
                    let _ = tx.send(());
                    ready_sent = true;
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            // Let the reader take the last lines of a process that exited.
            std::thread::sleep(Duration::from_millis(100));
            return Err(early_log.lock().unwrap().join("\n"));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The log lines (of every launch so far) containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("broker did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr()))
            .expect("url")
            .connect()
            .await
            .expect("connect to broker")
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }
    pub async fn producer(&self) -> ProducerClient<Channel> {
        ProducerClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }
    pub async fn consumer(&self) -> ConsumerClient<Channel> {
        ConsumerClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    /// Creates a topic over gRPC with the given config overrides.
    pub async fn create_topic(&self, name: &str, partitions: u32, configs: &[(&str, &str)]) {
        self.admin()
            .await
            .create_topic(sluice_proto::v1::CreateTopicRequest {
                name: name.into(),
                partitions,
                replication_factor: 1,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .await
            .expect("create topic");
    }

    /// A GET on the HTTP listener; the whole response, headers included.
    pub fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).expect("http");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .expect("http request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("http response");
        out
    }

    /// Runs a CLI command against this broker.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(sluice_bin());
        cmd.args(args)
            .env("SLUICE_BROKER", self.addr())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sluice cli");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut s = child.stdin.take().expect("stdin");
            s.write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("cli output")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `n` brokers forming one cluster (every broker a voter of the metadata quorum), each started
/// and listening (not yet unfenced: a quorum needs a majority up). `extra` flags go to every one.
pub fn start_cluster(n: usize, extra: &[&str]) -> Vec<Broker> {
    let mut bs: Vec<Broker> = (0..n).map(|_| Broker::unstarted(None, vec![])).collect();
    let voters = bs
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{}@127.0.0.1:{}", i + 1, b.controller_port))
        .collect::<Vec<_>>()
        .join(",");
    for (i, b) in bs.iter_mut().enumerate() {
        b.extra_args = vec![
            "--node-id".into(),
            (i + 1).to_string(),
            "--controller-quorum-voters".into(),
            voters.clone(),
        ];
        b.extra_args.extend(extra.iter().map(|s| s.to_string()));
        b.launch_listening();
    }
    bs
}

/// Polls `f` until it returns `Some`, for at most `limit` (then panics naming `what`).
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Broker {
    /// A CLI command with `--output json`, parsed; `None` when it fails (callers poll).
    pub fn cli_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.cli(&a, None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Whether `cluster brokers` from this broker shows every id in `ids` alive.
    pub fn sees_alive(&self, ids: &[i64]) -> bool {
        self.cli_json(&["cluster", "brokers"]).is_some_and(|v| {
            ids.iter().all(|id| {
                v["brokers"]
                    .as_array()
                    .is_some_and(|bs| bs.iter().any(|x| x["id"] == *id && x["state"] == "alive"))
            })
        })
    }
}

/// The Python with the Kafka client libraries (`scripts/install-test-deps.sh` makes
/// `.venv-test/`); `SLUICE_PYTHON` overrides it.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// Runs kcat (`SLUICE_KCAT` overrides the binary); its stdout, or its stderr as the error.
pub fn kcat(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(std::env::var("SLUICE_KCAT").unwrap_or_else(|_| "kcat".into()))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kcat ({e}): run scripts/install-test-deps.sh"));
    if let (Some(s), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(s.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kcat {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Broker {
    /// `sluice topic create` through this broker; panics with its error if it fails.
    pub fn topic_create(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        extra: &[&str],
    ) {
        let (p, rf) = (partitions.to_string(), replication_factor.to_string());
        let mut args = vec![
            "topic",
            "create",
            name,
            "--partitions",
            &p,
            "--replication-factor",
            &rf,
        ];
        args.extend_from_slice(extra);
        let out = self.cli(&args, None);
        assert!(
            out.status.success(),
            "topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Broker {
    /// Partition 0 of `topic` from the beginning, through this broker's CLI (which follows the
    /// leader), once it reads at least `want` lines (a leader change may be in progress: polled
    /// for a minute).
    pub fn consume_lines(&self, topic: &str, want: usize) -> Vec<String> {
        wait_for("the records", Duration::from_secs(60), || {
            let out = self.cli(
                &["consume", topic, "--partition", "0", "--from-beginning"],
                None,
            );
            let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            (out.status.success() && lines.len() >= want).then_some(lines)
        })
    }
}

/// Writes the numbers `0..total` as records to `topic` through `b` (`sluice produce`, acks=all),
/// split evenly over `partitions` partitions in order: partition p holds
/// `p*total/partitions..(p+1)*total/partitions`.
pub fn produce_numbers(b: &Broker, topic: &str, partitions: u64, total: u64) {
    for p in 0..partitions {
        let lines: String = (p * total / partitions..(p + 1) * total / partitions)
            .map(|i| format!("{i}\n"))
            .collect();
        let out = b.cli(
            &[
                "produce",
                topic,
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
}

/// The Kafka bootstrap list of a cluster: `127.0.0.1:<port>,...`.
pub fn kafka_bootstrap(bs: &[Broker]) -> String {
    bs.iter()
        .map(|b| format!("127.0.0.1:{}", b.kafka_port))
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits until `bs[0]` sees all of `bs` alive (registered and unfenced).
pub fn wait_all_alive(bs: &[Broker]) {
    let ids: Vec<i64> = (1..=bs.len() as i64).collect();
    wait_for("every broker alive", Duration::from_secs(60), || {
        bs[0].sees_alive(&ids).then_some(())
    });
}
