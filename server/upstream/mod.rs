//! Clients of the upstream services — LLM, vector store, web search, source fetch — over
//! pooled HTTP clients, with timeouts and retries.
use std::time::Duration;

use crate::telemetry::inject_trace_context;

pub mod fetch;
pub mod llm;
pub mod serper;
pub mod vector_store;

pub use crate::fault::{UpstreamError, retry};

/// Turns a non-2xx response into an error, keeping `Retry-After` and the start of the body.
/// The client span of one HTTP call; `url.template` keeps ids and queries out of it.
pub fn client_span(
    upstream: &'static str,
    method: &'static str,
    url_template: &str,
) -> tracing::Span {
    tracing::info_span!(
        "upstream",
        otel.name = format!("{method} {upstream}"),
        otel.kind = "client",
        upstream,
        http.request.method = method,
        url.template = url_template,
        server.address = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    )
}

pub async fn check_status(
    upstream: &'static str,
    response: reqwest::Response,
) -> Result<reqwest::Response, UpstreamError> {
    let status = response.status();
    tracing::Span::current().record("http.response.status_code", status.as_u16());
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = error_text(response).await;
    Err(UpstreamError::Status {
        upstream,
        status: status.as_u16(),
        retry_after,
        body: crate::text::truncate_words(&body, 300),
    })
}

/// How much of an error answer is read: enough for its message, never the 300 MB an upstream
/// may send with a 500.
const ERROR_BODY_BYTES: usize = 4 << 10;

/// The start of an error answer's body, as text; the rest is never read.
async fn error_text(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&body).into_owned()
}

/// Reads a whole answer body of at most `limit` bytes; a longer one (by its `Content-Length`
/// or as it arrives) is an error, and what is left of it is not read.
pub async fn read_body(
    upstream: &'static str,
    mut response: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, UpstreamError> {
    let too_large = UpstreamError::TooLarge { upstream, limit };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| UpstreamError::from_reqwest(upstream, timeout, e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A `Retry-After` in seconds (fractions accepted); `None` for anything else, negative or
/// too large to be a duration included. (The HTTP-date form is not used by the APIs we call.)
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// Sends `request` with `timeout` and reads the JSON answer (at most `limit` bytes) as `T`
/// (in the attempt's client span, which the resilience stack opens).
pub async fn send_json<T: serde::de::DeserializeOwned>(
    upstream: &'static str,
    request: reqwest::RequestBuilder,
    timeout: Duration,
    limit: usize,
) -> Result<T, UpstreamError> {
    let response = inject_trace_context(request)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| UpstreamError::from_reqwest(upstream, timeout, e))?;
    let response = check_status(upstream, response).await?;
    let body = read_body(upstream, response, limit, timeout).await?;
    serde_json::from_slice(&body).map_err(|e| UpstreamError::Malformed {
        upstream,
        message: e.to_string(),
    })
}

/// One pooled HTTP client for the API upstreams (LLM, vector store, Serper). TLS through
/// rustls with the ring provider. Redirects are not followed: an API does not redirect, and
/// following one would carry its key (`X-API-KEY`, which reqwest does not strip) to
/// another origin.
pub fn api_client() -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(32)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "dakota-content-service/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
}

/// rustls needs one process-wide crypto provider; installing it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use crate::fault::redact_token;

    #[test]
    fn only_whole_tokens_of_secret_length_are_redacted() {
        assert_eq!(
            redact_token("Rate limit exceeded", "x"),
            "Rate limit exceeded"
        );
        let key = "sk-test-0123456789";
        assert_eq!(
            redact_token(&format!("invalid key: Bearer {key}, \"{key}\""), key),
            "invalid key: Bearer [redacted], \"[redacted]\""
        );
        // Part of a longer token: not this key, left alone.
        assert_eq!(
            redact_token(&format!("{key}extra"), key),
            format!("{key}extra")
        );
    }
}
