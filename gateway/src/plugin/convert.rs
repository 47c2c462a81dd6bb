//! Conversions between the generated WIT types and the gateway's plugin domain types.

use super::bindings::sluice::plugin::types as wit;
use super::{PluginEvent, RoutedDelivery, Verdict};

impl From<&PluginEvent> for wit::Event {
    fn from(event: &PluginEvent) -> Self {
        wit::Event {
            id: event.id.clone(),
            source: event.source.clone(),
            event_type: event.event_type.clone(),
            headers: event.headers.clone(),
            payload: event.payload.clone(),
        }
    }
}

impl From<wit::Event> for PluginEvent {
    fn from(event: wit::Event) -> Self {
        PluginEvent {
            id: event.id,
            source: event.source,
            event_type: event.event_type,
            headers: event.headers,
            payload: event.payload,
        }
    }
}

impl From<wit::Verdict> for Verdict {
    fn from(verdict: wit::Verdict) -> Self {
        match verdict {
            wit::Verdict::Drop(reason) => Verdict::Drop(reason),
            wit::Verdict::Pass(event) => Verdict::Pass(event.into()),
            wit::Verdict::Route(deliveries) => Verdict::Route(
                deliveries
                    .into_iter()
                    .map(|d| RoutedDelivery { endpoint: d.endpoint, payload: d.payload, headers: d.headers })
                    .collect(),
            ),
        }
    }
}
