// The watch page: one <dionysia-player> for the room in the path.
//
// /watch/{room}?token=T (private rooms) &mode=hls|webrtc (force one) &muted
// The page mirrors the player's state on <body data-state> (the end-to-end
// tests and the stylesheet read it).

import './player.js';
import { roomFromPath } from './page.js';

const room = roomFromPath();
const params = new URLSearchParams(location.search);
const player = document.getElementById('player');

document.getElementById('title').textContent = room;
document.title = `${room} · Dionysia`;

for (const name of ['token', 'mode', 'ice-timeout']) {
  if (params.get(name)) player.setAttribute(name, params.get(name));
}
if (params.has('muted')) player.setAttribute('muted', '');
player.addEventListener('statechange', (event) => {
  document.body.dataset.state = event.detail.state;
  if (event.detail.mode) document.body.dataset.mode = event.detail.mode;
});
player.setAttribute('room', room);

const embed = `<script type="module" src="${location.origin}/assets/player.js"></script>\n<dionysia-player room="${room}"></dionysia-player>`;
document.getElementById('embed-code').textContent = embed;
document.getElementById('copy-embed').addEventListener('click', async (event) => {
  await navigator.clipboard?.writeText(embed).catch(() => {});
  event.target.textContent = 'Copied';
});
