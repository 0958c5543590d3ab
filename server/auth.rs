//! Optional API-key authentication, a tower layer on the gRPC server: `authorization: Bearer
//! <key>` checked against the configured keys, kept only as SHA-256 hashes and compared in
//! constant time. The key that started a job owns it ([`Principal`]). Health checks and
//! reflection stay open for probes unless configured otherwise.
use std::{
    future::Future,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use ring::digest::{SHA256, digest};
use tower::{Layer, Service};

use crate::config::Secret;

/// Who is calling: an opaque, stable id of the API key used (not the key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(pub String);

/// The accepted keys, as SHA-256 hashes.
#[derive(Debug)]
pub struct ApiKeys {
    hashes: Vec<[u8; 32]>,
}

fn sha256(text: &str) -> [u8; 32] {
    let mut hash = [0; 32];
    hash.copy_from_slice(digest(&SHA256, text.as_bytes()).as_ref());
    hash
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiKeys {
    /// The keys of `--api-keys` and the hashes of `--api-keys-file` (one lower-case hex
    /// SHA-256 per line; `#` comments and blank lines ignored); `None` when there are none
    /// (authentication off).
    pub fn from_config(keys: &[Secret], file: Option<&Path>) -> Result<Option<Self>, String> {
        let mut hashes: Vec<[u8; 32]> = keys
            .iter()
            .map(|k| k.expose().trim())
            .filter(|k| !k.is_empty())
            .map(sha256)
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--api-keys-file {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                hashes.push(parse_hash(line).ok_or_else(|| {
                    format!(
                        "--api-keys-file {} line {}: expected a SHA-256 in hex (64 characters), e.g. from `printf %s KEY | sha256sum`",
                        path.display(),
                        n + 1
                    )
                })?);
            }
        }
        Ok((!hashes.is_empty()).then_some(Self { hashes }))
    }

    /// The principal of a presented key, if it is one of ours. Every stored hash is compared,
    /// each in constant time, so the answer's timing says nothing about which came close.
    pub fn principal(&self, presented: &str) -> Option<Principal> {
        let hash = sha256(presented);
        let mut found = None;
        for stored in &self.hashes {
            if equal_in_constant_time(stored, &hash) {
                found = Some(Principal(hex(&stored[..8])));
            }
        }
        found
    }
}

fn equal_in_constant_time(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // No early exit: the difference of every byte is folded in.
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_hash(line: &str) -> Option<[u8; 32]> {
    if line.len() != 64 {
        return None;
    }
    let mut hash = [0; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(line.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// The key presented in `authorization: Bearer <key>`, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

#[derive(Clone)]
pub struct AuthLayer {
    keys: Option<Arc<ApiKeys>>,
    /// Health checks and reflection answer without a key.
    open_probes: bool,
}

impl AuthLayer {
    pub fn new(keys: Option<Arc<ApiKeys>>, open_probes: bool) -> Self {
        Self { keys, open_probes }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(keys) = &self.layer.keys else {
            return Box::pin(self.inner.call(request));
        };
        let probe = !request
            .uri()
            .path()
            .starts_with(&format!("/{}/", dakota::api::SERVICE_NAME));
        if probe && self.layer.open_probes {
            return Box::pin(self.inner.call(request));
        }
        match bearer(request.headers()).and_then(|key| keys.principal(key)) {
            Some(principal) => {
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            None => {
                let status = tonic::Status::unauthenticated(
                    "a valid API key is required: send `authorization: Bearer <key>` (the CLI: --api-key or DAKOTA_API_KEY)",
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hashes_name_the_same_principal() -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("dakota-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = dir.join("keys");
        let hashed = hex(&sha256("from-the-file"));
        std::fs::write(&file, format!("# team keys\n\n{hashed}\n")).map_err(|e| e.to_string())?;
        let keys = ApiKeys::from_config(&[Secret::new("plain-key")], Some(&file))?
            .ok_or("keys configured")?;
        assert!(keys.principal("plain-key").is_some());
        assert!(keys.principal("from-the-file").is_some());
        assert_ne!(keys.principal("plain-key"), keys.principal("from-the-file"));
        assert_eq!(keys.principal("plain-key "), None);
        assert_eq!(keys.principal(""), None);
        std::fs::write(&file, "not-a-hash\n").map_err(|e| e.to_string())?;
        assert!(ApiKeys::from_config(&[], Some(&file)).is_err());
        assert!(ApiKeys::from_config(&[], None)?.is_none());
        Ok(())
    }

    #[test]
    fn only_bearer_credentials_are_read() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", http::HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
    }
}
