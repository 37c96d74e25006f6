// The publish page: camera + microphone → WHIP → /whip/{room}.

import { WhipPublisher } from './whip.js';
import { formatBitrate, roomFromPath, setStatus } from './page.js';

const room = roomFromPath();
const $ = (id) => document.getElementById(id);
const status = $('status');
const preview = $('preview');
const form = $('controls');
const keyInput = $('key');
const codecSelect = $('codec');
const startButton = $('start');
const stopButton = $('stop');
const statsLine = $('stats');

$('room').textContent = room;
document.title = `Publish ${room} · Dionysia`;
$('watch-link').href = `/watch/${encodeURIComponent(room)}`;

/** @type {WhipPublisher|null} */
let publisher = null;
/** @type {MediaStream|null} */
let camera = null;
let statsTimer = 0;

function setBusy(live) {
  keyInput.disabled = live;
  codecSelect.disabled = live;
  startButton.disabled = live;
  stopButton.disabled = !live;
}

function onConnectionState(state) {
  if (!publisher) return;
  if (state === 'connected') {
    setStatus(status, 'live', 'Live');
    startStats();
  } else if (state === 'disconnected') {
    setStatus(status, 'connecting', 'Connection interrupted, reconnecting…');
  } else if (state === 'failed') {
    setStatus(status, 'error', 'Connection to the server failed.');
    stop({ keepStatus: true });
  }
}

async function goLive() {
  if (!room) {
    setStatus(status, 'error', 'This page needs a room: /publish/ROOM.');
    return;
  }
  setBusy(true);
  try {
    if (!camera) {
      setStatus(status, 'starting', 'Starting camera and microphone…');
      camera = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
        audio: true,
      });
      preview.srcObject = camera;
    }
    setStatus(status, 'connecting', 'Connecting…');
    publisher = new WhipPublisher(`/whip/${encodeURIComponent(room)}`, {
      token: keyInput.value,
      videoCodec: codecSelect.value || undefined,
      onState: onConnectionState,
    });
    await publisher.start(camera);
  } catch (err) {
    publisher = null;
    setBusy(false);
    setStatus(status, 'error', describe(err));
  }
}

function describe(err) {
  if (err.name === 'NotAllowedError') return 'Camera or microphone access was refused.';
  if (err.name === 'NotFoundError') return 'No camera or microphone found.';
  if (err.status === 401 || err.status === 403) {
    return `The stream key was refused (${err.status}).`;
  }
  if (err.status === 404) return `No room named “${room}” (404).`;
  if (err.status === 409) return `Someone is already live in this room (409).`;
  return `Could not go live: ${err.message}`;
}

async function stop({ keepStatus = false } = {}) {
  clearInterval(statsTimer);
  statsLine.textContent = '';
  const current = publisher;
  publisher = null;
  if (current) await current.stop();
  if (camera) {
    for (const track of camera.getTracks()) track.stop();
    camera = null;
    preview.srcObject = null;
  }
  setBusy(false);
  if (!keepStatus) setStatus(status, 'ended', 'Stopped. Go live again when ready.');
}

/** Once a second: the codec, resolution, frame rate and bitrate actually sent. */
function startStats() {
  clearInterval(statsTimer);
  let last = null;
  statsTimer = setInterval(async () => {
    const pc = publisher?.pc;
    if (!pc) return;
    const report = await pc.getStats();
    const out = [...report.values()].find((s) => s.type === 'outbound-rtp' && s.kind === 'video');
    if (!out) return;
    const parts = [];
    const codec = report.get(out.codecId)?.mimeType;
    if (codec) parts.push(codec.replace(/^video\//, ''));
    if (out.frameWidth) parts.push(`${out.frameWidth}×${out.frameHeight}`);
    if (out.framesPerSecond) parts.push(`${Math.round(out.framesPerSecond)} fps`);
    if (last && out.timestamp > last.timestamp) {
      const bits = (out.bytesSent - last.bytesSent) * 8;
      parts.push(formatBitrate((bits * 1000) / (out.timestamp - last.timestamp)));
    }
    last = out;
    statsLine.textContent = parts.join(' · ');
  }, 1000);
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  goLive();
});
stopButton.addEventListener('click', () => stop());
// End the session on the server when the tab goes away (DELETE with keepalive).
window.addEventListener('pagehide', () => {
  if (publisher) publisher.stop();
});
