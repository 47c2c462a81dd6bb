//! Stage 4: delivery. Claimed deliveries are POSTed to their endpoints, signed, and settled by the
//! outcome.
//!
//! - [`worker`]: the claim → POST → settle loop (its endpoints and the attempt itself in submodules).
//! - [`client`]: the shared HTTP client and its destination guard.
//! - [`headers`]: which headers a plugin may put on a delivery.
//! - [`limits`]: per-endpoint concurrency cap and rate limit.
//! - [`retry`]: what to do after an attempt (decision) and when (schedule).
//! - [`sign`]: Standard Webhooks signatures.
//! - [`alert`]: dead-letter alerts to the admin.
//! - [`summary`]: each endpoint's deliveries summed up at INFO every `queue.log_summary_every`.

pub mod alert;
pub mod client;
pub mod headers;
pub mod limits;
pub mod retry;
pub mod summary;
pub mod worker;

pub use worker::Worker;

/// An error with its causes, `: `-separated (reqwest's own message alone says little).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
