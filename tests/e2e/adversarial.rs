//! The API as a hostile or careless client uses it: out-of-spec headers, watchers past the
//! end, deadlines on retried keys, slow connections, invisible characters, odd spellings.
use std::time::Duration;

use dakota::api::{self, generate_event::Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{self, Gate, PATIENCE, collect, final_article, phases_started, request};

fn with_grpc_timeout(value: &str, topic: &str) -> tonic::Request<api::GenerateRequest> {
    let mut call = tonic::Request::new(request(topic));
    // Set as metadata, so it goes on the wire exactly as written (tonic's own
    // `set_timeout` would encode a valid one).
    call.metadata_mut()
        .insert("grpc-timeout", value.parse().unwrap());
    call
}

#[tokio::test]
async fn an_out_of_spec_grpc_timeout_is_refused_and_locks_nothing_out() {
    let mut config = common::config();
    config.max_jobs = 5;
    let mut server = common::start(config).await;
    for value in [
        "18446744073709551615S",
        "9999999999999999H",
        "123456789m",
        "5x",
    ] {
        for _ in 0..3 {
            let status = server
                .client
                .generate(with_grpc_timeout(value, "Private credit"))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{value}");
            let violations = status.get_details_bad_request().unwrap().field_violations;
            assert_eq!(violations[0].field, "grpc-timeout");
        }
    }
    // The longest deadline the spec allows runs a job like any other.
    let mut stream = server
        .client
        .generate(with_grpc_timeout("99999999H", "Private credit"))
        .await
        .unwrap()
        .into_inner();
    final_article(&collect(&mut stream).await);
    let (_, detailed) = server.admin("/health/detailed").await;
    let detailed: serde_json::Value = serde_json::from_str(&detailed).unwrap();
    assert_eq!(detailed["components"]["jobs"]["running"], 0, "{detailed}");
    // Nothing was left holding a place: five more jobs run.
    for _ in 0..5 {
        final_article(&server.generate(request("Private credit")).await);
    }
}

/// Every `WatchJob` stream ends with the job's final event, however far past the end it
/// starts.
#[tokio::test]
async fn watch_job_past_the_end_still_gets_the_final_event() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    gate.open();
    let events = server.generate(request("Private credit")).await;
    let job_id = events[0].job_id.clone();
    let last = events.last().unwrap().clone();
    for after in [last.sequence, last.sequence + 1, 1 << 63, u64::MAX] {
        let watched = collect(
            &mut server
                .client
                .watch_job(api::WatchJobRequest {
                    job_id: job_id.clone(),
                    after_sequence: after,
                })
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        assert_eq!(watched, vec![last.clone()], "after_sequence {after}");
    }

    // A running job's watcher far ahead waits, then learns how the job ended.
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let (mut stream, job_id) = server.held_job(&gate, request("Private credit")).await;
    let mut watcher = server
        .client
        .watch_job(api::WatchJobRequest {
            job_id,
            after_sequence: 1 << 63,
        })
        .await
        .unwrap()
        .into_inner();
    gate.open();
    let own = collect(&mut stream).await;
    let watched = collect(&mut watcher).await;
    assert_eq!(watched, vec![own.last().unwrap().clone()]);
    assert!(matches!(watched[0].event, Some(Event::Completed(_))));
}

#[tokio::test]
async fn a_key_whose_job_missed_its_deadline_starts_a_new_job() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let mut keyed = request("Private credit");
    keyed.idempotency_key = "retry-after-deadline".into();
    let mut call = tonic::Request::new(keyed.clone());
    call.set_timeout(Duration::from_millis(300));
    let first = server.client.generate(call).await;
    let first_id = match first {
        Ok(response) => {
            let events = collect(&mut response.into_inner()).await;
            assert_eq!(common::failed(&events).code, Code::DeadlineExceeded as i32);
            events[0].job_id.clone()
        }
        Err(status) => panic!("the job starts: {status:?}"),
    };
    gate.open();
    let events = server.generate(keyed).await;
    assert_ne!(events[0].job_id, first_id, "a new job, not a replay");
    final_article(&events);
    // And a completed job's key re-attaches to it.
    let mut again = request("Private credit");
    again.idempotency_key = "retry-after-deadline".into();
    let replay = server.generate(again).await;
    assert_eq!(replay[0].job_id, events[0].job_id);
}

#[tokio::test]
async fn a_job_stopped_by_shutdown_fails_unavailable_and_its_key_runs_again_elsewhere() {
    let gate = Gate::new();
    let mut config = common::config();
    config.shutdown_grace = Duration::from_millis(200);
    let mut server = common::start_with(config, gate.agents()).await;
    let mut keyed = request("Private credit");
    keyed.idempotency_key = "survives-a-restart".into();
    let (mut stream, job_id) = server.held_job(&gate, keyed.clone()).await;
    server.server.shutdown();
    let events = collect(&mut stream).await;
    let failed = common::failed(&events);
    assert_eq!(failed.code, Code::Unavailable as i32, "{failed:?}");
    assert!(failed.retry_delay.is_some(), "{failed:?}");
    assert!(failed.message.contains("shutting down"), "{failed:?}");
    assert!(!job_id.is_empty());
    server.server.wait().await.unwrap();

    // The retry, on another replica, runs the job.
    let mut other = common::start(common::config()).await;
    final_article(&other.generate(keyed).await);
}

#[tokio::test]
async fn a_half_sent_admin_request_is_closed_and_the_port_stays_usable() {
    let mut config = common::config();
    config.admin_header_timeout = Duration::from_millis(300);
    config.admin_max_connections = 4;
    let server = common::start(config).await;
    let addr = server.server.admin_addr;
    let mut slow = Vec::new();
    for i in 0..4 {
        let mut connection = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Half a request, or nothing at all.
        if i % 2 == 0 {
            connection
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        slow.push(connection);
    }
    // Over the limit: closed at once, without an answer.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, extra.read_to_end(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // The slow ones are closed by the header timeout, not left open.
    for mut connection in slow {
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, connection.read_to_end(&mut buffer)).await;
        assert!(read.is_ok(), "the connection is closed by the server");
    }
    let (status, _) = server.admin("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn control_and_invisible_characters_are_refused() {
    let mut server = common::start(common::config()).await;
    for topic in [
        "Private credit \u{1b}]0;pwned\u{7}",
        "\u{200b}\u{200b}\u{200b}",
        "\0\0\0",
        "Private \u{202e}tiderc",
    ] {
        let status = server.client.generate(request(topic)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{topic:?}");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert!(
            violations.iter().all(|v| v.field == "topic"),
            "{violations:?}"
        );
    }
    let status = server
        .client
        .search_knowledge_base(api::SearchKnowledgeBaseRequest {
            queries: vec!["credit\u{1b}[2J".into()],
            max_results: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_job_id_in_upper_case_names_the_same_job() {
    let mut server = common::start(common::config()).await;
    let events = server.generate(request("Private credit")).await;
    let job_id = events[0].job_id.clone();
    let article = server
        .client
        .get_article(api::GetArticleRequest {
            job_id: job_id.to_uppercase(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(article.job_id, job_id);
}

#[tokio::test]
async fn search_treats_upper_case_operators_as_words() {
    let mut server = common::start(common::config()).await;
    let response = server
        .client
        .search_knowledge_base(api::SearchKnowledgeBaseRequest {
            queries: vec!["NOT credit".into(), "credit".into(), "credit OR".into()],
            max_results: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let urls = |i: usize| -> Vec<String> {
        response.results[i]
            .hits
            .iter()
            .map(|h| h.url.clone())
            .collect()
    };
    assert!(!urls(1).is_empty());
    // "not" and "or" are stop words: the queries find what "credit" finds.
    assert_eq!(urls(0), urls(1));
    assert_eq!(urls(2), urls(1));
}

#[tokio::test]
async fn a_100_word_offline_article_meets_the_contract_without_revision() {
    let mut server = common::start(common::config()).await;
    let mut short = request("Private credit");
    short.word_count = Some(100);
    let events = server.generate(short).await;
    let article = final_article(&events);
    let metadata = article.metadata.unwrap();
    let words = metadata.content.unwrap().word_count;
    assert!((85..=115).contains(&words), "{words} words");
    assert!(metadata.quality.unwrap().contract_satisfied);
    assert!(!phases_started(&events).contains(&"revision".to_string()));
}

#[tokio::test]
async fn a_length_the_sources_cannot_reach_is_said_at_once_and_costs_no_revision() {
    let mut server = common::start(common::config()).await;
    let mut long = request("Private credit");
    long.word_count = Some(10_000);
    let events = server.generate(long).await;
    let warning = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::Warning(w)) if w.code == "INSUFFICIENT_MATERIAL" => Some(w.clone()),
            _ => None,
        })
        .expect("an INSUFFICIENT_MATERIAL warning");
    assert_eq!(warning.phase, "writing");
    assert!(warning.message.contains("10000"), "{}", warning.message);
    let article = final_article(&events);
    let words = article.metadata.unwrap().content.unwrap().word_count;
    assert!(words < 8_500, "{words} words");
    assert!(!phases_started(&events).contains(&"revision".to_string()));
    // Said as soon as the draft exists, before analysis starts.
    let position = |wanted: &dyn Fn(&Event) -> bool| {
        events
            .iter()
            .position(|e| e.event.as_ref().is_some_and(wanted))
            .unwrap()
    };
    let warned = position(&|e| matches!(e, Event::Warning(w) if w.code == "INSUFFICIENT_MATERIAL"));
    let analysis = position(&|e| matches!(e, Event::PhaseStarted(p) if p.phase == "analysis"));
    assert!(warned < analysis);
}
