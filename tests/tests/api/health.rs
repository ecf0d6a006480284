//! Health follows Redis and the internal services; reflection lists every service.
use push_proto::push::v1 as pb;
use push_tests::{App, channel, health, wait_health};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus::{NotServing, Serving};

#[tokio::test]
async fn health_turns_not_serving_while_redis_is_down_and_back_after() {
    let mut app = App::start().await;
    let mut c = app.gateway_client().await;
    let servers = [
        (app.presence.addr, "presence.v1.Presence"),
        (app.profile.addr, "profile.v1.Profile"),
        (app.gateway.addr, "push.v1.PushGateway"),
    ];
    for (addr, name) in servers {
        wait_health(addr, "", Serving).await;
        wait_health(addr, name, Serving).await;
    }

    app.redis.stop();
    for (addr, name) in servers {
        wait_health(addr, name, NotServing).await;
        wait_health(addr, "", NotServing).await;
    }
    // Calls fail fast with UNAVAILABLE (passed through by the gateway), and write nothing.
    let login = pb::LoginRequest { user_id: "u".into(), session_id: "d".into(), ttl: None, ..Default::default() };
    assert_eq!(c.login(login.clone()).await.unwrap_err().code(), Code::Unavailable);
    let get = pb::GetProfileRequest { user_id: "u".into() };
    assert_eq!(c.get_profile(get).await.unwrap_err().code(), Code::Unavailable);

    app.redis.restart();
    for (addr, name) in servers {
        wait_health(addr, name, Serving).await;
    }
    c.login(login).await.unwrap();
    let count = c.count_online_users(pb::CountOnlineUsersRequest {}).await.unwrap();
    assert_eq!(count.into_inner().online_users, 1);
}

#[tokio::test]
async fn reflection_lists_the_services_on_every_server() {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = App::start().await;
    for (addr, name) in [
        (app.gateway.addr, "push.v1.PushGateway"),
        (app.presence.addr, "presence.v1.Presence"),
        (app.profile.addr, "profile.v1.Profile"),
    ] {
        // v1alpha is what older grpcurl speaks.
        let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(channel(addr).await);
        let req = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut stream = c.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(Ok(resp)) = stream.next().await else { panic!("no reflection answer") };
        let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            resp.message_response
        else {
            panic!("unexpected reflection answer")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&name) && names.contains(&"grpc.health.v1.Health"), "{names:?}");

        let mut c = v1::server_reflection_client::ServerReflectionClient::new(channel(addr).await);
        let req = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(name.into())),
        };
        let mut stream = c.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(Ok(resp)) = stream.next().await else { panic!("no reflection answer") };
        assert!(
            matches!(
                resp.message_response,
                Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
            ),
            "v1 cannot describe {name}"
        );
    }
}

#[tokio::test]
async fn reflection_can_be_turned_off() {
    use tonic_reflection::pb::v1;
    let app = App::builder().gateway(&["--no-reflection"]).start().await;
    let mut c = v1::server_reflection_client::ServerReflectionClient::new(channel(app.gateway.addr).await);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let err = c.server_reflection_info(tokio_stream::iter([req])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    // Health stays on.
    assert_eq!(health(app.gateway.addr, "").await, Some(Serving));
}
