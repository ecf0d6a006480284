//! The deployment manifests (deploy/) and the operations guide held against the code:
//! every environment variable a manifest sets is one its binary reads, ports and
//! health service names match the binaries, and docs/OPERATIONS.md documents every
//! flag's environment variable. No cluster needed: `scripts/check-deploy.sh` renders
//! and validates the manifests themselves.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use clap::CommandFactory;

/// The port every pod serves its metrics on (the monitoring component scrapes `metrics`).
const METRICS: u16 = 9090;

/// Variables the binaries read outside their flags (common/src/telemetry.rs).
const LOGGING: [&str; 4] = ["RUST_LOG", "LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Each binary's name, its clap command, its default port and its health service name.
fn binaries() -> Vec<(&'static str, clap::Command, u16, &'static str)> {
    vec![
        ("push-gateway", push_gateway::Config::command(), 50051, push_gateway::SERVICE_NAME),
        ("presence-svc", presence_svc::Config::command(), 50061, presence_svc::SERVICE_NAME),
        ("profile-svc", profile_svc::Config::command(), 50062, profile_svc::SERVICE_NAME),
    ]
}

/// The environment variables a command reads (its flags' `env`), with the flag's
/// default value if it has one.
fn env_of(cmd: &clap::Command) -> BTreeMap<String, Option<String>> {
    cmd.get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_owned();
            Some((env, a.get_default_values().first().map(|v| v.to_string_lossy().into_owned())))
        })
        .collect()
}

/// One YAML document of a manifest, as lines.
struct Doc {
    file: String,
    lines: Vec<String>,
}

impl Doc {
    fn kind(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| l.strip_prefix("kind: "))
    }
    fn name(&self) -> Option<&str> {
        let i = self.lines.iter().position(|l| l == "metadata:")?;
        self.lines[i + 1..].iter().find_map(|l| l.trim().strip_prefix("name: "))
    }
    /// `KEY: value` lines at the first indentation under a top-level `key:` line.
    fn map(&self, key: &str) -> Vec<(String, String)> {
        let Some(i) = self.lines.iter().position(|l| l == &format!("{key}:")) else { return vec![] };
        self.lines[i + 1..]
            .iter()
            .take_while(|l| l.starts_with("  ") || l.trim().is_empty() || l.trim_start().starts_with('#'))
            .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.trim().split_once(':')?;
                Some((k.to_owned(), v.trim().trim_matches('"').to_owned()))
            })
            .collect()
    }
    /// Values of every `key: value` line anywhere in the document (any indentation,
    /// with or without a list dash).
    fn all(&self, key: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(&format!("{key}: ")).map(str::to_owned))
            .collect()
    }
}

/// Every file with extension `ext` below the repository's folders `dirs`, sorted.
fn files(dirs: &[&str], ext: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs: Vec<PathBuf> = dirs.iter().map(|d| root().join(d)).collect();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn docs() -> Vec<Doc> {
    let files = files(&["deploy"], "yaml");
    assert!(files.len() >= 6, "deploy/ has its manifests: {files:?}");
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let file = f.strip_prefix(root()).unwrap().display().to_string();
        for part in text.split("\n---\n") {
            out.push(Doc { file: file.clone(), lines: part.lines().map(str::to_owned).collect() });
        }
    }
    out
}

#[test]
fn every_variable_a_manifest_sets_is_one_its_binary_reads() {
    let docs = docs();
    let mut checked = 0;
    for (bin, cmd, _, _) in binaries() {
        let reads = env_of(&cmd);
        for d in &docs {
            let ours = match d.kind() {
                Some("ConfigMap") => d.name() == Some(bin),
                Some("Deployment") => d.name() == Some(bin),
                _ => false,
            };
            if !ours {
                continue;
            }
            let set: Vec<String> = match d.kind() {
                Some("ConfigMap") => d.map("data").into_iter().map(|(k, _)| k).collect(),
                // `- name: X` entries whose name is an environment variable's.
                _ => d
                    .all("name")
                    .into_iter()
                    .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                    .collect(),
            };
            for var in set {
                assert!(
                    reads.contains_key(&var) || LOGGING.contains(&var.as_str()),
                    "{}: {bin} does not read {var}",
                    d.file
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} variables found: is the parser still reading the manifests?");
}

#[test]
fn ports_and_health_services_match_the_binaries() {
    let docs = docs();
    for (bin, cmd, port, _) in binaries() {
        let reads = env_of(&cmd);
        let listen_var = reads
            .keys()
            .find(|k| {
                k.ends_with("_LISTEN")
                    && !["METRICS_LISTEN", "HEALTH_LISTEN", "GATEWAY_CONSOLE_LISTEN"].contains(&k.as_str())
            })
            .unwrap()
            .clone();
        let default = reads[&listen_var].clone().unwrap();
        assert!(default.ends_with(&format!(":{port}")), "{bin} listens on {default} by default");
        let find = |kind: &str| {
            docs.iter()
                .find(|d| d.kind() == Some(kind) && d.name() == Some(bin) && d.file.contains("base/"))
                .unwrap_or_else(|| panic!("deploy/base has a {kind} named {bin}"))
        };
        let config = find("ConfigMap").map("data");
        let listen = config.iter().find(|(k, _)| *k == listen_var).map(|(_, v)| v.clone());
        assert_eq!(listen, Some(format!("0.0.0.0:{port}")), "{bin}'s ConfigMap sets {listen_var}");

        let deployment = find("Deployment");
        assert_eq!(deployment.all("containerPort"), [port.to_string(), METRICS.to_string()], "{bin}'s container ports");
        let metrics = config.iter().find(|(k, _)| k == "METRICS_LISTEN").map(|(_, v)| v.clone());
        assert_eq!(metrics, Some(format!("0.0.0.0:{METRICS}")), "{bin}'s ConfigMap serves metrics");
        assert!(deployment.all("command").iter().any(|c| c.contains(&format!("/{bin}\""))), "{bin}'s command");
        // Every probe asks the container's port; liveness and startup the name that
        // stays SERVING while the process lives, readiness the dependency-driven one.
        let text = deployment.lines.join("\n");
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let at = text.find(&format!("{probe}:")).unwrap_or_else(|| panic!("{bin} has a {probe}"));
            let body: String = text[at..].lines().skip(1).take_while(|l| l.starts_with("            ")).collect();
            assert!(body.contains(&format!("port: {port}")), "{bin}'s {probe} asks port {port}: {body}");
            let service = body.split("service: ").nth(1).map(|s| s.split_whitespace().next().unwrap().to_owned());
            match probe {
                "readinessProbe" => assert_eq!(service, None, "{bin}'s readiness asks \"\" (dependencies)"),
                _ => assert_eq!(service.as_deref(), Some(push_common::server::LIVENESS), "{bin}'s {probe}"),
            }
        }
        let service = find("Service");
        assert_eq!(service.all("port"), [port.to_string(), METRICS.to_string()], "{bin}'s Service ports");
        for name in ["grpc", "metrics"] {
            assert!(
                service.lines.iter().any(|l| l.trim() == format!("- name: {name}")),
                "{bin}'s Service has port {name}"
            );
        }
    }
    // The gateway reaches the internal services at their Services' ports.
    let gw =
        docs.iter().find(|d| d.kind() == Some("ConfigMap") && d.name() == Some("push-gateway")).unwrap().map("data");
    let get = |k: &str| gw.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("PRESENCE_URL"), "http://presence-svc:50061");
    assert_eq!(get("PROFILE_URL"), "http://profile-svc:50062");
}

#[test]
fn the_termination_grace_covers_the_drain() {
    let secs = |v: &str| -> u64 {
        let v = v.trim_end_matches('s');
        v.parse().unwrap_or_else(|_| panic!("{v}: seconds expected"))
    };
    for d in docs().iter().filter(|d| d.kind() == Some("ConfigMap")) {
        let data = d.map("data");
        let get = |k: &str| data.iter().find(|(n, _)| n == k).map(|(_, v)| secs(v)).unwrap_or(0);
        let drain = get("DRAIN_DELAY") + get("GATEWAY_STREAM_DRAIN_WINDOW") + get("SHUTDOWN_GRACE");
        if drain == 0 {
            continue;
        }
        let name = d.name().unwrap();
        let deployment = docs().into_iter().find(|x| x.kind() == Some("Deployment") && x.name() == Some(name)).unwrap();
        let grace = secs(&deployment.all("terminationGracePeriodSeconds")[0]);
        assert!(grace > drain, "{name}: terminationGracePeriodSeconds {grace} must exceed the drain, {drain} s");
    }
}

#[test]
fn the_operations_guide_documents_every_flag_and_environment_variable() {
    let guide = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap();
    let mut missing = BTreeSet::new();
    for (bin, cmd, _, _) in binaries() {
        for var in env_of(&cmd).keys() {
            if !guide.contains(&format!("`{var}`")) {
                missing.insert(format!("{var} ({bin})"));
            }
        }
        // And every flag, by its long name.
        for flag in cmd.get_arguments().filter_map(|a| a.get_long()).filter(|l| !["help", "version"].contains(l)) {
            if !guide.contains(&format!("`--{flag}`")) && !guide.contains(&format!("`--{flag}`,")) {
                missing.insert(format!("--{flag} ({bin})"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/OPERATIONS.md does not document: {missing:?}");
}

/// Every metric an alert uses is one the code records (a histogram's `_bucket`,
/// `_count` and `_sum` count as the histogram).
#[test]
fn every_metric_an_alert_uses_is_recorded_by_the_code() {
    let alerts = std::fs::read_to_string(root().join("deploy/components/monitoring/alerts.yaml")).unwrap();
    let code = files(&["common/src", "push-gateway/src", "presence-svc/src", "profile-svc/src"], "rs");
    let source: String = code.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    let mut used = BTreeSet::new();
    for line in alerts.lines().filter(|l| l.contains("expr") || l.starts_with("            ")) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if ["rpc_", "redis_", "push_gateway_", "presence_"].iter().any(|p| word.starts_with(p)) {
                used.insert(
                    word.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum").to_owned(),
                );
            }
        }
    }
    assert!(used.len() >= 6, "alerts use {used:?}");
    for m in &used {
        assert!(source.contains(&format!("\"{m}\"")), "an alert uses {m}, which no code records");
    }
}

/// With the TLS component the probes ask the plaintext health port the same patch
/// opens (Kubernetes' gRPC probes cannot speak TLS), and every server gets a
/// certificate.
#[test]
fn the_tls_component_probes_the_plaintext_health_port() {
    let docs = docs();
    for (bin, _, _, _) in binaries() {
        let patch = docs
            .iter()
            .find(|d| d.file.contains("components/tls/") && d.kind() == Some("Deployment") && d.name() == Some(bin))
            .unwrap_or_else(|| panic!("the TLS component patches {bin}"));
        let values = patch.all("value");
        let listen = values.iter().find(|v| v.contains(":8081")).unwrap_or_else(|| panic!("{bin}: HEALTH_LISTEN"));
        let port = listen.trim_matches('"').rsplit(':').next().unwrap().to_owned();
        assert!(patch.all("name").iter().any(|n| n == "HEALTH_LISTEN"), "{bin} sets HEALTH_LISTEN");
        assert!(patch.all("name").iter().any(|n| n == "TLS_CERT_FILE"), "{bin} gets a certificate");
        assert_eq!(patch.all("port"), [port.clone(), port.clone(), port], "{bin}'s three probes ask the health port");
    }
}
