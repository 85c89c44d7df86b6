//! The transaction coordinator's state machine on a real (single-node) broker core: Kafka's
//! transitions, fencing by producer id and epoch, timeouts, and takeover replay — a coordinator
//! that opens the data directory after a crash between PrepareCommit and the markers finishes
//! the commit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_log::{BatchBuilder, Compression, ManualClock, Record};
use sluice_replication::Acks;

use super::*;
use crate::cluster::node::Node;

struct Opened {
    node: Node,
    c: Arc<TransactionCoordinator>,
    clock: Arc<ManualClock>,
}

impl Opened {
    async fn close(self) {
        drop(self.c);
        self.node.stop().await;
    }
}

async fn open(dir: &std::path::Path) -> Opened {
    let node = Node::start_for_tests(dir).await;
    let groups = crate::groups::GroupCoordinator::open(node.admin.clone(), Default::default());
    groups.follow().await;
    let local = Arc::new(markers::LocalMarkers {
        topics: node.admin.topics.clone(),
        groups,
    });
    let sender = Arc::new(MarkerSender::new(local, node.quorum.handle.clone(), 1));
    let clock = Arc::new(ManualClock::new(1_000_000));
    let c = TransactionCoordinator::new(
        node.admin.clone(),
        node.producer_ids.clone(),
        sender,
        TxnSettings {
            max_timeout_ms: 900_000,
            abort_check_interval: Duration::from_millis(10),
            id_expiration_ms: 7 * 24 * 3600 * 1000,
            replication_factor: 1,
        },
        clock.clone(),
    );
    c.follow().await;
    Opened { node, c, clock }
}

/// Polls `f` until it returns `Some` (30 s at most): partitions appear and coordinators load
/// asynchronously.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `t` (2 partitions) and waits until this node leads both.
async fn topic(o: &Opened) {
    o.node
        .admin
        .create_topic("t", 2, 1, BTreeMap::new(), false)
        .await
        .expect("create t");
    eventually("t's partitions led here", async || {
        (0..2)
            .all(|i| o.node.topics.partition("t", i).is_ok_and(|p| p.is_leader()))
            .then_some(())
    })
    .await;
}

/// InitProducerId, retried while the coordinator's partition is being created and loaded.
async fn init(o: &Opened, id: &str, timeout_ms: i32) -> (i64, i16) {
    eventually("InitProducerId", async || {
        match o.c.init_producer_id(id, timeout_ms, None).await {
            Ok(v) => Some(v),
            Err(
                code::COORDINATOR_NOT_AVAILABLE
                | code::COORDINATOR_LOAD_IN_PROGRESS
                | code::CONCURRENT_TRANSACTIONS,
            ) => {
                o.c.follow().await;
                None
            }
            Err(e) => panic!("InitProducerId: error {e}"),
        }
    })
    .await
}

fn status(o: &Opened, id: &str) -> TxnRecord {
    o.c.describe(id).expect("described").record
}

async fn wait_status(o: &Opened, id: &str, want: TxnStatus) -> TxnRecord {
    eventually(&format!("{id} in {want:?}"), async || {
        // No assertion inside the wait: an answer that is not there yet is polled again.
        o.c.describe(id)
            .ok()
            .map(|v| v.record)
            .filter(|r| r.status == want)
    })
    .await
}

/// A transactional batch of one record from `pid` at `epoch` into t-`partition`.
async fn write(o: &Opened, partition: u32, pid: i64, epoch: i16, seq: i32) {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        timestamp: 1_000_000,
        key: None,
        value: Some(bytes::Bytes::from_static(b"v")),
        headers: Vec::new(),
    });
    let batch = b
        .build_with(&sluice_log::BatchTemplate {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0x10,
            last_offset_delta: 0,
            max_timestamp: None,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
        })
        .expect("batch");
    o.node
        .topics
        .partition("t", partition)
        .expect("t")
        .append(&batch, Acks::All, Duration::from_secs(10))
        .await
        .expect("append");
}

fn stable(o: &Opened, partition: u32) -> bool {
    let p = o.node.topics.partition("t", partition).expect("t");
    p.log().last_stable_offset() == p.log().log_end_offset()
}

fn tp(p: i32) -> (String, i32) {
    ("t".to_string(), p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_abort_walk_kafkas_states_and_write_markers() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path()).await;
    topic(&o).await;
    let (pid, epoch) = init(&o, "tx", 60_000).await;
    assert_eq!(epoch, 0);
    assert_eq!(status(&o, "tx").status, TxnStatus::Empty);

    o.c.add_partitions("tx", pid, epoch, &[tp(0), tp(1)])
        .await
        .unwrap();
    let r = status(&o, "tx");
    assert_eq!(r.status, TxnStatus::Ongoing);
    assert_eq!(r.partitions.len(), 2);
    assert_eq!(r.start_ms, 1_000_000, "the coordinator's clock");
    write(&o, 0, pid, epoch, 0).await;
    assert!(!stable(&o, 0), "an open transaction holds the LSO");

    o.c.end_txn("tx", pid, epoch, true).await.unwrap();
    wait_status(&o, "tx", TxnStatus::CompleteCommit).await;
    assert!(
        stable(&o, 0) && stable(&o, 1),
        "markers closed it on both partitions"
    );
    // A retried EndTxn of the same outcome is answered OK; the other outcome is refused.
    assert_eq!(o.c.end_txn("tx", pid, epoch, true).await, Ok(()));
    assert_eq!(
        o.c.end_txn("tx", pid, epoch, false).await,
        Err(code::INVALID_TXN_STATE)
    );

    // The next transaction aborts: its partitions start afresh, the abort is indexed.
    o.c.add_partitions("tx", pid, epoch, &[tp(1)])
        .await
        .unwrap();
    assert_eq!(status(&o, "tx").partitions.len(), 1);
    write(&o, 1, pid, epoch, 0).await;
    o.c.end_txn("tx", pid, epoch, false).await.unwrap();
    wait_status(&o, "tx", TxnStatus::CompleteAbort).await;
    let log = o.node.topics.partition("t", 1).unwrap().log().clone();
    assert!(stable(&o, 1));
    assert_eq!(log.aborted_transactions(0, log.log_end_offset()).len(), 1);
    // EndTxn with nothing open is refused.
    assert_eq!(
        o.c.end_txn("tx", pid, epoch, true).await,
        Err(code::INVALID_TXN_STATE)
    );
    o.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_epochs_and_other_producer_ids_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path()).await;
    topic(&o).await;
    let (pid, e0) = init(&o, "tx", 60_000).await;
    // A second producer with the same transactional id: same producer id, next epoch.
    let (pid2, e1) = init(&o, "tx", 60_000).await;
    assert_eq!((pid2, e1), (pid, e0 + 1));
    assert_eq!(
        o.c.add_partitions("tx", pid, e0, &[tp(0)]).await,
        Err(code::PRODUCER_FENCED)
    );
    assert_eq!(
        o.c.add_partitions("tx", pid + 1000, e1, &[tp(0)]).await,
        Err(code::INVALID_PRODUCER_ID_MAPPING)
    );
    assert_eq!(
        o.c.end_txn("tx", pid, e1, true).await,
        Err(code::INVALID_TXN_STATE),
        "nothing open"
    );
    // KIP-360: re-initialising with the producer id and epoch it had.
    assert_eq!(
        o.c.init_producer_id("tx", 60_000, Some((pid, e0))).await,
        Err(code::PRODUCER_FENCED)
    );
    assert_eq!(
        o.c.init_producer_id("tx", 60_000, Some((pid + 1000, e1)))
            .await,
        Err(code::INVALID_PRODUCER_ID_MAPPING)
    );
    assert_eq!(
        o.c.init_producer_id("tx", 60_000, Some((pid, e1))).await,
        Ok((pid, e1 + 1))
    );
    for bad in [0, -5, 900_001] {
        assert_eq!(
            o.c.init_producer_id("tx", bad, None).await,
            Err(code::INVALID_TRANSACTION_TIMEOUT)
        );
    }
    o.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinitialising_aborts_the_running_transaction_with_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path()).await;
    topic(&o).await;
    let (pid, e0) = init(&o, "tx", 60_000).await;
    o.c.add_partitions("tx", pid, e0, &[tp(0)]).await.unwrap();
    write(&o, 0, pid, e0, 0).await;
    // A restarted producer: the open transaction is aborted under a bumped epoch first.
    assert_eq!(
        o.c.init_producer_id("tx", 60_000, None).await,
        Err(code::CONCURRENT_TRANSACTIONS)
    );
    let r = wait_status(&o, "tx", TxnStatus::CompleteAbort).await;
    assert_eq!(r.producer_epoch, e0 + 1);
    assert!(stable(&o, 0), "the abort marker closed it");
    assert_eq!(init(&o, "tx", 60_000).await, (pid, e0 + 2));
    o.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path()).await;
    topic(&o).await;
    let (pid, e0) = init(&o, "tx", 1_000).await;
    o.c.add_partitions("tx", pid, e0, &[tp(0)]).await.unwrap();
    write(&o, 0, pid, e0, 0).await;
    o.c.tick().await;
    assert_eq!(
        status(&o, "tx").status,
        TxnStatus::Ongoing,
        "not yet timed out"
    );
    o.clock.advance(1_001);
    o.c.tick().await;
    let r = wait_status(&o, "tx", TxnStatus::CompleteAbort).await;
    assert_eq!(r.producer_epoch, e0 + 1, "fenced by the bump");
    assert!(stable(&o, 0));
    assert_eq!(
        o.c.end_txn("tx", pid, e0, true).await,
        Err(code::PRODUCER_FENCED)
    );
    o.close().await;
}

/// The coordinator dies after writing PrepareCommit and before the markers: the one that loads
/// the partition next (here, the same node restarted) replays the log and finishes the commit;
/// the other ids' states come back as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_coordinator_finishes_a_commit_left_prepared() {
    let dir = tempfile::tempdir().unwrap();
    let (pid, epoch) = {
        let o = open(dir.path()).await;
        topic(&o).await;
        let (idle_pid, _) = init(&o, "idle", 60_000).await;
        let (pid, epoch) = init(&o, "tx", 60_000).await;
        assert_ne!(idle_pid, pid);
        o.c.add_partitions("tx", pid, epoch, &[tp(0), tp(1)])
            .await
            .unwrap();
        write(&o, 0, pid, epoch, 0).await;
        write(&o, 1, pid, epoch, 0).await;
        // EndTxn's durable step only — as if the process died before sending any marker.
        let prepared = TxnRecord {
            status: TxnStatus::PrepareCommit,
            ..status(&o, "tx")
        };
        o.c.transition("tx", prepared).await.unwrap();
        assert!(!stable(&o, 0) && !stable(&o, 1));
        o.close().await;
        (pid, epoch)
    };
    let o = open(dir.path()).await;
    eventually("t back", async || {
        (0..2)
            .all(|i| o.node.topics.partition("t", i).is_ok_and(|p| p.is_leader()))
            .then_some(())
    })
    .await;
    let r = eventually("the commit finished", async || {
        o.c.follow().await;
        o.c.describe("tx")
            .ok()
            .filter(|v| v.record.status == TxnStatus::CompleteCommit)
    })
    .await;
    assert_eq!(
        (r.record.producer_id, r.record.producer_epoch),
        (pid, epoch)
    );
    assert!(
        stable(&o, 0) && stable(&o, 1),
        "markers written by the new coordinator"
    );
    assert_eq!(status(&o, "idle").status, TxnStatus::Empty);
    // The producer carries on with its epoch.
    o.c.add_partitions("tx", pid, epoch, &[tp(0)])
        .await
        .unwrap();
    o.close().await;
}
