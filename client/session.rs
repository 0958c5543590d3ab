//! Connecting to the server and following a job to its end across dropped connections.
use std::time::Duration;

use tonic::{
    Code, Status, Streaming,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig},
};

use dakota::api::{self, content_service_client::ContentServiceClient, generate_event::Event};

/// Re-attach attempts after a dropped stream before giving up.
const MAX_REATTACH: u32 = 5;

/// The typed client, sending the API key (when there is one) with every call.
pub type Client = ContentServiceClient<InterceptedService<Channel, Credentials>>;

/// `authorization: Bearer <key>` on every call, when there is a key.
#[derive(Clone, Default)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    /// Credentials of an API key; `None` for none.
    pub fn new(api_key: Option<&str>) -> Result<Self, ConnectError> {
        api_key
            .map(|key| {
                format!("Bearer {}", key.trim())
                    .parse()
                    .map_err(|_| ConnectError::BadApiKey)
            })
            .transpose()
            .map(Self)
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The typed client over `channel`, with `credentials` on every call.
pub fn client(channel: Channel, credentials: Credentials) -> Client {
    ContentServiceClient::with_interceptor(channel, credentials)
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the API key has characters that cannot be sent in a header (use the key as issued)")]
    BadApiKey,
    #[error("`{0}` is not a server address (expected e.g. http://127.0.0.1:50051)")]
    BadAddress(String),
    #[error("TLS settings refused: {0}")]
    Tls(String),
    #[error("--ca-cert is for a TLS server, but `{0}` is plaintext: use https://")]
    CaWithoutTls(String),
    #[error(
        "cannot reach the Dakota server at {server}: {reason}. Start it with `cargo run --bin dakota-server`, or point --server / DAKOTA_SERVER at a running one"
    )]
    Unreachable { server: String, reason: String },
}

/// Connects (eagerly, so a refused connection is reported here, with the fix). `timeout`
/// bounds the whole connection, the HTTP/2 handshake included: a server that accepts and
/// then says nothing is unreachable too.
pub async fn connect(server: &str, timeout: Duration) -> Result<Channel, ConnectError> {
    connect_with(server, timeout, None).await
}

/// [`connect`], trusting the certificate authority `ca_pem` (PEM) for an `https://` server
/// besides the system's roots.
pub async fn connect_with(
    server: &str,
    timeout: Duration,
    ca_pem: Option<&[u8]>,
) -> Result<Channel, ConnectError> {
    let mut endpoint = Channel::from_shared(server.to_string())
        .map_err(|_| ConnectError::BadAddress(server.to_string()))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    if server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ConnectError::Tls(root_cause(&e)))?;
    } else if ca_pem.is_some() {
        return Err(ConnectError::CaWithoutTls(server.to_string()));
    }
    let unreachable = |reason: String| ConnectError::Unreachable {
        server: server.to_string(),
        reason,
    };
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(unreachable(root_cause(&error))),
        Err(_) => Err(unreachable(format!(
            "no answer within {} (--connect-timeout)",
            humanize(timeout)
        ))),
    }
}

fn humanize(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Statuses that mean "the connection went away", not "the server said no".
pub fn is_dropped(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown)
        || (status.code() == Code::Internal && status.message().contains("h2"))
}

/// The events of one job, in order and without duplicates; a dropped stream is resumed with
/// `WatchJob` after the last sequence seen (or by repeating `Generate` with the same
/// idempotency key, when the job id is not known yet).
pub struct JobFollower {
    client: Client,
    request: Option<api::GenerateRequest>,
    stream: Streaming<api::GenerateEvent>,
    pub job_id: Option<String>,
    pub last_sequence: u64,
    pub reattachments: u32,
    finished: bool,
}

impl JobFollower {
    /// Starts a job, bounded by `timeout` when given (the gRPC deadline). Give the request
    /// an idempotency key to make re-attaching safe.
    pub async fn generate(
        mut client: Client,
        request: api::GenerateRequest,
        timeout: Option<Duration>,
    ) -> Result<Self, Status> {
        let mut call = tonic::Request::new(request.clone());
        if let Some(limit) = timeout {
            call.set_timeout(limit);
        }
        let stream = client.generate(call).await?.into_inner();
        Ok(Self::new(client, Some(request), stream, None, 0))
    }

    /// Follows an existing job from after `after_sequence`.
    pub async fn watch(
        mut client: Client,
        job_id: String,
        after_sequence: u64,
    ) -> Result<Self, Status> {
        let stream = client
            .watch_job(api::WatchJobRequest {
                job_id: job_id.clone(),
                after_sequence,
            })
            .await?
            .into_inner();
        Ok(Self::new(
            client,
            None,
            stream,
            Some(job_id),
            after_sequence,
        ))
    }

    fn new(
        client: Client,
        request: Option<api::GenerateRequest>,
        stream: Streaming<api::GenerateEvent>,
        job_id: Option<String>,
        last_sequence: u64,
    ) -> Self {
        Self {
            client,
            request,
            stream,
            job_id,
            last_sequence,
            reattachments: 0,
            finished: false,
        }
    }

    /// The next event; `None` after the final `completed` or `failed`.
    pub async fn next(&mut self) -> Result<Option<api::GenerateEvent>, Status> {
        loop {
            if self.finished {
                return Ok(None);
            }
            match self.stream.message().await {
                Ok(Some(event)) => {
                    let last = matches!(event.event, Some(Event::Completed(_) | Event::Failed(_)));
                    // Events seen before a re-attach are replayed: skip them. The final event
                    // is the exception, as a follower past the end gets it again.
                    if event.sequence <= self.last_sequence && !last {
                        continue;
                    }
                    self.last_sequence = self.last_sequence.max(event.sequence);
                    self.job_id.get_or_insert_with(|| event.job_id.clone());
                    self.finished = last;
                    return Ok(Some(event));
                }
                Ok(None) => {
                    let status =
                        Status::unavailable("the server closed the stream before the job ended");
                    self.reattach(status).await?;
                }
                Err(status) if is_dropped(&status) => self.reattach(status).await?,
                Err(status) => return Err(status),
            }
        }
    }

    async fn reattach(&mut self, cause: Status) -> Result<(), Status> {
        let mut delay = Duration::from_millis(200);
        loop {
            if self.reattachments >= MAX_REATTACH {
                return Err(cause);
            }
            self.reattachments += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
            let attempt = match (&self.job_id, &self.request) {
                (Some(job_id), _) => {
                    self.client
                        .watch_job(api::WatchJobRequest {
                            job_id: job_id.clone(),
                            after_sequence: self.last_sequence,
                        })
                        .await
                }
                (None, Some(request)) if !request.idempotency_key.is_empty() => {
                    self.client.generate(request.clone()).await
                }
                _ => return Err(cause),
            };
            match attempt {
                Ok(response) => {
                    self.stream = response.into_inner();
                    return Ok(());
                }
                Err(status) if is_dropped(&status) => continue,
                Err(status) => return Err(status),
            }
        }
    }
}
