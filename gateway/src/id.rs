//! Event and delivery ids, and the shard each belongs to.
//!
//! Ids are ULIDs (time-ordered, 128 bits) behind a prefix: `evt_…` for events, `dlv_…` for
//! deliveries. An event id has its low 16 bits zero; its k-th delivery (k ≥ 1) is the same ULID with
//! k in those bits. So a delivery id names its event without a lookup, and both hash to the same
//! shard (bits 16..), which keeps an event and all its deliveries under one Redis hash tag.

use ulid::Ulid;

/// Most deliveries one event can fan out to.
pub const MAX_DELIVERIES_PER_EVENT: usize = 0xFFFF;

const EVENT_PREFIX: &str = "evt_";
const DELIVERY_PREFIX: &str = "dlv_";
const LOW_MASK: u128 = 0xFFFF;

/// A fresh event id.
pub fn new_event() -> Ulid {
    Ulid(Ulid::new().0 & !LOW_MASK)
}

/// The id of delivery number `k` (1-based) of `event`.
pub fn delivery_of(event: Ulid, k: usize) -> Ulid {
    debug_assert!((1..=MAX_DELIVERIES_PER_EVENT).contains(&k));
    Ulid(event.0 | (k as u128 & LOW_MASK))
}

/// The event a delivery id belongs to.
pub fn event_of(delivery: Ulid) -> Ulid {
    Ulid(delivery.0 & !LOW_MASK)
}

/// The shard of an event or delivery among `shards`.
pub fn shard_of(id: Ulid, shards: u32) -> u32 {
    ((id.0 >> 16) % u128::from(shards.max(1))) as u32
}

/// `evt_<ulid>`
pub fn format_event(id: Ulid) -> String {
    format!("{EVENT_PREFIX}{id}")
}

/// `dlv_<ulid>`
pub fn format_delivery(id: Ulid) -> String {
    format!("{DELIVERY_PREFIX}{id}")
}

/// Parses `evt_<ulid>`; `None` for anything else, including a delivery id.
pub fn parse_event(text: &str) -> Option<Ulid> {
    let id = Ulid::from_string(text.strip_prefix(EVENT_PREFIX)?).ok()?;
    (id.0 & LOW_MASK == 0).then_some(id)
}

/// Parses `dlv_<ulid>`; `None` for anything else.
pub fn parse_delivery(text: &str) -> Option<Ulid> {
    let id = Ulid::from_string(text.strip_prefix(DELIVERY_PREFIX)?).ok()?;
    (id.0 & LOW_MASK != 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_share_their_events_shard_and_name_it() {
        for _ in 0..100 {
            let event = new_event();
            for k in [1, 2, 77, MAX_DELIVERIES_PER_EVENT] {
                let delivery = delivery_of(event, k);
                assert_eq!(event_of(delivery), event);
                assert_eq!(shard_of(delivery, 7), shard_of(event, 7));
                assert_ne!(delivery, event);
            }
        }
    }

    #[test]
    fn ids_round_trip_through_text_and_reject_the_other_kind() {
        let event = new_event();
        let delivery = delivery_of(event, 3);
        assert_eq!(parse_event(&format_event(event)), Some(event));
        assert_eq!(parse_delivery(&format_delivery(delivery)), Some(delivery));
        assert_eq!(parse_event(&format_delivery(delivery)), None);
        assert_eq!(parse_delivery(&format_event(event)), None);
        assert_eq!(parse_delivery("dlv_nonsense"), None);
    }
}
