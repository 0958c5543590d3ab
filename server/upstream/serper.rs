//! Serper web search: `POST {base}/search` with `X-API-KEY`, body `{"q", "num"}`.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{client_span, send_json};
use crate::config::Secret;
use crate::resilience::{CallScope, Called, Guard};

const UPSTREAM: &str = crate::domain::Upstream::Web.as_str();

/// One organic result.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Organic {
    pub title: String,
    pub link: String,
    #[serde(default)]
    pub snippet: String,
    #[serde(default)]
    pub date: Option<String>,
}

#[derive(Deserialize)]
struct SearchResponse {
    #[serde(default)]
    organic: Vec<Organic>,
}

pub struct SerperClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    timeout: Duration,
    guard: std::sync::Arc<Guard>,
}

impl SerperClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Secret,
        timeout: Duration,
        guard: std::sync::Arc<Guard>,
    ) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            timeout,
            guard,
        }
    }

    /// The key as a header value marked sensitive (kept out of debug output).
    fn api_key_header(&self) -> reqwest::header::HeaderValue {
        let mut value = reqwest::header::HeaderValue::from_str(self.api_key.expose())
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }

    /// Organic results of one query (cached for the web TTL), and the attempts it took.
    pub async fn search(&self, scope: &CallScope, query: &str, num: u32) -> Called<Vec<Organic>> {
        let body = json!({"q": query, "num": num});
        let key = self
            .guard
            .cache_key(&[self.base_url.as_bytes(), body.to_string().as_bytes()]);
        self.guard
            .cached(
                scope,
                key,
                &|| client_span(UPSTREAM, "POST", "{base}/search"),
                |_| async {
                    let request = self
                        .http
                        .post(format!("{}/search", self.base_url))
                        .header("X-API-KEY", self.api_key_header())
                        .json(&body);
                    let answer: SearchResponse =
                        send_json(UPSTREAM, request, self.timeout, self.guard.max_body())
                            .await
                            .map_err(|e| e.redact(Some(&self.api_key)))?;
                    Ok(answer.organic)
                },
            )
            .await
    }
}
