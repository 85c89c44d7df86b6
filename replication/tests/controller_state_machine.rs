//! The controller's decisions, driven without sockets or clocks: unit scenarios, then a seeded
//! randomized run through thousands of register / heartbeat / fence / shutdown / create / delete
//! / AlterPartition sequences, checking the cluster's invariants after every step.
//!
//! `CONTROLLER_SIM_SEEDS=N` runs N seeds (default 20); a failure prints its seed, and
//! `CONTROLLER_SIM_SEED=S` replays one.

use std::collections::{BTreeMap, HashMap};

use sluice_replication::controller::{
    AlterPartition, ControllerConfig, ControllerError, ControllerState, Heartbeat, Randomness,
    Reassignment, RegisterBroker, SeededRandom, UNCLEAN_LEADER_ELECTION,
};
use sluice_replication::metadata::{BrokerId, Endpoints, MetadataImage, MetadataRecord, NO_LEADER};
use uuid::Uuid;

const SESSION: i64 = 9_000;

/// A controller and the image its committed records built.
struct Cluster {
    ctl: ControllerState,
    image: MetadataImage,
    offset: u64,
    now: i64,
    incarnations: BTreeMap<BrokerId, Uuid>,
    rng: SeededRandom,
    coverage: Coverage,
}

impl Cluster {
    fn new(seed: u64) -> Cluster {
        Cluster {
            ctl: ControllerState::new(ControllerConfig {
                broker_session_timeout_ms: SESSION,
                ..Default::default()
            }),
            image: MetadataImage::default(),
            offset: 0,
            now: 1_000_000,
            incarnations: BTreeMap::new(),
            rng: SeededRandom(seed),
            coverage: Coverage::default(),
        }
    }

    /// "Commits" records: applies them in order at the next offsets, as every broker would.
    fn commit(&mut self, records: &[MetadataRecord]) {
        self.coverage.count(records);
        for r in records {
            self.offset += 1;
            self.image.apply(self.offset, r).unwrap_or_else(|e| {
                panic!("controller produced an inapplicable record {r:?}: {e}")
            });
        }
    }

    fn register(&mut self, id: BrokerId, rack: Option<&str>) -> Result<i64, ControllerError> {
        let inc = self.rng.uuid();
        let d = self.ctl.register_broker(
            &self.image,
            &RegisterBroker {
                broker_id: id,
                incarnation_id: inc,
                endpoints: Endpoints {
                    kafka: format!("127.0.0.1:{}", 9000 + id),
                    ..Default::default()
                },
                rack: rack.map(str::to_string),
            },
            self.now,
        )?;
        self.commit(&d.records);
        self.incarnations.insert(id, inc);
        Ok(d.reply)
    }

    fn heartbeat(
        &mut self,
        id: BrokerId,
        want_shutdown: bool,
    ) -> Result<(bool, bool), ControllerError> {
        let epoch = self.image.broker(id).map_or(-1, |b| b.broker_epoch);
        let d = self.ctl.heartbeat(
            &self.image,
            &Heartbeat {
                broker_id: id,
                broker_epoch: epoch,
                metadata_offset: self.offset,
                want_shutdown,
            },
            self.now,
        )?;
        self.commit(&d.records);
        Ok((d.reply.is_fenced, d.reply.should_shutdown))
    }

    fn tick(&mut self, ms: i64) {
        self.now += ms;
        let recs = self.ctl.fence_stale_brokers(&self.image, self.now);
        self.commit(&recs);
    }

    fn create(&mut self, name: &str, partitions: i64, rf: i64) -> Result<Uuid, ControllerError> {
        self.create_with(name, partitions, rf, &BTreeMap::new())
    }

    fn create_with(
        &mut self,
        name: &str,
        partitions: i64,
        rf: i64,
        configs: &BTreeMap<String, String>,
    ) -> Result<Uuid, ControllerError> {
        let mut rng = self.rng.clone();
        let d = self
            .ctl
            .create_topic(&self.image, name, partitions, rf, configs, &mut rng)?;
        self.rng = rng;
        self.commit(&d.records);
        Ok(d.reply)
    }

    /// Reassigns (or with `None` cancels) one partition; the controller's answer for it.
    fn reassign(
        &mut self,
        topic: &str,
        p: u32,
        target: Option<Vec<BrokerId>>,
    ) -> Result<(), ControllerError> {
        let d = self.ctl.alter_reassignments(
            &self.image,
            &[Reassignment {
                topic: topic.to_string(),
                partition: p,
                target,
            }],
        );
        self.commit(&d.records);
        d.reply.into_iter().next().expect("one reply per request")
    }

    /// The leader of `topic`-`p` proposes `isr`, with the current epochs.
    fn propose_isr(
        &mut self,
        topic: &str,
        p: u32,
        isr: Vec<BrokerId>,
    ) -> Result<(), ControllerError> {
        let t = self.image.topic(topic).unwrap();
        let (tid, reg) = (t.id, t.partitions[&p].clone());
        let d = self.ctl.alter_partition(
            &self.image,
            &AlterPartition {
                broker_id: reg.leader,
                broker_epoch: self.image.broker(reg.leader).unwrap().broker_epoch,
                topic_id: tid,
                partition: p,
                leader_epoch: reg.leader_epoch,
                partition_epoch: reg.partition_epoch,
                new_isr: isr,
            },
        )?;
        self.commit(&d.records);
        Ok(())
    }

    fn leader(&self, topic: &str, p: u32) -> BrokerId {
        self.image.topic(topic).unwrap().partitions[&p].leader
    }
}

fn three_brokers() -> Cluster {
    let mut c = Cluster::new(7);
    for id in 1..=3 {
        c.register(id, None).unwrap();
        let (fenced, _) = c.heartbeat(id, false).unwrap();
        assert!(!fenced, "a caught-up broker is unfenced");
    }
    c
}

#[test]
fn a_broker_is_unfenced_only_once_caught_up() {
    let mut c = Cluster::new(1);
    c.register(1, None).unwrap();
    assert!(c.image.broker(1).unwrap().fenced, "registers fenced");
    let epoch = c.image.broker(1).unwrap().broker_epoch;
    let d = c
        .ctl
        .heartbeat(
            &c.image,
            &Heartbeat {
                broker_id: 1,
                broker_epoch: epoch,
                metadata_offset: 0, // has not replayed its own registration
                want_shutdown: false,
            },
            c.now,
        )
        .unwrap();
    assert!(d.records.is_empty() && d.reply.is_fenced && !d.reply.is_caught_up);
    c.heartbeat(1, false).unwrap();
    assert!(!c.image.broker(1).unwrap().fenced);
}

#[test]
fn replication_factor_is_bounded_by_usable_brokers_and_placement_spreads_leaders() {
    let mut c = three_brokers();
    assert_eq!(
        c.create("big", 1, 4),
        Err(ControllerError::InvalidReplicationFactor {
            requested: 4,
            available: 3
        })
    );
    c.create("t", 6, 3).unwrap();
    let t = c.image.topic("t").unwrap();
    let mut leaders: HashMap<BrokerId, usize> = HashMap::new();
    for reg in t.partitions.values() {
        let mut r = reg.replicas.clone();
        r.sort();
        assert_eq!(r, vec![1, 2, 3], "three distinct replicas");
        assert_eq!(reg.isr, reg.replicas);
        assert_eq!(reg.leader, reg.replicas[0]);
        *leaders.entry(reg.leader).or_default() += 1;
    }
    assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    assert_eq!(
        c.create("t", 1, 1),
        Err(ControllerError::TopicAlreadyExists("t".into()))
    );
}

#[test]
fn racks_get_one_replica_each() {
    let mut c = Cluster::new(3);
    for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
        c.register(id, Some(rack)).unwrap();
        c.heartbeat(id, false).unwrap();
    }
    c.create("r", 12, 3).unwrap();
    let rack = |id: BrokerId| c.image.broker(id).unwrap().rack.clone().unwrap();
    for reg in c.image.topic("r").unwrap().partitions.values() {
        let mut racks: Vec<String> = reg.replicas.iter().map(|r| rack(*r)).collect();
        racks.sort();
        racks.dedup();
        assert_eq!(racks.len(), 3, "{:?}", reg.replicas);
    }
}

#[test]
fn a_silent_broker_is_fenced_and_its_partitions_move_within_the_isr() {
    let mut c = three_brokers();
    c.create("t", 3, 3).unwrap();
    let victim = c.leader("t", 0);
    let epoch_before = c.image.topic("t").unwrap().partitions[&0].leader_epoch;
    // Everyone but the victim keeps heartbeating.
    for _ in 0..5 {
        c.tick(2_000);
        for id in 1..=3 {
            if id != victim {
                c.heartbeat(id, false).unwrap();
            }
        }
    }
    assert!(c.image.broker(victim).unwrap().fenced);
    for reg in c.image.topic("t").unwrap().partitions.values() {
        assert_ne!(reg.leader, victim);
        assert!(!reg.isr.contains(&victim), "left the ISR: {reg:?}");
    }
    assert!(c.image.topic("t").unwrap().partitions[&0].leader_epoch > epoch_before);
    // It comes back: unfenced, but it rejoins ISRs only through the leader's AlterPartition.
    c.heartbeat(victim, false).unwrap();
    assert!(!c.image.broker(victim).unwrap().fenced);
}

#[test]
fn the_last_isr_member_stays_and_the_partition_goes_offline_then_comes_back() {
    let mut c = three_brokers();
    c.create("one", 1, 1).unwrap();
    let only = c.leader("one", 0);
    for _ in 0..6 {
        c.tick(2_000);
        for id in (1..=3).filter(|id| *id != only) {
            c.heartbeat(id, false).unwrap();
        }
    }
    let reg = &c.image.topic("one").unwrap().partitions[&0];
    assert_eq!((reg.leader, reg.isr.clone()), (NO_LEADER, vec![only]));
    c.heartbeat(only, false).unwrap();
    assert_eq!(c.leader("one", 0), only, "re-elected when it is unfenced");
}

#[test]
fn unclean_election_only_when_the_topic_allows_it() {
    for allow in [false, true] {
        let mut c = three_brokers();
        let configs: BTreeMap<String, String> =
            [(UNCLEAN_LEADER_ELECTION.to_string(), allow.to_string())].into();
        let id = c.create_with("u", 1, 2, &configs).unwrap();
        let reg = c.image.partition(id, 0).unwrap().clone();
        let (leader, follower) = (reg.replicas[0], reg.replicas[1]);
        // The leader shrinks the ISR to itself (the follower fell behind) ...
        let d = c
            .ctl
            .alter_partition(
                &c.image,
                &AlterPartition {
                    broker_id: leader,
                    broker_epoch: c.image.broker(leader).unwrap().broker_epoch,
                    topic_id: id,
                    partition: 0,
                    leader_epoch: reg.leader_epoch,
                    partition_epoch: reg.partition_epoch,
                    new_isr: vec![leader],
                },
            )
            .unwrap();
        c.commit(&d.records);
        // ... and then dies.
        for _ in 0..6 {
            c.tick(2_000);
            for b in (1..=3).filter(|b| *b != leader) {
                c.heartbeat(b, false).unwrap();
            }
        }
        let reg = c.image.partition(id, 0).unwrap().clone();
        if allow {
            assert_eq!((reg.leader, reg.isr.clone()), (follower, vec![follower]));
            assert!(
                reg.recovering,
                "an unclean leader starts recovering (KIP-704)"
            );
        } else {
            assert_eq!(reg.leader, NO_LEADER, "offline rather than losing data");
            assert_eq!(
                reg.isr,
                vec![leader],
                "the last in-sync replica is remembered"
            );
        }
    }
}

#[test]
fn alter_partition_is_a_compare_and_swap_from_the_leader() {
    let mut c = three_brokers();
    let id = c.create("a", 1, 3).unwrap();
    let reg = c.image.partition(id, 0).unwrap().clone();
    let leader = reg.leader;
    let follower = reg.replicas[1];
    let epoch = |c: &Cluster, b: BrokerId| c.image.broker(b).unwrap().broker_epoch;
    let req =
        |broker: BrokerId, le: i32, pe: i32, isr: Vec<BrokerId>, c: &Cluster| AlterPartition {
            broker_id: broker,
            broker_epoch: epoch(c, broker),
            topic_id: id,
            partition: 0,
            leader_epoch: le,
            partition_epoch: pe,
            new_isr: isr,
        };
    let shrink: Vec<BrokerId> = reg.isr.iter().copied().filter(|r| *r != follower).collect();
    assert!(matches!(
        c.ctl.alter_partition(
            &c.image,
            &req(
                follower,
                reg.leader_epoch,
                reg.partition_epoch,
                shrink.clone(),
                &c
            )
        ),
        Err(ControllerError::InvalidRequest(_))
    ));
    let d = c
        .ctl
        .alter_partition(
            &c.image,
            &req(
                leader,
                reg.leader_epoch,
                reg.partition_epoch,
                shrink.clone(),
                &c,
            ),
        )
        .unwrap();
    c.commit(&d.records);
    assert_eq!(c.image.partition(id, 0).unwrap().isr, shrink);
    assert_eq!(d.reply.partition_epoch, reg.partition_epoch + 1);
    // The same proposal again is stale.
    assert!(matches!(
        c.ctl.alter_partition(
            &c.image,
            &req(
                leader,
                reg.leader_epoch,
                reg.partition_epoch,
                reg.isr.clone(),
                &c
            )
        ),
        Err(ControllerError::InvalidUpdateVersion { .. })
    ));
    // A leader must stay in its ISR; an epoch from the future means "not the controller".
    let now = c.image.partition(id, 0).unwrap().clone();
    assert!(matches!(
        c.ctl.alter_partition(
            &c.image,
            &req(
                leader,
                now.leader_epoch,
                now.partition_epoch,
                vec![follower],
                &c
            )
        ),
        Err(ControllerError::InvalidRequest(_))
    ));
    assert_eq!(
        c.ctl.alter_partition(
            &c.image,
            &req(
                leader,
                now.leader_epoch + 1,
                now.partition_epoch,
                shrink,
                &c
            )
        ),
        Err(ControllerError::NotController)
    );
}

#[test]
fn controlled_shutdown_moves_leadership_before_saying_go() {
    let mut c = three_brokers();
    c.create("s", 6, 3).unwrap();
    let (_, go) = c.heartbeat(2, true).unwrap();
    assert!(!go, "first it moves leadership");
    assert!(c
        .image
        .topic("s")
        .unwrap()
        .partitions
        .values()
        .all(|r| r.leader != 2 && r.leader != NO_LEADER));
    let (fenced, go) = c.heartbeat(2, true).unwrap();
    assert!(fenced && go);
}

#[test]
fn a_second_process_cannot_take_a_live_broker_id() {
    let mut c = three_brokers();
    assert_eq!(
        c.register(2, None),
        Err(ControllerError::DuplicateBrokerRegistration(2))
    );
    // Once its session has expired, a restarted process takes the id with a new epoch.
    let old = c.image.broker(2).unwrap().broker_epoch;
    for _ in 0..6 {
        c.tick(2_000);
        c.heartbeat(1, false).unwrap();
        c.heartbeat(3, false).unwrap();
    }
    assert!(c.register(2, None).unwrap() > old);
}

#[test]
fn a_reassignment_adds_catches_up_then_removes_and_moves_leadership() {
    let mut c = three_brokers();
    c.create("r", 1, 2).unwrap();
    let reg = c.image.topic("r").unwrap().partitions[&0].clone();
    let leader = reg.leader;
    let other = *reg.replicas.iter().find(|b| **b != leader).unwrap();
    let fresh = (1..=3).find(|b| !reg.replicas.contains(b)).unwrap();
    // Move off the leader, onto the broker that has no replica.
    c.reassign("r", 0, Some(vec![fresh, other])).unwrap();
    let moving = c.image.topic("r").unwrap().partitions[&0].clone();
    assert_eq!(moving.replicas, vec![fresh, other, leader]);
    assert_eq!(moving.adding, vec![fresh]);
    assert_eq!(moving.removing, vec![leader]);
    assert_eq!(
        moving.leader, leader,
        "leadership stays until the move completes"
    );
    assert!(
        !moving.isr.contains(&fresh),
        "a new replica starts outside the ISR"
    );
    // The leader's ISR expansion with the new replica completes it.
    let mut isr = moving.isr.clone();
    isr.push(fresh);
    c.propose_isr("r", 0, isr).unwrap();
    let done = c.image.topic("r").unwrap().partitions[&0].clone();
    assert_eq!(done.replicas, vec![fresh, other]);
    assert!(done.adding.is_empty() && done.removing.is_empty());
    assert!(!done.isr.contains(&leader));
    assert_eq!(
        done.leader, fresh,
        "the first target replica in the ISR leads"
    );
    assert!(done.leader_epoch > moving.leader_epoch);
}

#[test]
fn a_reorder_completes_at_once_and_a_cancel_restores_the_original_replicas() {
    let mut c = three_brokers();
    c.create("o", 1, 3).unwrap();
    let reg = c.image.topic("o").unwrap().partitions[&0].clone();
    let mut reordered = reg.replicas.clone();
    reordered.rotate_left(1);
    c.reassign("o", 0, Some(reordered.clone())).unwrap();
    let after = c.image.topic("o").unwrap().partitions[&0].clone();
    assert_eq!(after.replicas, reordered);
    assert!(after.adding.is_empty() && after.removing.is_empty());
    assert_eq!(
        after.leader, reg.leader,
        "a reorder does not move leadership by itself"
    );

    c.create("x", 1, 1).unwrap();
    let reg = c.image.topic("x").unwrap().partitions[&0].clone();
    let others: Vec<BrokerId> = (1..=3).filter(|b| !reg.replicas.contains(b)).collect();
    c.reassign("x", 0, Some(others.clone())).unwrap();
    let moving = c.image.topic("x").unwrap().partitions[&0].clone();
    assert_eq!(moving.adding, others);
    // A second reassignment replaces the first, from the original replicas.
    c.reassign("x", 0, Some(vec![others[0], reg.replicas[0]]))
        .unwrap();
    let second = c.image.topic("x").unwrap().partitions[&0].clone();
    assert_eq!(second.replicas, vec![others[0], reg.replicas[0]]);
    assert_eq!(second.adding, vec![others[0]]);
    assert!(second.removing.is_empty());
    c.reassign("x", 0, None).unwrap();
    let back = c.image.topic("x").unwrap().partitions[&0].clone();
    assert_eq!(back.replicas, reg.replicas);
    assert_eq!(back.isr, reg.isr);
    assert!(back.adding.is_empty() && back.removing.is_empty());
    assert_eq!(back.leader, reg.leader);
    assert!(matches!(
        c.reassign("x", 0, None),
        Err(ControllerError::NoReassignmentInProgress(_))
    ));
}

#[test]
fn bad_reassignments_are_refused_per_partition() {
    let mut c = three_brokers();
    c.create("b", 2, 1).unwrap();
    for bad in [vec![], vec![1, 1], vec![1, 9]] {
        assert!(
            matches!(
                c.reassign("b", 0, Some(bad.clone())),
                Err(ControllerError::InvalidReplicaAssignment(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        c.reassign("b", 7, Some(vec![1])),
        Err(ControllerError::UnknownTopicOrPartition(_))
    ));
    assert!(matches!(
        c.reassign("nope", 0, Some(vec![1])),
        Err(ControllerError::UnknownTopicOrPartition(_))
    ));
    // One bad request does not stop the good one beside it.
    let d = c.ctl.alter_reassignments(
        &c.image,
        &[
            Reassignment {
                topic: "b".into(),
                partition: 0,
                target: Some(vec![9]),
            },
            Reassignment {
                topic: "b".into(),
                partition: 1,
                target: Some(vec![1, 2, 3]),
            },
        ],
    );
    assert!(d.reply[0].is_err() && d.reply[1].is_ok());
    c.commit(&d.records);
    assert_eq!(c.image.topic("b").unwrap().partitions[&1].replicas.len(), 3);
}

#[test]
fn producer_id_blocks_never_overlap_and_need_a_current_broker_epoch() {
    let mut c = three_brokers();
    let mut blocks = Vec::new();
    for b in [1, 2, 1, 3] {
        let epoch = c.image.broker(b).unwrap().broker_epoch;
        let d = c.ctl.allocate_producer_ids(&c.image, b, epoch).unwrap();
        c.commit(&d.records);
        blocks.push(d.reply);
    }
    for w in blocks.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "{blocks:?}");
    }
    assert_eq!(c.image.next_producer_id, blocks[3].0 + blocks[3].1);
    assert!(matches!(
        c.ctl.allocate_producer_ids(&c.image, 2, -5),
        Err(ControllerError::StaleBrokerEpoch { .. })
    ));
    // The counter survives a snapshot (a restarted controller hands out fresh ids).
    let back = MetadataImage::decode(&c.image.encode().unwrap()).unwrap();
    assert_eq!(back.next_producer_id, c.image.next_producer_id);
}

// ---- seeded randomized run ---------------------------------------------------------------

/// What a run exercised, so the test cannot pass by doing nothing.
#[derive(Default, Debug)]
struct Coverage {
    fences: usize,
    unfences: usize,
    leader_changes: usize,
    offline_seen: usize,
    unclean_elections: usize,
    alters_accepted: usize,
    alters_refused: usize,
    topics_created: usize,
    reassignments_started: usize,
    reassignments_completed: usize,
}

impl Coverage {
    fn count(&mut self, records: &[MetadataRecord]) {
        for r in records {
            match r {
                MetadataRecord::FenceBroker { .. } => self.fences += 1,
                MetadataRecord::UnfenceBroker { .. } => self.unfences += 1,
                MetadataRecord::PartitionChange(c) => {
                    if c.leader.is_some() {
                        self.leader_changes += 1;
                    }
                    if c.recovering == Some(true) {
                        self.unclean_elections += 1;
                    }
                    match c.adding.as_ref().zip(c.removing.as_ref()) {
                        Some((a, r)) if a.is_empty() && r.is_empty() => {
                            self.reassignments_completed += 1
                        }
                        Some(_) => self.reassignments_started += 1,
                        None => {}
                    }
                }
                _ => {}
            }
        }
    }
}

#[derive(Default)]
struct Invariants {
    /// (topic id, partition, leader epoch) -> the leader that epoch had.
    leader_of_epoch: HashMap<(Uuid, u32, i32), BrokerId>,
    /// Last seen epochs, to check they only grow.
    epochs: HashMap<(Uuid, u32), (i32, i32)>,
}

impl Invariants {
    fn check(&mut self, image: &MetadataImage, seed: u64, step: usize) {
        for (t, p, reg) in image.partitions() {
            let ctx = || format!("seed {seed} step {step} {}-{p}: {reg:?}", t.name);
            assert!(!reg.isr.is_empty(), "empty ISR: {}", ctx());
            assert!(
                reg.adding
                    .iter()
                    .chain(&reg.removing)
                    .all(|r| reg.replicas.contains(r))
                    && reg.adding.iter().all(|r| !reg.removing.contains(r)),
                "adding/removing outside the replicas or overlapping: {}",
                ctx()
            );
            assert!(
                reg.adding.is_empty() && reg.removing.is_empty()
                    || !reg
                        .replicas
                        .iter()
                        .filter(|r| !reg.removing.contains(r))
                        .all(|r| reg.isr.contains(r)),
                "a reassignment whose target is all in sync was not completed: {}",
                ctx()
            );
            assert!(
                reg.isr.iter().all(|r| reg.replicas.contains(r)),
                "ISR outside replicas: {}",
                ctx()
            );
            // A fenced broker stays in an ISR only as its last member (so the partition can
            // come back with it); it never joins one.
            if reg.isr.len() > 1 {
                assert!(
                    reg.isr
                        .iter()
                        .all(|r| image.broker(*r).is_some_and(|b| !b.fenced)),
                    "fenced broker in a shared ISR: {}",
                    ctx()
                );
            }
            if reg.leader != NO_LEADER {
                assert!(
                    image.is_usable(reg.leader)
                        || image
                            .broker(reg.leader)
                            .is_some_and(|b| b.in_controlled_shutdown && !b.fenced),
                    "leader is fenced or unknown: {}",
                    ctx()
                );
                assert!(
                    reg.isr.contains(&reg.leader),
                    "leader not in ISR: {}",
                    ctx()
                );
            }
            let key = (t.id, p);
            if let Some((le, pe)) = self.epochs.get(&key) {
                assert!(
                    reg.leader_epoch >= *le && reg.partition_epoch >= *pe,
                    "epoch went back: {}",
                    ctx()
                );
                assert!(
                    reg.partition_epoch - pe >= reg.leader_epoch - le,
                    "partition epoch grew slower: {}",
                    ctx()
                );
            }
            self.epochs
                .insert(key, (reg.leader_epoch, reg.partition_epoch));
            let prev = self
                .leader_of_epoch
                .insert((t.id, p, reg.leader_epoch), reg.leader);
            assert!(
                prev.is_none_or(|l| l == reg.leader),
                "two leaders in epoch {}: {}",
                reg.leader_epoch,
                ctx()
            );
        }
        for b in image.brokers.values() {
            if b.fenced {
                assert!(
                    image.partitions().all(|(_, _, r)| r.leader != b.broker_id),
                    "seed {seed} step {step}: fenced broker {} leads",
                    b.broker_id
                );
            }
        }
    }
}

fn run_seed(seed: u64) -> Coverage {
    let mut c = Cluster::new(seed);
    let mut rng = SeededRandom(seed ^ 0xdead_beef);
    let mut inv = Invariants::default();
    // Brokers that currently heartbeat (alive) or not (crashed / paused).
    let mut alive: BTreeMap<BrokerId, bool> = BTreeMap::new();
    let mut topics: Vec<String> = Vec::new();
    let brokers = 5;
    for step in 0..1_500 {
        let roll = rng.next_u64() % 100;
        let b = (rng.next_u64() % brokers as u64) as BrokerId + 1;
        match roll {
            0..=9 => {
                if c.register(b, None).is_ok() {
                    alive.insert(b, true);
                }
            }
            10..=44 => {
                // Heartbeats from every live broker, then time passes.
                for (id, up) in alive.clone() {
                    if up {
                        let _ = c.heartbeat(id, false);
                    }
                }
                c.tick((rng.next_u64() % 4_000) as i64);
            }
            45..=52 => {
                alive.insert(b, false); // crash or pause: stops heartbeating
            }
            53..=58 => {
                if alive.contains_key(&b) {
                    alive.insert(b, true); // resumes (the same incarnation)
                }
            }
            59..=62 => {
                if alive.get(&b) == Some(&true) {
                    if let Ok((_, true)) = c.heartbeat(b, true) {
                        alive.insert(b, false); // exited after a controlled shutdown
                    }
                }
            }
            63..=72 => {
                let name = format!("t{step}");
                let rf = (rng.next_u64() % 4) as i64 + 1;
                let parts = (rng.next_u64() % 6) as i64 + 1;
                let mut configs = BTreeMap::new();
                if rng.next_u64().is_multiple_of(3) {
                    configs.insert(UNCLEAN_LEADER_ELECTION.to_string(), "true".to_string());
                }
                if c.create_with(&name, parts, rf, &configs).is_ok() {
                    topics.push(name);
                    c.coverage.topics_created += 1;
                }
            }
            73..=76 => {
                if !topics.is_empty() {
                    let i = (rng.next_u64() % topics.len() as u64) as usize;
                    let name = topics.swap_remove(i);
                    let d = c.ctl.delete_topic(&c.image, &name).unwrap();
                    c.commit(&d.records);
                }
            }
            77..=94 => {
                // A leader proposes an ISR change: shrink by one follower, or expand by a replica.
                let parts: Vec<(Uuid, u32)> =
                    c.image.partitions().map(|(t, p, _)| (t.id, p)).collect();
                if parts.is_empty() {
                    continue;
                }
                let (tid, p) = parts[(rng.next_u64() % parts.len() as u64) as usize];
                let reg = c.image.partition(tid, p).unwrap().clone();
                if reg.leader == NO_LEADER {
                    continue;
                }
                let mut isr = reg.isr.clone();
                if rng.next_u64().is_multiple_of(2) && isr.len() > 1 {
                    isr.retain(|r| *r != reg.leader);
                    isr.pop();
                    isr.insert(0, reg.leader);
                } else if let Some(add) = reg.replicas.iter().find(|r| !isr.contains(r)) {
                    isr.push(*add);
                }
                // Sometimes with a stale epoch, as a delayed proposal would be.
                let stale = rng.next_u64().is_multiple_of(5);
                let req = AlterPartition {
                    broker_id: reg.leader,
                    broker_epoch: c.image.broker(reg.leader).map_or(-1, |b| b.broker_epoch),
                    topic_id: tid,
                    partition: p,
                    leader_epoch: reg.leader_epoch,
                    partition_epoch: reg.partition_epoch - i32::from(stale),
                    new_isr: isr,
                };
                match c.ctl.alter_partition(&c.image, &req) {
                    Ok(d) => {
                        assert!(
                            !stale || reg.partition_epoch == 0,
                            "seed {seed}: stale proposal accepted"
                        );
                        c.coverage.alters_accepted += 1;
                        c.commit(&d.records);
                    }
                    Err(_) => c.coverage.alters_refused += 1,
                }
            }
            95..=97 => {
                // Move a partition to random replicas (sometimes: cancel its move).
                let parts: Vec<(String, u32)> = c
                    .image
                    .partitions()
                    .map(|(t, p, _)| (t.name.clone(), p))
                    .collect();
                if parts.is_empty() {
                    continue;
                }
                let (name, p) = parts[(rng.next_u64() % parts.len() as u64) as usize].clone();
                let target = if rng.next_u64().is_multiple_of(4) {
                    None
                } else {
                    let n = (rng.next_u64() % brokers as u64) as usize + 1;
                    let mut all: Vec<BrokerId> = (1..=brokers).collect();
                    let mut pick = Vec::new();
                    for _ in 0..n {
                        let i = (rng.next_u64() % all.len() as u64) as usize;
                        pick.push(all.swap_remove(i));
                    }
                    Some(pick)
                };
                let _ = c.reassign(&name, p, target);
            }
            _ => {
                let recs = c.ctl.elect_preferred_leaders(&c.image);
                c.commit(&recs);
            }
        }
        inv.check(&c.image, seed, step);
        c.coverage.offline_seen += c
            .image
            .partitions()
            .filter(|(_, _, r)| r.leader == NO_LEADER)
            .count()
            .min(1);
    }
    c.coverage
}

#[test]
fn seeded_random_sequences_keep_the_invariants() {
    if let Some(seed) = std::env::var("CONTROLLER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!("{:?}", run_seed(seed));
        return;
    }
    let seeds: u64 = std::env::var("CONTROLLER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut total = Coverage::default();
    for seed in 0..seeds {
        let c = run_seed(seed);
        total.fences += c.fences;
        total.unfences += c.unfences;
        total.leader_changes += c.leader_changes;
        total.offline_seen += c.offline_seen;
        total.unclean_elections += c.unclean_elections;
        total.alters_accepted += c.alters_accepted;
        total.alters_refused += c.alters_refused;
        total.topics_created += c.topics_created;
        total.reassignments_started += c.reassignments_started;
        total.reassignments_completed += c.reassignments_completed;
    }
    eprintln!("{seeds} seeds: {total:?}");
    // Every mechanism was exercised, many times.
    for (what, n) in [
        ("fences", total.fences),
        ("unfences", total.unfences),
        ("leader changes", total.leader_changes),
        ("steps with an offline partition", total.offline_seen),
        ("unclean elections", total.unclean_elections),
        ("accepted AlterPartitions", total.alters_accepted),
        ("refused AlterPartitions", total.alters_refused),
        ("topics", total.topics_created),
        ("reassignments started", total.reassignments_started),
        ("reassignments completed", total.reassignments_completed),
    ] {
        assert!(n >= seeds as usize, "only {n} {what} in {seeds} seeds");
    }
}
