//! Shared support for the end-to-end tests: start the real `dionysia` binary on
//! free ports, wait until it answers, and run real clients (Node + Chromium,
//! Python + aiortc) that print one JSON object on stdout.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
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
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    /// Starts the server with loopback-only candidates plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Server {
        let http_port = free_tcp_port();
        let udp_port = free_udp_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dionysia"));
        cmd.args([
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
            "--udp-listen",
            &format!("0.0.0.0:{udp_port}"),
            "--public-ip",
            "127.0.0.1",
        ])
        .args(extra)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn dionysia");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
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

    /// Everything the server printed so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}\n--------------------", self.log_text());
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
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (run scripts/test.sh to install test tools)"));
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
    let last = stdout.lines().rev().find(|l| l.trim_start().starts_with('{'));
    match last.and_then(|l| serde_json::from_str(l).ok()) {
        Some(v) if out.status.success() => v,
        _ => panic!(
            "{program} {args:?} failed ({:?}, {:?} elapsed)\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status,
            start.elapsed()
        ),
    }
}
