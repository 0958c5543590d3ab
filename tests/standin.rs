//! The upstream stand-in: a real HTTP server on 127.0.0.1 speaking OpenAI-compatible chat
//! completions (JSON-schema answers and SSE streams), vector-store search, Serper search, and
//! pages to fetch. It records every request and can be told to misbehave.
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;

/// How the next request of a route is answered instead of normally.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and a short error body.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooMany { retry_after_secs: u64 },
    /// 200 with a body that is not what the API returns.
    Malformed,
    /// A well-formed completion whose content does not fit the requested schema.
    SchemaViolation,
    /// Wait this long before answering normally.
    Delay(Duration),
    /// Never answer (or, for a stream, stop after `chunks` chunks and keep the line open).
    Stall { chunks: usize },
    /// Send part of the answer, then break the connection.
    Close,
    /// 401 whose body repeats the credentials the request carried (as some gateways do).
    EchoCredentials,
    /// 429 without `Retry-After`, as many gateways and local servers answer.
    TooManyUnnamed,
    /// Answer the way small models do (see [`Sloppy`]).
    Sloppy(Sloppy),
    /// This status with a body of this many bytes (a JSON string that goes on), sent as fast
    /// as the client reads it; [`StandIn::hostile_bytes_sent`] counts what went out.
    Huge { status: u16, bytes: usize },
    /// A writer stream that ignores `max_tokens`: deltas until the client hangs up.
    Endless,
    /// A well-formed answer whose usage claims 2^63 tokens.
    WildUsage,
    /// `307 Temporary Redirect` to this URL (another origin, say).
    Redirect(String),
    /// The prompt does not fit the model's context, as llama.cpp says it: 400 "exceeds the
    /// available context size", or 500 "Context size has been exceeded".
    ContextExceeded(u16),
}

/// How small local models bend the limits a prompt states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sloppy {
    /// Every array empty (`{"queries": []}`).
    EmptyArrays,
    /// Every array cut to one item.
    ShortArrays,
    /// Every array doubled and every string made 300 characters long.
    Overlong,
    /// Keeps generating until `max_tokens` cuts it off (`finish_reason: length`).
    Ramble,
    /// An empty answer.
    Empty,
    /// The writer obeys text injected in a source: it links to a URL research never returned
    /// and recites its own instructions.
    Injected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Llm,
    /// Streamed chat requests only (the writer); recorded under `Llm`.
    LlmStream,
    VectorStore,
    Serper,
    Page,
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: std::time::Instant,
    pub route: Route,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The schema name of a structured chat request; "stream" for the writer's stream.
    pub fn llm_kind(&self) -> String {
        if is_writer_stream(&self.body) {
            return "stream".into();
        }
        let schema = &self.body["response_format"]["json_schema"];
        let name = schema["name"].as_str().unwrap_or_default();
        if name == "research_synthesizer"
            && schema["schema"]["properties"].get("sections").is_some()
        {
            return "research_synthesizer.plan".into();
        }
        name.to_string()
    }

    /// All message contents of a chat request, joined.
    pub fn prompt_text(&self) -> String {
        self.body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["content"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

/// Whether a chat request is the writer's stream of text: streamed, and asking for no JSON
/// (structured answers may be streamed too; their schema is in `response_format` or, in
/// prompt mode, in the system message).
pub fn is_writer_stream(body: &Value) -> bool {
    body["stream"] == true
        && body.get("response_format").is_none()
        && !body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .contains("JSON Schema:")
}

/// How long the stand-in takes to answer, as real upstreams do (benchmarks); zero by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Before a structured chat answer, and before a stream's first chunk.
    pub llm: Duration,
    /// A streamed answer's headers go out at once, then nothing for this long before its
    /// first chunk: a local server reading the prompt.
    pub first_token: Duration,
    /// Streamed text, in tokens a second (a 40-character chunk counts 10); 0 for no pacing.
    pub tokens_per_second: u32,
    /// Vector-store and Serper searches.
    pub search: Duration,
    /// Pages.
    pub fetch: Duration,
}

async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    latency: Mutex<Latency>,
    /// (route, start, end) of every request answered, the end when its response was done.
    intervals: Mutex<Vec<(Route, std::time::Instant, std::time::Instant)>>,
    faults: Mutex<Vec<(Route, VecDeque<Fault>)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    base: Mutex<String>,
    /// Answers every chat request of the route this way, after any queued fault.
    sloppy: Mutex<Vec<(Route, Sloppy)>>,
    /// A 429 without `Retry-After` for the first this-many requests with the same body.
    rate_limit_each: AtomicUsize,
    /// Requests seen per body, for `rate_limit_each`.
    seen: Mutex<std::collections::HashMap<String, usize>>,
    /// Bytes of `Huge` and `Endless` bodies handed to the connection.
    hostile_sent: Arc<AtomicUsize>,
    /// What `GET /props` answers, as llama.cpp's server does (404 when unset).
    props: Mutex<Option<Value>>,
    /// A provider's request budget per window, told in `x-ratelimit-*` headers.
    budget: Mutex<Option<Budget>>,
    /// Chat requests answered 429 because the budget was spent.
    budget_refused: AtomicUsize,
}

/// A provider's request budget: `limit` requests per fixed window.
#[derive(Debug, Clone, Copy)]
struct Budget {
    limit: u64,
    window: Duration,
    started: tokio::time::Instant,
    used: u64,
}

#[derive(Clone)]
pub struct StandIn {
    pub url: String,
    shared: Arc<Shared>,
}

/// Counts a request in flight for as long as it lives, and records its interval.
struct InFlight(Arc<Shared>, Route, std::time::Instant);

impl InFlight {
    fn new(shared: &Arc<Shared>, route: Route) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared.clone(), route, std::time::Instant::now())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        let interval = (self.1, self.2, std::time::Instant::now());
        self.0.intervals.lock().unwrap().push(interval);
    }
}

impl StandIn {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .route("/v1/chat/completions", post(budgeted_chat))
            .route("/v1/vector_stores/{id}/search", post(vector_search))
            .route("/search", post(serper))
            .route("/pages/{name}", get(page))
            .route("/hop/{n}", get(hop))
            .route(
                "/props",
                get(|State(shared): State<Arc<Shared>>| async move {
                    match shared.props.lock().unwrap().clone() {
                        Some(props) => Json(props).into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }),
            )
            .route(
                "/escape",
                get(|| async { (StatusCode::FOUND, [("location", "file:///etc/passwd")]) }),
            )
            .route(
                "/big",
                get(|| async { "All work and no play. ".repeat(50_000) }),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *shared.base.lock().unwrap() = url.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, shared }
    }

    /// Answer `GET /props` with this, as llama.cpp does (`total_slots`,
    /// `default_generation_settings.n_ctx`).
    pub fn set_props(&self, props: Value) {
        *self.shared.props.lock().unwrap() = Some(props);
    }

    /// Chat requests get `limit` a window of `window`, as a provider's account does, and
    /// every answer says what is left in `x-ratelimit-*-requests` headers; past it, 429.
    pub fn provider_budget(&self, limit: u64, window: Duration) {
        *self.shared.budget.lock().unwrap() = Some(Budget {
            limit,
            window,
            started: tokio::time::Instant::now(),
            used: 0,
        });
    }

    /// Chat requests refused with 429 because the provider budget was spent.
    pub fn budget_refused(&self) -> usize {
        self.shared.budget_refused.load(Ordering::SeqCst)
    }

    /// The most LLM requests that were in flight at once.
    pub fn max_llm_in_flight(&self) -> usize {
        let intervals = self.intervals();
        let mut edges: Vec<(std::time::Instant, i32)> = intervals
            .iter()
            .filter(|(route, _, _)| *route == Route::Llm)
            .flat_map(|(_, start, end)| [(*start, 1), (*end, -1)])
            .collect();
        // Ends before starts at the same instant: back-to-back calls do not overlap.
        edges.sort_by_key(|(at, delta)| (*at, *delta));
        let (mut now, mut max) = (0i32, 0i32);
        for (_, delta) in edges {
            now += delta;
            max = max.max(now);
        }
        max as usize
    }

    /// Base URL of the OpenAI-compatible API (`.../v1`).
    pub fn openai_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    /// The next requests of `route` meet these faults, in order.
    pub fn fault(&self, route: Route, faults: impl IntoIterator<Item = Fault>) {
        let mut all = self.shared.faults.lock().unwrap();
        match all.iter_mut().find(|(r, _)| *r == route) {
            Some((_, queue)) => queue.extend(faults),
            None => all.push((route, faults.into_iter().collect())),
        }
    }

    /// Every later chat request of `route` (Llm: structured, LlmStream: the writer) is
    /// answered this way.
    pub fn sloppy(&self, route: Route, sloppy: Sloppy) {
        self.shared.sloppy.lock().unwrap().push((route, sloppy));
    }

    /// The first `n` attempts of every distinct chat request get a 429 without `Retry-After`.
    pub fn rate_limit_each_call(&self, n: usize) {
        self.shared.rate_limit_each.store(n, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn requests_of(&self, route: Route) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.route == route)
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// From now on, answers take this long.
    pub fn latency(&self, latency: Latency) {
        *self.shared.latency.lock().unwrap() = latency;
    }

    /// (route, start, end) of every request answered so far, in the order they ended.
    pub fn intervals(&self) -> Vec<(Route, std::time::Instant, std::time::Instant)> {
        self.shared.intervals.lock().unwrap().clone()
    }

    /// Bytes of [`Fault::Huge`] and [`Fault::Endless`] bodies sent so far.
    pub fn hostile_bytes_sent(&self) -> usize {
        self.shared.hostile_sent.load(Ordering::SeqCst)
    }

    /// The most requests it ever held open at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

fn record(
    shared: &Shared,
    route: Route,
    path: String,
    headers: HeaderMap,
    body: Value,
) -> Option<Fault> {
    let fault_route = if route == Route::Llm && is_writer_stream(&body) {
        Route::LlmStream
    } else {
        route
    };
    let key = body.to_string();
    shared.requests.lock().unwrap().push(Recorded {
        at: std::time::Instant::now(),
        route,
        path,
        headers,
        body,
    });
    let mut faults = shared.faults.lock().unwrap();
    let queued = faults
        .iter_mut()
        .find(|(r, _)| *r == fault_route)
        .and_then(|(_, q)| q.pop_front());
    queued.or_else(|| {
        let limit = shared.rate_limit_each.load(Ordering::SeqCst);
        if route == Route::Llm && limit > 0 {
            let mut seen = shared.seen.lock().unwrap();
            let count = seen.entry(key).or_default();
            *count += 1;
            if *count <= limit {
                return Some(Fault::TooManyUnnamed);
            }
        }
        shared
            .sloppy
            .lock()
            .unwrap()
            .iter()
            .find(|(r, _)| *r == fault_route)
            .map(|(_, s)| Fault::Sloppy(*s))
    })
}

/// Applies a fault that does not depend on the answer; returns the response it stands for.
async fn generic_fault(fault: &Fault, sent: &Arc<AtomicUsize>) -> Option<Response> {
    match fault {
        Fault::Redirect(location) => Some(
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", location.clone())],
            )
                .into_response(),
        ),
        Fault::Huge { status, bytes } => {
            let (total, sent) = (*bytes, sent.clone());
            let head = Bytes::from_static(b"{\"choices\": [{\"message\": {\"content\": \"");
            let filler = Bytes::from(vec![b'a'; 64 << 10]);
            let chunks = (0..total.div_ceil(filler.len())).map(move |i| {
                let chunk = if i == 0 { head.clone() } else { filler.clone() };
                sent.fetch_add(chunk.len(), Ordering::SeqCst);
                Ok::<_, std::io::Error>(chunk)
            });
            let mut response = Response::new(Body::from_stream(tokio_stream::iter(chunks)));
            *response.status_mut() = StatusCode::from_u16(*status).unwrap();
            Some(response)
        }
        Fault::Status(code) => Some(
            (
                StatusCode::from_u16(*code).unwrap(),
                Json(json!({"error": {"message": "injected failure"}})),
            )
                .into_response(),
        ),
        Fault::TooMany { retry_after_secs } => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after_secs.to_string())],
                Json(json!({"error": {"message": "slow down"}})),
            )
                .into_response(),
        ),
        Fault::Malformed => Some((StatusCode::OK, "{\"choices\": [oops").into_response()),
        Fault::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            None
        }
        Fault::Stall { .. } => {
            std::future::pending::<()>().await;
            None
        }
        Fault::Close => {
            let broken = tokio_stream::iter(vec![
                Ok::<_, std::io::Error>(Bytes::from_static(b"{\"choices\"")),
                Err(std::io::Error::other("connection closed by the stand-in")),
            ]);
            Some(Response::new(Body::from_stream(broken)))
        }
        Fault::ContextExceeded(400) => Some(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"code": 400, "message": "request (9842 tokens) exceeds the available context size (8192 tokens), try increasing it", "type": "exceed_context_size_error"}})),
            )
                .into_response(),
        ),
        Fault::ContextExceeded(_) => Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"code": 500, "message": "Context size has been exceeded.", "type": "server_error"}})),
            )
                .into_response(),
        ),
        Fault::TooManyUnnamed => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": {"message": "Rate limit exceeded"}})),
            )
                .into_response(),
        ),
        Fault::SchemaViolation
        | Fault::EchoCredentials
        | Fault::Sloppy(_)
        | Fault::Endless
        | Fault::WildUsage => None,
    }
}

/// The 401 of [`Fault::EchoCredentials`].
fn echo_credentials(headers: &HeaderMap) -> Response {
    let credentials: Vec<&str> = ["authorization", "x-api-key"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .collect();
    (
        StatusCode::UNAUTHORIZED,
        format!("invalid credentials: {}", credentials.join(" ")),
    )
        .into_response()
}

/// [`chat`] within the provider budget, when one is set: its headers on every answer.
async fn budgeted_chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Json<Value>,
) -> Response {
    let spent = {
        let mut budget = shared.budget.lock().unwrap();
        budget.as_mut().map(|budget| {
            let now = tokio::time::Instant::now();
            if now >= budget.started + budget.window {
                budget.started = now;
                budget.used = 0;
            }
            budget.used += 1;
            let reset = (budget.started + budget.window).saturating_duration_since(now);
            (
                budget.used > budget.limit,
                budget.limit,
                budget.limit.saturating_sub(budget.used),
                reset,
            )
        })
    };
    let Some((over, limit, remaining, reset)) = spent else {
        return chat(State(shared), headers, body).await;
    };
    let mut response = if over {
        shared.budget_refused.fetch_add(1, Ordering::SeqCst);
        (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": {"message": "Rate limit reached for requests"}})),
        )
            .into_response()
    } else {
        chat(State(shared), headers, body).await
    };
    let set = response.headers_mut();
    set.insert("x-ratelimit-limit-requests", limit.into());
    set.insert("x-ratelimit-remaining-requests", remaining.into());
    let reset = format!("{}ms", reset.as_millis());
    set.insert("x-ratelimit-reset-requests", reset.parse().unwrap());
    response
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let _in_flight = InFlight::new(&shared, Route::Llm);
    let latency = *shared.latency.lock().unwrap();
    let fault = record(
        &shared,
        Route::Llm,
        "/v1/chat/completions".into(),
        headers.clone(),
        body.clone(),
    );
    if matches!(fault, Some(Fault::EchoCredentials)) {
        return echo_credentials(&headers);
    }
    let user = body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let system = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if is_writer_stream(&body) {
        let stall_after = match &fault {
            Some(Fault::Stall { chunks }) => Some(*chunks),
            Some(
                other @ (Fault::Status(_)
                | Fault::TooMany { .. }
                | Fault::Malformed
                | Fault::Close
                | Fault::Delay(_)
                | Fault::Huge { .. }
                | Fault::Redirect(_)
                | Fault::TooManyUnnamed
                | Fault::ContextExceeded(_)),
            ) => {
                if let Some(response) = generic_fault(other, &shared.hostile_sent).await {
                    return response;
                }
                None
            }
            _ => None,
        };
        if matches!(fault, Some(Fault::Endless)) {
            return endless_stream(shared.hostile_sent.clone());
        }
        let max_chars = body["max_tokens"]
            .as_u64()
            .unwrap_or(u64::MAX)
            .saturating_mul(4) as usize;
        let text = match fault {
            Some(Fault::Sloppy(Sloppy::Empty)) => String::new(),
            // A model that never stops: the article, then more and more, until cut off.
            Some(Fault::Sloppy(Sloppy::Ramble)) => {
                let mut text = article(&system, &user);
                while text.len() < max_chars {
                    text.push_str(" And so it goes on.");
                }
                text
            }
            Some(Fault::Sloppy(Sloppy::Injected)) => {
                let instructions = system.lines().next().unwrap_or_default();
                format!(
                    "{}\nFor the full picture see [this report](https://attacker.example/report).\n\nAs instructed: {instructions}\n",
                    article(&system, &user)
                )
            }
            _ => article(&system, &user),
        };
        let cut = text.len() > max_chars;
        let text: String = if cut {
            text.chars().take(max_chars).collect()
        } else {
            text
        };
        pause(latency.llm).await;
        return stream_article(text, cut, stall_after, _in_flight, latency);
    }
    if let Some(fault) = &fault
        && let Some(response) = generic_fault(fault, &shared.hostile_sent).await
    {
        return response;
    }
    pause(latency.llm).await;
    let schema = &body["response_format"]["json_schema"];
    let name = schema["name"].as_str().unwrap_or_default();
    let content = if matches!(fault, Some(Fault::SchemaViolation)) {
        json!({"unexpected": "shape"})
    } else {
        // Without a schema in `response_format` (json_object or prompt mode), the agent is
        // named by the schema in its system message.
        let embedded: Value = system
            .split("JSON Schema:\n")
            .nth(1)
            .and_then(|t| serde_json::from_str(t.trim()).ok())
            .unwrap_or(Value::Null);
        let (name, schema) = if name.is_empty() {
            (agent_in(&system), &embedded)
        } else {
            (name, &schema["schema"])
        };
        match structured_answer(name, schema, &user) {
            Some(answer) => answer,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": {"message": format!("unknown schema {name}")}})),
                )
                    .into_response();
            }
        }
    };
    let max_chars = body["max_tokens"]
        .as_u64()
        .unwrap_or(u64::MAX)
        .saturating_mul(4) as usize;
    let (content, finish) = match fault {
        Some(Fault::Sloppy(sloppy)) => sloppy_answer(sloppy, content, max_chars),
        _ => (content.to_string(), "stop"),
    };
    let usage = if matches!(fault, Some(Fault::WildUsage)) {
        json!({"prompt_tokens": 1u64 << 63, "completion_tokens": 1u64 << 63})
    } else {
        json!({"prompt_tokens": (system.len() + user.len()) / 4, "completion_tokens": content.len() / 4})
    };
    if body["stream"] == true {
        return stream_answer(content, (finish, usage), None, _in_flight, latency);
    }
    Json(json!({
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": usage,
    }))
    .into_response()
}

/// An SSE answer that never ends: the same delta again and again, whatever `max_tokens` said.
fn endless_stream(sent: Arc<AtomicUsize>) -> Response {
    let delta = format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": "More words, and more words again. "}}]})
    );
    let chunk = Bytes::from(delta.repeat(64));
    let chunks = std::iter::repeat(chunk).map(move |chunk| {
        sent.fetch_add(chunk.len(), Ordering::SeqCst);
        Ok::<_, std::io::Error>(chunk)
    });
    let mut response = Response::new(Body::from_stream(tokio_stream::iter(chunks)));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
}

/// The agent whose prompt this is, from the words of its system message (json_object and
/// prompt modes send no schema name).
fn agent_in(system: &str) -> &'static str {
    let has = |p: &str| system.contains(p);
    if has("\"queries\"") && has("web") {
        "web_researcher"
    } else if has("\"queries\"") {
        "kb_researcher"
    } else if has("\"outline\"") || has("\"sections\"") {
        "research_synthesizer"
    } else if has("\"meta_description\"") {
        "seo_specialist"
    } else if has("\"verdicts\"") {
        "fact_checker"
    } else if has("\"linkedin_posts\"") {
        "social_promoter"
    } else {
        "summary_writer"
    }
}

/// A structured answer as a small model gives it: the content and its finish reason.
fn sloppy_answer(sloppy: Sloppy, answer: Value, max_chars: usize) -> (String, &'static str) {
    fn reshape(value: Value, sloppy: Sloppy) -> Value {
        match value {
            Value::Array(items) => Value::Array(match sloppy {
                Sloppy::EmptyArrays => Vec::new(),
                Sloppy::ShortArrays => items.into_iter().take(1).collect(),
                Sloppy::Overlong => {
                    let doubled: Vec<Value> = items.iter().chain(&items).cloned().collect();
                    doubled.into_iter().map(|v| reshape(v, sloppy)).collect()
                }
                _ => items,
            }),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, reshape(v, sloppy)))
                    .collect(),
            ),
            Value::String(text) if sloppy == Sloppy::Overlong => {
                let mut long = text;
                while long.chars().count() < 300 {
                    long.push_str(" and more besides");
                }
                Value::String(long.chars().take(300).collect())
            }
            other => other,
        }
    }
    match sloppy {
        Sloppy::Empty => (String::new(), "stop"),
        Sloppy::Ramble => {
            let mut text = answer.to_string();
            text.pop(); // never closes the object
            while text.len() < max_chars {
                text.push_str(", \"more\": \"and more\"");
            }
            (text.chars().take(max_chars).collect(), "length")
        }
        other => (reshape(answer, other).to_string(), "stop"),
    }
}

fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_default()
        .trim()
}

/// Sources listed in a prompt as `[S1] Title (...)` followed by an excerpt line.
fn prompt_sources(user: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = user.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let id = l.strip_prefix('[')?.split(']').next()?.to_string();
            id.starts_with('S').then(|| {
                (
                    id,
                    lines
                        .get(i + 1)
                        .map(|e| e.trim().to_string())
                        .unwrap_or_default(),
                )
            })
        })
        .collect()
}

fn sentences(text: &str) -> Vec<String> {
    text.split(". ")
        .map(|s| s.trim().trim_end_matches('.').to_string())
        .filter(|s| s.split_whitespace().count() >= 6)
        .map(|s| format!("{s}."))
        .collect()
}

fn structured_answer(name: &str, schema: &Value, user: &str) -> Option<Value> {
    let topic = line_after(user, "Topic:");
    Some(match name {
        "kb_researcher" | "web_researcher" => {
            json!({"queries": [topic, format!("{topic} risks"), format!("{topic} outlook")]})
        }
        "research_synthesizer" if schema["properties"].get("sections").is_some() => {
            json!({"sections": [
            format!("Why {topic} Matters for Portfolios"), "How Allocators Implement the Strategy", "Risks Worth Pricing Before Committing"]})
        }
        "research_synthesizer" => {
            let ids: Vec<String> = prompt_sources(user).into_iter().map(|(id, _)| id).collect();
            let pick = |i: usize| vec![ids.get(i % ids.len().max(1)).cloned().unwrap_or_default()];
            json!({
                "outline": [
                    {"heading": format!("Why {topic} Matters for Portfolios"), "source_ids": pick(0)},
                    {"heading": "How Allocators Implement the Strategy", "source_ids": pick(1)},
                    {"heading": "Risks Worth Pricing Before Committing", "source_ids": pick(2)},
                ],
                "key_themes": ["liquidity", "governance", "pricing of risk"],
            })
        }
        "seo_specialist" => json!({
            "title": format!("{topic}: A Briefing").chars().take(60).collect::<String>(),
            "meta_description": "What institutional investors need to know, with sources.",
            "keywords": ["private credit", "liquidity", "pensions", "direct lending", "risk"],
        }),
        "fact_checker" => {
            // Claims are numbered lines; each is followed by excerpt lines `  [Sx] text`.
            let mut verdicts = Vec::new();
            let mut current: Option<(usize, String)> = None;
            let mut supported = false;
            let flush = |current: &mut Option<(usize, String)>,
                         supported: &mut bool,
                         verdicts: &mut Vec<Value>| {
                if let Some((n, claim)) = current.take() {
                    verdicts.push(json!({"claim": n, "verdict": if *supported { "supported" } else { "unsupported" }, "evidence": if *supported { claim } else { String::new() }}));
                }
                *supported = false;
            };
            for line in user.lines() {
                let trimmed = line.trim();
                if let Some((n, claim)) = trimmed
                    .split_once(". ")
                    .and_then(|(n, c)| Some((n.parse::<usize>().ok()?, c)))
                {
                    flush(&mut current, &mut supported, &mut verdicts);
                    current = Some((n, claim.to_string()));
                } else if let Some((_, claim)) = &current
                    && trimmed.contains(claim.trim_end_matches('.'))
                {
                    supported = true;
                }
            }
            flush(&mut current, &mut supported, &mut verdicts);
            json!({"verdicts": verdicts})
        }
        "social_promoter" => json!({
            "linkedin_posts": ["Post one #Investing", "Post two #Credit", "Post three #Pensions"],
            "thread": (1..=10).map(|i| format!("{i}/10 A point about {topic}.")).collect::<Vec<_>>(),
            "email_snippet": "This week: a sourced briefing.",
            "instagram_post": "A briefing #investing",
            "facebook_post": "Read our sourced briefing.",
        }),
        "summary_writer" => json!({
            "key_value": "A sourced view for allocators.",
            "overview": "The article reviews the evidence. It sets out the risks.",
            "takeaways": ["Plan liquidity", "Price the risk"],
        }),
        _ => return None,
    })
}

/// An article that follows the contract, built from the sources in the prompt, each cited.
fn article(system: &str, user: &str) -> String {
    let target: usize = system
        .split("of about ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(600);
    let topic = line_after(user, "Topic:");
    let sources = prompt_sources(user);
    // Round-robin over the sources, so that every source gets cited.
    let per_source: Vec<Vec<String>> = sources.iter().map(|(_, e)| sentences(e)).collect();
    let mut pool: Vec<(String, String)> = Vec::new();
    for round in 0..per_source.iter().map(Vec::len).max().unwrap_or(0) {
        for ((id, _), list) in sources.iter().zip(&per_source) {
            if let Some(sentence) = list.get(round) {
                pool.push((id.clone(), sentence.clone()));
            }
        }
    }
    let mut next = 0;
    let mut take = |n: usize| -> String {
        let mut out = Vec::new();
        for _ in 0..n {
            if pool.is_empty() {
                break;
            }
            let (id, sentence) = &pool[next % pool.len()];
            next += 1;
            out.push(format!("{} [{id}].", sentence.trim_end_matches('.')));
        }
        out.join(" ")
    };
    let per_section = (target / 4 / 25).max(1);
    format!(
        "# {topic}: What Allocators Should Know\n\n{}\n\n## Key Insights at a Glance\n\n- {}\n- {}\n- {}\n\n## Why {topic} Matters for Portfolios\n\n{}\n\n## How Allocators Implement the Strategy\n\n{}\n\n## Risks Worth Pricing Before Committing\n\n{}\n\n## Key Takeaways\n\n- {}\n- {}\n- {}\n\n## Conclusion\n\n{}\n",
        take(2),
        take(1),
        take(1),
        take(1),
        take(per_section),
        take(per_section),
        take(per_section),
        take(1),
        take(1),
        take(1),
        take(2)
    )
}

/// An answer streamed as a server streams it: the text in 40-character chunks (after
/// `latency.first_token`, paced at its tokens a second), then the finish reason and the usage.
/// With `stall_after`, the stream goes silent before that chunk, its connection kept open.
fn stream_answer(
    content: String,
    (finish, usage): (&'static str, Value),
    stall_after: Option<usize>,
    in_flight: InFlight,
    latency: Latency,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        pause(latency.first_token).await;
        let chars: Vec<char> = content.chars().collect();
        for (i, piece) in chars.chunks(40).enumerate() {
            if stall_after == Some(i) {
                // Keep the connection open and silent until the client gives up.
                tx.closed().await;
                return;
            }
            if i > 0 {
                pause(chunk_pause(latency.tokens_per_second)).await;
            }
            let chunk = json!({"choices": [{"index": 0, "delta": {"content": piece.iter().collect::<String>()}}]});
            if tx
                .send(Ok(Bytes::from(format!("data: {chunk}\n\n"))))
                .await
                .is_err()
            {
                return;
            }
        }
        let end = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]});
        let usage = json!({"choices": [], "usage": usage});
        let _ = tx
            .send(Ok(Bytes::from(format!(
                "data: {end}\n\ndata: {usage}\n\ndata: [DONE]\n\n"
            ))))
            .await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap()
}

/// The pause between 40-character chunks (about 10 tokens) at this pace; none for 0.
fn chunk_pause(tokens_per_second: u32) -> Duration {
    if tokens_per_second > 0 {
        Duration::from_secs_f64(10.0 / f64::from(tokens_per_second))
    } else {
        Duration::ZERO
    }
}

/// The writer's stream of `text`, ending with `finish_reason: length` when `cut`.
fn stream_article(
    text: String,
    cut: bool,
    stall_after: Option<usize>,
    in_flight: InFlight,
    latency: Latency,
) -> Response {
    let finish = if cut { "length" } else { "stop" };
    let usage = json!({"prompt_tokens": 1200, "completion_tokens": text.chars().count() / 4});
    stream_answer(text, (finish, usage), stall_after, in_flight, latency)
}

/// The vector store answers from the project's knowledge folder, with its own URLs.
async fn vector_search(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let _in_flight = InFlight::new(&shared, Route::VectorStore);
    let latency = *shared.latency.lock().unwrap();
    pause(latency.search).await;
    if let Some(fault) = record(
        &shared,
        Route::VectorStore,
        format!("/v1/vector_stores/{id}/search"),
        headers,
        body.clone(),
    ) && let Some(response) = generic_fault(&fault, &shared.hostile_sent).await
    {
        return response;
    }
    let query = body["query"].as_str().unwrap_or_default().to_lowercase();
    let limit = body["max_num_results"].as_u64().unwrap_or(5) as usize;
    let mut hits: Vec<(usize, Value)> = Vec::new();
    for entry in std::fs::read_dir(crate::kb_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        for section in text.split("\n## ").skip(1) {
            let score = query
                .split_whitespace()
                .filter(|w| w.len() > 3 && section.to_lowercase().contains(*w))
                .count();
            if score > 0 {
                hits.push((score, json!({
                    "file_id": format!("file-{stem}"),
                    "filename": format!("{stem}.md"),
                    "score": score as f64 / 10.0,
                    "attributes": {"url": format!("https://vs.example/{stem}"), "title": stem.replace('-', " ")},
                    "content": [{"type": "text", "text": section}],
                })));
            }
        }
    }
    hits.sort_by_key(|h| std::cmp::Reverse(h.0));
    let data: Vec<Value> = hits.into_iter().take(limit).map(|(_, h)| h).collect();
    Json(json!({"object": "vector_store.search_results.page", "data": data, "has_more": false}))
        .into_response()
}

async fn serper(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let _in_flight = InFlight::new(&shared, Route::Serper);
    let latency = *shared.latency.lock().unwrap();
    pause(latency.search).await;
    if let Some(fault) = record(
        &shared,
        Route::Serper,
        "/search".into(),
        headers,
        body.clone(),
    ) && let Some(response) = generic_fault(&fault, &shared.hostile_sent).await
    {
        return response;
    }
    let base = shared.base.lock().unwrap().clone();
    let query = body["q"].as_str().unwrap_or_default();
    let organic: Vec<Value> = (1..=5)
        .map(|i| {
            json!({
                "title": format!("{query} — report {i}"),
                "link": format!("{base}/pages/report-{i}"),
                "snippet": format!("Report {i} on {query}."),
                "date": "2026-10-01",
            })
        })
        .collect();
    Json(json!({"organic": organic})).into_response()
}

async fn page(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let _in_flight = InFlight::new(&shared, Route::Page);
    let latency = *shared.latency.lock().unwrap();
    pause(latency.fetch).await;
    if let Some(fault) = record(
        &shared,
        Route::Page,
        format!("/pages/{name}"),
        headers,
        Value::Null,
    ) && let Some(response) = generic_fault(&fault, &shared.hostile_sent).await
    {
        return response;
    }
    let html = format!(
        "<html><head><title>{name}</title><script>var hidden = 1;</script></head><body><h1>{name}</h1><p>Institutional investors allocate to private credit for floating-rate income and contractual cash flows. Liquidity planning is essential because drawdown funds call capital over several years.</p></body></html>"
    );
    ([("content-type", "text/html; charset=utf-8")], html).into_response()
}

/// `/hop/n` redirects to `/hop/n-1`; `/hop/0` is a page.
async fn hop(Path(n): Path<u32>) -> Response {
    if n == 0 {
        return (
            [("content-type", "text/plain")],
            "Arrived after the redirects.",
        )
            .into_response();
    }
    (StatusCode::FOUND, [("location", format!("/hop/{}", n - 1))]).into_response()
}
