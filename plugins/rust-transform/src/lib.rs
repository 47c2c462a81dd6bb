//! A transform plugin: rewrites a JSON object payload. Sets the fields in `set`, removes those in
//! `remove`, optionally renames the event type and adds headers.
//!
//! Config: `{ "set": {"version": 2}, "remove": ["internal"], "event_type": "order.v2",
//! "headers": {"x-transformed": "yes"} }` (all optional).

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use serde_json::Value;


struct Transform;

impl Guest for Transform {
    fn handle(mut event: Event, config: String) -> Result<Verdict, String> {
        let config: Value = serde_json::from_str(&config).map_err(|e| format!("bad config: {e}"))?;
        let mut payload: Value = serde_json::from_slice(&event.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        let object = payload.as_object_mut().ok_or("payload is not a JSON object")?;
        if let Some(set) = config.get("set").and_then(Value::as_object) {
            for (key, value) in set {
                object.insert(key.clone(), value.clone());
            }
        }
        if let Some(remove) = config.get("remove").and_then(Value::as_array) {
            for key in remove.iter().filter_map(Value::as_str) {
                object.remove(key);
            }
        }
        if let Some(event_type) = config.get("event_type").and_then(Value::as_str) {
            event.event_type = event_type.to_string();
        }
        if let Some(headers) = config.get("headers").and_then(Value::as_object) {
            for (name, value) in headers {
                event.headers.push((name.clone(), value.as_str().unwrap_or_default().to_string()));
            }
        }
        event.payload = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
        Ok(Verdict::Pass(event))
    }
}

export!(Transform);
