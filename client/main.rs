//! `dakota`: the command-line client of the Dakota Content Service.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use dakota::{
    api::{self, generate_event::Event},
    output,
    safe_text::for_terminal,
};
use dakota_client::session::{self, Client, JobFollower};
use humantime::parse_duration;
use tonic::Status;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

mod progress;

#[derive(Debug, Parser)]
#[command(
    name = "dakota",
    version,
    about = "Generate sourced articles with the Dakota Content Service"
)]
struct Cli {
    /// The server's gRPC address.
    #[arg(
        long,
        global = true,
        env = "DAKOTA_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Connection timeout (bounds `health` as a whole).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// API key, sent as `authorization: Bearer <key>`, when the server requires one.
    #[arg(long, global = true, env = "DAKOTA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A certificate authority (PEM) to trust for an `https://` server, besides the system's
    /// (a private CA, or a test one).
    #[arg(long, global = true, env = "DAKOTA_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `dakota generate`'s arguments.
#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// What the article is about (3-500 characters).
    topic: String,
    /// Target length in words (100-10000).
    #[arg(long, default_value_t = 1500)]
    word_count: u32,
    /// Who the article is for.
    #[arg(long)]
    audience: Option<String>,
    /// Voice of the article.
    #[arg(long)]
    tone: Option<String>,
    /// Extra instructions for every agent (at most 1000 characters).
    #[arg(long)]
    instructions: Option<String>,
    /// Skip the social posts.
    #[arg(long)]
    no_social: bool,
    /// Skip the summary.
    #[arg(long)]
    no_summary: bool,
    /// Skip web research.
    #[arg(long)]
    skip_web_search: bool,
    /// Upper bound on LLM tokens for the job.
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Write the article folder (YYYY-MM-DD-<slug>/) here instead of printing the article.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object per event instead of progress bars.
    #[arg(long)]
    json: bool,
    /// Give up (and stop the job) after this long.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Re-attach to the job started with this key instead of starting another (random by default).
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an article, showing each phase's progress.
    Generate(GenerateArgs),
    /// Follow a running or finished job, replaying its events after a sequence number.
    Watch {
        job_id: String,
        /// Replay events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Fetch the finished article of a job.
    Get {
        job_id: String,
        /// Write the article folder here instead of printing the article.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the whole article as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a running job.
    Cancel { job_id: String },
    /// Search the knowledge base, one result list per query.
    Search {
        #[arg(required = true)]
        queries: Vec<String>,
        #[arg(long, default_value_t = 5)]
        max_results: u32,
        /// Passages of one document a query's hits may hold (1: each document's best).
        #[arg(long, default_value_t = 1)]
        per_document: u32,
        #[arg(long)]
        json: bool,
    },
    /// Check the server's gRPC health (exit 0 only when SERVING).
    Health {
        /// The service to check; the whole server when empty.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {}", for_terminal(&message));
            ExitCode::FAILURE
        }
    }
}

/// A failed call, told the way a person can act on it.
fn explain(status: Status) -> String {
    use tonic_types::StatusExt;
    let code = output::code_name(status.code());
    let bad_request = status.get_details_bad_request();
    let mut message = match &bad_request {
        Some(_) => format!("invalid request ({code}):"),
        None => format!("{} ({code})", status.message()),
    };
    if let Some(bad) = bad_request {
        for v in bad.field_violations {
            message.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    if let Some(retry) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        message.push_str(&format!("\n  retry after {} s", retry.as_secs_f64()));
    }
    message
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let started = std::time::Instant::now();
    let ca = cli.ca_cert.as_deref().map(read_ca).transpose()?;
    let channel = session::connect_with(&cli.server, cli.connect_timeout, ca.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let credentials =
        session::Credentials::new(cli.api_key.as_deref()).map_err(|e| e.to_string())?;
    let client = session::client(channel.clone(), credentials.clone());
    match cli.command {
        Command::Generate(args) => {
            let (request, timeout, out, json) = generate_request(args);
            let follower = JobFollower::generate(client.clone(), request, timeout)
                .await
                .map_err(explain)?;
            follow(client, follower, out, json).await
        }
        Command::Watch {
            job_id,
            after,
            out,
            json,
        } => {
            let follower = JobFollower::watch(client.clone(), job_id, after)
                .await
                .map_err(explain)?;
            follow(client, follower, out, json).await
        }
        Command::Get { job_id, out, json } => {
            let article = client
                .clone()
                .get_article(api::GetArticleRequest { job_id })
                .await
                .map_err(explain)?
                .into_inner();
            deliver(&article, out.as_deref(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { job_id } => cancel(client, job_id).await,
        Command::Search {
            queries,
            max_results,
            per_document,
            json,
        } => {
            let request = api::SearchKnowledgeBaseRequest {
                queries,
                max_results,
                max_per_document: per_document,
            };
            search(client, request, json).await
        }
        Command::Health { service } => {
            let health = HealthClient::with_interceptor(channel, credentials);
            // A probe: bounded as a whole by --connect-timeout.
            let left = cli.connect_timeout.saturating_sub(started.elapsed());
            let within = format!("{} within {:?}", cli.server, cli.connect_timeout);
            check_health(health, service, left, &within).await
        }
    }
}

/// The PEM file of `--ca-cert`.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "--ca-cert {}: {e} (a PEM file of the CA that signed the server's certificate)",
            path.display()
        )
    })
}

/// `dakota cancel`: the job's state after the request.
async fn cancel(mut client: session::Client, job_id: String) -> Result<ExitCode, String> {
    let response = client
        .cancel_job(api::CancelJobRequest { job_id })
        .await
        .map_err(explain)?
        .into_inner();
    println!(
        "job {}: {}",
        for_terminal(&response.job_id),
        response.state().as_str_name()
    );
    Ok(ExitCode::SUCCESS)
}

/// The request of `dakota generate`, its deadline and where its article goes.
fn generate_request(
    args: GenerateArgs,
) -> (
    api::GenerateRequest,
    Option<Duration>,
    Option<PathBuf>,
    bool,
) {
    let GenerateArgs {
        topic,
        word_count,
        audience,
        tone,
        instructions,
        no_social,
        no_summary,
        skip_web_search,
        max_tokens,
        out,
        json,
        timeout,
        idempotency_key,
    } = args;
    let request = api::GenerateRequest {
        topic,
        word_count: Some(word_count),
        audience: audience.unwrap_or_default(),
        tone: tone.unwrap_or_default(),
        custom_instructions: instructions.unwrap_or_default(),
        include_social: Some(!no_social),
        include_summary: Some(!no_summary),
        skip_web_search,
        // A key makes it safe to re-attach after a dropped connection.
        idempotency_key: idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        max_total_tokens: max_tokens,
    };
    (request, timeout, out, json)
}

/// `dakota search`: one result list per query, as lines or JSON.
async fn search(
    mut client: Client,
    request: api::SearchKnowledgeBaseRequest,
    json: bool,
) -> Result<ExitCode, String> {
    let response = client
        .search_knowledge_base(request)
        .await
        .map_err(explain)?
        .into_inner();
    for result in &response.results {
        if json {
            let hits: Vec<_> = result
                .hits
                .iter()
                .map(|h| serde_json::json!({"title": h.title, "url": h.url, "section": h.section, "score": h.score, "snippet": h.snippet}))
                .collect();
            let value = serde_json::json!({"query": result.query, "hits": hits});
            println!("{}", output::json_line(&value));
            continue;
        }
        println!(
            "{} ({} hits)",
            for_terminal(&result.query),
            result.hits.len()
        );
        for hit in &result.hits {
            println!(
                "  {:>6.2}  {} / {}\n          {}",
                hit.score,
                for_terminal(&hit.title),
                for_terminal(&hit.section),
                for_terminal(&hit.url)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dakota health`: exit 0 only when SERVING, within `limit`.
async fn check_health<S>(
    mut health: HealthClient<S>,
    service: String,
    limit: Duration,
    within: &str,
) -> Result<ExitCode, String>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let check = health.check(HealthCheckRequest {
        service: service.clone(),
    });
    let response = tokio::time::timeout(limit, check)
        .await
        .map_err(|_| format!("no health answer from {within} (--connect-timeout)"))?
        .map_err(explain)?
        .into_inner();
    let status = response.status();
    let name = if service.is_empty() {
        "server"
    } else {
        service.as_str()
    };
    println!("{name}: {}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Shows a job's events to its end; Ctrl-C cancels the job.
async fn follow(
    mut client: Client,
    mut follower: JobFollower,
    out: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode, String> {
    let mut display = progress::Display::new(json);
    loop {
        let event = tokio::select! {
            event = follower.next() => event,
            _ = tokio::signal::ctrl_c() => {
                display.finish();
                if let Some(job_id) = follower.job_id.clone() {
                    eprintln!("interrupted: cancelling job {}", for_terminal(&job_id));
                    let _ = client.cancel_job(api::CancelJobRequest { job_id }).await;
                }
                return Ok(ExitCode::from(130));
            }
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(status) => {
                display.finish();
                // Resuming helps only when the connection was lost, not when the server said no.
                let hint = follower
                    .job_id
                    .as_ref()
                    .filter(|_| session::is_dropped(&status))
                    .map(|id| {
                        format!(
                            "\n  resume with: dakota watch {id} --after {}",
                            follower.last_sequence
                        )
                    })
                    .unwrap_or_default();
                return Err(format!("{}{hint}", explain(status)));
            }
        };
        display.show(&event);
        match event.event {
            Some(Event::Completed(completed)) => {
                display.finish();
                let article = completed.article.unwrap_or_default();
                if follower.reattachments > 0 {
                    display.note(&format!(
                        "(re-attached {} time(s) after dropped connections)",
                        follower.reattachments
                    ));
                }
                if !json {
                    deliver(&article, out.as_deref(), false)?;
                    print_summary(&article);
                } else if let Some(dir) = &out {
                    output::write_article(dir, &article)
                        .map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Some(Event::Failed(failed)) => {
                display.finish();
                if !json {
                    eprintln!(
                        "error: job {} failed ({}): {}",
                        for_terminal(&event.job_id),
                        output::code_name(tonic::Code::from_i32(failed.code)),
                        for_terminal(&failed.message)
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the article folder, or prints the article (JSON or Markdown) to stdout.
fn deliver(
    article: &api::Article,
    out: Option<&std::path::Path>,
    json: bool,
) -> Result<(), String> {
    match (out, json) {
        (Some(dir), _) => {
            let folder = output::write_article(dir, article)
                .map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
            eprintln!("wrote {}", folder.display());
        }
        (None, true) => println!("{}", output::json_line(&output::article_json(article))),
        (None, false) => println!("{}", for_terminal(&article.markdown)),
    }
    Ok(())
}

fn print_summary(article: &api::Article) {
    let metadata = article.metadata.clone().unwrap_or_default();
    let content = metadata.content.unwrap_or_default();
    let quality = metadata.quality.unwrap_or_default();
    let fact_check = article.fact_check.clone().unwrap_or_default();
    eprintln!(
        "\"{}\": {} words, {} sections, {} citations to {} sources; fact check {} quoted / {} supported / {} unsupported; quality {:.1}/100{}",
        for_terminal(&article.title),
        content.word_count,
        content.section_count,
        content.citation_count,
        article.sources.len(),
        fact_check.quoted,
        fact_check.supported,
        fact_check.unsupported,
        quality.overall,
        if quality.contract_satisfied {
            ""
        } else {
            " (contract NOT met)"
        }
    );
}
