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
//! task copies it to Redis in batches, and when Redis is down the job goes on in memory (one
//! warning) and the publisher catches up when it answers again.
//!
//! Redis may pause (a fork, a failover, `SIGSTOP`) or lose everything (a restart without
//! persistence), so:
//! - a batch is appended by one Lua script that skips the entries already written (a batch
//!   that timed out here may have run there), as the job's lease holder only;
//! - a watcher declares the runner gone only after its lease has been missing for a lease
//!   and [`RUNNER_GRACE`] while Redis answered every look, and then takes the lease over
//!   before it writes the job's `failed` end: only the lease holder writes a final event;
//! - a runner whose job's records are gone writes them again (meta, idempotency key, the
//!   events so far), and each replica notices a Redis that lost its data by a key of its own
//!   that vanished, and republishes its finished jobs.
use std::{sync::Arc, time::Duration};

use prost::Message;
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::{Job, failure_status, follow::FOLLOWER_BUFFER};
use crate::{
    domain::{JobRequest, Principal},
    redis::Redis,
};
use dakota::api::{self, GenerateEvent, JobState, generate_event::Event};

/// Events copied to Redis per round trip at most.
const BATCH: usize = 256;
/// How often a watcher on another replica reads the stream. Blocking reads (`XREAD BLOCK`)
/// would stall the shared multiplexed connection, so watchers poll.
const POLL: Duration = Duration::from_millis(100);
/// How long a watcher waits for a Redis that does not answer before it tells its client
/// (at least three leases): a pause of a few seconds is waited out, not reported.
const WATCH_PATIENCE: Duration = Duration::from_secs(15);
/// After Redis answers again, how long a live runner may take to renew its lease: its own
/// Redis breaker's cool-down, then a renew tick.
const RUNNER_GRACE: Duration = Duration::from_secs(3);
/// How long the runner goes on trying to publish a finished job's last events while Redis
/// does not answer (not past the server's shutdown, which waits for the publishers).
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);

/// Appends events as the job's lease holder, skipping those already written.
/// KEYS: events, meta, lease, article. ARGV: replica, lease ms, ttl ms, "1" when the batch
/// ends the job, the article ("" if none), then sequence and event pairs.
/// Returns the stream's top sequence, or -1 (another replica holds the lease), -2 (another
/// replica ended the job), -3 (the job's records are gone).
const APPEND: &str = r"
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -3 end
local ended = redis.call('HGET', KEYS[2], 'ended')
if ended and ended ~= ARGV[1] then return -2 end
local top = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then top = tonumber(string.sub(last[1][1], 3)) or 0 end
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[3]) end
for i = 6, #ARGV, 2 do
  local sequence = tonumber(ARGV[i])
  if sequence > top then
    redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'e', ARGV[i + 1])
    top = sequence
  end
end
if ARGV[4] == '1' then redis.call('HSET', KEYS[2], 'ended', ARGV[1]) end
if not ended then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return top
";

/// Renews the runner's lease (taking it back if it lapsed) and reads the cancel flag.
/// KEYS: lease, cancel, meta. ARGV: replica, lease ms. Returns 1 (cancel asked), 0, or -1,
/// -2, -3 as [`APPEND`].
const RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -3 end
local ended = redis.call('HGET', KEYS[3], 'ended')
if ended and ended ~= ARGV[1] then return -2 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('EXISTS', KEYS[2])
";

/// A watcher takes over the lease of a job that has not ended and whose lease is gone.
/// KEYS: lease, meta. ARGV: replica, lease ms. Returns 1 when taken.
const TAKE_OVER: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[2], 'ended') == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// What Redis said to a runner's append or renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Appended up to this sequence (for a renew: whether a cancel was asked, as 0 or 1).
    Yes(u64),
    /// Another replica took the job over (it declared this one gone).
    TakenOver,
    /// The job's records are gone (Redis restarted or was flushed): write them again.
    Lost,
}

impl Held {
    fn of(reply: i64) -> Self {
        match reply {
            -3 => Self::Lost,
            n if n < 0 => Self::TakenOver,
            n => Self::Yes(n as u64),
        }
    }
}

/// `EVAL script` over `keys` with `args`.
fn eval(script: &str, keys: &[&str], args: Vec<Vec<u8>>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    for arg in args {
        cmd.arg(arg);
    }
    cmd
}

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
        let mut runner = Liveness::default();
        loop {
            let Some(events) = self.events_after(id, cursor, FOLLOWER_BUFFER).await else {
                runner.redis_away();
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
            if last_lease_check.elapsed() >= self.lease / 3 {
                last_lease_check = tokio::time::Instant::now();
                match self.lease_held(id).await {
                    Some(true) => runner.seen(),
                    None => runner.redis_away(),
                    Some(false) => {
                        if runner.missing_for() >= self.lease + RUNNER_GRACE
                            && self.take_over(id).await
                        {
                            return self.runner_gone(id, tx).await;
                        }
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = tx.closed() => return Ok(()),
            }
        }
    }

    /// Takes over the lease of job `id` (not ended, lease gone): then this replica, and no
    /// other, may write its end.
    async fn take_over(&self, id: &str) -> bool {
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
        let _ = self.append(id, vec![failed]).await;
        self.release(id).await;
        // Whatever end the stream now holds is the job's, for every replica.
        match self.last_event(id).await.flatten().filter(final_event) {
            Some(end) => {
                let _ = tx.send(Ok(self.with_article(id, end).await)).await;
                Ok(())
            }
            None => Err(store_unavailable()),
        }
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
struct Liveness {
    missing_since: Option<tokio::time::Instant>,
}

impl Liveness {
    fn seen(&mut self) {
        self.missing_since = None;
    }

    fn redis_away(&mut self) {
        self.missing_since = None;
    }

    /// Called on a look that found no lease: how long it has been missing.
    fn missing_for(&mut self) -> Duration {
        self.missing_since
            .get_or_insert_with(tokio::time::Instant::now)
            .elapsed()
    }
}

fn store_unavailable() -> Status {
    Status::unavailable("the shared job store (Redis) does not answer; retry shortly")
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
