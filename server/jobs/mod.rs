//! Jobs in memory: each job's event log, its live followers, idempotent re-attach,
//! cancellation when abandoned, and eviction of finished jobs.
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::{
    domain::{JobRequest, Principal},
    lock,
};
use dakota::api::{self, GenerateEvent, JobState, generate_event::Event};

pub mod runner;
pub mod shared;

/// Events a follower reads from the log at a time (HTTP/2 flow control paces the reading).
const FOLLOWER_BUFFER: usize = 64;

/// One job: its request, its event log and what it ended with.
pub struct Job {
    pub id: String,
    pub request: Arc<JobRequest>,
    /// The API key that started the job, when authentication is on: only it sees the job.
    pub owner: Option<Principal>,
    /// Cancels every agent and upstream call of the job.
    pub cancel: CancellationToken,
    /// The registry's shutdown token (the parent of `cancel`), to tell a shutdown from a
    /// cancellation of this job.
    shutdown: CancellationToken,
    log: Mutex<JobLog>,
    last_sequence: watch::Sender<u64>,
    watchers: AtomicUsize,
    /// Counts attachments, so a detach timer knows whether anyone came back meanwhile.
    attachments: AtomicU64,
}

/// A job's events, kept compactly: the job id once (in [`Job`]), every content delta as a
/// 16-byte entry pointing into one growing text buffer, the article once (the `completed`
/// event refers to it). Events are rebuilt, with their original sequence numbers and times,
/// when a follower reads them.
struct JobLog {
    entries: Vec<Entry>,
    /// The text of every content delta, in order.
    text: String,
    /// When the job started; entries keep milliseconds since.
    started: SystemTime,
    progress: u32,
    state: JobStateKind,
    finished_at: Option<Instant>,
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
    fn retained_bytes(&self) -> usize {
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
enum JobStateKind {
    #[default]
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl crate::domain::JobEvents for Job {
    fn id(&self) -> &str {
        &self.id
    }

    fn request(&self) -> &Arc<JobRequest> {
        &self.request
    }

    fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    fn stopped_by_shutdown(&self) -> bool {
        Job::stopped_by_shutdown(self)
    }

    fn emit(&self, event: Event, progress: u32) {
        Job::emit(self, event, progress);
    }

    fn end_failed(&self, failed: api::Failed) {
        Job::end_failed(self, failed);
    }
}

impl Job {
    fn new(
        id: String,
        request: Arc<JobRequest>,
        owner: Option<Principal>,
        shutdown: &CancellationToken,
    ) -> Self {
        Self {
            id,
            request,
            owner,
            cancel: shutdown.child_token(),
            shutdown: shutdown.clone(),
            log: Mutex::new(JobLog::default()),
            last_sequence: watch::channel(0).0,
            watchers: AtomicUsize::new(0),
            attachments: AtomicU64::new(0),
        }
    }

    fn log(&self) -> MutexGuard<'_, JobLog> {
        lock(&self.log)
    }

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

    /// Bytes this job's log holds, approximately.
    pub fn retained_bytes(&self) -> usize {
        self.log().retained_bytes()
    }

    /// Ends the job with `failed` unless it already ended.
    #[cfg(test)]
    pub fn fail(&self, code: Code, message: impl Into<String>, phase: &str) {
        self.end_failed(api::Failed {
            code: code as i32,
            message: message.into(),
            phase: phase.to_string(),
            retry_delay: None,
        });
    }

    /// Ends the job with this `failed` event unless it already ended.
    pub fn end_failed(&self, failed: api::Failed) {
        let progress = self.log().progress;
        self.emit(Event::Failed(failed), progress);
    }

    /// True when the job was stopped because the server is shutting down.
    pub fn stopped_by_shutdown(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    pub fn is_finished(&self) -> bool {
        self.log().state != JobStateKind::Running
    }

    pub fn state(&self) -> JobState {
        match self.log().state {
            JobStateKind::Running => JobState::Running,
            JobStateKind::Completed => JobState::Completed,
            JobStateKind::Failed => JobState::Failed,
            JobStateKind::Cancelled => JobState::Cancelled,
        }
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
    fn events_after(
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

    /// Only a running or completed job is re-attached by its idempotency key: a job that
    /// failed (a caller's deadline, a cancellation, a shutdown, an error) leaves the key free
    /// for a new attempt.
    fn reattachable(&self) -> bool {
        matches!(
            self.log().state,
            JobStateKind::Running | JobStateKind::Completed
        )
    }

    fn finished_at(&self) -> Option<Instant> {
        self.log().finished_at
    }
}

/// The status of a failed job, as `GetArticle` answers it (with `RetryInfo` when a retry
/// may succeed).
fn failure_status(failed: &api::Failed) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let code = Code::from_i32(failed.code);
    match failed.retry_delay.and_then(|d| Duration::try_from(d).ok()) {
        Some(delay) => Status::with_error_details(
            code,
            failed.message.clone(),
            ErrorDetails::with_retry_info(Some(delay)),
        ),
        None => Status::new(code, failed.message.clone()),
    }
}

/// An idempotency key as the caller's own: another API key's may be the same string.
pub fn scoped_key(owner: Option<&Principal>, key: &str) -> String {
    match owner {
        Some(owner) => format!("{}:{key}", owner.0),
        None => key.to_string(),
    }
}

/// Limits of the registry.
#[derive(Debug, Clone)]
pub struct JobLimits {
    pub max_jobs: usize,
    pub job_ttl: Duration,
    pub detach_grace: Duration,
}

/// Why a job could not be created or attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("idempotency_key was used for a different request (job {0})")]
    KeyReused(String),
    #[error("{0} jobs are running, the most this server keeps")]
    Full(usize),
    /// Draining: existing jobs can be re-attached, no new ones start.
    #[error("shutting down")]
    Draining,
    /// Every job slot is taken and the queue is full.
    #[error("{running} jobs running and {queued} waiting, the most this server takes")]
    QueueFull { running: usize, queued: usize },
    /// The caller started its quota of jobs (`--generate-per-minute`).
    #[error("this caller started its quota of jobs; the next may start in {:.1} s", retry_after.as_secs_f64())]
    Quota { retry_after: std::time::Duration },
}

/// All jobs of this process.
pub struct JobRegistry {
    limits: JobLimits,
    inner: Mutex<Registry>,
    /// Parent of every job's cancellation token: cancelled on shutdown.
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Registry {
    jobs: HashMap<String, Arc<Job>>,
    by_key: HashMap<String, String>,
    /// Job ids in creation order, for eviction.
    order: Vec<String>,
}

impl JobRegistry {
    pub fn new(limits: JobLimits, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::new(Registry::default()),
            shutdown,
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.inner)
    }

    /// The job of this request's idempotency key if there is one (`false`), else a new
    /// job (`true`) that the caller must start, when `accept_new`.
    /// `admit` runs only when a new job is needed, and may refuse it (draining, queue full).
    /// A new job is called `id`.
    pub fn create_or_attach(
        &self,
        request: JobRequest,
        owner: Option<Principal>,
        id: String,
        admit: impl FnOnce() -> Result<(), AttachError>,
    ) -> Result<(Arc<Job>, bool), AttachError> {
        let mut registry = self.registry();
        let scoped_key = |key: &str| scoped_key(owner.as_ref(), key);
        if let Some(key) = &request.idempotency_key
            && let Some(job) = registry
                .by_key
                .get(&scoped_key(key))
                .and_then(|id| registry.jobs.get(id))
                .filter(|job| job.reattachable())
        {
            if *job.request != request {
                return Err(AttachError::KeyReused(job.id.clone()));
            }
            return Ok((job.clone(), false));
        }
        self.evict(&mut registry, true);
        if registry.jobs.len() >= self.limits.max_jobs {
            return Err(AttachError::Full(registry.jobs.len()));
        }
        admit()?;
        let key = request.idempotency_key.as_deref().map(scoped_key);
        let job = Arc::new(Job::new(
            id.clone(),
            Arc::new(request),
            owner,
            &self.shutdown,
        ));
        registry.jobs.insert(id.clone(), job.clone());
        registry.order.push(id.clone());
        if let Some(key) = key {
            registry.by_key.insert(key, id);
        }
        Ok((job, true))
    }

    /// Drops finished jobs past their TTL, and the oldest finished ones while over capacity
    /// (making room for one more when `room_for_one`).
    fn evict(&self, registry: &mut Registry, room_for_one: bool) {
        let now = Instant::now();
        let room = usize::from(room_for_one);
        let mut over = registry
            .jobs
            .len()
            .saturating_sub(self.limits.max_jobs.saturating_sub(room));
        let mut keep = Vec::with_capacity(registry.order.len());
        for id in std::mem::take(&mut registry.order) {
            let finished = registry.jobs.get(&id).and_then(|j| j.finished_at());
            let expired = finished.is_some_and(|at| now.duration_since(at) >= self.limits.job_ttl);
            if expired || (over > 0 && finished.is_some()) {
                over = over.saturating_sub(1);
                if registry.jobs.remove(&id).is_some() {
                    registry.by_key.retain(|_, job| *job != id);
                }
            } else {
                keep.push(id);
            }
        }
        registry.order = keep;
    }

    /// Whether a job of this process holds the (scoped) idempotency key.
    pub fn holds_key(&self, scoped: &str) -> bool {
        let registry = self.registry();
        registry
            .by_key
            .get(scoped)
            .and_then(|id| registry.jobs.get(id))
            .is_some_and(|job| job.reattachable())
    }

    /// The job `id`, if `caller` may see it: its owner, or anyone when it has none. Another
    /// key's job is not found, so a job id leaked in a log is no capability.
    pub fn get(&self, id: &str, caller: Option<&Principal>) -> Option<Arc<Job>> {
        self.registry()
            .jobs
            .get(id)
            .filter(|job| job.owner.is_none() || job.owner.as_ref() == caller)
            .cloned()
    }

    /// Every job in memory, running or finished.
    pub fn all(&self) -> Vec<Arc<Job>> {
        self.registry().jobs.values().cloned().collect()
    }

    /// (jobs, bytes their logs hold) for running and for finished jobs.
    pub fn retained(&self) -> [(usize, usize); 2] {
        let jobs: Vec<Arc<Job>> = self.registry().jobs.values().cloned().collect();
        let mut totals = [(0, 0); 2];
        for job in jobs {
            let slot = &mut totals[usize::from(job.is_finished())];
            slot.0 += 1;
            slot.1 += job.retained_bytes();
        }
        totals
    }

    /// Drops finished jobs past their TTL now (also done whenever a job is created).
    pub fn expire(&self) {
        self.evict(&mut self.registry(), false);
    }

    /// How often finished jobs are checked for expiry.
    pub fn expiry_period(&self) -> Duration {
        (self.limits.job_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Drops finished jobs past their TTL on a timer, not only when a new job needs their
    /// room, until `stop`.
    pub async fn expire_periodically(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.expiry_period());
        loop {
            tokio::select! {
                _ = tick.tick() => self.expire(),
                () = stop.cancelled() => return,
            }
        }
    }

    pub fn running(&self) -> usize {
        self.registry()
            .jobs
            .values()
            .filter(|j| !j.is_finished())
            .count()
    }

    /// Cancels every running job (shutdown after the grace period).
    pub fn cancel_all(&self) {
        self.shutdown.cancel();
    }

    /// A stream of the job's events after `after`, live until the job ends. When the last
    /// follower of a running job goes away, the job is cancelled: at once, or after the
    /// detach grace if it has an idempotency key (its client said it would come back).
    ///
    /// The stream reads the log as the client takes events (HTTP/2 flow control is the
    /// backpressure): no task and no channel per follower.
    pub fn follow(
        self: &Arc<Self>,
        job: Arc<Job>,
        after: u64,
    ) -> impl Stream<Item = Result<GenerateEvent, Status>> + Send + 'static {
        job.watchers.fetch_add(1, Ordering::SeqCst);
        job.attachments.fetch_add(1, Ordering::SeqCst);
        let follower = Follower {
            changes: job.last_sequence.subscribe(),
            registry: self.clone(),
            job,
            after,
            cursor: after,
            pending: VecDeque::new(),
            ended: false,
        };
        futures_util::stream::unfold(follower, |mut follower| async move {
            let event = follower.next().await?;
            Some((Ok(event), follower))
        })
    }

    fn unfollow(&self, job: &Arc<Job>) {
        if job.watchers.fetch_sub(1, Ordering::SeqCst) != 1 || job.is_finished() {
            return;
        }
        let grace = if job.request.idempotency_key.is_some() {
            self.limits.detach_grace
        } else {
            Duration::ZERO
        };
        if grace.is_zero() {
            tracing::info!(job_id = %job.id, "last watcher left; cancelling job");
            job.cancel.cancel();
            return;
        }
        let job = job.clone();
        let attachments = job.attachments.load(Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = job.cancel.cancelled() => return,
            }
            // Only the timer of the latest detach acts: anyone who re-attached (and perhaps
            // left again, starting a newer timer) resets the clock.
            if job.attachments.load(Ordering::SeqCst) == attachments
                && job.watchers.load(Ordering::SeqCst) == 0
                && !job.is_finished()
            {
                tracing::info!(job_id = %job.id, ?grace, "nobody re-attached; cancelling job");
                job.cancel.cancel();
            }
        });
    }
}

/// One follower's place in a job's log. Dropped (the stream ended, or its client went
/// away), it counts itself out of the job's watchers.
struct Follower {
    registry: Arc<JobRegistry>,
    job: Arc<Job>,
    changes: watch::Receiver<u64>,
    /// Where the follower asked to start: the final event is replayed if it is not after it.
    after: u64,
    cursor: u64,
    /// Events read from the log and not yet taken.
    pending: VecDeque<GenerateEvent>,
    ended: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<GenerateEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.cursor = self.cursor.max(event.sequence);
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let (events, last) = self.job.events_after(self.cursor, FOLLOWER_BUFFER);
            let caught_up = events.len() < FOLLOWER_BUFFER;
            self.pending.extend(events);
            if !caught_up {
                continue; // more of the log to read before waiting
            }
            if let Some(last) = last {
                // Every stream ends with the final event: replayed when the follower asked
                // for events after it.
                if last.sequence <= self.after {
                    self.pending.push_back(last);
                }
                self.ended = true;
            } else if self.pending.is_empty() && self.changes.changed().await.is_err() {
                self.ended = true;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.registry.unfollow(&self.job);
    }
}

impl Job {
    /// Waits until the job has ended, or `limit` has passed.
    pub async fn wait_finished(&self, limit: Duration) {
        let mut changes = self.last_sequence.subscribe();
        let _ = tokio::time::timeout(limit, async {
            while !self.is_finished() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str) -> JobRequest {
        JobRequest {
            topic: "Private credit".into(),
            slug: "private-credit".into(),
            word_count: 1500,
            audience: String::new(),
            tone: String::new(),
            custom_instructions: String::new(),
            include_social: true,
            include_summary: true,
            skip_web_search: false,
            idempotency_key: Some(key.into()),
            max_total_tokens: None,
        }
    }

    fn new_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn registry() -> Arc<JobRegistry> {
        JobRegistry::new(
            JobLimits {
                max_jobs: 10,
                job_ttl: Duration::from_secs(60),
                detach_grace: Duration::from_secs(1),
            },
            CancellationToken::new(),
        )
    }

    #[test]
    fn only_running_and_completed_jobs_keep_their_key() -> Result<(), AttachError> {
        let registry = registry();
        let (first, created) =
            registry.create_or_attach(request("k"), None, new_id(), || Ok(()))?;
        assert!(created);
        let (same, created) = registry.create_or_attach(request("k"), None, new_id(), || Ok(()))?;
        assert!(!created && same.id == first.id, "running: re-attached");
        first.fail(Code::DeadlineExceeded, "deadline", "writing");
        let (second, created) =
            registry.create_or_attach(request("k"), None, new_id(), || Ok(()))?;
        assert!(created && second.id != first.id, "failed: a new job");
        second.emit(Event::Completed(api::Completed::default()), 100);
        let (third, created) =
            registry.create_or_attach(request("k"), None, new_id(), || Ok(()))?;
        assert!(!created && third.id == second.id, "completed: re-attached");
        Ok(())
    }

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

    #[test]
    fn a_job_failed_by_shutdown_answers_with_retry_info() -> Result<(), AttachError> {
        use tonic_types::StatusExt;
        let registry = registry();
        let (job, _) = registry.create_or_attach(request("k"), None, new_id(), || Ok(()))?;
        job.end_failed(api::Failed {
            code: Code::Unavailable as i32,
            message: "server shutting down".into(),
            phase: "writing".into(),
            retry_delay: prost_types::Duration::try_from(Duration::from_secs(1)).ok(),
        });
        let status = job.article().err().unwrap_or_else(|| Status::ok(""));
        assert_eq!(status.code(), Code::Unavailable);
        let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
        assert_eq!(retry, Some(Duration::from_secs(1)));
        Ok(())
    }
}
