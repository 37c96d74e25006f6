// The dashboard (/): the rooms of this server, their live state and audience,
// through the room API (/api/v1, Authorization: Bearer <admin token>).
//
// The admin token is pasted once and kept in sessionStorage (or localStorage
// when "Remember" is ticked); it is sent to this origin's API only. Rooms are
// polled every POLL_MS; the graphs keep the last HISTORY_MS of those samples
// in memory (the server keeps no history).
//
// Without a token the page still offers the Watch / Publish forms.

import { formatBitrate } from './page.js';

const POLL_MS = 2000;
const HISTORY_MS = 5 * 60 * 1000;
const TOKEN_KEY = 'dionysia.adminToken';
const CONFIRM_MS = 4000;

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------ Watch / Publish forms

for (const form of document.querySelectorAll('form[data-page]')) {
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const room = form.elements.room.value.trim();
    if (room) location.assign(`/${form.dataset.page}/${encodeURIComponent(room)}`);
  });
}

// ------------------------------------------------------------ token

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || '';
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(TOKEN_KEY);
}

let token = storedToken();

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON
  }
  if (!response.ok) {
    const detail = json?.detail || json?.title || text.slice(0, 200) || response.statusText;
    throw new ApiError(response.status, `${response.status}: ${detail}`);
  }
  return json;
}

$('signin').addEventListener('submit', async (event) => {
  event.preventDefault();
  token = $('token').value.trim();
  $('signin-error').textContent = '';
  try {
    await api('GET', '/rooms');
  } catch (err) {
    $('signin-error').textContent =
      err.status === 401 ? 'That token was refused.' : `Cannot sign in: ${err.message}`;
    token = '';
    return;
  }
  (($('remember').checked && localStorage) || sessionStorage).setItem(TOKEN_KEY, token);
  $('token').value = '';
  showSignedIn();
});

$('sign-out').addEventListener('click', () => {
  forgetToken();
  token = '';
  clearTimeout(pollTimer);
  $('rooms').replaceChildren();
  cards.clear();
  showSignedOut();
});

function showSignedOut() {
  $('signed-out').hidden = false;
  $('signed-in').hidden = true;
  $('sign-out').hidden = true;
  $('refreshed').textContent = '';
  document.body.dataset.state = 'signed-out';
}

function showSignedIn() {
  $('signed-out').hidden = true;
  $('signed-in').hidden = false;
  $('sign-out').hidden = false;
  document.body.dataset.state = 'signed-in';
  poll();
}

// ------------------------------------------------------------ polling

/** name → {el, history: [{t, viewers, bitrate}]} */
const cards = new Map();
let pollTimer = 0;

async function poll() {
  clearTimeout(pollTimer);
  try {
    const { rooms } = await api('GET', '/rooms');
    render(rooms);
    $('refreshed').textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err.status === 401) {
      forgetToken();
      showSignedOut();
      $('signin-error').textContent = 'The admin token is no longer accepted.';
      return;
    }
    $('refreshed').textContent = `Update failed: ${err.message}`;
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

const ingestBitrate = (room) =>
  (room.live?.tracks ?? []).reduce(
    (sum, t) => sum + t.layers.reduce((s, l) => s + (l.active ? l.bitrate : 0), 0),
    0,
  );

function render(rooms) {
  const now = Date.now();
  let live = 0;
  let webrtc = 0;
  let hls = 0;
  let ingest = 0;
  rooms.sort((a, b) => Number(b.live?.live ?? 0) - Number(a.live?.live ?? 0) || a.name.localeCompare(b.name));
  const seen = new Set();
  const list = $('rooms');
  for (const room of rooms) {
    seen.add(room.id);
    let card = cards.get(room.id);
    if (!card) {
      card = { el: makeCard(room), history: [] };
      cards.set(room.id, card);
    }
    list.append(card.el); // keeps the sorted order
    const state = room.live ?? {};
    const viewers = state.viewers ?? { webrtc: 0, hls: 0 };
    const bitrate = ingestBitrate(room);
    card.history.push({ t: now, viewers: viewers.webrtc + viewers.hls, webrtc: viewers.webrtc, bitrate });
    while (card.history.length && card.history[0].t < now - HISTORY_MS) card.history.shift();
    updateCard(card, room);
    if (state.live) live++;
    webrtc += viewers.webrtc;
    hls += viewers.hls;
    ingest += bitrate;
  }
  for (const [id, card] of cards) {
    if (!seen.has(id)) {
      card.el.remove();
      cards.delete(id);
    }
  }
  $('empty').hidden = rooms.length > 0;
  $('total-live').textContent = live;
  $('total-webrtc').textContent = webrtc;
  $('total-hls').textContent = hls;
  $('total-ingest').textContent = formatBitrate(ingest);
}

function makeCard(room) {
  const el = $('room-template').content.firstElementChild.cloneNode(true);
  el.dataset.room = room.name;
  const q = (sel) => el.querySelector(sel);
  q('.room-name').textContent = room.name;
  q('.room-name').href = `/watch/${encodeURIComponent(room.name)}`;
  q('.watch-link').href = `/watch/${encodeURIComponent(room.name)}`;
  q('.publish-link').href = `/publish/${encodeURIComponent(room.name)}`;
  q('.graph-viewers').setAttribute('aria-label', `Viewers of ${room.name} over the last 5 minutes`);
  q('.graph-bitrate').setAttribute('aria-label', `Ingest bitrate of ${room.name} over the last 5 minutes`);
  for (const button of el.querySelectorAll('.copy-btn')) {
    button.addEventListener('click', async () => {
      const input = button.parentElement.querySelector('input');
      await navigator.clipboard?.writeText(input.value).catch(() => {});
      button.textContent = 'Copied';
      setTimeout(() => (button.textContent = 'Copy'), 1500);
    });
  }
  q('.reveal-btn').addEventListener('click', (event) => {
    const hidden = q('.stream-key').type === 'password';
    for (const input of [q('.stream-key'), q('.rtmp-url')]) input.type = hidden ? 'text' : 'password';
    event.target.textContent = hidden ? 'Hide' : 'Show';
  });
  const id = room.id;
  // A private room's watch link carries a fresh viewer token (1 hour).
  for (const link of [q('.watch-link'), q('.room-name')]) {
    link.addEventListener('click', async (event) => {
      if (!cards.get(id)?.room.settings.private) return;
      event.preventDefault();
      try {
        const { token: viewer } = await api('POST', `/rooms/${encodeURIComponent(id)}/viewer-tokens`, {});
        location.assign(`/watch/${encodeURIComponent(room.name)}?token=${encodeURIComponent(viewer)}`);
      } catch (err) {
        q('.action-error').textContent = `No viewer token: ${err.message}`;
      }
    });
  }
  confirmButton(q('.rotate-btn'), 'Rotate key', 'Confirm: new key?', async () => {
    const updated = await api('POST', `/rooms/${encodeURIComponent(id)}/rotate-key`);
    updateCard(cards.get(id), updated);
    return 'New key set: update your encoder.';
  }, q('.action-error'));
  confirmButton(q('.kick-btn'), 'Kick publisher', 'Confirm: kick?', async () => {
    await api('DELETE', `/rooms/${encodeURIComponent(id)}/publisher`);
    return 'Publisher disconnected (it may reconnect with the key: rotate it to keep it out).';
  }, q('.action-error'));
  return el;
}

/** A destructive button: the first press arms it, a second within CONFIRM_MS acts. */
function confirmButton(button, label, armedLabel, action, messageEl) {
  let armed = 0;
  button.addEventListener('click', async () => {
    if (!armed) {
      button.textContent = armedLabel;
      button.classList.add('armed');
      armed = setTimeout(() => {
        armed = 0;
        button.textContent = label;
        button.classList.remove('armed');
      }, CONFIRM_MS);
      return;
    }
    clearTimeout(armed);
    armed = 0;
    button.textContent = label;
    button.classList.remove('armed');
    button.disabled = true;
    try {
      messageEl.textContent = await action();
      messageEl.classList.remove('error');
    } catch (err) {
      messageEl.textContent = err.status === 404 ? 'Nobody is publishing.' : err.message;
      messageEl.classList.add('error');
    } finally {
      button.disabled = false;
      poll();
    }
  });
}

function updateCard(card, room) {
  card.room = room;
  const el = card.el;
  const q = (sel) => el.querySelector(sel);
  const state = room.live ?? {};
  const viewers = state.viewers ?? { webrtc: 0, hls: 0 };
  el.dataset.live = String(Boolean(state.live));
  el.dataset.viewers = String(viewers.webrtc + viewers.hls);
  q('.viewers-webrtc').textContent = viewers.webrtc;
  q('.viewers-hls').textContent = viewers.hls;
  q('.uptime').textContent = state.live ? `live for ${duration(state.uptime_secs)}` : '';
  const s = room.settings;
  const tags = [s.private && 'private', !s.webrtc && 'HLS only', !s.hls && 'no HLS', s.max_viewers && `max ${s.max_viewers}`];
  q('.settings').textContent = tags.filter(Boolean).join(' · ');
  q('.settings').hidden = !tags.some(Boolean);
  const video = (state.tracks ?? []).find((t) => t.kind === 'video');
  const audio = (state.tracks ?? []).find((t) => t.kind === 'audio');
  if (state.live) {
    const top = video?.layers.filter((l) => l.active).sort((a, b) => b.height - a.height)[0];
    const via = state.publisher?.ingest ? state.publisher.ingest.toUpperCase() : '';
    q('.ingest').textContent = [
      via,
      video && `${video.codec}${top?.height ? ` ${top.height}p` : ''}`,
      audio?.codec,
      formatBitrate(ingestBitrate(room)),
    ]
      .filter(Boolean)
      .join(' · ');
    q('.layers').textContent = video
      ? video.layers
          .map((l) => `${l.rid ?? 'single'} ${l.height ? `${l.height}p` : ''} ${l.active ? formatBitrate(l.bitrate) : 'idle'}`.replace(/\s+/g, ' '))
          .join(', ')
      : '—';
  } else {
    q('.ingest').textContent = '—';
    q('.layers').textContent = '—';
  }
  q('.whip-url').value = room.urls.whip;
  q('.stream-key').value = room.stream_key;
  q('.rtmp-url').value = room.urls.rtmp;
  q('.hls-url').value = room.urls.hls;
  q('.kick-btn').disabled = !state.publisher;
  drawGraph(q('.graph-viewers'), card.history, (p) => p.viewers, (v) => String(Math.round(v)));
  drawGraph(q('.graph-bitrate'), card.history, (p) => p.bitrate, formatBitrate);
}

function duration(secs) {
  const s = Math.floor(secs ?? 0);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** A small area chart of `value` over the last HISTORY_MS, with its latest and peak. */
function drawGraph(canvas, history, value, format) {
  const ratio = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 320;
  const cssH = canvas.clientHeight || 80;
  if (canvas.width !== Math.round(cssW * ratio)) {
    canvas.width = Math.round(cssW * ratio);
    canvas.height = Math.round(cssH * ratio);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const style = getComputedStyle(document.documentElement);
  const accent = style.getPropertyValue('--accent').trim() || '#7b2d8e';
  const muted = style.getPropertyValue('--muted').trim() || '#888';
  const border = style.getPropertyValue('--border').trim() || '#ccc';
  ctx.strokeStyle = border;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, cssH - 0.5);
  ctx.lineTo(cssW, cssH - 0.5);
  ctx.stroke();
  const now = Date.now();
  const values = history.map(value);
  const peak = Math.max(1, ...values);
  const x = (t) => cssW - ((now - t) / HISTORY_MS) * cssW;
  const y = (v) => cssH - 4 - (v / peak) * (cssH - 22);
  if (history.length > 1) {
    ctx.beginPath();
    ctx.moveTo(x(history[0].t), cssH);
    history.forEach((p, i) => ctx.lineTo(x(p.t), y(values[i])));
    ctx.lineTo(x(history.at(-1).t), cssH);
    ctx.closePath();
    ctx.globalAlpha = 0.18;
    ctx.fillStyle = accent;
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.beginPath();
    history.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p.t), y(values[i])));
    ctx.strokeStyle = accent;
    ctx.lineWidth = 2;
    ctx.stroke();
  }
  ctx.fillStyle = muted;
  ctx.font = '12px system-ui, sans-serif';
  ctx.textBaseline = 'top';
  const latest = values.at(-1) ?? 0;
  ctx.fillText(`now ${format(latest)} · peak ${format(Math.max(0, ...values))}`, 4, 2);
}

// ------------------------------------------------------------ create

$('create').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('create-error').textContent = '';
  try {
    await api('POST', '/rooms', {
      name: $('new-name').value.trim(),
      private: $('new-private').checked,
      webrtc: $('new-webrtc').checked,
      hls: $('new-hls').checked,
    });
    $('new-name').value = '';
    $('create-card').open = false;
    poll();
  } catch (err) {
    $('create-error').textContent = `Could not create the room: ${err.message}`;
  }
});

if (token) showSignedIn();
else showSignedOut();
