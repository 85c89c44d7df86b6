//! The error codes a Kafka response carries, for `sluice_request_errors_total` (Kafka's
//! `ErrorsPerSec{request, error}`): the top-level code where the response has one, and each
//! topic's, partition's, group's or member's code where it answers per item.

use kafka_protocol::messages::*;

/// A response whose error codes can be counted; `API` names it in the metrics.
pub trait ErrorCodes {
    const API: &'static str;
    fn each_error(&self, f: &mut dyn FnMut(i16));
}

/// Counts the non-zero codes of `resp` into the request-errors metric.
pub fn record<R: ErrorCodes>(resp: &R) {
    let mut counts: Vec<(i16, u64)> = Vec::new();
    resp.each_error(&mut |code| {
        if code == 0 {
            return;
        }
        match counts.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => counts.push((code, 1)),
        }
    });
    for (code, n) in counts {
        let name = match kafka_protocol::ResponseError::try_from_code(code) {
            Some(e) => format!("{e:?}"),
            None => code.to_string(),
        };
        crate::metrics::observe_errors("kafka", R::API, &name, n);
    }
}

/// Responses with one top-level `error_code`.
macro_rules! top_level {
    ($($t:ty => $api:literal),* $(,)?) => {$(
        impl ErrorCodes for $t {
            const API: &'static str = $api;
            fn each_error(&self, f: &mut dyn FnMut(i16)) {
                f(self.error_code);
            }
        }
    )*};
}

top_level! {
    ApiVersionsResponse => "ApiVersions",
    DescribeClusterResponse => "DescribeCluster",
    JoinGroupResponse => "JoinGroup",
    SyncGroupResponse => "SyncGroup",
    HeartbeatResponse => "Heartbeat",
    ListGroupsResponse => "ListGroups",
    InitProducerIdResponse => "InitProducerId",
    AddOffsetsToTxnResponse => "AddOffsetsToTxn",
    EndTxnResponse => "EndTxn",
    ListTransactionsResponse => "ListTransactions",
    ListPartitionReassignmentsResponse => "ListPartitionReassignments",
}

/// Responses answering per item: `$items` is a path to the list, each with `error_code`.
macro_rules! per_item {
    ($($t:ty => $api:literal, |$r:ident, $f:ident| $body:block),* $(,)?) => {$(
        impl ErrorCodes for $t {
            const API: &'static str = $api;
            fn each_error(&self, $f: &mut dyn FnMut(i16)) {
                let $r = self;
                $body
            }
        }
    )*};
}

per_item! {
    ProduceResponse => "Produce", |r, f| {
        r.responses.iter().flat_map(|t| &t.partition_responses).for_each(|p| f(p.error_code));
    },
    FetchResponse => "Fetch", |r, f| {
        f(r.error_code);
        r.responses.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
    },
    MetadataResponse => "Metadata", |r, f| {
        f(r.error_code);
        r.topics.iter().for_each(|t| f(t.error_code));
    },
    ListOffsetsResponse => "ListOffsets", |r, f| {
        r.topics.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
    },
    CreateTopicsResponse => "CreateTopics", |r, f| {
        r.topics.iter().for_each(|t| f(t.error_code));
    },
    DeleteTopicsResponse => "DeleteTopics", |r, f| {
        r.responses.iter().for_each(|t| f(t.error_code));
    },
    DescribeConfigsResponse => "DescribeConfigs", |r, f| {
        r.results.iter().for_each(|t| f(t.error_code));
    },
    AlterConfigsResponse => "AlterConfigs", |r, f| {
        r.responses.iter().for_each(|t| f(t.error_code));
    },
    IncrementalAlterConfigsResponse => "IncrementalAlterConfigs", |r, f| {
        r.responses.iter().for_each(|t| f(t.error_code));
    },
    CreatePartitionsResponse => "CreatePartitions", |r, f| {
        r.results.iter().for_each(|t| f(t.error_code));
    },
    FindCoordinatorResponse => "FindCoordinator", |r, f| {
        f(r.error_code);
        r.coordinators.iter().for_each(|c| f(c.error_code));
    },
    LeaveGroupResponse => "LeaveGroup", |r, f| {
        f(r.error_code);
        r.members.iter().for_each(|m| f(m.error_code));
    },
    OffsetCommitResponse => "OffsetCommit", |r, f| {
        r.topics.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
    },
    OffsetFetchResponse => "OffsetFetch", |r, f| {
        f(r.error_code);
        r.topics.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
        for g in &r.groups {
            f(g.error_code);
            g.topics.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
        }
    },
    DescribeGroupsResponse => "DescribeGroups", |r, f| {
        r.groups.iter().for_each(|g| f(g.error_code));
    },
    DeleteGroupsResponse => "DeleteGroups", |r, f| {
        r.results.iter().for_each(|g| f(g.error_code));
    },
    OffsetDeleteResponse => "OffsetDelete", |r, f| {
        f(r.error_code);
        r.topics.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
    },
    OffsetForLeaderEpochResponse => "OffsetForLeaderEpoch", |r, f| {
        r.topics.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
    },
    AddPartitionsToTxnResponse => "AddPartitionsToTxn", |r, f| {
        f(r.error_code);
        r.results_by_topic_v3_and_below
            .iter()
            .chain(r.results_by_transaction.iter().flat_map(|t| &t.topic_results))
            .flat_map(|t| &t.results_by_partition)
            .for_each(|p| f(p.partition_error_code));
    },
    TxnOffsetCommitResponse => "TxnOffsetCommit", |r, f| {
        r.topics.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
    },
    DescribeProducersResponse => "DescribeProducers", |r, f| {
        r.topics.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
    },
    DescribeTransactionsResponse => "DescribeTransactions", |r, f| {
        r.transaction_states.iter().for_each(|t| f(t.error_code));
    },
    AlterPartitionReassignmentsResponse => "AlterPartitionReassignments", |r, f| {
        f(r.error_code);
        r.responses.iter().flat_map(|t| &t.partitions).for_each(|p| f(p.error_code));
    },
}
