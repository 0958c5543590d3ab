//! Jobs against a real local model: SmolLM2-135M-Instruct behind llama.cpp's server, as
//! `scripts/local-model.sh` installs it (not in CI: the build takes about 20 minutes). Each
//! job runs alone, one after another, on the server's default settings with the local
//! knowledge base and no web search; per job it reports the final status, wall time, the
//! degraded agents, the tokens each agent generated, and the model's own time (llama.cpp's
//! `/metrics`: prompt and generation seconds) against the wall time.
//!
//!   bash scripts/local-model.sh install
//!   cargo bench -p dakota-tests --bench local_model -- --jobs 7 --words 300
//!   cargo bench -p dakota-tests --bench local_model -- --jobs 3 --words 800
//!
//! Without the installed model it says so and exits 0 (so `cargo bench` runs everywhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dakota::api::{self, generate_event::Event};
use support::{binary, connect, kb_dir};

const TOPICS: [&str; 7] = [
    "Private credit and liquidity for pension funds",
    "Currency hedging for international portfolios",
    "Infrastructure investing for institutions",
    "Stress testing and scenario analysis",
    "Family office governance and succession",
    "Endowment spending policies",
    "Secondaries in private equity",
];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// llama.cpp's server from the cache folder, on a free port, with its metrics on.
fn start_model() -> Option<(Child, String)> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-model.sh");
    let path = Command::new("bash")
        .arg(&script)
        .arg("path")
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&path.stdout).to_string();
    let mut parts = path.split_whitespace();
    let (bin, model) = (parts.next()?.to_string(), parts.next()?.to_string());
    if !std::path::Path::new(&bin).exists() {
        return None;
    }
    let port = free_port();
    let child = Command::new(&bin)
        .args([
            "-m",
            &model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args([
            "-t",
            "2",
            "-c",
            "8192",
            "-np",
            "4",
            "--no-webui",
            "--no-repack",
            "--metrics",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some((child, format!("http://127.0.0.1:{port}")))
}

async fn wait_healthy(root: &str) {
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(format!("{root}/health")).await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("llama-server did not become healthy");
}

/// llama.cpp's own seconds so far: (reading prompts, generating).
async fn model_seconds(root: &str) -> (f64, f64) {
    let scrape = reqwest::get(format!("{root}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("llamacpp:prompt_seconds_total"),
        value("llamacpp:tokens_predicted_seconds_total"),
    )
}

fn spawn_server(root: &str) -> (Child, String, String) {
    let mut child = Command::new(binary("dakota-server"))
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .args([
            "--model-nano",
            "smollm2",
            "--model-mini",
            "smollm2",
            "--model-full",
            "smollm2",
        ])
        .arg("--kb-dir")
        .arg(kb_dir())
        .env("OPENAI_BASE_URL", format!("{root}/v1"))
        .env("RUST_LOG", "warn,dakota_server=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, admin) = support::addresses(&mut child);
    (child, addr, admin)
}

struct Row {
    status: String,
    wall: Duration,
    words: u64,
    contract: String,
    degraded: Vec<String>,
    tokens: BTreeMap<String, u64>,
    model: (f64, f64),
}

async fn job(addr: &str, topic: &str, words: u32) -> Row {
    let mut client = connect(addr).await;
    let started = Instant::now();
    let request = api::GenerateRequest {
        topic: topic.to_string(),
        word_count: Some(words),
        skip_web_search: true,
        ..Default::default()
    };
    let mut row = Row {
        status: String::new(),
        wall: Duration::ZERO,
        words: 0,
        contract: String::new(),
        degraded: Vec::new(),
        tokens: BTreeMap::new(),
        model: (0.0, 0.0),
    };
    let mut stream = match client.generate(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            row.status = format!("{:?}", status.code());
            return row;
        }
    };
    let mut warnings = Vec::new();
    while let Ok(Some(event)) = stream.message().await {
        match event.event {
            Some(Event::Warning(w)) => warnings.push(w.code),
            Some(Event::Completed(done)) => {
                let article = done.article.unwrap_or_default();
                row.status = "completed".into();
                row.words =
                    dakota_server::testing::text::markdown_word_count(&article.markdown) as u64;
                let sources: Vec<_> = article
                    .sources
                    .iter()
                    .map(|s| dakota_server::testing::agents::SourceDoc {
                        source: s.clone(),
                        section: String::new(),
                        text: String::new(),
                    })
                    .collect();
                let problems = dakota_server::testing::domain::contract::check(
                    &article.markdown,
                    &sources,
                    words as usize,
                );
                row.contract = if problems.is_empty() {
                    "met".into()
                } else {
                    problems
                        .iter()
                        .map(|p| p.code())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let metrics = article.metrics.unwrap_or_default();
                row.degraded = metrics.degraded.iter().map(|d| d.agent.clone()).collect();
                for agent in metrics.agents {
                    let out = agent.usage.map_or(0, |u| u.output_tokens);
                    *row.tokens.entry(agent.agent).or_default() += out;
                }
            }
            Some(Event::Failed(failed)) => {
                let message: String = failed.message.chars().take(80).collect();
                row.status = format!("failed {} ({message})", failed.code);
            }
            _ => {}
        }
    }
    if warnings.iter().any(|w| w == "CONTRACT_NOT_MET") {
        row.contract.push_str(" +CONTRACT_NOT_MET");
    }
    row.wall = started.elapsed();
    row
}

#[tokio::main]
async fn main() {
    dakota_server::testing::upstream::install_crypto_provider();
    let jobs: usize = arg("--jobs").map_or(3, |n| n.parse().unwrap());
    let words: u32 = arg("--words").map_or(300, |n| n.parse().unwrap());
    let Some((mut model, root)) = start_model() else {
        println!(
            "local_model: skipped (no model installed; run `bash scripts/local-model.sh install`)"
        );
        return;
    };
    wait_healthy(&root).await;
    let (mut server, addr, admin) = spawn_server(&root);
    println!(
        "| job | words asked | status | contract | wall s | words | model prompt s | model generation s | model / wall | degraded | generated tokens by agent |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let (mut completed, mut met) = (0, 0);
    for (i, topic) in TOPICS.iter().cycle().take(jobs).enumerate() {
        let before = model_seconds(&root).await;
        let mut row = job(&addr, topic, words).await;
        let after = model_seconds(&root).await;
        row.model = (after.0 - before.0, after.1 - before.1);
        completed += usize::from(row.status == "completed");
        met += usize::from(row.contract == "met");
        let share = (row.model.0 + row.model.1) / row.wall.as_secs_f64().max(1e-9);
        let tokens: Vec<String> = row.tokens.iter().map(|(a, n)| format!("{a} {n}")).collect();
        println!(
            "| {} | {words} | {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.2} | {} | {} |",
            i + 1,
            row.status,
            row.contract,
            row.wall.as_secs_f64(),
            row.words,
            row.model.0,
            row.model.1,
            share,
            if row.degraded.is_empty() {
                "none".into()
            } else {
                row.degraded.join(", ")
            },
            tokens.join(", ")
        );
    }
    let opened = support::metric(
        &admin,
        "dakota_upstream_requests_total{upstream=\"llm\",outcome=\"breaker_open\"}",
    )
    .await;
    let health = reqwest::get(format!("http://{admin}/health/detailed"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    println!();
    println!(
        "{completed} of {jobs} completed, {met} with the article contract met; LLM calls refused by an open breaker: {}",
        opened.abs()
    );
    println!(
        "the LLM as /health/detailed saw it: {}",
        health["components"]["llm"]
    );
    let _ = server.kill();
    let _ = model.kill();
    let _ = (server.wait(), model.wait());
}
