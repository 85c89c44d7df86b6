//! A hand-encoded Kafka Produce v8 request, for sending record sets no well-behaved client would
//! build (lying batches), and reading back the per-record errors of KIP-467.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One partition's answer to a Produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    pub error_code: i16,
    pub base_offset: i64,
    /// (index of the record in its batch, message)
    pub record_errors: Vec<(i32, Option<String>)>,
    pub error_message: Option<String>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);
impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn nullable_str(&mut self) -> Option<String> {
        let n = self.i16();
        (n >= 0).then(|| String::from_utf8_lossy(self.take(n as usize)).into_owned())
    }
}

/// Sends `records` (a raw record set) to `topic`/`partition` with acks=1 over a fresh connection
/// and returns the partition's result.
pub fn produce_v8(port: u16, topic: &str, partition: i32, records: &[u8]) -> ProduceResult {
    let mut body = Vec::new();
    body.extend_from_slice(&0i16.to_be_bytes()); // api key: Produce
    body.extend_from_slice(&8i16.to_be_bytes()); // version
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    put_str(&mut body, "raw-test");
    body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
    body.extend_from_slice(&1i16.to_be_bytes()); // acks
    body.extend_from_slice(&30_000i32.to_be_bytes()); // timeout
    body.extend_from_slice(&1i32.to_be_bytes()); // topics
    put_str(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes()); // partitions
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&(records.len() as i32).to_be_bytes());
    body.extend_from_slice(records);

    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the Kafka listener");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // One write: a size prefix sent alone waits out Nagle and the delayed ACK (40 ms).
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("produce response size");
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut resp).expect("produce response");

    let mut r = Reader(&resp);
    assert_eq!(r.i32(), 7, "correlation id");
    assert_eq!(r.i32(), 1, "one topic");
    let n = r.i16() as usize;
    r.take(n);
    assert_eq!(r.i32(), 1, "one partition");
    assert_eq!(r.i32(), partition);
    let error_code = r.i16();
    let base_offset = r.i64();
    let _log_append_time = r.i64();
    let _log_start_offset = r.i64();
    let record_errors = (0..r.i32()).map(|_| (r.i32(), r.nullable_str())).collect();
    let error_message = r.nullable_str();
    ProduceResult {
        error_code,
        base_offset,
        record_errors,
        error_message,
    }
}

/// Sends one request (`api_key`, `version`, header v1: correlation id 7, client id "raw-test")
/// with `fields` as its body and returns the response body after the correlation id.
fn round_trip(port: u16, api_key: i16, version: i16, fields: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&api_key.to_be_bytes());
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes());
    put_str(&mut body, "raw-test");
    body.extend_from_slice(fields);
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the Kafka listener");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // One write: a size prefix sent alone waits out Nagle and the delayed ACK (40 ms).
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("response size");
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut resp).expect("response");
    assert_eq!(&resp[..4], &7i32.to_be_bytes(), "correlation id");
    resp.split_off(4)
}

/// One partition's OffsetForLeaderEpoch answer: (error code, leader epoch, end offset).
pub fn offset_for_leader_epoch_v3(
    port: u16,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> (i16, i32, i64) {
    let mut f = Vec::new();
    f.extend_from_slice(&(-1i32).to_be_bytes()); // replica id: a consumer
    f.extend_from_slice(&1i32.to_be_bytes()); // topics
    put_str(&mut f, topic);
    f.extend_from_slice(&1i32.to_be_bytes()); // partitions
    f.extend_from_slice(&partition.to_be_bytes());
    f.extend_from_slice(&current_leader_epoch.to_be_bytes());
    f.extend_from_slice(&leader_epoch.to_be_bytes());
    let resp = round_trip(port, 23, 3, &f);
    let mut r = Reader(&resp);
    let _throttle = r.i32();
    assert_eq!(r.i32(), 1, "one topic");
    let n = r.i16() as usize;
    r.take(n);
    assert_eq!(r.i32(), 1, "one partition");
    let error_code = r.i16();
    assert_eq!(r.i32(), partition);
    (error_code, r.i32(), r.i64())
}
