//! `grpc.health.v1` driven by a probe of the server's dependencies.
use std::{future::Future, time::Duration};

pub use tonic_health::{
    ServingStatus,
    server::{HealthReporter, health_reporter},
};

/// Sets `status` for the overall server ("") and for each named service.
pub async fn set_all(reporter: &HealthReporter, services: &[&str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for s in services {
        reporter.set_service_status(*s, status).await;
    }
}

/// What a probe found: `true` / `Ok(())` when every dependency answered; `false`, or
/// `Err(why)` naming the dependency that did not (e.g. "Redis at 10.0.0.5:6379 did not
/// answer PING within 1s"), so the operator reading the warning knows where to look.
pub trait Probed {
    /// None when every dependency answered, else which one did not and why.
    fn unreachable(self) -> Option<String>;
}

impl Probed for bool {
    fn unreachable(self) -> Option<String> {
        (!self).then(|| "a dependency is unreachable".to_owned())
    }
}

impl Probed for Result<(), String> {
    fn unreachable(self) -> Option<String> {
        self.err()
    }
}

/// What a probe says of a Redis that did not answer PING within `timeout`: its address
/// (host:port or socket path), never the URL, which may carry a password.
pub fn redis_unreachable(url: &str, timeout: Duration) -> String {
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(info) => format!("Redis at {} did not answer PING within {timeout:?}", info.addr()),
        Err(_) => format!("Redis (--redis-url) did not answer PING within {timeout:?}"),
    }
}

/// Probes every `interval` and reports SERVING while `probe` finds every dependency,
/// NOT_SERVING otherwise (starting NOT_SERVING until the first probe passes), logging
/// each change, with the dependency that is unreachable. Runs until aborted.
pub fn spawn_watcher<P, F>(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    interval: Duration,
    mut probe: P,
) -> tokio::task::JoinHandle<()>
where
    P: FnMut() -> F + Send + 'static,
    F: Future + Send,
    F::Output: Probed,
{
    tokio::spawn(async move {
        set_all(&reporter, &services, ServingStatus::NotServing).await;
        // None before the first probe; then what the last probe found.
        let mut last: Option<Option<String>> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let found = probe().await.unreachable();
            if last.as_ref() != Some(&found) {
                match &found {
                    None => tracing::info!(service = services.first(), "dependencies reachable: SERVING"),
                    Some(why) => tracing::warn!(service = services.first(), "{why}: NOT_SERVING"),
                }
                // Only a change between reachable and not changes the status.
                if last.as_ref().is_none_or(|l| l.is_none() != found.is_none()) {
                    let status = if found.is_none() { ServingStatus::Serving } else { ServingStatus::NotServing };
                    set_all(&reporter, &services, status).await;
                }
                last = Some(found);
            }
        }
    })
}
