'use strict';
// What both Node peers share: settings from the environment (the harness sets
// them), the Redis client, the connect-redis store and passport's user
// (de)serialisation, set up the way an express-session + passport app does.

const { createClient } = require('redis');
const { RedisStore } = require('connect-redis');
const passport = require('passport');

const settings = {
  port: Number(process.env.PORT || 8100),
  adminPort: Number(process.env.ADMIN_PORT || 0),
  adminToken: process.env.ADMIN_TOKEN || '',
  redisUrl: process.env.REDIS_URL || 'redis://127.0.0.1:6379',
  sessionSecret: process.env.SESSION_SECRET || 'keyboard cat',
  instance: process.env.INSTANCE || '1',
  cookieName: 'connect.sid',
};

// The app stores the user id in the session and has no user table to look up:
// the user is {id}, exactly what sockhive resolves without a lookup.
passport.serializeUser((user, done) => done(null, user.id));
passport.deserializeUser((id, done) => done(null, { id }));

async function connectRedis() {
  const client = createClient({ url: settings.redisUrl });
  client.on('error', (error) => console.error('redis error', error.message));
  await client.connect();
  const store = new RedisStore({ client, prefix: 'sess:' });
  return { client, store };
}

function shutdownOnSignal(close) {
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      Promise.resolve(close()).finally(() => process.exit(0));
      setTimeout(() => process.exit(0), 1000).unref();
    });
  }
}

module.exports = { settings, passport, connectRedis, shutdownOnSignal };
