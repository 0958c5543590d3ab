//! A message over the server's size limit (8 MiB) is answered RESOURCE_EXHAUSTED, as the C
//! core, grpc-go and grpc-java answer it, not tonic's OUT_OF_RANGE.
use dakota::api;
use tonic::Code;

use crate::common::{self, config, request};

/// Past the server's 8 MiB message limit.
const OVER_THE_LIMIT: usize = 9 * 1024 * 1024;

#[tokio::test]
async fn a_request_over_the_message_limit_is_resource_exhausted() {
    let mut server = common::start(config()).await;
    let mut huge = request("Private credit");
    huge.custom_instructions = "x".repeat(OVER_THE_LIMIT);
    let status = server.client.generate(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("larger than max"),
        "says why: {status:?}"
    );
    let search = api::SearchKnowledgeBaseRequest {
        queries: vec!["q".repeat(OVER_THE_LIMIT)],
        ..Default::default()
    };
    let status = server
        .client
        .search_knowledge_base(search)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The connection stays usable, and requests under the limit are served as before.
    let events = server.generate(request("Private credit")).await;
    common::final_article(&events);
    server.server.shutdown();
}
