//! Tracing and logs: spans exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C
//! trace context in and out, logs human-readable or JSON (with trace and span ids).
use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use serde_json::{Map, Value, json};
use tracing::{Event, Subscriber, field::Field};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::config::LogFormat;

const DEFAULT_SERVICE_NAME: &str = "dakota-content-service";

/// Keeps the tracer provider for the final flush.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Logging plus tracing, exporting to `OTEL_EXPORTER_OTLP_ENDPOINT` when set. Must run
    /// inside the Tokio runtime (the exporter is a tonic client).
    pub fn init(format: LogFormat) -> Self {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty());
        Self::init_with(format, endpoint)
    }

    /// As [`Telemetry::init`] with an explicit OTLP endpoint (tests).
    pub fn init_with(format: LogFormat, otlp_endpoint: Option<String>) -> Self {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        // Spans exist (for trace ids in logs and traceparent to upstreams) even with no
        // collector; they are exported only when one is configured.
        let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
        let mut exporter_error = None;
        if let Some(endpoint) = &otlp_endpoint {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(Duration::from_secs(5))
                .build()
            {
                Ok(exporter) => builder = builder.with_batch_exporter(LogOnce::new(exporter)),
                Err(error) => exporter_error = Some(error.to_string()),
            }
        }
        let provider = builder.build();
        let tracer = provider.tracer("dakota");
        // `RUST_LOG` sets what is logged; spans for traces are kept at info whatever it says,
        // so a quiet log does not lose the traces (or the traceparent sent upstream).
        // The HTML parser narrates every token at debug level: kept to warnings unless
        // `RUST_LOG` names it.
        let log_filter = || {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
            let asked = std::env::var("RUST_LOG").unwrap_or_default();
            ["html5ever", "markup5ever"]
                .into_iter()
                .filter(|target| !asked.contains(target))
                .filter_map(|target| format!("{target}=warn").parse().ok())
                .fold(filter, EnvFilter::add_directive)
        };
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let registry = tracing_subscriber::registry().with(otel);
        let _ = match format {
            LogFormat::Text => registry.with(fmt.with_filter(log_filter())).try_init(),
            LogFormat::Json => registry
                .with(fmt.event_format(JsonWithTraceIds).with_filter(log_filter()))
                .try_init(),
        };
        match (&otlp_endpoint, exporter_error) {
            (Some(endpoint), None) => tracing::info!(%endpoint, "exporting traces over OTLP"),
            (Some(endpoint), Some(error)) => {
                tracing::warn!(%endpoint, %error, "cannot export traces; continuing without")
            }
            (None, _) => {}
        }
        Self { provider }
    }

    /// Exports what is still buffered, then stops the exporter (off the async executor:
    /// it blocks).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        })
        .await;
    }

    pub fn force_flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// An exporter that logs the first failure of a run of failures, and the recovery, only:
/// a missing collector is worth one line, not one per batch.
#[derive(Debug)]
struct LogOnce<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E> LogOnce<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for LogOnce<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match &result {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(%error, "trace export failing (logged once until it recovers)");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("trace export recovered")
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The W3C trace context of incoming gRPC metadata (`traceparent`, `tracestate`).
pub fn context_from_metadata(metadata: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    struct Metadata<'a>(&'a tonic::metadata::MetadataMap);
    impl Extractor for Metadata<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|k| match k {
                    tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                    tonic::metadata::KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }
    TraceContextPropagator::new().extract(&Metadata(metadata))
}

/// Adds the current span's trace context (`traceparent`) to an outgoing HTTP request.
pub fn inject_trace_context(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    struct Headers(reqwest::header::HeaderMap);
    impl Injector for Headers {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(key.as_bytes()),
                reqwest::header::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
    let mut headers = Headers(reqwest::header::HeaderMap::new());
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut headers);
    request.headers(headers.0)
}

/// JSON log lines: time, level, target, message and fields, the span, and the trace and
/// span ids that find the line's trace in the collector.
struct JsonWithTraceIds;

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut line = fields.0;
        let metadata = event.metadata();
        line.insert("timestamp".into(), json!(humantime_now()));
        line.insert("level".into(), json!(metadata.level().as_str()));
        line.insert("target".into(), json!(metadata.target()));
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), json!(span.name()));
            let context = tracing::dispatcher::get_default(|dispatch| {
                tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
            });
            if let Some(context) = context {
                let span_context = context.span().span_context().clone();
                if span_context.is_valid() {
                    line.insert(
                        "trace_id".into(),
                        json!(span_context.trace_id().to_string()),
                    );
                    line.insert("span_id".into(), json!(span_context.span_id().to_string()));
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

fn humantime_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

struct Fields(Map<String, Value>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), json!(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), json!(value));
    }
}
