#!/usr/bin/env node
// Drives the admin console (/console on a node's admin port) in Debian's
// Chromium through playwright-core, as an operator would: for
// tests/tests/console.rs, which starts the nodes and the clients and checks on
// the client side what this script did in the page.
//
// Usage: node console_check.js '<json>' with
//   {url, token, screenshot, nodes: {name: sockets}, bob: [socket ids],
//    kick: <socket id>, emit: {event, data}, publish: {channel, data},
//    sc_url: <the SocketCluster URL of the node serving the console>,
//    connections: <least open sockets that node's chart must show>}
// Progress goes to stderr; the last line on stdout is one JSON object:
//   {ok: true, emitted, kicked, listedNodes, charts, screenshot}
// Any failed expectation exits 1 with the reason on stderr.
'use strict';

const { chromium } = require('playwright-core');
const WebSocket = require('ws');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function log(...args) {
  console.error('[console_check]', ...args);
}

async function main() {
  const want = JSON.parse(process.argv[2]);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.setDefaultTimeout(15000);
    // A CSP violation or a script error shows up here: the page must run clean.
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
    });
    page.on('dialog', (d) => d.accept());

    log('open', want.url);
    const response = await page.goto(want.url);
    if (response.status() !== 200) throw new Error(`GET /console answered ${response.status()}`);

    // A wrong token is refused and the page asks again.
    await page.fill('#token', 'not-the-token');
    await page.click('#connect');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('refused'));
    if (await page.isVisible('#console')) throw new Error('the console opened with a wrong token');
    const refused = problems.splice(0).filter((p) => !p.includes('401'));
    problems.push(...refused);

    await page.fill('#token', want.token);
    await page.click('#connect');
    await page.waitForSelector('#console', { state: 'visible' });
    log('logged in');

    // The token is kept for this tab: a reload does not ask again.
    await page.reload();
    await page.waitForSelector('#console', { state: 'visible' });
    if (await page.isVisible('#login-panel')) throw new Error('a reload asked for the token again');
    log('reload kept the token');

    // Every socket of every node is listed, and counted per node.
    const total = Object.values(want.nodes).reduce((a, b) => a + b, 0);
    await page.waitForFunction((expected) => {
      const rows = [...document.querySelectorAll('#sockets tbody tr')];
      const nodes = {};
      for (const tr of document.querySelectorAll('#counts tbody tr.node')) {
        nodes[tr.cells[0].textContent] = Number(tr.cells[2].textContent);
      }
      return rows.length === expected.total &&
        JSON.stringify(Object.entries(nodes).sort()) === JSON.stringify(Object.entries(expected.nodes).sort());
    }, { total, nodes: want.nodes });
    const listedNodes = await page.$$eval('#sockets tbody td.node', (tds) => [...new Set(tds.map((td) => td.textContent))].sort());
    log('listed', total, 'sockets on', listedNodes.join(', '));

    // The filter narrows the list to bob's sockets.
    await page.fill('#filter', '{"user.id": "bob"}');
    await page.press('#filter', 'Enter');
    await page.waitForFunction((bob) => {
      const ids = [...document.querySelectorAll('#sockets tbody tr')].map((tr) => tr.dataset.id).sort();
      return JSON.stringify(ids) === JSON.stringify([...bob].sort());
    }, want.bob);
    const users = await page.$$eval('#sockets tbody td.user', (tds) => tds.map((td) => JSON.parse(td.textContent).id));
    if (users.some((u) => u !== 'bob')) throw new Error(`filtered list shows ${users}`);
    const protocols = await page.$$eval('#sockets tbody td.protocol', (tds) => tds.map((td) => td.textContent).sort());
    log('filtered to bob:', want.bob.length, 'sockets,', protocols.join(', '));

    // Emit to every selected socket.
    await page.check('#select-all');
    await page.fill('#emit-event', want.emit.event);
    await page.fill('#emit-data', JSON.stringify(want.emit.data));
    await page.click('#emit');
    await page.waitForFunction(() => document.getElementById('action-result').textContent.startsWith('emitted'));
    const emitText = await page.textContent('#action-result');
    const emitted = Number(/delivered to (\d+)/.exec(emitText)[1]);
    log(emitText);

    // Kick exactly one.
    await page.uncheck('#select-all');
    await page.check(`#sockets tbody tr[data-id="${want.kick}"] input.pick`);
    const kickLabel = await page.textContent('#kick');
    if (kickLabel !== 'Kick 1 selected') throw new Error(`kick button says ${kickLabel}`);
    await page.click('#kick');
    await page.waitForFunction(() => document.getElementById('action-result').textContent.startsWith('kicked'));
    const kickText = await page.textContent('#action-result');
    const kicked = Number(/kicked: (\d+)/.exec(kickText)[1]);
    log(kickText);
    await page.waitForFunction((id) => !document.querySelector(`#sockets tbody tr[data-id="${id}"]`), want.kick);

    // Publish to a channel.
    await page.fill('#publish-channel', want.publish.channel);
    await page.fill('#publish-data', JSON.stringify(want.publish.data));
    await page.click('#publish');
    await page.waitForFunction(() => document.getElementById('publish-result').textContent.startsWith('published'));
    log(await page.textContent('#publish-result'));

    // One more handshake on this node while the page watches, from a bare
    // WebSocket: the handshakes chart must see it.
    await handshake(want.sc_url);
    log('one more handshake done');

    // The charts drew lines after a few polls: points counted by the page, and
    // pixels of a series colour inside the plot area (below the legend).
    await page.waitForFunction(() =>
      ['chart-handshakes', 'chart-messages', 'chart-connections']
        .every((id) => Number(document.getElementById(id).dataset.points) >= 3), null, { timeout: 30000 });
    const charts = await page.evaluate(() => {
      // The series colours of console.js.
      const colors = [[47, 111, 222], [224, 128, 58], [46, 157, 98], [155, 77, 202]];
      const out = {};
      for (const id of ['chart-handshakes', 'chart-messages', 'chart-connections']) {
        const canvas = document.getElementById(id);
        const g = canvas.getContext('2d');
        const ratio = canvas.width / canvas.clientWidth;
        const top = Math.ceil(22 * ratio);
        const { data } = g.getImageData(0, top, canvas.width, canvas.height - top);
        let line = 0;
        let inked = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] > 0) inked++;
          if (data[i + 3] > 100 && colors.some(([r, g, b]) => Math.abs(data[i] - r) < 30 && Math.abs(data[i + 1] - g) < 30 && Math.abs(data[i + 2] - b) < 30)) line++;
        }
        out[id] = { points: Number(canvas.dataset.points), max: Number(canvas.dataset.max), inked, line, now: document.getElementById(id + '-now').textContent };
      }
      return out;
    });
    for (const [id, c] of Object.entries(charts)) {
      if (c.line < 20) throw new Error(`${id} drew no line: ${JSON.stringify(c)}`);
    }
    // The emit, the publish and the handshake above happened while the page
    // polled, so each rate chart saw them; the connections chart saw this node's sockets.
    if (!(charts['chart-handshakes'].max > 0)) throw new Error(`handshakes/s never moved: ${JSON.stringify(charts)}`);
    if (!(charts['chart-messages'].max > 0)) throw new Error(`messages/s never moved: ${JSON.stringify(charts)}`);
    if (!(charts['chart-connections'].max >= want.connections)) throw new Error(`connections below ${want.connections}: ${JSON.stringify(charts)}`);
    log('charts', JSON.stringify(charts));

    // Back to everything for the picture.
    await page.fill('#filter', '{}');
    await page.press('#filter', 'Enter');
    await page.waitForFunction((n) => document.querySelectorAll('#sockets tbody tr').length === n, total - kicked);
    await page.screenshot({ path: want.screenshot, fullPage: true });

    if (problems.length) throw new Error(problems.join('\n'));
    process.stdout.write(JSON.stringify({ ok: true, emitted, kicked, listedNodes, protocols, charts, screenshot: want.screenshot }) + '\n');
  } finally {
    await browser.close();
  }
}

// Opens a SocketCluster connection, completes its #handshake, and closes it.
function handshake(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => reject(new Error(`no #handshake reply from ${url}`)), 10000);
    ws.on('open', () => ws.send(JSON.stringify({ event: '#handshake', data: {}, cid: 1 })));
    ws.on('message', (data) => {
      const text = data.toString();
      if (text === '') return;
      if (text === '#1') return ws.send('#2');
      const reply = JSON.parse(text);
      if (reply.rid === 1) {
        clearTimeout(timer);
        ws.close(1000);
        resolve(reply);
      }
    });
    ws.on('error', reject);
  });
}

main().catch((e) => {
  console.error('[console_check] FAILED:', e && e.stack ? e.stack : e);
  process.exit(1);
});
