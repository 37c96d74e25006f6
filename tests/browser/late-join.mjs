#!/usr/bin/env node
// Late joiners in real Chromium: `--viewers` WHEP viewers join a room that
// someone else publishes into (tests/instant_start_e2e.rs publishes with
// ffmpeg, keyframes every 2 s, keyframe requests ignored), `--stagger-ms`
// apart so that they join at different points of the GOP. Each reads the
// timestamp stamp of tests/rtmp_e2e.rs back from its frames; this script
// also notes *when* (ms after the viewer's first frame) each latency
// sample was taken, to tell the start (first frame, catching up) from where
// the viewer settles.
//
//   node late-join.mjs --base http://127.0.0.1:8080 --room r [--seconds 8]
//        [--viewers 3] [--stagger-ms 700] [--settle-ms 3000]
//
// Prints one JSON report as the last stdout line: `viewers` as in-page.mjs
// `viewerReport` gives them, each with `settled` (latency p50 / max of the
// samples taken `--settle-ms` or more after its first frame) and `timed`
// ([ms after first frame, latency ms] pairs).

import { launch, log, parseArgs, runReport, sleep } from './lib/harness.mjs';
import { installHelpers, startViewers, stopViewers, viewerReport } from './lib/in-page.mjs';

const args = parseArgs({
  base: undefined,
  room: undefined,
  seconds: 8,
  viewers: 3,
  'stagger-ms': 700,
  'settle-ms': 3000,
});

await runReport(40000 + args.seconds * 1000, async (report) => {
  const { context, close } = await launch();
  report.pageErrors = [];
  try {
    const page = await context.newPage();
    page.on('pageerror', (err) => report.pageErrors.push(err.message.slice(0, 300)));
    const response = await page.goto(`${args.base}/`);
    if (!response?.ok()) throw new Error(`GET / answered ${response?.status()}`);
    await page.evaluate(installHelpers);
    // Time every new latency sample (20 ms resolution is plenty here).
    await page.evaluate(() => {
      window.__timed = new Map();
      setInterval(() => {
        for (const p of window.__viewers ?? []) {
          if (p.firstFrameAt === null) continue;
          const t = window.__timed.get(p.index) ?? { seen: 0, samples: [] };
          window.__timed.set(p.index, t);
          while (t.seen < p.latencies.length) {
            t.samples.push([Math.round(performance.now() - p.firstFrameAt), p.latencies[t.seen]]);
            t.seen++;
          }
        }
      }, 20);
    });
    await page.evaluate(startViewers, {
      base: args.base,
      room: args.room,
      count: args.viewers,
      staggerMs: args['stagger-ms'],
    });
    await sleep(args.seconds * 1000);
    report.viewers = await page.evaluate(viewerReport);
    const timed = await page.evaluate(() =>
      Object.fromEntries([...window.__timed].map(([k, v]) => [k, v.samples])),
    );
    for (const v of report.viewers) {
      v.timed = timed[v.index] ?? [];
      const late = v.timed
        .filter(([t]) => t >= args['settle-ms'])
        .map(([, l]) => l)
        .sort((a, b) => a - b);
      v.settled = {
        samples: late.length,
        p50: late.length ? late[Math.floor(late.length / 2)] : null,
        max: late.at(-1) ?? null,
      };
      log(
        `viewer ${v.index}: first frame ${v.timeToFirstFrameMs} ms (age ${v.latencyMs.firstFrame} ms), ` +
          `live after ${v.latencyMs.liveAfterMs} ms, settled p50 ${v.settled.p50} / max ${v.settled.max} ms, ` +
          `${v.fps} fps, max gap ${v.maxFrameGapMs} ms at ${v.maxFrameGapAtMs} ms, ` +
          `freezes ${v.stats?.video?.freezeCount}, ${v.videoWidth}x${v.videoHeight}, ${v.error ?? 'no error'}`,
      );
    }
    report.deletes = await page.evaluate(stopViewers);
  } finally {
    await close();
  }
});
