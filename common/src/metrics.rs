//! Prometheus metrics through the `metrics` facade, exported by
//! `metrics-exporter-prometheus` on a separate HTTP port (`--metrics-listen`).
//!
//! The binaries install the exporter ([`install`]); `serve` never does, so services
//! run in-process by the tests record into nothing and share no global state. The
//! gateway's console reads the same recorder ([`render`]). Every
//! server counts its RPCs ([`RpcMetricsLayer`]) and every pooled Redis command
//! (`crate::redis::Connection`); the services add their own (docs/OPERATIONS.md,
//! "Metrics").
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tonic::{Code, codegen::http};

use crate::Error;

/// Latency buckets (seconds) of every `*_seconds` histogram: 100 µs to 10 s.
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The installed recorder's handle, for [`render`].
static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// Records metrics from now on and serves `/metrics` on `addr` (any path answers).
/// Without an address, it records only when `record` is set (for a reader in the
/// process, e.g. the gateway's console, through [`render`]); else nothing. Call it
/// inside the process's tokio runtime.
pub fn install(addr: Option<SocketAddr>, record: bool) -> Result<(), Error> {
    if addr.is_none() && !record {
        return Ok(());
    }
    let what = addr.map_or_else(|| "metrics".to_owned(), |a| format!("--metrics-listen {a}"));
    let fail = |e: &dyn std::fmt::Display| Error::Config(format!("{what}: {e}"));
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .map_err(|e| fail(&e))?;
    let handle = match addr {
        Some(addr) => {
            let (recorder, exporter) = builder.with_http_listener(addr).build().map_err(|e| fail(&e))?;
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| fail(&e))?;
            tokio::spawn(exporter);
            tracing::info!(%addr, "serving Prometheus metrics");
            handle
        }
        None => {
            let handle = builder.install_recorder().map_err(|e| fail(&e))?;
            // What the HTTP exporter does for itself: drain histograms now and then.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            handle
        }
    };
    let _ = HANDLE.set(handle);
    Ok(())
}

/// The metrics recorded so far in Prometheus' text format; `None` when nothing records
/// (see [`install`]).
pub fn render() -> Option<String> {
    HANDLE.get().map(|h| h.render())
}

/// The sum of every series of metric `name` in `rendered` (Prometheus text format): a
/// counter over all its labels, or a gauge. 0 when it has no series yet.
pub fn sum(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}

/// Counts every RPC by method and status code (`rpc_requests_total`) and times it to
/// its response headers (`rpc_duration_seconds`): a unary call's whole latency, a
/// stream's opening. The code is the `grpc-status` of a trailers-only answer (every
/// error we return) or OK. A path that is not a method of the system's contracts
/// (or health, reflection) counts as method "unknown", whatever it was answered, so no
/// caller can grow the label set.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // A label borrowed from the static set: no allocation per call.
        let method = known_method(req.uri().path()).unwrap_or("unknown");
        let start = Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await;
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32),
                Err(_) => Code::Unknown,
            };
            let labels = [("method", method), ("code", code_name(code))];
            metrics::counter!("rpc_requests_total", &labels).increment(1);
            metrics::histogram!("rpc_duration_seconds", &labels).record(start.elapsed().as_secs_f64());
            res
        })
    }
}

/// A status code's name as a label (as `Debug` spells it), without allocating.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// `/package.Service/Method` of a method in the descriptor sets the servers describe
/// (the system's contracts, health, reflection); None for any other path.
fn known_method(path: &str) -> Option<&'static str> {
    static KNOWN: std::sync::LazyLock<std::collections::HashSet<String>> = std::sync::LazyLock::new(|| {
        use prost::Message;
        let sets = [
            push_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut known = std::collections::HashSet::new();
        for bytes in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else { continue };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = service.name.unwrap_or_default();
                    for m in service.method {
                        known.insert(format!("/{package}.{name}/{}", m.name.unwrap_or_default()));
                    }
                }
            }
        }
        known
    });
    KNOWN.get(path).map(String::as_str)
}

/// Records one Redis command (or pipeline) that took `took`: `redis_commands_total`,
/// `redis_command_duration_seconds` and, when it failed, `redis_command_errors_total`,
/// by command name.
pub fn redis_command(command: &'static str, took: Duration, failed: bool) {
    let labels = [("command", command)];
    metrics::counter!("redis_commands_total", &labels).increment(1);
    metrics::histogram!("redis_command_duration_seconds", &labels).record(took.as_secs_f64());
    if failed {
        metrics::counter!("redis_command_errors_total", &labels).increment(1);
    }
}

/// A command's name as a label: one of a fixed set, so no argument can become one.
pub fn redis_command_name(first_arg: Option<&[u8]>) -> &'static str {
    const KNOWN: [&str; 30] = [
        "EVALSHA",
        "EVAL",
        "SCRIPT",
        "GET",
        "SET",
        "DEL",
        "EXISTS",
        "EXPIRE",
        "PEXPIRE",
        "HGET",
        "HSET",
        "HGETALL",
        "HMGET",
        "HDEL",
        "SADD",
        "SREM",
        "SMEMBERS",
        "SCARD",
        "ZADD",
        "ZREM",
        "ZRANGE",
        "ZCARD",
        "ZMSCORE",
        "ZSCORE",
        "XADD",
        "XRANGE",
        "XREVRANGE",
        "XREAD",
        "PUBLISH",
        "PING",
    ];
    let Some(arg) = first_arg else { return "other" };
    KNOWN.iter().find(|k| k.as_bytes().eq_ignore_ascii_case(arg)).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    #[test]
    fn sum_adds_every_series_of_one_metric_only() {
        let text = "# TYPE push_gateway_pushes_total counter\n\
                    push_gateway_pushes_total{kind=\"users\"} 3\n\
                    push_gateway_pushes_total{kind=\"all\"} 4\n\
                    push_gateway_pushes_total_other 100\n\
                    push_gateway_streams 2\n";
        assert_eq!(super::sum(text, "push_gateway_pushes_total"), 7.0);
        assert_eq!(super::sum(text, "push_gateway_streams"), 2.0);
        assert_eq!(super::sum(text, "push_gateway_deliveries_total"), 0.0);
    }

    #[test]
    fn only_methods_of_the_contracts_are_labels() {
        let known = |p: &str| super::known_method(p).is_some();
        assert!(known("/push.v1.PushGateway/PushToUsers"));
        assert!(known("/presence.v1.Presence/Heartbeat"));
        assert!(known("/grpc.health.v1.Health/Check"));
        assert!(known("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!known("/push.v1.PushGateway/Anything-1234"));
        assert!(!known("/x"));
        for n in 0..17 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(super::code_name(code), format!("{code:?}"));
        }
    }
}
