//! Jobs any replica can serve (with Redis): the replica that runs a job publishes its events
//! to a Redis Stream and its article to a key, holds a lease it renews, and watches for a
//! cancel sent to any replica; the others follow, fetch and cancel it through Redis.
//!
//! Keys, all `dakota:v1:job:<id>:<part>` and kept for the job TTL:
//! - `events`: a Stream, one entry per event, its id `0-<sequence>` (so "after sequence N" is
//!   an exclusive range read), the field `e` the event in protobuf (a `completed` event
//!   without its article, which is kept once, in `article`);
//! - `article`: the finished `Article` in protobuf;
//! - `meta`: a hash of the owner (the caller's key id, or empty) and the request fingerprint;
//! - `lease`: the runner's replica id, expiring after the lease period unless renewed;
//! - `cancel`: set by `CancelJob` on any replica.
//!
//! And `dakota:v1:idem:<caller>:<key>` maps an idempotency key to its job (`SET NX`).
//!
//! Publishing never holds up the job: the runner's in-memory log is the source, a publisher
//! task copies it to Redis in pipelined batches, and when Redis is down the job goes on in
//! memory (one warning) and the publisher catches up when it answers again.
use std::{sync::Arc, time::Duration};

use prost::Message;
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::{Job, failure_status};
use crate::{auth::Principal, pipeline::JobRequest, redis::Redis};
use dakota::api::{self, GenerateEvent, JobState, generate_event::Event};

/// Events copied to Redis per round trip at most.
const BATCH: usize = 256;
/// How often a watcher on another replica reads the stream. Blocking reads (`XREAD BLOCK`)
/// would stall the shared multiplexed connection, so watchers poll.
const POLL: Duration = Duration::from_millis(100);
/// How long the runner goes on trying to publish a finished job's last events while Redis
/// does not answer (not past the server's shutdown, which waits for the publishers).
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);

pub struct SharedJobs {
    redis: Arc<Redis>,
    /// This process, as named in the leases it holds.
    replica: String,
    ttl: Duration,
    lease: Duration,
    /// The server's shutdown: a finished job's publisher stops waiting for Redis then.
    stop: tokio_util::sync::CancellationToken,
}

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

/// What a job's request is, compared when an idempotency key is reused on another replica.
pub fn fingerprint(request: &JobRequest) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{request:?}").as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn key(id: &str, part: &str) -> String {
    Redis::key("job", &format!("{id}:{part}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl SharedJobs {
    pub fn new(
        redis: Arc<Redis>,
        ttl: Duration,
        lease: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            redis,
            replica: uuid::Uuid::new_v4().to_string(),
            ttl,
            lease,
            stop,
        }
    }

    /// Claims the idempotency key `scoped` for `job_id`. `None`: claimed (or Redis is down,
    /// and this replica decides alone); else the job that holds it.
    pub async fn claim_key(&self, scoped: &str, job_id: &str) -> Option<String> {
        let (name, id, ttl) = (Redis::key("idem", scoped), job_id.to_string(), self.ttl);
        self.redis
            .run("idem", |mut c| async move {
                let claimed: Option<String> = redis::cmd("SET")
                    .arg(&name)
                    .arg(&id)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut c)
                    .await?;
                match claimed {
                    Some(_) => Ok(None),
                    None => c.get(&name).await,
                }
            })
            .await
            .flatten()
    }

    /// Points the idempotency key `scoped` at `job_id` (its former job failed or its runner
    /// is gone).
    pub async fn replace_key(&self, scoped: &str, job_id: &str) {
        let (name, id, ttl) = (Redis::key("idem", scoped), job_id.to_string(), self.ttl);
        self.redis
            .run("idem", |mut c| async move {
                c.pset_ex::<_, _, ()>(name, id, millis(ttl)).await
            })
            .await;
    }

    /// The job `id` if Redis knows it.
    pub async fn find(&self, id: &str) -> Option<RemoteJob> {
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
            .await?;
        Some(RemoteJob {
            id: id.to_string(),
            owner: owner?,
            fingerprint: fingerprint.unwrap_or_default(),
        })
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

    /// Makes a new job known to every replica (its meta and the first lease) before its id
    /// reaches the caller, so a `WatchJob` sent anywhere right after finds it. Bounded by the
    /// Redis timeout; without Redis the job is this replica's alone until it answers.
    pub async fn register(&self, job: &Job, owner: Option<&Principal>) -> bool {
        let (meta, lease) = (key(&job.id, "meta"), key(&job.id, "lease"));
        let owner = owner.map(|p| p.0.clone()).unwrap_or_default();
        let request = fingerprint(&job.request);
        let (replica, lease_ms, ttl) = (self.replica.clone(), millis(self.lease), self.ttl);
        self.redis
            .run("register", |mut c| async move {
                redis::pipe()
                    .hset_multiple(&meta, &[("owner", owner), ("request", request)])
                    .ignore()
                    .pexpire(&meta, millis(ttl) as i64)
                    .ignore()
                    .pset_ex(&lease, replica, lease_ms)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .is_some()
    }

    /// The runner's side: copies `job`'s events to Redis as they come, holds the job's lease
    /// and cancels the job when another replica asks. Ends once the final event is published.
    pub async fn publish(
        self: Arc<Self>,
        job: Arc<Job>,
        owner: Option<Principal>,
        registered: bool,
    ) {
        let mut changes = job.last_sequence.subscribe();
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut cursor, mut warned, mut registered) = (0u64, false, registered);
        let mut finished_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = renew.tick() => {
                    if !registered {
                        registered = self.register(&job, owner.as_ref()).await;
                    }
                    if self.renew(&job).await.is_none() && !warned {
                        warned = true;
                        tracing::warn!(job_id = %job.id, "Redis unavailable: the job goes on in this replica's memory; other replicas cannot serve it until Redis answers");
                    }
                }
            }
            // Nothing goes to the stream before the job's meta: a reader finds both.
            if registered {
                cursor = self.append_after(&job, cursor).await;
            }
            if job.is_finished() {
                let published = job.events_after(cursor, 1).0.is_empty();
                let at = *finished_at.get_or_insert_with(tokio::time::Instant::now);
                if published || at.elapsed() > PUBLISH_PATIENCE || self.stop.is_cancelled() {
                    self.release(&job.id).await;
                    return;
                }
            }
        }
    }

    /// Appends the job's events after `cursor`, batch by batch, as far as Redis takes them;
    /// the new cursor.
    async fn append_after(&self, job: &Job, mut cursor: u64) -> u64 {
        loop {
            let events = job.events_after(cursor, BATCH).0;
            let Some(end) = events.last().map(|e| e.sequence) else {
                return cursor;
            };
            if self.append(&job.id, events).await.is_none() {
                return cursor;
            }
            cursor = end;
        }
    }

    /// Renews the lease and looks for a cancel sent to another replica.
    async fn renew(&self, job: &Job) -> Option<()> {
        let (lease, cancel) = (key(&job.id, "lease"), key(&job.id, "cancel"));
        let (replica, lease_ms) = (self.replica.clone(), millis(self.lease));
        let cancelled: bool = self
            .redis
            .run("lease", |mut c| async move {
                let (cancelled,): (bool,) = redis::pipe()
                    .pset_ex(&lease, replica, lease_ms)
                    .ignore()
                    .exists(&cancel)
                    .query_async(&mut c)
                    .await?;
                Ok(cancelled)
            })
            .await?;
        if cancelled && !job.is_finished() {
            tracing::info!(job_id = %job.id, "cancelled from another replica");
            job.cancel.cancel();
        }
        Some(())
    }

    /// Appends events in one pipeline; a `completed` event's article goes to its own key
    /// first, so a reader that sees the event finds the article.
    async fn append(&self, id: &str, events: Vec<GenerateEvent>) -> Option<()> {
        let (stream, article, meta) = (key(id, "events"), key(id, "article"), key(id, "meta"));
        let ttl = millis(self.ttl) as i64;
        self.redis
            .run("xadd", |mut c| async move {
                let mut pipe = redis::pipe();
                for mut event in events {
                    if let Some(Event::Completed(completed)) = &mut event.event
                        && let Some(finished) = completed.article.take()
                    {
                        pipe.pset_ex(&article, finished.encode_to_vec(), ttl as u64)
                            .ignore();
                    }
                    pipe.xadd(
                        &stream,
                        format!("0-{}", event.sequence),
                        &[("e", event.encode_to_vec())],
                    )
                    .ignore();
                }
                pipe.pexpire(&stream, ttl)
                    .ignore()
                    .pexpire(&meta, ttl)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    async fn release(&self, id: &str) {
        let lease = key(id, "lease");
        self.redis
            .run("lease", |mut c| async move { c.del::<_, ()>(lease).await })
            .await;
    }

    /// A watcher's side: the events of a job running (or run) on another replica, after
    /// `after`, live until the final one; a final `failed` UNAVAILABLE when its runner's lease
    /// lapses before the job ended.
    pub fn follow(
        self: &Arc<Self>,
        job: RemoteJob,
        after: u64,
    ) -> ReceiverStream<Result<GenerateEvent, Status>> {
        let (tx, rx) = mpsc::channel(super::FOLLOWER_BUFFER);
        let shared = self.clone();
        tokio::spawn(async move {
            let end = shared.watch(&job.id, after, &tx).await;
            if let Err(status) = end {
                let _ = tx.send(Err(status)).await;
            }
        });
        ReceiverStream::new(rx)
    }

    async fn watch(
        &self,
        id: &str,
        after: u64,
        tx: &mpsc::Sender<Result<GenerateEvent, Status>>,
    ) -> Result<(), Status> {
        let mut cursor = after;
        let mut unanswered = tokio::time::Instant::now();
        let mut last_lease_check = tokio::time::Instant::now();
        loop {
            let Some(events) = self.events_after(id, cursor, super::FOLLOWER_BUFFER).await else {
                if unanswered.elapsed() > self.lease * 3 {
                    return Err(Status::unavailable(
                        "the shared job store (Redis) does not answer; retry WatchJob",
                    ));
                }
                tokio::time::sleep(POLL).await;
                continue;
            };
            unanswered = tokio::time::Instant::now();
            let caught_up = events.len() < super::FOLLOWER_BUFFER;
            for event in events {
                cursor = event.sequence;
                let done = final_event(&event);
                let event = self.with_article(id, event).await;
                if tx.send(Ok(event)).await.is_err() || done {
                    return Ok(());
                }
            }
            if !caught_up {
                continue;
            }
            // At or past the end: the final event again, as the local follower does.
            if cursor == after
                && let Some(Some(last)) = self.last_event(id).await
                && final_event(&last)
            {
                let _ = tx.send(Ok(self.with_article(id, last).await)).await;
                return Ok(());
            }
            if last_lease_check.elapsed() >= self.lease / 2 {
                last_lease_check = tokio::time::Instant::now();
                if self.lease_held(id).await == Some(false) {
                    return self.runner_gone(id, tx).await;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = tx.closed() => return Ok(()),
            }
        }
    }

    /// The runner's lease lapsed before the job ended: it stopped (killed, or cut off from
    /// Redis). The watcher ends with `failed` UNAVAILABLE, recorded in the stream so every
    /// replica tells the same end, and the idempotency key may start the job again.
    async fn runner_gone(
        &self,
        id: &str,
        tx: &mpsc::Sender<Result<GenerateEvent, Status>>,
    ) -> Result<(), Status> {
        // The runner may have published its end just before its lease went.
        let last = self.last_event(id).await.flatten();
        if let Some(last) = last.clone().filter(final_event) {
            let _ = tx.send(Ok(self.with_article(id, last).await)).await;
            return Ok(());
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
        // Recorded once: a second watcher's append of the same sequence is refused by Redis.
        let _ = self.append(id, vec![failed.clone()]).await;
        let _ = tx.send(Ok(failed)).await;
        Ok(())
    }

    async fn with_article(&self, id: &str, mut event: GenerateEvent) -> GenerateEvent {
        if let Some(Event::Completed(completed)) = &mut event.event
            && completed.article.is_none()
        {
            completed.article = self.stored_article(id).await.flatten();
        }
        event
    }

    /// `GetArticle` for a job of another replica.
    pub async fn article(&self, job: &RemoteJob) -> Result<api::Article, Status> {
        let unavailable = || Status::unavailable("the shared job store (Redis) does not answer");
        if let Some(article) = self.stored_article(&job.id).await.ok_or_else(unavailable)? {
            return Ok(article);
        }
        match self.last_event(&job.id).await.ok_or_else(unavailable)? {
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
            .ok_or_else(|| Status::unavailable("the shared job store (Redis) does not answer"))?;
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

/// Whether `SharedJobs::reattachable` lets a retried `Generate` follow the job.
#[derive(Debug, PartialEq, Eq)]
pub enum Reattach {
    Yes,
    /// The key was used for a different request.
    KeyReused,
    /// Failed, or its runner is gone: the key starts a new job.
    No,
}

fn decode(entry: &redis::streams::StreamId) -> Option<GenerateEvent> {
    let bytes: Vec<u8> = entry.get("e")?;
    GenerateEvent::decode(bytes.as_slice()).ok()
}

fn final_event(event: &GenerateEvent) -> bool {
    matches!(event.event, Some(Event::Completed(_) | Event::Failed(_)))
}

fn state_of(event: &GenerateEvent) -> JobState {
    match &event.event {
        Some(Event::Completed(_)) => JobState::Completed,
        Some(Event::Failed(f)) if f.code == Code::Cancelled as i32 => JobState::Cancelled,
        Some(Event::Failed(_)) => JobState::Failed,
        _ => JobState::Running,
    }
}
