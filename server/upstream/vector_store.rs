//! OpenAI vector-store search: `POST {base}/vector_stores/{id}/search`.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{client_span, send_json};
use crate::config::Secret;
use crate::resilience::{CallScope, Called, Guard};

const UPSTREAM: &str = crate::domain::Upstream::Kb.as_str();
const SEARCH_URL: &str = "{base}/vector_stores/{id}/search";

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VectorHit {
    pub file_id: String,
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub score: f32,
    #[serde(default)]
    pub attributes: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub content: Vec<ContentPart>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContentPart {
    #[serde(default)]
    pub text: String,
}

#[derive(Deserialize)]
struct SearchPage {
    data: Vec<VectorHit>,
}

impl VectorHit {
    pub fn text(&self) -> String {
        self.content
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    pub fn attribute(&self, key: &str) -> Option<String> {
        self.attributes
            .as_ref()?
            .get(key)?
            .as_str()
            .map(str::to_string)
    }
}

pub struct VectorStoreClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<Secret>,
    pub store_id: String,
    timeout: Duration,
    guard: std::sync::Arc<Guard>,
}

impl VectorStoreClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Option<Secret>,
        store_id: String,
        timeout: Duration,
        guard: std::sync::Arc<Guard>,
    ) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            store_id,
            timeout,
            guard,
        }
    }

    /// The hits of one query (cached for the knowledge-base TTL), and the attempts it took.
    pub async fn search(
        &self,
        scope: &CallScope,
        query: &str,
        max_results: usize,
    ) -> Called<Vec<VectorHit>> {
        let body = json!({"query": query, "max_num_results": max_results.clamp(1, 50)});
        let key = self.guard.cache_key(&[
            self.base_url.as_bytes(),
            self.store_id.as_bytes(),
            body.to_string().as_bytes(),
        ]);
        self.guard
            .cached(
                scope,
                key,
                &|| client_span(UPSTREAM, "POST", SEARCH_URL),
                |_| async {
                    let mut request = self
                        .http
                        .post(format!(
                            "{}/vector_stores/{}/search",
                            self.base_url, self.store_id
                        ))
                        .json(&body);
                    if let Some(key) = &self.api_key {
                        request = request.bearer_auth(key.expose());
                    }
                    let page: SearchPage =
                        send_json(UPSTREAM, request, self.timeout, self.guard.max_body())
                            .await
                            .map_err(|e| e.redact(self.api_key.as_ref()))?;
                    Ok(page.data)
                },
            )
            .await
    }
}
