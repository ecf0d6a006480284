//! Subscribe: a device's stream, and the task that keeps it in step with the world.
//!
//! Opening a stream: the device gets a presence session (Login with the stream lease),
//! its queue is attached to the broadcast channel and its user's channel, and only
//! then to the user's groups, read after the user's channel is subscribed so that no
//! membership change can fall between the two. Then a driver task, one per stream:
//! - renews the presence session every third of the lease (logging in again if the
//!   lease was lost, e.g. Redis restarted without persistence);
//! - re-reads the user's groups whenever a membership change is announced on the
//!   user's channel, and attaches/detaches group channels to match, so join/leave
//!   takes effect on open streams;
//! - when the stream ends (the device left, or the queue overflowed), detaches every
//!   channel and ends the presence session.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use push_common::{Error, validate::Violations};
use push_proto::{
    presence::v1::{LoginRequest, LogoutRequest, presence_client::PresenceClient},
    push::v1::SubscribeRequest,
};
use tokio::sync::oneshot;
use tonic::{Code, Request, Status, transport::Channel};

use crate::{
    hub::Hub,
    queue::{DeviceStream, Limits, Queue},
    store::Store,
};

/// What every stream needs.
#[derive(Clone)]
pub struct Streams {
    pub hub: Hub,
    pub store: Store,
    pub presence: PresenceClient<Channel>,
    pub lease: Duration,
    pub limits: Limits,
}

/// The user and device a stream is for.
///
/// This is the one seam where device authentication plugs in: today the request names
/// its user and device and is taken on trust; with device credentials the user comes
/// from the verified token instead, and a request naming another user is refused.
fn device_identity(req: &Request<SubscribeRequest>) -> Result<(String, String), Error> {
    let r = req.get_ref();
    let mut v = Violations::new();
    v.id("user_id", &r.user_id);
    v.id("device_id", &r.device_id);
    v.check()?;
    Ok((r.user_id.clone(), r.device_id.clone()))
}

impl Streams {
    pub async fn open(&self, req: Request<SubscribeRequest>) -> Result<DeviceStream, Status> {
        let (user, device) = device_identity(&req)?;
        self.login(&user, &device).await?;
        let queue = Queue::new(self.limits);
        let keys = self.store.keys();
        let base = vec![keys.channel_all(), keys.channel_user(&user)];
        let opened = async {
            self.hub.attach(&queue, &base).await?;
            let groups: BTreeSet<String> = self.store.user_groups(&user).await?.into_iter().collect();
            self.hub.attach(&queue, &self.group_channels(&groups)).await?;
            Ok::<_, Error>(groups)
        };
        let groups = match opened.await {
            Ok(g) => g,
            Err(e) => {
                self.hub.detach(&queue, &base);
                self.logout(&user, &device).await;
                return Err(e.into());
            }
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let driver = Driver { streams: self.clone(), user, device, queue: queue.clone(), base, groups };
        tokio::spawn(driver.run(stop_rx));
        Ok(DeviceStream::new(queue, stop_tx))
    }

    fn group_channels<'a>(&self, groups: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        groups.into_iter().map(|g| self.store.keys().channel_group(g)).collect()
    }

    async fn login(&self, user: &str, device: &str) -> Result<(), Status> {
        let ttl = prost_types::Duration::try_from(self.lease).ok();
        let req = LoginRequest { user_id: user.to_owned(), session_id: device.to_owned(), ttl };
        self.presence.clone().login(req).await.map(drop)
    }

    async fn logout(&self, user: &str, device: &str) {
        let req = LogoutRequest { user_id: user.to_owned(), session_id: device.to_owned() };
        if let Err(e) = self.presence.clone().logout(req).await {
            // The lease ends by itself; the user shows offline after it at the latest.
            tracing::debug!(error = %e, user, device, "logout of a closed stream failed");
        }
    }
}

struct Driver {
    streams: Streams,
    user: String,
    device: String,
    queue: Arc<Queue>,
    base: Vec<String>,
    groups: BTreeSet<String>,
}

impl Driver {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let every = self.streams.lease / 3;
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = self.queue.membership_notified() => self.reconcile().await,
                _ = renew.tick() => self.renew().await,
            }
        }
        let mut all = self.base.clone();
        all.extend(self.streams.group_channels(&self.groups));
        self.streams.hub.detach(&self.queue, &all);
        self.streams.logout(&self.user, &self.device).await;
    }

    /// Makes the stream's group channels match the user's groups in Redis.
    async fn reconcile(&mut self) {
        let now: BTreeSet<String> = match self.streams.store.user_groups(&self.user).await {
            Ok(g) => g.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, user = self.user, "cannot read groups; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.queue.membership_changed();
                return;
            }
        };
        let left: Vec<_> = self.groups.difference(&now).collect();
        let joined: Vec<_> = now.difference(&self.groups).collect();
        self.streams.hub.detach(&self.queue, &self.streams.group_channels(left));
        if let Err(e) = self.streams.hub.attach(&self.queue, &self.streams.group_channels(joined)).await {
            tracing::warn!(error = %e, user = self.user, "cannot subscribe new groups; retrying");
            self.queue.membership_changed();
        }
        self.groups = now;
    }

    async fn renew(&self) {
        let ttl = prost_types::Duration::try_from(self.streams.lease).ok();
        let req = push_proto::presence::v1::HeartbeatRequest {
            user_id: self.user.clone(),
            session_id: self.device.clone(),
            ttl,
        };
        match self.streams.presence.clone().heartbeat(req).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {
                // The lease was lost (expired while presence was unreachable, or Redis
                // lost it): the device is still connected, so it is online again.
                if let Err(e) = self.streams.login(&self.user, &self.device).await {
                    tracing::warn!(error = %e, user = self.user, "cannot renew a stream's presence");
                }
            }
            Err(e) => tracing::warn!(error = %e, user = self.user, "cannot renew a stream's presence"),
        }
    }
}
