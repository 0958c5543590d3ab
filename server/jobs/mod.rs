//! Jobs in memory: each job's event log, its live followers, idempotent re-attach,
//! cancellation when abandoned, and eviction of finished jobs.
//!
//! Here the job itself; `log` its event log (compact, then sealed) and the job's writes to and
//! reads of it; `registry` every job of the process, by id and idempotency key, and their
//! eviction; `follow` the stream a follower reads; `runner` a job's life from admission to
//! its final event; `shared` jobs any replica can serve, through Redis.
use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::{
    domain::{JobRequest, Principal},
    lock,
};
use dakota::api::{self, JobState, generate_event::Event};

mod follow;
mod log;
mod registry;
pub mod runner;
pub mod shared;

use log::{JobLog, JobStateKind};
pub use registry::{AttachError, JobLimits, JobRegistry, scoped_key};

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

    fn emit(&self, event: Event, progress: u32) {
        Job::emit(self, event, progress);
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn request(key: &str) -> JobRequest {
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

    pub(super) fn new_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    pub(super) fn registry() -> Arc<JobRegistry> {
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
