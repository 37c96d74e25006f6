//! `dionysia-bench`: the load generator's command line. Everything it does
//! is in the `bench` library; this parses flags, runs, prints.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Drive a running Dionysia server with one WHIP publisher and N WHEP
/// viewers over loopback, and report what the fan-out costs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The server's HTTP base URL (ignored with --spawn-server).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Room to publish into and watch.
    #[arg(long, default_value = "bench")]
    room: String,
    /// The room's stream key.
    #[arg(long, default_value = "bench-key")]
    key: String,
    /// Number of WHEP viewers.
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Seconds of the measuring window (after every viewer is up).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// New viewers per second while connecting.
    #[arg(long, default_value_t = 200.0)]
    ramp_per_sec: f64,
    /// The server's pid, for CPU and memory (default: found by its HTTP port).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start this server binary on free loopback ports for the run.
    #[arg(long)]
    spawn_server: Option<PathBuf>,
    /// Viewer shard threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Threads making WHEP requests.
    #[arg(long, default_value_t = 4)]
    connect_threads: usize,
    /// One viewer in N decrypts and checks every packet (1: all).
    #[arg(long, default_value_t = 10)]
    full_every: usize,
    /// Ask for this simulcast rid (h, m, l) through the WHEP layer extension.
    #[arg(long)]
    layer: Option<String>,
    /// Offer transport-cc, so the server estimates bandwidth and probes per viewer.
    #[arg(long)]
    twcc: bool,
    /// Seconds before the window, after the last viewer got media.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where a spawned server's log goes (default: a temp file).
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// A spawned server's `--media-threads` (default: its own, one per core).
    #[arg(long)]
    media_threads: Option<usize>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let opts = bench::Options {
        server: cli.server,
        room: cli.room,
        key: cli.key,
        viewers: cli.viewers,
        seconds: cli.seconds,
        ramp_per_sec: cli.ramp_per_sec,
        server_pid: cli.server_pid,
        spawn_server: cli.spawn_server,
        threads: cli.threads,
        connect_threads: cli.connect_threads,
        full_every: cli.full_every,
        layer: cli.layer,
        twcc: cli.twcc,
        warmup: cli.warmup,
        server_log: cli.server_log,
        media_threads: cli.media_threads,
        verbose: !cli.quiet,
        ..bench::Options::default()
    };
    let report = bench::run(&opts)?;
    println!("Dionysia load benchmark: {} viewers", report.viewers);
    print!("{}", report.table());
    if let Some(path) = cli.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
