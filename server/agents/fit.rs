//! Prompts that fit the model: when the model's context window is known, an agent's prompt
//! is rendered with its sources trimmed (the lowest-ranked dropped first, then every excerpt
//! shortened) and a previous draft shortened, so the prompt leaves room for the answer.
use super::llm::LlmAgent;
use crate::upstream::llm::Prompt;

/// Placeholders that may be shortened, in the order they give way.
const TRIMMABLE: [&str; 2] = ["sources", "revision"];
/// A source shown with less than this is not worth its header: drop the lowest-ranked
/// sources before cutting the rest below it.
const MIN_SOURCE_BYTES: usize = 300;

impl LlmAgent {
    /// Prompt `name` with `vars`, fitted into the context window with room for an answer of
    /// `max_tokens` (at most half the window is kept for it: the client lowers a larger
    /// `max_tokens` to what is left).
    pub(super) async fn render_fitted(
        &self,
        name: &str,
        vars: &[(&str, String)],
        max_tokens: u32,
    ) -> Prompt {
        let render = |vars: &[(&str, String)]| {
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.prompts.render(name, &vars)
        };
        let prompt = render(vars);
        let Some(context) = self.client.context_tokens(&self.model).await else {
            return prompt;
        };
        let reserve = max_tokens.min(context / 2);
        let Some(room) = self.client.prompt_room(&self.model, reserve).await else {
            return prompt;
        };
        let mut over = (prompt.system.len() + prompt.user.len()).saturating_sub(room);
        if over == 0 {
            return prompt;
        }
        let mut vars = vars.to_vec();
        for key in TRIMMABLE {
            let Some((_, value)) = vars.iter_mut().find(|(k, _)| *k == key) else {
                continue;
            };
            let keep = value.len().saturating_sub(over);
            let before = value.len();
            *value = if key == "sources" {
                trim_sources(value, keep)
            } else {
                crate::text::cut_at_word(value, keep).to_string()
            };
            over = over.saturating_sub(before - value.len());
            if over == 0 {
                break;
            }
        }
        tracing::info!(
            agent = self.name.as_str(),
            room,
            still_over = over,
            "prompt trimmed to the model's context"
        );
        render(&vars)
    }
}

/// Sources as [`super::llm::describe_sources`] lists them (blocks in rank order, separated by
/// blank lines), within `max` bytes: the lowest-ranked dropped until each of the rest can
/// keep [`MIN_SOURCE_BYTES`], then each cut to an equal share at a word.
pub fn trim_sources(text: &str, max: usize) -> String {
    let blocks: Vec<&str> = text
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    if text.len() <= max || blocks.is_empty() {
        return text.to_string();
    }
    let keep = (max / MIN_SOURCE_BYTES).clamp(1, blocks.len());
    let share = (max / keep).saturating_sub(2);
    blocks[..keep]
        .iter()
        .map(|block| crate::text::cut_at_word(block, share))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_give_way_lowest_ranked_first_then_each_is_cut() {
        let text = (1..=6)
            .map(|i| format!("[S{i}] Title {i}\n{}", "word ".repeat(200)))
            .collect::<Vec<_>>()
            .join("\n\n");
        let trimmed = trim_sources(&text, 1_000);
        assert!(trimmed.len() <= 1_000, "{}", trimmed.len());
        assert!(trimmed.starts_with("[S1]") && trimmed.contains("[S3]"));
        assert!(!trimmed.contains("[S4]"), "the lowest-ranked went first");
        assert_eq!(trim_sources(&text, 100_000), text);
        // Even a tiny room keeps the best source's start.
        assert!(trim_sources(&text, 50).starts_with("[S1]"));
    }
}
