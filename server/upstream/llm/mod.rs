//! An OpenAI-compatible Chat Completions client: structured answers through
//! `response_format: json_schema` (strict), and streamed text (SSE) for the writer. Every
//! call is streamed where the server streams (so "stalled" means stalled, and a slow model
//! is seen working), timed by a budget from its size and the model's measured pace
//! ([`budget`]), and fitted into the model's context window ([`discover`]).
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{UpstreamError, check_status, read_body};

pub mod budget;
pub mod discover;
mod exchange;
mod stream;
use crate::config::Secret;
use crate::resilience::{CallScope, Guard};
use budget::{Budget, Fixed, Throughput, tokens_in};
use discover::ServerProps;

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

/// How soon a server that said nothing of itself is asked again.
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_secs(30);

pub struct LlmClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<Secret>,
    /// Fixed limits from the flags; the rest is budgeted per call.
    fixed: Fixed,
    /// Once text flows, the longest gap between two events.
    idle_timeout: Duration,
    guard: std::sync::Arc<Guard>,
    temperature: f32,
    structured_output: StructuredOutput,
    stream_structured: bool,
    /// `--llm-context-tokens`, else what the server says.
    context_tokens: Option<u32>,
    /// What the server said of itself, once it said anything; and when it was last asked (a
    /// server that was not up yet, or said nothing, is asked again after a while).
    props: tokio::sync::Mutex<(Option<ServerProps>, Option<tokio::time::Instant>)>,
    /// The pace each model has shown.
    pub throughput: Throughput,
    /// Calls being answered now (sent, not yet read to their end).
    in_flight: std::sync::atomic::AtomicUsize,
    /// "openai" for api.openai.com, else "openai-compatible": recorded per agent.
    pub provider: &'static str,
}

/// What [`LlmClient::new`] takes besides the HTTP client and the guard.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// A fixed whole-call limit instead of the budget (`--llm-timeout`).
    pub timeout: Option<Duration>,
    /// A fixed limit to the first token instead of the budget (`--llm-first-token-timeout`).
    pub first_token_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    pub temperature: f32,
    pub structured_output: StructuredOutput,
    /// Ask structured answers as streams too (`--llm-stream-structured`).
    pub stream_structured: bool,
    /// The model's context window, when the server does not say (`--llm-context-tokens`).
    pub context_tokens: Option<u32>,
    /// LLM calls in flight at once (`--llm-concurrency`; 0: as many slots as the server says
    /// it has, else no limit of its own).
    pub concurrency: usize,
}

/// llama.cpp's account of a call: tokens and milliseconds, reading and generating.
#[derive(Deserialize, Debug, Clone, Copy, Default)]
struct Timings {
    #[serde(default)]
    prompt_n: f64,
    #[serde(default)]
    prompt_ms: f64,
    #[serde(default)]
    predicted_n: f64,
    #[serde(default)]
    predicted_ms: f64,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    timings: Option<Timings>,
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
        guard.set_slots(settings.concurrency);
        Self {
            http,
            base_url,
            api_key: settings.api_key,
            fixed: Fixed {
                first_token: settings.first_token_timeout,
                whole: settings.timeout,
            },
            idle_timeout: settings.idle_timeout,
            guard,
            temperature: settings.temperature,
            structured_output: settings.structured_output,
            stream_structured: settings.stream_structured,
            context_tokens: settings.context_tokens,
            props: Default::default(),
            throughput: Throughput::default(),
            in_flight: Default::default(),
            provider,
        }
    }

    /// What the server says of itself (OpenAI is not asked), its slots applied as this
    /// upstream's concurrency unless `--llm-concurrency` set one. Kept once it said anything;
    /// a server that said nothing (not up yet, or without these paths) is asked again at most
    /// every [`ASK_AGAIN`].
    pub async fn server_props(&self, model: &str) -> ServerProps {
        let mut known = self.props.lock().await;
        if let Some(props) = known.0 {
            return props;
        }
        let recently = known.1.is_some_and(|at| at.elapsed() < ASK_AGAIN);
        if self.provider == "openai" || recently {
            return ServerProps::default();
        }
        known.1 = Some(tokio::time::Instant::now());
        let props =
            discover::discover(&self.http, &self.base_url, self.api_key.as_ref(), model).await;
        if props != ServerProps::default() {
            known.0 = Some(props);
        }
        if let Some(slots) = props.slots
            && self.guard.set_slots(slots)
        {
            tracing::info!(slots, "LLM calls in flight limited to the server's slots");
        }
        props
    }

    /// What was learned of the server so far (for health), without asking.
    pub fn known_props(&self) -> ServerProps {
        let learned = self.props.try_lock().ok().and_then(|known| known.0);
        let mut props = learned.unwrap_or_default();
        props.context_tokens = self.context_tokens.or(props.context_tokens);
        props
    }

    /// The context window of `model`'s calls, when known.
    pub async fn context_tokens(&self, model: &str) -> Option<u32> {
        // Asked before the first call whatever the flags say: the slots apply to it.
        let props = self.server_props(model).await;
        self.context_tokens.or(props.context_tokens)
    }

    /// The `max_tokens` a call of `prompt_bytes` may ask within the context window: as asked
    /// when it fits, less when only the answer's end would not, and an error (no call made)
    /// when too little room is left for an answer worth having.
    pub async fn fit(
        &self,
        model: &str,
        prompt_bytes: usize,
        max_tokens: u32,
    ) -> Result<u32, UpstreamError> {
        let Some(context) = self.context_tokens(model).await else {
            return Ok(max_tokens);
        };
        let prompt = tokens_in(prompt_bytes);
        let room = u64::from(context).saturating_sub(prompt);
        if room >= u64::from(max_tokens) {
            return Ok(max_tokens);
        }
        if room < u64::from(max_tokens / 2).max(64) {
            return Err(UpstreamError::ContextExceeded {
                upstream: UPSTREAM,
                message: format!(
                    "about {prompt} tokens of prompt and {max_tokens} of answer exceed the {context}-token context"
                ),
            });
        }
        Ok(room as u32)
    }

    /// Bytes of prompt a call answering in up to `max_tokens` can carry in `model`'s
    /// context window, when it is known: for agents to trim what they send (sources by rank).
    pub async fn prompt_room(&self, model: &str, max_tokens: u32) -> Option<usize> {
        let context = self.context_tokens(model).await?;
        let tokens = u64::from(context).saturating_sub(u64::from(max_tokens));
        // The inverse of `tokens_in`.
        Some(usize::try_from(tokens.saturating_mul(7) / 2).unwrap_or(usize::MAX))
    }

    /// The time budget of a call of `body_bytes` asking for `max_tokens` from `model`, with
    /// `concurrent` calls (itself included) in flight.
    fn budget(&self, model: &str, body_bytes: usize, max_tokens: u32, concurrent: usize) -> Budget {
        self.throughput.rates(model).budget(
            tokens_in(body_bytes),
            max_tokens,
            self.fixed,
            concurrent,
        )
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
        if self.stream_structured {
            params["stream"] = json!(true);
            params["stream_options"] = json!({"include_usage": true});
        }
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
        let said = system.len()
            + prompt.user.len()
            + turns.iter().map(|(_, text)| text.len()).sum::<usize>();
        let max_tokens = self.fit(ask.model, said, ask.max_tokens).await?;
        params[self.max_tokens_field()] = json!(max_tokens);
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
                self.exchange(&body, ask.model, max_tokens, &|_| {})
                    .map(|result| {
                        let (streamed, used) =
                            result.map_err(|e| e.redact(self.api_key.as_ref()))?;
                        crate::lock(&usage).add(used);
                        Ok(Answer {
                            content: streamed.text,
                            truncated: streamed.truncated,
                        })
                    })
            })
            .await;
        let usage = *crate::lock(&usage);
        scope.count_tokens(usage.input_tokens, usage.output_tokens);
        let cached = called.cache_hit();
        called.result.map(|value| Completion {
            value,
            usage,
            attempts: called.attempts,
            cached,
        })
    }

    /// Streamed text: every delta goes to `on_delta` as it arrives. Retried only while
    /// nothing has been streamed, so the caller never sees text twice.
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
        let said = prompt.system.len() + prompt.user.len();
        let max_tokens = self.fit(model, said, max_tokens).await?;
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
                self.exchange(&body, model, max_tokens, &tracked)
                    .await
                    .map_err(|e| e.redact(self.api_key.as_ref()))
            })
            .await;
        if let Ok((_, usage)) = &result {
            scope.count_tokens(usage.input_tokens, usage.output_tokens);
        }
        result.map(|(value, usage)| Completion {
            value,
            usage,
            attempts,
            cached: false,
        })
    }
}
