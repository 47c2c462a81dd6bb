//! What Redis spent on a phase of the benchmark: CPU per delivered event (from `INFO cpu`) and
//! calls and µs per event of each command (from `INFO commandstats`, scripts' inner commands
//! included), so a change in the scripts shows up as a number.

use anyhow::Context;

/// Redis' counters at the start of a phase.
pub struct Start {
    cpu_s: f64,
}

/// Resets Redis' command statistics and notes its CPU time so far.
pub async fn start(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Start> {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(conn).await?;
    Ok(Start { cpu_s: cpu_seconds(conn).await? })
}

/// CPU seconds Redis has used (user + system).
pub async fn cpu_seconds(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

/// One command's line of `INFO commandstats`.
struct Command {
    name: String,
    calls: u64,
    usec: u64,
}

fn commandstats(info: &str) -> Vec<Command> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field =
                |key: &str| rest.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok());
            Some(Command { name: name.to_owned(), calls: field("calls")?, usec: field("usec")? })
        })
        .collect()
}

/// What `INFO commandstats` says Redis ran since its statistics were last reset.
pub struct Ran {
    /// Commands, scripts' inner ones included (the scripts themselves, `INFO` and `CONFIG` not
    /// counted).
    pub commands: u64,
    /// µs in scripts (`EVALSHA`, inner commands included), by Redis' clock around each call: the
    /// interpreter's and the commands' work, without the network's.
    pub script_us: u64,
    /// Script calls.
    pub scripts: u64,
}

/// Reads what Redis ran since its statistics were last reset.
pub async fn ran(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Ran> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.context("INFO commandstats")?;
    let commands = commandstats(&info);
    let (script_us, scripts) =
        commands.iter().filter(|c| c.name == "evalsha").fold((0, 0), |(us, calls), c| (us + c.usec, calls + c.calls));
    Ok(Ran { commands: inner_calls(&commands), script_us, scripts })
}

/// The calls of `commands` but the scripts' own, `INFO`'s and `CONFIG`'s.
fn inner_calls(commands: &[Command]) -> u64 {
    commands
        .iter()
        .filter(|c| !matches!(c.name.as_str(), "evalsha" | "eval" | "info" | "config"))
        .map(|c| c.calls)
        .sum()
}

/// Prints Redis' CPU per event since `start`, and the commands it ran per event, costliest first;
/// returns the CPU per event, in µs.
pub async fn report(conn: &mut redis::aio::MultiplexedConnection, start: Start, events: usize) -> anyhow::Result<f64> {
    let cpu = cpu_seconds(conn).await? - start.cpu_s;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.context("INFO commandstats")?;
    let mut commands = commandstats(&info);
    commands.sort_by_key(|c| std::cmp::Reverse(c.usec));
    let n = events.max(1) as f64;
    // EVALSHA's own time includes its inner commands': the inner ones are listed beside it.
    let inner = inner_calls(&commands);
    println!(
        "  Redis            {:.1} µs CPU per event (INFO cpu), {:.1} commands per event",
        cpu * 1e6 / n,
        inner as f64 / n
    );
    let listed: Vec<String> = commands
        .iter()
        .filter(|c| c.name != "info" && c.name != "config")
        .take(10)
        .map(|c| format!("{} {:.2}×/{:.1}µs", c.name, c.calls as f64 / n, c.usec as f64 / n))
        .collect();
    println!("  per event        {}", listed.join(", "));
    Ok(cpu * 1e6 / n)
}
