#!/usr/bin/env node
// sockhive JS driver: lets the Rust integration tests drive the REAL npm clients
// (socketcluster-client@20, socket.io-client@4 over websocket) against the sockhive
// binary, so interoperability is proven against the code real apps use.
//
// ---------------------------------------------------------------------------------
// PROTOCOL (the contract the Rust side codes against)
// ---------------------------------------------------------------------------------
// Transport: newline-delimited JSON. One JSON object per line on stdin (commands)
// and on stdout (replies + events). Nothing else is ever written to stdout
// (console.* is redirected to stderr). Diagnostics go to stderr.
//
// Command:  {"id": <number>, "op": "<op>", ...fields}
// Reply:    {"id": <id>, "ok": true,  "result": <value|null>}
//           {"id": <id>, "ok": false, "error": {"name": .., "message": .., ...extra}}
//   Exactly one reply per command, even on failure. A line that is not valid JSON,
//   or has no numeric id, gets a reply with "id": null. Commands run concurrently;
//   each starts (and issues its client call) synchronously in arrival order.
//   Before a reply is written the driver yields one macrotask, so event lines
//   caused by the op (e.g. disconnect/close after sc.disconnect) precede the reply.
//   Every wait has a timeout (default 10000 ms, per command "timeoutMs"); a driver
//   timeout fails with error name "DriverTimeout".
//   Error "extra" = every own enumerable field of the error object the client
//   surfaced (e.g. code, reason, type, data, isTimeout), except "stack".
//
// Event:    {"event": "<kind>", "client": "<name>", ...fields}
//   Pushed at any time, in the order the driver observed them.
//   {"event":"driver_error","kind":"unhandledRejection"|"uncaughtException","error":{..}}
//   reports a bug in the driver or a client library (the driver keeps running).
//
// Values that JSON cannot carry: undefined -> null; Error -> {name,message,...};
// Buffer/ArrayBuffer/typed array -> {"$base64": "..."}; functions are dropped.
//
// ---- SocketCluster (socketcluster-client) -- a client is named by "client" ----
// sc.connect {client, url:"ws://host:port/path?query", authToken?, headers?, origin?, listen?,
//             autoReconnect?=false, autoReconnectOptions?, ackTimeout?, connectTimeout?,
//             wsOptions?, options?, rawPublish?=false, elide?, timeoutMs?}
//   url path is used verbatim as the client's `path` (include /socketcluster/);
//   the query string becomes `query`. authToken is preloaded into an in-memory
//   authEngine, so the client sends it in #handshake. headers/origin go into
//   wsOptions (the HTTP upgrade request). `options` is merged last into create().
//   listen?: [event names] registers sc.listen receivers BEFORE connecting, so
//   events the server transmits during/just after the handshake are not missed.
//   rawPublish?: true pushes every #publish frame the server sends as
//     {"event":"rawPublish","client":..,"channel":..,"data":..}, also for channels the
//     client no longer holds (the client itself drops those: a kicked-out or
//     unsubscribed channel's frames never reach "message"), so a test can prove the
//     server stopped sending them.
//   elide?: N replaces every string longer than N characters inside the data of this
//     client's "message"/"rawPublish"/"receive" events with {"$elided": <length>}
//     (keeps big-payload tests from flooding stdout; numbers and short fields stay).
//   Reusing a client name closes and forgets the previous socket (its pending
//   waits fail with error name "ClientClosed"; its later events are dropped).
//   -> result {id, isAuthenticated, authError, pingTimeout, authToken, socketId}
//   -> error {name:"ConnectAbort", message, code, reason} if the socket aborts or
//      closes before `connect`.
//   Events: connect {id,isAuthenticated,authError,pingTimeout,authToken},
//     disconnect {code,reason}, connectAbort {code,reason}, close {code,reason},
//     error {name,message,...extra}, authenticate {signedAuthToken,authToken},
//     deauthenticate {oldSignedAuthToken,oldAuthToken},
//     authStateChange {oldAuthState,newAuthState,signedAuthToken?,authToken?},
//     removeAuthToken {oldAuthToken}, subscribe {channel,subscriptionOptions},
//     subscribeFail {channel,error:{..},subscriptionOptions}, kickOut {channel,message},
//     unsubscribe {channel}.
// sc.state {client} -> {state, authState, authToken, signedAuthToken, id,
//             pendingReconnect, pendingReconnectTimeout, subscriptions, pendingSubscriptions}
// sc.invoke {client, event, data, timeoutMs?} -> the server's response data, or the
//             client's error (TimeoutError, BadConnectionError, or the server's error
//             with its name/message/extra fields). timeoutMs becomes the client ackTimeout.
// sc.transmit {client, event, data} -> null (replies once handed to the client)
// sc.listen {client, event} -> null; then each server-transmitted event of that name is
//             pushed as {"event":"receive","client":..,"name":<event>,"data":..}.
//             Idempotent per (client, event).
// sc.subscribe {client, channel, waitForAuth?, data?, priority?, wait?=true, timeoutMs?}
//             -> {channel, state} once subscribed; error = the subscribeFail error.
//             With wait:false replies at once with the current state. Messages are
//             pushed as {"event":"message","client":..,"channel":..,"data":..} in
//             arrival order (one consumer per channel, however often subscribed).
// sc.unsubscribe {client, channel} -> null
// sc.publish {client, channel, data, timeoutMs?} -> server ack data (invokePublish);
//             error if the server refused.
// sc.transmitPublish {client, channel, data} -> null
// sc.authenticate {client, token} -> {isAuthenticated, authError} or error
// sc.deauthenticate {client} -> null
// sc.disconnect {client, code?=1000, reason?} -> {state}
// sc.invokeMany {client, event, count, bytes, timeoutMs?} -> {bufferedAmount}
//             fires `count` invokes of `event` with data {"n": i, "pad": "a" x bytes}
//             without waiting for their replies (replies and errors are ignored);
//             replies once all are handed to the client.
// sc.login {client, event?="login", data, timeoutMs?} -> {result, authToken,
//             signedAuthToken}: SocketCluster's documented login pattern,
//             Promise.all([socket.invoke(event, data), socket.listener('authenticate').once()]);
//             error = the invoke's rejection (the server's error name) or a timeout.
// sc.reconnect {client, timeoutMs?} -> the `connect` status (as sc.connect) after
//             socket.reconnect(): the same client (and its stored token) connects again.
// sc.invokeBurst {client, event, count, data, timeoutMs?} -> {ok, errors: {<name>: n},
//             elapsedMs, lastErrorMs, lastOkMs}: fires `count` invokes of `event`
//             with the same data at once and waits until every one settled
//             (timeoutMs = each invoke's ackTimeout, default 30000); *Ms are
//             measured from the first invoke.
// sc.transmitMany {client, event, count, data?} -> null: transmits `event` `count`
//             times at once, with data {"n": 1..count, ...data}.
// sc.pauseReading {client} -> {bytesRead} stops reading the connection: pauses the
//             ws WebSocket (socket.transport.socket.pause(), which pauses its
//             net.Socket) so the kernel buffers fill and the server's writes back up,
//             and disables the client's own ping timeout so the client never closes
//             the connection itself (it keeps writing nothing; the server must act).
// sc.resumeReading {client} -> {bytesRead}
// sc.readStats {client} -> {bytesRead, bytesWritten, paused, readyState} of the current
//             connection's net.Socket (bytesRead stops growing while paused).
//   Quirk of the real client: sc.invoke / sc.transmit / sc.publish on a CLOSED socket
//   make it connect again.
//
// ---- Socket.IO (socket.io-client) ----
// io.connect {client, url:"ws://host:port[/namespace]", path?="/socket.io/",
//             transports?=["websocket"] (["polling", "websocket"]: the client's
//             default, with the upgrade reported as an `upgrade` event),
//             auth?, query?, extraHeaders?,
//             reconnection?=false, listen?, timeoutMs?, options?}
//   listen?: [event | {event, ack}] registers io.listen listeners BEFORE connecting
//   (needed for events the server emits in its connection handler).
//   -> {socketId} on `connect`; error {name:"ConnectError", message, data, ...} on
//      the first `connect_error`. URL path = namespace (socket.io-client semantics).
//   Events: connect {socketId}, connect_error {message,data,...}, disconnect
//     {reason, description?}.
// io.listen {client, event, ack?:[args]} -> null; each server event of that name is
//             pushed as {"event":"receive","client":..,"name":..,"args":[..],
//             "hasAck":bool}. If the server asked for an ack and `ack` was given,
//             the driver acks with those args. event "*" listens to every event.
// io.emit {client, event, args?:[..], ack?:false, timeoutMs?} -> ack ? [ack args] : null
//             (ack timeout -> error from the client, name "Error", message
//             "operation has timed out").
// io.emitWithAck {client, event, args?:[..], timeoutMs?} -> the ack's first argument,
//             through the client's own socket.timeout(ms).emitWithAck(event, ...args).
// io.disconnect {client} -> {connected}
// io.state {client} -> {connected, disconnected, active, id, recovered}
//   io.connect also takes elide?: N (see sc.connect) for this client's receive events,
//   and listen items {event, ack?}.
// io.pauseReading {client} -> {bytesRead}: like sc.pauseReading, on the Engine.IO
//             websocket (socket.io.engine.transport.ws.pause()); also stops the
//             client's own ping-timeout timer so only the server can end the connection.
// io.resumeReading {client} -> {bytesRead}
// io.readStats {client} -> {bytesRead, bytesWritten, paused, readyState}
//
// ---- Raw WebSocket (npm ws) -- for frames the protocol clients never send ----
// ws.connect {client, url, headers?, origin?, options?, timeoutMs?} -> {protocol, extensions}
//             on open (perMessageDeflate is off unless options turn it on, so a big
//             frame goes out as one big frame); error {name:"WsConnectError", message,
//             statusCode?} when the upgrade fails.
//   Events: ws.message {data (text; binary as {"$base64"}), isBinary},
//     ws.close {code, reason} (code = the code of the close frame the server sent;
//     1006 = the connection ended without one), ws.error {name, message, code?}.
// ws.send {client, text? | bytes?} -> null once handed to ws (a text frame: `text`, or
//             `bytes` times "a"); write errors come as ws.error events.
// ws.disconnect {client, code?=1000, reason?} -> {readyState}
// ws.state {client} -> {readyState, bufferedAmount, bytesRead, bytesWritten}
//
// ---- Misc ----
// jwt.sign {payload, key, options?} -> token string from npm jsonwebtoken
// jwt.verify {token, key, options?} -> decoded payload, or jsonwebtoken's error
// ping {} -> "pong"
// shutdown {} -> closes every client, lets in-flight commands reply (up to 2 s), then
//             replies null and exits 0. EOF on stdin does the same (without a reply).
//             Commands arriving after that get error "ShuttingDown".
//
// ---- Behaviour of the real clients worth knowing (seen against the Node servers) ----
// - SC event order: server setAuthToken -> authStateChange, authenticate (then
//   subscribe for waitForAuth channels); deauthenticate (client or server side) ->
//   authStateChange, deauthenticate, removeAuthToken; close by either side ->
//   unsubscribe (per channel), disconnect|connectAbort, close, then error
//   (SocketProtocolError, code = close code) unless the code is 1000/1001.
// - SC handshake refused at the HTTP upgrade, port refused or wrong path all look
//   the same to the client: connectAbort 1006 "Socket hung up" (the server's error
//   text is lost). connectTimeout expiry -> connectAbort 4007.
// - SC #authenticate with a bad token fails the op with AuthTokenInvalidError
//   {isBadToken:true} (not {isAuthenticated:false}); a bad token in #handshake
//   still connects, with authError set.
// - The SC client does not drop waitForAuth subscriptions on deauthentication, and
//   it resubscribes pending channels after any reconnect.
// - jsonwebtoken adds "iat" (now) unless the payload has one or noTimestamp is set.
// - Live objects inside errors (e.g. ws ErrorEvent in socket.io's connect_error
//   description) come out as {"$type": class, type?, message?, code?, reason?}.
// ---------------------------------------------------------------------------------
'use strict';

const util = require('util');
const readline = require('readline');

// Libraries or stray debugging must never corrupt the protocol stream.
for (const method of ['log', 'info', 'debug', 'warn', 'error', 'trace']) {
  console[method] = (...args) => process.stderr.write(util.format(...args) + '\n');
}

const DEFAULT_WAIT_MS = 10000;

// Loaded lazily so a driver can still answer jwt/ping commands (and report a clear
// error) if one client package failed to install.
let scClientLib = null;
let ioClientLib = null;
let jwtLib = null;
function loadSc() {
  if (!scClientLib) scClientLib = require('socketcluster-client');
  return scClientLib;
}
function loadIo() {
  if (!ioClientLib) ioClientLib = require('socket.io-client');
  return ioClientLib;
}
function loadJwt() {
  if (!jwtLib) jwtLib = require('jsonwebtoken');
  return jwtLib;
}

// ---------------------------------------------------------------- output

// Depth-limited because client errors can carry live objects (ws events, sockets)
// whose graphs are huge; server payloads are plain JSON and far shallower.
const MAX_DEPTH = 12;

function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === null || proto === Object.prototype;
}

// Live objects (ws ErrorEvent, sockets) keep their meaning in prototype getters.
function describeInstance(value, className) {
  const out = { $type: className || 'Object' };
  for (const key of Object.keys(value)) {
    const item = value[key];
    if (item === null || ['string', 'number', 'boolean'].includes(typeof item)) out[key] = item;
  }
  for (const key of ['type', 'message', 'code', 'reason']) {
    let item;
    try { item = value[key]; } catch (_) { continue; }
    if (typeof item === 'string' || typeof item === 'number') out[key] = item;
  }
  return out;
}

function toJsonable(value, seen = new WeakSet(), depth = 0) {
  if (value === undefined) return null;
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'function' || typeof value === 'symbol') return null;
    if (typeof value === 'bigint') return value.toString();
    if (typeof value === 'number' && !Number.isFinite(value)) return null;
    return value;
  }
  if (value instanceof Error) return depth > MAX_DEPTH ? { name: value.name, message: value.message } : errorToJson(value, seen, depth);
  if (Buffer.isBuffer(value)) return { $base64: value.toString('base64') };
  if (value instanceof ArrayBuffer) return { $base64: Buffer.from(value).toString('base64') };
  if (ArrayBuffer.isView(value)) {
    return { $base64: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  }
  if (seen.has(value)) return '[Circular]';
  const className = value.constructor && value.constructor.name;
  if (depth > MAX_DEPTH || (!Array.isArray(value) && !isPlainObject(value) && depth >= 1 && typeof value.toJSON !== 'function')) {
    return describeInstance(value, className);
  }
  seen.add(value);
  let out;
  if (Array.isArray(value)) {
    out = value.map((item) => toJsonable(item, seen, depth + 1));
  } else if (typeof value.toJSON === 'function') {
    out = toJsonable(value.toJSON(), seen, depth + 1);
  } else {
    out = {};
    for (const key of Object.keys(value)) {
      const item = value[key];
      if (typeof item === 'function' || item === undefined) continue;
      out[key] = toJsonable(item, seen, depth + 1);
    }
  }
  seen.delete(value);
  return out;
}

function errorToJson(err, seen = new WeakSet(), depth = 0) {
  if (err === null || err === undefined) return { name: 'Error', message: String(err) };
  if (typeof err !== 'object') return { name: 'Error', message: String(err) };
  const out = {
    name: typeof err.name === 'string' ? err.name : 'Error',
    message: typeof err.message === 'string' ? err.message : String(err.message ?? ''),
  };
  if (seen.has(err)) return out;
  seen.add(err);
  for (const key of Object.keys(err)) {
    if (key === 'stack' || key === 'name' || key === 'message') continue;
    const item = err[key];
    if (typeof item === 'function' || item === undefined) continue;
    out[key] = toJsonable(item, seen, depth + 1);
  }
  seen.delete(err);
  return out;
}

function writeLine(obj) {
  let line;
  try {
    line = JSON.stringify(obj);
  } catch (err) {
    line = JSON.stringify({ event: 'driver_error', kind: 'serialize', error: errorToJson(err) });
  }
  process.stdout.write(line + '\n');
}

function pushEvent(kind, client, fields) {
  const line = { event: kind, client };
  // A payload field must never be able to relabel the event line.
  for (const [key, value] of Object.entries(toJsonable(fields || {}))) {
    if (key !== 'event' && key !== 'client') line[key] = value;
  }
  writeLine(line);
}

// Big payloads stay out of the event stream: long strings become {"$elided": length}.
function elide(value, max) {
  if (typeof max !== 'number' || max < 0) return value;
  if (typeof value === 'string') return value.length > max ? { $elided: value.length } : value;
  if (Array.isArray(value)) return value.map((item) => elide(item, max));
  if (value && typeof value === 'object' && isPlainObject(value)) {
    const out = {};
    for (const [key, item] of Object.entries(value)) out[key] = elide(item, max);
    return out;
  }
  return value;
}

class DriverError extends Error {
  constructor(name, message, extra) {
    super(message);
    this.name = name;
    if (extra) Object.assign(this, extra);
  }
}

// Forgetting a client kills its listener streams, which would leave waits on them
// pending forever; every wait also races this promise so it fails instead.
function makeClientEntry(socket) {
  const entry = { socket, receivers: new Set(), channels: new Set(), listened: new Set() };
  entry.closed = new Promise((_, reject) => { entry.rejectClosed = reject; });
  entry.closed.catch(() => {});
  return entry;
}

function nextMacrotask() {
  return new Promise((resolve) => setImmediate(resolve));
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new DriverError('DriverTimeout', `${what} did not finish within ${ms} ms`, { timeoutMs: ms })),
      ms
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function waitMsOf(cmd, fallback = DEFAULT_WAIT_MS) {
  const ms = cmd.timeoutMs;
  return typeof ms === 'number' && ms > 0 ? ms : fallback;
}

function requireString(cmd, field) {
  const value = cmd[field];
  if (typeof value !== 'string' || value.length === 0) {
    throw new DriverError('BadCommand', `field "${field}" must be a non-empty string`);
  }
  return value;
}

// ---------------------------------------------------------------- socketcluster

const scClients = new Map(); // name -> client entry (see makeClientEntry)

// Returning the preloaded token from loadToken is how the real client puts a
// token into #handshake; keeping it in memory keeps clients independent.
function makeMemoryAuthEngine(initialToken) {
  let stored = typeof initialToken === 'string' ? initialToken : null;
  return {
    saveToken(_name, token) {
      stored = token;
      return Promise.resolve(token);
    },
    removeToken() {
      const old = stored;
      stored = null;
      return Promise.resolve(old);
    },
    loadToken() {
      return Promise.resolve(stored);
    },
  };
}

const SC_EVENT_PAYLOAD = {
  connect: (s) => ({
    id: s.id, isAuthenticated: s.isAuthenticated, authError: s.authError ?? null,
    pingTimeout: s.pingTimeout, authToken: s.authToken ?? null,
  }),
  disconnect: (e) => ({ code: e.code, reason: e.reason ?? null }),
  connectAbort: (e) => ({ code: e.code, reason: e.reason ?? null }),
  close: (e) => ({ code: e.code, reason: e.reason ?? null }),
  error: (e) => errorToJson(e && e.error),
  authenticate: (e) => ({ signedAuthToken: e.signedAuthToken, authToken: e.authToken }),
  deauthenticate: (e) => ({ oldSignedAuthToken: e.oldSignedAuthToken, oldAuthToken: e.oldAuthToken }),
  authStateChange: (e) => e,
  removeAuthToken: (e) => ({ oldAuthToken: e.oldAuthToken }),
  subscribe: (e) => ({ channel: e.channel, subscriptionOptions: e.subscriptionOptions }),
  subscribeFail: (e) => ({ channel: e.channel, error: errorToJson(e.error), subscriptionOptions: e.subscriptionOptions }),
  kickOut: (e) => ({ channel: e.channel, message: e.message }),
  unsubscribe: (e) => ({ channel: e.channel }),
};

function forwardScEvents(name, socket) {
  for (const kind of Object.keys(SC_EVENT_PAYLOAD)) {
    (async () => {
      for await (const payload of socket.listener(kind)) {
        if (scClients.get(name)?.socket !== socket) continue;
        pushEvent(kind, name, SC_EVENT_PAYLOAD[kind](payload || {}));
      }
    })().catch(reportDriverError('scListener'));
  }
}

function getSc(cmd) {
  const name = requireString(cmd, 'client');
  const entry = scClients.get(name);
  if (!entry) throw new DriverError('UnknownClient', `no socketcluster client named "${name}"`);
  return entry;
}

function forgetSc(name) {
  const entry = scClients.get(name);
  if (!entry) return;
  scClients.delete(name);
  entry.rejectClosed(new DriverError('ClientClosed', `client "${name}" was closed by the driver`));
  try {
    entry.socket.disconnect();
  } catch (_) { /* already closed */ }
  entry.socket.killAllListeners();
  entry.socket.killAllReceivers();
  entry.socket.killAllChannels();
}

function scConnect(cmd) {
  const name = requireString(cmd, 'client');
  const url = new URL(requireString(cmd, 'url'));
  const secure = url.protocol === 'wss:' || url.protocol === 'https:';
  const port = url.port ? Number(url.port) : secure ? 443 : 80;
  const wsOptions = { ...(cmd.wsOptions || {}) };
  if (cmd.headers) wsOptions.headers = { ...(wsOptions.headers || {}), ...cmd.headers };
  if (cmd.origin) wsOptions.origin = cmd.origin;

  const options = {
    hostname: url.hostname.replace(/^\[|\]$/g, ''),
    port,
    secure,
    path: url.pathname || '/socketcluster/',
    autoConnect: false,
    autoReconnect: cmd.autoReconnect === true,
    authEngine: makeMemoryAuthEngine(cmd.authToken),
    wsOptions,
  };
  const query = url.search.replace(/^\?/, '');
  if (query) options.query = query;
  if (cmd.autoReconnectOptions) options.autoReconnectOptions = cmd.autoReconnectOptions;
  if (typeof cmd.ackTimeout === 'number') options.ackTimeout = cmd.ackTimeout;
  if (typeof cmd.connectTimeout === 'number') options.connectTimeout = cmd.connectTimeout;
  Object.assign(options, cmd.options || {});

  const listen = Array.isArray(cmd.listen) ? cmd.listen : [];
  forgetSc(name);
  const socket = loadSc().create(options);
  const entry = makeClientEntry(socket);
  entry.elide = typeof cmd.elide === 'number' ? cmd.elide : null;
  scClients.set(name, entry);
  forwardScEvents(name, socket);
  if (cmd.rawPublish === true) {
    // The client drops #publish frames of channels it does not hold; this sees them all.
    const inbound = socket._onInboundTransmit;
    socket._onInboundTransmit = function (event, data) {
      if (event === '#publish' && scClients.get(name)?.socket === socket) {
        const frame = data || {};
        pushEvent('rawPublish', name, { channel: frame.channel ?? null, data: elide(frame.data, entry.elide) });
      }
      return inbound.call(this, event, data);
    };
  }
  // Events the server transmits right after the handshake are only caught by
  // receivers that exist before connecting.
  for (const event of listen) ensureScReceiver(entry, name, event);

  // Consumers are created before connect() so neither outcome can be missed.
  const connected = socket.listener('connect').once();
  const aborted = socket.listener('connectAbort').once()
    .then((e) => { throw new DriverError('ConnectAbort', `connect aborted: ${e.code} ${e.reason ?? ''}`.trim(), { code: e.code, reason: e.reason ?? null }); });
  const closed = socket.listener('close').once()
    .then((e) => { throw new DriverError('ConnectAbort', `closed before connect: ${e.code} ${e.reason ?? ''}`.trim(), { code: e.code, reason: e.reason ?? null }); });
  aborted.catch(() => {});
  closed.catch(() => {});
  socket.connect();

  const fallback = Math.max(DEFAULT_WAIT_MS, (options.connectTimeout || 0) + 2000);
  return withTimeout(Promise.race([connected, aborted, closed, entry.closed]), waitMsOf(cmd, fallback), 'sc.connect')
    .then((status) => ({ ...SC_EVENT_PAYLOAD.connect(status || {}), socketId: socket.id }));
}

function scState(cmd) {
  const { socket } = getSc(cmd);
  const all = socket.subscriptions(true);
  const subscribed = socket.subscriptions(false);
  return {
    state: socket.state,
    authState: socket.authState,
    authToken: socket.authToken,
    signedAuthToken: socket.signedAuthToken,
    id: socket.id,
    pendingReconnect: socket.pendingReconnect,
    pendingReconnectTimeout: socket.pendingReconnectTimeout,
    subscriptions: subscribed,
    pendingSubscriptions: all.filter((c) => !subscribed.includes(c)),
  };
}

function scInvoke(cmd) {
  const { socket } = getSc(cmd);
  const event = requireString(cmd, 'event');
  const opts = {};
  if (typeof cmd.timeoutMs === 'number') opts.ackTimeout = cmd.timeoutMs;
  const ackMs = opts.ackTimeout ?? socket.ackTimeout;
  return withTimeout(socket.invoke(event, cmd.data, opts), ackMs + 2000, 'sc.invoke');
}

async function scTransmit(cmd) {
  const { socket } = getSc(cmd);
  await socket.transmit(requireString(cmd, 'event'), cmd.data);
  return null;
}

function ensureScReceiver(entry, clientName, event) {
  if (typeof event !== 'string' || event.length === 0) throw new DriverError('BadCommand', 'event names must be non-empty strings');
  if (entry.receivers.has(event)) return;
  entry.receivers.add(event);
  (async () => {
    for await (const data of entry.socket.receiver(event)) {
      pushEvent('receive', clientName, { name: event, data: elide(data, entry.elide) });
    }
  })().catch(reportDriverError('scReceiver'));
}

function scListen(cmd) {
  const entry = getSc(cmd);
  ensureScReceiver(entry, cmd.client, requireString(cmd, 'event'));
  return null;
}

function ensureChannelConsumer(entry, clientName, channelName, channel) {
  if (entry.channels.has(channelName)) return;
  entry.channels.add(channelName);
  (async () => {
    for await (const data of channel) {
      pushEvent('message', clientName, { channel: channelName, data: elide(data, entry.elide) });
    }
  })().catch(reportDriverError('scChannel'));
}

function scSubscribe(cmd) {
  const entry = getSc(cmd);
  const { socket } = entry;
  const channelName = requireString(cmd, 'channel');
  const subOptions = { waitForAuth: cmd.waitForAuth === true };
  if (cmd.priority !== undefined) subOptions.priority = cmd.priority;
  if (cmd.data !== undefined) subOptions.data = cmd.data;

  const alreadySubscribed = socket.isSubscribed(channelName, false);
  const channel = socket.channel(channelName);
  // Listener consumers exist before the #subscribe request can be answered.
  const subscribed = channel.listener('subscribe').once();
  const failed = channel.listener('subscribeFail').once().then((e) => { throw e.error; });
  failed.catch(() => {});
  socket.subscribe(channelName, subOptions);
  ensureChannelConsumer(entry, cmd.client, channelName, channel);

  const state = () => ({ channel: channelName, state: socket.getChannelState(channelName) });
  if (alreadySubscribed || cmd.wait === false) return state();
  return withTimeout(Promise.race([subscribed, failed, entry.closed]), waitMsOf(cmd), 'sc.subscribe').then(state);
}

function scUnsubscribe(cmd) {
  const { socket } = getSc(cmd);
  socket.unsubscribe(requireString(cmd, 'channel'));
  return null;
}

function scPublish(cmd) {
  const { socket } = getSc(cmd);
  const channel = requireString(cmd, 'channel');
  return withTimeout(socket.invokePublish(channel, cmd.data), waitMsOf(cmd, socket.ackTimeout + 2000), 'sc.publish');
}

async function scTransmitPublish(cmd) {
  const { socket } = getSc(cmd);
  await socket.transmitPublish(requireString(cmd, 'channel'), cmd.data);
  return null;
}

function scAuthenticate(cmd) {
  const { socket } = getSc(cmd);
  const token = requireString(cmd, 'token');
  return withTimeout(socket.authenticate(token), waitMsOf(cmd, socket.ackTimeout + 2000), 'sc.authenticate')
    .then((status) => ({ isAuthenticated: !!status.isAuthenticated, authError: status.authError ?? null }));
}

async function scDeauthenticate(cmd) {
  const { socket } = getSc(cmd);
  await withTimeout(socket.deauthenticate(), waitMsOf(cmd), 'sc.deauthenticate');
  return null;
}

function scLogin(cmd) {
  const entry = getSc(cmd);
  const { socket } = entry;
  const event = typeof cmd.event === 'string' && cmd.event !== '' ? cmd.event : 'login';
  const opts = {};
  if (typeof cmd.timeoutMs === 'number') opts.ackTimeout = cmd.timeoutMs;
  const ackMs = opts.ackTimeout ?? socket.ackTimeout;
  // As SocketCluster's authentication guide writes it.
  const login = Promise.all([socket.invoke(event, cmd.data, opts), socket.listener('authenticate').once()])
    .then(([result, status]) => ({ result, authToken: status.authToken ?? null, signedAuthToken: status.signedAuthToken ?? null }));
  return withTimeout(Promise.race([login, entry.closed]), ackMs + 2000, 'sc.login');
}

function scReconnect(cmd) {
  const entry = getSc(cmd);
  const { socket } = entry;
  const connected = socket.listener('connect').once();
  socket.reconnect();
  return withTimeout(Promise.race([connected, entry.closed]), waitMsOf(cmd), 'sc.reconnect')
    .then((status) => ({ ...SC_EVENT_PAYLOAD.connect(status || {}), socketId: socket.id }));
}

function scInvokeBurst(cmd) {
  const { socket } = getSc(cmd);
  const event = requireString(cmd, 'event');
  const count = Number.isInteger(cmd.count) && cmd.count > 0 ? cmd.count : 1;
  const ackTimeout = typeof cmd.timeoutMs === 'number' ? cmd.timeoutMs : 30000;
  const tally = { ok: 0, errors: {}, elapsedMs: 0, lastErrorMs: null, lastOkMs: null };
  const started = Date.now();
  const calls = [];
  for (let n = 0; n < count; n++) {
    calls.push(
      socket.invoke(event, cmd.data, { ackTimeout }).then(
        () => {
          tally.ok += 1;
          tally.lastOkMs = Date.now() - started;
        },
        (err) => {
          const name = (err && err.name) || 'Error';
          tally.errors[name] = (tally.errors[name] || 0) + 1;
          tally.lastErrorMs = Date.now() - started;
        }
      )
    );
  }
  return withTimeout(Promise.all(calls), ackTimeout + 2000, 'sc.invokeBurst').then(() => {
    tally.elapsedMs = Date.now() - started;
    return tally;
  });
}

async function scTransmitMany(cmd) {
  const { socket } = getSc(cmd);
  const event = requireString(cmd, 'event');
  const count = Number.isInteger(cmd.count) && cmd.count > 0 ? cmd.count : 1;
  const extra = cmd.data && typeof cmd.data === 'object' ? cmd.data : {};
  const sent = [];
  for (let n = 1; n <= count; n++) sent.push(socket.transmit(event, { ...extra, n }));
  await Promise.all(sent);
  return null;
}

function scDisconnect(cmd) {
  const { socket } = getSc(cmd);
  socket.disconnect(typeof cmd.code === 'number' ? cmd.code : 1000, cmd.reason);
  return { state: socket.state };
}

function scInvokeMany(cmd) {
  const { socket } = getSc(cmd);
  const event = requireString(cmd, 'event');
  const count = Number.isInteger(cmd.count) && cmd.count > 0 ? cmd.count : 1;
  const pad = 'a'.repeat(Number.isInteger(cmd.bytes) && cmd.bytes > 0 ? cmd.bytes : 0);
  const opts = {};
  if (typeof cmd.timeoutMs === 'number') opts.ackTimeout = cmd.timeoutMs;
  for (let n = 0; n < count; n++) {
    socket.invoke(event, { n, pad }, opts).catch(() => {});
  }
  const ws = socket.transport && socket.transport.socket;
  return { bufferedAmount: ws ? ws.bufferedAmount : null };
}

// The net.Socket under a ws WebSocket, and what it has moved so far.
function readStatsOf(ws) {
  if (!ws) throw new DriverError('NotConnected', 'the client has no WebSocket');
  const raw = ws._socket;
  return {
    bytesRead: raw ? raw.bytesRead : null,
    bytesWritten: raw ? raw.bytesWritten : null,
    paused: ws.isPaused,
    readyState: ws.readyState,
  };
}

function pauseWs(ws) {
  if (!ws || ws.readyState !== 1 || !ws._socket) {
    throw new DriverError('NotConnected', 'the client has no open WebSocket to pause');
  }
  // ws's own pause: stops its net.Socket, and ws does not resume it on its own.
  ws.pause();
  return readStatsOf(ws);
}

function scWs(cmd) {
  const { socket } = getSc(cmd);
  return socket.transport && socket.transport.socket;
}

function scPauseReading(cmd) {
  const { socket } = getSc(cmd);
  const transport = socket.transport;
  if (!transport) throw new DriverError('NotConnected', 'the client has no transport');
  // Unread pings would make the client close the connection itself (4000).
  transport.pingTimeoutDisabled = true;
  clearTimeout(transport._pingTimeoutTicker);
  return pauseWs(transport.socket);
}

function scResumeReading(cmd) {
  const ws = scWs(cmd);
  if (ws) ws.resume();
  return readStatsOf(ws);
}

function scReadStats(cmd) {
  return readStatsOf(scWs(cmd));
}

// ---------------------------------------------------------------- socket.io

const ioClients = new Map(); // name -> client entry (see makeClientEntry)

function getIo(cmd) {
  const name = requireString(cmd, 'client');
  const entry = ioClients.get(name);
  if (!entry) throw new DriverError('UnknownClient', `no socket.io client named "${name}"`);
  return entry;
}

function forgetIo(name) {
  const entry = ioClients.get(name);
  if (!entry) return;
  ioClients.delete(name);
  entry.rejectClosed(new DriverError('ClientClosed', `client "${name}" was closed by the driver`));
  entry.socket.removeAllListeners();
  entry.socket.offAny();
  entry.socket.disconnect();
}

function ioConnectErrorFields(err) {
  const json = errorToJson(err);
  return { ...json, data: json.data ?? null };
}

function ioConnect(cmd) {
  const name = requireString(cmd, 'client');
  const url = requireString(cmd, 'url');
  const options = {
    path: cmd.path || '/socket.io/',
    transports: cmd.transports || ['websocket'],
    reconnection: cmd.reconnection === true,
    forceNew: true,
    autoConnect: false,
  };
  if (cmd.auth !== undefined) options.auth = cmd.auth;
  if (cmd.query !== undefined) options.query = cmd.query;
  if (cmd.extraHeaders !== undefined) options.extraHeaders = cmd.extraHeaders;
  Object.assign(options, cmd.options || {});

  const listen = Array.isArray(cmd.listen) ? cmd.listen : [];
  forgetIo(name);
  const socket = loadIo().io(url, options);
  const entry = makeClientEntry(socket);
  entry.elide = typeof cmd.elide === 'number' ? cmd.elide : null;
  ioClients.set(name, entry);
  // Servers often emit inside their connection handler; only listeners that
  // exist before connecting see that.
  for (const item of listen) {
    if (typeof item === 'string') ensureIoListener(entry, name, item, null);
    else if (item && typeof item === 'object') ensureIoListener(entry, name, item.event, item.ack);
  }
  const current = () => ioClients.get(name)?.socket === socket;

  const outcome = new Promise((resolve, reject) => {
    socket.on('connect', () => {
      if (!current()) return;
      const transport = socket.io.engine?.transport?.name ?? null;
      pushEvent('connect', name, { socketId: socket.id, transport });
      resolve({ socketId: socket.id, transport });
    });
    // The engine exists once connect() ran; the upgrade is reported as an event.
    socket.io.on('open', () => {
      socket.io.engine.on('upgrade', (transport) => {
        if (current()) pushEvent('upgrade', name, { transport: transport.name });
      });
    });
    socket.on('connect_error', (err) => {
      if (!current()) return;
      const fields = ioConnectErrorFields(err);
      pushEvent('connect_error', name, fields);
      const { name: _n, message, ...extra } = fields;
      reject(new DriverError('ConnectError', message, extra));
    });
    socket.on('disconnect', (reason, details) => {
      if (!current()) return;
      const fields = { reason };
      if (details !== undefined) fields.description = toJsonable(details);
      pushEvent('disconnect', name, fields);
    });
  });
  socket.connect();
  return withTimeout(Promise.race([outcome, entry.closed]), waitMsOf(cmd), 'io.connect');
}

function ioListen(cmd) {
  const entry = getIo(cmd);
  ensureIoListener(entry, cmd.client, requireString(cmd, 'event'), cmd.ack);
  return null;
}

function ensureIoListener(entry, name, event, ack) {
  if (typeof event !== 'string' || event.length === 0) throw new DriverError('BadCommand', 'event names must be non-empty strings');
  if (entry.listened.has(event)) return;
  entry.listened.add(event);
  const ackArgs = Array.isArray(ack) ? ack : null;
  const deliver = (eventName, args) => {
    let ack = null;
    if (args.length > 0 && typeof args[args.length - 1] === 'function') ack = args.pop();
    const transport = entry.socket.io?.engine?.transport?.name;
    const fields = { name: eventName, args: elide(args, entry.elide), hasAck: ack !== null };
    // Socket.IO only: which transport carried it (polling or websocket).
    if (transport) fields.transport = transport;
    pushEvent('receive', name, fields);
    if (ack && ackArgs) ack(...ackArgs);
  };
  if (event === '*') {
    entry.socket.onAny((eventName, ...args) => deliver(eventName, args));
  } else {
    entry.socket.on(event, (...args) => deliver(event, args));
  }
}

function ioEmit(cmd) {
  const { socket } = getIo(cmd);
  const event = requireString(cmd, 'event');
  const args = Array.isArray(cmd.args) ? cmd.args : cmd.args === undefined ? [] : [cmd.args];
  if (!cmd.ack) {
    socket.emit(event, ...args);
    return null;
  }
  const ms = waitMsOf(cmd);
  // The callback form keeps every ack argument (emitWithAck keeps only the first).
  const acked = new Promise((resolve, reject) => {
    socket.timeout(ms).emit(event, ...args, (err, ...ackArgs) => (err ? reject(err) : resolve(ackArgs)));
  });
  return withTimeout(acked, ms + 2000, 'io.emit');
}

function ioEmitWithAck(cmd) {
  const { socket } = getIo(cmd);
  const event = requireString(cmd, 'event');
  const args = Array.isArray(cmd.args) ? cmd.args : cmd.args === undefined ? [] : [cmd.args];
  const ms = waitMsOf(cmd);
  return withTimeout(socket.timeout(ms).emitWithAck(event, ...args), ms + 2000, 'io.emitWithAck');
}

function ioDisconnect(cmd) {
  const { socket } = getIo(cmd);
  socket.disconnect();
  return { connected: socket.connected };
}

function ioState(cmd) {
  const { socket } = getIo(cmd);
  return {
    connected: socket.connected,
    disconnected: socket.disconnected,
    active: socket.active,
    id: socket.id ?? null,
    recovered: socket.recovered ?? false,
    transport: socket.io.engine?.transport?.name ?? null,
  };
}

// io.publishBurst {client, channel, count, intervalMs?=5}: publishes
// {n: 1..count} to the channel, one every intervalMs, each with its ack, from
// the moment it is called (so a burst started right at connect crosses the
// polling-to-websocket upgrade); returns {acked, transports} (the transport
// each publish went out on).
async function ioPublishBurst(cmd) {
  const { socket } = getIo(cmd);
  const channel = requireString(cmd, 'channel');
  const count = Number(cmd.count) || 0;
  const interval = typeof cmd.intervalMs === 'number' ? cmd.intervalMs : 5;
  const transports = [];
  const acks = [];
  for (let n = 1; n <= count; n += 1) {
    transports.push(socket.io.engine?.transport?.name ?? null);
    acks.push(socket.timeout(10000).emitWithAck('publish', { channel, data: { n } }));
    if (interval > 0) await new Promise((resolve) => setTimeout(resolve, interval));
  }
  const results = await withTimeout(Promise.all(acks), waitMsOf(cmd, 20000), 'io.publishBurst');
  return { acked: results.filter((r) => r && r.ok === true).length, transports };
}

function ioWs(cmd) {
  const { socket } = getIo(cmd);
  const engine = socket.io && socket.io.engine;
  const transport = engine && engine.transport;
  if (!transport || transport.name !== 'websocket') {
    throw new DriverError('NotConnected', 'the client has no websocket transport');
  }
  return { engine, ws: transport.ws };
}

function ioPauseReading(cmd) {
  const { engine, ws } = ioWs(cmd);
  // Unread pings would make the client close the connection itself ("ping timeout").
  engine.clearTimeoutFn(engine._pingTimeoutTimer);
  engine._resetPingTimeout = () => {};
  engine._pingTimeoutTime = Number.MAX_SAFE_INTEGER;
  return pauseWs(ws);
}

function ioResumeReading(cmd) {
  const { ws } = ioWs(cmd);
  ws.resume();
  return readStatsOf(ws);
}

function ioReadStats(cmd) {
  return readStatsOf(ioWs(cmd).ws);
}

// ---------------------------------------------------------------- raw ws

const wsClients = new Map(); // name -> {ws}
let wsLib = null;
function loadWs() {
  if (!wsLib) wsLib = require('ws');
  return wsLib;
}

function getWs(cmd) {
  const name = requireString(cmd, 'client');
  const entry = wsClients.get(name);
  if (!entry) throw new DriverError('UnknownClient', `no ws client named "${name}"`);
  return entry;
}

function forgetWs(name) {
  const entry = wsClients.get(name);
  if (!entry) return;
  wsClients.delete(name);
  try { entry.ws.terminate(); } catch (_) { /* already closed */ }
}

function wsConnect(cmd) {
  const name = requireString(cmd, 'client');
  const url = requireString(cmd, 'url');
  const options = { perMessageDeflate: false, ...(cmd.options || {}) };
  if (cmd.headers) options.headers = { ...cmd.headers };
  if (cmd.origin) options.origin = cmd.origin;
  forgetWs(name);
  const WebSocket = loadWs().WebSocket;
  const ws = new WebSocket(url, options);
  const entry = { ws };
  wsClients.set(name, entry);
  const current = () => wsClients.get(name) === entry;
  ws.on('message', (data, isBinary) => {
    if (!current()) return;
    pushEvent('ws.message', name, { data: isBinary ? data : data.toString('utf8'), isBinary });
  });
  ws.on('close', (code, reason) => {
    if (!current()) return;
    pushEvent('ws.close', name, { code, reason: reason.toString('utf8') });
  });
  ws.on('error', (err) => {
    if (!current()) return;
    pushEvent('ws.error', name, errorToJson(err));
  });
  const opened = new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ protocol: ws.protocol, extensions: ws.extensions }));
    ws.once('unexpected-response', (_req, res) => {
      reject(new DriverError('WsConnectError', `upgrade refused: ${res.statusCode}`, { statusCode: res.statusCode }));
      res.resume();
      ws.terminate();
    });
    ws.once('error', (err) => reject(new DriverError('WsConnectError', err.message, { code: err.code ?? null })));
    ws.once('close', (code) => reject(new DriverError('WsConnectError', `closed before open: ${code}`, { code })));
  });
  opened.catch(() => {});
  return withTimeout(opened, waitMsOf(cmd), 'ws.connect');
}

function wsSend(cmd) {
  const { ws } = getWs(cmd);
  let text;
  if (typeof cmd.text === 'string') text = cmd.text;
  else if (Number.isInteger(cmd.bytes) && cmd.bytes >= 0) text = 'a'.repeat(cmd.bytes);
  else throw new DriverError('BadCommand', 'ws.send needs "text" or "bytes"');
  ws.send(text, { binary: false }, () => {});
  return null;
}

function wsDisconnect(cmd) {
  const { ws } = getWs(cmd);
  ws.close(typeof cmd.code === 'number' ? cmd.code : 1000, cmd.reason);
  return { readyState: ws.readyState };
}

function wsState(cmd) {
  const { ws } = getWs(cmd);
  return {
    readyState: ws.readyState,
    bufferedAmount: ws.bufferedAmount,
    bytesRead: ws._socket ? ws._socket.bytesRead : null,
    bytesWritten: ws._socket ? ws._socket.bytesWritten : null,
  };
}

// ---------------------------------------------------------------- misc

function jwtSign(cmd) {
  if (cmd.key === undefined) throw new DriverError('BadCommand', 'field "key" is required');
  return loadJwt().sign(cmd.payload, cmd.key, cmd.options || {});
}

function jwtVerify(cmd) {
  return loadJwt().verify(requireString(cmd, 'token'), cmd.key, cmd.options || {});
}

let shuttingDown = false;
let inflight = 0;
function closeAllClients() {
  for (const name of [...scClients.keys()]) {
    try { forgetSc(name); } catch (err) { process.stderr.write(`close ${name}: ${err}\n`); }
  }
  for (const name of [...ioClients.keys()]) {
    try { forgetIo(name); } catch (err) { process.stderr.write(`close ${name}: ${err}\n`); }
  }
  for (const name of [...wsClients.keys()]) {
    try { forgetWs(name); } catch (err) { process.stderr.write(`close ${name}: ${err}\n`); }
  }
}

// Closing the clients first makes in-flight waits fail fast, so their replies
// still come out before the process exits (the caller may be waiting on them).
async function exitCleanly(finalReply) {
  if (shuttingDown) return;
  shuttingDown = true;
  closeAllClients();
  const deadline = Date.now() + 2000;
  while (inflight > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  if (finalReply) writeLine(finalReply);
  setTimeout(() => process.exit(0), 1000).unref();
  process.stdout.write('', () => process.exit(0));
}

const OPS = {
  'sc.connect': scConnect,
  'sc.state': scState,
  'sc.invoke': scInvoke,
  'sc.transmit': scTransmit,
  'sc.listen': scListen,
  'sc.subscribe': scSubscribe,
  'sc.unsubscribe': scUnsubscribe,
  'sc.publish': scPublish,
  'sc.transmitPublish': scTransmitPublish,
  'sc.authenticate': scAuthenticate,
  'sc.deauthenticate': scDeauthenticate,
  'sc.disconnect': scDisconnect,
  'sc.login': scLogin,
  'sc.reconnect': scReconnect,
  'sc.invokeBurst': scInvokeBurst,
  'sc.transmitMany': scTransmitMany,
  'sc.invokeMany': scInvokeMany,
  'sc.pauseReading': scPauseReading,
  'sc.resumeReading': scResumeReading,
  'sc.readStats': scReadStats,
  'io.connect': ioConnect,
  'io.listen': ioListen,
  'io.emit': ioEmit,
  'io.emitWithAck': ioEmitWithAck,
  'io.disconnect': ioDisconnect,
  'io.state': ioState,
  'io.publishBurst': ioPublishBurst,
  'io.pauseReading': ioPauseReading,
  'io.resumeReading': ioResumeReading,
  'io.readStats': ioReadStats,
  'ws.connect': wsConnect,
  'ws.send': wsSend,
  'ws.disconnect': wsDisconnect,
  'ws.state': wsState,
  'jwt.sign': jwtSign,
  'jwt.verify': jwtVerify,
  ping: () => 'pong',
};

// ---------------------------------------------------------------- dispatch

function reportDriverError(kind) {
  return (err) => writeLine({ event: 'driver_error', kind, error: errorToJson(err) });
}

async function handleLine(line) {
  if (line.trim() === '') return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    writeLine({ id: null, ok: false, error: { name: 'BadCommand', message: `invalid JSON: ${err.message}` } });
    return;
  }
  const id = cmd && typeof cmd.id === 'number' ? cmd.id : null;
  let reply;
  try {
    if (!cmd || typeof cmd !== 'object' || Array.isArray(cmd)) throw new DriverError('BadCommand', 'command must be a JSON object');
    if (id === null) throw new DriverError('BadCommand', 'field "id" must be a number');
    if (shuttingDown) throw new DriverError('ShuttingDown', 'driver is shutting down');
    if (cmd.op === 'shutdown') {
      exitCleanly({ id, ok: true, result: null });
      return;
    }
    const handler = Object.prototype.hasOwnProperty.call(OPS, cmd.op) ? OPS[cmd.op] : null;
    if (!handler) throw new DriverError('UnknownOp', `unknown op ${JSON.stringify(cmd.op)}`);
    inflight += 1;
    try {
      // Handler runs synchronously up to its first await, so client calls keep command order.
      const result = await handler(cmd);
      reply = { id, ok: true, result: toJsonable(result) };
    } catch (err) {
      reply = { id, ok: false, error: errorToJson(err) };
    }
    await nextMacrotask();
    writeLine(reply);
    inflight -= 1;
    return;
  } catch (err) {
    reply = { id, ok: false, error: errorToJson(err) };
  }
  await nextMacrotask();
  writeLine(reply);
}

process.on('unhandledRejection', (reason) => {
  writeLine({ event: 'driver_error', kind: 'unhandledRejection', error: errorToJson(reason) });
});
process.on('uncaughtException', (err) => {
  writeLine({ event: 'driver_error', kind: 'uncaughtException', error: errorToJson(err) });
});
process.stdout.on('error', () => process.exit(0)); // reader gone: nothing left to serve

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
input.on('line', (line) => {
  handleLine(line).catch(reportDriverError('dispatch'));
});
input.on('close', () => exitCleanly(null));
