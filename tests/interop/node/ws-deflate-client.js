// Interop client: Node `ws` with permessage-deflate (perMessageDeflate), against echo servers.
//
// Usage: node ws-deflate-client.js ws://127.0.0.1:PORT/ [ws://... more servers]
//
// For each server: checks the extension was agreed (ws.extensions and its parameters), echoes
// market-data ticks, a 64 KiB compressible text, a compressible binary and 1 MiB of noise,
// checks every echo, checks the bytes that arrived on the socket are far fewer than the
// compressible payloads (they came compressed), closes 1000. Prints "ok <check>: ..." per check
// and exits 0 when all passed; on the first failure prints "FAIL <check>: ..." and exits 1.
'use strict';

const crypto = require('node:crypto');
const WebSocket = require('ws');

const WAIT_MS = 10_000;
const MIB = 1 << 20;

function fail(check, why) {
  console.log(`FAIL ${check}: ${why}`);
  process.exit(1);
}

function ok(check, detail) {
  console.log(`ok ${check}: ${detail}`);
}

function once(ws, event, check) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(check, `no '${event}' within ${WAIT_MS} ms`), WAIT_MS);
    ws.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

async function echo(ws, check, message, binary) {
  ws.send(message, { binary });
  const [data, isBinary] = await once(ws, 'message', check);
  const same = binary ? isBinary && Buffer.compare(data, message) === 0 : !isBinary && data.toString('utf8') === message;
  if (!same) fail(check, `sent ${message.length} bytes, the echo differs (${data.length} back)`);
}

async function run(url) {
  const ws = new WebSocket(url, { handshakeTimeout: WAIT_MS, perMessageDeflate: true, maxPayload: 4 * MIB });
  ws.on('error', (e) => fail('connection', `error: ${e.message}`));
  ws.on('unexpected-response', (_req, res) => fail('open', `HTTP ${res.statusCode}`));
  await once(ws, 'open', 'open');
  const pmd = ws._extensions['permessage-deflate'];
  if (ws.extensions !== 'permessage-deflate' || !pmd) {
    fail('negotiated', `extensions ${JSON.stringify(ws.extensions)}`);
  }
  ok('negotiated', `${ws.extensions} ${JSON.stringify(pmd.params)}`);

  const socket = ws._socket;
  const before = socket.bytesRead;
  let plain = 0;
  for (let i = 0; i < 50; i++) {
    const tick = JSON.stringify({ type: 'tick', symbol: `SYM${i % 7}`, seq: i, bid: 100 + i / 100, ask: 100.02 + i / 100, size: 100 + i, currency: 'USD', venue: 'XNAS', ts: '2026-11-21T10:25:13.123456Z', flags: ['regular'] });
    plain += Buffer.byteLength(tick);
    await echo(ws, 'ticks', tick, false);
  }
  ok('ticks', '50 JSON ticks echoed');
  const text = 'the quick brown fox jumps over the lazy dog; h\u00e9llo \u2713 '.repeat(2000).slice(0, 64 * 1024);
  plain += Buffer.byteLength(text);
  await echo(ws, 'big-text', text, false);
  ok('big-text', `${Buffer.byteLength(text)} bytes of text echoed`);
  const bin = Buffer.alloc(256 * 1024).map((_, i) => i & 0xff);
  plain += bin.length;
  await echo(ws, 'binary', bin, true);
  ok('binary', `${bin.length} bytes of binary echoed`);
  const wire = socket.bytesRead - before;
  if (wire * 4 > plain) fail('compressed', `${wire} bytes arrived for ${plain} bytes of compressible payload`);
  ok('compressed', `${wire} bytes on the wire for ${plain} bytes of payload`);
  const noise = crypto.randomBytes(MIB);
  await echo(ws, 'noise', noise, true);
  ok('noise', `${noise.length} random bytes echoed intact`);

  ws.close(1000, 'done');
  const [code] = await once(ws, 'close', 'close');
  if (code !== 1000) fail('close', `server's close frame had code ${code}`);
  ok('close', 'closed 1000');
}

async function main() {
  for (const url of process.argv.slice(2)) {
    console.log(`server ${url}`);
    await run(url);
  }
}

main().catch((e) => fail('client', e.stack || String(e)));
