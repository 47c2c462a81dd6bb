//! [`Config::validate`]: everything types alone cannot check (names, references, secrets, URLs,
//! timings), every problem reported at once with the path of its key.

use std::collections::HashSet;
use std::time::Duration;

use url::Url;

use super::{Backend, Config, ConfigError, EndpointConfig, RouteConfig, SignatureScheme, LEASE_MARGIN};
use crate::route::TypePattern;
use crate::signing::Secret;

impl Config {
    /// Checks everything that types alone cannot: names, references, secrets, URLs, timings.
    /// Returns every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.validate_sections(&mut problems);
        let endpoints = unique_names(self.endpoints.iter().map(|e| e.name.as_str()), "endpoints", &mut problems);
        let plugins = unique_names(self.plugins.iter().map(|p| p.name.as_str()), "plugins", &mut problems);
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            self.validate_endpoint(i, endpoint, &mut problems);
        }
        self.validate_sources(&mut problems);
        for (i, route) in self.routes.iter().enumerate() {
            validate_route(i, route, &endpoints, &plugins, &mut problems);
        }
        for (i, plugin) in self.plugins.iter().enumerate() {
            let at = format!("plugins[{i}] ({})", plugin.name);
            if !plugin.config.is_object() {
                problems.push(format!("{at}.config: must be a table"));
            }
            if plugin.deadline.is_zero() || plugin.startup_deadline.is_zero() {
                problems.push(format!("{at}.deadline and startup_deadline: must be greater than zero"));
            }
            if plugin.max_memory_mb == 0 || plugin.max_memory_mb > 4096 {
                problems.push(format!("{at}.max_memory_mb: must be between 1 and 4096"));
            }
            if plugin.max_calls_per_instance == 0 {
                problems.push(format!("{at}.max_calls_per_instance: must be at least 1"));
            }
            if !(0.0..=1.0).contains(&plugin.shadow_rate) {
                problems.push(format!("{at}.shadow_rate: must be between 0 and 1"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn validate_sections(&self, problems: &mut Vec<String>) {
        match self.backend() {
            Backend::Redis => {
                let redis = self.redis_settings();
                if let Err(e) = redis::Client::open(redis.url.as_str()) {
                    problems.push(format!("redis.url: {e}"));
                }
                for (i, node) in redis.cluster_nodes.iter().enumerate() {
                    if let Err(e) = redis::Client::open(node.as_str()) {
                        problems.push(format!("redis.cluster_nodes[{i}]: {e}"));
                    }
                }
                if redis.replicas_ack > 0 && redis.replicas_timeout.is_zero() {
                    problems.push("redis.replicas_timeout: must be above 0 when replicas_ack is set".to_string());
                }
                if redis.prefix.is_empty() || redis.prefix.contains(['{', '}']) {
                    problems.push("redis.prefix: must be non-empty and free of `{` and `}`".to_string());
                }
            }
            Backend::Embedded => {
                if self.queue.shards != 1 {
                    problems.push(
                        "queue.shards: applies to the redis backend only; the embedded backend keeps one ordered \
                         table (leave shards at 1, or set queue.backend = \"redis\")"
                            .to_string(),
                    );
                }
                if self.queue.cache_mb == 0 || self.queue.cache_mb > 65_536 {
                    problems.push("queue.cache_mb: must be between 1 and 65536".to_string());
                }
                if self.queue.path.as_ref().is_some_and(|p| p.as_os_str().is_empty() || p.is_dir()) {
                    problems.push("queue.path: must name a file (the embedded store), not a directory".to_string());
                }
            }
        }
        if let Some(history) = &self.history {
            problems.extend(history.problems(self.backend() == Backend::Redis));
        }
        if self.queue.shards == 0 || self.queue.shards > 1024 {
            problems.push("queue.shards: must be between 1 and 1024".to_string());
        }
        if !self.queue.log_summary_every.is_zero() && self.queue.log_summary_every < std::time::Duration::from_secs(1) {
            problems.push("queue.log_summary_every: must be at least 1s, or 0s for no summary".to_string());
        }
        if self.queue.dead_retention < std::time::Duration::from_secs(1) {
            problems.push("queue.dead_retention: must be at least 1s".to_string());
        }
        if self.queue.batch == 0 || self.queue.concurrency == 0 {
            problems.push("queue.batch and queue.concurrency: must be at least 1".to_string());
        }
        if self.server.max_body_bytes == 0 {
            problems.push("server.max_body_bytes: must be at least 1".to_string());
        }
        if matches!(self.wasm.threads, Some(n) if n == 0 || n > 1024) {
            problems.push("wasm.threads: must be between 1 and 1024".to_string());
        }
        if self.wasm.max_output_bytes == Some(0) {
            problems.push("wasm.max_output_bytes: must be at least 1".to_string());
        }
        validate_schedule("retry.schedule", &self.retry.schedule, problems);
        validate_schedule("alerts.retry_schedule", &self.alerts.retry_schedule, problems);
        if !(0.0..1.0).contains(&self.retry.jitter) {
            problems.push("retry.jitter: must be at least 0 and below 1".to_string());
        }
        if let Some(url) = &self.alerts.url {
            validate_url("alerts.url", url, problems);
        }
        if !(self.alerts.plugin_error_rate > 0.0 && self.alerts.plugin_error_rate <= 1.0) {
            problems.push("alerts.plugin_error_rate: must be above 0 and at most 1".to_string());
        }
        if self.alerts.plugin_window.is_zero() {
            problems.push("alerts.plugin_window: must be greater than zero".to_string());
        }
        if let Some(secret) = &self.alerts.secret {
            if let Err(e) = Secret::parse(secret) {
                problems.push(format!("alerts.secret: {e}"));
            }
        }
        if matches!(&self.admin.token, Some(t) if t.len() < 16) {
            problems.push("admin.token: must be at least 16 characters".to_string());
        }
    }

    fn validate_endpoint(&self, i: usize, endpoint: &EndpointConfig, problems: &mut Vec<String>) {
        let at = format!("endpoints[{i}] ({})", endpoint.name);
        if endpoint.name.starts_with('_') {
            problems.push(format!(
                "{at}.name: names starting with `_` are reserved (`{}` carries alerts)",
                super::ALERTS_ENDPOINT
            ));
        }
        validate_url(&format!("{at}.url"), &endpoint.url, problems);
        if let Err(e) = Secret::parse(&endpoint.secret) {
            problems.push(format!("{at}.secret: {e}"));
        }
        for (j, previous) in endpoint.previous_secrets.iter().enumerate() {
            if let Err(e) = Secret::parse(&previous.secret) {
                problems.push(format!("{at}.previous_secrets[{j}].secret: {e}"));
            }
            if previous.secret == endpoint.secret {
                problems.push(format!("{at}.previous_secrets[{j}].secret: is the current secret"));
            }
        }
        if endpoint.timeout.is_zero() {
            problems.push(format!("{at}.timeout: must be greater than zero"));
        }
        if endpoint.timeout + LEASE_MARGIN > self.queue.lease {
            problems.push(format!(
                "{at}.timeout: {} plus a {}s margin exceeds queue.lease ({}); a lease shorter than a request \
                 would let a second worker deliver the same attempt",
                humantime::format_duration(endpoint.timeout),
                LEASE_MARGIN.as_secs(),
                humantime::format_duration(self.queue.lease)
            ));
        }
        if let Some(schedule) = &endpoint.retry_schedule {
            validate_schedule(&format!("{at}.retry_schedule"), schedule, problems);
        }
        if endpoint.max_in_flight == Some(0) {
            problems.push(format!("{at}.max_in_flight: must be at least 1"));
        }
        if endpoint.rate_limit.is_some_and(|r| !r.is_finite() || r < 0.001) {
            problems.push(format!("{at}.rate_limit: must be a number of attempts per second, at least 0.001"));
        }
    }

    fn validate_sources(&self, problems: &mut Vec<String>) {
        let names = unique_names(self.sources.iter().map(|s| s.name.as_str()), "sources", problems);
        let routed: HashSet<&str> = self.routes.iter().map(|r| r.source.as_str()).collect();
        for (i, source) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}] ({})", source.name);
            if !source.name.is_empty() && !routed.contains(source.name.as_str()) {
                problems.push(format!("{at}: no route serves this source"));
            }
            if source.rate_limit.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1e6)) {
                problems.push(format!("{at}.rate_limit: must be above 0 and at most 1000000 events per second"));
            }
            match (&source.token, source.verify, &source.secret) {
                (Some(_), Some(_), _) => problems.push(format!("{at}: set either token or verify, not both")),
                (Some(token), None, secret) => {
                    if token.len() < 16 {
                        problems.push(format!("{at}.token: must be at least 16 characters"));
                    }
                    if secret.is_some() {
                        problems.push(format!("{at}.secret: only used with verify; a token source has no secret"));
                    }
                }
                (None, Some(_), None) => problems.push(format!("{at}.secret: required with verify")),
                (None, Some(SignatureScheme::StandardWebhooks), Some(secret)) => {
                    if let Err(e) = Secret::parse(secret) {
                        problems.push(format!("{at}.secret: {e}"));
                    }
                }
                (None, Some(_), Some(secret)) => {
                    if secret.len() < 8 {
                        problems.push(format!("{at}.secret: must be at least 8 characters"));
                    }
                }
                (None, None, _) if !self.security.allow_unauthenticated_sources => problems.push(format!(
                    "{at}: has neither token nor verify; set one, or set security.allow_unauthenticated_sources = true"
                )),
                (None, None, _) => {}
            }
        }
        if !self.security.allow_unauthenticated_sources {
            let mut missing: Vec<&str> = routed.iter().copied().filter(|s| !names.contains(s)).collect();
            missing.sort_unstable();
            for source in missing {
                problems.push(format!(
                    "routes: source `{source}` has no [[sources]] entry with a token or signature check; add one, \
                     or set security.allow_unauthenticated_sources = true"
                ));
            }
        }
    }

    /// The endpoint named `name`, if configured.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointConfig> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

fn validate_route(
    i: usize,
    route: &RouteConfig,
    endpoints: &HashSet<&str>,
    plugins: &HashSet<&str>,
    problems: &mut Vec<String>,
) {
    let at = format!("routes[{i}] ({})", route.source);
    if route.source.is_empty() || !route.source.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        problems.push(format!("{at}.source: must be non-empty ASCII letters, digits, `-`, `_` or `.`"));
    }
    if route.event_types.is_empty() {
        problems.push(format!("{at}.event_types: must list at least one pattern (\"*\" for all)"));
    }
    for pattern in &route.event_types {
        if let Err(e) = TypePattern::parse(pattern) {
            problems.push(format!("{at}.event_types: {e}"));
        }
    }
    for name in &route.endpoints {
        if !endpoints.contains(name.as_str()) {
            problems.push(format!("{at}.endpoints: unknown endpoint `{name}`"));
        }
    }
    for name in &route.plugins {
        if !plugins.contains(name.as_str()) {
            problems.push(format!("{at}.plugins: unknown plugin `{name}`"));
        }
    }
    if route.endpoints.is_empty() && route.plugins.is_empty() {
        problems.push(format!("{at}: names neither endpoints nor plugins, so it can deliver nothing"));
    }
}

fn unique_names<'a>(names: impl Iterator<Item = &'a str>, what: &str, problems: &mut Vec<String>) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            problems.push(format!("{what}[{i}].name: must not be empty"));
        } else if !seen.insert(name) {
            problems.push(format!("{what}[{i}].name: `{name}` is used twice"));
        }
    }
    seen
}

fn validate_url(at: &str, url: &Url, problems: &mut Vec<String>) {
    if !matches!(url.scheme(), "http" | "https") {
        problems.push(format!("{at}: scheme must be http or https, not `{}`", url.scheme()));
    }
    if url.host().is_none() {
        problems.push(format!("{at}: has no host"));
    } else if url.as_str().parse::<hyper::Uri>().is_err() {
        // The worker sends with hyper: a URL it cannot take must fail here, not leave the
        // endpoint silently out.
        problems.push(format!("{at}: not a URI the HTTP client accepts"));
    }
}

fn validate_schedule(at: &str, schedule: &[Duration], problems: &mut Vec<String>) {
    if schedule.is_empty() {
        problems.push(format!("{at}: must have at least one entry (one per attempt)"));
    }
    if schedule.len() > 100 {
        problems.push(format!("{at}: at most 100 attempts"));
    }
}
