//! Batches encoded by the `kafka-protocol` crate (as a real client sends them, compressed or not)
//! round-trip through append/read unchanged but for the offset fields the log owns, and decode
//! the same with both our decoder and kafka-protocol's.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as KCompression, Record as KRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType as KTimestampType,
};
use sluice_log::{batch, Log, LogConfig};

fn client_records(n: usize, base_ts: i64) -> Vec<KRecord> {
    (0..n)
        .map(|i| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_string(format!("trace-{i}")),
                Some(Bytes::from("abc")),
            );
            headers.insert(StrBytes::from_static_str("null"), None);
            KRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: KTimestampType::Creation,
                offset: i as i64,
                // Kafka-protocol starts a new batch when offset - sequence changes: keep it fixed.
                sequence: i as i32 - 1,
                timestamp: base_ts + i as i64 * 7,
                key: (i % 2 == 0).then(|| Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(format!("value-{i}-").repeat(i % 13 + 1))),
                headers,
            }
        })
        .collect()
}

#[test]
fn client_encoded_batches_round_trip_unchanged() {
    let codecs = [
        KCompression::None,
        KCompression::Gzip,
        KCompression::Snappy,
        KCompression::Lz4,
        KCompression::Zstd,
    ];
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut sent = Vec::new();
    for (round, codec) in codecs.iter().enumerate() {
        let records = client_records(50, 1_700_000_000_000 + round as i64 * 1000);
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: *codec,
            },
        )
        .unwrap();
        let original = buf.clone();
        let info = log.append_as_leader(&buf, 9).unwrap();
        assert_eq!(info.record_count, 50, "{codec:?}");
        assert_eq!(info.first_offset, round as u64 * 50);
        sent.push((original, records, *codec, info.first_offset));
    }

    for (original, records, codec, first_offset) in sent {
        let (stored, _) = log.read_bytes(first_offset, 1, None).unwrap();
        assert_eq!(stored.len(), original.len(), "{codec:?}");
        // Only baseOffset (0..8) and partitionLeaderEpoch (12..16) differ; payload untouched.
        assert_eq!(stored[8..12], original[8..12]);
        assert_eq!(
            stored[16..],
            original[16..],
            "{codec:?}: payload must not be re-encoded"
        );
        let h = batch::validate(&stored, true).unwrap();
        assert_eq!(
            (h.base_offset as u64, h.partition_leader_epoch),
            (first_offset, 9)
        );

        // kafka-protocol decodes what we stored...
        let mut b = stored.clone();
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        assert_eq!(set.compression, codec);
        for (got, want) in set.records.iter().zip(&records) {
            assert_eq!(got.offset, first_offset as i64 + want.offset);
            assert_eq!(
                (&got.key, &got.value, got.timestamp),
                (&want.key, &want.value, want.timestamp)
            );
            assert_eq!(got.headers, want.headers);
        }
        // ...and so do we.
        let ours = sluice_log::decode_batch(&stored, 1 << 20).unwrap();
        assert_eq!(ours.len(), records.len());
        for (got, want) in ours.iter().zip(&records) {
            assert_eq!(got.offset, first_offset + want.offset as u64);
            assert_eq!(
                (&got.key, &got.value, got.timestamp),
                (&want.key, &want.value, want.timestamp)
            );
            let hs: Vec<(String, Option<Bytes>)> = got
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            let want_hs: Vec<(String, Option<Bytes>)> = want
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            assert_eq!(hs, want_hs);
        }
    }
}

#[test]
fn our_builder_output_decodes_with_kafka_protocol() {
    for codec in [
        sluice_log::Compression::None,
        sluice_log::Compression::Gzip,
        sluice_log::Compression::Snappy,
        sluice_log::Compression::Lz4,
        sluice_log::Compression::Zstd,
    ] {
        let mut b = sluice_log::BatchBuilder::new(codec);
        for i in 0..20 {
            b.push(&sluice_log::Record {
                timestamp: 1_700_000_000_000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: vec![sluice_log::Header {
                    key: "h".into(),
                    value: None,
                }],
            });
        }
        let mut bytes = b.build().unwrap().freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records.len(), 20, "{codec:?}");
        assert_eq!(set.records[7].value.as_deref(), Some(&b"v7"[..]));
        assert_eq!(set.records[7].timestamp, 1_700_000_000_007);
    }
}
