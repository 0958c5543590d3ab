//! All jobs of this process: a new job or the one of its idempotency key, the limits, and the
//! eviction of finished jobs (past their TTL, or the oldest when full).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::Job;
use crate::{
    domain::{JobRequest, Principal},
    lock,
};

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
    pub(super) limits: JobLimits,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::tests::{new_id, registry, request};
    use dakota::api::{self, generate_event::Event};
    use tonic::Code;

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
}
