//! From an event to its deliveries: every route that takes the event runs its plugin chain, and the
//! verdicts become deliveries. Identical deliveries (same endpoint, body and headers) that several
//! routes produce are sent once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Dropped;
use crate::plugin::{run_chain, ChainVerdict, PluginError, PluginEvent, PluginSet};
use crate::route::RouteTable;

/// What planning needs, shared (behind an `Arc`) so plugin threads can plan while ingest awaits.
pub struct Routing {
    /// The route table.
    pub routes: RouteTable,
    /// The plugins.
    pub plugins: Arc<PluginSet>,
    /// Endpoint name → delay before its first attempt.
    pub endpoints: HashMap<Arc<str>, Duration>,
}

impl Routing {
    /// Whether any route that takes this event runs a plugin (then planning belongs on a plugin thread).
    pub fn runs_plugins(&self, source: &str, event_type: &str) -> bool {
        self.routes.matching(source, event_type).any(|r| !r.plugins.is_empty())
    }

    /// [`plan`] against these routes, plugins and endpoints.
    pub fn plan(&self, event: &PluginEvent) -> Result<Plan, PluginError> {
        plan(&self.routes, &self.plugins, event, |name| self.endpoints.get_key_value(name).map(|(k, _)| k.clone()))
    }
}

/// One delivery to create.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Planned {
    /// Endpoint name.
    pub endpoint: Arc<str>,
    /// Body, when it differs from the event's payload.
    pub payload: Option<Bytes>,
    /// Headers that plugins added for this delivery.
    pub headers: Vec<(String, String)>,
}

/// What the routes made of an event.
#[derive(Debug, Default)]
pub struct Plan {
    /// Deliveries, in route order, without duplicates.
    pub deliveries: Vec<Planned>,
    /// Chains that dropped the event.
    pub dropped: Vec<Dropped>,
}

/// Runs every matching route of `event` and collects the deliveries.
/// `known_endpoint` tells whether a name a plugin routed to is configured.
pub fn plan(
    routes: &RouteTable,
    plugins: &PluginSet,
    event: &PluginEvent,
    known_endpoint: impl Fn(&str) -> Option<Arc<str>>,
) -> Result<Plan, PluginError> {
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    let mut push = |planned: Planned, plan: &mut Plan| {
        if seen.insert(planned.clone()) {
            plan.deliveries.push(planned);
        }
    };
    for route in routes.matching(&event.source, &event.event_type) {
        let end = run_chain(plugins, &route.plugins, event.clone())?;
        match end.verdict {
            ChainVerdict::Pass => {
                let payload = changed_payload(event, &end.event.payload);
                let headers = added_headers(&event.headers, &end.event.headers);
                for endpoint in &route.endpoints {
                    let planned =
                        Planned { endpoint: endpoint.clone(), payload: payload.clone(), headers: headers.clone() };
                    push(planned, &mut plan);
                }
            }
            ChainVerdict::Drop(reason) => {
                let plugin = end.plugin.map(|p| p.to_string()).unwrap_or_default();
                plan.dropped.push(Dropped { plugin, reason });
            }
            ChainVerdict::Route(deliveries) => {
                let plugin = end.plugin.map(|p| p.to_string()).unwrap_or_default();
                for delivery in deliveries {
                    let endpoint = known_endpoint(&delivery.endpoint).ok_or_else(|| PluginError::UnknownEndpoint {
                        plugin: plugin.clone(),
                        endpoint: delivery.endpoint.clone(),
                    })?;
                    let body = delivery.payload.unwrap_or_else(|| end.event.payload.clone());
                    let payload = changed_payload(event, &body);
                    push(Planned { endpoint, payload, headers: delivery.headers }, &mut plan);
                }
            }
        }
    }
    Ok(plan)
}

/// `Some(body)` when it differs from the event's own payload (which is stored once per event).
fn changed_payload(event: &PluginEvent, body: &[u8]) -> Option<Bytes> {
    (body != event.payload.as_slice()).then(|| Bytes::copy_from_slice(body))
}

/// Headers in `after` that were not in `before`: the ones plugins added or changed.
fn added_headers(before: &[(String, String)], after: &[(String, String)]) -> Vec<(String, String)> {
    after.iter().filter(|h| !before.contains(h)).cloned().collect()
}
