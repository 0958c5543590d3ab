//! `seo_specialist`: title, meta description and keywords. Offline from the article's title,
//! lead and most frequent terms; with an LLM in one call, its limits in the schema and
//! checked by code.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::{
    Agent, AgentContext, AgentFuture, AgentOutput, Draft,
    extract::{lead_sentences, section_bullets},
    llm::{Checked, LlmAgent, llm_agent, object, parsed},
    offline::extractive,
};
use crate::{
    domain::{
        JobRequest,
        contract::{self, KEY_INSIGHTS},
    },
    text::{self, cut_at_word},
};
use dakota::api;

/// The limits of SPEC §4, kept by both versions and asked of the model.
pub(super) const SEO_TITLE_CHARS: usize = 60;
pub(super) const META_DESCRIPTION_CHARS: usize = 155;
const MIN_KEYWORDS: usize = 5;
const MAX_KEYWORDS: usize = 7;
/// Keywords of the offline version, when the article has that many terms.
const OFFLINE_KEYWORDS: usize = 6;

/// The most tokens the model's answer may use (see the table in [`super::llm`]).
pub(super) const ANSWER_TOKENS: u32 = 200;
/// The longest keyword phrase.
const KEYWORD_CHARS: usize = 40;

extractive!(Draft => api::SeoMetadata, |cx, draft| {
    let seo = seo(&cx.request, &draft.markdown);
    let summary = summary_line(&seo);
    Ok(AgentOutput::local(seo, summary))
});

fn seo(request: &JobRequest, markdown: &str) -> api::SeoMetadata {
    let title = contract::title(markdown).unwrap_or_else(|| request.topic.clone());
    let title = if title.chars().count() <= SEO_TITLE_CHARS {
        title.to_string()
    } else {
        text::truncate_words(&text::title_case(&request.topic), SEO_TITLE_CHARS)
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
        META_DESCRIPTION_CHARS,
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
        if keywords.len() == OFFLINE_KEYWORDS {
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

/// The metadata in one line, for `agent_completed`.
fn summary_line(seo: &api::SeoMetadata) -> String {
    format!(
        "title of {} chars, {} keywords",
        seo.title.chars().count(),
        seo.keywords.len()
    )
}

/// `seo_specialist`: one call; limits are in the schema and checked by code.
pub struct LlmSeo {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
pub(super) struct SeoAnswer {
    pub(super) title: String,
    pub(super) meta_description: String,
    pub(super) keywords: Vec<String>,
}

/// Title 1-60 characters, description 1-155, 5-7 keywords. Repairs: cut at a word boundary,
/// extra keywords dropped, missing parts from the offline SEO of the same article.
pub(super) fn check_seo(
    answer: SeoAnswer,
    fallback: &api::SeoMetadata,
) -> Checked<api::SeoMetadata> {
    let title = answer.title.trim().to_string();
    let meta = answer.meta_description.trim().to_string();
    let mut keywords: Vec<String> = answer
        .keywords
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let mut problems = Vec::new();
    let (title_len, meta_len) = (title.chars().count(), meta.chars().count());
    if title_len == 0 || title_len > SEO_TITLE_CHARS {
        problems.push(format!(
            "a title of {title_len} characters (1-{SEO_TITLE_CHARS})"
        ));
    }
    if meta_len == 0 || meta_len > META_DESCRIPTION_CHARS {
        problems.push(format!(
            "a meta description of {meta_len} characters (1-{META_DESCRIPTION_CHARS})"
        ));
    }
    if !(MIN_KEYWORDS..=MAX_KEYWORDS).contains(&keywords.len()) {
        problems.push(format!(
            "{} keywords ({MIN_KEYWORDS}-{MAX_KEYWORDS})",
            keywords.len()
        ));
    }
    if problems.is_empty() {
        return Checked::Fits(api::SeoMetadata {
            title,
            meta_description: meta,
            keywords,
        });
    }
    keywords.truncate(MAX_KEYWORDS);
    for extra in &fallback.keywords {
        if keywords.len() >= MIN_KEYWORDS {
            break;
        }
        if !keywords.iter().any(|k| k.eq_ignore_ascii_case(extra)) {
            keywords.push(extra.clone());
        }
    }
    let or_fallback = |text: String, fallback: &str| {
        if text.is_empty() {
            fallback.to_string()
        } else {
            text
        }
    };
    Checked::Repairable {
        problem: problems.join("; "),
        repaired: api::SeoMetadata {
            title: cut_at_word(&or_fallback(title, &fallback.title), SEO_TITLE_CHARS),
            meta_description: cut_at_word(
                &or_fallback(meta, &fallback.meta_description),
                META_DESCRIPTION_CHARS,
            ),
            keywords,
        },
    }
}

impl Agent<Draft, api::SeoMetadata> for LlmSeo {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        draft: &'a Draft,
    ) -> AgentFuture<'a, api::SeoMetadata> {
        Box::pin(async move {
            let schema = object(json!({
                "title": self.llm.text(SEO_TITLE_CHARS, "the SEO title"),
                "meta_description": self.llm.text(META_DESCRIPTION_CHARS, "the meta description"),
                "keywords": self.llm.texts(MIN_KEYWORDS, MAX_KEYWORDS, KEYWORD_CHARS, "a keyword phrase"),
            }));
            let fallback = seo(&cx.request, &draft.markdown);
            let answer = self
                .llm
                .ask(
                    cx,
                    "seo_specialist",
                    &[("article", draft.markdown.clone())],
                    schema,
                    ANSWER_TOKENS,
                    parsed(|answer: SeoAnswer| check_seo(answer, &fallback)),
                )
                .await?;
            let summary = summary_line(&answer.completion.value);
            Ok(self.llm.output(answer, summary))
        })
    }
}

/// The answer budget covers the longest answer the schema allows (see [`crate::agents::llm`]).
#[cfg(test)]
#[test]
fn the_token_budget_covers_the_longest_answer() {
    let longest = super::llm::longest_answer_tokens(
        &[
            (1, SEO_TITLE_CHARS),
            (1, META_DESCRIPTION_CHARS),
            (MAX_KEYWORDS, KEYWORD_CHARS),
        ],
        45,
    );
    assert!(longest <= ANSWER_TOKENS, "{longest} > {ANSWER_TOKENS}");
}
