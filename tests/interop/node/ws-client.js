// Interop client: Node `ws` against an echo server.
//
// Usage: node ws-client.js ws://127.0.0.1:PORT/
//        RINGSIDE_CA=ca.pem node ws-client.js wss://127.0.0.1:PORT/   (trusting that CA only)
//
// Prints one line per check ("ok <check>: ...") and exits 0 when every check passed; on the
// first failure prints "FAIL <check>: ..." and exits 1. Every wait is bounded.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
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

// Resolves with the first `event` emitted by `ws`, or fails `check` after WAIT_MS.
function once(ws, event, check) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(check, `no '${event}' within ${WAIT_MS} ms`), WAIT_MS);
    ws.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

async function main() {
  const url = process.argv[2];
  const options = { handshakeTimeout: WAIT_MS };
  if (url.startsWith('wss:')) options.ca = fs.readFileSync(process.env.RINGSIDE_CA);
  const ws = new WebSocket(url, options);
  ws.on('error', (e) => fail('connection', `error: ${e.message}`));
  ws.on('unexpected-response', (_req, res) => fail('open', `HTTP ${res.statusCode}`));
  await once(ws, 'open', 'open');
  if (url.startsWith('wss:')) ok('tls', ws._socket.getProtocol());

  const text = 'hello, ringside: h\u00e9llo \u2713 \u{1f980}';
  ws.send(text);
  let [data, isBinary] = await once(ws, 'message', 'text');
  if (isBinary || data.toString('utf8') !== text) {
    fail('text', `sent ${JSON.stringify(text)}, got binary=${isBinary} ${JSON.stringify(data.toString())}`);
  }
  ok('text', `${Buffer.byteLength(text)} bytes echoed`);

  const bin = Buffer.alloc(1024, 0).map((_, i) => i & 0xff);
  ws.send(bin);
  [data, isBinary] = await once(ws, 'message', 'binary');
  if (!isBinary || !bin.equals(data)) {
    fail('binary', `sent ${bin.length} bytes, got binary=${isBinary} of ${data.length}`);
  }
  ok('binary', `${bin.length} bytes echoed`);

  const big = crypto.randomBytes(MIB);
  ws.send(big);
  [data, isBinary] = await once(ws, 'message', 'big');
  if (!isBinary || !big.equals(data)) {
    fail('big', `sent ${big.length} bytes, got binary=${isBinary} of ${data.length} (intact: ${big.equals(data)})`);
  }
  ok('big', `${big.length} bytes echoed intact`);

  const payload = Buffer.from('ping-payload');
  ws.ping(payload);
  const [pong] = await once(ws, 'pong', 'ping');
  if (!payload.equals(pong)) {
    fail('ping', `pong payload ${JSON.stringify(pong.toString())}, want ${JSON.stringify(payload.toString())}`);
  }
  ok('ping', "pong received with the ping's payload");

  const started = Date.now();
  ws.close(4000, 'bye');
  // 'close' fires once the closing handshake is done and the TCP connection has closed; the
  // code is the one in the server's close frame (1005 if it had none, 1006 if there was none).
  const [code, reason] = await once(ws, 'close', 'close');
  if (code !== 4000) {
    fail('close', `server's close frame had code ${code} (reason ${JSON.stringify(reason.toString())})`);
  }
  ok('close', `server echoed ${code} ${JSON.stringify(reason.toString())} in ${Date.now() - started} ms`);
}

main().catch((e) => fail('client', e.stack || String(e)));
