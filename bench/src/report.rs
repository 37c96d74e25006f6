//! The figures of a run: gathered from the viewers' counters and results,
//! the publisher, and `/proc`, then printed as a table or written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::media::Clip;
use crate::procfs::{self, UdpCounters};
use crate::publisher::PublisherReport;
use crate::viewer::{Shared, ViewerResult};
use crate::Options;

/// Counters at one instant, for the measuring window's differences.
pub struct Snapshot {
    at: Instant,
    video: u64,
    audio: u64,
    rtx: u64,
    bytes: u64,
    server_cpu: Option<f64>,
    server_threads: BTreeMap<String, f64>,
    own_cpu: Option<f64>,
    udp: UdpCounters,
    server_drops: Option<u64>,
    own_drops: u64,
    load: f64,
}

impl Snapshot {
    pub fn take(shared: &Shared, server_pid: Option<u32>) -> Snapshot {
        let sum = |f: fn(&crate::viewer::ViewerCounters) -> &AtomicU64| -> u64 {
            shared
                .counters
                .iter()
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum()
        };
        Snapshot {
            at: Instant::now(),
            video: sum(|c| &c.video_packets),
            audio: sum(|c| &c.audio_packets),
            rtx: sum(|c| &c.rtx_packets),
            bytes: sum(|c| &c.bytes),
            server_cpu: server_pid.and_then(procfs::cpu_seconds),
            server_threads: server_pid
                .map(procfs::thread_cpu_seconds)
                .unwrap_or_default(),
            own_cpu: procfs::cpu_seconds(std::process::id()),
            udp: procfs::udp_counters(),
            server_drops: server_pid.map(procfs::udp_socket_drops),
            own_drops: procfs::udp_socket_drops(std::process::id()),
            load: procfs::load_average(),
        }
    }
}

pub struct Inputs<'a> {
    pub opts: &'a Options,
    pub clip: &'a Clip,
    pub encode_secs: f64,
    pub shared: &'a Shared,
    pub ramp_ns: u64,
    pub results: Vec<ViewerResult>,
    pub errors: Vec<String>,
    pub before: Snapshot,
    pub after: Snapshot,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub server_pid: Option<u32>,
    pub publisher: PublisherReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Option<Percentiles> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(Percentiles {
            samples: v.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: v[v.len() - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerFigure {
    pub rid: String,
    pub width: usize,
    pub height: usize,
    pub kbps: f64,
    pub packets_per_sec: f64,
}

/// One viewer's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerFigure {
    pub index: usize,
    pub full_check: bool,
    pub video_packets: u64,
    pub audio_packets: u64,
    pub lost: u64,
    pub connect_ms: Option<f64>,
    pub first_frame_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub viewers: usize,
    pub viewers_connected: usize,
    pub viewers_with_video: usize,
    pub viewers_with_audio: usize,
    pub viewers_failed: usize,
    pub full_check_viewers: usize,
    pub errors: Vec<String>,
    pub layer_requested: Option<String>,
    pub twcc: bool,
    pub clip: Vec<LayerFigure>,
    pub encode_secs: f64,
    /// Ramp start → the last viewer's DTLS done / first video packet.
    pub connect_all_secs: Option<f64>,
    pub media_all_secs: Option<f64>,
    /// Per viewer: POST → answer, POST → DTLS done, POST → first video packet (ms).
    pub answer_ms: Option<Percentiles>,
    pub connect_ms: Option<Percentiles>,
    pub first_frame_ms: Option<Percentiles>,
    /// Full viewers whose first video packet began a keyframe.
    pub first_frame_keyframes: usize,
    pub window_secs: f64,
    pub delivered_pps: f64,
    pub delivered_bps: f64,
    pub video_pps: f64,
    pub audio_pps: f64,
    pub rtx_pps: f64,
    pub server_cpu: Option<f64>,
    pub server_threads_cpu: BTreeMap<String, f64>,
    pub pps_per_server_core: Option<f64>,
    pub generator_cpu: Option<f64>,
    pub packets_expected: u64,
    pub packets_lost: u64,
    pub loss_pct: f64,
    pub viewers_with_loss: usize,
    pub video_lost: u64,
    pub audio_lost: u64,
    /// A few viewers' gaps: (viewer, stream, packets before, skipped, ms since start).
    pub gap_samples: Vec<(usize, String, u64, i64, u64)>,
    pub worst_viewer_loss_pct: f64,
    /// Forwarding delay, publisher send → viewer receive (µs).
    pub delay_us: Option<Percentiles>,
    pub payloads_matched: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_rss_per_viewer_kib: Option<f64>,
    pub udp_rcvbuf_errors: u64,
    pub udp_in_errors: u64,
    /// Drops on the server's / the generator's own UDP sockets (window).
    pub server_socket_drops: Option<u64>,
    pub generator_socket_drops: u64,
    pub server_pid: Option<u32>,
    pub machine: procfs::Machine,
    pub publisher: PublisherReport,
    pub per_viewer: Vec<ViewerFigure>,
}

impl Report {
    pub fn build(i: Inputs<'_>) -> Report {
        let n = i.opts.viewers;
        let c = &i.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ms = |from: u64, to: u64| (to.saturating_sub(from)) as f64 / 1e6;
        let connected: Vec<usize> = (0..n).filter(|&v| load(&c[v].connected_ns) > 0).collect();
        let with_video = (0..n).filter(|&v| load(&c[v].first_video_ns) > 0).count();
        let with_audio = (0..n).filter(|&v| load(&c[v].first_audio_ns) > 0).count();
        let all_connected = connected.len() == n;
        let last_connect = connected.iter().map(|&v| load(&c[v].connected_ns)).max();
        let last_video = (0..n).map(|v| load(&c[v].first_video_ns)).max();
        let connect_ms = Percentiles::of(
            connected
                .iter()
                .map(|&v| ms(load(&c[v].post_ns), load(&c[v].connected_ns)))
                .collect(),
        );
        let answer_ms = Percentiles::of(
            (0..n)
                .filter(|&v| load(&c[v].answered_ns) > 0)
                .map(|v| ms(load(&c[v].post_ns), load(&c[v].answered_ns)))
                .collect(),
        );
        let first_frame_ms = Percentiles::of(
            (0..n)
                .filter(|&v| load(&c[v].first_video_ns) > 0)
                .map(|v| ms(load(&c[v].post_ns), load(&c[v].first_video_ns)))
                .collect(),
        );
        let secs = i
            .after
            .at
            .duration_since(i.before.at)
            .as_secs_f64()
            .max(1e-6);
        let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
        let video_pps = rate(i.before.video, i.after.video);
        let audio_pps = rate(i.before.audio, i.after.audio);
        let delivered_pps = video_pps + audio_pps;
        let server_cpu = match (i.before.server_cpu, i.after.server_cpu) {
            (Some(a), Some(b)) => Some((b - a) / secs),
            _ => None,
        };
        let generator_cpu = match (i.before.own_cpu, i.after.own_cpu) {
            (Some(a), Some(b)) => Some((b - a) / secs),
            _ => None,
        };
        let mut expected = 0;
        let mut lost = 0;
        let mut with_loss = 0;
        let mut worst: f64 = 0.0;
        let mut delays = Vec::new();
        let mut matched = 0;
        let mut keyframes = 0;
        let mut full = 0;
        let (mut video_lost, mut audio_lost) = (0, 0);
        let mut gap_samples = Vec::new();
        let mut errors = i.errors.clone();
        for r in &i.results {
            let e = r.video.expected() + r.audio.expected();
            let l = r.video.lost() + r.audio.lost();
            expected += e;
            lost += l;
            video_lost += r.video.lost();
            audio_lost += r.audio.lost();
            for (name, t) in [("video", &r.video), ("audio", &r.audio)] {
                for g in t.gaps.iter().take(2) {
                    if gap_samples.len() < 20 {
                        gap_samples.push((r.index, name.to_string(), g.0, g.1, g.2));
                    }
                }
            }
            if l > 0 {
                with_loss += 1;
                worst = worst.max(l as f64 * 100.0 / e.max(1) as f64);
            }
            if r.full {
                full += 1;
                matched += r.matched;
                delays.extend(r.delays_us.iter().map(|&d| d as f64));
                if r.first_video_keyframe == Some(true) {
                    keyframes += 1;
                }
            }
            if let Some(err) = &r.error {
                errors.push(format!("viewer {}: {err}", r.index));
            }
        }
        errors.truncate(20);
        let since_post = |v: usize, a: &AtomicU64| {
            let t = load(a);
            (t > 0).then(|| ms(load(&c[v].post_ns), t))
        };
        let mut per_viewer: Vec<ViewerFigure> = i
            .results
            .iter()
            .map(|r| ViewerFigure {
                index: r.index,
                full_check: r.full,
                video_packets: r.video.received,
                audio_packets: r.audio.received,
                lost: r.video.lost() + r.audio.lost(),
                connect_ms: since_post(r.index, &c[r.index].connected_ns),
                first_frame_ms: since_post(r.index, &c[r.index].first_video_ns),
            })
            .collect();
        per_viewer.sort_by_key(|v| v.index);
        let failed = (0..n)
            .filter(|&v| c[v].failed.load(Ordering::Relaxed))
            .count();
        Report {
            viewers: n,
            viewers_connected: connected.len(),
            viewers_with_video: with_video,
            viewers_with_audio: with_audio,
            viewers_failed: failed,
            full_check_viewers: full,
            errors,
            layer_requested: i.opts.layer.clone(),
            twcc: i.opts.twcc,
            clip: i
                .clip
                .layers
                .iter()
                .map(|l| LayerFigure {
                    rid: l.spec.rid.into(),
                    width: l.spec.width,
                    height: l.spec.height,
                    kbps: l.bitrate() / 1000.0,
                    packets_per_sec: l.packets() as f64 / l.frames.len() as f64
                        * crate::media::FPS as f64,
                })
                .collect(),
            encode_secs: i.encode_secs,
            connect_all_secs: last_connect
                .filter(|_| all_connected)
                .map(|t| ms(i.ramp_ns, t) / 1e3),
            media_all_secs: last_video
                .filter(|_| with_video == n)
                .map(|t| ms(i.ramp_ns, t) / 1e3),
            answer_ms,
            connect_ms,
            first_frame_ms,
            first_frame_keyframes: keyframes,
            window_secs: secs,
            delivered_pps,
            delivered_bps: rate(i.before.bytes, i.after.bytes) * 8.0,
            video_pps,
            audio_pps,
            rtx_pps: rate(i.before.rtx, i.after.rtx),
            server_cpu,
            server_threads_cpu: crate::per_sec(
                &i.before.server_threads,
                &i.after.server_threads,
                secs,
            ),
            pps_per_server_core: server_cpu.filter(|c| *c > 0.0).map(|c| delivered_pps / c),
            generator_cpu,
            packets_expected: expected,
            packets_lost: lost,
            loss_pct: lost as f64 * 100.0 / expected.max(1) as f64,
            viewers_with_loss: with_loss,
            video_lost,
            audio_lost,
            gap_samples,
            worst_viewer_loss_pct: worst,
            delay_us: Percentiles::of(delays),
            payloads_matched: matched,
            server_rss_before_kib: i.rss_before,
            server_rss_after_kib: i.rss_after,
            server_rss_per_viewer_kib: match (i.rss_before, i.rss_after) {
                (Some(a), Some(b)) => Some((b as f64 - a as f64) / n as f64),
                _ => None,
            },
            udp_rcvbuf_errors: i
                .after
                .udp
                .rcvbuf_errors
                .saturating_sub(i.before.udp.rcvbuf_errors),
            udp_in_errors: i.after.udp.in_errors.saturating_sub(i.before.udp.in_errors),
            server_socket_drops: match (i.before.server_drops, i.after.server_drops) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            generator_socket_drops: i.after.own_drops.saturating_sub(i.before.own_drops),
            server_pid: i.server_pid,
            machine: procfs::Machine {
                cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
                cpu_model: procfs::cpu_model(),
                load_before: i.before.load,
                load_after: i.after.load,
            },
            publisher: i.publisher,
            per_viewer,
        }
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>, unit: &str, digits: usize| match v {
            Some(x) => format!("{x:.digits$}{unit}"),
            None => "n/a".into(),
        };
        let pct = |p: &Option<Percentiles>, scale: f64, unit: &str| match p {
            Some(p) => format!(
                "p50 {:.2}{unit}  p90 {:.2}{unit}  p99 {:.2}{unit}  max {:.2}{unit}  ({} samples)",
                p.p50 / scale,
                p.p90 / scale,
                p.p99 / scale,
                p.max / scale,
                p.samples
            ),
            None => "n/a".into(),
        };
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<30} {v}");
        };
        row(
            "viewers",
            format!(
                "{} requested, {} DTLS connected, {} with video, {} with audio, {} failed",
                self.viewers,
                self.viewers_connected,
                self.viewers_with_video,
                self.viewers_with_audio,
                self.viewers_failed
            ),
        );
        row(
            "stream",
            self.clip
                .iter()
                .map(|l| format!("{} {}p {:.0} kbps", l.rid, l.height, l.kbps))
                .collect::<Vec<_>>()
                .join(", ")
                + " + Opus",
        );
        row(
            "layer",
            self.layer_requested
                .clone()
                .unwrap_or_else(|| "auto".into())
                + if self.twcc { " (twcc on)" } else { "" },
        );
        row("connect all (DTLS)", opt(self.connect_all_secs, " s", 2));
        row("all receiving video", opt(self.media_all_secs, " s", 2));
        row("WHEP answer per viewer", pct(&self.answer_ms, 1.0, " ms"));
        row(
            "connect per viewer (DTLS)",
            pct(&self.connect_ms, 1.0, " ms"),
        );
        row(
            "first frame per viewer",
            pct(&self.first_frame_ms, 1.0, " ms"),
        );
        row(
            "first packet is keyframe",
            format!(
                "{} of {} checked viewers",
                self.first_frame_keyframes, self.full_check_viewers
            ),
        );
        row("window", format!("{:.1} s", self.window_secs));
        row(
            "delivered",
            format!(
                "{:.0} packets/s ({:.0} video, {:.0} audio, {:.0} rtx), {:.1} Mbit/s",
                self.delivered_pps,
                self.video_pps,
                self.audio_pps,
                self.rtx_pps,
                self.delivered_bps / 1e6
            ),
        );
        row("server CPU", opt(self.server_cpu, " cores", 3));
        row(
            "server threads",
            self.server_threads_cpu
                .iter()
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        row(
            "packets/s per server core",
            opt(self.pps_per_server_core, "", 0),
        );
        row("generator CPU", opt(self.generator_cpu, " cores", 3));
        row(
            "loss",
            format!(
                "{:.4}% ({} of {}: {} video, {} audio), {} viewers with loss, worst {:.3}%",
                self.loss_pct,
                self.packets_lost,
                self.packets_expected,
                self.video_lost,
                self.audio_lost,
                self.viewers_with_loss,
                self.worst_viewer_loss_pct
            ),
        );
        row("forwarding delay", pct(&self.delay_us, 1000.0, " ms"));
        row(
            "server RSS",
            format!(
                "{} → {} KiB, {} per viewer",
                self.server_rss_before_kib
                    .map_or("n/a".into(), |v| v.to_string()),
                self.server_rss_after_kib
                    .map_or("n/a".into(), |v| v.to_string()),
                opt(self.server_rss_per_viewer_kib, " KiB", 1)
            ),
        );
        row(
            "kernel UDP drops",
            format!(
                "server sockets {}, generator sockets {}; machine-wide {} rcvbuf, {} in-errors",
                self.server_socket_drops
                    .map_or("n/a".into(), |d| d.to_string()),
                self.generator_socket_drops,
                self.udp_rcvbuf_errors,
                self.udp_in_errors
            ),
        );
        row(
            "machine",
            format!(
                "{} CPUs, {}; load average {:.2} → {:.2}",
                self.machine.cpus,
                self.machine.cpu_model,
                self.machine.load_before,
                self.machine.load_after
            ),
        );
        for e in self.errors.iter().take(5) {
            row("error", e.clone());
        }
        s
    }
}
