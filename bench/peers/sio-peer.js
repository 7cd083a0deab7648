'use strict';
// socket.io 4 with express-session + connect-redis + passport on the engine:
// the recipe of socket.io's own "Usage with Passport" guide (the middlewares
// run once, on the handshake request), which is also what passport.socketio
// does. A request without a logged-in session is refused (HTTP 401).
//
// Channels use sockhive's Socket.IO contract: `subscribe` joins a room,
// `publish` emits `publish` {channel, data} to it. Two of these run (a port
// each) joined by @socket.io/redis-adapter. The admin port answers
// POST /api/sockets/query with filterSocketsByUser across both instances
// (fetchSockets over the adapter, then the filter on each socket's user).

const http = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const session = require('express-session');
const { settings, passport, connectRedis, shutdownOnSignal } = require('./common');

function onlyForHandshake(middleware) {
  return (req, res, next) => {
    const isHandshake = req._query.sid === undefined;
    if (isHandshake) middleware(req, res, next);
    else next();
  };
}

function matches(record, filter) {
  return Object.entries(filter).every(([path, expected]) => {
    const value = path.split('.').reduce((v, key) => (v == null ? undefined : v[key]), record);
    return value === expected;
  });
}

async function main() {
  const { client, store } = await connectRedis();
  const pubClient = client.duplicate();
  const subClient = client.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = http.createServer();
  // socket.io's default transports (polling, then the upgrade) so the polling
  // scenarios can use it; a WebSocket-only client connects straight to
  // `transport=websocket` as before. Polling needs sticky sessions: the
  // generator keeps each polling client on the port of its handshake.
  const io = new Server(httpServer, { transports: ['polling', 'websocket'], serveClient: false });
  io.adapter(createAdapter(pubClient, subClient));

  const sessionMiddleware = session({
    secret: settings.sessionSecret,
    name: settings.cookieName,
    store,
    resave: false,
    saveUninitialized: false,
  });
  io.engine.use(onlyForHandshake(sessionMiddleware));
  io.engine.use(onlyForHandshake(passport.session()));
  io.engine.use(onlyForHandshake((req, res, next) => {
    if (req.user) {
      next();
    } else {
      res.writeHead(401);
      res.end();
    }
  }));

  io.on('connection', (socket) => {
    const user = socket.request.user;
    socket.data.user = user;
    socket.on('subscribe', (channel, ack) => {
      socket.join(String(channel));
      if (typeof ack === 'function') ack({ ok: true });
    });
    socket.on('unsubscribe', (channel, ack) => {
      socket.leave(String(channel));
      if (typeof ack === 'function') ack({ ok: true });
    });
    // The rpc scenario: emitWithAck('echo', data) -> data, answered in-process.
    socket.on('echo', (data, ack) => {
      if (typeof ack === 'function') ack(data);
    });
    socket.on('publish', (message, ack) => {
      if (message && typeof message.channel === 'string') {
        io.to(message.channel).emit('publish', { channel: message.channel, data: message.data });
      }
      if (typeof ack === 'function') ack({ ok: true });
    });
  });

  const admin = http.createServer((req, res) => {
    const reply = (status, body) => {
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && req.url === '/healthz') return reply(200, { status: 'ok' });
    if (req.method !== 'POST' || req.url !== '/api/sockets/query') return reply(404, { error: 'not found' });
    if (req.headers.authorization !== `Bearer ${settings.adminToken}`) return reply(401, { error: 'unauthorized' });
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', async () => {
      try {
        const filter = JSON.parse(body).filter || {};
        const sockets = await io.fetchSockets();
        const found = sockets
          .map((s) => ({ id: s.id, user: s.data.user, rooms: [...s.rooms] }))
          .filter((record) => matches(record, filter));
        reply(200, { sockets: found });
      } catch (error) {
        reply(500, { error: error.message });
      }
    });
  });

  httpServer.listen(settings.port, '127.0.0.1');
  if (settings.adminPort) admin.listen(settings.adminPort, '127.0.0.1');
  shutdownOnSignal(() => Promise.allSettled([
    new Promise((resolve) => io.close(resolve)),
    client.quit(), pubClient.quit(), subClient.quit(),
  ]));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
