//! Producer state, snapshot + replay = live state: random idempotent and transactional traffic
//! from a few producers (next batches, retries of recent and old ones, sequence gaps, old and
//! bumped epochs, commit and abort markers) goes to two logs in the same directory layout; one
//! lives throughout, the other is killed (dropped without a close) and reopened at random points,
//! so it rebuilds its producers from the newest snapshot plus the log after it. Every append and
//! marker must get the same answer from both, and both must end with the same producers, last
//! stable offset and aborted transactions.

mod common;

use proptest::prelude::*;
use std::sync::Arc;

use sluice_log::{Log, LogConfig, ManualClock, Marker};

#[derive(Debug, Clone)]
enum Op {
    /// The producer's next batch (sequence right after its last written one).
    Next {
        producer: usize,
        records: i32,
        transactional: bool,
    },
    /// The `back`-th most recent batch the producer sent, again.
    Retry {
        producer: usize,
        back: usize,
    },
    /// A batch skipping `skip` sequence numbers.
    Gap {
        producer: usize,
        skip: i32,
    },
    /// A batch at the producer's previous epoch.
    OldEpoch {
        producer: usize,
    },
    /// The producer moves to its next epoch, sequences from 0.
    Bump {
        producer: usize,
    },
    Marker {
        producer: usize,
        commit: bool,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0usize..3;
    prop_oneof![
        8 => (p.clone(), 1i32..5, any::<bool>()).prop_map(|(producer, records, transactional)| {
            Op::Next { producer, records, transactional }
        }),
        3 => (p.clone(), 0usize..8).prop_map(|(producer, back)| Op::Retry { producer, back }),
        1 => (p.clone(), 1i32..4).prop_map(|(producer, skip)| Op::Gap { producer, skip }),
        1 => p.clone().prop_map(|producer| Op::OldEpoch { producer }),
        1 => p.clone().prop_map(|producer| Op::Bump { producer }),
        2 => (p, any::<bool>()).prop_map(|(producer, commit)| Op::Marker { producer, commit }),
        2 => Just(Op::Reopen),
    ]
}

fn config() -> LogConfig {
    // Small segments: rolls (and so snapshots) every few batches.
    LogConfig {
        segment_bytes: 600,
        ..LogConfig::default()
    }
}

/// What the client side knows of a producer.
#[derive(Default)]
struct Client {
    epoch: i16,
    next_seq: i32,
    /// (sequence, records, transactional) of what it sent at this epoch, oldest first.
    sent: Vec<(i32, i32, bool)>,
}

fn pid(producer: usize) -> i64 {
    1000 + producer as i64
}

/// An append's or marker's answer, comparable across the two logs.
fn outcome<T: std::fmt::Debug>(r: Result<T, sluice_log::LogError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {e}"),
    }
}

fn settle(log: &Log) {
    log.set_high_watermark(log.log_end_offset());
}

fn state(log: &Log) -> (String, u64, u64, String) {
    settle(log);
    let mut producers: Vec<String> = log
        .producer_states()
        .entries()
        .map(|(pid, e)| format!("{pid}: {e:?}"))
        .collect();
    producers.sort();
    (
        producers.join("\n"),
        log.log_end_offset(),
        log.last_stable_offset(),
        format!("{:?}", log.aborted_transactions(0, u64::MAX)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_reopened_log_answers_every_producer_as_the_live_one(ops in prop::collection::vec(op(), 1..70)) {
        let live_dir = tempfile::tempdir().unwrap();
        let killed_dir = tempfile::tempdir().unwrap();
        // One fixed clock: markers take their timestamps from it, and both logs must agree.
        let clock = Arc::new(ManualClock::new(common::TS0));
        let open = |dir: &std::path::Path| Log::open_with_clock(dir, config(), clock.clone()).unwrap();
        let live = open(live_dir.path());
        let mut killed = open(killed_dir.path());
        let mut clients: Vec<Client> = (0..3).map(|_| Client::default()).collect();
        for (i, op) in ops.iter().enumerate() {
            let send = |log: &Log, producer: usize, epoch: i16, seq: i32, n: i32, txn: bool| {
                let b = common::producer_batch(pid(producer), epoch, seq, n, txn);
                let r = outcome(log.append_as_leader(&b, 0));
                settle(log);
                r
            };
            let (a, b) = match op {
                Op::Reopen => {
                    drop(killed); // a kill: no close, no snapshot at the end
                    killed = open(killed_dir.path());
                    (String::new(), String::new())
                }
                Op::Next { producer, records, transactional } => {
                    let c = &clients[*producer];
                    let args = (*producer, c.epoch, c.next_seq, *records, *transactional);
                    let a = send(&live, args.0, args.1, args.2, args.3, args.4);
                    let b = send(&killed, args.0, args.1, args.2, args.3, args.4);
                    let c = &mut clients[*producer];
                    c.sent.push((args.2, args.3, args.4));
                    if a.starts_with("ok") {
                        c.next_seq += records;
                    }
                    (a, b)
                }
                Op::Retry { producer, back } => {
                    let c = &clients[*producer];
                    match c.sent.len().checked_sub(back + 1).map(|k| c.sent[k]) {
                        None => continue,
                        Some((seq, n, txn)) => (
                            send(&live, *producer, c.epoch, seq, n, txn),
                            send(&killed, *producer, c.epoch, seq, n, txn),
                        ),
                    }
                }
                Op::Gap { producer, skip } => {
                    let c = &clients[*producer];
                    let seq = c.next_seq + skip;
                    (
                        send(&live, *producer, c.epoch, seq, 1, false),
                        send(&killed, *producer, c.epoch, seq, 1, false),
                    )
                }
                Op::OldEpoch { producer } => {
                    let c = &clients[*producer];
                    if c.epoch == 0 {
                        continue;
                    }
                    (
                        send(&live, *producer, c.epoch - 1, c.next_seq, 1, false),
                        send(&killed, *producer, c.epoch - 1, c.next_seq, 1, false),
                    )
                }
                Op::Bump { producer } => {
                    let c = &mut clients[*producer];
                    c.epoch += 1;
                    c.next_seq = 0;
                    c.sent.clear();
                    continue;
                }
                Op::Marker { producer, commit } => {
                    let epoch = clients[*producer].epoch;
                    let marker = Marker { commit: *commit, coordinator_epoch: 0 };
                    let a = outcome(live.append_marker(pid(*producer), epoch, marker, 0));
                    let b = outcome(killed.append_marker(pid(*producer), epoch, marker, 0));
                    settle(&live);
                    settle(&killed);
                    (a, b)
                }
            };
            prop_assert_eq!(&a, &b, "op {} {:?}", i, op);
            prop_assert_eq!(state(&live), state(&killed), "after op {} {:?}", i, op);
        }
        // Once more after a final kill and reopen.
        drop(killed);
        let killed = open(killed_dir.path());
        prop_assert_eq!(state(&live), state(&killed));
    }
}
