// The watch page: /whep/{room} → <video>, muted autoplay with an unmute button.
//
// It waits while the room is not live (409), and starts over when the
// connection fails or no video has been decoded for a while (publisher gone).

import { WhepViewer } from './whep.js';
import { findStats, roomFromPath, setStatus } from './page.js';

const STALL_RESTART_MS = 8000;
const RESTART_DELAY_MS = 1000;

const room = roomFromPath();
const $ = (id) => document.getElementById(id);
const status = $('status');
const video = $('video');
const unmute = $('unmute');
const resolution = $('resolution');

$('title').textContent = room;
document.title = `${room} · Dionysia`;

/** @type {WhepViewer|null} */
let viewer = null;
let watchdog = 0;

async function play() {
  if (!room) {
    setStatus(status, 'error', 'This page needs a room: /watch/ROOM.');
    return;
  }
  const current = new WhepViewer(`/whep/${encodeURIComponent(room)}`, {
    onState: (state) => onState(current, state),
  });
  viewer = current;
  setStatus(status, 'connecting', 'Connecting…');
  try {
    await current.start();
    // Attached only now: a <video> with a MediaStream that has no media yet
    // holds back the page's load event (and the tab's spinner) meanwhile.
    if (viewer === current) video.srcObject = current.stream;
  } catch (err) {
    if (viewer !== current || err.name === 'AbortError') return;
    setStatus(status, 'error', `Cannot play: ${err.message}`);
    restartSoon(5000);
  }
}

function onState(current, state) {
  if (viewer !== current) return;
  if (state === 'waiting') {
    setStatus(status, 'waiting', 'Waiting for the stream to start…');
  } else if (state === 'connected') {
    // 'live' is set when the first frame is shown (see the rVFC loop below).
    if (status.dataset.state !== 'live') setStatus(status, 'connecting', 'Connected, starting…');
    startWatchdog(current);
  } else if (state === 'disconnected') {
    setStatus(status, 'connecting', 'Connection interrupted…');
  } else if (state === 'failed') {
    setStatus(status, 'error', 'Connection lost, reconnecting…');
    restartSoon(RESTART_DELAY_MS);
  }
}

function restartSoon(delayMs) {
  clearInterval(watchdog);
  const old = viewer;
  viewer = null;
  if (old) old.stop();
  setTimeout(() => {
    if (!viewer) play();
  }, delayMs);
}

/**
 * Restarts when no video frame has been decoded for STALL_RESTART_MS. Reads
 * getStats rather than rendered frames, which background tabs throttle.
 */
function startWatchdog(current) {
  clearInterval(watchdog);
  let decoded = -1;
  let since = performance.now();
  watchdog = setInterval(async () => {
    if (viewer !== current) return;
    const inbound = await findStats(current.pc, 'inbound-rtp', 'video');
    const now = performance.now();
    if (inbound && inbound.framesDecoded !== decoded) {
      decoded = inbound.framesDecoded;
      since = now;
    } else if (now - since > STALL_RESTART_MS) {
      setStatus(status, 'waiting', 'The stream stopped; waiting for it to come back…');
      restartSoon(RESTART_DELAY_MS);
    }
  }, 1000);
}

// The first shown frame makes the page 'live'.
function onFrame() {
  if (viewer && status.dataset.state !== 'live') setStatus(status, 'live', 'Live');
  video.requestVideoFrameCallback(onFrame);
}
if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
  video.requestVideoFrameCallback(onFrame);
} else {
  video.addEventListener('playing', () => setStatus(status, 'live', 'Live'));
}

video.addEventListener('resize', () => {
  resolution.textContent = video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : '';
});

unmute.addEventListener('click', () => {
  video.muted = !video.muted;
  unmute.textContent = video.muted ? 'Unmute' : 'Mute';
  if (!video.muted) video.play().catch(() => {});
});

// Autoplay with sound is usually refused; muted autoplay is not. If the
// browser still blocks playback, the unmute button starts it.
video.addEventListener('loadedmetadata', () => video.play().catch(() => {}));

window.addEventListener('pagehide', () => {
  if (viewer) viewer.stop();
});

play();
