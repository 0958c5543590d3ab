//! The service behind `dakota-server`.
//!
//! - [`app`]: assembles gRPC, health and reflection; start-up and shutdown.
//! - [`service`]: the `ContentService` RPCs; [`validation`] and [`error`] at its edge.
//! - [`jobs`]: event logs, followers, idempotent re-attach, cancellation.
//! - [`pipeline`]: phases, the revision loop, the article contract.
//! - [`agents`]: the agents of SPEC §4 behind one trait; offline implementations.
//! - [`kb`]: the knowledge base: local (tantivy BM25) or an OpenAI vector store.
//! - [`upstream`]: HTTP clients of the LLM, vector store, web search and source fetch.

mod admin;
pub mod agents;
pub mod app;
mod auth;
pub mod cache;
pub mod config;
mod error;
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
