//! Property tests: every parser of client or upstream data, fed arbitrary input, answers
//! without panicking and within bounds. (Few cases each, so they run in every CI pass.)
use crate::{kb::KnowledgeBase, pipeline::contract, text, upstream, validation};
use dakota::api;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    }
}

/// Text that looks like what attackers and sloppy models send: Markdown and HTML syntax,
/// control characters, long runs, arbitrary Unicode.
fn hostile() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("[".to_string()),
        Just("](".to_string()),
        Just(")".to_string()),
        Just("<".to_string()),
        Just("```\n".to_string()),
        Just("\n## ".to_string()),
        Just("# ".to_string()),
        Just("| a | b |\n|---|---|\n".to_string()),
        Just("- ".to_string()),
        Just("1. ".to_string()),
        Just("data: ".to_string()),
        Just("\r\n".to_string()),
        Just("&amp;".to_string()),
        Just("<script>".to_string()),
        Just("[S1]".to_string()),
        Just("https://x.example/a_(b)".to_string()),
        any::<String>(),
        "\\PC{0,40}",
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_validation_answers_every_input(topic in hostile(), audience in hostile(), key in hostile(), words in any::<u32>()) {
        let request = api::GenerateRequest {
            topic,
            audience,
            idempotency_key: key,
            word_count: Some(words),
            ..Default::default()
        };
        if let Ok(valid) = validation::generate_request(request) {
            prop_assert!(valid.slug.chars().count() <= 50);
            prop_assert!(!valid.topic.chars().any(dakota::safe_text::is_hidden));
        }
        let _ = validation::job_id(&words.to_string());
    }

    #[test]
    fn markdown_parsers_answer_every_input(markdown in hostile()) {
        let links = text::links(&markdown);
        for link in &links {
            prop_assert!(link.start <= link.end && link.end <= markdown.len());
        }
        let (prose, _) = text::strip_links(&markdown);
        prop_assert!(prose.len() <= markdown.len() + 1);
        let _ = contract::sections(&markdown);
        let _ = contract::title(&markdown);
        let _ = contract::check(&markdown, &[], 1500);
        let _ = contract::unlink_foreign(&markdown, &[]);
        let _ = contract::without_instructions(&markdown, "You are the senior writer of an editorial team, and so on");
        let _ = text::sentences(&markdown);
    }

    #[test]
    fn fetched_html_becomes_text(html in hostile()) {
        let text = upstream::fetch::html_to_text(&html);
        prop_assert!(!text.contains("<script>"));
    }

    #[test]
    fn retry_after_is_a_bounded_duration_or_nothing(value in hostile(), seconds in any::<f64>()) {
        let _ = upstream::parse_retry_after(&value);
        if let Some(d) = upstream::parse_retry_after(&seconds.to_string()) {
            prop_assert!(seconds >= 0.0 && d.as_secs_f64().is_finite());
        }
    }

    #[test]
    fn knowledge_base_documents_of_any_shape_index(doc in hostile(), other in hostile()) {
        let dir = std::env::temp_dir().join(format!("dakota-prop-kb-{}-{}", std::process::id(), fastrand_suffix(&doc)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.md"), &doc).unwrap();
        std::fs::write(dir.join("b.md"), &other).unwrap();
        let kb = KnowledgeBase::load(&dir, None).unwrap();
        let _ = kb.search(&doc, 5, 1).unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A file-name suffix that differs between cases run in one process.
fn fastrand_suffix(seed: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut hasher);
    std::time::SystemTime::now().hash(&mut hasher);
    hasher.finish()
}
