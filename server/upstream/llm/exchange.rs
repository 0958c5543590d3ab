//! One attempt of a chat call: the request sent, the answer read as a stream (or whole, from
//! a server that does not stream it) within the call's budget, the upstream's liveness told
//! to its guard as bytes arrive, and the model's pace learned from the answer.
use bytes::Bytes;

use super::{
    ChatResponse, LlmClient, Streamed, UPSTREAM, Usage, WireUsage, budget, check_status, malformed,
    read_body,
    stream::{Pace, STREAM_BYTES_PER_TOKEN, StreamLimits, read_stream, text_bytes_for},
};
use crate::fault::UpstreamError;

impl LlmClient {
    /// One attempt: sends `body`, reads the answer as a stream (or whole, from a server that
    /// does not stream it) within the call's budget, tells the guard the upstream is alive
    /// as bytes arrive, and learns the model's pace from it.
    pub(super) async fn exchange(
        &self,
        body: &Bytes,
        model: &str,
        max_tokens: u32,
        on_delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(Streamed, Usage), UpstreamError> {
        let concurrent = InFlight::enter(&self.in_flight);
        let budget = self.budget(model, body.len(), max_tokens, concurrent.0);
        let sent = tokio::time::Instant::now();
        let timeout = UpstreamError::Timeout {
            upstream: UPSTREAM,
            after: budget.whole,
        };
        let response = tokio::time::timeout(budget.whole, self.request(body).send())
            .await
            .map_err(|_| timeout.clone())?
            .map_err(|e| UpstreamError::from_reqwest(UPSTREAM, budget.whole, e))?;
        self.guard.liveness.heard();
        self.guard.provider.observe(response.headers());
        let response = check_status(UPSTREAM, response)
            .await
            .map_err(context_exceeded)?;
        let (mut streamed, mut usage) = (Streamed::default(), Usage::default());
        let events = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let pace = if events {
            let limits = StreamLimits {
                first: budget.first_token,
                idle: self.idle_timeout,
                whole: budget.whole,
                text_bytes: text_bytes_for(max_tokens),
                body_bytes: self
                    .guard
                    .max_body()
                    .max(max_tokens as usize * STREAM_BYTES_PER_TOKEN),
            };
            let liveness = (sent, &self.guard.liveness);
            read_stream(
                response.bytes_stream(),
                limits,
                liveness,
                &mut streamed,
                &mut usage,
                on_delta,
            )
            .await?
        } else {
            let left = budget.whole.saturating_sub(sent.elapsed());
            let read = read_body(UPSTREAM, response, self.guard.max_body(), left);
            let bytes = tokio::time::timeout(left, read)
                .await
                .map_err(|_| timeout)??;
            self.guard.liveness.heard();
            Self::whole_answer(&bytes, &mut streamed, &mut usage, on_delta)?
        };
        let reported = WireUsage {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
        };
        let usage = Usage::trusted(reported, body.len(), max_tokens);
        Self::record_usage(usage);
        let sample = budget::Sample {
            concurrent: concurrent.0,
            ..pace.sample(sent, usage)
        };
        self.throughput.observe(model, sample);
        Ok((streamed, usage))
    }

    /// A chat completion answered in one body.
    fn whole_answer(
        bytes: &[u8],
        streamed: &mut Streamed,
        usage: &mut Usage,
        on_delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Pace, UpstreamError> {
        let answer: ChatResponse = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("not a chat completion: {e}")))?;
        if let Some(reported) = answer.usage {
            *usage = Usage {
                input_tokens: reported.prompt_tokens,
                output_tokens: reported.completion_tokens,
            };
        }
        let choice = answer
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| malformed("no choices"))?;
        streamed.truncated = choice.finish_reason.as_deref() == Some("length");
        let message = choice.message.ok_or_else(|| malformed("no message"))?;
        // A refusal is an answer: the caller re-asks or degrades, as for any unfit answer.
        streamed.text = match (message.content, message.refusal) {
            (Some(content), _) if !content.trim().is_empty() => content,
            (_, Some(refusal)) => format!("(refused: {refusal})"),
            _ => String::new(),
        };
        if !streamed.text.is_empty() {
            on_delta(&streamed.text);
        }
        Ok(Pace {
            first_token: None,
            timings: answer.timings,
        })
    }
}

/// One call counted in flight while it lives: how many were, itself included, when it began.
struct InFlight<'a>(usize, &'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        let now = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Self(now, count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.1.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Pace {
    /// What this answer says of the model's pace: the server's own timings, else the time
    /// to the first text and from it to the end, else the whole answer as generation.
    fn sample(&self, sent: tokio::time::Instant, usage: Usage) -> budget::Sample {
        if let Some(t) = self.timings {
            return budget::Sample {
                prompt_tokens: t.prompt_n as u64,
                prompt_seconds: t.prompt_ms / 1000.0,
                generated_tokens: t.predicted_n as u64,
                generation_seconds: t.predicted_ms / 1000.0,
                concurrent: 1,
            };
        }
        match self.first_token {
            Some(first) => budget::Sample {
                prompt_tokens: usage.input_tokens,
                prompt_seconds: first.duration_since(sent).as_secs_f64(),
                generated_tokens: usage.output_tokens,
                generation_seconds: first.elapsed().as_secs_f64(),
                concurrent: 1,
            },
            None => budget::Sample {
                generated_tokens: usage.output_tokens,
                generation_seconds: sent.elapsed().as_secs_f64(),
                ..Default::default()
            },
        }
    }
}

/// A server's "the prompt does not fit" (llama.cpp answers 400 "exceeds the available
/// context size" or 500 "Context size has been exceeded"; OpenAI 400
/// `context_length_exceeded`): a problem of this call's content, not an outage.
fn context_exceeded(error: UpstreamError) -> UpstreamError {
    match error {
        UpstreamError::Status { status, body, .. }
            if matches!(status, 400 | 413 | 500) && {
                let body = body.to_lowercase();
                body.contains("context")
                    && ["exceed", "too long", "maximum context", "context_length"]
                        .iter()
                        .any(|s| body.contains(s))
            } =>
        {
            UpstreamError::ContextExceeded {
                upstream: UPSTREAM,
                message: body,
            }
        }
        error => error,
    }
}
