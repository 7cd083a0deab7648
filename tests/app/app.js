#!/usr/bin/env node
'use strict';

// The web app sockhive's integration tests log in through: a plain
// express + express-session + connect-redis + passport-local stack, configured
// the way sockhive's users configure theirs (and the way the session vectors in
// /work/shared/vectors were produced). sockhive must read what THIS app writes
// to Redis, so nothing here is simulated: the real libraries do the writing.
//
// Contract (see README.md next to this file):
// - stdout carries exactly one line, {"event":"listening","port":N}, printed once
//   Redis is connected and the user records are written. Everything else → stderr.
// - Exits on SIGTERM/SIGINT and when stdin closes (the test process died).

const path = require('path');
const http = require('http');
const crypto = require('crypto');
const { createRequire } = require('module');

// The pinned packages live in ../js/node_modules (one lockfile for all JS the
// tests run); resolve them from there rather than from this directory.
const jsRequire = createRequire(path.join(__dirname, '..', 'js', 'package.json'));
const express = jsRequire('express');
const session = jsRequire('express-session');
const { RedisStore } = jsRequire('connect-redis');
const { createClient } = jsRequire('redis');
const passportModule = jsRequire('passport');
const LocalStrategy = jsRequire('passport-local').Strategy;

// stdout is a machine-read channel; any stray console.log would corrupt it.
const writeStdout = process.stdout.write.bind(process.stdout);
console.log = console.error;
console.info = console.error;
console.debug = console.error;

function log(...args) {
  console.error('[test-app]', ...args);
}

function fail(message) {
  log('fatal:', message);
  process.exit(2);
}

// ---------------------------------------------------------------------------
// Configuration

const DEFAULT_USERS = [
  { id: 'u-alice', username: 'alice', password: 'alice-password', role: 'admin', displayName: 'Alice Liddell' },
  { id: 'u-bob', username: 'bob', password: 'bob-password', role: 'user', displayName: 'Bob Builder' },
  { id: 7, username: 'carol', password: 'carol-password', role: 'user', displayName: 'Carol Numeric' },
];

function parseUsers(text) {
  if (text == null || text === '') return DEFAULT_USERS;
  let users;
  try {
    users = JSON.parse(text);
  } catch (err) {
    fail(`USERS is not JSON: ${err.message}`);
  }
  if (!Array.isArray(users)) fail('USERS must be a JSON array');
  for (const u of users) {
    if (u === null || typeof u !== 'object') fail('each USERS entry must be an object');
    if (typeof u.id !== 'string' && typeof u.id !== 'number') fail('each user needs a string or number id');
    if (typeof u.username !== 'string' || typeof u.password !== 'string') fail('each user needs username and password strings');
  }
  return users;
}

function parseConfig(env) {
  if (!env.REDIS_URL) fail('REDIS_URL is required');
  const secrets = (env.SESSION_SECRETS == null ? 'keyboard cat' : env.SESSION_SECRETS).split(',').filter((s) => s !== '');
  if (secrets.length === 0) fail('SESSION_SECRETS must name at least one secret');
  const serialize = env.SERIALIZE || 'id';
  if (serialize !== 'id' && serialize !== 'object') fail('SERIALIZE must be "id" or "object"');
  const port = env.PORT == null || env.PORT === '' ? 0 : Number(env.PORT);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail('PORT must be an integer 0..65535');
  let maxAgeMs = null;
  if (env.SESSION_MAX_AGE_MS != null && env.SESSION_MAX_AGE_MS !== '') {
    maxAgeMs = Number(env.SESSION_MAX_AGE_MS);
    if (!Number.isInteger(maxAgeMs) || maxAgeMs <= 0) fail('SESSION_MAX_AGE_MS must be a positive integer');
  }
  const hookDelayMs = env.HOOK_DELAY_MS == null || env.HOOK_DELAY_MS === '' ? 0 : Number(env.HOOK_DELAY_MS);
  if (!Number.isInteger(hookDelayMs) || hookDelayMs < 0) fail('HOOK_DELAY_MS must be a non-negative integer');
  return {
    redisUrl: env.REDIS_URL,
    host: env.HOST || '127.0.0.1',
    port,
    secrets,
    cookieName: env.SESSION_COOKIE || 'connect.sid',
    prefix: env.SESSION_PREFIX == null ? 'sess:' : env.SESSION_PREFIX,
    serialize,
    maxAgeMs,
    users: parseUsers(env.USERS),
    exitOnStdinClose: env.EXIT_ON_STDIN_CLOSE !== '0',
    hookSecrets: (env.HOOK_SECRETS == null ? 'hook-secret' : env.HOOK_SECRETS).split(',').filter((s) => s !== ''),
    hookDelayMs,
    banned: (env.BANNED_USERS == null ? 'carol' : env.BANNED_USERS).split(',').filter((s) => s !== ''),
  };
}

// What the app hands out about a user: everything except the password.
function publicUser(u) {
  const copy = Object.assign({}, u);
  delete copy.password;
  return copy;
}

// ---------------------------------------------------------------------------
// The app

function makePassport(config) {
  const passport = new passportModule.Passport();
  passport.use(
    new LocalStrategy((username, password, done) => {
      const u = config.users.find((x) => x.username === username && x.password === password);
      done(null, u ? publicUser(u) : false);
    })
  );
  if (config.serialize === 'object') {
    // Apps that skip a user lookup keep the whole user object in the session.
    passport.serializeUser((user, done) => done(null, user));
    passport.deserializeUser((obj, done) => done(null, obj));
  } else {
    // The common model: only the id is stored, the user is looked up per request.
    passport.serializeUser((user, done) => done(null, user.id));
    passport.deserializeUser((id, done) => {
      const u = config.users.find((x) => x.id === id);
      done(null, u ? publicUser(u) : false);
    });
  }
  return passport;
}

// ---------------------------------------------------------------------------
// sockhive app hooks: the application answers its sockets.
//
// sockhive POSTs {hook, socket, name, data, args, channel} to /sockhive/<hook>
// (socket = the socket's record: id, logged_in, user, auth, channels, session,
// ...). The answer is {result} or {error: {name, message}}, plus optional
// "effects" sockhive applies before the client hears the reply. This section is
// what sockhive's README shows as the migration example.

// sockhive signs every request body with each secret it holds (rotation):
// X-Sockhive-Signature: sha256=<hex>,sha256=<hex>. Any match with a secret we
// know is enough; anything else is refused before the body is looked at.
function verifySockhiveSignature(secrets) {
  return (req, res, next) => {
    const sent = (req.get('X-Sockhive-Signature') || '')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.startsWith('sha256='))
      .map((s) => Buffer.from(s.slice('sha256='.length), 'hex'));
    const valid =
      req.rawBody !== undefined &&
      secrets.some((secret) => {
        const expected = crypto.createHmac('sha256', secret).update(req.rawBody).digest();
        return sent.some((sig) => sig.length === expected.length && crypto.timingSafeEqual(sig, expected));
      });
    if (!valid) return res.status(401).json({ error: { name: 'BadSignatureError', message: 'bad or missing signature' } });
    next();
  };
}

function sockhiveHooks({ passport, users, secrets, banned, store }) {
  const hooks = express.Router();
  // Keep the raw bytes: the signature is over the body exactly as sent.
  hooks.use(express.json({ limit: '2mb', verify: (req, _res, buf) => { req.rawBody = buf; } }));
  hooks.use(verifySockhiveSignature(secrets));

  // The same passport-local strategy the /login form uses, without a session.
  const checkPassword = (credentials) =>
    new Promise((resolve, reject) => {
      const req = { body: credentials || {}, query: {} };
      passport.authenticate('local', { session: false }, (err, user) => (err ? reject(err) : resolve(user)))(req, {}, reject);
    });

  // rpc: SocketCluster invoke(name, data); Socket.IO emit(name, ...args, ack).
  const procedures = {
    // SocketCluster's auth guide: socket.procedure('login') + socket.setAuthToken().
    async login({ data }) {
      const user = await checkPassword(data);
      if (!user) return { error: { name: 'LoginFailedError', message: 'Invalid username or password' } };
      return {
        result: { username: user.username },
        effects: [{ set_auth_token: { sub: user.id, username: user.username, user } }],
      };
    },
    async logout() {
      return { result: true, effects: [{ deauthenticate: true }] };
    },
    // A socket.io chat: socket.on('chat message', (text, ack) => ...).
    async 'chat message'({ socket, data: text }) {
      if (!socket.logged_in) return { error: { name: 'NotLoggedInError', message: 'log in to chat' } };
      const message = { id: store.messages.length + 1, from: socket.user.id, text };
      store.messages.push(message);
      return {
        result: { ok: true, id: message.id },
        effects: [{ emit: { to: { channel: 'room:lobby' }, event: 'chat message', data: { from: message.from, text } } }],
      };
    },
    ...testProcedures(store),
  };

  hooks.post('/rpc', async (req, res) => {
    const { name } = req.body;
    if (!Object.hasOwn(procedures, name)) {
      return res.json({ error: { name: 'UnknownProcedureError', message: `no procedure ${name}` } });
    }
    res.json(await procedures[name](req.body));
  });

  // event: SocketCluster transmit(name, data); Socket.IO emit(name, ...args)
  // without an ack. One socket's calls arrive one at a time, in order.
  hooks.post('/event', (req, res) => {
    const { socket, name, data } = req.body;
    if (name === 'note') store.notes.push({ socket: socket.id, data });
    res.json({ result: true });
  });

  // Channels whose rule says "hook" (or any channel no rule decides, with
  // --hooks subscribe,publish): rooms are for logged-in users, and a message
  // published to a room carries its sender.
  hooks.post('/subscribe', (req, res) => {
    const { socket, channel } = req.body;
    if (channel.startsWith('room:') && socket.logged_in) return res.json({ result: true });
    res.json({ error: { name: 'ChannelForbiddenError', message: `you may not subscribe to ${channel}` } });
  });
  hooks.post('/publish', (req, res) => {
    const { socket, channel, data } = req.body;
    if (channel.startsWith('room:') && socket.logged_in) return res.json({ result: { data: { from: socket.user.id, text: data } } });
    res.json({ error: { name: 'ChannelForbiddenError', message: `you may not publish to ${channel}` } });
  });

  // connect: before the socket exists; an error refuses its credential.
  hooks.post('/connect', (req, res) => {
    const { user } = req.body.socket;
    const account = user && users.find((u) => String(u.id) === String(user.id));
    if (account && banned.includes(account.username)) {
      return res.json({ error: { name: 'BannedError', message: `${account.username} is banned` } });
    }
    res.json({ result: true });
  });

  // lifecycle: batches of {type: "connected"|"disconnected", socket, at}.
  hooks.post('/lifecycle', (req, res) => {
    store.lifecycle.push(...req.body.events);
    res.json({ result: true });
  });

  hooks.use((req, res) => res.status(404).json({ error: { name: 'UnknownHookError', message: `no hook ${req.path}` } }));
  return hooks;
}

// Procedures only the tests use (each sockhive effect, a slow answer).
function testProcedures(store) {
  return {
    async whoami({ socket }) {
      return { result: socket };
    },
    async echo({ data, args }) {
      return { result: { data, args } };
    },
    async sleep({ data }) {
      const ms = Number((data && data.ms) || 0);
      await new Promise((resolve) => setTimeout(resolve, ms));
      return { result: { slept: ms } };
    },
    async fail({ data }) {
      return { error: { name: (data && data.name) || 'TestError', message: (data && data.message) || 'failed on purpose' } };
    },
    async 'join-room'({ data }) {
      const channel = `room:${data.room}`;
      return { result: { joined: channel }, effects: [{ join: channel }] };
    },
    async 'leave-room'({ data }) {
      const channel = `room:${data.room}`;
      return { result: { left: channel }, effects: [{ leave: channel }] };
    },
    async 'set-session'({ data }) {
      return { result: true, effects: [{ set_session: data }] };
    },
    async 'emit-self'({ data }) {
      return { result: true, effects: [{ emit: { to: 'self', event: data.event || 'notice', data: data.data } }] };
    },
    async 'emit-user'({ data }) {
      return { result: true, effects: [{ emit: { to: { user: data.user }, event: data.event || 'notice', data: data.data } }] };
    },
    async 'emit-filter'({ data }) {
      return { result: true, effects: [{ emit: { to: { filter: data.filter }, event: data.event || 'notice', data: data.data } }] };
    },
    async 'kick-me'({ data }) {
      const { code = 4000, reason = 'kicked by the app' } = data || {};
      return { result: true, effects: [{ disconnect: { code, reason } }] };
    },
    async 'set-token'({ data }) {
      const effect = { set_auth_token: data.claims };
      if (data.expires_in) effect.expires_in = data.expires_in;
      return { result: true, effects: [effect] };
    },
    // Counts the notes this socket sent so far (an rpc after N events sees all N).
    async 'count-notes'({ socket }) {
      return { result: store.notes.filter((n) => n.socket === socket.id).length };
    },
  };
}

// What the tests read back about the hook calls (not part of the example):
// every call's status, signature header, event id and body, plus a delay put
// in front of every hook (HOOK_DELAY_MS, or POST /hook-delay {ms}).
function hookInstrumentation(store) {
  return (req, res, next) => {
    const started = Date.now();
    res.on('finish', () => {
      const hook = req.path.replace(/^\//, '');
      if (res.statusCode === 401) store.refused += 1;
      else store.calls[hook] = (store.calls[hook] || 0) + 1;
      const eventId = req.get('X-Sockhive-Event-Id') || null;
      if (eventId === null) store.missingEventId += 1;
      store.requests.push({
        hook,
        status: res.statusCode,
        signature: req.get('X-Sockhive-Signature') || null,
        contentType: req.get('Content-Type') || null,
        eventId,
        ms: Date.now() - started,
        body: req.body === undefined ? null : req.body,
        raw: req.rawBody === undefined ? null : req.rawBody.toString('utf8'),
      });
      if (store.requests.length > 200) store.requests.splice(0, store.requests.length - 200);
    });
    if (store.delayMs > 0) setTimeout(next, store.delayMs);
    else next();
  };
}

function testRoutes(store) {
  const routes = express.Router();
  routes.get('/hook-stats', (req, res) => {
    res.json({ refused: store.refused, calls: store.calls, missingEventId: store.missingEventId, delayMs: store.delayMs });
  });
  routes.get('/hook-log', (req, res) => res.json(store.notes));
  routes.get('/hook-lifecycle', (req, res) => res.json(store.lifecycle));
  routes.get('/hook-requests', (req, res) => {
    const hook = req.query.hook;
    res.json(hook ? store.requests.filter((r) => r.hook === hook) : store.requests);
  });
  routes.get('/messages', (req, res) => res.json(store.messages));
  routes.post('/hook-delay', express.json(), (req, res) => {
    const ms = Number(req.body && req.body.ms);
    if (!Number.isInteger(ms) || ms < 0) return res.status(400).json({ ok: false, error: 'ms must be a non-negative integer' });
    store.delayMs = ms;
    res.json({ ok: true, delayMs: ms });
  });
  return routes;
}

function buildApp(config, redis) {
  const store = new RedisStore({ client: redis, prefix: config.prefix });
  const passport = makePassport(config);
  const cookie = {};
  if (config.maxAgeMs != null) cookie.maxAge = config.maxAgeMs;

  const app = express();

  // sockhive's hook calls carry no cookie: mount them before the session.
  const hookStore = {
    messages: [], notes: [], lifecycle: [], requests: [],
    calls: {}, refused: 0, missingEventId: 0, delayMs: config.hookDelayMs,
  };
  app.use(
    '/sockhive',
    hookInstrumentation(hookStore),
    sockhiveHooks({ passport, users: config.users, secrets: config.hookSecrets, banned: config.banned, store: hookStore })
  );
  app.use(testRoutes(hookStore));

  app.use(
    session({
      store,
      name: config.cookieName,
      secret: config.secrets.length === 1 ? config.secrets[0] : config.secrets,
      resave: false,
      saveUninitialized: false,
      cookie,
    })
  );
  app.use(express.urlencoded({ extended: false }));
  app.use(express.json());
  app.use(passport.initialize());
  app.use(passport.session());

  // Creates an anonymous (never logged-in) saved session.
  app.get('/visit', (req, res) => {
    req.session.returnTo = '/dashboard';
    res.json({ ok: true, sessionID: req.sessionID });
  });

  app.post('/login', (req, res, next) => {
    passport.authenticate('local', (err, user) => {
      if (err) return next(err);
      if (!user) return res.status(401).json({ ok: false, error: 'invalid credentials' });
      req.logIn(user, (loginErr) => {
        if (loginErr) return next(loginErr);
        res.json({ ok: true, user: req.user, sessionID: req.sessionID });
      });
    })(req, res, next);
  });

  app.get('/me', (req, res) => {
    if (!req.isAuthenticated()) return res.status(401).json({ ok: false, error: 'not logged in' });
    res.json({ ok: true, user: req.user, sessionID: req.sessionID });
  });

  // A change to the session makes express-session write it again (SET with a
  // fresh EX), which is how tests push a session's TTL or fire a `set` event.
  app.post('/touch', (req, res) => {
    req.session.touchedAt = Date.now();
    res.json({ ok: true, sessionID: req.sessionID, touchedAt: req.session.touchedAt });
  });

  // The full logout: passport 0.7's logout (save without passport.user, then
  // regenerate, which DELs the old key) followed by destroying the fresh
  // session, so no new key and no new cookie remain.
  app.post('/logout', (req, res, next) => {
    const oldSessionID = req.sessionID;
    req.logout((err) => {
      if (err) return next(err);
      req.session.destroy((destroyErr) => {
        if (destroyErr) return next(destroyErr);
        res.clearCookie(config.cookieName, { path: '/' });
        res.json({ ok: true, sessionID: oldSessionID });
      });
    });
  });

  // passport 0.7's req.logout() alone: the old key is deleted by regenerate and
  // a new anonymous session (no passport field) is saved under a new id with a
  // new cookie.
  app.post('/logout-regenerate', (req, res, next) => {
    const oldSessionID = req.sessionID;
    req.logout((err) => {
      if (err) return next(err);
      res.json({ ok: true, oldSessionID, sessionID: req.sessionID });
    });
  });

  // Logged out but the same session key survives with "passport":{} — what
  // passport <= 0.5 did on logout and what an app does when it drops the user
  // by hand. passport 0.7's req.logout() cannot do this (it always
  // regenerates), so the user is removed from the session directly.
  app.post('/logout-keep-session', (req, res, next) => {
    if (!req.isAuthenticated()) return res.status(401).json({ ok: false, error: 'not logged in' });
    delete req.session.passport.user;
    req.user = null;
    req.session.save((err) => {
      if (err) return next(err);
      res.json({ ok: true, sessionID: req.sessionID });
    });
  });

  // For sockhive's "fetch the user from an HTTP endpoint of the app" resolver.
  app.get('/users/:id', (req, res) => {
    const u = config.users.find((x) => String(x.id) === req.params.id);
    if (!u) return res.status(404).json({ ok: false, error: 'no such user' });
    res.json(publicUser(u));
  });

  app.use((err, req, res, _next) => {
    log('request error:', err && err.stack ? err.stack : err);
    res.status(500).json({ ok: false, error: String(err && err.message ? err.message : err) });
  });

  return app;
}

// ---------------------------------------------------------------------------
// Process lifecycle

async function main() {
  const config = parseConfig(process.env);
  let everConnected = false;
  const redis = createClient({
    url: config.redisUrl,
    socket: {
      // Unreachable at start-up: fail within ~2 s so the test sees an exit, not
      // a hang. Once up, keep reconnecting (tests may restart Redis).
      reconnectStrategy: (retries, cause) => (everConnected ? Math.min(50 * retries, 500) : retries >= 20 ? cause : 100),
    },
  });
  redis.on('ready', () => {
    everConnected = true;
  });
  redis.on('error', (err) => log('redis error:', err.message));
  await redis.connect();

  // For sockhive's "user lookup by Redis key template" (user:{id}).
  for (const u of config.users) {
    await redis.set(`user:${u.id}`, JSON.stringify(publicUser(u)));
  }

  const app = buildApp(config, redis);
  const server = http.createServer(app);
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, resolve);
  });

  let stopping = false;
  async function shutdown(reason) {
    if (stopping) return;
    stopping = true;
    log(`shutting down (${reason})`);
    // Never hang the test run: if closing stalls, leave anyway.
    setTimeout(() => process.exit(0), 2000).unref();
    server.close();
    server.closeAllConnections();
    try {
      await redis.close();
    } catch (err) {
      log('redis close failed:', err.message);
    }
    process.exit(0);
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  if (config.exitOnStdinClose) {
    process.stdin.on('end', () => shutdown('stdin closed'));
    process.stdin.on('close', () => shutdown('stdin closed'));
    process.stdin.on('error', () => shutdown('stdin error'));
    process.stdin.resume();
  }

  log(`serialize=${config.serialize} cookie=${config.cookieName} prefix=${config.prefix} secrets=${config.secrets.length}`);
  writeStdout(JSON.stringify({ event: 'listening', port: server.address().port }) + '\n');
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
