//! Reading a streamed chat completion (server-sent events), bounded in time, in bytes on the
//! wire and in text.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio_stream::StreamExt;

use super::{ChatResponse, LlmClient, Streamed, Timings, UPSTREAM, Usage, malformed};
use crate::{fault::UpstreamError, resilience::Liveness};

/// The most text a streamed answer of `max_tokens` may hold: a token is a few bytes of
/// text (rarely more than 16), so a stream far past this ignores its `max_tokens`.
pub(super) fn text_bytes_for(max_tokens: u32) -> usize {
    (max_tokens as usize)
        .saturating_mul(32)
        .saturating_add(1024)
}

/// Bytes on the wire per streamed token at most: each is one SSE event of JSON around it.
pub(super) const STREAM_BYTES_PER_TOKEN: usize = 2 << 10;

/// The bounds of one streamed answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamLimits {
    /// From sending to the first event: the server reads the prompt meanwhile.
    pub(super) first: Duration,
    /// Once events flow, nothing arrives for that long: the stream stalled.
    pub(super) idle: Duration,
    /// From sending to the end of the answer.
    pub(super) whole: Duration,
    /// Text past this is cut, as if at `max_tokens`.
    pub(super) text_bytes: usize,
    /// The body past this is not read: the answer is too large.
    pub(super) body_bytes: usize,
}

/// Reads a streamed chat completion: server-sent events framed by `eventsource-stream`
/// (CRLF or LF, comments, `data:` fields over several lines joined), each a JSON chunk whose
/// deltas go to `on_delta` as they arrive, within `limits`. A stream is complete with
/// `[DONE]`, or with a `finish_reason` (some servers close without `[DONE]`); a stream whose
/// text outgrows its `max_tokens` is cut there and reported truncated. Every event tells
/// `liveness` the upstream is alive. `sent` is when the request went out.
pub(super) async fn read_stream<S, E>(
    bytes: S,
    limits: StreamLimits,
    (sent, liveness): (tokio::time::Instant, &Liveness),
    streamed: &mut Streamed,
    usage: &mut Usage,
    on_delta: &(dyn Fn(&str) + Send + Sync),
) -> Result<Pace, UpstreamError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::error::Error,
{
    use eventsource_stream::Eventsource;
    let mut pace = Pace::default();
    // The body ends (for the parser) where it passes its bound: one event without an end
    // would otherwise be buffered whole.
    let oversized = AtomicBool::new(false);
    let mut received = 0usize;
    let bounded = bytes.take_while(|chunk| {
        received += chunk.as_ref().map_or(0, bytes::Bytes::len);
        let within = received <= limits.body_bytes;
        if !within {
            oversized.store(true, Ordering::Relaxed);
        }
        within
    });
    let mut events = std::pin::pin!(bounded.eventsource());
    let mut ending = Ending::Open;
    let mut flowing = false;
    while ending != Ending::Done {
        let waiting = Waiting {
            sent,
            flowing,
            oversized: &oversized,
        };
        let Some(event) = next_event(&mut events, &limits, waiting).await? else {
            break;
        };
        liveness.heard();
        let data = event.data.trim();
        if data == "[DONE]" {
            ending = Ending::Done;
        } else if !data.is_empty() {
            let mut chunk: ChatResponse = serde_json::from_str(data)
                .map_err(|e| malformed(format!("bad stream chunk ({e})")))?;
            pace.timings = chunk.timings.take().or(pace.timings);
            let before = streamed.text.len();
            ending = ending.max(take_chunk(chunk, &limits, streamed, usage, on_delta));
            if streamed.text.len() > before && pace.first_token.is_none() {
                pace.first_token = Some(tokio::time::Instant::now());
            }
        }
        // A server may send an empty first event at once (the role, a keep-alive): the
        // prompt is read only when text comes, and until then the first-token limit holds.
        flowing = pace.first_token.is_some();
    }
    LlmClient::record_usage(*usage);
    // An empty answer is the model's, not the transport's: the caller judges it. A stream
    // cut before either end is the transport's.
    if ending == Ending::Open {
        return Err(UpstreamError::Connect {
            upstream: UPSTREAM,
            message: "the stream ended without [DONE]".into(),
        });
    }
    Ok(pace)
}

/// How an answer came: when its first text arrived, and the server's own `timings`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Pace {
    pub(super) first_token: Option<tokio::time::Instant>,
    pub(super) timings: Option<Timings>,
}

/// Where a stream is, for the limit on its next event.
struct Waiting<'a> {
    sent: tokio::time::Instant,
    /// Text has come: the gap between events is limited, not the time to the first.
    flowing: bool,
    oversized: &'a AtomicBool,
}

/// How far a stream has come to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    Open,
    /// A `finish_reason` came; `[DONE]` may follow.
    Finished,
    /// `[DONE]`, or cut at the text bound: read no further.
    Done,
}

/// The next event of the stream, `None` at its end, within the first-token, idle and
/// whole-call limits.
async fn next_event<S, E>(
    events: &mut std::pin::Pin<&mut eventsource_stream::EventStream<S>>,
    limits: &StreamLimits,
    waiting: Waiting<'_>,
) -> Result<Option<eventsource_stream::Event>, UpstreamError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::error::Error,
{
    use eventsource_stream::EventStreamError;
    let elapsed = waiting.sent.elapsed();
    let (gap, cut) = if waiting.flowing {
        (
            limits.idle,
            UpstreamError::Stalled {
                upstream: UPSTREAM,
                after: limits.idle,
            },
        )
    } else {
        (
            limits.first.saturating_sub(elapsed),
            UpstreamError::Timeout {
                upstream: UPSTREAM,
                after: limits.first,
            },
        )
    };
    let wait = gap.min(limits.whole.saturating_sub(elapsed));
    match tokio::time::timeout(wait, events.next()).await {
        // The whole budget ran out while text was coming: slow, not silent.
        Err(_) if waiting.sent.elapsed() >= limits.whole && waiting.flowing => {
            Err(UpstreamError::OverBudget {
                upstream: UPSTREAM,
                after: limits.whole,
            })
        }
        Err(_) if waiting.sent.elapsed() >= limits.whole => Err(UpstreamError::Timeout {
            upstream: UPSTREAM,
            after: limits.whole,
        }),
        Err(_) => Err(cut),
        Ok(None) if waiting.oversized.load(Ordering::Relaxed) => Err(UpstreamError::TooLarge {
            upstream: UPSTREAM,
            limit: limits.body_bytes,
        }),
        Ok(None) => Ok(None),
        Ok(Some(Err(EventStreamError::Transport(error)))) => Err(UpstreamError::Connect {
            upstream: UPSTREAM,
            message: error.to_string(),
        }),
        Ok(Some(Err(error))) => Err(malformed(format!("bad event stream ({error})"))),
        Ok(Some(Ok(event))) => Ok(Some(event)),
    }
}

/// One chunk's usage and deltas: the text goes to `on_delta` and into `streamed`, cut at
/// the text bound. How far the stream has come to its end after it.
fn take_chunk(
    chunk: ChatResponse,
    limits: &StreamLimits,
    streamed: &mut Streamed,
    usage: &mut Usage,
    on_delta: &(dyn Fn(&str) + Send + Sync),
) -> Ending {
    if let Some(u) = chunk.usage {
        *usage = Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        };
    }
    let mut ending = Ending::Open;
    for choice in chunk.choices {
        if let Some(delta) = choice
            .delta
            .and_then(|d| d.content)
            .filter(|d| !d.is_empty())
        {
            let room = limits.text_bytes.saturating_sub(streamed.text.len());
            let kept = prefix_within(&delta, room);
            if !kept.is_empty() {
                on_delta(kept);
            }
            streamed.text.push_str(kept);
            if kept.len() < delta.len() {
                // Far past `max_tokens`: the model (or server) ignores it. Cut here.
                tracing::warn!(
                    bytes = streamed.text.len(),
                    "the streamed answer outgrew its max_tokens; cut off"
                );
                streamed.truncated = true;
                return Ending::Done;
            }
        }
        if let Some(reason) = choice.finish_reason.as_deref() {
            streamed.truncated |= reason == "length";
            ending = Ending::Finished;
        }
    }
    ending
}

/// The longest prefix of `text` of at most `max` bytes, cut at a character boundary.
fn prefix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reads `chunks` as a body arriving in those pieces.
    fn read(chunks: &[&str]) -> (Result<(), UpstreamError>, Streamed) {
        let body = futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c.to_string())))
                .collect::<Vec<_>>(),
        );
        let mut streamed = Streamed::default();
        let mut usage = Usage::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|_| unreachable!());
        let limits = StreamLimits {
            first: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            whole: Duration::from_secs(5),
            text_bytes: 1 << 20,
            body_bytes: 1 << 20,
        };
        let liveness = Liveness::default();
        let result = runtime.block_on(async {
            let sent = tokio::time::Instant::now();
            read_stream(
                body,
                limits,
                (sent, &liveness),
                &mut streamed,
                &mut usage,
                &|_| {},
            )
            .await
        });
        (result.map(|_| ()), streamed)
    }

    fn delta(text: &str) -> String {
        json!({"choices": [{"delta": {"content": text}}]}).to_string()
    }

    #[test]
    fn events_are_framed_whatever_the_chunking_and_line_endings() {
        let a = delta("Hello, ");
        let b = delta("world");
        let body = format!(": keep-alive\r\n\r\ndata: {a}\r\n\r\ndata: {b}\n\ndata: [DONE]\n\n");
        // Split inside a field, inside a line ending, everywhere.
        let pieces: Vec<String> = body.chars().map(String::from).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (result, streamed) = read(&pieces);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(streamed.text, "Hello, world");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Any bytes, cut anywhere: an answer or an error, never a panic.
        #[test]
        fn any_event_stream_is_answered(body in "(data: |\\{|\\}|\\[DONE\\]|\\r\\n|\\n|:|\\PC{0,20}){0,60}", cut in 1usize..50) {
            let chunks: Vec<String> = body
                .chars()
                .collect::<Vec<_>>()
                .chunks(cut)
                .map(|c| c.iter().collect())
                .collect();
            let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let _ = read(&chunks);
        }
    }

    #[test]
    fn a_data_field_over_several_lines_is_joined() {
        let body = "data: {\"choices\": [{\"delta\":\ndata: {\"content\": \"joined\"}}]}\n\ndata: [DONE]\n\n";
        let (result, streamed) = read(&[body]);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(streamed.text, "joined");
    }

    #[test]
    fn a_stream_cut_without_an_end_is_the_transports_failure() {
        let (result, streamed) = read(&[&format!("data: {}\n\n", delta("half"))]);
        assert!(
            matches!(result, Err(UpstreamError::Connect { .. })),
            "{result:?}"
        );
        assert_eq!(streamed.text, "half");
        // A finish_reason is an end, [DONE] or not.
        let end = json!({"choices": [{"delta": {}, "finish_reason": "length"}]});
        let (result, streamed) = read(&[&format!("data: {}\n\ndata: {end}\n\n", delta("cut"))]);
        assert!(result.is_ok() && streamed.truncated);
        let (result, _) = read(&["data: {not json\n\n"]);
        assert!(matches!(result, Err(UpstreamError::Malformed { .. })));
    }
}
