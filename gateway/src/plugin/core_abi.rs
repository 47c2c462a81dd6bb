//! The core-module ABI: plugins from languages without the component model (AssemblyScript, Zig,
//! TinyGo, WAT, …) are plain core modules that exchange JSON with the host through linear memory.
//! The contract is documented in `wit/core-abi.md`; in short:
//!
//! - exports `memory`, `sluice_alloc(len: i32) -> i32` and `sluice_handle(ptr: i32, len: i32) -> i64`;
//! - the host writes `{"config": {…}, "event": {"id", "source", "type", "headers", "payload"}}`
//!   (payload as a UTF-8 string) at `sluice_alloc(len)` and calls `sluice_handle(ptr, len)`;
//! - the result packs `(ptr << 32) | len` of a UTF-8 JSON verdict: `{"drop": "reason"}`,
//!   `{"pass": {"type"?, "headers"?, "payload"?}}` (headers are added; absent fields stay as they
//!   were), `{"route": [{"endpoint", "payload"?, "headers"?}]}` or `{"error": "message"}`;
//! - imports allowed: `sluice.log(level: i32, ptr: i32, len: i32)` and `env.abort(msg, file, line,
//!   col)` (AssemblyScript's, which traps). Nothing else: no WASI at all.

use serde::{Deserialize, Serialize};
use wasmtime::{AsContextMut, Caller, Instance, Linker, Memory, Store, TypedFunc};

use super::host::{HostState, LogLevel};
use super::{PluginEvent, RoutedDelivery, Verdict};

/// Whether `bytes` are a core module (binary or WAT text) rather than a component (binary, or WAT
/// text that starts with `(component`).
pub(super) fn is_core_module(bytes: &[u8]) -> bool {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', version @ ..]) => version == [1, 0, 0, 0],
        _ if bytes.starts_with(b"\0asm") => false,
        // Not binary: WAT text, a component when its first form is `(component`.
        _ => !first_form(bytes).starts_with(b"(component"),
    }
}

/// `text` from its first form on: leading white space and `;;` line comments skipped.
fn first_form(mut text: &[u8]) -> &[u8] {
    loop {
        text = text.trim_ascii_start();
        match text.strip_prefix(b";;") {
            Some(comment) => text = comment.iter().position(|b| *b == b'\n').map_or(&[][..], |at| &comment[at..]),
            None => return text,
        }
    }
}

/// Defines the imports a core-module plugin may use.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("sluice", "log", |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
        let message = read_string(&mut caller, ptr, len).unwrap_or_else(|| "<log line outside memory>".into());
        caller.data().log(LogLevel::from_number(level), &message);
    })?;
    linker.func_wrap(
        "env",
        "abort",
        |mut caller: Caller<'_, HostState>, msg: i32, file: i32, line: i32, col: i32| -> wasmtime::Result<()> {
            let message = read_as_string(&mut caller, msg).unwrap_or_default();
            let file = read_as_string(&mut caller, file).unwrap_or_default();
            wasmtime::bail!("abort: {message} at {file}:{line}:{col}")
        },
    )?;
    Ok(())
}

/// A verdict longer than `wasm.max_output_bytes`: refused before the host reads it.
#[derive(Debug, thiserror::Error)]
#[error("a verdict of {bytes} bytes, more than wasm.max_output_bytes = {limit}")]
pub(super) struct OutputTooLarge {
    bytes: usize,
    limit: usize,
}

/// The exports of an instantiated core-module plugin.
pub(super) struct Entry {
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    handle: TypedFunc<(i32, i32), i64>,
}

impl Entry {
    /// Looks up the ABI's exports.
    pub(super) fn new(store: &mut Store<HostState>, instance: &Instance) -> wasmtime::Result<Self> {
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| wasmtime::format_err!("the module does not export `memory`"))?;
        let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "sluice_alloc")?;
        let handle = instance.get_typed_func::<(i32, i32), i64>(&mut *store, "sluice_handle")?;
        Ok(Self { memory, alloc, handle })
    }

    /// Calls the plugin: `Ok(Err(message))` when it answered `{"error": …}`. A verdict longer than
    /// `max_output_bytes` is an [`OutputTooLarge`] error, and is not read.
    pub(super) fn call(
        &self,
        store: &mut Store<HostState>,
        event: &PluginEvent,
        config_json: &str,
        max_output_bytes: usize,
    ) -> wasmtime::Result<Result<Verdict, String>> {
        let event_json = serde_json::to_string(&EventIn {
            id: &event.id,
            source: &event.source,
            event_type: &event.event_type,
            headers: &event.headers,
            payload: String::from_utf8_lossy(&event.payload).as_ref(),
        })?;
        // `config_json` is already JSON (the plugin's config table, serialised once at load).
        let input = format!(r#"{{"config":{config_json},"event":{event_json}}}"#).into_bytes();
        let len = i32::try_from(input.len())?;
        let ptr = self.alloc.call(&mut *store, len)?;
        self.memory.write(&mut *store, ptr as u32 as usize, &input)?;
        let packed = self.handle.call(&mut *store, (ptr, len))? as u64;
        let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xFFFF_FFFF) as usize);
        if out_len > max_output_bytes {
            return Err(wasmtime::Error::new(OutputTooLarge { bytes: out_len, limit: max_output_bytes }));
        }
        let output = self
            .memory
            .data(&*store)
            .get(out_ptr..out_ptr.saturating_add(out_len))
            .ok_or_else(|| wasmtime::format_err!("the verdict at {out_ptr}+{out_len} lies outside memory"))?;
        let verdict: VerdictOut =
            serde_json::from_slice(output).map_err(|e| wasmtime::format_err!("the verdict is not valid JSON: {e}"))?;
        Ok(verdict.into_verdict(event))
    }
}

#[derive(Serialize)]
struct EventIn<'a> {
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    headers: &'a [(String, String)],
    payload: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
enum VerdictOut {
    #[serde(rename = "drop")]
    Drop(String),
    #[serde(rename = "pass")]
    Pass(PassOut),
    #[serde(rename = "route")]
    Route(Vec<RouteOut>),
    #[serde(rename = "error")]
    Error(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PassOut {
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    payload: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteOut {
    endpoint: String,
    payload: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

impl VerdictOut {
    fn into_verdict(self, event: &PluginEvent) -> Result<Verdict, String> {
        Ok(match self {
            VerdictOut::Drop(reason) => Verdict::Drop(reason),
            VerdictOut::Error(message) => return Err(message),
            VerdictOut::Pass(pass) => {
                let mut next = event.clone();
                if let Some(event_type) = pass.event_type {
                    next.event_type = event_type;
                }
                next.headers.extend(pass.headers);
                if let Some(payload) = pass.payload {
                    next.payload = payload.into_bytes();
                }
                Verdict::Pass(next)
            }
            VerdictOut::Route(routes) => Verdict::Route(
                routes
                    .into_iter()
                    .map(|r| RoutedDelivery {
                        endpoint: r.endpoint,
                        payload: r.payload.map(String::into_bytes),
                        headers: r.headers,
                    })
                    .collect(),
            ),
        })
    }
}

fn read_string(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<String> {
    let memory = caller.get_export("memory")?.into_memory()?;
    let data = memory.data(caller.as_context_mut());
    let bytes = data.get(ptr as u32 as usize..(ptr as u32 as usize).checked_add(len as u32 as usize)?)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Reads an AssemblyScript string (UTF-16, its byte length stored just before it).
fn read_as_string(caller: &mut Caller<'_, HostState>, ptr: i32) -> Option<String> {
    if ptr == 0 {
        return None;
    }
    let memory = caller.get_export("memory")?.into_memory()?;
    let data = memory.data(caller.as_context_mut());
    let at = ptr as u32 as usize;
    let len_bytes: [u8; 4] = data.get(at.checked_sub(4)?..at)?.try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let units: Vec<u16> =
        data.get(at..at.checked_add(len)?)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    Some(String::from_utf16_lossy(&units))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_core_modules_from_components() {
        assert!(is_core_module(b"\0asm\x01\0\0\0rest"));
        assert!(!is_core_module(b"\0asm\x0d\0\x01\0rest"));
        assert!(is_core_module(b"(module)"));
        assert!(is_core_module(b";; a module\n  (module)"));
        assert!(!is_core_module(b";; a component\n;; in text\n(component)"));
    }

    #[test]
    fn verdicts_decode_with_defaults() {
        let event = PluginEvent {
            id: "evt_1".into(),
            source: "s".into(),
            event_type: "t".into(),
            headers: vec![],
            payload: b"{}".to_vec(),
        };
        let pass: VerdictOut = serde_json::from_str(r#"{"pass":{"headers":[["x","1"]]}}"#).unwrap();
        match pass.into_verdict(&event).unwrap() {
            Verdict::Pass(next) => {
                assert_eq!(next.headers, vec![("x".to_string(), "1".to_string())]);
                assert_eq!(next.payload, b"{}");
            }
            other => panic!("{other:?}"),
        }
        let error: VerdictOut = serde_json::from_str(r#"{"error":"no"}"#).unwrap();
        assert_eq!(error.into_verdict(&event), Err("no".to_string()));
        assert!(serde_json::from_str::<VerdictOut>(r#"{"maybe":1}"#).is_err());
    }
}
