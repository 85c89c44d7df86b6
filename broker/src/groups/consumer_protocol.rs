//! Kafka's consumer embedded protocol (the bytes inside JoinGroup metadata and SyncGroup
//! assignments, each prefixed by an `int16` version) and the range assignor the broker runs for
//! gRPC group members, who bring no assignor of their own.
//!
//! The same encoding lets gRPC members and Kafka clients share a group: either side may lead a
//! rebalance and the other reads what it assigned.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// The protocol name gRPC members offer; Kafka clients whose assignors include `range` (the Java
/// client's and librdkafka's defaults do) can join the same group.
pub const RANGE: &str = "range";

fn with_version<T: Encodable>(message: &T, version: i16) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(version);
    // Encoding these plain structs at v0 cannot fail (no fields outside v0 are set).
    if message.encode(&mut b, version).is_err() {
        return Bytes::new();
    }
    b.freeze()
}

/// JoinGroup metadata subscribing to `topics`.
pub fn encode_subscription(topics: &BTreeSet<String>) -> Bytes {
    let s = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.clone()))
            .collect(),
    );
    with_version(&s, 0)
}

/// The topics a member's JoinGroup metadata subscribes to; empty if the bytes are not a
/// consumer-protocol subscription.
pub fn decode_subscription(bytes: &Bytes) -> BTreeSet<String> {
    let mut b = bytes.clone();
    if b.remaining() < 2 {
        return BTreeSet::new();
    }
    let version = b.get_i16().clamp(0, 3);
    ConsumerProtocolSubscription::decode(&mut b, version)
        .map(|s| s.topics.into_iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// A SyncGroup assignment of these (topic, partition)s.
pub fn encode_assignment(partitions: &[(String, i32)]) -> Bytes {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                AssignedPartitions::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(ps)
            })
            .collect(),
    );
    with_version(&a, 0)
}

/// The (topic, partition)s in a consumer-protocol assignment; empty if the bytes are not one.
pub fn decode_assignment(bytes: &Bytes) -> Vec<(String, i32)> {
    let mut b = bytes.clone();
    if b.remaining() < 2 {
        return Vec::new();
    }
    let version = b.get_i16().clamp(0, 3);
    ConsumerProtocolAssignment::decode(&mut b, version)
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .flat_map(|tp| {
                    let t = tp.topic.0.to_string();
                    tp.partitions.into_iter().map(move |p| (t.clone(), p))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Kafka's RangeAssignor: per topic, the members subscribed to it (sorted by id) take contiguous
/// runs of partitions, the first `partitions % members` one more than the rest. `members` holds
/// each member's id and subscription metadata; `partitions_of` gives a topic's partition count
/// (`None` for a topic that does not exist, which nobody gets). Returns every member's
/// assignment bytes, empty assignments included.
pub fn range_assign(
    members: &[(String, Bytes)],
    partitions_of: impl Fn(&str) -> Option<u32>,
) -> Vec<(String, Bytes)> {
    let mut subscribers: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (id, meta) in members {
        for topic in decode_subscription(meta) {
            subscribers.entry(topic).or_default().push(id);
        }
    }
    let mut assigned: BTreeMap<&str, Vec<(String, i32)>> = members
        .iter()
        .map(|(id, _)| (id.as_str(), Vec::new()))
        .collect();
    for (topic, mut ids) in subscribers {
        let Some(n) = partitions_of(&topic) else {
            continue;
        };
        ids.sort_unstable();
        let per = n / ids.len() as u32;
        let extra = n % ids.len() as u32;
        let mut next = 0u32;
        for (i, id) in ids.iter().enumerate() {
            let count = per + u32::from((i as u32) < extra);
            if let Some(list) = assigned.get_mut(id) {
                list.extend((next..next + count).map(|p| (topic.clone(), p as i32)));
            }
            next += count;
        }
    }
    assigned
        .into_iter()
        .map(|(id, parts)| (id.to_string(), encode_assignment(&parts)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(topics: &[&str]) -> Bytes {
        encode_subscription(&topics.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn subscriptions_and_assignments_round_trip() {
        let s = sub(&["a", "b"]);
        assert_eq!(&s[..2], &[0, 0], "version 0 prefix");
        assert_eq!(
            decode_subscription(&s).into_iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        let a = encode_assignment(&[("a".into(), 2), ("b".into(), 0), ("a".into(), 3)]);
        assert_eq!(
            decode_assignment(&a),
            [
                ("a".to_string(), 2),
                ("a".to_string(), 3),
                ("b".to_string(), 0)
            ]
        );
        assert!(decode_subscription(&Bytes::from_static(&[0, 0, 0xff])).is_empty());
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_empty());
    }

    #[test]
    fn range_splits_partitions_like_kafka() {
        let members = vec![
            ("m3".to_string(), sub(&["t"])),
            ("m1".to_string(), sub(&["t", "u"])),
            ("m2".to_string(), sub(&["t", "missing"])),
        ];
        let counts = |t: &str| match t {
            "t" => Some(7),
            "u" => Some(2),
            _ => None,
        };
        let got: BTreeMap<String, Vec<(String, i32)>> = range_assign(&members, counts)
            .into_iter()
            .map(|(id, b)| (id, decode_assignment(&b)))
            .collect();
        let t = |ps: &[i32]| ps.iter().map(|p| ("t".to_string(), *p)).collect::<Vec<_>>();
        let mut m1 = t(&[0, 1, 2]);
        m1.extend([("u".to_string(), 0), ("u".to_string(), 1)]);
        assert_eq!(got["m1"], m1);
        assert_eq!(got["m2"], t(&[3, 4]));
        assert_eq!(got["m3"], t(&[5, 6]));
        // Six partitions over three members: two each.
        let even = range_assign(&members, |_| Some(6));
        assert!(even.iter().all(|(_, b)| decode_assignment(b)
            .iter()
            .filter(|(t, _)| t == "t")
            .count()
            == 2));
    }
}
