//! The event record on Redis: one string per event holding what its deliveries need until they are
//! claimed, so a pending delivery costs its event's bytes and a queue entry (see
//! `scripts/record.lua`, which reads and updates the same layout inside the scripts):
//!
//! ```text
//! OOOODDDD[source,type,[endpoint 1,…,endpoint n]]\n<kept headers JSON>\n<body>
//! ```
//!
//! `OOOO` and `DDDD` are the open and dead delivery counts (4 hex digits each: an event has at most
//! 65,535 deliveries), rewritten in place by the scripts. JSON escapes newlines, so the first two
//! newlines end the metadata and the headers; the body runs to the end, as the producer sent it.

use crate::queue::QueueError;

/// An event record, read back.
#[derive(Debug, PartialEq)]
pub(super) struct EventRecord {
    /// Deliveries neither acked nor buried.
    pub open: u32,
    /// Deliveries buried.
    pub dead: u32,
    pub source: String,
    pub event_type: String,
    /// The endpoint of each delivery, by number (delivery k is at k - 1).
    pub endpoints: Vec<String>,
    /// The kept headers, as JSON.
    pub headers: String,
    pub body: Vec<u8>,
}

/// The record of a new event whose deliveries are all open.
pub(super) fn encode(
    source: &str,
    event_type: &str,
    endpoints: &[&str],
    headers: &str,
    body: &[u8],
) -> Result<Vec<u8>, QueueError> {
    let meta = serde_json::to_vec(&(source, event_type, endpoints))?;
    let mut record = Vec::with_capacity(8 + meta.len() + headers.len() + body.len() + 2);
    record.extend_from_slice(format!("{:04x}0000", endpoints.len()).as_bytes());
    record.extend_from_slice(&meta);
    record.push(b'\n');
    record.extend_from_slice(headers.as_bytes());
    record.push(b'\n');
    record.extend_from_slice(body);
    Ok(record)
}

/// Reads a record written by [`encode`] (and updated by the scripts).
pub(super) fn decode(record: &[u8]) -> Result<EventRecord, QueueError> {
    let corrupt = |what: &str| QueueError::Corrupt(format!("event record: {what}"));
    let count = |range: std::ops::Range<usize>| {
        record
            .get(range)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or_else(|| corrupt("the counts are not hex digits"))
    };
    let (open, dead) = (count(0..4)?, count(4..8)?);
    let rest = &record[8..];
    let meta_end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| corrupt("no end of metadata"))?;
    let after_meta = &rest[meta_end + 1..];
    let headers_end = after_meta.iter().position(|&b| b == b'\n').ok_or_else(|| corrupt("no end of headers"))?;
    let (source, event_type, endpoints): (String, String, Vec<String>) = serde_json::from_slice(&rest[..meta_end])?;
    Ok(EventRecord {
        open,
        dead,
        source,
        event_type,
        endpoints,
        headers: String::from_utf8_lossy(&after_meta[..headers_end]).into_owned(),
        body: after_meta[headers_end + 1..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written_whatever_the_body_and_type_hold() {
        let body = b"{\"a\":\"line\\nbreak\"}\n\nraw newlines too";
        let record = encode("shop", "order\ncreated \"x\"", &["orders", "audit"], r#"[["x-id","1"]]"#, body).unwrap();
        assert!(record.starts_with(b"00020000["));
        let read = decode(&record).unwrap();
        assert_eq!(
            read,
            EventRecord {
                open: 2,
                dead: 0,
                source: "shop".into(),
                event_type: "order\ncreated \"x\"".into(),
                endpoints: vec!["orders".into(), "audit".into()],
                headers: r#"[["x-id","1"]]"#.into(),
                body: body.to_vec(),
            }
        );
    }

    #[test]
    fn counts_rewritten_in_place_are_read() {
        let mut record = encode("s", "t", &["e"; 300], "[]", b"{}").unwrap();
        record[..8].copy_from_slice(b"012b0001");
        let read = decode(&record).unwrap();
        assert_eq!((read.open, read.dead, read.endpoints.len()), (299, 1, 300));
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let record = encode("s", "t", &["e"], "[]", b"{}").unwrap();
        for len in 0..record.len() - 2 {
            assert!(decode(&record[..len]).is_err(), "{len} bytes read as a record");
        }
    }
}
