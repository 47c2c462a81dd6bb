//! The route table: which routes take an event, given its source and type. Built once from
//! `[[routes]]`; matching is a lookup by source and a glob test per pattern.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;

/// An event-type pattern: literal text with `*` matching any run of characters.
#[derive(Debug, Clone)]
pub struct TypePattern(String);

/// Why an event-type pattern was refused.
#[derive(Debug, thiserror::Error)]
#[error("pattern `{0}` must be non-empty and at most 256 characters")]
pub struct PatternError(String);

impl TypePattern {
    /// Checks and wraps a pattern.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() || pattern.len() > 256 {
            return Err(PatternError(pattern.to_string()));
        }
        Ok(Self(pattern.to_string()))
    }

    /// Whether `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        glob(&self.0, event_type)
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            tail.char_indices().map(|(i, _)| i).chain([tail.len()]).any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// One configured route, ready to match.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index in `[[routes]]`, for messages.
    pub index: usize,
    /// Event-type patterns; any match takes the event.
    pub patterns: Vec<TypePattern>,
    /// Plugin names, in chain order.
    pub plugins: Vec<Arc<str>>,
    /// Endpoint names for events that pass the chain.
    pub endpoints: Vec<Arc<str>>,
}

/// Routes grouped by source.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_source: HashMap<String, Vec<Route>>,
}

impl RouteTable {
    /// Builds the table from a validated config.
    pub fn new(config: &Config) -> Self {
        let mut by_source: HashMap<String, Vec<Route>> = HashMap::new();
        for (index, route) in config.routes.iter().enumerate() {
            let patterns = route.event_types.iter().filter_map(|p| TypePattern::parse(p).ok()).collect();
            by_source.entry(route.source.clone()).or_default().push(Route {
                index,
                patterns,
                plugins: route.plugins.iter().map(|p| Arc::from(p.as_str())).collect(),
                endpoints: route.endpoints.iter().map(|e| Arc::from(e.as_str())).collect(),
            });
        }
        Self { by_source }
    }

    /// Whether any route serves `source`.
    pub fn knows_source(&self, source: &str) -> bool {
        self.by_source.contains_key(source)
    }

    /// The routes of `source` that take events of `event_type`, in config order.
    pub fn matching<'a>(&'a self, source: &str, event_type: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        self.by_source
            .get(source)
            .into_iter()
            .flatten()
            .filter(move |r| r.patterns.iter().any(|p| p.matches(event_type)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_wildcards_anywhere() {
        let p = |s| TypePattern::parse(s).unwrap();
        assert!(p("*").matches("order_created"));
        assert!(p("order_*").matches("order_created"));
        assert!(!p("order_*").matches("invoice_paid"));
        assert!(p("*.created").matches("user.created"));
        assert!(!p("*.created").matches("user.created.v2"));
        assert!(p("a*c*e").matches("abcde"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exactly"));
        assert!(p("ü*").matches("über"));
    }

    #[test]
    fn empty_pattern_is_refused() {
        assert!(TypePattern::parse("").is_err());
    }
}
