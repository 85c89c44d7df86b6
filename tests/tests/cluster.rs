//! The metadata quorum across real `sluice serve` processes on loopback: three brokers elect a
//! controller, survive kill -9 of it, take it back, and survive all three restarting; a lone
//! broker is a one-voter quorum of itself.

mod common;

use std::time::{Duration, Instant};

use common::Broker;

#[derive(Debug, Clone, PartialEq)]
struct Status {
    node: u64,
    leader: Option<u64>,
    term: u64,
    commit: u64,
    applied: u64,
    voters: usize,
}

/// `sluice cluster status --output json` against `b`; `None` while it does not answer.
fn status(b: &Broker) -> Option<Status> {
    let out = b.cli(&["cluster", "status", "--output", "json"], None);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Status {
        node: v["node_id"].as_u64()?,
        leader: v["leader_id"].as_u64(),
        term: v["term"].as_u64()?,
        commit: v["commit_index"].as_u64()?,
        applied: v["applied_index"].as_u64()?,
        voters: v["voters"].as_array()?.len(),
    })
}

/// Polls until every broker in `bs` reports the same leader (one of them) in the same term.
fn wait_agreed_leader(bs: &[&Broker], deadline: Duration) -> (u64, u64) {
    let end = Instant::now() + deadline;
    loop {
        let last = bs.iter().map(|b| status(b)).collect::<Vec<_>>();
        if let Some(Some(first)) = last.first() {
            let ids: Vec<u64> = last.iter().flatten().map(|s| s.node).collect();
            let agreed = last.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s.leader.is_some() && s.leader == first.leader && s.term == first.term
                })
            });
            if agreed && first.leader.is_some_and(|l| ids.contains(&l)) {
                return (first.leader.unwrap_or(0), first.term);
            }
        }
        assert!(Instant::now() < end, "no agreed leader: {last:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn three_brokers() -> Vec<Broker> {
    common::start_cluster(3, &[])
}

#[test]
fn a_lone_broker_is_a_one_voter_quorum() {
    let b = Broker::start();
    let (leader, _) = wait_agreed_leader(&[&b], Duration::from_secs(30));
    assert_eq!(leader, 1);
    let s = status(&b).unwrap();
    assert_eq!(s.voters, 1);
    let table = b.cli(&["cluster", "status"], None);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("Controller (Raft leader): 1"), "{text}");
}

#[test]
fn three_brokers_elect_a_controller_and_fail_over_after_kill_9() {
    let mut bs = three_brokers();
    let (leader, term) = wait_agreed_leader(&[&bs[0], &bs[1], &bs[2]], Duration::from_secs(60));
    let s = status(&bs[0]).unwrap();
    assert_eq!(s.voters, 3);

    // kill -9 the active controller: the other two elect another.
    let li = leader as usize - 1;
    let killed_at = Instant::now();
    bs[li].kill9();
    let rest: Vec<&Broker> = bs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, b)| b)
        .collect();
    let (new_leader, new_term) = wait_agreed_leader(&rest, Duration::from_secs(60));
    let failover = killed_at.elapsed();
    eprintln!("controller failover after kill -9 of node {leader}: node {new_leader} leads term {new_term} after {failover:?}");
    assert_ne!(new_leader, leader);
    assert!(new_term > term);

    // It comes back and follows; the commit index it reports catches up with the others.
    bs[li].launch_listening();
    let (_, term3) = wait_agreed_leader(&[&bs[0], &bs[1], &bs[2]], Duration::from_secs(60));
    assert!(term3 >= new_term);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let st: Vec<Status> = bs.iter().filter_map(status).collect();
        if st.len() == 3
            && st
                .iter()
                .all(|s| s.applied == st[0].commit && s.commit == st[0].commit)
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "applied offsets did not converge: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // All three killed and restarted: the quorum comes back with its log (commit never goes back).
    let before = status(&bs[0]).unwrap();
    for b in bs.iter_mut() {
        b.kill9();
    }
    for b in bs.iter_mut() {
        b.launch_listening();
    }
    let (_, term4) = wait_agreed_leader(&[&bs[0], &bs[1], &bs[2]], Duration::from_secs(60));
    assert!(term4 > before.term);
    let after = status(&bs[0]).unwrap();
    assert!(after.commit >= before.commit, "{before:?} -> {after:?}");
}
