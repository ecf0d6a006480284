use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    push_common::memory::init();
    push_common::telemetry::init();
    let config = profile_svc::Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    profile_svc::serve(listener, config, push_common::shutdown::signal()).await.map_err(|e| anyhow::anyhow!(e))
}
