//! Clients of the upstream services — LLM, vector store, web search, source fetch — over
//! pooled HTTP clients, with timeouts and retries.
use std::time::Duration;

use crate::telemetry::inject_trace_context;

pub mod fetch;
pub mod llm;
pub mod retry;
pub mod serper;
pub mod vector_store;

/// Why an upstream call failed; [`UpstreamError::retryable`] decides whether to try again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{upstream}: cannot connect: {message}")]
    Connect {
        upstream: &'static str,
        message: String,
    },
    #[error("{upstream}: no answer within {after:?}")]
    Timeout {
        upstream: &'static str,
        after: Duration,
    },
    #[error("{upstream}: HTTP {status}: {body}")]
    Status {
        upstream: &'static str,
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("{upstream}: malformed answer: {message}")]
    Malformed {
        upstream: &'static str,
        message: String,
    },
    #[error("{upstream}: the streamed answer stalled for {after:?}")]
    Stalled {
        upstream: &'static str,
        after: Duration,
    },
    /// Refused before sending: a bad scheme, a private address, too many redirects.
    #[error("{upstream}: refused: {message}")]
    Refused {
        upstream: &'static str,
        message: String,
    },
    /// The answer is larger than this upstream's byte limit: not read further.
    #[error("{upstream}: the answer is larger than the {limit}-byte limit (--body-limits)")]
    TooLarge {
        upstream: &'static str,
        limit: usize,
    },
    /// The upstream's circuit breaker is open: failing fast instead of waiting on it.
    #[error("{upstream}: circuit breaker open (retry in {retry_after:?})")]
    BreakerOpen {
        upstream: &'static str,
        retry_after: Duration,
    },
}

impl UpstreamError {
    /// Connect errors, timeouts, 5xx, 429 and malformed answers are worth another attempt.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::Malformed { .. }
            | Self::Stalled { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Refused { .. } | Self::BreakerOpen { .. } | Self::TooLarge { .. } => false,
        }
    }

    /// A 429: the upstream is fine, this account asks too often.
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, Self::Status { status: 429, .. })
    }

    /// The delay the upstream asked for (`Retry-After` on 429/503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            Self::BreakerOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The error with `secret` cut out of the upstream's answer, in case it echoes it.
    pub fn redact(self, secret: Option<&crate::config::Secret>) -> Self {
        match (self, secret) {
            (
                Self::Status {
                    upstream,
                    status,
                    retry_after,
                    body,
                },
                Some(secret),
            ) => Self::Status {
                upstream,
                status,
                retry_after,
                body: redact_token(&body, secret.expose()),
            },
            (error, _) => error,
        }
    }

    /// Low-cardinality outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect_error",
            Self::Timeout { .. } => "timeout",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::Malformed { .. } => "malformed",
            Self::Stalled { .. } => "stalled",
            Self::Refused { .. } => "refused",
            Self::TooLarge { .. } => "too_large",
            Self::BreakerOpen { .. } => "breaker_open",
        }
    }

    pub fn upstream(&self) -> &'static str {
        match self {
            Self::Connect { upstream, .. }
            | Self::Timeout { upstream, .. }
            | Self::Status { upstream, .. }
            | Self::Malformed { upstream, .. }
            | Self::Stalled { upstream, .. }
            | Self::Refused { upstream, .. }
            | Self::TooLarge { upstream, .. }
            | Self::BreakerOpen { upstream, .. } => upstream,
        }
    }

    /// Classifies a reqwest error of a call to `upstream` that was given `timeout`.
    pub fn from_reqwest(upstream: &'static str, timeout: Duration, error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout {
                upstream,
                after: timeout,
            }
        } else if error.is_decode() {
            Self::Malformed {
                upstream,
                message: error.to_string(),
            }
        } else {
            Self::Connect {
                upstream,
                message: root_cause(&error),
            }
        }
    }
}

/// Shorter values are not secrets worth the name (local servers run with `OPENAI_API_KEY=x`),
/// and cutting them out of text would mangle it ("Rate limit e[redacted]ceeded").
const MIN_SECRET_CHARS: usize = 8;

/// `text` with every whole-token occurrence of `secret` replaced by `[redacted]`: only where
/// it is not part of a longer word, and only for values long enough to be a secret.
pub fn redact_token(text: &str, secret: &str) -> String {
    if secret.chars().count() < MIN_SECRET_CHARS {
        return text.to_string();
    }
    // A key followed by "." or "-" still ends there ("Invalid key: sk-....").
    let token_char = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(secret) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + secret.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(token_char) || after.is_some_and(token_char) {
            out.push_str(secret);
        } else {
            out.push_str("[redacted]");
        }
        rest = &rest[at + secret.len()..];
    }
    out.push_str(rest);
    out
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

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
    use super::*;

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
