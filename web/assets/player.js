// <dionysia-player>: a live player that never leaves a viewer without a picture.
//
//   <script type="module" src="https://live.example.com/assets/player.js"></script>
//   <dionysia-player room="show"></dionysia-player>
//
//            ┌─ WHEP POST /whep/{room} ─► 201 ─► ICE+DTLS up within ice-timeout? ─► WebRTC
//   start ───┤        409: waiting (Retry-After), stream ended after a live period
//            │        503 hls-only / room-full / server full, ICE failed or timed out
//            └──────────────────────────────────────────────────────────────────────► LL-HLS
//                     /hls/{room}/index.m3u8 with hls.js (loaded only now), or Safari's own HLS
//
// WebRTC is tried again later when that makes sense: after ICE failed (UDP
// blocked?) in RETRY_WEBRTC_MS, after a 503 for capacity once the server's
// Retry-After (at least RETRY_WEBRTC_MS / 2) has passed, for an HLS-only
// room when its HLS stream ends (at most every RECHECK_HLS_ONLY_MS). An upgrade from HLS to WebRTC is
// made in the background: the picture switches only once WebRTC decodes.
//
// Attributes: room (required), server (default: where this module was loaded
// from), token (viewer token of a private room; also ?token= on the watch
// page), mode ('auto', 'webrtc', 'hls'), ice-timeout (ms, default 5000),
// muted (always start muted).
//
// The element reflects its state on itself (data-state: connecting, waiting,
// live, ended, error; data-mode: webrtc, hls) and fires 'statechange'. Its
// `video`, `state`, `mode`, `fallbackReason` and `stats` are readable.

import { WhepViewer, WishError } from './whep.js';

const ICE_TIMEOUT_MS = 5000;
const RETRY_WEBRTC_MS = 60000;
/** An HLS-only room: WHEP is asked again (when the HLS stream ends) after this. */
const RECHECK_HLS_ONLY_MS = 30000;
/** No new frame for this long: the stream has ended (the session is kept). */
const ENDED_AFTER_MS = 3000;
/** No new frame for this long: the session is started over. */
const RESTART_AFTER_MS = 15000;
const HLS_POLL_MS = 2000;
const HLS_TYPE = 'application/vnd.apple.mpegurl';

const MODULE_BASE = new URL('..', import.meta.url);

/** What the control bar says; the overlay over the picture says more. */
const SHORT = {
  live: 'Live',
  waiting: 'Waiting for the stream',
  ended: 'Stream ended',
  connecting: 'Connecting…',
};

const ICONS = {
  muted:
    '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 9v6h4l5 4V5L8 9H4z" fill="currentColor"/><path d="M16 9l5 6m0-6l-5 6" stroke="currentColor" stroke-width="2" fill="none" stroke-linecap="round"/></svg>',
  sound:
    '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 9v6h4l5 4V5L8 9H4z" fill="currentColor"/><path d="M16 8.5a5 5 0 0 1 0 7M18.5 6a8.5 8.5 0 0 1 0 12" stroke="currentColor" stroke-width="2" fill="none" stroke-linecap="round"/></svg>',
  fullscreen:
    '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 9V4h5M15 4h5v5M20 15v5h-5M9 20H4v-5" stroke="currentColor" stroke-width="2" fill="none" stroke-linecap="round"/></svg>',
};

const TEMPLATE = `
<div class="frame" part="frame">
  <video id="video" playsinline aria-label="Live video"></video>
  <div class="badges">
    <span class="live" id="live-badge" hidden>LIVE</span>
    <span class="mode" id="mode" hidden></span>
  </div>
  <div class="overlay" id="overlay">
    <div class="spinner" aria-hidden="true"></div>
    <p id="message">Connecting…</p>
  </div>
  <button class="unmute-hint" id="unmute-hint" type="button" hidden>
    ${ICONS.muted}<span>Tap to unmute</span>
  </button>
</div>
<div class="bar" part="bar">
  <button id="unmute" type="button" class="icon" aria-pressed="false">${ICONS.muted}<span class="label">Unmute</span></button>
  <span id="status" class="status" role="status" aria-live="polite" data-state="connecting">Connecting…</span>
  <span class="spacer"></span>
  <span id="latency" class="meta" title="Estimated delay behind the publisher"></span>
  <span id="resolution" class="meta" aria-label="Video resolution"></span>
  <label class="quality" id="quality-label" hidden>
    <span class="visually-hidden">Quality</span>
    <select id="quality" aria-label="Quality"><option value="auto">Auto</option></select>
  </label>
  <button id="fullscreen" type="button" class="icon" aria-label="Full screen">${ICONS.fullscreen}</button>
</div>`;

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });

/** Safari (desktop and iOS) plays LL-HLS itself; other browsers get hls.js. */
function prefersNativeHls(video) {
  const ua = navigator.userAgent;
  const safari = /Safari\//.test(ua) && !/Chrome|Chromium|CriOS|Android|Edg|Firefox|FxiOS/.test(ua);
  return safari && video.canPlayType(HLS_TYPE) !== '';
}

export class DionysiaPlayer extends HTMLElement {
  static observedAttributes = ['room', 'server', 'token', 'mode'];

  /** Why the player is on HLS: 'hls-only', 'capacity', 'ice', 'unsupported', 'forced', or null. */
  fallbackReason = null;
  /** 'webrtc', 'hls' or null. */
  mode = null;
  /** What happened, as [performance.now() ms, what] (the newest 100). */
  events = [];
  state = 'connecting';

  #root;
  #els = {};
  #run = null; // AbortController of the current run
  #wasLive = false;
  #webrtcAgainAt = 0;
  #hlsOnly = false;
  #userMuted = null; // null until the viewer chooses
  #lastFrameAt = 0;
  #frames = 0;
  #latencyMs = null;
  #quality = null; // {options: [{value,label}], select(value)}

  constructor() {
    super();
    this.#root = this.attachShadow({ mode: 'open' });
    const css = document.createElement('link');
    css.rel = 'stylesheet';
    css.href = new URL('assets/player.css', MODULE_BASE).href;
    this.#root.append(css);
    const body = document.createElement('div');
    body.className = 'player';
    body.innerHTML = TEMPLATE;
    this.#root.append(body);
    for (const el of this.#root.querySelectorAll('[id]')) this.#els[el.id] = el;
    this.#wireControls();
  }

  /** The <video> the player shows. */
  get video() {
    return this.#els.video;
  }

  /** What the player shows now: mode, resolution, estimated latency, frames shown. */
  get stats() {
    const v = this.video;
    return {
      state: this.state,
      mode: this.mode,
      fallbackReason: this.fallbackReason,
      width: v.videoWidth,
      height: v.videoHeight,
      latencyMs: this.#latencyMs,
      frames: this.#frames,
      muted: v.muted,
    };
  }

  connectedCallback() {
    this.#restart();
  }

  disconnectedCallback() {
    this.#run?.abort();
    this.#run = null;
  }

  attributeChangedCallback(_name, oldValue, newValue) {
    if (oldValue !== newValue && this.isConnected) this.#restart();
  }

  get #server() {
    return new URL(this.getAttribute('server') || MODULE_BASE.href, document.baseURI);
  }

  get #room() {
    return this.getAttribute('room') || '';
  }

  get #token() {
    return this.getAttribute('token') || undefined;
  }

  #restart() {
    // Coalesce: a page sets several attributes in a row.
    if (this.#pending) return;
    this.#pending = true;
    queueMicrotask(() => {
      this.#pending = false;
      if (this.isConnected) this.#start();
    });
  }

  #pending = false;

  #start() {
    this.#run?.abort();
    const run = new AbortController();
    this.#run = run;
    this.#loop(run.signal).catch((err) => {
      if (!run.signal.aborted) this.#setState('error', `Playback failed: ${err.message}`);
    });
  }

  // ------------------------------------------------------------ the loop

  /**
   * Plays until `signal` aborts. Each round plays one way and says what
   * next: `{fallback, retryMs}` (go to HLS), `{upgrade}` (a connected WHEP
   * viewer to switch to), `{ended}` (the stream is over), and `delayMs`
   * before the next round.
   */
  async #loop(signal) {
    if (!this.#room) {
      this.#setState('error', 'No room given.');
      return;
    }
    const forced = (this.getAttribute('mode') || 'auto').toLowerCase();
    let handover = null; // a connected WHEP viewer from a background upgrade
    while (!signal.aborted) {
      const useHls =
        forced === 'hls' ||
        (forced !== 'webrtc' && Date.now() < this.#webrtcAgainAt);
      let next;
      if (useHls) {
        if (forced === 'hls') this.fallbackReason = 'forced';
        next = await this.#playHls(signal, {
          forced: forced === 'hls',
          mayUpgrade: forced !== 'hls' && !this.#hlsOnly,
        });
      } else {
        next = await this.#playWebrtc(signal, handover);
      }
      handover = null;
      if (signal.aborted) return;
      if (next.fallback) {
        this.#note(`fallback:${next.fallback}`);
        this.fallbackReason = next.fallback;
        this.#hlsOnly = next.fallback === 'hls-only';
        this.#webrtcAgainAt =
          Date.now() + (this.#hlsOnly ? RECHECK_HLS_ONLY_MS : (next.retryMs ?? RETRY_WEBRTC_MS));
      } else if (next.upgrade) {
        this.#note('upgrade:webrtc');
        handover = next.upgrade;
        this.fallbackReason = null;
        this.#webrtcAgainAt = 0;
      }
      if (next.delayMs) await sleep(next.delayMs, signal);
    }
  }

  // ------------------------------------------------------------ WebRTC

  async #playWebrtc(signal, handover) {
    const endpoint = new URL(`whep/${encodeURIComponent(this.#room)}`, this.#server).href;
    let viewer = handover;
    if (typeof RTCPeerConnection === 'undefined') {
      // No WebRTC in this browser (or it is disabled): HLS for good.
      return { fallback: 'unsupported', retryMs: Infinity };
    }
    if (!viewer) {
      this.#setMode(null);
      if (this.state !== 'ended' && this.state !== 'waiting') {
        this.#setState('connecting', 'Connecting…');
      }
      viewer = new WhepViewer(endpoint, {
        token: this.#token,
        onState: (state) => {
          if (state === 'waiting') this.#notLive();
        },
      });
      const stopOnAbort = () => viewer.stop();
      signal.addEventListener('abort', stopOnAbort, { once: true });
      try {
        await viewer.start();
      } catch (err) {
        viewer.stop();
        if (signal.aborted) return {};
        return this.#whepRefused(err);
      }
      if (viewer.postedAt != null) this.#note('whep:posted', viewer.postedAt);
      const connected = await this.#connected(viewer.pc, this.#iceTimeout, signal);
      if (signal.aborted) return {};
      if (!connected) {
        viewer.stop();
        return { fallback: 'ice', retryMs: RETRY_WEBRTC_MS };
      }
      signal.removeEventListener('abort', stopOnAbort);
    }
    signal.addEventListener('abort', () => viewer.stop(), { once: true });
    this.fallbackReason = null;
    this.#setMode('webrtc');
    this.video.srcObject = viewer.stream;
    this.#autoplay();
    this.#quality = webrtcQuality(viewer);
    try {
      return await this.#watchWebrtc(viewer, signal);
    } finally {
      this.#quality = null;
      this.#renderQuality([]);
      viewer.stop();
      if (this.video.srcObject === viewer.stream) this.video.srcObject = null;
    }
  }

  get #iceTimeout() {
    const v = Number(this.getAttribute('ice-timeout'));
    return Number.isFinite(v) && v > 0 ? v : ICE_TIMEOUT_MS;
  }

  /** What to do after the server refused a WHEP offer. */
  #whepRefused(err) {
    if (!(err instanceof WishError)) return { delayMs: 3000 };
    if (err.status === 503) {
      if ((err.problemType || '').endsWith('hls-only')) return { fallback: 'hls-only' };
      return {
        fallback: 'capacity',
        retryMs: Math.max(RETRY_WEBRTC_MS / 2, err.retryAfterMs ?? 0),
      };
    }
    if (err.status === 401) {
      this.#setState('error', 'This room is private: a viewer token is needed.');
      return { delayMs: 30000 };
    }
    if (err.status === 404) {
      this.#setState('error', `There is no room named “${this.#room}”.`);
      return { delayMs: 10000 };
    }
    if (err.status === 0) {
      this.#setState('connecting', 'Cannot reach the server; trying again…');
      return { delayMs: 3000 };
    }
    this.#setState('error', `The server refused: ${err.message}`);
    return { delayMs: 5000 };
  }

  /** Resolves true once `pc` is connected, false if it fails or `ms` pass first. */
  #connected(pc, ms, signal) {
    return new Promise((resolve) => {
      const done = (ok) => {
        clearTimeout(timer);
        pc.removeEventListener('connectionstatechange', check);
        resolve(ok);
      };
      const check = () => {
        if (pc.connectionState === 'connected') done(true);
        else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') done(false);
      };
      const timer = setTimeout(() => done(false), ms);
      pc.addEventListener('connectionstatechange', check);
      signal.addEventListener('abort', () => done(false), { once: true });
      check();
    });
  }

  /** Watches a connected session until it should be started over. */
  async #watchWebrtc(viewer, signal) {
    let decoded = -1;
    let lastNew = performance.now();
    let disconnectedSince = 0;
    let tick = 0;
    while (!signal.aborted) {
      await sleep(1000, signal);
      if (signal.aborted) return {};
      const pc = viewer.pc;
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        this.#notLive();
        return { delayMs: 500 };
      }
      if (pc.connectionState === 'disconnected') {
        disconnectedSince ||= performance.now();
        if (performance.now() - disconnectedSince > 5000) return { delayMs: 500 };
      } else {
        disconnectedSince = 0;
      }
      const s = await webrtcStats(pc);
      const now = performance.now();
      if (s.framesDecoded !== decoded) {
        decoded = s.framesDecoded;
        lastNew = now;
      } else if (now - lastNew > RESTART_AFTER_MS) {
        return { ended: true, delayMs: 500 };
      } else if (now - lastNew > ENDED_AFTER_MS && this.#wasLive) {
        this.#notLive();
      }
      this.#latencyMs = s.latencyMs;
      this.#renderMeta();
      if (tick++ % 3 === 0) this.#refreshQuality();
    }
    return {};
  }

  // ------------------------------------------------------------ HLS

  async #playHls(signal, { forced, mayUpgrade }) {
    const url = new URL(`hls/${encodeURIComponent(this.#room)}/index.m3u8`, this.#server);
    if (this.#token) url.searchParams.set('token', this.#token);
    // Is it live? (The first request of a room waits until its first segment exists.)
    let response;
    try {
      response = await fetch(url, { signal });
    } catch {
      if (signal.aborted) return {};
      this.#setState('connecting', 'Cannot reach the server; trying again…');
      return { delayMs: 3000 };
    }
    if (response.status === 401) {
      this.#setState('error', 'This room is private: a viewer token is needed.');
      return { delayMs: 30000 };
    }
    if (!response.ok) {
      this.#setMode('hls');
      this.#notLive();
      // Not live. Unless HLS was chosen, the next stream may be served over
      // WebRTC (room settings change): the loop asks WHEP again once the
      // fallback's reason has expired.
      return forced ? { delayMs: HLS_POLL_MS } : { ended: true, delayMs: HLS_POLL_MS };
    }
    this.#setMode('hls');
    const video = this.video;
    video.srcObject = null;
    let hls = null;
    const finished = new AbortController();
    let outcome = { ended: true, delayMs: 1000 };
    const finish = (o) => {
      outcome = o;
      finished.abort();
    };
    signal.addEventListener('abort', () => finished.abort(), { once: true });
    const Hls = prefersNativeHls(video) ? null : await loadHlsJs();
    if (Hls && Hls.isSupported()) {
      hls = new Hls({
        lowLatencyMode: true,
        maxLiveSyncPlaybackRate: 1.5,
        backBufferLength: 10,
        // A worker would be a blob: script, which the pages' CSP refuses.
        enableWorker: false,
        manifestLoadingMaxRetry: 2,
      });
      let mediaRecoveries = 0;
      hls.on(Hls.Events.ERROR, (_event, data) => {
        if (!data.fatal) return;
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR && mediaRecoveries++ < 2) {
          hls.recoverMediaError();
          return;
        }
        // A 404 means the publish is over (a republish is a new HLS session).
        finish({ ended: true, delayMs: 1000 });
      });
      hls.on(Hls.Events.MANIFEST_PARSED, () => this.#renderQuality(this.#quality?.options ?? []));
      hls.on(Hls.Events.LEVEL_SWITCHED, () => this.#renderMeta());
      this.#quality = hlsQuality(hls);
      hls.loadSource(url.href);
      hls.attachMedia(video);
    } else if (video.canPlayType(HLS_TYPE) !== '') {
      video.src = url.href;
      this.#quality = null;
    } else {
      this.#setState('error', 'This browser can play neither WebRTC nor HLS here.');
      return { delayMs: 30000 };
    }
    this.#autoplay();
    const startedAt = performance.now();
    let lastTime = -1;
    let lastProgress = performance.now();
    try {
      while (!finished.signal.aborted) {
        await sleep(1000, finished.signal);
        if (finished.signal.aborted) break;
        const now = performance.now();
        if (video.currentTime !== lastTime) {
          lastTime = video.currentTime;
          lastProgress = now;
        } else if (now - lastProgress > 8000) {
          this.#notLive();
          finish({ ended: true, delayMs: 1000 });
          break;
        }
        this.#latencyMs = hlsLatencyMs(hls, video);
        this.#renderMeta();
        if (mayUpgrade && Date.now() >= this.#webrtcAgainAt && now - startedAt > 5000) {
          this.#webrtcAgainAt = Date.now() + RETRY_WEBRTC_MS;
          const viewer = await this.#tryWebrtcInBackground(signal);
          if (viewer) {
            finish({ upgrade: viewer });
            break;
          }
        }
      }
    } finally {
      this.#quality = null;
      this.#renderQuality([]);
      hls?.destroy();
      if (!hls) {
        video.removeAttribute('src');
        video.load();
      }
    }
    return signal.aborted ? {} : outcome;
  }

  /** A WHEP session that connected and decoded a frame, or null (and none is left open). */
  async #tryWebrtcInBackground(signal) {
    const endpoint = new URL(`whep/${encodeURIComponent(this.#room)}`, this.#server).href;
    const viewer = new WhepViewer(endpoint, { token: this.#token });
    const attempt = new AbortController();
    const giveUp = setTimeout(() => attempt.abort(), this.#iceTimeout + 5000);
    signal.addEventListener('abort', () => attempt.abort(), { once: true });
    attempt.signal.addEventListener('abort', () => viewer.stop(), { once: true });
    try {
      await viewer.start();
      if (!(await this.#connected(viewer.pc, this.#iceTimeout, attempt.signal))) throw new Error('ICE');
      while (!attempt.signal.aborted) {
        if ((await webrtcStats(viewer.pc)).framesDecoded > 0) {
          clearTimeout(giveUp);
          return viewer;
        }
        await sleep(200, attempt.signal);
      }
    } catch {
      // stay on HLS
    }
    clearTimeout(giveUp);
    viewer.stop();
    return null;
  }

  // ------------------------------------------------------------ display

  #note(what, at = performance.now()) {
    this.events.push([Math.round(at), what]);
    if (this.events.length > 100) this.events.shift();
  }

  #setMode(mode) {
    if (mode !== this.mode) this.#note(`mode:${mode}`);
    this.mode = mode;
    if (mode) this.dataset.mode = mode;
    else delete this.dataset.mode;
    const badge = this.#els.mode;
    badge.hidden = !mode;
    badge.textContent = mode === 'webrtc' ? 'WebRTC' : mode === 'hls' ? 'HLS' : '';
    badge.title =
      mode === 'hls' && this.fallbackReason
        ? {
            'hls-only': 'This room is served over HLS only',
            capacity: 'WebRTC is full; WebRTC will be tried again later',
            ice: 'WebRTC could not connect from this network; it will be tried again later',
            forced: 'HLS was chosen',
            unsupported: 'This browser cannot use WebRTC',
          }[this.fallbackReason]
        : '';
    this.#emit();
  }

  #notLive() {
    if (this.#wasLive) this.#setState('ended', 'The stream has ended. It will resume here when it comes back.');
    else this.#setState('waiting', 'Waiting for the stream to start…');
  }

  #setState(state, message) {
    const changed = state !== this.state || this.#els.message.textContent !== message;
    if (state !== this.state) this.#note(`state:${state}`);
    this.state = state;
    this.dataset.state = state;
    const { status, overlay } = this.#els;
    const live = this.#els['live-badge'];
    status.dataset.state = state;
    status.textContent = SHORT[state] ?? message;
    this.#els.message.textContent = message;
    overlay.hidden = state === 'live';
    overlay.dataset.state = state;
    live.hidden = state !== 'live';
    if (changed) this.#emit();
  }

  #emit() {
    this.dispatchEvent(
      new CustomEvent('statechange', {
        detail: { state: this.state, mode: this.mode, message: this.#els.message.textContent },
      }),
    );
  }

  #onFrame = () => {
    this.#frames++;
    this.#lastFrameAt = performance.now();
    if (this.state !== 'live' && (this.video.srcObject || this.video.currentSrc)) {
      this.#wasLive = true;
      this.#setState('live', 'Live');
    }
    this.video.requestVideoFrameCallback(this.#onFrame);
  };

  #renderMeta() {
    const v = this.video;
    this.#els.resolution.textContent = v.videoWidth ? `${v.videoWidth}×${v.videoHeight}` : '';
    const l = this.#latencyMs;
    this.#els.latency.textContent =
      this.state === 'live' && l != null
        ? `≈ ${l < 1000 ? `${Math.round(l / 10) * 10} ms` : `${(l / 1000).toFixed(1)} s`} delay`
        : '';
  }

  async #refreshQuality() {
    if (!this.#quality) return;
    const options = await this.#quality.refresh();
    this.#renderQuality(options);
  }

  #renderQuality(options) {
    const select = this.#els.quality;
    this.#els['quality-label'].hidden = options.length < 2;
    const current = select.value;
    const key = JSON.stringify(options);
    if (select.dataset.options === key) return;
    select.dataset.options = key;
    select.replaceChildren(new Option('Auto', 'auto'));
    for (const o of options) select.append(new Option(o.label, o.value));
    select.value = options.some((o) => o.value === current) ? current : 'auto';
  }

  async #autoplay() {
    const v = this.video;
    const forceMuted = this.hasAttribute('muted');
    if (forceMuted || this.#userMuted === true) {
      v.muted = true;
    } else {
      v.muted = false;
      try {
        await v.play();
      } catch (err) {
        // Autoplay with sound refused: play muted, offer to unmute.
        if (err.name === 'NotAllowedError') v.muted = true;
      }
    }
    v.play().catch(() => {});
    this.#renderMuted();
  }

  #renderMuted() {
    const muted = this.video.muted;
    const button = this.#els.unmute;
    button.setAttribute('aria-pressed', String(!muted));
    button.innerHTML = `${muted ? ICONS.muted : ICONS.sound}<span class="label">${muted ? 'Unmute' : 'Mute'}</span>`;
    this.#els['unmute-hint'].hidden = !muted || this.#userMuted === true;
  }

  #wireControls() {
    const { video, unmute, quality, fullscreen } = this.#els;
    const toggle = () => {
      video.muted = !video.muted;
      this.#userMuted = video.muted;
      if (!video.muted) video.play().catch(() => {});
      this.#renderMuted();
    };
    unmute.addEventListener('click', toggle);
    this.#els['unmute-hint'].addEventListener('click', toggle);
    video.addEventListener('volumechange', () => this.#renderMuted());
    video.addEventListener('resize', () => this.#renderMeta());
    video.addEventListener('loadedmetadata', () => video.play().catch(() => {}));
    quality.addEventListener('change', () => this.#quality?.select(quality.value));
    fullscreen.addEventListener('click', () => {
      if (document.fullscreenElement) document.exitFullscreen();
      else (this.requestFullscreen ? this : video).requestFullscreen?.().catch(() => {});
    });
    if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
      video.requestVideoFrameCallback(this.#onFrame);
    } else {
      video.addEventListener('timeupdate', () => {
        this.#frames++;
        if (this.state !== 'live') {
          this.#wasLive = true;
          this.#setState('live', 'Live');
        }
      });
    }
  }
}

// ------------------------------------------------------------ helpers

let hlsJs = null;
/** hls.js, loaded on first use from this server; null when it is not there. */
function loadHlsJs() {
  hlsJs ??= import(new URL('hls.js', import.meta.url).href)
    .then((m) => m.default ?? null)
    .catch(() => null);
  return hlsJs;
}

/** Frames decoded and an estimate of the delay behind the publisher. */
async function webrtcStats(pc) {
  const report = await pc.getStats();
  let inbound = null;
  let rtt = null;
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s;
    if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime != null) {
      rtt = s.currentRoundTripTime;
    }
  }
  if (!inbound) return { framesDecoded: 0, latencyMs: null };
  const jitter = inbound.jitterBufferEmittedCount
    ? inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount
    : 0;
  const decode = inbound.framesDecoded ? (inbound.totalDecodeTime ?? 0) / inbound.framesDecoded : 0;
  // Network one way + jitter buffer + decode; the publisher's capture and
  // encode (a frame or two) are not measurable here.
  const latency = (rtt ?? 0) / 2 + jitter + decode + 0.033;
  return { framesDecoded: inbound.framesDecoded ?? 0, latencyMs: Math.round(latency * 1000) };
}

function hlsLatencyMs(hls, video) {
  if (hls && Number.isFinite(hls.latency) && hls.latency > 0) return Math.round(hls.latency * 1000);
  if (video.seekable?.length) {
    const behind = video.seekable.end(video.seekable.length - 1) - video.currentTime;
    if (behind >= 0) return Math.round(behind * 1000);
  }
  return null;
}

const heightLabel = (h) => (h ? `${h}p` : 'Source');

/** Quality choices of a WHEP session: its simulcast layers. */
function webrtcQuality(viewer) {
  return {
    options: [],
    async refresh() {
      const state = await viewer.layers().catch(() => null);
      const layers = state?.video?.[0]?.layers ?? [];
      this.options = layers
        .filter((l) => l.rid && l.active)
        .sort((a, b) => b.height - a.height)
        .map((l) => ({ value: l.rid, label: heightLabel(l.height) }));
      return this.options;
    },
    select(value) {
      viewer.selectLayer(value === 'auto' ? {} : { rid: value }).catch(() => {});
    },
  };
}

/** Quality choices of hls.js: its levels (renditions). */
function hlsQuality(hls) {
  return {
    get options() {
      return (hls.levels ?? [])
        .map((l, i) => ({ value: String(i), label: heightLabel(l.height), h: l.height }))
        .sort((a, b) => b.h - a.h)
        .map(({ value, label }) => ({ value, label }));
    },
    async refresh() {
      return this.options;
    },
    select(value) {
      hls.currentLevel = value === 'auto' ? -1 : Number(value);
    },
  };
}

if (!customElements.get('dionysia-player')) customElements.define('dionysia-player', DionysiaPlayer);
