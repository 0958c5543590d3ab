//! The service behind `dakota-server`, in layers: each module imports only the layers above
//! it in this list (`python3 scripts/check-layers.py` prints the module graph and fails CI on
//! an import that goes up). Read top-down for the foundations, bottom-up for the service.
//!
//! 1. [`text`], [`config`], [`metrics`], [`telemetry`]: text helpers, flags, Prometheus
//!    metrics, tracing and OTLP.
//! 2. [`domain`]: the vocabulary: the job request, phases and their plan, agent names, a
//!    source, the article contract, the caller, the job as the pipeline writes to it.
//! 3. [`fault`]: what an upstream failure is, how it is retried, when an upstream is down.
//! 4. [`redis`], then [`cache`]: the shared Redis, the two-level cache with single-flight.
//! 5. [`resilience`]: the stack every upstream call goes through (breaker, rate limit, pools,
//!    timeout, retries, cache).
//! 6. [`upstream`]: HTTP clients of the LLM, vector store, web search and source fetch.
//! 7. `kb`: the knowledge base: local (tantivy BM25) or an OpenAI vector store.
//! 8. [`agents`]: the agents of SPEC §4 behind one trait; offline and LLM implementations.
//! 9. [`pipeline`]: phases, the revision loop, the article's assembly.
//! 10. `jobs`: event logs, followers, idempotent re-attach, cancellation, shared jobs.
//! 11. The gRPC edge: `service` (the `ContentService` RPCs), `validation`, `error` (status
//!     mapping), `auth`, `quota`, `rpc_metrics`, `message_size`, `net`, `tls`.
//! 12. `admin` (the admin HTTP port) and [`app`] (wiring, start-up and shutdown).

mod admin;
pub mod agents;
pub mod app;
mod auth;
pub mod cache;
pub mod config;
pub mod domain;
mod error;
pub mod fault;
mod jobs;
mod kb;
mod message_size;
pub mod metrics;
mod net;
pub mod pipeline;
mod quota;
pub mod redis;
pub mod resilience;
mod rpc_metrics;
mod service;
pub mod telemetry;
pub mod text;
mod tls;
pub mod upstream;
mod validation;

#[cfg(test)]
mod hostile_input;

/// Locks a mutex whose every update is a single assignment or push, so a panic elsewhere
/// cannot leave it half-written and a poisoned lock is still safe to use.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for a read-write lock.
pub(crate) fn read<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
