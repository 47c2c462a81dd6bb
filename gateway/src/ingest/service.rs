//! The ingest step as a value: given a source, headers and a body, accept the event (stored in the
//! queue) or say why not. The HTTP layer only reads the request and maps the result to a response.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::HeaderMap;
use tokio::sync::Notify;

use super::auth::SourceAuth;
use super::plan::{Plan, Routing};
use super::rate::SourceRates;
use super::{parse, Accepted, AcceptedDelivery, Answer, IngestError};
use crate::config::Config;
use crate::id;
use crate::plugin::{PluginEvent, PluginSet};
use crate::queue::{EventView, IdempotencyCommit, NewDelivery, NewEvent, Queue, Store};
use crate::route::RouteTable;

/// Everything ingest needs, shared by all connections.
pub struct Ingest {
    routing: Arc<Routing>,
    auth: SourceAuth,
    rates: SourceRates,
    queue: Store,
    max_body_bytes: usize,
    idempotency_window: Duration,
    wake_worker: Arc<Notify>,
}

/// The header that makes an ingest request idempotent.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

impl Ingest {
    /// Builds the ingest step from a validated config. `previous` is the step a config reload
    /// replaces: sources whose rate limit is unchanged keep their limiter.
    pub fn new(
        config: &Config,
        plugins: Arc<PluginSet>,
        queue: Store,
        wake_worker: Arc<Notify>,
        previous: Option<&Ingest>,
    ) -> Self {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                let schedule = e.retry_schedule.as_ref().unwrap_or(&config.retry.schedule);
                (Arc::from(e.name.as_str()), schedule.first().copied().unwrap_or_default())
            })
            .collect();
        Self {
            routing: Arc::new(Routing { routes: RouteTable::new(config), plugins, endpoints }),
            auth: SourceAuth::new(config),
            rates: SourceRates::new(config, previous.map(|p| &p.rates)),
            queue,
            max_body_bytes: config.server.max_body_bytes,
            idempotency_window: config.server.idempotency_window,
            wake_worker,
        }
    }

    /// Largest accepted body.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Checks the parts of a request that need no body, so a bad request is refused before it is
    /// read; a source authenticated by its headers alone is also held to its rate limit here (once
    /// per request: [`Self::answer`] does not count it again).
    pub fn precheck(&self, source: &str, headers: &HeaderMap) -> Result<(), IngestError> {
        self.check_headers(source, headers)?;
        if !self.auth.verifies_body(source) {
            self.check_rate(source)?;
        }
        Ok(())
    }

    /// Counts one request of `source` against its rate limit.
    fn check_rate(&self, source: &str) -> Result<(), IngestError> {
        self.rates
            .check(source)
            .map_err(|retry_after| IngestError::RateLimited { name: source.to_string(), retry_after })
    }

    /// Source, header credential, content type and declared length.
    fn check_headers(&self, source: &str, headers: &HeaderMap) -> Result<(), IngestError> {
        if !self.routing.routes.knows_source(source) {
            return Err(IngestError::UnknownSource(source.chars().take(100).collect()));
        }
        self.auth.check_headers(source, headers)?;
        parse::check_content_type(headers)?;
        parse::check_kept_headers(headers)?;
        let declared = headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Err(IngestError::TooLarge { limit: self.max_body_bytes });
        }
        Ok(())
    }

    /// Accepts one event and answers with the JSON for the producer. With an `idempotency-key`
    /// header, a repeat of a key within the window gets the first answer and stores nothing. The
    /// request must have passed [`Self::precheck`] (which also counts it against its rate limit).
    ///
    /// The key is claimed for the event id this request will store, and the event is stored only
    /// while the key still says so, with the answer recorded in the same step. When the store's
    /// reply is lost (the outcome is unknown), the key is kept until the outcome is known: a retry
    /// meanwhile gets 409, then the original answer if the event was stored, or a fresh run if not.
    pub async fn answer(&self, source: &str, headers: &HeaderMap, body: Bytes) -> Result<Answer, IngestError> {
        self.check(source, headers, &body)?;
        let Some(key) = headers.get(IDEMPOTENCY_HEADER) else {
            let (accepted, _) = self.accept_checked(source, headers, body, id::new_event(), None).await?;
            return Ok(Answer { body: encode(&accepted), replayed: false });
        };
        let key = key.to_str().ok().filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
        let key = key.ok_or(IngestError::IdempotencyKey)?;
        let event_id = id::new_event_in(self.queue.idempotency_shard(source, key), self.queue.shards());
        let claimed = match self.queue.claim_idempotency(source, key, event_id).await {
            Ok(claimed) => claimed,
            Err(e) => {
                if e.is_unavailable() {
                    // The claim may have been applied with its reply lost: free the key if so.
                    self.settle_unknown(source, key, event_id);
                }
                return Err(e.into());
            }
        };
        match claimed {
            None => {}
            Some(pending) if pending.starts_with(crate::queue::IDEMPOTENCY_PENDING) => {
                return Err(IngestError::IdempotencyInProgress)
            }
            Some(earlier) => return Ok(Answer { body: earlier, replayed: true }),
        }
        match self.accept_checked(source, headers, body, event_id, Some(key)).await {
            // The answer recorded with the key, encoded once.
            Ok((accepted, answer)) => Ok(Answer { body: answer.unwrap_or_else(|| encode(&accepted)), replayed: false }),
            // The key expired (or was released) before the event was stored: nothing was stored.
            Err(IngestError::Queue(e)) if e.is_idempotency_lost() => Err(IngestError::IdempotencyInProgress),
            Err(IngestError::Queue(e)) if e.is_unavailable() => {
                // The event may have been stored and its answer recorded: keep the key until that
                // is known, and release it then only if it was not.
                self.settle_unknown(source, key, event_id);
                Err(IngestError::Queue(e))
            }
            Err(e) => {
                if let Err(release) = self.queue.release_idempotency(source, key, event_id).await {
                    tracing::warn!(source, error = %release, "Could not release an idempotency key after a refused event; a repeat gets 409 for a minute.");
                }
                Err(e)
            }
        }
    }

    /// Finds out, once the store answers again, whether an enqueue whose reply was lost stored its
    /// event, releasing the key when it did not; gives up when the key's pending mark expires by
    /// itself (after which the enqueue, should it still arrive, stores nothing).
    fn settle_unknown(&self, source: &str, key: &str, event: ulid::Ulid) {
        let (queue, source, key) = (self.queue.clone(), source.to_string(), key.to_string());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + crate::queue::IDEMPOTENCY_PENDING_TTL;
            let mut wait = Duration::from_millis(100);
            loop {
                match queue.release_idempotency(&source, &key, event).await {
                    Ok(Some(_)) => {
                        tracing::info!(%source, event_id = %id::format_event(event),
                            "An event whose store reply was lost had been stored; a retry gets its answer.");
                        return;
                    }
                    Ok(None) => {
                        tracing::info!(%source, event_id = %id::format_event(event),
                            "An event whose store reply was lost had not been stored; its idempotency key is free again.");
                        return;
                    }
                    Err(_) if tokio::time::Instant::now() + wait < deadline => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        tracing::warn!(%source, error = %e,
                            "Could not learn whether an event was stored; its idempotency key frees itself when its pending mark expires.");
                        return;
                    }
                }
            }
        });
    }

    /// Accepts one event: check, parse, route, run plugins, store. Returns once the queue holds
    /// every delivery.
    pub async fn accept(&self, source: &str, headers: &HeaderMap, body: Bytes) -> Result<Accepted, IngestError> {
        self.precheck(source, headers)?;
        self.check(source, headers, &body)?;
        Ok(self.accept_checked(source, headers, body, id::new_event(), None).await?.0)
    }

    /// Everything checked before an event is looked at: source, credential, size, signature; a
    /// source that signs its bodies is held to its rate limit once its signature checked out.
    fn check(&self, source: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), IngestError> {
        self.check_headers(source, headers)?;
        if body.len() > self.max_body_bytes {
            return Err(IngestError::TooLarge { limit: self.max_body_bytes });
        }
        if self.auth.verifies_body(source) {
            self.auth.check_body(source, headers, body, crate::clock::unix_seconds())?;
            self.check_rate(source)?;
        }
        Ok(())
    }

    /// [`Self::accept`] for a request that passed [`Self::check`], storing event `event_id`; with
    /// an idempotency `key` (claimed for that id), its answer is recorded with the event and
    /// returned encoded beside it.
    async fn accept_checked(
        &self,
        source: &str,
        headers: &HeaderMap,
        body: Bytes,
        event_id: ulid::Ulid,
        key: Option<&str>,
    ) -> Result<(Accepted, Option<String>), IngestError> {
        let event_type = parse::event_type(headers, &body)?;
        let kept = parse::kept_headers(headers);
        let event = PluginEvent {
            id: id::format_event(event_id),
            source: source.to_string(),
            event_type,
            headers: kept,
            payload: body.to_vec(),
        };
        self.plan_and_store(event_id, event, body, key, &|_| true).await
    }

    /// Runs a stored event (`view`) through today's routes and plugins again, as a new event with
    /// the stored one's source, type, kept headers and body, and stores the deliveries to the
    /// endpoints `wanted` accepts (nothing when none is left). Source credentials and rate limits
    /// are not checked: the caller is the admin.
    pub async fn redrive(
        &self,
        view: &EventView,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Accepted, IngestError> {
        let event_id = id::new_event();
        let event = PluginEvent {
            id: id::format_event(event_id),
            source: view.source.clone(),
            event_type: view.event_type.clone(),
            headers: view.headers.clone(),
            payload: view.payload.to_vec(),
        };
        Ok(self.plan_and_store(event_id, event, view.payload.clone(), None, wanted).await?.0)
    }

    /// Plans `event` (routes, plugins) and stores it with its deliveries to the endpoints `wanted`
    /// accepts, as event `event_id`; with an idempotency `key`, records the answer with it.
    async fn plan_and_store(
        &self,
        event_id: ulid::Ulid,
        event: PluginEvent,
        body: Bytes,
        key: Option<&str>,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Accepted, Option<String>), IngestError> {
        let source = event.source.clone();
        let source = source.as_str();
        let (event, mut plan) = self.plan(event).await?;
        plan.deliveries.retain(|planned| wanted(&planned.endpoint));
        if plan.deliveries.len() > id::MAX_DELIVERIES_PER_EVENT {
            return Err(IngestError::TooManyDeliveries(plan.deliveries.len()));
        }
        let deliveries: Vec<NewDelivery> = plan
            .deliveries
            .into_iter()
            .enumerate()
            .map(|(i, planned)| NewDelivery {
                id: id::delivery_of(event_id, i + 1),
                delay: self.routing.endpoints.get(&planned.endpoint).copied().unwrap_or_default(),
                endpoint: planned.endpoint,
                payload: planned.payload,
                headers: planned.headers,
            })
            .collect();
        let accepted = Accepted {
            id: event.id.clone(),
            deliveries: deliveries
                .iter()
                .map(|d| AcceptedDelivery { id: id::format_delivery(d.id), endpoint: d.endpoint.to_string() })
                .collect(),
            dropped: plan.dropped,
        };
        let answer = key.map(|_| encode(&accepted));
        let idempotency = key.zip(answer.as_deref()).map(|(key, answer)| IdempotencyCommit {
            key,
            answer,
            window: self.idempotency_window,
        });
        if !deliveries.is_empty() {
            let stored = NewEvent {
                id: event_id,
                source,
                event_type: &event.event_type,
                headers: &event.headers,
                payload: &body,
                idempotency,
            };
            self.queue.enqueue(&stored, &deliveries).await?;
            if deliveries.iter().any(|d| d.delay.is_zero()) {
                self.wake_worker.notify_one();
            }
        } else if let Some(commit) = idempotency {
            // Nothing to store: the answer is recorded on its own.
            if let Err(e) = self.queue.complete_idempotency(source, commit.key, commit.answer, commit.window).await {
                tracing::warn!(source, error = %e, "Could not record an idempotency key's answer; a repeat may get 409 for a minute.");
            }
        }
        Ok((accepted, answer))
    }
}

impl Ingest {
    /// Runs the event's routes. Plugin work goes to a plugin thread (never this async thread);
    /// routes without plugins are planned right here.
    async fn plan(&self, event: PluginEvent) -> Result<(PluginEvent, Plan), IngestError> {
        if !self.routing.runs_plugins(&event.source, &event.event_type) {
            let plan = self.routing.plan(&event).map_err(|e| IngestError::plugin(&event, e))?;
            return Ok((event, plan));
        }
        let routing = self.routing.clone();
        let (event, plan) = self
            .routing
            .plugins
            .pool()
            .run(move || {
                let plan = routing.plan(&event);
                (event, plan)
            })
            .await?;
        let plan = plan.map_err(|e| IngestError::plugin(&event, e))?;
        Ok((event, plan))
    }
}

/// JSON of an answer (serialising these plain types cannot fail).
fn encode(accepted: &Accepted) -> String {
    serde_json::to_string(accepted).unwrap_or_default()
}
