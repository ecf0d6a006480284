//! Logging and tracing.
//!
//! - Logs: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` for machines (one
//!   JSON object per line, with the fields of the spans it happened in: every line of
//!   an RPC carries its `trace_id`), anything else for humans.
//! - Traces: W3C trace context (`traceparent`) always: an RPC's span continues the
//!   caller's trace, and the gateway passes it on to the internal services
//!   ([`inject`]). Spans are exported over OTLP (gRPC) only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables configure the
//!   exporter; `OTEL_SERVICE_NAME` names the service, else the binary's name).
use std::sync::OnceLock;

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt, filter_fn},
    fmt,
    layer::SubscriberExt,
};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber; a second call (tests) is a no-op. With
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set it must run inside the tokio runtime (the exporter
/// is a tonic client).
pub fn init() {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|e| !e.is_empty());
    let mut provider = SdkTracerProvider::builder();
    let mut exporter_error = None;
    if exporting {
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => provider = provider.with_batch_exporter(exporter),
            Err(e) => exporter_error = Some(e.to_string()),
        }
    }
    // Without an exporter spans are not recorded, but still carry the trace context.
    let sampled = exporting && exporter_error.is_none();
    // Exporting, the sampler is the SDK's from OTEL_TRACES_SAMPLER / _ARG (default
    // parentbased_always_on: a caller's decision is honoured). At a public edge set,
    // e.g., `traceidratio` so callers cannot have every request traced.
    let name = std::env::var("OTEL_SERVICE_NAME").ok().unwrap_or_else(binary_name);
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name.clone()).build();
    if !sampled {
        provider = provider.with_sampler(Sampler::AlwaysOff);
    }
    let provider = provider.with_resource(resource).build();
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let installed =
        tracing::subscriber::set_global_default(subscriber(&provider, name, sampled, json, logs, std::io::stderr));
    if installed.is_ok() {
        global::set_tracer_provider(provider.clone());
        let _ = PROVIDER.set(provider);
        if let Some(e) = exporter_error {
            tracing::warn!(error = %e, "OTLP exporter not configured; spans are not exported");
        } else if sampled {
            tracing::info!("exporting traces over OTLP");
        }
    }
}

/// The subscriber: the trace layer, and the log lines (`json` or for humans, filtered
/// by `logs`) written to `writer`.
fn subscriber<W>(
    provider: &SdkTracerProvider,
    name: String,
    sampled: bool,
    json: bool,
    logs: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // The trace layer has its own filter, apart from the logs': an RPC's span carries the
    // trace on whatever RUST_LOG says. Only RPC spans while nothing is exported (their
    // context is all propagation needs); every span and event at INFO and above when
    // exporting.
    let traced = filter_fn(move |m| m.name() == "rpc" || (sampled && *m.level() <= tracing::Level::INFO));
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(name)).with_filter(traced);
    let registry = tracing_subscriber::registry().with(otel);
    // The RPC span is always known to the log layer, so every line logged in an RPC
    // names its method and trace id, whatever level RUST_LOG sets.
    let logs = logs.or(filter_fn(|m| m.is_span() && m.name() == "rpc"));
    if json {
        let layer = fmt::layer().json().with_target(false).with_current_span(true).with_span_list(false);
        Box::new(registry.with(layer.with_writer(writer).with_filter(logs)))
    } else {
        Box::new(registry.with(fmt::layer().with_target(false).with_writer(writer).with_filter(logs)))
    }
}

/// Sends the spans still buffered (at exit, inside the runtime: the exporter's
/// connection lives on it; the flush blocks, so it runs on a blocking thread).
pub async fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let p = p.clone();
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}

fn binary_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "push".into())
}

/// The span of one RPC, named by its method path, continuing the caller's trace
/// (`traceparent`) and carrying the trace id as a field, so log lines show it.
pub fn rpc_span(req: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("rpc", method = %req.uri().path(), trace_id = tracing::field::Empty);
    let parent = global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// Adds the current span's trace context (`traceparent`) to an outgoing call.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Metadata(metadata)));
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
        {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A JSON log line written during an RPC carries the caller's trace id, even with
    /// nothing exported and only warnings logged otherwise.
    #[test]
    fn a_json_log_line_of_an_rpc_carries_its_trace_id() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOff).build();
        let out = Buffer::default();
        let writer = out.clone();
        let logs = EnvFilter::new("warn");
        let sub = subscriber(&provider, "test".into(), false, true, logs, move || writer.clone());
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        tracing::subscriber::with_default(sub, || {
            let req = http::Request::builder()
                .uri("/push.v1.PushGateway/PushToUsers")
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap();
            rpc_span(&req).in_scope(|| tracing::warn!("inside the call"));
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains(&format!("\"trace_id\":\"{trace}\"")), "{text}");
        assert!(text.contains("\"method\":\"/push.v1.PushGateway/PushToUsers\""), "{text}");
    }
}
