use clap::Parser;

fn main() -> anyhow::Result<()> {
    push_common::telemetry::init();
    let config = push_gateway::Config::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime.enable_all().build()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        push_gateway::serve(listener, config, push_common::shutdown::signal()).await.map_err(|e| anyhow::anyhow!(e))
    })
}
