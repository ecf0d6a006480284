//! Opening a stream: where a gateway is ([`Gateway`]), the token to open it with, and
//! the Subscribe call, each within its timeout. Separate from the event loop, which only
//! starts an attempt ([`opening`]) and awaits its outcome ([`Attempt`]).

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use push_proto::push::v1::SubscribeRequest;
use tonic::{
    Status,
    transport::{Channel, Endpoint},
};

use super::{Shared, lock};
use crate::{
    Error,
    history::History,
    subscription::Subscription,
    token::{BoxError, Token},
};

/// Where a gateway is: a URL, a configured [`Endpoint`] (TLS, window sizes...), or a
/// [`Channel`] you already have (shared by many clients).
///
/// For a URL or an endpoint each attempt opens a connection of its own, so a device
/// whose replica went away is not stuck on a dead connection, and a load balancer in
/// front of the replicas gets to pick again. A channel is used as it is. A URL is plain
/// `http://`, or `https://` with the roots of whichever `tls-*-roots` feature of tonic
/// the app enables (or give an [`Endpoint`] with its own `tls_config`). A URL gets
/// TCP_NODELAY, a 5 s connect timeout and HTTP/2 keep-alive pings every 30 s (10 s to
/// answer), so a silently dead connection is noticed; an endpoint is used as
/// configured (set the same on it).
#[derive(Clone, Debug)]
pub enum Gateway {
    Url(String),
    /// Boxed: an endpoint is large, and gateways are moved around only when building.
    Endpoint(Box<Endpoint>),
    Channel(Channel),
}

impl From<&str> for Gateway {
    fn from(url: &str) -> Self {
        Gateway::Url(url.to_owned())
    }
}

impl From<String> for Gateway {
    fn from(url: String) -> Self {
        Gateway::Url(url)
    }
}

impl From<Endpoint> for Gateway {
    fn from(e: Endpoint) -> Self {
        Gateway::Endpoint(Box::new(e))
    }
}

impl From<Channel> for Gateway {
    fn from(c: Channel) -> Self {
        Gateway::Channel(c)
    }
}

/// A gateway ready to connect to.
pub(super) enum Target {
    Endpoint(Box<Endpoint>),
    Channel(Channel),
}

impl Target {
    pub(super) fn resolve(g: Gateway) -> Result<Target, Error> {
        Ok(match g {
            Gateway::Url(url) => match Endpoint::from_shared(url.clone()) {
                Ok(e) => Target::Endpoint(Box::new(
                    e.connect_timeout(Duration::from_secs(5))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_timeout(Duration::from_secs(10)),
                )),
                Err(source) => return Err(Error::BadUrl { url, source }),
            },
            Gateway::Endpoint(e) => Target::Endpoint(e),
            Gateway::Channel(c) => Target::Channel(c),
        })
    }

    async fn channel(&self) -> Result<Channel, Status> {
        match self {
            Target::Endpoint(e) => e
                .connect()
                .await
                .map_err(|err| Status::unavailable(format!("cannot connect to {}: {}", e.uri(), error_chain(&err)))),
            Target::Channel(c) => Ok(c.clone()),
        }
    }
}

/// An error and its causes, on one line ("transport error: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A stream being opened: a fresh token first when needed, then a connection, then
/// Subscribe with the cursors of that moment.
pub(super) type Opening = Pin<Box<dyn Future<Output = Attempt> + Send>>;

pub(super) struct Attempt {
    /// The token it used (fetched or not), kept whatever the outcome so that a retry
    /// does not ask the token source again.
    pub(super) token: Option<Token>,
    pub(super) outcome: Result<Opened, Failure>,
}

/// A stream that opened: the gateway answered with its headers.
pub(super) struct Opened {
    pub(super) sub: Subscription,
    pub(super) channel: Channel,
    /// The histories it was given cursors for: each gets a state first.
    pub(super) histories: Vec<History>,
}

pub(super) enum Failure {
    Status(Status),
    /// The token source failed (or did not answer in time).
    Token(BoxError),
    /// A refresh got the token in use back: there is nothing to refresh to.
    SameToken,
}

pub(super) fn failure_status(f: Failure) -> Status {
    match f {
        Failure::Status(s) => s,
        Failure::Token(e) => Status::unavailable(format!("the token source failed: {}", error_chain(&*e))),
        Failure::SameToken => Status::unauthenticated("the token source returned the token in use"),
    }
}

/// Opens a stream on `gateway` (on `channel` when given), with the token in use or a
/// fresh one (`fetch`). With `refresh`, a fresh token equal to the one in use ends it
/// early: opening a stream with it would change nothing. The token source has
/// `token_timeout` to answer, and the stream `open_timeout` to open (connection and
/// response headers); past either, the attempt fails as UNAVAILABLE.
pub(super) fn opening(
    shared: &Arc<Shared>,
    gateway: usize,
    channel: Option<Channel>,
    current: Option<Token>,
    fetch: bool,
    refresh: bool,
) -> Opening {
    let shared = shared.clone();
    Box::pin(async move {
        let mut token = current.clone();
        if let (true, Some(source)) = (fetch, shared.config.source.as_ref()) {
            match shared.config.fetch_token(&**source).await {
                Ok(t) if refresh && current.as_ref().is_some_and(|c| *c.value == *t) => {
                    return Attempt { token: current, outcome: Err(Failure::SameToken) };
                }
                Ok(t) => {
                    let after_refusal = !refresh && current.as_ref().is_some_and(|c| c.refused);
                    token = Some(Token::new(t, after_refusal));
                }
                Err(e) => return Attempt { token: current, outcome: Err(Failure::Token(e)) },
            }
        }
        let timeout = shared.config.open_timeout;
        let outcome = match tokio::time::timeout(timeout, open(&shared, gateway, channel, token.as_ref())).await {
            Ok(opened) => opened.map_err(Failure::Status),
            Err(_) => Err(Failure::Status(Status::unavailable(format!(
                "the gateway did not open the stream within {timeout:?}"
            )))),
        };
        Attempt { token, outcome }
    })
}

async fn open(
    shared: &Shared,
    gateway: usize,
    channel: Option<Channel>,
    token: Option<&Token>,
) -> Result<Opened, Status> {
    let channel = match channel {
        Some(c) => c,
        None => shared.config.targets[gateway].channel().await?,
    };
    let config = &shared.config;
    // The cursors of this moment: everything handed out so far (nothing is buffered
    // while a stream opens, except during a refresh, whose overlap is deduplicated).
    let cursors = lock(&shared.cursors).cursors();
    let histories = cursors.iter().filter_map(History::of_cursor).collect();
    let request = SubscribeRequest {
        user_id: config.user.clone(),
        device_id: config.device.clone(),
        cursors,
        strict_resume: config.strict,
    };
    let sub = Subscription::open(channel.clone(), token.map(|t| &*t.value), request).await?;
    Ok(Opened { sub, channel, histories })
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::client::{Client, Event};

    /// A token source that fails is retried like a gateway that does.
    #[tokio::test]
    async fn a_failing_token_source_is_retried() {
        let (_client, mut events) = Client::builder(["http://127.0.0.1:1"])
            .device("d")
            .token_source(|| async { Err::<String, _>("auth service down") })
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .connect()
            .unwrap();
        for _ in 0..2 {
            match events.recv().await {
                Some(Event::Disconnected { status, .. }) => {
                    assert_eq!(status.code(), Code::Unavailable);
                    assert!(status.message().contains("auth service down"), "{status:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A token source that never answers is given up on after the token timeout, as
    /// UNAVAILABLE, and asked again after a backoff: the client does not hang.
    #[tokio::test(start_paused = true)]
    async fn a_token_source_that_never_answers_times_out() {
        let (_client, mut events) = Client::builder(["http://127.0.0.1:1"])
            .device("d")
            .token_source(std::future::pending::<Result<String, BoxError>>)
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .connect()
            .unwrap();
        for _ in 0..2 {
            let event = tokio::time::timeout(Duration::from_secs(3600), events.recv()).await;
            match event.expect("an event, not a hang") {
                Some(Event::Disconnected { status, .. }) => {
                    assert_eq!(status.code(), Code::Unavailable);
                    assert!(status.message().contains("token source"), "{status:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A gateway that takes the connection and never answers is given up on after the
    /// open timeout, as UNAVAILABLE, and the client moves on: it does not hang.
    #[tokio::test]
    async fn a_gateway_that_never_answers_times_out() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let (_client, mut events) = Client::builder([format!("http://{addr}")])
            .device("d")
            .open_timeout(Duration::from_millis(200))
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .connect()
            .unwrap();
        for _ in 0..2 {
            let event = tokio::time::timeout(Duration::from_secs(60), events.recv()).await;
            match event.expect("an event, not a hang") {
                Some(Event::Disconnected { status, .. }) => {
                    assert_eq!(status.code(), Code::Unavailable);
                    assert!(status.message().contains("did not open the stream"), "{status:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        held.abort();
    }
}
