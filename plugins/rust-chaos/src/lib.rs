//! A misbehaving plugin, for testing the gateway's limits. Its config picks how it misbehaves:
//!
//! | `mode` | what it does |
//! | --- | --- |
//! | `trap` | hits `unreachable` |
//! | `panic` | `panic!`s with a message naming the event type (Rust writes it to stderr, then aborts) |
//! | `loop` | spins forever |
//! | `membomb` | allocates until memory runs out |
//! | `error` | returns an error |
//! | `print` | `println!`s and `eprintln!`s one line each, then passes the event |
//! | `flood` | prints `bytes` (default 1 MiB) to stdout in 1 KiB lines, then passes the event |
//! | `bloat` | routes to `endpoint`, `copies` times, each delivery with its own `bytes`-long payload |
//! | `headers` | passes the event with `count` added headers |
//! | `clock` | passes it with an `x-clock` header (Unix seconds as the plugin sees them) |
//! | `count` | passes it with an `x-instance-calls` header counting the calls this instance served |
//! | `stall` | spins for `ms` milliseconds (default 1000; needs `grant_clock`), then passes the event |
//!
//! Anything else passes the event unchanged. A `"when_type"` string limits the misbehaviour to
//! events of that type.

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use sluice::plugin::types::Delivery;

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
        let number = |key: &str, default: u64| config.get(key).and_then(Value::as_u64).unwrap_or(default) as usize;
        match config.get("mode").and_then(Value::as_str).unwrap_or("pass") {
            "trap" => core::arch::wasm32::unreachable(),
            "panic" => panic!("chaos panic on an event of type {}", event.event_type),
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
            "print" => {
                println!("chaos says hello to {} on stdout", event.id);
                eprintln!("chaos says hello to {} on stderr", event.id);
                Ok(Verdict::Pass(event))
            }
            "flood" => {
                let line = "x".repeat(1023);
                for _ in 0..number("bytes", 1 << 20) / 1024 {
                    println!("{line}");
                }
                Ok(Verdict::Pass(event))
            }
            "bloat" => {
                let endpoint = config.get("endpoint").and_then(Value::as_str).unwrap_or("a").to_string();
                let bytes = number("bytes", 1 << 20);
                let deliveries = (0..number("copies", 8))
                    .map(|_| Delivery { endpoint: endpoint.clone(), payload: Some(vec![b' '; bytes]), headers: vec![] })
                    .collect();
                Ok(Verdict::Route(deliveries))
            }
            "headers" => {
                for i in 0..number("count", 1000) {
                    event.headers.push((format!("x-chaos-{i}"), "1".to_string()));
                }
                Ok(Verdict::Pass(event))
            }
            "clock" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                event.headers.push(("x-clock".to_string(), now.as_secs().to_string()));
                Ok(Verdict::Pass(event))
            }
            "stall" => {
                let started = std::time::Instant::now();
                let wanted = std::time::Duration::from_millis(number("ms", 1000) as u64);
                while started.elapsed() < wanted {
                    core::hint::spin_loop();
                }
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
