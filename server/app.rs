//! Assembles the server: gRPC API, health, reflection; start-up and the shutdown sequence.
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::layer::util::{Identity, Stack};

use crate::{
    auth::{ApiKeys, AuthLayer},
    fault::breaker::{BreakerState, CircuitBreaker},
    message_size::MessageSizeLayer,
    metrics::Metrics,
    net,
    rpc_metrics::RpcMetricsLayer,
};

use crate::{
    agents::{Agents, AgentsFactory, select::Upstreams},
    config::Config,
    jobs::shared::SharedJobs,
    jobs::{JobLimits, JobRegistry},
    kb::{KnowledgeBase, KnowledgeSource},
    pipeline::PipelineSettings,
    redis::Redis,
    service::{AppState, ContentApi, Ready},
    tls::{self, Certificates, TlsFiles},
};
use dakota::api::{self, content_service_server::ContentServiceServer};

use crate::jobs::runner::{JobRunner, MAX_MESSAGE_BYTES};

/// How long open streams (health watches, followers) may hold the server after the drain.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Largest header block of a request.
const MAX_HEADER_BYTES: u32 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("start-up failed: {0}")]
    Startup(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running server: its address, and the handle that stops it.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Binds the gRPC port and serves at once, NOT_SERVING until the knowledge base is
    /// indexed; then SERVING.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        Self::start_with(config, Arc::new(Agents::build)).await
    }

    /// [`Server::start`] with the agents chosen by `agents` (built once the knowledge base is
    /// indexed, off the async executor).
    pub async fn start_with(config: Config, agents: AgentsFactory) -> Result<Self, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let api_keys = ApiKeys::from_config(&config.api_keys, config.api_keys_file.as_deref())
            .map_err(ServerError::Startup)?
            .map(Arc::new);
        let certificates = certificates(&config)?;
        // Bad upstream configuration fails here, before the port is taken.
        let redis = redis(&config, &metrics)?;
        let upstreams = Arc::new(
            Upstreams::from_config(&config.upstreams, metrics.clone(), redis.clone())
                .map_err(ServerError::Startup)?,
        );
        if let Some(llm) = upstreams.llm.clone() {
            // What the model server says of itself (context, slots), before the first job.
            let model = config.upstreams.model_full.clone();
            tokio::spawn(async move { llm.server_props(&model).await });
        }
        let (listener, grpc_addr) = bind(config.grpc_addr).await?;
        let (admin_listener, admin_addr) = bind(config.admin_addr).await?;

        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::NotServing).await;
        let shutdown = CancellationToken::new();
        let state = app_state(
            &config,
            (&metrics, &upstreams),
            redis,
            api_keys.clone(),
            &shutdown,
        );
        let stop_serving = CancellationToken::new();
        let serve = grpc_server(&config, &state, api_keys)?
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                tls::incoming(listener, certificates.clone()),
                stop_serving.clone().cancelled_owned(),
            );
        if let Some(certificates) = &certificates {
            tokio::spawn(certificates.clone().watch(stop_serving.clone()));
        }
        tracing::info!(%grpc_addr, %admin_addr, tls = certificates.is_some(), "gRPC and admin HTTP listening (NOT_SERVING until ready)");
        // The admin port outlives the drain (so /ready can say 503) and stops with the server.
        let admin_stop = CancellationToken::new();
        tokio::spawn(net::serve_admin(
            admin_listener,
            crate::admin::router(state.clone()),
            net::AdminLimits {
                header_timeout: config.admin_header_timeout,
                max_connections: config.admin_max_connections,
            },
            admin_stop.clone(),
        ));

        let task = tokio::spawn(lifecycle(
            config,
            Startup {
                upstreams,
                agents,
                admin_stop,
            },
            state,
            health,
            shutdown.clone(),
            stop_serving,
            serve,
        ));
        Ok(Self {
            grpc_addr,
            admin_addr,
            shutdown,
            task,
        })
    }

    /// Begins the shutdown sequence (as SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A handle that begins the shutdown sequence when cancelled.
    pub fn shutdown_handle(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the server to stop: after [`Server::shutdown`], or a fatal start-up error.
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|e| ServerError::Startup(e.to_string()))?
    }
}

/// The TLS certificate store, when `--tls-cert` and `--tls-key` are set.
fn certificates(config: &Config) -> Result<Option<Arc<Certificates>>, ServerError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    Certificates::load(TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        check_every: config.tls_reload_check.max(Duration::from_millis(100)),
    })
    .map(Some)
    .map_err(ServerError::Startup)
}

/// The shared Redis, when `REDIS_URL` is set (a malformed URL is a start-up error).
fn redis(config: &Config, metrics: &Arc<Metrics>) -> Result<Option<Arc<Redis>>, ServerError> {
    let Some(url) = &config.upstreams.redis_url else {
        return Ok(None);
    };
    Redis::connect(
        url.expose(),
        config.upstreams.redis_timeout,
        metrics.clone(),
    )
    .map(|redis| Some(Arc::new(redis)))
    .map_err(ServerError::Startup)
}

/// A listener on `addr`, and the address it got (the port, when `addr` asked for any).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let bind_error = |source| ServerError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// What every RPC shares: jobs, limits, upstreams, settings.
fn app_state(
    config: &Config,
    (metrics, upstreams): (&Arc<Metrics>, &Arc<Upstreams>),
    redis: Option<Arc<Redis>>,
    api_keys: Option<Arc<ApiKeys>>,
    shutdown: &CancellationToken,
) -> Arc<AppState> {
    Arc::new(AppState {
        jobs: JobRegistry::new(
            JobLimits {
                max_jobs: config.max_jobs,
                job_ttl: config.job_ttl,
                detach_grace: config.detach_grace,
            },
            CancellationToken::new(),
        ),
        ready: OnceLock::new(),
        draining: RwLock::new(false),
        metrics: metrics.clone(),
        upstreams: upstreams.clone(),
        runner: JobRunner::new(
            config.max_running_jobs,
            config.max_queued_jobs,
            PipelineSettings {
                max_iterations: config.max_iterations,
                prices: upstreams.prices.clone(),
                metrics: metrics.clone(),
                fetcher: Some(upstreams.fetcher.clone()),
            },
            config.output_dir.clone(),
        ),
        shared_jobs: redis.map(|redis| {
            Arc::new(SharedJobs::new(
                redis,
                config.job_ttl,
                config.job_lease.max(Duration::from_millis(300)),
                shutdown.clone(),
            ))
        }),
        api_keys,
        quota: crate::quota::GenerateQuota::new(config.generate_per_minute, config.generate_burst),
    })
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(api::SERVICE_NAME, status).await;
}

/// Start-up, serving, and the shutdown sequence: NOT_SERVING, refuse new jobs, let running
/// jobs finish within the grace period, cancel the rest, close the port.
/// What start-up builds the agents from.
struct Startup {
    upstreams: Arc<Upstreams>,
    agents: AgentsFactory,
    admin_stop: CancellationToken,
}
/// The gRPC server's tower layers: every RPC is timed and counted (the refused ones too, with
/// a message over the limit counted as the RESOURCE_EXHAUSTED it is answered), then
/// authenticated.
type RpcLayers =
    Stack<Stack<AuthLayer, Stack<MessageSizeLayer, Stack<RpcMetricsLayer, Identity>>>, Identity>;

/// The gRPC server with its layers and services, all but health (whose reporter the
/// lifecycle keeps).
fn grpc_server(
    config: &Config,
    state: &Arc<AppState>,
    api_keys: Option<Arc<ApiKeys>>,
) -> Result<tonic::transport::server::Router<RpcLayers>, ServerError> {
    // v1 and v1alpha: grpcurl 1.8 and Python's grpcio-reflection speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let content = ContentServiceServer::new(ContentApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let layers = tower::ServiceBuilder::new()
        .layer(RpcMetricsLayer::new(state.metrics.clone()))
        .layer(MessageSizeLayer)
        .layer(AuthLayer::new(api_keys, !config.auth_probes))
        .into_inner();
    let keepalive = (!config.http2_keepalive.is_zero()).then_some(config.http2_keepalive);
    Ok(tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection.max(1))
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(keepalive.map(|_| Duration::from_secs(20)))
        // Bounded headers, and the rapid-reset flood answered by closing the connection.
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .http2_max_pending_accept_reset_streams(Some(100))
        .layer(layers)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(content))
}

async fn lifecycle(
    config: Config,
    Startup {
        upstreams,
        agents,
        admin_stop,
    }: Startup,
    state: Arc<AppState>,
    health: HealthReporter,
    shutdown: CancellationToken,
    stop_serving: CancellationToken,
    serve: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
) -> Result<(), ServerError> {
    let mut serving = tokio::spawn(serve);
    let llm_breaker = upstreams
        .llm
        .as_ref()
        .map(|_| upstreams.guards.llm.breaker.clone());
    let (kb_dir, kb_index_dir) = (config.kb_dir.clone(), config.kb_index_dir.clone());
    let startup = tokio::task::spawn_blocking(move || {
        load(&kb_dir, kb_index_dir.as_deref(), &upstreams, agents)
    });
    let loaded = tokio::select! {
        loaded = startup => Some(loaded),
        () = shutdown.cancelled() => None,
    };
    let startup_error = match loaded {
        Some(Ok(Ok(ready))) => {
            let _ = state.ready.set(ready);
            let ended = serve_ready(&state, &health, &shutdown, llm_breaker, &mut serving).await;
            if let Some(ended) = ended {
                return ended;
            }
            None
        }
        Some(Ok(Err(error))) => Some(ServerError::Startup(error.to_string())),
        Some(Err(error)) => Some(ServerError::Startup(error.to_string())),
        None => None,
    };
    let result = drain(&config, &state, &health, &stop_serving, serving).await;
    admin_stop.cancel();
    tracing::info!("stopped");
    match startup_error {
        Some(error) => Err(error),
        None => result,
    }
}

/// What start-up makes before SERVING: the knowledge base (loaded or opened) and the agents.
/// Blocking: run it off the async executor.
fn load(
    kb_dir: &std::path::Path,
    kb_index_dir: Option<&std::path::Path>,
    upstreams: &Arc<Upstreams>,
    agents: AgentsFactory,
) -> Result<Ready, crate::kb::KbError> {
    let kb = match &upstreams.vector_store {
        Some(store) => KnowledgeSource::VectorStore(store.clone()),
        None => {
            let started = std::time::Instant::now();
            let kb = KnowledgeBase::load(kb_dir, kb_index_dir)?;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            let index = if kb.opened() { "opened" } else { "built" };
            tracing::info!(documents = kb.document_count(), chunks = kb.chunk_count(), dir = %kb_dir.display(), index, elapsed_ms, "knowledge base indexed");
            KnowledgeSource::Local(Arc::new(kb))
        }
    };
    let agents = agents(kb.clone(), upstreams);
    tracing::info!(
        knowledge_base = kb.name(),
        llm = upstreams.llm.as_ref().map_or("offline", |l| l.provider),
        web_search = if upstreams.serper.is_some() {
            "serper"
        } else {
            "none"
        },
        "agents selected"
    );
    Ok(Ready { kb, agents })
}

/// SERVING, with the background tasks of a ready server, until the shutdown (`None`) or
/// until the gRPC server itself ends (its result).
async fn serve_ready(
    state: &Arc<AppState>,
    health: &HealthReporter,
    shutdown: &CancellationToken,
    llm_breaker: Option<Arc<CircuitBreaker>>,
    serving: &mut tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) -> Option<Result<(), ServerError>> {
    set_health(health, ServingStatus::Serving).await;
    tracing::info!("SERVING");
    let expiry = tokio::spawn(state.jobs.clone().expire_periodically(shutdown.clone()));
    // With shared jobs, this replica's finished jobs are written again if Redis loses them
    // (stopped with the shutdown token, like the expiry).
    if let Some(shared) = &state.shared_jobs {
        tokio::spawn(shared.clone().keep_records(state.jobs.clone()));
    }
    let breaker_watch = llm_breaker.map(|breaker| {
        tokio::spawn(follow_llm_breaker(
            breaker,
            health.clone(),
            state.clone(),
            shutdown.clone(),
        ))
    });
    tokio::select! {
        () = shutdown.cancelled() => {}
        result = &mut *serving => return Some(flatten(result)),
    }
    let _ = expiry.await;
    // Stopped before the drain sets NOT_SERVING, so it cannot set SERVING again.
    if let Some(watch) = breaker_watch {
        watch.abort();
        let _ = watch.await;
    }
    None
}

/// NOT_SERVING and no new jobs; the running ones get the grace period, then are cancelled;
/// then the gRPC server stops.
async fn drain(
    config: &Config,
    state: &AppState,
    health: &HealthReporter,
    stop_serving: &CancellationToken,
    mut serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) -> Result<(), ServerError> {
    tracing::info!("draining: NOT_SERVING, no new jobs");
    state.start_draining();
    set_health(health, ServingStatus::NotServing).await;
    let tasks = state.runner.tasks();
    tasks.close();
    if tokio::time::timeout(config.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(running = state.jobs.running(), grace = ?config.shutdown_grace, "grace period over; cancelling running jobs");
        state.jobs.cancel_all();
        let _ = tokio::time::timeout(CLOSE_GRACE, tasks.wait()).await;
    }
    stop_serving.cancel();
    match tokio::time::timeout(CLOSE_GRACE, &mut serving).await {
        Ok(result) => flatten(result),
        Err(_) => {
            serving.abort();
            Ok(())
        }
    }
}

/// `ContentService` is NOT_SERVING while the LLM's breaker is open (every job would fail),
/// and SERVING again once its cool-down ends and a trial may go through. The server as a
/// whole ("") stays SERVING: the process is fine.
async fn follow_llm_breaker(
    breaker: Arc<CircuitBreaker>,
    health: HealthReporter,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) {
    let mut changes = breaker.subscribe();
    loop {
        let (breaker_state, until) = *changes.borrow_and_update();
        let cooling = match (breaker_state, until) {
            (BreakerState::Open, Some(until)) if tokio::time::Instant::now() < until => Some(until),
            _ => None,
        };
        if !state.is_draining() {
            let status = if cooling.is_some() {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            health.set_service_status(api::SERVICE_NAME, status).await;
        }
        let cool_down_over = async {
            match cooling {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = cool_down_over => {}
            () = shutdown.cancelled() => return,
        }
    }
}

fn flatten(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServerError> {
    match result {
        Ok(inner) => Ok(inner?),
        Err(error) => Err(ServerError::Startup(error.to_string())),
    }
}
