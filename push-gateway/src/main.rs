use clap::Parser;

// Every binary of the workspace declares mimalloc (docs/ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    push_common::memory::init();
    push_common::telemetry::init();
    push_gateway::run(push_gateway::Config::parse()).map_err(|e| anyhow::anyhow!(e))
}
