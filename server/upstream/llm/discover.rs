//! What an OpenAI-compatible server says of itself: its context window and how many calls
//! it serves at once. llama.cpp answers `GET /props` (`default_generation_settings.n_ctx`,
//! `total_slots`); vLLM, LM Studio and others give `max_model_len`, `context_length` or
//! `meta.n_ctx_train` per model in `GET /v1/models`. Asked once, outside the resilience stack
//! (a server that does not know these paths is still a good server), each answer read to a
//! few kB.
use std::time::Duration;

use serde_json::Value;

/// What was learned; `None` where the server did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerProps {
    /// Tokens of prompt and answer one call may hold.
    pub context_tokens: Option<u32>,
    /// Calls the server runs at once.
    pub slots: Option<usize>,
}

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BYTES: usize = 256 << 10;

/// The server's root (`/props` lives there) from an API base URL ending in `/v1`.
fn root_of(base_url: &str) -> &str {
    base_url.strip_suffix("/v1").unwrap_or(base_url)
}

async fn get_json(
    http: &reqwest::Client,
    url: &str,
    key: Option<&crate::config::Secret>,
) -> Option<Value> {
    let request = http.get(url).timeout(TIMEOUT);
    let request = match key {
        Some(key) => request.bearer_auth(key.expose()),
        None => request,
    };
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = super::read_body(super::UPSTREAM, response, MAX_BYTES, TIMEOUT)
        .await
        .ok()?;
    serde_json::from_slice(&body).ok()
}

/// A positive count that fits the target type.
fn count<T: TryFrom<u64>>(value: &Value) -> Option<T> {
    value
        .as_u64()
        .filter(|n| *n > 0)
        .and_then(|n| T::try_from(n).ok())
}

/// llama.cpp's `/props`.
fn from_props(props: &Value) -> ServerProps {
    ServerProps {
        context_tokens: count(&props["default_generation_settings"]["n_ctx"])
            .or_else(|| count(&props["n_ctx"])),
        slots: count(&props["total_slots"]),
    }
}

/// The first model's context in `/v1/models`, under the names servers use for it.
fn from_models(models: &Value, model: &str) -> Option<u32> {
    let list = models["data"].as_array()?;
    let entry = list
        .iter()
        .find(|m| m["id"].as_str() == Some(model))
        .or_else(|| list.first())?;
    ["max_model_len", "context_length", "context_window"]
        .iter()
        .find_map(|name| count(&entry[*name]))
        .or_else(|| count(&entry["meta"]["n_ctx_train"]))
}

/// Asks the server at `base_url` what it says of itself, for `model`.
pub async fn discover(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&crate::config::Secret>,
    model: &str,
) -> ServerProps {
    let mut props = match get_json(http, &format!("{}/props", root_of(base_url)), key).await {
        Some(props) => from_props(&props),
        None => ServerProps::default(),
    };
    if props.context_tokens.is_none()
        && let Some(models) = get_json(http, &format!("{base_url}/models"), key).await
    {
        props.context_tokens = from_models(&models, model);
    }
    tracing::info!(?props, base_url, "the LLM server says of itself");
    props
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_context_and_slots_are_read_where_servers_put_them() {
        let llama = json!({"default_generation_settings": {"n_ctx": 8192}, "total_slots": 4});
        assert_eq!(
            from_props(&llama),
            ServerProps {
                context_tokens: Some(8192),
                slots: Some(4)
            }
        );
        assert_eq!(from_props(&json!({"n_ctx": -1})), ServerProps::default());
        let vllm = json!({"data": [{"id": "a", "max_model_len": 4096}, {"id": "b", "max_model_len": 32768}]});
        assert_eq!(from_models(&vllm, "b"), Some(32768));
        assert_eq!(from_models(&vllm, "unknown"), Some(4096));
        let lm = json!({"data": [{"id": "a", "meta": {"n_ctx_train": 2048}}]});
        assert_eq!(from_models(&lm, "a"), Some(2048));
        assert_eq!(from_models(&json!({"data": "nonsense"}), "a"), None);
        assert_eq!(root_of("http://h:1/v1"), "http://h:1");
    }
}
