// Samvad's chat client, without the page: the session, the REST calls, the v2.1 frames, the
// WebSocket that reconnects by itself, and the outbox that keeps what was typed until the
// server has acked it. app.js draws the page from what this reports.

/** Where a browser keeps what outlives a reload. */
const KEYS = {
  device: 'samvad.device',
  session: 'samvad.session',
  outbox: (user, device) => `samvad.outbox.${user}.${device}`,
};

/** The longest wait between two reconnection attempts, and the first. */
const BACKOFF_MAX_MS = 30_000;
const BACKOFF_FIRST_MS = 500;
/** Clients send `ping` every 30 s (PROTOCOL §4); an answer later than this means a dead link. */
const PING_EVERY_MS = 30_000;
const PONG_WITHIN_MS = 10_000;

/** A fresh id, unique per sender: the outbox resends a message under the same one. */
export function newId() {
  return crypto.randomUUID();
}

/** This browser's device id: made once, kept across log-outs, so a browser is one device. */
export function deviceId() {
  let id = localStorage.getItem(KEYS.device);
  if (!id) {
    id = `web-${newId()}`;
    localStorage.setItem(KEYS.device, id);
  }
  return id;
}

/** The signed-in user ({user, key, device}) from an earlier visit, or null. */
export function savedSession() {
  try {
    const s = JSON.parse(localStorage.getItem(KEYS.session));
    return s && typeof s.user === 'string' && typeof s.key === 'string' ? s : null;
  } catch {
    return null;
  }
}

/** An HTTP answer that was not 2xx: `status` and the server's `error` text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function request(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers }, credentials: 'omit' };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'the server cannot be reached');
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the status */ }
  if (!res.ok) {
    throw new ApiError(res.status, (json && json.error) || `${res.status} ${res.statusText}`);
  }
  return json;
}

/**
 * Logs in (PROTOCOL §1) as this browser's device and keeps the session. With the dev provider
 * any token will do; an empty one is sent as `dev`.
 */
export async function logIn(username, authToken, notificationToken = '') {
  const device = deviceId();
  const answer = await request('POST', '/v1.0/login', {
    username, authToken: authToken || 'dev', notificationToken, deviceId: device, messageVersion: 2.1,
  });
  const session = { user: answer.username, key: answer.accesskey, device };
  localStorage.setItem(KEYS.session, JSON.stringify(session));
  return session;
}

/** Forgets the session, and the outbox unless `keepOutbox` (what was not sent is not sent). */
export function logOut(session, { keepOutbox = false } = {}) {
  localStorage.removeItem(KEYS.session);
  if (session && !keepOutbox) localStorage.removeItem(KEYS.outbox(session.user, session.device));
}

/** The REST calls of a session. */
export function api(session) {
  const auth = { authorization: `Bearer ${session.key}` };
  const call = (method, path, body) => request(method, path, body, auth);
  const conv = (c) => encodeURIComponent(c);
  return {
    call,
    conversations: () => call('GET', '/v1.0/conversations'),
    /** A page of a conversation, decoded: `{messages, more}`, oldest first. */
    async page(c, { before, after, limit = 100 } = {}) {
      const q = new URLSearchParams({ limit: String(limit) });
      if (before !== undefined) q.set('before', String(before));
      if (after !== undefined) q.set('after', String(after));
      const p = await call('GET', `/v1.0/conversations/${conv(c)}/messages?${q}`);
      return { messages: p.messages.map((s) => decode(s)).filter(Boolean), more: p.more };
    },
    groups: () => call('GET', '/v1.0/groups/'),
    createGroup: (name, members) => call('POST', '/v1.0/groups/', { name, members }),
    addMembers: (id, members) => call('POST', `/v1.0/groups/${encodeURIComponent(id)}/members`, { members }),
    removeMember: (id, member) => call('DELETE', `/v1.0/groups/${encodeURIComponent(id)}/members`, { member }),
    /** Which of these users exist. */
    contacts: (users) => call('POST', '/v1.0/contactbook/sync', { users }),
    presence: (users) => call('GET', `/v1.0/presence?users=${users.map(encodeURIComponent).join(',')}`),
    profile: () => call('GET', '/v1.0/profile/'),
    vapidKey: () => request('GET', '/v1.0/push/vapid'),
    /** Uploads a file through a presigned URL and marks it; resolves with its fileId. */
    async upload(file) {
      const ext = (file.name.match(/\.[A-Za-z0-9]+$/) || [''])[0];
      if (!ext) throw new ApiError(400, 'the file needs an extension, such as .png');
      const slot = await call('GET', `/v1.0/assets/upload/presigned_url?ext=${encodeURIComponent(ext)}&category=chat`);
      if (file.size > slot.maxBytes) throw new ApiError(413, `files may be at most ${slot.maxBytes} bytes`);
      let put;
      try {
        put = await fetch(slot.url, { method: 'PUT', body: file, headers: { 'content-type': slot.contentType } });
      } catch {
        throw new ApiError(0, 'the upload did not reach the server');
      }
      if (!put.ok) throw new ApiError(put.status, `the upload was refused (${put.status})`);
      await call('PUT', `/v1.0/assets/${encodeURIComponent(slot.fileId)}/status`, { status: true });
      return { fileId: slot.fileId, contentType: slot.contentType };
    },
    downloadUrl: async (fileId) => (await call('GET', `/v1.0/assets/download/${encodeURIComponent(fileId)}/presigned_url`)).url,
  };
}

/** A conversation's peer or group id and channel, from its name (`chat:bob`, `group:g1`). */
export function target(conv) {
  const at = conv.indexOf(':');
  const kind = conv.slice(0, at);
  return { to: conv.slice(at + 1), channel: kind === 'group' ? 'group' : 'chat' };
}

/**
 * A server frame (v2.1 text) as the page uses it, or null for what is not one: `{id, type,
 * channel, from, to, conv, seq, action, ephemeral, body, meta, at}`; `type` is `SERVER_ACK`,
 * `CLIENT_ACK`, `NOTIFICATION`, `MESSAGE`… and `error` for an error frame.
 */
export function decode(text) {
  let f;
  try { f = JSON.parse(text); } catch { return null; }
  if (!f || typeof f !== 'object') return null;
  if (typeof f.error === 'string' && !f.head) return { type: 'error', id: f.id, error: f.error };
  const head = f.head;
  if (!head || typeof head !== 'object') return null;
  const meta = f.meta && typeof f.meta === 'object' ? f.meta : {};
  const known = ['SERVER_ACK', 'CLIENT_ACK', 'NOTIFICATION', 'CUSTOM', 'MESSAGE'];
  const type = known.includes(String(head.contentType).toUpperCase()) ? String(head.contentType).toUpperCase() : 'MESSAGE';
  const seq = meta.seq === undefined ? undefined : Number(meta.seq);
  return {
    id: String(f.id),
    type,
    channel: head.type === 'group' ? 'group' : 'chat',
    from: head.from,
    to: head.to,
    conv: typeof meta.conv === 'string' ? meta.conv : undefined,
    seq: Number.isFinite(seq) ? seq : undefined,
    action: head.action || meta.action,
    ephemeral: head.ephemeral === true,
    body: f.body && typeof f.body === 'object' ? f.body : {},
    meta,
    at: Number(meta.serverTimestamp || meta.createdAt) || Date.now(),
  };
}

/** A v2.1 frame from `from` in conversation `conv`. */
export function frame(from, conv, { id = newId(), body, action, ephemeral = false, contentType = 'text', meta = {} }) {
  const { to, channel } = target(conv);
  const head = { type: channel, to, from, contentType, ephemeral };
  if (channel === 'group') head.chatid = to;
  if (action) head.action = action;
  return { _v: 2.1, id, head, meta: { createdAt: Date.now(), ...meta }, body };
}

/** The cumulative CLIENT_ACK (PROTOCOL §7) of everything in `conv` up to `seq`. */
function ackFrame(from, id, conv, seq) {
  return { _v: 2.1, id, head: { type: 'chat', to: 'server', from, contentType: 'CLIENT_ACK', ephemeral: true }, meta: { conv, seq } };
}

/**
 * What was typed and not yet acked by the server, kept in the browser's storage so that a
 * reload or a dropped connection loses nothing: each entry is resent, under its own id, every
 * time the connection opens, until its SERVER_ACK (the server drops a repeat). Read from
 * storage on every use: the tabs of one browser (one device) share it.
 */
export class Outbox {
  constructor(session) {
    this.key = KEYS.outbox(session.user, session.device);
  }
  get entries() {
    try { return JSON.parse(localStorage.getItem(this.key)) || []; } catch { return []; }
  }
  add(entry) {
    const all = this.entries;
    all.push(entry);
    localStorage.setItem(this.key, JSON.stringify(all));
  }
  /** Removes the entry with this id; returns it, or undefined. */
  take(id) {
    const all = this.entries;
    const i = all.findIndex((e) => e.frame.id === id);
    if (i < 0) return undefined;
    const [e] = all.splice(i, 1);
    localStorage.setItem(this.key, JSON.stringify(all));
    return e;
  }
}

/**
 * What one tab tells the other tabs of its device, which the server does not (it never sends a
 * device what it sent itself): `{sent: entry}`, `{acked: id}`, `{read: [conv, seq]}`.
 */
export function tabs(session, handle) {
  if (typeof BroadcastChannel !== 'function') return { post() {}, close() {} };
  const channel = new BroadcastChannel(`samvad.${session.user}.${session.device}`);
  channel.onmessage = (ev) => handle(ev.data);
  return { post: (m) => channel.postMessage(m), close: () => channel.close() };
}

/**
 * The WebSocket (`format=text`, `ack=true`, `sync=true`, `presence=true`) of a session, opened
 * again after every drop, with exponential backoff and full jitter. `handlers`: `frame(f)` for
 * each decoded frame, `state(s, detail)` with `connecting`, `open` or `offline` (detail: the
 * ms until the next attempt), and `opened()` each time a connection serves.
 */
export class Connection {
  constructor(session, handlers) {
    this.session = session;
    this.handlers = handlers;
    this.attempt = 0;
    this.ws = null;
    this.stopped = false;
    this.timer = null;
    this.pinger = null;
    this.pongDue = null;
    this.pendingAcks = new Map(); // conv → {id, seq}
    this.ackTimer = null;
    this.onOnline = () => this.retryNow();
    addEventListener('online', this.onOnline);
    // A reload or a closed tab would otherwise drop the acks of the last 100 ms, and the server
    // would send those messages again.
    this.onHide = () => this.flushAcks();
    addEventListener('pagehide', this.onHide);
  }

  get open() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN; }

  connect() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.handlers.state('connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${proto}//${location.host}/v1.0/wss/?format=text&ack=true&sync=true&presence=true`;
    const ws = new WebSocket(url, [`accesskey.${this.session.key}`]);
    this.ws = ws;
    let served = false;
    ws.onopen = () => {
      this.handlers.state('open');
      this.ping();
      this.pinger = setInterval(() => this.ping(), PING_EVERY_MS);
      this.handlers.opened();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      if (ev.data === 'pong') {
        clearTimeout(this.pongDue);
        if (!served) { served = true; this.attempt = 0; }
        return;
      }
      const f = decode(ev.data);
      if (f) this.handlers.frame(f);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.pinger);
      clearTimeout(this.pongDue);
      if (this.stopped) return;
      if (!served) this.handlers.refused?.(ev);
      const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
      this.attempt = Math.min(this.attempt + 1, 16);
      const wait = Math.max(250, Math.random() * ceiling);
      this.handlers.state('offline', wait);
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  /** `ping` (PROTOCOL §4); no `pong` within 10 s and the link is taken for dead. */
  ping() {
    if (!this.open) return;
    this.ws.send('ping');
    clearTimeout(this.pongDue);
    this.pongDue = setTimeout(() => this.ws && this.ws.close(4000, 'no pong'), PONG_WITHIN_MS);
  }

  retryNow() {
    if (this.stopped || this.ws) return;
    this.attempt = 0;
    this.connect();
  }

  /** Sends a frame if the connection is open; false if not (the outbox will resend it). */
  send(f) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(f));
    return true;
  }

  /** Acks a stored message; acks of one conversation within 100 ms go as one cumulative ack. */
  ack(f) {
    if (!f.conv || f.seq === undefined) {
      this.send({ _v: 2.1, id: f.id, head: { type: 'chat', to: 'server', from: this.session.user, contentType: 'CLIENT_ACK', ephemeral: true }, meta: {} });
      return;
    }
    const known = this.pendingAcks.get(f.conv);
    if (!known || known.seq < f.seq) this.pendingAcks.set(f.conv, { id: f.id, seq: f.seq });
    if (!this.ackTimer) this.ackTimer = setTimeout(() => this.flushAcks(), 100);
  }

  /** Sends the acks waiting for their batch now (before the page goes away, say). */
  flushAcks() {
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
    for (const [conv, { id, seq }] of this.pendingAcks) {
      // Unsent, the device still owes them: the server sends them again on the next open.
      this.send(ackFrame(this.session.user, id, conv, seq));
    }
    this.pendingAcks.clear();
  }

  close() {
    this.flushAcks();
    this.stopped = true;
    clearTimeout(this.timer);
    removeEventListener('online', this.onOnline);
    removeEventListener('pagehide', this.onHide);
    if (this.ws) this.ws.close(1000, 'log out');
    this.ws = null;
    clearInterval(this.pinger);
    clearTimeout(this.pongDue);
  }
}
