//! End-to-end tests: real redis-server, real PostgreSQL (history), real receivers on loopback, real plugins built from source
//! in `plugins/`, real gateways (in-process, and the `sluice` binary itself).

mod auth;
mod bad_input;
mod bad_input_table;
mod binary;
mod browser;
mod chaos;
mod cluster;
mod console;
mod delivery;
mod embedded;
mod harness;
mod history;
mod hostile;
mod memory;
mod observability;
mod openapi;
mod plugin_host;
mod plugins;
mod postgres;
mod props;
mod protection;
mod queue_conformance;
mod reload;
mod scaffold;
mod scale;
mod shadow;
mod timing;
