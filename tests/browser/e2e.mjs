#!/usr/bin/env node
// One publisher, several viewers, real Chromium, through a running server.
//
//   node e2e.mjs --base http://127.0.0.1:8080 --room e2e --key secret \
//                [--codec H264|VP8] [--seconds 7] [--viewers 2] [--stagger-ms 1000]
//                [--republish-after-ms N [--republish-pause-ms 300]]
//
// Page A publishes over WHIP (web/assets/whip.js): a 1280×720 canvas at 30
// fps with moving content and a timestamp stamp, plus a 440 Hz tone. Page B
// holds every viewer (one page, so no background-tab throttling): each has
// its own RTCPeerConnection and <video>, plays over WHEP (web/assets/whep.js)
// and counts the frames it shows. Before publishing, a WHEP offer to the
// empty room records the server's 409 + Retry-After.
//
// Prints one JSON report as the last stdout line (see README.md).

import { launch, log, parseArgs, runReport, sleep } from './lib/harness.mjs';
import {
  installHelpers, markViewers, publishCanvas, publisherStats, republish, startViewers,
  stopPublisher, stopViewers, viewerReport,
} from './lib/in-page.mjs';

const args = parseArgs({
  base: undefined,
  room: undefined,
  key: undefined,
  codec: 'H264',
  seconds: 7,
  viewers: 2,
  'stagger-ms': 1000,
  // 0: publish once. Otherwise, N ms into the watching window the publisher
  // DELETEs its session and publishes again (an encoder reconnecting); the
  // viewers' `sinceMark` figures then cover what they saw from that moment.
  'republish-after-ms': 0,
  'republish-pause-ms': 300,
});
const codec = `video/${args.codec}`;
const deadlineMs = 45000 + args.seconds * 1000;

await runReport(deadlineMs, async (report) => {
  report.codec = codec;
  report.seconds = args.seconds;
  const { context, close } = await launch();
  report.pageErrors = [];
  const noteError = (text) => {
    if (report.pageErrors.length < 20) report.pageErrors.push(text.slice(0, 300));
  };
  const watchErrors = (page, name) => {
    page.on('pageerror', (err) => noteError(`${name}: ${err.message}`));
    page.on('console', (msg) => {
      // The 409 is the empty-room probe's, expected.
      const expected = /status of 409/.test(msg.text());
      if (msg.type() === 'error' && !expected) noteError(`${name} console: ${msg.text()}`);
    });
  };
  try {
    const publisherPage = await context.newPage();
    const viewerPage = await context.newPage();
    watchErrors(publisherPage, 'publisher');
    watchErrors(viewerPage, 'viewers');
    for (const page of [publisherPage, viewerPage]) {
      const response = await page.goto(`${args.base}/`);
      if (!response?.ok()) throw new Error(`GET / answered ${response?.status()}`);
      await page.evaluate(installHelpers);
    }

    // The room has no publisher yet: WHEP must answer 409 with Retry-After.
    report.emptyRoom = await viewerPage.evaluate(
      async ({ base, room }) => {
        const pc = new RTCPeerConnection();
        pc.addTransceiver('video', { direction: 'recvonly' });
        pc.addTransceiver('audio', { direction: 'recvonly' });
        await pc.setLocalDescription(await pc.createOffer());
        const r = await fetch(`${base}/whep/${encodeURIComponent(room)}`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/sdp' },
          body: pc.localDescription.sdp,
        });
        pc.close();
        return {
          status: r.status,
          retryAfter: r.headers.get('Retry-After'),
          location: r.headers.get('Location'),
        };
      },
      { base: args.base, room: args.room },
    );
    log('WHEP to the empty room:', JSON.stringify(report.emptyRoom));
    if (report.emptyRoom.location) {
      // A session was created anyway; do not leave it behind.
      const url = new URL(report.emptyRoom.location, args.base).href;
      await viewerPage.evaluate((u) => fetch(u, { method: 'DELETE' }), url);
    }

    log(`publishing ${codec}`);
    const published = await publisherPage.evaluate(publishCanvas, {
      base: args.base,
      room: args.room,
      key: args.key,
      codec,
      width: 1280,
      height: 720,
    });
    const { answerSdp, ...publisher } = published;
    publisher.answer = summarizeSdp(answerSdp);
    report.publisher = publisher;
    if (published.error) throw new Error(published.error);
    log(`publisher: answer in ${published.answerMs} ms, connected in ${published.connectedMs} ms`);

    // The page Chromium shows is the one whose frames it renders on time.
    await viewerPage.bringToFront();
    log(`starting ${args.viewers} viewers`);
    await viewerPage.evaluate(startViewers, {
      base: args.base,
      room: args.room,
      count: args.viewers,
      staggerMs: args['stagger-ms'],
    });
    const republishAfter = args['republish-after-ms'];
    if (republishAfter > 0 && republishAfter < args.seconds * 1000) {
      await sleep(republishAfter);
      await viewerPage.evaluate(markViewers);
      log('publishing again');
      report.republish = await publisherPage.evaluate(republish, {
        pauseMs: args['republish-pause-ms'],
      });
      log('republished:', JSON.stringify(report.republish));
      await sleep(args.seconds * 1000 - republishAfter);
    } else {
      await sleep(args.seconds * 1000);
    }
    report.viewers = await viewerPage.evaluate(viewerReport);
    report.publisherStats = await publisherPage.evaluate(publisherStats);
    for (const v of report.viewers) {
      log(
        `viewer ${v.index}: first frame ${v.timeToFirstFrameMs} ms, ${v.frames} frames, ` +
          `${v.fps} fps, ${v.videoWidth}x${v.videoHeight}, latency p50 ${v.latencyMs.p50} ms, ` +
          `${v.error ?? 'no error'}`,
      );
    }

    report.deletes = {
      viewers: await viewerPage.evaluate(stopViewers),
      publisher: await publisherPage.evaluate(stopPublisher),
    };
  } finally {
    await close();
  }
});

/** The parts of an SDP answer worth seeing in a report. */
function summarizeSdp(sdp) {
  if (!sdp) return null;
  const lines = sdp.split(/\r?\n/);
  return {
    iceLite: lines.includes('a=ice-lite'),
    candidates: lines.filter((l) => l.startsWith('a=candidate:')).map((l) => l.slice(12)),
    media: lines.filter((l) => l.startsWith('m=')),
    rtpmap: lines.filter((l) => l.startsWith('a=rtpmap:')).map((l) => l.slice(9)),
    directions: lines
      .filter((l) => /^a=(sendonly|recvonly|sendrecv|inactive)$/.test(l))
      .map((l) => l.slice(2)),
  };
}
