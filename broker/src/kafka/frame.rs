//! Kafka framing: `[int32 size][request header][body]` in, `[int32 size][response header][body]`
//! out. Message bodies are encoded and decoded by the `kafka-protocol` crate.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::memory_pool::{MemoryPool, Reservation};

/// Smallest possible request: api key, version, correlation id, null client id.
const MIN_REQUEST: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error(
        "request of {size} bytes is outside [{MIN_REQUEST}, {max}] (socket.request.max.bytes)"
    )]
    BadSize { size: i64, max: usize },
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("malformed request header: {0}")]
    BadHeader(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("idle for {0:?} (connections_max_idle_ms)")]
    Idle(std::time::Duration),
    #[error("request not received whole within {0:?} (request_read_timeout_ms)")]
    ReadTimeout(std::time::Duration),
}

/// A request whose header is decoded; the body is left for the handler to decode.
pub struct Frame {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
    /// Bytes on the wire: the size prefix, the header and the body.
    pub wire_size: usize,
    /// The request's bytes held from the broker's [`MemoryPool`] (none when read without one):
    /// keep it until the request is handled.
    pub memory: Option<Reservation>,
}

/// Reads a request's size prefix and checks it before anything is allocated for it.
async fn read_size<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<usize, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(len) as i64;
    if size < MIN_REQUEST as i64 || size > max as i64 {
        return Err(FrameError::BadSize { size, max });
    }
    Ok(size as usize)
}

/// Reads one request (no memory pool: tests).
#[cfg(test)]
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Frame, FrameError> {
    let size = read_size(r, max).await?;
    read_body(r, size, None).await
}

/// Reads the `size` bytes of a request and decodes its header.
async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    size: usize,
    memory: Option<Reservation>,
) -> Result<Frame, FrameError> {
    // Read into uninitialised capacity: zeroing a produce request of megabytes first costs as
    // much as receiving it (and faults every page in twice).
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let mut rest = (&mut *r).take((size - buf.len()) as u64);
        if rest.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    let mut body = buf.freeze();
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let api_key = ApiKey::try_from(key).map_err(|_| FrameError::UnknownApiKey(key))?;
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut body, header_version)
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    Ok(Frame {
        api_key,
        version,
        header,
        body,
        wire_size: size + 4,
        memory,
    })
}

/// The next request on a connection: waits up to `idle` for its first byte (an idle
/// connection is closed), then up to `read_timeout` for its size, then for the request's bytes
/// from `pool` (not reading meanwhile: the wait is the pool's backpressure, not the client's
/// slowness, so it is not timed), then up to `read_timeout` for the rest.
pub async fn read_frame_timed(
    stream: &mut tokio::net::tcp::ReadHalf<'_>,
    max: usize,
    idle: std::time::Duration,
    read_timeout: std::time::Duration,
    pool: &MemoryPool,
) -> Result<Frame, FrameError> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(idle, stream.peek(&mut first)).await {
        Err(_) => return Err(FrameError::Idle(idle)),
        Ok(Ok(0)) => return Err(FrameError::Closed),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
    }
    let size = tokio::time::timeout(read_timeout, read_size(stream, max))
        .await
        .map_err(|_| FrameError::ReadTimeout(read_timeout))??;
    let memory = pool.reserve(size).await;
    tokio::time::timeout(read_timeout, read_body(stream, size, Some(memory)))
        .await
        .map_err(|_| FrameError::ReadTimeout(read_timeout))?
}

/// Decodes a request body.
pub fn decode_body<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, String> {
    T::decode(body, version).map_err(|e| e.to_string())
}

/// Encodes a complete response frame (size, header, body).
pub fn encode_response<R: Encodable + HeaderVersion + super::error_codes::ErrorCodes>(
    correlation_id: i32,
    version: i16,
    resp: &R,
) -> Result<BytesMut, String> {
    super::error_codes::record(resp);
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| e.to_string())?;
    resp.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}
