// What WHIP (RFC 9725) and WHEP clients share: one SDP offer/answer exchange
// over HTTP, a session URL to DELETE at the end, and problem+json errors.
//
// Plain ES module, no dependencies; imported by whip.js and whep.js.

/** An HTTP answer other than the one the protocol expects. */
export class WishError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, retryAfterMs?: number|null, problemType?: string|null, links?: Link[]}} [info]
   */
  constructor(message, { status = 0, retryAfterMs = null, problemType = null, links = [] } = {}) {
    super(message);
    this.name = 'WishError';
    /** HTTP status, 0 when the request never got an answer. */
    this.status = status;
    /** Delay asked by a `Retry-After` header, in milliseconds, or null. */
    this.retryAfterMs = retryAfterMs;
    /** The RFC 9457 problem `type` (e.g. 'hls-only', 'room-full'), or null. */
    this.problemType = problemType;
    /** The answer's `Link` headers (e.g. rel="alternate" to the HLS playlist). */
    this.links = links;
  }
}

/**
 * Puts the codecs of `mimeType` (e.g. 'video/H264', 'video/VP8') first in the
 * transceiver's offer. With `only`, the offer carries that codec alone (plus
 * its retransmission format), so the server cannot pick another one.
 * Returns false when the browser cannot do that codec.
 *
 * @param {RTCRtpTransceiver} transceiver
 * @param {string} mimeType
 * @param {{only?: boolean}} [options]
 */
export function preferCodec(transceiver, mimeType, { only = false } = {}) {
  const kind = transceiver.receiver.track.kind;
  const caps = RTCRtpReceiver.getCapabilities(kind);
  if (!caps || typeof transceiver.setCodecPreferences !== 'function') return false;
  const want = mimeType.toLowerCase();
  const preferred = caps.codecs.filter((c) => c.mimeType.toLowerCase() === want);
  if (preferred.length === 0) return false;
  // H.264 in packetization mode 1 is what every server and encoder expects.
  preferred.sort((a, b) => packetizationMode(b) - packetizationMode(a));
  const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== want);
  const kept = only ? rest.filter((c) => /\/rtx$/i.test(c.mimeType)) : rest;
  transceiver.setCodecPreferences([...preferred, ...kept]);
  return true;
}

function packetizationMode(codec) {
  return /packetization-mode=1/.test(codec.sdpFmtpLine || '') ? 1 : 0;
}

/**
 * Resolves once ICE gathering is complete or after `timeoutMs`, whichever
 * comes first: the offer then carries the candidates found so far. (A Dionysia
 * server is ICE-lite and needs none, but other WHIP/WHEP servers may.)
 *
 * @param {RTCPeerConnection} pc
 * @param {number} timeoutMs
 */
export function iceGatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/**
 * POSTs an SDP offer; returns the answer and the session's URL.
 *
 * @param {string|URL} endpoint
 * @param {string} offerSdp
 * @param {{token?: string, signal?: AbortSignal}} [options]
 * @returns {Promise<{answer: string, location: string, etag: string|null, links: Link[]}>}
 */
export async function postOffer(endpoint, offerSdp, { token, signal } = {}) {
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(endpoint, { method: 'POST', headers, body: offerSdp, signal });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new WishError(`cannot reach ${endpoint}: ${err.message}`);
  }
  const base = new URL(endpoint, document.baseURI);
  const links = parseLinks(response.headers.get('Link'), base);
  if (response.status !== 201) {
    const { text: detail, type: problemType } = await problemOf(response);
    throw new WishError(`${response.status} ${detail}`.trim(), {
      status: response.status,
      retryAfterMs: retryAfterMs(response.headers.get('Retry-After')),
      problemType,
      links,
    });
  }
  const location = response.headers.get('Location');
  if (!location) throw new WishError('201 without a Location header', { status: 201 });
  const answer = await response.text();
  return {
    answer,
    location: new URL(location, base).href,
    etag: response.headers.get('ETag'),
    links,
  };
}

/**
 * Ends a session. Never throws: the peer connection is closed by the caller
 * anyway. `keepalive` lets it complete while the page unloads.
 *
 * @param {string|null} location
 * @param {{token?: string}} [options]
 * @returns {Promise<number>} the HTTP status, 0 when there was no answer
 */
export async function deleteSession(location, { token } = {}) {
  if (!location) return 0;
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const response = await fetch(location, { method: 'DELETE', headers, keepalive: true });
    return response.status;
  } catch {
    return 0;
  }
}

/**
 * A readable message from an error body (RFC 9457 problem+json or text), and
 * the problem's `type` when there is one.
 */
async function problemOf(response) {
  let text = '';
  try {
    text = await response.text();
  } catch {
    return { text: response.statusText, type: null };
  }
  try {
    const problem = JSON.parse(text);
    if (problem && (problem.detail || problem.title)) {
      return {
        text: [problem.title, problem.detail].filter(Boolean).join(': '),
        type: typeof problem.type === 'string' ? problem.type : null,
      };
    }
  } catch {
    // not JSON: fall through to the text itself
  }
  return { text: (text.trim() || response.statusText).slice(0, 200), type: null };
}

/**
 * @typedef {{url: string, rel: string, params: Record<string, string>}} Link
 */

/**
 * Parses an HTTP `Link` header (RFC 8288; several links, comma-separated)
 * into absolute URLs with their `rel` and other parameters.
 *
 * @param {string|null} value
 * @param {URL} base
 * @returns {Link[]}
 */
export function parseLinks(value, base) {
  if (!value) return [];
  const links = [];
  for (const match of value.matchAll(/<([^>]*)>((?:\s*;\s*[^;,=]+(?:=(?:"[^"]*"|[^;,]*))?)*)/g)) {
    const params = {};
    for (const p of match[2].matchAll(/;\s*([^;,=\s]+)(?:=("[^"]*"|[^;,]*))?/g)) {
      params[p[1].toLowerCase()] = (p[2] ?? '').trim().replace(/^"|"$/g, '');
    }
    try {
      links.push({ url: new URL(match[1], base).href, rel: params.rel ?? '', params });
    } catch {
      // an unparsable URL: skip that link
    }
  }
  return links;
}

/** `Retry-After` (delay in seconds or an HTTP date) in milliseconds. */
export function retryAfterMs(value) {
  if (value == null || value.trim() === '') return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}
