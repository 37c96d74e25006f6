#!/usr/bin/env python3
"""aiortc WHIP publisher (RFC 9725) for Dionysia's interop tests.

Sends a generated moving picture (a scrolling gradient, a bouncing box and
changing chroma; every frame differs) and a sine tone for --seconds after the
connection is up, then DELETEs the resource. Prints one JSON line:

  {"ok": true, "http_status": 201, "connection_state": "connected",
   "video": {"packets_sent": .., "bytes_sent": ..}, "audio": {...}, ...}

Exit status 0 only when the offer was accepted (201) and the peer connection
reached "connected"; otherwise 1 (the JSON line still says what happened).
"""

import argparse
import asyncio
import fractions
import math
import sys
import time

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

import wishclient as wc


class PatternTrack(VideoStreamTrack):
    """640x360 (by default) yuv420p frames at 30 fps that all differ."""

    def __init__(self, width, height):
        super().__init__()
        self.w, self.h = width, height
        self.n = 0
        x = np.arange(width, dtype=np.uint16)
        self.ramp = ((x * 255) // max(1, width - 1)).astype(np.uint8)
        self.box = max(16, height // 6)

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        n = self.n
        self.n += 1
        w, h = self.w, self.h
        y = np.empty((h, w), dtype=np.uint8)
        y[:] = np.roll(self.ramp, (n * 8) % w)[None, :]
        # bouncing bright box
        span_x, span_y = w - self.box, h - self.box
        bx = (n * 7) % (2 * span_x)
        bx = bx if bx < span_x else 2 * span_x - bx
        by = (n * 5) % (2 * span_y)
        by = by if by < span_y else 2 * span_y - by
        y[by : by + self.box, bx : bx + self.box] = 235
        # frame counter as a bar code on the top rows (16 bits)
        for bit in range(16):
            y[0:8, bit * 16 : bit * 16 + 16] = 235 if (n >> bit) & 1 else 16
        u = np.full((h // 2, w // 2), (n * 3) % 256, dtype=np.uint8)
        v = np.full((h // 2, w // 2), 255 - (n * 3) % 256, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(np.concatenate([y, u.reshape(h // 4, w), v.reshape(h // 4, w)]), format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base
        return frame


class SineTrack(AudioStreamTrack):
    """48 kHz mono s16, 20 ms frames, a 440 Hz tone."""

    RATE = 48000
    SAMPLES = 960

    def __init__(self, freq=440.0):
        super().__init__()
        self.freq = freq
        self.pts = 0
        self.start = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.time()
        else:
            self.pts += self.SAMPLES
            wait = self.start + self.pts / self.RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(self.SAMPLES) + self.pts) / self.RATE
        samples = (np.sin(2 * math.pi * self.freq * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, self.RATE)
        return frame


def prefer(transceiver, kind, mime):
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == mime.lower()]
    if not chosen:
        raise SystemExit("aiortc has no codec %s" % mime)
    rtx = [c for c in caps if c.mimeType.lower() == kind + "/rtx"]
    transceiver.setCodecPreferences(chosen + rtx)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/room")
    ap.add_argument("--key", default=None, help="stream key, sent as Authorization: Bearer")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long to send once connected")
    ap.add_argument("--codec", default="H264", choices=["H264", "VP8"])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--verbose", action="store_true", help="aiortc debug logs on stderr")
    args = ap.parse_args()
    wc.setup_logging(args.verbose)

    result = {"role": "whip-publisher", "ok": False, "codec": args.codec, "width": args.width, "height": args.height}
    pc = RTCPeerConnection(wc.NO_ICE_SERVERS)
    states = wc.StateLog(pc)
    video = PatternTrack(args.width, args.height)
    vt = pc.addTransceiver(video, direction="sendonly")
    prefer(vt, "video", "video/" + args.codec)
    if not args.no_audio:
        at = pc.addTransceiver(SineTrack(), direction="sendonly")
        prefer(at, "audio", "audio/opus")

    resource = None
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        t0 = time.monotonic()
        resp = await wc.post_sdp(args.url, offer, args.key)
        result["http_status"] = resp.status
        result["post_ms"] = round((time.monotonic() - t0) * 1000, 1)
        if resp.status != 201:
            result["error"] = "WHIP POST returned %d: %s" % (resp.status, resp.body[:500])
            result["offer"] = offer
            return result
        resource = wc.resource_url(args.url, resp.header("Location"))
        result["location"] = resp.header("Location")
        result["answer_codecs"] = wc.negotiated_codecs(resp.body)
        result["answer_candidates"] = wc.answer_candidates(resp.body)
        from aiortc import RTCSessionDescription

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=resp.body, type="answer"))
        except Exception as e:
            result["error"] = "setRemoteDescription failed: %r" % e
            result["answer"] = resp.body
            return result
        if not await states.wait_connected(args.connect_timeout):
            result["error"] = "not connected after %.1f s (states %s)" % (args.connect_timeout, states.connection_states)
            result["offer"], result["answer"] = offer, resp.body
            return result
        result["connect_ms"] = round((states.connected_at - t0) * 1000, 1)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end and pc.connectionState == "connected":
            await asyncio.sleep(0.2)
        stats = await wc.collect_stats(pc)
        for s in stats.get("outbound-rtp", []):
            result[s.get("kind", "?")] = {"packets_sent": s.get("packetsSent"), "bytes_sent": s.get("bytesSent")}
        result["remote_inbound"] = stats.get("remote-inbound-rtp", [])
        result["frames_generated"] = video.n
        result["ok"] = pc.connectionState == "connected"
        if not result["ok"]:
            result["error"] = "connection dropped: states %s" % states.connection_states
        return result
    finally:
        result["connection_state"] = states.reached()
        result["connection_states"] = states.connection_states
        if resource:
            try:
                d = await wc.http("DELETE", resource, headers={"Authorization": "Bearer " + args.key} if args.key else {})
                result["delete_status"] = d.status
            except Exception as e:
                result["delete_status"] = repr(e)
        await pc.close()


if __name__ == "__main__":
    res = asyncio.run(main())
    wc.emit(res)
    sys.exit(0 if res.get("ok") else 1)
