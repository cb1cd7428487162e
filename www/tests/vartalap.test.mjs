// Vartalap's own web client (the www/ folder of ramank775/chat-server) against the real server,
// in real Chromium: every field that client reads from a server frame or answer must be there.
//
// That client's code is not copied here. The page below talks to the server the way it does —
// the same requests, the same frames on the wire (v3 protobuf; v2.1 and v1 JSON), the same
// cookies and headers — and decodes what comes back exactly as it does: v3 with protobuf.js 6,
// `Message.toObject(decoded, { enums: String })` and no `defaults`, so a field missing from the
// bytes is `undefined`; text frames with JSON.parse, read as v2 when `_v >= 2` (its v1 reader
// yields nothing usable). docs/PROTOCOL-NOTES.md lists the fields per mode.
//
//   cd www/tests && npm ci && cd ../.. && cargo build -p samvad && node --test www/tests/

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { STEP, serverAndBrowser, logTail } from './support.mjs';

const PROTOBUF_JS = createRequire(import.meta.url).resolve('protobufjs/dist/protobuf.min.js');

// The v3 schema of PROTOCOL.md §3 as a protobuf.js JSON descriptor, without `syntax`, as that
// client builds it.
const V3_SCHEMA = {
  nested: {
    Message: {
      fields: {
        version: { id: 1, type: 'float' },
        id: { id: 2, type: 'string' },
        type: { id: 3, type: 'Type' },
        channel: { id: 4, type: 'Channel' },
        ephemeral: { id: 5, type: 'bool' },
        source: { id: 6, type: 'string' },
        destination: { id: 7, type: 'string' },
        content: { id: 8, type: 'bytes' },
        timestamp: { id: 9, type: 'uint64' },
        meta: { id: 10, keyType: 'string', type: 'string' },
        serverId: { id: 20, type: 'string' },
        serverTimestamp: { id: 21, type: 'uint64' },
      },
      nested: {
        Type: { values: { SERVER_ACK: 0, CLIENT_ACK: 1, MESSAGE: 2, NOTIFICATION: 3, CUSTOM: 10 } },
        Channel: { values: { UNKNOWN: 0, INDIVIDUAL: 1, GROUP: 2, OTHER: 10 } },
      },
    },
  },
};

// The fields every v3 frame must carry: what Vartalap's server always writes.
const ENVELOPE = ['version', 'id', 'type', 'channel', 'ephemeral', 'source', 'destination'];

/** Runs in the page: `window.vt`, a client that speaks and reads as Vartalap's does. */
function installClient(schema) {
  const Message = protobuf.Root.fromJSON(schema).lookup('Message');
  const TYPE = Message.lookupEnum('Type').values;
  const CHANNEL = Message.lookupEnum('Channel').values;
  let counter = 0;
  const vt = {
    me: null,
    version: 3,
    ws: null,
    /** Every frame the server sent: `{ binary, object }`, decoded as the client decodes it. */
    frames: [],

    newId(to) {
      counter += 1;
      return `${to}${Date.now()}${counter}`;
    },

    decodeV3(bytes) {
      const object = Message.toObject(Message.decode(bytes), { enums: String });
      if (object.content) object.content = new TextDecoder('utf-8').decode(object.content);
      return object;
    },

    base64(bytes) {
      return btoa(String.fromCharCode(...bytes));
    },

    unbase64(text) {
      return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    },

    /** A message in the client's wire form for its version: v3 bytes, or v2.1 / v1 JSON text. */
    encode({ id, type, channel, to, ephemeral = false, content, meta = {} }) {
      const text = JSON.stringify(content);
      if (vt.version === 3) {
        return Message.encode(Message.create({
          version: 3,
          id,
          type: TYPE[type],
          channel: CHANNEL[channel],
          ephemeral,
          source: vt.me,
          destination: to,
          timestamp: Math.floor(Date.now() / 1000),
          content: new TextEncoder().encode(text),
          meta,
        })).finish();
      }
      if (vt.version === 2) {
        // Its v2 writer puts the channel in head.type and every meta key in head; it has no
        // head.contentType unless meta carries one.
        return JSON.stringify({ _v: 2.1, id, head: { type: channel, from: vt.me, to, ephemeral, ...meta }, meta: {}, body: content });
      }
      return JSON.stringify({
        _v: 1.0, msgId: id, from: vt.me, to, chatId: to, text, module: type,
        action: meta.action, state: meta.state, type, chatType: type,
      });
    },

    /** The type the client takes from a frame (it calls `toLowerCase()` on it). */
    typeOf(frame) {
      if (frame.binary) return frame.object.type;
      return frame.object._v >= 2 ? frame.object.head?.contentType : undefined;
    },

    /** The first frame whose type is `type` (in any case: v2 keeps a sender's `notification`). */
    find(type, id) {
      return vt.frames.find((f) => vt.typeOf(f)?.toUpperCase() === type && (id === undefined || f.object.id === id));
    },

    headers() {
      return { 'Content-Type': 'application/json', user: vt.me, accesskey: vt.accesskey };
    },

    async login(username) {
      const res = await fetch('/v1.0/login', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username, authToken: 'dev-token', notificationToken: 'testing-token', deviceId: 'default' }),
      });
      if (!res.ok) throw new Error(`login answered ${res.status}`);
      const answer = await res.json();
      vt.me = username;
      vt.accesskey = answer.accesskey;
      document.cookie = `user=${username};path=/`;
      document.cookie = `accesskey=${answer.accesskey};path=/`;
      return answer;
    },

    connect(version) {
      vt.version = version;
      const url = new URL('/v1.0/wss/', location);
      url.protocol = 'ws:';
      url.searchParams.append('ack', true);
      url.searchParams.append('format', version === 3 ? 'binary' : 'text');
      const ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      ws.onmessage = (e) => {
        if (e.data === 'pong') return;
        const binary = e.data instanceof ArrayBuffer;
        const frame = { binary, object: binary ? vt.decodeV3(new Uint8Array(e.data)) : JSON.parse(e.data) };
        vt.frames.push(frame);
        const type = vt.typeOf(frame);
        // (The client would ack an error frame too, under an id of its own making; the test
        // fails on any error frame instead.)
        if (type !== 'SERVER_ACK' && type !== 'CLIENT_ACK' && frame.object.error === undefined) {
          // Its CLIENT_ACK: content null, channel INDIVIDUAL, to `server`, in its own version.
          ws.send(vt.encode({ id: frame.object.id, type: 'CLIENT_ACK', channel: 'INDIVIDUAL', to: 'server', ephemeral: true, content: null }));
        }
      };
      vt.ws = ws;
      return new Promise((resolve, reject) => {
        ws.onopen = () => resolve();
        ws.onerror = () => reject(new Error('WebSocket failed'));
      });
    },

    send(message) {
      vt.ws.send(vt.encode(message));
    },

    /** POST /v1.0/messages as the client does; acks decoded as it decodes them (v3). */
    async rest(message) {
      const format = vt.version === 3 ? 'binary' : 'text';
      const encoded = vt.encode(message);
      const payload = [format === 'binary' ? vt.base64(encoded) : encoded];
      const res = await fetch(`/v1.0/messages?format=${format}&ack=true`, {
        method: 'POST', headers: vt.headers(), body: JSON.stringify(payload),
      });
      const answer = await res.json();
      const acks = (answer.acks || []).map((ack) => (format === 'binary'
        ? { binary: true, object: vt.decodeV3(vt.unbase64(ack)) }
        : { binary: false, object: JSON.parse(ack) }));
      return { status: res.status, answer, acks };
    },

    async createGroup(name, members) {
      const res = await fetch('/v1.0/groups/', {
        method: 'post', headers: vt.headers(), body: JSON.stringify({ name, members, profilePic: null }),
      });
      return res.json();
    },

    async getGroups() {
      const res = await fetch('/v1.0/groups/', { headers: vt.headers() });
      return res.json();
    },
  };
  window.vt = vt;
}

/** What the client's message object holds after decoding `frame` (the fields it goes on to read). */
function seen(frame) {
  const o = frame.object;
  if (frame.binary) return o;
  if (!(o._v >= 2)) return {};
  const head = o.head || {};
  return {
    version: o._v, id: o.id, type: head.contentType, channel: head.type,
    source: head.from, destination: head.to, ephemeral: head.ephemeral, content: o.body,
  };
}

/** Asserts the client can read `frame` and sees `expected` in it. */
function assertReads(frame, expected, what) {
  const o = frame.object;
  if (frame.binary) {
    for (const field of ENVELOPE) assert.notEqual(o[field], undefined, `${what}: v3 field \`${field}\` is absent`);
  } else {
    assert.ok(o._v >= 2, `${what}: _v ${o._v} < 2 would be read as v1, which yields nothing`);
    assert.equal(typeof o.head, 'object', `${what}: no head`);
    for (const key of ['type', 'contentType', 'from', 'to']) {
      assert.equal(typeof o.head[key], 'string', `${what}: head.${key} is not a string`);
    }
  }
  const view = seen(frame);
  assert.equal(typeof view.type, 'string', `${what}: no type (the client calls type.toLowerCase())`);
  assert.equal(typeof view.id, 'string', `${what}: no id (the client keys its events and CLIENT_ACK by id)`);
  for (const [key, value] of Object.entries(expected)) {
    assert.deepEqual(view[key], value, `${what}: ${key}`);
  }
}

/** The message content as the client ends up with it: JSON text in v3, an object in v2. */
function contentOf(frame) {
  const { content } = seen(frame);
  return frame.binary ? JSON.parse(content) : content;
}

describe("Vartalap's web client, as it reads what the server sends", { timeout: 60_000 }, () => {
  const env = serverAndBrowser();
  const clients = [];

  /**
   * A page of the server's origin (its plain /healthz document, so nothing else runs in it) with
   * protobuf.js 6 and the client installed; one browser context, so one cookie jar, per user.
   */
  async function open(name) {
    const context = await env.browser.newContext();
    context.setDefaultTimeout(STEP);
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    await page.goto(`${env.server.base}/healthz`, { timeout: STEP });
    await page.addScriptTag({ path: PROTOBUF_JS });
    await page.evaluate(installClient, V3_SCHEMA);
    const login = await page.evaluate((n) => vt.login(n), name);
    assert.equal(typeof login.accesskey, 'string', 'login answers an accesskey');
    const client = { name, page, errors };
    clients.push(client);
    return client;
  }

  /** Waits until `client` has a frame of `type` (with `id`, if given) and returns it. */
  async function frame(client, type, id) {
    await client.page.waitForFunction(([t, i]) => vt.find(t, i ?? undefined) !== undefined, [type, id ?? null], { timeout: STEP });
    return client.page.evaluate(([t, i]) => vt.find(t, i ?? undefined), [type, id ?? null]);
  }

  async function send(client, message) {
    const id = await client.page.evaluate((to) => vt.newId(to), message.to);
    await client.page.evaluate((m) => vt.send(m), { ...message, id });
    return id;
  }

  test('acks, 1:1 and group messages and notifications, in v3, v2.1 and v1, over WebSocket and REST', { timeout: 45_000 }, async () => {
    try {
      await exchange();
    } catch (e) {
      for (const client of clients) {
        const frames = await client.page.evaluate(() => vt.frames).catch(() => []);
        e.message += `\n--- ${client.name} got ---\n${frames.map((f) => JSON.stringify(f)).join('\n')}`;
      }
      e.message += logTail(env.server);
      throw e;
    }
  });

  async function exchange() {
    // ana and ben speak v3 (binary), cy v2 and dee v1 (text frames; the server answers in v2.1).
    const ana = await open('ana');
    const ben = await open('ben');
    const cy = await open('cy');
    const dee = await open('dee');
    for (const [client, version] of [[ana, 3], [ben, 3], [cy, 2], [dee, 1]]) {
      await client.page.evaluate((v) => vt.connect(v), version);
    }

    // The groups tab: create, then list (it reads groupId and name).
    const created = await ana.page.evaluate(() => vt.createGroup('crew', ['ben', 'cy']));
    const { groupId } = created;
    assert.equal(typeof groupId, 'string', 'creating a group answers its groupId');
    for (const client of [ana, ben]) {
      const groups = await client.page.evaluate(() => vt.getGroups());
      assert.ok(Array.isArray(groups), 'the group list is an array');
      assert.ok(groups.some((g) => g.groupId === groupId && g.name === 'crew'), `${client.name} lists crew with groupId and name`);
    }

    // The group's notification, in v3 and in v2.1.
    for (const client of [ben, cy]) {
      const note = await frame(client, 'NOTIFICATION');
      assertReads(note, { destination: groupId, source: 'ana', ephemeral: false }, `notification to ${client.name}`);
      assert.ok(contentOf(note).added.includes(client.name), `${client.name} is told they were added`);
    }
    const binaryNote = await frame(ben, 'NOTIFICATION');
    assert.equal(binaryNote.object.channel, 'GROUP');

    // ana → ben, v3 over the WebSocket: ana's SERVER_ACK and ben's 1:1 message.
    const hello = await send(ana, { type: 'MESSAGE', channel: 'INDIVIDUAL', to: 'ben', content: { text: 'hello ben' } });
    const ack = await frame(ana, 'SERVER_ACK', hello);
    assertReads(ack, { id: hello, channel: 'INDIVIDUAL', ephemeral: true, source: 'server', destination: 'ana' }, 'v3 SERVER_ACK');
    assert.equal(typeof ack.object.serverId, 'string', 'v3 SERVER_ACK: serverId');
    assert.notEqual(ack.object.serverTimestamp, undefined, 'v3 SERVER_ACK: serverTimestamp');
    const direct = await frame(ben, 'MESSAGE', hello);
    assertReads(direct, { channel: 'INDIVIDUAL', ephemeral: false, source: 'ana', destination: 'ben', version: 3 }, 'v3 1:1 message');
    assert.deepEqual(contentOf(direct), { text: 'hello ben' });

    // ana → crew, v3: ben reads it in v3, cy in v2.1.
    const toCrew = await send(ana, { type: 'MESSAGE', channel: 'GROUP', to: groupId, content: { text: 'hello crew' } });
    assertReads(await frame(ana, 'SERVER_ACK', toCrew), { id: toCrew, ephemeral: true }, 'v3 SERVER_ACK of a group message');
    for (const client of [ben, cy]) {
      const got = await frame(client, 'MESSAGE', toCrew);
      assertReads(got, { source: 'ana', destination: groupId, ephemeral: false }, `group message to ${client.name}`);
      assert.deepEqual(contentOf(got), { text: 'hello crew' });
    }
    assert.equal((await frame(ben, 'MESSAGE', toCrew)).object.channel, 'GROUP');
    assert.equal((await frame(cy, 'MESSAGE', toCrew)).object.head.type, 'group');

    // ana → ben over REST, v3: the acks are base64 v3, decoded as the client decodes them.
    const viaRest = await ana.page.evaluate(() => vt.rest({ id: vt.newId('ben'), type: 'MESSAGE', channel: 'INDIVIDUAL', to: 'ben', content: { text: 'by REST' } }));
    assert.equal(viaRest.acks.length, 1, 'one ack per message');
    assertReads(viaRest.acks[0], { type: 'SERVER_ACK', channel: 'INDIVIDUAL', ephemeral: true, source: 'server' }, 'v3 REST SERVER_ACK');
    assertReads(await frame(ben, 'MESSAGE', viaRest.acks[0].object.id), { source: 'ana' }, 'v3 message sent by REST');

    // cy (v2.1) → ana, and → crew.
    const fromCy = await send(cy, { type: 'MESSAGE', channel: 'INDIVIDUAL', to: 'ana', content: { text: 'hi ana' } });
    assertReads(await frame(cy, 'SERVER_ACK', fromCy), { id: fromCy, source: 'server', destination: 'cy', ephemeral: true }, 'v2.1 SERVER_ACK');
    const atAna = await frame(ana, 'MESSAGE', fromCy);
    assertReads(atAna, { channel: 'INDIVIDUAL', source: 'cy', destination: 'ana', ephemeral: false }, 'v3 message from a v2 sender');
    assert.deepEqual(contentOf(atAna), { text: 'hi ana' });
    const cyToCrew = await send(cy, { type: 'MESSAGE', channel: 'GROUP', to: groupId, content: { text: 'hi crew' } });
    assertReads(await frame(ben, 'MESSAGE', cyToCrew), { channel: 'GROUP', source: 'cy', destination: groupId }, 'v3 group message from a v2 sender');

    // cy over REST in text: the acks are v2.1 text, as Vartalap's server answers (its client then
    // tries to read them as base64 v3; see docs/PROTOCOL-NOTES.md).
    const cyRest = await cy.page.evaluate(() => vt.rest({ id: vt.newId('ana'), type: 'MESSAGE', channel: 'INDIVIDUAL', to: 'ana', content: { text: 'text by REST' } }));
    assert.equal(cyRest.acks.length, 1, 'one ack per message');
    assertReads(cyRest.acks[0], { type: 'SERVER_ACK', source: 'server', destination: 'cy', ephemeral: true }, 'v2.1 REST SERVER_ACK');

    // dee (v1) → cy: dee's ack and cy's message come in v2.1.
    const fromDee = await send(dee, { type: 'MESSAGE', channel: 'INDIVIDUAL', to: 'cy', content: { text: 'hi cy' } });
    assertReads(await frame(dee, 'SERVER_ACK', fromDee), { id: fromDee, source: 'server', destination: 'dee' }, 'SERVER_ACK to a v1 sender');
    const atCy = await frame(cy, 'MESSAGE', fromDee);
    assertReads(atCy, { source: 'dee', destination: 'cy' }, 'v2.1 message from a v1 sender');

    // Every frame anybody got is readable, and none is an error: the client's CLIENT_ACKs, in
    // each version as it writes them, were all taken.
    for (const client of clients) {
      const frames = await client.page.evaluate(() => vt.frames);
      for (const [i, f] of frames.entries()) {
        assert.equal(f.object.error, undefined, `${client.name} got an error frame: ${JSON.stringify(f.object)}`);
        assertReads(f, {}, `${client.name}'s frame ${i}`);
      }
      assert.deepEqual(client.errors, [], 'page errors');
    }
  }
});
