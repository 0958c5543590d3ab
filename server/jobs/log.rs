//! A job's event log: compact while the job runs, sealed (LZ4) once it ended, and the `Job`
//! methods that write it (`emit`) and read it back (`events_after`, `article`).
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tonic::{Code, Status};

use super::{Job, failure_status};
use dakota::api::{self, GenerateEvent, generate_event::Event};

/// A job's events, kept compactly: the job id once (in [`Job`]), every content delta as a
/// 16-byte entry pointing into one growing text buffer, the article once (the `completed`
/// event refers to it). Events are rebuilt, with their original sequence numbers and times,
/// when a follower reads them.
pub(super) struct JobLog {
    entries: Vec<Entry>,
    /// The text of every content delta, in order.
    text: String,
    /// When the job started; entries keep milliseconds since.
    started: SystemTime,
    pub(super) progress: u32,
    pub(super) state: JobStateKind,
    pub(super) finished_at: Option<Instant>,
    article: Option<Arc<api::Article>>,
    failure: Option<api::Failed>,
    /// A finished log, compressed: then `entries`, `text` and `article` are empty.
    sealed: Option<Sealed>,
}

/// A finished job's log, sealed: its events protobuf-encoded (without the job id, and the
/// `completed` event without its article), each behind its length, the whole compressed with
/// LZ4; the article compressed on its own. A finished job's events are read again only by a
/// replay and its article by `GetArticle`, so it is kept in a fraction of the space (most of
/// an LLM job's log is the text of its drafts, streamed as deltas) and decoded when asked.
struct Sealed {
    events: Vec<u8>,
    count: usize,
    article: Option<Vec<u8>>,
}

impl Sealed {
    fn seal(log: &JobLog) -> Self {
        use prost::Message as _;
        let mut frames = Vec::new();
        let count = log.entries.len();
        for index in 0..count {
            if let Some(mut event) = log.event(index, "") {
                if let Some(Event::Completed(completed)) = &mut event.event {
                    completed.article = None;
                }
                // Writing to a Vec cannot fail.
                let _ = event.encode_length_delimited(&mut frames);
            }
        }
        Self {
            events: compressed(&frames),
            count,
            article: log.article.as_ref().map(|a| compressed(&a.encode_to_vec())),
        }
    }

    fn article(&self) -> Option<api::Article> {
        use prost::Message as _;
        let bytes = lz4_flex::decompress_size_prepended(self.article.as_ref()?).ok()?;
        api::Article::decode(bytes.as_slice()).ok()
    }

    /// The events at `range` of the log, as emitted, with `job_id`.
    fn events(&self, range: std::ops::Range<usize>, job_id: &str) -> Vec<GenerateEvent> {
        use prost::Message as _;
        let Ok(frames) = lz4_flex::decompress_size_prepended(&self.events) else {
            return Vec::new();
        };
        let mut buffer = frames.as_slice();
        let mut events = Vec::with_capacity(range.len());
        for index in 0..range.end.min(self.count) {
            if index < range.start {
                // Skipped without decoding: past its length.
                let Ok(len) = prost::decode_length_delimiter(&mut buffer) else {
                    break;
                };
                buffer = buffer.get(len..).unwrap_or_default();
                continue;
            }
            let Ok(mut event) = GenerateEvent::decode_length_delimited(&mut buffer) else {
                break;
            };
            event.job_id = job_id.to_string();
            if let Some(Event::Completed(completed)) = &mut event.event {
                completed.article = self.article();
            }
            events.push(event);
        }
        events
    }

    fn retained_bytes(&self) -> usize {
        self.events.capacity() + self.article.as_ref().map_or(0, Vec::capacity)
    }
}

/// `bytes` in LZ4's block format, its length first; no spare capacity kept (the compressor
/// allocates for the worst case, about the input's size).
fn compressed(bytes: &[u8]) -> Vec<u8> {
    let mut block = lz4_flex::compress_prepend_size(bytes);
    block.shrink_to_fit();
    block
}

impl Default for JobLog {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            text: String::new(),
            started: SystemTime::now(),
            progress: 0,
            state: JobStateKind::default(),
            finished_at: None,
            article: None,
            failure: None,
            sealed: None,
        }
    }
}

/// One event of the log; its sequence number is its position + 1.
enum Entry {
    /// Any event but a content delta or the final `completed`.
    Event(Box<Stored>),
    /// `text[start..end]` of the log's buffer.
    Delta {
        start: u32,
        end: u32,
        at_ms: u32,
        iteration: u8,
        progress: u8,
    },
    /// `completed`, with the log's article.
    Completed { at_ms: u32, progress: u8 },
}

struct Stored {
    at: SystemTime,
    progress: u8,
    event: Event,
}

impl JobLog {
    fn at(&self, at_ms: u32) -> SystemTime {
        self.started + Duration::from_millis(u64::from(at_ms))
    }

    /// The event at `index`, as it was emitted.
    fn event(&self, index: usize, job_id: &str) -> Option<GenerateEvent> {
        let (at, progress, event) = match self.entries.get(index)? {
            Entry::Event(stored) => (stored.at, stored.progress, stored.event.clone()),
            Entry::Delta {
                start,
                end,
                at_ms,
                iteration,
                progress,
            } => (
                self.at(*at_ms),
                *progress,
                Event::ContentDelta(api::ContentDelta {
                    text: self
                        .text
                        .get(*start as usize..*end as usize)
                        .unwrap_or_default()
                        .to_string(),
                    iteration: u32::from(*iteration),
                }),
            ),
            Entry::Completed { at_ms, progress } => (
                self.at(*at_ms),
                *progress,
                Event::Completed(api::Completed {
                    article: self.article.as_deref().cloned(),
                }),
            ),
        };
        Some(GenerateEvent {
            job_id: job_id.to_string(),
            sequence: index as u64 + 1,
            timestamp: Some(at.into()),
            progress: u32::from(progress),
            event: Some(event),
        })
    }

    /// Bytes the log holds on the heap, approximately: what a finished job costs to keep.
    pub(super) fn retained_bytes(&self) -> usize {
        use prost::Message as _;
        let events: usize = self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Event(stored) => std::mem::size_of::<Stored>() + stored.event.encoded_len(),
                _ => 0,
            })
            .sum();
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + events
            + self.text.capacity()
            + self.article.as_ref().map_or(0, |a| a.encoded_len())
            + self.sealed.as_ref().map_or(0, Sealed::retained_bytes)
    }
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum JobStateKind {
    #[default]
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Job {
    /// Appends an event with the next sequence number and a progress that never decreases.
    /// Events after the final one are dropped, so a job ends exactly once.
    pub fn emit(&self, event: Event, progress: u32) {
        let mut log = self.log();
        if log.state != JobStateKind::Running {
            return;
        }
        log.progress = log.progress.max(progress.min(100));
        let progress = u8::try_from(log.progress).unwrap_or(100);
        let now = SystemTime::now();
        let at_ms = now
            .duration_since(log.started)
            .ok()
            .and_then(|d| u32::try_from(d.as_millis()).ok());
        let stored = |event| {
            Entry::Event(Box::new(Stored {
                at: now,
                progress,
                event,
            }))
        };
        let entry = match event {
            Event::ContentDelta(delta) => {
                let start = log.text.len();
                log.text.push_str(&delta.text);
                let end = log.text.len();
                match (
                    u32::try_from(start),
                    u32::try_from(end),
                    at_ms,
                    u8::try_from(delta.iteration),
                ) {
                    (Ok(start), Ok(end), Some(at_ms), Ok(iteration)) => Entry::Delta {
                        start,
                        end,
                        at_ms,
                        iteration,
                        progress,
                    },
                    // Beyond what the compact form holds (4 GiB of text, 49 days): as it came.
                    _ => stored(Event::ContentDelta(delta)),
                }
            }
            Event::Completed(completed) => {
                log.state = JobStateKind::Completed;
                log.article = completed.article.map(Arc::new);
                match at_ms {
                    Some(at_ms) => Entry::Completed { at_ms, progress },
                    None => stored(Event::Completed(api::Completed {
                        article: log.article.as_deref().cloned(),
                    })),
                }
            }
            Event::Failed(failed) => {
                let code = Code::from_i32(failed.code);
                log.state = if code == Code::Cancelled {
                    JobStateKind::Cancelled
                } else {
                    JobStateKind::Failed
                };
                log.failure = Some(failed.clone());
                stored(Event::Failed(failed))
            }
            other => stored(other),
        };
        log.entries.push(entry);
        let sequence = log.entries.len() as u64;
        if log.state != JobStateKind::Running {
            log.finished_at = Some(Instant::now());
            // Finished: nothing more is appended; the log is sealed.
            log.sealed = Some(Sealed::seal(&log));
            log.entries = Vec::new();
            log.text = String::new();
            log.article = None;
        }
        drop(log);
        self.last_sequence.send_replace(sequence);
    }

    /// The finished article, or why there is none.
    pub fn article(&self) -> Result<api::Article, Status> {
        let log = self.log();
        if let Some(article) = log.sealed.as_ref().and_then(Sealed::article) {
            return Ok(article);
        }
        match (&log.article, &log.failure) {
            (Some(article), _) => Ok((**article).clone()),
            (None, Some(failed)) => Err(failure_status(failed)),
            (None, None) => Err(Status::failed_precondition(format!(
                "job {} is still running ({}% done); watch it with WatchJob",
                self.id, log.progress
            ))),
        }
    }

    /// Up to `limit` events with a sequence greater than `after`, and the final event once the
    /// job has ended (also when it is not among them: a follower past the end still learns how
    /// the job ended). Read in batches, so a replay never copies the whole log at once.
    pub(super) fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> (Vec<GenerateEvent>, Option<GenerateEvent>) {
        let log = self.log();
        if let Some(sealed) = &log.sealed {
            let start = usize::try_from(after)
                .unwrap_or(usize::MAX)
                .min(sealed.count);
            let end = start.saturating_add(limit).min(sealed.count);
            let last = sealed.count.checked_sub(1);
            let events = sealed.events(start..end, &self.id);
            let last = match (last, events.last()) {
                (Some(last), Some(event)) if event.sequence == last as u64 + 1 => {
                    Some(event.clone())
                }
                (Some(last), _) => sealed.events(last..last + 1, &self.id).pop(),
                (None, _) => None,
            };
            return (events, last);
        }
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(log.entries.len());
        let end = start.saturating_add(limit).min(log.entries.len());
        let events = (start..end)
            .filter_map(|i| log.event(i, &self.id))
            .collect();
        let last = match log.state {
            JobStateKind::Running => None,
            _ => log
                .entries
                .len()
                .checked_sub(1)
                .and_then(|i| log.event(i, &self.id)),
        };
        (events, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{
        AttachError,
        tests::{new_id, registry, request},
    };

    #[test]
    fn deltas_are_kept_as_ranges_and_replayed_with_their_sequence() -> Result<(), AttachError> {
        let registry = registry();
        let (job, _) = registry.create_or_attach(request("k"), None, new_id(), || Ok(()))?;
        job.emit(Event::PhaseStarted(api::PhaseStarted::default()), 40);
        let words: Vec<String> = (0..2_000).map(|i| format!("word{i} ")).collect();
        for word in &words {
            job.emit(
                Event::ContentDelta(api::ContentDelta {
                    text: word.clone(),
                    iteration: 1,
                }),
                50,
            );
        }
        let article = api::Article {
            markdown: words.concat(),
            ..Default::default()
        };
        let (running, _) = job.events_after(0, usize::MAX);
        job.emit(
            Event::Completed(api::Completed {
                article: Some(article.clone()),
            }),
            100,
        );
        // Read back in batches: every delta, in order, with its original sequence number.
        let (mut replayed, mut cursor) = (Vec::new(), 0);
        loop {
            let (events, last) = job.events_after(cursor, 64);
            if events.is_empty() {
                assert_eq!(last.map(|e| e.sequence), Some(2_002));
                break;
            }
            cursor = events.last().map_or(cursor, |e| e.sequence);
            replayed.extend(events);
        }
        assert_eq!(replayed.len(), 2_002);
        assert!(
            replayed
                .iter()
                .enumerate()
                .all(|(i, e)| e.sequence == i as u64 + 1)
        );
        let text: String = replayed
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::ContentDelta(d)) => Some(d.text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, article.markdown);
        assert_eq!(job.article().ok(), Some(article.clone()));
        // The sealed log replays what the running log did, times and progress included.
        assert_eq!(running.len(), 2_001);
        assert_eq!(replayed[..2_001], running[..]);
        assert!(matches!(
            &replayed[2_001].event,
            Some(Event::Completed(c)) if c.article.as_ref() == Some(&article)
        ));
        // Running: 16 bytes a delta and the text once. Sealed: under 2x the article, all in.
        use prost::Message as _;
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        let bound = 2 * article.encoded_len();
        assert!(
            job.retained_bytes() < bound,
            "{} >= {bound}",
            job.retained_bytes()
        );
        Ok(())
    }
}
