use std::time::Duration;

use push_proto::push::v1 as pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Asserts INVALID_ARGUMENT whose BadRequest details name `field`.
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

pub fn ttl(ms: u64) -> Option<prost_types::Duration> {
    let d = Duration::from_millis(ms);
    Some(prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

pub type Client = pb::push_gateway_client::PushGatewayClient<tonic::transport::Channel>;

pub fn to_all(topic: &str) -> pb::PushToAllRequest {
    pb::PushToAllRequest { topic: topic.into(), payload: topic.as_bytes().to_vec().into(), ..Default::default() }
}

pub fn to_users(users: &[&str], topic: &str) -> pb::PushToUsersRequest {
    pb::PushToUsersRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
        topic: topic.into(),
        payload: topic.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

pub fn to_group(group: &str, topic: &str) -> pb::PushToGroupRequest {
    pb::PushToGroupRequest {
        group_id: group.into(),
        topic: topic.into(),
        payload: topic.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

pub async fn join(c: &mut Client, group: &str, users: &[&str]) -> i32 {
    let req = pb::JoinGroupRequest { group_id: group.into(), user_ids: users.iter().map(|u| u.to_string()).collect() };
    c.join_group(req).await.unwrap().into_inner().added
}
