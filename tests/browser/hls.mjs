#!/usr/bin/env node
// A Chromium WHIP publisher with three H.264 simulcast layers, watched as
// Low-Latency HLS by hls.js (from npm, `lowLatencyMode: true`) in a second
// page of the same headless Chromium.
//
//   node hls.mjs --base http://127.0.0.1:8080 --room hls --key secret \
//                [--seconds 15] [--layers 3] [--ready-file PATH] [--catch-up-rate 1]
//                [--republish 1]
//
// 1. Page A publishes the timestamped 1280×720 canvas + 440 Hz tone of
//    lib/in-page.mjs with `videoEncodings` h / m (½) / l (¼).
// 2. The script polls /hls/{room}/index.m3u8 until it lists `layers`
//    variants and the audio rendition (or 20 s pass), then writes the playlist's URL to
//    `--ready-file` (the Rust test runs ffprobe on it meanwhile).
// 3. Page B loads hls.js (node_modules/hls.js/dist/hls.min.js, served under
//    the server's origin by a Playwright route, as the page's CSP wants) and plays the multivariant playlist unmuted for
//    `seconds`: it samples currentTime every 100 ms (the longest time it
//    did not advance while playing is `maxStallMs`), counts shown frames,
//    reads the canvas' timestamp stamp back for glass-to-glass latency, and
//    records hls.js' own `latency` (seconds behind the live edge).
//
// 4. With `--republish 1`: the publisher reconnects (in-page `republish`),
//    and the script waits for index.m3u8 to name a new session
//    (`sessions.before` / `sessions.after`).
//
// Prints one JSON report as the last stdout line.

import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { launch, log, parseArgs, runReport, sleep } from './lib/harness.mjs';
import {
  installHelpers, publishCanvas, publisherStats, republish, stopPublisher,
} from './lib/in-page.mjs';

const args = parseArgs({
  base: undefined,
  room: undefined,
  key: undefined,
  seconds: 15,
  layers: 3,
  // The publisher's codec and picture (VP8 goes through the ladder).
  codec: 'video/H264',
  width: 1280,
  height: 720,
  // Variants to wait for in the multivariant playlist (0: `layers`).
  variants: 0,
  'ready-file': '',
  // hls.js maxLiveSyncPlaybackRate (1: hls.js' default, no catching up).
  'catch-up-rate': 1,
  // 1: after playing, republish (DELETE + new WHIP session) and wait for
  // the multivariant playlist to name a new session.
  republish: 0,
});
const HLS_JS = fileURLToPath(new URL('./node_modules/hls.js/dist/hls.min.js', import.meta.url));
const deadlineMs = 40000 + args.seconds * 1000;

/** Viewer page: plays `url` with hls.js for `seconds` and reports. */
async function playHls({ url, seconds, catchUpRate }) {
  const t = window.__t;
  const Hls = window.Hls;
  const out = {
    supported: Hls.isSupported(),
    hlsVersion: Hls.version,
    errors: [],
    levelSwitches: [],
  };
  if (!out.supported) return out;
  const video = document.createElement('video');
  video.autoplay = true;
  video.muted = false; // Chromium decodes (and counts) audio only when unmuted
  video.width = 640;
  document.body.append(video);
  // maxLiveSyncPlaybackRate > 1 lets hls.js play faster to reach its target
  // latency (default 1: it stays as far behind as it started).
  const hls = new Hls({ lowLatencyMode: true, backBufferLength: 10, maxLiveSyncPlaybackRate: catchUpRate });
  window.__hls = hls;
  hls.on(Hls.Events.ERROR, (_e, d) => {
    if (out.errors.length < 20) {
      out.errors.push({ type: d.type, details: d.details, fatal: d.fatal, url: d.url ?? d.frag?.url ?? null, code: d.response?.code ?? null,
        message: d.error?.message?.slice(0, 200) ?? null });
    }
  });
  hls.on(Hls.Events.LEVEL_SWITCHED, (_e, d) => out.levelSwitches.push(d.level));
  const parsed = new Promise((resolve) => hls.once(Hls.Events.MANIFEST_PARSED, resolve));
  const createdAt = performance.now();
  hls.loadSource(url);
  hls.attachMedia(video);
  await Promise.race([parsed, new Promise((r) => setTimeout(r, 10000))]);
  out.manifestMs = Math.round(performance.now() - createdAt);
  out.levels = hls.levels.map((l) => ({
    width: l.width, height: l.height, bitrate: l.bitrate, videoCodec: l.videoCodec, audioCodec: l.audioCodec,
  }));
  out.audioTracks = hls.audioTracks.map((a) => ({ name: a.name, groupId: a.groupId }));

  // Frames and glass-to-glass latency from the canvas stamp.
  const strip = document.createElement('canvas');
  strip.width = 1280;
  strip.height = t.BAND_H;
  const stripCtx = strip.getContext('2d', { willReadFrequently: true });
  const probe = { frames: 0, firstFrameAt: null, lastFrameAt: null, maxFrameGapMs: 0, latencies: [], unreadable: 0 };
  const onFrame = (now) => {
    probe.frames++;
    if (probe.firstFrameAt === null) probe.firstFrameAt = now;
    else probe.maxFrameGapMs = Math.max(probe.maxFrameGapMs, now - probe.lastFrameAt);
    probe.lastFrameAt = now;
    if (probe.frames % 10 === 0 && video.videoWidth) {
      const sh = (video.videoHeight * t.BAND_H) / 720;
      stripCtx.drawImage(video, 0, 0, video.videoWidth, sh, 0, 0, 1280, t.BAND_H);
      const stamp = t.readStamp(stripCtx.getImageData(0, 0, 1280, t.BAND_H).data, 1280);
      if (stamp === null) probe.unreadable++;
      else probe.latencies.push(t.ageOf(stamp));
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);

  // currentTime sampling: the longest stretch without progress once playing.
  let firstPlayingAt = null;
  let lastTime = -1;
  let lastAdvanceAt = null;
  let maxStallMs = 0;
  const hlsLatency = [];
  const startedAt = performance.now();
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      if (video.currentTime > lastTime) {
        if (lastTime >= 0 && firstPlayingAt === null) {
          firstPlayingAt = now;
          out.firstCurrentTime = Math.round(lastTime * 10) / 10;
        }
        lastTime = video.currentTime;
        lastAdvanceAt = now;
      } else if (firstPlayingAt !== null) {
        maxStallMs = Math.max(maxStallMs, now - lastAdvanceAt);
      }
      if (firstPlayingAt !== null && Number.isFinite(hls.latency)) hlsLatency.push(hls.latency);
      if (now - startedAt > seconds * 1000) {
        clearInterval(timer);
        resolve();
      }
    }, 100);
  });
  const sorted = (xs) => [...xs].sort((a, b) => a - b);
  const pct = (xs, p) => (xs.length ? sorted(xs)[Math.min(xs.length - 1, Math.floor(xs.length * p))] : null);
  out.firstPlayingMs = firstPlayingAt === null ? null : Math.round(firstPlayingAt - startedAt);
  out.playedSeconds = firstPlayingAt === null ? 0 : Math.round(((performance.now() - firstPlayingAt) / 1000) * 10) / 10;
  out.currentTime = Math.round(video.currentTime * 10) / 10;
  out.currentTimeAdvance = Math.round((video.currentTime - (out.firstCurrentTime ?? 0)) * 10) / 10;
  out.maxStallMs = Math.round(maxStallMs);
  out.frames = probe.frames;
  out.maxFrameGapMs = Math.round(probe.maxFrameGapMs);
  out.videoSize = [video.videoWidth, video.videoHeight];
  out.audioDecodedBytes = video.webkitAudioDecodedByteCount ?? null;
  out.videoDecodedBytes = video.webkitVideoDecodedByteCount ?? null;
  out.glassToGlassMs = { p50: pct(probe.latencies, 0.5), p90: pct(probe.latencies, 0.9), n: probe.latencies.length };
  out.stampsUnreadable = probe.unreadable;
  out.hlsLatencyS = {
    p50: pct(hlsLatency, 0.5) && Math.round(pct(hlsLatency, 0.5) * 100) / 100,
    max: hlsLatency.length ? Math.round(Math.max(...hlsLatency) * 100) / 100 : null,
  };
  out.targetLatencyS = hls.targetLatency;
  out.currentLevel = hls.currentLevel;
  out.paused = video.paused;
  out.videoError = video.error ? video.error.message : null;
  hls.destroy();
  return out;
}

await runReport(deadlineMs, async (report) => {
  const { context, close } = await launch();
  report.pageErrors = [];
  try {
    const publisherPage = await context.newPage();
    const viewerPage = await context.newPage();
    for (const [page, name] of [[publisherPage, 'publisher'], [viewerPage, 'viewer']]) {
      page.on('pageerror', (err) => report.pageErrors.push(`${name}: ${err.message}`.slice(0, 300)));
      const response = await page.goto(`${args.base}/`);
      if (!response?.ok()) throw new Error(`GET / answered ${response?.status()}`);
      await page.evaluate(installHelpers);
    }
    report.publish = await publisherPage.evaluate(publishCanvas, {
      base: args.base,
      room: args.room,
      key: args.key,
      codec: args.codec,
      width: Number(args.width),
      height: Number(args.height),
      // One layer: no simulcast at all (a single-layer publish).
      videoEncodings: args.layers > 1 ? [
        { rid: 'h' },
        { rid: 'm', scaleResolutionDownBy: 2 },
        { rid: 'l', scaleResolutionDownBy: 4 },
      ].slice(0, args.layers) : undefined,
    });
    delete report.publish.answerSdp;
    if (report.publish.error) throw new Error(report.publish.error);
    log('publishing; waiting for the multivariant playlist');

    const url = `${args.base}/hls/${encodeURIComponent(args.room)}/index.m3u8`;
    const t0 = Date.now();
    let variants = 0;
    let text = '';
    while (Date.now() - t0 < 20000) {
      const r = await fetch(url).catch(() => null);
      text = r?.ok ? await r.text() : '';
      variants = (text.match(/#EXT-X-STREAM-INF/g) ?? []).length;
      if (variants >= (args.variants || args.layers) && text.includes('TYPE=AUDIO')) break;
      await sleep(300);
    }
    report.multivariantMs = Date.now() - t0;
    report.multivariant = text;
    report.variants = variants;
    if (variants === 0) throw new Error(`no variant in ${url} after 20 s`);
    if (args['ready-file']) writeFileSync(args['ready-file'], url);

    // The server's pages allow scripts from 'self' only: serve hls.js from
    // node_modules under the server's origin through a Playwright route.
    const hlsJsUrl = `${args.base}/__test__/hls.min.js`;
    await viewerPage.route(hlsJsUrl, (route) =>
      route.fulfill({ path: HLS_JS, contentType: 'text/javascript' }));
    await viewerPage.addScriptTag({ url: hlsJsUrl });
    log(`hls.js playing ${url} for ${args.seconds} s`);
    report.viewer = await viewerPage.evaluate(playHls, {
      url, seconds: args.seconds, catchUpRate: Number(args['catch-up-rate']),
    });
    report.publisherStats = await publisherPage.evaluate(publisherStats);

    if (Number(args.republish)) {
      // 4. A republish must show up as a new session below the room.
      const sessionOf = (m3u8) => m3u8.match(/^([0-9a-f]+)\//m)?.[1] ?? null;
      const before = sessionOf(text);
      report.republish = await publisherPage.evaluate(republish, { pauseMs: 300 });
      const t1 = Date.now();
      let after = null;
      let again = '';
      while (Date.now() - t1 < 15000) {
        const r = await fetch(url).catch(() => null);
        again = r?.ok ? await r.text() : '';
        after = sessionOf(again);
        const complete = (again.match(/#EXT-X-STREAM-INF/g) ?? []).length >= args.layers;
        if (after && after !== before && complete) break;
        await sleep(300);
      }
      report.sessions = { before, after, newPlaylistMs: Date.now() - t1 };
      report.multivariantAfterRepublish = again;
    }
    await publisherPage.evaluate(stopPublisher).catch(() => {});
  } finally {
    await close();
  }
});
