//! push-gateway as a process of its own, for tests that kill it with SIGKILL.
use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Logs are on only with TEST_LOG (tests/src/services.rs sets RUST_LOG=off otherwise).
    push_gateway::run(push_gateway::Config::parse()).map_err(|e| anyhow::anyhow!(e))
}
