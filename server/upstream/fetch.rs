//! Source fetching for the fact checker: GET with size and time limits, http/https only,
//! redirects followed by hand and re-checked, and private, loopback and link-local
//! addresses refused (SSRF protection) unless explicitly allowed.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio_stream::StreamExt;

use super::{UpstreamError, check_status};
use crate::cache::Key;
use crate::resilience::{CallScope, Called, Guard};

const UPSTREAM: &str = crate::domain::Upstream::Fetch.as_str();
const MAX_REDIRECTS: usize = 5;

fn refused(message: impl Into<String>) -> UpstreamError {
    UpstreamError::Refused {
        upstream: UPSTREAM,
        message: message.into(),
    }
}

/// Addresses a fetch may reach: public unicast only, unless private ones are allowed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            let first = segments[0];
            // NAT64 and 6to4 embed an IPv4 address that must be public too.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            if first == 0x2002 {
                let [a, b] = segments[1].to_be_bytes();
                let [c, d] = segments[2].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link-local
        }
    }
}

/// Names that reach a cloud's instance metadata service or a host's own network, whatever
/// they resolve to from where the fetch is checked: refused by name, before DNS.
fn is_internal_name(name: &str) -> bool {
    const METADATA: [&str; 7] = [
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    ];
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    METADATA.contains(&name.as_str())
        || name == "localhost"
        || [
            ".internal",
            ".local",
            ".localhost",
            ".localdomain",
            ".home.arpa",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// The resolver's refusal, recognised again in the reqwest error that wraps it.
#[derive(Debug)]
struct PrivateAddress(String);

impl std::fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves only to private or reserved addresses",
            self.0
        )
    }
}

impl std::error::Error for PrivateAddress {}

/// A send error, with the resolver's refusal told apart from network trouble.
fn malformed_page(message: String) -> UpstreamError {
    UpstreamError::Malformed {
        upstream: UPSTREAM,
        message,
    }
}

fn send_error(timeout: Duration, error: reqwest::Error) -> UpstreamError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(private) = current.downcast_ref::<PrivateAddress>() {
            return refused(private.to_string());
        }
        cause = current.source();
    }
    UpstreamError::from_reqwest(UPSTREAM, timeout, error)
}

/// Resolves names, then drops every address a fetch may not reach: the check happens on
/// the addresses actually connected to, so DNS rebinding cannot slip past it.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(
                    Box::new(PrivateAddress(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[derive(Debug)]
pub struct Fetcher {
    http: reqwest::Client,
    timeout: Duration,
    max_bytes: usize,
    allow_private: bool,
    guard: Arc<Guard>,
}

impl Fetcher {
    pub fn new(
        timeout: Duration,
        max_bytes: usize,
        allow_private: bool,
        guard: Arc<Guard>,
    ) -> Result<Self, reqwest::Error> {
        super::install_crypto_provider();
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf, past the resolver's address check.
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!(
                "dakota-content-service/",
                env!("CARGO_PKG_VERSION"),
                " (fact checking)"
            ))
            .build()?;
        Ok(Self {
            http,
            timeout,
            max_bytes,
            allow_private,
            guard,
        })
    }

    /// Refuses URLs that are not http(s) or name a forbidden IP literal (names are checked
    /// by the resolver).
    fn check_url(&self, url: &reqwest::Url) -> Result<(), UpstreamError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused(format!(
                "scheme `{}` (only http and https)",
                url.scheme()
            )));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                if !self.allow_private && is_internal_name(name) {
                    return Err(refused(format!(
                        "`{name}` names a private or reserved host (a cloud metadata service or an internal name)"
                    )));
                }
                None
            }
            None => return Err(refused("URL without a host")),
        };
        if let Some(ip) = literal
            && !self.allow_private
            && !is_public(ip)
        {
            return Err(refused(format!("{ip} is a private or reserved address")));
        }
        Ok(())
    }

    /// The readable text of a page (HTML reduced to its text), at most `max_bytes` read,
    /// through the fetch upstream's resilience stack.
    pub async fn fetch_text(&self, scope: &CallScope, url: &str) -> Result<String, UpstreamError> {
        self.fetch_page(scope, url).await.result
    }

    /// [`Fetcher::fetch_text`] with the call's accounting (whether the cache answered it).
    pub async fn fetch_page(&self, scope: &CallScope, url: &str) -> Called<String> {
        let span = || {
            let span = super::client_span(UPSTREAM, "GET", "{source page}");
            span.record(
                "server.address",
                reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default(),
            );
            span
        };
        // Kept in this process only (for the fetch TTL): a page is read once however many
        // jobs cite it, and pages never travel to Redis.
        let key = self.guard.cache_key(&[url.as_bytes()]).map(Key::local);
        self.guard
            .cached(scope, key, &span, |_| self.fetch_once(url))
            .await
    }

    async fn fetch_once(&self, url: &str) -> Result<String, UpstreamError> {
        let mut url =
            reqwest::Url::parse(url).map_err(|e| refused(format!("`{url}` is not a URL ({e})")))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        for _ in 0..=MAX_REDIRECTS {
            self.check_url(&url)?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let response = crate::telemetry::inject_trace_context(self.http.get(url.clone()))
                .timeout(remaining)
                .send()
                .await
                .map_err(|e| send_error(self.timeout, e))?;
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| refused("redirect without a Location"))?;
                url = url
                    .join(location)
                    .map_err(|e| refused(format!("bad redirect target ({e})")))?;
                continue;
            }
            let response = check_status(UPSTREAM, response).await?;
            let is_html = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .is_some_and(|c| c.contains("html"));
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = tokio::time::timeout(remaining, stream.next())
                .await
                .map_err(|_| UpstreamError::Timeout {
                    upstream: UPSTREAM,
                    after: self.timeout,
                })?
            {
                let chunk =
                    chunk.map_err(|e| UpstreamError::from_reqwest(UPSTREAM, self.timeout, e))?;
                let room = self.max_bytes.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= self.max_bytes {
                    break; // the rest of a huge page is not read
                }
            }
            let text = String::from_utf8_lossy(&body).into_owned();
            if !is_html {
                return Ok(text);
            }
            // Parsing up to `max_bytes` of HTML is CPU work: off the async executor.
            return tokio::task::spawn_blocking(move || html_to_text(&text))
                .await
                .map_err(|e| malformed_page(e.to_string()));
        }
        Err(refused(format!("more than {MAX_REDIRECTS} redirects")))
    }
}

/// The visible text of an HTML page, as `html2text` renders it without decoration (no
/// bullets, no link footnotes): script and style dropped, entities decoded, blocks on lines of
/// their own. Paragraphs come out separated by blank lines; lines are never wrapped.
pub fn html_to_text(html: &str) -> String {
    const NO_WRAP: usize = 100_000;
    let rendered = html2text::config::plain_no_decorate()
        .string_from_read(html.as_bytes(), NO_WRAP)
        .unwrap_or_default();
    rendered
        .split("\n\n")
        // Headings keep html2text's `#` marks even undecorated: a heading is text here.
        .map(|p| p.trim_start().trim_start_matches('#'))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "151.101.1.69", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn hostile_html_is_still_text() {
        for html in [
            "<p>unclosed <b>bold <script>alert(1)",
            "<<<>>>&&&;;<p></p></div></div>",
            &format!("<div title=\"{}\">x</div>", "a".repeat(100_000)),
            &"<div>".repeat(5_000),
        ] {
            let text = html_to_text(html);
            assert!(!text.contains("alert"), "{text}");
        }
    }

    #[test]
    fn html_is_reduced_to_its_text() {
        let html = "<html><head><style>p{}</style><script>var x = '<p>';</script></head><body><h1>Title</h1><p>Rates rose 2.5% in 2023 &amp; fell.</p><p>Next</p></body></html>";
        assert_eq!(
            html_to_text(html),
            "Title\n\nRates rose 2.5% in 2023 & fell.\n\nNext"
        );
    }

    #[tokio::test]
    async fn refused_before_any_request() {
        let fetcher = Fetcher::new(
            Duration::from_secs(1),
            1000,
            false,
            Arc::new(Guard::unlimited("fetch")),
        )
        .unwrap();
        let scope = CallScope::new(crate::resilience::Pool::Analysis);
        for url in [
            "file:///etc/passwd",
            "http://127.0.0.1:1/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.GOOGLE.INTERNAL./",
            "http://instance-data.ec2.internal/",
            "http://db.internal/",
            "http://0x7f000001/",
            "http://2130706433/",
            "http://0177.0.0.1/",
        ] {
            let error = fetcher.fetch_text(&scope, url).await.unwrap_err();
            assert!(!error.retryable(), "{url}: {error}");
        }
    }
}
