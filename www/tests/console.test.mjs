// Browser end-to-end test of the protocol console (www/console.html) as the real server serves
// it at `/console`.
//
// Starts the samvad binary (SAMVAD_BIN, default ../../target/debug/samvad) on a free port with a
// temp data dir, drives Debian's Chromium (CHROMIUM, default /usr/bin/chromium) through
// playwright-core with one browser context per user, and checks a whole exchange:
// WebSocket and REST sends, SERVER_ACK / CLIENT_ACK, groups and their notification, contact
// sync, a v3 binary connection, and that message text is never rendered as markup.
//
//   cd www/tests && npm ci && cd ../.. && cargo build -p samvad && node --test www/tests/
//
// A screenshot of alice's page is written to SAMVAD_WWW_SCREENSHOTS/console.png (default
// target/www-screenshots) for a person to look at.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { STEP, SCREENSHOTS, serverAndBrowser, logTail } from './support.mjs';

const SCREENSHOT = join(SCREENSHOTS, 'console.png');

/** A page for one user in its own browser context (own cookies), with page errors collected. */
async function openUser(browser, base, name, { fakeClock = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  context.setDefaultTimeout(STEP);
  // A fake clock lets the test fast-forward through the 30 s ping interval.
  if (fakeClock) await context.clock.install();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`); });
  await page.goto(base + '/console', { timeout: STEP });
  return { name, page, context, errors };
}

async function login(u) {
  await u.page.fill('#username', u.name);
  await u.page.fill('#token', 'dev-token');
  await u.page.click('#login');
  await u.page.waitForFunction(() => document.querySelector('#accesskey').value.length > 0, null, { timeout: STEP });
  assert.match(await u.page.textContent('#login-status'), new RegExp(`Logged in as ${u.name}`));
}

async function connect(u, { format = 'text', auth = 'cookie' } = {}) {
  await u.page.selectOption('#format', format);
  await u.page.selectOption('#auth-mode', auth);
  await u.page.click('#connect');
  await u.page.waitForFunction(() => /^connected/.test(document.querySelector('#conn-status').textContent), null, { timeout: STEP });
}

async function send(u, { to, text, channel = 'chat', rest = false }) {
  await u.page.selectOption('#channel', channel);
  await u.page.fill('#to', to);
  await u.page.fill('#text', text);
  await u.page.setChecked('#via-rest', rest);
  await u.page.click('#send');
  // The id of the message just sent: the newest of my bubbles with this text.
  const mine = u.page.locator('#messages .msg.mine').filter({ hasText: text }).last();
  await mine.waitFor({ timeout: STEP });
  return mine.getAttribute('data-id');
}

/** Waits until `u` shows a received message from `from` containing `text`; returns its bubble. */
async function received(u, from, text) {
  const bubble = u.page.locator(`#messages .msg.theirs[data-from="${from}"]`).filter({ hasText: text });
  await bubble.first().waitFor({ timeout: STEP });
  return bubble.first();
}

/** Waits for a log entry of `kind` in direction `dir` mentioning `id`. */
async function logged(u, dir, kind, id) {
  await u.page
    .locator(`#log .entry[data-dir="${dir}"][data-kind="${kind}"]`)
    .filter({ hasText: id })
    .first()
    .waitFor({ state: 'attached', timeout: STEP });
}

describe('the protocol console, served by the real server', { timeout: 60_000 }, () => {
  const env = serverAndBrowser();
  const users = [];
  const pages = {};

  test('two browsers chat: WebSocket, REST, acks, groups, contacts, binary', { timeout: 40_000 }, async () => {
    try {
      await chat();
    } catch (e) {
      e.message += logTail(env.server);
      throw e;
    }
  });

  // The close handshake: the page closes with 1000 and should see the server's close come back.
  test('a client close gets a clean close back', { timeout: 12_000 }, async () => {
    const { bob } = pages;
    assert.ok(bob, 'needs the chat test to have run');
    await connect(bob, { auth: 'subprotocol' });
    await bob.page.click('#disconnect');
    const close = bob.page.locator('#log .entry[data-kind="close"][data-dir]').last();
    await bob.page.waitForFunction(() => document.querySelector('#conn-status').textContent === 'disconnected', null, { timeout: STEP });
    assert.match(await close.textContent(), /code 1000/);
  });

  async function chat() {
    const alice = await openUser(env.browser, env.server.base, 'alice');
    const bob = await openUser(env.browser, env.server.base, 'bob');
    users.push(alice, bob);
    Object.assign(pages, { alice, bob });
    assert.equal(await alice.page.title(), 'Samvad — test client');

    // Both must exist before either can be messaged.
    await login(alice);
    await login(bob);
    await connect(alice, { auth: 'cookie' });
    await connect(bob, { auth: 'subprotocol' });

    // alice → bob over the WebSocket; the text must arrive as text, never as markup.
    const hello = 'hello bob <b>not bold</b> & <img src=x onerror=alert(1)>';
    const helloId = await send(alice, { to: 'bob', text: hello });
    const bubble = await received(bob, 'alice', hello);
    assert.equal(await bubble.locator('.body').textContent(), hello);
    assert.equal(await bob.page.locator('#messages .body *, #messages img').count(), 0, 'message text was rendered as HTML');
    // alice's SERVER_ACK (durable), and bob's automatic CLIENT_ACK, both in the logs.
    await logged(alice, 'in', 'SERVER_ACK', helloId);
    await alice.page.locator(`#messages .msg.mine[data-id="${helloId}"] .status.acked`).waitFor({ timeout: STEP });
    await logged(bob, 'out', 'CLIENT_ACK', helloId);

    // bob → alice over REST, acked in the response.
    const replyId = await send(bob, { to: 'alice', text: 'hi alice, via REST', rest: true });
    await received(alice, 'bob', 'hi alice, via REST');
    await logged(bob, 'in', 'SERVER_ACK', replyId);
    await logged(alice, 'out', 'CLIENT_ACK', replyId);

    // alice creates a group with bob; bob is told, and a group message reaches him.
    await alice.page.fill('#group-name', 'crew');
    await alice.page.fill('#group-members', 'bob');
    await alice.page.click('#create-group');
    await alice.page.waitForFunction(() => document.querySelector('#channel').value === 'group'
      && document.querySelector('#to').value.length > 0, null, { timeout: STEP });
    const groupId = await alice.page.inputValue('#to');
    await alice.page.locator(`#groups li[data-group-id="${groupId}"]`).waitFor({ timeout: STEP });
    await bob.page.locator('#messages .sys').filter({ hasText: 'alice created group “crew” with you' }).first()
      .waitFor({ timeout: STEP });
    await alice.page.locator('#messages .sys').filter({ hasText: 'You created group “crew” with bob' }).first()
      .waitFor({ timeout: STEP });
    const groupText = 'hello crew';
    const groupMsgId = await send(alice, { channel: 'group', to: groupId, text: groupText });
    const groupBubble = await received(bob, 'alice', groupText);
    assert.equal(await groupBubble.getAttribute('data-to'), groupId);
    assert.match(await groupBubble.locator('.who').textContent(), /crew/);
    await logged(alice, 'in', 'SERVER_ACK', groupMsgId);

    // bob lists his groups and sees the new one.
    await bob.page.click('#list-groups');
    await bob.page.locator(`#groups li[data-group-id="${groupId}"]`).filter({ hasText: 'crew' }).waitFor({ timeout: STEP });

    // Contact sync reports who exists.
    await alice.page.fill('#contacts', 'bob, nobody-here');
    await alice.page.click('#sync-contacts');
    await alice.page.locator('#contacts-result').filter({ hasText: 'not found: nobody-here' }).waitFor({ timeout: STEP });
    assert.match(await alice.page.textContent('#contacts-result'), /On Samvad: bob/);

    // A third user on a v3 binary connection, both ways, exercising the page's protobuf codec.
    const carol = await openUser(env.browser, env.server.base, 'carol', { fakeClock: true });
    users.push(carol);
    await login(carol);
    await connect(carol, { format: 'binary', auth: 'subprotocol' });
    await send(alice, { to: 'carol', text: 'binary hello' });
    await received(carol, 'alice', 'binary hello');
    const carolId = await send(carol, { to: 'alice', text: 'binary reply ✓' });
    await received(alice, 'carol', 'binary reply ✓');
    await logged(carol, 'in', 'SERVER_ACK', carolId);
    const carolRestId = await send(carol, { to: 'alice', text: 'binary over REST', rest: true });
    await received(alice, 'carol', 'binary over REST');
    await logged(carol, 'in', 'SERVER_ACK', carolRestId);

    // Keep-alive: 30 s later the page pings and logs the server's pong.
    await carol.page.clock.fastForward(30_500);
    await carol.page.locator('#log .entry[data-dir="out"][data-kind="ping"]').first().waitFor({ state: 'attached', timeout: STEP });
    await carol.page.locator('#log .entry[data-dir="in"][data-kind="pong"]').first().waitFor({ state: 'attached', timeout: STEP });

    // Disconnect.
    await bob.page.click('#disconnect');
    await bob.page.waitForFunction(() => document.querySelector('#conn-status').textContent === 'disconnected', null, { timeout: STEP });
    assert.equal(await bob.page.isEnabled('#connect'), true);

    await alice.page.evaluate(() => { document.querySelector('aside').scrollTop = 0; });
    await alice.page.screenshot({ path: SCREENSHOT, timeout: STEP });
    const errors = users.flatMap((u) => u.errors);
    assert.deepEqual(errors, [], 'page errors');
  }
});
