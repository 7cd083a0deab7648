#!/usr/bin/env node
'use strict';

// sockhive chat demo: an ordinary express app (express-session + connect-redis
// + passport-local) whose browser page talks to sockhive with BOTH real
// clients. sockhive logs the sockets in from this app's own session cookie and
// asks this app, over HTTP, what a chat message does (the "app hooks").
//
//   browser ──(one origin, nginx)──┬── /                 → this app
//                                  └── /socketcluster/,
//                                      /socket.io/       → sockhive nodes
//   sockhive ── POST /sockhive/rpc ──→ this app   (signed with HOOK_SECRET)
//   sockhive ── GET sess:<id>, user:<id> ──→ the same Redis as this app
//
// Environment: REDIS_URL, SESSION_SECRET, HOOK_SECRET (both required, comma
// separated for rotation), PORT (3000), HOST (127.0.0.1).

const path = require('path');
const crypto = require('crypto');
const express = require('express');
const session = require('express-session');
const { RedisStore } = require('connect-redis');
const { createClient } = require('redis');
const passport = require('passport');
const LocalStrategy = require('passport-local').Strategy;

const config = {
  redisUrl: process.env.REDIS_URL || 'redis://127.0.0.1:6379',
  host: process.env.HOST || '127.0.0.1',
  port: Number(process.env.PORT || 3000),
  sessionSecrets: list(process.env.SESSION_SECRET, 'SESSION_SECRET'),
  hookSecrets: list(process.env.HOOK_SECRET, 'HOOK_SECRET'),
};

function list(value, name) {
  const items = (value || '').split(',').filter(Boolean);
  if (items.length === 0) {
    console.error(`${name} is required (sockhive must be given the same value)`);
    process.exit(2);
  }
  return items;
}

// ---------------------------------------------------------------------------
// Users. A real app has a database; the demo has two people.

const USERS = [
  { id: 'u1', username: 'alice', password: 'wonderland', displayName: 'Alice' },
  { id: 'u2', username: 'bob', password: 'builder', displayName: 'Bob' },
];

// What the app shows of a user (and what sockhive sees as the socket's user).
const publicUser = ({ password, ...user }) => user;

passport.use(
  new LocalStrategy((username, password, done) => {
    const user = USERS.find((u) => u.username === username && u.password === password);
    done(null, user ? publicUser(user) : false);
  })
);
// The session stores the id only. sockhive resolves it with
// `--user-lookup redis:user:{id}` (see sockhive.toml): the app writes each
// user's public record to Redis at start.
passport.serializeUser((user, done) => done(null, user.id));
passport.deserializeUser((id, done) => {
  const user = USERS.find((u) => u.id === id);
  done(null, user ? publicUser(user) : false);
});

// ---------------------------------------------------------------------------
// sockhive app hooks: sockhive POSTs {hook, socket, name, data, ...} to
// /sockhive/<hook>; `socket` is the socket's record (id, logged_in, user,
// channels, ...). The answer is {result} or {error: {name, message}}, plus
// "effects" sockhive applies before the client gets the reply.

// sockhive signs each body with every secret it has:
// X-Sockhive-Signature: sha256=<hex>[,sha256=<hex>]. One match is enough.
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

const ROOM = /^[a-z0-9-]{1,32}$/;

// rpc: SocketCluster `socket.invoke(name, data)` and Socket.IO
// `socket.emitWithAck(name, data)` both arrive here.
const procedures = {
  // {room, text} from a socket that joined room:<room>. Everyone in the room
  // gets the event `chat message` {room, from, text}, on either protocol.
  async 'chat message'({ socket, data }) {
    if (!socket.logged_in) return { error: { name: 'NotLoggedInError', message: 'log in to chat' } };
    const { room, text } = data || {};
    if (typeof room !== 'string' || !ROOM.test(room)) {
      return { error: { name: 'BadRoomError', message: 'a room is 1-32 of a-z, 0-9, -' } };
    }
    const channel = `room:${room}`;
    if (!(socket.channels || []).includes(channel)) {
      return { error: { name: 'NotInRoomError', message: `join ${channel} first` } };
    }
    if (typeof text !== 'string' || text.trim() === '' || text.length > 500) {
      return { error: { name: 'BadMessageError', message: 'a message is 1-500 characters' } };
    }
    const message = { room, from: socket.user.username, text: text.trim() };
    return {
      result: { ok: true },
      effects: [{ emit: { to: { channel }, event: 'chat message', data: message } }],
    };
  },
};

const hooks = express.Router();
// Keep the raw bytes: the signature covers the body exactly as sent.
hooks.use(express.json({ verify: (req, _res, buf) => { req.rawBody = buf; } }));
hooks.use(verifySockhiveSignature(config.hookSecrets));
hooks.post('/rpc', async (req, res) => {
  const procedure = Object.hasOwn(procedures, req.body.name) ? procedures[req.body.name] : null;
  if (!procedure) return res.json({ error: { name: 'UnknownProcedureError', message: `no procedure ${req.body.name}` } });
  res.json(await procedure(req.body));
});
hooks.use((req, res) => res.status(404).json({ error: { name: 'UnknownHookError', message: `no hook ${req.path}` } }));

// ---------------------------------------------------------------------------
// The web app.

function buildApp(redis) {
  const app = express();
  app.set('trust proxy', 'loopback, uniquelocal'); // nginx in front

  // Hook calls come from sockhive and carry no cookie: mount them BEFORE the
  // session middleware, so they never create or touch a session.
  app.use('/sockhive', hooks);
  app.get('/healthz', (_req, res) => res.json({ ok: true }));

  app.use(
    session({
      store: new RedisStore({ client: redis }), // prefix "sess:", as sockhive expects
      name: 'connect.sid',
      secret: config.sessionSecrets,
      resave: false,
      saveUninitialized: false,
      cookie: { httpOnly: true, sameSite: 'lax' },
    })
  );
  app.use(express.urlencoded({ extended: false }));
  app.use(passport.initialize());
  app.use(passport.session());

  const publicDir = path.join(__dirname, 'public');
  const page = (file) => (_req, res) => res.sendFile(path.join(publicDir, file));

  app.get('/', (req, res, next) => (req.isAuthenticated() ? next() : res.redirect('/login')), page('index.html'));
  app.get('/login', page('login.html'));
  app.post('/login', passport.authenticate('local', { successRedirect: '/', failureRedirect: '/login?failed=1' }));
  app.get('/me', (req, res) => (req.isAuthenticated() ? res.json(req.user) : res.status(401).json({ error: 'not logged in' })));

  // passport 0.7's logout, then the session is destroyed: its Redis key goes,
  // and sockhive takes the login (and the channels it granted) away from
  // every socket of this session, on every node, within a second.
  app.post('/logout', (req, res, next) => {
    req.logout((err) => {
      if (err) return next(err);
      req.session.destroy((destroyErr) => {
        if (destroyErr) return next(destroyErr);
        res.clearCookie('connect.sid', { path: '/' });
        if (req.accepts(['html', 'json']) === 'json') return res.json({ ok: true });
        res.redirect('/login');
      });
    });
  });

  // The browser bundles of the real clients, straight from node_modules.
  app.get('/vendor/socket.io.js', (_req, res) => res.sendFile(require.resolve('socket.io-client/dist/socket.io.js')));
  app.get('/vendor/socketcluster-client.js', (_req, res) =>
    res.sendFile(require.resolve('socketcluster-client/socketcluster-client.min.js'))
  );
  app.use(express.static(publicDir, { index: false }));
  return app;
}

async function main() {
  const redis = createClient({ url: config.redisUrl });
  redis.on('error', (err) => console.error('redis:', err.message));
  await redis.connect();
  // For sockhive's `--user-lookup redis:user:{id}`.
  for (const user of USERS) await redis.set(`user:${user.id}`, JSON.stringify(publicUser(user)));

  const server = buildApp(redis).listen(config.port, config.host, () => {
    console.log(`sockhive demo app on http://${config.host}:${server.address().port}`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    redis.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
