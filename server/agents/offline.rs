//! The offline agents: deterministic, extractive implementations that build every artifact
//! from the retrieved sources. The embedded default when no LLM is configured.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use super::{
    Agent, AgentContext, AgentError, AgentFuture, AgentOutput, Agents, Draft, FactCheckInput,
    FinalArticle, KbResearch, OutlinePlan, OutlineSection, SourceDoc, Synthesis, SynthesisInput,
    WebResearch, WritingBrief, fact_check,
};
use crate::{
    domain::{
        JobRequest,
        contract::{self, CONCLUSION, KEY_INSIGHTS, KEY_TAKEAWAYS, Problem, WORD_COUNT_TOLERANCE},
    },
    kb::{self, KbHit, KnowledgeSource},
    text,
};
use dakota::api;

const PROVIDER: &str = "offline";
/// The warning of sources that do not all cover the topic.
pub(super) const OFF_TOPIC: &str = "OFF_TOPIC_SOURCES";
const MODEL: &str = "extractive";
/// Sources kept after synthesis (SPEC §4).
const MAX_SOURCES: usize = 10;
/// Hits asked of the knowledge base per query.
const HITS_PER_QUERY: usize = 10;
/// Weight of the angle queries ("<topic> risks", ...) against the topic query.
const ANGLE_WEIGHT: f32 = 0.25;
/// Sources below this share of the best one's relevance supply sentences, not sections.
const MIN_SECTION_RELEVANCE: f64 = 0.2;
/// Sentences that lean on a previous one read badly when lifted out; skip them.
const DANGLING_STARTS: &[&str] = &[
    "this ", "it ", "these ", "they ", "such ", "however", "also", "that ", "those ", "he ", "she ",
];

pub fn agents(kb: KnowledgeSource) -> Agents {
    Agents {
        kb_researcher: Arc::new(KbResearcher { kb }),
        web_researcher: Arc::new(UnconfiguredWebResearcher),
        outline_planner: Arc::new(ExtractiveAgent),
        research_synthesizer: Arc::new(ExtractiveAgent),
        content_writer: Arc::new(ExtractiveAgent),
        metrics_analyzer: Arc::new(super::metrics_analyzer::MetricsAnalyzer),
        seo_specialist: Arc::new(ExtractiveAgent),
        fact_checker: Arc::new(ExtractiveAgent),
        social_promoter: Arc::new(ExtractiveAgent),
        summary_writer: Arc::new(ExtractiveAgent),
    }
}

/// A result that is already there, as an agent future.
fn ready<'a, T: Send + 'a>(result: Result<AgentOutput<T>, AgentError>) -> AgentFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

/// Runs CPU-bound agent work on the blocking pool, so agents of one phase really run in
/// parallel and never stall the async executor.
fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<AgentOutput<T>, AgentError> + Send + 'static,
) -> AgentFuture<'static, T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
    })
}

/// The search queries for a topic: the topic itself and three angles on it.
pub fn kb_queries(topic: &str) -> Vec<String> {
    vec![
        topic.to_string(),
        format!("{topic} risks"),
        format!("{topic} strategy"),
        format!("{topic} outlook"),
    ]
}

struct KbResearcher {
    kb: KnowledgeSource,
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
pub(super) async fn search_kb(
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
        cx.upstream.record("kb", searched.hits.is_ok());
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

/// The web researcher when no web search is configured: research goes on without it.
struct UnconfiguredWebResearcher;

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
            "WEB_SEARCH_UNAVAILABLE",
            "web search is not configured (no SERPER_API_KEY); the article draws on the knowledge base only"
                .to_string(),
        ));
        ready(Ok(output))
    }
}

/// Every other offline agent: pure functions of their input.
struct ExtractiveAgent;

macro_rules! extractive {
    ($input:ty => $output:ty, |$cx:ident, $arg:ident| $body:expr) => {
        impl Agent<$input, $output> for ExtractiveAgent {
            fn provider(&self) -> &str {
                PROVIDER
            }
            fn model(&self) -> &str {
                MODEL
            }
            fn run<'a>(
                &'a self,
                cx: &'a AgentContext,
                input: &'a $input,
            ) -> AgentFuture<'a, $output> {
                let (cx, input) = (cx.clone(), input.clone());
                blocking(move || {
                    let ($cx, $arg) = (&cx, &input);
                    $body
                })
            }
        }
    };
}

/// Section headings planned from the topic alone.
pub(super) fn planned_sections(topic: &str) -> Vec<String> {
    let topic = text::title_case(topic);
    vec![
        format!("Why {topic} Matters Now"),
        format!("How {topic} Works in Practice"),
        "Risks and Trade-offs".to_string(),
        "Putting It into Practice".to_string(),
    ]
}

extractive!(JobRequest => OutlinePlan, |_cx, request| {
    Ok(AgentOutput::local(
        OutlinePlan {
            sections: planned_sections(&request.topic),
        },
        "4 planned sections",
    ))
});

extractive!(SynthesisInput => Synthesis, |cx, input| synthesize(&cx.request, input));

extractive!(WritingBrief => Draft, |cx, brief| {
    let mut excluded: HashSet<String> = HashSet::new();
    let mut scale = 1.0;
    if let Some(revision) = &brief.revision {
        for problem in &revision.problems {
            match problem {
                Problem::UnsupportedClaim(sentence) => {
                    excluded.insert(sentence.clone());
                }
                Problem::WordCount { actual, target } if *actual > 0 => {
                    scale = (*target as f64 / *actual as f64).clamp(0.5, 2.0);
                }
                _ => {}
            }
        }
    }
    let draft = write_article(&cx.request, &brief.synthesis, &excluded, scale);
    for paragraph in draft.markdown.split_inclusive("\n\n") {
        (cx.deltas)(paragraph);
    }
    let words = prose_words(&draft.markdown);
    Ok(AgentOutput::local(draft, format!("{words} words")))
});

extractive!(Draft => api::SeoMetadata, |cx, draft| {
    let seo = seo(&cx.request, &draft.markdown);
    let summary = format!("title of {} chars, {} keywords", seo.title.chars().count(), seo.keywords.len());
    Ok(AgentOutput::local(seo, summary))
});

extractive!(FactCheckInput => api::FactCheckReport, |_cx, input| {
    let report = fact_check::check_article(&input.markdown, &input.sources);
    let summary = format!(
        "{} claims: {} supported, {} unsupported, {} unverifiable",
        report.claims.len(),
        report.supported,
        report.unsupported,
        report.unverifiable
    );
    Ok(AgentOutput::local(report, summary))
});

extractive!(FinalArticle => api::SocialContent, |cx, article| {
    let social = social(&cx.request, article);
    Ok(AgentOutput::local(social, "3 LinkedIn posts, a 10-post thread, email, Instagram, Facebook"))
});

extractive!(FinalArticle => api::Summary, |_cx, article| {
    let summary = summary(article);
    let line = format!("{} takeaways", summary.takeaways.len());
    Ok(AgentOutput::local(summary, line))
});

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

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

/// A line that is not prose: a list item, a table row, a heading.
fn is_structured_line(line: &str) -> bool {
    let line = line.trim_start();
    let numbered = line.split_once(['.', ')']).is_some_and(|(n, rest)| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && rest.starts_with(' ')
    });
    numbered || line.starts_with(['-', '*', '+', '|', '#'])
}

/// The prose of a passage: list items, table rows and headings become paragraph breaks, so
/// that no two of them ever run together into one "sentence".
fn prose_of(text: &str) -> String {
    text.lines()
        .map(|line| if is_structured_line(line) { "" } else { line })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sentences worth lifting: complete prose, not leaning on a previous sentence.
fn usable_sentences(text: &str) -> Vec<String> {
    text::sentences(&prose_of(text))
        .into_iter()
        .filter(|s| {
            let lower = s.to_lowercase();
            text::count_words(s) >= 6
                && s.ends_with(['.', '!', '?'])
                && !s.starts_with(['-', '#', '|'])
                && !DANGLING_STARTS.iter().any(|d| lower.starts_with(d))
        })
        .collect()
}

/// The `n` sentences of `text` sharing most terms with `query`, not in `used`, best first.
fn best_sentences(text: &str, query: &str, n: usize, used: &HashSet<String>) -> Vec<String> {
    best_of(&with_terms(text), query, n, used)
}

/// A text's usable sentences, each with its terms.
type Termed = Vec<(String, Vec<String>)>;

fn with_terms(text: &str) -> Termed {
    usable_sentences(text)
        .into_iter()
        .map(|s| {
            let terms = text::terms(&s).collect();
            (s, terms)
        })
        .collect()
}

/// [`best_sentences`] of sentences already split.
fn best_of(sentences: &Termed, query: &str, n: usize, used: &HashSet<String>) -> Vec<String> {
    let query_terms: BTreeSet<String> = text::terms(query).collect();
    let mut scored: Vec<(usize, usize, &String)> = sentences
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| !used.contains(s))
        .map(|(i, (s, terms))| {
            let overlap = terms.iter().filter(|t| query_terms.contains(*t)).count();
            (overlap, i, s)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored
        .into_iter()
        .take(n)
        .map(|(_, _, s)| s.clone())
        .collect()
}

/// Each source's usable sentences with their terms, split once per article: the writer
/// draws on the same sources for every section, list and paragraph.
struct Usable(HashMap<String, Termed>);

impl Usable {
    fn of(sources: &[SourceDoc]) -> Self {
        let split = sources
            .iter()
            .map(|s| (s.source.id.clone(), with_terms(&s.text)));
        Self(split.collect())
    }

    fn get(&self, doc: &SourceDoc) -> std::borrow::Cow<'_, Termed> {
        match self.0.get(&doc.source.id) {
            Some(sentences) => std::borrow::Cow::Borrowed(sentences),
            None => std::borrow::Cow::Owned(with_terms(&doc.text)),
        }
    }
}

/// Merges research: dedupe by URL, rank by relevance, authority and freshness, keep the best
/// ten (ids S1..). Shared by every `research_synthesizer`.
/// Whether `word` names something (a place, a firm, an acronym) in these texts: it is written
/// with a capital nearly every time it occurs, as "Texas" is and "private" is not.
fn is_proper(word: &str, texts: &[&str]) -> bool {
    let (mut total, mut capital) = (0usize, 0usize);
    for text in texts {
        for token in text.split(|c: char| !c.is_alphanumeric()) {
            if token.eq_ignore_ascii_case(word) {
                total += 1;
                capital += usize::from(token.starts_with(char::is_uppercase));
            }
        }
    }
    total > 0 && capital * 5 >= total * 4
}

/// Knowledge-base sources on topic: a document about Australia is not evidence for an
/// article about Texas. The topic's names (words the sources write with a capital: places,
/// firms, acronyms) must all appear in a source. Only when the documents that name them hold
/// too little prose for `target_words` do the others follow them, and the warning says so.
/// Web results are left as the search engine ranked them.
fn on_topic(
    topic: &str,
    target_words: usize,
    sources: Vec<SourceDoc>,
) -> (Vec<SourceDoc>, Option<String>) {
    let is_kb = |doc: &SourceDoc| doc.source.kind() == api::SourceKind::KnowledgeBase;
    let texts: Vec<&str> = sources
        .iter()
        .filter(|d| is_kb(d))
        .map(|d| d.text.as_str())
        .collect();
    let names: BTreeSet<String> = text::terms(topic)
        .filter(|w| !w.chars().all(|c| c.is_ascii_digit()) && is_proper(w, &texts))
        .collect();
    if names.is_empty() {
        return (sources, None);
    }
    let names_all = |doc: &SourceDoc| {
        !is_kb(doc) || {
            let has: BTreeSet<String> = text::terms(&format!(
                "{} {} {}",
                doc.source.title, doc.section, doc.text
            ))
            .collect();
            names.is_subset(&has)
        }
    };
    let (on, off): (Vec<SourceDoc>, Vec<SourceDoc>) = sources.into_iter().partition(names_all);
    let material: usize = on
        .iter()
        .flat_map(|d| usable_sentences(&d.text))
        .map(|s| text::count_words(&s))
        .sum();
    if off.is_empty() || material >= target_words {
        return (on, None);
    }
    let named = on.iter().filter(|d| is_kb(d)).count();
    let warning = format!(
        "{named} knowledge-base document(s) mention {} (about {material} words of prose); the article also draws on sources that do not",
        names.into_iter().collect::<Vec<_>>().join(" and ")
    );
    (on.into_iter().chain(off).collect(), Some(warning))
}

/// Merges research (dedupe by URL, sources on topic, rank by relevance, authority and
/// freshness, keep the best ten, ids S1..) and says when the sources are off topic.
pub(super) fn merge_sources(
    request: &JobRequest,
    input: &SynthesisInput,
) -> Result<(Vec<SourceDoc>, Option<String>), AgentError> {
    let mut merged: Vec<SourceDoc> = Vec::new();
    for doc in input.kb.sources.iter().chain(&input.web.sources) {
        if !merged.iter().any(|m| m.source.url == doc.source.url) {
            merged.push(doc.clone());
        }
    }
    if merged.is_empty() {
        return Err(AgentError::NoSources(format!(
            "research found no sources for \"{}\": add documents to the knowledge base (--kb-dir) or configure web search",
            request.topic
        )));
    }
    let newest = merged
        .iter()
        .map(|d| d.source.published.clone())
        .max()
        .unwrap_or_default();
    let rank = |d: &SourceDoc| {
        let authority = 1.0 + 0.1 * f64::from(d.source.authority_tier);
        let fresh = if !newest.is_empty() && d.source.published.get(..4) == newest.get(..4) {
            1.05
        } else {
            1.0
        };
        d.source.relevance * authority * fresh
    };
    merged.sort_by(|a, b| {
        rank(b)
            .total_cmp(&rank(a))
            .then(a.source.url.cmp(&b.source.url))
    });
    // Sources on topic first, in rank order; the rest only if needed.
    let (mut merged, off_topic) = on_topic(&request.topic, request.word_count, merged);
    merged.truncate(MAX_SOURCES);
    for (i, doc) in merged.iter_mut().enumerate() {
        doc.source.id = format!("S{}", i + 1);
    }
    Ok((merged, off_topic))
}

/// Merges the sources, then outlines the article from the best distinct passages.
fn synthesize(
    request: &JobRequest,
    input: &SynthesisInput,
) -> Result<AgentOutput<Synthesis>, AgentError> {
    let (merged, off_topic) = merge_sources(request, input)?;
    // Main sections: the sections of the best sources, one per source while they last.
    let mut outline: Vec<OutlineSection> = Vec::new();
    for doc in merged
        .iter()
        .filter(|d| d.source.relevance >= MIN_SECTION_RELEVANCE)
    {
        if outline.len() == 4 {
            break;
        }
        let heading = if doc.section == doc.source.title || kb::is_generic_heading(&doc.section) {
            doc.source.title.clone()
        } else {
            doc.section.clone()
        };
        if is_fixed_heading(&heading)
            || outline
                .iter()
                .any(|s| s.heading.eq_ignore_ascii_case(&heading))
        {
            continue;
        }
        outline.push(OutlineSection {
            heading,
            source_ids: vec![doc.source.id.clone()],
        });
    }
    // Fewer than three sources: the planned sections, drawing on every source.
    for planned in &input.plan.sections {
        if outline.len() >= 3 {
            break;
        }
        outline.push(OutlineSection {
            heading: planned.clone(),
            source_ids: merged.iter().map(|d| d.source.id.clone()).collect(),
        });
    }
    let key_themes = outline.iter().map(|s| s.heading.clone()).take(4).collect();
    let summary = format!("{} sources, {} sections", merged.len(), outline.len());
    let mut output = AgentOutput::local(
        Synthesis {
            sources: merged,
            outline,
            key_themes,
        },
        summary,
    );
    output.warnings.extend(off_topic.map(|w| (OFF_TOPIC, w)));
    Ok(output)
}

fn is_fixed_heading(heading: &str) -> bool {
    let lower = heading.to_lowercase();
    [
        KEY_INSIGHTS,
        KEY_TAKEAWAYS,
        CONCLUSION,
        "introduction",
        "executive summary",
    ]
    .iter()
    .any(|h| lower.starts_with(&h.to_lowercase()))
}

/// Text of the audience up to its first "and", for headings: "Institutional Investors".
fn audience_head(audience: &str) -> String {
    text::title_case(audience.split(" and ").next().unwrap_or(audience).trim())
}

/// Below this target, each part of the article gets one short sentence and the title no
/// subtitle: the fixed structure alone would otherwise exceed the length.
const COMPACT_TARGET: usize = 400;
/// Below this target, the conclusion is a closing line rather than another source sentence.
const TINY_TARGET: usize = 150;
/// Below this target, three main sections instead of four.
const THREE_SECTION_TARGET: usize = 700;

/// Builds the article: title, lead, key insights, the outlined sections filled with source
/// sentences up to the word budget, key takeaways and conclusion. Cites with `[S<n>]`.
/// Short targets get fewer, shorter parts; when the sources run out before a long target,
/// the draft says how far they reach.
fn write_article(
    request: &JobRequest,
    synthesis: &Synthesis,
    excluded: &HashSet<String>,
    scale: f64,
) -> Draft {
    let target = (request.word_count as f64 * scale).round() as usize;
    let mut w = Writer {
        request,
        synthesis,
        target,
        compact: target < COMPACT_TARGET,
        used: excluded.clone(),
        usable: Usable::of(&synthesis.sources),
    };
    let sections = w.sections();
    let headings: Vec<String> = if w.compact {
        short_headings(sections.iter().map(|(s, _)| s.heading.as_str()))
    } else {
        sections.iter().map(|(s, _)| s.heading.clone()).collect()
    };
    // Each main section's first sentence before the lead and the lists take theirs, so that
    // scarce material never leaves a section empty.
    let mut pools = section_pools(&request.topic, synthesis, &sections, &w);
    let (first, _) = fill_sections(&mut pools, &mut w.used, (Vec::new(), 0));
    let title = w.title();
    let (insights, takeaways) = w.lists(&sections);
    let lead = w.lead();
    let conclusion = w.conclusion();
    let fixed = format!(
        "{title} {KEY_INSIGHTS} {KEY_TAKEAWAYS} {CONCLUSION}\n{}\n{}\n{}\n{}",
        lead.join(" "),
        insights.join("\n"),
        takeaways.join("\n"),
        conclusion.join(" ")
    );
    let first_words: usize = first
        .iter()
        .flatten()
        .map(|(s, _)| text::count_words(s))
        .sum();
    let fixed_words = prose_words(&fixed)
        + first_words
        + headings.iter().map(|h| text::count_words(h)).sum::<usize>();
    let budget = target.saturating_sub(fixed_words);
    let (bodies, exhausted) = fill_sections(&mut pools, &mut w.used, (first, budget));

    let mut md = format!("# {title}\n\n");
    if !lead.is_empty() {
        md.push_str(&format!("{}\n\n", lead.join(" ")));
    }
    md.push_str(&format!("## {KEY_INSIGHTS}\n\n{}\n\n", insights.join("\n")));
    for (heading, body) in headings.iter().zip(&bodies) {
        md.push_str(&format!("## {heading}\n\n"));
        for paragraph in paragraphs(body) {
            md.push_str(&paragraph);
            md.push_str("\n\n");
        }
    }
    md.push_str(&format!(
        "## {KEY_TAKEAWAYS}\n\n{}\n\n## {CONCLUSION}\n\n{}\n",
        takeaways.join("\n"),
        conclusion.join(" ")
    ));
    let words = prose_words(&md);
    let short = (words as f64) < target as f64 * (1.0 - WORD_COUNT_TOLERANCE);
    Draft {
        markdown: md,
        reachable_words: (exhausted && short).then_some(words),
        cut_off: false,
    }
}

/// The offline writer's state while it builds one article: what it writes for, and the
/// sentences already used (each is used once).
struct Writer<'a> {
    request: &'a JobRequest,
    synthesis: &'a Synthesis,
    target: usize,
    /// A short target: one short sentence a part, no subtitle.
    compact: bool,
    used: HashSet<String>,
    usable: Usable,
}

impl<'a> Writer<'a> {
    /// The most relevant unused sentences of `text`; in a compact article, the shortest
    /// (then most relevant).
    fn pick(&self, doc: &SourceDoc, query: &str, n: usize) -> Vec<String> {
        let mut best = best_of(&self.usable.get(doc), query, usize::MAX, &self.used);
        if self.compact {
            best.sort_by_key(|s| text::count_words(s));
        }
        best.truncate(n);
        best
    }

    /// The outline's sections that have a source, three of them for a short target.
    fn sections(&self) -> Vec<(&'a OutlineSection, &'a SourceDoc)> {
        let synthesis = self.synthesis;
        let source = |id: &str| synthesis.sources.iter().find(|s| s.source.id == id);
        let max_sections = if self.target < THREE_SECTION_TARGET {
            3
        } else {
            4
        };
        synthesis
            .outline
            .iter()
            .filter_map(|s| {
                s.source_ids
                    .first()
                    .and_then(|id| source(id))
                    .map(|d| (s, d))
            })
            .take(max_sections)
            .collect()
    }

    fn title(&self) -> String {
        let topic = text::title_case(&self.request.topic);
        if self.compact {
            topic
        } else {
            format!(
                "{topic}: A Briefing for {}",
                audience_head(&self.request.audience)
            )
        }
    }

    /// A bullet from `doc`, or from any source once `doc` has no sentence left. A tiny
    /// article's bullets are the main clause of their sentence, where it stands alone.
    fn bullet(&mut self, doc: &SourceDoc, query: &str) -> Option<String> {
        let synthesis = self.synthesis;
        let (sentence, id) = std::iter::once(doc)
            .chain(&synthesis.sources)
            .find_map(|d| Some((self.pick(d, query, 1).pop()?, d.source.id.clone())))?;
        self.used.insert(sentence.clone());
        let sentence = match self.target < TINY_TARGET {
            true => main_clause(&sentence).unwrap_or(sentence),
            false => sentence,
        };
        Some(format!("- {}", cite_run(&[sentence], &id)))
    }

    /// Key insights and key takeaways (sentences that advise), one bullet per section each,
    /// the first of each list before the rest, so scarce material fills both lists.
    fn lists(&mut self, sections: &[(&OutlineSection, &SourceDoc)]) -> (Vec<String>, Vec<String>) {
        let topic = self.request.topic.clone();
        let bullets = if self.compact { 1 } else { sections.len() };
        let takeaway_query = format!("{topic} should must can consider need");
        let (mut insights, mut takeaways) = (Vec::new(), Vec::new());
        for (i, (section, doc)) in sections.iter().take(bullets).enumerate() {
            let insight_query = format!("{topic} {}", section.heading);
            if i == 0 || !insights.is_empty() {
                insights.extend(self.bullet(doc, &insight_query));
            }
            if i == 0 || !takeaways.is_empty() {
                takeaways.extend(self.bullet(doc, &takeaway_query));
            }
        }
        (insights, takeaways)
    }

    /// The lead paragraph. The writer's own sentences carry no user text: a figure in a topic
    /// ("... in 2026") would otherwise become a claim no source can support.
    fn lead(&mut self) -> Vec<String> {
        let mut lead = Vec::new();
        if self.compact {
            return lead;
        }
        lead.push("What follows sets out the evidence, with a source for every statement.".into());
        if let Some(first) = self.synthesis.sources.first() {
            let picked = self.pick(first, &self.request.topic, 2);
            self.used.extend(picked.iter().cloned());
            lead.push(cite_run(&picked, &first.source.id));
        }
        lead.retain(|l| !l.is_empty());
        lead
    }

    fn conclusion(&mut self) -> Vec<String> {
        let mut conclusion = Vec::new();
        let sources = &self.synthesis.sources;
        if self.target < TINY_TARGET {
            // No room for one more source sentence: a closing line that claims nothing.
            conclusion.push("Each point above rests on the source it cites.".to_string());
        } else if let Some(last) = sources.get(1).or(sources.first()) {
            let picked = self.pick(last, &self.request.topic, 1);
            self.used.extend(picked.iter().cloned());
            conclusion.push(cite_run(&picked, &last.source.id));
        }
        if !self.compact {
            conclusion.push(
                "Taken together, the evidence points toward disciplined governance, patient implementation and regular review."
                    .to_string(),
            );
        }
        conclusion.retain(|c| !c.is_empty());
        conclusion
    }
}

/// Section headings cut to their head for a compact article ("Private Equity J-Curve,
/// Commitments and Vintage Diversification" -> "Private Equity J-Curve"), kept whole where
/// the cut would make two of them the same.
fn short_headings<'a>(headings: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for heading in headings {
        // ASCII lower case keeps byte offsets valid in `heading`.
        let lower = heading.to_ascii_lowercase();
        let cut = [":", ",", " – ", " - ", " and ", " for ", " in ", " of "]
            .iter()
            .filter_map(|sep| lower.find(sep))
            .filter(|&at| text::count_words(&heading[..at]) >= 2)
            .min()
            .map_or(heading, |at| &heading[..at]);
        let short = cut.trim_end_matches([',', ':', '-', '–', ' ']).to_string();
        if out.iter().any(|o| o.eq_ignore_ascii_case(&short))
            || contract::is_forbidden_heading(&short)
        {
            out.push(heading.to_string());
        } else {
            out.push(short);
        }
    }
    out
}

/// Openings of a clause that cannot stand alone as a sentence.
const SUBORDINATE_STARTS: &[&str] = &[
    "although", "though", "while", "because", "when", "if", "as", "since", "after", "before",
    "unless", "for", "in", "by", "with", "despite", "over", "under", "at", "on", "from",
];

/// The part of a sentence before its first comma, as a sentence of its own, when it has at
/// least five words and does not open with a subordinating word ("Although ...").
fn main_clause(sentence: &str) -> Option<String> {
    let clause = &sentence[..sentence.find(", ")?];
    let first = clause.split_whitespace().next()?.to_lowercase();
    (text::count_words(clause) >= 5 && !SUBORDINATE_STARTS.contains(&first.as_str()))
        .then(|| format!("{clause}."))
}

/// A section's sentences, each with the id of its source.
type Body = Vec<(String, String)>;

/// Each section's candidate sentences, best first: its own source's in their original order
/// (shortest first in a compact article), then the other sources' by relevance to the section.
fn section_pools(
    topic: &str,
    synthesis: &Synthesis,
    sections: &[(&OutlineSection, &SourceDoc)],
    writer: &Writer<'_>,
) -> Vec<Body> {
    let compact = writer.compact;
    sections
        .iter()
        .map(|(section, doc)| {
            let own = writer.usable.get(doc);
            let mut pool: Body = own
                .iter()
                .map(|(s, _)| (s.clone(), doc.source.id.clone()))
                .collect();
            if compact {
                // Shortest first, so the one sentence a compact section gets is a short one.
                pool.sort_by_key(|(s, _)| text::count_words(s));
            }
            let query = format!("{topic} {}", section.heading);
            for other in &synthesis.sources {
                if other.source.id == doc.source.id {
                    continue;
                }
                let best = best_of(
                    &writer.usable.get(other),
                    &query,
                    usize::MAX,
                    &HashSet::new(),
                );
                pool.extend(best.into_iter().map(|s| (s, other.source.id.clone())));
            }
            pool.reverse(); // pop() takes from the front
            pool
        })
        .collect()
}

/// Fills the sections round-robin from their `pools`, one sentence at a time. A section
/// still empty gets a sentence whatever the budget; then sentences are added up to `budget`
/// words beyond `bodies`. Returns the bodies and whether the sources ran out first.
fn fill_sections(
    pools: &mut [Body],
    used: &mut HashSet<String>,
    (mut bodies, budget): (Vec<Body>, usize),
) -> (Vec<Body>, bool) {
    bodies.resize(pools.len(), Vec::new());
    let mut words = 0;
    loop {
        let mut progressed = false;
        for (body, pool) in bodies.iter_mut().zip(pools.iter_mut()) {
            let must = body.is_empty();
            if !must && words >= budget {
                return (bodies, false);
            }
            while let Some((sentence, id)) = pool.pop() {
                if used.insert(sentence.clone()) {
                    let n = text::count_words(&sentence);
                    // Stop before overshooting by more than half a sentence.
                    if !must && words + n / 2 > budget {
                        return (bodies, false);
                    }
                    words += n;
                    body.push((sentence, id));
                    progressed = true;
                    break;
                }
            }
        }
        if !progressed {
            return (bodies, words < budget);
        }
    }
}

/// Words of writer output as the reader will count them: `[S1]` markers become citations,
/// which are not prose.
fn prose_words(markdown: &str) -> usize {
    text::markdown_to_prose(markdown)
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric) && !w.starts_with("[S"))
        .count()
}

/// Sentences of one source with the citation before the last full stop: `... text [S1].`
fn cite_run(sentences: &[String], id: &str) -> String {
    let mut text = sentences.join(" ");
    if text.is_empty() {
        return text;
    }
    match text.pop() {
        Some(end @ ('.' | '!' | '?')) => format!("{text} [{id}]{end}"),
        Some(other) => format!("{text}{other} [{id}]."),
        None => text,
    }
}

/// Groups (sentence, source id) pairs into paragraphs of up to four sentences of one source.
fn paragraphs(body: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut run: Vec<String> = Vec::new();
    let mut run_id = "";
    for (sentence, id) in body {
        if (id != run_id || run.len() == 4) && !run.is_empty() {
            out.push(cite_run(&run, run_id));
            run.clear();
        }
        run_id = id;
        run.push(sentence.clone());
    }
    if !run.is_empty() {
        out.push(cite_run(&run, run_id));
    }
    out
}

/// Bullet items of a `##` section, citations removed.
fn section_bullets(markdown: &str, heading: &str) -> Vec<String> {
    let mut inside = false;
    let mut bullets = Vec::new();
    for line in markdown.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            inside = h.trim() == heading;
        } else if inside && let Some(item) = line.strip_prefix("- ") {
            bullets.push(text::strip_links(item).0);
        }
    }
    bullets
}

/// The lead paragraph (between the title and the first section), citations removed.
fn lead_sentences(markdown: &str) -> Vec<String> {
    let lead = markdown
        .split("\n\n")
        .map(str::trim)
        .find(|p| !p.is_empty() && !p.starts_with('#'))
        .unwrap_or_default();
    text::sentences(&text::strip_links(lead).0)
}

pub(super) fn seo(request: &JobRequest, markdown: &str) -> api::SeoMetadata {
    let title = contract::title(markdown).unwrap_or_else(|| request.topic.clone());
    let title = if title.chars().count() <= 60 {
        title.to_string()
    } else {
        text::truncate_words(&text::title_case(&request.topic), 60)
    };
    let insight = section_bullets(markdown, KEY_INSIGHTS)
        .into_iter()
        .next()
        .unwrap_or_default();
    let meta_description = text::truncate_words(
        &format!(
            "{} {insight}",
            lead_sentences(markdown)
                .first()
                .cloned()
                .unwrap_or_default()
        ),
        155,
    );

    // Keywords: the topic, then the article's most frequent substantive terms.
    let mut keywords = Vec::new();
    let topic_lower = request.topic.to_lowercase();
    if text::count_words(&topic_lower) <= 5 {
        keywords.push(topic_lower);
    }
    let mut frequency: BTreeMap<String, usize> = BTreeMap::new();
    for term in text::terms(&text::markdown_to_prose(markdown))
        .filter(|t| t.len() > 4 && !t.chars().all(|c| c.is_ascii_digit()))
    {
        *frequency.entry(term).or_default() += 1;
    }
    let mut ranked: Vec<(String, usize)> = frequency.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (term, _) in ranked {
        if keywords.len() == 6 {
            break;
        }
        if !keywords.iter().any(|k| k == &term) {
            keywords.push(term);
        }
    }
    api::SeoMetadata {
        title,
        meta_description,
        keywords,
    }
}

fn hashtags(keywords: &[String]) -> String {
    keywords
        .iter()
        .take(3)
        .map(|k| format!("#{}", text::title_case(k).replace(' ', "")))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn social(request: &JobRequest, article: &FinalArticle) -> api::SocialContent {
    let insights = section_bullets(&article.markdown, KEY_INSIGHTS);
    let takeaways = section_bullets(&article.markdown, KEY_TAKEAWAYS);
    let tags = hashtags(&article.seo.keywords);
    let linkedin_posts = insights
        .iter()
        .chain(&takeaways)
        .take(3)
        .map(|point| {
            format!(
                "{point}\n\nOur new briefing, \"{}\", sets out what this means for {}.\n\n{tags}",
                article.title, request.audience
            )
        })
        .collect();
    let mut points: Vec<String> = vec![article.title.clone()];
    points.extend(insights.iter().cloned());
    points.extend(takeaways.iter().cloned());
    points.extend(article.key_themes.iter().map(|t| format!("Theme: {t}")));
    points.truncate(9);
    points.push(format!(
        "Read the full briefing for the sources behind each point. {tags}"
    ));
    let total = points.len();
    let thread = points
        .iter()
        .enumerate()
        .map(|(i, p)| text::truncate_words(&format!("{}/{total} {p}", i + 1), 280))
        .collect();
    let first = insights.first().cloned().unwrap_or_default();
    api::SocialContent {
        linkedin_posts,
        thread,
        email_snippet: format!("{}\n\n{}", article.seo.meta_description, first),
        instagram_post: text::truncate_words(&format!("{} {first}\n\n{tags}", article.title), 2200),
        facebook_post: format!(
            "{} {}",
            article.seo.meta_description,
            takeaways.first().cloned().unwrap_or_default()
        ),
    }
}

pub(super) fn summary(article: &FinalArticle) -> api::Summary {
    let insights = section_bullets(&article.markdown, KEY_INSIGHTS);
    let lead = lead_sentences(&article.markdown);
    let mut overview: Vec<String> = lead.into_iter().take(2).collect();
    if let Some(insight) = insights.first() {
        overview.push(insight.clone());
    }
    overview.truncate(3);
    api::Summary {
        key_value: insights
            .first()
            .cloned()
            .unwrap_or_else(|| article.seo.meta_description.clone()),
        overview: overview.join(" "),
        takeaways: section_bullets(&article.markdown, KEY_TAKEAWAYS)
            .into_iter()
            .take(4)
            .collect(),
    }
}
