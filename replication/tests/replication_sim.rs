//! A seeded simulation of one partition's three replicas: real `Partition`s on real logs in temp
//! directories, driven by a model of the controller (leader from the live ISR, epoch bumps, ISR
//! shrink on failure and expansion on catch-up) through random produces, follower fetch rounds
//! (some lost), crashes (the process goes, the page cache stays) and restarts from disk.
//!
//! Invariants checked after every step:
//! - no record acknowledged under acks=all (the HW passed it while it led) is ever lost: the
//!   current leader holds it at the same offset;
//! - the HW consumers see never goes backwards across leader changes... of what they could read:
//!   every offset once below a leader's HW stays readable with the same record;
//! - ISR members agree byte for byte below the leader's HW.
//!
//! `REPLICATION_SIM_SEEDS=500` runs more seeds. A failing seed is a regression test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_log::{BatchBuilder, Compression, LogConfig, LogDirHealth, Record};
use sluice_replication::controller::{Randomness, SeededRandom};
use sluice_replication::{Acks, InitialHw, Partition, ReplicaConfig, ReplicaState};

/// The controller's seeded SplitMix64, with a bound.
struct Rng(SeededRandom);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
}

const N: usize = 3;

struct Sim {
    dirs: Vec<tempfile::TempDir>,
    replicas: Vec<Option<Arc<Partition>>>,
    /// Each replica's HW as its broker's flush tick last checkpointed it (the broker's
    /// per-directory `replication-offset-checkpoint`).
    checkpointed_hw: Vec<Option<u64>>,
    /// The controller's view.
    leader: i32,
    epoch: i32,
    isr: Vec<i32>,
    /// offset -> value of every record ever committed (below some leader's HW).
    committed: BTreeMap<u64, String>,
    next_value: u64,
}

fn id(i: usize) -> i32 {
    i as i32 + 1
}

fn open(dir: &std::path::Path, broker: i32, initial_hw: InitialHw) -> Arc<Partition> {
    Arc::new(
        Partition::open(
            "sim",
            0,
            broker,
            dir,
            LogConfig::default(),
            ReplicaConfig {
                min_insync_replicas: 1,
            },
            Arc::new(LogDirHealth::new(dir)),
            initial_hw,
        )
        .expect("open replica"),
    )
}

fn values(p: &Partition, upto: u64) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut offset = p.log().log_start_offset();
    while offset < upto {
        let (data, info) = p.log().read_bytes(offset, 1 << 20, Some(upto)).unwrap();
        if info.regions.is_empty() {
            break;
        }
        for r in sluice_log::decode_batches(&data, 1 << 26).unwrap() {
            if r.offset < upto {
                let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                out.insert(r.offset, v);
            }
        }
        offset = info.next_offset;
    }
    out
}

impl Sim {
    fn state(&self) -> ReplicaState {
        ReplicaState {
            adding: Vec::new(),
            recovering: false,
            leader: self.leader,
            leader_epoch: self.epoch,
            partition_epoch: self.epoch,
            replicas: (0..N).map(id).collect(),
            isr: self.isr.clone(),
        }
    }

    fn publish(&self) {
        let st = self.state();
        for p in self.replicas.iter().flatten() {
            p.set_replica_state(st.clone());
        }
    }

    fn leader(&self) -> Option<Arc<Partition>> {
        if self.leader < 1 {
            return None;
        }
        self.replicas[self.leader as usize - 1].clone()
    }

    /// The controller elects from the live ISR (clean elections only).
    fn elect(&mut self) {
        let live: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|b| self.replicas[*b as usize - 1].is_some())
            .collect();
        self.leader = live.first().copied().unwrap_or(-1);
        self.epoch += 1;
        self.publish();
    }

    async fn produce(&mut self, rng: &mut Rng) {
        let Some(l) = self.leader() else { return };
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..1 + rng.below(3) {
            b.push(&Record {
                timestamp: 1,
                key: None,
                value: Some(format!("v{}", self.next_value).into()),
                headers: vec![],
            });
            self.next_value += 1;
        }
        let batch = b.build().unwrap();
        l.append(&batch, Acks::Leader, Duration::from_secs(1))
            .await
            .unwrap();
    }

    fn fetch(&mut self, follower: usize, lose: bool) {
        let (Some(l), Some(f)) = (self.leader(), self.replicas[follower].clone()) else {
            return;
        };
        if id(follower) == self.leader {
            return;
        }
        let r = l.fetch_for_follower(
            id(follower),
            f.log().log_end_offset(),
            f.leader_epoch(),
            f.log().latest_epoch().map_or(-1, |e| e.epoch),
            4096,
        );
        let Ok(r) = r else { return };
        if lose {
            return; // the response never arrives (the leader counted the fetch)
        }
        if let Some((e, end)) = r.diverging {
            f.truncate_diverging(e, end).unwrap();
        } else if f.log().log_end_offset() < r.log_start_offset {
            f.restart_at(r.log_start_offset).unwrap();
        } else if f.append_as_follower(&r.records, r.high_watermark).is_err() {
            // Refused (not contiguous): the fetcher would log it and try again next round.
        }
    }

    fn crash(&mut self, i: usize) {
        let Some(p) = self.replicas[i].take() else {
            return;
        };
        drop(p); // kill -9: no close, the page cache keeps what was written
        if self.isr.len() > 1 {
            self.isr.retain(|b| *b != id(i));
        }
        if self.leader == id(i) {
            self.elect();
        } else {
            self.epoch += 1; // any change bumps the partition epoch; keep one counter
            self.publish();
        }
    }

    fn restart(&mut self, i: usize) {
        if self.replicas[i].is_some() {
            return;
        }
        let hw = self.checkpointed_hw[i].map_or(InitialHw::LogStart, InitialHw::Checkpointed);
        let p = open(self.dirs[i].path(), id(i), hw);
        p.set_replica_state(self.state());
        self.replicas[i] = Some(p);
        if self.leader < 1 {
            self.elect(); // an offline partition comes back with its last ISR member
        }
    }

    /// The leader's ISR upkeep, decided by the controller model: followers caught up with the
    /// HW (and the current epoch) join; `shrink` drops one lagging follower.
    fn maintain_isr(&mut self, shrink: Option<usize>) {
        let Some(l) = self.leader() else { return };
        let hw = l.high_watermark();
        let start = l
            .log()
            .latest_epoch()
            .filter(|e| e.epoch == self.epoch)
            .map_or(0, |e| e.start_offset);
        let mut changed = false;
        for (b, s) in l.follower_states() {
            if !self.isr.contains(&b)
                && self.replicas[b as usize - 1].is_some()
                && s.log_end_offset >= hw
                && s.log_end_offset >= start
                && s.log_end_offset == l.log().log_end_offset()
            {
                self.isr.push(b);
                changed = true;
            }
        }
        if let Some(i) = shrink {
            if id(i) != self.leader && self.isr.contains(&id(i)) {
                self.isr.retain(|b| *b != id(i));
                changed = true;
            }
        }
        if changed {
            self.epoch += 1;
            self.publish();
        }
    }

    fn check(&mut self, seed: u64, step: usize) {
        let Some(l) = self.leader() else { return };
        let hw = l.high_watermark();
        let all = values(&l, l.log().log_end_offset());
        // What was ever committed is still there, at the same offsets.
        for (o, v) in &self.committed {
            assert_eq!(
                all.get(o),
                Some(v),
                "seed {seed} step {step}: committed offset {o} ({v}) lost or changed at leader {} (hw {hw})",
                self.leader
            );
        }
        for (o, v) in all.range(..hw) {
            let prev = self.committed.insert(*o, v.clone());
            assert!(
                prev.is_none_or(|p| p == *v),
                "seed {seed} step {step}: offset {o} changed"
            );
        }
        // ISR members agree below the HW.
        let leader_bytes = l.log().read_bytes(0, 1 << 26, Some(hw)).unwrap().0;
        for b in &self.isr {
            let Some(p) = &self.replicas[*b as usize - 1] else {
                continue;
            };
            let upto = hw.min(p.log().log_end_offset());
            let theirs = p.log().read_bytes(0, 1 << 26, Some(upto)).unwrap().0;
            assert_eq!(
                &leader_bytes[..theirs.len().min(leader_bytes.len())],
                &theirs[..theirs.len().min(leader_bytes.len())],
                "seed {seed} step {step}: ISR member {b} disagrees below the HW"
            );
        }
    }
}

async fn run(seed: u64, steps: usize) {
    let mut rng = Rng(SeededRandom(seed));
    let dirs: Vec<tempfile::TempDir> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| Some(open(d.path(), id(i), InitialHw::LogStart)))
        .collect();
    let mut sim = Sim {
        dirs,
        replicas,
        checkpointed_hw: vec![None; N],
        leader: 1,
        epoch: 0,
        isr: (0..N).map(id).collect(),
        committed: BTreeMap::new(),
        next_value: 0,
    };
    sim.elect();
    for step in 0..steps {
        match rng.below(100) {
            0..=34 => sim.produce(&mut rng).await,
            35..=79 => {
                let f = rng.below(N as u64) as usize;
                let lose = rng.below(10) == 0;
                sim.fetch(f, lose);
            }
            80..=85 => {
                let i = rng.below(N as u64) as usize;
                // Keep a majority of replicas up, as the metadata quorum needs.
                if sim.replicas.iter().filter(|r| r.is_some()).count() > 2 {
                    sim.crash(i);
                }
            }
            86..=93 => {
                let i = rng.below(N as u64) as usize;
                sim.restart(i);
            }
            94..=95 => sim.maintain_isr(None),
            96..=97 => {
                // A broker's flush tick: every live replica's HW to its checkpoint.
                for (i, r) in sim.replicas.iter().enumerate() {
                    if let Some(p) = r {
                        sim.checkpointed_hw[i] = Some(p.high_watermark());
                    }
                }
            }
            _ => {
                let i = rng.below(N as u64) as usize;
                sim.maintain_isr(Some(i));
            }
        }
        sim.check(seed, step);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_crashes_and_leader_changes() {
    let seeds: u64 = std::env::var("REPLICATION_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for seed in 0..seeds {
        run(seed, 400).await;
    }
}
