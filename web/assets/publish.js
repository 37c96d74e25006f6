// The publish page: camera or screen + microphone → WHIP → /whip/{room}.
//
// Source and devices, resolution, bitrate cap, codec and simulcast are chosen
// before going live (they shape the offer). Once live, getStats() gives what
// each simulcast layer really sends: resolution, frame rate, bitrate, the
// loss the server reports (RTCP receiver reports) and what limits the encoder.

import { WhipPublisher } from './whip.js';
import { formatBitrate, roomFromPath, setStatus } from './page.js';

const room = roomFromPath();
const $ = (id) => document.getElementById(id);
const status = $('status');
const preview = $('preview');
const form = $('controls');
const keyInput = $('key');
const startButton = $('start');
const stopButton = $('stop');
const statsLine = $('stats');
const layerTable = $('layer-stats');
const KEY_STORE = `dionysia.streamKey.${room}`;

$('room').textContent = room;
document.title = `Publish ${room} · Dionysia`;
$('watch-link').href = `/watch/${encodeURIComponent(room)}`;
$('watch-link').textContent = `${location.origin}/watch/${room}`;
keyInput.value = sessionStorage.getItem(KEY_STORE) ?? '';

/** @type {WhipPublisher|null} */
let publisher = null;
/** @type {MediaStream|null} */
let media = null;
let statsTimer = 0;

const settingsInputs = () => [
  ...form.querySelectorAll('input[name="source"]'),
  $('camera'),
  $('mic'),
  $('resolution'),
  $('bitrate'),
  $('codec'),
  $('simulcast'),
  keyInput,
  $('preview-btn'),
];

function setBusy(live) {
  for (const el of settingsInputs()) el.disabled = live;
  startButton.disabled = live;
  stopButton.disabled = !live;
}

const source = () => form.querySelector('input[name="source"]:checked').value;

/** Fills the camera and microphone pickers (labels appear once access was granted). */
async function listDevices() {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  for (const [select, kind, noun] of [
    [$('camera'), 'videoinput', 'Camera'],
    [$('mic'), 'audioinput', 'Microphone'],
  ]) {
    const chosen = select.value;
    const keep = [...select.options].filter((o) => o.value === '' || o.value === 'none');
    select.replaceChildren(...keep);
    devices
      .filter((d) => d.kind === kind && d.deviceId && d.deviceId !== 'default')
      .forEach((d, i) => select.append(new Option(d.label || `${noun} ${i + 1}`, d.deviceId)));
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  }
}

/** Opens the chosen source at the chosen resolution. */
async function openMedia() {
  const height = Number($('resolution').value);
  const width = Math.round((height * 16) / 9);
  const micId = $('mic').value;
  const audio = micId === 'none' ? false : micId ? { deviceId: { exact: micId } } : true;
  if (source() === 'screen') {
    const screen = await navigator.mediaDevices.getDisplayMedia({
      video: { height: { ideal: height }, frameRate: { ideal: 30 } },
      audio: false,
    });
    if (audio) {
      const mic = await navigator.mediaDevices.getUserMedia({ audio });
      for (const t of mic.getAudioTracks()) screen.addTrack(t);
    }
    // The browser's own "Stop sharing" button ends the stream.
    screen.getVideoTracks()[0]?.addEventListener('ended', () => stop());
    return screen;
  }
  const camId = $('camera').value;
  return navigator.mediaDevices.getUserMedia({
    video: {
      ...(camId ? { deviceId: { exact: camId } } : {}),
      width: { ideal: width },
      height: { ideal: height },
      frameRate: { ideal: 30 },
    },
    audio,
  });
}

function closeMedia() {
  if (!media) return;
  for (const track of media.getTracks()) track.stop();
  media = null;
  preview.srcObject = null;
  document.body.classList.remove('previewing');
}

async function startPreview() {
  closeMedia();
  setStatus(status, 'starting', source() === 'screen' ? 'Choose what to share…' : 'Starting camera and microphone…');
  media = await openMedia();
  preview.srcObject = media;
  document.body.classList.add('previewing');
  await listDevices();
  setStatus(status, 'idle', 'Preview on. Enter the stream key and go live.');
}

function videoEncodings() {
  const kbps = Number($('bitrate').value);
  const max = Number.isFinite(kbps) && kbps >= 100 ? kbps * 1000 : undefined;
  if (!$('simulcast').checked) return max ? [{ maxBitrate: max }] : undefined;
  // Bitrates of the lower layers follow their pixel counts, roughly.
  return [
    { rid: 'h', ...(max ? { maxBitrate: max } : {}) },
    { rid: 'm', scaleResolutionDownBy: 2, ...(max ? { maxBitrate: Math.round(max / 3.5) } : {}) },
    { rid: 'l', scaleResolutionDownBy: 4, ...(max ? { maxBitrate: Math.round(max / 12) } : {}) },
  ];
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
    if (!media) await startPreview();
    setStatus(status, 'connecting', 'Connecting…');
    sessionStorage.setItem(KEY_STORE, keyInput.value);
    publisher = new WhipPublisher(`/whip/${encodeURIComponent(room)}`, {
      token: keyInput.value,
      videoCodec: $('codec').value || undefined,
      videoEncodings: videoEncodings(),
      onState: onConnectionState,
    });
    await publisher.start(media);
  } catch (err) {
    publisher = null;
    setBusy(false);
    setStatus(status, 'error', describe(err));
  }
}

function describe(err) {
  if (err.name === 'NotAllowedError') return 'Camera, microphone or screen access was refused.';
  if (err.name === 'NotFoundError') return 'No camera or microphone found.';
  if (err.name === 'OverconstrainedError') return 'The device cannot do that resolution.';
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
  layerTable.hidden = true;
  document.body.classList.remove('on-air');
  const current = publisher;
  publisher = null;
  if (current) await current.stop();
  closeMedia();
  setBusy(false);
  if (!keepStatus) setStatus(status, 'ended', 'Stopped. Go live again when ready.');
}

/** Once a second: per layer, what is actually sent; the summary line. */
function startStats() {
  clearInterval(statsTimer);
  document.body.classList.add('on-air');
  const last = new Map();
  statsTimer = setInterval(async () => {
    const pc = publisher?.pc;
    if (!pc) return;
    const report = await pc.getStats();
    const all = [...report.values()];
    const remote = new Map(
      all.filter((s) => s.type === 'remote-inbound-rtp').map((s) => [s.localId, s]),
    );
    const rows = [];
    let total = 0;
    let codec = '';
    let top = null;
    const layers = all
      .filter((s) => s.type === 'outbound-rtp')
      .sort((a, b) => (b.frameHeight ?? -1) - (a.frameHeight ?? -1));
    for (const out of layers) {
      const prev = last.get(out.id);
      last.set(out.id, out);
      // Retransmissions include the browser's bandwidth probes (RTX
      // padding): count media only.
      const media = (s) => s.bytesSent - (s.retransmittedBytesSent ?? 0);
      const bps =
        prev && out.timestamp > prev.timestamp
          ? ((media(out) - media(prev)) * 8 * 1000) / (out.timestamp - prev.timestamp)
          : 0;
      total += bps;
      const rr = remote.get(out.id);
      const loss =
        rr?.fractionLost != null
          ? `${(rr.fractionLost * 100).toFixed(1)} %`
          : rr?.packetsLost != null
            ? `${rr.packetsLost} pkts`
            : '—';
      if (out.kind === 'video') {
        codec ||= report.get(out.codecId)?.mimeType?.replace(/^video\//, '') ?? '';
        top ??= out;
        rows.push([
          out.rid ?? 'video',
          out.frameWidth ? `${out.frameWidth}×${out.frameHeight}` : 'paused',
          out.framesPerSecond ? String(Math.round(out.framesPerSecond)) : '0',
          formatBitrate(bps),
          out.targetBitrate ? formatBitrate(out.targetBitrate) : '—',
          loss,
          out.qualityLimitationReason && out.qualityLimitationReason !== 'none'
            ? out.qualityLimitationReason
            : '—',
        ]);
      } else {
        rows.push(['audio', '—', '—', formatBitrate(bps), '—', loss, '—']);
      }
    }
    const body = layerTable.tBodies[0];
    body.replaceChildren(
      ...rows.map((cells) => {
        const tr = document.createElement('tr');
        for (const [i, text] of cells.entries()) {
          const td = document.createElement(i === 0 ? 'th' : 'td');
          if (i === 0) td.scope = 'row';
          td.textContent = text;
          tr.append(td);
        }
        return tr;
      }),
    );
    layerTable.hidden = rows.length === 0;
    const parts = [];
    if (codec) parts.push(codec);
    if (top?.frameWidth) parts.push(`${top.frameWidth}×${top.frameHeight}`);
    if (top?.framesPerSecond) parts.push(`${Math.round(top.framesPerSecond)} fps`);
    if (total) parts.push(formatBitrate(total));
    statsLine.textContent = parts.join(' · ');
  }, 1000);
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  goLive();
});
stopButton.addEventListener('click', () => stop());
$('preview-btn').addEventListener('click', () =>
  startPreview().catch((err) => setStatus(status, 'error', describe(err))),
);
for (const el of [$('camera'), $('mic'), $('resolution'), ...form.querySelectorAll('input[name="source"]')]) {
  el.addEventListener('change', () => {
    $('camera').disabled = source() === 'screen';
    if (media && !publisher) {
      startPreview().catch((err) => setStatus(status, 'error', describe(err)));
    }
  });
}
navigator.mediaDevices?.addEventListener?.('devicechange', listDevices);
listDevices();
// End the session on the server when the tab goes away (DELETE with keepalive).
window.addEventListener('pagehide', () => {
  if (publisher) publisher.stop();
});
