//! What the end-to-end tests and the benchmarks share: the upstream stand-in (a real HTTP
//! server on 127.0.0.1 speaking the LLM, vector-store, Serper and page APIs) and the sample
//! knowledge base it answers from.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod article_check;
pub mod standin;

/// The repository's sample knowledge base.
pub fn kb_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../knowledge")
}
