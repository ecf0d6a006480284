//! End-to-end test harness: a real `redis-server` per test, and the real services
//! in-process on `127.0.0.1:0`. Set `TEST_LOG=1` to see the services' logs.
//!
//! # Layout
//!
//! - `redis`: [`RedisServer`], a `redis-server` of one test on a unix socket in a fresh
//!   temp dir: stop, restart on the same socket, freeze; killed on drop.
//! - `app`: [`App`], a whole system on one Redis: `App::start()`, or `App::builder()`
//!   with flags per service and a given Redis; `app.replica(&flags)` (optionally
//!   `.via(url)`) adds a gateway replica.
//! - [`services`]: one service at a time ([`Running`]), for tests that wire the system
//!   themselves, and [`GatewayProcess`], a replica in a process of its own to SIGKILL.
//! - `device`: [`Device`], a device's open `Subscribe` stream read in the background:
//!   `Device::connect(addr, user, device)`, or `Device::options()` for cursors and a
//!   bearer; a shared or TLS channel goes where the address would.
//! - `proxy`: [`Proxy`], a TCP proxy in front of Redis that can silence Pub/Sub.
//! - `client`: channels (plain and TLS) and gateway clients, with or without a bearer.
//! - `wait`: [`eventually`] (the suites' one deadline loop), [`always`] (a "still true"
//!   check, to be followed by a positive control), health and [`wait_health`].
//! - [`credentials`]: API keys, device-token keys and the internal token, and
//!   [`secure_app`], a system that authenticates.
//! - [`fixtures`]: what several suites share: requests, status assertions, lookups,
//!   fixture files.
mod app;
mod client;
pub mod credentials;
mod device;
pub mod fixtures;
mod proxy;
mod redis;
pub mod sentinel;
pub mod services;
mod wait;

pub use app::{App, AppBuilder, Replica};
pub use client::{
    AuthorizedClient, GatewayClient, SendBearer, authorized, authorized_on, channel, gateway_client, tls_channel,
};
pub use credentials::secure_app;
pub use device::{Device, DeviceOptions, Received, Target};
pub use proxy::Proxy;
pub use redis::{Node, RedisServer, on_cluster};
pub use services::{GatewayProcess, Running};
pub use wait::{Outcome, always, eventually, health, health_on, wait_health};
