//! Shared support for the end-to-end tests: start the real `dionysia` binary on
//! free ports, wait until it answers, and run real clients (Node + Chromium,
//! Python + aiortc) that print one JSON object on stdout.
#![allow(dead_code)]

pub mod stamp;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server; killed when dropped. Its log is kept for failure reports.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub http_port: u16,
    pub udp_port: u16,
    log: Arc<Mutex<Vec<String>>>,
    /// The database directory made for this server when the test named none.
    _data_dir: Option<TempDir>,
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "dionysia-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("temp dir path is UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs the `dionysia` binary with `args` (a CLI subcommand) to completion:
/// whether it exited 0, its stdout and its stderr.
pub fn dionysia_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dionysia"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run dionysia");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts the server with loopback-only candidates plus `extra` arguments.
    /// Unless `extra` names a `--data-dir`, the server gets a fresh, empty
    /// database directory of its own (removed when the server is dropped).
    pub fn start(extra: &[&str]) -> Server {
        Server::start_bound("127.0.0.1", extra)
    }

    /// Like [`Server::start`], with HTTP on `http_ip` (e.g. `0.0.0.0` for
    /// clients in a network namespace).
    pub fn start_bound(http_ip: &str, extra: &[&str]) -> Server {
        Server::start_full(http_ip, extra, &[])
    }

    /// Like [`Server::start`], with extra environment variables for the
    /// server process only (e.g. `DIONYSIA_RTMP_LISTEN`).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_full("127.0.0.1", extra, env)
    }

    fn start_full(http_ip: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let http_port = free_tcp_port();
        let udp_port = free_udp_port();
        let data_dir = (!extra.contains(&"--data-dir")).then(|| TempDir::new("data"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dionysia"));
        if let Some(d) = &data_dir {
            cmd.env("DIONYSIA_DATA_DIR", &d.path);
        }
        // RTMP's fixed default port (1935) would collide between test
        // servers: off unless the test asks for it.
        if !extra.contains(&"--rtmp-listen")
            && !env.iter().any(|(k, _)| *k == "DIONYSIA_RTMP_LISTEN")
        {
            cmd.env("DIONYSIA_RTMP_LISTEN", "off");
        }
        cmd.envs(env.iter().copied());
        cmd.args([
            "--http-listen",
            &format!("{http_ip}:{http_port}"),
            "--udp-listen",
            &format!("0.0.0.0:{udp_port}"),
            "--public-ip",
            "127.0.0.1",
        ])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn dionysia");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("DIONYSIA_TEST_ECHO").is_some() {
                        eprintln!("[server] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{http_port}"),
            http_port,
            udp_port,
            log,
            _data_dir: data_dir,
        };
        server.wait_ready(Duration::from_secs(20));
        server
    }

    fn wait_ready(&self, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http_port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become ready; log:\n{}", self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A server with `args` and RTMP on a free loopback port (`--rtmp-listen`),
    /// once that port accepts; and the port.
    pub fn start_with_rtmp(args: &[&str]) -> (Server, u16) {
        let port = free_tcp_port();
        let rtmp = format!("127.0.0.1:{port}");
        let mut all = args.to_vec();
        all.extend(["--rtmp-listen", &rtmp]);
        let server = Server::start(&all);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "RTMP port not open; log:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (server, port)
    }

    /// Everything the server printed so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether the server's log shows `needle` within `within`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- server log ----\n{}\n--------------------",
                self.log_text()
            );
        }
    }
}

/// Runs a client program that prints a single JSON object as its last stdout
/// line; panics with its output when it fails or prints no JSON.
pub fn run_json(program: &str, args: &[&str], cwd: &Path, timeout: Duration) -> serde_json::Value {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (run scripts/test.sh to install test tools)")
        });
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    match last.and_then(|l| serde_json::from_str(l).ok()) {
        Some(v) if out.status.success() => v,
        _ => panic!(
            "{program} {args:?} failed ({:?}, {:?} elapsed)\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status,
            start.elapsed()
        ),
    }
}

/// Like [`run_json`], but never panics on the client's exit status: returns
/// whether it exited 0, its last JSON line (`Null` if none) and its stderr.
/// For clients whose failure is the expected outcome (a refused key, a 409).
pub fn run_json_lenient(
    program: &str,
    args: &[&str],
    cwd: &Path,
    timeout: Duration,
) -> (bool, serde_json::Value, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (run scripts/test.sh to install test tools)")
        });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Python interpreter of the aiortc venv that `scripts/test.sh` builds
/// (`$DIONYSIA_TEST_PYTHON`); panics with how to get it when it is not set.
pub fn aiortc_python() -> String {
    match std::env::var("DIONYSIA_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "DIONYSIA_TEST_PYTHON is not set: run the tests through scripts/test.sh, which \
             installs aiortc (tests/interop/requirements.txt) into target/test-venv and exports it"
        ),
    }
}

/// A Python that can `import gi` with GStreamer's WebRTC typelibs (Debian's
/// python3-gi + gir1.2-gst-plugins-bad-1.0): `$DIONYSIA_TEST_GST_PYTHON` or
/// /usr/bin/python3. Panics with what to install when it cannot.
pub fn gst_python() -> String {
    let p = std::env::var("DIONYSIA_TEST_GST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let probe =
        "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstWebRTC','1.0'); \
                 gi.require_version('GstSdp','1.0'); gi.require_version('Nice','0.1'); \
                 from gi.repository import Gst, GstWebRTC, GstSdp, Nice";
    let ok = Command::new(&p)
        .args(["-c", probe])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        panic!(
            "{p} cannot import GStreamer's WebRTC bindings: run scripts/test.sh, or apt-get install \
             python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 \
             gir1.2-nice-0.1 openssl gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-nice"
        );
    }
    p
}
