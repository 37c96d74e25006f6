//! `GET /metrics`: the server's state in the Prometheus text format
//! (version 0.0.4), for any Prometheus-compatible scraper.
//!
//! ```text
//!  scraper ──GET /metrics (admin bearer)──► render(rooms, statuses, audience, process)
//! ```
//!
//! Everything is read at scrape time from what the API reads too (the SFU's
//! room statuses, the HLS audience, the store's rooms), so a scrape costs one
//! status round trip to the media thread and nothing on the media path.
//! Room names are labels; they may name private rooms, hence the admin token.

use std::fmt::Write as _;

use sfu::RoomStatus;

/// What one scrape shows.
pub struct Snapshot<'a> {
    /// Rooms in the database.
    pub rooms: usize,
    pub statuses: &'a [RoomStatus],
    /// HLS viewers of a room.
    pub hls_viewers: &'a dyn Fn(&str) -> usize,
    pub uptime_secs: f64,
    /// The HLS ladder's overload shedding: renditions stopped, pictures skipped.
    pub ladder_rungs_dropped: u64,
    pub ladder_frames_dropped: u64,
    pub process: Option<Process>,
}

/// The process's own figures, from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Process {
    pub cpu_secs: f64,
    pub resident_bytes: u64,
    pub threads: u64,
}

impl Process {
    /// Reads `/proc/self/stat` and `/proc/self/status` (Linux); `None` elsewhere.
    pub fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Process::parse(&stat, &status)
    }

    /// CPU time from `stat`: fields after the command name (which may hold
    /// spaces and parentheses, so parsing starts after the last `)`), utime
    /// the 14th and stime the 15th, in USER_HZ ticks (100 per second on
    /// Linux). Resident size (`VmRSS`, kB) and threads from `status`.
    fn parse(stat: &str, status: &str) -> Option<Process> {
        const USER_HZ: f64 = 100.0;
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state).
        let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        let status_value = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        };
        Some(Process {
            cpu_secs: (field(14)? + field(15)?) as f64 / USER_HZ,
            resident_bytes: status_value("VmRSS:")? * 1024,
            threads: status_value("Threads:")?,
        })
    }
}

/// The whole exposition.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(2048 + 512 * s.statuses.len());
    let live = s.statuses.iter().filter(|r| r.live).count();
    let hls: Vec<usize> = s
        .statuses
        .iter()
        .map(|r| (s.hls_viewers)(&r.room))
        .collect();

    family(&mut out, "dionysia_info", "gauge", "The running server.");
    sample(
        &mut out,
        "dionysia_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    family(
        &mut out,
        "dionysia_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    sample(&mut out, "dionysia_uptime_seconds", &[], s.uptime_secs);
    family(
        &mut out,
        "dionysia_rooms",
        "gauge",
        "Rooms in the database.",
    );
    sample(&mut out, "dionysia_rooms", &[], s.rooms as f64);
    family(
        &mut out,
        "dionysia_rooms_live",
        "gauge",
        "Rooms with a connected publisher.",
    );
    sample(&mut out, "dionysia_rooms_live", &[], live as f64);

    family(
        &mut out,
        "dionysia_viewers",
        "gauge",
        "Viewers by protocol (HLS: sources that fetched a playlist lately).",
    );
    let webrtc: usize = s.statuses.iter().map(|r| r.viewers.len()).sum();
    sample(
        &mut out,
        "dionysia_viewers",
        &[("protocol", "webrtc")],
        webrtc as f64,
    );
    sample(
        &mut out,
        "dionysia_viewers",
        &[("protocol", "hls")],
        hls.iter().sum::<usize>() as f64,
    );

    family(
        &mut out,
        "dionysia_room_live",
        "gauge",
        "1 while the room has a connected publisher.",
    );
    for r in s.statuses {
        sample(
            &mut out,
            "dionysia_room_live",
            &[("room", &r.room)],
            f64::from(u8::from(r.live)),
        );
    }
    family(
        &mut out,
        "dionysia_room_viewers",
        "gauge",
        "A room's viewers by protocol.",
    );
    for (r, hls) in s.statuses.iter().zip(&hls) {
        let room = r.room.as_str();
        sample(
            &mut out,
            "dionysia_room_viewers",
            &[("room", room), ("protocol", "webrtc")],
            r.viewers.len() as f64,
        );
        sample(
            &mut out,
            "dionysia_room_viewers",
            &[("room", room), ("protocol", "hls")],
            *hls as f64,
        );
    }
    family(
        &mut out,
        "dionysia_room_publisher_uptime_seconds",
        "gauge",
        "Seconds since the room's publisher session began.",
    );
    for r in s.statuses {
        if let Some(p) = &r.publisher {
            sample(
                &mut out,
                "dionysia_room_publisher_uptime_seconds",
                &[("room", &r.room), ("ingest", &p.ingest)],
                p.uptime_secs,
            );
        }
    }
    family(
        &mut out,
        "dionysia_room_layer_bitrate_bps",
        "gauge",
        "Measured ingest bitrate of each track layer, bits per second.",
    );
    for r in s.statuses {
        for t in &r.tracks {
            for l in &t.layers {
                let rid = l.rid.as_deref().unwrap_or("");
                sample(
                    &mut out,
                    "dionysia_room_layer_bitrate_bps",
                    &[
                        ("room", &r.room),
                        ("kind", &t.kind),
                        ("codec", &t.codec),
                        ("rid", rid),
                    ],
                    l.bitrate as f64,
                );
            }
        }
    }
    family(
        &mut out,
        "dionysia_room_layer_height_pixels",
        "gauge",
        "Picture height of each video layer (0: not known yet).",
    );
    for r in s.statuses {
        for t in r.tracks.iter().filter(|t| t.kind == "video") {
            for l in &t.layers {
                let rid = l.rid.as_deref().unwrap_or("");
                sample(
                    &mut out,
                    "dionysia_room_layer_height_pixels",
                    &[("room", &r.room), ("rid", rid)],
                    f64::from(l.height),
                );
            }
        }
    }
    family(
        &mut out,
        "dionysia_room_viewer_packets_forwarded",
        "gauge",
        "RTP packets sent to the room's current WebRTC viewers since each joined.",
    );
    family(
        &mut out,
        "dionysia_room_viewer_packets_dropped",
        "gauge",
        "Source packets not sent to the room's current viewers (other layers, before a start).",
    );
    for r in s.statuses {
        let fwd: u64 = r.viewers.iter().map(|v| v.packets_forwarded).sum();
        let drop: u64 = r.viewers.iter().map(|v| v.packets_dropped).sum();
        sample(
            &mut out,
            "dionysia_room_viewer_packets_forwarded",
            &[("room", &r.room)],
            fwd as f64,
        );
        sample(
            &mut out,
            "dionysia_room_viewer_packets_dropped",
            &[("room", &r.room)],
            drop as f64,
        );
    }

    family(
        &mut out,
        "dionysia_hls_ladder_rungs_dropped_total",
        "counter",
        "HLS ladder renditions stopped because transcoding fell behind live.",
    );
    sample(
        &mut out,
        "dionysia_hls_ladder_rungs_dropped_total",
        &[],
        s.ladder_rungs_dropped as f64,
    );
    family(
        &mut out,
        "dionysia_hls_ladder_frames_dropped_total",
        "counter",
        "Source pictures the HLS ladder skipped to stay live.",
    );
    sample(
        &mut out,
        "dionysia_hls_ladder_frames_dropped_total",
        &[],
        s.ladder_frames_dropped as f64,
    );

    if let Some(p) = s.process {
        family(
            &mut out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, seconds.",
        );
        sample(&mut out, "process_cpu_seconds_total", &[], p.cpu_secs);
        family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, bytes.",
        );
        sample(
            &mut out,
            "process_resident_memory_bytes",
            &[],
            p.resident_bytes as f64,
        );
        family(
            &mut out,
            "process_threads",
            "gauge",
            "Threads of the process.",
        );
        sample(&mut out, "process_threads", &[], p.threads as f64);
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfu::{LayerState, PublisherStatus, TrackStatus, ViewerSummary};

    fn status(room: &str, live: bool, viewers: usize) -> RoomStatus {
        RoomStatus {
            room: room.into(),
            live,
            publisher: live.then(|| PublisherStatus {
                session: "s".into(),
                ingest: "rtmp".into(),
                connected: true,
                uptime_secs: 12.5,
            }),
            tracks: vec![TrackStatus {
                kind: "video".into(),
                codec: "H264".into(),
                layers: vec![LayerState {
                    rid: Some("h".into()),
                    bitrate: 2_500_000,
                    height: 720,
                    active: true,
                }],
            }],
            viewers: (0..viewers)
                .map(|i| ViewerSummary {
                    session: format!("v{i}"),
                    connected: true,
                    uptime_secs: 1.0,
                    estimated_bitrate: None,
                    layer: None,
                    packets_forwarded: 100,
                    packets_dropped: 7,
                })
                .collect(),
        }
    }

    #[test]
    fn renders_rooms_viewers_layers_and_the_process() {
        let statuses = [status("show", true, 2), status("quiet", false, 0)];
        let hls = |room: &str| if room == "show" { 5 } else { 0 };
        let text = render(&Snapshot {
            rooms: 3,
            statuses: &statuses,
            hls_viewers: &hls,
            uptime_secs: 60.0,
            ladder_rungs_dropped: 1,
            ladder_frames_dropped: 42,
            process: Some(Process {
                cpu_secs: 1.5,
                resident_bytes: 4096,
                threads: 9,
            }),
        });
        for line in [
            "dionysia_rooms 3",
            "dionysia_rooms_live 1",
            "dionysia_viewers{protocol=\"webrtc\"} 2",
            "dionysia_viewers{protocol=\"hls\"} 5",
            "dionysia_room_live{room=\"show\"} 1",
            "dionysia_room_live{room=\"quiet\"} 0",
            "dionysia_room_viewers{room=\"show\",protocol=\"hls\"} 5",
            "dionysia_room_publisher_uptime_seconds{room=\"show\",ingest=\"rtmp\"} 12.5",
            "dionysia_room_layer_bitrate_bps{room=\"show\",kind=\"video\",codec=\"H264\",rid=\"h\"} 2500000",
            "dionysia_room_layer_height_pixels{room=\"show\",rid=\"h\"} 720",
            "dionysia_room_viewer_packets_forwarded{room=\"show\"} 200",
            "dionysia_room_viewer_packets_dropped{room=\"show\"} 14",
            "process_cpu_seconds_total 1.5",
            "dionysia_hls_ladder_rungs_dropped_total 1",
            "dionysia_hls_ladder_frames_dropped_total 42",
            "process_resident_memory_bytes 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // Every sample belongs to a family declared before it, once.
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(name) = l.strip_prefix("# TYPE ") {
                assert!(declared.insert(name.split(' ').next().unwrap().to_string()));
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} used before its TYPE");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\"y\\z\nw")], 1.0);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
    }

    #[test]
    fn proc_files_are_parsed_past_a_command_with_spaces() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 100 123456789 300 18446744073709551615";
        let status = "Name:\tdionysia\nVmRSS:\t   20480 kB\nThreads:\t7\n";
        let p = Process::parse(stat, status).unwrap();
        assert_eq!(p.cpu_secs, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.resident_bytes, 20480 * 1024);
        assert_eq!(Process::parse("garbage", status), None);
        assert_eq!(Process::parse(stat, "Name: x"), None);
        // The real files parse.
        assert!(Process::read().is_some_and(|p| p.resident_bytes > 0 && p.threads >= 1));
    }
}
