//! The collection check on any document collection: generates offline articles for a few
//! topics from `--kb-dir` and reports, per article, what `dakota_tests::article_check`
//! measures (sentences found in 3+ documents, cited documents not naming the topic's names,
//! sentences holding two or more list numbers, repeated sentences, words against the target).
//!
//!     cargo bench --bench corpus -- --kb-dir ../shared/corpora/learning-center
//!     cargo bench --bench corpus -- --kb-dir DIR --topic "Family offices in Texas=800"
//!
//! Without `--kb-dir`, the sample knowledge base; without `--topic`, the four topics of
//! BENCHMARKS.md. Prints a Markdown table, then each failing article's offending statements.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use dakota::api::{self, generate_event::Event};
use dakota_tests::article_check::{Collection, Report, check};

mod support;
use support::{binary, connect, kb_dir};

const TOPICS: [(&str, u32); 4] = [
    (
        "The top family offices in California and how they invest",
        800,
    ),
    ("Public pension plan commitments in October 2024", 1500),
    ("Top private equity firms in San Diego", 1000),
    (
        "Investment RFPs issued by public pensions in June 2025",
        800,
    ),
];

fn arguments() -> (PathBuf, Vec<(String, u32)>) {
    let mut dir = kb_dir();
    let mut topics = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kb-dir" => dir = from_root(PathBuf::from(args.next().expect("--kb-dir DIR"))),
            "--topic" => {
                let value = args.next().expect("--topic \"TOPIC=WORDS\"");
                let (topic, words) = value.rsplit_once('=').unwrap_or((&value, "1500"));
                topics.push((topic.to_string(), words.parse().expect("words")));
            }
            _ => {} // `--bench` and the like, from cargo
        }
    }
    if topics.is_empty() {
        topics = TOPICS.iter().map(|(t, w)| (t.to_string(), *w)).collect();
    }
    (dir, topics)
}

/// `dir` as given, or, when it is relative and not found from here (cargo runs a bench in
/// its package's folder), from the workspace root, where the commands above are typed.
fn from_root(dir: PathBuf) -> PathBuf {
    if dir.is_absolute() || dir.exists() {
        return dir;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
}

#[tokio::main]
async fn main() {
    let (dir, topics) = arguments();
    let collection = Collection::load(&dir);
    let mut child = Command::new(binary("dakota-server"))
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .arg("--kb-dir")
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, _, log) = support::startup_log(&mut child);
    let boilerplate = log
        .iter()
        .find_map(|line| line.get("units")?.as_u64())
        .unwrap_or(0);
    let mut client = connect(&addr).await;
    let mut reports = Vec::new();
    for (topic, words) in &topics {
        let mut stream = client
            .generate(api::GenerateRequest {
                topic: topic.clone(),
                word_count: Some(*words),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (mut warnings, mut markdown) = (Vec::new(), String::new());
        while let Some(event) = stream.message().await.unwrap() {
            match event.event {
                Some(Event::Warning(w)) => warnings.push(w.code),
                Some(Event::Completed(done)) => markdown = done.article.unwrap().markdown,
                Some(Event::Failed(failed)) => panic!("{topic}: {}", failed.message),
                _ => {}
            }
        }
        reports.push(check(
            &collection,
            topic,
            *words as usize,
            &markdown,
            &warnings,
        ));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    println!(
        "Collection: {} ({} documents; {boilerplate} template units left out at start-up)\n",
        dir.display(),
        collection.len()
    );
    println!("{}", Report::HEADER);
    for report in &reports {
        println!("{}", report.row());
    }
    for report in reports.iter().filter(|r| !r.passes()) {
        println!("\n{}: {report:#?}", report.topic);
    }
}
