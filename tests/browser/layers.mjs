#!/usr/bin/env node
// Simulcast and continuity with real Chromium (issue "Simulcast, per-viewer
// layer choice, one continuous stream, instant start").
//
//   node layers.mjs --base URL --room R --key K --mode rid|reconnect|bandwidth
//        [--viewer-base URL --netns NS --dev DEV]   (bandwidth mode)
//
// A publisher page sends a 1280×720 canvas as three simulcast layers
// (h 1280, m 640, l 320; H.264). Modes:
//  - rid:       two viewers ask for layer l and layer h through the session's
//               layer endpoint; report each one's videoWidth.
//  - reconnect: one viewer watches; the publisher page is closed (WHIP DELETE)
//               and another page publishes again; report whether the viewer
//               stayed connected and how long until its frames resumed.
//  - loss:      the same viewer setup with 5% of its incoming UDP dropped
//               (iptables in the namespace); report NACKs and retransmissions.
//  - bandwidth: one viewer runs in a Chromium inside network namespace NS;
//               its link (host side DEV) is limited with tc tbf to 350 kbit/s,
//               then the limit is lifted; report when the viewer's layer and
//               picture width went down and back up, and its longest frame gap.
//
// Prints one JSON report as the last stdout line.

import { execFileSync } from 'node:child_process';
import { writeFileSync, chmodSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, launch, log, parseArgs, runReport, sleep } from './lib/harness.mjs';
import { installHelpers } from './lib/in-page.mjs';

const args = parseArgs({
  base: undefined, room: undefined, key: undefined, mode: 'rid',
  'viewer-base': '', netns: '', dev: '',
});

/** Publisher page: the canvas as three H.264 simulcast layers. */
async function publishSimulcast({ base, room, key }) {
  const canvas = document.createElement('canvas');
  canvas.width = 1280; canvas.height = 720;
  document.body.append(canvas);
  const ctx = canvas.getContext('2d');
  let f = 0;
  window.__draw = setInterval(() => {
    f++;
    ctx.fillStyle = `hsl(${(f * 3) % 360} 60% 40%)`;
    ctx.fillRect(0, 0, 1280, 720);
    ctx.fillStyle = '#fff';
    ctx.font = 'bold 120px sans-serif';
    ctx.fillText(`#${f}`, 100 + ((f * 7) % 900), 400);
  }, 33);
  const { WhipPublisher } = await import(`${base}/assets/whip.js`);
  const p = new WhipPublisher(`${base}/whip/${encodeURIComponent(room)}`, {
    token: key,
    videoCodec: 'video/H264',
    degradationPreference: 'maintain-resolution',
    videoEncodings: [
      { rid: 'h', maxBitrate: 1_200_000 },
      { rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 400_000 },
      { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 120_000 },
    ],
  });
  window.__p = p;
  await p.start(canvas.captureStream(30));
  return p.location;
}

/** Viewer page: `count` viewers; each counts frames and remembers its longest gap. */
async function startViewers({ base, room, count, layers }) {
  const { WhepViewer } = await import(`${base}/assets/whep.js`);
  window.__v = [];
  for (let i = 0; i < count; i++) {
    const v = new WhepViewer(`${base}/whep/${encodeURIComponent(room)}`);
    const el = document.createElement('video');
    el.muted = true; el.autoplay = true; el.playsInline = true;
    document.body.append(el);
    el.srcObject = v.stream;
    const probe = { v, el, frames: 0, last: null, maxGap: 0, gaps: [], widths: [] };
    const onFrame = (now, meta) => {
      if (meta.width !== probe.widths.at(-1)?.[1]) probe.widths.push([Math.round(now), meta.width]);
      if (probe.last !== null) {
        const gap = now - probe.last;
        if (gap > probe.maxGap) probe.maxGap = gap;
        if (gap > 100) probe.gaps.push([Math.round(performance.now()), Math.round(gap)]);
      }
      probe.last = now;
      probe.frames++;
      el.requestVideoFrameCallback(onFrame);
    };
    el.requestVideoFrameCallback(onFrame);
    window.__v.push(probe);
    await v.start();
    if (layers?.[i]) {
      const r = await fetch(`${v.location}/layer`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(layers[i]),
      });
      probe.layerStatus = r.status;
    }
  }
}

async function viewerState() {
  return Promise.all(window.__v.map(async (p) => {
    let video = null;
    (await p.v.pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') {
        video = {
          packetsReceived: r.packetsReceived, packetsLost: r.packetsLost, nackCount: r.nackCount,
          retransmittedPacketsReceived: r.retransmittedPacketsReceived ?? null,
          framesDecoded: r.framesDecoded, freezeCount: r.freezeCount, pliCount: r.pliCount,
        };
      }
    });
    let layer = null;
    try { layer = await (await fetch(`${p.v.location}/layer`)).json(); } catch { /* gone */ }
    return {
      t: Math.round(performance.now()),
      width: p.el.videoWidth, frames: p.frames, maxGapMs: Math.round(p.maxGap), gaps: p.gaps,
      connection: p.v.pc.connectionState, layerStatus: p.layerStatus ?? null,
      current: layer?.video?.[0]?.current ?? null, target: layer?.video?.[0]?.target ?? null,
      estimate: layer?.estimated_bitrate ?? null,
      video,
    };
  }));
}

async function newPage(context, base) {
  const page = await context.newPage();
  const r = await page.goto(`${base}/`);
  if (!r?.ok()) throw new Error(`GET / answered ${r?.status()}`);
  await page.evaluate(installHelpers);
  return page;
}

/** Chromium run inside a network namespace through a wrapper executable. */
async function launchInNetns(netns) {
  const dir = mkdtempSync(join(tmpdir(), 'dionysia-netns-'));
  const wrapper = join(dir, 'chromium');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${netns} ${CHROMIUM} "$@"\n`);
  chmodSync(wrapper, 0o755);
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      const browser = await chromium.launch({ executablePath: wrapper, headless: true, args: CHROMIUM_ARGS, timeout: 20000 });
      return { context: await browser.newContext(), close: () => browser.close().catch(() => {}) };
    } catch (err) {
      log(`netns chromium attempt ${attempt}: ${String(err.message).split('\n')[0]}`);
    }
  }
  throw new Error('chromium in the namespace did not start');
}

const tc = (...a) => execFileSync('tc', a, { stdio: 'pipe' });

await runReport(120000, async (report) => {
  const { context, close } = await launch();
  const closers = [close];
  try {
    const pubPage = await newPage(context, args.base);
    report.publisher = await pubPage.evaluate(publishSimulcast, { base: args.base, room: args.room, key: args.key });
    await sleep(2500); // let the publisher's bandwidth estimate open all layers

    if (args.mode === 'rid') {
      const viewPage = await newPage(context, args.base);
      await viewPage.evaluate(startViewers, { base: args.base, room: args.room, count: 2, layers: [{ rid: 'l' }, { rid: 'h' }] });
      await sleep(5000);
      report.viewers = await viewPage.evaluate(viewerState);
    } else if (args.mode === 'reconnect') {
      const viewPage = await newPage(context, args.base);
      await viewPage.evaluate(startViewers, { base: args.base, room: args.room, count: 1 });
      await sleep(3000);
      report.before = (await viewPage.evaluate(viewerState))[0];
      await pubPage.evaluate(async () => { clearInterval(window.__draw); await window.__p.stop(); });
      await pubPage.close();
      const leftAt = Date.now();
      await sleep(1000);
      const pub2 = await newPage(context, args.base);
      await pub2.evaluate(publishSimulcast, { base: args.base, room: args.room, key: args.key });
      report.republishedAfterMs = Date.now() - leftAt;
      const framesAtRepublish = (await viewPage.evaluate(viewerState))[0].frames;
      const t0 = Date.now();
      let resumedMs = null;
      while (Date.now() - t0 < 8000) {
        const s = (await viewPage.evaluate(viewerState))[0];
        if (s.frames > framesAtRepublish + 3) { resumedMs = Date.now() - t0; break; }
        await sleep(50);
      }
      report.resumedMs = resumedMs;
      // The new publisher's own bandwidth estimate opens its top layer
      // after a few seconds (as at the first publish); wait for it.
      const t1 = Date.now();
      let after = (await viewPage.evaluate(viewerState))[0];
      while (Date.now() - t1 < 12000 && !(after.width === 1280 && Date.now() - t1 >= 2000)) {
        await sleep(250);
        after = (await viewPage.evaluate(viewerState))[0];
      }
      report.topLayerAfterMs = after.width === 1280 ? Date.now() - t1 : null;
      report.after = after;
    } else if (args.mode === 'bandwidth') {
      const ns = await launchInNetns(args.netns);
      closers.push(ns.close);
      const viewPage = await newPage(ns.context, args['viewer-base']);
      await viewPage.evaluate(startViewers, { base: args['viewer-base'], room: args.room, count: 1 });
      const samples = [];
      const sample = async (phase) => {
        const s = (await viewPage.evaluate(viewerState))[0];
        samples.push({ phase, ...s, gaps: undefined });
        return s;
      };
      const wait = async (phase, ms, until) => {
        const t0 = Date.now();
        while (Date.now() - t0 < ms) {
          const s = await sample(phase);
          if (until && until(s)) return Date.now() - t0;
          await sleep(250);
        }
        return null;
      };
      const pageNow = () => viewPage.evaluate(() => performance.now());
      report.start = await wait('start', 15000, (s) => s.width === 1280 && s.current === 0);
      // Watch a while first: the cut should meet a settled viewer, not one
      // still in its first second (bandwidth estimate at its start value).
      await wait('watching', 3000);
      const cutAt = await pageNow();
      report.cutWall = new Date().toISOString();
      tc('qdisc', 'add', 'dev', args.dev, 'root', 'tbf', 'rate', '350kbit', 'burst', '16kb', 'latency', '80ms');
      report.downMs = await wait('limited', 15000, (s) => s.width === 320);
      await wait('limited-hold', 3000);
      const liftAt = await pageNow();
      tc('qdisc', 'del', 'dev', args.dev, 'root');
      report.upMs = await wait('lifted', 25000, (s) => s.width === 1280);
      const end = await sample('end');
      report.maxGapMs = end.maxGapMs;
      report.gaps = end.gaps;
      report.widths = await viewPage.evaluate(() => window.__v[0].widths);
      report.cutAt = Math.round(cutAt);
      report.liftAt = Math.round(liftAt);
      // Longest frame gap (ms; gaps of 100 ms or less are not listed) that
      // ended while the link was limited, and after it was lifted.
      const longest = (from, to) => Math.max(100, ...end.gaps
        .filter(([at]) => at >= from && at < to).map(([, gap]) => gap));
      report.cutMaxGapMs = longest(cutAt, liftAt);
      report.liftedMaxGapMs = longest(liftAt, Infinity);
      report.samples = samples.filter((_, i) => i % 4 === 0);
    } else if (args.mode === 'loss') {
      // 5% random loss on the viewer's link: the viewer must NACK, the
      // server must answer with retransmissions, and decoding must go on.
      const ns = await launchInNetns(args.netns);
      closers.push(ns.close);
      const viewPage = await newPage(ns.context, args['viewer-base']);
      await viewPage.evaluate(startViewers, { base: args['viewer-base'], room: args.room, count: 1, layers: [{ rid: 'm' }] });
      await sleep(2000);
      report.before = (await viewPage.evaluate(viewerState))[0];
      // (iptables in the viewer's namespace: this kernel has no netem)
      execFileSync('ip', ['netns', 'exec', args.netns, 'iptables', '-A', 'INPUT', '-p', 'udp',
        '-m', 'statistic', '--mode', 'random', '--probability', '0.05', '-j', 'DROP'], { stdio: 'pipe' });
      await sleep(8000);
      report.after = (await viewPage.evaluate(viewerState))[0];
    } else {
      throw new Error(`unknown --mode ${args.mode}`);
    }
  } finally {
    try { if (args.dev) tc('qdisc', 'del', 'dev', args.dev, 'root'); } catch { /* not set */ }
    for (const c of closers.reverse()) await c();
  }
});
