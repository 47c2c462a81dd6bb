//! `sluice config plan` and `sluice config reload`: a config file against a running gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::admin::admin_call;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Compare a config file with the running gateway's and print what applying it would change.
    /// Exit 0: no change; 2: changes (listed); 1: the file has problems (every one listed).
    Plan {
        /// Config file (TOML); `SLUICE_*` environment variables override it, as for `run`.
        #[arg(long, short)]
        config: PathBuf,
        /// The gateway's base URL.
        #[arg(long, env = "SLUICE_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
        url: url::Url,
        /// The admin bearer token (`admin.token`).
        #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Make the running gateway read its config file again and apply it whole (as SIGHUP does),
    /// and print what changed. Exit 0: applied, or nothing to apply; 1: refused (every problem, or
    /// every key that needs a restart, listed; nothing was applied).
    Reload {
        /// The gateway's base URL.
        #[arg(long, env = "SLUICE_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
        url: url::Url,
        /// The admin bearer token (`admin.token`).
        #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
}

/// Runs one `sluice config` subcommand.
pub fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Plan { config, url, token } => plan(&config, &url, &token),
        ConfigCommand::Reload { url, token } => reload(&url, &token),
    }
}

/// `sluice config plan`: exit 0 when the file is what runs, 2 with the changes listed, 1 when the
/// file has problems.
fn plan(config: &std::path::Path, url: &url::Url, token: &str) -> anyhow::Result<ExitCode> {
    let proposed = match sluice::check_file(config) {
        Ok(proposed) => sluice::config::Shown::of(&proposed),
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    let (running, endpoints) = runtime.block_on(async {
        let running = admin_call(url, token, &["v1", "config"]).await?;
        let endpoints = admin_call(url, token, &["v1", "endpoints"]).await?;
        anyhow::Ok((running, endpoints))
    })?;
    if running["hash"].as_str() == Some(proposed.hash.as_str()) {
        println!("{}: no change (the running configuration is the same, {})", config.display(), proposed.hash);
        return Ok(ExitCode::SUCCESS);
    }
    let paused = endpoints["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["paused_deliveries"].as_u64().unwrap_or(0))))
        .collect();
    let running_config = &running["config"];
    let plan = sluice::config::plan(running_config, &proposed.config, &sluice::config::Running { paused });
    println!("{}: {} change(s) against the gateway at {url}", config.display(), plan.changes.len().max(1));
    print!("{}", plan.render());
    Ok(ExitCode::from(2))
}

/// `sluice config reload`: exit 0 when applied or nothing to apply, 1 when refused.
fn reload(url: &url::Url, token: &str) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    let answer = runtime.block_on(sluice::admin::client::call(
        url,
        token,
        reqwest::Method::POST,
        &["v1", "config", "reload"],
        &[],
    ));
    let reloaded = match answer {
        Ok(reloaded) => reloaded,
        Err(e) => {
            eprintln!("reload refused: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if reloaded["changed"] != true {
        println!("no change: the gateway at {url} already runs this configuration ({})", reloaded["hash"]);
        return Ok(ExitCode::SUCCESS);
    }
    println!("reloaded the gateway at {url}: {} → {}", reloaded["previous_hash"], reloaded["hash"]);
    let lines = |key: &str| -> Vec<String> {
        reloaded[key].as_array().into_iter().flatten().filter_map(|c| Some(c.as_str()?.to_string())).collect()
    };
    print!("{}", sluice::config::Plan { changes: lines("changes"), warnings: lines("warnings") }.render());
    Ok(ExitCode::SUCCESS)
}
