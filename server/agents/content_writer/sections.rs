//! The offline writer's main sections: their headings, each one's candidate sentences, and
//! the round-robin fill up to the word budget.
use std::collections::HashSet;

use super::{OutlineSection, SourceDoc, Synthesis, Writer, best_of};
use crate::{domain::contract, text};

/// Section headings cut to their head for a compact article ("Private Equity J-Curve,
/// Commitments and Vintage Diversification" -> "Private Equity J-Curve"), kept whole where
/// the cut would make two of them the same.
pub(super) fn short_headings<'a>(headings: impl Iterator<Item = &'a str>) -> Vec<String> {
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

/// A section's sentences, each with the id of its source.
pub(super) type Body = Vec<(String, String)>;

/// Each section's candidate sentences, best first: its own source's in their original order
/// (shortest first in a compact article), then the other sources' by relevance to the section.
pub(super) fn section_pools(
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
pub(super) fn fill_sections(
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
