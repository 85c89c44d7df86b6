//! The metadata quorum in one process: 3 and 5 [`MetadataNode`]s with durable storage in temp
//! directories, over an in-memory network that drops, delays, duplicates and reorders messages,
//! with nodes crashed (their in-memory state thrown away) and restarted from disk, all decided by
//! a seed. Checked throughout: every index is committed with the same batch on every node (no
//! committed entry is lost, changed or reordered), each node applies indexes in increasing
//! order; at the end, after healing: every proposal a leader saw committed is in every node's
//! image, and all images are equal.
//!
//! `RAFT_SIM_SEEDS=N` runs N seeds per cluster size (default 20); `RAFT_SIM_SEED=S` replays one.

use std::collections::{BTreeMap, HashSet};

use raft::prelude::{Message, MessageType};
use sluice_replication::controller::raft_node::{MetadataNode, MetadataNodeConfig, ProposalId};
use sluice_replication::controller::{Randomness, SeededRandom};
use sluice_replication::metadata::{ConfigResource, MetadataRecord};

struct InFlight {
    deliver_at: u64,
    order: u64,
    msg: Message,
}

struct Sim {
    seed: u64,
    rng: SeededRandom,
    n: u64,
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<MetadataNode>>,
    net: Vec<InFlight>,
    now: u64,
    /// The batch committed at each index, as first seen by any node.
    log: BTreeMap<u64, Vec<MetadataRecord>>,
    /// Per node (per incarnation): the last index applied.
    last_applied: Vec<u64>,
    next_seq: u64,
    /// Proposals their proposer saw committed: (proposal, key written).
    acked: Vec<(ProposalId, String)>,
    pending: BTreeMap<ProposalId, String>,
    drop_pct: u64,
    dup_pct: u64,
    crashes: usize,
    snapshots_restored: usize,
}

fn base_dir() -> Option<std::path::PathBuf> {
    // fsync on tmpfs is free; the storage code path is the same.
    let shm = std::path::Path::new("/dev/shm");
    shm.is_dir().then(|| shm.to_path_buf())
}

impl Sim {
    fn new(n: u64, seed: u64) -> Sim {
        let mut sim = Sim {
            seed,
            rng: SeededRandom(seed),
            n,
            dirs: (0..n)
                .map(|_| match base_dir() {
                    Some(d) => tempfile::tempdir_in(d).unwrap(),
                    None => tempfile::tempdir().unwrap(),
                })
                .collect(),
            nodes: Vec::new(),
            net: Vec::new(),
            now: 0,
            log: BTreeMap::new(),
            last_applied: vec![0; n as usize],
            next_seq: 0,
            acked: Vec::new(),
            pending: BTreeMap::new(),
            drop_pct: 5,
            dup_pct: 3,
            crashes: 0,
            snapshots_restored: 0,
        };
        for i in 0..n {
            let node = sim.open(i);
            sim.nodes.push(Some(node));
        }
        sim
    }

    fn open(&mut self, i: u64) -> MetadataNode {
        let voters: Vec<u64> = (1..=self.n).collect();
        let mut cfg = MetadataNodeConfig::new(i + 1, voters);
        cfg.snapshot_every = 25;
        let mut node = MetadataNode::open(self.dirs[i as usize].path(), cfg)
            .unwrap_or_else(|e| panic!("seed {}: node {} does not reopen: {e}", self.seed, i + 1));
        node.set_election_randomness(Box::new(SeededRandom(self.rng.next_u64())));
        self.last_applied[i as usize] = node.applied_index();
        node
    }

    fn roll(&mut self, pct: u64) -> bool {
        self.rng.next_u64() % 100 < pct
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if self.roll(self.drop_pct) {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    // What a real transport does when a snapshot send fails.
                    let from = m.from as usize - 1;
                    if let Some(n) = self.nodes[from].as_mut() {
                        n.report_snapshot(m.to, false);
                    }
                }
                continue;
            }
            let copies = if self.roll(self.dup_pct) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = self.rng.next_u64() % 4;
                let order = self.rng.next_u64();
                self.net.push(InFlight {
                    deliver_at: self.now + delay,
                    order,
                    msg: m.clone(),
                });
            }
        }
    }

    fn ready(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let out = node
            .handle_ready()
            .unwrap_or_else(|e| panic!("seed {}: node {} ready failed: {e}", self.seed, i + 1));
        if let Some(at) = out.restored_from_snapshot {
            self.snapshots_restored += 1;
            self.last_applied[i] = at;
        }
        for c in &out.committed {
            assert!(
                c.index > self.last_applied[i],
                "seed {}: node {} applied {} after {}",
                self.seed,
                i + 1,
                c.index,
                self.last_applied[i]
            );
            self.last_applied[i] = c.index;
            match self.log.get(&c.index) {
                Some(first) => assert_eq!(
                    first,
                    &c.records,
                    "seed {}: index {} committed differently on node {}",
                    self.seed,
                    c.index,
                    i + 1
                ),
                None => {
                    self.log.insert(c.index, c.records.clone());
                }
            }
            if let Some(p) = c.proposal {
                if p.node == (i as u64 + 1) {
                    if let Some(key) = self.pending.remove(&p) {
                        self.acked.push((p, key));
                    }
                }
            }
        }
        self.send(out.messages);
    }

    fn step(&mut self, faults: bool) {
        self.step_with(faults, faults)
    }

    fn step_with(&mut self, faults: bool, propose: bool) {
        self.now += 1;
        for i in 0..self.n as usize {
            if let Some(node) = self.nodes[i].as_mut() {
                node.tick();
            }
        }
        // Deliver what is due, in a seeded order.
        let mut due: Vec<InFlight> = Vec::new();
        let mut later = Vec::new();
        for f in self.net.drain(..) {
            if f.deliver_at <= self.now {
                due.push(f);
            } else {
                later.push(f);
            }
        }
        self.net = later;
        due.sort_by_key(|f| f.order);
        for f in due {
            let to = f.msg.to as usize - 1;
            let (from, is_snap) = (
                f.msg.from as usize - 1,
                f.msg.get_msg_type() == MessageType::MsgSnapshot,
            );
            let delivered = match self.nodes.get_mut(to).and_then(|n| n.as_mut()) {
                Some(node) => {
                    let _ = node.step(f.msg);
                    true
                }
                None => false,
            };
            if is_snap {
                if let Some(n) = self.nodes[from].as_mut() {
                    n.report_snapshot(to as u64 + 1, delivered);
                }
            }
        }
        if faults {
            // Crash one node now and then (never more than a minority at once), restart later.
            let down = self.nodes.iter().filter(|n| n.is_none()).count() as u64;
            if self.roll(2) && down < (self.n - 1) / 2 {
                let i = (self.rng.next_u64() % self.n) as usize;
                if self.nodes[i].take().is_some() {
                    self.crashes += 1;
                }
            }
            if self.roll(4) {
                let i = (self.rng.next_u64() % self.n) as usize;
                if self.nodes[i].is_none() {
                    let node = self.open(i as u64);
                    self.nodes[i] = Some(node);
                }
            }
        }
        // Propose through whoever thinks it leads.
        if propose && self.roll(30) {
            if let Some(i) = (0..self.n as usize)
                .find(|i| self.nodes[*i].as_ref().is_some_and(|n| n.is_leader()))
            {
                self.next_seq += 1;
                let id = ProposalId {
                    node: i as u64 + 1,
                    seq: self.next_seq,
                };
                let key = format!("k{}", self.next_seq);
                let rec = MetadataRecord::Config {
                    resource: ConfigResource::Topic("sim".into()),
                    name: key.clone(),
                    value: Some(self.next_seq.to_string()),
                };
                if let Some(node) = self.nodes[i].as_mut() {
                    if node.propose(id, vec![rec]).is_ok() {
                        self.pending.insert(id, key);
                    }
                }
            }
        }
        for i in 0..self.n as usize {
            self.ready(i);
        }
    }

    fn run(mut self, steps: u64) {
        for _ in 0..steps {
            self.step(true);
        }
        // Heal: every node back, no more loss; run until every node has applied the same index.
        self.drop_pct = 0;
        self.dup_pct = 0;
        for i in 0..self.n as usize {
            if self.nodes[i].is_none() {
                let node = self.open(i as u64);
                self.nodes[i] = Some(node);
            }
        }
        let mut settled = 0;
        for _ in 0..5_000 {
            self.step(false);
            let applied: HashSet<u64> = self
                .nodes
                .iter()
                .map(|n| n.as_ref().map_or(0, |n| n.applied_index()))
                .collect();
            let has_leader = self
                .nodes
                .iter()
                .any(|n| n.as_ref().is_some_and(|n| n.is_leader()));
            if applied.len() == 1
                && has_leader
                && self.net.iter().all(|f| {
                    f.msg.get_msg_type() == MessageType::MsgHeartbeat
                        || f.msg.get_msg_type() == MessageType::MsgHeartbeatResponse
                })
            {
                settled += 1;
                if settled > 50 {
                    break;
                }
            } else {
                settled = 0;
            }
        }
        let images: Vec<_> = self
            .nodes
            .iter()
            .map(|n| n.as_ref().map(|n| n.image().clone()).unwrap())
            .collect();
        let summary: Vec<String> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| {
                format!(
                    "node {}: applied {} commit {} term {} leader {} keys {}",
                    n.id(),
                    n.applied_index(),
                    n.commit_index(),
                    n.term(),
                    n.is_leader(),
                    n.image().configs.values().map(|c| c.len()).sum::<usize>()
                )
            })
            .collect();
        for (i, img) in images.iter().enumerate() {
            assert!(
                img.configs == images[0].configs,
                "seed {}: node {} ended with another image: {summary:#?}",
                self.seed,
                i + 1
            );
        }
        let configs = images[0]
            .configs
            .get(&ConfigResource::Topic("sim".into()))
            .cloned()
            .unwrap_or_default();
        for (p, key) in &self.acked {
            assert!(
                configs.contains_key(key),
                "seed {}: acknowledged proposal {p:?} ({key}) was lost",
                self.seed
            );
        }
        assert!(
            self.acked.len() >= 10,
            "seed {}: only {} proposals committed; the run proves little",
            self.seed,
            self.acked.len()
        );
        eprintln!(
            "seed {} n={}: {} committed, {} entries, {} crashes, {} snapshot restores",
            self.seed,
            self.n,
            self.acked.len(),
            self.log.len(),
            self.crashes,
            self.snapshots_restored
        );
    }
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("RAFT_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n: u64 = std::env::var("RAFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    (0..n).collect()
}

#[test]
fn three_voters_lose_nothing_committed_under_faults() {
    for seed in seeds() {
        Sim::new(3, seed).run(1_500);
    }
}

#[test]
fn five_voters_lose_nothing_committed_under_faults() {
    for seed in seeds() {
        Sim::new(5, 1_000 + seed).run(1_500);
    }
}
