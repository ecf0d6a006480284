//! The backend API beyond the three basic pushes: targeted pushes (unions and
//! exclusions), batches, history reads, Disconnect, and strict resume.
use push_proto::push::v1::{self as pb, Audience};
use push_tests::{
    App, Device, authorized,
    credentials::device_token,
    fixtures::{assert_invalid, join, sorted, to_users, topics_until_sentinel},
    secure_app,
};
use tonic::Code;
use tonic_types::StatusExt;

/// A targeted push whose payload is its topic.
fn targeted(target: pb::Target, topic: &str) -> pb::PushRequest {
    pb::PushRequest {
        target: Some(target),
        topic: topic.into(),
        payload: topic.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_targeted_push_reaches_the_union_minus_the_excluded_once_per_device() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    join(&mut c, "a", &["ann", "bob", "cy"]).await;
    join(&mut c, "b", &["bob", "dan"]).await;
    join(&mut c, "c", &["dan"]).await;
    let addr = app.gateway.addr;
    let mut ann_phone = Device::connect(addr, "ann", "phone").await.unwrap();
    let mut ann_laptop = Device::connect(addr, "ann", "laptop").await.unwrap();
    let mut bob = Device::connect(addr, "bob", "phone").await.unwrap();
    let mut cy = Device::connect(addr, "cy", "phone").await.unwrap();
    let mut dan = Device::connect(addr, "dan", "phone").await.unwrap();
    let mut eve = Device::connect(addr, "eve", "phone").await.unwrap();
    for d in [&ann_phone, &ann_laptop, &bob, &cy] {
        d.wait_states(3).await; // all, inbox, group a
    }
    dan.wait_states(4).await;
    eve.wait_states(2).await;

    // eve ∪ a ∪ b − cy − c = {ann, bob, eve}: bob is in both groups and gets it once.
    let union = pb::Target {
        user_ids: strings(&["eve"]),
        group_ids: strings(&["a", "b"]),
        except_user_ids: strings(&["cy"]),
        except_group_ids: strings(&["c"]),
        ..Default::default()
    };
    let r = c.push(targeted(union, "union")).await.unwrap().into_inner();
    assert_eq!((r.audience, r.user_count), (Audience::User as i32, 3), "{r:?}");
    assert!(!r.message_id.is_empty());
    // One group minus a user stays in the group's history.
    let minus = pb::Target { group_ids: strings(&["a"]), except_user_ids: strings(&["ann"]), ..Default::default() };
    let r = c.push(targeted(minus, "a-but-ann")).await.unwrap().into_inner();
    assert_eq!((r.audience, r.group_id.as_str()), (Audience::Group as i32, "a"));
    // Everyone but bob stays in the broadcast history.
    let all_but = pb::Target { all: true, except_user_ids: strings(&["bob"]), ..Default::default() };
    let r = c.push(targeted(all_but, "all-but-bob")).await.unwrap().into_inner();
    assert_eq!(r.audience, Audience::All as i32);
    // A group minus its only member reaches nobody, and says so.
    let nobody = pb::Target { group_ids: strings(&["c"]), except_group_ids: strings(&["b"]), ..Default::default() };
    let r = c.push(targeted(nobody, "nobody")).await.unwrap().into_inner();
    assert_eq!((r.user_count, r.message_id.as_str()), (0, ""), "{r:?}");

    let mut devices = [&mut ann_phone, &mut ann_laptop, &mut bob, &mut cy, &mut dan, &mut eve];
    let got = topics_until_sentinel(&mut c, &mut devices, "end").await;
    assert_eq!(sorted(&got[0]), ["all-but-bob", "union"], "ann's phone");
    assert_eq!(sorted(&got[1]), ["all-but-bob", "union"], "ann's laptop");
    assert_eq!(sorted(&got[2]), ["a-but-ann", "union"], "bob: once, though in two groups");
    assert_eq!(sorted(&got[3]), ["a-but-ann", "all-but-bob"], "cy was excluded from the union");
    assert_eq!(got[4], ["all-but-bob"], "dan's group c was excluded");
    assert_eq!(sorted(&got[5]), ["all-but-bob", "union"], "eve");

    // An excluded device resuming from before the pushes is not sent them either, and
    // the history goes on past them.
    let cursors = ann_phone.cursors();
    drop(ann_phone);
    let minus = pb::Target { group_ids: strings(&["a"]), except_user_ids: strings(&["ann"]), ..Default::default() };
    c.push(targeted(minus, "while-away-not-ann")).await.unwrap();
    c.push(targeted(pb::Target { group_ids: strings(&["a"]), ..Default::default() }, "while-away")).await.unwrap();
    let mut ann = Device::options().cursors(cursors).connect(addr, "ann", "phone").await.unwrap();
    assert_eq!(ann.next().await.topic, "while-away");
    let got = topics_until_sentinel(&mut c, &mut [&mut ann], "end-2").await;
    assert!(got[0].is_empty(), "{got:?}");
}

#[tokio::test]
async fn bad_targets_are_refused_and_write_nothing() {
    let app = App::builder().gateway(&["--max-users-per-call", "3"]).start().await;
    let mut c = app.gateway_client().await;
    join(&mut c, "big", &["u1", "u2"]).await;
    join(&mut c, "big", &["u3", "u4"]).await;
    let keys = app.redis.keys();
    let cases = [
        (None, "target"),
        (Some(pb::Target::default()), "target"),
        (Some(pb::Target { all: true, user_ids: strings(&["ann"]), ..Default::default() }), "target.all"),
        (
            Some(pb::Target { all: true, except_group_ids: strings(&["g"]), ..Default::default() }),
            "target.except_group_ids",
        ),
        (Some(pb::Target { user_ids: strings(&["bad id"]), ..Default::default() }), "target.user_ids[0]"),
        (
            Some(pb::Target { group_ids: strings(&["g", "h"]), except_user_ids: strings(&[""]), ..Default::default() }),
            "target.except_user_ids[0]",
        ),
        // Expanded, the union is over the per-call limit.
        (
            Some(pb::Target { group_ids: strings(&["big"]), user_ids: strings(&["ann"]), ..Default::default() }),
            "target",
        ),
    ];
    for (target, field) in cases {
        let req = pb::PushRequest { target, topic: "t".into(), ..Default::default() };
        let err = c.push(req).await.unwrap_err();
        assert_invalid(&err, field);
    }
    // The same group minus users has no limit: it stays in the group's history.
    let minus = pb::Target { group_ids: strings(&["big"]), except_user_ids: strings(&["u1"]), ..Default::default() };
    c.push(targeted(minus, "fine")).await.unwrap();
    let written: Vec<String> = app.redis.keys().into_iter().filter(|k| !keys.contains(k)).collect();
    assert!(written.iter().all(|k| k.contains("{g:big}")), "{written:?}");
}

#[tokio::test]
async fn a_batch_answers_each_push_in_order_and_delivers_the_good_ones() {
    let app = App::builder().gateway(&["--max-batch-pushes", "8"]).start().await;
    let mut c = app.gateway_client().await;
    join(&mut c, "team", &["bob"]).await;
    let addr = app.gateway.addr;
    let mut ann = Device::connect(addr, "ann", "phone").await.unwrap();
    let mut bob = Device::connect(addr, "bob", "phone").await.unwrap();
    ann.wait_states(2).await;
    bob.wait_states(3).await;
    let users = |u: &[&str]| pb::Target { user_ids: strings(u), ..Default::default() };
    let mut bad = targeted(users(&["ann"]), "bad topic!");
    bad.payload = Default::default();
    let mut once = targeted(users(&["ann"]), "once");
    once.idempotency_key = "key-1".into();
    let pushes = vec![
        targeted(users(&["ann"]), "b0"),
        bad,
        targeted(pb::Target { group_ids: strings(&["team"]), ..Default::default() }, "b2"),
        once.clone(),
        targeted(pb::Target { all: true, ..Default::default() }, "b4"),
        once,
        targeted(pb::Target::default(), "no-target"),
    ];
    let results = c.push_batch(pb::PushBatchRequest { pushes }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 7);
    let ids: Vec<String> =
        results.iter().map(|r| r.pushed.as_ref().map(|p| p.message_id.clone()).unwrap_or_default()).collect();
    for i in [0, 2, 3, 4, 5] {
        assert!(results[i].error.is_none() && !ids[i].is_empty(), "push {i}: {:?}", results[i]);
    }
    for (i, field) in [(1, "pushes[1].topic"), (6, "pushes[6].target")] {
        let e = results[i].error.as_ref().unwrap_or_else(|| panic!("push {i} should fail"));
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert!(e.message.contains(field), "{}", e.message);
        assert!(results[i].pushed.is_none());
    }
    assert_eq!(ids[3], ids[5], "a repeated idempotency key in one batch is one push");
    assert_eq!(results[2].pushed.as_ref().unwrap().audience, Audience::Group as i32);

    let mut got = topics_until_sentinel(&mut c, &mut [&mut ann, &mut bob], "end").await;
    // Order is promised within a history only (on a Cluster the inbox, the group and
    // the broadcast live on different shards): ann's inbox in batch order, once each.
    let (inbox, other): (Vec<String>, Vec<String>) = got[0].drain(..).partition(|t| t != "b4");
    assert_eq!((inbox, other), (vec!["b0".to_owned(), "once".to_owned()], vec!["b4".to_owned()]), "ann");
    assert_eq!(sorted(&got[1]), ["b2", "b4"], "bob");

    // The batch itself: empty, or over --max-batch-pushes.
    let err = c.push_batch(pb::PushBatchRequest { pushes: vec![] }).await.unwrap_err();
    assert_invalid(&err, "pushes");
    let nine = (0..9).map(|i| targeted(users(&["ann"]), &format!("x{i}"))).collect();
    let err = c.push_batch(pb::PushBatchRequest { pushes: nine }).await.unwrap_err();
    assert_invalid(&err, "pushes");
    let got = topics_until_sentinel(&mut c, &mut [&mut ann], "end-2").await;
    assert!(got[0].is_empty(), "a refused batch delivered {got:?}");
}

#[tokio::test]
async fn history_reads_page_either_way_and_stay_in_scope() {
    let (app, _creds) = secure_app(&["--api-key-rate", "0"]).await;
    let addr = app.gateway.addr;
    let mut c = authorized(addr, "k-admin").await;
    c.join_group(pb::JoinGroupRequest { group_id: "team".into(), user_ids: strings(&["ann"]) }).await.unwrap();
    let mut pushed = Vec::new();
    for k in 0..5 {
        pushed.push(c.push_to_users(to_users(&["ann"], &format!("m{k}"))).await.unwrap().into_inner().message_id);
    }
    let minus = pb::Target { all: true, except_user_ids: strings(&["ann"]), ..Default::default() };
    c.push(targeted(minus, "not-for-ann")).await.unwrap();

    let list = |audience: Audience, user: &str, group: &str, size: i32, token: &str, oldest_first: bool| {
        pb::ListHistoryRequest {
            audience: audience as i32,
            user_id: user.into(),
            group_id: group.into(),
            page_size: size,
            page_token: token.into(),
            oldest_first,
        }
    };
    // A backend with the history scope: newest first by default, pages of 2.
    let mut h = authorized(addr, "k-history").await;
    let (mut token, mut seen) = (String::new(), Vec::new());
    loop {
        let page = h.list_history(list(Audience::User, "ann", "", 2, &token, false)).await.unwrap().into_inner();
        assert!(!page.epoch.is_empty());
        seen.extend(page.messages.iter().map(|m| m.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = pushed.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let page = h.list_history(list(Audience::User, "ann", "", 0, "", true)).await.unwrap().into_inner();
    assert_eq!(page.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), pushed, "oldest first");
    assert_eq!(page.messages[0].topic, "m0");
    // The backend sees the broadcast as stored; ann's device does not see what excluded her.
    let all = h.list_history(list(Audience::All, "", "", 0, "", false)).await.unwrap().into_inner();
    assert_eq!(all.messages.len(), 1);
    let mut device = authorized(addr, &device_token("ann")).await;
    let all = device.list_history(list(Audience::All, "", "", 0, "", false)).await.unwrap().into_inner();
    assert!(all.messages.is_empty(), "{:?}", all.messages);
    // A device reads its own inbox (naming itself or not) and its groups, nothing else.
    let own = device.list_history(list(Audience::User, "", "", 0, "", false)).await.unwrap().into_inner();
    assert_eq!(own.messages.len(), 5);
    device.list_history(list(Audience::Group, "", "team", 0, "", false)).await.unwrap();
    let err = device.list_history(list(Audience::User, "bob", "", 0, "", false)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = device.list_history(list(Audience::Group, "", "other", 0, "", false)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A key without the history scope cannot read.
    let mut publisher = authorized(addr, "k-publish").await;
    let err = publisher.list_history(list(Audience::All, "", "", 0, "", false)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Bad requests name their field.
    for (req, field) in [
        (list(Audience::Unspecified, "", "", 0, "", false), "audience"),
        (list(Audience::User, "", "", 0, "", false), "user_id"),
        (list(Audience::Group, "", "bad id", 0, "", false), "group_id"),
        (list(Audience::All, "", "", -1, "", false), "page_size"),
        (list(Audience::All, "", "", 0, "zz", false), "page_token"),
    ] {
        assert_invalid(&h.list_history(req).await.unwrap_err(), field);
    }
    // A history never pushed to is empty, not an error.
    let none = h.list_history(list(Audience::Group, "", "empty", 0, "", false)).await.unwrap().into_inner();
    assert!(none.messages.is_empty() && none.next_page_token.is_empty());
}

/// The DISCONNECTED ErrorInfo of a stream's end: (reason, reconnect).
fn disconnected(status: &tonic::Status) -> (String, String) {
    let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("DISCONNECTED", "push.v1"));
    (info.metadata["reason"].clone(), info.metadata["reconnect"].clone())
}

#[tokio::test]
async fn disconnect_ends_a_device_or_a_user_on_every_replica() {
    let app = App::start().await;
    let other = app.replica(&[]).await;
    let mut c = app.gateway_client().await;
    let mut phone = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    let mut laptop = Device::connect(other.addr, "ann", "laptop").await.unwrap();
    let mut bob = Device::connect(other.addr, "bob", "phone").await.unwrap();
    for d in [&phone, &laptop, &bob] {
        d.wait_states(2).await;
    }
    let req = |device: &str, reason: &str, reconnect: bool| pb::DisconnectRequest {
        user_id: "ann".into(),
        device_id: device.into(),
        reason: reason.into(),
        reconnect,
    };
    c.disconnect(req("phone", "token refreshed", true)).await.unwrap();
    let end = phone.end().await.expect("the phone's stream ends");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert_eq!(disconnected(&end), ("token refreshed".into(), "true".into()));
    // The laptop (another device, another replica) is still served.
    c.push_to_users(to_users(&["ann"], "still-here")).await.unwrap();
    assert_eq!(laptop.next().await.topic, "still-here");

    // All of ann's devices, without a way back.
    c.disconnect(req("", "banned", false)).await.unwrap();
    let end = laptop.end().await.expect("the laptop's stream ends");
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    assert_eq!(disconnected(&end), ("banned".into(), "false".into()));
    c.push_to_users(to_users(&["bob"], "bob-too")).await.unwrap();
    assert_eq!(bob.next().await.topic, "bob-too", "another user is untouched");

    for (r, field) in [
        (pb::DisconnectRequest { user_id: String::new(), ..req("", "", true) }, "user_id"),
        (req("bad id", "", true), "device_id"),
        (req("", "line\nbreak", true), "reason"),
        (req("", &"x".repeat(300), true), "reason"),
    ] {
        assert_invalid(&c.disconnect(r).await.unwrap_err(), field);
    }
}

#[tokio::test]
async fn strict_resume_fails_on_a_gap_instead_of_starting_after_it() {
    let app = App::builder().gateway(&["--inbox-max-len", "10"]).start().await;
    let mut c = app.gateway_client().await;
    let addr = app.gateway.addr;
    let mut d = Device::connect(addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    c.push_to_users(to_users(&["ann"], "seen")).await.unwrap();
    d.next().await;
    let cursors = d.cursors();
    drop(d);

    // Nothing lost yet: strict resume resumes.
    c.push_to_users(to_users(&["ann"], "missed")).await.unwrap();
    let mut d = Device::options().strict().cursors(cursors.clone()).connect(addr, "ann", "phone").await.unwrap();
    assert_eq!(d.next().await.topic, "missed");
    drop(d);

    // Far more than the inbox keeps: the cursor cannot be honoured.
    for k in 0..250 {
        c.push_to_users(to_users(&["ann"], &format!("m{k}"))).await.unwrap();
    }
    let err = Device::options().strict().cursors(cursors.clone()).connect(addr, "ann", "phone").await.err();
    let err = err.expect("strict resume over a gap is refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let failure = err.get_error_details().precondition_failure().cloned().expect("PreconditionFailure");
    assert_eq!((failure.violations[0].r#type.as_str(), failure.violations[0].subject.as_str()), ("CURSOR", "inbox"));
    // Without strict, the same cursors start after the gap (as before).
    let d = Device::options().cursors(cursors).connect(addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    let inbox = d.states().into_iter().find(|s| s.cursor.as_ref().unwrap().audience == Audience::User as i32);
    assert_eq!(inbox.unwrap().continuity, pb::Continuity::Gap as i32);
}
