//! The history schema: versioned migrations embedded in the binary, applied at start-up (when
//! PostgreSQL first answers) under an advisory lock, so gateways starting together apply each once;
//! and the day partitions, made as rows need them and dropped whole when older than
//! `history.retention`.

use deadpool_postgres::Client;

use super::HistoryError;

/// Every migration, in order; a migration's version is its place in this list (1-based). Never
/// edit one that has shipped: add the next.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_history.sql"),
    include_str!("migrations/0002_dead_letters.sql"),
    include_str!("migrations/0003_drop_event_index.sql"),
    include_str!("migrations/0004_text_json_and_byte_order.sql"),
    include_str!("migrations/0005_events_inline.sql"),
    include_str!("migrations/0006_search_index_ascending.sql"),
];

/// The partitioned tables, each with one partition per day.
pub const TABLES: [&str; 2] = ["sluice_events", "sluice_deliveries"];

/// Advisory lock keys (arbitrary, fixed): one for migrations, one for partition changes.
const MIGRATION_LOCK: i64 = 0x51_1CE0_0001;
const PARTITION_LOCK: i64 = 0x51_1CE0_0002;

const DAY_MS: i64 = 86_400_000;

/// Applies the migrations this database has not seen yet.
pub async fn migrate(client: &mut Client) -> Result<(), HistoryError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sluice_schema_migrations (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: i32 =
        tx.query_one("SELECT coalesce(max(version), 0) FROM sluice_schema_migrations", &[]).await?.get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO sluice_schema_migrations (version) VALUES ($1)", &[&version]).await?;
        tracing::info!(version, "History: applied schema migration.");
    }
    tx.commit().await?;
    Ok(())
}

/// The day (since the epoch, UTC) of a time in ms.
pub fn day_of(ms: u64) -> i64 {
    ms as i64 / DAY_MS
}

/// Makes the partitions of `days` that do not exist yet (both tables).
pub async fn ensure_partitions(client: &mut Client, days: &[i64]) -> Result<(), HistoryError> {
    if days.is_empty() {
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK]).await?;
    for &day in days {
        let (from, to) = (date(day), date(day + 1));
        for table in TABLES {
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table}_p{} PARTITION OF {table} FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')",
                from.replace('-', "")
            ))
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Drops the partitions whose whole day is older than `keep_days` days before `today`; returns how
/// many tables were dropped.
pub async fn drop_older_than(client: &mut Client, today: i64, keep_days: i64) -> Result<u64, HistoryError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK]).await?;
    let rows = tx
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY($1)",
            &[&TABLES.to_vec()],
        )
        .await?;
    let mut dropped = 0;
    for row in rows {
        let name: String = row.get(0);
        let Some(day) = name.rsplit_once("_p").and_then(|(_, date)| day_of_date(date)) else { continue };
        if day < today - keep_days {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}")).await?;
            dropped += 1;
        }
    }
    tx.commit().await?;
    Ok(dropped)
}

/// `YYYY-MM-DD` of a day since the epoch (the proleptic Gregorian calendar, as PostgreSQL uses).
pub fn date(day: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day since the epoch of a `YYYYMMDD` partition suffix.
fn day_of_date(text: &str) -> Option<i64> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (text[..4].parse().ok()?, text[4..6].parse().ok()?, text[6..].parse().ok()?);
    // The inverse of `date` (days-from-civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_agree_both_ways() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(day_of(1_764_633_600_000)), "2025-12-02");
        // A leap day, a year end, and a century that is not a leap year.
        assert_eq!(date(day_of_date("20240229").unwrap()), "2024-02-29");
        assert_eq!(date(day_of_date("20251231").unwrap() + 1), "2026-01-01");
        assert_eq!(date(day_of_date("21000228").unwrap() + 1), "2100-03-01");
        for day in (-800..80_000).step_by(7) {
            assert_eq!(day_of_date(&date(day).replace('-', "")), Some(day), "{}", date(day));
        }
        assert_eq!(day_of_date("2025123"), None);
        assert_eq!(day_of_date("2025x231"), None);
    }
}
