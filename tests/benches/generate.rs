//! Start-up and offline `Generate` timings of the release binaries, and their sizes.
//!
//!     cargo bench --bench generate
//!
//! Spawns the optimised `dakota-server` (release settings) on 127.0.0.1, measures spawn ->
//! SERVING, then times sequential and concurrent offline 1500-word jobs through the typed
//! client. Prints a Markdown report for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dakota::api::{self, content_service_client::ContentServiceClient, generate_event::Event};
use tonic::transport::Channel;

mod support;
use support::{binary, connect, kb_dir, metric, usage};

const STARTS: usize = 5;
const SEQUENTIAL_JOBS: usize = 20;
const CONCURRENT_JOBS: usize = 16;
/// The throughput stage: this many jobs, [`THROUGHPUT_IN_FLIGHT`] at a time.
const THROUGHPUT_JOBS: usize = 400;
const THROUGHPUT_IN_FLIGHT: usize = 32;
const TOPICS: [&str; 4] = [
    "Private credit and liquidity for pension funds",
    "Currency hedging for international portfolios",
    "Infrastructure investing for institutions",
    "Stress testing and scenario analysis",
];

/// Spawns the server; returns it, its address, and the time from spawn to the SERVING log line.
fn spawn_server() -> (Child, String, Duration) {
    let (child, addr, _, elapsed) = spawn_server_with_admin();
    (child, addr, elapsed)
}

/// The server, its gRPC and admin addresses, and the time from spawn to SERVING.
fn spawn_server_with_admin() -> (Child, String, String, Duration) {
    spawn_server_with(&[])
}

/// [`spawn_server_with_admin`] with more arguments.
fn spawn_server_with(extra: &[&str]) -> (Child, String, String, Duration) {
    let server = binary("dakota-server"); // built before the clock starts
    let started = Instant::now();
    let mut child = Command::new(server)
        .args(extra)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--kb-dir")
        .arg(kb_dir())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, admin) = support::addresses(&mut child);
    (child, addr, admin, started.elapsed())
}

/// Memory kept per finished offline job: measured by the server (`dakota_jobs_retained_bytes`),
/// next to what the earlier log layout (one boxed `GenerateEvent` per event, each with its own
/// job id, and the article kept a second time) would hold for the same events, computed from
/// a full `WatchJob` replay of one job. Returns (jobs, bytes per job, earlier layout's bytes,
/// encoded article bytes, events).
async fn retained(
    client: &ContentServiceClient<Channel>,
    admin: &str,
) -> (f64, f64, usize, usize, usize) {
    use prost::Message;
    let jobs = metric(admin, "dakota_jobs_retained{state=\"finished\"}").await;
    let bytes = metric(admin, "dakota_jobs_retained_bytes{state=\"finished\"}").await;
    let mut client = client.clone();
    let mut stream = client
        .generate(api::GenerateRequest {
            topic: TOPICS[0].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut earlier, mut article, mut events) = (0, 0, 0);
    while let Some(event) = stream.message().await.unwrap() {
        events += 1;
        earlier += std::mem::size_of::<api::GenerateEvent>() + event.encoded_len();
        if let Some(Event::Completed(done)) = &event.event {
            article = done.article.as_ref().map_or(0, |a| a.encoded_len());
        }
    }
    (
        jobs,
        bytes / jobs.max(1.0),
        earlier + article,
        article,
        events,
    )
}

fn stop(mut child: Child) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status();
    let _ = child.wait();
}

async fn generate(mut client: ContentServiceClient<Channel>, topic: &str) -> (Duration, u32) {
    let started = Instant::now();
    let mut stream = client
        .generate(api::GenerateRequest {
            topic: topic.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut words = 0;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(Event::Completed(done)) = event.event {
            words = done
                .article
                .unwrap()
                .metadata
                .unwrap()
                .content
                .unwrap()
                .word_count;
        }
    }
    assert!(words > 0, "the job completed");
    (started.elapsed(), words)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn quantiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration, Duration) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (
        samples[0],
        pick(0.5),
        pick(0.95),
        samples[samples.len() - 1],
    )
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    dakota_server::testing::upstream::install_crypto_provider(); // for the scrapes' HTTP client
    let mut start_times = Vec::new();
    for _ in 0..STARTS {
        let (child, _, elapsed) = spawn_server();
        start_times.push(elapsed);
        stop(child);
    }
    let (child, addr, admin, _) = spawn_server_with_admin();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (sequential, concurrent_wall, concurrent, words, memory) = runtime.block_on(async {
        let client = connect(&addr).await;
        generate(client.clone(), TOPICS[0]).await; // warm-up
        let mut sequential = Vec::new();
        let mut words = Vec::new();
        for i in 0..SEQUENTIAL_JOBS {
            let (elapsed, w) = generate(client.clone(), TOPICS[i % TOPICS.len()]).await;
            sequential.push(elapsed);
            words.push(w);
        }
        let wall = Instant::now();
        let handles: Vec<_> = (0..CONCURRENT_JOBS)
            .map(|i| tokio::spawn(generate(client.clone(), TOPICS[i % TOPICS.len()])))
            .collect();
        let mut concurrent = Vec::new();
        for handle in handles {
            concurrent.push(handle.await.unwrap().0);
        }
        let wall = wall.elapsed();
        let memory = retained(&client, &admin).await;
        (sequential, wall, concurrent, words, memory)
    });
    stop(child);

    let size = |name: &std::path::Path| {
        std::fs::metadata(name)
            .map(|m| m.len() as f64 / 1_048_576.0)
            .unwrap_or(0.0)
    };
    let (s_min, s_med, s_p95, s_max) = quantiles(start_times);
    let (g_min, g_med, g_p95, g_max) = quantiles(sequential);
    let (c_min, c_med, c_p95, c_max) = quantiles(concurrent);
    println!("| measure | n | min ms | median ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| spawn -> SERVING (18-document knowledge base) | {STARTS} | {} | {} | {} | {} |",
        ms(s_min),
        ms(s_med),
        ms(s_p95),
        ms(s_max)
    );
    println!(
        "| offline 1500-word Generate, one at a time | {SEQUENTIAL_JOBS} | {} | {} | {} | {} |",
        ms(g_min),
        ms(g_med),
        ms(g_p95),
        ms(g_max)
    );
    println!(
        "| offline 1500-word Generate, {CONCURRENT_JOBS} at once | {CONCURRENT_JOBS} | {} | {} | {} | {} |",
        ms(c_min),
        ms(c_med),
        ms(c_p95),
        ms(c_max)
    );
    println!();
    println!(
        "{CONCURRENT_JOBS} concurrent jobs finished in {} ms of wall time ({:.1} jobs/s).",
        ms(concurrent_wall),
        CONCURRENT_JOBS as f64 / concurrent_wall.as_secs_f64()
    );
    println!(
        "Article lengths (words, target 1500): min {}, max {}.",
        words.iter().min().unwrap(),
        words.iter().max().unwrap()
    );
    let (jobs, per_job, earlier, article, events) = memory;
    println!();
    println!("| memory kept per finished offline 1500-word job | bytes |");
    println!("|---|---|");
    println!(
        "| measured by the server, mean of {jobs} finished jobs (`dakota_jobs_retained_bytes`) | {per_job:.0} |"
    );
    println!(
        "| the earlier layout for one such job ({events} events), computed from its replay | {earlier} |"
    );
    println!("| the job's `Article`, encoded | {article} |");
    throughput();
    println!();
    println!("| binary (release settings, stripped) | size MiB |");
    println!("|---|---|");
    println!("| dakota-server | {:.1} |", size(&binary("dakota-server")));
    println!("| dakota | {:.1} |", size(&binary("dakota")));
}

/// Offline jobs per second: [`THROUGHPUT_JOBS`] jobs, [`THROUGHPUT_IN_FLIGHT`] at a time
/// (job slots raised to match), against a server of its own. Per core two ways: the wall
/// rate over the machine's cores (the client shares them), and the server's own CPU time
/// per job (`/proc/PID/stat`), whose inverse is jobs per second of one busy core.
fn throughput() {
    let in_flight = THROUGHPUT_IN_FLIGHT.to_string();
    let (child, addr, _, _) = spawn_server_with(&[
        "--max-running-jobs",
        &in_flight,
        "--max-queued-jobs",
        "1000",
        "--max-jobs",
        "2000",
    ]);
    let pid = child.id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (cpu, wall) = runtime.block_on(async {
        let client = connect(&addr).await;
        for i in 0..THROUGHPUT_IN_FLIGHT {
            generate(client.clone(), TOPICS[i % TOPICS.len()]).await; // warm-up
        }
        let (_, _, cpu_before) = usage(pid);
        let started = Instant::now();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..THROUGHPUT_IN_FLIGHT)
            .map(|_| {
                let (client, next) = (client.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= THROUGHPUT_JOBS {
                            break;
                        }
                        generate(client.clone(), TOPICS[i % TOPICS.len()]).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        let wall = started.elapsed();
        let (_, _, cpu_after) = usage(pid);
        (cpu_after - cpu_before, wall)
    });
    stop(child);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rate = THROUGHPUT_JOBS as f64 / wall.as_secs_f64();
    let cpu_ms = cpu * 1000.0 / THROUGHPUT_JOBS as f64;
    println!();
    println!(
        "| offline throughput: {THROUGHPUT_JOBS} jobs, {THROUGHPUT_IN_FLIGHT} at a time | value |"
    );
    println!("|---|---|");
    println!("| wall time s | {:.2} |", wall.as_secs_f64());
    println!("| jobs/s | {rate:.1} |");
    println!(
        "| jobs/s per core (wall rate / {cores} cores, client included) | {:.1} |",
        rate / cores as f64
    );
    println!("| server CPU ms per job | {cpu_ms:.2} |");
    println!(
        "| jobs/s per busy server core (1000 / CPU ms per job) | {:.1} |",
        1000.0 / cpu_ms
    );
}
