//! Client-side helpers for the `dakota` CLI and other Rust callers.

pub mod output;
pub mod session;
