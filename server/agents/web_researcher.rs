//! `web_researcher` over Serper: queries (from the model when one is configured, else from
//! the topic), one search per query, results deduplicated, at most three per domain, each
//! with the authority tier of its domain. Without a Serper key, research goes on without it.
use crate::domain::WarningCode;
use std::sync::Arc;

use super::{
    Agent, AgentContext, AgentError, AgentFuture, AgentOutput, SourceDoc, WebResearch,
    kb_researcher::ask_queries,
    llm::LlmAgent,
    offline::{PROVIDER, ready},
};
use crate::{
    domain::JobRequest,
    text,
    upstream::serper::{Organic, SerperClient},
};
use dakota::api;

/// Results asked per query.
const RESULTS_PER_QUERY: u32 = 10;
const MAX_PER_DOMAIN: usize = 3;
const MAX_WEB_SOURCES: usize = 10;

/// Regulators, governments, central banks and supranational bodies.
const TIER_3: &[&str] = &[
    "sec.gov",
    "federalreserve.gov",
    "treasury.gov",
    "bls.gov",
    "ecb.europa.eu",
    "europa.eu",
    "esma.europa.eu",
    "eiopa.europa.eu",
    "bankofengland.co.uk",
    "fca.org.uk",
    "bis.org",
    "imf.org",
    "worldbank.org",
    "oecd.org",
    "iosco.org",
    "fsb.org",
    "boj.or.jp",
    "pbc.gov.cn",
    "rba.gov.au",
    "bankofcanada.ca",
    "osfi-bsif.gc.ca",
    "finra.org",
    "cftc.gov",
    "dol.gov",
    "pbgc.gov",
    "fdic.gov",
];
/// Major financial institutions, research bodies, rating agencies and quality media.
const TIER_2: &[&str] = &[
    "bloomberg.com",
    "reuters.com",
    "ft.com",
    "wsj.com",
    "economist.com",
    "cfainstitute.org",
    "blackrock.com",
    "vanguard.com",
    "jpmorgan.com",
    "goldmansachs.com",
    "morganstanley.com",
    "mckinsey.com",
    "pwc.com",
    "deloitte.com",
    "ey.com",
    "kpmg.com",
    "msci.com",
    "spglobal.com",
    "moodys.com",
    "fitchratings.com",
    "pionline.com",
    "institutionalinvestor.com",
    "nber.org",
    "brookings.edu",
    "pimco.com",
    "schroders.com",
    "ssga.com",
    "preqin.com",
    "pitchbook.com",
    "morningstar.com",
    "cnbc.com",
    "nytimes.com",
    "barrons.com",
];

/// Authority tier of a domain (SPEC §4): 3 regulators, governments, central banks; 2 major
/// institutions and media; 1 others.
pub fn authority_tier(domain: &str) -> u32 {
    let domain = domain.trim_start_matches("www.").to_lowercase();
    let matches = |list: &[&str]| {
        list.iter()
            .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
    };
    // `.gov`, `.mil`, `.int`, and country government zones such as `gov.uk` or `gc.ca`.
    let labels: Vec<&str> = domain.split('.').collect();
    let country_government = labels.len() >= 2
        && matches!(
            labels[labels.len() - 2],
            "gov" | "gouv" | "gob" | "go" | "gc"
        )
        && labels[labels.len() - 1].len() == 2;
    let government = matches!(labels.last(), Some(&("gov" | "mil" | "int"))) || country_government;
    if government || matches(TIER_3) {
        3
    } else if matches(TIER_2) || domain.ends_with(".edu") || domain.ends_with(".ac.uk") {
        2
    } else {
        1
    }
}

pub struct SerperWebResearcher {
    pub serper: Arc<SerperClient>,
    /// Writes the queries when an LLM is configured.
    pub llm: Option<LlmAgent>,
}

impl Agent<JobRequest, WebResearch> for SerperWebResearcher {
    fn provider(&self) -> &str {
        self.llm.as_ref().map_or("serper", |l| l.client.provider)
    }
    fn model(&self) -> &str {
        self.llm
            .as_ref()
            .map_or("serper-search", |l| l.model.as_str())
    }
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        request: &'a JobRequest,
    ) -> AgentFuture<'a, WebResearch> {
        Box::pin(async move {
            let (queries, mut output) = self.queries(cx, request).await?;
            let searches = queries
                .iter()
                .map(|q| self.serper.search(&cx.scope, q, RESULTS_PER_QUERY));
            let answers = futures_util::future::join_all(searches).await;
            let mut results = Vec::new();
            let mut failures = Vec::new();
            for answer in answers {
                // With the query-writing LLM call's, when the model wrote the queries.
                output.calls.add(answer.calls());
                output.attempts = output.attempts.max(answer.attempts);
                if !answer.cache_hit() {
                    cx.upstream
                        .record(crate::domain::Upstream::Web, answer.result.is_ok());
                }
                match answer.result {
                    Ok(organic) => results.extend(organic.into_iter().enumerate()),
                    Err(error) => failures.push(error),
                }
            }
            if results.is_empty()
                && let Some(error) = failures.first()
            {
                return Err(AgentError::Unavailable {
                    upstream: "web",
                    message: error.to_string(),
                });
            } else if !failures.is_empty() {
                output.warnings.push((
                    WarningCode::WebSearchDegraded,
                    format!(
                        "{} of {} web searches failed; continuing with the rest",
                        failures.len(),
                        queries.len()
                    ),
                ));
            }
            let sources = web_sources(results);
            let domains: std::collections::BTreeSet<&str> =
                sources.iter().map(|s| s.source.domain.as_str()).collect();
            output.summary = format!(
                "{} results from {} domains for {} queries",
                sources.len(),
                domains.len(),
                queries.len()
            );
            output.value = WebResearch {
                summary: output.summary.clone(),
                queries,
                sources,
            };
            Ok(output)
        })
    }
}

impl SerperWebResearcher {
    /// The queries to search, from the model when one is configured (its output carries the
    /// call's accounting), else from the topic.
    async fn queries(
        &self,
        cx: &AgentContext,
        request: &JobRequest,
    ) -> Result<(Vec<String>, AgentOutput<WebResearch>), AgentError> {
        let Some(llm) = &self.llm else {
            let queries = vec![
                request.topic.clone(),
                format!("{} regulation", request.topic),
                format!("{} outlook", request.topic),
            ];
            return Ok((queries, AgentOutput::local(WebResearch::default(), "")));
        };
        let asked = ask_queries(llm, cx, "web_researcher").await?;
        let queries = asked.completion.value.clone();
        let output = llm.output(asked.with(WebResearch::default()), String::new());
        Ok((queries, output))
    }
}

/// The search results as sources: best-ranked first across queries, deduplicated, web
/// links only, at most three per domain and ten in all.
fn web_sources(mut results: Vec<(usize, Organic)>) -> Vec<SourceDoc> {
    results.sort_by_key(|(rank, _)| *rank);
    let mut sources: Vec<SourceDoc> = Vec::new();
    for (rank, result) in results {
        let domain = domain_of(&result.link);
        let from_domain = sources.iter().filter(|s| s.source.domain == domain).count();
        if sources.len() == MAX_WEB_SOURCES
            || from_domain >= MAX_PER_DOMAIN
            || sources.iter().any(|s| s.source.url == result.link)
            || !(result.link.starts_with("http://") || result.link.starts_with("https://"))
        {
            continue;
        }
        sources.push(SourceDoc {
            source: api::Source {
                title: result.title.clone(),
                url: result.link.clone(),
                snippet: text::truncate_words(&result.snippet, 300),
                kind: api::SourceKind::Web as i32,
                authority_tier: authority_tier(&domain),
                domain,
                published: result.date.clone().unwrap_or_default(),
                relevance: 1.0 / (1.0 + rank as f64 * 0.25),
                ..Default::default()
            },
            section: result.title.clone(),
            // The snippet until the fact checker fetches the page.
            text: result.snippet.clone(),
        });
    }
    sources
}

/// The host of a URL, without `www.`: a source's domain.
pub fn domain_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .trim_start_matches("www.")
        .to_string()
}

/// The web researcher when no web search is configured: research goes on without it.
pub(super) struct UnconfiguredWebResearcher;

impl Agent<JobRequest, WebResearch> for UnconfiguredWebResearcher {
    fn provider(&self) -> &str {
        PROVIDER
    }
    fn model(&self) -> &str {
        "none"
    }
    fn run<'a>(
        &'a self,
        _cx: &'a AgentContext,
        _request: &'a JobRequest,
    ) -> AgentFuture<'a, WebResearch> {
        let mut output =
            AgentOutput::local(WebResearch::default(), "skipped: web search not configured");
        output.warnings.push((
            WarningCode::WebSearchUnavailable,
            "web search is not configured (no SERPER_API_KEY); the article draws on the knowledge base only"
                .to_string(),
        ));
        ready(Ok(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_get_their_authority_tier() {
        assert_eq!(authority_tier("www.sec.gov"), 3);
        assert_eq!(authority_tier("ecb.europa.eu"), 3);
        assert_eq!(authority_tier("www.gov.uk"), 3);
        assert_eq!(authority_tier("data.bis.org"), 3);
        assert_eq!(authority_tier("www.ft.com"), 2);
        assert_eq!(authority_tier("economics.mit.edu"), 2);
        assert_eq!(authority_tier("someblog.example"), 1);
        assert_eq!(
            authority_tier("sec.gov.example.com"),
            1,
            "a government name inside another domain is not one"
        );
    }
}
