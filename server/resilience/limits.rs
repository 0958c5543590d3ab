//! Concurrency limits shared by every upstream: a pool per kind of work and a global cap.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::*;

/// Kinds of work, each with its own concurrency pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Search,
    Content,
    Analysis,
}

impl Pool {
    pub const ALL: [Pool; 3] = [Pool::Search, Pool::Content, Pool::Analysis];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::Content => "content",
            Self::Analysis => "analysis",
        }
    }

    /// Research searches; synthesis and writing; everything that reads the article.
    pub fn for_agent(agent: AgentName) -> Self {
        match agent {
            AgentName::KbResearcher | AgentName::WebResearcher => Self::Search,
            AgentName::ResearchSynthesizer | AgentName::ContentWriter => Self::Content,
            _ => Self::Analysis,
        }
    }
}

/// Concurrency limits shared by every upstream: a pool per kind of work and a global cap.
#[derive(Debug)]
pub struct Limits {
    pub(super) global: Arc<Semaphore>,
    pools: [Arc<Semaphore>; 3],
    sizes: [usize; 4],
    /// Calls waiting for a permit: per pool, and for the global cap.
    waiting: [AtomicUsize; 4],
}

impl Limits {
    pub fn new(global: usize, search: usize, content: usize, analysis: usize) -> Self {
        let (global, search, content, analysis) = (
            global.max(1),
            search.max(1),
            content.max(1),
            analysis.max(1),
        );
        Self {
            global: Arc::new(Semaphore::new(global)),
            pools: [search, content, analysis].map(|n| Arc::new(Semaphore::new(n))),
            sizes: [global, search, content, analysis],
            waiting: Default::default(),
        }
    }

    pub(super) fn pool(&self, pool: Pool) -> &Arc<Semaphore> {
        &self.pools[pool as usize]
    }

    /// Calls in flight in a pool, and its size.
    pub fn pool_in_use(&self, pool: Pool) -> (usize, usize) {
        let size = self.sizes[pool as usize + 1];
        (size - self.pool(pool).available_permits(), size)
    }

    /// Upstream calls in flight over all pools, and the cap.
    pub fn global_in_use(&self) -> (usize, usize) {
        (
            self.sizes[0] - self.global.available_permits(),
            self.sizes[0],
        )
    }

    /// (name, in use, size, waiting) for each pool and, last, `global`.
    pub fn usage(&self) -> Vec<(&'static str, usize, usize, usize)> {
        let mut usage: Vec<_> = Pool::ALL
            .iter()
            .map(|&pool| {
                let (in_use, size) = self.pool_in_use(pool);
                (pool.as_str(), in_use, size, self.waiting(Some(pool)))
            })
            .collect();
        let (in_use, size) = self.global_in_use();
        usage.push(("global", in_use, size, self.waiting(None)));
        usage
    }

    /// Calls waiting for a permit of `pool`, or for the global cap (`None`).
    pub fn waiting(&self, pool: Option<Pool>) -> usize {
        self.waiting[pool.map_or(0, |p| p as usize + 1)].load(Ordering::Relaxed)
    }

    pub(super) async fn acquire(
        &self,
        semaphore: &Arc<Semaphore>,
        slot: usize,
    ) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Counted while waiting, however the wait ends (a cancelled job drops it).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting[slot].fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting[slot]);
        semaphore.clone().acquire_owned().await
    }
}
