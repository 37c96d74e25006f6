#!/usr/bin/env node
// WHEP viewers in real Chromium for a room someone else publishes into (the
// RTMP tests publish with ffmpeg): one page, `--viewers` peer connections,
// each counting the frames it shows and reading the timestamp stamp back
// when the source carries one (tests/rtmp_e2e.rs draws it).
//
//   node rtmp-viewers.mjs --base http://127.0.0.1:8080 --room r [--seconds 6] [--viewers 1]
//
// Prints one JSON report as the last stdout line: `viewers` as
// in-page.mjs `viewerReport` gives them.

import { launch, log, parseArgs, runReport, sleep } from './lib/harness.mjs';
import { installHelpers, startViewers, stopViewers, viewerReport } from './lib/in-page.mjs';

const args = parseArgs({ base: undefined, room: undefined, seconds: 6, viewers: 1 });

await runReport(40000 + args.seconds * 1000, async (report) => {
  const { context, close } = await launch();
  report.pageErrors = [];
  try {
    const page = await context.newPage();
    page.on('pageerror', (err) => report.pageErrors.push(err.message.slice(0, 300)));
    const response = await page.goto(`${args.base}/`);
    if (!response?.ok()) throw new Error(`GET / answered ${response?.status()}`);
    await page.evaluate(installHelpers);
    await page.evaluate(startViewers, {
      base: args.base,
      room: args.room,
      count: args.viewers,
      staggerMs: 500,
    });
    await sleep(args.seconds * 1000);
    report.viewers = await page.evaluate(viewerReport);
    for (const v of report.viewers) {
      log(
        `viewer ${v.index}: first frame ${v.timeToFirstFrameMs} ms, ${v.frames} frames, ` +
          `${v.fps} fps, max gap ${v.maxFrameGapMs} ms, ${v.videoWidth}x${v.videoHeight}, ` +
          `latency p50 ${v.latencyMs.p50} ms, ${v.error ?? 'no error'}`,
      );
    }
    report.deletes = await page.evaluate(stopViewers);
  } finally {
    await close();
  }
});
