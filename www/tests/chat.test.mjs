// Browser end-to-end test of the chat page (www/index.html, app.js, client.js) as the real
// server serves it at `/`: people log in, chat 1:1 and in a group, reload, use a second device,
// see each other type, and keep chatting through a server crash, acting as a person would —
// by role and label, never by the page's internal ids.
//
//   cd www/tests && npm ci && cd ../.. && cargo build -p samvad && node --test www/tests/
//
// Screenshots of the main states (list, thread, group, offline, phone) are written to
// SAMVAD_WWW_SCREENSHOTS (default target/www-screenshots) for a person to look at.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { STEP, SCREENSHOTS, serverAndBrowser, logTail } from './support.mjs';

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

/** Polls `check` (which returns a truthy value when satisfied) for at most `ms`. */
async function until(what, check, ms = STEP, seen = undefined) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) { last = e; }
    if (Date.now() > end) {
      const saw = seen ? ` (saw ${JSON.stringify(await seen().catch((e) => e.message))})` : '';
      assert.fail(`${what}: not within ${ms} ms${saw}${last instanceof Error ? `: ${last.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One person's browser (its own context: its own storage, so its own device). */
async function person(browser, base, name, viewport = DESKTOP) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(STEP);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  await page.goto(`${base}/`);
  return { name, context, page, errors };
}

/** Another tab-less device of the same person: a second context. */
const secondDevice = person;

async function logIn(u) {
  await u.page.getByRole('textbox', { name: 'Username' }).fill(u.name);
  await u.page.getByRole('button', { name: 'Log in' }).click();
  await u.page.getByText(`Signed in as ${u.name}`).waitFor();
}

const list = (u) => u.page.getByRole('list', { name: 'Conversations' });
const entry = (u, name) => list(u).getByRole('listitem', { name, exact: true });
const thread = (u) => u.page.getByRole('list', { name: 'Messages' });
const box = (u) => u.page.getByRole('textbox', { name: 'Message' });

/** The texts of the messages in the open thread, in order (notices included). */
async function texts(u) {
  return thread(u).getByRole('listitem').evaluateAll((items) => items
    .filter((li) => !li.classList.contains('older'))
    .map((li) => (li.querySelector('.text') || li).textContent.trim()));
}

async function say(u, text) {
  await box(u).fill(text);
  await u.page.getByRole('button', { name: 'Send' }).click();
}

async function open(u, name) {
  await entry(u, name).getByRole('button').click();
  await u.page.getByRole('heading', { name, exact: true }).waitFor();
}

/** The message of mine with this text, and its state ("Sent", "Read"…). */
async function stateOf(u, text) {
  const item = thread(u).getByRole('listitem').filter({ hasText: text });
  return item.locator('.state').textContent();
}

async function unread(u, name) {
  const badge = entry(u, name).locator('.badge');
  return (await badge.count()) === 0 ? 0 : Number((await badge.textContent()).replace(/\D/g, ''));
}

async function shot(u, file) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await u.page.screenshot({ path: join(SCREENSHOTS, file) });
}

async function startChat(u, peer) {
  await u.page.getByRole('button', { name: 'New chat' }).click();
  const dialog = u.page.getByRole('dialog', { name: 'New chat' });
  await dialog.getByLabel('Username').fill(peer);
  await dialog.getByRole('button', { name: 'Start chat' }).click();
  await u.page.getByRole('heading', { name: peer, exact: true }).waitFor();
}

// Pictures of an earlier run's failure would mislead whoever looks after this one.
mkdirSync(SCREENSHOTS, { recursive: true });
for (const f of readdirSync(SCREENSHOTS)) if (f.startsWith('failed-')) rmSync(join(SCREENSHOTS, f));

describe('the chat page, served by the real server', { timeout: 180_000 }, () => {
  const env = serverAndBrowser();
  const people = {};

  const check = (what, fn) => test(what, { timeout: 60_000 }, async () => {
    try {
      await fn();
    } catch (e) {
      // What each page showed when it failed, for the person reading the failure.
      for (const [key, u] of Object.entries(people)) await shot(u, `failed-${key}.png`).catch(() => {});
      e.message += logTail(env.server);
      throw e;
    }
    const errors = Object.values(people).flatMap((u) => u.errors);
    assert.deepEqual(errors, [], 'no page threw');
  });

  check('two people log in and chat 1:1; a reload keeps the session and the history', async () => {
    const { browser, server } = env;
    people.alice = await person(browser, server.base, 'alice');
    people.bob = await person(browser, server.base, 'bob');
    people.carol = await person(browser, server.base, 'carol', PHONE);
    const { alice, bob, carol } = people;
    for (const u of [alice, bob, carol]) await logIn(u);

    // A stranger is refused by name; bob is found.
    await alice.page.getByRole('button', { name: 'New chat' }).click();
    const dialog = alice.page.getByRole('dialog', { name: 'New chat' });
    await dialog.getByLabel('Username').fill('nobody-here');
    await dialog.getByRole('button', { name: 'Start chat' }).click();
    await dialog.getByText('Nobody called nobody-here uses Samvad yet.').waitFor();
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await startChat(alice, 'bob');
    await say(alice, 'hello bob');
    await until('alice sees her message sent', async () => ['Sent', 'Delivered'].includes(await stateOf(alice, 'hello bob')));
    await say(alice, '<b>not bold</b>');

    await until('bob has 2 unread from alice', async () => (await unread(bob, 'alice')) === 2);
    assert.match(await entry(bob, 'alice').textContent(), /not bold/);
    await shot(bob, 'list.png');
    await open(bob, 'alice');
    await until('bob sees both', async () => (await texts(bob)).join('|') === 'hello bob|<b>not bold</b>');
    assert.equal(await thread(bob).locator('b').count(), 0, 'text is never markup');
    assert.equal(await unread(bob, 'alice'), 0);
    await until('alice sees them read', async () => (await stateOf(alice, 'hello bob')) === 'Read');

    await say(bob, 'hi alice');
    await until('alice sees the reply live', async () => (await texts(alice)).includes('hi alice'));
    await shot(alice, 'thread.png');

    await bob.page.reload();
    await bob.page.getByText('Signed in as bob').waitFor();
    await open(bob, 'alice');
    await until('the history after a reload, once each', async () =>
      (await texts(bob)).join('|') === 'hello bob|<b>not bold</b>|hi alice');
    assert.equal(await stateOf(bob, 'hi alice'), 'Read', 'alice read it while her thread was open');
  });

  check('a second device sees the same thread, and reading on one clears the count on the other', async () => {
    const { browser, server } = env;
    const { alice, bob } = people;
    people.laptop = await secondDevice(browser, server.base, 'alice');
    const laptop = people.laptop;
    await logIn(laptop);
    await until('the laptop lists bob, nothing unread', async () => (await entry(laptop, 'bob').count()) === 1 && (await unread(laptop, 'bob')) === 0);

    // Alice looks at another chat on her first device; bob writes.
    await startChat(alice, 'carol');
    await say(alice, 'hi carol');
    await say(bob, 'are you there?');
    await until('unread on both devices', async () => (await unread(alice, 'bob')) === 1 && (await unread(laptop, 'bob')) === 1);
    await open(laptop, 'bob');
    await until('the laptop shows the whole thread, her own messages too', async () =>
      (await texts(laptop)).join('|') === 'hello bob|<b>not bold</b>|hi alice|are you there?');
    await until('read on the laptop clears the phone', async () => (await unread(alice, 'bob')) === 0);

    // What she sends from the laptop shows on her other device (sync).
    await say(laptop, 'yes, on my laptop');
    await open(alice, 'bob');
    await until('her other device shows it as hers', async () =>
      (await thread(alice).locator('li.mine').filter({ hasText: 'yes, on my laptop' }).count()) === 1);
    await until('bob got it once', async () => (await texts(bob)).filter((t) => t === 'yes, on my laptop').length === 1);
    await laptop.context.close(); // the laptop is put away (it would read what comes next)
  });

  check('two tabs of one browser are one device: what one sends and reads shows in the other', async () => {
    const { alice, bob } = people;
    const page = await alice.context.newPage();
    const tab = { name: 'alice', context: alice.context, page, errors: alice.errors };
    page.on('pageerror', (e) => alice.errors.push(`alice (tab): ${e.message}`));
    await page.goto(`${env.server.base}/`);
    await page.getByText('Signed in as alice').waitFor(); // the session is the browser's
    await open(alice, 'carol');
    await say(bob, 'two tabs?');
    await until('unread in both tabs', async () => (await unread(alice, 'bob')) === 1 && (await unread(tab, 'bob')) === 1,
      STEP, async () => [await unread(alice, 'bob'), await unread(tab, 'bob'), await list(tab).textContent()]);
    await open(alice, 'bob');
    await until('read in one tab clears the other', async () => (await unread(tab, 'bob')) === 0);
    await say(alice, 'yes, two tabs');
    await open(tab, 'bob');
    await until('the other tab shows what this one sent', async () =>
      (await thread(tab).locator('li.mine').filter({ hasText: 'yes, two tabs' }).count()) === 1);
    await until('bob got it once', async () => (await texts(bob)).filter((t) => t === 'yes, two tabs').length === 1);
    await page.close();
  });

  check('a long conversation loads its older pages on scrolling up', async () => {
    // dave writes 130 messages over REST, as a server-side sender would.
    const login = await fetch(`${env.server.base}/v1.0/login`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'dave', authToken: 'dev', notificationToken: '', deviceId: 'script' }),
    }).then((r) => r.json());
    const messages = Array.from({ length: 130 }, (_, i) => JSON.stringify({
      _v: 2.1, id: `dave-${i + 1}`, head: { type: 'chat', to: 'alice', from: 'dave', contentType: 'text' }, meta: {}, body: { text: `line ${i + 1}` },
    }));
    for (const batch of [messages.slice(0, 65), messages.slice(65)]) {
      const sent = await fetch(`${env.server.base}/v1.0/messages?format=text&ack=true`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${login.accesskey}` },
        body: JSON.stringify(batch),
      });
      assert.equal(sent.status, 201, await sent.text());
    }
    await until('alice is told of 130 unread', async () => (await unread(people.alice, 'dave')) === 130);
    // A device alice logs in on now is owed nothing from before, so it reads the thread from
    // history, a page at a time (one that had been online is sent its backlog live instead).
    people.tablet = await secondDevice(env.browser, env.server.base, 'alice');
    const tablet = people.tablet;
    await logIn(tablet);
    await until('the new device counts 130 unread too', async () => (await unread(tablet, 'dave')) === 130);
    await open(tablet, 'dave');
    await until('the latest page, newest at the bottom', async () => {
      const t = await texts(tablet);
      return t.length < 130 && t[t.length - 1] === 'line 130';
    }, STEP, async () => (await texts(tablet)).slice(-3).concat(String((await texts(tablet)).length)));
    await thread(tablet).evaluate((ol) => { ol.parentElement.scrollTop = 0; });
    await until('the older ones, after a scroll to the top', async () => {
      const t = await texts(tablet);
      return t.length === 130 && t[0] === 'line 1' && t[129] === 'line 130';
    });
    await until('read on the new device clears the other', async () => (await unread(people.alice, 'dave')) === 0);
    await tablet.context.close();
    delete people.tablet;
  });

  check('typing shows on the other side, and stops', async () => {
    const { alice, bob } = people;
    await open(alice, 'bob');
    await box(bob).pressSequentially('I am typ', { delay: 20 });
    await alice.page.getByText('bob is typing…').waitFor();
    await say(bob, 'I am typing no more');
    await until('the indicator goes with the message', async () => (await alice.page.getByText('bob is typing…').count()) === 0);
  });

  check('a picture is sent as an attachment and shown inline on the other side', async () => {
    const { alice, bob } = people;
    await open(alice, 'bob');
    const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==', 'base64');
    await box(alice).fill('our dot');
    await alice.page.getByLabel('Attach a file').setInputFiles({ name: 'dot.png', mimeType: 'image/png', buffer: png });
    const picture = (u) => thread(u).getByRole('img', { name: 'dot.png' });
    await until('bob sees the picture, loaded', async () =>
      (await picture(bob).count()) === 1 && picture(bob).evaluate((img) => img.complete && img.naturalWidth === 1));
    assert.match(await thread(bob).getByRole('listitem').filter({ has: bob.page.getByRole('img', { name: 'dot.png' }) }).textContent(), /our dot/);
    await until('alice sees it too', async () => (await picture(alice).count()) === 1);
  });

  check('a group: made, spoken in, a member removed, a member leaving, notices in the thread', async () => {
    const { alice, bob, carol } = people;
    await alice.page.getByRole('button', { name: 'New group' }).click();
    const dialog = alice.page.getByRole('dialog', { name: 'New group' });
    await dialog.getByLabel('Group name').fill('Trip');
    await dialog.getByLabel('Members').fill('bob, carol');
    await dialog.getByRole('button', { name: 'Create group' }).click();
    await alice.page.getByRole('heading', { name: 'Trip', exact: true }).waitFor();
    await until('alice sees the notice', async () => (await texts(alice)).includes('You created the group with bob, carol'));

    // carol is on a phone: the list, then the thread, then back.
    await until('carol is told', async () => (await entry(carol, 'Trip').count()) === 1);
    await open(carol, 'Trip');
    await until('carol sees the notice', async () => (await texts(carol)).includes('alice created the group with bob, you'));
    await say(carol, 'hi all');
    await until('alice sees carol in the group', async () => (await texts(alice)).includes('hi all'));
    assert.match(await thread(alice).getByRole('listitem').filter({ hasText: 'hi all' }).textContent(), /carol/);
    await shot(carol, 'phone.png');
    await carol.page.getByRole('button', { name: 'Back to conversations' }).click();
    await list(carol).waitFor();
    await open(carol, 'Trip');
    await carol.page.goBack(); // the phone's own Back returns to the list, not away from the page
    await list(carol).waitFor();
    assert.equal(await carol.page.getByRole('heading', { name: 'Trip', exact: true }).isVisible(), false);
    assert.match(carol.page.url(), /\/$/);

    await open(bob, 'Trip');
    await until('bob sees carol', async () => (await texts(bob)).includes('hi all'));
    await say(bob, 'when do we leave?');

    await alice.page.getByRole('button', { name: 'Members' }).click();
    const members = alice.page.getByRole('dialog', { name: 'Members of Trip' });
    await members.getByRole('button', { name: 'Remove carol' }).click();
    await until('carol is gone from the members', async () => (await members.getByRole('listitem', { name: 'carol', exact: true }).count()) === 0);
    await members.getByRole('button', { name: 'Close' }).click();
    await until('the removal is in the thread', async () => (await texts(alice)).includes('You removed carol'));
    await open(carol, 'Trip');
    await carol.page.getByText('You are no longer a member of this group.').waitFor();

    await bob.page.getByRole('button', { name: 'Members' }).click();
    await bob.page.getByRole('dialog', { name: 'Members of Trip' }).getByRole('button', { name: 'Leave group' }).click();
    await bob.page.getByText('You are no longer a member of this group.').waitFor();
    await until('alice sees bob leave', async () => (await texts(alice)).includes('bob left'));

    await alice.page.getByRole('button', { name: 'Members' }).click();
    await members.getByRole('textbox', { name: 'Add members' }).fill('dave');
    await members.getByRole('button', { name: 'Add', exact: true }).click();
    await until('dave is a member', async () => (await members.getByRole('listitem', { name: 'dave', exact: true }).count()) === 1);
    await members.getByRole('button', { name: 'Close' }).click();
    await until('the addition is in the thread', async () => (await texts(alice)).includes('You added dave'));
    assert.deepEqual(await texts(alice), [
      'You created the group with bob, carol', 'hi all', 'when do we leave?', 'You removed carol', 'bob left', 'You added dave',
    ]);
    await shot(alice, 'group.png');
  });

  check('the server is killed and restarted: the pages reconnect, a message typed offline arrives once', async () => {
    const { server } = env;
    const { alice, bob } = people;
    await open(alice, 'bob');
    await open(bob, 'alice');
    const before = await texts(bob);

    await server.crash();
    const banner = (u) => u.page.getByRole('status').filter({ hasText: /offline|Reconnecting/ });
    for (const u of [alice, bob]) await banner(u).waitFor();
    await say(alice, 'typed while the server was down');
    await until('it waits in the outbox', async () => (await stateOf(alice, 'typed while the server was down')) === 'Queued');
    await shot(alice, 'offline.png');

    await server.restart();
    for (const u of [alice, bob]) {
      await until(`${u.name} is back online`, async () => (await banner(u).count()) === 0, 40_000);
    }
    await until('bob has it, once', async () =>
      JSON.stringify(await texts(bob)) === JSON.stringify([...before, 'typed while the server was down']), 20_000);
    await until('alice sees it read', async () => (await stateOf(alice, 'typed while the server was down')) === 'Read');
    await say(bob, 'and after the restart');
    await until('alice has the reply', async () => (await texts(alice)).includes('and after the restart'));

    // Nothing doubled in the history either.
    await bob.page.reload();
    await open(bob, 'alice');
    await until('the history once each', async () =>
      JSON.stringify(await texts(bob)) === JSON.stringify([...before, 'typed while the server was down', 'and after the restart']));
  });

  check('log out ends the session, here and on the server', async () => {
    const { bob } = people;
    assert.equal(await bob.page.getByRole('button', { name: 'Turn on notifications' }).isVisible(), false,
      'no notifications offered where the server has no Web Push');
    const key = await bob.page.evaluate(() => JSON.parse(localStorage.getItem('samvad.session')).key);
    const asBob = () => bob.page.evaluate(async (k) =>
      (await fetch('/v1.0/conversations', { headers: { authorization: `Bearer ${k}` } })).status, key);
    assert.equal(await asBob(), 200);
    await bob.page.getByRole('button', { name: 'Log out' }).click();
    await bob.page.getByRole('button', { name: 'Log in' }).waitFor();
    assert.equal(await asBob(), 401, 'the server ended the key too');
    await bob.page.reload();
    await bob.page.getByRole('button', { name: 'Log in' }).waitFor();
    assert.equal(await bob.page.getByText('Signed in as').isVisible(), false);
  });
});

describe('the chat page on a server with Web Push', { timeout: 60_000 }, () => {
  // RFC 8291's example key pair.
  const env = serverAndBrowser({
    SAMVAD_PUSH_PROVIDERS: 'webpush',
    SAMVAD_VAPID_PRIVATE_KEY: 'yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw',
    SAMVAD_VAPID_SUBJECT: 'mailto:ops@samvad.test',
  });

  test('offers to turn notifications on, which the page without a key does not', async () => {
    const erin = await person(env.browser, env.server.base, 'erin');
    await logIn(erin);
    await erin.page.getByRole('button', { name: 'Turn on notifications' }).waitFor();
    assert.deepEqual(erin.errors, []);
  });
});
