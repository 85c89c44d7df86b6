//! `sluice.v1.Consumer`'s Fetch and Subscribe, framed by hand so the stored batches reach the
//! socket without another copy.
//!
//! tonic encodes every response message into one contiguous buffer, which copies a fetch's
//! record batches (megabytes, read from the segment a moment before) once more: the biggest cost
//! of a batch-form fetch after the read itself. Here the FetchResponse is encoded without its
//! `record_batches` field, that field's key and length are appended, and the batches' `Bytes`
//! follow as a body chunk of their own, which hyper's HTTP/2 writer sends with a vectored write
//! straight from the buffer the segment was read into. `record_batches` is the message's last
//! field, so the bytes on the wire are exactly what prost would encode (a test checks it): any
//! gRPC client reads them. Requests are decoded as tonic would (size limit, no compression), and
//! ListOffsets goes to tonic's generated server.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use sluice_proto::v1::{self as pb, consumer_server::ConsumerServer};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::Status;

use crate::grpc::consumer::ConsumerService;

const FETCH: &str = "/sluice.v1.Consumer/Fetch";
const SUBSCRIBE: &str = "/sluice.v1.Consumer/Subscribe";
/// `FetchResponse.record_batches`' field number (the message's last field).
const RECORD_BATCHES_FIELD: u32 = 8;
/// A gRPC message's prefix: the compressed flag and the big-endian length.
const PREFIX: usize = 5;

/// The Consumer service as the listener serves it.
#[derive(Clone)]
pub struct FramedConsumer {
    service: Arc<ConsumerService>,
    generated: ConsumerServer<ConsumerService>,
    /// Largest request message accepted (`max_request_bytes`).
    max_request: usize,
}

impl FramedConsumer {
    pub fn new(service: ConsumerService, max_request: usize) -> Self {
        let service = Arc::new(service);
        FramedConsumer {
            generated: ConsumerServer::from_arc(service.clone())
                .max_decoding_message_size(max_request),
            service,
            max_request,
        }
    }
}

impl NamedService for FramedConsumer {
    const NAME: &'static str = <ConsumerServer<ConsumerService> as NamedService>::NAME;
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

impl tower::Service<http::Request<Body>> for FramedConsumer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        let service = self.service.clone();
        let limit = self.max_request;
        match req.uri().path() {
            FETCH => Box::pin(async move {
                let result = async {
                    let r: pb::FetchRequest = read_request(req.into_body(), limit).await?;
                    let resp = service.fetch_response(r).await?;
                    Ok::<_, Status>(FrameBody::one(resp))
                };
                Ok(respond(result.await))
            }),
            SUBSCRIBE => Box::pin(async move {
                let result = async {
                    let r: pb::SubscribeRequest = read_request(req.into_body(), limit).await?;
                    let rx = service.subscribe_channel(r)?;
                    Ok::<_, Status>(FrameBody::stream(rx))
                };
                Ok(respond(result.await))
            }),
            _ => {
                let mut generated = self.generated.clone();
                Box::pin(async move { tower::Service::call(&mut generated, req).await })
            }
        }
    }
}

/// A response with `body`, or a failed call as a trailers-only response (status in the
/// headers, as tonic answers a unary error).
fn respond(result: Result<FrameBody, Status>) -> http::Response<Body> {
    match result {
        Ok(body) => {
            let mut resp = http::Response::new(Body::new(body));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            resp
        }
        Err(status) => status.into_http(),
    }
}

/// Reads a unary request's one message, refusing one over `limit` as soon as its prefix says
/// so (before its bytes are buffered).
async fn read_request<M: Message + Default>(mut body: Body, limit: usize) -> Result<M, Status> {
    let mut buf = BytesMut::new();
    let mut expected: Option<usize> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // request trailers carry nothing for these calls
        };
        buf.extend_from_slice(&data);
        if expected.is_none() && buf.len() >= PREFIX {
            if buf[0] != 0 {
                return Err(Status::unimplemented(
                    "compressed requests are not supported by this server",
                ));
            }
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > limit {
                return Err(Status::resource_exhausted(format!(
                    "request message of {len} bytes is larger than the limit of {limit} bytes \
                     (max_request_bytes)"
                )));
            }
            expected = Some(len);
        }
        if let Some(len) = expected {
            if buf.len() > PREFIX + len {
                return Err(Status::internal("more than one message in a unary request"));
            }
        }
    }
    let Some(len) = expected else {
        return Err(Status::internal("missing request message"));
    };
    if buf.len() < PREFIX + len {
        return Err(Status::internal("request body ended inside its message"));
    }
    buf.advance(PREFIX);
    M::decode(buf.freeze())
        .map_err(|e| Status::internal(format!("failed to decode the request: {e}")))
}

/// Appends `resp` as one gRPC message: its other fields encoded into a small buffer, then its
/// batches as their own chunk (not copied).
fn encode_fetch_response(mut resp: pb::FetchResponse, out: &mut VecDeque<Bytes>) {
    let batches = std::mem::take(&mut resp.record_batches);
    let head = resp.encoded_len();
    let field = if batches.is_empty() {
        0
    } else {
        key_len(RECORD_BATCHES_FIELD) + encoded_len_varint(batches.len() as u64)
    };
    let mut buf = BytesMut::with_capacity(PREFIX + head + field);
    buf.put_u8(0);
    // A response is bounded by the fetch's max_bytes (a u32) plus a little: it fits.
    buf.put_u32((head + field + batches.len()) as u32);
    resp.encode_raw(&mut buf);
    if !batches.is_empty() {
        encode_key(RECORD_BATCHES_FIELD, WireType::LengthDelimited, &mut buf);
        encode_varint(batches.len() as u64, &mut buf);
    }
    out.push_back(buf.freeze());
    if !batches.is_empty() {
        out.push_back(batches);
    }
}

/// A response body: one message (Fetch) or the messages a subscription's reader sends, then the
/// status as trailers.
struct FrameBody {
    chunks: VecDeque<Bytes>,
    stream: Option<mpsc::Receiver<Result<pb::FetchResponse, Status>>>,
    finished: bool,
}

impl FrameBody {
    fn one(resp: pb::FetchResponse) -> Self {
        let mut chunks = VecDeque::with_capacity(2);
        encode_fetch_response(resp, &mut chunks);
        FrameBody {
            chunks,
            stream: None,
            finished: false,
        }
    }

    fn stream(rx: mpsc::Receiver<Result<pb::FetchResponse, Status>>) -> Self {
        FrameBody {
            chunks: VecDeque::with_capacity(2),
            stream: Some(rx),
            finished: false,
        }
    }
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let status = match this.stream.as_mut() {
                // The reader sends at most a couple of responses ahead (its channel's bound), and
                // is polled here only when HTTP/2 flow control has room: memory stays bounded.
                Some(rx) => match ready!(rx.poll_recv(cx)) {
                    Some(Ok(resp)) => {
                        encode_fetch_response(resp, &mut this.chunks);
                        continue;
                    }
                    Some(Err(status)) => status,
                    None => Status::ok(""),
                },
                None => Status::ok(""),
            };
            this.finished = true;
            this.stream = None;
            let mut trailers = http::HeaderMap::new();
            if let Err(unencodable) = status.add_header(&mut trailers) {
                trailers.clear();
                let _ = unencodable.add_header(&mut trailers);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.chunks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(batches: &'static [u8], records: usize) -> pb::FetchResponse {
        pb::FetchResponse {
            topic: "t".repeat(300),
            partition: 7,
            high_watermark: 1 << 40,
            log_start_offset: 3,
            records: (0..records)
                .map(|i| pb::ConsumedRecord {
                    offset: i as u64,
                    timestamp_ms: 1,
                    key: Some(Bytes::from_static(b"k")),
                    value: Some(Bytes::from(vec![1u8; 200])),
                    headers: vec![],
                })
                .collect(),
            next_offset: 99,
            last_stable_offset: 98,
            record_batches: Bytes::from_static(batches),
        }
    }

    /// The hand-framed message is byte for byte what tonic (prost plus the 5-byte prefix) sends,
    /// in both forms, so any gRPC client decodes it.
    #[test]
    fn framing_matches_prost() {
        let big: &'static [u8] = Box::leak(vec![0xabu8; 70_000].into_boxed_slice());
        for resp in [
            response(b"", 0),
            response(b"", 5),
            response(b"x", 0),
            response(big, 0),
        ] {
            let mut chunks = VecDeque::new();
            encode_fetch_response(resp.clone(), &mut chunks);
            let framed: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            let body = resp.encode_to_vec();
            let mut expected = vec![0u8];
            expected.extend_from_slice(&(body.len() as u32).to_be_bytes());
            expected.extend_from_slice(&body);
            assert_eq!(framed, expected);
            if resp.record_batches.len() > 1 {
                // The batches are passed on, not copied.
                assert_eq!(chunks.len(), 2);
                assert_eq!(chunks[1].as_ptr(), resp.record_batches.as_ptr());
            }
        }
    }

    fn body_of(parts: &[&[u8]]) -> Body {
        let chunks: Vec<Result<Frame<Bytes>, Status>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
            .collect();
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )))
    }

    fn message(m: &impl Message) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[tokio::test]
    async fn requests_decode_across_chunks_and_are_bounded() {
        let req = pb::FetchRequest {
            topic: "orders".into(),
            partition: 2,
            offset: 17,
            ..Default::default()
        };
        let wire = message(&req);
        let (a, b) = wire.split_at(3);
        let got: pb::FetchRequest = read_request(body_of(&[a, b]), 1024).await.unwrap();
        assert_eq!(got, req);

        let too_big = read_request::<pb::FetchRequest>(body_of(&[&wire]), 4).await;
        assert_eq!(too_big.unwrap_err().code(), tonic::Code::ResourceExhausted);

        let mut compressed = wire.clone();
        compressed[0] = 1;
        let err = read_request::<pb::FetchRequest>(body_of(&[&compressed]), 1024).await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::Unimplemented);

        let err = read_request::<pb::FetchRequest>(body_of(&[&wire[..wire.len() - 1]]), 1024).await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::Internal);
        let err = read_request::<pb::FetchRequest>(body_of(&[]), 1024).await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn a_stream_ends_with_its_status_in_trailers() {
        let (tx, rx) = mpsc::channel(2);
        tx.send(Ok(response(b"abc", 0))).await.unwrap();
        tx.send(Err(Status::data_loss("bad batch"))).await.unwrap();
        drop(tx);
        let mut body = FrameBody::stream(rx);
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert_eq!(data, message(&response(b"abc", 0)));
        let status = Status::from_header_map(&trailers.unwrap()).unwrap();
        assert_eq!(status.code(), tonic::Code::DataLoss);
        assert!(http_body::Body::is_end_stream(&body));
    }
}
