//! A misbehaving plugin, for testing the gateway's limits. Its config picks how it misbehaves:
//! `{"mode": "trap"}` hits `unreachable`, `"loop"` spins forever, `"membomb"` allocates until memory
//! runs out, `"error"` returns an error, `"clock"` passes it with an `x-clock` header (Unix seconds as the plugin sees them), `"count"` passes the event with an `x-instance-calls` header
//! counting the calls this instance has served, and anything else passes the event unchanged. A `"when_type"`
//! string limits the misbehaviour to events of that type.

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// Calls served by this instance (state that survives between calls only in a reused instance).
static CALLS: AtomicU32 = AtomicU32::new(0);


struct Chaos;

impl Guest for Chaos {
    fn handle(mut event: Event, config: String) -> Result<Verdict, String> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let config: Value = serde_json::from_str(&config).map_err(|e| format!("bad config: {e}"))?;
        if let Some(only) = config.get("when_type").and_then(Value::as_str) {
            if only != event.event_type {
                return Ok(Verdict::Pass(event));
            }
        }
        match config.get("mode").and_then(Value::as_str).unwrap_or("pass") {
            "trap" => core::arch::wasm32::unreachable(),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            "error" => Err("chaos plugin was told to fail".to_string()),
            "clock" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                event.headers.push(("x-clock".to_string(), now.as_secs().to_string()));
                Ok(Verdict::Pass(event))
            }
            "count" => {
                event.headers.push(("x-instance-calls".to_string(), calls.to_string()));
                Ok(Verdict::Pass(event))
            }
            _ => Ok(Verdict::Pass(event)),
        }
    }
}

export!(Chaos);
