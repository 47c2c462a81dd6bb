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

/// A delivery's number in its event (1-based; 0 for an event id).
pub fn number_of(delivery: Ulid) -> usize {
    (delivery.0 & LOW_MASK) as usize
}

/// A fresh event id in `shard` of `shards`: an event stored under an idempotency key goes to the
/// key's shard, so one script (one Redis Cluster slot) checks the key and stores the event. Only
/// the id's low random bits change; its time, and so its order, stay as generated.
pub fn new_event_in(shard: u32, shards: u32) -> Ulid {
    let shards = u128::from(shards.max(1));
    let shard = u128::from(shard) % shards;
    let id = new_event();
    Ulid(place(id.0 >> 16, shard, shards) << 16)
}

/// `high` (an id without its low 16 bits) moved to the nearest value in `shard`: rounded down to
/// a multiple of `shards` plus `shard`, or one multiple lower where that would carry out of the 64
/// random bits into the timestamp.
fn place(high: u128, shard: u128, shards: u128) -> u128 {
    let moved = high - high % shards + shard;
    if moved >> 64 != high >> 64 {
        moved - shards
    } else {
        moved
    }
}

/// The shard of an idempotency key (of a source) among `shards`: stable across processes and
/// versions (FNV-1a over source, a newline and the key).
pub fn shard_of_key(source: &str, key: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in source.bytes().chain(std::iter::once(b'\n')).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u32
}

/// The shard of an event or delivery among `shards`.
pub fn shard_of(id: Ulid, shards: u32) -> u32 {
    ((id.0 >> 16) % u128::from(shards.max(1))) as u32
}

/// `evt_<ulid>`
pub fn format_event(id: Ulid) -> String {
    prefixed(EVENT_PREFIX, id)
}

/// `dlv_<ulid>`
pub fn format_delivery(id: Ulid) -> String {
    prefixed(DELIVERY_PREFIX, id)
}

/// `prefix` and the ULID, in one allocation of the right size (`format!` grew its buffer as it
/// went, and the claim, the settle and the history writer format ids for every delivery).
fn prefixed(prefix: &str, id: Ulid) -> String {
    let mut buf = [0; ulid::ULID_LEN];
    let mut out = String::with_capacity(prefix.len() + ulid::ULID_LEN);
    out.push_str(prefix);
    out.push_str(id.array_to_str(&mut buf));
    out
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

/// Parses `dlv_<ulid>` as a position in a listing of deliveries (a page's cursor): any ULID marks
/// a place in id order, even one no delivery has (its low 16 bits zero).
pub fn parse_delivery_cursor(text: &str) -> Option<Ulid> {
    Ulid::from_string(text.strip_prefix(DELIVERY_PREFIX)?).ok()
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
    fn events_can_be_made_in_a_chosen_shard_without_changing_their_time() {
        for shards in [1, 2, 7, 16, 1024] {
            for shard in [0, 1, shards / 2, shards - 1] {
                let before = Ulid::new().timestamp_ms();
                let event = new_event_in(shard, shards);
                assert_eq!(shard_of(event, shards), shard % shards);
                assert!(event.timestamp_ms() >= before && event.timestamp_ms() <= Ulid::new().timestamp_ms());
                assert_eq!(event.0 & LOW_MASK, 0);
            }
        }
        // Random bits all ones: adding the shard would carry into the timestamp.
        let high = (5u128 << 64) | u128::from(u64::MAX);
        let moved = place(high, 6, 7);
        assert_eq!((moved >> 64, moved % 7), (5, 6));
    }

    #[test]
    fn key_shards_are_stable_and_spread() {
        assert_eq!(shard_of_key("shop", "order-1", 1), 0);
        assert_eq!(shard_of_key("shop", "order-1", 16), shard_of_key("shop", "order-1", 16));
        let used: std::collections::HashSet<u32> =
            (0..200).map(|i| shard_of_key("shop", &format!("k{i}"), 8)).collect();
        assert_eq!(used.len(), 8);
        // Pinned: the mapping must not change between versions (keys stored by one are found by the next).
        assert_eq!(shard_of_key("shop", "order-1", 1024), 921);
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
        // A cursor is any ULID: a position, not necessarily a delivery.
        assert_eq!(parse_delivery_cursor("dlv_00000000000000000000000000"), Some(Ulid(0)));
        assert_eq!(parse_delivery_cursor(&format_delivery(delivery)), Some(delivery));
        assert_eq!(parse_delivery_cursor("dlv_nonsense"), None);
        assert_eq!(parse_delivery_cursor("evt_00000000000000000000000000"), None);
    }
}
