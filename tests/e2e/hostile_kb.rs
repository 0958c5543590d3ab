//! Knowledge-base folders nobody here wrote (issue 19): symlinks out of the folder, a FIFO,
//! Latin-1 text, a binary `.md`, a 1 MB heading and a `javascript:` URL in front matter.
use std::{fs, path::PathBuf};

use dakota::api;
use prost::Message;

use crate::common;

/// A fresh folder under the system's temp dir, holding one ordinary document.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dakota-hostile-kb-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("credit.md"),
        "# Private Credit\n\nDirect lenders finance mid-market companies. Pension funds allocate to private credit for income.\n",
    )
    .unwrap();
    dir
}

fn search(queries: &[&str]) -> api::SearchKnowledgeBaseRequest {
    api::SearchKnowledgeBaseRequest {
        queries: queries.iter().map(|q| q.to_string()).collect(),
        max_results: 50,
        max_per_document: 50,
    }
}

#[tokio::test]
async fn symlinks_out_of_the_folder_and_files_that_are_not_text_are_left_out() {
    let dir = folder("links");
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    link("/proc/self/environ", "environ.txt");
    link("/etc/passwd", "passwd.md");
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe.md"))
        .status();
    assert!(fifo.unwrap().success());
    // Not UTF-8, and not text at all: neither may stop the start.
    fs::write(
        dir.join("latin1.txt"),
        b"Caf\xe9 society and pension credit.\n",
    )
    .unwrap();
    fs::write(dir.join("binary.md"), b"PK\x03\x04\x00\x00credit\x00").unwrap();

    let mut config = common::config();
    config.kb_dir = dir.clone();
    let mut server = common::start(config).await;
    let answer = server
        .client
        .search_knowledge_base(search(&[
            "PATH HOME",
            "root bin bash nologin",
            "credit",
            "society",
        ]))
        .await
        .unwrap()
        .into_inner();
    let texts: Vec<&api::SearchHit> = answer.results.iter().flat_map(|r| &r.hits).collect();
    for hit in &texts {
        assert!(
            !hit.snippet.contains("PATH="),
            "the environment served: {hit:?}"
        );
        assert!(
            !hit.snippet.contains("root:x:0"),
            "/etc/passwd served: {hit:?}"
        );
    }
    assert!(
        texts.iter().any(|h| h.url == "kb://credit"),
        "the real document is served"
    );
    assert!(
        texts
            .iter()
            .any(|h| h.snippet.contains("Caf\u{fffd} society")),
        "the Latin-1 file is read, its invalid byte replaced"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn titles_headings_and_urls_from_documents_are_bounded() {
    let dir = folder("bounds");
    let heading = "Credit ".repeat(150_000); // about 1 MB
    fs::write(
        dir.join("huge.md"),
        format!("---\ntitle: {heading}\nurl: javascript:alert(1)\n---\n# {heading}\n\n## {heading}\n\nPension credit allocations grew.\n"),
    )
    .unwrap();
    fs::write(
        dir.join("data.md"),
        "---\nurl: data:text/html,<script>alert(1)</script>\n---\n# Data\n\nCredit data.\n",
    )
    .unwrap();
    let mut config = common::config();
    config.kb_dir = dir.clone();
    let mut server = common::start(config).await;
    let answer = server
        .client
        .search_knowledge_base(search(&[
            "credit",
            "pension",
            "allocations",
            "credit pension",
            "grew",
        ]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.encoded_len() < 200_000,
        "{} bytes",
        answer.encoded_len()
    );
    let hits: Vec<&api::SearchHit> = answer.results.iter().flat_map(|r| &r.hits).collect();
    assert!(hits.iter().any(|h| h.url == "kb://huge"), "{hits:?}");
    for hit in &hits {
        assert!(hit.title.chars().count() <= 200 && hit.section.chars().count() <= 200);
        assert!(
            hit.url.starts_with("kb://") || hit.url.starts_with("http"),
            "{}",
            hit.url
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
