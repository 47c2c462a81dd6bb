//! A filter plugin: drops events whose type matches one of `drop_types` (with `*` wildcards), or whose
//! JSON payload lacks one of the fields in `require_fields`; passes everything else unchanged.
//!
//! Config: `{ "drop_types": ["test.*"], "require_fields": ["order_id"] }` (both optional).

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use serde_json::Value;
use sluice::plugin::host::{log, Level};


struct Filter;

impl Guest for Filter {
    fn handle(event: Event, config: String) -> Result<Verdict, String> {
        let config: Value = serde_json::from_str(&config).map_err(|e| format!("bad config: {e}"))?;
        for pattern in strings(&config, "drop_types") {
            if glob(pattern, &event.event_type) {
                return Ok(Verdict::Drop(format!("type {} matches {pattern}", event.event_type)));
            }
        }
        let required = strings(&config, "require_fields");
        if !required.is_empty() {
            let payload: Value = serde_json::from_slice(&event.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
            if let Some(missing) = required.iter().find(|f| payload.get(**f).is_none()) {
                log(Level::Debug, &format!("dropping: no field {missing}"));
                return Ok(Verdict::Drop(format!("missing field {missing}")));
            }
        }
        Ok(Verdict::Pass(event))
    }
}

/// The strings in the array `config[key]`, or none.
fn strings<'a>(config: &'a Value, key: &str) -> Vec<&'a str> {
    config.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|i| tail.is_char_boundary(*i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

export!(Filter);
