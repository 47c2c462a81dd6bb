//! The event record on Redis: one string per event holding what its deliveries need until they are
//! claimed, so a pending delivery costs its event's bytes and a queue entry. Lines, like the head
//! of an HTTP message (`scripts/record.lua` reads and updates the same layout inside the scripts):
//!
//! ```text
//! 10                      open and dead delivery counts, hex, each as wide as the count needs
//! shop                    source
//! order.created           type
//! orders                  endpoint of delivery 1, then one line per further delivery
//!                         (blank line)
//! content-type:application/json
//!                         (blank line)
//! {"event":"order.created",…}   the body, to the end
//! ```
//!
//! The counts are rewritten in place by the scripts, at the width the record was written with. A
//! field that is empty, starts with `"` or holds a newline is written as a JSON string, which starts
//! with `"` and holds none. Header lines are `name:value`: a kept header's name is an HTTP token
//! (no colon) and its value visible ASCII (no newline); anything else is refused, not stored.
//! The layout is compact on purpose: every byte of it is paid once per pending event, and Redis'
//! allocator rounds the string up to its next size class.

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
    /// The kept headers.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The key of an event's record: the shard's prefix, `e:`, and the event's ULID (without `evt_`,
/// as the scripts' `event_key` has it). `event`: the ULID, or its text.
pub(super) fn key(prefix: &str, event: impl std::fmt::Display) -> String {
    format!("{prefix}e:{event}")
}

/// The record of a new event whose deliveries are all open.
pub(super) fn encode(
    source: &str,
    event_type: &str,
    endpoints: &[&str],
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Vec<u8>, QueueError> {
    encode_counted((endpoints.len() as u32, 0), source, event_type, endpoints, headers, body)
}

/// The record of an event with `open` deliveries open and `dead` dead (counts as wide as the
/// delivery count needs, whatever they are now, so the scripts can rewrite them in place).
pub(super) fn encode_counted(
    (open, dead): (u32, u32),
    source: &str,
    event_type: &str,
    endpoints: &[&str],
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Vec<u8>, QueueError> {
    let width = format!("{:x}", endpoints.len()).len();
    let mut head = format!("{open:0width$x}{dead:0width$x}\n");
    for text in [source, event_type].into_iter().chain(endpoints.iter().copied()) {
        head.push_str(&field(text)?);
        head.push('\n');
    }
    head.push('\n');
    for (name, value) in headers {
        if name.is_empty() || name.contains([':', '\n']) || value.contains('\n') {
            return Err(QueueError::Corrupt(format!("header {name:?} cannot be kept with an event")));
        }
        head.push_str(name);
        head.push(':');
        head.push_str(value);
        head.push('\n');
    }
    head.push('\n');
    let mut record = head.into_bytes();
    record.extend_from_slice(body);
    Ok(record)
}

/// A field as written: as it is, or as a JSON string.
fn field(text: &str) -> Result<String, QueueError> {
    if text.is_empty() || text.starts_with('"') || text.contains('\n') {
        Ok(serde_json::to_string(text)?)
    } else {
        Ok(text.to_string())
    }
}

/// A field as [`field`] wrote it.
fn read_field(line: &str) -> Result<String, QueueError> {
    Ok(if line.starts_with('"') { serde_json::from_str(line)? } else { line.to_string() })
}

/// The endpoint of each delivery, out of a record's first bytes (`GETRANGE`, so a search need not
/// read bodies); `None` when those bytes end before the endpoint lines do.
pub(super) fn decode_endpoints(head: &[u8]) -> Result<Option<Vec<String>>, QueueError> {
    // Metadata lines are never empty (an empty field is written `""`): the first blank line ends them.
    let Some(end) = head.windows(2).position(|pair| pair == b"\n\n") else { return Ok(None) };
    let meta = std::str::from_utf8(&head[..end])
        .map_err(|_| QueueError::Corrupt("event record: metadata that is not UTF-8".into()))?;
    // Counts, source and type come first.
    meta.split('\n').skip(3).map(read_field).collect::<Result<_, _>>().map(Some)
}

/// Reads a record written by [`encode`] (and updated by the scripts).
pub(super) fn decode(record: &[u8]) -> Result<EventRecord, QueueError> {
    let corrupt = |what: &str| QueueError::Corrupt(format!("event record: {what}"));
    let mut lines = record.split(|&b| b == b'\n');
    let mut at = 0;
    let mut next = |what: &str| {
        let line = lines.next().filter(|_| at < record.len()).ok_or_else(|| corrupt(what))?;
        at += line.len() + 1;
        std::str::from_utf8(line).map_err(|_| corrupt(what))
    };
    let counts = next("no counts")?;
    let width = counts.len() / 2;
    let count = |hex: Option<&str>| {
        hex.and_then(|hex| u32::from_str_radix(hex, 16).ok()).ok_or_else(|| corrupt("the counts are not hex digits"))
    };
    let (open, dead) = (count(counts.get(..width))?, count(counts.get(width..))?);
    let mut fields = Vec::new();
    loop {
        let line = next("no end of the metadata")?;
        if line.is_empty() {
            break;
        }
        fields.push(read_field(line)?);
    }
    if fields.len() < 2 {
        return Err(corrupt("no source or type"));
    }
    let mut headers = Vec::new();
    loop {
        let line = next("no end of the headers")?;
        let Some((name, value)) = line.split_once(':') else {
            if line.is_empty() {
                break;
            }
            return Err(corrupt("a header line without a colon"));
        };
        headers.push((name.to_string(), value.to_string()));
    }
    let body = record[at.min(record.len())..].to_vec();
    let endpoints = fields.split_off(2);
    let event_type = fields.pop().unwrap_or_default();
    let source = fields.pop().unwrap_or_default();
    Ok(EventRecord { open, dead, source, event_type, endpoints, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_record_reads_back_as_written_whatever_the_body_and_fields_hold() {
        let body = b"{\"a\":\"line\\nbreak\"}\n\nraw newlines, blank lines and: colons";
        let kept = headers(&[("x-id", "1"), ("content-type", "application/json"), ("x-empty", "")]);
        let odd_type = "order\ncreated \"x\"";
        let record = encode("shop", odd_type, &["orders", "\"quoted\"", ""], &kept, body).unwrap();
        assert!(record.starts_with(b"30\nshop\n\"order\\ncreated"), "{}", String::from_utf8_lossy(&record));
        let read = decode(&record).unwrap();
        assert_eq!(
            read,
            EventRecord {
                open: 3,
                dead: 0,
                source: "shop".into(),
                event_type: odd_type.into(),
                endpoints: vec!["orders".into(), "\"quoted\"".into(), String::new()],
                headers: kept,
                body: body.to_vec(),
            }
        );
    }

    #[test]
    fn an_event_without_deliveries_headers_or_body_reads_back() {
        let read = decode(&encode("s", "t", &[], &[], b"").unwrap()).unwrap();
        assert_eq!((read.open, read.dead, read.endpoints.len(), read.headers.len(), read.body.len()), (0, 0, 0, 0, 0));
    }

    #[test]
    fn counts_are_as_wide_as_the_delivery_count_and_read_when_rewritten() {
        assert!(encode("s", "t", &["e"; 15], &[], b"{}").unwrap().starts_with(b"f0\n"));
        let mut record = encode("s", "t", &["e"; 300], &[], b"{}").unwrap();
        assert!(record.starts_with(b"12c000\n"));
        record[..6].copy_from_slice(b"12b001");
        let read = decode(&record).unwrap();
        assert_eq!((read.open, read.dead, read.endpoints.len()), (299, 1, 300));
    }

    #[test]
    fn a_record_written_with_counts_keeps_the_width_of_its_delivery_count() {
        let record = encode_counted((1, 0), "s", "t", &["a", "", "b"], &[], b"{}").unwrap();
        assert!(record.starts_with(b"10\n"), "{}", String::from_utf8_lossy(&record));
        let read = decode(&encode_counted((1, 2), "s", "t", &["e"; 16], &[], b"{}").unwrap()).unwrap();
        assert_eq!((read.open, read.dead, read.endpoints.len()), (1, 2, 16));
    }

    #[test]
    fn a_header_that_cannot_be_a_line_is_refused() {
        for bad in [("x:y", "v"), ("x", "a\nb"), ("", "v")] {
            assert!(encode("s", "t", &[], &headers(&[bad]), b"{}").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_endpoints_read_out_of_the_head_alone_or_not_at_all() {
        let record = encode("s", "t", &["orders", "", "\"q\""], &headers(&[("h", "v")]), b"{}\n\n").unwrap();
        let all = Some(vec!["orders".to_string(), String::new(), "\"q\"".to_string()]);
        assert_eq!(decode_endpoints(&record).unwrap(), all);
        let head_end = record.windows(2).position(|pair| pair == b"\n\n").unwrap();
        assert_eq!(decode_endpoints(&record[..head_end + 2]).unwrap(), all);
        for len in 0..head_end + 1 {
            assert_eq!(decode_endpoints(&record[..len]).unwrap(), None, "{len} bytes");
        }
        assert_eq!(decode_endpoints(&encode("s", "t", &[], &[], b"").unwrap()).unwrap(), Some(vec![]));
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let record = encode("s", "t", &["e"], &headers(&[("h", "v")]), b"{}").unwrap();
        // Cut before the blank line that ends the headers: not a record.
        for len in 0..record.len() - 3 {
            assert!(decode(&record[..len]).is_err(), "{len} bytes read as a record");
        }
    }
}
