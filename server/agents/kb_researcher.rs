//! `kb_researcher`: one batch search of the knowledge base, ranked into sources, insights and
//! related articles. Offline, the queries are the topic and three angles on it; with an LLM,
//! the model writes them (and the web researcher's, through [`ask_queries`]).
use std::collections::{BTreeSet, HashSet};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Agent, AgentContext, AgentError, AgentFuture, AgentOutput, KbResearch, SourceDoc,
    extract::best_sentences,
    llm::{Asked, Checked, LlmAgent, llm_agent, object, parse},
    offline::PROVIDER,
    web_researcher::domain_of,
};
use crate::{
    domain::JobRequest,
    kb::{KbHit, KnowledgeSource},
    text,
};
use dakota::api;

/// Hits asked of the knowledge base per query.
const HITS_PER_QUERY: usize = 10;

/// Weight of the angle queries ("<topic> risks", ...) against the topic query.
const ANGLE_WEIGHT: f32 = 0.25;

/// The queries asked of the model (SPEC §4).
const MIN_QUERIES: usize = 3;
const MAX_QUERIES: usize = 4;

/// The most tokens the model's queries may use (see the table in [`super::llm`]).
pub(super) const ANSWER_TOKENS: u32 = 160;
/// The longest query asked for.
const QUERY_CHARS: usize = 80;

/// The search queries for a topic: the topic itself and three angles on it; when the topic
/// names something (a place, a firm, a month: a word it writes with a capital after its
/// first), the last angle is those names alone, so that the documents naming them are found
/// even when the topic's common words match many others better.
pub fn kb_queries(topic: &str) -> Vec<String> {
    let names: Vec<&str> = topic
        .split_whitespace()
        .skip(1)
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| w.starts_with(char::is_uppercase) && !text::is_stopword(&w.to_lowercase()))
        .collect();
    let last = match names.is_empty() {
        true => format!("{topic} outlook"),
        false => names.join(" "),
    };
    vec![
        topic.to_string(),
        format!("{topic} risks"),
        format!("{topic} strategy"),
        last,
    ]
}

/// The offline `kb_researcher`: the topic and its angles as queries.
pub(super) struct KbResearcher {
    pub(super) kb: KnowledgeSource,
}

impl Agent<JobRequest, KbResearch> for KbResearcher {
    fn provider(&self) -> &str {
        PROVIDER
    }
    fn model(&self) -> &str {
        self.kb.name()
    }
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        request: &'a JobRequest,
    ) -> AgentFuture<'a, KbResearch> {
        Box::pin(async move {
            let queries = kb_queries(&request.topic);
            search_kb(cx, &self.kb, queries).await
        })
    }
}

/// One batch search of the knowledge base for `queries` (the first one is the topic
/// itself), turned into research: sources, insights, related articles.
async fn search_kb(
    cx: &AgentContext,
    kb: &KnowledgeSource,
    queries: Vec<String>,
) -> Result<AgentOutput<KbResearch>, AgentError> {
    let started = std::time::Instant::now();
    // The best passage of each document: one document cannot take every place.
    let searched = kb
        .search_batch(&cx.scope, &queries, HITS_PER_QUERY, 1)
        .await;
    cx.metrics.observe_kb_search(started.elapsed());
    if !searched.calls.all_cached() {
        cx.upstream
            .record(crate::domain::Upstream::Kb, searched.hits.is_ok());
    }
    let batch = searched.hits?;
    let hit_count: usize = batch.iter().map(Vec::len).sum();
    let research = research_from_hits(&queries, batch);
    let summary = format!(
        "{hit_count} hits for {} queries from {} documents",
        queries.len(),
        research.sources.len()
    );
    let mut output = AgentOutput::local(research, summary);
    output.attempts = searched.attempts;
    output.calls = searched.calls;
    Ok(output)
}

/// Ranks hits into sources: the topic query (the first) counts fully, the angles a quarter
/// each, so a chunk that answers the topic itself outranks one that only matches "risks".
/// Angles alone do not make a source: with no hit for the topic itself there is nothing
/// to write from. One source per document, its text the best chunk and then the rest.
fn research_from_hits(queries: &[String], batch: Vec<Vec<KbHit>>) -> KbResearch {
    let on_topic = batch.first().is_some_and(|hits| !hits.is_empty());
    let mut scored: Vec<(KbHit, f32)> = Vec::new();
    for (i, hits) in batch.into_iter().enumerate().filter(|_| on_topic) {
        let weight = if i == 0 { 1.0 } else { ANGLE_WEIGHT };
        for hit in hits {
            match scored
                .iter_mut()
                .find(|(h, _)| h.url == hit.url && h.section == hit.section)
            {
                Some((_, score)) => *score += hit.score * weight,
                None => {
                    let score = hit.score * weight;
                    scored.push((hit, score));
                }
            }
        }
    }
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.url.cmp(&b.0.url)));
    let top = scored.first().map(|r| r.1).unwrap_or(1.0).max(f32::EPSILON);

    let mut sources: Vec<SourceDoc> = Vec::new();
    for (hit, score) in scored {
        if sources.iter().any(|s| s.source.url == hit.url) {
            continue;
        }
        sources.push(SourceDoc {
            source: api::Source {
                title: hit.title.clone(),
                url: hit.url.clone(),
                snippet: text::truncate_words(&hit.text.replace('\n', " "), 240),
                kind: api::SourceKind::KnowledgeBase as i32,
                domain: domain_of(&hit.url),
                // Curated in-house research: the middle tier of SPEC §4.
                authority_tier: 2,
                published: hit.date.clone().unwrap_or_default(),
                relevance: f64::from(score / top),
                ..Default::default()
            },
            section: if hit.section.is_empty() {
                hit.title.clone()
            } else {
                hit.section.clone()
            },
            text: hit.document_text,
        });
    }
    let topic = queries.first().map(String::as_str).unwrap_or_default();
    let insights = sources
        .iter()
        .take(5)
        .filter_map(|s| best_sentences(&s.text, topic, 1, &HashSet::new()).pop())
        .collect();
    let related = sources
        .iter()
        .take(5)
        .map(|s| api::RelatedArticle {
            title: s.source.title.clone(),
            url: s.source.url.clone(),
            relevance: round2(s.source.relevance),
        })
        .collect();
    KbResearch {
        queries: queries.to_vec(),
        sources,
        insights,
        related,
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[derive(Deserialize)]
struct Queries {
    queries: Vec<String>,
}

/// 3-4 distinct, non-empty queries; too few are padded from the topic's own queries, too many
/// cut to four.
pub(super) fn check_queries(topic: &str, value: Value) -> Checked<Vec<String>> {
    let mut queries: Vec<String> = match parse::<Queries>(value) {
        Ok(q) => q.queries,
        Err(problem) => return Checked::Unfit(problem),
    };
    queries = queries.iter().map(|q| q.trim().to_string()).collect();
    queries.retain(|q| !q.is_empty());
    let mut seen = BTreeSet::new();
    queries.retain(|q| seen.insert(q.to_lowercase()));
    let n = queries.len();
    if (MIN_QUERIES..=MAX_QUERIES).contains(&n) {
        return Checked::Fits(queries);
    }
    let problem =
        format!("{n} queries, expected {MIN_QUERIES}-{MAX_QUERIES} distinct, non-empty queries");
    for padding in kb_queries(topic) {
        if queries.len() >= MIN_QUERIES {
            break;
        }
        if seen.insert(padding.to_lowercase()) {
            queries.push(padding);
        }
    }
    queries.truncate(MAX_QUERIES);
    Checked::Repairable {
        problem,
        repaired: queries,
    }
}

/// Asks the model for search queries (`{"queries": [...]}`).
pub async fn ask_queries(
    agent: &LlmAgent,
    cx: &AgentContext,
    prompt: &str,
) -> Result<Asked<Vec<String>>, AgentError> {
    let topic = cx.request.topic.clone();
    agent
        .ask(
            cx,
            prompt,
            &[],
            object(json!({"queries": agent.texts(MIN_QUERIES, MAX_QUERIES, QUERY_CHARS, "a search query")})),
            ANSWER_TOKENS,
            |v| check_queries(&topic, v),
        )
        .await
}

/// `kb_researcher`: the model writes the queries; the batch search and ranking are code.
pub struct LlmKbResearcher {
    pub llm: LlmAgent,
    pub kb: KnowledgeSource,
}

impl Agent<JobRequest, KbResearch> for LlmKbResearcher {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        request: &'a JobRequest,
    ) -> AgentFuture<'a, KbResearch> {
        Box::pin(async move {
            let asked = ask_queries(&self.llm, cx, "kb_researcher").await?;
            // The topic itself leads: it decides whether the knowledge base covers it at all.
            let mut queries = vec![request.topic.clone()];
            queries.extend(
                asked
                    .completion
                    .value
                    .iter()
                    .filter(|q| !q.eq_ignore_ascii_case(&request.topic))
                    .cloned(),
            );
            let searched = search_kb(cx, &self.kb, queries).await?;
            let mut asked = asked.with(searched.value);
            asked.calls.add(searched.calls);
            let mut output = self.llm.output(asked, searched.summary);
            output.attempts += searched.attempts.saturating_sub(1);
            Ok(output)
        })
    }
}

/// The answer budget covers the longest answer the schema allows (see [`crate::agents::llm`]).
#[cfg(test)]
#[test]
fn the_token_budget_covers_the_longest_answer() {
    let longest = super::llm::longest_answer_tokens(&[(MAX_QUERIES, QUERY_CHARS)], 16);
    assert!(longest <= ANSWER_TOKENS, "{longest} > {ANSWER_TOKENS}");
}
