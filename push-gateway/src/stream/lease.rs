//! The presence session of a streaming device: a lease that the stream's login
//! creates, the renewal rounds extend, and the stream's end removes or hands on.
//!
//! A session has an owner, this replica's id and the stream's number, so a device that
//! moved to another stream (here or on another replica) is not logged out, or kept
//! alive, by its old one. The newest stream of a device owns its session.
use std::sync::Arc;

use push_proto::presence::v1::{HeartbeatRequest, LoginRequest, LogoutRequest, RenewSessionsRequest};
use tonic::{Code, Status};

use super::{Shared, Stream};
use crate::downstream::passthrough;

impl Shared {
    /// The owner of `s`'s presence session while it holds it.
    fn owner(&self, s: &Stream) -> String {
        format!("{}.{}", self.replica, s.serial)
    }

    async fn login_now(&self, s: &Stream) -> Result<(), Status> {
        let req = LoginRequest {
            user_id: s.user.to_string(),
            session_id: s.device.to_string(),
            ttl: prost_types::Duration::try_from(self.settings.lease).ok(),
            owner: self.owner(s),
        };
        self.presence.clone().login(req).await.map(drop).map_err(passthrough)
    }

    async fn logout_now(&self, s: &Stream) {
        let req = LogoutRequest { user_id: s.user.to_string(), session_id: s.device.to_string(), owner: self.owner(s) };
        if let Err(e) = self.presence.clone().logout(req).await {
            // The lease ends by itself; the user shows offline after it at the latest.
            tracing::debug!(error = %e, user = &*s.user, "logout of a closed stream failed");
        }
    }

    /// Renews the sessions of `streams` in one call to presence-svc (one pipelined round
    /// trip to Redis there), logging in again those whose lease was lost.
    pub(super) async fn renew(&self, streams: &[Arc<Stream>]) {
        let sessions = streams
            .iter()
            .map(|s| HeartbeatRequest {
                user_id: s.user.to_string(),
                session_id: s.device.to_string(),
                ttl: prost_types::Duration::try_from(self.settings.lease).ok(),
                owner: self.owner(s),
            })
            .collect();
        let renewals = match self.presence.clone().renew_sessions(RenewSessionsRequest { sessions }).await {
            Ok(r) => r.into_inner().renewals,
            Err(e) => {
                // The leases run on; the next round (a third of the lease later) retries.
                tracing::warn!(error = %e, streams = streams.len(), "cannot renew the streams' presence");
                return;
            }
        };
        for (s, r) in streams.iter().zip(renewals) {
            let result = match Code::from_i32(r.code) {
                Code::Ok => Ok(()),
                // The lease was lost (it expired while presence was unreachable, or Redis lost
                // it): the device is still connected, so it is online again.
                Code::NotFound => self.login_now(s).await,
                // The device opened a newer stream (maybe on another replica), which holds its
                // session now.
                Code::Aborted => Ok(()),
                code => Err(Status::new(code, r.message)),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, user = &*s.user, "cannot renew a stream's presence");
            }
        }
    }
}

/// Logs the device of a new stream in. The call runs in a task of its own, so a
/// Subscribe cancelled meanwhile cannot leave a session behind: if the stream was
/// closed (and its cleanup's logout sent) before the login finished, the task logs out
/// again once it has.
pub(super) async fn login(shared: &Arc<Shared>, s: &Arc<Stream>) -> Result<(), Status> {
    let (shared, s) = (shared.clone(), s.clone());
    let task = tokio::spawn(async move {
        let result = shared.login_now(&s).await;
        if result.is_ok() && s.is_closed() {
            shared.logout_now(&s).await;
        }
        result
    });
    task.await.map_err(|_| Status::internal("internal error"))?
}

/// A stream ended: its device's session ends, unless another stream of the device is
/// still open here, which then takes the session over (it is the device's newest, and
/// the closing one may have owned the session: without a takeover its renewals would be
/// refused and the device would flap offline while connected).
pub(super) fn handed_on(shared: &Arc<Shared>, closed: Arc<Stream>, survivor: Option<Arc<Stream>>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        match survivor {
            Some(s) => {
                if let Err(e) = shared.login_now(&s).await {
                    tracing::warn!(error = %e, user = &*s.user, "a stream cannot take its device's session over");
                }
            }
            None => shared.logout_now(&closed).await,
        }
    });
}
