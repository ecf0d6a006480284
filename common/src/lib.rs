//! Plumbing shared by every service of the push system.
//!
//! Layout:
//! - [`memory`]: the process setting the binaries' allocator (mimalloc) needs.
//! - [`auth`]: bearer credentials: the internal token, the `Authorize` policy trait and
//!   the tower wrapper that enforces it, and the client interceptor that sends them.
//! - [`ids`]: user, group, device ids and idempotency keys, parsed once at the edge.
//! - [`keys`]: the Redis key schema; every key is built there and nowhere else, from
//!   parsed ids only.
//! - [`config`]: command-line/env argument groups that several binaries flatten in.
//! - [`redis`]: the pooled Redis connections and their health probe.
//! - [`validate`]: id, length and batch checks that collect `google.rpc.BadRequest` violations.
//! - [`error`]: the one error type of the stores and its one mapping to `tonic::Status`.
//! - [`health`]: a watcher that turns `grpc.health.v1` SERVING / NOT_SERVING.
//! - [`server`]: reflection (v1 and v1alpha) and the per-RPC tracing span.
//! - [`telemetry`]: tracing subscriber set-up (`RUST_LOG`, `LOG_FORMAT`).
//! - [`metrics`]: the Prometheus exporter, the per-RPC and per-Redis-command metrics.
//! - [`shutdown`]: SIGTERM / SIGINT as a future.
//! - [`size_limit`]: RESOURCE_EXHAUSTED (not tonic's OUT_OF_RANGE) for oversized requests.
//! - [`token`]: hex encoding of opaque page tokens.
//! - [`tls`]: serving TLS with certificates that reload from their files.
//! - [`web`]: gRPC-Web for browsers, behind CORS.
//! - [`time`]: conversions between Redis millisecond clocks and protobuf types.

pub mod auth;
pub mod config;
pub mod error;
pub mod health;
pub mod ids;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod redis;
pub mod server;
pub mod shutdown;
pub mod size_limit;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod token;
pub mod validate;
pub mod web;

pub use error::Error;

/// The error a server's `serve` ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
