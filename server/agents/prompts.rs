//! Agent prompts: one file per agent in `prompts/`, compiled in, overridable from a folder.
//! A file is the system message, then a `---user---` line, then the user message;
//! `{{name}}` placeholders are filled per job.
use std::{collections::HashMap, path::Path};

use crate::upstream::llm::Prompt;

const SEPARATOR: &str = "---user---";

/// The built-in prompts, by file stem.
const BUILT_IN: [(&str, &str); 9] = [
    (
        "kb_researcher",
        include_str!("../../prompts/kb_researcher.md"),
    ),
    (
        "web_researcher",
        include_str!("../../prompts/web_researcher.md"),
    ),
    (
        "research_synthesizer.plan",
        include_str!("../../prompts/research_synthesizer.plan.md"),
    ),
    (
        "research_synthesizer",
        include_str!("../../prompts/research_synthesizer.md"),
    ),
    (
        "content_writer",
        include_str!("../../prompts/content_writer.md"),
    ),
    (
        "seo_specialist",
        include_str!("../../prompts/seo_specialist.md"),
    ),
    (
        "fact_checker",
        include_str!("../../prompts/fact_checker.md"),
    ),
    (
        "social_promoter",
        include_str!("../../prompts/social_promoter.md"),
    ),
    (
        "summary_writer",
        include_str!("../../prompts/summary_writer.md"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("prompt file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("prompt file {0} has no `---user---` line between the system and the user message")]
    NoSeparator(String),
}

#[derive(Debug, Clone)]
pub struct Prompts {
    templates: HashMap<&'static str, String>,
}

impl Prompts {
    /// The built-in prompts, each replaced by `<dir>/<name>.md` when that file exists.
    pub fn load(dir: Option<&Path>) -> Result<Self, PromptError> {
        let mut templates = HashMap::new();
        for (name, built_in) in BUILT_IN {
            let text = match dir
                .map(|d| d.join(format!("{name}.md")))
                .filter(|p| p.is_file())
            {
                Some(path) => std::fs::read_to_string(&path).map_err(|source| PromptError::Io {
                    path: path.display().to_string(),
                    source,
                })?,
                None => built_in.to_string(),
            };
            if !text.contains(SEPARATOR) {
                return Err(PromptError::NoSeparator(format!("{name}.md")));
            }
            templates.insert(name, text);
        }
        Ok(Self { templates })
    }

    /// The prompt `name` with its placeholders filled; unknown placeholders stay visible.
    pub fn render(&self, name: &str, vars: &[(&str, &str)]) -> Prompt {
        let mut text = self.templates.get(name).cloned().unwrap_or_default();
        for (key, value) in vars {
            text = text.replace(&format!("{{{{{key}}}}}"), value);
        }
        let (system, user) = text.split_once(SEPARATOR).unwrap_or((text.as_str(), ""));
        Prompt {
            system: system.trim().to_string(),
            user: user.trim().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_prompts_render_with_their_placeholders() {
        let prompts = Prompts::load(None).unwrap();
        let prompt = prompts.render(
            "content_writer",
            &[
                ("topic", "Private credit"),
                ("audience", "pension trustees"),
            ],
        );
        assert!(prompt.system.contains("pension trustees"));
        assert!(prompt.user.contains("Topic: Private credit"));
        assert!(!prompt.system.contains("---user---"));
    }

    #[test]
    fn a_folder_overrides_single_prompts() {
        let dir = std::env::temp_dir().join(format!("dakota-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("seo_specialist.md"),
            "Custom {{topic}}\n---user---\nGo",
        )
        .unwrap();
        let prompts = Prompts::load(Some(&dir)).unwrap();
        assert_eq!(
            prompts.render("seo_specialist", &[("topic", "ESG")]).system,
            "Custom ESG"
        );
        assert!(
            prompts
                .render("kb_researcher", &[])
                .system
                .contains("knowledge-base researcher")
        );
        std::fs::write(dir.join("seo_specialist.md"), "no separator").unwrap();
        assert!(Prompts::load(Some(&dir)).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
