//! A whole system on one Redis: presence-svc, profile-svc and push-gateway.
use std::{future::IntoFuture, pin::Pin};

use push_proto::{presence::v1::presence_client::PresenceClient, profile::v1::profile_client::ProfileClient};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    RedisServer,
    client::{GatewayClient, channel, gateway_client},
    credentials::Credentials,
    services::{self, Running},
    wait::wait_health,
};

/// A whole system on one fresh Redis. Each service stops when the `App` drops.
///
/// `App::start()` runs every service with the harness's defaults; `App::builder()`
/// takes flags per service and a prepared [`RedisServer`]; `app.replica(..)` adds
/// gateway replicas.
pub struct App {
    pub redis: RedisServer,
    pub presence: Running,
    pub profile: Running,
    pub gateway: Running,
}

impl App {
    /// Starts everything with default flags on a fresh Redis; returns once all
    /// services are SERVING.
    pub async fn start() -> App {
        Self::builder().start().await
    }

    /// A system with flags of its own, e.g.
    /// `App::builder().presence(&["--min-ttl", "50ms"]).gateway(&["--stream-lease", "600ms"]).start()`.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// Another gateway replica on the same internal services, SERVING when awaited:
    /// `app.replica(&flags).await`, or through another way to Redis (e.g. a
    /// [`crate::Proxy`]) with `app.replica(&flags).via(&proxy.url()).await`.
    pub fn replica(&self, flags: &[&str]) -> Replica<'_> {
        Replica { app: self, flags: owned(flags), redis_url: self.redis.url() }
    }

    pub async fn gateway_client(&self) -> GatewayClient {
        gateway_client(self.gateway.addr).await
    }

    pub async fn presence_client(&self) -> PresenceClient<Channel> {
        PresenceClient::new(channel(self.presence.addr).await)
    }

    pub async fn profile_client(&self) -> ProfileClient<Channel> {
        ProfileClient::new(channel(self.profile.addr).await)
    }
}

/// How to start an [`App`]: each call adds flags for one service.
#[derive(Default)]
pub struct AppBuilder {
    redis: Option<RedisServer>,
    presence: Vec<String>,
    profile: Vec<String>,
    gateway: Vec<String>,
}

impl AppBuilder {
    /// Runs on `server` (started with flags of its own, or served over TLS) instead of
    /// a fresh default one.
    pub fn redis(mut self, server: RedisServer) -> Self {
        self.redis = Some(server);
        self
    }

    /// More presence-svc flags (e.g. short TTLs for expiry tests).
    pub fn presence(mut self, flags: &[&str]) -> Self {
        self.presence.extend(owned(flags));
        self
    }

    /// More profile-svc flags.
    pub fn profile(mut self, flags: &[&str]) -> Self {
        self.profile.extend(owned(flags));
        self
    }

    /// More push-gateway flags.
    pub fn gateway(mut self, flags: &[&str]) -> Self {
        self.gateway.extend(owned(flags));
        self
    }

    /// Authenticates everywhere with `creds`: the internal services accept only the
    /// gateway's internal token, the gateway only API keys and device tokens.
    pub fn credentials(self, creds: &Credentials) -> Self {
        let internal = creds.internal_flags();
        self.presence(&internal).profile(&internal).gateway(&creds.gateway_flags())
    }

    /// Starts everything; returns once every service is SERVING (each has reached
    /// Redis: on Sentinel or Cluster each finds the master or the slots on its own).
    pub async fn start(self) -> App {
        let redis = self.redis.unwrap_or_else(RedisServer::start);
        let presence = services::presence(&redis.url(), &borrowed(&self.presence)).await;
        let profile = services::profile(&redis.url(), &borrowed(&self.profile)).await;
        let gateway = services::gateway(&redis.url(), &presence.url(), &profile.url(), &borrowed(&self.gateway)).await;
        for addr in [presence.addr, profile.addr, gateway.addr] {
            wait_health(addr, "", ServingStatus::Serving).await;
        }
        App { redis, presence, profile, gateway }
    }
}

/// A gateway replica to start: await it (see [`App::replica`]).
pub struct Replica<'a> {
    app: &'a App,
    flags: Vec<String>,
    redis_url: String,
}

impl Replica<'_> {
    /// Reaches Redis at `redis_url` instead of the app's own URL.
    pub fn via(mut self, redis_url: &str) -> Self {
        self.redis_url = redis_url.to_owned();
        self
    }
}

impl<'a> IntoFuture for Replica<'a> {
    type Output = Running;
    // Not `Send`: waits built on `eventually` (an `AsyncFnMut`) are not, for now.
    type IntoFuture = Pin<Box<dyn Future<Output = Running> + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (presence, profile) = (self.app.presence.url(), self.app.profile.url());
            let g = services::gateway(&self.redis_url, &presence, &profile, &borrowed(&self.flags)).await;
            wait_health(g.addr, "", ServingStatus::Serving).await;
            g
        })
    }
}

fn owned(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|f| f.to_string()).collect()
}

fn borrowed(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}
