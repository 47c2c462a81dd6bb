//! The bench's command line.

use anyhow::{bail, Context};

/// What the command line asks for (see the crate's doc comment for the flags).
pub struct Options {
    pub events: usize,
    /// `--events` was given (phases with a default of their own keep it otherwise).
    pub events_given: bool,
    pub producers: usize,
    pub plugin: bool,
    pub shards: u32,
    pub embedded: bool,
    pub scale: bool,
    pub memory: bool,
    pub history: bool,
    pub search: bool,
    pub log: bool,
    pub peak: bool,
    pub latency: bool,
    pub backlog: bool,
    pub steps: bool,
    /// `--rounds N`; each phase that takes it has its own default.
    pub rounds: Option<usize>,
}

/// Reads the command line.
pub fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        events: 30_000,
        events_given: false,
        producers: 64,
        plugin: true,
        shards: 1,
        embedded: false,
        scale: false,
        memory: false,
        history: false,
        search: false,
        log: false,
        peak: false,
        latency: false,
        backlog: false,
        steps: false,
        rounds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => {
                options.events = args.next().context("--events N")?.parse()?;
                options.events_given = true;
            }
            "--producers" => options.producers = args.next().context("--producers N")?.parse()?,
            "--no-plugin" => options.plugin = false,
            "--scale" => options.scale = true,
            "--memory" => options.memory = true,
            "--history" => options.history = true,
            "--search" => options.search = true,
            "--log" => options.log = true,
            "--peak" => options.peak = true,
            "--latency" => options.latency = true,
            "--backlog" => options.backlog = true,
            "--steps" => options.steps = true,
            "--rounds" => options.rounds = Some(args.next().context("--rounds N")?.parse::<usize>()?.max(1)),
            "--shards" => options.shards = args.next().context("--shards N")?.parse()?,
            "--backend" => match args.next().as_deref() {
                Some("redis") => options.embedded = false,
                Some("embedded") => options.embedded = true,
                _ => bail!("--backend redis|embedded"),
            },
            other => bail!("unknown argument {other}; see the doc comment of bench/main.rs"),
        }
    }
    Ok(options)
}
