//! The accept loop. Each connection is served by hyper with a header-read timeout (which also
//! bounds how long an idle keep-alive connection waits for its next request), and at most
//! [`ConnectionLimits::max_connections`] are open at once: past the cap, the loop stops accepting
//! and new connections wait in the kernel's listen backlog, so ingest never runs the process out of
//! file descriptors and deliveries, the store and Redis keep theirs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::{handle, AppState};
use crate::config::Config;

/// How long open connections get to finish their requests once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// The limits on inbound connections, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a client has to send a request's headers (and, on a keep-alive connection, to start
    /// its next request).
    pub header_read_timeout: Duration,
    /// How long a client has to send a request's body once its headers are in.
    pub body_read_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits `config` asks for; the connection cap defaults to what the process's file limit
    /// leaves after the descriptors deliveries, the store and Redis need.
    pub fn from_config(config: &Config) -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Self {
            max_connections: config.server.connection_cap(limit, config.queue.concurrency),
            header_read_timeout: config.server.header_read_timeout,
            body_read_timeout: config.server.body_read_timeout,
        }
    }
}

/// Accepts connections until `shutdown` turns true, then lets open connections finish the request
/// they are serving (up to [`DRAIN`]) and closes them.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = state.limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                state.metrics.connection_cap_reached();
                static FULL: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
                if let Some(held_back) = FULL.allow() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        similar_since_last = held_back,
                        "Inbound connection cap reached; new connections wait in the listen backlog."
                    );
                }
                // Why wait here rather than accept and close: a waiting client is served as soon as
                // a slot frees (slow clients lose theirs after header_read_timeout).
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    _ = shutdown.changed() => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors despite the cap (another part of the process used
                    // them): pause briefly instead of spinning.
                    static FAILED: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
                    if let Some(held_back) = FAILED.allow() {
                        tracing::warn!(error = %e, similar_since_last = held_back, "Accept failed.");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let service_state = state.clone();
        let service = hyper::service::service_fn(move |request| {
            let state = service_state.clone();
            async move { Ok::<_, Infallible>(handle(&state, request, peer).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let metrics = state.metrics.clone();
        metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "Connection ended with an error.");
            }
            metrics.connection_closed();
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("Some connections were still busy after {DRAIN:?}; closing them.");
    }
}
