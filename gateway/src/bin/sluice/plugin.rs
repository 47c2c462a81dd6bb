//! `sluice plugin …`: try a plugin on an event or its fixtures, start a new one, write the WIT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use sluice::plugin::scaffold::{self, Language};

#[derive(Subcommand)]
pub enum PluginCommand {
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
    /// Write a new plugin: source, build script, README, the WIT and fixtures that it passes as
    /// written. Build it with `./build.sh`, then `sluice plugin test NAME.wasm --fixtures fixtures`.
    New {
        /// The language: rust, c, js, python or assemblyscript.
        #[arg(long)]
        lang: Language,
        /// The plugin's name: lower-case letters, digits and hyphens (it names the package and the
        /// `.wasm` file).
        name: String,
        /// The folder to write it in (default: `./NAME`); it may exist if it is empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the plugin contract, `plugin.wit`, and the core-module ABI, `core-abi.md`, into DIR:
    /// what this binary's gateway expects of a plugin.
    Wit {
        /// The folder to write them in (created if missing).
        #[arg(long, default_value = "wit")]
        out: PathBuf,
    },
}

/// Runs one `sluice plugin` subcommand.
pub fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Test { plugin, event, fixtures, config, event_type, deadline, max_memory_mb, cache_dir } => {
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
        PluginCommand::New { lang, name, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let written = scaffold::create(lang, &name, &dir)?;
            println!("wrote a {lang} plugin `{name}` in {} ({} files):", dir.display(), written.len());
            for (file, what) in [
                (lang.source_file(), "the code: edit it".to_string()),
                ("build.sh", format!("builds {name}.wasm")),
                ("fixtures/", "events and the verdicts expected for them".to_string()),
                ("README.md", "how to build, test and use it".to_string()),
                ("wit/", "the contract with the gateway".to_string()),
            ] {
                println!("  {file:<18} {what}");
            }
            println!("next:");
            println!("  cd {} && ./build.sh && sluice plugin test {name}.wasm --fixtures fixtures", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Wit { out } => {
            for path in scaffold::write_wit(&out)? {
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sluice plugin test PLUGIN --fixtures DIR`: every fixture's result, the differences of those
/// that do not match, and a summary; exit 1 when any does not.
fn run_fixtures(plugin: &Path, dir: &Path, settings: &sluice::plugin::trial::Settings) -> anyhow::Result<ExitCode> {
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
