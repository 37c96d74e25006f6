"""Shared helpers for the aiortc WHIP/WHEP test clients.

Plain urllib for HTTP (no extra dependency), run in a thread so the asyncio
loop (ICE, DTLS, RTP) keeps running while a request is in flight.
"""

import asyncio
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from aiortc import RTCConfiguration, RTCPeerConnection

# The tests' server advertises only 127.0.0.1, and there is no network beyond
# the machine: never let aiortc try its default public STUN server.
NO_ICE_SERVERS = RTCConfiguration(iceServers=[])


def log(msg, *args):
    print(("[%s] " % os.path.basename(sys.argv[0])) + (msg % args if args else msg), file=sys.stderr, flush=True)


def setup_logging(verbose):
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")


class HttpResult:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name, default=None):
        return self.headers.get(name, default)


def _http(method, url, body=None, headers=None, timeout=10.0):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(resp.status, resp.headers, resp.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as e:
        return HttpResult(e.code, e.headers, e.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
        return HttpResult(0, {}, "%s %s failed: %r" % (method, url, e))


async def http(method, url, body=None, headers=None, timeout=10.0):
    return await asyncio.to_thread(_http, method, url, body, headers, timeout)


async def post_sdp(url, sdp, token=None):
    headers = {"Content-Type": "application/sdp", "Accept": "application/sdp"}
    if token:
        headers["Authorization"] = "Bearer " + token
    return await http("POST", url, sdp.encode(), headers)


def resource_url(base, location):
    return urllib.parse.urljoin(base, location) if location else None


class StateLog:
    """Records every connection / ICE state a peer connection goes through."""

    def __init__(self, pc: RTCPeerConnection):
        self.t0 = time.monotonic()
        self.connection_states = []
        self.ice_states = []
        self.connected_at = None
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()

        @pc.on("connectionstatechange")
        def _on_conn():
            s = pc.connectionState
            self.connection_states.append(s)
            log("connectionState=%s at %.0f ms", s, (time.monotonic() - self.t0) * 1000)
            if s == "connected":
                self.connected_at = time.monotonic()
                self.connected.set()
            elif s in ("failed", "closed"):
                self.failed.set()

        @pc.on("iceconnectionstatechange")
        def _on_ice():
            self.ice_states.append(pc.iceConnectionState)

    def reached(self):
        """The best state reached: connected if it ever was, else the last."""
        if "connected" in self.connection_states:
            return "connected"
        return self.connection_states[-1] if self.connection_states else "new"

    async def wait_connected(self, timeout):
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(self.connected.wait()), asyncio.ensure_future(self.failed.wait())],
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for p in pending:
            p.cancel()
        return self.connected.is_set()


def negotiated_codecs(sdp):
    """{'video': ['H264/90000 ...'], 'audio': [...]} from an SDP answer's rtpmaps."""
    out = {}
    kind = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ")[0]
            out.setdefault(kind, [])
        elif line.startswith("a=rtpmap:") and kind:
            out[kind].append(line.split(" ", 1)[1])
    return out


def answer_candidates(sdp):
    return [l[2:] for l in sdp.splitlines() if l.startswith("a=candidate:")]


async def collect_stats(pc):
    """Per-kind RTP stats, JSON-friendly."""
    out = {}
    try:
        report = await pc.getStats()
    except Exception as e:  # stats are diagnostics only
        return {"error": repr(e)}
    for s in report.values():
        t = getattr(s, "type", None)
        if t in ("outbound-rtp", "inbound-rtp", "remote-inbound-rtp", "remote-outbound-rtp"):
            d = {k: v for k, v in vars(s).items() if isinstance(v, (int, float, str)) and k not in ("id", "type")}
            out.setdefault(t, []).append(d)
    return out


def emit(result):
    print(json.dumps(result, default=str), flush=True)
