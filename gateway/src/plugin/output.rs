//! What a plugin prints. A guest's stdout and stderr (WASI) are captured per call into bounded
//! buffers, never written to the gateway's own streams, and after the call each line is logged as
//! that plugin's line (plugin name, event id, stream), within a per-plugin line budget. What a
//! crashing guest wrote to stderr (a Rust panic message, a Python traceback) is also put into the
//! error the producer gets.
//!
//! A write never blocks and never fails: past [`MAX_CAPTURE`] bytes in one call the rest is counted
//! and dropped, and the log says how much was cut.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Most bytes kept per stream and call; the rest is cut (and counted).
pub const MAX_CAPTURE: usize = 16 * 1024;
/// Longest log line a plugin may write (through `log` or a print); longer lines are cut.
pub const MAX_LINE: usize = 4096;
/// Most plugin lines logged per plugin and second; the rest are counted and reported once.
pub const LINES_PER_SECOND: u64 = 100;
/// Most bytes of a crashed guest's stderr put into its error message (the end of it: the panic
/// message or the exception comes last).
pub const STDERR_IN_ERROR: usize = 2048;
/// How much a guest may write in one `write` (WASI's permit).
const PERMIT: usize = 64 * 1024;

/// A stream a plugin writes to, captured in memory. Clones share the buffer.
#[derive(Clone, Default)]
pub(super) struct Capture(Arc<Mutex<Captured>>);

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    cut: usize,
}

impl Capture {
    fn push(&self, bytes: &[u8]) {
        let mut captured = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_CAPTURE.saturating_sub(captured.bytes.len());
        let kept = room.min(bytes.len());
        captured.bytes.extend_from_slice(&bytes[..kept]);
        captured.cut += bytes.len() - kept;
    }

    /// What was written since the last take, and how many bytes were cut from it.
    pub(super) fn take(&self) -> (Vec<u8>, usize) {
        let mut captured = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let cut = std::mem::take(&mut captured.cut);
        (std::mem::take(&mut captured.bytes), cut)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    // Always ready: a write lands in memory at once.
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Which stream a plugin line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// WASI stdout (`print`, `printf`, `println!`).
    Stdout,
    /// WASI stderr (`eprintln!`, a Rust panic message, a Python traceback).
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Everything one call printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Printed {
    /// Lines, in the order of their stream (stdout's lines, then stderr's: the two are captured apart).
    pub lines: Vec<(Stream, String)>,
    /// Bytes cut from stdout and stderr over [`MAX_CAPTURE`].
    pub cut: usize,
}

impl Printed {
    /// Splits what the two captures hold into lines.
    pub(super) fn take(stdout: &Capture, stderr: &Capture) -> Self {
        let mut printed = Printed::default();
        for (stream, capture) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
            let (bytes, cut) = capture.take();
            printed.cut += cut;
            if bytes.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let text = text.strip_suffix('\n').unwrap_or(&text);
            printed.lines.extend(text.split('\n').map(|line| (stream, cut_line(line.trim_end_matches('\r')))));
        }
        printed
    }

    /// The end of what went to stderr (at most [`STDERR_IN_ERROR`] bytes), for an error message.
    pub fn stderr_tail(&self) -> String {
        let lines: Vec<&str> =
            self.lines.iter().filter(|(s, _)| *s == Stream::Stderr).map(|(_, l)| l.as_str()).collect();
        let text = lines.join("\n");
        let text = text.trim();
        if text.len() <= STDERR_IN_ERROR {
            return text.to_string();
        }
        let mut start = text.len() - STDERR_IN_ERROR;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        format!("…{}", &text[start..])
    }
}

/// `line`, cut to [`MAX_LINE`] bytes on a character boundary.
pub(super) fn cut_line(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_string();
    }
    let mut cut = MAX_LINE;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}

/// A plugin's log budget: [`LINES_PER_SECOND`] lines, then silence until the next second, when one
/// line says how many were held back. Shared by the plugin's instances (and kept across reloads).
#[derive(Debug, Default)]
pub struct LineBudget {
    second: AtomicU64,
    used: AtomicU64,
    held_back: AtomicU64,
}

impl LineBudget {
    /// Whether one more line may be logged now; logs the count held back in the previous second
    /// when a new second starts.
    pub fn allow(&self, plugin: &str) -> bool {
        let now = crate::clock::unix_seconds();
        let second = self.second.load(Ordering::Relaxed);
        if now != second && self.second.compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.used.store(0, Ordering::Relaxed);
            let held_back = self.held_back.swap(0, Ordering::Relaxed);
            if held_back > 0 {
                tracing::warn!(
                    plugin,
                    held_back,
                    "Plugin wrote more than {LINES_PER_SECOND} lines in a second; the rest were not logged."
                );
            }
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            true
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Logs what one call printed: stdout lines at INFO, stderr lines at WARN, each with the plugin's
/// name, the event id and the stream, within the plugin's budget.
pub fn log_printed(plugin: &str, event_id: &str, printed: &Printed, budget: &LineBudget) {
    for (stream, line) in &printed.lines {
        if !budget.allow(plugin) {
            continue;
        }
        let stream = stream.as_str();
        match stream {
            "stderr" => tracing::warn!(plugin, event_id, stream, "{line}"),
            _ => tracing::info!(plugin, event_id, stream, "{line}"),
        }
    }
    if printed.cut > 0 && budget.allow(plugin) {
        tracing::warn!(
            plugin,
            event_id,
            cut_bytes = printed.cut,
            "Plugin output over {MAX_CAPTURE} bytes per stream in one call; the rest was cut."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_are_bounded_and_split_into_lines() {
        let (out, err) = (Capture::default(), Capture::default());
        out.push(b"one\r\ntwo\n");
        err.push(b"panicked at x\n");
        err.push(&vec![b'e'; MAX_CAPTURE]);
        let printed = Printed::take(&out, &err);
        assert_eq!(printed.lines[0], (Stream::Stdout, "one".to_string()));
        assert_eq!(printed.lines[1], (Stream::Stdout, "two".to_string()));
        assert_eq!(printed.lines[2], (Stream::Stderr, "panicked at x".to_string()));
        assert_eq!(printed.cut, "panicked at x\n".len());
        assert!(printed.lines[3].1.len() <= MAX_LINE + "…".len());
        assert!(printed.stderr_tail().starts_with('…'));
        // Taken means gone: the next call starts empty.
        assert_eq!(Printed::take(&out, &err), Printed::default());
    }

    #[test]
    fn the_budget_holds_back_lines_past_the_limit() {
        let budget = LineBudget::default();
        let allowed = (0..LINES_PER_SECOND * 3).filter(|_| budget.allow("p")).count() as u64;
        // One second boundary may fall inside the loop: at most two seconds' worth.
        assert!((LINES_PER_SECOND..=2 * LINES_PER_SECOND).contains(&allowed), "{allowed}");
    }
}
