#!/usr/bin/env node
// Drives the product pages (web/assets) as people would: the dashboard, the
// publisher page with Chromium's fake camera, and <dionysia-player> on the
// watch page, in WebRTC and in its LL-HLS fallbacks.
//
//   node web.mjs --base http://127.0.0.1:8080 --room show --key secret --admin ADMIN \
//       [--shots ../../target/screenshots]
//
// 1. Dashboard: sign in with the admin token; the room is listed, offline.
// 2. Publisher page: fake camera, H.264, simulcast, Go live.
// 3. Watch page A: must go live over WebRTC (frames decoded); time to first
//    frame is measured from navigation. Dashboard: 1 viewer. Watch page B:
//    2 viewers.
// 4. The publisher stops and goes live again: page A must play again
//    without a reload.
// 5. A page whose WebRTC cannot reach the server's UDP port (the answer's
//    candidates point at a port where nothing answers): the player must fall
//    back to HLS after its ICE timeout (5 s) and play.
// 6. The room made HLS-only (PATCH webrtc:false): a new player goes to HLS
//    at once.
// Screenshots of each page go to --shots.
//
// Prints one JSON report as the last stdout line (see README.md).

import { mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { launch, log, parseArgs, runReport, sleep } from './lib/harness.mjs';

const args = parseArgs({
  base: undefined,
  room: undefined,
  key: undefined,
  admin: undefined,
  shots: '',
});

/** Everything the player shows, read from the page. */
const playerState = (page) =>
  page.evaluate(() => {
    const p = document.querySelector('dionysia-player');
    const q = p.video.getVideoPlaybackQuality?.();
    const root = p.shadowRoot;
    return {
      ...p.stats,
      events: p.events,
      bodyState: document.body.dataset.state,
      badge: root.getElementById('mode').textContent,
      badgeHidden: root.getElementById('mode').hidden,
      statusText: root.getElementById('status').textContent,
      resolutionText: root.getElementById('resolution').textContent,
      latencyText: root.getElementById('latency').textContent,
      qualityOptions: [...root.getElementById('quality').options].map((o) => o.textContent),
      totalFrames: q?.totalVideoFrames ?? null,
      paused: p.video.paused,
      navigations: performance.getEntriesByType('navigation').length,
      pageId: window.__pageId,
    };
  });

/** Waits until the player satisfies `check` (evaluated in the page); false on timeout. */
const waitPlayer = (page, fn, arg, timeout) =>
  page
    .waitForFunction(fn, arg, { timeout, polling: 100 })
    .then(() => true)
    .catch(() => false);

const isLiveIn = (mode) => {
  const p = document.querySelector('dionysia-player');
  return p?.state === 'live' && p.mode === mode && p.stats.frames > 5;
};

await runReport(170000, async (report) => {
  report.pageErrors = [];
  const shots = args.shots;
  if (shots) mkdirSync(shots, { recursive: true });
  const shot = async (page, name) => {
    if (!shots) return;
    await page.screenshot({ path: join(shots, `${name}.png`) });
  };
  const api = async (method, path, body) => {
    const response = await fetch(`${args.base}/api/v1${path}`, {
      method,
      headers: { Authorization: `Bearer ${args.admin}`, 'Content-Type': 'application/json' },
      body: body && JSON.stringify(body),
    });
    return response.status === 204 ? null : response.json();
  };
  const { context, close } = await launch({ viewport: { width: 1280, height: 860 } });
  const watch = (page, name) => {
    page.on('pageerror', (err) => report.pageErrors.push(`${name}: ${err.message}`.slice(0, 300)));
    page.on('console', (msg) => {
      // 409 (not live yet), 404 (HLS before the stream), 503 (HLS-only), 401 (the
      // publisher page's DELETE after its key was rotated) are expected.
      const expected = /status of (409|404|503|401)/.test(msg.text());
      if (msg.type() === 'error' && !expected) {
        report.pageErrors.push(`${name} console: ${msg.text()}`.slice(0, 300));
      }
    });
  };
  let udpBlocked = null;
  try {
    const room = encodeURIComponent(args.room);

    // 1. Dashboard, signed in.
    const dash = await context.newPage();
    watch(dash, 'dashboard');
    await dash.goto(`${args.base}/`);
    await dash.fill('#token', args.admin);
    await dash.click('#signin button[type="submit"]');
    const card = dash.locator(`article.room[data-room="${args.room}"]`);
    report.dashboard = {
      listed: await card.waitFor({ timeout: 5000 }).then(() => true, () => false),
    };
    report.dashboard.liveBefore = await card.getAttribute('data-live');
    // Create a room from the form.
    await dash.click('#create-card summary');
    await dash.fill('#new-name', 'created-here');
    await dash.click('#create button[type="submit"]');
    report.dashboard.created = await dash
      .locator('article.room[data-room="created-here"]')
      .waitFor({ timeout: 5000 })
      .then(() => true, () => false);
    const viewersOnDashboard = async (n, timeout = 8000) =>
      dash
        .waitForFunction(
          ([name, want]) => {
            const c = document.querySelector(`article.room[data-room="${name}"]`);
            return c?.dataset.live === 'true' && Number(c.dataset.viewers) === want;
          },
          [args.room, n],
          { timeout, polling: 200 },
        )
        .then(() => true, () => false);

    // The player before anyone publishes: "Waiting for the stream".
    const early = await context.newPage();
    watch(early, 'player (before the stream)');
    await early.goto(`${args.base}/watch/${room}`);
    report.waiting = {
      shown: await waitPlayer(
        early,
        () => document.querySelector('dionysia-player').state === 'waiting',
        null,
        8000,
      ),
    };
    report.waiting.statusText = (await playerState(early)).statusText;
    await shot(early, 'watch-waiting');
    await early.close();

    // 2. Publisher page.
    const pub = await context.newPage();
    watch(pub, 'publish');
    await pub.goto(`${args.base}/publish/${room}`);
    await pub.fill('#key', args.key);
    const goLive = async () => {
      await pub.click('#start');
      return pub
        .waitForFunction(() => document.body.dataset.state === 'live', null, { timeout: 15000 })
        .then(() => true, () => false);
    };
    report.publish = { live: await goLive() };
    if (!report.publish.live) {
      report.publish.status = await pub.locator('#status').innerText();
      throw new Error(`the publisher page did not go live: ${report.publish.status}`);
    }
    log('publisher live');

    // 3. Player A over WebRTC.
    const a = await context.newPage();
    watch(a, 'player A');
    await a.addInitScript(() => {
      window.__pageId = Math.random();
    });
    const openedAt = Date.now();
    await a.goto(`${args.base}/watch/${room}`);
    report.playerA = { live: await waitPlayer(a, isLiveIn, 'webrtc', 15000) };
    report.playerA.firstFrameMs = Date.now() - openedAt;
    await sleep(3000);
    Object.assign(report.playerA, await playerState(a));
    const at = (what) => (report.playerA.events.find(([, e]) => e === what) ?? [])[0] ?? null;
    // performance.now() counts from the navigation: page load + modules + WHEP + first frame.
    report.playerA.navigationToFrameMs = at('state:live');
    report.playerA.whepPostToFrameMs =
      at('state:live') !== null && at('whep:posted') !== null
        ? at('state:live') - at('whep:posted')
        : null;
    log(`player A: ${report.playerA.mode} ${report.playerA.resolutionText} after ${report.playerA.firstFrameMs} ms`);
    report.dashboard.oneViewer = await viewersOnDashboard(1);

    const b = await context.newPage();
    watch(b, 'player B');
    await b.goto(`${args.base}/watch/${room}`);
    report.playerB = { live: await waitPlayer(b, isLiveIn, 'webrtc', 15000) };
    report.dashboard.twoViewers = await viewersOnDashboard(2);
    report.dashboard.viewersText = await card.locator('.viewers-webrtc').innerText();
    await sleep(2500); // a few graph samples
    await b.close();

    await pub.bringToFront();
    await shot(pub, 'publish');
    report.publish.statsRows = await pub.locator('#layer-stats tbody tr').count();
    report.publish.statsLine = await pub.locator('#stats').innerText();
    await a.bringToFront();
    await shot(a, 'watch-webrtc');
    await dash.bringToFront();
    await card.locator('details.obs summary').click();
    await shot(dash, 'dashboard');
    report.dashboard.whipUrl = await card.locator('.whip-url').inputValue();
    report.dashboard.streamKeyShown = await card.locator('.stream-key').inputValue();

    // Quality: choose the lowest layer, then Auto again.
    await a.bringToFront();
    await waitPlayer(a, () => document.querySelector('dionysia-player').shadowRoot.getElementById('quality').options.length >= 3, null, 10000);
    const options = (await playerState(a)).qualityOptions;
    const lowest = options.filter((o) => o !== 'Auto').at(-1);
    report.quality = { options, chosen: lowest };
    if (lowest) {
      await a.locator('#quality').selectOption({ label: lowest });
      const want = parseInt(lowest, 10);
      report.quality.reached = await waitPlayer(
        a,
        (h) => document.querySelector('dionysia-player').video.videoHeight === h,
        want,
        8000,
      );
      report.quality.heightAfter = (await playerState(a)).height;
      await a.locator('#quality').selectOption('auto');
    }

    // The web component on another site: a page served by a second HTTP
    // server (another origin; on loopback too, or Chromium's Local Network
    // Access would refuse a public page's requests to this loopback server)
    // loads player.js from the server (CORS on /assets/, WHEP and /hls/).
    const site = createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(`<!doctype html><title>Another site</title><h1>Another site</h1>
        <script type="module" src="${args.base}/assets/player.js"></script>
        <dionysia-player room="${args.room}" style="max-width:640px"></dionysia-player>`);
    });
    await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
    const embedPage = await context.newPage();
    watch(embedPage, 'embedded player');
    await embedPage.goto(`http://localhost:${site.address().port}/`);
    report.embedded = {
      origin: await embedPage.evaluate(() => location.origin),
      live: await waitPlayer(embedPage, isLiveIn, 'webrtc', 15000),
    };
    await shot(embedPage, 'embedded');
    await embedPage.close();
    site.close();

    // 4. The publisher leaves and comes back; player A resumes on its own.
    await pub.bringToFront();
    await pub.click('#stop');
    const framesBefore = (await playerState(a)).frames;
    report.republish = {
      sawEnded: await waitPlayer(
        a,
        () => document.querySelector('dionysia-player').state === 'ended',
        null,
        8000,
      ),
    };
    await a.bringToFront();
    await shot(a, 'watch-ended');
    await pub.bringToFront();
    report.republish.publisherLive = await goLive();
    const backAt = Date.now();
    await a.bringToFront();
    report.republish.resumed = await waitPlayer(
      a,
      (before) => {
        const p = document.querySelector('dionysia-player');
        return p.state === 'live' && p.stats.frames > before + 10;
      },
      framesBefore,
      20000,
    );
    report.republish.resumedAfterMs = Date.now() - backAt;
    const afterRepublish = await playerState(a);
    report.republish.sameDocument = afterRepublish.pageId === report.playerA.pageId;
    report.republish.mode = afterRepublish.mode;
    report.republish.events = afterRepublish.events;
    log(`republish: resumed=${report.republish.resumed} in ${report.republish.resumedAfterMs} ms`);
    await a.close();

    // 5. The server's UDP port unreachable from one page: HLS after the ICE
    // timeout. A firewall dropping the datagrams is imitated by pointing
    // every candidate of the WHEP answer at port 9 (discard), where nothing
    // answers; the player itself is the real one, unchanged.
    udpBlocked = await context.browser().newContext({ viewport: { width: 1280, height: 860 } });
    await udpBlocked.addInitScript(() => {
      const native = RTCPeerConnection.prototype.setRemoteDescription;
      RTCPeerConnection.prototype.setRemoteDescription = function (desc) {
        const sdp = desc?.sdp?.replace(/^(a=candidate:\S+ \d+ udp \d+ \S+ )\d+/gim, '$19');
        return native.call(this, sdp ? { type: desc.type, sdp } : desc);
      };
    });
    const c = await udpBlocked.newPage();
    watch(c, 'player C (UDP blocked)');
    const cOpened = Date.now();
    await c.goto(`${args.base}/watch/${room}`);
    report.udpBlocked = { live: await waitPlayer(c, isLiveIn, 'hls', 25000) };
    report.udpBlocked.liveAfterMs = Date.now() - cOpened;
    await sleep(2000);
    Object.assign(report.udpBlocked, await playerState(c));
    const ev = report.udpBlocked.events;
    const fellBack = ev.find(([, e]) => e.startsWith('fallback:'));
    const hlsLive = ev.find(([, e], i) => e === 'state:live' && fellBack && ev.indexOf(fellBack) < i);
    report.udpBlocked.fallbackToFrameMs = fellBack && hlsLive ? hlsLive[0] - fellBack[0] : null;
    await shot(c, 'watch-hls-fallback');
    log(`UDP blocked: ${report.udpBlocked.mode} (${report.udpBlocked.fallbackReason}), frame ${report.udpBlocked.fallbackToFrameMs} ms after the fallback`);
    report.dashboard.hlsViewer = await dash
      .waitForFunction(
        (name) =>
          Number(document.querySelector(`article.room[data-room="${name}"] .viewers-hls`)?.textContent) >= 1,
        args.room,
        { timeout: 12000, polling: 200 },
      )
      .then(() => true, () => false);
    // The publisher leaves and returns while this player is on HLS: it must
    // show the end and play the new publish by itself.
    await pub.bringToFront();
    await pub.click('#stop');
    report.udpBlocked.sawEnded = await waitPlayer(
      c,
      () => document.querySelector('dionysia-player').state === 'ended',
      null,
      15000,
    );
    report.udpBlocked.publisherBack = await goLive();
    const hlsBackAt = Date.now();
    const framesThen = (await playerState(c)).frames;
    report.udpBlocked.resumed = await waitPlayer(
      c,
      (before) => {
        const p = document.querySelector('dionysia-player');
        return p.state === 'live' && p.mode === 'hls' && p.stats.frames > before + 10;
      },
      framesThen,
      20000,
    );
    report.udpBlocked.resumedAfterMs = Date.now() - hlsBackAt;
    log(`HLS player after the republish: resumed=${report.udpBlocked.resumed} in ${report.udpBlocked.resumedAfterMs} ms`);
    await udpBlocked.close();
    udpBlocked = null;

    // 6. HLS-only room: WHEP answers 503 hls-only, the player goes to HLS at once.
    await api('PATCH', `/rooms/${room}`, { webrtc: false });
    const d = await context.newPage();
    watch(d, 'player D (HLS-only)');
    const dOpened = Date.now();
    await d.goto(`${args.base}/watch/${room}`);
    report.hlsOnly = { live: await waitPlayer(d, isLiveIn, 'hls', 15000) };
    report.hlsOnly.liveAfterMs = Date.now() - dOpened;
    Object.assign(report.hlsOnly, await playerState(d));
    await d.setViewportSize({ width: 390, height: 844 });
    await shot(d, 'watch-phone');
    await api('PATCH', `/rooms/${room}`, { webrtc: true });
    await d.close();

    // Muted start (`?muted`, as when the browser refuses autoplay with
    // sound; headless Chromium 156 here allows it whatever --autoplay-policy
    // says, so the refusal itself cannot be provoked): the "Tap to unmute"
    // button is shown, and a click brings the sound.
    const e = await context.newPage();
    watch(e, 'player E (muted)');
    await e.goto(`${args.base}/watch/${room}?muted`);
    report.autoplay = { live: await waitPlayer(e, isLiveIn, 'webrtc', 15000) };
    report.autoplay.mutedAtStart = (await playerState(e)).muted;
    report.autoplay.hintShown = await e.evaluate(
      () => !document.querySelector('dionysia-player').shadowRoot.getElementById('unmute-hint').hidden,
    );
    await shot(e, 'watch-muted');
    await e.locator('#unmute-hint').click();
    await sleep(300);
    const afterClick = await playerState(e);
    report.autoplay.mutedAfterClick = afterClick.muted;
    report.autoplay.playingAfterClick = !afterClick.paused;
    report.autoplay.hintHiddenAfterClick = await e.evaluate(
      () => document.querySelector('dionysia-player').shadowRoot.getElementById('unmute-hint').hidden,
    );
    await e.close();

    // Dashboard actions: rotate the key, kick the publisher (each button asks
    // for a second press).
    await dash.bringToFront();
    const keyBefore = await card.locator('.stream-key').inputValue();
    await card.locator('.rotate-btn').click();
    await card.locator('.rotate-btn').click();
    report.dashboard.keyRotated = await dash
      .waitForFunction(
        ([name, old]) =>
          document.querySelector(`article.room[data-room="${name}"] .stream-key`).value !== old,
        [args.room, keyBefore],
        { timeout: 5000 },
      )
      .then(() => true, () => false);
    // Rotating disconnects the publisher; go live again with the new key, then kick.
    const newKey = await card.locator('.stream-key').inputValue();
    await pub.bringToFront();
    await pub.click('#stop');
    await pub.fill('#key', newKey);
    report.dashboard.liveWithNewKey = await goLive();
    await dash.bringToFront();
    const liveOnDashboard = (want) =>
      dash
        .waitForFunction(
          ([name, w]) =>
            document.querySelector(`article.room[data-room="${name}"]`)?.dataset.live === w,
          [args.room, want],
          { timeout: 8000, polling: 200 },
        )
        .then(() => true, () => false);
    await liveOnDashboard('true');
    await card.locator('.kick-btn').click();
    await card.locator('.kick-btn').click();
    report.dashboard.kicked = await liveOnDashboard('false');
    report.dashboard.kickMessage = await card.locator('.action-error').innerText();

    // A phone-sized dashboard.
    await dash.setViewportSize({ width: 390, height: 844 });
    await sleep(2500); // the graphs are redrawn at the next poll
    await dash.evaluate(() => window.scrollTo(0, 0));
    await shot(dash, 'dashboard-phone');
    await pub.setViewportSize({ width: 390, height: 844 });
    await shot(pub, 'publish-phone');
    await pub.click('#stop');
  } finally {
    await udpBlocked?.close();
    await close();
  }
});
