// A small WHIP (RFC 9725) publisher: sends a MediaStream to a room.
//
//   const pub = new WhipPublisher('/whip/myroom', { token: streamKey, videoCodec: 'video/H264' });
//   await pub.start(stream);       // POST offer → 201 + answer + Location
//   ...
//   await pub.stop();              // DELETE Location, close the connection
//
// The offer is sent once ICE gathering completes (or after `gatherTimeoutMs`);
// a Dionysia server is ICE-lite and puts its candidates in the answer, so no
// trickle PATCH is needed.

import { deleteSession, iceGatheringDone, postOffer, preferCodec, WishError } from './wish.js';

export { preferCodec, WishError };

export class WhipPublisher {
  /**
   * @param {string|URL} endpoint e.g. '/whip/myroom'
   * @param {object} [options]
   * @param {string} [options.token] the stream key, sent as a Bearer token
   * @param {string} [options.videoCodec] e.g. 'video/H264' or 'video/VP8'; offered alone
   * @param {RTCRtpEncodingParameters[]} [options.videoEncodings] e.g. simulcast layers with rid
   * @param {RTCDegradationPreference} [options.degradationPreference] e.g. 'maintain-resolution'
   * @param {RTCIceServer[]} [options.iceServers]
   * @param {number} [options.gatherTimeoutMs] how long to wait for ICE gathering (default 2000)
   * @param {(state: string) => void} [options.onState] connection state changes
   */
  constructor(endpoint, options = {}) {
    this.endpoint = endpoint;
    this.options = options;
    /** @type {RTCPeerConnection|null} */
    this.pc = null;
    /** The session URL from the 201's Location header. */
    this.location = null;
    this.etag = null;
    /** performance.now() when the offer was POSTed, and when the answer came. */
    this.postedAt = null;
    this.answeredAt = null;
  }

  /**
   * Publishes every track of `stream`. Resolves once the server has answered
   * (media flows when `pc.connectionState` becomes 'connected'); rejects with
   * a WishError carrying the HTTP status when the server refuses.
   *
   * @param {MediaStream} stream
   */
  async start(stream) {
    if (this.pc) throw new Error('already started');
    const { token, videoCodec, videoEncodings, degradationPreference, iceServers = [], onState } =
      this.options;
    const pc = new RTCPeerConnection({ iceServers, bundlePolicy: 'max-bundle' });
    this.pc = pc;
    if (onState) {
      pc.addEventListener('connectionstatechange', () => onState(pc.connectionState));
    }
    for (const track of stream.getTracks()) {
      const init = { direction: 'sendonly', streams: [stream] };
      if (track.kind === 'video' && videoEncodings) init.sendEncodings = videoEncodings;
      const transceiver = pc.addTransceiver(track, init);
      if (track.kind === 'video') {
        if (videoCodec && !preferCodec(transceiver, videoCodec, { only: true })) {
          this.close();
          throw new WishError(`this browser cannot send ${videoCodec}`);
        }
        if (degradationPreference) {
          const params = transceiver.sender.getParameters();
          params.degradationPreference = degradationPreference;
          await transceiver.sender.setParameters(params).catch(() => {});
        }
      }
    }
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringDone(pc, this.options.gatherTimeoutMs ?? 2000);
      this.postedAt = performance.now();
      const { answer, location, etag } = await postOffer(this.endpoint, pc.localDescription.sdp, {
        token,
      });
      this.answeredAt = performance.now();
      this.location = location;
      this.etag = etag;
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** The RTCRtpSender of the video track, if any. */
  get videoSender() {
    return this.pc?.getSenders().find((s) => s.track?.kind === 'video') ?? null;
  }

  /**
   * Ends the session on the server (DELETE) and closes the connection.
   * Resolves to the DELETE's HTTP status (0 if none was sent or answered).
   */
  async stop() {
    const location = this.location;
    this.location = null;
    // DELETE first: closing first would tear the session down from the
    // media side before the server hears the request.
    const status = await deleteSession(location, { token: this.options.token });
    this.close();
    return status;
  }

  close() {
    if (this.pc) this.pc.close();
    this.pc = null;
  }
}
