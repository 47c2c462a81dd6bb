//! Golden tests of a plugin: `sluice plugin test PLUGIN --fixtures DIR` runs the plugin on every
//! `NAME.event.json` of DIR (with `NAME.config.toml` as its config when there is one) and compares
//! its verdict, as JSON, with `NAME.expect.json`.
//!
//! A verdict reads `{"verdict": "pass", "type": …, "payload": …, "headers": {…}}`,
//! `{"verdict": "drop", "reason": …}`, `{"verdict": "route", "deliveries": [{"endpoint": …,
//! "payload": …, "headers": {…}}]}` or `{"verdict": "error", "kind": …, "message": …}` (payloads
//! as JSON when they are JSON, else as text; headers those the plugin added). An expectation names
//! what it cares about: every key it has must match, keys it leaves out are not compared (in lists
//! too: element by element, the lengths equal), so `{"verdict": "drop"}` passes any drop and
//! `{"deliveries": [{"endpoint": "a"}]}` any single delivery to `a`.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::trial::{self, Settings, Trial};
use super::{PluginError, Verdict};

/// What one fixture gave.
#[derive(Debug)]
pub struct Outcome {
    /// The fixture's name (`NAME` of `NAME.event.json`).
    pub name: String,
    /// The verdict, as JSON.
    pub actual: Value,
    /// Where it differs from the expectation (`at key: expected …, got …`); empty when it matches.
    pub mismatches: Vec<String>,
}

/// Why the fixtures could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The directory could not be read, or holds no fixture.
    #[error("fixtures in {dir}: {message}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// The plugin did not load.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// Runs every fixture of `dir` through the plugin at `plugin`; `settings.config` is the config of
/// fixtures without their own.
pub fn run(plugin: &Path, dir: &Path, settings: &Settings) -> Result<Vec<Outcome>, FixtureError> {
    let failed = |message: String| FixtureError::Dir { dir: dir.to_path_buf(), message };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| failed(e.to_string()))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".event.json").map(str::to_string))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(failed("no NAME.event.json".to_string()));
    }
    let mut outcomes = Vec::with_capacity(names.len());
    for name in names {
        let file = |suffix: &str| dir.join(format!("{name}.{suffix}"));
        let read = |path: PathBuf| std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
        let prepared = (|| {
            let payload = read(file("event.json"))?;
            let expected: Value = serde_json::from_slice(&read(file("expect.json"))?)
                .map_err(|e| format!("{}: not JSON: {e}", file("expect.json").display()))?;
            let mut settings = settings.clone();
            if let Ok(text) = std::fs::read_to_string(file("config.toml")) {
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| format!("{}: not TOML: {e}", file("config.toml").display()))?;
                settings.config = serde_json::to_value(table).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>((payload, expected, settings))
        })();
        let outcome = match prepared {
            Err(problem) => Outcome { name, actual: Value::Null, mismatches: vec![problem] },
            Ok((payload, expected, settings)) => {
                let actual = verdict_json(&trial::run(plugin, payload, settings)?);
                let mut mismatches = Vec::new();
                compare(&expected, &actual, "", &mut mismatches);
                Outcome { name, actual, mismatches }
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// A trial's verdict as JSON (see the module's doc).
pub fn verdict_json(trial: &Trial) -> Value {
    let added = |headers: &[(String, String)]| -> Value {
        let mut map = Map::new();
        for (name, value) in headers.iter().filter(|h| !trial.event.headers.contains(h)) {
            map.insert(name.clone(), Value::String(value.clone()));
        }
        Value::Object(map)
    };
    match &trial.outcome {
        Ok(Verdict::Pass(event)) => json!({
            "verdict": "pass",
            "type": event.event_type,
            "payload": payload_json(&event.payload),
            "headers": added(&event.headers),
        }),
        Ok(Verdict::Drop(reason)) => json!({ "verdict": "drop", "reason": reason }),
        Ok(Verdict::Route(deliveries)) => json!({
            "verdict": "route",
            "deliveries": deliveries.iter().map(|d| json!({
                "endpoint": d.endpoint,
                "payload": payload_json(d.payload.as_deref().unwrap_or(&trial.event.payload)),
                "headers": added(&d.headers),
            })).collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "verdict": "error", "kind": e.kind(), "message": e.to_string() }),
    }
}

fn payload_json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// Where `actual` differs from what `expected` names.
fn compare(expected: &Value, actual: &Value, at: &str, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                match got.get(key) {
                    Some(got) => compare(value, got, &path, out),
                    None => out.push(format!("at `{path}`: expected {value}, got nothing")),
                }
            }
        }
        (Value::Array(want), Value::Array(got)) if want.len() == got.len() => {
            for (i, (want, got)) in want.iter().zip(got).enumerate() {
                compare(want, got, &format!("{at}[{i}]"), out);
            }
        }
        (want, got) if want != got => {
            let at = if at.is_empty() { "the verdict".to_string() } else { format!("`{at}`") };
            out.push(format!("at {at}: expected {want}, got {got}"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::compare;
    use serde_json::json;

    #[test]
    fn an_expectation_compares_the_keys_it_names_and_says_where_it_differs() {
        let actual = json!({"verdict": "pass", "type": "order", "payload": {"id": 7, "tag": "x"}, "headers": {}});
        let mut out = Vec::new();
        compare(&json!({"verdict": "pass", "payload": {"id": 7}}), &actual, "", &mut out);
        assert!(out.is_empty(), "{out:?}");
        let routed = json!({"verdict": "route", "deliveries": [{"endpoint": "a", "headers": {}}, {"endpoint": "b"}]});
        compare(&json!({"deliveries": [{"endpoint": "a"}, {"endpoint": "b"}]}), &routed, "", &mut out);
        assert!(out.is_empty(), "{out:?}");
        compare(&json!({"deliveries": [{"endpoint": "b"}]}), &routed, "", &mut out);
        assert_eq!(out.len(), 1, "a list of another length differs: {out:?}");
        out.clear();
        compare(&json!({"verdict": "drop", "payload": {"id": 8, "missing": 1}}), &actual, "", &mut out);
        assert_eq!(
            out,
            [
                "at `payload.id`: expected 8, got 7",
                "at `payload.missing`: expected 1, got nothing",
                "at `verdict`: expected \"drop\", got \"pass\""
            ]
        );
    }
}
