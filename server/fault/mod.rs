//! What an upstream failure is ([`UpstreamError`]), how a call is retried ([`retry`]) and
//! when an upstream counts as down ([`breaker`]): the primitives that the resilience stack,
//! Redis, the cache and the HTTP clients share, below all of them.
use std::time::Duration;

pub mod breaker;
pub mod retry;

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
    /// Cut by this call's own time budget while the upstream was still sending: it is slow,
    /// not down. Not retried (the same call would take as long) and not a breaker failure.
    #[error("{upstream}: still answering after the call's budget of {after:?}")]
    OverBudget {
        upstream: &'static str,
        after: Duration,
    },
    /// The prompt and the answer asked for do not fit the model's context window: a problem
    /// of this call's content, never an outage.
    #[error("{upstream}: the prompt does not fit the model's context: {message}")]
    ContextExceeded {
        upstream: &'static str,
        message: String,
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
            Self::Refused { .. }
            | Self::BreakerOpen { .. }
            | Self::TooLarge { .. }
            | Self::OverBudget { .. }
            | Self::ContextExceeded { .. } => false,
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
            Self::OverBudget { .. } => "over_budget",
            Self::ContextExceeded { .. } => "context_exceeded",
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
            | Self::OverBudget { upstream, .. }
            | Self::ContextExceeded { upstream, .. }
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
