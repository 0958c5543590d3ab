//! A tower layer on the gRPC server: every RPC counted by method and status, and timed from
//! its request to the end of its response. For a streaming RPC that end is its last message
//! and trailers, so `Generate`'s duration is its job's, not the moment the stream was handed
//! back; a stream the client abandons counts as `CANCELLED`.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The method label of a request path (`/package.Service/Method`): the RPC names this server
/// serves, `other` for anything else, so a client cannot grow the label set.
fn method_label(path: &str) -> &'static str {
    const KNOWN: [&str; 8] = [
        "Generate",
        "WatchJob",
        "GetArticle",
        "CancelJob",
        "SearchKnowledgeBase",
        "Check",
        "Watch",
        "ServerReflectionInfo",
    ];
    let method = path.rsplit('/').next().unwrap_or_default();
    KNOWN.into_iter().find(|k| *k == method).unwrap_or("other")
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut record = Record {
            metrics: Some(self.metrics.clone()),
            method: method_label(request.uri().path()),
            started: Instant::now(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    record.finish(Code::Unknown);
                    return Err(error);
                }
            };
            // A trailers-only answer (an error status at once) ends here.
            if let Some(code) = grpc_status(response.headers()) {
                record.finish(code);
            }
            Ok(response.map(|body| Observed {
                body: Box::pin(body),
                record,
            }))
        })
    }
}

/// One RPC being timed; recorded once, as `CANCELLED` if dropped before its end.
struct Record {
    metrics: Option<Arc<Metrics>>,
    method: &'static str,
    started: Instant,
}

impl Record {
    fn finish(&mut self, code: Code) {
        if let Some(metrics) = self.metrics.take() {
            metrics.observe_grpc(self.method, code, self.started.elapsed());
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// A response body that records its RPC when its trailers (or its end) go out.
pub struct Observed<B> {
    body: Pin<Box<B>>,
    record: Record,
}

impl<B: Body<Data = Bytes>> Body for Observed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = self.body.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.record.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.record.finish(Code::Internal),
            Poll::Ready(None) => self.record.finish(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/dakota.content.v1.ContentService/Generate"),
            "Generate"
        );
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "Check");
        assert_eq!(method_label("/x.Y/Anything-a-client-sends"), "other");
        assert_eq!(method_label(""), "other");
    }
}
