//! The `sluice` binary: parses the command line, loads config, and hands over to the library.
//!
//! `run` and `check` are here; the subcommand groups each have a module: [`admin`] (the admin
//! API), [`config`] (plan and reload against a running gateway), [`plugin`] (test, new, wit).

mod admin;
mod config;
mod plugin;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::telemetry::{self, LogFormat};

use admin::AdminCommand;
use config::ConfigCommand;
use plugin::PluginCommand;

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
    /// Work with config files against a running gateway.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Talk to a running gateway's admin API.
    Admin {
        /// The gateway's base URL.
        #[arg(long, env = "SLUICE_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
        url: url::Url,
        /// The admin bearer token (`admin.token`).
        #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held until main returns: dropping it writes out the lines still queued.
    let _log = telemetry::init(cli.log_format);
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
            let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            let stopped_by_itself = runtime.block_on(async {
                // Before the gateway listens: a SIGTERM from then on drains rather than kills.
                let terminated = shutdown_signal();
                // From a file, SIGHUP and `config reload` read it again.
                let gateway = match config {
                    Some(path) => sluice::Gateway::start_file(&path).await?,
                    None => sluice::Gateway::start(sluice::config::load(None)?).await?,
                };
                let by_itself = tokio::select! {
                    _ = terminated => false,
                    _ = gateway.stopped() => true,
                };
                tracing::info!("Shutting down.");
                gateway.shutdown().await;
                anyhow::Ok(by_itself)
            })?;
            Ok(if stopped_by_itself { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Check { config } => {
            let loaded = match sluice::check_file(&config) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            let queue = match loaded.backend() {
                sluice::config::Backend::Embedded => format!("embedded store {}", loaded.queue.path().display()),
                sluice::config::Backend::Redis => format!("redis {}", loaded.redis_settings().url_for_display()),
            };
            println!(
                "{}: OK ({} endpoints, {} routes, {} plugins loaded; queue: {queue})",
                config.display(),
                loaded.endpoints.len(),
                loaded.routes.len(),
                loaded.plugins.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin { url, token, command } => {
            let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            let answer = runtime.block_on(admin::run(&url, &token, command))?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(command) => config::run(command),
        Command::Plugin(command) => plugin::run(command),
    }
}

/// Waits for SIGINT or SIGTERM.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // Both handlers are installed here, when called (not when first polled).
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut term = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                Some(_) = async { interrupt.as_mut()?.recv().await } => {}
                Some(_) = async { term.as_mut()?.recv().await } => {}
                else => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        tokio::signal::ctrl_c().await.unwrap_or_default()
    }
}
