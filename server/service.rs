//! `dakota.content.v1.ContentService`: the gRPC face of jobs, the pipeline and the knowledge base.
use std::{
    sync::{Arc, OnceLock, RwLock},
    time::{Duration, Instant},
};

use tokio_stream::Stream;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    agents::{Agents, select::Upstreams},
    auth::Principal,
    error::ApiError,
    jobs::{
        self, AttachError, Job, JobRegistry,
        runner::JobRunner,
        shared::{Reattach, RemoteJob, SharedJobs},
    },
    kb::KnowledgeSource,
    metrics::Metrics,
    pipeline::JobRequest,
    resilience::{CallScope, Pool},
    telemetry, validation,
};
use dakota::api::{self, content_service_server::ContentService};

/// Time kept back from a caller's deadline so the job's `failed` event still reaches it
/// (a tenth of the deadline, at most this).
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

fn job_budget(deadline: Duration) -> Duration {
    deadline.saturating_sub(DEADLINE_MARGIN.min(deadline / 10))
}

/// What exists only once start-up has finished.
pub struct Ready {
    pub kb: KnowledgeSource,
    pub agents: Agents,
}

/// State shared by the API and the server's lifecycle.
pub struct AppState {
    pub jobs: Arc<JobRegistry>,
    pub ready: OnceLock<Ready>,
    /// True once draining. `Generate` admits and spawns a job under the read lock, so when
    /// shutdown has taken the write lock no job can start behind the drain's back.
    pub draining: RwLock<bool>,
    pub metrics: Arc<Metrics>,
    /// The upstream clients and their resilience stacks (for health).
    pub upstreams: Arc<Upstreams>,
    /// Admits, runs and ends jobs; its task tracker is what shutdown waits for.
    pub runner: JobRunner,
    /// The accepted API keys; `None` when the API is open.
    pub api_keys: Option<Arc<crate::auth::ApiKeys>>,
    /// Jobs in Redis, for every replica to serve; `None` without Redis.
    pub shared_jobs: Option<Arc<SharedJobs>>,
    /// Jobs each caller may start; `None` for no quota.
    pub quota: Option<crate::quota::GenerateQuota>,
}

impl AppState {
    fn ready(&self) -> Result<&Ready, ApiError> {
        if self.is_draining() {
            return Err(ApiError::Unavailable("shutting down"));
        }
        self.ready.get().ok_or(ApiError::Unavailable("starting"))
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops admitting new jobs; returns once no `Generate` is between admission and spawn.
    pub fn start_draining(&self) {
        *self.draining.write().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// Where a job runs (or ran).
enum Located {
    Here(Arc<Job>),
    Elsewhere(Arc<SharedJobs>, RemoteJob),
}

pub struct ContentApi {
    state: Arc<AppState>,
}

impl ContentApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// A job's events for one client: from this replica's log, or from another replica's
/// through Redis.
type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<api::GenerateEvent, Status>> + Send>>;

/// The RPCs, as [`ContentService`] below answers them.
impl ContentApi {
    async fn generate_rpc(
        &self,
        request: Request<api::GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let deadline = grpc_timeout(request.metadata())?.map(job_budget);
        // One trace per job: the caller's traceparent, if any, is its parent.
        let span = tracing::info_span!(
            "Generate",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = api::SERVICE_NAME,
            rpc.method = "Generate",
            job_id = tracing::field::Empty,
        );
        let _ = span.set_parent(telemetry::context_from_metadata(request.metadata()));
        let owner = caller(&request).cloned();
        let peer = request.remote_addr();
        let job_request = validation::generate_request(request.into_inner())?;
        self.state.ready()?;
        let id = uuid::Uuid::new_v4().to_string();
        if let Some(elsewhere) = self
            .attach_elsewhere(&job_request, owner.as_ref(), &id)
            .await?
        {
            tracing::info!("re-attached by idempotency key to a job of another replica");
            return Ok(Response::new(elsewhere));
        }
        // Admitted and spawned under the read lock: shutdown cannot start between the two.
        let (job, created, events) = {
            let draining = self
                .state
                .draining
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let ready = self
                .state
                .ready
                .get()
                .ok_or(ApiError::Unavailable("starting"))?;
            // While draining, a retry may still re-attach to its job; nothing new starts. Only
            // a new job takes one of the caller's quota: re-attaching by key takes none.
            let admit = || {
                if *draining {
                    return Err(AttachError::Draining);
                }
                self.take_quota(owner.as_ref(), peer)?;
                self.state.runner.admit()
            };
            let (job, created) = self
                .state
                .jobs
                .create_or_attach(job_request, owner.clone(), id, admit)
                .map_err(ApiError::from)?;
            let events = Box::pin(self.state.jobs.follow(job.clone(), 0));
            if created {
                tracing::info!(job_id = %job.id, topic = %job.request.topic, "job started");
                span.record("job_id", job.id.as_str());
                self.state
                    .runner
                    .spawn(job.clone(), ready.agents.clone(), deadline, span);
            } else {
                tracing::info!(job_id = %job.id, "re-attached by idempotency key");
            }
            (job, created, events)
        };
        if created && let Some(shared) = &self.state.shared_jobs {
            // Known to every replica before its id reaches the caller.
            let registered = shared.register(&job, owner.as_ref()).await;
            self.state
                .runner
                .tasks()
                .spawn(shared.clone().publish(job, owner, registered));
        }
        Ok(Response::new(events))
    }

    /// One of the caller's jobs of the `Generate` quota: per API key, or per peer address
    /// when the API is open. Behind a mesh sidecar every peer is loopback: those callers
    /// cannot be told apart, and are not limited here.
    fn take_quota(
        &self,
        owner: Option<&Principal>,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(), AttachError> {
        let who = match (owner, peer) {
            (Some(owner), _) => owner.0.clone(),
            (None, Some(peer)) if !peer.ip().is_loopback() => peer.ip().to_string(),
            _ => return Ok(()),
        };
        let Some(quota) = &self.state.quota else {
            return Ok(());
        };
        quota
            .take(&who)
            .map_err(|retry_after| AttachError::Quota { retry_after })
    }

    /// With shared jobs, a `Generate` whose idempotency key another replica's job holds
    /// follows that job (running on a live replica, or completed). Otherwise the key is
    /// claimed for `id`, the job this replica is about to start.
    async fn attach_elsewhere(
        &self,
        request: &JobRequest,
        owner: Option<&Principal>,
        id: &str,
    ) -> Result<Option<EventStream>, Status> {
        let (Some(shared), Some(key)) = (&self.state.shared_jobs, &request.idempotency_key) else {
            return Ok(None);
        };
        let scoped = jobs::scoped_key(owner, key);
        if self.state.jobs.holds_key(&scoped) {
            return Ok(None);
        }
        let Some(holder) = shared.claim_key(&scoped, id).await else {
            return Ok(None);
        };
        if let Some(job) = shared.find(&holder).await?.filter(|j| j.visible_to(owner)) {
            match shared.reattachable(&job, request).await {
                Reattach::Yes => return Ok(Some(Box::pin(shared.follow(job, 0)))),
                Reattach::KeyReused => {
                    return Err(ApiError::from(AttachError::KeyReused(holder)).into());
                }
                Reattach::No => {}
            }
        }
        shared.replace_key(&scoped, id).await;
        Ok(None)
    }

    /// The job `id` where it is: in this process, or (with shared jobs) on another replica.
    async fn locate(&self, id: &str, owner: Option<&Principal>) -> Result<Located, Status> {
        if let Some(job) = self.state.jobs.get(id, owner) {
            return Ok(Located::Here(job));
        }
        if let Some(shared) = &self.state.shared_jobs
            && let Some(job) = shared.find(id).await?.filter(|j| j.visible_to(owner))
        {
            return Ok(Located::Elsewhere(shared.clone(), job));
        }
        Err(ApiError::JobNotFound(id.to_string()).into())
    }

    async fn watch_job_rpc(
        &self,
        request: Request<api::WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let owner = caller(&request).cloned();
        let request = request.into_inner();
        let id = validation::job_id(&request.job_id)?;
        Ok(Response::new(
            match self.locate(&id, owner.as_ref()).await? {
                Located::Here(job) => Box::pin(self.state.jobs.follow(job, request.after_sequence)),
                Located::Elsewhere(shared, job) => {
                    Box::pin(shared.follow(job, request.after_sequence))
                }
            },
        ))
    }

    async fn get_article_rpc(
        &self,
        request: Request<api::GetArticleRequest>,
    ) -> Result<Response<api::Article>, Status> {
        let owner = caller(&request).cloned();
        let id = validation::job_id(&request.into_inner().job_id)?;
        Ok(Response::new(
            match self.locate(&id, owner.as_ref()).await? {
                Located::Here(job) => job.article()?,
                Located::Elsewhere(shared, job) => shared.article(&job).await?,
            },
        ))
    }

    async fn cancel_job_rpc(
        &self,
        request: Request<api::CancelJobRequest>,
    ) -> Result<Response<api::CancelJobResponse>, Status> {
        let owner = caller(&request).cloned();
        let id = validation::job_id(&request.into_inner().job_id)?;
        let mut response = api::CancelJobResponse {
            job_id: id.clone(),
            ..Default::default()
        };
        let job = match self.locate(&id, owner.as_ref()).await? {
            Located::Here(job) => job,
            Located::Elsewhere(shared, job) => {
                response.set_state(shared.cancel(&job).await?);
                return Ok(Response::new(response));
            }
        };
        if !job.is_finished() {
            job.cancel.cancel();
            // The pipeline records the cancellation as it unwinds; give it a moment so the
            // answer says what the job ended as.
            job.wait_finished(Duration::from_secs(2)).await;
        }
        response.set_state(job.state());
        Ok(Response::new(response))
    }

    async fn search_knowledge_base_rpc(
        &self,
        request: Request<api::SearchKnowledgeBaseRequest>,
    ) -> Result<Response<api::SearchKnowledgeBaseResponse>, Status> {
        let request = request.into_inner();
        let limits = validation::search_request(&request)?;
        let kb = self.state.ready()?.kb.clone();
        let queries: Vec<String> = request
            .queries
            .iter()
            .map(|q| q.trim().to_string())
            .collect();
        let scope = CallScope::new(Pool::Search);
        let started = Instant::now();
        let batch = kb
            .search_batch(&scope, &queries, limits.max_results, limits.per_document)
            .await
            .hits;
        self.state.metrics.observe_kb_search(started.elapsed());
        let batch = batch.map_err(|e| match e {
            crate::kb::KbError::Upstream(upstream) => Status::unavailable(upstream.to_string()),
            other => ApiError::Internal(other.to_string()).into(),
        })?;
        let results = queries
            .into_iter()
            .zip(batch)
            .map(|(query, hits)| api::QueryResult {
                query,
                hits: hits
                    .into_iter()
                    .map(|hit| api::SearchHit {
                        snippet: crate::text::truncate_words(&hit.text.replace('\n', " "), 300),
                        title: hit.title,
                        url: hit.url,
                        score: hit.score,
                        section: hit.section,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(api::SearchKnowledgeBaseResponse { results }))
    }
}

/// The RPCs; request metrics come from [`crate::rpc_metrics`], a layer on the server.
#[tonic::async_trait]
impl ContentService for ContentApi {
    type GenerateStream = EventStream;
    type WatchJobStream = EventStream;

    async fn generate(
        &self,
        request: Request<api::GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.generate_rpc(request).await
    }

    async fn watch_job(
        &self,
        request: Request<api::WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.watch_job_rpc(request).await
    }

    async fn get_article(
        &self,
        request: Request<api::GetArticleRequest>,
    ) -> Result<Response<api::Article>, Status> {
        self.get_article_rpc(request).await
    }

    async fn cancel_job(
        &self,
        request: Request<api::CancelJobRequest>,
    ) -> Result<Response<api::CancelJobResponse>, Status> {
        self.cancel_job_rpc(request).await
    }

    async fn search_knowledge_base(
        &self,
        request: Request<api::SearchKnowledgeBaseRequest>,
    ) -> Result<Response<api::SearchKnowledgeBaseResponse>, Status> {
        self.search_knowledge_base_rpc(request).await
    }
}

/// The API key the auth layer found on the request, when authentication is on.
fn caller<T>(request: &Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

/// The caller's deadline from the `grpc-timeout` header: `<1-8 digits><H|M|S|m|u|n>` as the
/// gRPC HTTP/2 spec allows it. Anything else is refused rather than guessed at, so no
/// header can produce a deadline the server cannot represent.
fn grpc_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, ApiError> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::InvalidArgument(vec![tonic_types::FieldViolation::new(
            "grpc-timeout",
            "must be 1-8 digits followed by a unit (H, M, S, m, u or n), as the gRPC spec says",
        )])
    };
    let value = value.to_str().map_err(|_| invalid())?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1).ok_or_else(invalid)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(invalid()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_parsed() {
        let parse = |value: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert(
                "grpc-timeout",
                value.parse().unwrap_or_else(|_| unreachable!()),
            );
            grpc_timeout(&metadata).ok()
        };
        assert_eq!(grpc_timeout(&MetadataMap::new()).ok(), Some(None));
        assert_eq!(parse("1500m"), Some(Some(Duration::from_millis(1500))));
        assert_eq!(parse("2S"), Some(Some(Duration::from_secs(2))));
        assert_eq!(
            parse("99999999H"),
            Some(Some(Duration::from_secs(99_999_999 * 3600)))
        );
        for bad in [
            "xS",
            "S",
            "",
            "18446744073709551615S",
            "9999999999999999H",
            "-1S",
            "+5S",
            "5s",
            "5",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} is refused");
        }
    }
}
