// Functions that run INSIDE Chromium pages (passed to `page.evaluate`).
//
// Playwright sends each function's source text to the page, so every one of
// them must be self-contained: no references to anything outside its own
// body. Shared page-side helpers are installed on `window.__t` by
// `installHelpers`, which each page runs first.
//
// The WHIP/WHEP clients under test are the real ones the pages use, imported
// from the server's own `/assets/` URL.

/* global window, document, performance, RTCPeerConnection */

/**
 * Installs `window.__t`: stats summaries and the timestamp code drawn into
 * the video (24 bits of wall-clock milliseconds, then their complement, as
 * black/white blocks along the top of the picture) so a viewer can measure
 * glass-to-glass latency. Both pages live in one browser on one machine, so
 * `performance.timeOrigin + performance.now()` is one clock for both.
 */
export function installHelpers() {
  const BITS = 24;
  const BLOCK_W = 26;
  const BAND_H = 40;
  const X0 = 16;
  const MASK = (1 << BITS) - 1;
  const nowMs = () => Math.round(performance.timeOrigin + performance.now());

  /** Draws the stamp for `value` on a 1280-wide canvas context. */
  function drawStamp(ctx, value) {
    ctx.fillStyle = '#808080';
    ctx.fillRect(0, 0, X0 * 2 + BLOCK_W * BITS * 2, BAND_H);
    for (let i = 0; i < BITS * 2; i++) {
      const bit =
        i < BITS ? (value >> (BITS - 1 - i)) & 1 : ((value >> (2 * BITS - 1 - i)) & 1) ^ 1;
      ctx.fillStyle = bit ? '#ffffff' : '#000000';
      ctx.fillRect(X0 + i * BLOCK_W, 0, BLOCK_W, BAND_H);
    }
  }

  /** Reads a stamp from a 1280×BAND_H RGBA buffer; null when it does not check out. */
  function readStamp(rgba, width) {
    let value = 0;
    const bits = [];
    for (let i = 0; i < BITS * 2; i++) {
      const cx = X0 + i * BLOCK_W + BLOCK_W / 2;
      let sum = 0;
      let n = 0;
      for (let y = BAND_H / 2 - 6; y < BAND_H / 2 + 6; y += 2) {
        for (let x = cx - 6; x < cx + 6; x += 2) {
          const o = (y * width + x) * 4;
          sum += (rgba[o] + rgba[o + 1] + rgba[o + 2]) / 3;
          n++;
        }
      }
      bits.push(sum / n > 128 ? 1 : 0);
    }
    for (let i = 0; i < BITS; i++) {
      if (bits[i] === bits[i + BITS]) return null;
      value = (value << 1) | bits[i];
    }
    return value >>> 0;
  }

  /** Milliseconds from a stamp to now, or null if it looks wrong. */
  function ageOf(stamp) {
    const age = (nowMs() - stamp) & MASK;
    return age < 60000 ? age : null;
  }

  async function byType(pc) {
    const report = await pc.getStats();
    const all = [...report.values()];
    const codecOf = (s) => (s.codecId && report.get(s.codecId)?.mimeType) || null;
    const pair =
      all.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') ??
      all.find((s) => s.type === 'candidate-pair' && s.state === 'succeeded');
    return { all, codecOf, pair, report };
  }

  const pick = (obj, keys) =>
    obj
      ? Object.fromEntries(keys.filter((k) => obj[k] !== undefined).map((k) => [k, obj[k]]))
      : null;
  const rttMs = (pair) =>
    pair?.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 1000) : null;

  async function inboundSummary(pc) {
    const { all, codecOf, pair } = await byType(pc);
    const video = all.find((s) => s.type === 'inbound-rtp' && s.kind === 'video');
    const audio = all.find((s) => s.type === 'inbound-rtp' && s.kind === 'audio');
    return {
      connectionState: pc.connectionState,
      video: video && {
        codec: codecOf(video),
        ...pick(video, [
          'framesDecoded', 'framesReceived', 'framesDropped', 'keyFramesDecoded', 'frameWidth',
          'frameHeight', 'framesPerSecond', 'packetsReceived', 'packetsLost', 'nackCount',
          'pliCount', 'firCount', 'freezeCount', 'totalFreezesDuration', 'pauseCount', 'jitter',
          'bytesReceived', 'decoderImplementation',
        ]),
        jitterBufferMs: video.jitterBufferEmittedCount
          ? Math.round((video.jitterBufferDelay / video.jitterBufferEmittedCount) * 1000)
          : null,
      },
      audio: audio && {
        codec: codecOf(audio),
        ...pick(audio, [
          'packetsReceived', 'packetsLost', 'totalSamplesReceived', 'concealedSamples',
          'totalAudioEnergy', 'audioLevel', 'jitter', 'bytesReceived',
        ]),
      },
      rttMs: rttMs(pair),
    };
  }

  async function outboundSummary(pc) {
    const { all, codecOf, pair } = await byType(pc);
    const videos = all.filter((s) => s.type === 'outbound-rtp' && s.kind === 'video');
    const audio = all.find((s) => s.type === 'outbound-rtp' && s.kind === 'audio');
    const remote = all.filter((s) => s.type === 'remote-inbound-rtp');
    const sources = all.filter((s) => s.type === 'media-source');
    return {
      sources: sources.map((m) =>
        pick(m, [
          'kind', 'width', 'height', 'framesPerSecond', 'frames', 'audioLevel',
          'totalAudioEnergy',
        ])),
      connectionState: pc.connectionState,
      video: videos.map((v) => ({
        codec: codecOf(v),
        ...pick(v, [
          'rid', 'frameWidth', 'frameHeight', 'framesPerSecond', 'framesEncoded', 'framesSent',
          'keyFramesEncoded', 'packetsSent', 'bytesSent', 'retransmittedPacketsSent', 'nackCount',
          'pliCount', 'firCount', 'qualityLimitationReason', 'encoderImplementation', 'active',
        ]),
      })),
      audio: audio && { codec: codecOf(audio), ...pick(audio, ['packetsSent', 'bytesSent']) },
      // RTCP receiver reports from the server, if it sends them.
      remoteInbound: remote.map((r) =>
        pick(r, ['kind', 'packetsLost', 'fractionLost', 'roundTripTime'])),
      availableOutgoingBitrate: pair?.availableOutgoingBitrate ?? null,
      rttMs: rttMs(pair),
    };
  }

  /** Resolves when `pc` is connected; rejects on failure or after timeoutMs. */
  function connected(pc, timeoutMs) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pc.connectionState === 'connected') done(resolve);
        else if (pc.connectionState === 'failed' || pc.connectionState === 'closed')
          done(() => reject(new Error(`connectionState ${pc.connectionState}`)));
      };
      const timer = setTimeout(() => {
        const why = `${pc.connectionState}, ice ${pc.iceConnectionState}`;
        done(() => reject(new Error(`not connected after ${timeoutMs} ms (${why})`)));
      }, timeoutMs);
      const done = (fn) => {
        clearTimeout(timer);
        pc.removeEventListener('connectionstatechange', check);
        fn();
      };
      pc.addEventListener('connectionstatechange', check);
      check();
    });
  }

  window.__t = {
    drawStamp, readStamp, ageOf, nowMs, inboundSummary, outboundSummary, connected, BAND_H,
  };
}

/**
 * Publisher page: a 1280×720 canvas with moving content and a timestamp
 * stamp, captured at 30 fps, plus a 440 Hz tone; then WHIP to the server
 * (with `videoEncodings`, e.g. three simulcast layers by rid).
 */
export async function publishCanvas({ base, room, key, codec, width, height, videoEncodings }) {
  const t = window.__t;
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  canvas.style.width = '320px';
  document.body.append(canvas);
  const ctx = canvas.getContext('2d');
  let frame = 0;
  const draw = () => {
    frame++;
    const hue = (frame * 2) % 360;
    ctx.fillStyle = `hsl(${hue} 60% 35%)`;
    ctx.fillRect(0, 0, width, height);
    // A bouncing box and a frame counter: every frame differs from the last.
    const x = Math.abs(((frame * 12) % (2 * (width - 200))) - (width - 200));
    ctx.fillStyle = `hsl(${(hue + 180) % 360} 80% 60%)`;
    ctx.fillRect(x, height / 2 - 100, 200, 200);
    ctx.fillStyle = '#fff';
    ctx.font = 'bold 96px sans-serif';
    ctx.fillText(`#${frame}`, 60, height - 80);
    t.drawStamp(ctx, t.nowMs() & 0xffffff);
  };
  // A timer, not requestAnimationFrame: headless Chromium does not run
  // animation frames for a page it is not showing, and then the canvas
  // produces no frames at all.
  draw();
  window.__drawTimer = setInterval(draw, 1000 / 30);
  const stream = canvas.captureStream(30);

  const audioContext = new AudioContext();
  const osc = audioContext.createOscillator();
  osc.frequency.value = 440;
  const gain = audioContext.createGain();
  gain.gain.value = 0.3;
  const dest = audioContext.createMediaStreamDestination();
  osc.connect(gain).connect(dest);
  osc.start();
  await audioContext.resume();
  stream.addTrack(dest.stream.getAudioTracks()[0]);

  const { WhipPublisher } = await import(`${base}/assets/whip.js`);
  const publisher = new WhipPublisher(`${base}/whip/${encodeURIComponent(room)}`, {
    token: key,
    videoCodec: codec,
    // Simulcast layers (rid, scaleResolutionDownBy), when given.
    videoEncodings,
    // Keep 1280×720 whatever the bandwidth estimate says, so the viewers'
    // resolution shows what the server forwards, not what the encoder chose.
    degradationPreference: 'maintain-resolution',
  });
  window.__publisher = publisher;
  window.__publishArgs = { base, room, key, codec, stream, videoEncodings };
  const out = { audioContextState: audioContext.state };
  try {
    await publisher.start(stream);
  } catch (err) {
    return { ...out, error: `WHIP: ${err.message}`, status: err.status ?? 0 };
  }
  out.answerMs = Math.round(publisher.answeredAt - publisher.postedAt);
  out.location = publisher.location;
  out.etag = publisher.etag;
  out.answerSdp = publisher.pc.remoteDescription?.sdp ?? null;
  try {
    await t.connected(publisher.pc, 10000);
  } catch (err) {
    return { ...out, error: `WHIP peer connection: ${err.message}` };
  }
  window.__connectedAt = performance.now();
  out.connectedMs = Math.round(window.__connectedAt - publisher.postedAt);
  return out;
}

/** Publisher page: its outbound stats now. */
export async function publisherStats() {
  const p = window.__publisher;
  if (!p?.pc) return null;
  const summary = await window.__t.outboundSummary(p.pc);
  // Frames encoded per second since the first connection: below the
  // source's 30, the browser was short of CPU (or dropped frames for
  // bandwidth); either way the viewers cannot see more than this.
  const encoded = summary.video.reduce((n, v) => n + (v.framesEncoded ?? 0), 0);
  const seconds = (performance.now() - window.__connectedAt) / 1000;
  summary.encodedFps = Math.round((encoded * 10) / seconds) / 10;
  return summary;
}

/**
 * Publisher page: ends the WHIP session (DELETE) and publishes the same
 * tracks again in a new one after `pauseMs`, as an encoder reconnecting does.
 */
export async function republish({ pauseMs }) {
  const { base, room, key, codec, stream, videoEncodings } = window.__publishArgs;
  const deleteStatus = await window.__publisher.stop();
  await new Promise((r) => setTimeout(r, pauseMs));
  const { WhipPublisher } = await import(`${base}/assets/whip.js`);
  const publisher = new WhipPublisher(`${base}/whip/${encodeURIComponent(room)}`, {
    token: key,
    videoCodec: codec,
    videoEncodings,
    degradationPreference: 'maintain-resolution',
  });
  window.__publisher = publisher;
  try {
    await publisher.start(stream);
    await window.__t.connected(publisher.pc, 10000);
    window.__connectedAt = performance.now();
  } catch (err) {
    return { deleteStatus, error: `WHIP again: ${err.message}`, status: err.status ?? 0 };
  }
  return { deleteStatus, connectedMs: Math.round(performance.now() - publisher.postedAt) };
}

/** Publisher page: DELETE the session; returns the HTTP status. */
export async function stopPublisher() {
  clearInterval(window.__drawTimer);
  return window.__publisher ? window.__publisher.stop() : 0;
}

/**
 * Viewer page: `count` WHEP viewers, each with its own RTCPeerConnection and
 * <video>, started `staggerMs` apart. Each counts the frames it shows
 * (requestVideoFrameCallback) and, every few frames, reads the timestamp
 * stamp back to measure glass-to-glass latency.
 */
export async function startViewers({ base, room, count, staggerMs }) {
  const t = window.__t;
  const LIVE_EDGE_MS = 250;
  const { WhepViewer } = await import(`${base}/assets/whep.js`);
  const strip = document.createElement('canvas');
  strip.width = 1280;
  strip.height = t.BAND_H;
  const stripCtx = strip.getContext('2d', { willReadFrequently: true });
  window.__viewers = [];

  const startOne = (index) => {
    const video = document.createElement('video');
    video.muted = index > 0;
    video.autoplay = true;
    video.playsInline = true;
    video.width = 320;
    video.height = 180;
    document.body.append(video);
    const viewer = new WhepViewer(`${base}/whep/${encodeURIComponent(room)}`, {
      onState: (state) =>
        probe.states.push([Math.round(performance.now() - probe.createdAt), state]),
    });
    const probe = {
      index,
      viewer,
      video,
      createdAt: performance.now(),
      states: [],
      frames: 0,
      firstFrameAt: null,
      lastFrameAt: null,
      maxGapMs: 0,
      maxGapAt: 0,
      mark: null,
      latencies: [],
      stampsUnreadable: 0,
      firstFrameAge: null,
      liveAfterMs: null,
      error: null,
    };
    window.__viewers.push(probe);
    video.srcObject = viewer.stream;
    const onFrame = (now) => {
      probe.frames++;
      if (probe.firstFrameAt === null) probe.firstFrameAt = now;
      else if (now - probe.lastFrameAt > probe.maxGapMs) {
        probe.maxGapMs = now - probe.lastFrameAt;
        probe.maxGapAt = probe.lastFrameAt - probe.firstFrameAt;
      }
      if (probe.mark) {
        const m = probe.mark;
        if (m.firstFrameAt === null) m.firstFrameAt = now;
        m.maxGapMs = Math.max(m.maxGapMs, now - (m.lastFrameAt ?? m.at));
        m.lastFrameAt = now;
        m.frames++;
      }
      probe.lastFrameAt = now;
      if ((probe.frames === 1 || probe.frames % 5 === 0) && video.videoWidth) {
        const sh = (video.videoHeight * t.BAND_H) / 720;
        stripCtx.drawImage(video, 0, 0, video.videoWidth, sh, 0, 0, 1280, t.BAND_H);
        const stamp = t.readStamp(stripCtx.getImageData(0, 0, 1280, t.BAND_H).data, 1280);
        const age = stamp === null ? null : t.ageOf(stamp);
        if (age === null) probe.stampsUnreadable++;
        else probe.latencies.push(age);
        if (probe.frames === 1) probe.firstFrameAge = age;
        if (age !== null && age < LIVE_EDGE_MS && probe.liveAfterMs === null) {
          probe.liveAfterMs = now - probe.firstFrameAt;
        }
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    viewer.start().catch((err) => {
      probe.error = `WHEP: ${err.message}`;
      probe.status = err.status ?? 0;
    });
  };

  for (let i = 0; i < count; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, staggerMs));
    startOne(i);
  }
}

/** Viewer page: from now on, also count frames and gaps apart (see `sinceMark`). */
export async function markViewers() {
  for (const p of window.__viewers ?? []) {
    const video = await window.__t.inboundSummary(p.viewer.pc);
    p.mark = {
      at: performance.now(),
      frames: 0,
      firstFrameAt: null,
      lastFrameAt: null,
      maxGapMs: 0,
      framesDecoded: video.video?.framesDecoded ?? 0,
      freezeCount: video.video?.freezeCount ?? 0,
    };
  }
}

/** Viewer page: every viewer's figures so far. */
export async function viewerReport() {
  const t = window.__t;
  const now = performance.now();
  const out = [];
  for (const p of window.__viewers ?? []) {
    const lat = [...p.latencies].sort((a, b) => a - b);
    const q = (f) =>
      lat.length ? lat[Math.min(lat.length - 1, Math.floor(f * lat.length))] : null;
    const { answeredAt, postedAt } = p.viewer;
    const windowMs = p.firstFrameAt === null ? 0 : now - p.firstFrameAt;
    const closed = p.viewer.pc.connectionState === 'closed';
    const stats = closed ? null : await t.inboundSummary(p.viewer.pc);
    out.push({
      index: p.index,
      error: p.error,
      status: p.status ?? null,
      states: p.states,
      retries409: p.viewer.retries,
      answerMs: answeredAt !== null ? Math.round(answeredAt - postedAt) : null,
      // From the POST that got answered to the first frame shown.
      timeToFirstFrameMs:
        p.firstFrameAt !== null && p.viewer.postedAt !== null
          ? Math.round(p.firstFrameAt - p.viewer.postedAt)
          : null,
      frames: p.frames,
      windowMs: Math.round(windowMs),
      fps: windowMs > 0 ? Math.round((p.frames * 10000) / windowMs) / 10 : 0,
      maxFrameGapMs: Math.round(p.maxGapMs),
      // When the longest gap began, in ms after the first frame.
      maxFrameGapAtMs: Math.round(p.maxGapAt),
      videoWidth: p.video.videoWidth,
      videoHeight: p.video.videoHeight,
      latencyMs: {
        samples: lat.length,
        unreadable: p.stampsUnreadable,
        p50: q(0.5),
        p90: q(0.9),
        max: lat.at(-1) ?? null,
        // How old the first frame shown was: a viewer must start at the
        // live edge, not with a replay of old frames.
        firstFrame: p.firstFrameAge,
        // When, after the first frame, a frame younger than LIVE_EDGE_MS
        // was first shown: how long a late joiner takes to reach live.
        liveAfterMs: p.liveAfterMs === null ? null : Math.round(p.liveAfterMs),
      },
      stats,
      // Since markViewers(): frames shown, the longest pause (from the mark
      // to the first frame counts), decoded frames and freezes added.
      sinceMark: p.mark && {
        ms: Math.round(now - p.mark.at),
        frames: p.mark.frames,
        firstFrameAfterMs:
          p.mark.firstFrameAt === null ? null : Math.round(p.mark.firstFrameAt - p.mark.at),
        maxGapMs: Math.round(Math.max(p.mark.maxGapMs, now - (p.mark.lastFrameAt ?? p.mark.at))),
        framesDecoded: (stats?.video?.framesDecoded ?? 0) - p.mark.framesDecoded,
        freezes: (stats?.video?.freezeCount ?? 0) - p.mark.freezeCount,
      },
    });
  }
  return out;
}

/** Viewer page: DELETE every session; returns the HTTP statuses. */
export async function stopViewers() {
  return Promise.all((window.__viewers ?? []).map((p) => p.viewer.stop()));
}
