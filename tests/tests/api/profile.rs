//! Profiles through profile-svc's own contract.
use push_proto::profile::v1::{self as pb, profile_client::ProfileClient};
use push_tests::{App, fixtures::assert_invalid};
use tonic::{Code, transport::Channel};

fn ann() -> pb::UserProfile {
    pb::UserProfile {
        user_id: "ann".into(),
        display_name: "Ann Example".into(),
        avatar_url: "https://img.example/ann.png".into(),
        address: "1 Main St\nSpringfield".into(),
        attributes: [("lang".to_string(), "en".to_string()), ("tier".to_string(), "gold".to_string())].into(),
        ..Default::default()
    }
}

async fn put(c: &mut ProfileClient<Channel>, p: pb::UserProfile) -> pb::UserProfile {
    c.put_profile(pb::PutProfileRequest { profile: Some(p) }).await.unwrap().into_inner().profile.unwrap()
}

async fn get(c: &mut ProfileClient<Channel>, user: &str) -> Result<pb::UserProfile, tonic::Status> {
    Ok(c.get_profile(pb::GetProfileRequest { user_id: user.into() }).await?.into_inner().profile.unwrap())
}

fn update(p: pb::UserProfile, paths: &[&str]) -> pb::UpdateProfileRequest {
    pb::UpdateProfileRequest {
        profile: Some(p),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|s| s.to_string()).collect() }),
    }
}

#[tokio::test]
async fn put_and_get_round_trip() {
    let app = App::start().await;
    let mut c = app.profile_client().await;
    let stored = put(&mut c, ann()).await;
    assert_eq!(stored.version, 1);
    assert!(stored.create_time.is_some() && stored.update_time.is_some());
    let got = get(&mut c, "ann").await.unwrap();
    assert_eq!(got, stored);
    assert_eq!(got.display_name, "Ann Example");
    assert_eq!(got.address, "1 Main St\nSpringfield");
    assert_eq!(got.attributes.len(), 2);

    // Put replaces the whole profile and keeps the creation time.
    let replaced =
        put(&mut c, pb::UserProfile { user_id: "ann".into(), display_name: "A".into(), ..Default::default() }).await;
    assert_eq!(replaced.version, 2);
    assert_eq!(replaced.create_time, stored.create_time);
    assert!(replaced.attributes.is_empty() && replaced.avatar_url.is_empty());

    assert_eq!(get(&mut c, "nobody").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn partial_update_changes_only_the_masked_fields() {
    let app = App::start().await;
    let mut c = app.profile_client().await;
    put(&mut c, ann()).await;

    let change = pb::UserProfile {
        user_id: "ann".into(),
        display_name: "Ann B.".into(),
        address: "ignored: not in the mask".into(),
        attributes: [("lang".to_string(), "fr".to_string()), ("new".to_string(), "x".to_string())].into(),
        ..Default::default()
    };
    let r = c.update_profile(update(change, &["display_name", "attributes.lang", "attributes.tier"])).await.unwrap();
    let p = r.into_inner().profile.unwrap();
    assert_eq!(p.version, 2);
    assert_eq!(p.display_name, "Ann B.");
    assert_eq!(p.address, ann().address, "unmasked field kept");
    assert_eq!(p.avatar_url, ann().avatar_url);
    assert_eq!(p.attributes.get("lang").map(String::as_str), Some("fr"));
    assert!(!p.attributes.contains_key("tier"), "masked but absent: removed");
    assert!(!p.attributes.contains_key("new"), "present but not masked: ignored");
    assert_eq!(get(&mut c, "ann").await.unwrap(), p);

    // "attributes" replaces the whole map; clearing a field with an empty value.
    let change = pb::UserProfile {
        user_id: "ann".into(),
        attributes: [("only".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let p =
        c.update_profile(update(change, &["attributes", "avatar_url"])).await.unwrap().into_inner().profile.unwrap();
    assert_eq!(p.attributes.len(), 1);
    assert_eq!(p.attributes["only"], "1");
    assert!(p.avatar_url.is_empty());
    assert_eq!(p.display_name, "Ann B.");

    // Updating a profile that does not exist is NOT_FOUND and creates nothing.
    let ghost = pb::UserProfile { user_id: "ghost".into(), display_name: "G".into(), ..Default::default() };
    let err = c.update_profile(update(ghost, &["display_name"])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!app.redis.keys().iter().any(|k| k.contains("ghost")));
}

#[tokio::test]
async fn a_stale_version_is_aborted_and_changes_nothing() {
    let app = App::start().await;
    let mut c = app.profile_client().await;
    let v1 = put(&mut c, ann()).await;

    // Two writers read version 1; the first wins, the second is refused.
    let first = pb::UserProfile { display_name: "first".into(), version: v1.version, ..ann() };
    c.update_profile(update(first, &["display_name"])).await.unwrap();
    let second = pb::UserProfile { display_name: "second".into(), version: v1.version, ..ann() };
    let err = c.update_profile(update(second.clone(), &["display_name"])).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = c.put_profile(pb::PutProfileRequest { profile: Some(second) }).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let now = get(&mut c, "ann").await.unwrap();
    assert_eq!((now.display_name.as_str(), now.version), ("first", 2));

    // Delete honours the version too.
    let del = c.delete_profile(pb::DeleteProfileRequest { user_id: "ann".into(), version: 1 }).await;
    assert_eq!(del.unwrap_err().code(), Code::Aborted);
    c.delete_profile(pb::DeleteProfileRequest { user_id: "ann".into(), version: 2 }).await.unwrap();
    assert_eq!(get(&mut c, "ann").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn batch_get_and_delete() {
    let app = App::start().await;
    let mut c = app.profile_client().await;
    for u in ["a", "b", "c"] {
        put(&mut c, pb::UserProfile { user_id: u.into(), display_name: u.to_uppercase(), ..Default::default() }).await;
    }
    let req = pb::BatchGetProfilesRequest { user_ids: vec!["c".into(), "x".into(), "a".into()] };
    let r = c.batch_get_profiles(req).await.unwrap().into_inner();
    let names: Vec<_> = r.profiles.iter().map(|p| (p.user_id.as_str(), p.display_name.as_str())).collect();
    assert_eq!(names, [("c", "C"), ("a", "A")]);
    assert_eq!(r.missing_user_ids, ["x"]);

    c.delete_profile(pb::DeleteProfileRequest { user_id: "b".into(), version: 0 }).await.unwrap();
    let again = c.delete_profile(pb::DeleteProfileRequest { user_id: "b".into(), version: 0 }).await;
    assert_eq!(again.unwrap_err().code(), Code::NotFound);
    assert_eq!(app.redis.keys(), ["push:profile:{u:a}", "push:profile:{u:c}"]);
}

#[tokio::test]
async fn the_attribute_limit_holds_across_updates() {
    let app = App::start().await;
    let mut c = app.profile_client().await;
    // The default limit is 64 attributes.
    let attrs = (0..64).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let full = put(&mut c, pb::UserProfile { user_id: "z".into(), attributes: attrs, ..Default::default() }).await;
    let one_more = pb::UserProfile {
        user_id: "z".into(),
        attributes: [("k64".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let err = c.update_profile(update(one_more.clone(), &["attributes.k64"])).await.unwrap_err();
    assert_invalid(&err, "profile.attributes");
    assert_eq!(get(&mut c, "z").await.unwrap(), full, "nothing changed");
    // Replacing one is fine.
    let swap = pb::UserProfile { user_id: "z".into(), ..one_more };
    c.update_profile(update(swap, &["attributes.k64", "attributes.k0"])).await.unwrap();
    assert_eq!(get(&mut c, "z").await.unwrap().attributes.len(), 64);
}

#[tokio::test]
async fn a_mask_repeating_one_path_thousands_of_times_is_one_consistent_change() {
    let app = App::start().await;
    let mut c = app.profile_client().await;
    let before = put(&mut c, ann()).await;

    // "attributes" replaces the map; the repeated path would overflow Lua's unpack.
    let mut paths = vec!["attributes"];
    paths.extend(std::iter::repeat_n("display_name", 9000));
    let change = pb::UserProfile {
        user_id: "ann".into(),
        display_name: "Ann C.".into(),
        attributes: [("only".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let r = c.update_profile(update(change, &paths)).await;

    // Whatever the answer, the stored profile is either untouched or wholly updated.
    let now = get(&mut c, "ann").await.unwrap();
    if let Err(e) = &r {
        assert_eq!(now, before, "a refused update ({:?}: {}) changed the profile", e.code(), e.message());
    }
    let p = r.expect("a repeated path is the same path once").into_inner().profile.unwrap();
    assert_eq!(p.version, 2);
    assert_eq!(p.display_name, "Ann C.");
    assert_eq!(p.attributes, [("only".to_string(), "1".to_string())].into());
    assert_eq!(p.address, before.address, "unmasked field kept");
    assert_eq!(now, p);
}

#[tokio::test]
async fn a_mask_with_more_paths_than_a_profile_can_hold_is_refused() {
    let app = App::start().await;
    let mut c = app.profile_client().await;
    let before = put(&mut c, ann()).await;
    // The default limit is 64 attributes: a mask may name at most 5 + 2 × 64 paths.
    let paths: Vec<String> = (0..5 + 2 * 64 + 1).map(|i| format!("attributes.k{i}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let change = pb::UserProfile { user_id: "ann".into(), ..Default::default() };
    let err = c.update_profile(update(change.clone(), &paths)).await.unwrap_err();
    assert_invalid(&err, "update_mask");
    assert_eq!(get(&mut c, "ann").await.unwrap(), before, "nothing changed");
    // One fewer is fine (the attributes named are absent, so they are removed).
    c.update_profile(update(change, &paths[1..])).await.unwrap();
}

#[tokio::test]
async fn large_profiles_are_written_whole_or_not_at_all() {
    // More attributes than Lua's unpack takes at once (~8,000 values).
    let flags = ["--max-attributes", "5000"];
    let app = App::builder().profile(&flags).start().await;
    let mut c = app.profile_client().await;
    let before = put(&mut c, ann()).await;
    let attrs: std::collections::HashMap<String, String> =
        (0..5000).map(|i| (format!("k{i}"), "v".to_string())).collect();

    let big = pb::UserProfile { user_id: "ann".into(), attributes: attrs.clone(), ..Default::default() };
    let r = c.put_profile(pb::PutProfileRequest { profile: Some(big) }).await;
    let now = get(&mut c, "ann").await;
    if let Err(e) = &r {
        assert_eq!(
            now.as_ref().ok(),
            Some(&before),
            "a failed put ({:?}: {}) changed the profile",
            e.code(),
            e.message()
        );
    }
    let p = r.expect("a put within the limits").into_inner().profile.unwrap();
    assert_eq!((p.version, p.attributes.len()), (2, 5000));

    // An update replacing the whole map is as large.
    let renamed: std::collections::HashMap<String, String> =
        (0..5000).map(|i| (format!("n{i}"), "w".to_string())).collect();
    let change = pb::UserProfile { user_id: "ann".into(), attributes: renamed.clone(), ..Default::default() };
    let p = c.update_profile(update(change, &["attributes"])).await.unwrap().into_inner().profile.unwrap();
    assert_eq!((p.version, p.attributes), (3, renamed));
}
