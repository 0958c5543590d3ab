//! The service behind `dakota-server`, in layers: each module imports only the layers above
//! it in this list (`python3 scripts/check-layers.py` prints the module graph and fails CI on
//! an import that goes up). Read top-down for the foundations, bottom-up for the service.
//!
//! 1. `text`, [`config`], `metrics`, [`telemetry`]: text helpers, flags, Prometheus
//!    metrics, tracing and OTLP.
//! 2. `domain`: the vocabulary: the job request, phases and their plan, agent names, a
//!    source, the article contract, the caller, the job as the pipeline writes to it.
//! 3. `fault`: what an upstream failure is, how it is retried, when an upstream is down.
//! 4. `redis`, then `cache`: the shared Redis, the two-level cache with single-flight.
//! 5. `resilience`: the stack every upstream call goes through (breaker, rate limit, pools,
//!    timeout, retries, cache).
//! 6. `upstream`: HTTP clients of the LLM, vector store, web search and source fetch.
//! 7. `kb`: the knowledge base: local (tantivy BM25) or an OpenAI vector store.
//! 8. `agents`: the agents of SPEC §4 behind one trait; offline and LLM implementations.
//! 9. `pipeline`: phases, the revision loop, the article's assembly.
//! 10. `jobs`: event logs, followers, idempotent re-attach, cancellation, shared jobs.
//! 11. The gRPC edge: `service` (the `ContentService` RPCs), `validation`, `error` (status
//!     mapping), `auth`, `quota`, `rpc_metrics`, `message_size`, `net`, `tls`.
//! 12. `admin` (the admin HTTP port) and [`app`] (wiring, start-up and shutdown).
//!
//! Public: [`app`], [`config`] and [`telemetry`], which the binary uses, and [`testing`],
//! what the end-to-end tests and benchmarks reach inside.

mod admin;
mod agents;
pub mod app;
mod auth;
mod cache;
pub mod config;
mod domain;
mod error;
mod fault;
mod jobs;
mod kb;
mod message_size;
mod metrics;
mod net;
mod pipeline;
mod quota;
mod redis;
mod resilience;
mod rpc_metrics;
mod service;
pub mod telemetry;
mod text;
mod tls;
mod upstream;
mod validation;

#[cfg(test)]
mod hostile_input;

/// What the end-to-end tests and the benchmarks (the `dakota-tests` crate) reach inside the
/// server besides [`app`], [`config`] and [`telemetry`], which the binary uses: the layers
/// they put together (agents over the stand-in, the resilience stack in the benchmarks, the
/// contract the articles are checked against). Not an API: nothing outside this workspace
/// should depend on it.
#[doc(hidden)]
pub mod testing {
    pub mod agents {
        pub use crate::agents::{
            Agent, AgentContext, AgentFuture, Agents, AgentsFactory, Draft, SourceDoc, WebResearch,
            WritingBrief, select,
        };
    }
    pub mod cache {
        pub use crate::cache::{Cache, Key, Layer};
    }
    pub mod domain {
        pub use crate::domain::{SourceDoc, contract};
    }
    pub mod pipeline {
        pub use crate::pipeline::{JobRequest, contract};
    }
    pub mod metrics {
        pub use crate::metrics::Metrics;
    }
    pub mod redis {
        pub use crate::redis::Redis;
    }
    pub mod resilience {
        pub use crate::resilience::{CallScope, Guard, Limits, Pool, breaker};
    }
    pub mod text {
        pub use crate::text::{links, markdown_word_count, sentences};
    }
    pub mod upstream {
        pub use crate::upstream::{
            UpstreamError, client_span, fetch, install_crypto_provider, llm, retry,
        };
    }
}
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
