//! What several suites share: requests, status assertions, lookups and fixture files.
use std::time::Duration;

use push_proto::push::v1::{self as pb, UserPresence};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::{GatewayClient, RedisServer};

/// The path of a file in `tests/fixtures/` (test-only keys and certificates), as flags
/// take it.
pub fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name).display().to_string()
}

/// Asserts INVALID_ARGUMENT whose BadRequest details and message name `field`.
#[track_caller]
pub fn assert_invalid(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let br = details.bad_request().unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    assert!(
        br.field_violations.iter().any(|v| v.field == field),
        "no violation for {field:?} in {:?}",
        br.field_violations
    );
    assert!(status.message().contains(field), "message {:?} does not name {field}", status.message());
}

/// A lease or TTL of `ms` milliseconds.
pub fn ttl(ms: u64) -> Option<prost_types::Duration> {
    let d = Duration::from_millis(ms);
    Some(prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

/// A broadcast whose payload is its topic.
pub fn to_all(topic: &str) -> pb::PushToAllRequest {
    pb::PushToAllRequest { topic: topic.into(), payload: topic.as_bytes().to_vec().into(), ..Default::default() }
}

/// A push to `users` whose payload is its topic.
pub fn to_users(users: &[&str], topic: &str) -> pb::PushToUsersRequest {
    pb::PushToUsersRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
        topic: topic.into(),
        payload: topic.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// A push to `group` whose payload is its topic.
pub fn to_group(group: &str, topic: &str) -> pb::PushToGroupRequest {
    pb::PushToGroupRequest {
        group_id: group.into(),
        topic: topic.into(),
        payload: topic.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// Adds `users` to `group`; returns how many were not members yet.
pub async fn join(c: &mut GatewayClient, group: &str, users: &[&str]) -> i32 {
    let req = pb::JoinGroupRequest { group_id: group.into(), user_ids: users.iter().map(|u| u.to_string()).collect() };
    c.join_group(req).await.unwrap().into_inner().added
}

/// Removes `users` from `group`; returns how many were members.
pub async fn leave(c: &mut GatewayClient, group: &str, users: &[&str]) -> i32 {
    let req = pb::LeaveGroupRequest { group_id: group.into(), user_ids: users.iter().map(|u| u.to_string()).collect() };
    c.leave_group(req).await.unwrap().into_inner().removed
}

/// A user's presence, through the gateway.
pub async fn presence_of(c: &GatewayClient, user: &str) -> UserPresence {
    let req = pb::GetPresenceRequest { user_ids: vec![user.into()] };
    c.clone().get_presence(req).await.unwrap().into_inner().presences.remove(0)
}

/// The ids of a user's sessions, through the gateway.
pub async fn sessions_of(c: &GatewayClient, user: &str) -> Vec<String> {
    presence_of(c, user).await.sessions.into_iter().map(|s| s.session_id).collect()
}

/// How many users are online, through the gateway.
pub async fn online_count(c: &GatewayClient) -> i64 {
    c.clone().count_online_users(pb::CountOnlineUsersRequest {}).await.unwrap().into_inner().online_users
}

/// The push channels Redis has subscribers for, sorted (replicas' probe channels aside).
pub fn subscribed(redis: &RedisServer) -> Vec<String> {
    let mut channels = redis.channels("push:ch:*");
    channels.retain(|c| !c.contains(":probe:"));
    channels
}

/// `topics` sorted: for comparing messages of different histories, whose relative order
/// is not promised (on a Cluster they travel through different shards).
pub fn sorted(topics: &[String]) -> Vec<String> {
    let mut t = topics.to_vec();
    t.sort();
    t
}

/// Pushes a sentinel to all and returns, per device, the topics it received before it.
/// On one Redis a replica's deliveries keep the publish order of one connection, so a
/// device that got the sentinel has got everything pushed to it before. On a Cluster
/// the histories' channels live on different shards, each heard on its own connection:
/// a message pushed before the sentinel may still be on its way, so the device is read
/// on until it has been quiet for a moment. Compare within a history only there.
pub async fn topics_until_sentinel(
    c: &mut GatewayClient,
    devices: &mut [&mut crate::Device],
    sentinel: &str,
) -> Vec<Vec<String>> {
    const QUIET: std::time::Duration = std::time::Duration::from_millis(300);
    c.push_to_all(to_all(sentinel)).await.unwrap();
    let mut out = Vec::new();
    for d in devices.iter_mut() {
        let mut topics = Vec::new();
        loop {
            let m = d.next().await;
            if m.topic == sentinel {
                break;
            }
            topics.push(m.topic);
        }
        if crate::redis::on_cluster() {
            while let Some(m) = d.next_within(QUIET).await {
                topics.push(m.topic);
            }
        }
        out.push(topics);
    }
    out
}
