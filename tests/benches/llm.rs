//! LLM-backed jobs against the upstream stand-in with a latency model: how close a job comes
//! to the time its upstream calls take, the LLM calls and tokens of an article, the latency the
//! resilience stack adds to one call, and many jobs at once.
//!
//!     cargo bench --bench llm                              # 100 and 1000 jobs at once
//!     cargo bench --bench llm -- --concurrency 100,1000,10000
//!     cargo bench --bench llm -- --only overhead           # or: jobs, load
//!
//! The stand-in (the e2e tests' `standin.rs`, a real HTTP server on 127.0.0.1) answers with
//! the latency model below; the optimised `dakota-server` runs as its own process, so its RSS
//! and CPU time are its own. Prints Markdown for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use dakota::api::{self, content_service_client::ContentServiceClient, generate_event::Event};
use dakota_server::{
    testing::metrics::Metrics,
    testing::resilience::{CallScope, Guard, Limits, Pool, breaker::CircuitBreaker},
    testing::upstream::{UpstreamError, client_span, retry::RetryPolicy},
};
use futures_util::future::join_all;

mod support;
use dakota_tests::standin::{Latency, StandIn};
use support::{binary, connect, kb_dir, usage};

/// The latency model: a structured answer (or a stream's first token) after 300 ms, streamed
/// text at 500 tokens a second, searches and page fetches 30 ms.
const LATENCY: Latency = Latency {
    first_token: Duration::ZERO,
    llm: Duration::from_millis(300),
    tokens_per_second: 500,
    search: Duration::from_millis(30),
    fetch: Duration::from_millis(30),
};
const SINGLE_JOBS: usize = 5;
const TOPICS: [&str; 4] = [
    "Private credit and liquidity for pension funds",
    "Currency hedging for international portfolios",
    "Infrastructure investing for institutions",
    "Stress testing and scenario analysis",
];

fn concurrency() -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--concurrency")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![100, 1000])
}

/// Whether the run includes `part` (`jobs`, `overhead`, `load`): all unless `--only` names one.
fn part(name: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .is_none_or(|only| only.split(',').any(|p| p == name))
}

/// The server with limits raised for `jobs` jobs at once; its gRPC and admin addresses.
fn spawn_server(standin: &StandIn, jobs: usize) -> (Child, String, String) {
    let many = (jobs * 4).max(64).to_string();
    // Upstream calls in flight: each is a connection to the stand-in (plain HTTP/1.1), two
    // file descriptors on this machine, and a burst of new ones beyond the stand-in's accept
    // backlog (1024) fails to connect and opens the breaker. Capped at 1000 (the default is
    // 10); the rest wait for a permit as they would behind any provider's limit.
    let calls = (jobs * 4).clamp(64, 1000).to_string();
    let jobs = jobs.max(1).to_string();
    let mut child = Command::new(binary("dakota-server"))
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--log-format", "json", "--fetch-allow-private"])
        .args(["--max-running-jobs", &jobs, "--max-queued-jobs", &jobs])
        .args(["--max-jobs", &many, "--max-streams-per-connection", &many])
        .args(["--max-concurrent-upstream", &calls, "--pool-search", &calls])
        .args(["--pool-content", &calls, "--pool-analysis", &calls])
        .args(["--rate-limits", "llm=0,kb=0,web=0,fetch=0"])
        .args(["--generate-per-minute", "0", "--llm-timeout", "300s"])
        .arg("--kb-dir")
        .arg(kb_dir())
        .env("OPENAI_BASE_URL", standin.openai_url())
        .env("OPENAI_API_KEY", "sk-bench-0123456789")
        .env("OPENAI_VECTOR_STORE_ID", "vs_bench")
        .env("SERPER_API_KEY", "serper-bench-0123456789")
        .env("SERPER_BASE_URL", &standin.url)
        .env("RUST_LOG", "warn,dakota_server=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, admin) = support::addresses(&mut child);
    (child, addr, admin)
}

/// The server's job logs by state (`running` or `finished`): (bytes retained, jobs).
async fn retained(admin: &str, state: &str) -> (f64, f64) {
    let labels = format!("{{state=\"{state}\"}}");
    (
        support::metric(admin, &format!("dakota_jobs_retained_bytes{labels}")).await,
        support::metric(admin, &format!("dakota_jobs_retained{labels}")).await,
    )
}

fn stop(mut child: Child) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status();
    let _ = child.wait();
}

struct JobResult {
    elapsed: Duration,
    started: Instant,
    ended: Instant,
    article: Option<api::Article>,
    error: Option<String>,
}

/// A failure as the error table shows it: its code and the start of its message.
fn error(code: tonic::Code, message: &str) -> String {
    let message: String = message.chars().take(60).collect();
    format!("{code:?}: {message}")
}

async fn job(client: ContentServiceClient<tonic::transport::Channel>, topic: String) -> JobResult {
    let mut client = client;
    let started = Instant::now();
    let request = api::GenerateRequest {
        topic,
        word_count: Some(1500),
        ..Default::default()
    };
    let mut result = JobResult {
        elapsed: Duration::ZERO,
        started,
        ended: started,
        article: None,
        error: None,
    };
    match client.generate(request).await {
        Err(status) => result.error = Some(error(status.code(), status.message())),
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(event)) => match event.event {
                        Some(Event::Completed(done)) => {
                            result.article = done.article;
                            break;
                        }
                        Some(Event::Failed(f)) => {
                            result.error = Some(error(tonic::Code::from_i32(f.code), &f.message));
                            break;
                        }
                        _ => {}
                    },
                    Ok(None) => {
                        result.error = Some("stream ended".into());
                        break;
                    }
                    Err(status) => {
                        result.error = Some(error(status.code(), status.message()));
                        break;
                    }
                }
            }
        }
    }
    result.ended = Instant::now();
    result.elapsed = result.ended - started;
    result
}

/// Time within `[from, to]` during which at least one of `intervals` was in flight.
fn busy(intervals: &[(Instant, Instant)], from: Instant, to: Instant) -> Duration {
    let mut spans: Vec<(Instant, Instant)> = intervals
        .iter()
        .filter(|(s, e)| *e > from && *s < to)
        .map(|(s, e)| ((*s).max(from), (*e).min(to)))
        .collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (s, e) in spans {
        match &mut current {
            Some((_, ce)) if s <= *ce => *ce = (*ce).max(e),
            _ => {
                if let Some((cs, ce)) = current {
                    total += ce - cs;
                }
                current = Some((s, e));
            }
        }
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total
}

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Per-call latency of the resilience stack (a guard with limits raised) against a bare
/// reqwest client, the same page of the stand-in, `in_flight` calls at a time.
async fn overhead(standin: &StandIn, in_flight: usize, calls: usize) -> [(Duration, Duration); 2] {
    let http = reqwest::Client::new();
    let url = format!("{}/pages/overhead", standin.url);
    let guard = Guard::new(
        "fetch",
        CircuitBreaker::new(u32::MAX, Duration::from_secs(1)),
        (0, 1),
        RetryPolicy::new(1),
        Arc::new(Limits::new(100_000, 100_000, 100_000, 100_000)),
        Arc::new(Metrics::new()),
    )
    .with_timeout(Duration::from_secs(60));
    let scope = CallScope::new(Pool::Analysis);
    let bare = |http: reqwest::Client, url: String| async move {
        let started = Instant::now();
        http.get(&url).send().await.unwrap().bytes().await.unwrap();
        started.elapsed()
    };
    // Warm-up: the connections `in_flight` calls need are opened before either is measured,
    // so neither side pays for them.
    join_all((0..in_flight).map(|_| bare(http.clone(), url.clone()))).await;
    let mut results = [(Duration::ZERO, Duration::ZERO); 2];
    for (slot, guarded) in [(0, false), (1, true)] {
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls / in_flight {
            let batch = (0..in_flight).map(|_| {
                let (http, url, guard, scope) = (http.clone(), url.clone(), &guard, &scope);
                async move {
                    if !guarded {
                        return bare(http, url).await;
                    }
                    let started = Instant::now();
                    let span = || client_span("fetch", "GET", "{page}");
                    let (result, _) = guard
                        .call(scope, &span, |_| {
                            let (http, url) = (http.clone(), url.clone());
                            async move {
                                http.get(&url)
                                    .send()
                                    .await
                                    .map_err(|e| UpstreamError::Connect {
                                        upstream: "fetch",
                                        message: e.to_string(),
                                    })?
                                    .bytes()
                                    .await
                                    .map_err(|e| UpstreamError::Connect {
                                        upstream: "fetch",
                                        message: e.to_string(),
                                    })
                            }
                        })
                        .await;
                    result.unwrap();
                    started.elapsed()
                }
            });
            samples.extend(join_all(batch).await);
        }
        results[slot] = (quantile(&mut samples, 0.5), quantile(&mut samples, 0.99));
    }
    results
}

fn main() {
    dakota_server::testing::upstream::install_crypto_provider();
    let levels = concurrency();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let standin = runtime.block_on(StandIn::start());

    let single_p50 = part("jobs").then(|| jobs(&runtime, &standin));
    if part("overhead") {
        per_call(&runtime, &standin);
    }
    if part("load") {
        load(&runtime, &standin, &levels, single_p50);
    }
}

/// A single job: its result, the upstream busy time within it, its upstream requests.
type Single = (JobResult, Duration, usize);

/// Single jobs, one at a time: wall time against the time some upstream call was in flight,
/// what the server keeps of them, their calls and tokens. Returns the median wall time.
fn jobs(runtime: &tokio::runtime::Runtime, standin: &StandIn) -> Duration {
    // One job at a time: wall time against the time some upstream call was in flight.
    let (child, addr, admin) = spawn_server(standin, 1);
    standin.latency(LATENCY);
    let (singles, finished): (Vec<Single>, (f64, f64)) = runtime.block_on(async {
        let client = connect(&addr).await;
        let mut singles = Vec::new();
        for i in 0..SINGLE_JOBS {
            let before = standin.intervals().len();
            let result = job(
                client.clone(),
                format!("{} (run {i})", TOPICS[i % TOPICS.len()]),
            )
            .await;
            let intervals: Vec<(Instant, Instant)> = standin.intervals()[before..]
                .iter()
                .map(|(_, s, e)| (*s, *e))
                .collect();
            let busy = busy(&intervals, result.started, result.ended);
            singles.push((result, busy, intervals.len()));
        }
        (singles, retained(&admin, "finished").await)
    });
    stop(child);
    let mut walls: Vec<Duration> = singles.iter().map(|(r, _, _)| r.elapsed).collect();
    let single_p50 = quantile(&mut walls, 0.5);

    println!(
        "Latency model: LLM answer or first token {} ms, streams {} tokens/s, searches and fetches {} ms.",
        LATENCY.llm.as_millis(),
        LATENCY.tokens_per_second,
        LATENCY.search.as_millis()
    );
    println!();
    println!(
        "| one 1500-word LLM job | wall ms | upstream busy ms | idle share | wall / busy | upstream requests |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, (result, busy, requests)) in singles.iter().enumerate() {
        assert!(result.error.is_none(), "job {i} failed: {:?}", result.error);
        println!(
            "| run {i} | {} | {} | {:.1}% | {:.3} | {requests} |",
            ms(result.elapsed),
            ms(*busy),
            100.0 * (1.0 - busy.as_secs_f64() / result.elapsed.as_secs_f64()),
            result.elapsed.as_secs_f64() / busy.as_secs_f64()
        );
    }

    // What the server keeps of a finished LLM job, against the article it delivered.
    let articles: Vec<usize> = singles
        .iter()
        .filter_map(|(r, _, _)| r.article.as_ref())
        .map(prost::Message::encoded_len)
        .collect();
    let article_mean = articles.iter().sum::<usize>() as f64 / articles.len().max(1) as f64;
    let kept = finished.0 / finished.1.max(1.0);
    println!();
    println!("| kept per finished 1500-word LLM job | bytes |");
    println!("|---|---|");
    println!(
        "| measured by the server, mean of {} finished jobs (`dakota_jobs_retained_bytes`) | {kept:.0} |",
        finished.1
    );
    println!("| the job's `Article`, encoded (mean) | {article_mean:.0} |");
    println!("| kept / article | {:.2} |", kept / article_mean.max(1.0));

    // Calls and tokens per article, by agent, from the last job's run metrics.
    if let Some(metrics) = singles
        .last()
        .and_then(|(r, _, _)| r.article.as_ref())
        .and_then(|a| a.metrics.clone())
    {
        println!();
        println!("| agent (last run) | provider | attempts | input tokens | output tokens |");
        println!("|---|---|---|---|---|");
        for agent in &metrics.agents {
            let usage = agent.usage.unwrap_or_default();
            println!(
                "| {} | {} | {} | {} | {} |",
                agent.agent,
                agent.provider,
                agent.attempts,
                usage.input_tokens,
                usage.output_tokens
            );
        }
        println!();
        println!("| upstream (last run) | calls | errors |");
        println!("|---|---|---|");
        for calls in &metrics.upstream_calls {
            println!(
                "| {} | {} | {} |",
                calls.upstream, calls.calls, calls.errors
            );
        }
    }

    single_p50
}

/// The latency the resilience stack adds to one call.
fn per_call(runtime: &tokio::runtime::Runtime, standin: &StandIn) {
    // The stack's own latency per call.
    standin.latency(Latency::default());
    println!();
    println!(
        "| per-call latency, a local page | in flight | bare reqwest p50 / p99 ms | through the stack p50 / p99 ms | added p50 / p99 ms |"
    );
    println!("|---|---|---|---|---|");
    for in_flight in [1, 100, 1000] {
        let [bare, guarded] =
            runtime.block_on(overhead(standin, in_flight, (in_flight * 20).max(2000)));
        println!(
            "| GET /pages/overhead | {in_flight} | {} / {} | {} / {} | {} / {} |",
            ms(bare.0),
            ms(bare.1),
            ms(guarded.0),
            ms(guarded.1),
            ms(guarded.0.saturating_sub(bare.0)),
            ms(guarded.1.saturating_sub(bare.1))
        );
    }
}

/// Many jobs at once, at each of `levels`.
fn load(
    runtime: &tokio::runtime::Runtime,
    standin: &StandIn,
    levels: &[usize],
    single_p50: Option<Duration>,
) {
    standin.latency(LATENCY);
    println!();
    println!(
        "| jobs at once | completed | errors | p50 s | p99 s | p50 / single p50 | peak RSS MiB | RSS per running job KiB | job log per running job KiB | CPU ms per job |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in levels {
        let (child, addr, admin) = spawn_server(standin, n);
        let pid = child.id();
        let (idle_rss, _, cpu_before) = usage(pid);
        // The job logs of the running jobs, sampled while the jobs run: the sample with the
        // most jobs running.
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = runtime.spawn({
            let (admin, stop) = (admin.clone(), sampling.clone());
            async move {
                let mut most = (0.0, 0.0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (bytes, jobs) = retained(&admin, "running").await;
                    if jobs > most.1 {
                        most = (bytes, jobs);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                most
            }
        });
        let results = runtime.block_on(async {
            // A connection per 100 streams, as a fleet of clients would open.
            let mut clients = Vec::new();
            for _ in 0..n.div_ceil(100) {
                clients.push(connect(&addr).await);
            }
            let jobs = (0..n).map(|i| {
                let client = clients[i % clients.len()].clone();
                tokio::spawn(job(
                    client,
                    format!("{} (load {i})", TOPICS[i % TOPICS.len()]),
                ))
            });
            join_all(jobs).await
        });
        let (_, peak_rss, cpu_after) = usage(pid);
        sampling.store(true, std::sync::atomic::Ordering::Relaxed);
        let (log_bytes, log_jobs) = runtime.block_on(sampler).unwrap();
        stop(child);
        let results: Vec<JobResult> = results.into_iter().map(Result::unwrap).collect();
        let errors = results.iter().filter(|r| r.error.is_some()).count();
        let mut times: Vec<Duration> = results
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| r.elapsed)
            .collect();
        let completed = times.len();
        if completed == 0 {
            println!("| {n} | 0 | {errors} | - | - | - | - | - | - | - |");
            continue;
        }
        let (p50, p99) = (quantile(&mut times, 0.5), quantile(&mut times, 0.99));
        println!(
            "| {n} | {completed} | {errors} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {:.1} | {:.1} |",
            p50.as_secs_f64(),
            p99.as_secs_f64(),
            single_p50.map_or(f64::NAN, |single| p50.as_secs_f64() / single.as_secs_f64()),
            peak_rss as f64 / 1024.0,
            (peak_rss.saturating_sub(idle_rss)) as f64 / n as f64,
            log_bytes / log_jobs.max(1.0) / 1024.0,
            (cpu_after - cpu_before) * 1000.0 / completed as f64
        );
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for error in results.iter().filter_map(|r| r.error.clone()) {
            *kinds.entry(error).or_default() += 1;
        }
        if !kinds.is_empty() {
            println!("|  | errors: {kinds:?} | | | | | | | | |");
        }
    }
}
