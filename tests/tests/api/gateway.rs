//! The public contract: the gateway composing presence and profile.
use std::time::Duration;

use push_proto::{profile::v1::UserProfile, push::v1 as pb};
use push_tests::{
    App,
    fixtures::{assert_invalid, online_count, presence_of, ttl},
    gateway_client, services, wait_health,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The scenario of the foundation issue, through the gateway only.
#[tokio::test]
async fn two_devices_one_logs_out_the_other_goes_silent() {
    let app = App::builder().presence(&["--min-ttl", "50ms"]).start().await;
    let mut c = app.gateway_client().await;

    let login = |session: &str, ms| pb::LoginRequest {
        user_id: "ann".into(),
        session_id: session.into(),
        ttl: ttl(ms),
        ..Default::default()
    };
    assert!(c.login(login("phone", 60_000)).await.unwrap().into_inner().user_came_online);
    c.login(login("laptop", 400)).await.unwrap();
    let p = presence_of(&c, "ann").await;
    assert!(p.online);
    assert_eq!(p.sessions.len(), 2);

    c.logout(pb::LogoutRequest { user_id: "ann".into(), session_id: "phone".into(), ..Default::default() })
        .await
        .unwrap();
    assert!(presence_of(&c, "ann").await.online, "still online on the laptop");
    assert_eq!(online_count(&c).await, 1);
    let list = c.list_online_users(pb::ListOnlineUsersRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.user_ids, ["ann"]);
    assert!(list.next_page_token.is_empty());

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!presence_of(&c, "ann").await.online, "offline after the laptop's TTL");
    assert_eq!(online_count(&c).await, 0);
    let hb =
        pb::HeartbeatRequest { user_id: "ann".into(), session_id: "laptop".into(), ttl: None, ..Default::default() };
    assert_eq!(c.heartbeat(hb).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn profiles_round_trip_and_conflict_through_the_gateway() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let p = UserProfile { user_id: "bo".into(), display_name: "Bo".into(), ..Default::default() };
    let v1 = c.put_profile(pb::PutProfileRequest { profile: Some(p.clone()) }).await.unwrap();
    let v1 = v1.into_inner().profile.unwrap();
    assert_eq!(v1.version, 1);

    let mask = Some(prost_types::FieldMask { paths: vec!["display_name".into()] });
    let change = UserProfile { display_name: "Bo 2".into(), version: 1, ..p.clone() };
    let r = c.update_profile(pb::UpdateProfileRequest { profile: Some(change.clone()), update_mask: mask.clone() });
    assert_eq!(r.await.unwrap().into_inner().profile.unwrap().version, 2);
    let stale = c.update_profile(pb::UpdateProfileRequest { profile: Some(change), update_mask: mask }).await;
    assert_eq!(stale.unwrap_err().code(), Code::Aborted);

    let got = c.get_profile(pb::GetProfileRequest { user_id: "bo".into() }).await.unwrap().into_inner();
    assert_eq!(got.profile.unwrap().display_name, "Bo 2");
    let batch = c.batch_get_profiles(pb::BatchGetProfilesRequest { user_ids: vec!["bo".into(), "nope".into()] });
    let batch = batch.await.unwrap().into_inner();
    assert_eq!((batch.profiles.len(), batch.missing_user_ids.as_slice()), (1, &["nope".to_string()][..]));

    c.delete_profile(pb::DeleteProfileRequest { user_id: "bo".into(), version: 0 }).await.unwrap();
    let gone = c.get_profile(pb::GetProfileRequest { user_id: "bo".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("no profile"), "the internal message travels: {gone:?}");
}

#[tokio::test]
async fn error_details_pass_through_unchanged() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let bad = pb::LoginRequest { user_id: "a b".into(), session_id: "".into(), ttl: None, ..Default::default() };
    let err = c.login(bad).await.unwrap_err();
    assert_invalid(&err, "user_id");
    assert_invalid(&err, "session_id");
}

#[tokio::test]
async fn a_down_internal_service_is_unavailable_and_the_other_still_works() {
    let app = App::start().await;
    let App { redis, presence, profile, gateway: gw } = app;
    let gw_addr = gw.addr;
    let mut c = gateway_client(gw_addr).await;
    presence.shutdown().await;

    let login = pb::LoginRequest { user_id: "u".into(), session_id: "d".into(), ttl: None, ..Default::default() };
    assert_eq!(c.login(login).await.unwrap_err().code(), Code::Unavailable);
    let p = UserProfile { user_id: "u".into(), display_name: "U".into(), ..Default::default() };
    c.put_profile(pb::PutProfileRequest { profile: Some(p) }).await.unwrap();
    wait_health(gw_addr, "push.v1.PushGateway", ServingStatus::NotServing).await;

    // A gateway started before its dependencies comes up NOT_SERVING and recovers on its own.
    let late = services::gateway(&redis.url(), "http://127.0.0.1:9", &profile.url(), &[]).await;
    wait_health(late.addr, "", ServingStatus::NotServing).await;
    drop((redis, profile, gw));
}
