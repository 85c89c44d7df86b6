#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use sluice_log::{BatchBuilder, Compression, Header, Log, Record, StoredRecord};

pub const TS0: i64 = 1_700_000_000_000;

/// A batch of `n` records whose values are "<tag>-<i>".
pub fn batch(tag: &str, n: usize, ts: i64) -> BytesMut {
    batch_with(tag, n, ts, Compression::None)
}

pub fn batch_with(tag: &str, n: usize, ts: i64, c: Compression) -> BytesMut {
    let mut b = BatchBuilder::new(c);
    for i in 0..n {
        b.push(&Record {
            timestamp: ts + i as i64,
            key: Some(Bytes::from(format!("k{}", i % 7))),
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            headers: vec![Header {
                key: "h".into(),
                value: Some(Bytes::from_static(b"v")),
            }],
        });
    }
    b.build().expect("non-empty batch")
}

/// Every record from `from` to the high watermark, read in chunks of `max_bytes`.
pub fn read_all(log: &Log, from: u64, max_bytes: usize) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let (data, info) = log.read_bytes(offset, max_bytes, None).unwrap();
        if info.regions.is_empty() {
            break;
        }
        let recs = sluice_log::decode_batches(&data, 64 << 20).unwrap();
        out.extend(recs.into_iter().filter(|r| r.offset >= from));
        offset = info.next_offset;
    }
    out
}

pub fn values(recs: &[StoredRecord]) -> Vec<String> {
    recs.iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect()
}

/// A batch of `n` records from producer `pid` at `epoch`, first sequence `seq` (values
/// "<pid>-<epoch>-<seq>"), transactional or not.
pub fn producer_batch(pid: i64, epoch: i16, seq: i32, n: i32, transactional: bool) -> BytesMut {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..n {
        b.push(&Record {
            key: None,
            value: Some(format!("{pid}-{epoch}-{}", seq + i).into_bytes().into()),
            headers: vec![],
            timestamp: TS0,
        });
    }
    b.build_with(&sluice_log::BatchTemplate {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: if transactional { 0x10 } else { 0 },
        last_offset_delta: n - 1,
        max_timestamp: None,
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
    })
    .expect("non-empty batch")
}

/// Polls `cond` until it holds, failing after 20 s (background threads on a busy machine).
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
