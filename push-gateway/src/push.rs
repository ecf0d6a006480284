//! Push and group RPCs: validate, encode the message once, append it to its histories
//! and publish it (one Lua step, see `lua/push.lua`).
use std::time::SystemTime;

use prost::{Message as _, bytes::Bytes};
use push_common::{Error, token, validate::Violations};
use push_proto::push::v1::{self as pb, Audience, DeliveryState};

use crate::{
    envelope,
    history::{self, Source, StreamId},
    store::{Joined, Store},
};

const MAX_TOPIC: usize = 128;
const MAX_CONTENT_TYPE: usize = 128;
const DEFAULT_PAGE: usize = 100;

/// Limits on pushes and groups.
#[derive(Debug, Clone, Copy)]
pub struct PushLimits {
    pub max_payload_bytes: usize,
    pub max_users_per_call: usize,
    pub max_groups_per_user: usize,
    /// Largest page of a list; larger requests are coerced to it.
    pub max_page_size: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_window: std::time::Duration,
    /// Most bytes one call may publish (message size × users): Redis disconnects a
    /// subscriber whose output buffer passes `client-output-buffer-limit pubsub`, and
    /// with it every stream of a replica.
    pub max_publish_bytes: usize,
}

/// What a published message costs beyond its topic, payload and the like (id, envelope,
/// timestamp, field keys), per receiver: a generous upper bound.
const MESSAGE_OVERHEAD: usize = 96;

/// The push side of the gateway.
#[derive(Clone)]
pub struct Pusher {
    pub store: Store,
    pub limits: PushLimits,
}

/// The parts of a push shared by every target.
struct Content<'a> {
    topic: &'a str,
    payload: &'a Bytes,
    content_type: &'a str,
    sender: &'a str,
    idempotency_key: &'a str,
}

/// The shared fields of any push request (they have the same names in all three).
macro_rules! content {
    ($r:expr) => {
        Content {
            topic: &$r.topic,
            payload: &$r.payload,
            content_type: &$r.content_type,
            sender: &$r.sender,
            idempotency_key: &$r.idempotency_key,
        }
    };
}

impl Content<'_> {
    fn check(&self, v: &mut Violations, limits: &PushLimits) {
        if self.topic.is_empty() || self.topic.len() > MAX_TOPIC {
            v.add("topic", format!("must be 1 to {MAX_TOPIC} characters"));
        } else if !self.topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')) {
            v.add("topic", "may only contain A-Z a-z 0-9 . _ : / -");
        }
        if self.payload.len() > limits.max_payload_bytes {
            let (n, max) = (self.payload.len(), limits.max_payload_bytes);
            v.add("payload", format!("must be at most {max} bytes, got {n}"));
        }
        if self.content_type.len() > MAX_CONTENT_TYPE
            || !self.content_type.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            v.add("content_type", format!("must be at most {MAX_CONTENT_TYPE} printable ASCII characters"));
        }
        if !self.sender.is_empty() {
            v.id("sender", self.sender);
        }
        if !self.idempotency_key.is_empty() {
            v.id("idempotency_key", self.idempotency_key);
        }
    }

    /// An upper bound of the bytes one published copy of the message takes.
    fn published_size(&self) -> usize {
        self.topic.len() + self.payload.len() + self.content_type.len() + self.sender.len() + MESSAGE_OVERHEAD
    }

    /// The message without its id (the push script puts the id in front), encoded once.
    fn encode(&self, audience: Audience, group_id: &str) -> Vec<u8> {
        let m = pb::Message {
            id: String::new(),
            topic: self.topic.to_owned(),
            payload: self.payload.clone(),
            content_type: self.content_type.to_owned(),
            create_time: Some(prost_types::Timestamp::from(SystemTime::now())),
            sender: self.sender.to_owned(),
            audience: audience as i32,
            group_id: group_id.to_owned(),
        };
        m.encode_to_vec()
    }
}

impl Pusher {
    /// `caller` is the API key's name ('' without authentication): idempotency keys are
    /// per caller, so two backends cannot collide on one.
    pub async fn to_all(&self, caller: &str, r: pb::PushToAllRequest) -> Result<pb::PushToAllResponse, Error> {
        let c = content!(r);
        let mut v = Violations::new();
        c.check(&mut v, &self.limits);
        v.check()?;
        let keys = self.store.keys();
        let target = [(keys.all_history(), keys.channel_all())];
        let message_id =
            self.push(caller, &c, &target, self.store.retention.history_max_len, Audience::All, "").await?;
        Ok(pb::PushToAllResponse { message_id })
    }

    pub async fn to_users(&self, caller: &str, r: pb::PushToUsersRequest) -> Result<pb::PushToUsersResponse, Error> {
        let c = content!(r);
        let mut v = Violations::new();
        v.ids("user_ids", &r.user_ids, self.limits.max_users_per_call);
        c.check(&mut v, &self.limits);
        v.check()?;
        // A user listed twice still gets the message once.
        let mut users: Vec<&String> = r.user_ids.iter().collect();
        users.sort();
        users.dedup();
        let bytes = c.published_size().saturating_mul(users.len());
        if bytes > self.limits.max_publish_bytes {
            let max = self.limits.max_publish_bytes;
            let n = users.len();
            return Err(Error::invalid(
                "payload",
                format!(
                    "is published once per user: {n} users make {bytes} bytes, over the limit of {max} per call (--max-publish-bytes); split the call"
                ),
            ));
        }
        let keys = self.store.keys();
        let targets: Vec<(String, String)> = users.into_iter().map(|u| (keys.inbox(u), keys.channel_user(u))).collect();
        let message_id =
            self.push(caller, &c, &targets, self.store.retention.inbox_max_len, Audience::User, "").await?;
        Ok(pb::PushToUsersResponse { message_id })
    }

    pub async fn to_group(&self, caller: &str, r: pb::PushToGroupRequest) -> Result<pb::PushToGroupResponse, Error> {
        let c = content!(r);
        let mut v = Violations::new();
        v.id("group_id", &r.group_id);
        c.check(&mut v, &self.limits);
        v.check()?;
        let keys = self.store.keys();
        let target = [(keys.group_history(&r.group_id), keys.channel_group(&r.group_id))];
        let max_len = self.store.retention.history_max_len;
        let message_id = self.push(caller, &c, &target, max_len, Audience::Group, &r.group_id).await?;
        Ok(pb::PushToGroupResponse { message_id })
    }

    /// Appends to the targets' histories and publishes, once per idempotency key when
    /// the push has one; returns the id of the push that counts.
    async fn push(
        &self,
        caller: &str,
        c: &Content<'_>,
        targets: &[(String, String)],
        max_len: usize,
        audience: Audience,
        group_id: &str,
    ) -> Result<String, Error> {
        let message = c.encode(audience, group_id);
        let key =
            (!c.idempotency_key.is_empty()).then_some((caller, c.idempotency_key, self.limits.idempotency_window));
        self.store.push(targets, max_len, &message, key).await
    }

    fn check_membership(&self, group: &str, users: &[String]) -> Result<Vec<String>, Error> {
        let mut v = Violations::new();
        v.id("group_id", group);
        v.ids("user_ids", users, self.limits.max_users_per_call);
        v.check()?;
        let mut users = users.to_vec();
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// Tells the users' open streams (on any replica) to re-read their groups.
    async fn announce(&self, users: &[String]) -> Result<(), Error> {
        let channels: Vec<String> = users.iter().map(|u| self.store.keys().channel_user(u)).collect();
        self.store.publish(&channels, &Bytes::from_static(&[envelope::MEMBERSHIP])).await
    }

    /// Ends the streams of `device` of `user` on every replica (after a Logout).
    pub async fn disconnect(&self, user: &str, device: &str) -> Result<(), Error> {
        let channel = [self.store.keys().channel_user(user)];
        self.store.publish(&channel, &Bytes::from(envelope::disconnect(device))).await
    }

    pub async fn join(&self, r: pb::JoinGroupRequest) -> Result<pb::JoinGroupResponse, Error> {
        let users = self.check_membership(&r.group_id, &r.user_ids)?;
        match self.store.join(&r.group_id, &users, self.limits.max_groups_per_user).await? {
            Joined::Added(n) => {
                self.announce(&users).await?;
                Ok(pb::JoinGroupResponse { added: n as i32 })
            }
            Joined::TooManyGroups(i) => Err(Error::ResourceExhausted(format!(
                "user {:?} already belongs to {} groups, the limit (max_groups_per_user)",
                users[i], self.limits.max_groups_per_user
            ))),
        }
    }

    pub async fn leave(&self, r: pb::LeaveGroupRequest) -> Result<pb::LeaveGroupResponse, Error> {
        let users = self.check_membership(&r.group_id, &r.user_ids)?;
        let removed = self.store.leave(&r.group_id, &users, self.limits.max_groups_per_user).await?;
        self.announce(&users).await?;
        Ok(pb::LeaveGroupResponse { removed: removed as i32 })
    }

    pub async fn members(&self, r: pb::ListGroupMembersRequest) -> Result<pb::ListGroupMembersResponse, Error> {
        let mut v = Violations::new();
        v.id("group_id", &r.group_id);
        if r.page_size < 0 {
            v.add("page_size", "must not be negative");
        }
        let after = decode_token(&r.page_token);
        if after.is_none() {
            v.add("page_token", "is not a token returned by this service");
        }
        v.check()?;
        let want = match r.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(self.limits.max_page_size),
        };
        let user_ids = self.store.members(&r.group_id, &after.unwrap_or_default(), want).await?;
        let next_page_token = match user_ids.last() {
            Some(last) if user_ids.len() == want => encode_token(last),
            _ => String::new(),
        };
        Ok(pb::ListGroupMembersResponse { user_ids, next_page_token })
    }

    /// Whether a message reached each user: a device acknowledged it (or later), it is
    /// pending in the history, or it is not there (never pushed there, or trimmed).
    pub async fn delivery_status(
        &self,
        r: pb::GetDeliveryStatusRequest,
    ) -> Result<pb::GetDeliveryStatusResponse, Error> {
        let mut v = Violations::new();
        let id = r.message_id.parse::<StreamId>().ok();
        if id.is_none() {
            v.add("message_id", "must be a message id as returned by a push (\"<ms>-<seq>\")");
        }
        v.ids("user_ids", &r.user_ids, self.limits.max_users_per_call);
        let source = history::parse_source(&mut v, ("audience", r.audience), ("group_id", &r.group_id));
        v.check()?;
        let (Some(id), Some(source)) = (id, source) else { unreachable!("checked above") };
        let keys = self.store.keys();
        let streams: Vec<String> = match source {
            Source::Inbox => r.user_ids.iter().map(|u| keys.inbox(u)).collect(),
            _ => vec![source.keys(keys, "").0],
        };
        let receipts = self.store.receipts(&streams, id, &r.user_ids).await?;
        let suffix = source.ack_field("");
        let deliveries = r
            .user_ids
            .into_iter()
            .enumerate()
            .map(|(k, user_id)| {
                let (exists, epoch) = receipts.found[if streams.len() > 1 { k } else { 0 }];
                let mut device_ids: Vec<String> = receipts.acks[k]
                    .iter()
                    .filter_map(|(field, value)| {
                        let device = field.strip_suffix(suffix.as_str())?;
                        let pos = history::parse_position(value)?;
                        (exists && Some(pos.epoch) == epoch && pos.id >= id).then(|| device.to_owned())
                    })
                    .collect();
                device_ids.sort();
                let state = match (exists, device_ids.is_empty()) {
                    (false, _) => DeliveryState::Unknown,
                    (true, true) => DeliveryState::Pending,
                    (true, false) => DeliveryState::Delivered,
                };
                pb::UserDelivery { user_id, state: state as i32, device_ids }
            })
            .collect();
        Ok(pb::GetDeliveryStatusResponse { deliveries })
    }

    pub async fn user_groups(&self, r: pb::ListUserGroupsRequest) -> Result<pb::ListUserGroupsResponse, Error> {
        let mut v = Violations::new();
        v.id("user_id", &r.user_id);
        v.check()?;
        Ok(pb::ListUserGroupsResponse { group_ids: self.store.user_groups(&r.user_id).await? })
    }
}

/// Member page tokens: the last id returned (opaque to clients).
fn encode_token(last: &str) -> String {
    token::encode(last)
}

/// The id after which to continue; `Some("")` for the first page, `None` when invalid.
fn decode_token(t: &str) -> Option<String> {
    let s = token::decode(t, push_common::validate::MAX_ID_LEN)?;
    (s.is_empty() || push_common::validate::id_problem(&s).is_none()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_tokens_round_trip_and_reject_junk() {
        assert_eq!(decode_token(&encode_token("user-9")), Some("user-9".into()));
        assert_eq!(decode_token(""), Some(String::new()));
        for junk in ["x", "zz", "7b7d", &"61".repeat(200)] {
            assert_eq!(decode_token(junk), None, "{junk}");
        }
    }
}
