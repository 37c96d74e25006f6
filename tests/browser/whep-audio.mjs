#!/usr/bin/env node
// One WHEP viewer in headless Chromium for an audio-only room: the server's
// own WhepViewer (web/assets/whep.js, which offers audio and video) plays
// into an <audio> element, and the inbound audio statistics are reported
// (packets, decoded samples, concealment, energy of what was played out).
//
//   node whep-audio.mjs --base http://127.0.0.1:8080 --room r [--seconds 6]
//
// Prints one JSON report as the last stdout line: `viewer`.

import { launch, log, parseArgs, runReport, sleep } from './lib/harness.mjs';

const args = parseArgs({ base: undefined, room: undefined, seconds: 6 });

await runReport(40000 + args.seconds * 1000, async (report) => {
  const { context, close } = await launch();
  report.pageErrors = [];
  try {
    const page = await context.newPage();
    page.on('pageerror', (err) => report.pageErrors.push(err.message.slice(0, 300)));
    const response = await page.goto(`${args.base}/`);
    if (!response?.ok()) throw new Error(`GET / answered ${response?.status()}`);
    await page.evaluate(async ({ base, room }) => {
      const { WhepViewer } = await import(`${base}/assets/whep.js`);
      const audio = document.createElement('audio');
      audio.autoplay = true;
      document.body.append(audio);
      const viewer = new WhepViewer(`${base}/whep/${encodeURIComponent(room)}`, {});
      window.__viewer = viewer;
      audio.srcObject = viewer.stream;
      window.__error = null;
      await viewer.start().catch((err) => { window.__error = `WHEP: ${err.message}`; });
    }, { base: args.base, room: args.room });
    log(`listening for ${args.seconds} s`);
    await sleep(args.seconds * 1000);
    report.viewer = await page.evaluate(async () => {
      const out = { error: window.__error, connectionState: window.__viewer.pc.connectionState };
      const stats = await window.__viewer.pc.getStats();
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') {
          out.audio = {
            packetsReceived: s.packetsReceived,
            packetsLost: s.packetsLost,
            totalSamplesReceived: s.totalSamplesReceived,
            concealedSamples: s.concealedSamples,
            totalAudioEnergy: s.totalAudioEnergy,
            codecId: s.codecId,
          };
          const codec = stats.get(s.codecId);
          out.audio.codec = codec?.mimeType ?? null;
        }
      });
      await window.__viewer.stop().catch(() => {});
      return out;
    });
  } finally {
    await close();
  }
});
