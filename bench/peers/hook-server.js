'use strict';
// The smallest honest app behind sockhive's hooks (shared/interface.md, "App
// hooks"), for the rpc scenario: node's own `http` server (keep-alive, as by
// default) and `crypto`, nothing else.
//
// Every request is POST {base}/{hook} with a JSON body signed by sockhive:
// `X-Sockhive-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`, one entry
// per secret, comma-separated. The app checks the signature before it reads
// the body (a forged or unsigned request gets 401), then answers:
//   rpc `echo`  -> {"result": data}          (Socket.IO: data is the first argument)
//   rpc other   -> {"error": {"name": "UnknownProcedureError", ...}}
//   any other hook (event, subscribe, ...) -> {"result": true}
// GET /healthz answers 200 so the harness knows it is up.
//
// Settings from the environment: PORT (0 = any free port), HOOK_SECRET, HOOK_BASE
// (the path sockhive's --hook-url ends with, default /sockhive). Prints
// `hook-server listening on 127.0.0.1:<port>` once it listens.

const http = require('http');
const crypto = require('crypto');

const port = Number(process.env.PORT || 0);
const secret = process.env.HOOK_SECRET || 'bench-hook-secret';
const base = (process.env.HOOK_BASE || '/sockhive').replace(/\/$/, '');

function signatureValid(header, body) {
  if (typeof header !== 'string') return false;
  const expected = Buffer.from(
    `sha256=${crypto.createHmac('sha256', secret).update(body).digest('hex')}`,
  );
  return header.split(',').some((candidate) => {
    const given = Buffer.from(candidate.trim());
    return given.length === expected.length && crypto.timingSafeEqual(given, expected);
  });
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

function answer(hook, call) {
  if (hook !== 'rpc') return { result: true };
  if (call.name === 'echo') {
    const data = call.data !== undefined ? call.data : (Array.isArray(call.args) ? call.args[0] : null);
    return { result: data === undefined ? null : data };
  }
  return { error: { name: 'UnknownProcedureError', message: `No procedure ${call.name}` } };
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return reply(res, 200, { status: 'ok' });
  if (req.method !== 'POST' || !req.url.startsWith(`${base}/`)) return reply(res, 404, { error: 'not found' });
  const hook = req.url.slice(base.length + 1);
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    if (!signatureValid(req.headers['x-sockhive-signature'], body)) {
      return reply(res, 401, { error: { name: 'BadSignature', message: 'signature check failed' } });
    }
    let call;
    try {
      call = JSON.parse(body);
    } catch (error) {
      return reply(res, 400, { error: { name: 'BadRequest', message: error.message } });
    }
    return reply(res, 200, answer(hook, call));
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`hook-server listening on 127.0.0.1:${server.address().port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
