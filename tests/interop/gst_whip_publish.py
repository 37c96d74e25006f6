#!/usr/bin/env python3
"""GStreamer (webrtcbin + libnice) WHIP publisher for Dionysia's interop tests.

Why not Debian's `whip-client` (simple-whip-client 0.0~git20230131)? It is
linked against libsoup 2.4, while Debian 12's libnice (which webrtcbin loads)
pulls in libsoup 3 through gupnp-igd 1.6; the process aborts with
"libsoup2 symbols detected. Using libsoup2 and libsoup3 in the same process is
not supported" (SIGTRAP) as soon as the pipeline is built (upstream issues
meetecho/simple-whip-client#13, #20, #23). This script does what whip-client
does — the same webrtcbin, libnice, DTLS/SRTP and RTP payloaders, the same
pipeline strings — with the HTTP part in Python.

Runs with the system python3 and Debian's PyGObject + GStreamer typelibs
(python3-gi, gir1.2-gst-plugins-bad-1.0, gir1.2-nice-0.1). Sends
videotestsrc (H.264 via x264enc, or VP8 via vp8enc) and an Opus sine tone
for --seconds once the connection is up, then DELETEs the resource. Like OBS
it sends its candidates in the offer and never PATCHes. Prints one JSON
line; exit status 0 when the offer was accepted and webrtcbin reached
"connected".

Two knobs exist because of what was measured here:
- --ice-local-ip (default: 127.0.0.1 for a loopback URL): libnice sends a
  check from its 192.0.2.2 candidate to a 127.0.0.1 server candidate out of
  eth0, where it is lost; gathering on loopback fixes that.
- --dtls-cert ecdsa: GStreamer 1.22 signs DTLS with RSA 2048; str0m's
  default DTLS stack (dimpl) has no RSA and refuses the handshake ("no client
  certificate received"). A P-256 certificate, as browsers use, gets past it.
"""

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402


def log(msg, *args):
    print("[gst_whip_publish] " + (msg % args if args else msg), file=sys.stderr, flush=True)


def http(method, url, body=None, headers=None, timeout=10.0):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
        return 0, {}, "%s %s failed: %r" % (method, url, e)


def video_branch(codec, width, height, fps):
    raw = (
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=%d,height=%d,framerate=%d/1 "
        "! videoconvert ! queue max-size-buffers=2 leaky=downstream ! " % (width, height, fps)
    )
    if codec == "H264":
        # constrained baseline, packetization-mode=1; a keyframe every 2 s is
        # what an OBS-like encoder does (PLI is honoured too, via webrtcbin).
        return raw + (
            "x264enc tune=zerolatency speed-preset=ultrafast bitrate=800 key-int-max=%d "
            "! video/x-h264,profile=constrained-baseline ! rtph264pay config-interval=-1 pt=96 "
            "aggregate-mode=zero-latency ! queue ! application/x-rtp,media=video,encoding-name=H264,payload=96" % (2 * fps)
        )
    return raw + (
        "vp8enc deadline=1 cpu-used=8 target-bitrate=800000 keyframe-max-dist=%d "
        "! rtpvp8pay pt=96 ! queue ! application/x-rtp,media=video,encoding-name=VP8,payload=96" % (2 * fps)
    )


AUDIO = (
    "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! queue "
    "! opusenc ! rtpopuspay pt=111 ! queue ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111"
)


_KEEP_ALIVE = []


def ecdsa_pem():
    """A self-signed P-256 certificate + key, in the form dtlssrtpdec takes."""
    out = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "-", "-out", "-", "-days", "2", "-subj", "/CN=gst-whip-publish"],
        check=True, capture_output=True, text=True).stdout
    return out


class Publisher:
    def __init__(self, args):
        self.args = args
        self.result = {"role": "gst-whip-publisher", "ok": False, "codec": args.codec,
                       "gstreamer": Gst.version_string(),
                       "dtls_cert": args.dtls_cert}
        desc = "webrtcbin name=sendonly bundle-policy=max-bundle " + video_branch(
            args.codec, args.width, args.height, args.fps) + " ! sendonly. "
        if not args.no_audio:
            desc += AUDIO + " ! sendonly. "
        self.pipeline = Gst.parse_launch(desc)
        self.webrtc = self.pipeline.get_by_name("sendonly")
        self.restrict_ice(args)
        self.offer_ready = threading.Event()
        self.gathered = threading.Event()
        self.connected = threading.Event()
        self.failed = threading.Event()
        self.states = []
        self.t0 = time.monotonic()
        if args.dtls_cert == "ecdsa":
            self.pem = ecdsa_pem()
            self.webrtc.connect("deep-element-added", self.on_deep_element_added)
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::connection-state", self.on_connection_state)
        self.webrtc.connect("notify::ice-connection-state", self.on_ice_state)
        self.ice_states = []
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def fix_fingerprint(self, offer):
        """webrtcbin 1.22 writes the fingerprint of the certificate it made
        before ours replaced it (the handshake then uses ours): put ours."""
        der_fp = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=self.pem,
                                check=True, capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        lines = []
        for l in offer.split("\r\n"):
            if l.startswith("a=fingerprint:"):
                if l != "a=fingerprint:sha-256 " + der_fp:
                    self.result["offer_fingerprint_rewritten"] = True
                l = "a=fingerprint:sha-256 " + der_fp
            lines.append(l)
        return "\r\n".join(lines)

    def restrict_ice(self, args):
        """libnice binds its host candidates to their interfaces, so a check
        from 192.0.2.2 to a 127.0.0.1 server candidate leaves by eth0 and is
        lost (seen with a packet capture). Gathering on the loopback address
        alone, as Chromium's --allow-loopback-in-peer-connection does, lets
        it reach a server that advertises 127.0.0.1."""
        # GStreamer 1.22's webrtcbin hands out "ice-agent" without a ref of
        # its own: let Python drop it and the ICE agent is finalized under
        # webrtcbin (a crash). Keep these objects alive as long as the process.
        ice = self.webrtc.get_property("ice-agent")
        _KEEP_ALIVE.append(ice)
        ice.set_property("ice-tcp", False)
        ips = args.ice_local_ip
        if ips == "auto":
            host = urllib.parse.urlparse(args.url).hostname or ""
            ips = "127.0.0.1" if host in ("127.0.0.1", "localhost") else "none"
        if ips == "none":
            return
        gi.require_version("Nice", "0.1")
        from gi.repository import Nice

        agent = ice.get_property("agent")
        _KEEP_ALIVE.append(agent)
        for ip in ips.split(","):
            addr = Nice.Address.new()
            if not addr.set_from_string(ip) or not agent.add_local_address(addr):
                raise SystemExit("cannot gather ICE candidates on %s" % ip)
        self.result["ice_local_ips"] = ips

    # --- webrtcbin callbacks (its own threads) ---
    def on_deep_element_added(self, _bin, _sub, element):
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "dtlssrtpdec":
            element.set_property("pem", self.pem)

    def on_negotiation_needed(self, _el):
        # webrtcbin sets the transceivers' direction from the linked pads
        # (sendrecv); WHIP wants sendonly.
        for i in range(64):
            t = self.webrtc.emit("get-transceiver", i)
            if t is None:
                break
            t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        promise = Gst.Promise.new_with_change_func(self.on_offer, None)
        self.webrtc.emit("create-offer", None, promise)

    def on_offer(self, promise, _data):
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply else None
        if offer is None:
            self.result["error"] = "webrtcbin create-offer failed: %s" % (reply.to_string() if reply else None)
            self.failed.set()
            return
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        self.offer_ready.set()

    def on_gathering(self, _el, _pspec):
        st = self.webrtc.get_property("ice-gathering-state")
        if st == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.gathered.set()

    def on_connection_state(self, _el, _pspec):
        st = self.webrtc.get_property("connection-state")
        name = st.value_nick
        self.states.append(name)
        log("connection-state=%s at %.0f ms", name, (time.monotonic() - self.t0) * 1000)
        if st == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            self.connected_at = time.monotonic()
            self.connected.set()
        elif st in (GstWebRTC.WebRTCPeerConnectionState.FAILED, GstWebRTC.WebRTCPeerConnectionState.CLOSED):
            self.failed.set()

    def on_ice_state(self, _el, _pspec):
        name = self.webrtc.get_property("ice-connection-state").value_nick
        self.ice_states.append(name)
        log("ice-connection-state=%s at %.0f ms", name, (time.monotonic() - self.t0) * 1000)

    def on_error(self, _bus, msg):
        err, dbg = msg.parse_error()
        self.result["error"] = "GStreamer error: %s (%s)" % (err.message, dbg)
        log(self.result["error"])
        self.failed.set()

    def stats(self):
        """outbound-rtp per kind. GStreamer 1.22 labels every bundled
        outbound-rtp kind=audio, so the kind comes from the codec stats with
        the same SSRC."""
        p = Gst.Promise.new()
        self.webrtc.emit("get-stats", None, p)
        p.wait()
        reply = p.get_reply()
        if reply is None:
            return {}
        codecs, outbound = {}, []

        def each(_field_id, value, _ud):
            if isinstance(value, Gst.Structure) and value.has_field("type"):
                if self.args.dump_stats:
                    log("stats %s", value.to_string()[:400])
                t = value.get_value("type")
                if t == GstWebRTC.WebRTCStatsType.CODEC and value.has_field("ssrc"):
                    codecs[value.get_value("ssrc")] = value.get_value("mime-type")
                elif t == GstWebRTC.WebRTCStatsType.OUTBOUND_RTP:
                    outbound.append(value)
            return True

        reply.foreach(each, None)
        out = {}
        for v in outbound:
            mime = codecs.get(v.get_value("ssrc"), "?/?")
            out[mime.split("/")[0]] = {
                "codec": mime,
                "packets_sent": v.get_value("packets-sent"),
                "bytes_sent": v.get_value("bytes-sent"),
                "pli_received": v.get_value("pli-count"),
                "fir_received": v.get_value("fir-count"),
                "nack_received": v.get_value("nack-count"),
            }
        return out

    def wait_any(self, events, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(e.is_set() for e in events):
                return True
            time.sleep(0.02)
        return False

    # --- the WHIP exchange (worker thread) ---
    def run(self, loop):
        a, r = self.args, self.result
        resource = None
        try:
            self.pipeline.set_state(Gst.State.PLAYING)
            if not self.wait_any([self.offer_ready, self.failed], 10) or self.failed.is_set():
                r.setdefault("error", "webrtcbin produced no offer")
                return
            # candidates go in the offer (OBS-like, no PATCH): wait for gathering
            self.wait_any([self.gathered], 3.0)
            offer = self.webrtc.get_property("local-description").sdp.as_text()
            if a.dtls_cert == "ecdsa":
                offer = self.fix_fingerprint(offer)
            r["offer_candidates"] = sum(1 for l in offer.splitlines() if l.startswith("a=candidate:"))
            headers = {"Content-Type": "application/sdp"}
            if a.key:
                headers["Authorization"] = "Bearer " + a.key
            t_post = time.monotonic()
            status, hdrs, body = http("POST", a.url, offer.encode(), headers)
            r["http_status"] = status
            if status != 201:
                r["error"] = "WHIP POST returned %d: %s" % (status, body[:500])
                r["offer"] = offer
                return
            resource = urllib.parse.urljoin(a.url, hdrs.get("Location") or "") if hdrs.get("Location") else None
            r["location"] = hdrs.get("Location")
            ok, sdp = GstSdp.SDPMessage.new_from_text(body)
            if ok != GstSdp.SDPResult.OK:
                r["error"] = "answer is not SDP"
                r["answer"] = body
                return
            answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
            p = Gst.Promise.new()
            self.webrtc.emit("set-remote-description", answer, p)
            p.wait()
            reply = p.get_reply()
            if reply is not None and reply.has_field("error"):
                r["error"] = "set-remote-description failed: %s" % reply.get_value("error")
                r["offer"], r["answer"] = offer, body
                return
            if not self.wait_any([self.connected, self.failed], a.connect_timeout) or not self.connected.is_set():
                r.setdefault("error", "not connected after %.1f s (states %s)" % (a.connect_timeout, self.states))
                r["offer"], r["answer"] = offer, body
                return
            r["connect_ms"] = round((self.connected_at - t_post) * 1000, 1)
            end = time.monotonic() + a.seconds
            while time.monotonic() < end and not self.failed.is_set():
                time.sleep(0.1)
            r.update(self.stats())
            r["ok"] = not self.failed.is_set()
            if not r["ok"]:
                r.setdefault("error", "connection dropped: states %s" % self.states)
        except Exception as e:
            r["error"] = "exception: %r" % e
        finally:
            r["connection_state"] = "connected" if self.connected.is_set() else (self.states[-1] if self.states else "new")
            r["connection_states"] = self.states
            r["ice_states"] = self.ice_states
            if resource:
                try:
                    r["delete_status"] = http("DELETE", resource, headers={"Authorization": "Bearer " + a.key} if a.key else {})[0]
                except Exception as e:
                    r["delete_status"] = repr(e)
            self.pipeline.set_state(Gst.State.NULL)
            GLib.idle_add(loop.quit)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", default=None)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--codec", default="H264", choices=["H264", "VP8"])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--dump-stats", action="store_true")
    ap.add_argument("--ice-local-ip", default="auto",
                    help="comma-separated addresses libnice gathers on; auto: 127.0.0.1 for a loopback URL; "
                         "none: libnice's default (every interface but loopback)")
    ap.add_argument("--dtls-cert", default="default", choices=["default", "ecdsa"],
                    help="default: GStreamer's own (RSA 2048 in 1.22); ecdsa: a P-256 one, as browsers use")
    args = ap.parse_args()
    Gst.init(None)
    missing = [e for e in ("webrtcbin", "nicesrc", "x264enc", "vp8enc", "opusenc", "rtph264pay", "videotestsrc")
               if Gst.ElementFactory.find(e) is None]
    if missing:
        print(json.dumps({"ok": False, "error": "missing GStreamer elements: %s" % missing}), flush=True)
        return 1
    pub = Publisher(args)
    loop = GLib.MainLoop()
    threading.Thread(target=pub.run, args=(loop,), daemon=True).start()
    loop.run()
    pub.result["width"], pub.result["height"] = args.width, args.height
    print(json.dumps(pub.result, default=str), flush=True)
    return 0 if pub.result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
