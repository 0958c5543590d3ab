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

pub use crate::domain::Principal;

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
    /// The keys of `--api-keys` and the hashes of `--api-keys-file` (one SHA-256 in hex per
    /// line, as `sha256sum` prints it, `<hash>  -` included; `#` comments and blank lines
    /// ignored); `None` when neither is given (authentication off). A source that is given but
    /// holds no key is an error: an empty Secret mount must not open the API.
    pub fn from_config(keys: &[Secret], file: Option<&Path>) -> Result<Option<Self>, String> {
        let mut hashes: Vec<[u8; 32]> = keys
            .iter()
            .map(|k| k.expose().trim())
            .filter(|k| !k.is_empty())
            .map(sha256)
            .collect();
        if !keys.is_empty() && hashes.is_empty() {
            return Err("--api-keys / DAKOTA_API_KEYS is set but holds no key (only separators or blanks); give at least one key, or unset it to run without authentication".into());
        }
        if let Some(path) = file {
            let from_file = hashes_of_file(path)?;
            if from_file.is_empty() {
                return Err(format!(
                    "--api-keys-file {} holds no key hash (empty, or only comments); add one per line (`printf %s KEY | sha256sum`), or leave the option unset to run without authentication",
                    path.display()
                ));
            }
            hashes.extend(from_file);
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

/// The hashes of an `--api-keys-file`.
fn hashes_of_file(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--api-keys-file {}: {e}", path.display()))?;
    let mut hashes = Vec::new();
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
    Ok(hashes)
}

/// A hash line: 64 hex digits, optionally followed (as `sha256sum` prints it) by blanks and
/// the input's name (`-`, or `*name` in binary mode).
fn parse_hash(line: &str) -> Option<[u8; 32]> {
    let (hash, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    if hash.len() != 64 || !(rest.is_empty() || rest == "-" || rest.starts_with('*')) {
        return None;
    }
    let mut hash_bytes = [0; 32];
    for (i, byte) in hash_bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hash.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash_bytes)
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
    fn a_key_source_that_is_named_but_empty_is_an_error() -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("dakota-nokeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = dir.join("keys");
        for empty in ["", "\n\n", "# no keys yet\n  \n"] {
            std::fs::write(&file, empty).map_err(|e| e.to_string())?;
            let error = ApiKeys::from_config(&[], Some(&file)).unwrap_err();
            assert!(error.contains("holds no key"), "{error}");
        }
        // `DAKOTA_API_KEYS=","` and `" "` reach the server as blank entries.
        for blanks in [vec!["", ""], vec![" "]] {
            let keys: Vec<Secret> = blanks.into_iter().map(Secret::new).collect();
            let error = ApiKeys::from_config(&keys, None).unwrap_err();
            assert!(error.contains("DAKOTA_API_KEYS"), "{error}");
        }
        Ok(())
    }

    #[test]
    fn hashes_as_sha256sum_prints_them_are_accepted() -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("dakota-sumkeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = dir.join("keys");
        let hashed = hex(&sha256("team-key"));
        // `printf %s team-key | sha256sum` and `sha256sum -b` output.
        std::fs::write(
            &file,
            format!("{hashed}  -\n{}  *key.txt\n", hex(&sha256("other"))),
        )
        .map_err(|e| e.to_string())?;
        let keys = ApiKeys::from_config(&[], Some(&file))?.ok_or("keys configured")?;
        assert!(keys.principal("team-key").is_some());
        assert!(keys.principal("other").is_some());
        std::fs::write(&file, format!("{hashed} and more\n")).map_err(|e| e.to_string())?;
        assert!(ApiKeys::from_config(&[], Some(&file)).is_err());
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
