//! A tower layer on the gRPC server: a message over the size limit is answered
//! RESOURCE_EXHAUSTED ("Received message larger than max"), as the C core, grpc-go and
//! grpc-java answer it and as clients' retry and alerting rules expect, where tonic says
//! OUT_OF_RANGE. Only tonic's own message-length statuses are rewritten: in the response
//! headers (a request over the limit gets a trailers-only answer) and in the trailers (a
//! response message over the limit is found while the body streams). The application's own
//! OUT_OF_RANGE passes unchanged.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// The start of tonic 0.14's message-length statuses (tonic/src/codec/{decode,encode}.rs),
/// and what this layer says instead, in the C core's words.
const TONIC_MESSAGES: [(&str, &str); 2] = [
    (
        "Error, decoded message length too large: ",
        "Received message larger than max",
    ),
    (
        "Error, encoded message length too large: ",
        "Sending message larger than max",
    ),
];

#[derive(Debug, Clone, Copy, Default)]
pub struct MessageSizeLayer;

impl<S> Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSize { inner }
    }
}

#[derive(Debug, Clone)]
pub struct MessageSize<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MessageSize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MessageSizeBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(status) = rewrite(response.headers_mut()) {
                // tonic keeps the status of a trailers-only answer here too; keep them equal.
                if response.extensions().get::<Status>().is_some() {
                    response.extensions_mut().insert(status);
                }
            }
            Ok(response.map(|inner| MessageSizeBody { inner }))
        })
    }
}

/// A response body whose trailers get the same rewriting as the headers.
#[derive(Debug)]
pub struct MessageSizeBody<B> {
    inner: B,
}

impl<B: Body + Unpin> Body for MessageSizeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            rewrite(trailers);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Rewrites tonic's OUT_OF_RANGE for a message over the limit to RESOURCE_EXHAUSTED in
/// `headers` (response headers or trailers); returns the new status when it did.
fn rewrite(headers: &mut HeaderMap) -> Option<Status> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    if Code::from_i32(code) != Code::OutOfRange {
        return None;
    }
    let message = percent_decode(headers.get("grpc-message")?.as_bytes())?;
    let (rest, ours) = TONIC_MESSAGES
        .iter()
        .find_map(|(tonic, ours)| Some((message.strip_prefix(tonic)?, ours)))?;
    let status = Status::resource_exhausted(format!("{ours} ({})", sizes(rest)));
    // Fails only for a message that is not a header value; ours always is.
    status.add_header(headers).ok()?;
    Some(status)
}

/// "found N bytes, the limit is: L bytes" as the C core puts it, "N vs. L bytes"; tonic's
/// words unchanged if they ever read otherwise.
fn sizes(tonic: &str) -> String {
    let parsed = tonic
        .strip_prefix("found ")
        .and_then(|rest| rest.split_once(" bytes, the limit is: "))
        .and_then(|(found, limit)| Some((found, limit.strip_suffix(" bytes")?)));
    match parsed {
        Some((found, limit)) => format!("{found} vs. {limit} bytes"),
        None => tonic.to_string(),
    }
}

/// The text of a percent-encoded `grpc-message`; None if it is not UTF-8 once decoded.
fn percent_decode(encoded: &[u8]) -> Option<String> {
    let mut decoded = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.iter().copied();
    while let Some(byte) = bytes.next() {
        if byte != b'%' {
            decoded.push(byte);
            continue;
        }
        let mut hex = bytes.clone();
        let digits = (hex.next(), hex.next());
        let hex_digit = |d: Option<u8>| char::from(d?).to_digit(16);
        let value = match (hex_digit(digits.0), hex_digit(digits.1)) {
            (Some(high), Some(low)) => u8::try_from(high * 16 + low).ok(),
            _ => None,
        };
        match value {
            Some(value) => {
                decoded.push(value);
                bytes = hex;
            }
            // A lone '%' stands for itself, as tonic's decoder takes it.
            None => decoded.push(byte),
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response body of only `trailers`.
    struct Trailers(Option<HeaderMap>);

    impl Body for Trailers {
        type Data = bytes::Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
            Poll::Ready(self.0.take().map(|t| Ok(Frame::trailers(t))))
        }
    }

    fn headers_of(status: &Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    fn status_of(headers: &HeaderMap) -> (Code, String) {
        let code = headers["grpc-status"].to_str().unwrap().parse().unwrap();
        let message = headers
            .get("grpc-message")
            .map(|m| percent_decode(m.as_bytes()).unwrap())
            .unwrap_or_default();
        (Code::from_i32(code), message)
    }

    /// The status tonic 0.14 makes for a request message over the limit (codec/decode.rs),
    /// word for word; the e2e tests see it from tonic itself.
    fn tonic_decode_status() -> Status {
        Status::out_of_range(
            "Error, decoded message length too large: found 9437205 bytes, the limit is: 8388608 bytes",
        )
    }

    async fn through_layer<B>(response: http::Response<B>) -> (HeaderMap, Option<HeaderMap>)
    where
        B: Body<Data = bytes::Bytes, Error = Status> + Unpin + Send + 'static,
    {
        use tower::ServiceExt;
        let mut response = Some(response);
        let service = MessageSizeLayer.layer(tower::service_fn(move |_: http::Request<()>| {
            let response = response.take().unwrap();
            async move { Ok::<_, std::convert::Infallible>(response) }
        }));
        let response = service.oneshot(http::Request::new(())).await.unwrap();
        let (parts, mut body) = response.into_parts();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if let Ok(t) = frame.unwrap().into_trailers() {
                trailers = Some(t);
            }
        }
        (parts.headers, trailers)
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_resource_exhausted_in_the_headers() {
        let response = tonic_decode_status().into_http::<()>();
        let (headers, _) = through_layer(response.map(|()| Trailers(None))).await;
        assert_eq!(
            status_of(&headers),
            (
                Code::ResourceExhausted,
                "Received message larger than max (9437205 vs. 8388608 bytes)".to_string()
            )
        );
    }

    /// Writes each message as it is.
    struct Raw;

    impl tonic::codec::Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;

        fn encode(
            &mut self,
            item: Vec<u8>,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_response_over_the_limit_is_resource_exhausted_in_the_trailers() {
        // tonic's own server body, with a 4-byte limit: the first message goes out, the
        // second ends the stream with the status in its trailers.
        let messages = tokio_stream::iter([Ok(b"1234".to_vec()), Ok(b"12345".to_vec())]);
        let body = tonic::codec::EncodeBody::new_server(
            Raw,
            messages,
            None,
            tonic::codec::SingleMessageCompressionOverride::default(),
            Some(4),
        );
        let body = tonic::body::Body::new(body);
        let (headers, trailers) = through_layer(http::Response::new(body)).await;
        assert!(headers.get("grpc-status").is_none());
        assert_eq!(
            status_of(&trailers.unwrap()),
            (
                Code::ResourceExhausted,
                "Sending message larger than max (5 vs. 4 bytes)".to_string()
            )
        );
    }

    #[tokio::test]
    async fn the_applications_own_statuses_pass_unchanged() {
        for status in [
            Status::out_of_range("after_sequence is past the job's last event"),
            Status::out_of_range("Error, decoded message length: not ours"),
            Status::invalid_argument("Error, decoded message length too large: found 1 bytes"),
            Status::ok(""),
        ] {
            let expected = headers_of(&status);
            let body = Trailers(Some(expected.clone()));
            let (headers, trailers) = through_layer(http::Response::new(body)).await;
            assert!(headers.is_empty());
            assert_eq!(trailers.unwrap(), expected, "{status:?}");
            let (headers, _) =
                through_layer(status.clone().into_http::<()>().map(|()| Trailers(None))).await;
            assert_eq!(status_of(&headers), status_of(&expected));
        }
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode(b"a%20b%25c").as_deref(), Some("a b%c"));
        assert_eq!(percent_decode(b"100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode(b"%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(percent_decode(b"%+1").as_deref(), Some("%+1"));
        assert_eq!(percent_decode(b"%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode(b"%FF"), None);
    }
}
