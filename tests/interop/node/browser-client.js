// Interop client: headless Chromium's WebSocket API, driven by playwright-core.
//
// Usage: node browser-client.js ws://127.0.0.1:PORT/
//        RINGSIDE_SPKI=<base64 sha256 of the server's public key> node browser-client.js wss://...
//        (the browser accepts that one key without a trusted chain)
//
// Launches the system Chromium (CHROMIUM, default /usr/bin/chromium) once, opens about:blank and
// runs every check inside the page with the browser's own WebSocket; the page cannot send pings,
// so there is no ping check. Prints one line per check ("ok <check>: ...") and exits 0 when every
// check passed; otherwise prints "FAIL <check>: ..." and exits 1. Every wait is bounded.
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const WAIT_MS = 10_000;

// Runs in the page: returns [{check, ok, detail}], stopping at the first failure.
async function checksInPage({ url, waitMs }) {
  const results = [];
  const MIB = 1 << 20;
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const queue = [];
  const waiters = [];
  const push = (item) => (waiters.length ? waiters.shift()(item) : queue.push(item));
  ws.onmessage = (e) => push({ kind: 'message', data: e.data });
  ws.onclose = (e) => push({ kind: 'close', code: e.code, reason: e.reason, wasClean: e.wasClean });
  ws.onerror = () => push({ kind: 'error' });
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
  const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const describe = (ev) => (ev.kind === 'message' ? `a ${typeof ev.data === 'string' ? 'text' : 'binary'} message` : JSON.stringify(ev));

  ws.onopen = () => push({ kind: 'open' });
  let ev = await next();
  if (ev.kind !== 'open') {
    return [{ check: 'open', ok: false, detail: `want the open event, got ${JSON.stringify(ev)}` }];
  }

  const text = 'hello, ringside: h\u00e9llo \u2713 \u{1f980}';
  ws.send(text);
  ev = await next();
  if (ev.kind !== 'message' || ev.data !== text) {
    results.push({ check: 'text', ok: false, detail: `sent ${JSON.stringify(text)}, got ${describe(ev)}` });
    return results;
  }
  results.push({ check: 'text', ok: true, detail: `${new TextEncoder().encode(text).length} bytes echoed` });

  const bin = Uint8Array.from({ length: 1024 }, (_, i) => i & 0xff);
  ws.send(bin);
  ev = await next();
  if (ev.kind !== 'message' || !(ev.data instanceof ArrayBuffer) || !equal(new Uint8Array(ev.data), bin)) {
    results.push({ check: 'binary', ok: false, detail: `sent ${bin.length} bytes, got ${describe(ev)}` });
    return results;
  }
  results.push({ check: 'binary', ok: true, detail: `${bin.length} bytes echoed` });

  const big = new Uint8Array(MIB);
  for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
  ws.send(big);
  ev = await next();
  if (ev.kind !== 'message' || !(ev.data instanceof ArrayBuffer)) {
    results.push({ check: 'big', ok: false, detail: `sent ${big.length} bytes, got ${describe(ev)}` });
    return results;
  }
  if (!equal(new Uint8Array(ev.data), big)) {
    results.push({ check: 'big', ok: false, detail: `sent ${big.length} bytes, got ${ev.data.byteLength}, not intact` });
    return results;
  }
  results.push({ check: 'big', ok: true, detail: `${big.length} bytes echoed intact` });

  const started = performance.now();
  ws.close(4000, 'bye');
  ev = await next();
  // wasClean: the closing handshake completed and the TCP connection closed cleanly.
  if (ev.kind !== 'close' || ev.code !== 4000 || !ev.wasClean) {
    results.push({ check: 'close', ok: false, detail: `want a clean close with code 4000, got ${JSON.stringify(ev)}` });
    return results;
  }
  const ms = Math.round(performance.now() - started);
  results.push({ check: 'close', ok: true, detail: `server echoed ${ev.code} ${JSON.stringify(ev.reason)}, clean, in ${ms} ms` });
  return results;
}

async function main() {
  const url = process.argv[2];
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ringside-chromium-'));
  let context;
  let failed = false;
  try {
    // A persistent context is how playwright takes a fresh --user-data-dir of our own.
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      timeout: 30_000,
      args: [
        ...(process.env.RINGSIDE_SPKI
          ? [`--ignore-certificate-errors-spki-list=${process.env.RINGSIDE_SPKI}`]
          : []),
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    console.log(`browser: ${context.browser()?.version() ?? 'chromium'} (${executablePath})`);
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(60_000);
    page.on('console', (msg) => console.log(`page console: ${msg.text()}`));
    const results = await page.evaluate(checksInPage, { url, waitMs: WAIT_MS });
    for (const r of results) {
      console.log(`${r.ok ? 'ok' : 'FAIL'} ${r.check}: ${r.detail}`);
      if (!r.ok) failed = true;
    }
    if (!failed && results.length !== 4) {
      console.log(`FAIL checks: ${results.length} of 4 ran`);
      failed = true;
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
