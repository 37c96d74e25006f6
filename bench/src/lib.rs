//! Dionysia's load generator: one real WHIP publisher and N real WHEP
//! viewers against a running server over loopback, and the figures that
//! say what the server's fan-out costs.
//!
//! ```text
//!  media::encode_clip (once) ─► Publisher ── WHIP/ICE/DTLS/SRTP ──► server
//!                                 │ send instants (SendLog)            │
//!                                 ▼                                    ▼
//!  report ◄── viewer shards (N str0m peers, WHEP/ICE/DTLS/SRTP) ◄── fan-out
//!     ▲
//!     └── /proc/<server pid>: CPU seconds, threads, RSS
//! ```
//!
//! It never changes the server: it only talks to its public endpoints and
//! reads `/proc`. All traffic stays on loopback (127.0.0.0/8).

pub mod http;
pub mod media;
pub mod procfs;
pub mod publisher;
pub mod report;
pub mod sendlog;
pub mod viewer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::publisher::Publisher;
use crate::report::{Report, Snapshot};
use crate::sendlog::SendLog;
use crate::viewer::{NewViewer, Shard, Shared, ViewerCounters, ViewerResult};

/// Everything a run needs; the CLI fills it.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http://127.0.0.1:8080`; ignored with `spawn_server`.
    pub server: String,
    pub room: String,
    pub key: String,
    pub viewers: usize,
    /// Length of the measuring window.
    pub seconds: f64,
    /// New viewers per second while ramping up.
    pub ramp_per_sec: f64,
    pub server_pid: Option<u32>,
    /// Start this server binary on free loopback ports for the run.
    pub spawn_server: Option<PathBuf>,
    /// Viewer shard threads.
    pub threads: usize,
    /// Threads doing the WHEP POSTs.
    pub connect_threads: usize,
    /// One viewer in `full_every` decrypts and checks every packet.
    pub full_every: usize,
    /// Ask the WHEP layer extension for this rid (default: automatic).
    pub layer: Option<String>,
    /// Offer transport-cc (the server then runs its bandwidth estimation
    /// and probing per viewer, as with browsers).
    pub twcc: bool,
    /// Seconds of the looped clip and keyframe interval in frames.
    pub clip_seconds: u32,
    pub gop_frames: u32,
    /// Settling time between the last viewer's media and the window.
    pub warmup: f64,
    /// Where the spawned server's log goes.
    pub server_log: Option<PathBuf>,
    /// The spawned server's `--media-threads` (`None`: its default).
    pub media_threads: Option<usize>,
    /// Print progress to stderr.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server: "http://127.0.0.1:8080".into(),
            room: "bench".into(),
            key: "bench-key".into(),
            viewers: 100,
            seconds: 20.0,
            ramp_per_sec: 200.0,
            server_pid: None,
            spawn_server: None,
            threads: 2,
            connect_threads: 4,
            full_every: 10,
            layer: None,
            twcc: false,
            clip_seconds: 4,
            gop_frames: 60,
            warmup: 2.0,
            server_log: None,
            media_threads: None,
            verbose: true,
        }
    }
}

/// A server this run started; killed when dropped.
struct SpawnedServer {
    child: Child,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

fn spawn_server(opts: &Options, path: &PathBuf) -> Result<(SpawnedServer, String)> {
    if !path.is_file() {
        bail!(
            "server binary {} not found (build it: cargo build --release -p dionysia)",
            path.display()
        );
    }
    let http_port = free_port(false)?;
    let udp_port = free_port(true)?;
    let log_path = opts
        .server_log
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("dionysia-bench-{http_port}.log")));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(path);
    if let Some(n) = opts.media_threads {
        command.args(["--media-threads", &n.to_string()]);
    }
    let child = command
        .args([
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
            "--udp-listen",
            &format!("127.0.0.1:{udp_port}"),
            "--public-ip",
            "127.0.0.1",
            "--room",
            &format!("{}:{}", opts.room, opts.key),
            "--max-sessions",
            &(opts.viewers + 16).max(2000).to_string(),
        ])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let server = SpawnedServer { child };
    let base = format!("http://127.0.0.1:{http_port}");
    let agent = http::agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if agent.get(&format!("{base}/healthz")).call().is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the server did not answer /healthz in 20 s (log: {})",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((server, base))
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1)?;
    let host = rest.split('/').next()?;
    host.rsplit(':').next()?.parse().ok()
}

fn progress(opts: &Options, msg: impl AsRef<str>) {
    if opts.verbose {
        eprintln!("[bench] {}", msg.as_ref());
    }
}

/// Runs the whole benchmark and returns its figures.
pub fn run(opts: &Options) -> Result<Report> {
    if opts.viewers == 0 {
        bail!("--viewers must be at least 1");
    }
    let (spawned, base) = match &opts.spawn_server {
        Some(path) => {
            let (s, base) = spawn_server(opts, path)?;
            let pid = s.child.id();
            (Some((s, pid)), base)
        }
        None => (None, opts.server.trim_end_matches('/').to_string()),
    };
    let server_pid = opts
        .server_pid
        .or(spawned.as_ref().map(|(_, pid)| *pid))
        .or_else(|| port_of(&base).and_then(procfs::pid_listening_on));
    match server_pid {
        Some(pid) => progress(opts, format!("server {base}, pid {pid}")),
        None => progress(
            opts,
            format!("server {base}: pid unknown, no CPU or memory figures (give --server-pid)"),
        ),
    }

    let started = Instant::now();
    let clip = Arc::new(media::encode_clip(opts.clip_seconds, opts.gop_frames)?);
    let encode_secs = started.elapsed().as_secs_f64();
    for l in &clip.layers {
        progress(
            opts,
            format!(
                "layer {}: {}x{}, {:.0} kbps, {} packets per {} s loop",
                l.spec.rid,
                l.spec.width,
                l.spec.height,
                l.bitrate() / 1000.0,
                l.packets(),
                opts.clip_seconds
            ),
        );
    }

    let log = Arc::new(SendLog::default());
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        counters: (0..opts.viewers)
            .map(|_| ViewerCounters::default())
            .collect(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        log: log.clone(),
    });

    // Whatever way `run` ends, the shard threads stop.
    let _stop_shards = StopOnDrop(shared.clone());
    let publisher = Publisher::start(&base, &opts.room, &opts.key, clip.clone(), log)?;
    // Let the first keyframe reach the server's GOP cache.
    std::thread::sleep(Duration::from_millis(700));
    let rss_before = server_pid.and_then(procfs::rss_kib);

    // Viewer shards.
    let mut senders = Vec::new();
    let mut shard_threads = Vec::new();
    let mut ports = Vec::new();
    for s in 0..opts.threads.max(1) {
        let shard = Shard::bind()?;
        ports.push(shard.port());
        let (tx, rx) = mpsc::channel::<NewViewer>();
        senders.push(tx);
        let shared = shared.clone();
        shard_threads.push(
            std::thread::Builder::new()
                .name(format!("viewers-{s}"))
                .spawn(move || shard.run(shared, rx))?,
        );
    }

    // Ramp: viewer i is due at ramp_start + i / ramp_per_sec.
    progress(opts, format!("connecting {} viewers", opts.viewers));
    let ramp_start = Instant::now();
    let ramp_ns = shared.since_epoch(ramp_start);
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut connectors = Vec::new();
    let nconn = opts.connect_threads.max(1);
    for t in 0..nconn {
        let (senders, ports) = (senders.clone(), ports.clone());
        let (shared, errors) = (shared.clone(), errors.clone());
        let (base, opts) = (base.clone(), opts.clone());
        connectors.push(std::thread::spawn(move || {
            let agent = http::agent();
            for i in (t..opts.viewers).step_by(nconn) {
                let due =
                    ramp_start + Duration::from_secs_f64(i as f64 / opts.ramp_per_sec.max(0.1));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let shard = i % senders.len();
                let local = std::net::SocketAddr::new(viewer::viewer_ip(i).into(), ports[shard]);
                let full = i % opts.full_every.max(1) == 0;
                let begin = Instant::now();
                shared.counters[i]
                    .post_ns
                    .store(shared.since_epoch(begin), Ordering::Relaxed);
                let result = (|| -> Result<NewViewer> {
                    let offer = viewer::make_offer(local, opts.twcc)?;
                    let session = http::post_offer(
                        &agent,
                        &base,
                        &format!("/whep/{}", opts.room),
                        None,
                        &offer.sdp,
                        Duration::from_secs(10),
                    )?;
                    shared.counters[i]
                        .answered_ns
                        .store(shared.since_epoch(Instant::now()), Ordering::Relaxed);
                    let nv = NewViewer::accept(offer, &session.answer, i, local, full)?;
                    if let Some(rid) = &opts.layer {
                        let url = session.layer_url.as_deref().ok_or_else(|| {
                            anyhow!("the WHEP answer has no layer extension link")
                        })?;
                        http::select_layer(&agent, url, Some(rid))?;
                    }
                    Ok(nv)
                })();
                match result {
                    Ok(nv) => {
                        let _ = senders[shard].send(nv);
                    }
                    Err(e) => {
                        shared.counters[i].failed.store(true, Ordering::Relaxed);
                        if let Ok(mut v) = errors.lock() {
                            v.push(format!("viewer {i}: {e:#}"));
                        }
                    }
                }
            }
        }));
    }
    drop(senders);
    for c in connectors {
        let _ = c.join();
    }
    let posted = ramp_start.elapsed().as_secs_f64();
    progress(
        opts,
        format!("{} offers answered in {posted:.1} s", opts.viewers),
    );

    // Wait for every viewer to connect and get video (or give up).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = shared.counters.iter().all(|c| {
            c.failed.load(Ordering::Relaxed)
                || (c.first_video_ns.load(Ordering::Relaxed) > 0
                    && c.first_audio_ns.load(Ordering::Relaxed) > 0)
        });
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    progress(opts, "viewers up; measuring");
    std::thread::sleep(Duration::from_secs_f64(opts.warmup));

    let before = Snapshot::take(&shared, server_pid);
    shared.measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(opts.seconds));
    shared.measuring.store(false, Ordering::Relaxed);
    let after = Snapshot::take(&shared, server_pid);
    let rss_after = server_pid.and_then(procfs::rss_kib);

    shared.stop.store(true, Ordering::Relaxed);
    let mut results: Vec<ViewerResult> = Vec::new();
    for t in shard_threads {
        results.extend(t.join().map_err(|_| anyhow!("a viewer shard panicked"))?);
    }
    let publisher = publisher.stop()?;
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();

    let report = Report::build(report::Inputs {
        opts,
        clip: &clip,
        encode_secs,
        shared: &shared,
        ramp_ns,
        results,
        errors,
        before,
        after,
        rss_before,
        rss_after,
        server_pid,
        publisher,
    });
    Ok(report)
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Thread CPU seconds per second over a window, by thread name.
pub(crate) fn per_sec(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    secs: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)) / secs,
            )
        })
        .filter(|(_, v)| *v > 0.005)
        .collect()
}
