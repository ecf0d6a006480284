//! Every bad input gets INVALID_ARGUMENT naming the field, through the public
//! contract, and writes nothing (the database stays empty).
use std::collections::HashMap;

use push_proto::push::v1::{self as pb, UserProfile};
use push_tests::{
    App,
    fixtures::{assert_invalid, ttl},
};

/// Ids that must never reach a key.
fn bad_ids() -> Vec<String> {
    vec![
        String::new(),
        "has space".into(),
        "hash{tag".into(),
        "tag}".into(),
        "nul\0byte".into(),
        "rtl\u{202e}mark".into(),
        "ünïcode".into(),
        "x".repeat(129),
        "y".repeat(1024 * 1024),
    ]
}

fn profile(f: impl FnOnce(&mut UserProfile)) -> Option<UserProfile> {
    let mut p = UserProfile { user_id: "ok".into(), ..Default::default() };
    f(&mut p);
    Some(p)
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|s| s.to_string()).collect() })
}

#[tokio::test]
async fn presence_requests_are_validated() {
    let app = App::start().await;
    let c = app.gateway_client().await;
    let mut c = c;

    for id in bad_ids() {
        let req = pb::LoginRequest { user_id: id.clone(), session_id: "d".into(), ttl: None, ..Default::default() };
        assert_invalid(&c.login(req).await.unwrap_err(), "user_id");
        let req = pb::LoginRequest { user_id: "u".into(), session_id: id.clone(), ttl: None, ..Default::default() };
        assert_invalid(&c.login(req).await.unwrap_err(), "session_id");
        let req = pb::HeartbeatRequest { user_id: id.clone(), session_id: "d".into(), ttl: None, ..Default::default() };
        assert_invalid(&c.heartbeat(req).await.unwrap_err(), "user_id");
        let req = pb::LogoutRequest { user_id: "u".into(), session_id: id.clone(), ..Default::default() };
        assert_invalid(&c.logout(req).await.unwrap_err(), "session_id");
        let req = pb::GetPresenceRequest { user_ids: vec!["fine".into(), id.clone()] };
        assert_invalid(&c.get_presence(req).await.unwrap_err(), "user_ids[1]");
    }

    // Leases outside the configured bounds (1s..1h by default), and negative ones.
    let negative = Some(prost_types::Duration { seconds: -1, nanos: 0 });
    for t in [ttl(10), ttl(2 * 3600 * 1000), negative] {
        let req = pb::LoginRequest { user_id: "u".into(), session_id: "d".into(), ttl: t, ..Default::default() };
        assert_invalid(&c.login(req).await.unwrap_err(), "ttl");
        let req = pb::HeartbeatRequest { user_id: "u".into(), session_id: "d".into(), ttl: t, ..Default::default() };
        assert_invalid(&c.heartbeat(req).await.unwrap_err(), "ttl");
    }

    let empty = pb::GetPresenceRequest { user_ids: vec![] };
    assert_invalid(&c.get_presence(empty).await.unwrap_err(), "user_ids");
    let too_many = pb::GetPresenceRequest { user_ids: (0..501).map(|i| i.to_string()).collect() };
    assert_invalid(&c.get_presence(too_many).await.unwrap_err(), "user_ids");

    let req = pb::ListOnlineUsersRequest { page_size: -1, page_token: String::new() };
    assert_invalid(&c.list_online_users(req).await.unwrap_err(), "page_size");
    for token in ["not-a-token", "7631", "{}", "\u{202e}"] {
        let req = pb::ListOnlineUsersRequest { page_size: 10, page_token: token.into() };
        assert_invalid(&c.list_online_users(req).await.unwrap_err(), "page_token");
    }

    assert_eq!(app.redis.dbsize(), 0, "rejected requests wrote {:?}", app.redis.keys());
}

/// A request larger than the server's message limit (4 MiB, tonic's default) is refused
/// by the transport before any handler runs.
#[tokio::test]
async fn oversized_requests_are_refused_before_any_work() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let huge = "y".repeat(10 * 1024 * 1024);
    let req = pb::LoginRequest { user_id: huge.clone(), session_id: "d".into(), ttl: None, ..Default::default() };
    let code = c.login(req).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::ResourceExhausted);
    let req = pb::PutProfileRequest { profile: profile(|p| p.display_name = huge) };
    let code = c.put_profile(req).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::ResourceExhausted);
    assert_eq!(app.redis.dbsize(), 0);
}

#[tokio::test]
async fn profile_requests_are_validated() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;

    for id in bad_ids() {
        let req = pb::PutProfileRequest { profile: profile(|p| p.user_id = id.clone()) };
        assert_invalid(&c.put_profile(req).await.unwrap_err(), "profile.user_id");
        let req = pb::UpdateProfileRequest { profile: profile(|p| p.user_id = id.clone()), update_mask: mask(&["*"]) };
        assert_invalid(&c.update_profile(req).await.unwrap_err(), "profile.user_id");
        let req = pb::GetProfileRequest { user_id: id.clone() };
        assert_invalid(&c.get_profile(req).await.unwrap_err(), "user_id");
        let req = pb::DeleteProfileRequest { user_id: id.clone(), version: 0 };
        assert_invalid(&c.delete_profile(req).await.unwrap_err(), "user_id");
        let req = pb::BatchGetProfilesRequest { user_ids: vec![id.clone()] };
        assert_invalid(&c.batch_get_profiles(req).await.unwrap_err(), "user_ids[0]");
    }

    let cases: Vec<(Option<UserProfile>, &str)> = vec![
        (None, "profile"),
        (profile(|p| p.display_name = "x".repeat(257)), "profile.display_name"),
        (profile(|p| p.display_name = "bell\u{7}".into()), "profile.display_name"),
        (profile(|p| p.display_name = "nul\0".into()), "profile.display_name"),
        (profile(|p| p.avatar_url = "javascript:alert(1)".into()), "profile.avatar_url"),
        (profile(|p| p.avatar_url = "https://a b".into()), "profile.avatar_url"),
        (profile(|p| p.avatar_url = format!("https://{}", "a".repeat(2048))), "profile.avatar_url"),
        (profile(|p| p.address = "a".repeat(1025)), "profile.address"),
        (profile(|p| p.version = -1), "profile.version"),
        (profile(|p| p.attributes = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()), "profile.attributes"),
        (profile(|p| p.attributes = HashMap::from([("bad key".into(), "v".into())])), "profile.attributes"),
        (profile(|p| p.attributes = HashMap::from([("{k}".into(), "v".into())])), "profile.attributes"),
        (profile(|p| p.attributes = HashMap::from([(String::new(), "v".into())])), "profile.attributes"),
        (profile(|p| p.attributes = HashMap::from([("k".into(), "v".repeat(1025))])), "profile.attributes[\"k\"]"),
        (profile(|p| p.attributes = HashMap::from([("k".into(), "nul\0".into())])), "profile.attributes[\"k\"]"),
    ];
    for (p, field) in cases {
        let req = pb::PutProfileRequest { profile: p.clone() };
        assert_invalid(&c.put_profile(req).await.unwrap_err(), field);
        let req = pb::UpdateProfileRequest { profile: p, update_mask: mask(&["*"]) };
        assert_invalid(&c.update_profile(req).await.unwrap_err(), field);
    }

    for paths in [&[][..], &["version"], &["attributes.bad key"], &["user_id"]] {
        let req = pb::UpdateProfileRequest { profile: profile(|_| {}), update_mask: mask(paths) };
        assert_invalid(&c.update_profile(req).await.unwrap_err(), "update_mask");
    }
    let no_mask = pb::UpdateProfileRequest { profile: profile(|_| {}), update_mask: None };
    assert_invalid(&c.update_profile(no_mask).await.unwrap_err(), "update_mask");

    let req = pb::DeleteProfileRequest { user_id: "ok".into(), version: -5 };
    assert_invalid(&c.delete_profile(req).await.unwrap_err(), "version");
    let req = pb::BatchGetProfilesRequest { user_ids: vec![] };
    assert_invalid(&c.batch_get_profiles(req).await.unwrap_err(), "user_ids");
    let req = pb::BatchGetProfilesRequest { user_ids: (0..501).map(|i| i.to_string()).collect() };
    assert_invalid(&c.batch_get_profiles(req).await.unwrap_err(), "user_ids");

    assert_eq!(app.redis.dbsize(), 0, "rejected requests wrote {:?}", app.redis.keys());
}
