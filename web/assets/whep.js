// A small WHEP viewer: receives a room's audio and video.
//
//   const viewer = new WhepViewer('/whep/myroom', { onState: (s) => console.log(s) });
//   video.srcObject = viewer.stream;  // usable at once; tracks get media once connected
//   await viewer.start();             // POST offer → 201 + answer (retries while 409)
//   ...
//   await viewer.stop();              // DELETE Location, close the connection
//
// A 409 means the room has no publisher yet: the viewer waits as long as the
// server's Retry-After asks (1 s when absent) and POSTs the same offer again,
// until it is answered or stopped.

import { deleteSession, iceGatheringDone, postOffer, preferCodec, WishError } from './wish.js';

export { preferCodec, WishError };

const DEFAULT_RETRY_MS = 1000;
const LAYER_REL = 'urn:dionysia:whep:layer';
const MIN_RETRY_MS = 200;
const MAX_RETRY_MS = 10000;

export class WhepViewer {
  /**
   * @param {string|URL} endpoint e.g. '/whep/myroom'
   * @param {object} [options]
   * @param {string} [options.token] sent as a Bearer token when given
   * @param {string} [options.videoCodec] put this codec first in the offer
   * @param {RTCIceServer[]} [options.iceServers]
   * @param {number} [options.gatherTimeoutMs] how long to wait for ICE gathering (default 2000)
   * @param {(state: string, detail?: string) => void} [options.onState]
   *   'waiting' (room not live, retrying), then the RTCPeerConnection's
   *   connection states: 'connecting', 'connected', 'disconnected', 'failed', 'closed'
   */
  constructor(endpoint, options = {}) {
    this.endpoint = endpoint;
    this.options = options;
    this.pc = new RTCPeerConnection({
      iceServers: options.iceServers ?? [],
      bundlePolicy: 'max-bundle',
    });
    const video = this.pc.addTransceiver('video', { direction: 'recvonly' });
    const audio = this.pc.addTransceiver('audio', { direction: 'recvonly' });
    if (options.videoCodec) preferCodec(video, options.videoCodec);
    /** The received tracks; attach it to a <video> before or after start(). */
    this.stream = new MediaStream([video.receiver.track, audio.receiver.track]);
    this.pc.addEventListener('connectionstatechange', () => this.#state(this.pc.connectionState));
    this.location = null;
    this.etag = null;
    this.layerUrl = null;
    /** How many 409 answers were waited out. */
    this.retries = 0;
    /** performance.now() when the offer that got answered was POSTed, and when the answer came. */
    this.postedAt = null;
    this.answeredAt = null;
    this.#abort = new AbortController();
  }

  #abort;

  #state(state, detail) {
    if (this.options.onState) this.options.onState(state, detail);
  }

  /**
   * Negotiates with the server. Resolves once the answer is applied; rejects
   * with a WishError for any answer other than 201 or 409, or with an
   * AbortError when stop() is called first.
   */
  async start() {
    const pc = this.pc;
    const signal = this.#abort.signal;
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc, this.options.gatherTimeoutMs ?? 2000);
    for (;;) {
      signal.throwIfAborted();
      const postedAt = performance.now();
      try {
        const { answer, location, etag, links } = await postOffer(this.endpoint, pc.localDescription.sdp, {
          token: this.options.token,
          signal,
        });
        this.postedAt = postedAt;
        this.answeredAt = performance.now();
        this.location = location;
        this.etag = etag;
        /** The simulcast layer resource (`Link: rel="urn:dionysia:whep:layer"`), or null. */
        this.layerUrl = links.find((l) => l.rel === LAYER_REL)?.url ?? null;
        if (signal.aborted) {
          // stop() ran while the POST was in flight: end the session it created.
          await deleteSession(location, { token: this.options.token });
          signal.throwIfAborted();
        }
        await pc.setRemoteDescription({ type: 'answer', sdp: answer });
        return;
      } catch (err) {
        if (!(err instanceof WishError) || err.status !== 409) throw err;
        this.retries += 1;
        const delay = Math.min(
          MAX_RETRY_MS,
          Math.max(MIN_RETRY_MS, err.retryAfterMs ?? DEFAULT_RETRY_MS),
        );
        this.#state('waiting', err.message);
        await sleep(delay, signal);
      }
    }
  }

  /**
   * The session's simulcast layers and choice (`GET` the layer resource), or
   * null when the server offers none.
   */
  async layers() {
    if (!this.layerUrl) return null;
    const response = await fetch(this.layerUrl, { headers: this.#auth() });
    return response.ok ? response.json() : null;
  }

  /**
   * Asks for a layer: `{rid: 'l'}`, `{maxHeight: 360}`, or `{}` for automatic.
   * Resolves to the new state, or rejects with a WishError.
   */
  async selectLayer(request) {
    if (!this.layerUrl) throw new WishError('this session has no layer resource');
    const response = await fetch(this.layerUrl, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...this.#auth() },
      body: JSON.stringify(request),
    });
    if (!response.ok) throw new WishError(`layer request: ${response.status}`, { status: response.status });
    return response.json();
  }

  #auth() {
    return this.options.token ? { Authorization: `Bearer ${this.options.token}` } : {};
  }

  /** The RTCRtpReceiver of the video track. */
  get videoReceiver() {
    return this.pc.getReceivers().find((r) => r.track.kind === 'video');
  }

  /**
   * Ends the session on the server (DELETE) and closes the connection.
   * Resolves to the DELETE's HTTP status (0 if none was sent or answered).
   */
  async stop() {
    this.#abort.abort();
    const location = this.location;
    this.location = null;
    // DELETE first: closing first would tear the session down from the
    // media side before the server hears the request.
    const status = await deleteSession(location, { token: this.options.token });
    this.pc.close();
    return status;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
