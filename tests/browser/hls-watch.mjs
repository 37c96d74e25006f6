#!/usr/bin/env node
// hls.js (from npm, `lowLatencyMode: true`) in headless Chromium plays a
// room someone else publishes into (the RTMP tests publish with ffmpeg), so
// audio-only and video-only streams are checked by a real MSE player.
//
//   node hls-watch.mjs --base http://127.0.0.1:8080 --room r [--seconds 8]
//
// Prints one JSON report as the last stdout line: `viewer` with the levels
// and audio tracks hls.js parsed, how far `currentTime` advanced, the longest
// stall, the bytes of audio and video Chromium decoded, and hls.js errors.

import { fileURLToPath } from 'node:url';
import { launch, log, parseArgs, runReport } from './lib/harness.mjs';

const args = parseArgs({ base: undefined, room: undefined, seconds: 8 });
const HLS_JS = fileURLToPath(new URL('./node_modules/hls.js/dist/hls.min.js', import.meta.url));

/** In the page: play `url` for `seconds` and report. */
async function play({ url, seconds }) {
  const Hls = window.Hls;
  const out = { supported: Hls.isSupported(), hlsVersion: Hls.version, errors: [] };
  if (!out.supported) return out;
  const video = document.createElement('video');
  video.autoplay = true;
  video.muted = false; // Chromium decodes (and counts) audio only when unmuted
  document.body.append(video);
  const hls = new Hls({ lowLatencyMode: true, backBufferLength: 10 });
  hls.on(Hls.Events.ERROR, (_e, d) => {
    if (out.errors.length < 20) {
      out.errors.push({ type: d.type, details: d.details, fatal: d.fatal, url: d.url ?? d.frag?.url ?? null });
    }
  });
  const parsed = new Promise((resolve) => hls.once(Hls.Events.MANIFEST_PARSED, resolve));
  hls.loadSource(url);
  hls.attachMedia(video);
  await Promise.race([parsed, new Promise((r) => setTimeout(r, 10000))]);
  out.levels = hls.levels.map((l) => ({
    width: l.width, height: l.height, videoCodec: l.videoCodec ?? null, audioCodec: l.audioCodec ?? null,
  }));
  out.audioTracks = hls.audioTracks.map((a) => ({ name: a.name, groupId: a.groupId }));
  let firstTime = null;
  let lastTime = -1;
  let lastAdvanceAt = null;
  let maxStallMs = 0;
  const startedAt = performance.now();
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      if (video.currentTime > lastTime) {
        // From the first position hls.js plays from (not the 0 before its seek).
        if (lastTime > 0 && firstTime === null) firstTime = lastTime;
        lastTime = video.currentTime;
        lastAdvanceAt = now;
      } else if (firstTime !== null) {
        maxStallMs = Math.max(maxStallMs, now - lastAdvanceAt);
      }
      if (now - startedAt > seconds * 1000) {
        clearInterval(timer);
        resolve();
      }
    }, 100);
  });
  out.currentTimeAdvance = firstTime === null ? 0 : Math.round((video.currentTime - firstTime) * 10) / 10;
  out.maxStallMs = Math.round(maxStallMs);
  out.videoSize = [video.videoWidth, video.videoHeight];
  out.audioDecodedBytes = video.webkitAudioDecodedByteCount ?? null;
  out.videoDecodedBytes = video.webkitVideoDecodedByteCount ?? null;
  out.videoError = video.error ? video.error.message : null;
  hls.destroy();
  return out;
}

await runReport(40000 + args.seconds * 1000, async (report) => {
  const { context, close } = await launch();
  report.pageErrors = [];
  try {
    const page = await context.newPage();
    page.on('pageerror', (err) => report.pageErrors.push(err.message.slice(0, 300)));
    const response = await page.goto(`${args.base}/`);
    if (!response?.ok()) throw new Error(`GET / answered ${response?.status()}`);
    // The server's pages allow scripts from 'self' only: serve hls.js from
    // node_modules under the server's origin through a Playwright route.
    const hlsJsUrl = `${args.base}/__test__/hls.min.js`;
    await page.route(hlsJsUrl, (route) => route.fulfill({ path: HLS_JS, contentType: 'text/javascript' }));
    await page.addScriptTag({ url: hlsJsUrl });
    const url = `${args.base}/hls/${encodeURIComponent(args.room)}/index.m3u8`;
    log(`hls.js playing ${url} for ${args.seconds} s`);
    report.viewer = await page.evaluate(play, { url, seconds: args.seconds });
  } finally {
    await close();
  }
});
