//! Rows of history: a batch of finished deliveries (and their events) upserted in one transaction,
//! and lookups by id for the admin API. Every lookup names its day partition: a delivery's
//! `created_at` and its event's `received_at` are the time in their ULID. An event with one
//! delivery is kept in that delivery's row (migration 5); one with several in `sluice_events`,
//! shared by its deliveries.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use deadpool_postgres::Transaction;
use serde_json::Value;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use ulid::Ulid;

use super::schema::{self, day_of};
use super::{History, HistoryError};
use crate::id;
use crate::queue::{DeliverySummary, DeliveryView, EventView, Finished, FinishedDelivery};

/// Events of a batch with several deliveries: one row per event, shared by its deliveries (which
/// may finish in different batches), so a row already there is common and left as it is. An event
/// with one delivery is kept in that delivery's row instead (migration 5).
const INSERT_EVENTS: &str = "INSERT INTO sluice_events (id, received_at, source, type, headers, payload) \
     SELECT id, at, source, type, headers::json, payload \
     FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::bytea[]) \
     AS u(id, at, source, type, headers, payload) \
     ON CONFLICT (received_at, id) DO NOTHING";

/// The columns of a delivery's row, in the order [`copy_rows`] writes them.
const DELIVERY_COLUMNS: &str = "id, created_at, event_id, endpoint, state, attempts_made, lapsed_leases, \
     finished_at, last_error, attempts, own_headers, own_payload, event_source, event_type, event_headers, \
     event_payload";

/// Their types, for a binary COPY.
const DELIVERY_TYPES: [Type; 16] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::JSON,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::JSON,
    Type::BYTEA,
];

/// Deliveries of a batch, as new rows. A delivery is written again only when it finished again (a
/// replay) or when a writer wrote it but stopped before marking it in Redis: rare, so the batch is
/// first written as plain new rows (PostgreSQL checks the key as it inserts), and only a batch that
/// meets an existing row is written again as upserts ([`upsert_deliveries`]). `ON CONFLICT` on every
/// batch made PostgreSQL look every key up before inserting it and lock it.
///
/// The new rows go by binary COPY: `INSERT … SELECT … FROM UNNEST($1, …)` made PostgreSQL build
/// an array per column, unnest them into a tuplestore and read each row back from it, which with
/// the statement's parse and plan was about a third of its time per event (a driver writing
/// 100,000 one-delivery events in batches of 500: 20 µs of PostgreSQL CPU per event that way,
/// 12.5 by COPY, 9 by COPY with the event in the delivery's row).
fn copy_deliveries() -> String {
    format!("COPY sluice_deliveries ({DELIVERY_COLUMNS}) FROM STDIN (FORMAT binary)")
}

/// The upsert of a batch that met rows already written: the row by that id takes the batch's
/// values.
fn upsert_deliveries() -> String {
    format!(
        "INSERT INTO sluice_deliveries ({DELIVERY_COLUMNS}) \
         SELECT id, at, event, endpoint, state, made, lapsed, finished, error, attempts::json, own_headers, \
         own_payload, source, type, headers::json, payload \
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int4[], \
         $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::bytea[], $13::text[], $14::text[], \
         $15::text[], $16::bytea[]) \
         AS u(id, at, event, endpoint, state, made, lapsed, finished, error, attempts, own_headers, own_payload, \
         source, type, headers, payload) \
         ON CONFLICT (created_at, id) DO UPDATE SET event_id = EXCLUDED.event_id, \
         endpoint = EXCLUDED.endpoint, state = EXCLUDED.state, attempts_made = EXCLUDED.attempts_made, \
         lapsed_leases = EXCLUDED.lapsed_leases, finished_at = EXCLUDED.finished_at, \
         last_error = EXCLUDED.last_error, attempts = EXCLUDED.attempts, own_headers = EXCLUDED.own_headers, \
         own_payload = EXCLUDED.own_payload, event_source = EXCLUDED.event_source, \
         event_type = EXCLUDED.event_type, event_headers = EXCLUDED.event_headers, \
         event_payload = EXCLUDED.event_payload"
    )
}

/// Text that is JSON already (checked when it was read from the queue), sent as PostgreSQL's
/// `json` takes it in binary: the text itself.
#[derive(Debug)]
struct JsonText<'a>(&'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }

    to_sql_checked!();
}

/// A delivery's row: its own columns, and its event's when it is the event's only delivery.
struct Row<'a> {
    finished: &'a Finished,
    created: SystemTime,
    attempts_made: i32,
    lapsed: i32,
    finished_at: Option<SystemTime>,
    /// The event's source, type, headers (JSON) and body, when they are kept in this row.
    event: Option<(&'a str, &'a str, String, &'a [u8])>,
}

impl<'a> Row<'a> {
    fn of(finished: &'a Finished) -> Result<Self, HistoryError> {
        let d = &finished.delivery;
        let event = match &finished.event {
            Some(e) if finished.only => {
                Some((e.source.as_str(), e.event_type.as_str(), headers_json(&e.headers)?, e.payload.as_ref()))
            }
            _ => None,
        };
        Ok(Self {
            finished,
            created: time(d.created_at),
            attempts_made: d.attempts_made as i32,
            lapsed: d.lapsed_leases as i32,
            finished_at: d.finished_at.map(time),
            event,
        })
    }
}

/// A time in ms since the epoch, as PostgreSQL's `timestamptz` takes it.
pub(super) fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A `timestamptz` read back, in ms since the epoch.
pub(super) fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl History {
    /// Upserts a batch of finished deliveries and their events in one transaction (keyed by id:
    /// writing a batch again changes nothing but what changed since).
    pub async fn write(&self, batch: &[Finished]) -> Result<(), HistoryError> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.write_batch(batch).await;
        self.set_degraded(result.as_ref().err().map(ToString::to_string));
        result
    }

    async fn write_batch(&self, batch: &[Finished]) -> Result<(), HistoryError> {
        self.ensure_migrated().await?;
        let mut client = self.inner.pool.get().await?;
        let days: BTreeSet<i64> = batch.iter().map(|f| day_of(f.delivery.created_at)).collect();
        let missing: Vec<i64> = {
            let known = self.inner.partitions.lock().map_err(|_| HistoryError::Corrupt("partition cache".into()))?;
            days.into_iter().filter(|day| !known.contains(day)).collect()
        };
        schema::ensure_partitions(&mut client, &missing).await?;
        if let Ok(mut known) = self.inner.partitions.lock() {
            known.extend(missing);
        }

        // A delivery that finished, was replayed and finished again before the writer came round is
        // in the batch twice: its last record is the one that holds (one statement cannot write a
        // row twice).
        let mut latest = HashSet::new();
        let mut batch: Vec<&Finished> = batch.iter().rev().filter(|f| latest.insert(f.delivery.id.as_str())).collect();
        batch.reverse();
        let rows: Vec<Row> = batch.iter().map(|f| Row::of(f)).collect::<Result<_, _>>()?;

        // Events with several deliveries, each once: the rest are in their delivery's row.
        let mut seen = HashSet::new();
        let events: Vec<&EventView> = batch
            .iter()
            .filter(|f| !f.only)
            .filter_map(|f| f.event.as_ref())
            .filter(|e| seen.insert(e.id.as_str()))
            .collect();
        let event_ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let times: Vec<SystemTime> = events.iter().map(|e| time(e.received_at.unwrap_or(0))).collect();
        let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let headers: Vec<String> = events.iter().map(|e| headers_json(&e.headers)).collect::<Result<_, _>>()?;
        let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_ref()).collect();
        let event_params: [&(dyn ToSql + Sync); 6] = [&event_ids, &times, &sources, &types, &headers, &payloads];

        for upsert in [false, true] {
            let tx = client.transaction().await?;
            let written = if upsert { upsert_rows(&tx, &rows).await } else { copy_rows(&tx, &rows).await };
            match written {
                Ok(()) => {}
                Err(e) if !upsert && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    // Some delivery of the batch is there already: the transaction is void (rolled
                    // back as `tx` drops); write the batch again as upserts.
                    tracing::debug!("History: a batch met rows already written; writing it again as upserts.");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if !events.is_empty() {
                tx.execute(INSERT_EVENTS, &event_params).await?;
            }
            tx.commit().await?;
            break;
        }
        Ok(())
    }

    /// A finished delivery from history.
    pub async fn delivery(&self, delivery: Ulid) -> Result<Option<DeliveryView>, HistoryError> {
        self.ensure_migrated().await?;
        let client = self.inner.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {VIEW_COLUMNS} FROM sluice_deliveries WHERE created_at = $1 AND id = $2"),
                &[&time(delivery.timestamp_ms()), &id::format_delivery(delivery)],
            )
            .await?;
        row.map(|row| delivery_view(delivery, &row)).transpose()
    }

    /// An event from history, with the states of its deliveries that history holds.
    pub async fn event(&self, event: Ulid) -> Result<Option<EventView>, HistoryError> {
        self.ensure_migrated().await?;
        let client = self.inner.pool.get().await?;
        let at = time(event.timestamp_ms());
        let name = id::format_event(event);
        // In its own row when it has several deliveries, else in its only delivery's (number 1).
        let Some(row) = client
            .query_opt(
                "SELECT source, type, headers, payload FROM sluice_events WHERE received_at = $1 AND id = $2 \
                 UNION ALL \
                 SELECT event_source, event_type, event_headers, event_payload FROM sluice_deliveries \
                 WHERE created_at = $1 AND id = $3 AND event_source IS NOT NULL \
                 LIMIT 1",
                &[&at, &name, &id::format_delivery(id::delivery_of(event, 1))],
            )
            .await?
        else {
            return Ok(None);
        };
        let headers: Vec<(String, String)> =
            serde_json::from_value(row.get(2)).map_err(|e| HistoryError::Corrupt(format!("headers of {name}: {e}")))?;
        Ok(Some(EventView {
            id: name,
            source: row.get(0),
            event_type: row.get(1),
            received_at: Some(event.timestamp_ms()),
            headers,
            payload: Bytes::from(row.get::<_, Vec<u8>>(3)),
            deliveries: self.states_of(event).await?,
        }))
    }

    /// The deliveries of `event` that history holds, by id, with their states. Their ids are the
    /// event's with a delivery number in the low 16 bits, and their time is the event's: one range
    /// of the primary key.
    pub async fn states_of(&self, event: Ulid) -> Result<Vec<DeliverySummary>, HistoryError> {
        self.ensure_migrated().await?;
        let client = self.inner.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, endpoint, state FROM sluice_deliveries \
                 WHERE created_at = $1 AND id BETWEEN $2 AND $3 ORDER BY id",
                &[
                    &time(event.timestamp_ms()),
                    &id::format_delivery(Ulid(event.0 | 1)),
                    &id::format_delivery(Ulid(event.0 | 0xFFFF)),
                ],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| DeliverySummary { id: row.get(0), endpoint: row.get(1), state: Some(row.get(2)) })
            .collect())
    }

    /// Drops the day partitions older than `history.retention`; returns how many tables went.
    pub async fn drop_expired(&self) -> Result<u64, HistoryError> {
        self.ensure_migrated().await?;
        let mut client = self.inner.pool.get().await?;
        let today = day_of(millis(SystemTime::now()));
        let keep_days = (self.inner.retention.as_secs() / 86_400) as i64;
        let dropped = schema::drop_older_than(&mut client, today, keep_days).await?;
        if dropped > 0 {
            // Rows of a dropped day that come again (a replayed delivery) make it anew.
            if let Ok(mut known) = self.inner.partitions.lock() {
                known.clear();
            }
        }
        Ok(dropped)
    }
}

/// Writes `rows` as new rows, by binary COPY (see [`copy_deliveries`]).
async fn copy_rows(tx: &Transaction<'_>, rows: &[Row<'_>]) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(&copy_deliveries()).await?;
    let writer = BinaryCopyInWriter::new(sink, &DELIVERY_TYPES);
    futures_util::pin_mut!(writer);
    for row in rows {
        let (d, own) = (&row.finished.delivery, &row.finished.own);
        let (source, event_type, headers, payload) = match &row.event {
            Some((source, event_type, headers, payload)) => {
                (Some(*source), Some(*event_type), Some(JsonText(headers)), Some(*payload))
            }
            None => (None, None, None, None),
        };
        writer
            .as_mut()
            .write(&[
                &d.id,
                &row.created,
                &d.event_id,
                &d.endpoint,
                &d.state,
                &row.attempts_made,
                &row.lapsed,
                &row.finished_at,
                &d.last_error,
                &JsonText(d.attempts.as_str()),
                &own.headers,
                &own.payload.as_deref(),
                &source,
                &event_type,
                &headers,
                &payload,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Writes `rows` as upserts: a row by that id takes their values (see [`upsert_deliveries`]).
async fn upsert_rows(tx: &Transaction<'_>, rows: &[Row<'_>]) -> Result<(), tokio_postgres::Error> {
    let d: Vec<&FinishedDelivery> = rows.iter().map(|r| &r.finished.delivery).collect();
    let ids: Vec<&str> = d.iter().map(|d| d.id.as_str()).collect();
    let created: Vec<SystemTime> = rows.iter().map(|r| r.created).collect();
    let of_events: Vec<&str> = d.iter().map(|d| d.event_id.as_str()).collect();
    let endpoints: Vec<&str> = d.iter().map(|d| d.endpoint.as_str()).collect();
    let states: Vec<&str> = d.iter().map(|d| d.state.as_str()).collect();
    let attempts_made: Vec<i32> = rows.iter().map(|r| r.attempts_made).collect();
    let lapsed: Vec<i32> = rows.iter().map(|r| r.lapsed).collect();
    let finished: Vec<Option<SystemTime>> = rows.iter().map(|r| r.finished_at).collect();
    let errors: Vec<Option<&str>> = d.iter().map(|d| d.last_error.as_deref()).collect();
    let attempts: Vec<&str> = d.iter().map(|d| d.attempts.as_str()).collect();
    let own_headers: Vec<Option<&str>> = rows.iter().map(|r| r.finished.own.headers.as_deref()).collect();
    let own_payloads: Vec<Option<&[u8]>> = rows.iter().map(|r| r.finished.own.payload.as_deref()).collect();
    let sources: Vec<Option<&str>> = rows.iter().map(|r| r.event.as_ref().map(|e| e.0)).collect();
    let types: Vec<Option<&str>> = rows.iter().map(|r| r.event.as_ref().map(|e| e.1)).collect();
    let headers: Vec<Option<&str>> = rows.iter().map(|r| r.event.as_ref().map(|e| e.2.as_str())).collect();
    let payloads: Vec<Option<&[u8]>> = rows.iter().map(|r| r.event.as_ref().map(|e| e.3)).collect();
    let params: [&(dyn ToSql + Sync); 16] = [
        &ids,
        &created,
        &of_events,
        &endpoints,
        &states,
        &attempts_made,
        &lapsed,
        &finished,
        &errors,
        &attempts,
        &own_headers,
        &own_payloads,
        &sources,
        &types,
        &headers,
        &payloads,
    ];
    tx.execute(upsert_deliveries().as_str(), &params).await?;
    Ok(())
}

/// The columns [`delivery_view`] reads.
pub(super) const VIEW_COLUMNS: &str =
    "event_id, endpoint, state, attempts_made, lapsed_leases, finished_at, last_error, attempts";

/// A delivery as the admin API shows it, from a row holding [`VIEW_COLUMNS`].
pub(super) fn delivery_view(delivery: Ulid, row: &tokio_postgres::Row) -> Result<DeliveryView, HistoryError> {
    let attempts = match row.try_get::<_, Value>("attempts")? {
        Value::Array(attempts) => attempts,
        other => return Err(HistoryError::Corrupt(format!("attempts of {delivery} are not a list: {other}"))),
    };
    Ok(DeliveryView {
        id: id::format_delivery(delivery),
        event_id: row.try_get("event_id")?,
        endpoint: row.try_get("endpoint")?,
        state: row.try_get("state")?,
        attempts_made: row.try_get::<_, i32>("attempts_made")?.max(0) as u32,
        lapsed_leases: row.try_get::<_, i32>("lapsed_leases")?.max(0) as u32,
        created_at: Some(delivery.timestamp_ms()),
        updated_at: row.try_get::<_, Option<SystemTime>>("finished_at")?.map(millis),
        next_attempt_at: None,
        last_error: row.try_get("last_error")?,
        attempts,
    })
}

/// An event's kept headers as history stores them: a JSON list of `[name, value]` pairs.
fn headers_json(headers: &[(String, String)]) -> Result<String, HistoryError> {
    serde_json::to_string(headers).map_err(|e| HistoryError::Corrupt(format!("headers: {e}")))
}
