//! [`Builder`]: how a client is configured and built ([`Client::builder`] →
//! [`Builder::connect`]). Separate from the event loop: nothing here runs after `connect`.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use push_proto::push::v1::Cursor;
use tokio::sync::watch;

#[cfg(doc)]
use super::Event; // linked to from the docs only
use super::{Client, Config, Events, Gateway, Phase, Shared, open::Target};
use crate::{
    Error,
    backoff::Backoff,
    cursors::Cursors,
    token::{Fixed, MIN_REFRESH, TokenSource},
};

/// How to connect: see [`Client::builder`].
pub struct Builder {
    gateways: Vec<Gateway>,
    user: String,
    device: String,
    source: Option<Arc<dyn TokenSource>>,
    cursors: Vec<Cursor>,
    strict: bool,
    backoff: (Duration, Duration),
    token_timeout: Duration,
    open_timeout: Duration,
}

impl Builder {
    /// The user. With a device token it may be left unset (the token's user); it must
    /// not name another. An API key that may subscribe for anyone needs it.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// The device (required): its presence session and the owner of its acks.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// Where fresh device tokens come from: called before the first attempt, again
    /// ahead of each token's expiry (from its `exp` and `iat`, read from the JWT), and
    /// after the gateway refused one.
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// One token for good (an API key, or a device token the app replaces by building
    /// a new client). Without this or a token source, no credential is sent.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.source = Some(Arc::new(Fixed(token.into().into())));
        self
    }

    /// Positions saved from an earlier run ([`Client::cursors`]); histories without one
    /// start from the device's acknowledged position, or from now.
    pub fn cursors(mut self, saved: impl IntoIterator<Item = Cursor>) -> Self {
        self.cursors = saved.into_iter().collect();
        self
    }

    /// Stop with [`Event::Stopped`] naming the history (`resync`) instead of resuming
    /// after a gap: for apps that must resync before they show anything newer.
    pub fn strict_resume(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The waits between attempts: the n-th is random in `[0, min(max, initial × 2ⁿ)]`,
    /// and starts over after a stream that stayed up at least `max`. Default 500 ms, 30 s.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// How long the token source may take to answer (default 30 s). One that does not
    /// answer in time counts as UNAVAILABLE: the client backs off and asks again.
    pub fn token_timeout(mut self, timeout: Duration) -> Self {
        self.token_timeout = timeout;
        self
    }

    /// How long opening a stream may take, from connecting until the gateway's
    /// response headers (default 15 s). A gateway that does not answer in time counts
    /// as UNAVAILABLE: the client backs off and tries the next one.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// The client and its events. Nothing is sent until [`Events::recv`] is awaited.
    pub fn connect(self) -> Result<(Client, Events), Error> {
        if self.gateways.is_empty() {
            return Err(Error::NoGateway);
        }
        if self.device.is_empty() {
            return Err(Error::NoDevice);
        }
        let targets = self.gateways.into_iter().map(Target::resolve).collect::<Result<Vec<_>, _>>()?;
        let cursors = Cursors::from_saved(self.cursors)?;
        let (closed, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: Config {
                targets,
                user: self.user,
                device: self.device,
                strict: self.strict,
                source: self.source,
                token_timeout: self.token_timeout,
                open_timeout: self.open_timeout,
            },
            cursors: Mutex::new(cursors),
            handed: Mutex::new(Cursors::new()),
            conn: Mutex::new(None),
            acked: tokio::sync::Mutex::new(Cursors::new()),
            closed,
        });
        let (initial, max) = self.backoff;
        let events = Events {
            shared: shared.clone(),
            closed: closed_rx,
            phase: Phase::Start,
            states: Vec::new().into_iter(),
            messages: Vec::new().into_iter(),
            queued: VecDeque::new(),
            backoff: Backoff::new(initial, max),
            token_backoff: Backoff::new(MIN_REFRESH, max.max(MIN_REFRESH)),
            rng: fastrand::Rng::new(),
            next_gateway: 0,
            token: None,
            gaps: BTreeMap::new(),
        };
        Ok((Client { shared }, events))
    }
}

impl Client {
    /// A client of `gateways` (one or more; it starts with the first and moves to the
    /// next at each reconnect). Then `.device(..)`, a token, and `.connect()`.
    pub fn builder<G: Into<Gateway>>(gateways: impl IntoIterator<Item = G>) -> Builder {
        Builder {
            gateways: gateways.into_iter().map(Into::into).collect(),
            user: String::new(),
            device: String::new(),
            source: None,
            cursors: Vec::new(),
            strict: false,
            backoff: (Duration::from_millis(500), Duration::from_secs(30)),
            token_timeout: Duration::from_secs(30),
            open_timeout: Duration::from_secs(15),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_needs_a_gateway_a_device_and_valid_urls_and_cursors() {
        assert!(matches!(Client::builder(Vec::<String>::new()).device("d").connect(), Err(Error::NoGateway)));
        assert!(matches!(Client::builder(["http://127.0.0.1:1"]).connect(), Err(Error::NoDevice)));
        assert!(matches!(Client::builder(["not a url"]).device("d").connect(), Err(Error::BadUrl { .. })));
        let bad = Cursor { audience: 0, ..Default::default() };
        assert!(matches!(
            Client::builder(["http://127.0.0.1:1"]).device("d").cursors([bad]).connect(),
            Err(Error::BadCursor(_))
        ));
    }
}
