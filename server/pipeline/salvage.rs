//! What code makes of a draft the model could not finish: a draft cut off at `max_tokens`
//! kept up to its last complete section, and a draft that misses the article contract
//! completed with the offline writer's parts of the same brief (title, lead, the fixed
//! sections, main sections under the outline's headings).
use crate::domain::contract::{self, CONCLUSION, KEY_INSIGHTS, KEY_TAKEAWAYS};

/// Main sections an article has at least and at most (the contract's 3-4).
const MIN_MAIN: usize = 3;
const MAX_MAIN: usize = 4;

/// A draft cut off before it ended, up to its last complete section: the section the model
/// was writing when it stopped is left out (its heading too). A draft cut off before its
/// first `## ` section keeps its complete paragraphs.
pub(super) fn complete_sections(markdown: &str) -> String {
    let parts = Parts::of(markdown);
    if parts.sections.is_empty() {
        // Cut inside the title or the lead: the paragraphs before the last one.
        let kept = match markdown.trim_end().rfind("\n\n") {
            Some(end) => &markdown[..end],
            None => "",
        };
        return format!("{}\n", kept.trim_end());
    }
    let mut parts = parts;
    parts.sections.pop();
    parts.render()
}

/// `draft` in the planned structure, its gaps filled from `offline` (the offline writer's
/// draft of the same brief): the title, lead and fixed sections the draft lacks, and main
/// sections up to three. Returns the article and the parts taken from `offline`.
pub(super) fn complete(draft: &str, offline: &str) -> (String, Vec<String>) {
    let (mut ours, theirs) = (Parts::of(draft), Parts::of(offline));
    let mut taken = Vec::new();
    if ours.title.is_none() {
        ours.title = theirs.title.clone();
        taken.push("the title".to_string());
    }
    if ours.lead.trim().is_empty() {
        ours.lead = theirs.lead.clone();
        taken.push("the lead".to_string());
    }
    let fixed = |parts: &Parts, name: &str| {
        parts
            .sections
            .iter()
            .find(|(heading, _)| heading == name)
            .cloned()
    };
    let mut main: Vec<(String, String)> = ours
        .sections
        .iter()
        .filter(|(heading, body)| is_main(heading) && !body.trim().is_empty())
        .cloned()
        .collect();
    main.truncate(MAX_MAIN);
    for section in theirs.sections.iter().filter(|(h, _)| is_main(h)) {
        if main.len() >= MIN_MAIN {
            break;
        }
        if !main.iter().any(|(h, _)| h.eq_ignore_ascii_case(&section.0)) {
            taken.push(format!("the section `{}`", section.0));
            main.push(section.clone());
        }
    }
    let mut sections = Vec::new();
    let mut fixed_part = |name: &str, sections: &mut Vec<(String, String)>| {
        let section = match fixed(&ours, name).filter(|(_, body)| !body.trim().is_empty()) {
            Some(section) => Some(section),
            None => {
                taken.push(format!("`{name}`"));
                fixed(&theirs, name)
            }
        };
        sections.extend(section);
    };
    fixed_part(KEY_INSIGHTS, &mut sections);
    sections.extend(main);
    fixed_part(KEY_TAKEAWAYS, &mut sections);
    fixed_part(CONCLUSION, &mut sections);
    ours.sections = sections;
    (ours.render(), taken)
}

/// A main section: neither one of the fixed sections nor a forbidden heading.
fn is_main(heading: &str) -> bool {
    !contract::FIXED_SECTIONS.contains(&heading) && !contract::is_forbidden_heading(heading)
}

/// A Markdown article in its parts: `# Title`, the lead before the first `## ` section, and
/// each `## ` section's heading and body (deeper headings stay in the body).
struct Parts {
    title: Option<String>,
    lead: String,
    sections: Vec<(String, String)>,
}

impl Parts {
    fn of(markdown: &str) -> Self {
        let mut parts = Parts {
            title: None,
            lead: String::new(),
            sections: Vec::new(),
        };
        let mut fenced = false;
        for line in markdown.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            let heading = |prefix: &str| {
                (!fenced)
                    .then(|| line.strip_prefix(prefix))
                    .flatten()
                    .map(|h| h.trim().to_string())
            };
            if let Some(title) = heading("# ")
                && parts.title.is_none()
                && parts.lead.trim().is_empty()
                && parts.sections.is_empty()
            {
                parts.title = Some(title);
            } else if let Some(section) = heading("## ") {
                parts.sections.push((section, String::new()));
            } else {
                let body = match parts.sections.last_mut() {
                    Some((_, body)) => body,
                    None => &mut parts.lead,
                };
                body.push_str(line);
                body.push('\n');
            }
        }
        parts
    }

    fn render(&self) -> String {
        let mut md = String::new();
        if let Some(title) = &self.title {
            md.push_str(&format!("# {title}\n\n"));
        }
        let lead = self.lead.trim();
        if !lead.is_empty() {
            md.push_str(&format!("{lead}\n\n"));
        }
        for (heading, body) in &self.sections {
            md.push_str(&format!("## {heading}\n\n{}\n\n", body.trim()));
        }
        format!("{}\n", md.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFLINE: &str = "# Private Credit: A Briefing\n\nThe lead [S1].\n\n## Key Insights at a Glance\n\n- One [S1].\n\n## Why It Matters\n\nBody one [S1].\n\n## How It Works\n\nBody two [S2].\n\n## Risks and Trade-offs\n\nBody three [S2].\n\n## Key Takeaways\n\n- Take [S1].\n\n## Conclusion\n\nClosing [S2].\n";

    #[test]
    fn a_cut_off_draft_keeps_its_complete_sections() {
        let cut = "# T\n\nLead.\n\n## Key Insights at a Glance\n\n- a\n\n## One\n\nFull.\n\n## Two\n\nHalf a sent";
        let kept = complete_sections(cut);
        assert!(kept.contains("## One\n\nFull."), "{kept}");
        assert!(!kept.contains("Two") && !kept.contains("Half"), "{kept}");
        assert_eq!(
            complete_sections("# T\n\nLead one.\n\nLead tw"),
            "# T\n\nLead one.\n"
        );
    }

    #[test]
    fn a_paragraph_is_completed_into_the_planned_structure() {
        let (md, taken) = complete("Just one paragraph from a tiny model.", OFFLINE);
        assert!(
            md.starts_with("# Private Credit: A Briefing\n\nJust one paragraph"),
            "{md}"
        );
        assert_eq!(contract::main_sections(&md).len(), 3, "{md}");
        assert!(md.trim_end().ends_with("Closing [S2]."), "{md}");
        assert!(taken.contains(&"the title".to_string()), "{taken:?}");
        assert!(!taken.contains(&"the lead".to_string()), "{taken:?}");
    }

    #[test]
    fn the_models_own_sections_are_kept_and_missing_ones_added() {
        let draft = "# Mine\n\nMy lead.\n\n## Key Insights at a Glance\n\n- mine\n\n## My Section\n\nMine [S1].\n\n## Why It Matters\n\nMine too.\n\n## Introduction\n\nNo.";
        let (md, taken) = complete(draft, OFFLINE);
        let sections = contract::sections(&md);
        assert_eq!(
            sections,
            [
                KEY_INSIGHTS,
                "My Section",
                "Why It Matters",
                "How It Works",
                KEY_TAKEAWAYS,
                CONCLUSION
            ]
        );
        assert!(md.contains("- mine") && md.contains("Mine too."), "{md}");
        assert_eq!(taken.len(), 3, "{taken:?}");
    }
}
