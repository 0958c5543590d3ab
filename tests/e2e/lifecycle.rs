//! Start-up, health, reflection, drain and shutdown.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use dakota::api::{self, SERVICE_NAME, content_service_client::ContentServiceClient};
use dakota_server::{
    app::Server,
    testing::agents::{Agents, select::Upstreams},
};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::{self, Gate, PATIENCE, collect, final_article, next, request};

#[tokio::test]
async fn health_goes_not_serving_serving_not_serving_across_start_and_drain() {
    // Start-up waits for the test's word before it finishes, so it is observable.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = Mutex::new(held);
    let slow = Arc::new(move |kb, upstreams: &Upstreams| {
        let _ = held.lock().unwrap().recv();
        Agents::build(kb, upstreams)
    });
    let server = Server::start_with(common::config(), slow).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        common::health(&channel, "").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        common::health(&channel, SERVICE_NAME).await,
        ServingStatus::NotServing
    );
    let status = ContentServiceClient::new(channel.clone())
        .generate(request("Factor investing"))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "no jobs before the server is ready"
    );

    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut seen = vec![first.status()];
    release.send(()).unwrap();
    while seen.last() != Some(&ServingStatus::Serving) {
        let update = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(update.status());
    }
    assert_eq!(seen.first(), Some(&ServingStatus::NotServing));
    assert_eq!(common::health(&channel, "").await, ServingStatus::Serving);

    server.shutdown();
    let update = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        update.status(),
        ServingStatus::NotServing,
        "drain announces NOT_SERVING first"
    );
    drop(watch);
    server.wait().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_service_through_v1_and_v1alpha() {
    let server = common::start(common::config()).await;
    use tonic_reflection::pb::{v1, v1alpha};
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel.clone())
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 answers with a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&SERVICE_NAME.to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                SERVICE_NAME.into(),
            ),
        ),
    };
    let mut responses =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel.clone())
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha answers with the file descriptor")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn drain_refuses_new_jobs_and_lets_running_ones_finish() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let mut stream = server.open(request("Infrastructure investing")).await;
    next(&mut stream).await.unwrap();
    gate.wait_entered(1).await;

    server.server.shutdown();
    common::wait_for_health(&server.channel, ServingStatus::NotServing).await;
    let status = server
        .client
        .generate(request("Risk parity"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    gate.open();
    let events = collect(&mut stream).await;
    final_article(&events);
    server.server.wait().await.unwrap();
}

#[tokio::test]
async fn jobs_still_running_after_the_grace_period_end_unavailable() {
    let gate = Gate::new();
    let mut config = common::config();
    config.shutdown_grace = Duration::from_millis(300);
    let mut server = common::start_with(config, gate.agents()).await;
    let mut stream = server.open(request("Infrastructure investing")).await;
    next(&mut stream).await.unwrap();
    gate.wait_entered(1).await;
    server.server.shutdown();
    let events = collect(&mut stream).await;
    // Not CANCELLED, which a client reads as its own cancel: UNAVAILABLE says "retry".
    assert_eq!(common::failed(&events).code, Code::Unavailable as i32);
    assert!(gate.wait_dropped().await);
    server.server.wait().await.unwrap();
}

#[test]
fn the_server_binary_serves_and_exits_zero_on_sigterm() {
    let server = common::ServerProcess::spawn(&[], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        assert_eq!(common::health(&channel, "").await, ServingStatus::Serving);
        let response = ContentServiceClient::new(channel)
            .search_knowledge_base(api::SearchKnowledgeBaseRequest {
                queries: vec!["pension".into()],
                max_results: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(response.into_inner().results.len(), 1);
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(log.iter().any(|l| l.contains("draining")), "{log:?}");
}

/// A second SIGTERM during the drain exits at once, with a failure status, instead of
/// waiting out the grace period for a job whose upstream never answers.
#[test]
fn a_second_sigterm_during_the_drain_exits_at_once() {
    use crate::standin::{Fault, Route, StandIn};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let standin = runtime.block_on(StandIn::start());
    standin.fault(Route::Llm, (0..8).map(|_| Fault::Stall { chunks: 0 }));
    let openai_url = standin.openai_url();
    let mut server = common::ServerProcess::spawn(
        &["--shutdown-grace", "10m"],
        &[
            ("OPENAI_BASE_URL", &openai_url),
            ("OPENAI_API_KEY", "sk-test-key-0123456789"),
        ],
    );
    let _stream = runtime.block_on(async {
        let mut client = server.client().await;
        let stream = client.generate(request("Private credit")).await.unwrap();
        // Wait until the job is really waiting on the stalled model.
        tokio::time::timeout(common::PATIENCE, async {
            while standin.in_flight() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        stream
    });
    server.sigterm();
    assert!(server.wait_for_log("draining"), "{:?}", server.log);
    server.sigterm();
    let (status, log) = server.wait();
    assert!(!status.success(), "exits with a failure status: {status:?}");
    assert!(
        log.iter().any(|l| l.contains("second shutdown signal")),
        "{log:?}"
    );
}

/// Keys set to nothing (a Secret or ConfigMap with blank values) count as unset: the server
/// stays on its offline agents instead of calling upstreams with no credentials.
#[test]
fn blank_upstream_variables_count_as_unset() {
    let server = common::ServerProcess::spawn(
        &[],
        &[
            ("OPENAI_API_KEY", ""),
            ("OPENAI_BASE_URL", ""),
            ("OPENAI_VECTOR_STORE_ID", ""),
            ("SERPER_API_KEY", ""),
            ("REDIS_URL", ""),
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = server.client().await;
        let events = common::collect(
            &mut client
                .generate(common::request("Pension risk transfer"))
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        let article = common::final_article(&events);
        let agents = article.metrics.unwrap().agents;
        assert!(
            agents.iter().all(|a| a.provider == "offline"),
            "every agent offline: {agents:?}"
        );
        let kb = agents.iter().find(|a| a.agent == "kb_researcher").unwrap();
        assert_eq!(kb.model, "local", "the local knowledge base");
    });
    let (status, _) = server.terminate();
    assert!(status.success());
}
