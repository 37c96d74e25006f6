//! What `/proc` tells about the server under test: its CPU time (whole
//! process and per thread name), its resident memory, the pid listening on
//! a TCP port, and the kernel's UDP drop counters.

use std::collections::BTreeMap;
use std::fs;

/// Clock ticks per second of `/proc/*/stat` times.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a `stat` line, in seconds, and the `comm` field.
fn parse_stat(text: &str) -> Option<(String, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / ticks_per_sec()))
}

/// CPU seconds the process has used (all threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|(_, s)| s)
}

/// CPU seconds per thread name (threads of the same name added).
pub fn thread_cpu_seconds(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path().join("stat");
        if let Some((comm, secs)) = fs::read_to_string(path).ok().and_then(|t| parse_stat(&t)) {
            *out.entry(comm).or_insert(0.0) += secs;
        }
    }
    out
}

/// Resident memory, KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The pid of the process with a TCP socket listening on `port`.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A: LISTEN
            if local_port == Some(port) && *state == "0A" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.to_str() == Some(i.as_str())) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The kernel's UDP counters (`/proc/net/snmp`): receive-buffer and other
/// input errors, machine-wide. A rise during a run means datagrams were
/// dropped before any process read them.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpCounters {
    pub in_errors: u64,
    pub rcvbuf_errors: u64,
    pub sndbuf_errors: u64,
}

pub fn udp_counters() -> UdpCounters {
    let Ok(text) = fs::read_to_string("/proc/net/snmp") else {
        return UdpCounters::default();
    };
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else {
        return UdpCounters::default();
    };
    let get = |key: &str| -> u64 {
        names
            .split_whitespace()
            .position(|n| n == key)
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    UdpCounters {
        in_errors: get("InErrors"),
        rcvbuf_errors: get("RcvbufErrors"),
        sndbuf_errors: get("SndbufErrors"),
    }
}

/// Datagrams the kernel dropped on the UDP sockets that `pid` holds (the
/// `drops` column of `/proc/net/udp{,6}`): a full receive buffer, i.e. the
/// process did not read fast enough.
pub fn udp_socket_drops(pid: u32) -> u64 {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                if let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut drops = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(9).is_some_and(|i| inodes.contains(*i)) {
                drops += f.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    drops
}

/// The machine a run happened on, for the record.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    /// 1-minute load average when the window began and ended.
    pub load_before: f64,
    pub load_after: f64,
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_default()
}

pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(!thread_cpu_seconds(pid).is_empty());
    }

    #[test]
    fn parses_comm_with_spaces() {
        let line = "42 (tokio rt (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        let (comm, secs) = parse_stat(line).unwrap();
        assert_eq!(comm, "tokio rt (x)");
        assert!((secs - 300.0 / ticks_per_sec()).abs() < 1e-9);
    }

    #[test]
    fn finds_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }
}
