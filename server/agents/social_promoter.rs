//! `social_promoter`: LinkedIn posts, a numbered thread, an email snippet, Instagram and
//! Facebook posts. Offline from the article's lists; with an LLM by the model, repaired from
//! the offline version where it falls short.
use serde::Deserialize;
use serde_json::json;

use super::{
    Agent, AgentContext, AgentFuture, AgentOutput, FinalArticle,
    extract::section_bullets,
    llm::{Checked, LlmAgent, llm_agent, object, parsed},
    offline::extractive,
};
use crate::{
    domain::{
        JobRequest,
        contract::{KEY_INSIGHTS, KEY_TAKEAWAYS},
    },
    text::{self, cut_at_word},
};
use dakota::api;

/// The posts of SPEC §4, and the length of a post on X: kept by both versions and asked of
/// the model.
const LINKEDIN_POSTS: usize = 3;
const THREAD_POSTS: usize = 10;
pub(super) const THREAD_POST_CHARS: usize = 280;

/// The most tokens the model's answer may use (see the table in [`super::llm`]).
pub(super) const ANSWER_TOKENS: u32 = 1_800;
/// The longest LinkedIn post, email snippet, Instagram and Facebook post asked for.
const LINKEDIN_POST_CHARS: usize = 500;
const EMAIL_CHARS: usize = 250;
const INSTAGRAM_CHARS: usize = 400;
const FACEBOOK_CHARS: usize = 300;

extractive!(FinalArticle => api::SocialContent, |cx, article| {
    let social = social(&cx.request, article);
    Ok(AgentOutput::local(social, summary_line()))
});

/// What was written, in one line, for `agent_completed`.
fn summary_line() -> String {
    format!(
        "{LINKEDIN_POSTS} LinkedIn posts, a {THREAD_POSTS}-post thread, email, Instagram, Facebook"
    )
}

fn hashtags(keywords: &[String]) -> String {
    keywords
        .iter()
        .take(3)
        .map(|k| format!("#{}", text::title_case(k).replace(' ', "")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn social(request: &JobRequest, article: &FinalArticle) -> api::SocialContent {
    let insights = section_bullets(&article.markdown, KEY_INSIGHTS);
    let takeaways = section_bullets(&article.markdown, KEY_TAKEAWAYS);
    let tags = hashtags(&article.seo.keywords);
    let linkedin_posts = insights
        .iter()
        .chain(&takeaways)
        .take(LINKEDIN_POSTS)
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
    // The last post points to the article.
    points.truncate(THREAD_POSTS - 1);
    points.push(format!(
        "Read the full briefing for the sources behind each point. {tags}"
    ));
    let total = points.len();
    let thread = points
        .iter()
        .enumerate()
        .map(|(i, p)| text::truncate_words(&format!("{}/{total} {p}", i + 1), THREAD_POST_CHARS))
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

/// `social_promoter`.
pub struct LlmSocial {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
pub(super) struct SocialAnswer {
    pub(super) linkedin_posts: Vec<String>,
    pub(super) thread: Vec<String>,
    pub(super) email_snippet: String,
    pub(super) instagram_post: String,
    pub(super) facebook_post: String,
}

/// 3 LinkedIn posts, 10 thread posts of at most 280 characters, the rest non-empty. Repairs:
/// extra posts dropped, long posts cut, missing ones from the offline social content.
pub(super) fn check_social(
    a: SocialAnswer,
    fallback: &api::SocialContent,
) -> Checked<api::SocialContent> {
    let problems = social_problems(&a);
    if problems.is_empty() {
        return Checked::Fits(api::SocialContent {
            linkedin_posts: a.linkedin_posts,
            thread: a.thread,
            email_snippet: a.email_snippet,
            instagram_post: a.instagram_post,
            facebook_post: a.facebook_post,
        });
    }
    let pointer = format!("Read the full article: {}", fallback.email_snippet.trim());
    let or = |text: String, fallback: &str| {
        if text.trim().is_empty() {
            fallback.to_string()
        } else {
            text
        }
    };
    Checked::Repairable {
        problem: problems.join("; "),
        repaired: api::SocialContent {
            linkedin_posts: fill(
                a.linkedin_posts,
                &fallback.linkedin_posts,
                LINKEDIN_POSTS,
                &pointer,
            ),
            thread: numbered(fill(a.thread, &fallback.thread, THREAD_POSTS, &pointer)),
            email_snippet: or(a.email_snippet, &fallback.email_snippet),
            instagram_post: or(a.instagram_post, &fallback.instagram_post),
            facebook_post: or(a.facebook_post, &fallback.facebook_post),
        },
    }
}

/// What the social answer gets wrong, for the re-ask.
fn social_problems(a: &SocialAnswer) -> Vec<String> {
    let mut problems = Vec::new();
    if a.linkedin_posts.len() != LINKEDIN_POSTS {
        problems.push(format!(
            "{} LinkedIn posts ({LINKEDIN_POSTS})",
            a.linkedin_posts.len()
        ));
    }
    if a.thread.len() != THREAD_POSTS {
        problems.push(format!("{} thread posts ({THREAD_POSTS})", a.thread.len()));
    }
    if let Some(long) = a
        .thread
        .iter()
        .find(|p| p.chars().count() > THREAD_POST_CHARS)
    {
        problems.push(format!(
            "a thread post of {} characters (at most {THREAD_POST_CHARS})",
            long.chars().count()
        ));
    }
    let empty = [&a.email_snippet, &a.instagram_post, &a.facebook_post]
        .into_iter()
        .chain(&a.linkedin_posts)
        .chain(&a.thread)
        .any(|t| t.trim().is_empty());
    if empty {
        problems.push("an empty post or snippet".into());
    }
    problems
}

/// Exactly `n` non-empty items: the model's, then the offline version's, then `pointer` (a
/// pointer to the article; the offline version may itself have fewer).
fn fill(mut items: Vec<String>, from: &[String], n: usize, pointer: &str) -> Vec<String> {
    items.retain(|p| !p.trim().is_empty());
    items.truncate(n);
    for extra in from.iter().filter(|p| !p.trim().is_empty()) {
        if items.len() >= n {
            break;
        }
        if !items.contains(extra) {
            items.push(extra.clone());
        }
    }
    items.resize(n.max(items.len()), pointer.to_string());
    items
}

/// Thread posts numbered anew, "1/10 ...", whatever numbering they came with.
fn numbered(posts: Vec<String>) -> Vec<String> {
    let total = posts.len();
    posts
        .iter()
        .enumerate()
        .map(|(i, post)| {
            let text = post
                .trim()
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '/')
                .trim_start();
            cut_at_word(&format!("{}/{total} {text}", i + 1), THREAD_POST_CHARS)
        })
        .collect()
}

impl Agent<FinalArticle, api::SocialContent> for LlmSocial {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        article: &'a FinalArticle,
    ) -> AgentFuture<'a, api::SocialContent> {
        Box::pin(async move {
            let schema = object(json!({
                "linkedin_posts": self.llm.texts(LINKEDIN_POSTS, LINKEDIN_POSTS, LINKEDIN_POST_CHARS, "a LinkedIn post"),
                "thread": self.llm.texts(THREAD_POSTS, THREAD_POSTS, THREAD_POST_CHARS, "one post of the thread"),
                "email_snippet": self.llm.text(EMAIL_CHARS, "the email snippet"),
                "instagram_post": self.llm.text(INSTAGRAM_CHARS, "the Instagram caption"),
                "facebook_post": self.llm.text(FACEBOOK_CHARS, "the Facebook post"),
            }));
            let extra = [
                ("title", article.title.clone()),
                ("article", article.markdown.clone()),
            ];
            let fallback = social(&cx.request, article);
            let answer = self
                .llm
                .ask(
                    cx,
                    "social_promoter",
                    &extra,
                    schema,
                    ANSWER_TOKENS,
                    parsed(|answer: SocialAnswer| check_social(answer, &fallback)),
                )
                .await?;
            Ok(self.llm.output(answer, summary_line()))
        })
    }
}

/// The answer budget covers the longest answer the schema allows (see [`crate::agents::llm`]).
#[cfg(test)]
#[test]
fn the_token_budget_covers_the_longest_answer() {
    let longest = super::llm::longest_answer_tokens(
        &[
            (LINKEDIN_POSTS, LINKEDIN_POST_CHARS),
            (THREAD_POSTS, THREAD_POST_CHARS),
            (1, EMAIL_CHARS),
            (1, INSTAGRAM_CHARS),
            (1, FACEBOOK_CHARS),
        ],
        90,
    );
    assert!(longest <= ANSWER_TOKENS, "{longest} > {ANSWER_TOKENS}");
}
