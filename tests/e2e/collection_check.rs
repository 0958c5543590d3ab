//! The collection check (`dakota_tests::article_check`) over the collections the project
//! ships: the offline article from `tests/fixtures/messy-kb/` (exported-web-style documents)
//! and from `knowledge/` holds no template text, cites only documents that name the topic's
//! names, fuses no list into prose, repeats no sentence, and is within 15% of its target or
//! says why not (`INSUFFICIENT_MATERIAL`). `cargo bench --bench corpus -- --kb-dir DIR` runs
//! the same check on any collection.
use std::path::PathBuf;

use dakota::api::generate_event::Event;
use dakota_tests::article_check::{Collection, Report, check};

use crate::common::{self, final_article, request};

fn fixtures(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir)
}

/// Generates each topic offline from `dir` and checks the article.
async fn check_collection(dir: PathBuf, topics: &[(&str, u32)]) -> Vec<Report> {
    let collection = Collection::load(&dir);
    assert!(!collection.is_empty(), "{}", dir.display());
    let mut config = common::config();
    config.kb_dir = dir;
    let mut server = common::start(config).await;
    let mut reports = Vec::new();
    for &(topic, words) in topics {
        let mut req = request(topic);
        req.word_count = Some(words);
        let events = server.generate(req).await;
        let warnings: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Warning(w)) => Some(w.code.clone()),
                _ => None,
            })
            .collect();
        let article = final_article(&events);
        let report = check(
            &collection,
            topic,
            words as usize,
            &article.markdown,
            &warnings,
        );
        reports.push(report);
    }
    reports
}

fn assert_all_pass(reports: &[Report]) {
    let table: Vec<String> = reports.iter().map(Report::row).collect();
    let table = format!("{}\n{}", Report::HEADER, table.join("\n"));
    for report in reports {
        assert!(report.passes(), "{table}\n{report:#?}");
        assert!(report.cited > 0, "{table}");
    }
}

#[tokio::test]
async fn articles_from_the_exported_web_fixture_pass_the_collection_check() {
    let reports = check_collection(
        fixtures("fixtures/messy-kb"),
        &[
            ("Private equity firms in Texas", 400),
            ("Family offices in Houston", 800),
            ("Top pension funds in California", 800),
            ("Hedge funds in London and how they allocate", 1500),
        ],
    )
    .await;
    assert_all_pass(&reports);
}

#[tokio::test]
async fn articles_from_the_sample_knowledge_base_pass_the_collection_check() {
    let reports = check_collection(
        fixtures("../knowledge"),
        &[
            ("Private credit and liquidity for pension funds", 1500),
            ("Currency hedging for international portfolios", 800),
            ("ESG investing for institutions", 400),
        ],
    )
    .await;
    assert_all_pass(&reports);
}

/// `tests/fixtures/exported-kb/`: sixteen documents exported from a blog (a metadata list with
/// the original URL, one long paragraph, rankings run into the prose, calls to action in three
/// documents of sixteen, documents that differ only in the state or month they cover).
#[tokio::test]
async fn articles_from_an_exported_blog_pass_the_collection_check_and_cite_its_urls() {
    let dir = fixtures("fixtures/exported-kb");
    let topics = [
        (
            "The top family offices in California and how they invest",
            800,
        ),
        ("Public pension commitments in March 2025", 600),
    ];
    let reports = check_collection(dir.clone(), &topics).await;
    assert_all_pass(&reports);

    let mut config = common::config();
    config.kb_dir = dir;
    let mut server = common::start(config).await;
    let mut req = request(topics[0].0);
    req.word_count = Some(topics[0].1);
    let article = final_article(&server.generate(req).await);
    let markdown = &article.markdown;
    // The ranking stands as a numbered list, each item a line with its figures and source.
    let ranked: Vec<&str> = markdown
        .lines()
        .filter(|l| l.starts_with("1. ") || l.starts_with("2. "))
        .collect();
    assert_eq!(ranked.len(), 2, "{markdown}");
    assert!(
        ranked
            .iter()
            .all(|l| l.contains("AUM: $") && l.contains("](https://")),
        "{ranked:?}"
    );
    // A document's own address is its link; its metadata list is no text.
    for source in &article.sources {
        assert!(
            source
                .url
                .starts_with("https://www.example-dakota-data.com/learn/"),
            "{}",
            source.url
        );
        assert_eq!(
            source.published.len(),
            10,
            "an ISO date: {}",
            source.published
        );
    }
    assert!(!markdown.contains("kb://"), "{markdown}");
    for metadata in ["Published:", "Author:", "Original URL"] {
        assert!(!markdown.contains(metadata), "{metadata} in {markdown}");
    }
    // Section titles are the topic's themes (its clauses, then angles on it).
    assert!(markdown.contains("## How They Invest\n"), "{markdown}");
    assert!(markdown.contains("## Risks and Trade-offs\n"), "{markdown}");
}
