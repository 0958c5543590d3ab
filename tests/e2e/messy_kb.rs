//! The offline article from a knowledge base like the ones users export from the web:
//! ranked lists with figures, tables, generic headings, front matter, and a call to action
//! repeated in every file (`tests/fixtures/messy-kb/`).
use std::path::PathBuf;

use dakota::api;

use crate::common::{self, final_article, request};

fn messy_kb() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/messy-kb")
}

/// Sentences every file of the corpus repeats.
const BOILERPLATE: [&str; 5] = [
    "Start a free trial of Dakota Marketplace",
    "Dakota Marketplace is the leading database",
    "Book a demo today",
    "Share this article",
    "Subscribe to our newsletter",
];

const GENERIC: [&str; 5] = [
    "Content",
    "Introduction",
    "Overview",
    "Article Information",
    "About Dakota",
];

/// Words that only the corpus's list items and table rows hold.
const LIST_FIELDS: [&str; 4] = ["Metro:", "AUM:", "Founded:", "| "];

const TEXAS: [&str; 5] = ["texas", "dallas", "houston", "austin", "san-antonio"];

#[tokio::test]
async fn the_offline_article_from_exported_web_pages_reads_as_an_article() {
    let mut config = common::config();
    config.kb_dir = messy_kb();
    let mut server = common::start(config).await;
    let mut req = request("Private equity firms in Texas");
    req.word_count = Some(400);
    let article = final_article(&server.generate(req).await);
    let markdown = &article.markdown;

    let headings: Vec<&str> = markdown
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    for generic in GENERIC {
        assert!(
            !headings.iter().any(|h| h.eq_ignore_ascii_case(generic)),
            "`{generic}` is a section title: {headings:?}"
        );
    }
    // The sources' lists stand in the article as lists (each item a line of its own), never
    // inside a paragraph.
    let is_list_line = |line: &str| {
        line.starts_with("- ")
            || line
                .split_once(". ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    for line in markdown
        .lines()
        .filter(|l| !l.starts_with('#') && !is_list_line(l))
    {
        for field in LIST_FIELDS {
            assert!(
                !line.contains(field),
                "a list item or table row ran into the prose: {line}"
            );
        }
    }
    for sentence in BOILERPLATE {
        assert!(!markdown.contains(sentence), "boilerplate used: {sentence}");
    }
    assert!(!article.sources.is_empty());
    for source in &article.sources {
        assert!(
            TEXAS.iter().any(|place| source.url.contains(place)),
            "an off-topic source: {}",
            source.url
        );
    }
    let quality = article.metadata.unwrap().quality.unwrap();
    assert!(quality.contract_satisfied, "{quality:?}");
}

#[tokio::test]
async fn search_returns_each_document_once_unless_asked_for_more() {
    let mut config = common::config();
    config.kb_dir = messy_kb();
    let mut server = common::start(config).await;
    let search = |max_per_document| api::SearchKnowledgeBaseRequest {
        queries: vec!["private equity firms Dallas Houston".into()],
        max_results: 10,
        max_per_document,
    };
    let distinct = |response: &api::SearchKnowledgeBaseResponse| {
        let urls: Vec<&str> = response.results[0]
            .hits
            .iter()
            .map(|h| h.url.as_str())
            .collect();
        let mut unique = urls.clone();
        unique.sort();
        unique.dedup();
        (urls.len(), unique.len())
    };
    let one = server
        .client
        .search_knowledge_base(search(0))
        .await
        .unwrap()
        .into_inner();
    let (hits, documents) = distinct(&one);
    assert!(
        hits >= 3 && hits == documents,
        "{hits} hits, {documents} documents"
    );
    let more = server
        .client
        .search_knowledge_base(search(5))
        .await
        .unwrap()
        .into_inner();
    let (hits, documents) = distinct(&more);
    assert!(
        hits > documents,
        "passages of one document: {hits} hits, {documents} documents"
    );
    for hit in one.results[0].hits.iter().chain(&more.results[0].hits) {
        for sentence in BOILERPLATE {
            assert!(
                !hit.snippet.contains(sentence),
                "boilerplate indexed: {}",
                hit.snippet
            );
        }
        assert!(!GENERIC.contains(&hit.section.as_str()), "{}", hit.section);
    }
}
