use clap::Parser;

// Every binary of the workspace declares mimalloc (docs/ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    push_common::memory::init();
    // Logging and tracing start inside the runtime `run` builds (the OTLP exporter needs it).
    push_gateway::run(push_gateway::Config::parse()).map_err(|e| anyhow::anyhow!(e))
}
