//! A job's life in one place: its admission (a place among the running and queued jobs), the
//! task it runs in, its job slot, its deadline and cancellation, one panic guard, its final
//! event and the metrics of its end, and its article folder. The pipeline only runs phases.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tracing::Instrument;

use super::{AttachError, Job};
use crate::{
    agents::Agents,
    domain::JobEvents,
    metrics::{self, Metrics},
    pipeline::{self, PipelineRun, PipelineSettings, proto_duration},
};
use dakota::api::{self, generate_event::Event};

/// Largest request or response message the server sends or takes.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Room in a message for what travels with an article (the event's id, sequence, timestamp).
const MESSAGE_MARGIN_BYTES: usize = 64 * 1024;

const SHUTDOWN_MESSAGE: &str =
    "server shutting down; retry (with the same idempotency key) on another replica";
/// When a job stopped by a shutdown may be retried.
const SHUTDOWN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Runs jobs: as many at once as there are job slots (`--max-running-jobs`), the others
/// queued up to `--max-queued-jobs`.
pub struct JobRunner {
    /// Job slots; jobs without one wait in the queue.
    slots: Arc<Semaphore>,
    max_running: usize,
    /// Jobs running or queued, bounded by `capacity` (running + queued).
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    settings: PipelineSettings,
    output_dir: Option<PathBuf>,
    /// Every job's task (and the shared-jobs publishers), waited for at shutdown.
    tasks: TaskTracker,
}

/// A job's place among the admitted (running or queued) jobs, given back when dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl JobRunner {
    pub fn new(
        max_running: usize,
        max_queued: usize,
        settings: PipelineSettings,
        output_dir: Option<PathBuf>,
    ) -> Self {
        let max_running = max_running.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max_running)),
            max_running,
            admitted: Arc::default(),
            capacity: max_running + max_queued,
            settings,
            output_dir,
            tasks: TaskTracker::new(),
        }
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Takes a place for a new job, running or queued; refuses when both are full.
    pub fn admit(&self) -> Result<(), AttachError> {
        self.admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|admitted| {
                let running = self.running_jobs();
                AttachError::QueueFull {
                    running,
                    queued: admitted.saturating_sub(running),
                }
            })
    }

    pub fn running_jobs(&self) -> usize {
        self.max_running
            .saturating_sub(self.slots.available_permits())
    }

    pub fn queued_jobs(&self) -> usize {
        self.admitted
            .load(Ordering::SeqCst)
            .saturating_sub(self.running_jobs())
    }

    /// Runs an admitted job in a task of its own, inside `span` (the `Generate` server span,
    /// so its trace holds it whole), and writes its folder when configured.
    pub fn spawn(
        &self,
        job: Arc<Job>,
        agents: Agents,
        deadline: Option<Duration>,
        span: tracing::Span,
    ) {
        let settings = self.settings.clone();
        let output_dir = self.output_dir.clone();
        let slots = self.slots.clone();
        settings.metrics.jobs_started.inc();
        let ticket = Admitted(self.admitted.clone());
        let task = async move {
            let article = run(job.clone(), agents, settings, deadline, slots, ticket).await;
            tracing::info!(job_id = %job.id, state = ?job.state(), "job ended");
            if let (Some(dir), Some(article)) = (output_dir, article) {
                write_folder(&job.id, dir, article).await;
            }
        };
        self.tasks.spawn(task.instrument(span));
    }
}

/// Runs a job to its end: `completed`, or `failed` with the status of what went wrong, of a
/// cancellation, of the passed deadline, or of a panic. Dropping the pipeline future on
/// cancellation drops every in-flight agent call with it.
async fn run(
    job: Arc<Job>,
    agents: Agents,
    settings: PipelineSettings,
    deadline: Option<Duration>,
    slots: Arc<Semaphore>,
    ticket: Admitted,
) -> Option<api::Article> {
    let started = Instant::now();
    let metrics = settings.metrics.clone();
    let events: Arc<dyn JobEvents> = job.clone();
    let pipeline = PipelineRun::new(events, agents, settings, deadline);
    // The plan goes out first, whatever happens next, so every stream starts with it.
    job.emit(Event::JobStarted(pipeline::job_started(&job.request)), 0);
    let work = async {
        // A job slot for the whole run; while none is free the job waits in the queue
        // (cancellation and the deadline apply there too).
        let _slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                pipeline.queued();
                slots
                    .acquire_owned()
                    .await
                    .map_err(|_| (Code::Internal, "job slots closed".to_string()))?
            }
        };
        pipeline.execute().await
    };
    // A panic anywhere in the job ends it with INTERNAL instead of leaving its watchers
    // waiting for an end that never comes (and its slot taken).
    let work = std::panic::AssertUnwindSafe(work).catch_unwind();
    let ended: Result<api::Article, (Code, String)> = tokio::select! {
        result = async {
            match deadline {
                Some(limit) => tokio::time::timeout(limit, work).await.ok(),
                None => Some(work.await),
            }
        } => match result {
            None => Err((Code::DeadlineExceeded, "the request deadline passed before the article was finished".into())),
            Some(Err(_panic)) => {
                tracing::error!(job_id = %job.id, "the job panicked");
                Err((Code::Internal, "internal error: the pipeline failed unexpectedly".into()))
            }
            Some(Ok(ended)) => ended,
        },
        () = job.cancel.cancelled() => Err(if job.stopped_by_shutdown() {
            (Code::Unavailable, SHUTDOWN_MESSAGE.into())
        } else {
            (Code::Cancelled, "job cancelled".into())
        }),
    };
    // Accounted before the final event: a client that resubmits on seeing it finds room.
    drop(ticket);
    metrics
        .job_duration
        .observe(started.elapsed().as_secs_f64());
    end(&job, &metrics, pipeline.current_phase(), ended)
}

/// The job's final event and its metrics: `completed` with the article, or `failed`.
fn end(
    job: &Job,
    metrics: &Metrics,
    phase: &str,
    ended: Result<api::Article, (Code, String)>,
) -> Option<api::Article> {
    match ended.and_then(deliverable) {
        Ok(article) => {
            metrics.jobs_completed.inc();
            job.emit(
                Event::Completed(api::Completed {
                    article: Some(article.clone()),
                }),
                100,
            );
            Some(article)
        }
        Err((code, message)) => {
            let name = dakota::output::code_name(code);
            metrics
                .jobs_failed
                .get_or_create(&metrics::Code { code: name })
                .inc();
            // A job stopped by a shutdown can succeed elsewhere: the caller is told when to
            // retry, and its idempotency key starts the job again.
            let retry_delay = (code == Code::Unavailable && job.stopped_by_shutdown())
                .then(|| proto_duration(SHUTDOWN_RETRY_DELAY))
                .flatten();
            job.end_failed(api::Failed {
                code: code as i32,
                message,
                phase: phase.to_string(),
                retry_delay,
            });
            None
        }
    }
}

/// The article, if its `completed` event and `GetArticle`'s answer fit in one gRPC message:
/// a final event that cannot be sent would leave the caller with `RESOURCE_EXHAUSTED`
/// instead of an end, so the job fails with a status that says why instead.
fn deliverable(article: api::Article) -> Result<api::Article, (Code, String)> {
    use prost::Message;
    let size = article.encoded_len();
    if size + MESSAGE_MARGIN_BYTES > MAX_MESSAGE_BYTES {
        return Err((
            Code::ResourceExhausted,
            format!(
                "the finished article is {size} bytes encoded, over what one gRPC message carries ({} bytes); ask for fewer words",
                MAX_MESSAGE_BYTES - MESSAGE_MARGIN_BYTES
            ),
        ));
    }
    Ok(article)
}

/// The article folder under `--output-dir` (SPEC §7), off the async executor.
async fn write_folder(job_id: &str, dir: PathBuf, article: api::Article) {
    let written =
        tokio::task::spawn_blocking(move || dakota::output::write_article(&dir, &article)).await;
    match written {
        Ok(Ok(folder)) => {
            tracing::info!(job_id, folder = %folder.display(), "article written")
        }
        Ok(Err(error)) => {
            tracing::warn!(job_id, %error, "could not write the article folder")
        }
        Err(error) => tracing::warn!(job_id, %error, "article writer failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_article_over_the_message_limit_fails_its_job_with_a_status_that_says_why() {
        let small = api::Article {
            markdown: "# Title\n\nText.".into(),
            ..Default::default()
        };
        assert!(deliverable(small).is_ok());
        let huge = api::Article {
            markdown: "word ".repeat(MAX_MESSAGE_BYTES / 5),
            ..Default::default()
        };
        let (code, message) = deliverable(huge).unwrap_err();
        assert_eq!(code, Code::ResourceExhausted);
        assert!(
            message.contains("over what one gRPC message carries"),
            "{message}"
        );
    }
}
