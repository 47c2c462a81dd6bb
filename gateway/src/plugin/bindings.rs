//! The one place that runs `bindgen!` over `wit/`. Generated types stay in here and in
//! `convert.rs`; the rest of the gateway sees the domain types of `plugin::mod`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
});
