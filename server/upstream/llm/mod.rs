//! An OpenAI-compatible Chat Completions client: structured answers through
//! `response_format: json_schema` (strict), and streamed text (SSE) for the writer.
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{UpstreamError, check_status, read_body};

mod stream;
use crate::config::Secret;
use crate::resilience::{CallScope, Guard};
use stream::{STREAM_BYTES_PER_TOKEN, StreamLimits, read_stream, text_bytes_for};

const UPSTREAM: &str = crate::domain::Upstream::Llm.as_str();

/// One chat message of a request, borrowing its text.
#[derive(Serialize)]
struct Said<'a> {
    role: &'a str,
    content: &'a str,
}

/// A chat completion request: the parameters (model, limits, response format) and the
/// messages.
#[derive(Serialize)]
struct ChatBody<'a> {
    #[serde(flatten)]
    params: &'a Value,
    messages: &'a [Said<'a>],
}

/// Tokens a call used, as the endpoint reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// Saturating: the counts come from the upstream, which may send anything.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }

    /// The usage an upstream reported for a call of `prompt_bytes` asking for at most
    /// `max_tokens`, within what the call can have used: a token is at least a byte of the
    /// prompt, and an answer has at most `max_tokens` (a usage of 2^63 would otherwise wrap
    /// the job's totals and price the job at 10^15 dollars).
    fn trusted(reported: WireUsage, prompt_bytes: usize, max_tokens: u32) -> Self {
        let usage = Self {
            input_tokens: reported.prompt_tokens.min(prompt_bytes as u64),
            output_tokens: reported.completion_tokens.min(u64::from(max_tokens)),
        };
        if usage.input_tokens < reported.prompt_tokens
            || usage.output_tokens < reported.completion_tokens
        {
            tracing::warn!(
                reported_input = reported.prompt_tokens,
                reported_output = reported.completion_tokens,
                "the upstream reported more tokens than the call can have used; capped"
            );
        }
        usage
    }
}

/// A finished call: its value, tokens over every attempt, attempts made, and whether the
/// answer came from the cache (no tokens spent).
#[derive(Debug, Clone)]
pub struct Completion<T> {
    pub value: T,
    pub usage: Usage,
    pub attempts: u32,
    pub cached: bool,
}

impl<T> Completion<T> {
    /// The same accounting with another value (what the caller made of the answer).
    pub fn with<U>(self, value: U) -> Completion<U> {
        Completion {
            value,
            usage: self.usage,
            attempts: self.attempts,
            cached: self.cached,
        }
    }
}

/// What to ask: the agent's system and user messages.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

pub use crate::config::StructuredOutput;

/// One structured question: the schema its answer must fit, and the most tokens it may use.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub model: &'a str,
    /// The schema's name (the agent's).
    pub name: &'a str,
    pub schema: &'a Value,
    pub max_tokens: u32,
}

/// A structured answer as the model gave it; judging it is the caller's business.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    pub content: String,
    /// `finish_reason: length`: cut off at `max_tokens`.
    pub truncated: bool,
}

/// A streamed text, and whether it was cut off at `max_tokens`.
#[derive(Debug, Clone, Default)]
pub struct Streamed {
    pub text: String,
    pub truncated: bool,
}

pub struct LlmClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<Secret>,
    timeout: Duration,
    idle_timeout: Duration,
    guard: std::sync::Arc<Guard>,
    temperature: f32,
    structured_output: StructuredOutput,
    /// "openai" for api.openai.com, else "openai-compatible": recorded per agent.
    pub provider: &'static str,
}

/// What [`LlmClient::new`] takes besides the HTTP client and the guard.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub temperature: f32,
    pub structured_output: StructuredOutput,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<Message>,
    delta: Option<Message>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn malformed(message: impl Into<String>) -> UpstreamError {
    UpstreamError::Malformed {
        upstream: UPSTREAM,
        message: message.into(),
    }
}

impl LlmClient {
    pub fn new(http: reqwest::Client, settings: LlmSettings, guard: std::sync::Arc<Guard>) -> Self {
        let base_url = settings.base_url.trim_end_matches('/').to_string();
        let provider = if base_url.contains("api.openai.com") {
            "openai"
        } else {
            "openai-compatible"
        };
        Self {
            http,
            base_url,
            api_key: settings.api_key,
            timeout: settings.timeout,
            idle_timeout: settings.idle_timeout,
            guard,
            temperature: settings.temperature,
            structured_output: settings.structured_output,
            provider,
        }
    }

    /// OpenAI's current name for the answer's token bound (its reasoning models refuse the
    /// old one); compatible servers know `max_tokens`.
    fn max_tokens_field(&self) -> &'static str {
        if self.provider == "openai" {
            "max_completion_tokens"
        } else {
            "max_tokens"
        }
    }

    /// Whether schemas may carry `maxLength`: OpenAI's strict mode refuses it, grammar-based
    /// servers (llama.cpp, vLLM) enforce it.
    pub fn accepts_max_length(&self) -> bool {
        self.provider != "openai"
    }

    /// The span of one chat call, with the GenAI semantic-convention attributes.
    fn chat_span(&self, model: &str) -> tracing::Span {
        tracing::info_span!(
            "chat",
            otel.name = format!("chat {model}"),
            otel.kind = "client",
            upstream = UPSTREAM,
            gen_ai.system = "openai",
            gen_ai.operation.name = "chat",
            gen_ai.request.model = model,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            http.request.method = "POST",
            url.template = "{base}/chat/completions",
            http.response.status_code = tracing::field::Empty,
        )
    }

    fn record_usage(usage: Usage) {
        let span = tracing::Span::current();
        span.record("gen_ai.usage.input_tokens", usage.input_tokens);
        span.record("gen_ai.usage.output_tokens", usage.output_tokens);
    }

    fn request(&self, body: &Bytes) -> reqwest::RequestBuilder {
        let request = crate::telemetry::inject_trace_context(
            self.http
                .post(format!("{}/chat/completions", self.base_url)),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.clone());
        match &self.api_key {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        }
    }

    /// The request body: `params`, and the system and user messages, then any further turns
    /// (a corrective re-ask). Serialized once, straight from the prompt's text (no copy of it
    /// in a JSON tree): every attempt sends the same bytes and the cache key hashes them.
    fn body(params: &Value, system: &str, prompt: &Prompt, turns: &[(&str, String)]) -> Bytes {
        let mut messages = vec![
            Said {
                role: "system",
                content: system,
            },
            Said {
                role: "user",
                content: &prompt.user,
            },
        ];
        messages.extend(turns.iter().map(|(role, content)| Said { role, content }));
        let body = ChatBody {
            params,
            messages: &messages,
        };
        // A map with string keys and strings: serializing it cannot fail.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// A structured answer to `prompt` (and `turns`, for a re-ask), asked the way
    /// `--llm-structured-output` says. Only transport failures are retried here; whether the
    /// answer fits is for the caller to judge (and a re-ask, not a retry, is the cure).
    pub async fn structured(
        &self,
        scope: &CallScope,
        ask: Ask<'_>,
        prompt: &Prompt,
        turns: &[(&str, String)],
    ) -> Result<Completion<Answer>, UpstreamError> {
        let mut params = json!({
            "model": ask.model,
            "temperature": self.temperature,
        });
        params[self.max_tokens_field()] = json!(ask.max_tokens);
        let system = match self.structured_output {
            StructuredOutput::JsonSchema => {
                params["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": ask.name, "strict": true, "schema": ask.schema},
                });
                prompt.system.clone()
            }
            mode => {
                if mode == StructuredOutput::JsonObject {
                    params["response_format"] = json!({"type": "json_object"});
                }
                format!(
                    "{}\n\nAnswer with one JSON object, and nothing else, that fits this JSON Schema:\n{}",
                    prompt.system, ask.schema
                )
            }
        };
        let body = Self::body(&params, &system, prompt, turns);
        drop((params, system));
        let usage = std::sync::Mutex::new(Usage::default());
        // Only a deterministic request has one answer worth keeping.
        let key = (self.temperature == 0.0)
            .then(|| self.guard.cache_key(&[self.base_url.as_bytes(), &body]))
            .flatten();
        let called = self
            .guard
            .cached(scope, key, &|| self.chat_span(ask.model), |_| {
                self.structured_once(&body, ask.max_tokens, &usage)
                    .map(|r| r.map_err(|e| e.redact(self.api_key.as_ref())))
            })
            .await;
        let usage = *crate::lock(&usage);
        let cached = called.cache_hit();
        called.result.map(|value| Completion {
            value,
            usage,
            attempts: called.attempts,
            cached,
        })
    }

    async fn structured_once(
        &self,
        body: &Bytes,
        max_tokens: u32,
        usage: &std::sync::Mutex<Usage>,
    ) -> Result<Answer, UpstreamError> {
        let response = self
            .request(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(UPSTREAM, self.timeout, e))?;
        let response = check_status(UPSTREAM, response).await?;
        let bytes = read_body(UPSTREAM, response, self.guard.max_body(), self.timeout).await?;
        let answer: ChatResponse = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(format!("not a chat completion: {e}")))?;
        drop(bytes);
        if let Some(reported) = answer.usage {
            let used = Usage::trusted(reported, body.len(), max_tokens);
            Self::record_usage(used);
            crate::lock(usage).add(used);
        }
        let choice = answer
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| malformed("no choices"))?;
        let truncated = choice.finish_reason.as_deref() == Some("length");
        let message = choice.message.ok_or_else(|| malformed("no message"))?;
        // A refusal is an answer: the caller re-asks or degrades, as for any unfit answer.
        let content = match (message.content, message.refusal) {
            (Some(content), _) if !content.trim().is_empty() => content,
            (_, Some(refusal)) => format!("(refused: {refusal})"),
            _ => String::new(),
        };
        Ok(Answer { content, truncated })
    }

    /// Streamed text: every delta goes to `on_delta` as it arrives. A stream that sends
    /// nothing for the idle timeout is cut. Retried only while nothing has been streamed,
    /// so the caller never sees text twice.
    pub async fn stream(
        &self,
        scope: &CallScope,
        model: &str,
        prompt: &Prompt,
        max_tokens: u32,
        on_delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Completion<Streamed>, UpstreamError> {
        let mut params = json!({
            "model": model,
            "temperature": self.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        params[self.max_tokens_field()] = json!(max_tokens);
        let body = Self::body(&params, &prompt.system, prompt, &[]);
        // Once text has reached the caller, a retry would repeat it: no retry then.
        let reached_client = std::sync::atomic::AtomicBool::new(false);
        let tracked = |delta: &str| {
            reached_client.store(true, std::sync::atomic::Ordering::Relaxed);
            on_delta(delta);
        };
        let may_retry = || !reached_client.load(std::sync::atomic::Ordering::Relaxed);
        // The same stack as every call; the pool permit is held for the whole stream.
        let (result, attempts) = self
            .guard
            .call_with(scope, &|| self.chat_span(model), &may_retry, |_| async {
                let (mut streamed, mut usage) = (Streamed::default(), Usage::default());
                self.stream_once(&body, max_tokens, &mut streamed, &mut usage, &tracked)
                    .await
                    .map_err(|e| e.redact(self.api_key.as_ref()))?;
                Ok((streamed, usage))
            })
            .await;
        result.map(|(value, usage)| Completion {
            value,
            usage,
            attempts,
            cached: false,
        })
    }

    async fn stream_once(
        &self,
        body: &Bytes,
        max_tokens: u32,
        streamed: &mut Streamed,
        usage: &mut Usage,
        on_delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), UpstreamError> {
        let started = tokio::time::Instant::now();
        let response = tokio::time::timeout(self.idle_timeout, self.request(body).send())
            .await
            .map_err(|_| UpstreamError::Timeout {
                upstream: UPSTREAM,
                after: self.idle_timeout,
            })?
            .map_err(|e| UpstreamError::from_reqwest(UPSTREAM, self.idle_timeout, e))?;
        let response = check_status(UPSTREAM, response).await?;
        let limits = StreamLimits {
            idle: self.idle_timeout,
            whole: self.timeout.saturating_sub(started.elapsed()),
            text_bytes: text_bytes_for(max_tokens),
            body_bytes: self
                .guard
                .max_body()
                .max(max_tokens as usize * STREAM_BYTES_PER_TOKEN),
        };
        read_stream(response.bytes_stream(), limits, streamed, usage, on_delta).await?;
        *usage = Usage::trusted(
            WireUsage {
                prompt_tokens: usage.input_tokens,
                completion_tokens: usage.output_tokens,
            },
            body.len(),
            max_tokens,
        );
        Ok(())
    }
}
