//! `--steps`: what Redis spends on each step of a delivery's common path, measured through the
//! queue itself (no HTTP, no plugin, no receiver), so the figure is Redis' alone and moves little
//! between runs.
//!
//! On a `redis-server` of its own, each round stores `--events` events of one delivery each (a
//! 40-byte body, due now, no idempotency key: what most ingest stores), then claims them all in
//! batches of the worker's default size, then settles each with a first attempt's success; every
//! step is called concurrently, as the gateway's tasks do, so the queue's batchers group them as
//! they would. Around each step it reads Redis' CPU (`INFO cpu`), and from `INFO commandstats` the
//! time Redis spent in scripts (its clock around each `EVALSHA`) and the commands run (scripts'
//! inner ones included), and prints them per delivery, and the medians of the rounds'. Nothing
//! else runs on Redis meanwhile, so a change in the scripts shows up here in a few seconds, where
//! the end-to-end peak needs many rounds to see it through the VM's drift.
//!
//! Then the same with `[history]` (no PostgreSQL needed: nothing is written to it), where the
//! settle also appends each finished delivery to the history stream, and a fourth step, export,
//! reads the stream as the history writer does (in its batches of 500) and drops what it read:
//! Redis' CPU per delivery, and this process' (the reading and decoding the writer does before
//! PostgreSQL), so history's Redis share is measured apart from PostgreSQL's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use sluice::queue::{AttemptRecord, Queue, Settle, Store};

use super::load::median;
use super::search::store_events;
use super::{redis_stats, start_redis};

/// Claims in flight at once, and the claim size: the worker's default `queue.batch`.
const CLAIM: usize = 128;
/// Enqueues and settles in flight at once: about as many as the peak's producers and delivery
/// tasks keep going.
const CONCURRENCY: usize = 64;

/// Redis' CPU seconds since [`mark`], and what it ran.
async fn since(conn: &mut redis::aio::MultiplexedConnection, cpu: f64) -> anyhow::Result<(f64, redis_stats::Ran)> {
    Ok((redis_stats::cpu_seconds(conn).await? - cpu, redis_stats::ran(conn).await?))
}

/// Resets Redis' command statistics; returns its CPU seconds so far.
async fn mark(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(conn).await?;
    redis_stats::cpu_seconds(conn).await
}

/// Prints Redis' CPU per delivery for enqueue, claim and settle (and export, with `[history]`),
/// per round and as medians, without and with `[history]`.
pub async fn cost(events: usize, rounds: usize) -> anyhow::Result<()> {
    for history in [false, true] {
        steps(events, rounds, history).await?;
    }
    Ok(())
}

/// The rounds on a Redis of their own, with `[history]` or without.
async fn steps(events: usize, rounds: usize, history: bool) -> anyhow::Result<()> {
    let (_redis, url) = start_redis().await?;
    // PostgreSQL is never reached: the store only needs `keep_in_redis`.
    let history_toml = if history { "[history]\npostgres_url = \"postgres://127.0.0.1:9/unused\"\n" } else { "" };
    let config = sluice::config::from_toml(&format!("[redis]\nurl = \"{url}\"\n{history_toml}"))?;
    let keep = config.history.as_ref().map(|h| h.keep_in_redis);
    let store = Store::open(&config)?;
    let mut conn = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    let endpoint: Arc<str> = Arc::from("receiver");
    let names: &[&str] =
        if history { &["enqueue", "claim", "settle", "export"] } else { &["enqueue", "claim", "settle"] };
    println!(
        "Redis per delivery, by step ({events} events of one delivery each, {rounds} rounds{}):",
        if history { ", with [history]" } else { "" }
    );
    // Per step, per round: Redis' CPU and its time in scripts, µs per delivery.
    let mut figures: Vec<Vec<(f64, f64)>> = vec![Vec::new(); names.len()];
    // Per round, with `[history]`: this process' CPU per delivery exported.
    let mut decoding = Vec::new();
    for round in 1..=rounds {
        let mut spent = Vec::new();
        // Enqueue.
        let cpu = mark(&mut conn).await?;
        store_events(&store, 0..events, Duration::ZERO, CONCURRENCY, |_| endpoint.clone()).await.context("enqueue")?;
        spent.push(since(&mut conn, cpu).await?);

        // Claim, shard by shard, until every delivery is leased.
        let cpu = mark(&mut conn).await?;
        let mut claimed = Vec::with_capacity(events);
        let mut calls = 0;
        for shard in 0..store.shards() {
            loop {
                let batch = store.claim(shard, CLAIM, Duration::from_secs(60), &format!("steps{calls}")).await?;
                calls += 1;
                if batch.deliveries.is_empty() {
                    break;
                }
                claimed.extend(batch.deliveries);
            }
        }
        if claimed.len() != events {
            bail!("claimed {} deliveries of {events}", claimed.len());
        }
        spent.push(since(&mut conn, cpu).await?);

        // Settle: a first attempt's success each.
        let cpu = mark(&mut conn).await?;
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
        let settles = claimed.iter().map(|claimed| {
            let store = store.clone();
            async move {
                let record = AttemptRecord {
                    attempt: 1,
                    at,
                    outcome: "success".into(),
                    status: Some(200),
                    error: None,
                    latency_ms: 0.4,
                    response: Some("ok".into()),
                };
                store.settle(claimed, Some(&record), Settle::Ack).await
            }
        });
        let settled: Vec<_> = futures_util::stream::iter(settles).buffer_unordered(CONCURRENCY).collect().await;
        for result in settled {
            if !result.context("settle")? {
                bail!("a settle found its lease lost");
            }
        }
        spent.push(since(&mut conn, cpu).await?);

        if let Some(keep) = keep {
            // Export: what the history writer reads, in its batches, and drops once written.
            let cpu = mark(&mut conn).await?;
            let own = super::process::cpu_of("self");
            let mut rows = 0;
            for shard in 0..store.shards() {
                loop {
                    let batch = store.finished(shard, 500).await?;
                    if batch.is_empty() {
                        break;
                    }
                    rows += batch.len();
                    store.mark_exported(shard, &batch, keep).await?;
                }
            }
            decoding.push((super::process::cpu_of("self") - own) * 1e6 / events as f64);
            if rows != events {
                bail!("exported {rows} deliveries of {events}");
            }
            spent.push(since(&mut conn, cpu).await?);
        }

        let n = events as f64;
        let line: Vec<String> = names
            .iter()
            .zip(&spent)
            .map(|(name, (cpu_s, ran))| {
                let scripts = match ran.scripts {
                    0 => "no script".to_string(),
                    calls => format!("{:.1} in scripts, {calls} script calls", ran.script_us as f64 / n),
                };
                format!("{name} {:>5.1} µs ({scripts}; {:.2} commands)", cpu_s * 1e6 / n, ran.commands as f64 / n)
            })
            .collect();
        let steps: Vec<(f64, f64)> =
            spent.iter().map(|(cpu_s, ran)| (cpu_s * 1e6 / n, ran.script_us as f64 / n)).collect();
        println!(
            "  round {round}: {}; {:>5.1} µs per delivery in all",
            line.join(", "),
            steps.iter().map(|s| s.0).sum::<f64>()
        );
        for (figure, step) in figures.iter_mut().zip(steps) {
            figure.push(step);
        }
    }
    let medians: Vec<(f64, f64)> = figures
        .into_iter()
        .map(|step| {
            let (cpu, script): (Vec<f64>, Vec<f64>) = step.into_iter().unzip();
            (median(cpu), median(script))
        })
        .collect();
    let listed: Vec<String> = names
        .iter()
        .zip(&medians)
        .map(|(name, (cpu, script))| format!("{name} {cpu:.1} µs ({script:.1} in scripts)"))
        .collect();
    println!(
        "  medians: {}; {:.1} µs per delivery in all (Redis CPU, INFO cpu)",
        listed.join(", "),
        medians.iter().map(|m| m.0).sum::<f64>()
    );
    if !decoding.is_empty() {
        println!(
            "  export, this process (reading and decoding the entries, as the history writer does): {:.1} µs per delivery",
            median(decoding)
        );
    }
    Ok(())
}
