//! Server configuration: flags with environment fallbacks, defaults that run on a laptop.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// `dakota-server`: the Dakota Content Service.
#[derive(Debug, Clone, Parser)]
#[command(name = "dakota-server", version, about)]
pub struct Config {
    /// Address of the gRPC API.
    #[arg(long, env = "DAKOTA_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin HTTP port: /live, /ready, /health, /health/detailed, /metrics,
    /// /performance/agents, /performance/kb-search.
    #[arg(long, env = "DAKOTA_ADMIN_ADDR", default_value = "0.0.0.0:8000")]
    pub admin_addr: SocketAddr,

    /// Folder of Markdown/text documents indexed as the local knowledge base.
    #[arg(long, env = "DAKOTA_KB_DIR", default_value = "knowledge")]
    pub kb_dir: PathBuf,

    /// Folder where the local knowledge base's index is kept between starts, named by a
    /// fingerprint of the documents: a start with the same documents opens it instead of
    /// indexing them again (a changed document builds a new one). Unset: the index is built
    /// in memory at every start.
    #[arg(long, env = "DAKOTA_KB_INDEX_DIR")]
    pub kb_index_dir: Option<PathBuf>,

    /// Revision passes allowed when the contract or the fact check fails.
    #[arg(long, env = "DAKOTA_MAX_ITERATIONS", default_value_t = 2)]
    pub max_iterations: u32,

    /// How long a job with an idempotency key keeps running after its last
    /// watcher disconnects, waiting for a re-attach (jobs without a key stop at once).
    #[arg(long, env = "DAKOTA_DETACH_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub detach_grace: Duration,

    /// How long finished jobs stay available to `WatchJob` and `GetArticle`.
    #[arg(long, env = "DAKOTA_JOB_TTL", default_value = "1h", value_parser = parse_duration)]
    pub job_ttl: Duration,

    /// With Redis: how long a replica's hold on a job it runs lasts unless renewed (every
    /// third of it). When a replica dies, watchers on the others learn it within about this
    /// long, and the job's idempotency key may start it again.
    #[arg(long, env = "DAKOTA_JOB_LEASE", default_value = "5s", value_parser = parse_duration)]
    pub job_lease: Duration,

    /// Jobs running at once; more wait in the queue.
    #[arg(long, env = "DAKOTA_MAX_RUNNING_JOBS", default_value_t = 8)]
    pub max_running_jobs: usize,

    /// Jobs waiting for a free slot at most; beyond, `Generate` answers RESOURCE_EXHAUSTED
    /// with RetryInfo at once.
    #[arg(long, env = "DAKOTA_MAX_QUEUED_JOBS", default_value_t = 32)]
    pub max_queued_jobs: usize,

    /// Jobs kept in memory at most (finished ones are evicted first, oldest first).
    #[arg(long, env = "DAKOTA_MAX_JOBS", default_value_t = 1000)]
    pub max_jobs: usize,

    /// On SIGTERM/SIGINT, how long running jobs may take to finish before they are cancelled.
    #[arg(long, env = "DAKOTA_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// TLS on the gRPC port: the certificate chain (PEM). With `--tls-key`; without both the
    /// port speaks plaintext (for a mesh sidecar that terminates TLS). Reloaded when the file
    /// changes.
    #[arg(long, env = "DAKOTA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS on the gRPC port: the certificate's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "DAKOTA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How often the TLS files are checked for a new certificate (cert-manager rotations).
    #[arg(long, env = "DAKOTA_TLS_RELOAD_CHECK", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_check: Duration,

    /// Admin port: how long a client may take to send a request's headers, and how long an
    /// idle keep-alive connection stays open.
    #[arg(long, env = "DAKOTA_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub admin_header_timeout: Duration,

    /// Admin port: open connections at most; more are closed at once.
    #[arg(long, env = "DAKOTA_ADMIN_MAX_CONNECTIONS", default_value_t = 64)]
    pub admin_max_connections: usize,

    /// API keys that may call `ContentService` (`authorization: Bearer <key>`), comma-separated;
    /// with none here or in `--api-keys-file`, the API is open. A job belongs to the key that
    /// started it.
    #[arg(
        long,
        env = "DAKOTA_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<Secret>,

    /// A file of accepted API keys' SHA-256 hashes (hex, one per line; `#` comments), so the
    /// keys themselves are never stored: `printf %s KEY | sha256sum`.
    #[arg(long, env = "DAKOTA_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// With API keys: require them for gRPC health checks and reflection too (open by default,
    /// for probes). The admin port's /health/detailed and /performance/* always require one
    /// when keys are configured; /live, /ready and /metrics stay open.
    #[arg(long, env = "DAKOTA_AUTH_PROBES", default_value_t = false)]
    pub auth_probes: bool,

    /// Jobs a minute each caller (API key, or peer address without keys) may start; 0 for no
    /// quota. Beyond it `Generate` answers RESOURCE_EXHAUSTED with RetryInfo. Without keys,
    /// loopback peers (a mesh sidecar carrying everyone's calls) are not limited.
    #[arg(long, env = "DAKOTA_GENERATE_PER_MINUTE", default_value_t = 120)]
    pub generate_per_minute: u32,

    /// Jobs a caller may start at once before the per-minute quota applies.
    #[arg(long, env = "DAKOTA_GENERATE_BURST", default_value_t = 60)]
    pub generate_burst: u32,

    /// Concurrent streams (RPCs) one HTTP/2 connection may carry.
    #[arg(long, env = "DAKOTA_MAX_STREAMS_PER_CONNECTION", default_value_t = 256)]
    pub max_streams_per_connection: u32,

    /// HTTP/2 keepalive pings on idle connections (a peer that does not answer within 20 s is
    /// dropped); 0s for none.
    #[arg(long, env = "DAKOTA_HTTP2_KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive: Duration,

    /// Also write each finished article folder (`YYYY-MM-DD-<slug>/`) here.
    #[arg(long, env = "DAKOTA_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "DAKOTA_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub upstreams: UpstreamConfig,
}

/// The upstream services and how they are called. With no LLM endpoint configured, the
/// offline agents run; with no Serper key, web research is skipped with a warning.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamConfig {
    /// OpenAI-compatible Chat Completions base URL (OpenAI, vLLM, llama.cpp, Ollama, gateways).
    /// Setting it, or an API key, selects the LLM agents.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,

    /// Bearer token for the LLM endpoint and the vector store.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,

    /// Search this OpenAI vector store instead of the local knowledge base.
    #[arg(long, env = "OPENAI_VECTOR_STORE_ID")]
    pub openai_vector_store_id: Option<String>,

    /// Serper API key; without one, web research is skipped.
    #[arg(long, env = "SERPER_API_KEY", hide_env_values = true)]
    pub serper_api_key: Option<Secret>,

    #[arg(
        long,
        env = "SERPER_BASE_URL",
        default_value = "https://google.serper.dev"
    )]
    pub serper_base_url: String,

    /// Model of the `nano` tier (kb_researcher, seo_specialist, social_promoter).
    #[arg(long, env = "DAKOTA_MODEL_NANO", default_value = "gpt-4.1-nano")]
    pub model_nano: String,

    /// Model of the `mini` tier (web_researcher, fact_checker, summary_writer).
    #[arg(long, env = "DAKOTA_MODEL_MINI", default_value = "gpt-4.1-mini")]
    pub model_mini: String,

    /// Model of the `full` tier (research_synthesizer, content_writer).
    #[arg(long, env = "DAKOTA_MODEL_FULL", default_value = "gpt-4.1")]
    pub model_full: String,

    /// Per-agent model overrides: `agent=model`, comma-separated.
    #[arg(long, env = "DAKOTA_AGENT_MODELS", value_delimiter = ',', value_parser = parse_pair)]
    pub agent_models: Vec<(String, String)>,

    /// Prices in USD per million tokens, `model=input/output`, comma-separated; added to the
    /// built-in table of the default models.
    #[arg(long, env = "DAKOTA_PRICES", value_delimiter = ',', value_parser = parse_pair)]
    pub prices: Vec<(String, String)>,

    /// Folder of prompt files (`<agent>.md`) overriding the built-in ones.
    #[arg(long, env = "DAKOTA_PROMPTS_DIR")]
    pub prompts_dir: Option<PathBuf>,

    /// A fixed whole-call limit of one LLM request, replacing its budget. Unset (the
    /// default), each call gets the time its prompt and `max_tokens` need at the pace its
    /// model has shown (see /health/detailed), within the job's deadline.
    #[arg(long, env = "DAKOTA_LLM_TIMEOUT", value_parser = parse_duration)]
    pub llm_timeout: Option<Duration>,

    /// A fixed limit on the time to an LLM answer's first token (the server reads the prompt
    /// meanwhile), replacing its budget. Unset (the default): from the prompt's size and the
    /// model's measured prompt pace.
    #[arg(long, env = "DAKOTA_LLM_FIRST_TOKEN_TIMEOUT", value_parser = parse_duration)]
    pub llm_first_token_timeout: Option<Duration>,

    /// Once an LLM answer's tokens flow, a gap longer than this cuts it (stalled).
    #[arg(long, env = "DAKOTA_LLM_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub llm_idle_timeout: Duration,

    /// LLM calls in flight at once; the rest wait in the service's queue, not the model's,
    /// and the wait is not part of their time budget. 0: as many as the server says it has
    /// slots (llama.cpp's `/props`), else no limit beyond the pools.
    #[arg(long, env = "DAKOTA_LLM_CONCURRENCY", default_value_t = 0)]
    pub llm_concurrency: usize,

    /// The model's context window in tokens, when the server does not say it (llama.cpp's
    /// `/props`, or `max_model_len`/`context_length` in `/v1/models`). Prompts are fitted
    /// into it with room for the answer.
    #[arg(long, env = "DAKOTA_LLM_CONTEXT_TOKENS")]
    pub llm_context_tokens: Option<u32>,

    /// Ask structured answers as streams too, so a slow model is seen working and a stall is
    /// told from slowness (a server that answers in one body is read either way).
    #[arg(long, env = "DAKOTA_LLM_STREAM_STRUCTURED", default_value_t = true, action = clap::ArgAction::Set)]
    pub llm_stream_structured: bool,

    /// Sampling temperature sent with every LLM call.
    #[arg(long, env = "DAKOTA_LLM_TEMPERATURE", default_value_t = 0.2)]
    pub llm_temperature: f32,

    /// How structured answers are asked for: `json-schema` (strict `response_format`, for
    /// OpenAI, llama.cpp, recent vLLM and Ollama), `json-object` (JSON mode, the schema in the
    /// prompt) or `prompt` (the schema in the prompt only, for servers with neither). The
    /// answer is checked by code in every mode.
    #[arg(
        long,
        env = "DAKOTA_LLM_STRUCTURED_OUTPUT",
        value_enum,
        default_value = "json-schema"
    )]
    pub llm_structured_output: StructuredOutput,

    /// Attempts per upstream call (retryable failures only: connect errors, 5xx, 429, malformed answers).
    #[arg(long, env = "DAKOTA_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// Timeout of one knowledge-base search (vector store).
    #[arg(long, env = "DAKOTA_KB_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub kb_timeout: Duration,

    /// Timeout of one web search.
    #[arg(long, env = "DAKOTA_WEB_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub web_timeout: Duration,

    /// Timeout of one source fetch.
    #[arg(long, env = "DAKOTA_FETCH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub fetch_timeout: Duration,

    /// Largest source page read, in bytes.
    #[arg(long, env = "DAKOTA_FETCH_MAX_BYTES", default_value_t = 2_000_000)]
    pub fetch_max_bytes: usize,

    /// The largest answer body read per upstream (`llm`, `kb`, `web`, `fetch`), in bytes, each
    /// overriding its default (llm=4194304, kb=4194304, web=1048576, fetch=--fetch-max-bytes);
    /// also the largest cached answer taken from Redis. A longer answer is not read further.
    #[arg(long, env = "DAKOTA_BODY_LIMITS", value_delimiter = ',', value_parser = parse_pair)]
    pub body_limits: Vec<(String, String)>,

    /// Allow fetching private, loopback and link-local addresses (tests only; never in production).
    #[arg(long, env = "DAKOTA_FETCH_ALLOW_PRIVATE", default_value_t = false)]
    pub fetch_allow_private: bool,

    /// Upstream calls in flight at once, over all upstreams.
    #[arg(long, env = "DAKOTA_MAX_CONCURRENT_UPSTREAM", default_value_t = 10)]
    pub max_concurrent_upstream: usize,

    /// Upstream calls in flight for research searches (kb_researcher, web_researcher).
    #[arg(long, env = "DAKOTA_POOL_SEARCH", default_value_t = 6)]
    pub pool_search: usize,

    /// Upstream calls in flight for synthesis and writing.
    #[arg(long, env = "DAKOTA_POOL_CONTENT", default_value_t = 4)]
    pub pool_content: usize,

    /// Upstream calls in flight for analysis and distribution (SEO, fact check, fetches, social, summary).
    #[arg(long, env = "DAKOTA_POOL_ANALYSIS", default_value_t = 6)]
    pub pool_analysis: usize,

    /// Consecutive failures (connect errors, timeouts, 5xx) that open an upstream's breaker.
    #[arg(long, env = "DAKOTA_BREAKER_THRESHOLD", default_value_t = 5)]
    pub breaker_threshold: u32,

    /// How long an open breaker fails fast before one trial call.
    #[arg(long, env = "DAKOTA_BREAKER_COOL_DOWN", default_value = "30s", value_parser = parse_duration)]
    pub breaker_cool_down: Duration,

    /// Requests per minute per upstream (`llm`, `kb`, `web`, `fetch`), each overriding its
    /// default (llm=600, kb=1200, web=300, fetch=600); 0 is no limit.
    #[arg(long, env = "DAKOTA_RATE_LIMITS", value_delimiter = ',', value_parser = parse_pair)]
    pub rate_limits: Vec<(String, String)>,

    /// Requests per upstream (`llm`, `kb`, `web`, `fetch`) that may go out at once within its
    /// rate limit, each overriding its default of about one second's worth (rpm / 60, at
    /// least 1): a job's parallel searches go out together while the minute's count holds.
    #[arg(long, env = "DAKOTA_RATE_BURSTS", value_delimiter = ',', value_parser = parse_pair)]
    pub rate_bursts: Vec<(String, String)>,

    /// How long answers are cached per upstream (`llm`, `kb`, `web`, `fetch`), each overriding
    /// its default (llm=5m, kb=1h, web=1h, fetch=15m); 0s is not cached. LLM answers are cached
    /// only for deterministic requests (temperature 0); fetched pages only for their job and
    /// in the process.
    #[arg(long, env = "DAKOTA_CACHE_TTLS", value_delimiter = ',', value_parser = parse_pair)]
    pub cache_ttls: Vec<(String, String)>,

    /// Bytes the in-process cache holds at most (the least used entries go first).
    #[arg(long, env = "DAKOTA_CACHE_MAX_BYTES", default_value_t = 64 << 20)]
    pub cache_max_bytes: u64,

    /// Redis shared by the replicas: the second cache level, jobs any replica can serve, rate
    /// limits counted across replicas. Without it each replica works alone; with it down, too.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// How long one Redis operation may take before the server goes on without it.
    #[arg(long, env = "DAKOTA_REDIS_TIMEOUT", default_value = "250ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
}

impl Config {
    /// The configuration from the command line and environment. A variable set to nothing
    /// (`OPENAI_API_KEY=`, as a Secret or ConfigMap with blank values gives it) counts as
    /// unset: blank keys must not select upstreams that cannot authenticate.
    pub fn load() -> Self {
        use clap::Parser;
        let mut config = Self::parse();
        config.upstreams.clear_blank();
        config
    }
}

impl UpstreamConfig {
    fn clear_blank(&mut self) {
        let blank = |s: &str| s.trim().is_empty();
        if self.openai_base_url.as_deref().is_some_and(blank) {
            self.openai_base_url = None;
        }
        if self.openai_vector_store_id.as_deref().is_some_and(blank) {
            self.openai_vector_store_id = None;
        }
        for secret in [
            &mut self.openai_api_key,
            &mut self.serper_api_key,
            &mut self.redis_url,
        ] {
            if secret.as_ref().is_some_and(|s| blank(s.expose())) {
                *secret = None;
            }
        }
    }
}

/// How structured answers are asked for (`--llm-structured-output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StructuredOutput {
    /// `response_format: json_schema`, strict.
    #[default]
    JsonSchema,
    /// `response_format: json_object`, the schema in the system message.
    JsonObject,
    /// No `response_format`: the schema in the system message only.
    Prompt,
}

/// A secret from the command line or environment: never printed, never logged, zeroed when
/// dropped (`secrecy`).
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(secrecy::SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// `key=value`.
fn parse_pair(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected key=value"))?;
    Ok((key.trim().to_string(), value.trim().to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses human-readable durations with `humantime` (`500ms`, `5s`, `2m`, `1h`, `1m 30s`),
/// or plain (fractional) seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}; try 500ms, 5s, 2m or 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let config = Config::parse_from(["dakota-server", "--openai-api-key", "sk-very-secret"]);
        assert!(!format!("{config:?}").contains("sk-very-secret"));
        assert_eq!(
            config
                .upstreams
                .openai_api_key
                .map(|k| k.expose().to_string())
                .as_deref(),
            Some("sk-very-secret")
        );
    }

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
