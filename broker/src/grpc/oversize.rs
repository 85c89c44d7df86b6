//! gRPC convention (grpc-go, grpc-java) answers a request larger than the server's limit with
//! RESOURCE_EXHAUSTED; tonic says OUT_OF_RANGE. This layer rewrites that one status on unary
//! calls, whose decode errors tonic sends as a trailers-only response (status in the headers).
//! On streams the status arrives in trailers and keeps tonic's code.

use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::codegen::{Context, Poll, Service};

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";
/// The start of tonic's message for an oversized request (`tonic/src/codec/decode.rs`).
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

#[derive(Clone, Copy, Debug, Default)]
pub struct OversizeLayer;

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize(inner)
    }
}

#[derive(Clone, Debug)]
pub struct Oversize<S>(S);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Oversize<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let h = resp.headers_mut();
            let too_large = h.get("grpc-status").is_some_and(|v| v == OUT_OF_RANGE)
                && h.get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .is_some_and(|m| {
                        // grpc-message is percent-encoded: match on the decoded prefix's words.
                        m.replace("%20", " ").starts_with(TONIC_TOO_LARGE)
                    });
            if too_large {
                h.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
            }
            Ok(resp)
        })
    }
}
