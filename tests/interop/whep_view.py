#!/usr/bin/env python3
"""aiortc WHEP viewer for Dionysia's interop tests.

Offers recvonly video + audio, POSTs to the WHEP endpoint (retrying while the
server answers 409 "not live yet", honouring Retry-After), then receives and
DECODES media for --seconds after the connection is up. Prints one JSON line:

  {"ok": true, "connection_state": "connected", "video_frames": 112,
   "width": 640, "height": 360, "audio_frames": 245, "audio_rms": 5650.1,
   "time_to_first_frame_ms": 310.2, "distinct_sampled_frames": 37, ...}

time_to_first_frame_ms counts from the start of the accepted POST to the
first decoded video frame. Exit status 0 when the offer was accepted and the
connection came up (the caller asserts on the figures); otherwise 1.
"""

import argparse
import logging
import asyncio
import sys
import time
import zlib

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

import wishclient as wc


class DecodeErrors(logging.Handler):
    """Counts aiortc's "failed to decode" warnings (frames the server sent
    that the decoder could not use), with when they happened."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.times = []
        self.samples = []

    def emit(self, record):
        msg = record.getMessage()
        if "failed to decode" in msg:
            self.times.append(time.monotonic())
            if len(self.samples) < 3:
                self.samples.append(msg[:200])


class Counter:
    def __init__(self):
        self.video_frames = 0
        self.audio_frames = 0
        self.audio_samples = 0
        self.audio_rate = None
        self.width = None
        self.height = None
        self.sizes = {}
        self.first_video_at = None
        self.first_audio_at = None
        self.sampled = set()
        self.rms = []
        self.video_errors = []


async def consume(track, c: Counter, sample_every):
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        except Exception as e:  # keep the figures even if the track dies
            if track.kind == "video":
                c.video_errors.append(repr(e))
            return
        now = time.monotonic()
        if track.kind == "video":
            if c.first_video_at is None:
                c.first_video_at = now
            c.video_frames += 1
            c.width, c.height = frame.width, frame.height
            key = "%dx%d" % (frame.width, frame.height)
            c.sizes[key] = c.sizes.get(key, 0) + 1
            if c.video_frames % sample_every == 1:
                c.sampled.add(zlib.crc32(bytes(frame.planes[0])))
        else:
            if c.first_audio_at is None:
                c.first_audio_at = now
            c.audio_frames += 1
            c.audio_samples += frame.samples
            c.audio_rate = frame.sample_rate
            if c.audio_frames % 10 == 0:
                a = frame.to_ndarray().astype(np.float64)
                c.rms.append(float(np.sqrt(np.mean(a * a))))


def retry_after(resp):
    try:
        v = float(resp.header("Retry-After", "1"))
    except (TypeError, ValueError):
        v = 1.0
    return min(max(v, 0.2), 5.0)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="WHEP endpoint, e.g. http://127.0.0.1:8080/whep/room")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long to receive once connected")
    ap.add_argument("--token", default=None, help="optional Authorization: Bearer token")
    ap.add_argument("--wait-live", type=float, default=20.0, help="how long to keep retrying on 409")
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--sample-every", type=int, default=3, help="hash every Nth video frame to detect motion")
    ap.add_argument("--verbose", action="store_true", help="aiortc debug logs on stderr")
    args = ap.parse_args()
    wc.setup_logging(args.verbose)
    decode_errors = DecodeErrors()
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(decode_errors)
    if not args.verbose:
        logging.getLogger("aiortc.rtcrtpreceiver").propagate = False

    result = {"role": "whep-viewer", "ok": False}
    c = Counter()
    tasks = []
    pc = RTCPeerConnection(wc.NO_ICE_SERVERS)
    states = wc.StateLog(pc)

    @pc.on("track")
    def on_track(track):
        wc.log("track %s", track.kind)
        tasks.append(asyncio.ensure_future(consume(track, c, args.sample_every)))

    pc.addTransceiver("video", direction="recvonly")
    if not args.no_audio:
        pc.addTransceiver("audio", direction="recvonly")

    resource = None
    t_post = None
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        deadline = time.monotonic() + args.wait_live
        attempts = 0
        while True:
            attempts += 1
            t_post = time.monotonic()
            resp = await wc.post_sdp(args.url, offer, args.token)
            if resp.status == 409 and time.monotonic() < deadline:
                await asyncio.sleep(retry_after(resp))
                continue
            break
        result["attempts"] = attempts
        result["http_status"] = resp.status
        result["post_ms"] = round((time.monotonic() - t_post) * 1000, 1)
        if resp.status != 201:
            result["error"] = "WHEP POST returned %d (Retry-After %s): %s" % (
                resp.status, resp.header("Retry-After"), resp.body[:500])
            return result
        resource = wc.resource_url(args.url, resp.header("Location"))
        result["location"] = resp.header("Location")
        result["answer_codecs"] = wc.negotiated_codecs(resp.body)
        result["answer_candidates"] = wc.answer_candidates(resp.body)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=resp.body, type="answer"))
        except Exception as e:
            result["error"] = "setRemoteDescription failed: %r" % e
            result["offer"], result["answer"] = offer, resp.body
            return result
        if not await states.wait_connected(args.connect_timeout):
            result["error"] = "not connected after %.1f s (states %s)" % (args.connect_timeout, states.connection_states)
            result["offer"], result["answer"] = offer, resp.body
            return result
        result["connect_ms"] = round((states.connected_at - t_post) * 1000, 1)
        end = states.connected_at + args.seconds
        while time.monotonic() < end and pc.connectionState == "connected":
            await asyncio.sleep(0.1)
        stats = await wc.collect_stats(pc)
        result["inbound"] = {s.get("kind", "?"): {k: s.get(k) for k in ("packetsReceived", "packetsLost", "jitter")}
                             for s in stats.get("inbound-rtp", [])}
        result["ok"] = pc.connectionState == "connected"
        if not result["ok"]:
            result["error"] = "connection dropped: states %s" % states.connection_states
        return result
    finally:
        result["connection_state"] = states.reached()
        result["connection_states"] = states.connection_states
        result["video_frames"] = c.video_frames
        result["width"], result["height"] = c.width, c.height
        result["frame_sizes"] = c.sizes
        result["distinct_sampled_frames"] = len(c.sampled)
        result["audio_frames"] = c.audio_frames
        result["audio_sample_rate"] = c.audio_rate
        result["audio_seconds"] = round(c.audio_samples / c.audio_rate, 3) if c.audio_rate else 0
        result["audio_rms"] = round(sum(c.rms) / len(c.rms), 1) if c.rms else 0
        result["time_to_first_frame_ms"] = (
            round((c.first_video_at - t_post) * 1000, 1) if c.first_video_at and t_post else None)
        result["time_to_first_audio_ms"] = (
            round((c.first_audio_at - t_post) * 1000, 1) if c.first_audio_at and t_post else None)
        if states.connected_at and c.first_video_at:
            recv_s = max(0.001, time.monotonic() - c.first_video_at)
            result["video_fps"] = round(c.video_frames / recv_s, 1)
        result["decode_errors"] = len(decode_errors.times)
        if decode_errors.times and t_post:
            result["decode_errors_ms"] = [round((decode_errors.times[0] - t_post) * 1000, 1),
                                          round((decode_errors.times[-1] - t_post) * 1000, 1)]
            result["decode_error_samples"] = decode_errors.samples
        if c.video_errors:
            result["video_errors"] = c.video_errors
        if resource:
            try:
                d = await wc.http("DELETE", resource, headers={"Authorization": "Bearer " + args.token} if args.token else {})
                result["delete_status"] = d.status
            except Exception as e:
                result["delete_status"] = repr(e)
        await pc.close()
        for t in tasks:
            t.cancel()


if __name__ == "__main__":
    res = asyncio.run(main())
    wc.emit(res)
    sys.exit(0 if res.get("ok") else 1)
