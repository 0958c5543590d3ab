//! Turns API requests into validated domain requests, naming every bad field.
use tonic_types::FieldViolation;

use crate::{error::ApiError, pipeline::JobRequest, text};
use dakota::api;
use dakota::safe_text::is_hidden;

pub const DEFAULT_WORD_COUNT: u32 = 1500;
pub const DEFAULT_AUDIENCE: &str = "institutional investors and financial professionals";
pub const DEFAULT_TONE: &str = "professional yet conversational";
pub const MAX_SEARCH_QUERIES: usize = 20;
pub const DEFAULT_SEARCH_RESULTS: u32 = 5;
pub const MAX_SEARCH_RESULTS: u32 = 50;

/// Collects violations so one answer names every bad field.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    fn length(&mut self, field: &str, value: &str, min: usize, max: usize) {
        // Every character counts (line breaks and tabs too); hidden ones are refused anyway.
        let n = value.chars().count();
        if n < min {
            self.add(
                field,
                format!("must be at least {min} characters (got {n})"),
            );
        } else if n > max {
            self.add(field, format!("must be at most {max} characters (got {n})"));
        }
    }

    /// Refuses control and format characters (NUL, ESC, zero-width spaces, bidi overrides):
    /// invisible in a count, but copied into titles, slugs and terminals. Line breaks and tabs
    /// are whitespace: kept in multi-line fields, collapsed to a space in single-line ones.
    fn visible(&mut self, field: &str, value: &str) {
        let whitespace = |c: char| matches!(c, '\n' | '\r' | '\t');
        if let Some(bad) = value.chars().find(|&c| is_hidden(c) && !whitespace(c)) {
            self.add(
                field,
                format!(
                    "must not contain control or invisible characters (found U+{:04X})",
                    u32::from(bad)
                ),
            );
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ApiError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

pub fn generate_request(request: api::GenerateRequest) -> Result<JobRequest, ApiError> {
    let mut v = Violations::default();
    // Single-line fields: runs of whitespace (newlines included) become one space, so no
    // input can add a line, let alone a heading, to the article.
    v.visible("topic", &request.topic);
    v.visible("audience", &request.audience);
    v.visible("tone", &request.tone);
    v.visible("custom_instructions", &request.custom_instructions);
    v.visible("idempotency_key", &request.idempotency_key);
    let topic = one_line(&request.topic);
    if topic.is_empty() {
        v.add("topic", "is required (3-500 characters)");
    } else {
        v.length("topic", &topic, 3, 500);
    }
    let word_count = request.word_count.unwrap_or(DEFAULT_WORD_COUNT);
    if !(100..=10_000).contains(&word_count) {
        v.add(
            "word_count",
            format!("must be between 100 and 10000 (got {word_count})"),
        );
    }
    let audience = non_empty_or(&one_line(&request.audience), DEFAULT_AUDIENCE);
    v.length("audience", &audience, 1, 200);
    let tone = non_empty_or(&one_line(&request.tone), DEFAULT_TONE);
    v.length("tone", &tone, 1, 100);
    let custom_instructions = request.custom_instructions.trim().to_string();
    v.length("custom_instructions", &custom_instructions, 0, 1000);
    let key = request.idempotency_key.trim().to_string();
    v.length("idempotency_key", &key, 0, 128);
    if request.max_total_tokens == Some(0) {
        v.add("max_total_tokens", "must be greater than 0 when set");
    }
    v.finish(JobRequest {
        slug: text::slugify(&topic),
        topic,
        word_count: word_count as usize,
        audience,
        tone,
        custom_instructions,
        include_social: request.include_social.unwrap_or(true),
        include_summary: request.include_summary.unwrap_or(true),
        skip_web_search: request.skip_web_search,
        idempotency_key: (!key.is_empty()).then_some(key),
        max_total_tokens: request.max_total_tokens,
    })
}

fn one_line(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn non_empty_or(value: &str, default: &str) -> String {
    if value.is_empty() { default } else { value }.to_string()
}

/// A job id as the API hands them out (a UUID); anything else cannot name a job.
pub fn job_id(id: &str) -> Result<String, ApiError> {
    let id = id.trim();
    let mut v = Violations::default();
    // Ids are handed out in lower case; any spelling of the same UUID names the same job.
    let parsed = uuid::Uuid::parse_str(id).map(|u| u.hyphenated().to_string());
    if id.is_empty() {
        v.add("job_id", "is required");
    } else if parsed.is_err() {
        let shown: String = id.chars().filter(|&c| !is_hidden(c)).collect();
        v.add(
            "job_id",
            format!(
                "`{}` is not a job id (a UUID)",
                text::truncate_words(&shown, 60)
            ),
        );
    }
    v.finish(parsed.unwrap_or_default())
}

/// A validated `SearchKnowledgeBase`: hits per query, and passages per document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchLimits {
    pub max_results: usize,
    pub per_document: usize,
}

pub fn search_request(request: &api::SearchKnowledgeBaseRequest) -> Result<SearchLimits, ApiError> {
    let mut v = Violations::default();
    if request.queries.is_empty() {
        v.add("queries", "at least one query is required");
    } else if request.queries.len() > MAX_SEARCH_QUERIES {
        v.add(
            "queries",
            format!(
                "at most {MAX_SEARCH_QUERIES} queries per call (got {})",
                request.queries.len()
            ),
        );
    }
    for (i, query) in request.queries.iter().enumerate() {
        v.visible(&format!("queries[{i}]"), query);
        v.length(&format!("queries[{i}]"), query.trim(), 1, 500);
    }
    let max_results = match request.max_results {
        0 => DEFAULT_SEARCH_RESULTS,
        n => n,
    };
    if max_results > MAX_SEARCH_RESULTS {
        v.add(
            "max_results",
            format!("must be at most {MAX_SEARCH_RESULTS} (got {max_results})"),
        );
    }
    let per_document = request.max_per_document.max(1);
    if per_document > MAX_SEARCH_RESULTS {
        v.add(
            "max_per_document",
            format!("must be at most {MAX_SEARCH_RESULTS} (got {per_document})"),
        );
    }
    v.finish(SearchLimits {
        max_results: max_results as usize,
        per_document: per_document as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(error: ApiError) -> Vec<String> {
        match error {
            ApiError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_and_topic_is_trimmed() -> Result<(), ApiError> {
        let request = generate_request(api::GenerateRequest {
            topic: "  Private credit  ".into(),
            ..Default::default()
        })?;
        assert_eq!(request.topic, "Private credit");
        assert_eq!(request.slug, "private-credit");
        assert_eq!(request.word_count, 1500);
        assert_eq!(request.audience, DEFAULT_AUDIENCE);
        assert!(request.include_social && request.include_summary);
        assert_eq!(request.idempotency_key, None);
        let request = generate_request(api::GenerateRequest {
            topic: "ESG\n\n## Introduction".into(),
            ..Default::default()
        })?;
        assert_eq!(request.topic, "ESG ## Introduction");
        Ok(())
    }

    #[test]
    fn every_bad_field_is_named() {
        let error = generate_request(api::GenerateRequest {
            topic: "  ".into(),
            word_count: Some(50),
            custom_instructions: "x".repeat(1001),
            ..Default::default()
        });
        let error = error.err().map(fields);
        assert_eq!(
            error,
            Some(vec![
                "topic".into(),
                "word_count".into(),
                "custom_instructions".into()
            ])
        );
    }

    #[test]
    fn job_ids_must_be_uuids_and_are_normalised() {
        assert!(job_id("not-a-job").is_err());
        let id = "6f1c1e8e-0c51-4f7e-9a41-3f7b3c0e2a10";
        assert_eq!(job_id(id).ok().as_deref(), Some(id));
        assert_eq!(job_id(&id.to_uppercase()).ok().as_deref(), Some(id));
    }

    #[test]
    fn hidden_characters_are_refused_where_they_would_be_copied() {
        for topic in [
            "\0\0\0",
            "\u{200B}\u{200B}\u{200B}",
            "Private credit \u{1b}]0;pwned\u{7}",
            "Private \u{202E}tiderc",
        ] {
            let error = generate_request(api::GenerateRequest {
                topic: topic.into(),
                ..Default::default()
            });
            let mut named = error.err().map(fields).unwrap_or_default();
            named.dedup();
            assert_eq!(named, vec!["topic".to_string()], "{topic:?}");
        }
        let error = generate_request(api::GenerateRequest {
            topic: "Private credit".into(),
            audience: "PMs\u{1b}[31m".into(),
            custom_instructions: "Line one.\r\nLine two.\tTabbed.".into(),
            ..Default::default()
        });
        assert_eq!(error.err().map(fields), Some(vec!["audience".to_string()]));
    }
}
