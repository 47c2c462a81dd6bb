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

#[derive(Subcommand)]
enum AdminCommand {
    /// Show an event and its deliveries.
    Event {
        /// Event id (`evt_…`).
        id: String,
    },
    /// Show a delivery with every attempt.
    Delivery {
        /// Delivery id (`dlv_…`).
        id: String,
    },
    /// Search finished deliveries in history (needs `[history]`), newest first.
    Deliveries {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only those in this state (`succeeded` or `dead`).
        #[arg(long)]
        state: Option<String>,
        /// Created at or after this time (ms since the epoch).
        #[arg(long)]
        since: Option<u64>,
        /// Created before this time (ms since the epoch).
        #[arg(long)]
        until: Option<u64>,
        /// The `next_before_id` of the previous page.
        #[arg(long)]
        before_id: Option<String>,
        /// Page size (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List dead letters, newest first.
    DeadLetters {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Page size (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only those dead-lettered before this time (ms since the epoch; `next_before` of a page).
        #[arg(long)]
        before: Option<u64>,
        /// With `--before`: the `next_before_id` of the previous page.
        #[arg(long, requires = "before")]
        before_id: Option<String>,
    },
    /// Put one dead letter back in the queue.
    Replay {
        /// Delivery id.
        id: String,
    },
    /// Put every dead letter of an endpoint back in the queue (spaced at `queue.replay_rate`).
    ReplayDead {
        /// Endpoint name.
        endpoint: String,
    },
    /// List endpoints with their state.
    Endpoints,
    /// Disable an endpoint: its deliveries are parked.
    Disable {
        /// Endpoint name.
        endpoint: String,
    },
    /// Enable an endpoint and put its parked deliveries back in the queue.
    Enable {
        /// Endpoint name.
        endpoint: String,
    },
    /// What the shadow runs of a plugin's candidate found: counts and the latest differences.
    Shadow {
        /// Plugin name.
        plugin: String,
    },
    /// Run a stored event again through today's routes and plugins, creating the deliveries the
    /// running config makes for it except to endpoints that already have it.
    Redrive {
        /// Event id (`evt_…`).
        id: String,
    },
    /// Discard the deliveries parked for an endpoint (removed from the config, or disabled): they
    /// become dead letters, replayable for `queue.dead_retention`.
    Discard {
        /// Endpoint name.
        endpoint: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
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

#[derive(Subcommand)]
enum PluginCommand {
    /// Run one plugin on one event and print its verdict and how long the call took; or, with
    /// `--fixtures DIR`, on every `NAME.event.json` of DIR, comparing each verdict with
    /// `NAME.expect.json` (exit 1 on any mismatch).
    Test {
        /// The plugin component (`.wasm`).
        plugin: PathBuf,
        /// A file with the event's JSON body, as a producer would POST it.
        #[arg(long, required_unless_present = "fixtures", conflicts_with = "fixtures")]
        event: Option<PathBuf>,
        /// A directory of fixtures: `NAME.event.json`, `NAME.expect.json`, optional `NAME.config.toml`.
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// A TOML file whose table is the plugin's config (as `[[plugins]] config` would give it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The event type; by default taken from the body like ingest does (`type`, then `event`).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Deadline of the call.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Memory cap in MiB.
        #[arg(long, default_value_t = 64)]
        max_memory_mb: u32,
        /// Where compiled plugins are cached (default: `$XDG_CACHE_HOME/sluice/wasm`, as the gateway).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
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
            let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            let stopped_by_itself = runtime.block_on(async {
                // From a file, SIGHUP and `config reload` read it again.
                let gateway = match config {
                    Some(path) => sluice::Gateway::start_file(&path).await?,
                    None => sluice::Gateway::start(sluice::config::load(None)?).await?,
                };
                let by_itself = tokio::select! {
                    _ = shutdown_signal() => false,
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
            let answer = runtime.block_on(admin(&url, &token, command))?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Plan { config, url, token }) => {
            let proposed = match sluice::check_file(&config) {
                Ok(proposed) => sluice::config::Shown::of(&proposed),
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            let (running, endpoints) = runtime.block_on(async {
                let running = admin_call(&url, &token, &["v1", "config"]).await?;
                let endpoints = admin_call(&url, &token, &["v1", "endpoints"]).await?;
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
        Command::Config(ConfigCommand::Reload { url, token }) => {
            let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            let answer = runtime.block_on(sluice::admin::client::call(
                &url,
                &token,
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
        Command::Plugin(PluginCommand::Test {
            plugin,
            event,
            fixtures,
            config,
            event_type,
            deadline,
            max_memory_mb,
            cache_dir,
        }) => {
            let config = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("failed to read the plugin config {}", path.display()))?;
                    let table: toml::Table =
                        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
                    serde_json::to_value(table)?
                }
                None => serde_json::json!({}),
            };
            let settings = sluice::plugin::trial::Settings { config, event_type, deadline, max_memory_mb, cache_dir };
            if let Some(dir) = fixtures {
                return run_fixtures(&plugin, &dir, &settings);
            }
            let event = event.context("--event or --fixtures")?;
            let payload =
                std::fs::read(&event).with_context(|| format!("failed to read the event file {}", event.display()))?;
            let trial = sluice::plugin::trial::run(&plugin, payload, settings)?;
            print_trial(&trial);
            Ok(if trial.outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// `sluice plugin test PLUGIN --fixtures DIR`: every fixture's result, the differences of those
/// that do not match, and a summary; exit 1 when any does not.
fn run_fixtures(
    plugin: &std::path::Path,
    dir: &std::path::Path,
    settings: &sluice::plugin::trial::Settings,
) -> anyhow::Result<ExitCode> {
    let outcomes = sluice::plugin::fixtures::run(plugin, dir, settings)?;
    let failed = outcomes.iter().filter(|o| !o.mismatches.is_empty()).count();
    for outcome in &outcomes {
        if outcome.mismatches.is_empty() {
            println!("ok   {}", outcome.name);
        } else {
            println!("FAIL {}", outcome.name);
            for mismatch in &outcome.mismatches {
                println!("       {mismatch}");
            }
            println!("       verdict: {}", outcome.actual);
        }
    }
    println!("{}: {} fixture(s), {} passed, {failed} failed", dir.display(), outcomes.len(), outcomes.len() - failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One GET of the admin API.
async fn admin_call(url: &url::Url, token: &str, path: &[&str]) -> anyhow::Result<serde_json::Value> {
    Ok(sluice::admin::client::call(url, token, reqwest::Method::GET, path, &[]).await?)
}

/// Runs one admin subcommand against the gateway at `url`.
async fn admin(url: &url::Url, token: &str, command: AdminCommand) -> anyhow::Result<serde_json::Value> {
    use reqwest::Method;
    use sluice::admin::client::call;
    let answer = match &command {
        AdminCommand::Event { id } => call(url, token, Method::GET, &["v1", "events", id], &[]).await,
        AdminCommand::Delivery { id } => call(url, token, Method::GET, &["v1", "deliveries", id], &[]).await,
        AdminCommand::Deliveries { endpoint, state, since, until, before_id, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(endpoint.iter().map(|e| ("endpoint", e.clone())));
            query.extend(state.iter().map(|s| ("state", s.clone())));
            query.extend(since.iter().map(|t| ("since", t.to_string())));
            query.extend(until.iter().map(|t| ("until", t.to_string())));
            query.extend(before_id.iter().map(|b| ("before_id", b.clone())));
            call(url, token, Method::GET, &["v1", "deliveries"], &query).await
        }
        AdminCommand::DeadLetters { endpoint, limit, before, before_id } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(endpoint.iter().map(|e| ("endpoint", e.clone())));
            query.extend(before.iter().map(|b| ("before", b.to_string())));
            query.extend(before_id.iter().map(|b| ("before_id", b.clone())));
            call(url, token, Method::GET, &["v1", "dead-letters"], &query).await
        }
        AdminCommand::Replay { id } => call(url, token, Method::POST, &["v1", "deliveries", id, "replay"], &[]).await,
        AdminCommand::ReplayDead { endpoint } => {
            call(url, token, Method::POST, &["v1", "endpoints", endpoint, "replay-dead"], &[]).await
        }
        AdminCommand::Endpoints => call(url, token, Method::GET, &["v1", "endpoints"], &[]).await,
        AdminCommand::Disable { endpoint } => {
            call(url, token, Method::POST, &["v1", "endpoints", endpoint, "disable"], &[]).await
        }
        AdminCommand::Enable { endpoint } => {
            call(url, token, Method::POST, &["v1", "endpoints", endpoint, "enable"], &[]).await
        }
        AdminCommand::Shadow { plugin } => {
            call(url, token, Method::GET, &["v1", "plugins", plugin, "shadow"], &[]).await
        }
        AdminCommand::Redrive { id } => call(url, token, Method::POST, &["v1", "events", id, "redrive"], &[]).await,
        AdminCommand::Discard { endpoint } => {
            call(url, token, Method::POST, &["v1", "endpoints", endpoint, "discard"], &[]).await
        }
    };
    Ok(answer?)
}

/// Prints a trial's verdict for a person to read.
fn print_trial(trial: &sluice::plugin::trial::Trial) {
    use sluice::plugin::Verdict;
    println!("event: type {} ({} bytes)", trial.event.event_type, trial.event.payload.len());
    for (stream, line) in &trial.printed.lines {
        println!("{}: {line}", stream.as_str());
    }
    if trial.printed.cut > 0 {
        println!(
            "(output over {} bytes per stream: {} bytes cut)",
            sluice::plugin::output::MAX_CAPTURE,
            trial.printed.cut
        );
    }
    match &trial.outcome {
        Ok(Verdict::Drop(reason)) => println!("verdict: dropped: {reason}"),
        Ok(Verdict::Pass(event)) => {
            println!("verdict: passed (type {})", event.event_type);
            for header in event.headers.iter().filter(|h| !trial.event.headers.contains(h)) {
                println!("  header {}: {}", header.0, header.1);
            }
            println!("  payload: {}", show_payload(&event.payload));
        }
        Ok(Verdict::Route(deliveries)) => {
            println!("verdict: routed to {} endpoint(s)", deliveries.len());
            for delivery in deliveries {
                println!("  -> {}", delivery.endpoint);
                for header in &delivery.headers {
                    println!("     header {}: {}", header.0, header.1);
                }
                let payload = delivery.payload.as_deref().unwrap_or(&trial.event.payload);
                println!("     payload: {}", show_payload(payload));
            }
        }
        Err(e) => println!("verdict: failed ({}): {e}", e.kind()),
    }
    print!("took: {:.1} µs (first call, including instantiation)", trial.first_call.as_secs_f64() * 1e6);
    match trial.warm_call {
        Some(warm) => println!(", {:.1} µs (warm instance)", warm.as_secs_f64() * 1e6),
        None => println!(),
    }
}

fn show_payload(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
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
