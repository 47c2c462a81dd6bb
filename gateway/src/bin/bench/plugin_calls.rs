//! µs per plugin call: every built example plugin called directly (no gateway), in a warm instance
//! and in a fresh one per call, p50/p99.

use std::time::{Duration, Instant};

use super::{percentile, plugin_path, us};

/// Prints µs per call of every built example plugin, in a warm instance and in a fresh one.
pub fn plugin_calls() -> anyhow::Result<()> {
    for (mode, reuse) in [("warm instance (max_calls_per_instance = 1000)", 1000), ("fresh instance per call", 1)] {
        println!("plugin calls, {mode}:");
        plugin_calls_with(reuse)?;
    }
    Ok(())
}

fn plugin_calls_with(reuse: u32) -> anyhow::Result<()> {
    for (name, config) in [
        ("rust-filter", r#"{"drop_types":["test.*"]}"#),
        ("rust-transform", r#"{"set":{"version":2},"remove":["currency"]}"#),
        ("rust-router", r#"{"field":"currency","table":{"EUR":["eu"]}}"#),
        ("c-prefix", r#"{"allow_prefix":"order"}"#),
        ("js-filter", r#"{"drop_types":["test.*"]}"#),
        ("js-transform", r#"{"set":{"version":2},"remove":["currency"]}"#),
        ("as-tagger", r#"{"tag":"billing","drop_type":"test.ping"}"#),
        ("python-router", r#"{"field":"currency","table":{"EUR":["eu"]}}"#),
    ] {
        let path = plugin_path(name);
        if !path.exists() {
            println!("  {name:<16} not built (run plugins/build.sh)");
            continue;
        }
        let plugin = sluice::config::PluginConfig {
            name: name.to_string(),
            path,
            config: serde_json::from_str(config)?,
            deadline: Duration::from_millis(100),
            max_memory_mb: 64,
            max_calls_per_instance: reuse,
            grant_clock: false,
            on_error: Default::default(),
            startup_deadline: Duration::from_secs(1),
            shadow: None,
            shadow_rate: 1.0,
        };
        let set = sluice::plugin::PluginSet::load(std::slice::from_ref(&plugin), &Default::default(), 1 << 20)
            .map_err(|e| anyhow::anyhow!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
        let event = sluice::plugin::PluginEvent {
            id: "evt_bench".into(),
            source: "bench".into(),
            event_type: "order_created".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            payload: br#"{"event":"order_created","order_id":1,"amount":4200,"currency":"EUR"}"#.to_vec(),
        };
        // Fresh instances of the big JavaScript and Python components take ~1 ms each: fewer rounds.
        let rounds = if reuse == 1 && (name.starts_with("js") || name.starts_with("python")) { 300 } else { 3000 };
        for _ in 0..50 {
            set.call(name, &event)?;
        }
        let mut times: Vec<Duration> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                let result = set.call(name, &event);
                let took = started.elapsed();
                result.map(|_| took)
            })
            .collect::<Result<_, _>>()?;
        times.sort();
        println!(
            "  {name:<16} p50 {:>6.1} µs  p99 {:>6.1} µs",
            us(percentile(&times, 0.5)),
            us(percentile(&times, 0.99))
        );
    }
    Ok(())
}
