//! `fqdnd run`: the agent. Config from defaults, `--config FILE` and flags; runs until SIGTERM or
//! SIGINT, then stops accepting queries and lets those in flight finish.

use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::agent;
use crate::config::{self, Environment, FileConfig, Flags};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: Flags,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.flags.config {
        Some(path) => config::read_file(path)?,
        None => FileConfig::default(),
    };
    let config = config::resolve(&file, &args.flags, &Environment::system())?;
    tracing::info!(config = %serde_json::to_string(&config)?, "effective configuration");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            on_signal.cancel();
        });
        agent::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop fqdnd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
