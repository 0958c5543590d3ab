//! Jobs in memory: each job's event log, its live followers, idempotent re-attach,
//! cancellation when abandoned, and eviction of finished jobs.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::{lock, pipeline::JobRequest};
use dakota::api::{self, GenerateEvent, JobState, generate_event::Event};

/// Events buffered per follower before the follower's stream applies back-pressure.
const FOLLOWER_BUFFER: usize = 64;

/// One job: its request, its event log and what it ended with.
pub struct Job {
    pub id: String,
    pub request: Arc<JobRequest>,
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

#[derive(Default)]
struct JobLog {
    events: Vec<GenerateEvent>,
    progress: u32,
    state: JobStateKind,
    finished_at: Option<Instant>,
    article: Option<api::Article>,
    failure: Option<api::Failed>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum JobStateKind {
    #[default]
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Job {
    fn new(id: String, request: Arc<JobRequest>, shutdown: &CancellationToken) -> Self {
        Self {
            id,
            request,
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
        match &event {
            Event::Completed(completed) => {
                log.state = JobStateKind::Completed;
                log.article = completed.article.clone();
            }
            Event::Failed(failed) => {
                let code = Code::from_i32(failed.code);
                log.state = if code == Code::Cancelled {
                    JobStateKind::Cancelled
                } else {
                    JobStateKind::Failed
                };
                log.failure = Some(failed.clone());
            }
            _ => {}
        }
        if log.state != JobStateKind::Running {
            log.finished_at = Some(Instant::now());
        }
        log.progress = log.progress.max(progress.min(100));
        let sequence = log.events.len() as u64 + 1;
        let event = GenerateEvent {
            job_id: self.id.clone(),
            sequence,
            timestamp: Some(SystemTime::now().into()),
            progress: log.progress,
            event: Some(event),
        };
        log.events.push(event);
        drop(log);
        self.last_sequence.send_replace(sequence);
    }

    /// Ends the job with `failed` unless it already ended.
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
        match (&log.article, &log.failure) {
            (Some(article), _) => Ok(article.clone()),
            (None, Some(failed)) => Err(failure_status(failed)),
            (None, None) => Err(Status::failed_precondition(format!(
                "job {} is still running ({}% done); watch it with WatchJob",
                self.id, log.progress
            ))),
        }
    }

    /// Events with a sequence greater than `after`, and the final event once the job has
    /// ended (also when it is not among them: a follower past the end still learns how the
    /// job ended).
    fn events_after(&self, after: u64) -> (Vec<GenerateEvent>, Option<GenerateEvent>) {
        let log = self.log();
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(log.events.len());
        let last = match log.state {
            JobStateKind::Running => None,
            _ => log.events.last().cloned(),
        };
        (log.events[start..].to_vec(), last)
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
    pub fn create_or_attach(
        &self,
        request: JobRequest,
        admit: impl FnOnce() -> Result<(), AttachError>,
    ) -> Result<(Arc<Job>, bool), AttachError> {
        let mut registry = self.registry();
        if let Some(key) = &request.idempotency_key
            && let Some(job) = registry
                .by_key
                .get(key)
                .and_then(|id| registry.jobs.get(id))
                .filter(|job| job.reattachable())
        {
            if *job.request != request {
                return Err(AttachError::KeyReused(job.id.clone()));
            }
            return Ok((job.clone(), false));
        }
        self.evict(&mut registry);
        if registry.jobs.len() >= self.limits.max_jobs {
            return Err(AttachError::Full(registry.jobs.len()));
        }
        admit()?;
        let id = uuid::Uuid::new_v4().to_string();
        let key = request.idempotency_key.clone();
        let job = Arc::new(Job::new(id.clone(), Arc::new(request), &self.shutdown));
        registry.jobs.insert(id.clone(), job.clone());
        registry.order.push(id.clone());
        if let Some(key) = key {
            registry.by_key.insert(key, id);
        }
        Ok((job, true))
    }

    /// Drops finished jobs past their TTL, and the oldest finished ones while over capacity.
    fn evict(&self, registry: &mut Registry) {
        let now = Instant::now();
        let mut over = registry
            .jobs
            .len()
            .saturating_sub(self.limits.max_jobs.saturating_sub(1));
        let mut keep = Vec::with_capacity(registry.order.len());
        for id in std::mem::take(&mut registry.order) {
            let finished = registry.jobs.get(&id).and_then(|j| j.finished_at());
            let expired = finished.is_some_and(|at| now.duration_since(at) >= self.limits.job_ttl);
            if expired || (over > 0 && finished.is_some()) {
                over = over.saturating_sub(1);
                if let Some(job) = registry.jobs.remove(&id)
                    && let Some(key) = &job.request.idempotency_key
                    && registry.by_key.get(key) == Some(&id)
                {
                    registry.by_key.remove(key);
                }
            } else {
                keep.push(id);
            }
        }
        registry.order = keep;
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.registry().jobs.get(id).cloned()
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
    pub fn follow(
        self: &Arc<Self>,
        job: Arc<Job>,
        after: u64,
    ) -> ReceiverStream<Result<GenerateEvent, Status>> {
        let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
        job.watchers.fetch_add(1, Ordering::SeqCst);
        job.attachments.fetch_add(1, Ordering::SeqCst);
        let registry = self.clone();
        tokio::spawn(async move {
            let mut changes = job.last_sequence.subscribe();
            let mut cursor = after;
            'follow: loop {
                let (events, last) = job.events_after(cursor);
                for event in events {
                    cursor = cursor.max(event.sequence);
                    if tx.send(Ok(event)).await.is_err() {
                        break 'follow;
                    }
                }
                if let Some(last) = last {
                    // Every stream ends with the final event: replayed when the follower
                    // asked for events after it.
                    if last.sequence <= after {
                        let _ = tx.send(Ok(last)).await;
                    }
                    break;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
            }
            registry.unfollow(&job);
        });
        ReceiverStream::new(rx)
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
        let (first, created) = registry.create_or_attach(request("k"), || Ok(()))?;
        assert!(created);
        let (same, created) = registry.create_or_attach(request("k"), || Ok(()))?;
        assert!(!created && same.id == first.id, "running: re-attached");
        first.fail(Code::DeadlineExceeded, "deadline", "writing");
        let (second, created) = registry.create_or_attach(request("k"), || Ok(()))?;
        assert!(created && second.id != first.id, "failed: a new job");
        second.emit(Event::Completed(api::Completed::default()), 100);
        let (third, created) = registry.create_or_attach(request("k"), || Ok(()))?;
        assert!(!created && third.id == second.id, "completed: re-attached");
        Ok(())
    }

    #[test]
    fn a_job_failed_by_shutdown_answers_with_retry_info() -> Result<(), AttachError> {
        use tonic_types::StatusExt;
        let registry = registry();
        let (job, _) = registry.create_or_attach(request("k"), || Ok(()))?;
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
