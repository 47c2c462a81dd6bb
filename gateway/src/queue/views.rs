//! What the admin API and history see of the queue: deliveries and events as views, dead letters
//! and their cursor, finished deliveries on their way to history, and a dead letter coming back
//! from it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// A delivery id with its endpoint and (in views) its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverySummary {
    /// Delivery id.
    pub id: String,
    /// Endpoint name.
    pub endpoint: String,
    /// `pending`, `succeeded`, `dead` (or `expired`); absent where not looked up.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
}

/// A delivery as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// Delivery id.
    pub id: String,
    /// Event id.
    pub event_id: String,
    /// Endpoint name.
    pub endpoint: String,
    /// `pending`, `paused` (its endpoint is disabled), `succeeded` or `dead`.
    pub state: String,
    /// Attempts recorded so far (a claim counts none).
    pub attempts_made: u32,
    /// Times a lease on it ran out before it was settled.
    pub lapsed_leases: u32,
    /// When it was enqueued, ms since the epoch.
    pub created_at: Option<u64>,
    /// When it was last settled, ms since the epoch.
    pub updated_at: Option<u64>,
    /// When a worker may next touch it (next attempt or lease expiry), ms since the epoch.
    pub next_attempt_at: Option<u64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Every attempt, oldest first.
    pub attempts: Vec<serde_json::Value>,
}

/// An event as the admin API shows it.
#[derive(Debug, Clone)]
pub struct EventView {
    /// Event id.
    pub id: String,
    /// Source name.
    pub source: String,
    /// Event type.
    pub event_type: String,
    /// When it was stored, ms since the epoch.
    pub received_at: Option<u64>,
    /// Ingest headers kept with the event.
    pub headers: Vec<(String, String)>,
    /// Body as received.
    pub payload: Bytes,
    /// Its deliveries with their states.
    pub deliveries: Vec<DeliverySummary>,
}

/// A finished delivery as history keeps it: its row (state, attempts) and its event's.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The delivery, with every attempt.
    pub delivery: FinishedDelivery,
    /// Its event; `None` when the event is gone from the store.
    pub event: Option<EventView>,
    /// Whether it is its event's only delivery (history then keeps the event in its row).
    pub only: bool,
    /// What a plugin gave this delivery of its own, when it did: what it sends in place of the
    /// event's body and beside its headers.
    pub own: Own,
    /// The backend's handle on this record until it is marked exported (Redis: its history
    /// stream entry); `None` where the backend finds it by the delivery id.
    pub entry: Option<String>,
}

/// A finished delivery as history stores it: [`DeliveryView`]'s fields that a finished delivery
/// has, with its attempts kept as the JSON text the queue handed over (history stores that text as
/// it is: parsing it only to write it again would cost the writer most of its time).
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedDelivery {
    /// Delivery id.
    pub id: String,
    /// Event id.
    pub event_id: String,
    /// Endpoint name.
    pub endpoint: String,
    /// `succeeded` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts_made: u32,
    /// Times a lease on it ran out before it was settled.
    pub lapsed_leases: u32,
    /// When it was enqueued (the time in its id), ms since the epoch.
    pub created_at: u64,
    /// When it finished, ms since the epoch.
    pub finished_at: Option<u64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Every attempt, oldest first: a JSON list of the records [`DeliveryView::attempts`] shows.
    pub attempts: AttemptList,
}

/// A delivery's attempt records as one JSON list, in text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptList(String);

impl AttemptList {
    /// The list of a log of one JSON record per line (as the queue keeps attempts), checking that
    /// each line is JSON.
    pub fn from_lines(log: &str) -> Result<Self, serde_json::Error> {
        let mut list = String::with_capacity(log.len() + 2);
        list.push('[');
        for line in log.lines().filter(|line| !line.trim().is_empty()) {
            // Validates without building the value.
            serde_json::from_str::<serde::de::IgnoredAny>(line)?;
            if list.len() > 1 {
                list.push(',');
            }
            list.push_str(line);
        }
        list.push(']');
        Ok(Self(list))
    }

    /// The list of these records.
    pub fn of(records: &[serde_json::Value]) -> Self {
        Self(serde_json::Value::from(records).to_string())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A delivery's own headers and body (a plugin's output for its route), when they differ from its
/// event's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Own {
    /// Extra headers to send, as the queue keeps them (a JSON list of `[name, value]` pairs).
    pub headers: Option<String>,
    /// The body to send instead of the event's.
    pub payload: Option<Bytes>,
}

/// A dead letter that only history still holds, on its way back into the queue: its event and the
/// endpoints of all the event's deliveries (by number), so the queue can store the event again
/// when it is gone.
#[derive(Debug, Clone)]
pub struct Restore {
    /// The dead delivery, with its attempt log.
    pub delivery: DeliveryView,
    /// What it sends of its own.
    pub own: Own,
    /// Its event (its `deliveries` unused).
    pub event: EventView,
    /// The endpoint of each of the event's deliveries, by number (delivery k at k - 1); empty where
    /// history holds no row for it.
    pub endpoints: Vec<String>,
}

/// A dead-lettered delivery, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Delivery id.
    pub id: String,
    /// Endpoint name.
    pub endpoint: String,
    /// When it was dead-lettered, ms since the epoch.
    pub dead_at: u64,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// Where a page of dead letters starts (newest first): before burial time `at`, and among those
/// buried in that same millisecond — one settle batch buries many at once — before delivery `id`.
/// Without `id`, everything buried at `at` is left out too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadCursor {
    /// Burial time, ms since the epoch.
    pub at: u64,
    /// The last delivery of the previous page.
    pub id: Option<Ulid>,
}

#[cfg(test)]
mod tests {
    use super::AttemptList;

    #[test]
    fn an_attempt_log_becomes_one_json_list_and_a_broken_line_is_an_error() {
        let list = AttemptList::from_lines("{\"attempt\":1}\n\n{\"attempt\":2,\"error\":\"a\\nb\"}\n").unwrap();
        let parsed: serde_json::Value = serde_json::from_str(list.as_str()).unwrap();
        assert_eq!(parsed, serde_json::json!([{"attempt": 1}, {"attempt": 2, "error": "a\nb"}]));
        assert_eq!(AttemptList::from_lines("").unwrap().as_str(), "[]");
        assert!(AttemptList::from_lines("{\"attempt\":1}\n{\"attempt\":").is_err());
    }
}
