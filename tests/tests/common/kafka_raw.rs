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
    s.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
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
