//! Zero-copy Fetch responses: record bytes go from the segment file to the socket with
//! `sendfile(2)` and never enter user space.
//!
//! The response is encoded by `kafka-protocol` as usual, except that each partition's `records`
//! field holds a unique 16-byte marker. The encoded bytes are then split at the markers: each
//! marker (and its length prefix) is replaced by the real length prefix and the partition's file
//! regions. The response is written as `bytes, region, bytes, region, ..., bytes`.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_log::FileRegion;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes written to Kafka sockets by `sendfile` since start (exported in /metrics).
pub static SENDFILE_BYTES: AtomicU64 = AtomicU64::new(0);

const MARKER_LEN: usize = 16;

pub enum Chunk {
    Bytes(Bytes),
    Region(FileRegion),
}

impl Chunk {
    pub fn len(&self) -> u64 {
        match self {
            Chunk::Bytes(b) => b.len() as u64,
            Chunk::Region(r) => r.len,
        }
    }
}

/// A fresh per-response nonce (a counter mixed with the clock, spread by a multiplicative hash).
pub fn next_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (COUNTER.fetch_add(1, Ordering::Relaxed) ^ t).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A marker unlikely to occur in any encoded response: a per-response nonce plus an index.
pub fn marker(nonce: u64, index: u32) -> Bytes {
    let mut m = BytesMut::with_capacity(MARKER_LEN);
    m.put_slice(&[0xF5, b'S', b'Z', b'C']);
    m.put_u64(nonce);
    m.put_u32(index);
    m.freeze()
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn put_unsigned_varint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Splices file regions into an encoded response frame (`[size][header][body]`).
///
/// `parts[i]` are the regions replacing `marker(nonce, i)`. `flexible` selects the length
/// encoding of the records field: unsigned varint of len+1 (compact) or int32.
pub fn splice(
    mut encoded: BytesMut,
    nonce: u64,
    parts: Vec<Vec<FileRegion>>,
    flexible: bool,
) -> Result<Vec<Chunk>, String> {
    // First pass: locate markers and compute the final size, so the size prefix can be patched
    // before the buffer is frozen and sliced.
    let mut cuts = Vec::with_capacity(parts.len());
    let mut cursor = 0usize;
    let mut total = encoded.len();
    for (i, regions) in parts.iter().enumerate() {
        let m = marker(nonce, i as u32);
        let at = find(&encoded, &m, cursor)
            .ok_or_else(|| format!("marker {i} missing from encoded fetch response"))?;
        let prefix_len = if flexible { 1 } else { 4 };
        let expected_prefix: &[u8] = if flexible {
            &[MARKER_LEN as u8 + 1]
        } else {
            &[0, 0, 0, MARKER_LEN as u8]
        };
        if at < prefix_len || &encoded[at - prefix_len..at] != expected_prefix {
            return Err(format!("marker {i} is not a records field"));
        }
        let len: u64 = regions.iter().map(|r| r.len).sum();
        let mut prefix = BytesMut::new();
        if flexible {
            put_unsigned_varint(
                &mut prefix,
                u32::try_from(len + 1).map_err(|_| "records too large")?,
            );
        } else {
            prefix.put_i32(i32::try_from(len).map_err(|_| "records too large")?);
        }
        total = total - prefix_len - MARKER_LEN + prefix.len() + len as usize;
        cuts.push((at - prefix_len, at + MARKER_LEN, prefix.freeze()));
        cursor = at + MARKER_LEN;
    }
    let size = i32::try_from(total - 4).map_err(|_| "response too large")?;
    encoded[..4].copy_from_slice(&size.to_be_bytes());
    let encoded = encoded.freeze();
    let mut chunks = Vec::with_capacity(parts.len() * 3 + 1);
    let mut from = 0usize;
    for ((start, end, prefix), regions) in cuts.into_iter().zip(parts) {
        chunks.push(Chunk::Bytes(encoded.slice(from..start)));
        chunks.push(Chunk::Bytes(prefix));
        chunks.extend(regions.into_iter().map(Chunk::Region));
        from = end;
    }
    chunks.push(Chunk::Bytes(encoded.slice(from..)));
    Ok(chunks)
}

async fn write_bytes(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends a file region with `sendfile`, looping on short writes and EAGAIN.
async fn send_region(stream: &TcpStream, region: &FileRegion) -> io::Result<()> {
    let mut offset = region.position as nix::libc::off_t;
    let end = offset + region.len as nix::libc::off_t;
    while offset < end {
        stream.writable().await?;
        let count = (end - offset) as usize;
        let r = stream.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile(
                stream.as_fd(),
                region.file.as_fd(),
                Some(&mut offset),
                count,
            )
            .map_err(io::Error::from)
        });
        match r {
            // The file ended early: the segment was truncated under us. The length prefix is
            // already on the wire, so the response cannot be completed: close the connection.
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "segment shrank while being sent; closing the connection",
                ))
            }
            Ok(n) => {
                SENDFILE_BYTES.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub async fn write_chunks(stream: &TcpStream, chunks: &[Chunk]) -> io::Result<()> {
    for c in chunks {
        match c {
            Chunk::Bytes(b) => write_bytes(stream, b).await?,
            Chunk::Region(r) => send_region(stream, r).await?,
        }
    }
    Ok(())
}

pub async fn write_all(stream: &TcpStream, buf: &[u8]) -> io::Result<()> {
    write_bytes(stream, buf).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    fn region(content: &[u8]) -> FileRegion {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"xx").unwrap();
        f.write_all(content).unwrap();
        FileRegion {
            file: Arc::new(f),
            position: 2,
            len: content.len() as u64,
        }
    }

    fn flatten(chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            match c {
                Chunk::Bytes(b) => out.extend_from_slice(b),
                Chunk::Region(r) => r.read_into(&mut out).unwrap(),
            }
        }
        out
    }

    #[test]
    fn splice_matches_encoding_the_bytes_directly() {
        use kafka_protocol::messages::fetch_response::{
            FetchResponse, FetchableTopicResponse, PartitionData,
        };
        use kafka_protocol::messages::TopicName;
        use kafka_protocol::protocol::StrBytes;
        let data = [b"first-records".to_vec(), vec![7u8; 300], Vec::new()];
        for version in [4i16, 11, 12] {
            let make = |records: Vec<Bytes>| {
                FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(
                        records
                            .into_iter()
                            .enumerate()
                            .map(|(i, r)| {
                                PartitionData::default()
                                    .with_partition_index(i as i32)
                                    .with_records(Some(r))
                            })
                            .collect(),
                    )])
            };
            let direct = crate::kafka::frame::encode_response(
                9,
                version,
                &make(data.iter().map(|d| Bytes::from(d.clone())).collect()),
            )
            .unwrap();
            let nonce = 0x1234_5678_9abc_def0;
            let with_markers = crate::kafka::frame::encode_response(
                9,
                version,
                &make((0..3).map(|i| marker(nonce, i)).collect()),
            )
            .unwrap();
            let parts = data
                .iter()
                .map(|d| {
                    if d.is_empty() {
                        vec![]
                    } else {
                        vec![region(d)]
                    }
                })
                .collect();
            let chunks = splice(with_markers, nonce, parts, version >= 12).unwrap();
            assert_eq!(flatten(&chunks), direct.to_vec(), "version {version}");
        }
    }
}
