//! The article contract of SPEC §4, checked by code, and citation rendering.
use std::fmt;

use crate::{domain::SourceDoc, text};

pub const KEY_INSIGHTS: &str = "Key Insights at a Glance";
pub const KEY_TAKEAWAYS: &str = "Key Takeaways";
pub const CONCLUSION: &str = "Conclusion";
/// Sections every article has, besides its 3-4 main sections.
pub const FIXED_SECTIONS: [&str; 3] = [KEY_INSIGHTS, KEY_TAKEAWAYS, CONCLUSION];
/// Headings no section may start with (lower case).
pub const FORBIDDEN_HEADINGS: [&str; 2] = ["introduction", "executive summary"];

/// "Introduction ..." and "Executive Summary ..." are not section headings of this contract.
pub fn is_forbidden_heading(heading: &str) -> bool {
    let lower = heading.trim().to_lowercase();
    FORBIDDEN_HEADINGS.iter().any(|f| lower.starts_with(f))
}
/// Allowed deviation from the target word count.
pub const WORD_COUNT_TOLERANCE: f64 = 0.15;

/// One way a draft fails the contract or the fact check; the writer repairs exactly these.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    MissingTitle,
    MissingSection(&'static str),
    ForbiddenHeading(String),
    MainSectionCount(usize),
    ConclusionNotLast,
    NoCitations,
    InvalidCitation(String),
    WordCount {
        actual: usize,
        target: usize,
    },
    UnsupportedClaim(String),
    /// The model stopped at its token limit before the article ended.
    CutOff,
}

impl Problem {
    /// Machine-readable code, used in warnings and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingTitle => "missing_title",
            Self::MissingSection(_) => "missing_section",
            Self::ForbiddenHeading(_) => "forbidden_heading",
            Self::MainSectionCount(_) => "main_section_count",
            Self::ConclusionNotLast => "conclusion_not_last",
            Self::NoCitations => "no_citations",
            Self::InvalidCitation(_) => "invalid_citation",
            Self::WordCount { .. } => "word_count",
            Self::UnsupportedClaim(_) => "unsupported_claim",
            Self::CutOff => "cut_off",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingTitle => write!(f, "the article must start with a `# Title` line"),
            Self::MissingSection(s) => write!(f, "the `## {s}` section is missing"),
            Self::ForbiddenHeading(h) => write!(f, "the heading `{h}` is not allowed"),
            Self::MainSectionCount(n) => write!(f, "{n} main sections, expected 3-4"),
            Self::ConclusionNotLast => write!(f, "`## {CONCLUSION}` must be the last section"),
            Self::NoCitations => write!(f, "the article cites no source"),
            Self::InvalidCitation(c) => write!(f, "citation `{c}` is not one of the job's sources"),
            Self::WordCount { actual, target } => {
                write!(f, "{actual} words, target {target} ±15%")
            }
            Self::UnsupportedClaim(s) => write!(f, "claim not supported by its source: {s}"),
            Self::CutOff => write!(
                f,
                "the draft was cut off at the length limit before it ended: write the whole article, no longer than the target"
            ),
        }
    }
}

/// Headings of a Markdown article with their levels, in order, as pulldown-cmark parses
/// them (a `## ` inside a code fence is no heading).
fn headings(markdown: &str) -> Vec<(u8, String)> {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let mut found = Vec::new();
    let mut open: Option<(u8, String)> = None;
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => open = Some((level as u8, String::new())),
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, text)) = open.as_mut() {
                    text.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                found.extend(
                    open.take()
                        .map(|(level, text)| (level, text.trim().to_string())),
                );
            }
            _ => {}
        }
    }
    found
}

/// `## ` headings of a Markdown article, in order.
pub fn sections(markdown: &str) -> Vec<String> {
    headings(markdown)
        .into_iter()
        .filter(|(level, _)| *level == 2)
        .map(|(_, text)| text)
        .collect()
}

/// The `# Title` of an article, if it starts with one.
pub fn title(markdown: &str) -> Option<String> {
    use pulldown_cmark::{Event, Parser, Tag};
    let mut events = Parser::new(markdown);
    match events.next() {
        Some(Event::Start(Tag::Heading { level, .. })) if level as u8 == 1 => {}
        _ => return None,
    }
    headings(markdown).into_iter().next().map(|(_, text)| text)
}

/// The main sections: every `##` section except the fixed ones.
pub fn main_sections(markdown: &str) -> Vec<String> {
    sections(markdown)
        .into_iter()
        .filter(|s| !FIXED_SECTIONS.contains(&s.as_str()))
        .collect()
}

/// Every contract violation of a draft (empty when it satisfies the contract).
pub fn check(markdown: &str, sources: &[SourceDoc], target_words: usize) -> Vec<Problem> {
    let mut problems = Vec::new();
    if title(markdown).is_none() {
        problems.push(Problem::MissingTitle);
    }
    let sections = sections(markdown);
    let has = |name: &str| sections.iter().any(|s| s == name);
    for required in FIXED_SECTIONS {
        if !has(required) {
            problems.push(Problem::MissingSection(required));
        }
    }
    // The `# Title` may say anything (a topic can be "Introduction to ..."); sections may not.
    for (_, heading) in headings(markdown).iter().filter(|(level, _)| *level >= 2) {
        if is_forbidden_heading(heading) {
            problems.push(Problem::ForbiddenHeading(heading.clone()));
        }
    }
    let main = main_sections(markdown).len();
    if !(3..=4).contains(&main) {
        problems.push(Problem::MainSectionCount(main));
    }
    if has(CONCLUSION) && sections.last().map(String::as_str) != Some(CONCLUSION) {
        problems.push(Problem::ConclusionNotLast);
    }
    let links = text::links(markdown);
    if links.is_empty() {
        problems.push(Problem::NoCitations);
    }
    for link in &links {
        if !sources.iter().any(|s| s.source.url == link.url) {
            problems.push(Problem::InvalidCitation(link.url.clone()));
        }
    }
    for marker in unresolved_markers(markdown) {
        problems.push(Problem::InvalidCitation(marker));
    }
    let actual = text::markdown_word_count(markdown);
    let deviation = (actual as f64 - target_words as f64).abs() / target_words.max(1) as f64;
    if deviation > WORD_COUNT_TOLERANCE {
        problems.push(Problem::WordCount {
            actual,
            target: target_words,
        });
    }
    problems
}

/// The article with every link to a URL that is not one of the job's sources reduced to its
/// text, and how many there were: whatever a page or a model says, an article cites only
/// what research returned.
pub fn unlink_foreign(markdown: &str, sources: &[SourceDoc]) -> (String, usize) {
    let mut out = String::with_capacity(markdown.len());
    let (mut at, mut removed) = (0, 0);
    for link in text::links(markdown) {
        if sources.iter().any(|s| s.source.url == link.url) {
            continue;
        }
        out.push_str(markdown.get(at..link.start).unwrap_or_default());
        out.push_str(&link.text);
        at = link.end;
        removed += 1;
    }
    out.push_str(markdown.get(at..).unwrap_or_default());
    (out, removed)
}

/// The article without the lines that repeat the writer's own instructions (any run of
/// [`LEAK_WORDS`] consecutive words of `instructions`), and how many lines went: an article
/// never carries its system prompt, whatever a page asked the model to do.
pub fn without_instructions(markdown: &str, instructions: &str) -> (String, usize) {
    let words = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let runs: std::collections::HashSet<Vec<String>> = words(instructions)
        .windows(LEAK_WORDS)
        .map(<[String]>::to_vec)
        .collect();
    let mut removed = 0;
    let kept: Vec<&str> = markdown
        .lines()
        .filter(|line| {
            let leaks = words(line).windows(LEAK_WORDS).any(|w| runs.contains(w));
            removed += usize::from(leaks);
            !leaks
        })
        .collect();
    (kept.join("\n"), removed)
}

/// Consecutive words of the instructions that, found in an article, betray a leak.
pub const LEAK_WORDS: usize = 8;

/// Replaces the writer's `[S3]` markers with links to the sources they name:
/// `([Title](url))`. Markers naming no source are left in place for the contract to flag.
pub fn render_citations(markdown: &str, sources: &[SourceDoc]) -> String {
    let mut out = String::with_capacity(markdown.len() + 64);
    let mut rest = markdown;
    while let Some((start, end, id)) = next_marker(rest) {
        out.push_str(&rest[..start]);
        match sources.iter().find(|s| s.source.id == id) {
            Some(s) => {
                let title = s.source.title.replace(['[', ']'], "");
                // A URL with spaces or parentheses goes in `<...>`, where CommonMark keeps it whole.
                let url = &s.source.url;
                if url.contains(['(', ')', ' ', '<', '>']) {
                    out.push_str(&format!("([{title}](<{}>))", url.replace(['<', '>'], "")));
                } else {
                    out.push_str(&format!("([{title}]({url}))"));
                }
            }
            None => out.push_str(&rest[start..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `[S<digits>]` markers not followed by `(` (which would make them a link).
fn next_marker(text: &str) -> Option<(usize, usize, &str)> {
    let mut from = 0;
    while let Some(start) = text[from..].find("[S").map(|i| i + from) {
        let digits = text[start + 2..]
            .find(|c: char| !c.is_ascii_digit())
            .map(|i| i + start + 2)?;
        if digits > start + 2
            && text[digits..].starts_with(']')
            && !text[digits + 1..].starts_with('(')
        {
            return Some((start, digits + 1, &text[start + 1..digits]));
        }
        from = start + 2;
    }
    None
}

fn unresolved_markers(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = markdown;
    while let Some((_, end, id)) = next_marker(rest) {
        found.push(format!("[{id}]"));
        rest = &rest[end..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_inside_code_fences_are_not_sections() {
        let md = "# Title\n\n## Key Insights at a Glance\n\n```\n## Not a section\n```\n\n## Conclusion\n";
        assert_eq!(sections(md), ["Key Insights at a Glance", "Conclusion"]);
        assert_eq!(title(md).as_deref(), Some("Title"));
        assert_eq!(title("Intro\n\n# Late title"), None);
    }
    use dakota::api;

    fn source(id: &str, url: &str) -> SourceDoc {
        SourceDoc {
            source: api::Source {
                id: id.into(),
                title: format!("Title {id}"),
                url: url.into(),
                ..Default::default()
            },
            section: String::new(),
            text: String::new(),
        }
    }

    fn article(body_words: usize) -> String {
        let filler = "word ".repeat(body_words);
        format!(
            "# T\n\nLead [S1].\n\n## {KEY_INSIGHTS}\n- a\n\n## One\n{filler}\n\n## Two\nx\n\n## Three\ny\n\n## {KEY_TAKEAWAYS}\n- z\n\n## {CONCLUSION}\nEnd [S2].\n"
        )
    }

    #[test]
    fn markers_render_as_links_and_unknown_ones_are_flagged() {
        let sources = [
            source("S1", "https://a.example"),
            source("S2", "https://b.example"),
        ];
        let md = render_citations("Fact [S1]. Other [S9]. Done [S2]", &sources);
        assert_eq!(
            md,
            "Fact ([Title S1](https://a.example)). Other [S9]. Done ([Title S2](https://b.example))"
        );
        assert_eq!(unresolved_markers(&md), ["[S9]"]);
    }

    #[test]
    fn a_conforming_article_passes_and_each_violation_is_named() {
        let sources = [
            source("S1", "https://a.example"),
            source("S2", "https://b.example"),
        ];
        let good = render_citations(&article(100), &sources);
        let target = text::markdown_word_count(&good);
        assert_eq!(check(&good, &sources, target), vec![]);

        let bad = good
            .replace("# T\n", "")
            .replace("## Two", "## Introduction")
            .replace("## Three\ny\n", "")
            + "\n## Extra\nafter the end\n";
        let codes: Vec<&str> = check(&bad, &sources[..1], target * 2)
            .iter()
            .map(Problem::code)
            .collect();
        assert_eq!(
            codes,
            [
                "missing_title",
                "forbidden_heading",
                "conclusion_not_last",
                "invalid_citation",
                "word_count"
            ]
        );
    }
}
