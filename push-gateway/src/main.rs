use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    push_common::telemetry::init();
    let config = push_gateway::Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    push_gateway::serve(listener, config, push_common::shutdown::signal())
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
