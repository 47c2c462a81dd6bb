//! The Redis queue: one sorted set of deliveries per shard, scored by next-attempt time (or lease
//! expiry) in ms, with Lua scripts for enqueue, claim and settle so each step is atomic (the common
//! enqueue is a `MULTI` transaction instead: see [`enqueue`]). Enqueues and settlements submitted
//! concurrently are grouped (see [`super::batcher`]) into one call per shard, so Redis sees one
//! round trip per batch.
//!
//! # Keys
//! Every key of a shard carries the shard's hash tag, so one script touches one Cluster slot:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `<prefix>:{s<n>}:queue` | ZSET | delivery id → next attempt (or lease expiry), ms; a fraction marks a delivery no hash describes yet: `.5` queued (half a ms early), `.25` leased |
//! | `<prefix>:{s<n>}:dead` | ZSET | dead-lettered delivery id → time buried, ms |
//! | `<prefix>:{s<n>}:history:v2` | STREAM | with `[history]`: one entry per settle call that finished deliveries (`n`: how many; `v2`: each one's state, attempts, attempt log, own headers and body and its event's record, packed), appended by that call and deleted once PostgreSQL committed them ([`export`]) |
//! | `<prefix>:{s<n>}:history:v2:n` | STRING | how many deliveries the entries of `history:v2` hold (the history backlog) |
//! | `<prefix>:{s<n>}:history` | STREAM | the previous version's: one entry per finished delivery; drained by this one's writer |
//! | `<prefix>:{s<n>}:done` | ZSET | the previous version's index of finished deliveries not yet in history (id → time finished); drained by this one's writer |
//! | `<prefix>:{s<n>}:done:writer` | STRING | with `[history]`: the gateway whose history writer holds the shard, with a TTL |
//! | `<prefix>:{s<n>}:e:<event ulid>` | STRING | the event record (its id without `evt_`: the key then fits a smaller allocation) ([`record`]): open and dead delivery counts, source, type, each delivery's endpoint, kept headers, body |
//! | `<prefix>:{s<n>}:d:<delivery id>` | HASH | made by the delivery's first settle unless its first attempt succeeded (at enqueue when a plugin gave it its own headers or payload; by a claim after its first lease ran out): endpoint, lease, attempts (recorded), lapsed (leases that ran out unsettled), status (none: pending), updated, last_error, closed (buried), headers, payload |
//! | `<prefix>:{s<n>}:d:<delivery id>:log` | STRING | the attempt log, one JSON record per line, appended to; expires with its delivery |
//! | `<prefix>:{s<n>}:off` | HASH | disabled endpoint name → reason (checked atomically when parking a delivery) |
//! | `<prefix>:{s<n>}:paused:<endpoint>` | ZSET | deliveries parked while their endpoint is disabled, or while no gateway's config has it → time parked, ms ([`parked`]) |
//! | `<prefix>:{s<n>}:gone` | HASH | endpoint name → when its deliveries were first parked for want of it in config, ms |
//! | `<prefix>:endpoint:<name>` | HASH | disabled (reason), disabled_at, failing_since (ms): the endpoint's shared state |
//! | `<prefix>:meta` | HASH | `shards`: the shard count the data was written with |
//! | `<prefix>:{s<n>}:idem:<source>:<key>` | STRING | the answer given to an `idempotency-key` (`pending:<event id>` while in progress), with a TTL; in the key's shard ([`crate::id::shard_of_key`]), where its event is stored too |
//!
//! Creation times are not stored: ids are ULIDs and carry them, and a delivery id names its event
//! ([`crate::id`]). The scripts build per-delivery key names from the shard prefix; they stay within
//! the shard's hash tag, hence within one Cluster slot. A pending delivery that was never settled
//! costs its share of the event record and a queue entry: about 290 bytes beyond the event's
//! headers and body (measured by `tests/e2e/memory.rs`).
//!
//! Its first claim writes no hash either ([`claim`]): until a settle makes one, the delivery's
//! score is its lease (the lease expiry plus a quarter of a millisecond), the claim hands its event
//! record out whole, and the gateway makes the lease token from the expiry and the endpoint, so the
//! settle checks the lease against the score (one `ZMSCORE` per batch). A failed first attempt
//! makes the hash whole; a successful one leaves only the attempt log, and a delivery neither hashed
//! nor queued but logged with a success is read as succeeded ([`view::Logged`]). On the happy path a
//! delivery costs five commands inside the scripts instead of ten, and Redis about 30 µs of CPU per
//! event instead of 42 in the benchmark. Every other writer of the queue writes whole milliseconds,
//! so a delivery that has, or may have, a hash is claimed the general way.
//!
//! Older versions kept each event in a hash (`ev:<event id>`, with its headers and body in an
//! `ev:<event id>:b` string), gave every delivery a hash from the start (naming its `event`) and
//! queued deliveries in a `due` ZSET. Those records are still claimed, settled, replayed and shown;
//! their deliveries move to the `queue` ZSET when first claimed, so gateways of an older version
//! running beside this one during an upgrade never meet a record they cannot read.
//!
//! # Files
//! This module opens the queue and runs endpoint state; [`claim`] leases due deliveries; [`checks`] runs the start-up
//! checks of the data's layout and the server's settings; [`record`] writes and reads the
//! event record; [`batch`] groups enqueues and settlements into calls per shard; [`enqueue`] stores
//! a batch of events (a transaction, or the script when it needs one); [`clock`] estimates Redis'
//! clock for the transaction's scores; [`dead`] lists and
//! replays dead letters; [`parked`] resumes, counts and discards parked deliveries; [`export`] hands finished deliveries to history; [`restore`] brings dead
//! letters back from it; [`search`] finds deliveries by endpoint, state and time; [`view`] reads deliveries and events for the admin API; [`idempotency`]
//! keeps idempotency keys.

mod batch;
mod checks;
mod claim;
mod clock;
mod conn;
mod dead;
mod done;
mod enqueue;
mod export;
mod idempotency;
mod packed;
mod parked;
mod record;
mod restore;
mod search;
mod view;

use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, Script};
use ulid::Ulid;

use self::batch::{PendingEvent, Settlement};
use self::conn::Conn;
use super::batcher::Batcher;
use super::{
    AttemptRecord, ClaimBatch, Claimed, DeadCursor, DeadLetter, DeliveryView, EndpointState, EventView, NewDelivery,
    NewEvent, Queue, QueueError, Settle,
};
use crate::config::{QueueConfig, RedisConfig};

/// A script with the shared prelude (the clock and the event record's layout) before it.
macro_rules! script {
    ($name:literal) => {
        concat!(include_str!("../scripts/record.lua"), include_str!(concat!("../scripts/", $name)))
    };
}

const ENQUEUE: &str = script!("enqueue.lua");
const CLAIM: &str = script!("claim.lua");
const SETTLE: &str = script!("settle.lua");
const REPLAY: &str = script!("replay.lua");
const RESUME: &str = script!("resume.lua");
const DISABLE: &str = include_str!("../scripts/disable.lua");
const RELEASE: &str = include_str!("../scripts/release.lua");
const EXPORTED: &str = script!("exported.lua");
const WRITER: &str = include_str!("../scripts/writer.lua");
const HISTORY_DONE: &str = include_str!("../scripts/history_done.lua");
const FINISHED: &str = script!("finished.lua");
const RESTORE: &str = script!("restore.lua");
/// The shard's ZSET of deliveries by next attempt (or lease expiry).
const QUEUE: &str = "queue";
/// The ZSET older versions queued deliveries in; drained by the claims of this one.
const OLDER_QUEUE: &str = "due";
/// The shard's STREAM of finished deliveries on their way to history (`[history]` only): one entry
/// per settle call that finished any.
const HISTORY_V2: &str = "history:v2";
/// How many deliveries the entries of [`HISTORY_V2`] hold.
const HISTORY_V2_COUNT: &str = "history:v2:n";
/// The STREAM the previous version appended finished deliveries to, one entry each; drained by the
/// writer of this one.
const HISTORY: &str = "history";
/// The ZSET of finished delivery ids the previous version indexed for history; drained by the
/// writer of this one.
const DONE: &str = "done";

/// Most paused deliveries one resume call moves (the script runs until none is left).
const RESUME_CHUNK: usize = 1000;

/// Most events (or settlements) in one script call.
const BATCH: usize = 64;
/// Most deliveries one claim may return.
const MAX_CLAIM: usize = 1000;

type Shared<T> = Result<T, Arc<QueueError>>;

/// The Redis-backed delivery queue. Cheap to clone: clones share one multiplexed connection and the
/// batching tasks. Must be opened inside a Tokio runtime.
#[derive(Clone)]
pub struct RedisQueue {
    core: Arc<Core>,
    enqueues: Batcher<PendingEvent, Shared<()>>,
    settlements: Batcher<Settlement, Shared<bool>>,
}

struct Core {
    conn: Conn,
    /// Replicas each enqueue and settlement waits for (`redis.replicas_ack`), and how long.
    replicas: Option<(u32, Duration)>,
    /// With `[history]`: `keep_in_redis` in seconds. Settlements then append finished deliveries
    /// to the shard's history stream, and a succeeded delivery's keys expire after this.
    history_keep_secs: Option<u64>,
    /// This queue's id as a history writer (see [`export`]).
    writer_id: String,
    prefix: String,
    shards: u32,
    retention_secs: u64,
    dead_retention_secs: u64,
    enqueue: Script,
    claim: Script,
    settle: Script,
    replay: Script,
    resume: Script,
    disable: Script,
    release: Script,
    exported: Script,
    writer: Script,
    history_done: Script,
    finished: Script,
    restore: Script,
    /// Redis' clock as last seen, per shard (see [`clock`]).
    clocks: Vec<clock::RedisClock>,
}

impl RedisQueue {
    /// Opens the queue. The connection is made lazily and re-made after failures, so a gateway can
    /// start (and answer 503) while Redis is away. With `history` (`history.keep_in_redis`),
    /// settlements hand finished deliveries to the history writer, and succeeded ones expire from
    /// Redis after that long.
    pub fn open(redis: &RedisConfig, queue: &QueueConfig, history: Option<Duration>) -> Result<Self, QueueError> {
        let conn = Conn::open(redis)?;
        let core = Arc::new(Core {
            conn,
            replicas: (redis.replicas_ack > 0).then_some((redis.replicas_ack, redis.replicas_timeout)),
            history_keep_secs: history.map(|keep| keep.as_secs().max(1)),
            writer_id: Ulid::new().to_string(),
            prefix: redis.prefix.clone(),
            shards: queue.shards,
            retention_secs: queue.retention.as_secs().max(1),
            dead_retention_secs: queue.dead_retention.as_secs().max(1),
            enqueue: Script::new(ENQUEUE),
            claim: Script::new(CLAIM),
            settle: Script::new(SETTLE),
            replay: Script::new(REPLAY),
            resume: Script::new(RESUME),
            disable: Script::new(DISABLE),
            release: Script::new(RELEASE),
            exported: Script::new(EXPORTED),
            writer: Script::new(WRITER),
            history_done: Script::new(HISTORY_DONE),
            finished: Script::new(FINISHED),
            restore: Script::new(RESTORE),
            clocks: (0..queue.shards.max(1)).map(|_| clock::RedisClock::new()).collect(),
        });
        let for_enqueue = core.clone();
        let enqueues = Batcher::spawn(BATCH, move |batch| {
            let core = for_enqueue.clone();
            async move { core.flush_enqueues(batch).await }
        });
        let for_settle = core.clone();
        let settlements = Batcher::spawn(BATCH, move |batch| {
            let core = for_settle.clone();
            async move { core.flush_settlements(batch).await }
        });
        Ok(Self { core, enqueues, settlements })
    }

    fn endpoint_key(&self, name: &str) -> String {
        format!("{}:endpoint:{name}", self.core.prefix)
    }
}

impl Queue for RedisQueue {
    fn shards(&self) -> u32 {
        self.core.shards
    }

    async fn claim_idempotency(&self, source: &str, key: &str, event: Ulid) -> Result<Option<String>, QueueError> {
        self.claim_key(source, key, event).await
    }

    async fn complete_idempotency(
        &self,
        source: &str,
        key: &str,
        answer: &str,
        window: Duration,
    ) -> Result<(), QueueError> {
        self.complete_key(source, key, answer, window).await
    }

    async fn release_idempotency(&self, source: &str, key: &str, event: Ulid) -> Result<Option<String>, QueueError> {
        self.release_key(source, key, event).await
    }

    async fn dead_letters(
        &self,
        endpoint: Option<&str>,
        before: Option<DeadCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.list_dead(endpoint, before, limit).await
    }

    async fn replay(&self, deliveries: &[Ulid], spacing: Duration) -> Result<Vec<String>, QueueError> {
        self.replay_ids(deliveries, spacing).await
    }

    async fn replay_endpoint(&self, endpoint: &str, spacing: Duration) -> Result<u64, QueueError> {
        self.replay_all_of(endpoint, spacing).await
    }

    async fn endpoint_states(&self, names: &[&str]) -> Result<Vec<EndpointState>, QueueError> {
        // One command per endpoint (each key is its own slot on a cluster), sent concurrently: the
        // multiplexed connection pipelines them anyway.
        let reads = names.iter().map(|name| {
            let mut conn = self.core.conn.clone();
            let key = self.endpoint_key(name);
            async move {
                let row: (Option<String>, Option<u64>, Option<u64>) = redis::cmd("HMGET")
                    .arg(key)
                    .arg(&["disabled", "disabled_at", "failing_since"])
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, QueueError>(row)
            }
        });
        let rows = futures_util::future::try_join_all(reads).await?;
        Ok(rows
            .into_iter()
            .map(|(disabled, disabled_at, failing_since)| EndpointState { disabled, disabled_at, failing_since })
            .collect())
    }

    async fn mark_failing(&self, name: &str, at: u64) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: bool = conn.hset_nx(self.endpoint_key(name), "failing_since", at).await?;
        Ok(())
    }

    async fn clear_failing(&self, name: &str) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: () = conn.hdel(self.endpoint_key(name), "failing_since").await?;
        Ok(())
    }

    async fn disable(&self, name: &str, reason: &str, at: u64) -> Result<bool, QueueError> {
        let mut conn = self.core.conn.clone();
        if !self.core.conn.is_cluster() {
            // One script: the endpoint's state and every shard's `off` entry change together.
            let mut call = self.core.disable.key(self.endpoint_key(name));
            for shard in 0..self.core.shards {
                call.key(format!("{}off", self.core.shard_prefix(shard)));
            }
            let first: i64 = call.arg(name).arg(reason).arg(at).invoke_async(&mut conn).await?;
            return Ok(first == 1);
        }
        // On a cluster the shards are other slots (other primaries): no one script reaches them
        // all. Each shard's `off` mark first, then the endpoint's state: until the state says
        // disabled no worker asks to park, so marks alone change nothing, and a call that fails
        // half-way is completed by the next disable (or undone by an enable).
        let marks = (0..self.core.shards).map(|shard| {
            let mut conn = self.core.conn.clone();
            let key = format!("{}off", self.core.shard_prefix(shard));
            async move { conn.hset::<_, _, _, ()>(key, name, reason).await }
        });
        futures_util::future::try_join_all(marks).await?;
        let first: bool = conn.hset_nx(self.endpoint_key(name), "disabled", reason).await?;
        if first {
            let _: () = conn.hset(self.endpoint_key(name), "disabled_at", at).await?;
        }
        Ok(first)
    }

    async fn enable(&self, name: &str) -> Result<u64, QueueError> {
        self.resume_parked(name, true).await
    }

    async fn paused_count(&self, name: &str) -> Result<u64, QueueError> {
        self.count_parked(name).await
    }

    async fn gone_endpoints(&self) -> Result<Vec<(String, u64)>, QueueError> {
        RedisQueue::gone_endpoints(self).await
    }

    async fn resume_returned(&self, name: &str) -> Result<u64, QueueError> {
        self.resume_parked(name, false).await
    }

    async fn discard_parked(&self, name: &str, reason: &str) -> Result<u64, QueueError> {
        RedisQueue::discard_parked(self, name, reason).await
    }

    async fn depth(&self, endpoints: &[String]) -> Result<super::QueueDepth, QueueError> {
        let now = crate::clock::unix_millis();
        // One pipeline per shard (one slot each on a cluster), the shards concurrently.
        let shards = (0..self.core.shards).map(|shard| {
            let prefix = self.core.shard_prefix(shard);
            let mut pipe = redis::pipe();
            for queue in [QUEUE, OLDER_QUEUE] {
                pipe.zcount(format!("{prefix}{queue}"), "-inf", now).zcount(
                    format!("{prefix}{queue}"),
                    format!("({now}"),
                    "+inf",
                );
            }
            pipe.zcard(format!("{prefix}dead"));
            for endpoint in endpoints {
                pipe.zcard(format!("{prefix}paused:{endpoint}"));
            }
            let mut conn = self.core.conn.clone();
            async move { pipe.query_async::<Vec<u64>>(&mut conn).await }
        });
        let counts = futures_util::future::try_join_all(shards).await?;
        let mut conn = self.core.conn.clone();
        let mut depth = super::QueueDepth {
            paused: endpoints.iter().map(|e| (e.clone(), 0)).collect(),
            store_bytes: conn.used_memory().await.ok(),
            history_backlog: if self.core.history_keep_secs.is_some() {
                self.history_backlog().await.ok()
            } else {
                None
            },
            ..Default::default()
        };
        for shard in counts {
            depth.due += shard[0] + shard[2];
            depth.scheduled += shard[1] + shard[3];
            depth.dead += shard[4];
            for (slot, n) in depth.paused.iter_mut().zip(&shard[5..]) {
                slot.1 += n;
            }
        }
        Ok(depth)
    }

    async fn finished(&self, shard: u32, limit: usize) -> Result<Vec<super::Finished>, QueueError> {
        self.finished_in(shard, limit).await
    }

    async fn mark_exported(&self, shard: u32, done: &[super::Finished], keep: Duration) -> Result<u64, QueueError> {
        self.exported_in(shard, done, keep).await
    }

    async fn holds(&self, deliveries: &[Ulid]) -> Result<Vec<bool>, QueueError> {
        self.holds_in(deliveries).await
    }

    async fn restore(&self, restore: &super::Restore, delay: Duration) -> Result<bool, QueueError> {
        self.restore_one(restore, delay).await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn enqueue(&self, event: &NewEvent<'_>, deliveries: &[NewDelivery]) -> Result<(), QueueError> {
        self.submit_event(event, deliveries).await
    }

    async fn claim(&self, shard: u32, limit: usize, lease: Duration, token: &str) -> Result<ClaimBatch, QueueError> {
        self.claim_batch(shard, limit, lease, token).await
    }

    async fn settle(
        &self,
        claimed: &Claimed,
        record: Option<&AttemptRecord>,
        action: Settle,
    ) -> Result<bool, QueueError> {
        self.submit_settlement(claimed, record, action).await
    }

    async fn delivery(&self, delivery: Ulid) -> Result<Option<DeliveryView>, QueueError> {
        self.view_delivery(delivery).await
    }

    async fn event(&self, event: Ulid) -> Result<Option<EventView>, QueueError> {
        self.view_event(event).await
    }

    async fn search(&self, search: &super::search::Search) -> Result<super::search::Scanned, QueueError> {
        self.search_deliveries(search).await
    }

    async fn states_of(&self, deliveries: &[Ulid]) -> Result<Vec<Option<String>>, QueueError> {
        self.states_in(deliveries).await
    }
}

impl Core {
    /// The prefix of every key of `shard` (its hash tag included).
    fn shard_prefix(&self, shard: u32) -> String {
        format!("{}:{{s{shard}}}:", self.prefix)
    }

    /// Redis' clock as `shard`'s node last showed it.
    fn clock(&self, shard: u32) -> &clock::RedisClock {
        &self.clocks[shard as usize % self.clocks.len()]
    }
}
