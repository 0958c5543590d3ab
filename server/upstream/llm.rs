//! An OpenAI-compatible Chat Completions client: structured answers through
//! `response_format: json_schema` (strict), and streamed text (SSE) for the writer.
use std::time::Duration;

use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tracing::Instrument;

use super::{UpstreamError, check_status};
use crate::config::Secret;
use crate::resilience::{CallScope, Guard};

const UPSTREAM: &str = "llm";

/// Tokens a call used, as the endpoint reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// A finished call: its value, tokens over every attempt, attempts made.
#[derive(Debug, Clone)]
pub struct Completion<T> {
    pub value: T,
    pub usage: Usage,
    pub attempts: u32,
}

/// What to ask: the agent's system and user messages.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

/// How structured answers are asked for (`--llm-structured-output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StructuredOutput {
    /// `response_format: json_schema`, strict.
    #[default]
    JsonSchema,
    /// `response_format: json_object`, the schema in the system message.
    JsonObject,
    /// No `response_format`: the schema in the system message only.
    Prompt,
}

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
#[derive(Debug, Clone)]
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

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Self {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
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

    fn request(&self, body: &Value) -> reqwest::RequestBuilder {
        let request = crate::telemetry::inject_trace_context(
            self.http
                .post(format!("{}/chat/completions", self.base_url)),
        )
        .json(body);
        match &self.api_key {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        }
    }

    /// The system and user messages, then any further turns (a corrective re-ask).
    fn messages(system: &str, prompt: &Prompt, turns: &[(&str, String)]) -> Value {
        let mut messages = vec![
            json!({"role": "system", "content": system}),
            json!({"role": "user", "content": prompt.user}),
        ];
        messages.extend(
            turns
                .iter()
                .map(|(role, content)| json!({"role": role, "content": content})),
        );
        Value::Array(messages)
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
        let mut body = json!({
            "model": ask.model,
            "temperature": self.temperature,
        });
        body[self.max_tokens_field()] = json!(ask.max_tokens);
        let system = match self.structured_output {
            StructuredOutput::JsonSchema => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": ask.name, "strict": true, "schema": ask.schema},
                });
                prompt.system.clone()
            }
            mode => {
                if mode == StructuredOutput::JsonObject {
                    body["response_format"] = json!({"type": "json_object"});
                }
                format!(
                    "{}\n\nAnswer with one JSON object, and nothing else, that fits this JSON Schema:\n{}",
                    prompt.system, ask.schema
                )
            }
        };
        body["messages"] = Self::messages(&system, prompt, turns);
        let usage = std::sync::Mutex::new(Usage::default());
        let (result, attempts) = self
            .guard
            .call(scope, |_| {
                self.structured_once(&body, &usage)
                    .instrument(self.chat_span(ask.model))
                    .map(|r| r.map_err(|e| e.redact(self.api_key.as_ref())))
            })
            .await;
        let usage = *crate::lock(&usage);
        result.map(|value| Completion {
            value,
            usage,
            attempts,
        })
    }

    async fn structured_once(
        &self,
        body: &Value,
        usage: &std::sync::Mutex<Usage>,
    ) -> Result<Answer, UpstreamError> {
        let response = self
            .request(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(UPSTREAM, self.timeout, e))?;
        let response = check_status(UPSTREAM, response).await?;
        let answer: ChatResponse = response
            .json()
            .await
            .map_err(|e| malformed(format!("not a chat completion: {e}")))?;
        if let Some(u) = answer.usage {
            Self::record_usage(u.into());
            crate::lock(usage).add(u.into());
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
        let mut body = json!({
            "model": model,
            "messages": Self::messages(&prompt.system, prompt, &[]),
            "temperature": self.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        body[self.max_tokens_field()] = json!(max_tokens);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut streamed = Streamed::default();
            let mut usage = Usage::default();
            // The permit is held for the whole stream: a stream is one call.
            let (result, elapsed) = match self.guard.admit(scope).await {
                Ok(permit) => {
                    let started = tokio::time::Instant::now();
                    let result = self
                        .stream_once(&body, &mut streamed, &mut usage, on_delta)
                        .instrument(self.chat_span(model))
                        .await
                        .map_err(|e| e.redact(self.api_key.as_ref()));
                    permit.finish(&result);
                    (result, started.elapsed())
                }
                Err(refused) => (Err(refused), Duration::ZERO),
            };
            self.guard.observe(&result, elapsed);
            let error = match result {
                Ok(()) => {
                    return Ok(Completion {
                        value: streamed,
                        usage,
                        attempts,
                    });
                }
                Err(error) => error,
            };
            // Once text has reached the caller, a retry would repeat it: fail instead.
            let retry = if streamed.text.is_empty() {
                self.guard.backoff(attempts, &error, scope)
            } else {
                None
            };
            match retry {
                Some(delay) => {
                    tracing::warn!(upstream = UPSTREAM, attempt = attempts, ?delay, %error, "retrying stream");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(error),
            }
        }
    }

    async fn stream_once(
        &self,
        body: &Value,
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
        let mut bytes = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        let mut finished = false;
        // Some servers end with a `finish_reason` and close without `[DONE]`.
        let mut saw_finish = false;
        while !finished {
            if started.elapsed() > self.timeout {
                return Err(UpstreamError::Timeout {
                    upstream: UPSTREAM,
                    after: self.timeout,
                });
            }
            let chunk = match tokio::time::timeout(self.idle_timeout, bytes.next()).await {
                Err(_) => {
                    return Err(UpstreamError::Stalled {
                        upstream: UPSTREAM,
                        after: self.idle_timeout,
                    });
                }
                Ok(None) => break,
                Ok(Some(chunk)) => {
                    chunk.map_err(|e| UpstreamError::from_reqwest(UPSTREAM, self.timeout, e))?
                }
            };
            buffer.extend_from_slice(&chunk);
            // Server-sent events end with a blank line; a chunk may hold several or half of one.
            while let Some(end) = find_event_end(&buffer) {
                let event: Vec<u8> = buffer.drain(..end.0).collect();
                buffer.drain(..end.1);
                let event = String::from_utf8_lossy(&event);
                for line in event.lines() {
                    let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                        continue;
                    };
                    if data == "[DONE]" {
                        finished = true;
                        break;
                    }
                    let chunk: ChatResponse = serde_json::from_str(data)
                        .map_err(|e| malformed(format!("bad stream chunk ({e})")))?;
                    if let Some(u) = chunk.usage {
                        *usage = u.into();
                    }
                    for choice in chunk.choices {
                        if let Some(delta) = choice
                            .delta
                            .and_then(|d| d.content)
                            .filter(|d| !d.is_empty())
                        {
                            on_delta(&delta);
                            streamed.text.push_str(&delta);
                        }
                        match choice.finish_reason.as_deref() {
                            Some("length") => {
                                streamed.truncated = true;
                                saw_finish = true;
                            }
                            Some(_) => saw_finish = true,
                            None => {}
                        }
                    }
                }
            }
        }
        Self::record_usage(*usage);
        // An empty answer is the model's, not the transport's: the caller judges it.
        if !finished && !saw_finish {
            return Err(UpstreamError::Connect {
                upstream: UPSTREAM,
                message: "the stream ended without [DONE]".into(),
            });
        }
        Ok(())
    }
}

/// Position of the end of the first event in `buffer` and the length of its separator.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_of_either_kind() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: 1\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: partial"), None);
    }
}
