//! The presence session of a streaming device: the stream's login makes this replica
//! its holder, the replica's lease keeps it alive, and the stream's end removes it or
//! hands it on.
//!
//! A session has an owner, this replica's id and the stream's number, so a device that
//! moved to another stream (here or on another replica) is not logged out, or kept
//! alive, by its old one. The newest stream of a device owns its session.
//!
//! Renewal costs Redis a few commands per bucket per round, not per stream: the replica
//! renews one lease (`RenewHolder`), which keeps every session it holds alive; if the
//! replica dies, its lease ends unrenewed and presence-svc's sweep ends its sessions.
//! The lease's answer says how many sessions Redis has this replica holding; when that
//! is fewer than it has streams for (a failover lost a login, a backend logged a device
//! out), the round renews each stream's session on its own, logging in again those that
//! were lost, as every round did before holders existed.
use std::{collections::HashSet, sync::Arc};

use futures_util::StreamExt as _;

use push_proto::presence::v1::{
    HeartbeatRequest, LoginRequest, LogoutRequest, RenewHolderRequest, RenewSessionsRequest,
};
use tonic::{Code, Status};

use super::{Shared, Stream};
use crate::downstream::passthrough;

/// Failed logouts kept for retrying, at most; and retried at once.
const MAX_RETRIED_LOGOUTS: usize = 100_000;
const LOGOUT_CONCURRENCY: usize = 16;

impl Shared {
    /// The owner of `s`'s presence session while it holds it.
    fn owner(&self, s: &Stream) -> String {
        format!("{}.{}", self.replica, s.serial)
    }

    fn lease(&self) -> Option<prost_types::Duration> {
        prost_types::Duration::try_from(self.settings.lease).ok()
    }

    async fn login_now(&self, s: &Stream) -> Result<(), Status> {
        let req = LoginRequest {
            user_id: s.user.to_string(),
            session_id: s.device.to_string(),
            ttl: self.lease(),
            owner: self.owner(s),
            holder: self.replica.clone(),
        };
        self.presence.clone().login(req).await.map_err(passthrough)?;
        s.set_holding(true);
        Ok(())
    }

    async fn logout_now(&self, s: &Stream) {
        let req = LogoutRequest {
            user_id: s.user.to_string(),
            session_id: s.device.to_string(),
            owner: self.owner(s),
            holder: self.replica.clone(),
        };
        self.logout_or_retry(req).await;
    }

    /// Sends `req`; when it fails, keeps it for the next round (at most
    /// [`MAX_RETRIED_LOGOUTS`]): a held session has no lease of its own that would end it.
    async fn logout_or_retry(&self, req: LogoutRequest) {
        if let Err(e) = self.presence.clone().logout(req.clone()).await {
            tracing::debug!(error = %e, user = req.user_id, "logout of a closed stream failed; retried next round");
            let mut logouts = self.logouts.lock().unwrap_or_else(|e| e.into_inner());
            if logouts.len() < MAX_RETRIED_LOGOUTS {
                logouts.push(req);
            } else {
                // The session stays held until this replica's lease ends (its restart).
                tracing::warn!(user = req.user_id, "too many failed logouts kept; this one is dropped");
            }
        }
    }

    /// Retries the logouts that failed, [`LOGOUT_CONCURRENCY`] at a time.
    async fn retry_logouts(&self) {
        let failed = std::mem::take(&mut *self.logouts.lock().unwrap_or_else(|e| e.into_inner()));
        futures_util::stream::iter(failed)
            .map(|req| self.logout_or_retry(req))
            .buffer_unordered(LOGOUT_CONCURRENCY)
            .collect::<()>()
            .await;
    }

    /// Renews this replica's holder lease, then retries the logouts that failed, and
    /// returns the streams whose sessions need renewing on their own (see the module's
    /// doc). The lease comes first: a slow retry must not let it lapse.
    pub(super) async fn renew_held(&self, streams: &[Arc<Stream>]) -> Vec<Arc<Stream>> {
        let req = RenewHolderRequest { holder: self.replica.clone(), ttl: self.lease() };
        let renewed = self.presence.clone().renew_holder(req).await;
        self.retry_logouts().await;
        let held = match renewed {
            Ok(r) => r.into_inner().sessions_held,
            Err(e) => {
                // The lease runs on; the next round (a third of the lease later) retries.
                tracing::warn!(error = %e, streams = streams.len(), "cannot renew this replica's presence lease");
                return Vec::new();
            }
        };
        let holding: HashSet<_> = streams.iter().filter(|s| s.is_holding()).map(|s| (&s.user, &s.device)).collect();
        if held < holding.len() as i64 {
            tracing::info!(held, expected = holding.len(), "Redis lost sessions this replica holds; renewing each");
            return streams.to_vec();
        }
        // A stream whose session another owner took over renews on its own, as a standby.
        streams.iter().filter(|s| !s.is_holding()).cloned().collect()
    }

    /// Renews the sessions of `streams` one by one in one call to presence-svc (one
    /// pipelined round trip to Redis there), logging in again those whose lease was lost.
    pub(super) async fn renew(&self, streams: &[Arc<Stream>]) {
        let sessions = streams
            .iter()
            .map(|s| HeartbeatRequest {
                user_id: s.user.to_string(),
                session_id: s.device.to_string(),
                ttl: self.lease(),
                owner: self.owner(s),
                holder: self.replica.clone(),
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
                // Held by this replica again, if it was not (handed back, or a backend's
                // login had given it a lease of its own).
                Code::Ok => {
                    s.set_holding(true);
                    Ok(())
                }
                // The lease was lost (it expired while presence was unreachable, or Redis lost
                // it): the device is still connected, so it is online again.
                Code::NotFound => self.login_now(s).await,
                // The device opened a newer stream (maybe on another replica), or a backend
                // logged it in, which holds its session now: this one stands by.
                Code::Aborted => {
                    s.set_holding(false);
                    Ok(())
                }
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
                    // The closed stream may still own the session: end it, so the next
                    // round finds the survivor's session missing and logs it in again.
                    tracing::warn!(error = %e, user = &*s.user, "a stream cannot take its device's session over");
                    shared.logout_now(&closed).await;
                }
            }
            None => shared.logout_now(&closed).await,
        }
    });
}
