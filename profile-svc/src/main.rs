use clap::Parser;

// Every binary of the workspace declares mimalloc (docs/ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    push_common::memory::init();
    push_common::telemetry::init();
    let config = profile_svc::Config::parse();
    push_common::metrics::install(config.serve.metrics_listen, false).map_err(|e| anyhow::anyhow!(e))?;
    let listener = profile_svc::listen(config.listen).await.map_err(|e| anyhow::anyhow!(e))?;
    let result = profile_svc::serve(listener, config, push_common::shutdown::signal()).await;
    push_common::telemetry::shutdown().await;
    result.map_err(|e| anyhow::anyhow!(e))
}
