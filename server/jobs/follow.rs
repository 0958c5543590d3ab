//! Following a job: a stream that reads its log as the client takes events, and the
//! cancellation of a running job when its last follower leaves (at once, or after a grace).
use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::Status;

use super::{Job, JobRegistry};
use dakota::api::GenerateEvent;

/// Events a follower reads from the log at a time (HTTP/2 flow control paces the reading).
pub(super) const FOLLOWER_BUFFER: usize = 64;

impl JobRegistry {
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
