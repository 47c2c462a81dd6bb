//! The `sluice` binary: parses the command line, loads config, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::telemetry::{self, LogFormat};

/// mimalloc: markedly cheaper than glibc malloc for the many small, short-lived allocations of
/// HTTP and Redis work (measured with the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice, a self-hosted webhook gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file (TOML); `SLUICE_*` environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and load every plugin it names; report every problem.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let config = sluice::config::load(config.as_deref())?;
            let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            runtime.block_on(async {
                let gateway = sluice::Gateway::start(config).await?;
                shutdown_signal().await;
                tracing::info!("Shutting down.");
                gateway.shutdown().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let loaded = sluice::config::load(Some(&config))?;
            sluice::check(&loaded)?;
            println!(
                "{}: OK ({} endpoints, {} routes, {} plugins loaded)",
                config.display(),
                loaded.endpoints.len(),
                loaded.routes.len(),
                loaded.plugins.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return interrupt.await.unwrap_or_default(),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or_default();
}
