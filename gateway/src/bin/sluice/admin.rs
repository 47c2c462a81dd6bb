//! `sluice admin …`: one subcommand per admin API call against a running gateway.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Show an event and its deliveries.
    Event {
        /// Event id (`evt_…`).
        id: String,
    },
    /// Show a delivery with every attempt.
    Delivery {
        /// Delivery id (`dlv_…`).
        id: String,
    },
    /// Search deliveries by endpoint, state and creation time, newest first (the store's, and with
    /// `[history]` PostgreSQL's).
    Deliveries {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only those in this state (`pending`, `paused`, `succeeded` or `dead`).
        #[arg(long)]
        state: Option<String>,
        /// Created at or after this time (ms since the epoch).
        #[arg(long)]
        since: Option<u64>,
        /// Created before this time (ms since the epoch).
        #[arg(long)]
        until: Option<u64>,
        /// The `next_before_id` of the previous page.
        #[arg(long)]
        before_id: Option<String>,
        /// Page size (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List dead letters, newest first.
    DeadLetters {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Page size (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only those dead-lettered before this time (ms since the epoch; `next_before` of a page).
        #[arg(long)]
        before: Option<u64>,
        /// With `--before`: the `next_before_id` of the previous page.
        #[arg(long, requires = "before")]
        before_id: Option<String>,
    },
    /// Put one dead letter back in the queue.
    Replay {
        /// Delivery id.
        id: String,
    },
    /// Put every dead letter of an endpoint back in the queue (spaced at `queue.replay_rate`).
    ReplayDead {
        /// Endpoint name.
        endpoint: String,
    },
    /// List endpoints with their state.
    Endpoints,
    /// Disable an endpoint: its deliveries are parked.
    Disable {
        /// Endpoint name.
        endpoint: String,
    },
    /// Enable an endpoint and put its parked deliveries back in the queue.
    Enable {
        /// Endpoint name.
        endpoint: String,
    },
    /// What the shadow runs of a plugin's candidate found: counts and the latest differences.
    Shadow {
        /// Plugin name.
        plugin: String,
    },
    /// Run a stored event again through today's routes and plugins, creating the deliveries the
    /// running config makes for it except to endpoints that already have it.
    Redrive {
        /// Event id (`evt_…`).
        id: String,
    },
    /// Discard the deliveries parked for an endpoint (removed from the config, or disabled): they
    /// become dead letters, replayable for `queue.dead_retention`.
    Discard {
        /// Endpoint name.
        endpoint: String,
    },
}

/// One GET of the admin API.
pub async fn admin_call(url: &url::Url, token: &str, path: &[&str]) -> anyhow::Result<serde_json::Value> {
    Ok(sluice::admin::client::call(url, token, reqwest::Method::GET, path, &[]).await?)
}

/// Runs one admin subcommand against the gateway at `url`.
pub async fn run(url: &url::Url, token: &str, command: AdminCommand) -> anyhow::Result<serde_json::Value> {
    use reqwest::Method;
    use sluice::admin::client::call;
    let answer = match &command {
        AdminCommand::Event { id } => call(url, token, Method::GET, &["v1", "events", id], &[]).await,
        AdminCommand::Delivery { id } => call(url, token, Method::GET, &["v1", "deliveries", id], &[]).await,
        AdminCommand::Deliveries { endpoint, state, since, until, before_id, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(endpoint.iter().map(|e| ("endpoint", e.clone())));
            query.extend(state.iter().map(|s| ("state", s.clone())));
            query.extend(since.iter().map(|t| ("since", t.to_string())));
            query.extend(until.iter().map(|t| ("until", t.to_string())));
            query.extend(before_id.iter().map(|b| ("before_id", b.clone())));
            call(url, token, Method::GET, &["v1", "deliveries"], &query).await
        }
        AdminCommand::DeadLetters { endpoint, limit, before, before_id } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(endpoint.iter().map(|e| ("endpoint", e.clone())));
            query.extend(before.iter().map(|b| ("before", b.to_string())));
            query.extend(before_id.iter().map(|b| ("before_id", b.clone())));
            call(url, token, Method::GET, &["v1", "dead-letters"], &query).await
        }
        AdminCommand::Replay { id } => call(url, token, Method::POST, &["v1", "deliveries", id, "replay"], &[]).await,
        AdminCommand::ReplayDead { endpoint } => {
            call(url, token, Method::POST, &["v1", "endpoints", endpoint, "replay-dead"], &[]).await
        }
        AdminCommand::Endpoints => call(url, token, Method::GET, &["v1", "endpoints"], &[]).await,
        AdminCommand::Disable { endpoint } => {
            call(url, token, Method::POST, &["v1", "endpoints", endpoint, "disable"], &[]).await
        }
        AdminCommand::Enable { endpoint } => {
            call(url, token, Method::POST, &["v1", "endpoints", endpoint, "enable"], &[]).await
        }
        AdminCommand::Shadow { plugin } => {
            call(url, token, Method::GET, &["v1", "plugins", plugin, "shadow"], &[]).await
        }
        AdminCommand::Redrive { id } => call(url, token, Method::POST, &["v1", "events", id, "redrive"], &[]).await,
        AdminCommand::Discard { endpoint } => {
            call(url, token, Method::POST, &["v1", "endpoints", endpoint, "discard"], &[]).await
        }
    };
    Ok(answer?)
}
