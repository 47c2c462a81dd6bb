//! The real `sluice` binary, run by the phases that measure a gateway process of its own (its
//! memory, or several of them sharing a store).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::free_port;

/// A process killed on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// The process' peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let kib: f64 =
            status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib / 1024.0)
    }
}

/// The `sluice` binary built beside this benchmark.
fn sluice_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let binary = me.with_file_name("sluice");
    if !binary.exists() {
        bail!("{} is not built (cargo build --release -p sluice)", binary.display());
    }
    Ok(binary)
}

/// Runs `sluice run --config <config>` listening on a free loopback port, and waits until it
/// answers `/healthz`.
pub async fn start_gateway(config: &Path) -> anyhow::Result<(Process, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let child = Command::new(sluice_binary()?)
        .args(["run", "--config"])
        .arg(config)
        .env("SLUICE_SERVER__LISTEN", addr.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let process = Process(child);
    let http = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    while http.get(format!("http://{addr}/healthz")).send().await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("sluice on {addr} did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((process, addr))
}
