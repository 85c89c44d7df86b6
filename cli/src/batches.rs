//! Client-side parsing of `RECORD_FORMAT_BATCHES` fetches: the broker sends the stored Kafka
//! RecordBatch v2 bytes untouched and the client decodes them, as Kafka clients do — the
//! broker does no per-record work.

use sluice_proto::v1 as pb;

/// Largest decompressed batch accepted (a corrupt size must not allocate without bound).
const DECOMPRESSED_LIMIT: usize = 256 << 20;

/// Fills `resp.records` from `resp.record_batches` (emptied), skipping records below `from`
/// (the first batch may start before the offset asked for).
pub fn into_records(resp: &mut pb::FetchResponse, from: u64) -> Result<(), String> {
    if resp.record_batches.is_empty() {
        return Ok(());
    }
    let data = std::mem::take(&mut resp.record_batches);
    let stored = sluice_log::decode_batches(&data, DECOMPRESSED_LIMIT).map_err(|e| {
        format!(
            "DataLoss: {}-{}: a fetched batch at or after offset {from} does not decode ({e})",
            resp.topic, resp.partition
        )
    })?;
    resp.records
        .extend(stored.into_iter().filter(|r| r.offset >= from).map(|r| {
            pb::ConsumedRecord {
                offset: r.offset,
                timestamp_ms: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| pb::Header {
                        key: h.key,
                        value: h.value,
                    })
                    .collect(),
            }
        }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_log::{BatchBuilder, Compression, Record};

    fn batch(from: i64, values: &[&str], codec: Compression) -> bytes::BytesMut {
        let mut b = BatchBuilder::new(codec);
        for v in values {
            b.push(&Record {
                timestamp: 5,
                key: Some(bytes::Bytes::from_static(b"k")),
                value: Some(bytes::Bytes::from(v.to_string())),
                headers: vec![sluice_log::Header {
                    key: "h".into(),
                    value: None,
                }],
            });
        }
        let mut out = b.build().unwrap();
        out[..8].copy_from_slice(&from.to_be_bytes());
        out
    }

    #[test]
    fn batches_become_records_from_the_offset_asked_for() {
        let mut data = batch(10, &["a", "b", "c"], Compression::None);
        data.extend_from_slice(&batch(13, &["d", "e"], Compression::Lz4));
        let mut resp = pb::FetchResponse {
            topic: "t".into(),
            record_batches: data.freeze(),
            ..Default::default()
        };
        into_records(&mut resp, 11).unwrap();
        let got: Vec<(u64, &[u8])> = resp
            .records
            .iter()
            .map(|r| (r.offset, r.value.as_deref().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![(11, &b"b"[..]), (12, b"c"), (13, b"d"), (14, b"e")]
        );
        assert!(resp.record_batches.is_empty());
        assert_eq!(resp.records[0].headers[0].key, "h");
        assert_eq!(resp.records[0].timestamp_ms, 5);
    }

    #[test]
    fn a_damaged_batch_is_an_error_naming_the_partition() {
        let mut data = batch(0, &["a"], Compression::None);
        let n = data.len();
        data[n - 1] ^= 0xff; // breaks the CRC
        let mut resp = pb::FetchResponse {
            topic: "t".into(),
            partition: 3,
            record_batches: data.freeze(),
            ..Default::default()
        };
        let e = into_records(&mut resp, 0).unwrap_err();
        assert!(e.contains("t-3"), "{e}");
    }
}
