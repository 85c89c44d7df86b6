//! How a request finds its partition and its broker: facts every client and every broker must
//! agree on, so they live with the API contract.
//!
//! - Kafka's default partitioner: murmur2 of the key (bit for bit Kafka's), a sticky partition
//!   for unkeyed records.
//! - A consumer group's coordinator is the leader of `__consumer_offsets` partition
//!   `abs(javaHash(group)) % 50`; a transactional id's, of `__transaction_state` partition
//!   `abs(javaHash(transactional id)) % 50`.
//! - A refusal because another broker leads names it in gRPC metadata.

/// Metadata key naming the partition's leader (broker id) on a NOT_LEADER refusal.
pub const LEADER_ID_METADATA: &str = "sluice-leader-id";
/// Metadata key naming the group's coordinator (broker id) on a NOT_COORDINATOR refusal.
pub const COORDINATOR_ID_METADATA: &str = "sluice-coordinator-id";

/// The topic holding committed offsets and group membership.
pub const CONSUMER_OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partition count (Kafka's `offsets.topic.num.partitions`).
pub const CONSUMER_OFFSETS_PARTITIONS: u32 = 50;

/// The topic holding transaction coordinators' state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// Its partition count (Kafka's `transaction.state.log.num.partitions`).
pub const TRANSACTION_STATE_PARTITIONS: u32 = 50;

/// Java's `String.hashCode`, then Kafka's `Utils.abs`, modulo `partitions`.
fn java_hash_partition(s: &str, partitions: u32) -> u32 {
    // Java chars are unsigned UTF-16 code units.
    let h = s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs: Integer.MIN_VALUE maps to 0, not to itself.
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs as u32 % partitions
}

/// The `__consumer_offsets` partition of `group`.
pub fn group_partition(group: &str) -> u32 {
    java_hash_partition(group, CONSUMER_OFFSETS_PARTITIONS)
}

/// The `__transaction_state` partition of a transactional id: its leader coordinates it.
pub fn transaction_partition(transactional_id: &str) -> u32 {
    java_hash_partition(transactional_id, TRANSACTION_STATE_PARTITIONS)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions.max(1)
}

/// The partition for null-keyed records of one request: random, then sticky for the request.
pub fn sticky_partition(partitions: u32) -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // A process-wide counter seeded from the clock spreads requests without a RNG dependency.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(seed)) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafkas_murmur2_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input.as_bytes()), want, "{input}");
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in 1..20 {
            let p = partition_for_key(b"user-42", n);
            assert!(p < n);
            assert_eq!(p, partition_for_key(b"user-42", n));
            assert!(sticky_partition(n) < n);
        }
    }
}
