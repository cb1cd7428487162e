// Samvad's chat page: a conversation list and a thread, drawn from the history routes and the
// WebSocket (PROTOCOL §4 and §7). Everything the server says is put on the page as text, never
// as markup.

import { ApiError, Connection, Outbox, api, deviceId, frame, logIn, logOut, savedSession, tabs, target } from './client.js';

/** How long a typing indicator lasts without news, and how often one is sent while typing. */
const TYPING_SHOWN_MS = 6_000;
const TYPING_EVERY_MS = 3_000;
const TYPING_IDLE_MS = 4_000;
/** Conversations whose latest page is read at start (for the list's last message). */
const PREVIEWS = 30;

const $ = (id) => document.getElementById(id);

/** A mouse or trackpad (not a touch screen): Enter sends, and an opened thread takes focus. */
const FINE_POINTER = matchMedia('(pointer: fine)');
/** The phone layout: the list or a thread, and the browser's Back returns to the list. */
const NARROW = matchMedia('(max-width: 700px)');

/** A new element: `el('li', {className: 'x'}, 'text', child)`. */
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith('aria-') || k.startsWith('data-') || k === 'role') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function clock(ms) {
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/** Everything the page knows; one per signed-in session. */
let app = null;

// ---------------------------------------------------------------- conversations and items

/** A conversation as the page keeps it. */
function newConv(name) {
  const { to, channel } = target(name);
  return {
    name, channel, peer: to,
    lastSeq: 0, readSeq: 0, unread: 0, lastAt: 0,
    items: new Map(), // `${from}/${id}` → item
    oldest: undefined, more: true, loaded: false, loading: null,
    typing: new Map(), // user → until (ms)
    left: false,
  };
}

function conv(name) {
  let c = app.convs.get(name);
  if (!c) {
    c = newConv(name);
    app.convs.set(name, c);
  }
  return c;
}

function title(c) {
  if (c.channel === 'chat') return c.peer;
  return app.groups.get(c.peer)?.name ?? app.groupNames[c.peer] ?? 'A group';
}

/** Where an item sorts: its seq, or (not stored yet) just after what was known when sent. */
function order(item) {
  return item.seq ?? item.afterSeq + 0.5 + item.n * 1e-6;
}

function sorted(c) {
  return [...c.items.values()].sort((a, b) => order(a) - order(b));
}

let counter = 0;

/** Adds an item, or fills in what a known one lacked (its seq, once stored); returns [item, isNew]. */
function put(c, item) {
  const key = `${item.from}/${item.id}`;
  const known = c.items.get(key);
  if (known) {
    if (item.seq !== undefined && known.seq === undefined) known.seq = item.seq;
    if (known.state === 'sending' || known.state === 'queued') {
      if (item.state === 'sent') known.state = 'sent';
    }
    return [known, false];
  }
  item.key = key;
  item.n = counter++;
  c.items.set(key, item);
  if (item.seq !== undefined && (c.oldest === undefined || item.seq < c.oldest)) c.oldest = item.seq;
  return [item, true];
}

function preview(item) {
  if (!item) return '';
  if (item.notice) return item.text;
  const who = item.from === app.session.user ? 'You: ' : (item.channel === 'group' ? `${item.from}: ` : '');
  const text = item.attachment ? `📎 ${item.attachment.name || 'attachment'}${item.text ? ` ${item.text}` : ''}` : item.text;
  return who + text;
}

function lastItem(c) {
  const all = sorted(c);
  return all[all.length - 1];
}

/** The text of a group's membership notice. */
function noticeText(f) {
  const me = app.session.user;
  const name = (u) => (u === me ? 'you' : u);
  const actor = f.from === me ? 'You' : f.from;
  const added = Array.isArray(f.body.added) ? f.body.added : [];
  const removed = Array.isArray(f.body.removed) ? f.body.removed : [];
  if (f.action === 'add') {
    if (added.includes(f.from)) {
      const others = added.filter((u) => u !== f.from).map(name);
      return `${actor} created the group${others.length ? ` with ${others.join(', ')}` : ''}`;
    }
    return `${actor} added ${added.map(name).join(', ')}`;
  }
  if (removed.length === 1 && removed[0] === f.from) return `${actor} left`;
  return `${actor} removed ${removed.map(name).join(', ')}`;
}

/** A stored message (from a history page or the socket) put in its conversation. */
function stored(f, live) {
  const me = app.session.user;
  const name = f.conv || (f.channel === 'group' ? `group:${f.to}` : `chat:${f.from === me ? f.to : f.from}`);
  const c = conv(name);
  const before = c.lastSeq;
  if (f.seq !== undefined) c.lastSeq = Math.max(c.lastSeq, f.seq);
  c.lastAt = Math.max(c.lastAt, f.at);
  if (f.action === 'state') {
    if (f.from !== me) receipt(c, f);
    return null;
  }
  if (f.action === 'typing') return null;
  let item;
  if (f.type === 'NOTIFICATION') {
    if (f.action !== 'add' && f.action !== 'remove') return null;
    item = { id: f.id, from: f.from, seq: f.seq, at: f.at, notice: true, text: noticeText(f) };
    if (live) membership(c, f);
  } else {
    const body = f.body;
    const att = body.attachment && typeof body.attachment.fileId === 'string' ? body.attachment : null;
    item = {
      id: f.id, from: f.from, seq: f.seq, at: f.at, channel: c.channel,
      text: typeof body.text === 'string' ? body.text : (att ? '' : JSON.stringify(body)),
      attachment: att, state: 'sent', readBy: new Set(),
    };
  }
  const [it, isNew] = put(c, item);
  if (isNew && live && !it.notice && it.from !== me && f.seq > c.readSeq) {
    if (f.seq > before) c.unread += 1; // what the list counted already is not counted again
    if (c.channel === 'chat' && !readable(c)) delivered(c, f.id);
  }
  if (!it.notice) c.typing.delete(it.from);
  return it;
}

const arrived = new Map(); // conv → ids not yet confirmed DELIVERED
let arrivedTimer = null;

/**
 * Tells the sender a message arrived: one DELIVERED receipt per conversation for what came in
 * within 300 ms, so a backlog costs one receipt, not one per message. Its id is made from the
 * last message's, so the tabs of one device send the same receipt and the server keeps one.
 */
function delivered(c, id) {
  if (!arrived.has(c.name)) arrived.set(c.name, []);
  arrived.get(c.name).push(id);
  arrivedTimer ??= setTimeout(() => {
    arrivedTimer = null;
    for (const [name, ids] of arrived) {
      const last = ids[ids.length - 1];
      const id = last.length <= 240 ? `delivered:${last}` : undefined; // ids are ≤ 256 bytes
      send(name, { id, body: { ids, state: 'DELIVERED' }, action: 'state', contentType: 'state' }, { direct: true });
    }
    arrived.clear();
  }, 300);
}

/** A receipt (`meta.action` `state`) from someone else: their state of our messages. */
function receipt(c, f) {
  const ids = Array.isArray(f.body.ids) ? f.body.ids : [];
  const stateName = String(f.body.state || '').toUpperCase();
  const rank = { DELIVERED: 1, READ: 2 }[stateName];
  if (!rank) return;
  const mine = sorted(c).filter((i) => i.from === app.session.user && !i.notice);
  // A receipt for one message is one for all of ours before it too.
  let upto = -1;
  mine.forEach((i, n) => { if (ids.includes(i.id)) upto = n; });
  for (let n = 0; n <= upto; n++) {
    const i = mine[n];
    // What is not stored yet (or was refused) was not read, wherever it sorts.
    if ((STATE_RANK[i.state] ?? 0) < STATE_RANK.sent && !ids.includes(i.id)) continue;
    if (c.channel === 'group') {
      if (rank === 2) i.readBy.add(f.from);
    } else if ((STATE_RANK[i.state] ?? 0) < rank + 1) {
      i.state = rank === 2 ? 'read' : 'delivered';
    }
  }
  if (upto >= 0) drawLater(c.name);
}

const STATE_RANK = { failed: -1, queued: 0, sending: 0, sent: 1, delivered: 2, read: 3 };

/** A membership notice seen live: the group's members change, and maybe our part in it. */
function membership(c, f) {
  const me = app.session.user;
  const added = Array.isArray(f.body.added) ? f.body.added : [];
  const removed = Array.isArray(f.body.removed) ? f.body.removed : [];
  if (added.includes(me)) c.left = false;
  if (removed.includes(me)) c.left = true;
  refreshGroups();
}

// ---------------------------------------------------------------- loading

/** The groups the user is in; their names are remembered, for the ones they leave. */
async function loadGroups() {
  const list = await app.api.groups();
  app.groups = new Map(list.map((g) => [g.groupId, g]));
  for (const g of list) {
    conv(`group:${g.groupId}`).left = false;
    app.groupNames[g.groupId] = g.name;
  }
  localStorage.setItem(namesKey(app.session), JSON.stringify(app.groupNames));
}

const namesKey = (session) => `samvad.groups.${session.user}`;

function savedGroupNames(session) {
  try { return JSON.parse(localStorage.getItem(namesKey(session))) || {}; } catch { return {}; }
}

let groupsTimer = null;
function refreshGroups() {
  clearTimeout(groupsTimer);
  groupsTimer = setTimeout(async () => {
    try { await loadGroups(); } catch { return; }
    for (const c of app.convs.values()) {
      if (c.channel === 'group' && !app.groups.has(c.peer)) c.left = true;
    }
    drawList();
    drawThreadHeader();
    if ($('members-dialog').open) drawMembers();
  }, 150);
}

/** The conversation list from the server: last seq, read position and unread count of each. */
async function loadConversations() {
  const list = await app.api.conversations();
  for (const s of list) {
    const c = conv(s.conv);
    c.lastSeq = Math.max(c.lastSeq, s.lastSeq);
    if (s.readSeq >= c.readSeq) c.unread = s.unread; // else our READ is not in it yet
    c.readSeq = Math.max(c.readSeq, s.readSeq);
    c.lastAt = Math.max(c.lastAt, s.lastAt || 0);
  }
  for (const c of app.convs.values()) {
    if (c.channel === 'group' && !app.groups.has(c.peer)) c.left = true;
  }
}

let listTimer = null;
function refreshConversations() {
  clearTimeout(listTimer);
  listTimer = setTimeout(async () => {
    try { await loadConversations(); } catch { return; }
    drawList();
  }, 150);
}

/** Puts a history page in its conversation: messages, notices, and the receipts among them. */
function merge(c, page) {
  for (const f of page.messages) {
    stored({ ...f, conv: f.conv || c.name }, false);
    // Receipts take places in a page too: the next page is before the first entry, shown or not.
    if (f.seq !== undefined && (c.oldest === undefined || f.seq < c.oldest)) c.oldest = f.seq;
  }
}

/** The latest page of a conversation (once; again after a gap). */
function loadLatest(c, again = false) {
  if (c.loaded && !again) return Promise.resolve();
  if (c.loading) return c.loading;
  c.loading = (async () => {
    try {
      const page = await app.api.page(c.name);
      merge(c, page);
      c.more = page.more;
      c.loaded = true;
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      c.loaded = true; // a chat not started yet
      c.more = false;
    } finally {
      c.loading = null;
    }
    drawLater(c.name);
  })();
  return c.loading;
}

/** The page before the oldest one shown, when the thread is scrolled to its top. */
async function loadOlder(c) {
  if (!c.more || c.loading || c.oldest === undefined) return;
  c.loading = (async () => {
    try {
      const page = await app.api.page(c.name, { before: c.oldest });
      merge(c, page);
      c.more = page.more;
    } finally {
      c.loading = null;
    }
  })();
  const box = $('messages');
  const fromBottom = box.scrollHeight - box.scrollTop;
  await c.loading.catch(() => {});
  if (!app || app.open !== c.name) return; // another thread is shown now
  drawThread();
  box.scrollTop = box.scrollHeight - fromBottom;
}

// ---------------------------------------------------------------- sending

/**
 * Sends a message in a conversation through the outbox: kept until the server acks it, resent
 * under the same id after a drop or a reload. `silent` entries (receipts) are not shown;
 * `direct` ones are sent only if the connection is open, and not kept.
 */
function send(convName, what, { silent = false, direct = false } = {}) {
  const f = frame(app.session.user, convName, what);
  if (direct) {
    app.conn.send(f);
    return null;
  }
  const c = conv(convName);
  const entry = { conv: convName, frame: f, silent, afterSeq: c.lastSeq };
  app.outbox.add(entry);
  if (!silent) {
    showOutgoing(entry);
    app.tabs.post({ sent: entry });
  }
  if (app.conn.send(f)) markSending(entry);
  return entry;
}

function showOutgoing(entry) {
  const c = conv(entry.conv);
  const f = entry.frame;
  put(c, {
    id: f.id, from: app.session.user, seq: undefined, afterSeq: entry.afterSeq, at: f.meta.createdAt,
    channel: c.channel, text: f.body.text || '', attachment: f.body.attachment || null,
    state: app.conn && app.conn.open ? 'sending' : 'queued', readBy: new Set(),
  });
  c.lastAt = Math.max(c.lastAt, f.meta.createdAt);
  drawLater(c.name);
}

function ownItem(entry) {
  return app.convs.get(entry.conv)?.items.get(`${app.session.user}/${entry.frame.id}`);
}

function markSending(entry) {
  const item = ownItem(entry);
  if (item && item.state === 'queued') {
    item.state = 'sending';
    drawLater(entry.conv);
  }
}

/** Everything in the outbox, in the order it was typed, each time a connection opens. */
function flushOutbox() {
  for (const entry of app.outbox.entries) {
    if (app.conn.send(entry.frame)) markSending(entry);
  }
}

function onServerAck(f) {
  const entry = app.outbox.take(f.id);
  if (!entry) return;
  acked(entry);
  if (!entry.silent) app.tabs.post({ acked: entry });
}

function acked(entry) {
  const item = ownItem(entry);
  if (item && (STATE_RANK[item.state] ?? 0) < STATE_RANK.sent) {
    item.state = 'sent';
    drawLater(entry.conv);
  }
}

/** What another tab of this device did: sent a message, had it acked, read a thread. */
function fromTab(m) {
  if (!app) return;
  if (m.sent) showOutgoing(m.sent);
  else if (m.acked) acked(m.acked);
  else if (m.read) readUpTo(m.read[0], m.read[1]);
}

let retryTimer = null;

/** Sends the outbox again in a moment (what a refusal asked to be sent again). */
function retrySoon(ms) {
  retryTimer ??= setTimeout(() => { retryTimer = null; if (app && app.conn) flushOutbox(); }, ms);
}

/**
 * A refused frame: one the server asks to have again (it could not take it, or it came too
 * fast: the refusal then names no id) stays in the outbox and goes again shortly; anything
 * else is not sent, and says why.
 */
function onErrorFrame(f) {
  if (!f.id || /send it again/.test(f.error)) {
    retrySoon(f.id ? 2_000 : 1_000);
    return;
  }
  const entry = app.outbox.take(f.id);
  const item = entry && ownItem(entry);
  if (item) {
    item.state = 'failed';
    item.error = f.error;
    drawLater(entry.conv);
  } else if (!entry || !entry.silent) {
    flash(`The server refused a message: ${f.error}`);
  }
}

// ---------------------------------------------------------------- reading and typing

/** Whether the user can see this conversation's thread now. */
function readable(c) {
  return app.open === c.name && document.visibilityState === 'visible';
}

/** Marks what others wrote as read, if the thread is in view: one READ receipt naming them. */
function readIfShown(c) {
  if (!readable(c)) return;
  if (c.left) { // the group would refuse a receipt: read here only
    if (c.unread !== 0) { c.unread = 0; drawList(); }
    return;
  }
  const unseen = sorted(c).filter((i) => !i.notice && i.from !== app.session.user && i.seq !== undefined && i.seq > c.readSeq);
  if (unseen.length === 0) {
    if (c.unread !== 0 && c.loaded) { c.unread = 0; drawList(); }
    return;
  }
  send(c.name, { body: { ids: unseen.map((i) => i.id), state: 'READ' }, action: 'state', contentType: 'state' }, { silent: true });
  c.readSeq = unseen[unseen.length - 1].seq;
  c.unread = 0;
  app.tabs.post({ read: [c.name, c.readSeq] });
  drawList();
}

/** Another device of ours read `conv` up to `seq` (PROTOCOL §7). */
function onRead(f) {
  const name = f.conv || f.body.conv;
  const seq = Number(f.seq ?? f.body.seq);
  if (name && Number.isFinite(seq)) readUpTo(name, seq);
}

/** `name` was read up to `seq` elsewhere: another device, or another tab of this one. */
function readUpTo(name, seq) {
  const c = conv(name);
  if (seq <= c.readSeq) return;
  c.readSeq = seq;
  const after = sorted(c).filter((i) => !i.notice && i.from !== app.session.user && i.seq > seq);
  if (c.loaded && seq >= c.lastSeq) c.unread = 0;
  else if (c.loaded) c.unread = after.length;
  refreshConversations(); // the server's count, for what this page has not loaded
  drawList();
}

function onTyping(f) {
  const me = app.session.user;
  if (f.from === me) return;
  const name = f.channel === 'group' ? `group:${f.to}` : `chat:${f.from}`;
  const c = conv(name);
  if (f.body.typing === true) c.typing.set(f.from, Date.now() + TYPING_SHOWN_MS);
  else c.typing.delete(f.from);
  drawTyping(c);
  setTimeout(() => drawTyping(c), TYPING_SHOWN_MS + 50);
}

function typers(c) {
  const now = Date.now();
  for (const [u, until] of c.typing) if (until <= now) c.typing.delete(u);
  return [...c.typing.keys()];
}

const typing = { sentAt: 0, conv: null, idle: null };

/** Tells the other side we are typing: at most every 3 s, and that we stopped after 4 s idle. */
function typed() {
  const c = app.open && app.convs.get(app.open);
  if (!c || c.left) return;
  const now = Date.now();
  if (typing.conv !== c.name || now - typing.sentAt > TYPING_EVERY_MS) {
    send(c.name, { body: { typing: true }, action: 'typing', ephemeral: true }, { direct: true });
    typing.sentAt = now;
    typing.conv = c.name;
  }
  clearTimeout(typing.idle);
  typing.idle = setTimeout(stoppedTyping, TYPING_IDLE_MS);
}

function stoppedTyping() {
  clearTimeout(typing.idle);
  if (typing.conv) send(typing.conv, { body: { typing: false }, action: 'typing', ephemeral: true }, { direct: true });
  typing.conv = null;
  typing.sentAt = 0;
}

function onPresence(f) {
  const u = f.body.username || f.from;
  app.presence.set(u, { online: f.body.online === true, lastSeen: f.body.lastSeen ?? null });
  if (app.open === `chat:${u}`) drawThreadHeader();
}

// ---------------------------------------------------------------- the socket

function onFrame(f) {
  switch (f.type) {
    case 'error': return onErrorFrame(f);
    case 'SERVER_ACK': return onServerAck(f);
    case 'CLIENT_ACK': return undefined;
    default: break;
  }
  if (f.type === 'NOTIFICATION' && f.ephemeral) {
    if (f.action === 'read') onRead(f);
    else if (f.action === 'presence') onPresence(f);
    else if (f.action === 'gap' && f.conv) {
      flash('Some messages were removed before this device received them; reloading the conversation.');
      loadLatest(conv(f.conv), true);
    }
    return undefined;
  }
  if (f.ephemeral) {
    if (f.action === 'typing') onTyping(f);
    return undefined;
  }
  const item = stored(f, true);
  app.conn.ack(f);
  const name = f.conv;
  if (name) {
    const c = conv(name);
    if (item && app.open === name) readIfShown(c);
    drawLater(name);
  }
  return undefined;
}

function onConnection(state, wait) {
  const banner = $('banner');
  if (state === 'open') {
    banner.hidden = true;
    document.body.classList.remove('offline');
    return;
  }
  if (state === 'offline') {
    document.body.classList.add('offline');
    banner.hidden = false;
    $('banner-text').textContent = `You are offline. Reconnecting in ${Math.ceil(wait / 1000)} s…`;
    $('retry').hidden = false;
    for (const c of app.convs.values()) {
      for (const i of c.items.values()) if (i.state === 'sending') i.state = 'queued';
    }
    drawThread();
  } else if (document.body.classList.contains('offline')) {
    $('banner-text').textContent = 'Reconnecting…';
    $('retry').hidden = true;
  }
}

async function onOpened() {
  flushOutbox();
  // What changed while away: new conversations, groups, read positions.
  try {
    await Promise.all([loadGroups(), loadConversations()]);
  } catch { /* the socket is what matters; the list catches up on the next change */ }
  drawList();
  drawThreadHeader();
  // A thread read before the socket opened may lack what another tab of this device acked
  // meanwhile (the server owes the device nothing for it): read on from the last seq shown.
  await Promise.all([...app.convs.values()].filter((c) => c.loaded).map((c) => catchUp(c).catch(() => {})));
}

async function catchUp(c) {
  let known = 0;
  for (const i of c.items.values()) if (i.seq > known) known = i.seq;
  for (let more = known < c.lastSeq; more;) {
    const page = await app.api.page(c.name, { after: known });
    merge(c, page);
    for (const f of page.messages) if (f.seq > known) known = f.seq;
    more = page.more && page.messages.length > 0;
  }
  drawLater(c.name);
  readIfShown(c);
}

const ENDED = 'Your session has ended. Log in again: what you typed meanwhile will be sent.';

/** A connection refused before it served: an expired or revoked key means signing in again. */
async function onRefused() {
  try {
    await app.api.profile();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signOut(ENDED, { forget: false });
  }
}

// ---------------------------------------------------------------- drawing

const dirty = new Set();
let drawScheduled = false;

/** Draws a conversation's list entry and, if open, its thread, once per frame. */
function drawLater(name) {
  dirty.add(name);
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => {
    drawScheduled = false;
    drawList();
    if (app && dirty.has(app.open)) drawThread();
    dirty.clear();
  });
}

function drawList() {
  if (!app) return;
  const list = $('conversations');
  const convs = [...app.convs.values()]
    .filter((c) => c.lastSeq > 0 || c.items.size > 0 || c.name === app.open || (c.channel === 'group' && app.groups.has(c.peer)))
    .sort((a, b) => b.lastAt - a.lastAt || a.name.localeCompare(b.name));
  // Rebuilt on every change: a keyboard user keeps their place in it.
  const focused = document.activeElement?.closest?.('#conversations li')?.dataset.conv;
  list.replaceChildren(...convs.map((c) => {
    const name = title(c);
    const who = typers(c);
    const line = who.length ? (c.channel === 'group' ? `${who.join(', ')} typing…` : 'typing…') : preview(lastItem(c));
    const button = el('button', { type: 'button', className: 'conv', 'aria-current': String(app.open === c.name) },
      el('span', { className: 'avatar', 'aria-hidden': 'true' }, (c.channel === 'group' ? '#' : '') + name.slice(0, 1).toUpperCase()),
      el('span', { className: 'conv-text' },
        el('span', { className: 'conv-name' }, name),
        el('span', { className: 'conv-last' }, line)),
      c.unread > 0 ? el('span', { className: 'badge' }, String(c.unread), el('span', { className: 'sr-only' }, ' unread')) : null);
    button.addEventListener('click', () => openConv(c.name));
    return el('li', { 'aria-label': name, 'data-conv': c.name }, button);
  }));
  if (focused) [...list.children].find((li) => li.dataset.conv === focused)?.querySelector('button').focus();
  $('no-conversations').hidden = convs.length > 0;
  document.title = totalUnread() > 0 ? `(${totalUnread()}) Samvad` : 'Samvad';
}

function totalUnread() {
  let n = 0;
  for (const c of app.convs.values()) n += c.unread;
  return n;
}

const STATE_LABEL = { queued: 'Queued', sending: 'Sending', sent: 'Sent', delivered: 'Delivered', read: 'Read', failed: 'Not sent' };

function stateLabel(c, i) {
  if (c.channel === 'group' && i.state === 'sent' && i.readBy.size > 0) return `Read by ${[...i.readBy].join(', ')}`;
  if (i.state === 'failed') return `Not sent: ${i.error}`;
  return STATE_LABEL[i.state] || '';
}

/** An item's row, made again only when what it shows changed (a picture is not fetched again). */
function row(c, i) {
  const sig = `${i.state}|${stateLabel(c, i)}|${i.text}`;
  if (!i.el || i.sig !== sig) {
    i.el = drawItem(c, i);
    i.sig = sig;
  }
  return i.el;
}

function drawItem(c, i) {
  if (i.notice) return el('li', { className: 'notice' }, i.text);
  const mine = i.from === app.session.user;
  const body = el('div', { className: 'bubble' });
  if (c.channel === 'group' && !mine) body.append(el('span', { className: 'from' }, i.from));
  else body.append(el('span', { className: 'sr-only' }, mine ? 'You: ' : `${i.from}: `));
  if (i.attachment) body.append(attachment(i.attachment));
  if (i.text) body.append(el('p', { className: 'text' }, i.text));
  const meta = el('span', { className: 'meta' }, el('time', { dateTime: new Date(i.at).toISOString() }, clock(i.at)));
  if (mine) meta.append(' · ', el('span', { className: `state state-${i.state}` }, stateLabel(c, i)));
  body.append(meta);
  return el('li', { className: mine ? 'mine' : 'theirs' }, body);
}

/** Signed download URLs, asked for once per file and again after a minute (they expire). */
function downloadUrl(fileId) {
  const known = app.urls.get(fileId);
  if (known && Date.now() - known.at < 60_000) return known.url;
  const url = app.api.downloadUrl(fileId);
  app.urls.set(fileId, { url, at: Date.now() });
  url.catch(() => app.urls.delete(fileId));
  return url;
}

/** An attachment: an image shown inline, anything else a link; URLs are asked for when drawn. */
function attachment(a) {
  const box = el('div', { className: 'attachment' });
  const isImage = typeof a.contentType === 'string' && a.contentType.startsWith('image/');
  const name = typeof a.name === 'string' ? a.name : 'attachment';
  if (isImage) {
    const img = el('img', { alt: name, className: 'picture' });
    box.append(img);
    downloadUrl(a.fileId).then((url) => { img.src = url; }, () => { img.alt = `${name} (not available)`; });
  } else {
    const link = el('a', { href: '#', className: 'file' }, `⬇ ${name}`);
    link.addEventListener('click', async (ev) => {
      ev.preventDefault();
      try { window.open(await downloadUrl(a.fileId), '_blank', 'noopener'); } catch (e) { flash(e.message); }
    });
    box.append(link);
  }
  return box;
}

function drawThreadHeader() {
  const c = app.open && app.convs.get(app.open);
  $('thread').hidden = !c;
  $('empty-thread').hidden = !!c;
  if (!c) return;
  $('thread-title').textContent = title(c);
  $('members-button').hidden = c.channel !== 'group' || c.left;
  const composer = !c.left;
  $('composer').hidden = !composer;
  $('left-note').hidden = composer;
  drawTyping(c);
}

function drawTyping(c) {
  if (!app || app.open !== c.name) { if (app) drawList(); return; }
  const who = typers(c);
  let line = '';
  if (who.length) line = c.channel === 'group' ? `${who.join(', ')} ${who.length > 1 ? 'are' : 'is'} typing…` : `${who[0]} is typing…`;
  else if (c.channel === 'chat') {
    const p = app.presence.get(c.peer);
    if (p) line = p.online ? 'online' : (p.lastSeen ? `last seen ${clock(p.lastSeen)}` : '');
  } else {
    const g = app.groups.get(c.peer);
    if (g) line = g.members.map((m) => m.username).join(', ');
  }
  // A live region: said again only when it changes.
  if ($('thread-status').textContent !== line) $('thread-status').textContent = line;
  drawList();
}

function drawThread() {
  const c = app.open && app.convs.get(app.open);
  drawThreadHeader();
  if (!c) return;
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const items = sorted(c);
  const rows = items.map((i) => row(c, i));
  if (c.more && c.loaded && c.oldest !== undefined) {
    const older = el('button', { type: 'button', className: 'small' }, 'Load older messages');
    older.addEventListener('click', () => loadOlder(c));
    rows.unshift(el('li', { className: 'notice older' }, older));
  }
  else if (c.loaded && items.length === 0) rows.push(el('li', { className: 'notice' }, 'No messages yet. Say hello!'));
  $('message-list').replaceChildren(...rows);
  if (atBottom || app.stickToBottom) box.scrollTop = box.scrollHeight;
  app.stickToBottom = false;
  // A page of mostly receipts may not fill the box, and then nothing can be scrolled up.
  if (c.more && c.loaded && !c.loading && box.scrollHeight <= box.clientHeight + 60) loadOlder(c);
}

async function openConv(name) {
  const c = conv(name);
  if (app.open !== name) stoppedTyping();
  app.open = name;
  app.stickToBottom = true;
  document.body.classList.add('thread-open');
  if (NARROW.matches && !history.state?.thread) history.pushState({ thread: true }, '');
  drawThread();
  drawList();
  if (FINE_POINTER.matches) $('message').focus(); // a touch keyboard would cover the thread
  if (c.channel === 'chat') {
    app.api.presence([c.peer]).then((p) => {
      if (p[c.peer]) { app.presence.set(c.peer, p[c.peer]); drawThreadHeader(); }
    }, () => {});
  }
  try {
    await loadLatest(c);
  } catch (e) {
    flash(`Could not load the conversation: ${e.message}`);
  }
  app.stickToBottom = true;
  drawThread();
  readIfShown(c);
}

let flashTimer = null;
function flash(text) {
  const f = $('flash');
  f.textContent = text;
  f.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { f.hidden = true; }, 6_000);
}

// ---------------------------------------------------------------- dialogs

function dialogError(id, text) {
  const e = $(id);
  e.textContent = text;
  e.hidden = !text;
}

async function startChat(ev) {
  ev.preventDefault();
  const name = $('chat-user').value.trim();
  if (!name) return;
  if (name === app.session.user) { dialogError('chat-error', 'That is you. Pick someone else.'); return; }
  try {
    const found = await app.api.contacts([name]);
    if (!found[name]) { dialogError('chat-error', `Nobody called ${name} uses Samvad yet.`); return; }
  } catch (e) { dialogError('chat-error', e.message); return; }
  $('chat-dialog').close();
  openConv(`chat:${name}`);
}

function names(text) {
  return [...new Set(text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean))];
}

async function createGroup(ev) {
  ev.preventDefault();
  const name = $('group-name').value.trim();
  const members = names($('group-members').value).filter((u) => u !== app.session.user);
  if (!name) { dialogError('group-error', 'Give the group a name.'); return; }
  try {
    if (members.length) {
      const found = await app.api.contacts(members);
      const missing = members.filter((u) => !found[u]);
      if (missing.length) { dialogError('group-error', `Not on Samvad: ${missing.join(', ')}`); return; }
    }
    const { groupId } = await app.api.createGroup(name, members);
    await loadGroups();
    $('group-dialog').close();
    openConv(`group:${groupId}`);
  } catch (e) { dialogError('group-error', e.message); }
}

function drawMembers() {
  const c = app.convs.get(app.open);
  const g = c && app.groups.get(c.peer);
  if (!g) { $('members-dialog').close(); return; }
  const me = app.session.user;
  const admin = g.members.some((m) => m.username === me && m.role === 'admin');
  $('members-title').textContent = `Members of ${g.name}`;
  $('member-list').replaceChildren(...g.members.map((m) => {
    const li = el('li', { 'aria-label': m.username }, el('span', {}, m.username === me ? `${m.username} (you)` : m.username),
      m.role === 'admin' ? el('span', { className: 'role' }, ' admin') : null);
    if (admin && m.username !== me) {
      const b = el('button', { type: 'button', className: 'small' }, 'Remove');
      b.setAttribute('aria-label', `Remove ${m.username}`);
      b.addEventListener('click', () => removeMember(g.groupId, m.username));
      li.append(b);
    }
    return li;
  }));
}

async function removeMember(groupId, member) {
  try {
    await app.api.removeMember(groupId, member);
    await loadGroups();
    drawMembers();
  } catch (e) { dialogError('members-error', e.message); }
}

async function addMembers(ev) {
  ev.preventDefault();
  const c = app.convs.get(app.open);
  const members = names($('add-members').value);
  if (!c || !members.length) return;
  try {
    const found = await app.api.contacts(members);
    const missing = members.filter((u) => !found[u]);
    if (missing.length) { dialogError('members-error', `Not on Samvad: ${missing.join(', ')}`); return; }
    await app.api.addMembers(c.peer, members);
    $('add-members').value = '';
    dialogError('members-error', '');
    await loadGroups();
    drawMembers();
  } catch (e) { dialogError('members-error', e.message); }
}

async function leaveGroup() {
  const c = app.convs.get(app.open);
  if (!c) return;
  try {
    await app.api.removeMember(c.peer, app.session.user);
    $('members-dialog').close();
    c.left = true;
    await loadGroups();
    drawThread();
    drawList();
  } catch (e) { dialogError('members-error', e.message); }
}

// ---------------------------------------------------------------- composing

function submitMessage(ev) {
  ev.preventDefault();
  const box = $('message');
  const text = box.value.trim();
  const c = app.open && app.convs.get(app.open);
  if (!text || !c || c.left) return;
  stoppedTyping();
  app.stickToBottom = true;
  send(c.name, { body: { text } });
  box.value = '';
  box.focus();
}

async function attach() {
  const input = $('file');
  const file = input.files && input.files[0];
  input.value = '';
  const c = app.open && app.convs.get(app.open);
  if (!file || !c) return;
  $('upload-status').textContent = `Uploading ${file.name}…`;
  const caption = $('message').value.trim(); // what was typed for this thread, not the next
  $('message').value = '';
  try {
    const { fileId, contentType } = await app.api.upload(file);
    app.stickToBottom = true;
    send(c.name, { body: { text: caption, attachment: { fileId, name: file.name, contentType, size: file.size } }, contentType: 'attachment' });
    $('upload-status').textContent = '';
  } catch (e) {
    $('upload-status').textContent = '';
    flash(`Could not send ${file.name}: ${e.message}`);
  }
}

// ---------------------------------------------------------------- notifications (Web Push)

function b64urlBytes(s) {
  const t = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  return Uint8Array.from(t, (ch) => ch.charCodeAt(0));
}

/** Shows "Turn on notifications" when the server has Web Push and the browser can do it. */
async function offerPush() {
  const button = $('push-button');
  button.hidden = true;
  if (!('serviceWorker' in navigator) || !('PushManager' in window) || !window.isSecureContext) return;
  try { app.vapid = (await app.api.vapidKey()).publicKey; } catch { return; } // 404: none configured
  button.hidden = (await pushToken()) !== '';
}

/** This browser's push subscription as a login's notificationToken, or '' without one. */
async function pushToken() {
  try {
    const reg = 'serviceWorker' in navigator && await navigator.serviceWorker.getRegistration('/');
    const sub = reg && await reg.pushManager.getSubscription();
    return sub ? JSON.stringify(sub) : '';
  } catch {
    return '';
  }
}

/** Subscribes this browser and logs in again with the subscription as the device's token. */
async function enablePush() {
  try {
    if ((await Notification.requestPermission()) !== 'granted') { flash('Notifications are blocked for this site.'); return; }
    await navigator.serviceWorker.register('/sw.js');
    const reg = await navigator.serviceWorker.ready;
    const key = b64urlBytes(app.vapid);
    const old = await reg.pushManager.getSubscription();
    const sameKey = old && old.options.applicationServerKey
      && new Uint8Array(old.options.applicationServerKey).join() === key.join();
    if (old && !sameKey) await old.unsubscribe(); // made for a key the server no longer has
    const sub = (sameKey && old) || await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    const token = sessionStorage.getItem('samvad.authToken') || '';
    const session = await logIn(app.session.user, token, JSON.stringify(sub));
    app.session.key = session.key;
    $('push-button').hidden = true;
    flash('Notifications are on for this browser.');
  } catch (e) {
    flash(e instanceof ApiError && e.status === 401 ? 'Log out and in again to turn on notifications.' : `Notifications could not be turned on: ${e.message}`);
  }
}

// ---------------------------------------------------------------- signing in and out

async function start(session) {
  app = {
    session, api: api(session), outbox: new Outbox(session),
    convs: new Map(), groups: new Map(), groupNames: savedGroupNames(session), presence: new Map(),
    open: null, conn: null, stickToBottom: false, tabs: tabs(session, fromTab), urls: new Map(),
  };
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  $('me').textContent = session.user;
  document.body.classList.remove('thread-open');
  try {
    await loadGroups();
    await loadConversations();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { signOut(ENDED, { forget: false }); return; }
    flash(`Could not load your conversations: ${e.message}`);
  }
  for (const entry of app.outbox.entries) if (!entry.silent) showOutgoing(entry);
  drawList();
  drawThreadHeader();
  app.conn = new Connection(session, { frame: onFrame, state: onConnection, opened: onOpened, refused: onRefused });
  app.conn.connect();
  const recent = [...app.convs.values()].sort((a, b) => b.lastAt - a.lastAt).slice(0, PREVIEWS);
  await Promise.all(recent.map((c) => loadLatest(c).catch(() => {})));
  drawList();
  offerPush().catch(() => {});
}

/**
 * Signs out and starts the page afresh (no timer or request of the session outlives it).
 * Logging out ends the device's session on the server (its key stops working everywhere) and
 * forgets what the browser kept; a session the server ended keeps the outbox, sent once the
 * user logs in again.
 */
async function signOut(message = '', { forget = true } = {}) {
  if (app && forget) {
    // Best effort: a server out of reach still gets the browser's side of the logout.
    await api(app.session).call('POST', '/v1.0/logout').catch(() => {});
  }
  if (app) {
    if (app.conn) app.conn.close();
    app.tabs.close();
    logOut(app.session, { keepOutbox: !forget });
    if (forget) localStorage.removeItem(namesKey(app.session));
  }
  app = null;
  sessionStorage.removeItem('samvad.authToken');
  if (message) sessionStorage.setItem('samvad.notice', message);
  location.reload();
}

async function submitLogin(ev) {
  ev.preventDefault();
  const username = $('username').value.trim();
  const token = $('token').value.trim();
  if (!username) return;
  $('login-button').disabled = true;
  try {
    const session = await logIn(username, token, await pushToken());
    sessionStorage.setItem('samvad.authToken', token);
    $('login-error').hidden = true;
    await start(session);
  } catch (e) {
    const text = e instanceof ApiError && e.status === 401
      ? 'That sign-in token was refused. This server checks tokens: paste the ID token from your identity provider.'
      : e.message;
    $('login-error').textContent = text;
    $('login-error').hidden = false;
  } finally {
    $('login-button').disabled = false;
  }
}

function closeThread() {
  stoppedTyping();
  app.open = null;
  document.body.classList.remove('thread-open');
  drawThreadHeader();
  drawList();
}

function wire() {
  $('login-form').addEventListener('submit', submitLogin);
  $('logout').addEventListener('click', () => signOut());
  $('retry').addEventListener('click', () => app && app.conn.retryNow());
  $('composer').addEventListener('submit', submitMessage);
  $('message').addEventListener('input', typed);
  $('message').addEventListener('keydown', (ev) => {
    // On a touch screen Enter is a new line; the Send button sends.
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && FINE_POINTER.matches) submitMessage(ev);
  });
  $('file').addEventListener('change', attach);
  $('back').addEventListener('click', () => {
    if (history.state?.thread) history.back(); // closes the thread, on popstate
    else closeThread();
  });
  addEventListener('popstate', () => { if (app && app.open) closeThread(); });
  $('messages').addEventListener('scroll', () => {
    const c = app && app.open && app.convs.get(app.open);
    if (c && $('messages').scrollTop < 60) loadOlder(c);
  });
  $('new-chat').addEventListener('click', () => {
    $('chat-user').value = '';
    dialogError('chat-error', '');
    $('chat-dialog').showModal();
  });
  $('chat-form').addEventListener('submit', startChat);
  $('new-group').addEventListener('click', () => {
    $('group-name').value = '';
    $('group-members').value = '';
    dialogError('group-error', '');
    $('group-dialog').showModal();
  });
  $('group-form').addEventListener('submit', createGroup);
  $('members-button').addEventListener('click', () => {
    dialogError('members-error', '');
    drawMembers();
    $('members-dialog').showModal();
  });
  $('add-form').addEventListener('submit', addMembers);
  $('leave').addEventListener('click', leaveGroup);
  for (const b of document.querySelectorAll('[data-close]')) {
    b.addEventListener('click', () => b.closest('dialog').close());
  }
  $('push-button').addEventListener('click', enablePush);
  document.addEventListener('visibilitychange', () => {
    const c = app && app.open && app.convs.get(app.open);
    if (c) readIfShown(c);
  });
  // Logging out in one tab logs out the others.
  addEventListener('storage', (ev) => {
    if (ev.key === 'samvad.session' && ev.newValue === null && app) signOut();
  });
}

wire();
deviceId();
const saved = savedSession();
if (saved && saved.device === deviceId()) start(saved);
else {
  const notice = sessionStorage.getItem('samvad.notice');
  sessionStorage.removeItem('samvad.notice');
  $('login-error').textContent = notice || '';
  $('login-error').hidden = !notice;
  $('login-view').hidden = false;
  $('username').focus();
}

