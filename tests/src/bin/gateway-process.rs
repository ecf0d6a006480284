//! push-gateway as a process of its own, for tests that kill it with SIGKILL.
use clap::Parser;

fn main() -> anyhow::Result<()> {
    if std::env::var_os("TEST_LOG").is_some() {
        push_common::telemetry::init();
    }
    push_gateway::run(push_gateway::Config::parse()).map_err(|e| anyhow::anyhow!(e))
}
