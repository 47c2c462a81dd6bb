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

/// CPU seconds (user + system) process `pid` has used, from `/proc/<pid>/stat`.
pub fn cpu_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Past the command name (in parentheses, which may hold spaces): fields 3 onwards.
    let Some((_, rest)) = stat.rsplit_once(") ") else { return 0.0 };
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Context switches (voluntary and not) of this process' live threads so far, from
/// `/proc/self/task/*/status`.
pub fn own_context_switches() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        total += status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}
