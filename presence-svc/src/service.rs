//! `presence.v1.Presence`: validate → store → convert.
use std::time::Duration;

use push_common::{
    Error,
    ids::{DeviceId, UserId},
    time::{ms_to_timestamp, proto_duration},
    validate::Violations,
};
use push_proto::presence::v1::{self as pb, presence_server::Presence};
use tonic::{Request, Response, Status};

use crate::{
    config::Config,
    store::{Event, Store, Touch, TouchOutcome, Touched},
    token::PageToken,
    watch::Watchers,
};

/// Default and maximum page sizes of ListOnlineUsers (AIP-158: larger asks are coerced).
const DEFAULT_PAGE: usize = 100;

/// The Presence service.
#[derive(Clone)]
pub struct PresenceService {
    store: Store,
    config: Config,
    watchers: Watchers,
}

impl PresenceService {
    pub fn new(store: Store, config: Config, watchers: Watchers) -> Self {
        Self { store, config, watchers }
    }

    /// The lease asked for, or the default; out of bounds is a violation.
    fn ttl(&self, v: &mut Violations, ttl: Option<&prost_types::Duration>) -> Duration {
        let Some(d) = ttl else {
            return self.config.default_ttl;
        };
        match proto_duration(d) {
            Some(d) if d >= self.config.min_ttl && d <= self.config.max_ttl => d,
            _ => {
                let (min, max) = (self.config.min_ttl, self.config.max_ttl);
                v.add("ttl", format!("must be between {min:?} and {max:?}"));
                self.config.default_ttl
            }
        }
    }

    /// Login (`login`) or Heartbeat of one session.
    async fn touch(
        &self,
        user: &str,
        session: &str,
        ttl: Option<&prost_types::Duration>,
        login: bool,
        owner: &str,
        holder: &str,
    ) -> Result<(pb::Session, Touched), Error> {
        let (user_id, session_id, touch) = self.check_touch(user, session, ttl, login, owner, holder)?;
        let outcome = self.store.touch(&user_id, &session_id, touch).await?;
        settled(user, session, outcome)
    }

    /// Checks a login or heartbeat.
    fn check_touch<'a>(
        &self,
        user: &str,
        session: &str,
        ttl: Option<&prost_types::Duration>,
        login: bool,
        owner: &'a str,
        holder: &'a str,
    ) -> Result<(UserId, DeviceId, Touch<'a>), Error> {
        let mut v = Violations::new();
        let user_id = v.parse::<UserId>("user_id", user);
        let session_id = v.parse::<DeviceId>("session_id", session);
        if !owner.is_empty() {
            v.id("owner", owner);
        }
        if !holder.is_empty() {
            v.id("holder", holder);
            if owner.is_empty() {
                v.add("owner", "required with a holder");
            }
        }
        let ttl = self.ttl(&mut v, ttl);
        let (user_id, session_id) = v.check_with(user_id.zip(session_id))?;
        let c = &self.config;
        let touch =
            Touch { ttl, seen_ttl: c.last_seen_retention, max_sessions: c.max_sessions_per_user, login, owner, holder };
        Ok((user_id, session_id, touch))
    }
}

/// A touch's outcome as the session, or the error a client acts on.
fn settled(user: &str, session: &str, outcome: TouchOutcome) -> Result<(pb::Session, Touched), Error> {
    match outcome {
        TouchOutcome::Touched(t) => {
            let s = pb::Session { session_id: session.to_owned(), expire_time: Some(ms_to_timestamp(t.expire_ms)) };
            Ok((s, t))
        }
        TouchOutcome::NoSuchSession => Err(Error::NotFound(format!(
            "session {session:?} of user {user:?} has expired or never existed; Login again"
        ))),
        TouchOutcome::TooManySessions(n) => Err(Error::ResourceExhausted(format!(
            "user {user:?} already has {n} live sessions (max_sessions_per_user)"
        ))),
        TouchOutcome::TakenOver => Err(Error::Aborted(format!(
            "session {session:?} of user {user:?} is held by another owner now; it was not extended"
        ))),
    }
}

/// One renewal's answer.
fn renewal(result: Result<(pb::Session, Touched), Error>) -> pb::SessionRenewal {
    match result {
        Ok((session, _)) => pb::SessionRenewal { session: Some(session), code: 0, message: String::new() },
        Err(e) => {
            let status = Status::from(e);
            pb::SessionRenewal { session: None, code: status.code() as i32, message: status.message().to_owned() }
        }
    }
}

/// An event as sent, with `event_id` the watch position past it.
pub(crate) fn to_pb(e: Event, event_id: String) -> pb::PresenceEvent {
    use pb::presence_event::{Kind, Reason};
    let reason = match (e.online, e.expired) {
        (true, _) => Reason::Unspecified,
        (false, true) => Reason::Expired,
        (false, false) => Reason::Logout,
    };
    pb::PresenceEvent {
        event_id,
        user_id: e.user,
        kind: if e.online { Kind::Online } else { Kind::Offline } as i32,
        time: Some(ms_to_timestamp(e.time_ms)),
        session_id: e.session,
        reason: reason as i32,
    }
}

#[tonic::async_trait]
impl Presence for PresenceService {
    type WatchPresenceStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchPresenceResponse, Status>>;

    async fn watch_presence(
        &self,
        req: Request<pb::WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        let events = self.watchers.watch(&req.into_inner().cursor).await?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(events)))
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let r = req.into_inner();
        let (session, t) = self.touch(&r.user_id, &r.session_id, r.ttl.as_ref(), true, &r.owner, &r.holder).await?;
        Ok(Response::new(pb::LoginResponse {
            session: Some(session),
            user_came_online: t.came_online,
            session_count: t.session_count as i32,
        }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let (session, _) = self.touch(&r.user_id, &r.session_id, r.ttl.as_ref(), false, &r.owner, &r.holder).await?;
        Ok(Response::new(pb::HeartbeatResponse { session: Some(session) }))
    }

    async fn renew_sessions(
        &self,
        req: Request<pb::RenewSessionsRequest>,
    ) -> Result<Response<pb::RenewSessionsResponse>, Status> {
        let r = req.into_inner();
        let (n, max) = (r.sessions.len(), self.config.max_batch);
        if n == 0 || n > max {
            return Err(Error::invalid("sessions", format!("must hold 1 to {max} sessions, got {n}")).into());
        }
        // Each is checked on its own; the valid ones go to Redis in one pipeline.
        let checked: Vec<_> = r
            .sessions
            .iter()
            .map(|h| self.check_touch(&h.user_id, &h.session_id, h.ttl.as_ref(), false, &h.owner, &h.holder))
            .collect();
        let valid: Vec<_> =
            checked.iter().filter_map(|c| c.as_ref().ok()).map(|(u, d, t)| (u.clone(), d.clone(), *t)).collect();
        let mut outcomes = self.store.touch_many(&valid).await?.into_iter();
        let renewals = r
            .sessions
            .iter()
            .zip(checked)
            .map(|(h, c)| {
                let result = match c {
                    Ok(_) => {
                        outcomes.next().unwrap_or_else(|| Err(Error::Protocol("a renewal went unanswered".into())))
                    }
                    Err(e) => Err(e),
                };
                renewal(result.and_then(|o| settled(&h.user_id, &h.session_id, o)))
            })
            .collect();
        Ok(Response::new(pb::RenewSessionsResponse { renewals }))
    }

    async fn renew_holder(
        &self,
        req: Request<pb::RenewHolderRequest>,
    ) -> Result<Response<pb::RenewHolderResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        if r.holder.is_empty() {
            v.add("holder", "must not be empty");
        } else {
            v.id("holder", &r.holder);
        }
        let ttl = self.ttl(&mut v, r.ttl.as_ref());
        v.check()?;
        let (held, until) = self.store.hold(&r.holder, ttl).await?;
        Ok(Response::new(pb::RenewHolderResponse { sessions_held: held, expire_time: Some(ms_to_timestamp(until)) }))
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let user = v.parse::<UserId>("user_id", &r.user_id);
        let session = v.parse::<DeviceId>("session_id", &r.session_id);
        if !r.owner.is_empty() {
            v.id("owner", &r.owner);
        }
        if !r.holder.is_empty() {
            v.id("holder", &r.holder);
        }
        let (user, session) = v.check_with(user.zip(session))?;
        let seen = self.config.last_seen_retention;
        let (found, left) = self.store.logout(&user, &session, seen, &r.owner, &r.holder).await?;
        Ok(Response::new(pb::LogoutResponse {
            session_found: found,
            user_online: left > 0,
            session_count: left as i32,
        }))
    }

    async fn get_presence(
        &self,
        req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let users = v.parse_all::<UserId>("user_ids", &r.user_ids, self.config.max_batch);
        v.check()?;
        let states = self.store.get(&users).await?;
        let presences = r
            .user_ids
            .into_iter()
            .zip(states)
            .map(|(user_id, s)| pb::UserPresence {
                user_id,
                online: !s.sessions.is_empty(),
                last_seen_time: s.last_seen_ms.map(ms_to_timestamp),
                sessions: s
                    .sessions
                    .into_iter()
                    .map(|(session_id, e)| pb::Session { session_id, expire_time: Some(ms_to_timestamp(e)) })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::GetPresenceResponse { presences }))
    }

    async fn list_online_users(
        &self,
        req: Request<pb::ListOnlineUsersRequest>,
    ) -> Result<Response<pb::ListOnlineUsersResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        if r.page_size < 0 {
            v.add("page_size", "must not be negative");
        }
        let buckets = self.store.buckets();
        let token = match PageToken::decode(&r.page_token, buckets) {
            Ok(t) => t,
            Err(why) => {
                v.add("page_token", why);
                PageToken::start()
            }
        };
        v.check()?;
        let want = match r.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(self.config.max_page_size as usize),
        };
        // Walk buckets in order and each bucket in id order; the cursor is the last id
        // scanned, so heartbeats (which change scores, not ids) cannot reorder the walk.
        let PageToken { mut bucket, mut after } = token;
        let mut user_ids = Vec::with_capacity(want);
        while user_ids.len() < want && bucket < buckets {
            let asked = want - user_ids.len();
            let (last, scanned, online) = self.store.page(bucket, &after, asked).await?;
            user_ids.extend(online);
            if scanned < asked {
                bucket += 1;
                after.clear();
            } else {
                after = last;
            }
        }
        let next_page_token =
            if bucket < buckets { PageToken { bucket, after }.encode(buckets) } else { String::new() };
        Ok(Response::new(pb::ListOnlineUsersResponse { user_ids, next_page_token }))
    }

    async fn count_online_users(
        &self,
        _req: Request<pb::CountOnlineUsersRequest>,
    ) -> Result<Response<pb::CountOnlineUsersResponse>, Status> {
        let online_users = self.store.count().await?;
        Ok(Response::new(pb::CountOnlineUsersResponse { online_users }))
    }
}
