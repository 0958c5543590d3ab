//! `fact_checker`: the article's checkable claims (figures, dates, cited statements), each
//! checked against the text of the sources it cites; citations to sources research did not
//! return always fail. Offline, code decides; with an LLM, the model judges each claim and a
//! "supported" verdict stands only if its quoted evidence really is in the source text.
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Agent, AgentContext, AgentFuture, AgentOutput, FactCheckInput, SourceDoc,
    llm::{Checked, LlmAgent, SOURCE_EXCERPT_CHARS, llm_agent, object, parsed},
    offline::extractive,
};
use crate::text;
use dakota::api::{self, Verdict};
use quoted::quoted_in;

mod quoted;

/// Share of a claim's terms that a source sentence must contain to support it.
const SUPPORT_OVERLAP: f64 = 0.6;

/// A checkable statement of the article and the source URLs it cites.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimCandidate {
    pub text: String,
    pub kind: &'static str,
    pub cited_urls: Vec<String>,
    /// URLs cited anywhere in the claim's paragraph (the fallback for checking).
    pub paragraph_urls: Vec<String>,
}

impl ClaimCandidate {
    /// The URLs the claim is checked against: those it cites, else those its paragraph cites
    /// (none: every source).
    fn cited(&self) -> &[String] {
        if self.cited_urls.is_empty() {
            &self.paragraph_urls
        } else {
            &self.cited_urls
        }
    }

    fn is_checked_against(&self, url: &str) -> bool {
        let cited = self.cited();
        cited.is_empty() || cited.iter().any(|u| u == url)
    }
}

/// The claims to check: every sentence with a figure (number, percentage, money, date)
/// and every sentence that carries a citation.
pub fn extract_claims(markdown: &str) -> Vec<ClaimCandidate> {
    let mut claims = Vec::new();
    for paragraph in markdown.split("\n\n") {
        // Headings are not claims; list items are claims of their own; the other lines of
        // the block are one paragraph of prose.
        let mut prose = Vec::new();
        let mut blocks = Vec::new();
        for line in paragraph
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
        {
            let numbered = || {
                let (n, rest) = line.split_once(". ")?;
                (!n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
                    .then_some(rest)
            };
            match line
                .strip_prefix("- ")
                .or_else(|| line.strip_prefix("* "))
                .or_else(numbered)
            {
                Some(item) => blocks.push(item.to_string()),
                None => prose.push(line),
            }
        }
        blocks.push(prose.join(" "));
        for block in blocks.iter().filter(|b| !b.trim().is_empty()) {
            let paragraph_urls: Vec<String> = text::links(block)
                .iter()
                .map(|l| l.url.to_string())
                .collect();
            let mut sentences: Vec<(String, Vec<String>)> = Vec::new();
            for raw in text::sentences(block) {
                let (prose, urls) = text::strip_links(&raw);
                if prose.chars().any(char::is_alphanumeric) {
                    sentences.push((prose, urls));
                } else if let Some(previous) = sentences.last_mut() {
                    previous.1.extend(urls); // a citation standing after the full stop
                }
            }
            for (prose, cited_urls) in sentences {
                if let Some(kind) = claim_kind(&prose, !cited_urls.is_empty()) {
                    claims.push(ClaimCandidate {
                        text: prose,
                        kind,
                        cited_urls,
                        paragraph_urls: paragraph_urls.clone(),
                    });
                }
            }
        }
    }
    claims
}

fn claim_kind(sentence: &str, cited: bool) -> Option<&'static str> {
    let lower = sentence.to_lowercase();
    let has_year = text::tokens(sentence).any(|t| {
        t.len() == 4 && (t.starts_with("19") || t.starts_with("20")) && t.parse::<u32>().is_ok()
    });
    if sentence.contains(['$', '€', '£'])
        || lower.contains(" million")
        || lower.contains(" billion")
    {
        Some("money")
    } else if sentence.contains('%') || lower.contains(" percent") {
        Some("percentage")
    } else if has_year {
        Some("date")
    } else if sentence.chars().any(|c| c.is_ascii_digit()) {
        Some("number")
    } else if cited {
        Some("citation")
    } else {
        None
    }
}

/// Numbers as written, normalised: `$1,500.0` -> `1500`, `2.50%` -> `2.5`.
pub fn figures(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .map(|t| t.trim_matches(['.', ',']).replace(',', ""))
        .filter(|t| t.chars().any(|c| c.is_ascii_digit()))
        .map(|t| {
            if t.contains('.') {
                t.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                t
            }
        })
        .collect()
}

/// A source's sentences with their figures and terms, split once per check (on first use)
/// rather than once per claim: an article has dozens of claims against the same sources.
struct Evidence<'a> {
    source: &'a SourceDoc,
    sentences: std::cell::OnceCell<Vec<Sentence>>,
    /// The source's sentences and list lines by their quotation key (see [`quoted`]).
    quotations: std::cell::OnceCell<std::collections::HashMap<String, String>>,
}

struct Sentence {
    text: String,
    figures: BTreeSet<String>,
    terms: BTreeSet<String>,
}

impl<'a> Evidence<'a> {
    fn of(sources: &'a [SourceDoc]) -> Vec<Self> {
        sources
            .iter()
            .map(|source| Evidence {
                source,
                sentences: std::cell::OnceCell::new(),
                quotations: std::cell::OnceCell::new(),
            })
            .collect()
    }

    fn sentences(&self) -> &[Sentence] {
        self.sentences.get_or_init(|| {
            text::sentences(&self.source.text)
                .into_iter()
                .map(|text| Sentence {
                    figures: figures(&text),
                    terms: text::terms(&text).collect(),
                    text,
                })
                .collect()
        })
    }
}

/// Checks one claim against the sources: those it cites, else those its paragraph cites,
/// else all of them. Supported when one source sentence holds the claim's figures and
/// most of its terms.
fn check_claim(claim: &ClaimCandidate, evidence: &[Evidence<'_>]) -> api::Claim {
    let cited = claim.cited();
    let candidates: Vec<&Evidence> = evidence
        .iter()
        .filter(|e| claim.is_checked_against(&e.source.source.url))
        .collect();
    let claim_terms: BTreeSet<String> = text::terms(&claim.text).collect();
    let claim_figures = figures(&claim.text);
    let mut best: Option<(f64, &SourceDoc, &str)> = None;
    for candidate in &candidates {
        for sentence in candidate.sentences() {
            if !claim_figures.is_subset(&sentence.figures) {
                continue;
            }
            let overlap = if claim_terms.is_empty() {
                1.0
            } else {
                claim_terms.intersection(&sentence.terms).count() as f64 / claim_terms.len() as f64
            };
            if best.as_ref().is_none_or(|(score, _, _)| overlap > *score) {
                best = Some((overlap, candidate.source, &sentence.text));
            }
        }
    }
    let quotable = candidates.clone();
    let candidates: Vec<&SourceDoc> = candidates.iter().map(|e| e.source).collect();
    let mut result = api::Claim {
        text: claim.text.clone(),
        kind: claim.kind.to_string(),
        ..Default::default()
    };
    // A claim that is a sentence of a source it is checked against, word for word, is a
    // quotation: reported as such, with its source, not as a claim the sources "support".
    if let Some((source, sentence)) = quoted_in(claim, &quotable) {
        result.set_verdict(Verdict::Quoted);
        result.source_id = source.source.id.clone();
        result.source_url = source.source.url.clone();
        result.evidence = sentence.to_string();
        return result;
    }
    match best {
        Some((overlap, source, sentence)) if overlap >= SUPPORT_OVERLAP => {
            result.set_verdict(Verdict::Supported);
            result.source_id = source.source.id.clone();
            result.source_url = source.source.url.clone();
            result.evidence = sentence.to_string();
        }
        // Cited, but to nothing research returned: the citation itself is wrong.
        _ if candidates.is_empty() && !cited.is_empty() => result.set_verdict(Verdict::Unsupported),
        _ if candidates.iter().all(|s| s.text.trim().is_empty()) => {
            result.set_verdict(Verdict::Unverifiable);
        }
        _ => {
            result.set_verdict(Verdict::Unsupported);
            if let [only] = candidates.as_slice() {
                result.source_id = only.source.id.clone();
                result.source_url = only.source.url.clone();
            }
        }
    }
    result
}

/// The sources a claim is checked against: those it cites, else those its paragraph cites,
/// else all of them.
pub fn candidate_sources<'a>(
    claim: &ClaimCandidate,
    sources: &'a [SourceDoc],
) -> Vec<&'a SourceDoc> {
    sources
        .iter()
        .filter(|s| claim.is_checked_against(&s.source.url))
        .collect()
}

/// Recomputes the counts and the verdict of a report after its claims changed.
pub fn recount(report: &mut api::FactCheckReport) {
    let count = |v: Verdict| report.claims.iter().filter(|c| c.verdict() == v).count() as u32;
    report.quoted = count(Verdict::Quoted);
    report.supported = count(Verdict::Supported);
    report.unsupported = count(Verdict::Unsupported);
    report.unverifiable = count(Verdict::Unverifiable);
    report.passed = report.unsupported == 0 && report.invalid_citations.is_empty();
}

/// The full report: every claim checked, citations that name no source listed.
pub fn check_article(markdown: &str, sources: &[SourceDoc]) -> api::FactCheckReport {
    check_claims(markdown, &extract_claims(markdown), sources)
}

/// [`check_article`] with the claims of `markdown` already extracted.
pub fn check_claims(
    markdown: &str,
    claims: &[ClaimCandidate],
    sources: &[SourceDoc],
) -> api::FactCheckReport {
    let evidence = Evidence::of(sources);
    let claims: Vec<api::Claim> = claims.iter().map(|c| check_claim(c, &evidence)).collect();
    let invalid_citations: Vec<String> = text::links(markdown)
        .iter()
        .filter(|l| !sources.iter().any(|s| s.source.url == l.url))
        .map(|l| l.url.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut report = api::FactCheckReport {
        claims,
        invalid_citations,
        ..Default::default()
    };
    recount(&mut report);
    report
}

/// The most tokens the model's verdicts may use: a base plus this much per claim, up to the cap.
/// (See the table in [`super::llm`].)
pub(super) const VERDICT_BASE_TOKENS: u32 = 60;
pub(super) const PER_VERDICT_TOKENS: u32 = 90;
pub(super) const VERDICTS_TOKENS_CAP: u32 = 2_500;

/// The report in one line, for `agent_completed`.
fn summary_line(report: &api::FactCheckReport) -> String {
    format!(
        "{} claims: {} quoted, {} supported, {} unsupported, {} unverifiable",
        report.claims.len(),
        report.quoted,
        report.supported,
        report.unsupported,
        report.unverifiable
    )
}

extractive!(FactCheckInput => api::FactCheckReport, |_cx, input| {
    let report = check_article(&input.markdown, &input.sources);
    let summary = summary_line(&report);
    Ok(AgentOutput::local(report, summary))
});

/// `fact_checker`: claims are extracted by code; the model judges each against excerpts of
/// the sources it cites; a "supported" verdict stands only if its quoted evidence really is
/// in the source text, and citations to unknown sources always fail.
pub struct LlmFactChecker {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct VerdictsAnswer {
    verdicts: Vec<VerdictAnswer>,
}

#[derive(Deserialize)]
struct VerdictAnswer {
    claim: usize,
    verdict: ModelVerdict,
    evidence: String,
}

/// A verdict as the model gives it (the schema's enum); anything else counts as unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModelVerdict {
    Supported,
    Unsupported,
    Unverifiable,
    #[serde(other)]
    Other,
}

impl ModelVerdict {
    /// The values the answer's schema allows.
    const NAMES: [&'static str; 3] = ["supported", "unsupported", "unverifiable"];
}

fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Verdicts for claims 1..=`count`; verdicts for claims that do not exist are dropped (the
/// claims without a verdict keep the code check's).
fn check_verdicts(answer: VerdictsAnswer, count: usize) -> Checked<VerdictsAnswer> {
    match answer
        .verdicts
        .iter()
        .find(|v| v.claim == 0 || v.claim > count)
        .map(|bad| bad.claim)
    {
        None => Checked::Fits(answer),
        Some(bad) => Checked::Repairable {
            problem: format!("a verdict for claim {bad}, but the claims are numbered 1-{count}"),
            repaired: VerdictsAnswer {
                verdicts: answer
                    .verdicts
                    .into_iter()
                    .filter(|v| (1..=count).contains(&v.claim))
                    .collect(),
            },
        },
    }
}

/// The numbered claims of the fact checker's prompt, each with excerpts of its candidate
/// sources.
fn claims_listing(candidates: &[ClaimCandidate], sources: &[SourceDoc]) -> String {
    claim_blocks(candidates, sources).join("\n\n")
}

/// Each claim as the fact checker's prompt lists it, numbered from 1, with its sources'
/// excerpts.
fn claim_blocks(candidates: &[ClaimCandidate], sources: &[SourceDoc]) -> Vec<String> {
    let excerpt = |s: &&SourceDoc| {
        let text: String = s.text.chars().take(SOURCE_EXCERPT_CHARS).collect();
        format!("  [{}] {}", s.source.id, text.replace('\n', " "))
    };
    candidates
        .iter()
        .enumerate()
        .map(|(i, claim)| {
            let excerpts = candidate_sources(claim, sources)
                .iter()
                .map(excerpt)
                .collect::<Vec<_>>()
                .join("\n");
            let excerpts = if excerpts.is_empty() {
                "  (no source text)".into()
            } else {
                excerpts
            };
            format!("{}. {}\n{}", i + 1, claim.text, excerpts)
        })
        .collect()
}

/// The most tokens the verdicts on `count` claims take.
fn verdicts_tokens(count: usize) -> u32 {
    u32::try_from(count)
        .unwrap_or(u32::MAX)
        .saturating_mul(PER_VERDICT_TOKENS)
        .saturating_add(VERDICT_BASE_TOKENS)
        .min(VERDICTS_TOKENS_CAP)
}

/// The longest quote of evidence asked for: the passage that states the fact, not more.
const EVIDENCE_CHARS: usize = 200;

/// The fact checker's answer: at most one verdict per claim of `count`.
fn verdicts_schema(llm: &LlmAgent, count: usize) -> Value {
    let evidence = llm.text(
        EVIDENCE_CHARS,
        "the exact supporting passage of the excerpt, or empty",
    );
    object(
        json!({"verdicts": {"type": "array", "maxItems": count, "items": object(json!({
            "claim": {"type": "integer", "minimum": 1, "maximum": count},
            "verdict": {"type": "string", "enum": ModelVerdict::NAMES},
            "evidence": evidence,
        }))}}),
    )
}

/// The model's verdict on one claim, taken only as far as the sources bear it out:
/// "supported" needs its evidence in a candidate source and no invalid citation, and
/// "unverifiable" needs the candidates to have no text.
fn apply_verdict(
    claim: &mut api::Claim,
    candidate: &ClaimCandidate,
    verdict: &VerdictAnswer,
    all: &[SourceDoc],
) {
    let sources = candidate_sources(candidate, all);
    let invalid_citation = candidate
        .cited_urls
        .iter()
        .any(|u| !all.iter().any(|s| &s.source.url == u));
    let evidence_source = sources.iter().find(|s| {
        !verdict.evidence.trim().is_empty()
            && normalise(&s.text).contains(&normalise(&verdict.evidence))
    });
    match (verdict.verdict, evidence_source) {
        (ModelVerdict::Supported, Some(source)) if !invalid_citation => {
            claim.set_verdict(Verdict::Supported);
            claim.source_id = source.source.id.clone();
            claim.source_url = source.source.url.clone();
            claim.evidence = verdict.evidence.trim().to_string();
        }
        (ModelVerdict::Unverifiable, _) if sources.iter().all(|s| s.text.trim().is_empty()) => {
            claim.set_verdict(Verdict::Unverifiable)
        }
        // "Supported" without evidence found in the source is not taken on trust.
        _ => {
            claim.set_verdict(Verdict::Unsupported);
            claim.evidence.clear();
        }
    }
}

impl LlmFactChecker {
    /// The claims in runs that each fit one call's prompt (one run when the context window is
    /// unknown or holds them all).
    async fn batches(
        &self,
        cx: &AgentContext,
        candidates: &[ClaimCandidate],
        sources: &[SourceDoc],
    ) -> Vec<std::ops::Range<usize>> {
        let all = std::iter::once(0..candidates.len()).collect();
        let tokens = verdicts_tokens(candidates.len().min(4));
        let Some(room) = self
            .llm
            .room_for(&cx.request, "fact_checker", "claims", tokens)
            .await
        else {
            return all;
        };
        let sizes: Vec<usize> = claim_blocks(candidates, sources)
            .iter()
            .map(String::len)
            .collect();
        if sizes.iter().sum::<usize>() + 2 * sizes.len() <= room {
            return all;
        }
        crate::agents::fit::batches(&sizes, room)
    }
}

impl Agent<FactCheckInput, api::FactCheckReport> for LlmFactChecker {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        input: &'a FactCheckInput,
    ) -> AgentFuture<'a, api::FactCheckReport> {
        Box::pin(async move {
            // The code check first: it finds the candidate sources and evidence of each claim.
            let candidates = extract_claims(&input.markdown);
            let mut report = check_claims(&input.markdown, &candidates, &input.sources);
            if report.claims.is_empty() {
                return Ok(AgentOutput::local(report, "no checkable claims"));
            }
            // As many claims a call as the model's context holds, in as many calls as needed.
            let mut answers = Vec::new();
            for batch in self.batches(cx, &candidates, &input.sources).await {
                let claims = &candidates[batch.clone()];
                let count = claims.len();
                let answer = self
                    .llm
                    .ask(
                        cx,
                        "fact_checker",
                        &[("claims", claims_listing(claims, &input.sources))],
                        verdicts_schema(&self.llm, count),
                        verdicts_tokens(count),
                        parsed(|answer: VerdictsAnswer| check_verdicts(answer, count)),
                    )
                    .await?;
                for verdict in &answer.completion.value.verdicts {
                    let at = batch.start + verdict.claim - 1;
                    if let Some(claim) = report.claims.get_mut(at) {
                        apply_verdict(claim, &candidates[at], verdict, &input.sources);
                    }
                }
                answers.push(answer);
            }
            recount(&mut report);
            let summary = summary_line(&report);
            // The calls' tokens and attempts are counted by the resilience stack; a repair in
            // any batch is reported.
            let repaired = answers.iter().find_map(|a| a.repaired.clone());
            let Some(last) = answers.pop() else {
                return Ok(AgentOutput::local(report, summary));
            };
            let asked = super::llm::Asked { repaired, ..last };
            Ok(self.llm.output(asked.with(report), summary))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(url: &str, text: &str) -> SourceDoc {
        SourceDoc {
            source: api::Source {
                id: "S1".into(),
                url: url.into(),
                ..Default::default()
            },
            section: String::new(),
            text: text.into(),
        }
    }

    #[test]
    fn a_sentence_copied_from_its_source_is_quoted_and_a_restated_figure_is_checked() {
        let url = "https://kb.example/credit";
        let sources = vec![source(
            url,
            "Direct lenders charged 6.5% over base rates in 2024. Defaults stayed low.\n\n1. Alder Fund — AUM: $2B\n",
        )];
        let md = format!(
            "# T\n\nDirect lenders charged 6.5% over base rates in 2024 ([S1]({url})). Lenders charged 6.5% over base rates [S1]({url}).\n\n1. Alder Fund — AUM: $2B ([S1]({url})).\n"
        );
        let report = check_article(&md, &sources);
        let verdicts: Vec<Verdict> = report.claims.iter().map(|c| c.verdict()).collect();
        assert_eq!(
            verdicts,
            [Verdict::Quoted, Verdict::Supported, Verdict::Quoted],
            "{report:?}"
        );
        assert_eq!((report.quoted, report.supported), (2, 1));
        assert_eq!(report.claims[0].source_url, url);
        assert!(report.passed);
    }

    #[test]
    fn figures_are_normalised() {
        let found: Vec<String> = figures("A $1,500.00 fund returned 2.50% in 2023.")
            .into_iter()
            .collect();
        assert_eq!(found, ["1500", "2.5", "2023"]);
    }

    #[test]
    fn claims_are_checked_against_the_cited_source_text() {
        let sources = [source(
            "https://kb.example/a",
            "The Employee Retirement Income Security Act was passed in 1974. Pensions grew.",
        )];
        let md = "# T\n\nThe Employee Retirement Income Security Act was passed in 1974 ([A](https://kb.example/a)).\n\nThe act was passed in 1980 ([A](https://kb.example/a)).\n\nMarkets are calm.\n";
        let report = check_article(md, &sources);
        let verdicts: Vec<(Verdict, &str)> = report
            .claims
            .iter()
            .map(|c| (c.verdict(), c.kind.as_str()))
            .collect();
        // The first is the source's own sentence: quoted, with its source.
        assert_eq!(
            verdicts,
            [(Verdict::Quoted, "date"), (Verdict::Unsupported, "date")]
        );
        assert_eq!(report.claims[0].source_url, "https://kb.example/a");
        assert!(report.claims[0].evidence.contains("1974"));
        assert!(!report.passed);
    }

    #[test]
    fn headings_are_skipped_and_list_items_and_prose_of_one_block_are_both_checked() {
        let md = "## Heading with 2026\nProse line from 1974 ([A](https://kb.example/a)).\n- Item from 1999 ([A](https://kb.example/a)).";
        let claims = extract_claims(md);
        let texts: Vec<&str> = claims.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["Item from 1999.", "Prose line from 1974."]);
    }

    #[test]
    fn citations_to_unknown_urls_fail_the_report() {
        let sources = [source("https://kb.example/a", "Text.")];
        let report = check_article("Claim ([X](https://invented.example/x)).", &sources);
        assert_eq!(report.invalid_citations, ["https://invented.example/x"]);
        assert_eq!(report.claims[0].verdict(), Verdict::Unsupported);
        assert!(!report.passed);
    }

    /// The answer budget covers one verdict at its longest (see [`crate::agents::llm`]).
    #[test]
    fn the_token_budget_covers_the_longest_answer() {
        let per_verdict = crate::agents::llm::longest_answer_tokens(
            &[(1, EVIDENCE_CHARS), (1, "unverifiable".len())],
            r#"{"claim":99,"verdict":,"evidence":},"#.len(),
        );
        assert!(per_verdict <= PER_VERDICT_TOKENS, "{per_verdict}");
    }
}
