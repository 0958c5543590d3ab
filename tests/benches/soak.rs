//! Soak: jobs at a steady rate for a long time against the upstream stand-in with a mix of
//! faults; RSS, open file descriptors and runtime tasks of the server sampled over time, and
//! whether they level off.
//!
//!     cargo bench --bench soak                          # 10 minutes, 2 jobs a second
//!     cargo bench --bench soak -- --duration 3m --rate 4
//!
//! Spawns the optimised `dakota-server` (release settings) against the e2e tests' stand-in (a
//! real HTTP server on 127.0.0.1) with LLM agents, the vector store, Serper and page fetches.
//! Faults are mixed in as the jobs go: 500s and malformed answers from the LLM, 429s from
//! Serper, slow vector-store searches, writer streams that stall midway, pages whose
//! connection breaks. Finished jobs are kept 60 s (`--job-ttl`) and the process cache 8 MiB, so
//! the run reaches its steady state within minutes. Prints Markdown for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dakota::api::{self, content_service_client::ContentServiceClient, generate_event::Event};

mod support;
use support::{binary, kb_dir, metric};

use dakota_tests::standin::{Fault, Route, StandIn};

const SAMPLE_EVERY: Duration = Duration::from_secs(15);
const TOPICS: [&str; 4] = [
    "Private credit and liquidity for pension funds",
    "Currency hedging for international portfolios",
    "Infrastructure investing for institutions",
    "Stress testing and scenario analysis",
];

/// `--duration` (default 10m) and `--rate` (jobs a second, default 2) after `--`.
fn settings() -> (Duration, f64) {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let duration = value("--duration")
        .map(|d| humantime::parse_duration(&d).expect("--duration like 10m or 90s"))
        .unwrap_or(Duration::from_secs(600));
    let rate = value("--rate")
        .map(|r| r.parse().expect("--rate in jobs per second"))
        .unwrap_or(2.0);
    (duration, rate)
}

fn spawn_server(standin: &StandIn) -> (Child, String, String) {
    let mut child = Command::new(binary("dakota-server"))
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--log-format", "json", "--fetch-allow-private"])
        .args(["--job-ttl", "60s", "--cache-max-bytes", "8388608"])
        .args(["--llm-timeout", "10s", "--llm-idle-timeout", "2s"])
        .args([
            "--kb-timeout",
            "2s",
            "--web-timeout",
            "2s",
            "--fetch-timeout",
            "2s",
        ])
        .args(["--breaker-cool-down", "2s", "--generate-per-minute", "0"])
        .args(["--max-running-jobs", "8", "--max-queued-jobs", "256"])
        .args(["--rate-limits", "llm=0,kb=0,web=0,fetch=0"])
        .arg("--kb-dir")
        .arg(kb_dir())
        .env("OPENAI_BASE_URL", standin.openai_url())
        .env("OPENAI_API_KEY", "sk-soak-0123456789")
        .env("OPENAI_VECTOR_STORE_ID", "vs_soak")
        .env("SERPER_API_KEY", "serper-soak-0123456789")
        .env("SERPER_BASE_URL", &standin.url)
        .env("RUST_LOG", "warn,dakota_server=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, admin) = support::addresses(&mut child);
    (child, addr, admin)
}

/// Faults for the requests that follow job `n`: a steady mix over the run.
fn inject(standin: &StandIn, n: u64) {
    if n.is_multiple_of(5) {
        standin.fault(Route::Llm, [Fault::Status(500)]);
    }
    if n.is_multiple_of(7) {
        standin.fault(
            Route::Serper,
            [Fault::TooMany {
                retry_after_secs: 1,
            }],
        );
    }
    if n.is_multiple_of(11) {
        standin.fault(
            Route::VectorStore,
            [Fault::Delay(Duration::from_millis(300))],
        );
    }
    if n.is_multiple_of(13) {
        standin.fault(Route::Llm, [Fault::Malformed]);
    }
    if n.is_multiple_of(17) {
        standin.fault(Route::LlmStream, [Fault::Stall { chunks: 3 }]);
    }
    if n.is_multiple_of(19) {
        standin.fault(Route::Page, [Fault::Close]);
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    tasks: f64,
    retained: f64,
    done: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// How a job ended: `completed`, or the gRPC code name it failed with.
async fn job(addr: String, n: u64) -> String {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    let Ok(channel) = channel else {
        return "connect_error".into();
    };
    let mut client = ContentServiceClient::new(channel);
    let request = api::GenerateRequest {
        topic: format!("{} {}", TOPICS[n as usize % TOPICS.len()], n / 4),
        word_count: Some(600),
        ..Default::default()
    };
    let mut stream = match client.generate(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return format!("{:?}", status.code()),
    };
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(Event::Completed(_)) => return "completed".into(),
                Some(Event::Failed(f)) => return format!("{:?}", tonic::Code::from_i32(f.code)),
                _ => {}
            },
            Ok(None) => return "stream_ended".into(),
            Err(status) => return format!("{:?}", status.code()),
        }
    }
}

fn main() {
    dakota_server::testing::upstream::install_crypto_provider();
    let (duration, rate) = settings();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let standin = runtime.block_on(StandIn::start());
    let (mut child, addr, admin) = spawn_server(&standin);
    let pid = child.id();
    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let samples = runtime.block_on(async {
        let started = Instant::now();
        let mut samples = Vec::new();
        let sample = |at: Duration, done: u64| {
            let admin = admin.clone();
            async move {
                Sample {
                    at,
                    rss_kib: rss_kib(pid),
                    fds: open_fds(pid),
                    tasks: metric(&admin, "dakota_tokio_tasks_alive").await,
                    retained: metric(&admin, "dakota_jobs_retained{").await,
                    done,
                }
            }
        };
        samples.push(sample(Duration::ZERO, 0).await);
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut next_sample = SAMPLE_EVERY;
        let mut jobs = tokio::task::JoinSet::new();
        let mut n = 0u64;
        while started.elapsed() < duration {
            ticks.tick().await;
            inject(&standin, n);
            let (addr, tally) = (addr.clone(), outcomes.clone());
            jobs.spawn(async move {
                let outcome = job(addr, n).await;
                *tally.lock().unwrap().entry(outcome).or_default() += 1;
            });
            n += 1;
            while jobs.try_join_next().is_some() {}
            if started.elapsed() >= next_sample {
                let done = outcomes.lock().unwrap().values().sum();
                samples.push(sample(started.elapsed(), done).await);
                next_sample += SAMPLE_EVERY;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(120), async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        let done = outcomes.lock().unwrap().values().sum();
        samples.push(sample(started.elapsed(), done).await);
        samples
    });
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status();
    let exit = child.wait().unwrap();

    println!(
        "Soak: {} at {rate} jobs/s ({} jobs), server exit {exit}.",
        humantime::format_duration(duration),
        outcomes.lock().unwrap().values().sum::<u64>()
    );
    println!();
    println!("| outcome | jobs |");
    println!("|---|---|");
    for (outcome, count) in outcomes.lock().unwrap().iter() {
        println!("| {outcome} | {count} |");
    }
    println!();
    println!("| t (s) | jobs done | RSS MiB | open fds | tokio tasks | jobs kept |");
    println!("|---|---|---|---|---|---|");
    for s in &samples {
        println!(
            "| {:.0} | {} | {:.1} | {} | {:.0} | {:.0} |",
            s.at.as_secs_f64(),
            s.done,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.tasks,
            s.retained
        );
    }
    // Levelling off: the last third's peak against the middle third's, each series.
    let third = samples.len() / 3;
    if third >= 1 {
        let (middle, last) = (
            &samples[third..2 * third],
            &samples[2 * third..samples.len() - 1],
        );
        let peak =
            |part: &[Sample], f: fn(&Sample) -> f64| part.iter().map(f).fold(0.0_f64, f64::max);
        println!();
        println!("| series | peak, middle third | peak, last third | ratio |");
        println!("|---|---|---|---|");
        for (name, f) in [
            (
                "RSS MiB",
                (|s: &Sample| s.rss_kib as f64 / 1024.0) as fn(&Sample) -> f64,
            ),
            ("open fds", |s: &Sample| s.fds as f64),
            ("tokio tasks", |s: &Sample| s.tasks),
        ] {
            let (m, l) = (peak(middle, f), peak(last, f));
            println!("| {name} | {m:.1} | {l:.1} | {:.2} |", l / m.max(1.0));
        }
    }
}
