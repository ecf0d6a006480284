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

/// Probes every `interval` and reports SERVING while `probe` returns true, NOT_SERVING
/// otherwise (starting NOT_SERVING until the first probe passes). Runs until aborted.
pub fn spawn_watcher<P, F>(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    interval: Duration,
    mut probe: P,
) -> tokio::task::JoinHandle<()>
where
    P: FnMut() -> F + Send + 'static,
    F: Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        set_all(&reporter, &services, ServingStatus::NotServing).await;
        let mut last = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ok = probe().await;
            if last != Some(ok) {
                let status = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
                if ok {
                    tracing::info!(service = services.first(), "dependencies reachable: SERVING");
                } else {
                    tracing::warn!(service = services.first(), "a dependency is unreachable: NOT_SERVING");
                }
                set_all(&reporter, &services, status).await;
                last = Some(ok);
            }
        }
    })
}
