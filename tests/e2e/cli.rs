//! The `dakota` binary against a real server.
use std::{path::Path, process::Command};

use serde_json::Value;

use crate::common;

fn dakota(server: &str, args: &[&str]) -> std::process::Output {
    Command::new(common::binary("dakota"))
        .env("DAKOTA_SERVER", server)
        .args(args)
        .output()
        .unwrap()
}

async fn run(server: &str, args: &[&str]) -> std::process::Output {
    let (server, args): (String, Vec<String>) =
        (server.into(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        dakota(
            &server,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    })
    .await
    .unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn generate_writes_the_article_folder() {
    let server = common::start(common::config()).await;
    let out = tempdir("generate");
    let output = run(
        &server.url,
        &[
            "generate",
            "Emerging markets debt",
            "--word-count",
            "900",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("phase writing"),
        "progress is shown: {stderr}"
    );

    let folders: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 1);
    let folder = &folders[0];
    let name = folder.file_name().unwrap().to_str().unwrap();
    assert!(
        name.ends_with("-emerging-markets-debt")
            && name.len() == "YYYY-MM-DD-emerging-markets-debt".len(),
        "{name}"
    );
    for file in [
        "article.md",
        "metadata.json",
        "social.md",
        "summary.md",
        "fact-check.json",
        "generation_metrics.json",
    ] {
        assert!(folder.join(file).is_file(), "{file} written");
    }
    let article = std::fs::read_to_string(folder.join("article.md")).unwrap();
    assert!(article.starts_with("---\ntitle: "));
    let metadata = read_json(&folder.join("metadata.json"));
    let words = metadata["content_metrics"]["word_count"].as_u64().unwrap();
    assert!(article.contains(&format!("word_count: {words}\n")));
    let body = article.split("\n---\n\n").nth(1).unwrap();
    assert_eq!(
        dakota_server::testing::text::markdown_word_count(body) as u64,
        words,
        "the number is computed from the text"
    );
    assert_eq!(
        metadata["sources"]["count"].as_u64().unwrap() as usize,
        metadata["sources"]["list"].as_array().unwrap().len()
    );
    assert!(metadata["cost"]["tokens_by_agent"]["content_writer"].is_object());
    assert_eq!(
        metadata["generation"]["agents"]["content_writer"]["provider"],
        "offline"
    );
    let fact_check = read_json(&folder.join("fact-check.json"));
    assert!(
        fact_check["claims"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["verdict"] == "quoted" || c["verdict"] == "supported")
    );
    assert!(
        fact_check["quoted"].as_u64().is_some_and(|n| n > 0),
        "{fact_check}"
    );
    let metrics = read_json(&folder.join("generation_metrics.json"));
    assert!(
        metrics["phases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["phase"] == "writing")
    );
    std::fs::remove_dir_all(out).ok();
}

#[tokio::test]
async fn generate_json_prints_one_event_per_line() {
    let server = common::start(common::config()).await;
    let output = run(
        &server.url,
        &[
            "generate",
            "Risk parity and leverage",
            "--json",
            "--no-social",
        ],
    )
    .await;
    assert!(output.status.success());
    let events: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "job_started");
    assert_eq!(events.last().unwrap()["type"], "completed");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["sequence"].as_u64().unwrap(), i as u64 + 1);
    }
    assert!(
        events.last().unwrap()["completed"]["article"]["markdown"]
            .as_str()
            .unwrap()
            .starts_with("# ")
    );
}

#[tokio::test]
async fn failures_are_explained_with_a_non_zero_exit() {
    let server = common::start(common::config()).await;
    let output = run(
        &server.url,
        &["generate", "Sourdough baking with rye flour"],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FAILED_PRECONDITION") && stderr.contains("no sources"),
        "{stderr}"
    );

    let output = run(&server.url, &["generate", "ab", "--word-count", "5"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("topic:") && stderr.contains("word_count:"),
        "{stderr}"
    );

    let output = run("http://127.0.0.1:1", &["health"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the Dakota server") && stderr.contains("DAKOTA_SERVER"),
        "{stderr}"
    );

    let output = run(&server.url, &["health"]).await;
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "server: SERVING"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dakota-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server that accepts connections and never answers: `--connect-timeout` bounds the whole
/// `health` call, HTTP/2 handshake included.
#[tokio::test]
async fn health_against_a_silent_server_gives_up_within_the_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket); // accepted, never read nor answered
        }
    });
    let output = tokio::time::timeout(
        common::PATIENCE,
        run(
            &format!("http://{addr}"),
            &["--connect-timeout", "500ms", "health"],
        ),
    )
    .await
    .expect("the CLI gives up on its own");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--connect-timeout"), "{stderr}");
}

#[tokio::test]
async fn the_cli_sends_its_api_key() {
    let mut config = common::config();
    config.api_keys = vec![dakota_server::config::Secret::new("cli-key-0123456789")];
    let server = common::start(config).await;
    let args = [
        "generate",
        "Factor investing",
        "--word-count",
        "300",
        "--json",
    ];
    let refused = run(&server.url, &args).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--api-key"),
        "the error says how to fix it: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let mut with_key = vec!["--api-key", "cli-key-0123456789"];
    with_key.extend(args);
    let output = run(&server.url, &with_key).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
