//! The two-level cache: lookup latency of moka and Redis hits, single-flight under a burst, and
//! the upstream requests a repeated topic saves.
//!
//!     cargo bench --bench cache
//!
//! Needs `redis-server` on the PATH (started here on a free port). The cache is driven through
//! the server library (`dakota_server::testing::cache::Cache`, the same code the upstream stack calls);
//! the repeated topic runs whole jobs on in-process servers against the e2e tests' upstream
//! stand-in (a real HTTP server on 127.0.0.1). Prints Markdown tables for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use dakota::api::{self, generate_event::Event};
use dakota_server::{
    app::Server,
    config::{Config, Secret},
    testing::cache::{Cache, Key, Layer},
    testing::metrics::Metrics,
    testing::redis::Redis,
    testing::upstream::UpstreamError,
};
use futures_util::future::join_all;

mod support;
use support::kb_dir;

use dakota_tests::standin::{Route, StandIn};

const LOOKUPS: usize = 5_000;
const BURST: usize = 1_000;
const TOPIC: &str = "Private credit and liquidity for pension funds";

fn start_redis() -> (Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("redis://127.0.0.1:{port}"))
}

fn key(i: usize) -> Key {
    Key::new(
        "kb",
        Duration::from_secs(3600),
        &[format!("query {i}").as_bytes()],
    )
}

/// A search answer of a realistic size (5 hits of ~600 characters).
fn answer() -> Vec<String> {
    (0..5)
        .map(|i| format!("{i} {}", "pension liquidity ".repeat(33)))
        .collect()
}

fn quantiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(pick(0.5)), us(pick(0.99)))
}

async fn lookup(cache: &Cache, key: &Key) -> (Duration, Option<Layer>) {
    let started = Instant::now();
    let (value, layer) = cache
        .get_or_load(key, async { Ok::<_, UpstreamError>(answer()) })
        .await;
    value.unwrap();
    (started.elapsed(), layer)
}

/// p50/p99 of moka hits and of Redis hits (a fresh process cache in front of Redis).
async fn hit_latency(redis_url: &str) -> [(f64, f64); 2] {
    let metrics = Arc::new(Metrics::new());
    let redis = || {
        Some(Arc::new(
            Redis::connect(redis_url, Duration::from_millis(250), metrics.clone()).unwrap(),
        ))
    };
    let writer = Cache::new(64 << 20, redis(), metrics.clone());
    for i in 0..LOOKUPS {
        assert_eq!(
            lookup(&writer, &key(i)).await.1,
            None,
            "a miss fills both levels"
        );
    }
    let mut memory = Vec::with_capacity(LOOKUPS);
    for i in 0..LOOKUPS {
        let (elapsed, layer) = lookup(&writer, &key(i)).await;
        assert_eq!(layer, Some(Layer::Memory));
        memory.push(elapsed);
    }
    let reader = Cache::new(64 << 20, redis(), metrics.clone());
    let mut shared = Vec::with_capacity(LOOKUPS);
    for i in 0..LOOKUPS {
        let (elapsed, layer) = lookup(&reader, &key(i)).await;
        assert_eq!(layer, Some(Layer::Redis));
        shared.push(elapsed);
    }
    [quantiles(memory), quantiles(shared)]
}

/// Upstream loads for `BURST` identical lookups at once: on one process, and split over two
/// processes' caches sharing Redis. The load takes 50 ms, as a search does.
async fn burst(redis_url: &str) -> (usize, usize) {
    let metrics = Arc::new(Metrics::new());
    let redis = || {
        Some(Arc::new(
            Redis::connect(redis_url, Duration::from_millis(250), metrics.clone()).unwrap(),
        ))
    };
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, UpstreamError>(answer())
    };
    let one = Cache::new(64 << 20, None, metrics.clone());
    let burst_key = Key::new("kb", Duration::from_secs(3600), &[b"burst one"]);
    join_all((0..BURST).map(|_| one.get_or_load(&burst_key, load()))).await;
    let single = loads.swap(0, Ordering::SeqCst);

    let (a, b) = (
        Cache::new(64 << 20, redis(), metrics.clone()),
        Cache::new(64 << 20, redis(), metrics.clone()),
    );
    let shared_key = Key::new("kb", Duration::from_secs(3600), &[b"burst two"]);
    join_all((0..BURST).map(|i| {
        let cache = if i % 2 == 0 { &a } else { &b };
        cache.get_or_load(&shared_key, load())
    }))
    .await;
    (single, loads.load(Ordering::SeqCst))
}

fn server_config(standin: &StandIn, redis_url: Option<&str>) -> Config {
    let mut config = Config::parse_from(["dakota-server"]);
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.admin_addr = "127.0.0.1:0".parse().unwrap();
    config.kb_dir = kb_dir();
    let upstreams = &mut config.upstreams;
    upstreams.openai_base_url = Some(standin.openai_url());
    upstreams.openai_api_key = Some(Secret::new("sk-bench-0123456789"));
    upstreams.openai_vector_store_id = Some("vs_bench".into());
    upstreams.serper_api_key = Some(Secret::new("serper-bench-0123456789"));
    upstreams.serper_base_url = standin.url.clone();
    upstreams.fetch_allow_private = true;
    upstreams.llm_temperature = 0.0;
    upstreams.redis_url = redis_url.map(Secret::new);
    config
}

/// Upstream requests of one job, by route: (LLM structured, LLM streamed, vector store,
/// Serper, pages), and the agents the job reported as cache hits.
async fn job(server: &Server, standin: &StandIn) -> ([usize; 5], usize) {
    let before = counts(standin);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = api::content_service_client::ContentServiceClient::new(channel);
    let mut request = api::GenerateRequest {
        topic: TOPIC.into(),
        word_count: Some(800),
        ..Default::default()
    };
    request.audience = "pension trustees".into();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let mut hits = 0;
    while let Some(event) = stream.message().await.unwrap() {
        match event.event {
            Some(Event::AgentCompleted(a)) if a.cache_hit => hits += 1,
            Some(Event::Failed(f)) => panic!("the job failed: {}", f.message),
            _ => {}
        }
    }
    let after = counts(standin);
    (std::array::from_fn(|i| after[i] - before[i]), hits)
}

fn counts(standin: &StandIn) -> [usize; 5] {
    let llm = standin.requests_of(Route::Llm);
    let streamed = llm.iter().filter(|r| r.llm_kind() == "stream").count();
    [
        llm.len() - streamed,
        streamed,
        standin.requests_of(Route::VectorStore).len(),
        standin.requests_of(Route::Serper).len(),
        standin.requests_of(Route::Page).len(),
    ]
}

async fn start(config: Config) -> Server {
    let server = Server::start(config).await.unwrap();
    // SERVING once the knowledge base is indexed.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner().status);
        if status.ok() == Some(1) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    dakota_server::testing::upstream::install_crypto_provider();
    let (mut redis, redis_url) = start_redis();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ([memory, shared], (single, two), jobs) = runtime.block_on(async {
        let latency = hit_latency(&redis_url).await;
        let burst = burst(&redis_url).await;
        let standin = StandIn::start().await;
        let first = start(server_config(&standin, Some(&redis_url))).await;
        let cold = job(&first, &standin).await;
        let repeat = job(&first, &standin).await;
        // Another replica, sharing Redis, with nothing in its own memory.
        let second = start(server_config(&standin, Some(&redis_url))).await;
        let elsewhere = job(&second, &standin).await;
        (latency, burst, [cold, repeat, elsewhere])
    });
    let _ = redis.kill();
    let _ = redis.wait();

    println!("| cache lookup ({LOOKUPS} hits each, ~3 kB values) | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!("| moka (in process) | {:.1} | {:.1} |", memory.0, memory.1);
    println!(
        "| Redis (local `redis-server`, a fresh process cache) | {:.1} | {:.1} |",
        shared.0, shared.1
    );
    println!();
    println!("| single-flight: {BURST} identical lookups at once, a 50 ms load | upstream loads |");
    println!("|---|---|");
    println!("| one process | {single} |");
    println!("| two caches sharing Redis, half the burst each | {two} |");
    println!();
    println!(
        "| one 800-word job on the stand-in | LLM structured | LLM streamed | vector store | Serper | pages fetched | agents reporting a hit |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, (requests, hits)) in [
        "first time (cold caches)",
        "the same topic again, same replica",
        "the same topic on another replica sharing Redis",
    ]
    .iter()
    .zip(jobs)
    {
        let [structured, streamed, kb, web, pages] = requests;
        println!("| {name} | {structured} | {streamed} | {kb} | {web} | {pages} | {hits} |");
    }
}
