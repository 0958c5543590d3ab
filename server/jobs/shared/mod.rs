//! Jobs any replica can serve (with Redis): the replica that runs a job publishes its events
//! to a Redis Stream and its article to a key, holds a lease it renews, and watches for a
//! cancel sent to any replica; the others follow, fetch and cancel it through Redis.
//!
//! Here the runner's side (register, publish, renew, the records kept); `watch` the others'
//! side (find, follow, take over, fetch, cancel); `scripts` the Lua scripts both run.
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
//! task copies it to Redis in batches, and when Redis is down the job goes on in memory (one
//! warning) and the publisher catches up when it answers again.
//!
//! Redis may pause (a fork, a failover, `SIGSTOP`) or lose everything (a restart without
//! persistence), so:
//! - a batch is appended by one Lua script that skips the entries already written (a batch
//!   that timed out here may have run there), as the job's lease holder only;
//! - a watcher declares the runner gone only after its lease has been missing for a lease
//!   and [`RUNNER_GRACE`](watch::RUNNER_GRACE) while Redis answered every look, and then
//!   takes the lease over before it writes the job's `failed` end: only the lease holder
//!   writes a final event;
//! - a runner whose job's records are gone writes them again (meta, idempotency key, the
//!   events so far), and each replica notices a Redis that lost its data by a key of its own
//!   that vanished, and republishes its finished jobs.
use std::{sync::Arc, time::Duration};

use prost::Message;
use redis::AsyncCommands;

use super::Job;
use crate::{
    domain::{JobRequest, Principal},
    redis::Redis,
};
use dakota::api::{GenerateEvent, generate_event::Event};

mod fanout;
mod scripts;
mod watch;

use scripts::{APPEND, Held, RENEW, eval};
pub use watch::{Reattach, RemoteJob};

/// Events copied to Redis per round trip at most.
const BATCH: usize = 256;
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
    /// This replica's watchers of jobs run elsewhere, served by one blocking reader.
    fanout: fanout::Fanout,
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
            fanout: Default::default(),
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

    /// Makes a job known to every replica (its meta, its idempotency key and, while it runs,
    /// its lease) before its id reaches the caller, so a `WatchJob` sent anywhere right after
    /// finds it; also what re-creates the records of a job Redis has lost. Bounded by the
    /// Redis timeout; without Redis the job is this replica's alone until it answers.
    pub async fn register(&self, job: &Job, owner: Option<&Principal>) -> bool {
        let (meta, lease) = (key(&job.id, "meta"), key(&job.id, "lease"));
        let idem = job
            .request
            .idempotency_key
            .as_deref()
            .map(|k| Redis::key("idem", &super::scoped_key(owner, k)));
        let owner = owner.map(|p| p.0.clone()).unwrap_or_default();
        let request = fingerprint(&job.request);
        let (replica, lease_ms, ttl) = (self.replica.clone(), millis(self.lease), self.ttl);
        let (running, id) = (!job.is_finished(), job.id.clone());
        self.redis
            .run("register", |mut c| async move {
                let mut pipe = redis::pipe();
                pipe.hset_multiple(&meta, &[("owner", owner), ("request", request)])
                    .ignore()
                    .pexpire(&meta, millis(ttl) as i64)
                    .ignore();
                if running {
                    pipe.pset_ex(&lease, replica, lease_ms).ignore();
                }
                // Never taken from another job: only re-created where it is gone.
                if let Some(idem) = idem {
                    pipe.cmd("SET")
                        .arg(idem)
                        .arg(id)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(ttl))
                        .ignore();
                }
                pipe.query_async::<()>(&mut c).await
            })
            .await
            .is_some()
    }

    /// The runner's side: copies `job`'s events to Redis as they come, holds the job's lease
    /// and cancels the job when another replica asks. Ends once the final event is published
    /// (or another replica took the job over, having found this one gone).
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
                    match self.renew(&job).await {
                        None if !warned => {
                            warned = true;
                            tracing::warn!(job_id = %job.id, "Redis unavailable: the job goes on in this replica's memory; other replicas cannot serve it until Redis answers");
                        }
                        Some(Held::Lost) => {
                            tracing::warn!(job_id = %job.id, "Redis lost the job's records: writing them again");
                            (registered, cursor) = (false, 0);
                        }
                        Some(Held::TakenOver) => return self.taken_over(&job),
                        _ => {}
                    }
                }
            }
            // Nothing goes to the stream before the job's meta: a reader finds both.
            if registered {
                match self.append_after(&job, cursor).await {
                    Held::Yes(at) => cursor = at,
                    Held::Lost => (registered, cursor) = (false, 0),
                    Held::TakenOver => return self.taken_over(&job),
                }
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

    fn taken_over(&self, job: &Job) {
        tracing::warn!(
            job_id = %job.id,
            "another replica took this job over (it found this one gone from Redis for longer than a lease); its events are no longer published"
        );
    }

    /// Appends the job's events after `cursor`, batch by batch, as far as Redis takes them:
    /// the sequence published up to, or why no more can be.
    async fn append_after(&self, job: &Job, mut cursor: u64) -> Held {
        loop {
            let events = job.events_after(cursor, BATCH).0;
            if events.is_empty() {
                return Held::Yes(cursor);
            }
            match self.append(&job.id, events).await {
                None => return Held::Yes(cursor),
                Some(Held::Yes(top)) => cursor = cursor.max(top),
                Some(other) => return other,
            }
        }
    }

    /// Renews the lease and looks for a cancel sent to another replica.
    async fn renew(&self, job: &Job) -> Option<Held> {
        let keys = [
            key(&job.id, "lease"),
            key(&job.id, "cancel"),
            key(&job.id, "meta"),
        ];
        let args = vec![
            self.replica.clone().into_bytes(),
            millis(self.lease).to_string().into_bytes(),
        ];
        let reply: i64 = self
            .redis
            .run("lease", |mut c| async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                eval(RENEW, &keys, args).query_async(&mut c).await
            })
            .await?;
        let held = Held::of(reply);
        if held == Held::Yes(1) && !job.is_finished() {
            tracing::info!(job_id = %job.id, "cancelled from another replica");
            job.cancel.cancel();
        }
        Some(held)
    }

    /// Appends events in one script, as the job's lease holder: those at or below the
    /// stream's top are taken as written. A `completed` event's article goes to its own key
    /// first, so a reader that sees the event finds the article.
    async fn append(&self, id: &str, events: Vec<GenerateEvent>) -> Option<Held> {
        let keys = [
            key(id, "events"),
            key(id, "meta"),
            key(id, "lease"),
            key(id, "article"),
        ];
        let mut article = Vec::new();
        let ends = events.iter().any(final_event);
        let mut args = vec![
            self.replica.clone().into_bytes(),
            millis(self.lease).to_string().into_bytes(),
            millis(self.ttl).to_string().into_bytes(),
            if ends { b"1".to_vec() } else { b"0".to_vec() },
        ];
        let mut pairs = Vec::with_capacity(events.len() * 2);
        for mut event in events {
            if let Some(Event::Completed(completed)) = &mut event.event
                && let Some(finished) = completed.article.take()
            {
                article = finished.encode_to_vec();
            }
            pairs.push(event.sequence.to_string().into_bytes());
            pairs.push(event.encode_to_vec());
        }
        args.push(article);
        args.extend(pairs);
        let reply: i64 = self
            .redis
            .run("xadd", |mut c| async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                eval(APPEND, &keys, args).query_async(&mut c).await
            })
            .await?;
        Some(Held::of(reply))
    }

    async fn release(&self, id: &str) {
        let lease = key(id, "lease");
        self.redis
            .run("lease", |mut c| async move { c.del::<_, ()>(lease).await })
            .await;
    }

    /// Keeps this replica's jobs in Redis while they are in its memory: a key of its own,
    /// renewed every lease, that vanishes only if Redis lost its data (a restart without
    /// persistence, a flush, an eviction). Then every finished job is written again (the
    /// running ones' publishers do so themselves), so other replicas still find them and
    /// their idempotency keys do not start duplicates.
    pub async fn keep_records(self: Arc<Self>, jobs: Arc<super::JobRegistry>) {
        let mine = Redis::key("replica", &self.replica);
        let mut tick = tokio::time::interval(self.lease);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.stop.cancelled() => return,
            }
            let (name, ttl) = (mine.clone(), millis(self.ttl));
            let previous: Option<Option<String>> = self
                .redis
                .run("keep", |mut c| async move {
                    redis::cmd("SET")
                        .arg(name)
                        .arg(1)
                        .arg("PX")
                        .arg(ttl)
                        .arg("GET")
                        .query_async(&mut c)
                        .await
                })
                .await;
            match previous {
                Some(None) if known => {
                    tracing::warn!(
                        "Redis lost this replica's records (restarted or flushed): writing its finished jobs again"
                    );
                    for job in jobs.all().into_iter().filter(|j| j.is_finished()) {
                        self.republish(&job).await;
                    }
                }
                Some(_) => known = true,
                None => {}
            }
        }
    }

    /// Writes a finished job's records again: meta, idempotency key, every event.
    async fn republish(&self, job: &Job) {
        if self.register(job, job.owner.as_ref()).await {
            self.append_after(job, 0).await;
            // Appending takes the lease, which a finished job does not hold.
            self.release(&job.id).await;
        }
    }
}

fn final_event(event: &GenerateEvent) -> bool {
    matches!(event.event, Some(Event::Completed(_) | Event::Failed(_)))
}
