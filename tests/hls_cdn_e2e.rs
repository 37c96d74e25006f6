//! LL-HLS through a real shared cache: Debian's nginx, configured with the
//! sample configuration of `docs/hls.md` (read from that file, so the
//! documented configuration is the tested one), sits in front of the real
//! binary; ffmpeg publishes over RTMP; 20 concurrent LL-HLS clients (threads
//! doing what hls.js does in low-latency mode: blocking playlist reloads for
//! the next part, then the parts) play through nginx.
//!
//! The origin must see about one request per playlist version and part,
//! not one per client: nginx's access log says, for every client request,
//! whether it went to the origin (`$upstream_addr`) or was served from the
//! cache (a hit, or a collapsed miss that waited on `proxy_cache_lock`).
//!
//! Needs nginx and ffmpeg (`scripts/test.sh` installs them).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROOM: &str = "stage";
const KEY: &str = "cdn-e2e-key";
const FFMPEG: &str = "/usr/bin/ffmpeg";
const NGINX: &str = "/usr/sbin/nginx";
const CLIENTS: usize = 20;
const PLAY_SECONDS: u64 = 8;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `nginx` block of docs/hls.md, made to run here: cache and origin
/// port of this test, a loopback listen port.
fn documented_config(cache_dir: &str, origin_port: u16, listen_port: u16) -> String {
    let doc =
        std::fs::read_to_string(common::repo_root().join("docs/hls.md")).expect("docs/hls.md");
    let start = doc
        .find("```nginx\n")
        .expect("an nginx block in docs/hls.md")
        + 9;
    let block = &doc[start..];
    let block = &block[..block.find("```").expect("the block ends")];
    for needle in [
        "/var/cache/nginx/dionysia-hls",
        "server 127.0.0.1:8080;",
        "listen 80;",
    ] {
        assert!(
            block.contains(needle),
            "docs/hls.md's nginx block has no {needle:?}"
        );
    }
    block
        .replace("/var/cache/nginx/dionysia-hls", cache_dir)
        .replace(
            "server 127.0.0.1:8080;",
            &format!("server 127.0.0.1:{origin_port};"),
        )
        .replace("listen 80;", &format!("listen 127.0.0.1:{listen_port};"))
}

/// Starts nginx under `dir` (pid, logs, temp paths, cache) in the foreground.
fn start_nginx(dir: &common::TempDir, origin_port: u16) -> (Killed, u16) {
    assert!(
        std::path::Path::new(NGINX).exists(),
        "{NGINX} is not installed: run scripts/test.sh"
    );
    let port = common::free_tcp_port();
    let d = dir.path_str();
    let server_block = documented_config(&format!("{d}/cache"), origin_port, port);
    // As root, workers would drop to `nobody`, who cannot write our temp dirs.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let user = if is_root { "user root;" } else { "" };
    let conf = format!(
        "{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format origin '$status \"$upstream_addr\" $upstream_cache_status $request_uri';
    access_log {d}/access.log origin;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{server_block}
}}
"
    );
    let conf_path = dir.path.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(NGINX)
        .args(["-p", d, "-c"])
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nginx");
    let nginx = Killed(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (nginx, port)
}

/// The last `EXT-X-PART` of a media playlist as (msn, part index), and the
/// URIs of every part it lists.
fn parts_of(playlist: &str) -> (Option<(u64, u64)>, Vec<String>) {
    let mut msn = 0;
    let mut index = 0;
    let mut last = None;
    let mut uris = Vec::new();
    for line in playlist.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.trim().parse().unwrap_or(0);
        } else if let Some(attrs) = line.strip_prefix("#EXT-X-PART:") {
            if let Some(uri) = attrs
                .split("URI=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            {
                uris.push(uri.to_owned());
            }
            last = Some((msn, index));
            index += 1;
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            // A segment URI closes the segment its parts belonged to.
            msn += 1;
            index = 0;
        }
    }
    (last, uris)
}

/// What all clients did.
#[derive(Default)]
struct Tally {
    /// Requests per URI (path and query).
    requests: HashMap<String, u64>,
    failures: Vec<String>,
}

/// One LL-HLS client for `seconds`: blocking reload for the part after the
/// last listed one, then every new part, as hls.js does with
/// `lowLatencyMode`.
fn client(base: &str, media: &str, seconds: u64, tally: &Mutex<Tally>) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let dir = media.rsplit_once('/').map_or("", |(d, _)| d);
    let get = |path: &str| -> Option<String> {
        let r = http.get(format!("{base}{path}")).send();
        let mut t = tally.lock().unwrap();
        *t.requests.entry(path.to_owned()).or_default() += 1;
        match r {
            Ok(r) if r.status().is_success() => {
                drop(t);
                r.text().ok()
            }
            Ok(r) => {
                t.failures.push(format!("{path}: {}", r.status()));
                None
            }
            Err(e) => {
                t.failures.push(format!("{path}: {e}"));
                None
            }
        }
    };
    let Some(mut playlist) = get(media) else {
        return;
    };
    let mut fetched: HashSet<String> = parts_of(&playlist).1.into_iter().collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let (Some((msn, part)), uris) = parts_of(&playlist) else {
            return;
        };
        for uri in uris {
            if fetched.insert(uri.clone()) {
                get(&format!("{dir}/{uri}"));
            }
        }
        match get(&format!("{media}?_HLS_msn={msn}&_HLS_part={}", part + 1)) {
            Some(next) => playlist = next,
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn nginx_with_the_documented_config_collapses_ll_hls_requests_of_many_clients() {
    let port = common::free_tcp_port();
    let server = common::Server::start(&[
        "--room",
        &format!("{ROOM}:{KEY}"),
        "--rtmp-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let dir = common::TempDir::new("nginx");
    let (_nginx, nginx_port) = start_nginx(&dir, server.http_port);
    let cdn = format!("http://127.0.0.1:{nginx_port}");
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _publisher = Killed(
        Command::new(FFMPEG)
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(["-t", "60", "-c:v", "libx264", "-preset", "veryfast"])
            .args([
                "-tune",
                "zerolatency",
                "-bf",
                "0",
                "-g",
                "30",
                "-b:v",
                "800k",
            ])
            .args(["-c:a", "aac", "-f", "flv"])
            .arg(format!("rtmp://127.0.0.1:{port}/live/{KEY}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ffmpeg"),
    );

    // The multivariant playlist through nginx names the video rendition.
    let http = reqwest::blocking::Client::new();
    let start = Instant::now();
    let media = loop {
        let text = http
            .get(format!("{cdn}/hls/{ROOM}/index.m3u8"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.text().ok())
            .unwrap_or_default();
        if let Some(uri) = text.lines().find(|l| l.ends_with("/video/media.m3u8")) {
            break format!("/hls/{ROOM}/{uri}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no playlist through nginx: {text}\nlog:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // Everything before the clients start is not counted.
    let log_path = dir.path.join("access.log");
    let skip = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .count();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (cdn, media, tally) = (cdn.clone(), media.clone(), tally.clone());
            std::thread::spawn(move || client(&cdn, &media, PLAY_SECONDS, &tally))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300)); // nginx writes its log lines

    let tally = tally.lock().unwrap();
    let client_requests: u64 = tally.requests.values().sum();
    let distinct = tally.requests.len() as u64;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .skip(skip)
        // The clients' requests only (not the warm-up's index.m3u8, whose
        // log line may land after the count was taken).
        .filter(|l| {
            l.rsplit(' ')
                .next()
                .is_some_and(|uri| tally.requests.contains_key(uri))
        })
        .collect();
    let to_origin: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.contains("\"-\""))
        .collect();
    let mut statuses: HashMap<&str, usize> = HashMap::new();
    for l in &lines {
        *statuses
            .entry(l.split(' ').nth(2).unwrap_or("?"))
            .or_default() += 1;
    }
    let summary = format!(
        "{CLIENTS} clients, {PLAY_SECONDS} s: {client_requests} requests for {distinct} distinct URLs; \
         nginx logged {} of those requests, {} went to the origin; cache statuses {statuses:?}; \
         {} failures",
        lines.len(),
        to_origin.len(),
        tally.failures.len()
    );
    eprintln!("LL-HLS through nginx: {summary}");
    assert!(
        tally.failures.len() as u64 * 20 <= client_requests,
        "too many failed requests: {summary}\n{:?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
    // The clients played along: many parts and playlist versions, each asked
    // for by most of the clients.
    assert!(distinct >= 2 * PLAY_SECONDS, "{summary}");
    assert!(
        client_requests >= distinct * CLIENTS as u64 / 2,
        "the clients did not ask for the same URLs: {summary}"
    );
    assert_eq!(
        lines.len() as u64,
        client_requests,
        "nginx logged every client request: {summary}"
    );
    // About one origin request per URL, not one per client.
    assert!(
        (to_origin.len() as u64) <= distinct + distinct / 5 + 3,
        "the origin saw {} requests for {distinct} URLs: {summary}\n{}",
        to_origin.len(),
        to_origin.join("\n")
    );
}
