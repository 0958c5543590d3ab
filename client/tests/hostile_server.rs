//! The `dakota` binary against a hostile server: whatever slug it sends, the article folder
//! is written inside `--out` and nowhere else; whatever text it sends, no terminal control
//! is printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::{
    path::{Path, PathBuf},
    pin::Pin,
    process::Command,
};

use dakota::api::{
    self,
    content_service_server::{ContentService, ContentServiceServer},
    generate_event::Event,
};
use tokio_stream::{Stream, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status};

type Events = Pin<Box<dyn Stream<Item = Result<api::GenerateEvent, Status>> + Send>>;

const SLUG: &str = "x/../../../../../tmp/pwned";
/// A window title, a clipboard write (OSC 52), a screen clear, a C1 CSI and a bidi override.
const CONTROLS: &str = "\x1b]0;pwned\x07\x1b]52;c;AAAA\x07\x1b[2J\u{9b}31m\u{202e}";

/// Answers `Generate` with a job that completes at once with a hostile slug.
struct Hostile;

#[tonic::async_trait]
impl ContentService for Hostile {
    type GenerateStream = Events;
    type WatchJobStream = Events;

    async fn generate(&self, _: Request<api::GenerateRequest>) -> Result<Response<Events>, Status> {
        let event = |sequence, event| {
            Ok(api::GenerateEvent {
                job_id: "job-1".into(),
                sequence,
                progress: 100,
                event: Some(event),
                ..Default::default()
            })
        };
        let article = api::Article {
            job_id: "job-1".into(),
            topic: "topic".into(),
            slug: SLUG.into(),
            title: format!("Pwned{CONTROLS}"),
            markdown: "# Pwned\n".into(),
            ..Default::default()
        };
        let events = vec![
            event(
                1,
                Event::JobStarted(api::JobStarted {
                    topic: "topic".into(),
                    slug: SLUG.into(),
                    ..Default::default()
                }),
            ),
            event(
                2,
                Event::Warning(api::Warning {
                    code: format!("CODE{CONTROLS}"),
                    message: format!("warned{CONTROLS}"),
                    ..Default::default()
                }),
            ),
            event(
                3,
                Event::Completed(api::Completed {
                    article: Some(article),
                }),
            ),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }

    async fn watch_job(
        &self,
        _: Request<api::WatchJobRequest>,
    ) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("hostile test server"))
    }

    async fn get_article(
        &self,
        _: Request<api::GetArticleRequest>,
    ) -> Result<Response<api::Article>, Status> {
        Err(Status::unimplemented("hostile test server"))
    }

    async fn cancel_job(
        &self,
        _: Request<api::CancelJobRequest>,
    ) -> Result<Response<api::CancelJobResponse>, Status> {
        Err(Status::unimplemented("hostile test server"))
    }

    async fn search_knowledge_base(
        &self,
        _: Request<api::SearchKnowledgeBaseRequest>,
    ) -> Result<Response<api::SearchKnowledgeBaseResponse>, Status> {
        Err(Status::unimplemented("hostile test server"))
    }
}

/// Every file and folder under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_writes_a_hostile_slug_inside_out_only_and_prints_no_controls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ContentServiceServer::new(Hostile))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    for (mode, extra) in [("lines", None), ("json", Some("--json"))] {
        let root =
            std::env::temp_dir().join(format!("dakota-hostile-{}-{mode}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // Deep, so that climbing out of `out` lands inside `root`, where it is seen.
        let out = root.join("a/b/c/d/e/f/out");
        std::fs::create_dir_all(&out).unwrap();
        let (server, dir) = (format!("http://127.0.0.1:{port}"), out.clone());
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_dakota"))
                .args(["--server", &server, "generate", "topic", "--out"])
                .arg(&dir)
                .args(extra)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{mode}: {stderr}");
        let printed = format!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
        assert!(printed.contains("warned"), "{mode}: {printed}");
        let hidden = printed
            .chars()
            .find(|&c| c != '\n' && dakota::safe_text::is_hidden(c));
        assert_eq!(hidden, None, "{mode}: {printed:?}");

        let folders: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(folders.len(), 1, "{mode}: {folders:?}");
        let folder = &folders[0];
        assert_eq!(std::fs::read_dir(folder).unwrap().count(), 6, "{folder:?}");
        for path in walk(&root) {
            let inside = path.parent() == Some(folder.as_path()) && path.is_file();
            assert!(
                inside || out.starts_with(&path) || &path == folder,
                "{path:?}"
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
