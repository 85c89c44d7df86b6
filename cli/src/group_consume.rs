//! `sluice consume TOPIC --group G`: a consumer-group member over gRPC.
//!
//! The broker assigns partitions (JoinGroup blocks through the rebalance and returns ours). We
//! start each partition at the group's committed offset, or at the earliest/latest offset when
//! there is none, fetch with long polls, and print. Offsets are committed only after the records
//! they cover are written to stdout and flushed, so a crash at any point re-delivers rather than
//! skips (at least once). A heartbeat every third of the session timeout keeps us in the group;
//! when it says the group is rebalancing, we commit what we printed, stop fetching and rejoin.
//! SIGINT/SIGTERM or `--max-messages` commit, leave the group (so the others take our partitions
//! at once, not after the session timeout) and exit 0.
//!
//! Like a Kafka client, it rides out a broker restart: calls that fail because the broker is
//! unreachable are retried (the channel reconnects), and since the broker stores the group's
//! membership, the member carries on in the same generation when the broker is back.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_proto::v1 as pb;
use sluice_proto::v1::consumer_client::ConsumerClient;
use sluice_proto::v1::groups_client::GroupsClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::{status_message, ConsumeArgs};

type Tp = (String, u32);

/// The broker is unreachable or went away mid-call, or the group's coordinator (or a
/// partition's leader) moved: worth retrying, not worth exiting over.
fn transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) || moved(s)
}

/// The broker asked is not the group's coordinator, or not the partition's leader.
fn moved(s: &tonic::Status) -> bool {
    s.metadata()
        .get(sluice_proto::routing::COORDINATOR_ID_METADATA)
        .is_some()
        || crate::leaders::is_leadership_change(s)
}

const RETRY: Duration = Duration::from_millis(250);

/// What one membership (one generation) ended with.
enum Ended {
    /// Rejoin: the group is rebalancing or we were fenced.
    Rejoin,
    /// Stop: a signal or --max-messages.
    Done,
}

struct Member {
    groups: GroupsClient<Channel>,
    /// The broker given with `--broker`: where leaders and the coordinator are looked up.
    bootstrap: String,
    group: String,
    member_id: String,
    generation: i32,
    /// Next offset to commit per partition (what has been printed), and whether it moved since
    /// the last commit.
    printed: BTreeMap<Tp, (u64, bool)>,
}

impl Member {
    async fn commit(&mut self) -> Result<(), tonic::Status> {
        let offsets: Vec<pb::OffsetToCommit> = self
            .printed
            .iter()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|((topic, partition), (offset, _))| pb::OffsetToCommit {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                metadata: String::new(),
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.groups
            .commit_offsets(pb::CommitOffsetsRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
                generation: self.generation,
                offsets,
            })
            .await?;
        for (_, dirty) in self.printed.values_mut() {
            *dirty = false;
        }
        Ok(())
    }

    /// Where to start a partition: the committed offset, else earliest or latest.
    async fn start_offsets(
        &mut self,
        assignment: &[Tp],
        from_beginning: bool,
    ) -> Result<BTreeMap<Tp, u64>, String> {
        let committed: BTreeMap<Tp, u64> = self
            .groups
            .fetch_offsets(pb::FetchOffsetsRequest {
                group: self.group.clone(),
                partitions: assignment
                    .iter()
                    .map(|(topic, partition)| pb::TopicPartition {
                        topic: topic.clone(),
                        partition: *partition,
                    })
                    .collect(),
            })
            .await
            .map_err(status_message)?
            .into_inner()
            .offsets
            .into_iter()
            .filter_map(|o| o.offset.map(|off| ((o.topic, o.partition), off)))
            .collect();
        let mut out = BTreeMap::new();
        for tp in assignment {
            let start = match committed.get(tp) {
                Some(o) => *o,
                None => {
                    let o = self.reset_offset(tp, from_beginning).await?;
                    // Commit the position even before anything is printed (Kafka's consumer does
                    // on close): else records produced while this member is down would be
                    // skipped, since a restarted member with no commit starts at the end again.
                    self.printed.insert(tp.clone(), (o, true));
                    o
                }
            };
            out.insert(tp.clone(), start);
        }
        Ok(out)
    }

    /// Kafka's auto.offset.reset: earliest with --from-beginning, else latest.
    async fn reset_offset(&mut self, tp: &Tp, earliest: bool) -> Result<u64, String> {
        let spec = if earliest {
            pb::OffsetSpec::Earliest
        } else {
            pb::OffsetSpec::Latest
        };
        let leaders = crate::leaders::Leaders::load(&self.bootstrap, &tp.0).await?;
        crate::leaders::leader_offset(&leaders, &tp.0, tp.1, spec).await
    }
}

/// A partition's fetch loop: long polls from `offset` until `stop`, sending each non-empty
/// response, from the partition's leader (found again when it moves). An offset that fell below
/// the log start (retention) restarts at the earliest.
async fn fetch_partition(
    bootstrap: String,
    tp: Tp,
    mut offset: u64,
    tx: mpsc::Sender<Result<(Tp, pb::FetchResponse), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = loop {
        let found = match crate::leaders::Leaders::load(&bootstrap, &tp.0).await {
            Ok(l) => l.channel_to_leader(tp.1).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(ch) => break ConsumerClient::new(ch).max_decoding_message_size(256 << 20),
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stop.changed() => return,
                }
            }
        }
    };
    loop {
        let req = pb::FetchRequest {
            topic: tp.0.clone(),
            partition: tp.1,
            offset,
            max_bytes: 0,
            max_wait_ms: 500,
            min_bytes: 1,
            format: pb::RecordFormat::Batches as i32,
            ..Default::default()
        };
        let r = tokio::select! {
            r = client.fetch(req) => r,
            _ = stop.changed() => return,
        };
        match r {
            Ok(resp) => {
                let mut resp = resp.into_inner();
                if let Err(e) = crate::batches::into_records(&mut resp, offset) {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                if resp.records.is_empty() {
                    offset = resp.next_offset.max(offset);
                    continue;
                }
                offset = resp.next_offset.max(offset);
                if tx.send(Ok((tp.clone(), resp))).await.is_err() {
                    return;
                }
            }
            Err(s) if s.code() == tonic::Code::OutOfRange => {
                let earliest = client
                    .list_offsets(pb::ListOffsetsRequest {
                        topic: tp.0.clone(),
                        partition: tp.1,
                        spec: pb::OffsetSpec::Earliest as i32,
                        timestamp_ms: 0,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().offset.unwrap_or(0));
                match earliest {
                    Ok(o) if o > offset => offset = o,
                    _ => {
                        let _ = tx.send(Err(status_message(s))).await;
                        return;
                    }
                }
            }
            Err(s) if crate::leaders::is_leadership_change(&s) => {
                // The leader moved: fetch from the new one (the same offset).
                return Box::pin(fetch_partition(bootstrap, tp, offset, tx, stop)).await;
            }
            Err(s) if transient(&s) => {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.changed() => return,
                }
            }
            Err(s) => {
                let _ = tx.send(Err(status_message(s))).await;
                return;
            }
        }
    }
}

pub async fn consume(args: ConsumeArgs, group: String) -> Result<(), String> {
    let bootstrap = args.conn.broker.clone();
    let channel = crate::channel(&crate::leaders::coordinator(&bootstrap, &group).await).await?;
    let mut m = Member {
        groups: GroupsClient::new(channel.clone()),
        bootstrap: bootstrap.clone(),
        group,
        member_id: String::new(),
        generation: -1,
        printed: BTreeMap::new(),
    };
    let session = Duration::from_millis(args.session_timeout_ms.into());
    let commit_every = Duration::from_millis(args.commit_interval_ms);
    let max = args.max_messages.unwrap_or(u64::MAX);
    let mut count = 0u64;
    let signal = crate::interrupted();
    tokio::pin!(signal);
    loop {
        let joined = tokio::select! {
            r = m.groups.join_group(pb::JoinGroupRequest {
                group: m.group.clone(),
                topics: vec![args.topic.clone()],
                member_id: m.member_id.clone(),
                group_instance_id: args.group_instance_id.clone(),
                client_id: "sluice-cli".into(),
                session_timeout_ms: args.session_timeout_ms,
                rebalance_timeout_ms: 0,
            }) => match r {
                Ok(r) => r.into_inner(),
                Err(s) if transient(&s) => {
                    let coordinator_moved = moved(&s);
                    eprintln!("join {}: {} (retrying)", m.group, status_message(s));
                    tokio::time::sleep(RETRY).await;
                    if coordinator_moved {
                        // Find the coordinator again and talk to it from now on.
                        if let Ok(ch) = crate::channel(&crate::leaders::coordinator(&bootstrap, &m.group).await).await {
                            m.groups = GroupsClient::new(ch);
                        }
                    }
                    continue;
                }
                Err(s) => return Err(status_message(s)),
            },
            _ = &mut signal => return Ok(()),
        };
        m.member_id = joined.member_id;
        m.generation = joined.generation;
        let assignment: Vec<Tp> = joined
            .assignment
            .into_iter()
            .map(|tp| (tp.topic, tp.partition))
            .collect();
        eprintln!(
            "joined group {} generation {} as {}: {}",
            m.group,
            m.generation,
            m.member_id,
            if assignment.is_empty() {
                "no partitions".to_string()
            } else {
                assignment
                    .iter()
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
        m.printed.clear();
        let starts = match m.start_offsets(&assignment, args.from_beginning).await {
            Ok(s) => s,
            Err(e) => {
                // Most likely the broker went away right after the join: rejoin when it is back.
                eprintln!("committed offsets of {}: {e} (rejoining)", m.group);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (tx, mut rx) = mpsc::channel(16);
        for (tp, start) in starts {
            tokio::spawn(fetch_partition(
                bootstrap.clone(),
                tp,
                start,
                tx.clone(),
                stop_rx.clone(),
            ));
        }
        drop(tx);
        let mut heartbeat = tokio::time::interval(session / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commit_tick = tokio::time::interval(commit_every);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle = false;
        let ended = loop {
            tokio::select! {
                item = rx.recv(), if !idle => {
                    let Some(item) = item else {
                        // No partitions (more members than partitions): just heartbeat until the
                        // next rebalance.
                        idle = true;
                        continue;
                    };
                    let (tp, resp) = item?;
                    // Flushed before it counts as printed: only then may it be committed.
                    let Some((n, next)) =
                        crate::print_records(&args, tp.1, &resp.records, max - count)?
                    else {
                        // stdout closed: stop as on a signal.
                        break Ended::Done;
                    };
                    count += n;
                    if let Some(next) = next {
                        m.printed.insert(tp, (next, true));
                    }
                    if count >= max {
                        break Ended::Done;
                    }
                }
                _ = commit_tick.tick() => {
                    // A failed commit keeps its offsets pending for the next tick.
                    match m.commit().await {
                        Ok(()) => {}
                        Err(s) if s.code() == tonic::Code::Aborted || moved(&s) => break Ended::Rejoin,
                        Err(s) if transient(&s) => {}
                        Err(s) => return Err(status_message(s)),
                    }
                }
                _ = heartbeat.tick() => {
                    let status = match m.groups.heartbeat(pb::HeartbeatRequest {
                        group: m.group.clone(),
                        member_id: m.member_id.clone(),
                        generation: m.generation,
                    }).await {
                        Ok(r) => r.into_inner().status(),
                        Err(s) if moved(&s) => break Ended::Rejoin,
                        Err(s) if transient(&s) => continue,
                        Err(s) => return Err(status_message(s)),
                    };
                    match status {
                        pb::MemberStatus::Ok => {}
                        pb::MemberStatus::Rebalance => break Ended::Rejoin,
                        pb::MemberStatus::Fenced => {
                            // Our partitions may already be someone else's: no commit.
                            m.printed.clear();
                            break Ended::Rejoin;
                        }
                    }
                }
                _ = &mut signal => break Ended::Done,
            }
        };
        let _ = stop_tx.send(true);
        // As in Kafka, a group that is preparing a rebalance still takes the current
        // generation's commits, so what we printed is not read twice. A refusal (we were fenced)
        // only means those records come again to the partition's next owner.
        if let Err(s) = m.commit().await {
            eprintln!("commit before {}: {}", m.group, status_message(s));
        }
        if let Ended::Done = ended {
            let _ = m
                .groups
                .leave_group(pb::LeaveGroupRequest {
                    group: m.group.clone(),
                    member_id: m.member_id.clone(),
                })
                .await;
            return Ok(());
        }
    }
}
