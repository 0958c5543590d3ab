//! Shared fixtures: a real server on an ephemeral port, the typed client, and a gate that
//! holds a job mid-pipeline so tests can act on a running job.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dakota::api::{
    self, GenerateEvent, content_service_client::ContentServiceClient, generate_event::Event,
};
use dakota_server::{
    app::Server,
    config::Config,
    testing::agents::{
        Agent, AgentContext, AgentFuture, Agents, AgentsFactory, WebResearch, select::Upstreams,
    },
    testing::pipeline::JobRequest,
};
use tokio::sync::watch;
use tonic::{Streaming, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub type Client = ContentServiceClient<Channel>;

/// A binary of the workspace, from the target directory these tests were built into: the
/// server's and the client's own integration tests make cargo build them.
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .expect("the test runs from target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is not built: run the tests with `cargo nextest run` (the whole workspace)",
        path.display()
    );
    path
}

/// Upper bound on any single wait in a test, so a bug shows as a failure, not a hang.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub use dakota_tests::kb_dir;

pub fn config() -> Config {
    use clap::Parser;
    let mut config = Config::parse_from(["dakota-server"]);
    config.grpc_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.kb_dir = kb_dir();
    // Offline whatever the environment holds: tests opt in to upstreams explicitly.
    let upstreams = &mut config.upstreams;
    upstreams.openai_base_url = None;
    upstreams.openai_api_key = None;
    upstreams.openai_vector_store_id = None;
    upstreams.serper_api_key = None;
    config
}

pub struct TestServer {
    pub server: Server,
    pub url: String,
    pub client: Client,
    pub channel: Channel,
}

/// Starts a server with the offline agents and waits until it is SERVING.
pub async fn start(config: Config) -> TestServer {
    start_with(config, Arc::new(Agents::build)).await
}

pub async fn start_with(config: Config, agents: AgentsFactory) -> TestServer {
    let server = Server::start_with(config, agents)
        .await
        .expect("server starts");
    let url = format!("http://{}", server.grpc_addr);
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .expect("connects");
    wait_for_health(&channel, ServingStatus::Serving).await;
    TestServer {
        server,
        url,
        client: Client::new(channel.clone()),
        channel,
    }
}

impl TestServer {
    /// GET on the admin port: status and body.
    pub async fn admin(&self, path: &str) -> (u16, String) {
        admin_get(self.server.admin_addr, path).await
    }

    /// Opens a `Generate` stream.
    pub async fn open(
        &mut self,
        request: impl tonic::IntoRequest<api::GenerateRequest>,
    ) -> Streaming<GenerateEvent> {
        self.client.generate(request).await.unwrap().into_inner()
    }

    /// Starts a job and waits until it is held at `gate`; returns its stream and id.
    pub async fn held_job(
        &mut self,
        gate: &Gate,
        request: api::GenerateRequest,
    ) -> (Streaming<GenerateEvent>, String) {
        let held_before = gate.entered.load(Ordering::SeqCst);
        let mut stream = self.open(request).await;
        let job_id = next(&mut stream).await.unwrap().job_id;
        gate.wait_entered(held_before + 1).await;
        (stream, job_id)
    }

    /// Runs a job to its end and returns all its events.
    pub async fn generate(&mut self, request: api::GenerateRequest) -> Vec<GenerateEvent> {
        collect(&mut self.client.generate(request).await.unwrap().into_inner()).await
    }

    /// Every event of a job, replayed with `WatchJob` from the start.
    pub async fn replay(&mut self, job_id: String) -> Vec<GenerateEvent> {
        collect(&mut self.watch(job_id, 0).await).await
    }

    /// A `WatchJob` stream of the events after `after_sequence`.
    pub async fn watch(&mut self, job_id: String, after_sequence: u64) -> Streaming<GenerateEvent> {
        let request = api::WatchJobRequest {
            job_id,
            after_sequence,
        };
        self.client
            .watch_job(request)
            .await
            .expect("WatchJob answers")
            .into_inner()
    }

    /// The finished article of a job, by `GetArticle`.
    pub async fn article(&mut self, job_id: String) -> api::Article {
        let request = api::GetArticleRequest { job_id };
        self.client
            .get_article(request)
            .await
            .expect("GetArticle answers")
            .into_inner()
    }
}

/// The writer's text as streamed in its last pass.
pub fn streamed_text(events: &[GenerateEvent]) -> String {
    let deltas = || {
        events.iter().filter_map(|e| match &e.event {
            Some(Event::ContentDelta(d)) => Some(d),
            _ => None,
        })
    };
    let last_pass = deltas().map(|d| d.iteration).max().unwrap_or(1);
    deltas()
        .filter(|d| d.iteration == last_pass)
        .map(|d| d.text.as_str())
        .collect()
}

/// An article's sources as the contract checks take them (without text).
pub fn as_sources(article: &api::Article) -> Vec<dakota_server::testing::agents::SourceDoc> {
    article
        .sources
        .iter()
        .map(|s| dakota_server::testing::agents::SourceDoc {
            source: s.clone(),
            section: String::new(),
            text: String::new(),
        })
        .collect()
}

pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

pub async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health check answers");
    response.into_inner().status()
}

pub async fn wait_for_health(channel: &Channel, wanted: ServingStatus) {
    wait_for_service(channel, "", wanted).await;
}

pub async fn wait_for_service(channel: &Channel, service: &str, wanted: ServingStatus) {
    tokio::time::timeout(PATIENCE, async {
        while health(channel, service).await != wanted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("server reaches the wanted health status");
}

/// `--rate-limits` turning every upstream's limit off.
pub fn no_rate_limits() -> Vec<(String, String)> {
    ["llm", "kb", "web", "fetch"]
        .iter()
        .map(|u| (u.to_string(), "0".to_string()))
        .collect()
}

pub fn request(topic: &str) -> api::GenerateRequest {
    api::GenerateRequest {
        topic: topic.to_string(),
        ..Default::default()
    }
}

/// The next event of a stream, failing the test rather than hanging.
pub async fn next(stream: &mut Streaming<GenerateEvent>) -> Option<GenerateEvent> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event within the patience window")
        .expect("the stream does not error")
}

/// Every remaining event of a stream, up to its end.
pub async fn collect(stream: &mut Streaming<GenerateEvent>) -> Vec<GenerateEvent> {
    let mut events = Vec::new();
    while let Some(event) = next(stream).await {
        events.push(event);
    }
    events
}

/// The phases a job started, in order (a phase run twice appears twice).
pub fn phases_started(events: &[GenerateEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::PhaseStarted(p)) => Some(p.phase.clone()),
            _ => None,
        })
        .collect()
}

pub fn final_article(events: &[GenerateEvent]) -> api::Article {
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Completed(c)) => c.article.expect("completed carries the article"),
        other => panic!("expected completed, got {other:?}"),
    }
}

pub fn failed(events: &[GenerateEvent]) -> api::Failed {
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Failed(f)) => f,
        other => panic!("expected failed, got {other:?}"),
    }
}

/// Holds `web_researcher` until opened; records whether a held run was dropped (cancelled)
/// before it finished.
#[derive(Clone)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
    pub entered: Arc<AtomicUsize>,
    pub dropped: Arc<AtomicBool>,
}

impl Gate {
    pub fn new() -> Self {
        Self {
            open: Arc::new(watch::channel(false).0),
            entered: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until `n` jobs are held at the gate.
    pub async fn wait_entered(&self, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            while self.entered.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("jobs reach the gate");
    }

    pub async fn wait_dropped(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !self.dropped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Offline agents with `web_researcher` behind this gate.
    pub fn agents(&self) -> AgentsFactory {
        let gate = self.clone();
        Arc::new(move |kb, upstreams: &Upstreams| {
            let mut agents = Agents::build(kb, upstreams);
            agents.web_researcher = Arc::new(GatedWeb {
                inner: agents.web_researcher.clone(),
                gate: gate.clone(),
            });
            agents
        })
    }
}

struct GatedWeb {
    inner: Arc<dyn Agent<JobRequest, WebResearch>>,
    gate: Gate,
}

/// Sets the flag when dropped while armed.
struct DropFlag(Arc<AtomicBool>, bool);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl Agent<JobRequest, WebResearch> for GatedWeb {
    fn provider(&self) -> &str {
        self.inner.provider()
    }
    fn model(&self) -> &str {
        self.inner.model()
    }
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        input: &'a JobRequest,
    ) -> AgentFuture<'a, WebResearch> {
        Box::pin(async move {
            let mut flag = DropFlag(self.gate.dropped.clone(), true);
            self.gate.entered.fetch_add(1, Ordering::SeqCst);
            let mut open = self.gate.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
            flag.1 = false;
            self.inner.run(cx, input).await
        })
    }
}

/// The real `dakota-server` binary on ephemeral ports with JSON logs, read up to SERVING.
pub struct ServerProcess {
    child: std::process::Child,
    /// Log lines, read off the pipe as they come by a thread of their own, so a chatty
    /// server never blocks on a full pipe while the test is busy elsewhere.
    lines: std::sync::mpsc::Receiver<String>,
    pub grpc_addr: String,
    /// Log lines read so far.
    pub log: Vec<String>,
}

impl ServerProcess {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(binary("dakota-server"))
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
            .args(args)
            .envs(envs.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A watchdog, so a server that never comes up fails the test instead of hanging it.
        let pid = child.id();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(90));
            let _ = std::process::Command::new("sh")
                .args(["-c", &format!("kill -KILL {pid} 2>/dev/null")])
                .status();
        });
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut grpc_addr, mut log) = (None, Vec::new());
        for line in lines.iter() {
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("log lines are JSON: {line}"));
            if let Some(addr) = value["grpc_addr"].as_str() {
                grpc_addr = Some(addr.to_string());
            }
            let serving = value["message"] == "SERVING";
            log.push(line);
            if serving {
                break;
            }
        }
        let grpc_addr =
            grpc_addr.unwrap_or_else(|| panic!("the server never logged its address: {log:?}"));
        Self {
            child,
            lines,
            grpc_addr,
            log,
        }
    }

    pub async fn client(&self) -> Client {
        Client::new(
            Channel::from_shared(format!("http://{}", self.grpc_addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }

    /// SIGTERM; waits for the exit and reads the rest of the log.
    pub fn terminate(self) -> (std::process::ExitStatus, Vec<String>) {
        self.sigterm();
        self.wait()
    }

    /// `SIGKILL`: the process vanishes mid-job, as when its node dies.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let killed = std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// Waits for the exit and reads the rest of the log.
    pub fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        self.log.extend(self.lines.iter());
        (status, self.log)
    }

    /// Reads log lines until one whose message contains `text`; false if the log ends first.
    pub fn wait_for_log(&mut self, text: &str) -> bool {
        for line in self.lines.iter() {
            let found = line.contains(text);
            self.log.push(line);
            if found {
                return true;
            }
        }
        false
    }
}
