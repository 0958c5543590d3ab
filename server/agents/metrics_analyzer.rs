//! `metrics_analyzer`: deterministic measures of a finished draft (no LLM).
use std::collections::BTreeSet;

use crate::{domain::contract, text};
use dakota::api;

/// Words per minute used for reading time.
const READING_WPM: f64 = 230.0;

pub fn analyze(markdown: &str) -> api::ContentMetrics {
    let prose = text::markdown_to_prose(markdown);
    // Paragraphs are blank-line separated blocks, headings aside.
    let paragraphs: Vec<String> = markdown
        .split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|p| !p.trim().is_empty())
        .collect();
    let body = paragraphs.join("\n\n");
    let sentence_count = text::sentences(&text::markdown_to_prose(&body)).len();
    let word_count = text::count_words(&prose);
    let links = text::links(markdown);
    let distinct: BTreeSet<&str> = links.iter().map(|l| l.url.as_str()).collect();
    let paragraph_count = paragraphs.len();
    api::ContentMetrics {
        word_count: word_count as u32,
        section_count: contract::sections(markdown).len() as u32,
        citation_count: links.len() as u32,
        paragraph_count: paragraph_count as u32,
        sentence_count: sentence_count as u32,
        reading_time_minutes: (word_count as f64 / READING_WPM).ceil().max(1.0) as u32,
        flesch_reading_ease: round1(text::flesch_reading_ease(&text::markdown_to_prose(&body))),
        avg_sentence_words: round1(word_count as f64 / sentence_count.max(1) as f64),
        distinct_sources_cited: distinct.len() as u32,
    }
}

/// Quality out of 100: contract 40 (8 off per violation), fact check 25 (share of checked
/// claims supported), citations 15 (full at 3+ distinct sources), readability 20 (full at
/// Flesch 30+, the band of professional prose).
pub fn quality(
    metrics: &api::ContentMetrics,
    problems: &[contract::Problem],
    fact_check: &api::FactCheckReport,
    revision_iterations: u32,
) -> api::QualityScores {
    let contract_problems: Vec<&contract::Problem> = problems
        .iter()
        .filter(|p| !matches!(p, contract::Problem::UnsupportedClaim(_)))
        .collect();
    let checked = fact_check.supported + fact_check.unsupported;
    let fact_check_score = if checked == 0 {
        1.0
    } else {
        fact_check.supported as f64 / checked as f64
    };
    let contract_points = (40.0 - 8.0 * contract_problems.len() as f64).max(0.0);
    let citation_points = 15.0 * (metrics.distinct_sources_cited as f64 / 3.0).min(1.0);
    let readability_points = 20.0 * (metrics.flesch_reading_ease / 30.0).clamp(0.0, 1.0);
    api::QualityScores {
        overall: round1(
            contract_points + 25.0 * fact_check_score + citation_points + readability_points,
        ),
        contract_satisfied: contract_problems.is_empty(),
        contract_violations: contract_problems.iter().map(|p| p.to_string()).collect(),
        fact_check_score: (fact_check_score * 1000.0).round() / 1000.0,
        revision_iterations,
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// `metrics_analyzer` as an agent, so its runs are reported like every other agent's.
pub struct MetricsAnalyzer;

impl super::Agent<super::Draft, api::ContentMetrics> for MetricsAnalyzer {
    fn provider(&self) -> &str {
        "offline"
    }
    fn model(&self) -> &str {
        "deterministic"
    }
    fn run<'a>(
        &'a self,
        _cx: &'a super::AgentContext,
        draft: &'a super::Draft,
    ) -> super::AgentFuture<'a, api::ContentMetrics> {
        let metrics = analyze(&draft.markdown);
        let summary = format!(
            "{} words, {} sections, {} citations",
            metrics.word_count, metrics.section_count, metrics.citation_count
        );
        Box::pin(std::future::ready(Ok(super::AgentOutput::local(
            metrics, summary,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_the_text() {
        let md = "# Title Here\n\nOne two three ([A](https://a.example)). Four five.\n\n## Key Takeaways\n- Six seven ([B](https://b.example)).\n";
        let m = analyze(md);
        assert_eq!(m.word_count, 11); // citations are not prose
        assert_eq!(m.section_count, 1);
        assert_eq!(m.citation_count, 2);
        assert_eq!(m.distinct_sources_cited, 2);
        assert_eq!(m.paragraph_count, 2);
        assert_eq!(m.sentence_count, 3);
        assert_eq!(m.reading_time_minutes, 1);
    }

    #[test]
    fn violations_and_unsupported_claims_lower_the_score() {
        let metrics = api::ContentMetrics {
            distinct_sources_cited: 3,
            flesch_reading_ease: 45.0,
            ..Default::default()
        };
        let clean = api::FactCheckReport {
            supported: 4,
            ..Default::default()
        };
        let perfect = quality(&metrics, &[], &clean, 0);
        assert_eq!(perfect.overall, 100.0);
        assert!(perfect.contract_satisfied);
        let failing = api::FactCheckReport {
            supported: 3,
            unsupported: 1,
            ..Default::default()
        };
        let worse = quality(&metrics, &[contract::Problem::NoCitations], &failing, 1);
        assert!(!worse.contract_satisfied);
        assert_eq!(worse.overall, 85.8); // 100 - 8 - 25 * 0.25, to one decimal
    }
}
