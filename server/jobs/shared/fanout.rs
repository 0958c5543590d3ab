//! Remote watchers' events from one reader per replica: a connection of its own blocks in
//! `XREAD` over the event streams of every job this replica's watchers follow and fans each
//! event out to them, and the runners' leases of those jobs are looked at in one `MGET` a
//! tick. Redis sees a few commands a second per replica, however many watchers it has (they
//! polled each, every 100 ms, before).
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc, mpsc::error::TrySendError};
use tonic::Status;

use super::{
    SharedJobs, final_event, key,
    watch::{Liveness, RUNNER_GRACE, WATCH_PATIENCE, decode, store_unavailable},
};
use crate::lock;
use dakota::api::GenerateEvent;

/// How long one `XREAD` blocks; a new watcher wakes it at once (`CLIENT UNBLOCK`).
const BLOCK: Duration = Duration::from_secs(2);
/// Events read per stream per `XREAD`.
const COUNT: usize = 256;
/// Pause before trying again while Redis does not answer.
const RETRY: Duration = Duration::from_millis(200);

pub(super) type Watcher = mpsc::Sender<Result<GenerateEvent, Status>>;

/// The watchers this replica's reader serves.
#[derive(Default)]
pub(super) struct Fanout {
    subs: Mutex<HashMap<u64, Sub>>,
    next: std::sync::atomic::AtomicU64,
    changed: Notify,
    /// The reader connection's `CLIENT ID` (0 while unknown), to wake its blocked read.
    reader: AtomicI64,
    started: std::sync::OnceLock<()>,
}

/// One watcher: its job, the last sequence it was sent, where its events go.
struct Sub {
    job: String,
    cursor: u64,
    tx: Watcher,
}

impl Fanout {
    /// Each followed job with the lowest sequence any of its watchers has been sent.
    fn wanted(&self) -> BTreeMap<String, u64> {
        let mut wanted = BTreeMap::new();
        for sub in lock(&self.subs).values() {
            let at = wanted.entry(sub.job.clone()).or_insert(sub.cursor);
            *at = (*at).min(sub.cursor);
        }
        wanted
    }

    /// Sends `job`'s events to each of its watchers past whose cursor they are. A watcher
    /// whose buffer is full is left where it is (the next read starts from it): a slow
    /// watcher never holds up the others. One that is gone, or was sent the end, is dropped.
    fn deliver(&self, job: &str, events: &[GenerateEvent]) {
        let mut subs = lock(&self.subs);
        subs.retain(|_, sub| {
            if sub.job != job {
                return true;
            }
            for event in events {
                if event.sequence <= sub.cursor {
                    continue;
                }
                match sub.tx.try_send(Ok(event.clone())) {
                    Ok(()) if final_event(event) => return false,
                    Ok(()) => sub.cursor = event.sequence,
                    Err(TrySendError::Full(_)) => return true,
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            !sub.tx.is_closed()
        });
    }

    /// Tells every watcher (of `job`, or all) `status`, and drops them.
    fn fail(&self, job: Option<&str>, status: &Status) {
        lock(&self.subs).retain(|_, sub| {
            if job.is_some_and(|j| j != sub.job) {
                return true;
            }
            let _ = sub.tx.try_send(Err(status.clone()));
            false
        });
    }
}

impl SharedJobs {
    /// Hands a watcher, caught up to `cursor`, to this replica's reader.
    pub(super) async fn subscribe(self: &Arc<Self>, job: &str, cursor: u64, tx: Watcher) {
        let fanout = &self.fanout;
        fanout.started.get_or_init(|| {
            tokio::spawn(self.clone().read_streams());
        });
        let id = fanout.next.fetch_add(1, Ordering::Relaxed);
        let sub = Sub {
            job: job.to_string(),
            cursor,
            tx,
        };
        lock(&fanout.subs).insert(id, sub);
        fanout.changed.notify_one();
        // The reader may be blocked on the streams it knew: it reads again with this one.
        let reader = fanout.reader.load(Ordering::Relaxed);
        if reader > 0 {
            self.redis
                .run("xread", |mut c| async move {
                    redis::cmd("CLIENT")
                        .arg("UNBLOCK")
                        .arg(reader)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        }
    }

    /// The reader: one blocking `XREAD` at a time over every followed job's stream, the
    /// followed jobs' leases every third of a lease, for as long as the process runs.
    async fn read_streams(self: Arc<Self>) {
        let fanout = &self.fanout;
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut unanswered: Option<tokio::time::Instant> = None;
        let mut runners: HashMap<String, Liveness> = HashMap::new();
        let mut leases_looked = tokio::time::Instant::now();
        loop {
            let wanted = fanout.wanted();
            if wanted.is_empty() {
                runners.clear();
                fanout.changed.notified().await;
                continue;
            }
            if connection.is_none() {
                connection = self.reader_connection().await;
            }
            let read = match connection.as_mut() {
                Some(c) => self.read_once(c, &wanted).await,
                None => None,
            };
            let Some(streams) = read else {
                connection = None;
                runners.values_mut().for_each(Liveness::redis_away);
                let since = *unanswered.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > (self.lease * 3).max(WATCH_PATIENCE) {
                    fanout.fail(None, &store_unavailable());
                    unanswered = None;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            };
            unanswered = None;
            for (job, events) in streams {
                let mut with_articles = Vec::with_capacity(events.len());
                for event in events {
                    with_articles.push(self.with_article(&job, event).await);
                }
                fanout.deliver(&job, &with_articles);
            }
            if leases_looked.elapsed() >= self.lease / 3 {
                leases_looked = tokio::time::Instant::now();
                self.look_at_runners(&wanted, &mut runners).await;
            }
        }
    }

    /// A connection for the reader, its `CLIENT ID` noted so a new watcher can wake it.
    async fn reader_connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut connection = self.redis.dedicated(BLOCK).await?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut connection)
            .await
            .ok()?;
        self.fanout.reader.store(id, Ordering::Relaxed);
        Some(connection)
    }

    /// One `XREAD BLOCK` over `wanted` (job, after sequence): the events by job, empty when
    /// the block ended with none (or a new watcher woke it); `None` when Redis did not answer.
    async fn read_once(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        wanted: &BTreeMap<String, u64>,
    ) -> Option<Vec<(String, Vec<GenerateEvent>)>> {
        let keys: Vec<String> = wanted.keys().map(|id| key(id, "events")).collect();
        let ids: Vec<String> = wanted.values().map(|after| format!("0-{after}")).collect();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&keys)
            .arg(&ids);
        let reply: Option<redis::streams::StreamReadReply> =
            tokio::time::timeout(BLOCK + self.redis.timeout(), cmd.query_async(connection))
                .await
                .ok()?
                .ok()?;
        let by_key: HashMap<&str, &str> = keys
            .iter()
            .map(String::as_str)
            .zip(wanted.keys().map(String::as_str))
            .collect();
        Some(
            reply
                .map(|r| r.keys)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|stream| {
                    let job = by_key.get(stream.key.as_str())?.to_string();
                    Some((job, stream.ids.iter().filter_map(decode).collect()))
                })
                .collect(),
        )
    }

    /// The leases of the followed jobs in one `MGET`: a job whose lease has been missing for
    /// a lease and [`RUNNER_GRACE`] while Redis answered is taken over and given its end
    /// (which the next read delivers).
    async fn look_at_runners(
        &self,
        wanted: &BTreeMap<String, u64>,
        runners: &mut HashMap<String, Liveness>,
    ) {
        runners.retain(|job, _| wanted.contains_key(job));
        let keys: Vec<String> = wanted.keys().map(|id| key(id, "lease")).collect();
        let leases: Option<Vec<Option<String>>> = self
            .redis
            .run("lease", |mut c| async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await
            })
            .await;
        let Some(leases) = leases else {
            runners.values_mut().for_each(Liveness::redis_away);
            return;
        };
        for (job, lease) in wanted.keys().zip(leases) {
            let runner = runners.entry(job.clone()).or_default();
            if lease.is_some() {
                runner.seen();
            } else if runner.missing_for() >= self.lease + RUNNER_GRACE
                && self.take_over(job).await
                && self.runner_gone(job).await.is_none()
            {
                self.fanout.fail(Some(job), &store_unavailable());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dakota::api::{self, generate_event::Event};

    fn event(sequence: u64, end: bool) -> GenerateEvent {
        GenerateEvent {
            job_id: "j".into(),
            sequence,
            event: Some(if end {
                Event::Completed(api::Completed::default())
            } else {
                Event::Warning(api::Warning::default())
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_watcher_waits_where_it_is_and_the_others_go_on() {
        let fanout = Fanout::default();
        let (slow, mut slow_rx) = mpsc::channel(1);
        let (fast, mut fast_rx) = mpsc::channel(8);
        for (n, tx) in [slow, fast].into_iter().enumerate() {
            lock(&fanout.subs).insert(
                n as u64,
                Sub {
                    job: "j".into(),
                    cursor: 0,
                    tx,
                },
            );
        }
        fanout.deliver("j", &[event(1, false), event(2, false)]);
        assert_eq!(fanout.wanted()["j"], 1, "the slow one took 1 of 2");
        assert_eq!(fast_rx.try_recv().unwrap().unwrap().sequence, 1);
        assert_eq!(fast_rx.try_recv().unwrap().unwrap().sequence, 2);
        assert_eq!(slow_rx.try_recv().unwrap().unwrap().sequence, 1);
        // Read again from the slow one's cursor: it gets 2 and the end, the fast one the end.
        fanout.deliver("j", &[event(2, false), event(3, true)]);
        assert_eq!(slow_rx.try_recv().unwrap().unwrap().sequence, 2);
        fanout.deliver("j", &[event(3, true)]);
        assert_eq!(slow_rx.try_recv().unwrap().unwrap().sequence, 3);
        assert_eq!(fast_rx.try_recv().unwrap().unwrap().sequence, 3);
        assert!(fanout.wanted().is_empty(), "both were sent the end");
    }
}
