//! Waiting on observations instead of sleeping: [`eventually`] for what must come true,
//! [`always`] for what must stay true, and health.
use std::{
    fmt::Debug,
    net::SocketAddr,
    time::{Duration, Instant},
};

use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// How often a check is polled.
const POLL: Duration = Duration::from_millis(10);

/// What a check answers: `true` once it holds, or `(holds, seen)`, whose `seen` is
/// printed when the wait fails (e.g. the channels that were subscribed instead).
pub trait Outcome {
    /// `Err` with what was seen (maybe empty) when the check does not hold.
    fn holds(self) -> Result<(), String>;
}

impl Outcome for bool {
    fn holds(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T: Debug> Outcome for (bool, T) {
    fn holds(self) -> Result<(), String> {
        if self.0 { Ok(()) } else { Err(format!("{:?}", self.1)) }
    }
}

fn failure(kind: &str, within: Duration, what: &str, seen: &str) -> String {
    match seen {
        "" => format!("{kind} {within:?}: {what}"),
        seen => format!("{kind} {within:?}: {what} (saw {seen})"),
    }
}

/// Polls `check` until it holds, for at most `within`; panics with `what` (and the
/// last thing seen) otherwise. The one deadline loop of the suites: a check may also
/// act each round (push a probe, then look for it).
pub async fn eventually<O: Outcome>(within: Duration, what: &str, mut check: impl AsyncFnMut() -> O) {
    let deadline = Instant::now() + within;
    loop {
        let Err(seen) = check().await.holds() else { return };
        if Instant::now() >= deadline {
            panic!("{}", failure("not within", within, what, &seen));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` for the whole of `window`; panics with `what` the first time it does
/// not hold. A "still true" check passes whether or not anything happened, so follow it
/// with a positive control: an [`eventually`] on the same observation after a change
/// that must move it, which shows the observation reacts.
pub async fn always<O: Outcome>(window: Duration, what: &str, mut check: impl AsyncFnMut() -> O) {
    let end = Instant::now() + window;
    loop {
        if let Err(seen) = check().await.holds() {
            panic!("{}", failure("broken within", window, what, &seen));
        }
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The health of `service` at `addr` (None when the call itself fails).
pub async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let conn = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.ok()?;
    health_on(conn, service).await
}

/// Like [`health`], on a given channel (e.g. a TLS one).
pub async fn health_on(channel: Channel, service: &str) -> Option<ServingStatus> {
    let r = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await.ok()?;
    ServingStatus::try_from(r.get_ref().status).ok()
}

/// Waits (up to 15 s) until `service` at `addr` reports `want`; panics otherwise.
pub async fn wait_health(addr: SocketAddr, service: &str, want: ServingStatus) {
    let what = format!("{addr} {service:?} reports {want:?}");
    eventually(Duration::from_secs(15), &what, async || {
        let got = health(addr, service).await;
        (got == Some(want), got)
    })
    .await;
}
