//! Article folders of SPEC §7 (`YYYY-MM-DD-<slug>/`) and JSON renderings of API messages.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

use crate::api::{self, generate_event::Event};

/// Writes the article folder under `dir` and returns its path: always one direct child of
/// `dir`, whatever slug the server sent (see [`folder_slug`]).
pub fn write_article(dir: &Path, article: &api::Article) -> std::io::Result<PathBuf> {
    let date = date_of(article.created_at.as_ref());
    let slug = folder_slug(article);
    let folder = dir.join(format!("{date}-{slug}"));
    fs::create_dir_all(&folder)?;
    fs::write(
        folder.join("article.md"),
        article_markdown(article, &date, &slug),
    )?;
    fs::write(
        folder.join("metadata.json"),
        pretty(&metadata_json(article, &date, &slug)),
    )?;
    fs::write(folder.join("social.md"), social_markdown(article))?;
    fs::write(folder.join("summary.md"), summary_markdown(article))?;
    fs::write(
        folder.join("fact-check.json"),
        pretty(&fact_check_json(article.fact_check.as_ref())),
    )?;
    fs::write(
        folder.join("generation_metrics.json"),
        pretty(&run_metrics_json(article.metrics.as_ref())),
    )?;
    Ok(folder)
}

/// Longest slug of a folder name, in characters (the server's are at most 50, SPEC §4) and
/// in bytes, so that `YYYY-MM-DD-<slug>` stays within the 255 bytes of a file name.
const MAX_SLUG_CHARS: usize = 80;
const MAX_SLUG_BYTES: usize = 200;

/// The article's slug as it names its folder and is written in its files. The slug comes from
/// the server (or whatever is between), so it is not trusted to be one path component: kept
/// are lower-case letters, digits and `_` (every character of a server's slug, which passes
/// unchanged); runs of anything else (`/`, `.`, controls) become one inner `-`; the length is
/// bounded. When nothing is left, the job id made safe the same way, else `article`.
pub fn folder_slug(article: &api::Article) -> String {
    [article.slug.as_str(), article.job_id.as_str()]
        .into_iter()
        .map(path_component)
        .find(|slug| !slug.is_empty())
        .unwrap_or_else(|| "article".to_string())
}

fn path_component(text: &str) -> String {
    let mut slug = String::new();
    let mut chars = 0;
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = if c.is_alphanumeric() || c == '_' {
            c
        } else {
            '-'
        };
        if c == '-' && (slug.is_empty() || slug.ends_with('-')) {
            continue;
        }
        if chars == MAX_SLUG_CHARS || slug.len() + c.len_utf8() > MAX_SLUG_BYTES {
            break;
        }
        slug.push(c);
        chars += 1;
    }
    slug.truncate(slug.trim_end_matches('-').len());
    slug
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// `YYYY-MM-DD` of a timestamp (UTC); today when absent.
pub fn date_of(timestamp: Option<&prost_types::Timestamp>) -> String {
    let seconds = timestamp
        .map(|t| t.seconds)
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());
    let date = time::OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

pub fn millis(duration: Option<&prost_types::Duration>) -> u64 {
    duration
        .and_then(|d| Duration::try_from(*d).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn content_metrics(article: &api::Article) -> api::ContentMetrics {
    article
        .metadata
        .as_ref()
        .and_then(|m| m.content)
        .unwrap_or_default()
}

fn article_markdown(article: &api::Article, date: &str, slug: &str) -> String {
    let content = content_metrics(article);
    let title = article.title.replace('"', "\\\"");
    format!(
        "---\ntitle: \"{title}\"\ndate: {date}\nword_count: {}\nreading_time_minutes: {}\nslug: {}\njob_id: {}\n---\n\n{}",
        content.word_count, content.reading_time_minutes, slug, article.job_id, article.markdown
    )
}

fn social_markdown(article: &api::Article) -> String {
    let Some(social) = &article.social else {
        return format!(
            "# Social content: {}\n\nNot requested for this article.\n",
            article.title
        );
    };
    let mut md = format!("# Social content: {}\n\n## LinkedIn\n\n", article.title);
    for (i, post) in social.linkedin_posts.iter().enumerate() {
        md.push_str(&format!("### Post {}\n\n{post}\n\n", i + 1));
    }
    md.push_str("## Thread\n\n");
    for post in &social.thread {
        md.push_str(&format!("- {}\n", post.replace('\n', " ")));
    }
    md.push_str(&format!(
        "\n## Email snippet\n\n{}\n\n## Instagram\n\n{}\n\n## Facebook\n\n{}\n",
        social.email_snippet, social.instagram_post, social.facebook_post
    ));
    md
}

fn summary_markdown(article: &api::Article) -> String {
    let Some(summary) = &article.summary else {
        return format!(
            "# Summary: {}\n\nNot requested for this article.\n",
            article.title
        );
    };
    let mut md = format!(
        "# Summary: {}\n\n**Key value:** {}\n\n{}\n\n## Takeaways\n\n",
        article.title, summary.key_value, summary.overview
    );
    for takeaway in &summary.takeaways {
        md.push_str(&format!("- {takeaway}\n"));
    }
    md
}

fn verdict_name(claim: &api::Claim) -> &'static str {
    match claim.verdict() {
        api::Verdict::Supported => "supported",
        api::Verdict::Unsupported => "unsupported",
        api::Verdict::Unverifiable => "unverifiable",
        api::Verdict::Quoted => "quoted",
        api::Verdict::Unspecified => "unspecified",
    }
}

pub fn fact_check_json(report: Option<&api::FactCheckReport>) -> Value {
    let Some(report) = report else {
        return json!(null);
    };
    json!({
        "passed": report.passed,
        "quoted": report.quoted,
        "supported": report.supported,
        "unsupported": report.unsupported,
        "unverifiable": report.unverifiable,
        "invalid_citations": report.invalid_citations,
        "claims": report.claims.iter().map(|c| json!({
            "text": c.text,
            "kind": c.kind,
            "verdict": verdict_name(c),
            "source_id": c.source_id,
            "source_url": c.source_url,
            "evidence": c.evidence,
        })).collect::<Vec<_>>(),
    })
}

pub fn run_metrics_json(metrics: Option<&api::RunMetrics>) -> Value {
    let Some(m) = metrics else {
        return json!(null);
    };
    json!({
        "total_duration_ms": millis(m.total_duration.as_ref()),
        "phases": m.phases.iter().map(|p| json!({
            "phase": p.phase, "duration_ms": millis(p.duration.as_ref()), "runs": p.runs,
        })).collect::<Vec<_>>(),
        "agents": m.agents.iter().map(|a| {
            let usage = a.usage.unwrap_or_default();
            json!({
                "agent": a.agent, "phase": a.phase, "duration_ms": millis(a.duration.as_ref()),
                "provider": a.provider, "model": a.model,
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "cache_hit": a.cache_hit, "attempts": a.attempts,
                "calls": a.calls, "cached_calls": a.cached_calls,
                "estimated_cost_usd": a.estimated_cost_usd,
            })
        }).collect::<Vec<_>>(),
        "total_input_tokens": m.total_input_tokens,
        "total_output_tokens": m.total_output_tokens,
        "estimated_cost_usd": m.estimated_cost_usd,
        "cache_hits": m.cache_hits,
        "calls": m.calls,
        "cached_calls": m.cached_calls,
        "upstream_calls": m.upstream_calls.iter().map(|u| json!({
            "upstream": u.upstream, "calls": u.calls, "errors": u.errors,
        })).collect::<Vec<_>>(),
        "revision_iterations": m.revision_iterations,
    })
}

fn source_kind(source: &api::Source) -> &'static str {
    match source.kind() {
        api::SourceKind::KnowledgeBase => "knowledge_base",
        api::SourceKind::Web => "web",
        api::SourceKind::Unspecified => "unspecified",
    }
}

pub fn source_json(s: &api::Source) -> Value {
    json!({
        "id": s.id, "title": s.title, "url": s.url, "kind": source_kind(s), "domain": s.domain,
        "authority_tier": s.authority_tier, "published": s.published, "relevance": s.relevance,
        "snippet": s.snippet,
    })
}

fn metadata_json(article: &api::Article, date: &str, slug: &str) -> Value {
    let metadata = article.metadata.clone().unwrap_or_default();
    let seo = metadata.seo.clone().unwrap_or_default();
    let content = metadata.content.unwrap_or_default();
    let quality = metadata.quality.clone().unwrap_or_default();
    let metrics = article.metrics.clone().unwrap_or_default();

    let mut by_tier: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_domain: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_kind: BTreeMap<&str, u32> = BTreeMap::new();
    for s in &article.sources {
        *by_tier.entry(s.authority_tier.to_string()).or_default() += 1;
        *by_domain.entry(s.domain.clone()).or_default() += 1;
        *by_kind.entry(source_kind(s)).or_default() += 1;
    }
    let mut tokens_by_agent: BTreeMap<String, Value> = BTreeMap::new();
    let mut providers: BTreeMap<String, Value> = BTreeMap::new();
    for a in &metrics.agents {
        let usage = a.usage.unwrap_or_default();
        let entry = tokens_by_agent.entry(a.agent.clone()).or_insert_with(
            || json!({"input_tokens": 0, "output_tokens": 0, "estimated_cost_usd": 0.0, "runs": 0}),
        );
        entry["input_tokens"] =
            json!(entry["input_tokens"].as_u64().unwrap_or(0) + usage.input_tokens);
        entry["output_tokens"] =
            json!(entry["output_tokens"].as_u64().unwrap_or(0) + usage.output_tokens);
        entry["estimated_cost_usd"] =
            json!(entry["estimated_cost_usd"].as_f64().unwrap_or(0.0) + a.estimated_cost_usd);
        entry["runs"] = json!(entry["runs"].as_u64().unwrap_or(0) + 1);
        providers.insert(
            a.agent.clone(),
            json!({"provider": a.provider, "model": a.model}),
        );
    }
    json!({
        "generation": {
            "job_id": article.job_id,
            "topic": article.topic,
            "slug": slug,
            "date": date,
            "created_at_unix": article.created_at.map(|t| t.seconds),
            "audience": metadata.audience,
            "tone": metadata.tone,
            "target_word_count": metadata.target_word_count,
            "custom_instructions": metadata.custom_instructions,
            "agents": providers,
        },
        "seo": {
            "title": seo.title,
            "meta_description": seo.meta_description,
            "keywords": seo.keywords,
        },
        "content_metrics": {
            "word_count": content.word_count,
            "section_count": content.section_count,
            "citation_count": content.citation_count,
            "distinct_sources_cited": content.distinct_sources_cited,
            "paragraph_count": content.paragraph_count,
            "sentence_count": content.sentence_count,
            "reading_time_minutes": content.reading_time_minutes,
            "flesch_reading_ease": content.flesch_reading_ease,
            "avg_sentence_words": content.avg_sentence_words,
        },
        "quality": {
            "overall": quality.overall,
            "contract_satisfied": quality.contract_satisfied,
            "contract_violations": quality.contract_violations,
            "fact_check_score": quality.fact_check_score,
            "revision_iterations": quality.revision_iterations,
        },
        "key_themes": metadata.key_themes,
        "outline": metadata.outline,
        "sources": {
            "count": article.sources.len(),
            "by_authority_tier": by_tier,
            "by_domain": by_domain,
            "by_kind": by_kind,
            "list": article.sources.iter().map(source_json).collect::<Vec<_>>(),
        },
        "cost": {
            "total_input_tokens": metrics.total_input_tokens,
            "total_output_tokens": metrics.total_output_tokens,
            "estimated_cost_usd": metrics.estimated_cost_usd,
            "tokens_by_agent": tokens_by_agent,
        },
        "related_articles": metadata.related_articles.iter().map(|r| json!({
            "title": r.title, "url": r.url, "relevance": r.relevance,
        })).collect::<Vec<_>>(),
    })
}

/// The canonical upper-snake name of a gRPC code (`FAILED_PRECONDITION`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One event as a JSON object (`dakota generate --json` prints one per line).
pub fn event_json(event: &api::GenerateEvent) -> Value {
    let (kind, body) = match &event.event {
        Some(Event::JobStarted(e)) => (
            "job_started",
            json!({
                "topic": e.topic, "slug": e.slug, "word_count": e.word_count,
                "idempotency_key": e.idempotency_key,
                "phases": e.phases.iter().map(|p| json!({
                    "phase": p.phase, "agents": p.agents, "depends_on": p.depends_on, "conditional": p.conditional,
                })).collect::<Vec<_>>(),
            }),
        ),
        Some(Event::PhaseStarted(e)) => (
            "phase_started",
            json!({"phase": e.phase, "iteration": e.iteration}),
        ),
        Some(Event::AgentStarted(e)) => (
            "agent_started",
            json!({
                "agent": e.agent, "phase": e.phase, "provider": e.provider, "model": e.model,
            }),
        ),
        Some(Event::AgentCompleted(e)) => {
            let usage = e.usage.unwrap_or_default();
            (
                "agent_completed",
                json!({
                    "agent": e.agent, "phase": e.phase, "duration_ms": millis(e.duration.as_ref()),
                    "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                    "cache_hit": e.cache_hit, "attempts": e.attempts, "provider": e.provider,
                    "model": e.model, "summary": e.summary,
                    "calls": e.calls, "cached_calls": e.cached_calls,
                }),
            )
        }
        Some(Event::ContentDelta(e)) => (
            "content_delta",
            json!({"text": e.text, "iteration": e.iteration}),
        ),
        Some(Event::Warning(e)) => (
            "warning",
            json!({
                "code": e.code, "message": e.message, "phase": e.phase, "agent": e.agent,
            }),
        ),
        Some(Event::PhaseCompleted(e)) => (
            "phase_completed",
            json!({
                "phase": e.phase, "duration_ms": millis(e.duration.as_ref()), "iteration": e.iteration,
            }),
        ),
        Some(Event::Completed(e)) => (
            "completed",
            json!({
                "article": e.article.as_ref().map(article_json),
            }),
        ),
        Some(Event::Failed(e)) => (
            "failed",
            json!({
                "code": code_name(tonic::Code::from_i32(e.code)), "code_number": e.code,
                "message": e.message, "phase": e.phase,
            }),
        ),
        None => ("unknown", json!({})),
    };
    json!({
        "job_id": event.job_id,
        "sequence": event.sequence,
        "timestamp_unix": event.timestamp.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9),
        "progress": event.progress,
        "type": kind,
        kind: body,
    })
}

/// `value` as one line of JSON, safe to print. serde_json escapes C0 controls (ESC among
/// them) but writes DEL, C1 controls (U+009B acts as a CSI) and invisible format characters
/// raw; they are escaped `\uXXXX` here too, so the line still decodes to `value`. (They can
/// only be inside strings: nothing else in serde_json's compact output is hidden.)
pub fn json_line(value: &Value) -> String {
    use std::fmt::Write;
    let mut line = String::new();
    for c in value.to_string().chars() {
        if crate::safe_text::is_hidden(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(line, "\\u{unit:04x}");
            }
        } else {
            line.push(c);
        }
    }
    line
}

/// A whole article as JSON (`dakota get --json`).
pub fn article_json(article: &api::Article) -> Value {
    let date = date_of(article.created_at.as_ref());
    let mut value = metadata_json(article, &date, &folder_slug(article));
    value["markdown"] = json!(article.markdown);
    value["title"] = json!(article.title);
    value["fact_check"] = fact_check_json(article.fact_check.as_ref());
    value["metrics"] = run_metrics_json(article.metrics.as_ref());
    value["social"] = article.social.as_ref().map_or(json!(null), |s| json!({
        "linkedin_posts": s.linkedin_posts, "thread": s.thread, "email_snippet": s.email_snippet,
        "instagram_post": s.instagram_post, "facebook_post": s.facebook_post,
    }));
    value["summary"] = article.summary.as_ref().map_or(json!(null), |s| {
        json!({
            "key_value": s.key_value, "overview": s.overview, "takeaways": s.takeaways,
        })
    });
    value
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Every file and folder under `dir`, recursively.
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(walk(&path));
            }
            found.push(path);
        }
        found
    }

    #[test]
    fn a_hostile_slug_is_one_folder_directly_inside_the_output_dir() {
        let long = format!("{}\0{}", "\x1b[2J".repeat(1000), "../a".repeat(1500));
        let hostile = [
            "x/../../../../../tmp/pwned",
            "/abs/path",
            "..",
            ".",
            "",
            long.as_str(),
            "\x1b]0;title\x07\u{9b}31m\0nul\nslug: injected",
        ];
        for (i, slug) in hostile.into_iter().enumerate() {
            let root = std::env::temp_dir()
                .join(format!("dakota-output-{}-hostile-{i}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            // Deep, so that climbing out of `out` lands inside `root`, where it is seen.
            let out = root.join("a/b/c/d/e/f/out");
            fs::create_dir_all(&out).unwrap();
            let article = api::Article {
                job_id: "job-1".into(),
                slug: slug.into(),
                ..Default::default()
            };
            let folder = write_article(&out, &article).unwrap();
            assert_eq!(folder.parent(), Some(out.as_path()), "{slug:?}");
            let name = folder.file_name().unwrap().to_str().unwrap();
            assert!(
                name.len() <= 255
                    && name
                        .chars()
                        .all(|c| c.is_alphanumeric() || "-_".contains(c)),
                "{name:?}"
            );
            for path in walk(&root) {
                let inside = path.parent() == Some(folder.as_path()) && path.is_file();
                assert!(
                    inside || out.starts_with(&path) || path == folder,
                    "{path:?}"
                );
            }
            assert_eq!(fs::read_dir(&folder).unwrap().count(), 6);
            let front_matter = fs::read_to_string(folder.join("article.md")).unwrap();
            assert!(
                !front_matter.chars().any(|c| c.is_control() && c != '\n'),
                "{front_matter:?}"
            );
            assert_eq!(
                front_matter
                    .lines()
                    .filter(|l| l.starts_with("slug:"))
                    .count(),
                1
            );
            let metadata: Value =
                serde_json::from_str(&fs::read_to_string(folder.join("metadata.json")).unwrap())
                    .unwrap();
            let written_slug = metadata["generation"]["slug"].as_str().unwrap();
            assert!(
                !written_slug.chars().any(char::is_control),
                "{written_slug:?}"
            );
            fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn a_json_line_escapes_every_terminal_control_and_decodes_to_the_same_value() {
        let hostile = "\x1b]52;c;AAAA\x07 \x1b[2J \u{9b}31m \u{7f} \u{202e} \u{e0041} \u{200b}";
        let event = api::GenerateEvent {
            job_id: hostile.into(),
            event: Some(Event::Warning(api::Warning {
                code: hostile.into(),
                message: format!("{hostile}\nnext"),
                ..Default::default()
            })),
            ..Default::default()
        };
        let value = event_json(&event);
        let line = json_line(&value);
        let hidden: Vec<char> = line
            .chars()
            .filter(|&c| crate::safe_text::is_hidden(c))
            .collect();
        assert_eq!(hidden, vec![], "{line}");
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), value);
    }

    #[test]
    fn run_metrics_and_events_carry_the_calls_and_those_cached() {
        let agent = api::AgentMetrics {
            agent: "web_researcher".into(),
            calls: 4,
            cached_calls: 3,
            ..Default::default()
        };
        let metrics = run_metrics_json(Some(&api::RunMetrics {
            agents: vec![agent],
            calls: 9,
            cached_calls: 3,
            ..Default::default()
        }));
        assert_eq!(metrics["agents"][0]["calls"], 4);
        assert_eq!(metrics["agents"][0]["cached_calls"], 3);
        assert_eq!(metrics["agents"][0]["cache_hit"], false);
        assert_eq!(
            (&metrics["calls"], &metrics["cached_calls"]),
            (&json!(9), &json!(3))
        );
        let event = event_json(&api::GenerateEvent {
            event: Some(Event::AgentCompleted(api::AgentCompleted {
                calls: 7,
                cached_calls: 7,
                cache_hit: true,
                ..Default::default()
            })),
            ..Default::default()
        });
        let data = &event["agent_completed"];
        assert_eq!(
            (&data["calls"], &data["cached_calls"]),
            (&json!(7), &json!(7)),
            "{event}"
        );
    }

    #[test]
    fn a_server_slug_names_its_folder_unchanged_and_an_empty_one_falls_back() {
        let slug_of = |slug: &str, job_id: &str| {
            folder_slug(&api::Article {
                slug: slug.into(),
                job_id: job_id.into(),
                ..Default::default()
            })
        };
        for slug in [
            "private-credit-risks-returns",
            "esg-in-2026",
            "café_über-2026",
            "article",
        ] {
            assert_eq!(slug_of(slug, "job"), slug);
        }
        assert_eq!(slug_of("/Abs/../Path/", "job"), "abs-path");
        assert_eq!(slug_of("..", "3f2a-9c1e"), "3f2a-9c1e");
        assert_eq!(slug_of("", "../.."), "article");
        assert_eq!(
            slug_of(&"ü".repeat(200), "job").chars().count(),
            MAX_SLUG_CHARS
        );
        assert!(slug_of(&"\u{10348}".repeat(200), "job").len() <= MAX_SLUG_BYTES);
    }
}
