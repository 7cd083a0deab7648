#!/usr/bin/env node
// Drives the chat demo (deploy/demo) in Debian's Chromium through
// playwright-core, as two people would: for tests/tests/demo.rs, which boots
// Redis, the demo app, two sockhive nodes and nginx on one origin.
//
// Usage: node demo_check.js '<json>' with
//   {url: "http://127.0.0.1:<nginx>/", users: [{username, password}, x2],
//    room: "<room to chat in>", screenshots: "<dir for the PNGs>"}
// users[0] sends over Socket.IO, tries users[1]'s private channel and logs
// out; users[1] answers over SocketCluster.
// Progress goes to stderr; the last line on stdout is one JSON object:
//   {ok: true, seen, stream, forbidden, kicked, kickedWithinMs, refusedAfterLogout, screenshots}
// Any failed expectation exits 1 with the reason on stderr.
'use strict';

const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PANES = ['sc', 'io'];
// Generous for a loaded 2-core machine; every wait below is bounded by it.
const WAIT_MS = 20000;
// How soon a logout must take the channels away.
const LOGOUT_MS = 8000;

function log(...args) {
  console.error('[demo_check]', ...args);
}

async function openAs(browser, url, user, problems) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (e) => problems.push(`${user.username}: page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`${user.username}: console error: ${m.text()}`);
  });

  // Not logged in yet: the app sends the browser to its login form.
  await page.goto(url);
  if (new URL(page.url()).pathname !== '/login') throw new Error(`${url} without a session went to ${page.url()}`);
  await page.fill('#username', user.username);
  await page.fill('#password', user.password);
  await Promise.all([page.waitForURL((u) => u.pathname === '/'), page.click('#login')]);
  log(user.username, 'logged in to the app');

  // Both sockets are logged in by the session cookie alone, hold the user's
  // private channel and join the default room.
  for (const pane of PANES) {
    await page.waitForSelector(`#${pane}[data-user="${user.username}"] .private[data-state="subscribed"]`);
    await page.waitForSelector(`#${pane} .room-state[data-state="joined"][data-channel="room:lobby"]`);
  }
  log(user.username, 'both sockets logged in by the cookie, in user:' + user.username + ' and room:lobby');
  return { context, page, user };
}

async function joinRoom({ page, user }, room) {
  await page.fill('#room', room);
  await page.click('#join');
  for (const pane of PANES) {
    await page.waitForSelector(`#${pane} .room-state[data-state="joined"][data-channel="room:${room}"]`);
  }
  log(user.username, `joined room:${room} on both sockets`);
}

async function send({ page, user }, pane, text) {
  await page.fill(`#${pane} .message-input`, text);
  await page.click(`#${pane} .send-button`);
  log(user.username, `sent "${text}" over`, pane);
}

// Waits until `pane` of `page` lists a message `text` from `from`.
async function waitForMessage(page, pane, from, text, timeout = WAIT_MS) {
  await page.waitForFunction(
    ({ pane, from, text }) =>
      [...document.querySelectorAll(`#${pane} .messages li`)].some(
        (li) => li.dataset.from === from && li.querySelector('.text').textContent === text
      ),
    { pane, from, text },
    { timeout }
  );
}

// A screenshot without focus rings or hover states, so reruns draw the same.
async function screenshot(page, file) {
  await page.mouse.move(0, 0);
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.screenshot({ path: file });
}

async function messages(page, pane) {
  return page.$$eval(`#${pane} .messages li`, (lis) =>
    lis.map((li) => ({ from: li.dataset.from, text: li.querySelector('.text').textContent }))
  );
}

async function main() {
  const want = JSON.parse(process.argv[2]);
  const [first, second] = want.users;
  const shot = (name) => path.join(want.screenshots, name);
  const problems = [];
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  try {
    const a = await openAs(browser, want.url, first, problems);
    const b = await openAs(browser, want.url, second, problems);
    for (const who of [a, b]) await joinRoom(who, want.room);

    // A message over Socket.IO from the first user, one over SocketCluster
    // from the second: every pane of both pages shows each, with its sender.
    const seen = {};
    const fromA = `hello from ${first.username} over Socket.IO`;
    const fromB = `hi ${first.username}, ${second.username} here over SocketCluster`;
    await send(a, 'io', fromA);
    for (const who of [a, b]) for (const pane of PANES) await waitForMessage(who.page, pane, first.username, fromA);
    await send(b, 'sc', fromB);
    for (const who of [a, b]) {
      for (const pane of PANES) {
        await waitForMessage(who.page, pane, second.username, fromB);
        seen[`${who.user.username}.${pane}`] = await messages(who.page, pane);
      }
    }
    log('both messages reached all four sockets with their senders');

    // A numbered stream over a fresh Socket.IO client with the browser's
    // default options, started at once so that it crosses the switch from
    // long-polling to the WebSocket: every message comes back, in order.
    const stream = await a.page.evaluate(async ({ room, count }) => {
      const socket = io({ forceNew: true });
      const received = [];
      const onTransport = { polling: 0, websocket: 0 };
      socket.on('chat message', (m) => {
        if (m.room !== room) return;
        received.push(Number(m.text));
        onTransport[socket.io.engine.transport.name] += 1;
      });
      const joined = socket.timeout(10000).emitWithAck('subscribe', `room:${room}`);
      const acks = [joined];
      for (let n = 1; n <= count; n += 1) {
        acks.push(socket.timeout(10000).emitWithAck('chat message', { room, text: String(n) }));
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      await Promise.all(acks);
      const deadline = Date.now() + 10000;
      while (received.length < count && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const transport = socket.io.engine.transport.name;
      socket.close();
      return { received, onTransport, transport };
    }, { room: `${want.room}-stream`, count: 60 });
    const inOrder = stream.received.length === 60 && stream.received.every((n, i) => n === i + 1);
    if (!inOrder) throw new Error(`the numbered stream came back as ${JSON.stringify(stream.received)}`);
    if (stream.transport !== 'websocket') throw new Error(`the stream's client ended on ${stream.transport}`);
    log('60 numbered messages across the upgrade, in order:', JSON.stringify(stream.onTransport));

    // The first user tries the second's private channel: refused on both.
    const forbidden = {};
    await a.page.fill('#peek', second.username);
    await a.page.click('#peek-open');
    for (const pane of PANES) {
      const state = await a.page.waitForSelector(`#${pane} .peek-state[data-state="refused"]`);
      forbidden[pane] = { error: await state.getAttribute('data-error'), text: await state.textContent() };
    }
    log(`user:${second.username} refused to ${first.username}:`, JSON.stringify(forbidden));

    await screenshot(a.page, shot(`${first.username}.png`));
    await screenshot(b.page, shot(`${second.username}.png`));

    // The first user logs out of the app; the page stays open. sockhive sees
    // the session go and takes the login and both channels from both sockets.
    const started = Date.now();
    await a.page.click('#logout');
    const kicked = {};
    for (const pane of PANES) {
      kicked[pane] = [];
      for (const channel of [`room:${want.room}`, `user:${first.username}`]) {
        const left = Math.max(1, LOGOUT_MS - (Date.now() - started));
        await a.page.waitForSelector(`#${pane} .events li.kickout[data-channel="${channel}"]`, { timeout: left });
        kicked[pane].push(channel);
      }
      await a.page.waitForSelector(`#${pane} .status[data-state="anonymous"]`, {
        timeout: Math.max(1, LOGOUT_MS - (Date.now() - started)),
      });
    }
    const kickedWithinMs = Date.now() - started;
    log(`logout took both channels from both sockets within ${kickedWithinMs} ms`);

    // Without the login the chat is closed to the first user: the room's
    // messages no longer reach it, and what it sends is refused by the app.
    const after = `${second.username} after ${first.username} left`;
    await send(b, 'io', after);
    for (const pane of PANES) await waitForMessage(b.page, pane, second.username, after);
    await send(a, 'sc', 'still here?');
    const refused = await a.page.waitForSelector('#sc .events li.error');
    const refusedAfterLogout = await refused.getAttribute('data-error');
    // The message reached the second user's sockets; give the first's as long
    // again before calling it absent.
    await a.page.waitForTimeout(1500);
    for (const pane of PANES) {
      const got = await messages(a.page, pane);
      if (got.some((m) => m.text === after)) throw new Error(`${first.username}'s ${pane} socket still gets room messages after logout`);
    }
    log(`after logout: no room messages, and sending is refused with ${refusedAfterLogout}`);
    await screenshot(a.page, shot(`${first.username}-logged-out.png`));

    if (problems.length) throw new Error(problems.join('\n'));
    const screenshots = [`${first.username}.png`, `${second.username}.png`, `${first.username}-logged-out.png`].map(shot);
    process.stdout.write(JSON.stringify({ ok: true, seen, stream, forbidden, kicked, kickedWithinMs, refusedAfterLogout, screenshots }) + '\n');
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error('[demo_check] FAILED:', e && e.stack ? e.stack : e);
  process.exit(1);
});
