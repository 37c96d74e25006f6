//! `dionysia-hls-bench`: what N concurrent blocked LL-HLS playlist requests
//! cost the origin, and how long it takes to release them all when the part
//! they wait for lands.
//!
//! ```text
//!  ffmpeg ─RTMP─► dionysia (spawned, loopback) ─► LL-HLS room "bench"
//!  N TCP connections ─► GET …/video/media.m3u8?_HLS_msn=M&_HLS_part=P (a part ~1 s ahead)
//!       all parked ─► /proc/PID: RSS and CPU while they wait
//!       part lands ─► every response read (poll(2) over all sockets): release spread
//! ```
//!
//! It is a separate binary of the bench crate so that it shares nothing
//! with the WebRTC load generator but `/proc` reading.
//!
//!   cargo build --release
//!   target/release/dionysia-hls-bench --server target/release/dionysia --requests 5000 --rounds 3

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::procfs;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "N concurrent blocked LL-HLS playlist requests against a spawned dionysia")]
struct Args {
    /// The server binary to spawn.
    #[arg(long, default_value = "target/release/dionysia")]
    server: String,
    /// Concurrent blocked playlist requests per round.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Rounds (each a fresh set of connections).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// ffmpeg binary for the RTMP publisher.
    #[arg(long, default_value = "/usr/bin/ffmpeg")]
    ffmpeg: String,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A whole HTTP/1.1 GET with `Connection: close`: status and body.
fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// The last `EXT-X-PART` of a media playlist: (msn, index in its segment).
fn last_part(playlist: &str) -> Option<(u64, u64)> {
    let (mut msn, mut index, mut last) = (0u64, 0u64, None);
    for line in playlist.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.trim().parse().ok()?;
        } else if line.starts_with("#EXT-X-PART:") {
            last = Some((msn, index));
            index += 1;
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            msn += 1;
            index = 0;
        }
    }
    last
}

struct Round {
    rss_idle_kib: u64,
    rss_blocked_kib: u64,
    cpu_idle: f64,
    cpu_blocked: f64,
    /// Server CPU seconds from the first answer to the last.
    cpu_release_s: f64,
    blocked_for: Duration,
    spread: Duration,
    ok: usize,
    other: usize,
}

fn round(args: &Args, port: u16, pid: u32, media: &str) -> Result<Round> {
    // Idle reference: the live room's own CPU over one second.
    let (c0, t0) = (procfs::cpu_seconds(pid).unwrap_or(0.0), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let cpu_idle = (procfs::cpu_seconds(pid).unwrap_or(0.0) - c0) / t0.elapsed().as_secs_f64();
    let rss_idle_kib = procfs::rss_kib(pid).unwrap_or(0);

    // Connect everything first, so that the requests go out together.
    let mut socks = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        socks.push(TcpStream::connect(("127.0.0.1", port)).context("connect")?);
    }
    // A part about a second ahead: the next segment's 4th part.
    let (status, playlist) = get(port, media)?;
    let Some((msn, _)) = last_part(&playlist).filter(|_| status == 200) else {
        bail!("no playlist ({status})");
    };
    let request = format!(
        "GET {media}?_HLS_msn={}&_HLS_part=3 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
        msn + 1
    );
    let sent = Instant::now();
    for s in &mut socks {
        s.write_all(request.as_bytes())?;
        s.set_nonblocking(true)?;
    }
    // Every request is parked now (they all wait for the same part).
    std::thread::sleep(Duration::from_millis(300));
    let (c1, t1) = (procfs::cpu_seconds(pid).unwrap_or(0.0), Instant::now());
    let mut rss_blocked_kib = procfs::rss_kib(pid).unwrap_or(0);

    // Read every response to its end, timing each completion.
    let mut pending: Vec<(usize, Vec<u8>)> = (0..socks.len()).map(|i| (i, Vec::new())).collect();
    let mut done: Vec<(Instant, Vec<u8>)> = Vec::with_capacity(socks.len());
    let mut cpu_blocked = None;
    let mut cpu_at_first = 0.0;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pending.is_empty() && Instant::now() < deadline {
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|(i, _)| libc::pollfd {
                fd: socks[*i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid, initialized array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            // Still all parked: the highest RSS seen while they wait.
            if cpu_blocked.is_none() {
                rss_blocked_kib = rss_blocked_kib.max(procfs::rss_kib(pid).unwrap_or(0));
            }
            continue;
        }
        if cpu_blocked.is_none() {
            // The first answer: the part landed. CPU of the blocked stretch.
            cpu_at_first = procfs::cpu_seconds(pid).unwrap_or(0.0);
            cpu_blocked = Some((cpu_at_first - c1) / t1.elapsed().as_secs_f64());
        }
        let mut still = Vec::with_capacity(pending.len());
        for ((i, mut got), fd) in pending.into_iter().zip(&fds) {
            if fd.revents == 0 {
                still.push((i, got));
                continue;
            }
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => {
                        done.push((Instant::now(), std::mem::take(&mut got)));
                        break;
                    }
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        still.push((i, std::mem::take(&mut got)));
                        break;
                    }
                    Err(_) => {
                        done.push((Instant::now(), std::mem::take(&mut got)));
                        break;
                    }
                }
            }
        }
        pending = still;
    }
    let cpu_release_s = procfs::cpu_seconds(pid).unwrap_or(0.0) - cpu_at_first;
    let first = done.iter().map(|(t, _)| *t).min().unwrap_or(sent);
    let last = done.iter().map(|(t, _)| *t).max().unwrap_or(sent);
    let ok = done
        .iter()
        .filter(|(_, r)| {
            r.starts_with(b"HTTP/1.1 200") && r.windows(12).any(|w| w == b"#EXT-X-PART:")
        })
        .count();
    Ok(Round {
        rss_idle_kib,
        rss_blocked_kib,
        cpu_idle,
        cpu_blocked: cpu_blocked.unwrap_or(f64::NAN),
        cpu_release_s,
        blocked_for: first - sent,
        spread: last - first,
        ok,
        other: done.len() - ok + pending.len(),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (http, rtmp, udp) = (free_port()?, free_port()?, free_port()?);
    let data = std::env::temp_dir().join(format!("dionysia-hls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let server = Killed(
        Command::new(&args.server)
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--udp-listen", &format!("127.0.0.1:{udp}")])
            .args(["--public-ip", "127.0.0.1", "--room", "bench:bench-key-1"])
            .args(["--rtmp-listen", &format!("127.0.0.1:{rtmp}")])
            .env("DIONYSIA_DATA_DIR", &data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", args.server))?,
    );
    let pid = server.0.id();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", rtmp)).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _publisher = Killed(
        Command::new(&args.ffmpeg)
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-tune",
                "zerolatency",
            ])
            .args([
                "-bf", "0", "-g", "30", "-b:v", "800k", "-c:a", "aac", "-f", "flv",
            ])
            .arg(format!("rtmp://127.0.0.1:{rtmp}/live/bench-key-1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn ffmpeg")?,
    );
    let media = loop {
        if let Ok((200, text)) = get(http, "/hls/bench/index.m3u8") {
            if let Some(uri) = text.lines().find(|l| l.ends_with("/video/media.m3u8")) {
                break format!("/hls/bench/{uri}");
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("no LL-HLS playlist");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "{} concurrent blocked playlist requests, {} rounds; server pid {pid}; load average {:.1}; {}",
        args.requests,
        args.rounds,
        procfs::load_average(),
        procfs::cpu_model()
    );
    for n in 0..args.rounds {
        let r = round(&args, http, pid, &media)?;
        println!(
            "round {}: {} answered 200 with the part, {} other; RSS {} → {} KiB while blocked (+{} KiB, {:.0} bytes per request); \
             server CPU {:.2} cores idle, {:.2} cores while blocked; first answer {:.0} ms after the requests, \
             all {} released within {:.1} ms (server CPU {:.0} ms meanwhile)",
            n + 1,
            r.ok,
            r.other,
            r.rss_idle_kib,
            r.rss_blocked_kib,
            r.rss_blocked_kib.saturating_sub(r.rss_idle_kib),
            r.rss_blocked_kib.saturating_sub(r.rss_idle_kib) as f64 * 1024.0 / args.requests as f64,
            r.cpu_idle,
            r.cpu_blocked,
            r.blocked_for.as_secs_f64() * 1000.0,
            r.ok + r.other,
            r.spread.as_secs_f64() * 1000.0,
            r.cpu_release_s * 1000.0,
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
