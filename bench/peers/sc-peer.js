'use strict';
// socketcluster-server 20 with the cookie login passport.socketcluster adds:
// on the WebSocket upgrade (HANDSHAKE_WS) the express-session cookie is
// verified with cookie-parser, the session is read from connect-redis, and
// passport.user is deserialized; a failure blocks the upgrade (HTTP 401). The
// socket then gets a SocketCluster token for that user, as the app would do
// to make the client "authenticated".
//
// The rpc scenario invokes the procedure `echo`, answered in-process with the
// data it was given.
//
// Two of these run (a port each). Pub/sub between them goes through Redis:
// each client publish is relayed to the other instance, which delivers it to
// its own subscribers through its exchange.

const http = require('http');
const socketClusterServer = require('socketcluster-server');
const cookieParser = require('cookie-parser');
const { settings, passport, connectRedis, shutdownOnSignal } = require('./common');

const RELAY = 'bench:sc-relay';

function loginFromRequest(req, store) {
  // What passport.socketcluster 1.0.0's handshake() does, step for step.
  return new Promise((resolve, reject) => {
    cookieParser(settings.sessionSecret)(req, {}, (parseError) => {
      if (parseError) return reject(new Error('Cookie parse error'));
      const sessionId = req.signedCookies && req.signedCookies[settings.cookieName];
      if (!sessionId) return reject(new Error('No session found.'));
      store.get(sessionId, (storeError, session) => {
        if (storeError) return reject(new Error(`Session store error: ${storeError.message}`));
        if (!session) return reject(new Error('No session found.'));
        if (!session.passport) return reject(new Error('Passport was not initialized.'));
        const stored = session.passport.user;
        if (!stored) return reject(new Error('User not authorized through passport.'));
        passport.deserializeUser(stored, (userError, user) => {
          if (userError) return reject(userError);
          if (!user) return reject(new Error('User not found.'));
          user.logged_in = true;
          resolve(user);
        });
      });
    });
  });
}

async function main() {
  const { client, store } = await connectRedis();
  const subscriber = client.duplicate();
  await subscriber.connect();

  const httpServer = http.createServer();
  const agServer = socketClusterServer.attach(httpServer, { authKey: settings.sessionSecret });

  agServer.setMiddleware(agServer.MIDDLEWARE_HANDSHAKE, async (stream) => {
    for await (const action of stream) {
      if (action.type === action.HANDSHAKE_WS) {
        try {
          action.request.user = await loginFromRequest(action.request, store);
          action.allow();
        } catch (error) {
          error.name = 'SessionAuthError';
          action.block(error);
        }
        continue;
      }
      action.allow();
    }
  });

  agServer.setMiddleware(agServer.MIDDLEWARE_INBOUND, async (stream) => {
    for await (const action of stream) {
      if (action.type === action.PUBLISH_IN) {
        client.publish(RELAY, JSON.stringify({ from: settings.instance, channel: action.channel, data: action.data }))
          .catch((error) => console.error('relay publish failed', error.message));
      }
      action.allow();
    }
  });

  await subscriber.subscribe(RELAY, (message) => {
    const relayed = JSON.parse(message);
    if (relayed.from === settings.instance) return;
    agServer.exchange.transmitPublish(relayed.channel, relayed.data);
  });

  (async () => {
    for await (const { socket } of agServer.listener('connection')) {
      const user = socket.request.user;
      if (user) socket.setAuthToken({ sub: String(user.id), user });
      // The rpc scenario's procedure, answered in-process: invoke('echo', data) -> data.
      (async () => {
        for await (const request of socket.procedure('echo')) request.end(request.data);
      })();
    }
  })();
  (async () => {
    for await (const { error } of agServer.listener('error')) console.error('server error', error.message);
  })();

  httpServer.listen(settings.port, '127.0.0.1');
  shutdownOnSignal(() => Promise.allSettled([agServer.close(), client.quit(), subscriber.quit()]));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
