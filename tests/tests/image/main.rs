//! The container image as an operator runs it: built from the Dockerfile
//! (scripts/build-image.sh), Redis and the three services each in a container of a pod
//! (read-only root filesystem, every capability dropped, the non-root user), the
//! gateway's port published on loopback. Health answers, and a push reaches a device.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use push_tests::{Device, authorized, eventually, fixtures::to_users, health, wait_health};
use tonic_health::pb::health_check_response::ServingStatus;

const IMAGE: &str = "localhost/push:test";
const REDIS_IMAGE: &str = "docker.io/library/redis:7.0";
const ADMIN_KEY: &str = "an-admin-key-for-the-image-test";
const INTERNAL_TOKEN: &str = "an-internal-token-for-the-image-test";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs a command, failing the test with its output if it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

fn podman(args: &[&str]) -> String {
    run(Command::new("podman").args(args))
}

/// A pod, removed with its containers on drop (also when the test fails).
struct Pod(String);

impl Pod {
    /// Runs `image` in the pod as `name` with `env`, hardened as the manifests run it.
    fn run(&self, name: &str, image: &str, env: &[(&str, &str)], command: &[&str], volume: Option<&str>) {
        let name = format!("{}-{name}", self.0);
        let mut args = vec!["run", "-d", "--pod", &self.0, "--name", &name, "--read-only", "--cap-drop=ALL"];
        args.extend(["--security-opt", "no-new-privileges"]);
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for e in &env {
            args.extend(["-e", e]);
        }
        if let Some(v) = volume {
            args.extend(["-v", v]);
        }
        args.push(image);
        args.extend(command);
        podman(&args);
    }

    fn logs(&self) -> String {
        let names = podman(&["ps", "-a", "--pod", "--filter", &format!("pod={}", self.0), "--format", "{{.Names}}"]);
        let mut out = String::new();
        for n in names.lines().filter(|n| !n.ends_with("-infra")) {
            let logs = Command::new("podman").args(["logs", "--tail", "20", n]).output().unwrap();
            out +=
                &format!("--- {n}\n{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
        }
        out
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = Command::new("podman").args(["pod", "rm", "-f", &self.0]).output();
    }
}

#[tokio::test]
async fn the_image_runs_the_system_and_a_push_reaches_a_device() {
    run(Command::new(root().join("scripts/build-image.sh")).arg(IMAGE));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let pod = Pod(format!("push-image-test-{}", std::process::id()));
    let _ = Command::new("podman").args(["pod", "rm", "-f", &pod.0]).output();
    podman(&["pod", "create", "--name", &pod.0, "-p", &format!("127.0.0.1:{port}:50051")]);

    // The internal token as a mounted file, readable by the image's user.
    let creds = std::env::temp_dir().join(format!("push-image-creds-{}", std::process::id()));
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("internal.token"), INTERNAL_TOKEN).unwrap();
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&creds));
    let volume = format!("{}:/creds:ro", creds.display());
    let digest = push_tests::credentials::hex(&push_common::auth::digest(ADMIN_KEY.as_bytes()));
    let api_keys = format!("admin:{digest}:admin");

    // In a pod the containers share loopback: each reaches the others on 127.0.0.1.
    pod.run("redis", REDIS_IMAGE, &[], &["redis-server", "--save", "", "--appendonly", "no"], None);
    let common = [("REDIS_URL", "redis://127.0.0.1:6379"), ("INTERNAL_TOKEN_FILE", "/creds/internal.token")];
    pod.run("presence", IMAGE, &common, &["/usr/local/bin/presence-svc"], Some(&volume));
    pod.run("profile", IMAGE, &common, &["/usr/local/bin/profile-svc"], Some(&volume));
    let gateway = [
        &common[..],
        &[
            ("PRESENCE_URL", "http://127.0.0.1:50061"),
            ("PROFILE_URL", "http://127.0.0.1:50062"),
            ("GATEWAY_API_KEYS", &api_keys),
        ],
    ]
    .concat();
    pod.run("gateway", IMAGE, &gateway, &[], Some(&volume)); // the image's default command

    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(Duration::from_secs(30), "the published port answers health", async || {
        health(addr, push_common::server::LIVENESS).await == Some(ServingStatus::Serving)
    })
    .await;
    wait_health(addr, "", ServingStatus::Serving).await;

    let mut device = Device::options().bearer(ADMIN_KEY).connect(addr, "ann", "phone").await.unwrap();
    let mut backend = authorized(addr, ADMIN_KEY).await;
    backend.push_to_users(to_users(&["ann"], "from-the-image")).await.unwrap();
    assert_eq!(device.next().await.topic, "from-the-image");
    let _ = std::fs::remove_dir_all(&creds);
}
