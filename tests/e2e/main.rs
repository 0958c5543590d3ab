//! End-to-end tests: a real server on 127.0.0.1, the typed client, the CLI binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adversarial;
mod auth;
use dakota_tests::standin;

mod caching;
mod cli;
mod collection_check;
mod common;
mod contract_holds;
mod generate;
mod hostile_kb;
mod hostile_upstreams;
mod jobs;
mod lifecycle;
mod message_size;
mod messy_kb;
mod observability;
mod redis_server;
mod resilience;
mod shared_jobs;
mod slow_models;
mod small_models;
mod tls;
mod upstreams;
