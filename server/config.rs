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

    /// Folder of Markdown/text documents indexed as the local knowledge base.
    #[arg(long, env = "DAKOTA_KB_DIR", default_value = "knowledge")]
    pub kb_dir: PathBuf,

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

    /// Jobs kept in memory at most (finished ones are evicted first, oldest first).
    #[arg(long, env = "DAKOTA_MAX_JOBS", default_value_t = 1000)]
    pub max_jobs: usize,

    /// On SIGTERM/SIGINT, how long running jobs may take to finish before they are cancelled.
    #[arg(long, env = "DAKOTA_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Also write each finished article folder (`YYYY-MM-DD-<slug>/`) here.
    #[arg(long, env = "DAKOTA_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "DAKOTA_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Defaults for tests and embedding: ephemeral port, the repository's `knowledge/`.
    pub fn for_tests(kb_dir: impl Into<PathBuf>) -> Self {
        let mut config = Config::parse_from(["dakota-server"]);
        config.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.kb_dir = kb_dir.into();
        config
    }
}

/// Parses human-readable durations: `500ms`, `5s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 500ms, 5s, 2m or 1h)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
    }
}
