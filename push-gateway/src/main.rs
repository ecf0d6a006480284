use clap::Parser;

fn main() -> anyhow::Result<()> {
    push_common::memory::init();
    push_common::telemetry::init();
    push_gateway::run(push_gateway::Config::parse()).map_err(|e| anyhow::anyhow!(e))
}
