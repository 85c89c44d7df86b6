//! Per-method request metrics for the gRPC API: count, latency to the response headers (a unary
//! call's whole handling; a stream's set-up), and errors by gRPC status where the status comes
//! in the headers (every unary error: tonic sends those as trailers-only responses). A stream
//! that fails later reports its status in trailers, which this layer does not see.

use std::time::Instant;

use tonic::codegen::http::{Request, Response};
use tonic::codegen::{Context, Poll, Service};

#[derive(Clone, Copy, Debug, Default)]
pub struct RequestMetricsLayer;

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;
    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics(inner)
    }
}

#[derive(Clone, Debug)]
pub struct RequestMetrics<S>(S);

const UNIMPLEMENTED: usize = 12;

/// gRPC status names (`grpc-status` header values 0-16), as Prometheus label values.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestMetrics<S>
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
        let path = req.uri().path().to_string();
        let started = Instant::now();
        let fut = self.0.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let status = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            // The path is client input: a method no service has (UNIMPLEMENTED) is labelled
            // "other", so a client cannot grow the label set (and memory) without bound.
            let method = if status == Some(UNIMPLEMENTED) {
                "other"
            } else {
                path.as_str()
            };
            crate::metrics::observe_request("grpc", method, started.elapsed());
            if let Some(code) = status.filter(|c| *c != 0) {
                let name = CODES.get(code).copied().unwrap_or("UNKNOWN");
                crate::metrics::observe_errors("grpc", method, name, 1);
            }
            Ok(resp)
        })
    }
}
