// Small helpers the publish and watch pages share.

/** The room named by the page's path: /publish/{room} or /watch/{room}. */
export function roomFromPath(pathname = location.pathname) {
  const segment = pathname.split('/').filter(Boolean)[1] ?? '';
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/**
 * Shows a state ('idle', 'starting', 'connecting', 'waiting', 'live',
 * 'error', 'ended') and a message in a role="status" element. The state is
 * also put on <body data-state> for styling and for the end-to-end tests.
 */
export function setStatus(element, state, message) {
  element.dataset.state = state;
  element.textContent = message;
  document.body.dataset.state = state;
}

/** "2.1 Mbit/s" */
export function formatBitrate(bitsPerSecond) {
  if (!Number.isFinite(bitsPerSecond) || bitsPerSecond <= 0) return '0 kbit/s';
  if (bitsPerSecond >= 1e6) return `${(bitsPerSecond / 1e6).toFixed(1)} Mbit/s`;
  return `${Math.round(bitsPerSecond / 1e3)} kbit/s`;
}

/** The first stats report of `type` and `kind`, e.g. ('outbound-rtp', 'video'). */
export async function findStats(pcOrReceiver, type, kind) {
  const report = await pcOrReceiver.getStats();
  for (const stat of report.values()) {
    if (stat.type === type && (!kind || stat.kind === kind)) return stat;
  }
  return null;
}
