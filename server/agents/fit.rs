//! Prompts that fit the model: when the model's context window is known, an agent's prompt
//! is rendered with its sources trimmed (the lowest-ranked dropped first, then every excerpt
//! shortened), the fact checker's claims likewise, and the article (for SEO, social posts and
//! the summary, its start is enough) or a previous draft shortened, so the prompt leaves room
//! for the answer.
use super::llm::LlmAgent;
use crate::upstream::llm::Prompt;

/// Placeholders that may be shortened, in the order they give way, and the least a block of
/// each (a source, a claim with its excerpts) keeps before the lowest-ranked blocks are
/// dropped instead; 0 for plain text, cut at a word.
const TRIMMABLE: [(&str, usize); 4] = [
    ("sources", 300),
    ("claims", 150),
    ("article", 0),
    ("revision", 0),
];

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
        for (key, min_block) in TRIMMABLE {
            let Some((_, value)) = vars.iter_mut().find(|(k, _)| *k == key) else {
                continue;
            };
            let keep = value.len().saturating_sub(over);
            let before = value.len();
            *value = if min_block > 0 {
                trim_blocks(value, keep, min_block)
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

impl LlmAgent {
    /// Bytes placeholder `key` may fill in prompt `name` (the request's placeholders and
    /// `vars` filled, `key` empty) with room for an answer of `max_tokens`; `None` when the
    /// model's context window is not known.
    pub(super) async fn room_for(
        &self,
        request: &crate::domain::JobRequest,
        name: &str,
        key: &'static str,
        max_tokens: u32,
    ) -> Option<usize> {
        let context = self.client.context_tokens(&self.model).await?;
        let reserve = max_tokens.min(context / 2);
        let room = self.client.prompt_room(&self.model, reserve).await?;
        let mut vars = super::llm::request_vars(request);
        vars.push((key, String::new()));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let empty = self.prompts.render(name, &vars);
        Some(room.saturating_sub(empty.system.len() + empty.user.len()))
    }
}

/// Consecutive runs of `sizes` whose sum (with a blank line between) stays within `room`,
/// each of one item at least: the batches of one question asked in parts.
pub fn batches(sizes: &[usize], room: usize) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, size) in sizes.iter().enumerate() {
        let adds = size + if i > start { 2 } else { 0 };
        if i > start && used + adds > room {
            batches.push(start..i);
            (start, used) = (i, *size);
        } else {
            used += adds;
        }
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// Blocks in rank order separated by blank lines (sources as
/// [`super::llm::describe_sources`] lists them, claims with their excerpts), within `max`
/// bytes: the lowest-ranked dropped until each of the rest can keep `min_block`, then each
/// cut to an equal share at a word.
pub fn trim_blocks(text: &str, max: usize, min_block: usize) -> String {
    let blocks: Vec<&str> = text
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    if text.len() <= max || blocks.is_empty() {
        return text.to_string();
    }
    let keep = (max / min_block.max(1)).clamp(1, blocks.len());
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
    fn items_are_batched_within_the_room_one_at_least() {
        assert_eq!(batches(&[10, 10, 10], 100), vec![0..3]);
        assert_eq!(batches(&[10, 10, 10], 22), vec![0..2, 2..3]);
        assert_eq!(
            batches(&[50, 10], 20),
            vec![0..1, 1..2],
            "an item larger than the room"
        );
        assert!(batches(&[], 10).is_empty());
    }

    #[test]
    fn sources_give_way_lowest_ranked_first_then_each_is_cut() {
        let text = (1..=6)
            .map(|i| format!("[S{i}] Title {i}\n{}", "word ".repeat(200)))
            .collect::<Vec<_>>()
            .join("\n\n");
        let trimmed = trim_blocks(&text, 1_000, 300);
        assert!(trimmed.len() <= 1_000, "{}", trimmed.len());
        assert!(trimmed.starts_with("[S1]") && trimmed.contains("[S3]"));
        assert!(!trimmed.contains("[S4]"), "the lowest-ranked went first");
        assert_eq!(trim_blocks(&text, 100_000, 300), text);
        // Even a tiny room keeps the best source's start.
        assert!(trim_blocks(&text, 50, 300).starts_with("[S1]"));
    }
}
