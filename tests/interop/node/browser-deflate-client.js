// Interop client: headless Chromium's WebSocket with permessage-deflate (browsers offer it on
// every connection), driven by playwright-core, against echo servers.
//
// Usage: node browser-deflate-client.js ws://127.0.0.1:PORT/ [ws://... more servers]
//
// One browser; for each server the page checks the extension was agreed (ws.extensions),
// echoes market-data ticks, a 64 KiB compressible text, a compressible binary and 1 MiB of
// noise, checks every echo, and closes 1000. A page cannot see frames, so whether the server's
// messages really came compressed is checked by the test, on the wire. Prints "ok <check>: ..."
// per check and exits 0 when all passed; otherwise prints "FAIL <check>: ..." and exits 1.
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const WAIT_MS = 10_000;
const CHECKS = ['negotiated', 'ticks', 'big-text', 'binary', 'noise', 'close'];

// Runs in the page: returns [{check, ok, detail}], stopping at the first failure.
async function checksInPage({ url, waitMs }) {
  const results = [];
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const queue = [];
  const waiters = [];
  const push = (item) => (waiters.length ? waiters.shift()(item) : queue.push(item));
  ws.onmessage = (e) => push({ kind: 'message', data: e.data });
  ws.onclose = (e) => push({ kind: 'close', code: e.code, wasClean: e.wasClean });
  ws.onerror = () => push({ kind: 'error' });
  ws.onopen = () => push({ kind: 'open' });
  const next = () =>
    queue.length
      ? Promise.resolve(queue.shift())
      : new Promise((resolve) => {
          const timer = setTimeout(() => resolve({ kind: 'timeout' }), waitMs);
          waiters.push((item) => {
            clearTimeout(timer);
            resolve(item);
          });
        });
  const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const echo = async (check, message) => {
    ws.send(message);
    const ev = await next();
    const ok =
      ev.kind === 'message' &&
      (typeof message === 'string'
        ? ev.data === message
        : ev.data instanceof ArrayBuffer && sameBytes(new Uint8Array(ev.data), message));
    if (!ok) results.push({ check, ok: false, detail: `the echo differs: ${JSON.stringify(ev).slice(0, 200)}` });
    return ok;
  };

  let ev = await next();
  if (ev.kind !== 'open') return [{ check: 'open', ok: false, detail: JSON.stringify(ev) }];
  if (!ws.extensions.includes('permessage-deflate')) {
    return [{ check: 'negotiated', ok: false, detail: `extensions ${JSON.stringify(ws.extensions)}` }];
  }
  results.push({ check: 'negotiated', ok: true, detail: JSON.stringify(ws.extensions) });

  for (let i = 0; i < 50; i++) {
    const tick = JSON.stringify({ type: 'tick', symbol: `SYM${i % 7}`, seq: i, bid: 100 + i / 100, ask: 100.02 + i / 100, size: 100 + i, currency: 'USD', venue: 'XNAS', ts: '2026-11-21T10:25:13.123456Z', flags: ['regular'] });
    if (!(await echo('ticks', tick))) return results;
  }
  results.push({ check: 'ticks', ok: true, detail: '50 JSON ticks echoed' });
  const text = 'the quick brown fox jumps over the lazy dog; h\u00e9llo \u2713 '.repeat(2000).slice(0, 64 * 1024);
  if (!(await echo('big-text', text))) return results;
  results.push({ check: 'big-text', ok: true, detail: `${text.length} characters echoed` });
  const bin = Uint8Array.from({ length: 256 * 1024 }, (_, i) => i & 0xff);
  if (!(await echo('binary', bin))) return results;
  results.push({ check: 'binary', ok: true, detail: `${bin.length} bytes echoed` });
  const noise = new Uint8Array(1 << 20);
  for (let i = 0; i < noise.length; i += 65536) crypto.getRandomValues(noise.subarray(i, i + 65536));
  if (!(await echo('noise', noise))) return results;
  results.push({ check: 'noise', ok: true, detail: `${noise.length} random bytes echoed intact` });

  ws.close(1000, 'done');
  ev = await next();
  if (ev.kind !== 'close' || ev.code !== 1000 || !ev.wasClean) {
    results.push({ check: 'close', ok: false, detail: JSON.stringify(ev) });
    return results;
  }
  results.push({ check: 'close', ok: true, detail: 'closed 1000, clean' });
  return results;
}

async function main() {
  const urls = process.argv.slice(2);
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ringside-chromium-'));
  let context;
  let failed = false;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      timeout: 30_000,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    console.log(`browser: ${context.browser()?.version() ?? 'chromium'} (${executablePath})`);
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(60_000);
    page.on('console', (msg) => console.log(`page console: ${msg.text()}`));
    for (const url of urls) {
      console.log(`server ${url}`);
      const results = await page.evaluate(checksInPage, { url, waitMs: WAIT_MS });
      for (const r of results) {
        console.log(`${r.ok ? 'ok' : 'FAIL'} ${r.check}: ${r.detail}`);
        if (!r.ok) failed = true;
      }
      if (!failed && results.length !== CHECKS.length) {
        console.log(`FAIL checks: ${results.length} of ${CHECKS.length} ran`);
        failed = true;
      }
      if (failed) break;
    }
  } catch (e) {
    console.log(`FAIL browser: ${e.stack || e}`);
    failed = true;
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.exit(failed ? 1 : 0);
}

main();
