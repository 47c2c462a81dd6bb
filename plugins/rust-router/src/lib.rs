//! A router plugin: picks endpoints by the value of one field of the JSON payload.
//!
//! Config: `{ "field": "region", "table": {"eu": ["eu-hook", "audit"], "us": ["us-hook"]},
//! "default": ["audit"] }`. The event goes to every endpoint listed for the field's value (or to
//! `default`), each delivery carrying an `x-routed-by` header. With no match and no default, the event
//! is dropped.

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use serde_json::Value;
use sluice::plugin::host::{log, Level};
use sluice::plugin::types::Delivery;

struct Router;

impl Guest for Router {
    fn handle(event: Event, config: String) -> Result<Verdict, String> {
        let config: Value = serde_json::from_str(&config).map_err(|e| format!("bad config: {e}"))?;
        let field = config.get("field").and_then(Value::as_str).ok_or("config needs a string `field`")?;
        let payload: Value = serde_json::from_slice(&event.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        let key = match payload.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let targets = config
            .get("table")
            .and_then(|t| t.get(&key))
            .or_else(|| config.get("default"))
            .and_then(Value::as_array);
        let Some(targets) = targets.filter(|t| !t.is_empty()) else {
            return Ok(Verdict::Drop(format!("no route for {field}={key}")));
        };
        log(Level::Debug, &format!("{field}={key} routes to {} endpoints", targets.len()));
        let deliveries = targets
            .iter()
            .filter_map(Value::as_str)
            .map(|endpoint| Delivery {
                endpoint: endpoint.to_string(),
                payload: None,
                headers: vec![("x-routed-by".to_string(), format!("{field}={key}"))],
            })
            .collect();
        Ok(Verdict::Route(deliveries))
    }
}

export!(Router);
