//! {{name}}: a Sluice plugin in Rust.
//!
//! Drops events whose type starts with `drop_prefix` (config, default `"test."`) and passes the
//! others on, adding an `x-processed-by: {{name}}` header. Edit `handle` to make it yours; the
//! contract it implements is `wit/plugin.wit`.

// Generates the `Guest` trait, the `Event` and `Verdict` types and the host's `log` from the WIT.
wit_bindgen::generate!({ world: "plugin", path: "wit" });

use serde_json::Value;
use sluice::plugin::host::{log, Level};

/// The header added to every event this plugin passes.
const HEADER: (&str, &str) = ("x-processed-by", "{{name}}");

struct Plugin;

impl Guest for Plugin {
    /// `config` is the plugin's `[[plugins]] config` table as JSON. Returning `Err` fails the event:
    /// the producer gets HTTP 422 with the message.
    fn handle(mut event: Event, config: String) -> Result<Verdict, String> {
        let config: Value = serde_json::from_str(&config).map_err(|e| format!("config is not JSON: {e}"))?;
        let prefix = match config.get("drop_prefix") {
            None => "test.",
            Some(Value::String(prefix)) => prefix.as_str(),
            Some(other) => return Err(format!("config `drop_prefix` must be a string, not {other}")),
        };
        if event.event_type.starts_with(prefix) {
            // Lands in the gateway's log, tagged with the plugin's name and the event id
            // (`println!` does too, as the plugin's stdout).
            log(Level::Debug, &format!("dropping {}", event.event_type));
            return Ok(Verdict::Drop(format!("type {} starts with {prefix}", event.event_type)));
        }
        event.headers.push((HEADER.0.to_string(), HEADER.1.to_string()));
        Ok(Verdict::Pass(event))
    }
}

export!(Plugin);
