//! API keys: UNAUTHENTICATED without a valid one, jobs visible only to the key that started
//! them, probes and scrapes open, the admin port's details behind the key, the CLI's --api-key.
use dakota::api;
use dakota_server::config::Secret;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{self, collect, final_article, request};

const KEY: &str = "team-a-key-0123456789";
const OTHER: &str = "team-b-key-9876543210";

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn config() -> dakota_server::config::Config {
    let mut config = common::config();
    config.api_keys = vec![Secret::new(KEY), Secret::new(OTHER)];
    config
}

#[tokio::test]
async fn calls_need_a_valid_key_and_jobs_belong_to_theirs() {
    let mut server = common::start(config()).await;
    // Probes stay open: the fixture's health check answered, and answers again.
    assert_eq!(
        common::health(&server.channel, "").await,
        ServingStatus::Serving
    );
    for call in [
        tonic::Request::new(request("Private credit")),
        with_key(request("Private credit"), "not-a-key"),
    ] {
        let status = server.client.generate(call).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("API key"), "{status:?}");
    }
    let mut stream = server
        .client
        .generate(with_key(request("Private credit"), KEY))
        .await
        .unwrap()
        .into_inner();
    let events = collect(&mut stream).await;
    let job_id = final_article(&events).job_id;

    // Another key: not found, however it asks.
    let get = |key: &str| {
        with_key(
            api::GetArticleRequest {
                job_id: job_id.clone(),
            },
            key,
        )
    };
    let status = server.client.get_article(get(OTHER)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let watch = with_key(
        api::WatchJobRequest {
            job_id: job_id.clone(),
            after_sequence: 0,
        },
        OTHER,
    );
    assert_eq!(
        server.client.watch_job(watch).await.unwrap_err().code(),
        Code::NotFound
    );
    let cancel = with_key(
        api::CancelJobRequest {
            job_id: job_id.clone(),
        },
        OTHER,
    );
    assert_eq!(
        server.client.cancel_job(cancel).await.unwrap_err().code(),
        Code::NotFound
    );
    // Its own key finds it.
    let article = server
        .client
        .get_article(get(KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(article.job_id, job_id);

    // The same idempotency key under two API keys is two jobs.
    let mut keyed = request("Factor investing");
    keyed.idempotency_key = "shared-string".into();
    let mut first = server
        .client
        .generate(with_key(keyed.clone(), KEY))
        .await
        .unwrap()
        .into_inner();
    let mut second = server
        .client
        .generate(with_key(keyed, OTHER))
        .await
        .unwrap()
        .into_inner();
    let (a, b) = (collect(&mut first).await, collect(&mut second).await);
    assert_ne!(a[0].job_id, b[0].job_id);
}

#[tokio::test]
async fn the_admin_ports_details_need_the_key_and_probes_do_not() {
    let server = common::start(config()).await;
    for open in ["/live", "/ready", "/metrics"] {
        assert_eq!(server.admin(open).await.0, 200, "{open}");
    }
    for restricted in [
        "/health/detailed",
        "/performance/agents",
        "/performance/kb-search",
    ] {
        assert_eq!(server.admin(restricted).await.0, 401, "{restricted}");
        let with_key = reqwest::Client::new()
            .get(format!("http://{}{restricted}", server.server.admin_addr))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(with_key.status().as_u16(), 200, "{restricted}");
    }
}

#[tokio::test]
async fn each_key_has_its_quota_of_jobs_and_messages_are_bounded() {
    use tonic_types::StatusExt;
    let mut config = config();
    config.generate_per_minute = 60;
    config.generate_burst = 2;
    let mut server = common::start(config).await;
    let mut keyed = request("Private credit");
    keyed.idempotency_key = "credit-1".into();
    let mut keyed_job = String::new();
    for request in [keyed.clone(), request("Private credit")] {
        let mut stream = server
            .client
            .generate(with_key(request, KEY))
            .await
            .unwrap()
            .into_inner();
        let events = collect(&mut stream).await;
        final_article(&events);
        if keyed_job.is_empty() {
            keyed_job = events[0].job_id.clone();
        }
    }
    let status = server
        .client
        .generate(with_key(request("Private credit"), KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("quota"), "{status:?}");
    // Over the quota, a retry with a known idempotency key still re-attaches: it starts
    // nothing, so it takes none.
    let mut again = server
        .client
        .generate(with_key(keyed, KEY))
        .await
        .unwrap()
        .into_inner();
    let events = collect(&mut again).await;
    assert_eq!(events[0].job_id, keyed_job);
    final_article(&events);
    let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
    assert!(retry.is_some_and(|d| d.as_secs_f64() > 0.0), "{status:?}");
    // Another key has its own quota.
    assert!(
        server
            .client
            .generate(with_key(request("Private credit"), OTHER))
            .await
            .is_ok()
    );
    // A message beyond the size limit is refused before it is read.
    let mut huge = request("Private credit");
    huge.custom_instructions = "x".repeat(9 * 1024 * 1024);
    let status = server
        .client
        .generate(with_key(huge, OTHER))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}
