//! Start-up and the local knowledge base: process start to SERVING with the sample knowledge
//! base and with a generated 1,000-document one (indexed at each start, and with its index kept
//! between starts by `--kb-index-dir`), index time per document, and `SearchKnowledgeBase`
//! latency for batches of 10 queries.
//!
//!     cargo bench --bench kb
//!
//! The generated documents are Markdown of the shape exported collections have: front matter,
//! a title, four to six sections with paragraphs, a bullet list and a table, ~7 kB each, made
//! from the sample documents' vocabulary (deterministic: the same files every run). Prints
//! Markdown for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dakota::api::{self, content_service_client::ContentServiceClient};

mod support;
use support::{binary, kb_dir};

const DOCUMENTS: usize = 1000;
const STARTS: usize = 5;
const BATCHES: usize = 200;
const QUERIES: [&str; 10] = [
    "private credit liquidity",
    "pension risk transfer buy-in",
    "currency hedging cost",
    "infrastructure inflation linkage",
    "stress testing scenarios",
    "liability driven investing collateral",
    "fee structures and carried interest",
    "governance of investment committees",
    "ESG integration in fixed income",
    "rebalancing during drawdowns",
];

/// Words of the sample knowledge base, to write generated documents with.
fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = std::fs::read_dir(kb_dir())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .map(|w| {
                    w.trim_matches(|c: char| !c.is_alphanumeric())
                        .to_lowercase()
                })
                .filter(|w| w.len() > 3)
                .collect::<Vec<_>>()
        })
        .collect();
    words.sort();
    words.dedup();
    words
}

/// `DOCUMENTS` Markdown files in a fresh folder.
fn generate(dir: &Path) {
    let words = vocabulary();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| words[rng.usize(..words.len())].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..DOCUMENTS {
        let title = pick(5);
        let mut doc = format!(
            "---\ntitle: \"{title}\"\nurl: https://docs.example/{i}\ndate: 2026-0{}-1{}\n---\n\n# {title}\n\n",
            1 + i % 9,
            i % 10
        );
        for section in 0..4 + i % 3 {
            doc.push_str(&format!("## {}\n\n", pick(3)));
            for _ in 0..2 {
                doc.push_str(&format!("{}.\n\n", pick(60)));
            }
            if section % 2 == 0 {
                for _ in 0..4 {
                    doc.push_str(&format!("- {}\n", pick(9)));
                }
                doc.push('\n');
            } else {
                doc.push_str("| measure | value | note |\n|---|---|---|\n");
                for row in 0..3 {
                    doc.push_str(&format!("| {} | {row}.5% | {} |\n", pick(2), pick(5)));
                }
                doc.push('\n');
            }
        }
        std::fs::write(dir.join(format!("doc-{i:04}.md")), doc).unwrap();
    }
}

/// Spawns the server on `kb`: the child, its address, spawn -> SERVING, and the index time it
/// logged. With `store`, the index is kept there (`--kb-index-dir`); `opened` says whether the
/// start must have opened it rather than built it.
fn spawn(kb: &Path, store: Option<(&Path, bool)>) -> (Child, String, Duration, f64) {
    let server = binary("dakota-server");
    let mut command = Command::new(server);
    command
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .arg("--kb-dir")
        .arg(kb)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    if let Some((store, _)) = store {
        command.arg("--kb-index-dir").arg(store);
    }
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    let (addr, _, log) = support::startup_log(&mut child);
    let elapsed = started.elapsed();
    let line = log
        .iter()
        .find(|l| l["message"] == "knowledge base indexed")
        .expect("the server logs its index time");
    let expected = if store.is_some_and(|(_, opened)| opened) {
        "opened"
    } else {
        "built"
    };
    assert_eq!(line["index"], expected, "{line}");
    let index_ms = line["elapsed_ms"].as_f64().expect("elapsed_ms");
    (child, addr, elapsed, index_ms)
}

fn stop(mut child: Child) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status();
    let _ = child.wait();
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn quantile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

/// p50 and p99 (ms) of `BATCHES` searches of the 10 queries, one after another.
async fn searches(addr: &str) -> (f64, f64) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ContentServiceClient::new(channel);
    let request = || api::SearchKnowledgeBaseRequest {
        queries: QUERIES.iter().map(|q| q.to_string()).collect(),
        max_results: 5,
        ..Default::default()
    };
    client.search_knowledge_base(request()).await.unwrap(); // warm-up
    let mut samples = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let started = Instant::now();
        client.search_knowledge_base(request()).await.unwrap();
        samples.push(started.elapsed());
    }
    (quantile(&mut samples, 0.5), quantile(&mut samples, 0.99))
}

fn main() {
    let generated: PathBuf =
        std::env::temp_dir().join(format!("dakota-kb-bench-{}", std::process::id()));
    generate(&generated);
    let bytes: u64 = std::fs::read_dir(&generated)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let documents = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "| knowledge base | documents | starts | spawn -> SERVING median ms | index median ms | index per document µs | search batch of 10 p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let store = generated.with_extension("index");
    let kept = "generated, index kept (`--kb-index-dir`), restarts";
    for (name, dir) in [
        ("sample (`knowledge/`)", kb_dir()),
        ("generated, ~7 kB each", generated.clone()),
        (kept, generated.clone()),
    ] {
        let n = documents(&dir);
        let store = (name == kept).then_some(store.as_path());
        let mut first_start = None;
        if let Some(store) = store {
            // The first start builds the index and keeps it; the starts measured open it.
            let (child, _, elapsed, _) = spawn(&dir, Some((store, false)));
            first_start = Some(elapsed.as_secs_f64() * 1000.0);
            stop(child);
        }
        let store = store.map(|s| (s, true));
        let (mut serving, mut index) = (Vec::new(), Vec::new());
        for _ in 0..STARTS {
            let (child, _, elapsed, index_ms) = spawn(&dir, store);
            serving.push(elapsed.as_secs_f64() * 1000.0);
            index.push(index_ms);
            stop(child);
        }
        let (child, addr, _, _) = spawn(&dir, store);
        let (p50, p99) = runtime.block_on(searches(&addr));
        stop(child);
        let index = median(index);
        println!(
            "| {name} | {n} | {STARTS} | {:.1} | {index:.1} | {:.0} | {p50:.2} | {p99:.2} |",
            median(serving),
            index * 1000.0 / n as f64
        );
        if let Some(ms) = first_start {
            println!(
                "| (its first start, which builds and keeps the index) | {n} | 1 | {ms:.1} | | | | |"
            );
        }
    }
    println!();
    println!(
        "Generated: {DOCUMENTS} documents, {:.1} MB in all.",
        bytes as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&generated);
    let _ = std::fs::remove_dir_all(&store);
}
