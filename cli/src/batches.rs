//! Client-side parsing of `RECORD_FORMAT_BATCHES` fetches: the broker sends the stored Kafka
//! RecordBatch v2 bytes untouched and the client decodes them, as Kafka clients do — the
//! broker does no per-record work.

use sluice_proto::v1 as pb;

/// Largest decompressed batch accepted (a corrupt size must not allocate without bound).
const DECOMPRESSED_LIMIT: usize = 256 << 20;

/// Fills `resp.records` from `resp.record_batches` (emptied), skipping records below `from`
/// (the first batch may start before the offset asked for). A batch that does not decode (stored
/// by an older version without record validation, or damaged under a valid CRC) is an error
/// naming its offsets and the offset to read on from when nothing precedes it; when good batches
/// do, those are returned and `resp.next_offset` is set to the bad one, so the next fetch reports
/// it — what the broker does for the typed form.
pub fn into_records(resp: &mut pb::FetchResponse, from: u64) -> Result<(), String> {
    if resp.record_batches.is_empty() {
        return Ok(());
    }
    let data = std::mem::take(&mut resp.record_batches);
    for frame in sluice_log::batch::BatchFrames::new(&data) {
        let (pos, h) = match frame {
            Ok(f) => f,
            Err(sluice_log::BatchError::Truncated { .. }) => break,
            Err(e) => return Err(format!("DataLoss: {}-{}: {e}", resp.topic, resp.partition)),
        };
        if h.is_control() {
            continue;
        }
        let batch = data.slice(pos..pos + h.total_size());
        let stored = match sluice_log::decode_batch(&batch, DECOMPRESSED_LIMIT) {
            Ok(r) => r,
            Err(e) if resp.records.is_empty() => {
                return Err(format!(
                    "DataLoss: {}-{}: the stored batch at offsets {}..={} does not decode ({e}); \
                     read on from offset {}",
                    resp.topic,
                    resp.partition,
                    h.base_offset,
                    h.last_offset(),
                    h.next_offset()
                ))
            }
            Err(_) => {
                resp.next_offset = h.base_offset.max(0) as u64;
                return Ok(());
            }
        };
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
    }
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

    #[test]
    fn good_batches_before_an_undecodable_one_are_returned_and_it_is_fetched_next() {
        let mut data = batch(0, &["a", "b"], Compression::None);
        let mut bad = batch(2, &["c"], Compression::None);
        // Garbage in the records area under a recomputed, valid CRC.
        let n = bad.len();
        for b in &mut bad[n - 4..] {
            *b = 0xff;
        }
        let crc = sluice_log::batch::compute_crc(&bad);
        bad[17..21].copy_from_slice(&crc.to_be_bytes());
        data.extend_from_slice(&bad);
        let mut resp = pb::FetchResponse {
            topic: "t".into(),
            record_batches: data.clone().freeze(),
            next_offset: 3,
            ..Default::default()
        };
        into_records(&mut resp, 0).unwrap();
        assert_eq!(resp.records.len(), 2);
        assert_eq!(
            resp.next_offset, 2,
            "the next fetch starts at the bad batch"
        );
        let mut resp = pb::FetchResponse {
            topic: "t".into(),
            record_batches: bad.freeze(),
            ..Default::default()
        };
        let e = into_records(&mut resp, 2).unwrap_err();
        assert!(
            e.contains("offsets 2..=2") && e.contains("read on from offset 3"),
            "{e}"
        );
    }
}
