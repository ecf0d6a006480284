//! Push RPCs: validate, encode the message once, append it to its histories and
//! publish it (one Lua step, see `lua/push.lua`); a batch runs many such steps in one
//! pipelined round trip. Targeted pushes ([`target`]) resolve unions and exclusions
//! first. Groups are in [`crate::membership`], delivery receipts in [`crate::receipts`].
use std::time::SystemTime;

use prost::{Message as _, bytes::Bytes};
use push_common::{
    Error,
    ids::{GroupId, Id, IdemKey, UserId},
    validate::Violations,
};
use push_proto::push::v1::{self as pb, Audience};

use crate::store::{Push, Store};

mod target;

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
    /// Most pushes in one PushBatch.
    pub max_batch_pushes: usize,
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

/// The shared fields of any push request (they have the same names in all four).
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

/// Counts `n` stored and published pushes of `kind` (all, users, group, targeted,
/// batch: one per pushed item of a PushBatch).
fn pushed(kind: &'static str, n: u64) {
    metrics::counter!("push_gateway_pushes_total", "kind" => kind).increment(n);
}

impl Pusher {
    /// `caller` is the API key's name ('' without authentication): idempotency keys are
    /// per caller, so two backends cannot collide on one.
    pub async fn to_all(&self, caller: &str, r: pb::PushToAllRequest) -> Result<pb::PushToAllResponse, Error> {
        let c = content!(r);
        let mut v = Violations::new();
        let key = c.check(&mut v, &self.limits);
        v.check()?;
        let push = self.prepare(caller, &c, key, target::Route::All, "")?;
        let message_id = self.store.push(&push).await?;
        pushed("all", 1);
        Ok(pb::PushToAllResponse { message_id })
    }

    pub async fn to_users(&self, caller: &str, r: pb::PushToUsersRequest) -> Result<pb::PushToUsersResponse, Error> {
        let c = content!(r);
        let mut v = Violations::new();
        let users = v.parse_all::<UserId>("user_ids", &r.user_ids, self.limits.max_users_per_call);
        let key = c.check(&mut v, &self.limits);
        v.check()?;
        let push = self.prepare(caller, &c, key, target::Route::Users(users), "")?;
        let message_id = self.store.push(&push).await?;
        pushed("users", 1);
        Ok(pb::PushToUsersResponse { message_id })
    }

    pub async fn to_group(&self, caller: &str, r: pb::PushToGroupRequest) -> Result<pb::PushToGroupResponse, Error> {
        let c = content!(r);
        let mut v = Violations::new();
        let group = v.parse::<GroupId>("group_id", &r.group_id);
        let key = c.check(&mut v, &self.limits);
        let group = v.check_with(group)?;
        let push = self.prepare(caller, &c, key, target::Route::Group(group), "")?;
        let message_id = self.store.push(&push).await?;
        pushed("group", 1);
        Ok(pb::PushToGroupResponse { message_id })
    }

    /// One push to a union of users and groups minus exclusions (see `pb::Target`).
    pub async fn push(&self, caller: &str, r: pb::PushRequest) -> Result<pb::PushResponse, Error> {
        let (push, mut response) = self.resolve(caller, &r).await?;
        if !push.targets.is_empty() {
            response.message_id = self.store.push(&push).await?;
            pushed("targeted", 1);
        }
        Ok(response)
    }

    /// Many pushes: each is checked and resolved on its own (a bad one fails alone), then
    /// all that are good run in one pipeline.
    pub async fn batch(&self, caller: &str, r: pb::PushBatchRequest) -> Result<pb::PushBatchResponse, Error> {
        let n = r.pushes.len();
        if n == 0 || n > self.limits.max_batch_pushes {
            let max = self.limits.max_batch_pushes;
            return Err(Error::invalid("pushes", format!("must hold 1 to {max} pushes (--max-batch-pushes), got {n}")));
        }
        let mut results: Vec<Option<pb::PushResult>> = Vec::with_capacity(n);
        let (mut pushes, mut ready) = (Vec::new(), Vec::new());
        let mut published = 0usize;
        for (i, item) in r.pushes.iter().enumerate() {
            match self.resolve(caller, item).await {
                // Nobody to reach (a group minus its only member): nothing to store.
                Ok((push, response)) if push.targets.is_empty() => {
                    results.push(Some(pb::PushResult { pushed: Some(response), error: None }));
                }
                Ok((push, response)) => {
                    published = published.saturating_add(push.message.len().saturating_mul(push.targets.len()));
                    pushes.push(push);
                    ready.push((i, response));
                    results.push(None);
                }
                Err(e) => results.push(Some(failed(i, e))),
            }
        }
        if published > self.limits.max_publish_bytes {
            let max = self.limits.max_publish_bytes;
            return Err(Error::invalid(
                "pushes",
                format!(
                    "publish {published} bytes in all (message size × receivers), over the limit of {max} per call (--max-publish-bytes); split the batch"
                ),
            ));
        }
        let answers = self.store.push_many(&pushes).await?;
        pushed("batch", answers.iter().filter(|a| a.is_ok()).count() as u64);
        for ((i, mut response), answer) in ready.into_iter().zip(answers) {
            results[i] = Some(match answer {
                Ok(id) => {
                    response.message_id = id;
                    pb::PushResult { pushed: Some(response), error: None }
                }
                Err(e) => failed(i, e),
            });
        }
        Ok(pb::PushBatchResponse { results: results.into_iter().map(Option::unwrap_or_default).collect() })
    }

    /// Checks a targeted push and works out where it goes; the response, without its
    /// message id.
    async fn resolve(&self, caller: &str, r: &pb::PushRequest) -> Result<(Push, pb::PushResponse), Error> {
        let c = content!(r);
        let mut v = Violations::new();
        let target = target::Target::check(&mut v, r.target.as_ref(), &self.limits);
        let key = c.check(&mut v, &self.limits);
        let target = v.check_with(target)?;
        let (route, excluded) = target.route(&self.store, self.limits.max_users_per_call).await?;
        let response = route.response();
        Ok((self.prepare(caller, &c, key, route, &excluded)?, response))
    }

    /// The push script's input for `route`. `excluded`: users who must not receive it,
    /// as `,a,b,` ('' for none).
    fn prepare(
        &self,
        caller: &str,
        c: &Content<'_>,
        key: Option<IdemKey>,
        route: target::Route,
        excluded: &str,
    ) -> Result<Push, Error> {
        let keys = self.store.keys();
        let retention = &self.store.retention;
        let (targets, max_len, audience, group) = match route {
            target::Route::All => {
                (vec![(keys.all_history(), keys.channel_all())], retention.history_max_len, Audience::All, None)
            }
            target::Route::Group(g) => {
                let t = vec![(keys.group_history(&g), keys.channel_group(&g))];
                (t, retention.history_max_len, Audience::Group, Some(g))
            }
            target::Route::Users(mut users) => {
                // A user listed twice still gets the message once.
                users.sort();
                users.dedup();
                self.check_publish_bytes(c, users.len())?;
                let t = users.iter().map(|u| (keys.inbox(u), keys.channel_user(u))).collect();
                (t, retention.inbox_max_len, Audience::User, None)
            }
        };
        let message = c.encode(audience, group.as_deref().unwrap_or(""));
        // Only a push with a key needs its caller's name (an id, checked when the API keys
        // are configured).
        let caller = key.as_ref().and(IdemKey::parse(caller).ok());
        let idempotency = key.map(|k| (caller, k, self.limits.idempotency_window));
        Ok(Push { targets, max_len, message, idempotency, excluded: excluded.to_owned() })
    }

    /// Refuses a push that would publish more than `--max-publish-bytes` to `users`.
    fn check_publish_bytes(&self, c: &Content<'_>, users: usize) -> Result<(), Error> {
        let bytes = c.published_size().saturating_mul(users);
        let max = self.limits.max_publish_bytes;
        if bytes <= max {
            return Ok(());
        }
        Err(Error::invalid(
            "payload",
            format!(
                "is published once per user: {users} users make {bytes} bytes, over the limit of {max} per call (--max-publish-bytes); split the call"
            ),
        ))
    }
}

/// Push `i` of a batch failed: its fields are named `pushes[i].…`.
fn failed(i: usize, e: Error) -> pb::PushResult {
    let error = match e {
        Error::InvalidArgument(violations) => pb::PushError {
            code: tonic::Code::InvalidArgument as i32,
            message: violations
                .iter()
                .map(|v| format!("pushes[{i}].{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; "),
        },
        e => {
            let status = tonic::Status::from(e);
            pb::PushError { code: status.code() as i32, message: status.message().to_owned() }
        }
    };
    pb::PushResult { pushed: None, error: Some(error) }
}
