//! The other replicas' side of a shared job: found, followed (the watcher, which declares a
//! runner gone when its lease lapses, and takes the job over), fetched and cancelled.
use std::{sync::Arc, time::Duration};

use prost::Message;
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::{
    SharedJobs, final_event, fingerprint, key, millis,
    scripts::{TAKE_OVER, eval},
};
use crate::{
    domain::{JobRequest, Principal},
    jobs::{failure_status, follow::FOLLOWER_BUFFER},
};
use dakota::api::{self, GenerateEvent, JobState, generate_event::Event};

/// How often a watcher catching up, or a `CancelJob` waiting for the end, asks again while
/// Redis does not answer (once caught up, a watcher is the reader's: see `fanout`).
const POLL: Duration = Duration::from_millis(100);
/// How long a watcher waits for a Redis that does not answer before it tells its client
/// (at least three leases): a pause of a few seconds is waited out, not reported.
pub(super) const WATCH_PATIENCE: Duration = Duration::from_secs(15);
/// After Redis answers again, how long a live runner may take to renew its lease: its own
/// Redis breaker's cool-down, then a renew tick.
pub(super) const RUNNER_GRACE: Duration = Duration::from_secs(3);

/// A job as Redis knows it.
#[derive(Debug, Clone)]
pub struct RemoteJob {
    pub id: String,
    owner: String,
    fingerprint: String,
}

impl RemoteJob {
    /// Whether `caller` may see it: its owner, or anyone when it has none.
    pub fn visible_to(&self, caller: Option<&Principal>) -> bool {
        self.owner.is_empty() || caller.is_some_and(|c| c.0 == self.owner)
    }
}

/// Whether `SharedJobs::reattachable` lets a retried `Generate` follow the job.
#[derive(Debug, PartialEq, Eq)]
pub enum Reattach {
    Yes,
    /// The key was used for a different request.
    KeyReused,
    /// Failed, or its runner is gone: the key starts a new job.
    No,
}

impl SharedJobs {
    /// The job `id` if Redis knows it; an error when Redis does not answer (the job may
    /// well exist: "not found" would be a lie).
    pub async fn find(&self, id: &str) -> Result<Option<RemoteJob>, Status> {
        let name = key(id, "meta");
        let (owner, fingerprint): (Option<String>, Option<String>) = self
            .redis
            .run("get", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(name)
                    .arg("owner")
                    .arg("request")
                    .query_async(&mut c)
                    .await
            })
            .await
            .ok_or_else(store_unavailable)?;
        Ok(owner.map(|owner| RemoteJob {
            id: id.to_string(),
            owner,
            fingerprint: fingerprint.unwrap_or_default(),
        }))
    }

    /// Whether a retried `Generate` re-attaches to `job` (running on a live replica, or
    /// completed), and whether it asked for the same thing.
    pub async fn reattachable(&self, job: &RemoteJob, request: &JobRequest) -> Reattach {
        let live = match self.last_event(&job.id).await {
            Some(Some(event)) if final_event(&event) => {
                matches!(event.event, Some(Event::Completed(_)))
            }
            // Running: only while its runner lives.
            Some(_) => self.lease_held(&job.id).await != Some(false),
            None => false,
        };
        // As in one process: a live job's key used for another request is refused.
        match (live, job.fingerprint == fingerprint(request)) {
            (false, _) => Reattach::No,
            (true, true) => Reattach::Yes,
            (true, false) => Reattach::KeyReused,
        }
    }

    async fn lease_held(&self, id: &str) -> Option<bool> {
        let name = key(id, "lease");
        self.redis
            .run("lease", |mut c| async move { c.exists(name).await })
            .await
    }

    /// The job's latest event: `None` if Redis did not answer, `Some(None)` before the first.
    async fn last_event(&self, id: &str) -> Option<Option<GenerateEvent>> {
        let name = key(id, "events");
        let reply: redis::streams::StreamRangeReply = self
            .redis
            .run("xrange", |mut c| async move {
                c.xrevrange_count(name, "+", "-", 1).await
            })
            .await?;
        Some(reply.ids.first().and_then(decode))
    }

    /// Events after `after`, at most `count`: `None` if Redis did not answer.
    async fn events_after(&self, id: &str, after: u64, count: usize) -> Option<Vec<GenerateEvent>> {
        let name = key(id, "events");
        let reply: redis::streams::StreamRangeReply = self
            .redis
            .run("xrange", |mut c| async move {
                c.xrange_count(name, format!("(0-{after}"), "+", count)
                    .await
            })
            .await?;
        Some(reply.ids.iter().filter_map(decode).collect())
    }

    async fn stored_article(&self, id: &str) -> Option<Option<api::Article>> {
        let name = key(id, "article");
        let bytes: Option<Vec<u8>> = self
            .redis
            .run("get", |mut c| async move { c.get(name).await })
            .await?;
        Some(bytes.and_then(|b| api::Article::decode(b.as_slice()).ok()))
    }
    /// A watcher's side: the events of a job running (or run) on another replica, after
    /// `after`, live until the final one; a final `failed` UNAVAILABLE when its runner's lease
    /// lapses before the job ended.
    pub fn follow(
        self: &Arc<Self>,
        job: RemoteJob,
        after: u64,
    ) -> ReceiverStream<Result<GenerateEvent, Status>> {
        let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
        let shared = self.clone();
        tokio::spawn(async move {
            let end = shared.watch(&job.id, after, tx.clone()).await;
            if let Err(status) = end {
                let _ = tx.send(Err(status)).await;
            }
        });
        ReceiverStream::new(rx)
    }

    /// Catches up on the events after `after` with range reads, then hands the watcher to
    /// this replica's reader (`fanout`), which blocks for the rest.
    async fn watch(
        self: &Arc<Self>,
        id: &str,
        after: u64,
        tx: mpsc::Sender<Result<GenerateEvent, Status>>,
    ) -> Result<(), Status> {
        let mut cursor = after;
        let mut unanswered = tokio::time::Instant::now();
        loop {
            let Some(events) = self.events_after(id, cursor, FOLLOWER_BUFFER).await else {
                if unanswered.elapsed() > (self.lease * 3).max(WATCH_PATIENCE) {
                    return Err(store_unavailable());
                }
                tokio::time::sleep(POLL).await;
                continue;
            };
            unanswered = tokio::time::Instant::now();
            let caught_up = events.len() < FOLLOWER_BUFFER;
            for event in events {
                cursor = event.sequence;
                let done = final_event(&event);
                let event = self.with_article(id, event).await;
                if tx.send(Ok(event)).await.is_err() || done {
                    return Ok(());
                }
            }
            if caught_up {
                break;
            }
        }
        // At or past the end: the final event again, as the local follower does.
        if cursor == after
            && let Some(Some(last)) = self.last_event(id).await
            && final_event(&last)
        {
            let _ = tx.send(Ok(self.with_article(id, last).await)).await;
            return Ok(());
        }
        self.subscribe(id, cursor, tx).await;
        Ok(())
    }

    /// Takes over the lease of job `id` (not ended, lease gone): then this replica, and no
    /// other, may write its end.
    pub(super) async fn take_over(&self, id: &str) -> bool {
        let keys = [key(id, "lease"), key(id, "meta")];
        let args = vec![
            self.replica.clone().into_bytes(),
            millis(self.lease).to_string().into_bytes(),
        ];
        let taken: Option<i64> = self
            .redis
            .run("lease", |mut c| async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                eval(TAKE_OVER, &keys, args).query_async(&mut c).await
            })
            .await;
        taken == Some(1)
    }

    /// The runner's lease lapsed before the job ended and this replica took it over: the
    /// runner stopped (killed, or cut off from Redis). The watcher ends with `failed`
    /// UNAVAILABLE, recorded in the stream so every replica tells the same end, and the
    /// idempotency key may start the job again.
    pub(super) async fn runner_gone(&self, id: &str) -> Option<()> {
        // The runner may have published its end just before its lease went.
        let last = self.last_event(id).await?;
        if last.as_ref().is_some_and(final_event) {
            self.release(id).await;
            return Some(());
        }
        let (sequence, progress) = last.map_or((1, 0), |e| (e.sequence + 1, e.progress));
        let failed = GenerateEvent {
            job_id: id.to_string(),
            sequence,
            progress,
            timestamp: Some(std::time::SystemTime::now().into()),
            event: Some(Event::Failed(api::Failed {
                code: Code::Unavailable as i32,
                message: "the replica running the job stopped before it finished; start it again (the same idempotency key starts a new attempt)".into(),
                phase: String::new(),
                retry_delay: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })),
        };
        let appended = self.append(id, vec![failed]).await;
        self.release(id).await;
        appended.map(|_| ())
    }

    pub(super) async fn with_article(&self, id: &str, mut event: GenerateEvent) -> GenerateEvent {
        if let Some(Event::Completed(completed)) = &mut event.event
            && completed.article.is_none()
        {
            completed.article = self.stored_article(id).await.flatten();
        }
        event
    }

    /// `GetArticle` for a job of another replica.
    pub async fn article(&self, job: &RemoteJob) -> Result<api::Article, Status> {
        if let Some(article) = self
            .stored_article(&job.id)
            .await
            .ok_or_else(store_unavailable)?
        {
            return Ok(article);
        }
        match self
            .last_event(&job.id)
            .await
            .ok_or_else(store_unavailable)?
        {
            Some(GenerateEvent {
                event: Some(Event::Failed(failed)),
                ..
            }) => Err(failure_status(&failed)),
            last => Err(Status::failed_precondition(format!(
                "job {} is still running ({}% done); watch it with WatchJob",
                job.id,
                last.map_or(0, |e| e.progress)
            ))),
        }
    }

    /// `CancelJob` for a job of another replica: asks its runner to stop, and waits a little
    /// for the end it records.
    pub async fn cancel(&self, job: &RemoteJob) -> Result<JobState, Status> {
        let (name, ttl) = (key(&job.id, "cancel"), millis(self.ttl));
        self.redis
            .run("cancel", |mut c| async move {
                c.pset_ex::<_, _, ()>(name, 1, ttl).await
            })
            .await
            .ok_or_else(store_unavailable)?;
        let give_up = tokio::time::Instant::now() + self.lease + Duration::from_secs(1);
        loop {
            if let Some(Some(last)) = self.last_event(&job.id).await
                && final_event(&last)
            {
                return Ok(state_of(&last));
            }
            if tokio::time::Instant::now() >= give_up {
                return Ok(JobState::Running);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What a watcher has seen of a runner's lease: since when it has been missing while Redis
/// answered every look. A lease that lapsed while Redis itself was away says nothing (the
/// runner could not renew), so Redis going away starts the count again.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    missing_since: Option<tokio::time::Instant>,
}

impl Liveness {
    pub(super) fn seen(&mut self) {
        self.missing_since = None;
    }

    pub(super) fn redis_away(&mut self) {
        self.missing_since = None;
    }

    /// Called on a look that found no lease: how long it has been missing.
    pub(super) fn missing_for(&mut self) -> Duration {
        self.missing_since
            .get_or_insert_with(tokio::time::Instant::now)
            .elapsed()
    }
}

pub(super) fn store_unavailable() -> Status {
    Status::unavailable("the shared job store (Redis) does not answer; retry shortly")
}

pub(super) fn decode(entry: &redis::streams::StreamId) -> Option<GenerateEvent> {
    let bytes: Vec<u8> = entry.get("e")?;
    GenerateEvent::decode(bytes.as_slice()).ok()
}

fn state_of(event: &GenerateEvent) -> JobState {
    match &event.event {
        Some(Event::Completed(_)) => JobState::Completed,
        Some(Event::Failed(f)) if f.code == Code::Cancelled as i32 => JobState::Cancelled,
        Some(Event::Failed(_)) => JobState::Failed,
        _ => JobState::Running,
    }
}
