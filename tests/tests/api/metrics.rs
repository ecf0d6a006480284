//! The Prometheus endpoint: scraped before and after a workload, its counters move by
//! exactly what the workload did. The gateway runs as a process of its own, so its
//! metrics are its alone (the in-process services of other tests record nothing).
use std::time::Duration;

use push_proto::push::v1 as pb;
use push_tests::{
    App, Device, GatewayProcess, eventually,
    fixtures::{to_all, to_users},
    gateway_client,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The exposition text at `addr` (plain HTTP/1.1, as Prometheus scrapes it).
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("the metrics port answers");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The sum of every series of `name` whose labels include each of `labels` (0 when
/// there is none yet).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

#[tokio::test]
async fn counters_move_by_exactly_what_a_workload_did() {
    let app = App::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let listen = port.to_string();
    let gw = GatewayProcess::start(env!("CARGO_BIN_EXE_gateway-process"), &app, &["--metrics-listen", &listen]).await;
    let mut c = gateway_client(gw.addr).await;
    let mut devices = Vec::new();
    for u in ["u1", "u2", "u3"] {
        let d = Device::connect(gw.addr, u, "phone").await.unwrap();
        d.wait_states(2).await;
        devices.push(d);
    }
    let before = scrape(port).await;
    assert_eq!(value(&before, "push_gateway_streams", &[]), 3.0);
    // The broadcast channel and one inbox channel per user.
    assert_eq!(value(&before, "push_gateway_hub_channels", &[]), 4.0);

    for k in 0..5 {
        c.push_to_users(to_users(&["u1"], &format!("u{k}"))).await.unwrap();
    }
    for k in 0..2 {
        c.push_to_all(to_all(&format!("a{k}"))).await.unwrap();
    }
    let bad = c.push_to_users(to_users(&[""], "refused")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let pushes = (0..4)
        .map(|k| pb::PushRequest {
            target: Some(pb::Target { user_ids: vec!["u2".into()], ..Default::default() }),
            topic: format!("b{k}"),
            ..Default::default()
        })
        .collect();
    c.push_batch(pb::PushBatchRequest { pushes }).await.unwrap();
    // 7 for u1, 6 for u2, 2 for u3.
    for (d, n) in devices.iter_mut().zip([7, 6, 2]) {
        for _ in 0..n {
            d.next().await;
        }
    }

    let after = scrape(port).await;
    let moved = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(moved("push_gateway_pushes_total", &[("kind", "users")]), 5.0);
    assert_eq!(moved("push_gateway_pushes_total", &[("kind", "all")]), 2.0);
    assert_eq!(moved("push_gateway_pushes_total", &[("kind", "batch")]), 4.0);
    assert_eq!(moved("push_gateway_deliveries_total", &[]), 15.0);
    let rpc = |m: &str, code: &str| moved("rpc_requests_total", &[("method", m), ("code", code)]);
    assert_eq!(rpc("/push.v1.PushGateway/PushToUsers", "Ok"), 5.0);
    assert_eq!(rpc("/push.v1.PushGateway/PushToUsers", "InvalidArgument"), 1.0);
    assert_eq!(rpc("/push.v1.PushGateway/PushToAll", "Ok"), 2.0);
    assert_eq!(rpc("/push.v1.PushGateway/PushBatch", "Ok"), 1.0);
    assert_eq!(moved("rpc_duration_seconds_count", &[("method", "/push.v1.PushGateway/PushToUsers")]), 6.0);
    // Each push ran its script; other work (renewals, acks) may have run commands too.
    assert!(moved("redis_commands_total", &[("command", "EVALSHA")]) >= 7.0, "{after}");
    assert!(moved("redis_commands_total", &[("command", "pipeline")]) >= 1.0, "the batch's pipeline");
    assert_eq!(moved("redis_command_errors_total", &[]), 0.0);
    for name in ["push_gateway_slow_consumer_cutoffs_total", "push_gateway_resume_gaps_total"] {
        assert_eq!(moved(name, &[]), 0.0, "{name}");
    }

    drop(devices.pop());
    eventually(Duration::from_secs(10), "the closed stream leaves the gauge", async || {
        value(&scrape(port).await, "push_gateway_streams", &[]) == 2.0
    })
    .await;
}
