// The chat page: the same chat twice, once over socketcluster-client and once
// over socket.io-client, both talking to sockhive on this page's own origin.
// Neither client is given a credential: the browser sends the app's session
// cookie with the WebSocket upgrade, and sockhive logs the socket in from it.
import { create } from '/vendor/socketcluster-client.js';

const $ = (selector, root = document) => root.querySelector(selector);
const TIMEOUT_MS = 10000;

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject({ name: 'TimeoutError', message: `${what}: no answer` }), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// Each client behind the same small interface:
//   connect(on) → {subscribe(channel), unsubscribe(channel), send(room, text)}
// and it calls on.status(state, detail), on.login(user), on.logout(),
// on.kickout(channel, message), on.message({room, from, text}).

function socketCluster(on) {
  // sockhive pushes a token minted from the session (#setAuthToken). Keep it
  // in memory only: the cookie is the login, and a token left in
  // localStorage by an earlier login must not be sent on the next visit.
  const memory = {
    token: null,
    saveToken(_name, token) { this.token = token; return Promise.resolve(token); },
    removeToken() { const token = this.token; this.token = null; return Promise.resolve(token); },
    loadToken() { return Promise.resolve(this.token); },
  };
  const secure = location.protocol === 'https:';
  const socket = create({
    hostname: location.hostname,
    port: Number(location.port) || (secure ? 443 : 80),
    secure,
    path: '/socketcluster/',
    authEngine: memory,
  });
  const loop = async (iterable, handle) => { for await (const item of iterable) handle(item); };
  const waiting = new Map(); // channel → {resolve, reject} of subscribe()
  const settle = (channel, error) => {
    const w = waiting.get(channel);
    if (!w) return;
    waiting.delete(channel);
    if (error) w.reject(error); else w.resolve();
  };
  loop(socket.listener('connect'), () => on.status('connected'));
  loop(socket.listener('close'), ({ code }) => on.status('disconnected', `close ${code}`));
  loop(socket.listener('authenticate'), ({ authToken }) => on.login(authToken.user || { username: authToken.sub }));
  loop(socket.listener('deauthenticate'), () => on.logout());
  loop(socket.listener('kickOut'), ({ channel, message }) => on.kickout(channel, message));
  loop(socket.listener('subscribe'), ({ channel }) => settle(channel));
  loop(socket.listener('subscribeFail'), ({ channel, error }) => settle(channel, error));
  loop(socket.receiver('chat message'), (message) => on.message(message));
  return {
    subscribe(channel) {
      if (socket.isSubscribed(channel)) return Promise.resolve();
      const answered = new Promise((resolve, reject) => waiting.set(channel, { resolve, reject }));
      socket.subscribe(channel);
      return withTimeout(answered, `subscribe ${channel}`);
    },
    unsubscribe(channel) {
      socket.unsubscribe(channel);
    },
    // An rpc answered by the app's /sockhive/rpc route; rejects with its error.
    send(room, text) {
      return withTimeout(socket.invoke('chat message', { room, text }), 'chat message');
    },
  };
}

function socketIo(on) {
  const socket = io(); // the client's defaults: long-polling, then the upgrade
  socket.on('connect', () => on.status('connected'));
  socket.on('disconnect', (reason) => on.status('disconnected', reason));
  socket.on('connect_error', (err) => on.status('disconnected', err.message));
  socket.on('authenticated', ({ user }) => on.login(user));
  socket.on('deauthenticated', () => on.logout());
  socket.on('kickout', ({ channel, message }) => on.kickout(channel, message));
  socket.on('chat message', (message) => on.message(message));
  // sockhive answers acks with the result, or {error: {name, message}}.
  const call = async (event, arg) => {
    const reply = await socket.timeout(TIMEOUT_MS).emitWithAck(event, arg);
    if (reply && reply.error) throw reply.error;
    return reply;
  };
  return {
    subscribe: (channel) => call('subscribe', channel),
    unsubscribe: (channel) => { call('unsubscribe', channel).catch(() => {}); },
    send: (room, text) => call('chat message', { room, text }),
  };
}

// ---------------------------------------------------------------------------
// A pane: one client, its state, its messages and what happened to it.

let currentRoom = $('#room').value;
const panes = [];

function pane(id, connect) {
  const root = $(`#${id}`);
  $('.pane-body', root).append($('#pane-template').content.cloneNode(true));
  const show = (cls, state, text, data = {}) => {
    const el = $(`.${cls}`, root);
    el.dataset.state = state;
    el.textContent = text;
    for (const [key, value] of Object.entries(data)) el.dataset[key] = value;
  };
  const log = (kind, text, data = {}) => {
    const li = document.createElement('li');
    li.className = kind;
    Object.assign(li.dataset, data);
    li.textContent = text;
    $('.events', root).prepend(li);
  };
  const errorText = (err) => `${err.name || 'Error'}: ${err.message || err}`;

  let user = null;
  let room = null; // the room channel this pane is in

  const self = {
    async join(name) {
      const channel = `room:${name}`;
      if (room && room !== channel) client.unsubscribe(room);
      room = channel;
      show('room-state', 'joining', `joining ${channel}…`, { channel });
      try {
        await client.subscribe(channel);
        if (room === channel) show('room-state', 'joined', `in ${channel}`, { channel });
      } catch (err) {
        show('room-state', 'refused', `${channel} refused: ${errorText(err)}`, { channel, error: err.name });
        log('refused', `subscribe ${channel} refused: ${errorText(err)}`, { channel, error: err.name });
      }
    },
    async peek(other) {
      const channel = `user:${other}`;
      show('peek-state', 'opening', `opening ${channel}…`, { channel });
      try {
        await client.subscribe(channel);
        show('peek-state', 'opened', `${channel} opened`, { channel });
      } catch (err) {
        show('peek-state', 'refused', `${channel}: ${errorText(err)}`, { channel, error: err.name });
        log('refused', `subscribe ${channel} refused: ${errorText(err)}`, { channel, error: err.name });
      }
    },
  };

  const client = connect({
    status(state, detail) {
      if (state === 'connected') {
        show('status', user ? 'connected' : 'anonymous', user ? `connected · logged in as ${user.username}` : 'connected · no login yet');
      } else {
        show('status', state, `${state}${detail ? ` (${detail})` : ''}`);
      }
    },
    async login(who) {
      const changed = !user || user.username !== who.username;
      user = who;
      root.dataset.user = who.username;
      show('status', 'connected', `connected · logged in as ${who.username}`);
      if (!changed) return; // a renewed token, same user
      log('login', `logged in as ${who.username}, by the session cookie`);
      const mine = `user:${who.username}`;
      show('private', 'subscribing', `${mine}…`, { channel: mine });
      try {
        await client.subscribe(mine);
        show('private', 'subscribed', `${mine} ✓ subscribed`, { channel: mine });
      } catch (err) {
        show('private', 'refused', `${mine}: ${errorText(err)}`, { channel: mine, error: err.name });
      }
      await self.join(currentRoom);
    },
    logout() {
      user = null;
      delete root.dataset.user;
      show('status', 'anonymous', 'connected · logged out');
      log('logout', 'the login ended: the app logged the session out');
    },
    kickout(channel, message) {
      log('kickout', `kicked out of ${channel}: ${message}`, { channel });
      if (channel === room) show('room-state', 'kicked', `kicked out of ${channel}`, { channel });
      if (channel === $('.private', root).dataset.channel) show('private', 'kicked', `kicked out of ${channel}`, { channel });
    },
    message({ room: name, from, text }) {
      const li = document.createElement('li');
      Object.assign(li.dataset, { from, room: name });
      const who = document.createElement('b');
      who.className = 'from';
      who.textContent = from;
      const what = document.createElement('span');
      what.className = 'text';
      what.textContent = text;
      li.append(who, ' ', what);
      $('.messages', root).append(li);
      li.scrollIntoView({ block: 'nearest' });
    },
  });

  $('.send', root).addEventListener('submit', async (event) => {
    event.preventDefault();
    const input = $('.message-input', root);
    const text = input.value;
    if (!text.trim()) return;
    try {
      await client.send(currentRoom, text);
      input.value = '';
    } catch (err) {
      log('error', `not sent: ${errorText(err)}`, { error: err.name });
    }
  });
  return self;
}

panes.push(pane('sc', socketCluster), pane('io', socketIo));

// ---------------------------------------------------------------------------
// The page's own controls.

$('#room-form').addEventListener('submit', (event) => {
  event.preventDefault();
  currentRoom = $('#room').value.trim() || 'lobby';
  $('#room-channel').textContent = `room:${currentRoom}`;
  for (const p of panes) p.join(currentRoom);
});

$('#peek-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const other = $('#peek').value.trim();
  if (other) for (const p of panes) p.peek(other);
});

// Logging out is the app's business (passport + express-session). The page
// stays open on purpose: sockhive notices the session is gone and takes the
// login and the channels away from both sockets.
$('#logout').addEventListener('click', async () => {
  const reply = await fetch('/logout', { method: 'POST', headers: { Accept: 'application/json' } });
  if (reply.ok) {
    $('#logout').disabled = true;
    $('#me-line').textContent = 'logged out of the app';
    $('#logged-out').hidden = false;
  }
});

fetch('/me').then(async (reply) => {
  if (!reply.ok) return location.assign('/login');
  const me = await reply.json();
  $('#me').textContent = me.username;
});
