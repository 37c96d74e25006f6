#!/usr/bin/env bash
# Server CPU of one bridged LL-HLS room, by publish kind: a Chromium page
# publishes 1280x720 over WHIP (tests/browser/hls.mjs) while hls.js plays the
# room's HLS for 15 s; prints the server's CPU (from /proc/<pid>/stat) over
# the whole run, with what hls.js saw.
#
#   cargo build --release --features vp8
#   ./scripts/hls-cpu.sh video/VP8 1 3    # VP8, one layer: every rendition transcoded
#   ./scripts/hls-cpu.sh video/H264 1 3   # H.264, one layer: repackaged + ladder
#   ./scripts/hls-cpu.sh video/H264 3 3   # H.264 simulcast: repackaged only
#
# Arguments: codec, simulcast layers, variants to wait for. Needs what
# scripts/test.sh installs (Chromium, Node packages in tests/browser).
set -euo pipefail
cd "$(dirname "$0")/.."
codec=${1:-video/H264} layers=${2:-1} variants=${3:-3}
port=$((30000 + RANDOM % 20000))
data=$(mktemp -d)
report=$(mktemp)
target/release/dionysia --http-listen "127.0.0.1:$port" --udp-listen "0.0.0.0:$((port + 1))" \
  --public-ip 127.0.0.1 --room cpu:secretkey1 --data-dir "$data" >"$data/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data" "$report"' EXIT
sleep 1.5
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks) s0=$(date +%s.%N)
(cd tests/browser && node hls.mjs --base "http://127.0.0.1:$port" --room cpu --key secretkey1 \
  --seconds 15 --codec "$codec" --layers "$layers" --variants "$variants" \
  --width 1280 --height 720 >"$report" 2>/dev/null) || true
t1=$(ticks) s1=$(date +%s.%N)
python3 - "$t0" "$t1" "$s0" "$s1" "$report" "$(getconf CLK_TCK)" <<'PY'
import json, sys
t0, t1, s0, s1 = map(float, sys.argv[1:5])
hz = float(sys.argv[6])
r = json.load(open(sys.argv[5]))
v = r.get("viewer", {})
cpu, wall = (t1 - t0) / hz, s1 - s0
print(f"server CPU {cpu:.2f} s in {wall:.1f} s = {cpu / wall:.2f} cores; "
      f"variants {r.get('variants')}; hls.js levels {len(v.get('levels', []))}; "
      f"max stall {v.get('maxStallMs')} ms; glass-to-glass p50 "
      f"{v.get('glassToGlassMs', {}).get('p50')} ms; ok {r.get('ok')}")
PY
