#!/usr/bin/env node
// Drives the real pages the server embeds (web/assets), as a person would.
//
//   node pages.mjs --base http://127.0.0.1:8080 --room e2e --key secret [--seconds 4]
//
// 1. /watch/{room} opens before anyone publishes: it must show 'waiting'.
// 2. /publish/{room} with a wrong key must show the refusal; with the right
//    key (Chromium's fake camera and microphone) it must go 'live'.
// 3. The watch page (<dionysia-player>) must then play: frames shown, the
//    resolution displayed, the mute button toggling sound.
// 4. Stop on the publish page ends the session; the index page's form opens
//    /watch/{room}.
//
// Prints one JSON report as the last stdout line (see README.md).

import { launch, log, parseArgs, runReport, sleep } from './lib/harness.mjs';
import { installHelpers } from './lib/in-page.mjs';

const args = parseArgs({ base: undefined, room: undefined, key: undefined, seconds: 4 });

await runReport(40000 + args.seconds * 1000, async (report) => {
  const { context, close } = await launch();
  report.pageErrors = [];
  const noteError = (text) => {
    if (report.pageErrors.length < 20) report.pageErrors.push(text.slice(0, 300));
  };
  // Records every data-state the page's <body> takes, with a timestamp.
  await context.addInitScript(() => {
    window.__states = [];
    const record = () => {
      const state = document.body?.dataset.state;
      if (state && window.__states.at(-1)?.[1] !== state) {
        window.__states.push([Math.round(performance.timeOrigin + performance.now()), state]);
      }
    };
    new MutationObserver(record).observe(document, {
      subtree: true,
      attributes: true,
      attributeFilter: ['data-state'],
      childList: true,
    });
  });
  // Keeps every RTCPeerConnection the pages create, to read their stats.
  await context.addInitScript(() => {
    window.__pcs = [];
    const Native = window.RTCPeerConnection;
    window.RTCPeerConnection = class extends Native {
      constructor(...a) {
        super(...a);
        window.__pcs.push(this);
      }
    };
  });
  const lastPcStats = async (page, summary) => {
    await page.evaluate(installHelpers);
    return page.evaluate(
      (which) => (window.__pcs.length ? window.__t[which](window.__pcs.at(-1)) : null),
      summary,
    );
  };
  const states = (page) => page.evaluate(() => window.__states.map(([, s]) => s));
  const waitState = (page, state, timeout) =>
    page
      .waitForFunction((s) => document.body.dataset.state === s, state, { timeout, polling: 50 })
      .then(() => true)
      .catch(() => false);
  const statusText = (page) => page.locator('#status').innerText();

  try {
    const watch = await context.newPage();
    const publish = await context.newPage();
    for (const [page, name] of [[watch, 'watch'], [publish, 'publish']]) {
      page.on('pageerror', (err) => noteError(`${name}: ${err.message}`));
      page.on('console', (msg) => {
        // 409 (room not live yet) and the wrong key's 403 are expected here.
        const expected = /status of (409|401|403)/.test(msg.text());
        if (msg.type() === 'error' && !expected) noteError(`${name} console: ${msg.text()}`);
      });
    }
    const room = encodeURIComponent(args.room);

    // 1. Watch before anyone publishes.
    const watchResponse = await watch.goto(`${args.base}/watch/${room}`);
    report.watch = { http: watchResponse?.status() ?? 0 };
    report.watch.title = await watch.locator('#title').innerText();
    report.watch.sawWaiting = await waitState(watch, 'waiting', 5000);
    log(`watch page: ${report.watch.http}, waiting=${report.watch.sawWaiting}`);

    // 2. Publish: wrong key, then the right one.
    const publishResponse = await publish.goto(`${args.base}/publish/${room}`);
    report.publish = { http: publishResponse?.status() ?? 0 };
    report.publish.room = await publish.locator('#room').innerText();
    await publish.fill('#key', `${args.key}-wrong`);
    await publish.click('#start');
    report.publish.wrongKeyRefused = await waitState(publish, 'error', 10000);
    report.publish.wrongKeyStatus = await statusText(publish);
    log(`wrong key: ${report.publish.wrongKeyStatus}`);

    await publish.fill('#key', args.key);
    const goLiveAt = Date.now();
    await publish.click('#start');
    report.publish.live = await waitState(publish, 'live', 10000);
    report.publish.goLiveMs = Date.now() - goLiveAt;
    report.publish.status = await statusText(publish);
    log(`publish page: ${report.publish.status} after ${report.publish.goLiveMs} ms`);
    if (!report.publish.live) {
      throw new Error(`publish page did not go live: ${report.publish.status}`);
    }

    // 3. The watch page plays.
    await watch.bringToFront();
    report.watch.live = await waitState(watch, 'live', 10000);
    report.watch.liveAfterPublishMs = Date.now() - goLiveAt;
    report.watch.status = await statusText(watch);
    await watch.evaluate(() => {
      const video = document.querySelector('dionysia-player').video;
      window.__frames = 0;
      const count = () => {
        window.__frames++;
        video.requestVideoFrameCallback(count);
      };
      video.requestVideoFrameCallback(count);
    });
    const t0 = Date.now();
    await sleep(args.seconds * 1000);
    Object.assign(
      report.watch,
      await watch.evaluate(() => {
        const video = document.querySelector('dionysia-player').video;
        return {
          frames: window.__frames,
          videoWidth: video.videoWidth,
          videoHeight: video.videoHeight,
          paused: video.paused,
          mutedAtStart: video.muted,
          resolutionText: document
            .querySelector('dionysia-player')
            .shadowRoot.getElementById('resolution').textContent,
        };
      }),
    );
    report.watch.fps = Math.round((report.watch.frames * 10000) / (Date.now() - t0)) / 10;
    // The player starts with sound where autoplay allows it (as the test
    // browser does), muted otherwise: the button must toggle either way, and
    // end with sound.
    const muted = () => watch.evaluate(() => document.querySelector('dionysia-player').video.muted);
    await watch.click('#unmute');
    report.watch.mutedAfterFirstClick = await muted();
    if (report.watch.mutedAfterFirstClick) await watch.click('#unmute');
    report.watch.mutedAfterClick = await muted();
    report.watch.unmuteLabel = await watch.locator('#unmute').innerText();
    report.watch.states = await states(watch);
    const { frames, fps, resolutionText } = report.watch;
    log(`watch page: ${frames} frames, ${fps} fps, ${resolutionText}`);

    report.publish.statsLine = await publish.locator('#stats').innerText();
    report.publish.stats = await lastPcStats(publish, 'outboundSummary');
    // Chromium reports no audio energy for a muted element: energy after the
    // click shows the button really made the sound play.
    await sleep(1000);
    report.watch.stats = await lastPcStats(watch, 'inboundSummary');
    // 4. Stop, then the index page's form.
    await publish.click('#stop');
    report.publish.stopped = await waitState(publish, 'ended', 5000);
    report.publish.states = await states(publish);

    const index = await context.newPage();
    const indexResponse = await index.goto(`${args.base}/`);
    report.index = { http: indexResponse?.status() ?? 0 };
    await index.fill('form[data-page="watch"] input[name="room"]', args.room);
    await Promise.all([
      index.waitForURL(`**/watch/${room}`, { timeout: 5000 }),
      index.click('form[data-page="watch"] button'),
    ]).catch(() => {});
    report.index.watchUrl = new URL(index.url()).pathname;
  } finally {
    await close();
  }
});
