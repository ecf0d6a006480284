//! Push RPCs: validate, encode the message once, append it to its histories and
//! publish it (one Lua step, see `lua/push.lua`). Groups are in [`crate::membership`],
//! delivery receipts in [`crate::receipts`].
use std::time::SystemTime;

use prost::{Message as _, bytes::Bytes};
use push_common::{
    Error,
    ids::{GroupId, Id, IdemKey, UserId},
    validate::Violations,
};
use push_proto::push::v1::{self as pb, Audience};

use crate::store::Store;

const MAX_TOPIC: usize = 128;
const MAX_CONTENT_TYPE: usize = 128;

/// Limits on pushes, groups and receipts.
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
    /// Checks the content; its idempotency key, parsed, if it has one.
    fn check(&self, v: &mut Violations, limits: &PushLimits) -> Option<IdemKey> {
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
        match self.idempotency_key {
            "" => None,
            key => v.parse("idempotency_key", key),
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
        let key = c.check(&mut v, &self.limits);
        v.check()?;
        let keys = self.store.keys();
        let target = [(keys.all_history(), keys.channel_all())];
        let max_len = self.store.retention.history_max_len;
        let message_id = self.push((caller, key.as_ref()), &c, &target, max_len, Audience::All, "").await?;
        Ok(pb::PushToAllResponse { message_id })
    }

    pub async fn to_users(&self, caller: &str, r: pb::PushToUsersRequest) -> Result<pb::PushToUsersResponse, Error> {
        let c = content!(r);
        let mut v = Violations::new();
        let mut users = v.parse_all::<UserId>("user_ids", &r.user_ids, self.limits.max_users_per_call);
        let key = c.check(&mut v, &self.limits);
        v.check()?;
        // A user listed twice still gets the message once.
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
        let targets: Vec<(String, String)> = users.iter().map(|u| (keys.inbox(u), keys.channel_user(u))).collect();
        let max_len = self.store.retention.inbox_max_len;
        let message_id = self.push((caller, key.as_ref()), &c, &targets, max_len, Audience::User, "").await?;
        Ok(pb::PushToUsersResponse { message_id })
    }

    pub async fn to_group(&self, caller: &str, r: pb::PushToGroupRequest) -> Result<pb::PushToGroupResponse, Error> {
        let c = content!(r);
        let mut v = Violations::new();
        let group = v.parse::<GroupId>("group_id", &r.group_id);
        let key = c.check(&mut v, &self.limits);
        let group = v.check_with(group)?;
        let keys = self.store.keys();
        let target = [(keys.group_history(&group), keys.channel_group(&group))];
        let max_len = self.store.retention.history_max_len;
        let message_id = self.push((caller, key.as_ref()), &c, &target, max_len, Audience::Group, &group).await?;
        Ok(pb::PushToGroupResponse { message_id })
    }

    /// Appends to the targets' histories and publishes, once per idempotency key when
    /// the push has one; returns the id of the push that counts.
    /// `idempotency`: the caller's API key name ('' without authentication) and the
    /// push's key, if any.
    async fn push(
        &self,
        idempotency: (&str, Option<&IdemKey>),
        c: &Content<'_>,
        targets: &[(String, String)],
        max_len: usize,
        audience: Audience,
        group_id: &str,
    ) -> Result<String, Error> {
        let message = c.encode(audience, group_id);
        let (caller, key) = idempotency;
        // Only a push with a key needs its caller's name (an id, checked when the API keys
        // are configured).
        let caller = key.and(IdemKey::parse(caller).ok());
        let key = key.map(|k| (caller.as_ref(), k, self.limits.idempotency_window));
        self.store.push(targets, max_len, &message, key).await
    }
}
