// The wedding page's service worker: the page keeps working at a venue with no signal.
//
// Served by the application at /sw.js (web/views.py `service_worker`), which puts
// `self.WEDSYNC_OFFLINE = {version, shell}` in front of this file: the URLs of the page's
// stylesheet, icon and modules (content-hashed names in production) and a version made
// from their content. Registered by wedding.js with the scope /weddings/.
//
// - The shell is cached when the worker installs, in `wedsync-shell-<version>`, and
//   served from there first (its names are hashed: a file never changes under its name).
//   A release brings another version: the new worker caches the new shell, deletes the
//   old shell's cache, fetches the kept pages again (they name the old files; one that
//   cannot be fetched is dropped) and takes over the open pages at once.
// - A wedding page (/weddings/<id>/) and its state (/weddings/<id>/state) come from the
//   network first; each answer is kept in `wedsync-pages` (one copy per URL, replaced by
//   the next). With no network the last copy is served, marked with
//   `data-offline-copy="<when it was kept>"` on its <body>, so the page knows it is not
//   fresh. The page itself keeps its latest state there too (wedding.js), under the
//   state's URL.
// - Nothing else is touched: POSTs, the API, the WebSocket, other pages.
// - Signing out clears it all (the `Clear-Site-Data` header of the sign-out responses).
//
// Each concern is one listener; another (a `push` handler) is added beside them.

const CONFIG = self.WEDSYNC_OFFLINE || { version: "dev", shell: [] };
const SHELL_PREFIX = "wedsync-shell-";
const SHELL_CACHE = SHELL_PREFIX + CONFIG.version;
const PAGES_CACHE = "wedsync-pages";
const PAGE = /^\/weddings\/[1-9][0-9]*\/$/;
const STATE = /^\/weddings\/[1-9][0-9]*\/state$/;
// Set on a kept copy, read back when it is served offline.
const KEPT_AT = "X-WedSync-Kept-At";

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(SHELL_CACHE)
      .then((cache) => cache.addAll(CONFIG.shell))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) =>
        Promise.all(
          names
            .filter((name) => name.startsWith(SHELL_PREFIX) && name !== SHELL_CACHE)
            .map((name) => caches.delete(name)),
        ),
      )
      .then(refreshPages)
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (CONFIG.shell.includes(url.pathname)) {
    event.respondWith(shellFirst(request));
  } else if (PAGE.test(url.pathname)) {
    event.respondWith(networkFirst(request, true));
  } else if (STATE.test(url.pathname)) {
    event.respondWith(networkFirst(request, false));
  }
});

/** A shell file from the shell's cache, else the network (and kept for next time). */
async function shellFirst(request) {
  const cache = await caches.open(SHELL_CACHE);
  const kept = await cache.match(request, { ignoreSearch: true });
  if (kept) return kept;
  const response = await fetch(request);
  if (response.ok) await cache.put(request, response.clone());
  return response;
}

/** The network's answer, kept; without a network the last kept copy. */
async function networkFirst(request, isPage) {
  const cache = await caches.open(PAGES_CACHE);
  const key = new URL(request.url);
  key.search = "";
  let response;
  try {
    response = await fetch(request);
  } catch (err) {
    const kept = await cache.match(key.href);
    if (!kept) throw err;
    return isPage ? marked(kept) : kept;
  }
  await keep(cache, key.href, response);
  return response;
}

/** Keep a copy of an answer, with when it was kept. Only a page or state the server
 * gave this user (not a redirect to sign in, a 404 or a 503) replaces the kept one. */
async function keep(cache, url, response) {
  if (!response.ok || response.redirected) return false;
  const headers = new Headers(response.headers);
  headers.set(KEPT_AT, new Date().toISOString());
  const body = await response.clone().arrayBuffer();
  await cache.put(url, new Response(body, { status: response.status, headers }));
  return true;
}

/** A new release: the kept pages name the old shell's files, just deleted. Each is
 * fetched again (the worker installs only with a network), or dropped if it cannot be. */
async function refreshPages() {
  const cache = await caches.open(PAGES_CACHE);
  for (const request of await cache.keys()) {
    if (!PAGE.test(new URL(request.url).pathname)) continue;
    let fresh = false;
    try {
      fresh = await keep(cache, request.url, await fetch(request.url));
    } catch (err) {
      // the network went meanwhile: the copy cannot load its shell any more
    }
    if (!fresh) await cache.delete(request);
  }
}

/** A kept page marked as a copy (`data-offline-copy` on its body: when it was kept). */
async function marked(kept) {
  const html = await kept.text();
  const when = kept.headers.get(KEPT_AT) || "";
  const body = html.replace("<body ", `<body data-offline-copy="${when.replace(/[^0-9TZ:.-]/g, "")}" `);
  const headers = new Headers(kept.headers);
  headers.delete(KEPT_AT);
  return new Response(body, { status: 200, headers });
}

// --- Web Push (docs/web.md, "Push"; ADR 0032) -------------------------------------------
// A push carries the JSON of push/services.py `message_for`: {title, body, url, topic,
// seq, event, critical, tag, ack}. The notification opens the wedding's page (a page
// already open is focused); its "I've seen it" action posts the message's `ack` token to
// /api/push/ack, which records the member's ack as the page's ack button does. The page
// subscribes from its "Enable notifications" button (wedding.js), never on load.

self.addEventListener("push", (event) => {
  let message = null;
  try {
    message = event.data ? event.data.json() : null;
  } catch (err) {
    message = null; // not ours: nothing to show
  }
  if (!message || typeof message.title !== "string") return;
  event.waitUntil(showPushed(message));
});

self.addEventListener("notificationclick", (event) => {
  const notification = event.notification;
  const data = notification.data || {};
  notification.close();
  if (event.action === "ack" && data.ack) {
    event.waitUntil(ackFromNotification(data.ack).catch(() => openWedding(data.url)));
  } else {
    event.waitUntil(openWedding(data.url));
  }
});

/** Show one pushed message; a critical one stays until it is dealt with. */
function showPushed(message) {
  return self.registration.showNotification(message.title, {
    body: message.body || "",
    tag: message.tag,
    renotify: Boolean(message.tag),
    requireInteraction: Boolean(message.critical),
    data: { url: message.url, ack: message.ack || null, topic: message.topic, seq: message.seq },
    actions: message.ack ? [{ action: "ack", title: "I've seen it" }] : [],
  });
}

/** The notification's "I've seen it": its token is the credential (no cookie needed). */
async function ackFromNotification(token) {
  const response = await fetch("/api/push/ack", {
    method: "POST",
    credentials: "omit",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ token }),
  });
  if (!response.ok) throw new Error(`ack refused: ${response.status}`);
  return response.json();
}

/** Focus the wedding's page when open, else open it; only this site's wedding pages. */
async function openWedding(path) {
  const target = new URL(PAGE.test(path || "") ? path : "/", self.location.origin);
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) {
    const url = new URL(client.url);
    if (url.pathname === target.pathname && "focus" in client) return client.focus();
  }
  return self.clients.openWindow(target.href);
}
