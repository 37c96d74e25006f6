// What every browser test script shares: argument parsing, launching Debian's
// Chromium (never a downloaded one) with retries, a hard deadline, and the
// one-JSON-line report the Rust side reads (tests/common/mod.rs `run_json`).
//
// Exit status: 0 whenever a report was printed, even if the server misbehaved
// (the Rust test asserts on the report); 1 only when the harness itself broke.

import { loadavg } from 'node:os';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.DIONYSIA_CHROMIUM || '/usr/bin/chromium';

/** Flags from shared/TESTING-NOTES.md; the fake devices only matter to pages that ask. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

/**
 * `--base URL --room R --flag` → { base: 'URL', room: 'R', flag: true }.
 * @param {Record<string, string|number|boolean>} defaults
 */
export function parseArgs(defaults) {
  const out = { ...defaults };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new Error(`unexpected argument ${arg}`);
    const name = arg.slice(2);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) {
      out[name] = true;
    } else {
      out[name] = typeof defaults[name] === 'number' ? Number(next) : next;
      i++;
    }
  }
  for (const [name, value] of Object.entries(out)) {
    if (value === undefined) throw new Error(`--${name} is required`);
  }
  return out;
}

/** Progress on stderr (the Rust side shows it when a test fails). */
export function log(...parts) {
  const t = (performance.now() / 1000).toFixed(2).padStart(6);
  console.error(`[${t}s]`, ...parts);
}

/**
 * Launches Chromium in headless mode (Playwright gives it a fresh temporary
 * profile) and opens one browser context. Chromium sometimes dies at launch
 * here (SIGTRAP): try up to `attempts` times.
 *
 * @param {import('playwright-core').BrowserContextOptions} [contextOptions]
 */
export async function launch(contextOptions = {}, { attempts = 3, args = CHROMIUM_ARGS } = {}) {
  let lastError;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    let browser;
    try {
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args,
        timeout: 20000,
      });
      const context = await browser.newContext({
        viewport: { width: 1280, height: 800 },
        ...contextOptions,
      });
      log(`chromium ${browser.version()} launched (attempt ${attempt})`);
      return { browser, context, close: () => browser.close().catch(() => {}) };
    } catch (err) {
      lastError = err;
      await browser?.close().catch(() => {});
      log(`chromium launch attempt ${attempt} failed: ${String(err.message).split('\n')[0]}`);
    }
  }
  const why = `chromium did not start after ${attempts} attempts: ${lastError?.message}`;
  throw harnessError(new Error(why));
}

/**
 * Runs `body(report)` under a deadline and prints the report as the last
 * stdout line. `body` fills `report`; a thrown error becomes `report.error`
 * (the server's fault as far as we can tell: exit 0), unless it is marked
 * `harness` (exit 1).
 *
 * @param {number} deadlineMs
 * @param {(report: Record<string, any>) => Promise<void>} body
 */
export async function runReport(deadlineMs, body) {
  const report = { ok: false };
  let exitCode = 0;
  const deadline = setTimeout(() => {
    report.error = `deadline of ${deadlineMs} ms passed`;
    finish();
  }, deadlineMs);
  let finished = false;
  function finish() {
    if (finished) return;
    finished = true;
    clearTimeout(deadline);
    report.loadavg = loadavg().map((x) => Math.round(x * 100) / 100);
    process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(exitCode));
  }
  try {
    await body(report);
    if (!report.error) report.ok = true;
  } catch (err) {
    report.error = String(err?.message ?? err).split('\n').slice(0, 6).join('\n');
    if (err?.harness) {
      report.harness_error = true;
      exitCode = 1;
    }
    log('error:', err?.stack ?? err);
  }
  finish();
}

/** Marks an error as the harness's own (exit 1), not the server's. */
export function harnessError(err) {
  const e = err instanceof Error ? err : new Error(String(err));
  e.harness = true;
  return e;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
