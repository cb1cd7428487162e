// Samvad's service worker: shows a notification for each Web Push the server sends while the
// page's user is offline. The push's data is {"message": ...}: the chat message in v2.1 JSON
// text (the page logs in with messageVersion 2.1), or base64 of the v3 bytes for v3 devices.
// Served at /sw.js so that its scope is the whole site.
"use strict";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function describe(data) {
  let m = null;
  try { m = JSON.parse(data.message); } catch (_) { /* v3 (base64) or not JSON: say little */ }
  if (!m || typeof m !== "object") return { title: "Samvad", body: "New message", tag: undefined };
  const head = m.head || {};
  const body = m.body || {};
  const from = head.from || m.from || "someone";
  const group = head.type === "group" || m.chatType === "group";
  const text = typeof body.text === "string" ? body.text : typeof m.text === "string" ? m.text : "New message";
  return {
    title: group ? `${from} in a group` : from,
    body: text.length > 200 ? text.slice(0, 199) + "…" : text,
    tag: m.id ? `samvad-${from}-${m.id}` : undefined,
  };
}

self.addEventListener("push", (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch (_) { data = {}; }
  const n = describe(data);
  // Every push shows a notification: browsers require it of subscriptions made with
  // userVisibleOnly, and it is the point of the push.
  event.waitUntil(self.registration.showNotification(n.title, { body: n.body, tag: n.tag, data: { url: "/" } }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const w of windows) {
      if (new URL(w.url).origin === self.location.origin && "focus" in w) return w.focus();
    }
    return self.clients.openWindow("/");
  })());
});
