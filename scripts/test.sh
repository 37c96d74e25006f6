#!/usr/bin/env bash
# The whole test suite: installs the real clients the end-to-end tests drive
# (Chromium, ffmpeg, GStreamer's WHIP client, Node packages, aiortc) when they
# are missing, then runs every Rust test, unit and end to end.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -- NAME    # only tests whose name contains NAME
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n==> %s\n' "$*"; }

# --- system packages (Debian 12) -------------------------------------------
need_pkgs=()
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v ffmpeg >/dev/null || need_pkgs+=(ffmpeg)
command -v ffprobe >/dev/null || need_pkgs+=(ffmpeg)
command -v nasm >/dev/null || need_pkgs+=(nasm)
# The `vp8` feature (VP8 publishes into LL-HLS) links the system libvpx.
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
pkg-config --exists vpx 2>/dev/null || need_pkgs+=(libvpx-dev)
# A shared cache in front of LL-HLS (tests/hls_cdn_e2e.rs runs nginx as the test user).
[ -x /usr/sbin/nginx ] || need_pkgs+=(nginx)
# GStreamer's webrtcbin driven from Python (tests/interop/gst_whip_publish.py):
# Debian 12's simple-whip-client aborts at start (libsoup 2 and 3 in one process).
/usr/bin/python3 -c "import gi; gi.require_version('GstWebRTC','1.0'); gi.require_version('Nice','0.1')" 2>/dev/null \
  || need_pkgs+=(python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 gstreamer1.0-nice)
command -v openssl >/dev/null || need_pkgs+=(openssl)
# Network impairment for the simulcast tests (namespaces, tc, random loss).
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v iptables >/dev/null || need_pkgs+=(iptables)
# GStreamer RTMP publishers (librtmp's rtmpsink is OBS's RTMP stack) and encoders.
gst_ok=1
for element in x264enc voaacenc flvmux rtmpsink rtmp2sink webrtcbin; do
  gst-inspect-1.0 "$element" >/dev/null 2>&1 || gst_ok=0
done
[ "$gst_ok" = 1 ] || need_pkgs+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly)
command -v node >/dev/null || need_pkgs+=(nodejs npm)
python3 -c 'import venv' 2>/dev/null || need_pkgs+=(python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
fi

# --- Node packages for the browser tests (never downloads a browser) -------
if [ -f tests/browser/package.json ]; then
  log "npm packages for tests/browser"
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  (cd tests/browser && { [ -d node_modules ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; })
fi

# --- Python packages: the second WebRTC stack (aiortc) and schemathesis -----
# (tests/api/requirements.txt: run against the room API's OpenAPI document)
venv="$root/target/test-venv"
if [ -f tests/interop/requirements.txt ]; then
  py_reqs=(-r tests/interop/requirements.txt)
  [ -f tests/api/requirements.txt ] && py_reqs+=(-r tests/api/requirements.txt)
  if [ ! -x "$venv/bin/python" ] || [ tests/interop/requirements.txt -nt "$venv/.installed" ] \
     || { [ -f tests/api/requirements.txt ] && [ tests/api/requirements.txt -nt "$venv/.installed" ]; }; then
    log "python venv with aiortc and schemathesis in $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${py_reqs[@]}"
    touch "$venv/.installed"
  fi
  export DIONYSIA_TEST_PYTHON="$venv/bin/python"
fi

# --- Rust: build once in release (the e2e tests time real media) -----------
# With the off-by-default `vp8` feature, so that its code is tested too; the
# default build (what `cargo run --release` makes) is type-checked first.
log "cargo check --workspace --all-targets (default features)"
cargo check --release --workspace --all-targets
log "cargo test --release --workspace --features dionysia/vp8"
cargo test --release --workspace --all-targets --features dionysia/vp8 --no-fail-fast "$@"
