// The live wedding page: timeline with now/next, vendor statuses with one-tap buttons,
// messages, presence, emergencies with acknowledgement, the day's contacts (phone numbers
// as tel: links for the members, the venue as a maps link), a printable run sheet, and the
// planner's controls.
//
// The page starts from the state embedded in the HTML (consistent at its `seq`, in its
// stream `epoch`) and applies every later event of the wedding's topic, in seq order, as
// the realtime client hands them over. When the server's history is not the one the page
// holds (a seq too old, or another epoch after a restore of the server's database), the
// page reloads its state in place instead of merging. Every render reads only this
// page's state: nothing of other weddings reaches the browser.

import { ItemEditor, signedMinutes } from "./editor.js";
import { OutboxStore } from "./outbox-store.js";
import { RealtimeClient, socketUrl } from "./realtime.js";
import { CONNECTION_TEXT, clock, fill, h, recall, relative, remember } from "./util.js";

const VENDOR_STATUSES = [
  ["en_route", "En route"],
  ["arrived", "Arrived"],
  ["setting_up", "Setting up"],
  ["ready", "Ready"],
  ["running_late", "Running late"],
  ["done", "Done"],
];
const STATUS_LABEL = Object.fromEntries(VENDOR_STATUSES);
const EMERGENCY_KINDS = {
  medical: "Medical",
  weather: "Weather",
  venue: "Venue",
  vendor_missing: "Vendor missing",
  security: "Security",
  other: "Other",
};
// Now/next and "in N min" move with the clock.
const CLOCK_TICK_MS = 30000;
// The venue opens in a maps app: Google Maps' documented cross-platform search URL opens
// the app on Android and iOS when installed and the website anywhere else (a `geo:` URI
// opens nothing on iOS or a desktop). Only the venue's name and address are sent.
const MAPS_SEARCH = "https://www.google.com/maps/search/?api=1&query=";

/** A phone number as a `tel:` URI: its digits, with a leading "+" when it has one;
 * null when it has no digits at all. */
export function telHref(phone) {
  const digits = phone.replace(/\D/g, "");
  if (!digits) return null;
  return `tel:${phone.trim().startsWith("+") ? "+" : ""}${digits}`;
}

/** The maps link of a venue, from its name and address; null without either. */
export function mapsHref(name, address) {
  const query = [name, address].filter((part) => part && part.trim()).join(", ");
  return query ? MAPS_SEARCH + encodeURIComponent(query) : null;
}

const $ = (selector) => document.querySelector(selector);

// The offline copy (docs/web.md, "Offline"): the service worker keeps the page and its
// last state in this cache (sw.js); the page writes its latest state there while live.
const PAGES_CACHE = "wedsync-pages";
const KEPT_AT = "X-WedSync-Kept-At";
// Applied events are written to the kept state at most this often.
const KEEP_EVERY_MS = 2000;
// The latest messages kept, as many as the server's state carries (web/selectors.py).
const FEED_KEPT = 100;

/** The page's state, and since when it is not fresh (null: fresh from the server). A
 * copy served with no network (`data-offline-copy` on the body) starts from the state
 * the page kept last, when that is the same user's and newer. */
async function startingState(embedded) {
  const copiedAt = document.body.dataset.offlineCopy;
  if (copiedAt === undefined) return { state: embedded, asOf: null };
  try {
    const kept = await caches.match(embedded.urls.state);
    if (kept) {
      const state = await kept.json();
      const newer =
        state.viewer.user_id === embedded.viewer.user_id &&
        state.topic === embedded.topic &&
        state.epoch === embedded.epoch &&
        state.seq >= embedded.seq;
      if (newer) return { state, asOf: kept.headers.get(KEPT_AT) || copiedAt };
    }
  } catch (err) {
    // no Cache Storage, or an unreadable copy: the copy's own state
  }
  return { state: embedded, asOf: copiedAt || new Date().toISOString() };
}

/** Let the service worker keep this page for offline use (scope: the wedding pages). A
 * first visit came before the worker: fetched once more, through it, to be kept. */
async function keepOffline() {
  if (!("serviceWorker" in navigator)) return;
  try {
    const container = navigator.serviceWorker;
    await container.register("/sw.js", { scope: "/weddings/" });
    if (!container.controller) {
      await new Promise((resolve) =>
        container.addEventListener("controllerchange", resolve, { once: true }),
      );
      await fetch(location.pathname, { credentials: "same-origin" });
    }
    document.body.dataset.offlineReady = "";
  } catch (err) {
    // no worker (private mode, an old browser): the page works online only
  }
}

// Web Push (docs/web.md, "Push"): the browser asks for permission only when the member
// taps "Enable notifications", never on load; the subscription is made through the
// service worker (sw.js shows the notifications) and stored by /api/push/subscriptions.

/** The bytes of a base64url key (the VAPID public key the server gives). */
function base64UrlBytes(text) {
  const plain = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(plain, (c) => c.charCodeAt(0));
}

/** Store this browser's subscription for the signed-in member (session + CSRF). */
async function sendSubscription(subscription) {
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  const csrf = input ? input.value : match ? decodeURIComponent(match[1]) : "";
  const response = await fetch("/api/push/subscriptions", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
    body: JSON.stringify(subscription.toJSON()),
  });
  if (!response.ok) throw new Error(`not stored (${response.status})`);
}

/** Show "Enable notifications" where push can work; subscribe when it is tapped. A
 * browser subscribed already is stored again (quietly) so the server keeps it. */
async function offerPush() {
  const button = $("#enable-push");
  const supported = "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
  if (!button || !supported || Notification.permission === "denied") return;
  let key = null;
  try {
    const response = await fetch("/api/push/key", { credentials: "same-origin" });
    if (response.ok) key = (await response.json()).public_key;
  } catch (err) {
    return; // offline: offered on the next visit
  }
  if (!key) return; // push is off on this server
  const registration = await navigator.serviceWorker.getRegistration("/weddings/");
  const existing = registration ? await registration.pushManager.getSubscription() : null;
  if (existing && Notification.permission === "granted") {
    document.body.dataset.push = "on";
    sendSubscription(existing).catch(() => {});
    return;
  }
  button.hidden = false;
  button.addEventListener("click", async () => {
    button.disabled = true;
    document.body.dataset.push = "asking";
    try {
      if ((await Notification.requestPermission()) !== "granted") {
        throw new Error("Notifications are blocked for this site");
      }
      const ready = await navigator.serviceWorker.register("/sw.js", { scope: "/weddings/" });
      const subscription = await ready.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: base64UrlBytes(key),
      });
      await sendSubscription(subscription);
      button.hidden = true;
      document.body.dataset.push = "on";
    } catch (err) {
      button.disabled = false;
      button.title = String(err.message || err);
      document.body.dataset.push = "failed";
    }
  });
}

class WeddingPage {
  constructor(state, asOf = null) {
    this.load(state);
    this.asOf = asOf; // since when the state may be out of date (an ISO time), or null
    this.keepTimer = null;
    this.connection = "connecting";
    this.outbox = [];
    this.online = new Map(); // user_id → presence member
    this.pendingAcks = new Set(); // seqs acknowledged here, not yet confirmed
    this.mineOnly = recall(this.storageKey("mine")) === "1";
    this.rt = new RealtimeClient({
      url: socketUrl(),
      onEvent: (frame) => this.apply(frame),
      onState: (connection) => this.setConnection(connection),
      onTransport: (transport) => ($("#conn").dataset.transport = transport), // "sse": fallback
      onReset: (topic, seq) => this.reload(seq),
      historyUrl: (topic, since, epoch) =>
        `${this.urls.history}?since=${since}&limit=1000` +
        (epoch ? `&epoch=${encodeURIComponent(epoch)}` : ""),
      onPresence: (diff) => this.presenceDiff(diff),
      onTopicError: () => this.lostAccess(),
      onOutbox: (items) => {
        const blocked = items.length ? items[0].lastError : null;
        if (blocked && blocked !== this.lastOutboxError) this.toast(`Not sent yet: ${blocked}`);
        this.lastOutboxError = blocked;
        this.outbox = items;
        this.renderOutbox();
        this.renderMyStatus();
        this.renderFeed();
      },
      onLive: () => this.refreshPresence(),
      store: new OutboxStore(state.viewer.user_id, state.wedding.id),
      onDropped: (item, err) => this.toast(`${item.label} not sent: ${err.message}`),
    });
    this.rt.track(this.topic, state.seq, state.epoch);
    this.editor = new ItemEditor(this);
    this.bind();
    this.renderAll();
    this.markSeen(state.seq);
    this.rt.start();
    setInterval(() => this.renderTimeline(), CLOCK_TICK_MS);
    // Changes that came while the tab was hidden count as seen once it is shown again.
    document.addEventListener("visibilitychange", () => this.markSeen(this.rt.lastSeq(this.topic)));
    window.addEventListener("beforeunload", (event) => {
      // Kept on the device (outbox-store.js), waiting actions survive leaving the page.
      if (this.rt.outbox.length && !this.rt.store.durable) event.preventDefault();
    });
    // A phone may discard a hidden tab without another event: the pending state first.
    window.addEventListener("pagehide", () => this.keepTimer && this.keep());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden" && this.keepTimer) this.keep();
    });
    if (asOf === null) this.keep();
  }

  load(state) {
    this.initialState = state;
    this.topic = state.topic;
    this.wedding = state.wedding;
    this.tz = state.wedding.time_zone;
    this.viewer = state.viewer;
    this.urls = state.urls;
    this.items = new Map(state.timeline.map((item) => [item.id, item]));
    this.suppliers = new Map(state.suppliers.map((s) => [s.id, s]));
    this.statuses = new Map(state.statuses.map((s) => [s.supplier_id, s]));
    this.people = new Map(Object.entries(state.people).map(([id, name]) => [Number(id), name]));
    this.feed = [...state.feed];
    this.emergencies = new Map(
      state.emergencies.map((e) => [e.frame.payload.id, { frame: e.frame, acked: e.acked }]),
    );
    this.shiftNotices = new Map(state.shift_notices.map((frame) => [frame.seq, frame]));
  }

  /** The page's state as it is now, in the shape of the server's (kept for offline). */
  snapshot() {
    return {
      ...this.initialState,
      wedding: this.wedding,
      timeline: [...this.items.values()],
      statuses: [...this.statuses.values()],
      people: Object.fromEntries(this.people),
      feed: this.feed.slice(-FEED_KEPT),
      emergencies: [...this.emergencies.values()].map(({ frame, acked }) => ({ frame, acked })),
      shift_notices: [...this.shiftNotices.values()],
      seq: this.rt.lastSeq(this.topic),
      epoch: this.rt.epoch(this.topic) || this.initialState.epoch,
    };
  }

  /** Write the state as it is now where the service worker keeps it; only while it is
   * fresh (live, or just loaded from the server). */
  async keep() {
    clearTimeout(this.keepTimer);
    this.keepTimer = null;
    if (!("caches" in window) || this.asOf !== null) return;
    try {
      const cache = await caches.open(PAGES_CACHE);
      const headers = { "Content-Type": "application/json", [KEPT_AT]: new Date().toISOString() };
      await cache.put(this.urls.state, new Response(JSON.stringify(this.snapshot()), { headers }));
    } catch (err) {
      // storage refused or full: the offline copy is the page as the server sent it
    }
  }

  keepSoon() {
    if (!this.keepTimer) this.keepTimer = setTimeout(() => this.keep(), KEEP_EVERY_MS);
  }

  /** "as of 14:05" beside the connection indicator while the state may be out of date. */
  renderAsOf() {
    const el = $("#as-of");
    if (!el) return;
    el.hidden = this.asOf === null;
    el.textContent = this.asOf === null ? "" : `as of ${clock(this.asOf, this.tz)}`;
  }

  storageKey(name) {
    return `wedsync:${name}:${this.viewer.user_id}:${this.wedding.id}`;
  }

  /** Remember how far this user has looked, for the "changes" badge of My Saturday. */
  markSeen(seq) {
    if (document.visibilityState !== "hidden") remember(this.storageKey("seen"), String(seq));
  }

  async reload(serverSeq) {
    const response = await fetch(this.urls.state, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.status === 404 || response.status === 401) {
      this.lostAccess();
      return serverSeq;
    }
    if (!response.ok) throw new Error(`state reload failed: ${response.status}`);
    const state = await response.json();
    this.load(state);
    this.renderAll();
    this.toast("Caught up: the page was reloaded from the server.");
    // The new position: the state's seq in the state's epoch (the history it was read in).
    return { seq: state.seq, epoch: state.epoch };
  }

  // --- events ------------------------------------------------------------------------------

  apply(frame) {
    const p = frame.payload;
    switch (frame.event) {
      case "timeline.item.created":
      case "timeline.item.updated":
        this.items.set(p.id, p);
        this.renderTimeline();
        break;
      case "timeline.item.deleted":
        this.items.delete(p.id);
        this.renderTimeline();
        break;
      case "timeline.shifted":
        for (const item of p.items) this.items.set(item.id, item);
        if (
          frame.ack_required &&
          p.ack_suppliers.some((id) => this.viewer.supplier_ids.includes(id))
        ) {
          this.shiftNotices.set(frame.seq, frame);
          this.renderAlerts();
        }
        this.renderTimeline();
        break;
      case "vendor.status":
        this.statuses.set(p.supplier_id, { ...p, seq: frame.seq, ts: frame.ts });
        this.renderVendors();
        this.renderMyStatus();
        break;
      case "message.posted":
      case "emergency.resolved":
      case "emergency.raised":
        if (!this.viewer.read_only) this.applyFeed(frame);
        break;
      case "ack.updated":
        if (p.name && p.user_id) this.people.set(p.user_id, p.name);
        for (const emergency of this.emergencies.values()) {
          if (emergency.frame.seq === p.seq) emergency.acked = p.acked;
        }
        if (p.user_id === this.viewer.user_id) {
          this.pendingAcks.delete(p.seq);
          this.shiftNotices.delete(p.seq);
        }
        this.renderAlerts();
        break;
      case "alert.ack_overdue":
        // The monitoring work tells the planner who has not acknowledged an event.
        if (p.planner_supplier_ids.some((id) => this.viewer.supplier_ids.includes(id))) {
          const count = Array.isArray(p.missing) ? p.missing.length : p.missing;
          this.toast(
            `Not yet acknowledged after ${p.minutes} min: ${count} of the vendors ` +
              `(event #${p.seq}).`,
          );
        }
        break;
      case "wedding.updated":
        if (p.venue !== undefined) this.wedding.venue = p.venue;
        if (p.guest_count !== undefined) this.wedding.guest_count = p.guest_count;
        if (p.notes !== undefined) this.wedding.notes = p.notes;
        this.renderHeader();
        this.renderContacts();
        break;
      default:
        break;
    }
    this.markSeen(frame.seq);
    this.keepSoon();
  }

  /** Messages and emergencies: the vendors' coordination (not on the couple's page). */
  applyFeed(frame) {
    const p = frame.payload;
    this.feed.push(frame);
    if (frame.event === "emergency.raised") {
      this.emergencies.set(p.id, { frame, acked: [] });
      this.renderAlerts();
      if (navigator.vibrate) navigator.vibrate([200, 100, 200]);
    } else if (frame.event === "emergency.resolved" && this.emergencies.delete(p.id)) {
      this.renderAlerts();
    }
    this.renderFeed();
  }

  // --- connection and presence -------------------------------------------------------------

  setConnection(connection) {
    // Live: the state is current. Not live: it is as of the last moment it was (kept
    // as it was then, not 2 s later).
    if (connection !== "live" && this.keepTimer) this.keep();
    if (connection === "live") this.asOf = null;
    else if (this.asOf === null) this.asOf = new Date().toISOString();
    if (connection === "live") this.keep();
    this.connection = connection;
    this.renderAsOf();
    const el = $("#conn");
    el.dataset.state = connection;
    el.textContent = CONNECTION_TEXT[connection] || connection;
    if (connection === "unauthorized") {
      this.toast("Your session has ended. Sign in again to carry on.", { sticky: true });
    }
    this.renderOutbox();
    this.renderVendors();
  }

  async refreshPresence() {
    try {
      const reply = await this.rt.request({ type: "presence", topic: this.topic });
      this.online = new Map(reply.members.map((m) => [m.user_id, m]));
    } catch (err) {
      return; // the next connection asks again
    }
    this.renderVendors();
  }

  presenceDiff(diff) {
    if (diff.topic !== this.topic) return;
    for (const member of diff.joins) this.online.set(member.user_id, member);
    for (const member of diff.leaves) this.online.delete(member.user_id);
    this.renderVendors();
  }

  lostAccess() {
    document.body.classList.add("gone");
    fill(
      $("#alerts"),
      h(
        "div",
        { class: "alert gone", role: "alert" },
        h(
          "div",
          { class: "alert-body" },
          h("strong", { text: "This wedding is no longer available to you." }),
        ),
        h("a", { class: "button", href: this.urls.home, text: "Back to My Saturday" }),
      ),
    );
  }

  // --- actions -----------------------------------------------------------------------------

  publish(event, payload, { label = event } = {}) {
    const queued = this.connection !== "live";
    const promise = this.rt.publish(this.topic, event, payload, { label });
    if (queued) this.toast(`Saved on this phone: ${label} is sent when the signal is back.`);
    return promise;
  }

  setStatus(supplierId, status, minutesLate) {
    const payload = { supplier_id: supplierId, status };
    if (status === "running_late") payload.minutes_late = minutesLate;
    this.publish("vendor.status", payload, { label: `“${STATUS_LABEL[status]}”` }).catch((err) =>
      this.toast(`Status not saved: ${err.message}`),
    );
  }

  sendMessage(text) {
    return this.publish("message.posted", { text }, { label: "your message" }).catch((err) =>
      this.toast(`Message not sent: ${err.message}`),
    );
  }

  acknowledge(seq) {
    this.pendingAcks.add(seq);
    this.renderAlerts();
    this.rt.ack(this.topic, seq).catch((err) => {
      this.pendingAcks.delete(seq);
      this.renderAlerts();
      this.toast(`Could not confirm: ${err.message}`);
    });
  }

  // --- rendering -----------------------------------------------------------------------------

  renderAll() {
    this.renderHeader();
    this.renderAlerts();
    this.renderMyStatus();
    this.renderTimeline();
    this.renderVendors();
    this.renderContacts();
    this.renderFeed();
    this.renderOutbox();
    this.renderAsOf();
  }

  /** Who to call and where to go: the venue as a maps link for everyone, the booked
   * suppliers' phone numbers as tel: links for those the role matrix lets read them
   * (the state carries them only for those: `read.contacts`). The planner comes first. */
  renderContacts() {
    const venue = $("#venue-contact");
    if (venue) {
      const { venue: name, venue_address: address } = this.wedding;
      const href = mapsHref(name, address);
      const label = [name, address].filter(Boolean).join(", ");
      fill(
        venue,
        h("span", { class: "contact-label", text: "Venue" }),
        href
          ? h("a", {
              class: "maps",
              href,
              target: "_blank",
              rel: "noopener noreferrer",
              text: label,
            })
          : h("span", { class: "muted", text: "Venue to be confirmed" }),
      );
    }
    const el = $("#contacts");
    if (!el) return;
    const order = (s) => (s.category === "planner" ? 0 : 1);
    const suppliers = [...this.suppliers.values()].sort(
      (a, b) => order(a) - order(b) || a.name.localeCompare(b.name),
    );
    fill(
      el,
      suppliers.length
        ? suppliers.map((supplier) => {
            const href = supplier.phone ? telHref(supplier.phone) : null;
            return h(
              "li",
              { class: "contact", dataset: { supplier: supplier.id } },
              h(
                "span",
                { class: "vendor-name" },
                h("span", { class: "name", text: supplier.name }),
                h("span", { class: "muted category", text: supplier.category.replace("_", " ") }),
              ),
              href
                ? h("a", { class: "tel", href, text: supplier.phone })
                : h("span", { class: "muted small", text: "No number on file" }),
            );
          })
        : h("li", { class: "empty muted", text: "No vendors booked yet." }),
    );
  }

  /** The key moments, for the printed run sheet. */
  renderKeyMoments() {
    const el = $("#key-moments");
    if (!el) return;
    const keys = this.sortedItems().filter((i) => i.key_moment && i.status !== "cancelled");
    fill(
      el,
      keys.length
        ? keys.map((item) =>
            h(
              "li",
              {},
              h("time", { datetime: item.starts_at, text: clock(item.starts_at, this.tz) }),
              ` ${item.title}`,
              item.location ? h("span", { class: "muted", text: ` · ${item.location}` }) : null,
            ),
          )
        : h("li", { class: "muted", text: "No key moments marked." }),
    );
  }

  /** Print the run sheet (the print stylesheet keeps the timeline, the key moments and
   * the contacts, and drops the live parts). */
  printRunSheet() {
    this.renderTimeline();
    window.print();
  }

  renderHeader() {
    const venue = $("#venue");
    if (venue) venue.textContent = this.wedding.venue || "Venue to be confirmed";
  }

  personName(userId, supplierId) {
    if (userId && this.people.has(userId)) return this.people.get(userId);
    if (supplierId && this.suppliers.has(supplierId)) return this.suppliers.get(supplierId).name;
    return "WedSync";
  }

  actorName(frame) {
    return this.personName(frame.actor.user_id, frame.actor.supplier_id);
  }

  renderOutbox() {
    const el = $("#outbox");
    const count = this.outbox.length;
    el.hidden = count === 0;
    el.textContent = count === 1 ? "1 waiting to send" : `${count} waiting to send`;
  }

  renderAlerts() {
    const el = $("#alerts");
    if (document.body.classList.contains("gone")) return;
    const mayManage = (frame) =>
      this.viewer.can_edit || frame.actor.user_id === this.viewer.user_id;
    const banners = [...this.emergencies.values()].map(({ frame, acked }) => {
      const p = frame.payload;
      const mine = acked.includes(this.viewer.user_id);
      const pending = !mine && this.pendingAcks.has(frame.seq);
      const names = acked.map((id) => this.personName(id));
      return h(
        "div",
        { class: "alert emergency", role: "alert", dataset: { emergency: p.id, seq: frame.seq } },
        h(
          "div",
          { class: "alert-body" },
          h("strong", { text: `Emergency · ${EMERGENCY_KINDS[p.kind] || p.kind}` }),
          h("p", { class: "alert-text", text: p.text }),
          h("small", {
            text: `Raised by ${this.actorName(frame)} at ${clock(frame.ts, this.tz)}`,
          }),
          mayManage(frame)
            ? h("p", {
                class: "acks",
                text: names.length
                  ? `Seen by ${names.length}: ${names.join(", ")}`
                  : "Nobody has confirmed yet",
              })
            : null,
        ),
        h(
          "div",
          { class: "alert-actions" },
          this.viewer.read_only
            ? null
            : mine || pending
              ? h("span", { class: "acked", text: pending ? "Seen ✓ (sending)" : "Seen ✓" })
              : h("button", {
                  class: "ack",
                  type: "button",
                  text: "I've seen it",
                  onclick: () => this.acknowledge(frame.seq),
                }),
          mayManage(frame)
            ? h("button", {
                class: "resolve",
                type: "button",
                text: "Resolve",
                onclick: () =>
                  this.publish(
                    "emergency.resolved",
                    { id: p.id, text: "Resolved" },
                    { label: "the resolution" },
                  ).catch((err) => this.toast(`Not resolved: ${err.message}`)),
              })
            : null,
        ),
      );
    });
    const notices = [...this.shiftNotices.values()].map((frame) => {
      const p = frame.payload;
      const from = this.items.get(p.from_item_id);
      const pending = this.pendingAcks.has(frame.seq);
      return h(
        "div",
        { class: "alert shift", role: "status", dataset: { seq: frame.seq } },
        h(
          "div",
          { class: "alert-body" },
          h("strong", { text: `Timeline moved ${signedMinutes(p.minutes)}` }),
          h("p", { text: `From ${from ? from.title : "an item"} on: check your times.` }),
        ),
        h(
          "div",
          { class: "alert-actions" },
          pending
            ? h("span", { class: "acked", text: "Got it ✓" })
            : h("button", {
                class: "ack",
                type: "button",
                text: "Got it",
                onclick: () => this.acknowledge(frame.seq),
              }),
        ),
      );
    });
    fill(el, banners, notices);
  }

  /** One tap sets the status of the user's own supplier; offline, it waits to be sent. */
  renderMyStatus() {
    const el = $("#my-status");
    if (!el) return;
    const mine = this.viewer.supplier_ids.filter((id) => this.suppliers.has(id));
    el.hidden = mine.length === 0;
    fill(
      el,
      mine.map((supplierId) => {
        const current = this.statuses.get(supplierId);
        const queued = this.outbox.filter(
          (item) => item.event === "vendor.status" && item.payload.supplier_id === supplierId,
        );
        const waiting = queued.length ? queued[queued.length - 1].payload : null;
        const button = (key, label, onclick) => {
          const classes = ["status-button"];
          if (current && current.status === key) classes.push("current");
          if (waiting && waiting.status === key) classes.push("waiting");
          return h("button", {
            type: "button",
            class: classes.join(" "),
            dataset: { status: key },
            "aria-pressed": current && current.status === key ? "true" : "false",
            text: label,
            onclick,
          });
        };
        const lateInput = h("input", {
          type: "number",
          min: 0,
          max: 600,
          value: 15,
          inputmode: "numeric",
          "aria-label": "Minutes late",
          class: "late-minutes",
        });
        const runningLate = () => {
          const minutes = Number.parseInt(lateInput.value, 10);
          if (!Number.isInteger(minutes) || minutes < 0 || minutes > 600) {
            this.toast("Minutes late: a whole number from 0 to 600.");
            return;
          }
          this.setStatus(supplierId, "running_late", minutes);
        };
        const sending =
          this.connection === "live" ? "sending…" : "waiting for signal, sent when back online";
        return h(
          "div",
          { class: "my-status", dataset: { supplier: supplierId } },
          h(
            "h2",
            {},
            "My status ",
            h("span", { class: "muted", text: `· ${this.suppliers.get(supplierId).name}` }),
          ),
          h(
            "div",
            { class: "status-buttons" },
            VENDOR_STATUSES.filter(([key]) => key !== "running_late").map(([key, label]) =>
              button(key, label, () => this.setStatus(supplierId, key)),
            ),
            h(
              "span",
              { class: "late" },
              lateInput,
              h("span", { class: "muted", text: "min" }),
              button("running_late", "Running late", runningLate),
            ),
          ),
          waiting
            ? h("p", { class: "waiting-note", text: `${STATUS_LABEL[waiting.status]}: ${sending}` })
            : null,
        );
      }),
    );
  }

  nowAndNext(items) {
    const now = Date.now();
    let current = null;
    let next = null;
    for (const item of items) {
      if (item.status === "cancelled") continue;
      const start = Date.parse(item.starts_at);
      const end = item.ends_at ? Date.parse(item.ends_at) : null;
      if (start <= now && (end === null || now < end)) current = item;
      if (start > now && next === null) next = item;
    }
    return { current, next, now };
  }

  sortedItems() {
    return [...this.items.values()].sort(
      (a, b) => Date.parse(a.starts_at) - Date.parse(b.starts_at) || a.id - b.id,
    );
  }

  renderTimeline() {
    const items = this.sortedItems();
    const { current, next, now } = this.nowAndNext(items);
    const mine = new Set(this.viewer.supplier_ids);
    const isMine = (item) => item.supplier_ids.some((id) => mine.has(id));
    const shown = this.mineOnly && mine.size ? items.filter(isMine) : items;
    const done = items.filter(
      (i) =>
        i.status === "done" ||
        (i.ends_at && Date.parse(i.ends_at) <= now && i.status !== "cancelled"),
    ).length;

    fill(
      $("#nownext"),
      h(
        "div",
        { class: "nn now" },
        h("span", { class: "nn-label", text: "Now" }),
        h("span", { class: "nn-title", text: current ? current.title : "—" }),
        current && current.ends_at
          ? h("span", { class: "muted", text: `until ${clock(current.ends_at, this.tz)}` })
          : null,
      ),
      h(
        "div",
        { class: "nn next" },
        h("span", { class: "nn-label", text: "Next" }),
        h("span", { class: "nn-title", text: next ? next.title : "—" }),
        next
          ? h("span", {
              class: "muted",
              text: `${clock(next.starts_at, this.tz)} · ${relative(Date.parse(next.starts_at) - now)}`,
            })
          : null,
      ),
    );
    this.renderKeyMoments();
    const progress = $("#progress");
    if (progress) {
      progress.max = items.length || 1;
      progress.value = done;
      $("#progress-text").textContent = `${done} of ${items.length} done`;
    }

    fill(
      $("#timeline"),
      shown.length
        ? shown.map((item) => {
            const classes = ["item", `status-${item.status}`];
            if (item.key_moment) classes.push("key");
            if (item.pinned) classes.push("pinned");
            if (current && item.id === current.id) classes.push("is-now");
            if (next && item.id === next.id) classes.push("is-next");
            if (isMine(item)) classes.push("mine");
            const who = item.supplier_ids
              .map((id) => this.suppliers.get(id))
              .filter(Boolean)
              .map((s) => s.name);
            return h(
              "li",
              {
                class: classes.join(" "),
                dataset: { id: item.id, version: item.version, title: item.title },
              },
              h(
                "div",
                { class: "when" },
                h("time", {
                  class: "start",
                  datetime: item.starts_at,
                  text: clock(item.starts_at, this.tz),
                }),
                item.ends_at
                  ? h("time", {
                      class: "end",
                      datetime: item.ends_at,
                      text: clock(item.ends_at, this.tz),
                    })
                  : null,
              ),
              h(
                "div",
                { class: "what" },
                h(
                  "div",
                  { class: "title-row" },
                  h("span", { class: "title", text: item.title }),
                  current && item.id === current.id
                    ? h("span", { class: "tag tag-now", text: "Now" })
                    : null,
                  next && item.id === next.id
                    ? h("span", { class: "tag tag-next", text: "Next" })
                    : null,
                  item.key_moment ? h("span", { class: "tag tag-key", text: "Key moment" }) : null,
                  item.pinned
                    ? h("span", {
                        class: "tag tag-pinned",
                        text: "Fixed time",
                        title: "Shifts leave it in place",
                      })
                    : null,
                  item.status !== "planned"
                    ? h("span", { class: "tag", text: item.status.replace("_", " ") })
                    : null,
                ),
                h("div", {
                  class: "where muted",
                  text: [item.location, who.join(", ")].filter(Boolean).join(" · "),
                }),
              ),
              this.viewer.can_edit
                ? h(
                    "div",
                    { class: "item-actions" },
                    h("button", {
                      type: "button",
                      class: `star${item.key_moment ? " on" : ""}`,
                      "aria-pressed": item.key_moment ? "true" : "false",
                      "aria-label": item.key_moment ? "Unmark key moment" : "Mark as key moment",
                      title: "Key moment",
                      text: "★",
                      onclick: () => this.editor.toggleKeyMoment(item.id),
                    }),
                    h("button", {
                      type: "button",
                      class: "edit",
                      text: "Edit",
                      onclick: () => this.editor.open(item.id),
                    }),
                  )
                : null,
            );
          })
        : h("li", {
            class: "empty muted",
            text: this.mineOnly ? "None of the items names you." : "No items yet.",
          }),
    );
  }

  renderVendors() {
    const el = $("#vendors");
    if (!el) return;
    const onlineSuppliers = new Set([...this.online.values()].map((m) => m.supplier_id));
    const live = this.connection === "live";
    fill(
      el,
      [...this.suppliers.values()].map((supplier) => {
        const status = this.statuses.get(supplier.id);
        const label = status
          ? status.status === "running_late"
            ? `Running late ${status.minutes_late} min`
            : STATUS_LABEL[status.status]
          : "No update yet";
        return h(
          "li",
          { class: "vendor", dataset: { supplier: supplier.id } },
          h("span", {
            class: `dot${live && onlineSuppliers.has(supplier.id) ? " online" : ""}`,
            title: live && onlineSuppliers.has(supplier.id) ? "Online now" : "Not online",
          }),
          h(
            "span",
            { class: "vendor-name" },
            h("span", { class: "name", text: supplier.name }),
            h("span", { class: "muted category", text: supplier.category.replace("_", " ") }),
          ),
          h(
            "span",
            { class: `pill status-${status ? status.status : "none"}` },
            label,
            status
              ? h("time", {
                  class: "muted",
                  datetime: status.ts,
                  text: ` ${clock(status.ts, this.tz)}`,
                })
              : null,
          ),
        );
      }),
    );
    const people = [...this.online.values()].map((m) => m.name);
    const online = $("#online");
    if (online) {
      online.textContent = live
        ? people.length
          ? `Online now (${people.length}): ${people.join(", ")}`
          : "Nobody else is online."
        : "Presence shows again when the connection is back.";
    }
  }

  renderFeed() {
    const el = $("#feed");
    if (!el) return;
    const entries = this.feed.map((frame) => {
      const p = frame.payload;
      const author = this.actorName(frame);
      const supplier = frame.actor.supplier_id && this.suppliers.get(frame.actor.supplier_id);
      const classes = ["msg"];
      let text = p.text;
      if (frame.event === "emergency.raised") {
        classes.push("emergency");
        text = `Emergency (${EMERGENCY_KINDS[p.kind] || p.kind}): ${p.text}`;
      } else if (frame.event === "emergency.resolved") {
        classes.push("resolved");
        text = `Emergency resolved${p.text ? `: ${p.text}` : ""}`;
      }
      if (frame.actor.user_id === this.viewer.user_id) classes.push("mine");
      return h(
        "li",
        { class: classes.join(" "), dataset: { seq: frame.seq, event: frame.event } },
        h(
          "div",
          { class: "meta" },
          h("span", { class: "author", text: author }),
          supplier && supplier.name !== author
            ? h("span", { class: "muted", text: supplier.name })
            : null,
          h("time", { class: "muted", datetime: frame.ts, text: clock(frame.ts, this.tz) }),
        ),
        h("p", { class: "text", text }),
      );
    });
    const waiting = this.outbox
      .filter((item) => item.event === "message.posted")
      .map((item) =>
        h(
          "li",
          { class: "msg mine pending" },
          h(
            "div",
            { class: "meta" },
            h("span", { class: "author", text: this.viewer.name }),
            h("span", {
              class: "muted",
              text: this.connection === "live" ? "sending…" : "waiting for signal",
            }),
          ),
          h("p", { class: "text", text: item.payload.text }),
        ),
      );
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    fill(
      el,
      entries.length || waiting.length
        ? [...entries, ...waiting]
        : h("li", { class: "empty muted", text: "No messages yet." }),
    );
    if (atBottom) el.scrollTop = el.scrollHeight;
  }

  // --- wiring --------------------------------------------------------------------------------

  bind() {
    $("#print").addEventListener("click", () => this.printRunSheet());
    // Whichever way printing starts (the button, the browser's menu), the sheet says when
    // it was printed: it is a copy of a page that keeps changing.
    window.addEventListener("beforeprint", () => {
      const now = new Date().toISOString();
      $("#printed").textContent = `Printed at ${clock(now, this.tz)} (${this.tz} time).`;
    });
    const mineToggle = $("#mine-only");
    if (mineToggle) {
      mineToggle.checked = this.mineOnly;
      mineToggle.addEventListener("change", () => {
        this.mineOnly = mineToggle.checked;
        remember(this.storageKey("mine"), this.mineOnly ? "1" : "0");
        this.renderTimeline();
      });
    }
    const composer = $("#composer");
    if (composer) {
      const text = composer.elements.text;
      composer.addEventListener("submit", (event) => {
        event.preventDefault();
        const value = text.value.trim();
        if (!value) return;
        this.sendMessage(value);
        text.value = "";
      });
      text.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) composer.requestSubmit();
      });
    }
    for (const button of document.querySelectorAll("dialog [data-close]")) {
      button.addEventListener("click", () => button.closest("dialog").close());
    }
    const raise = $("#raise");
    if (raise) raise.addEventListener("click", () => $("#emergency-dialog").showModal());
    const emergencyForm = $("#emergency-form");
    if (emergencyForm) {
      emergencyForm.addEventListener("submit", (event) => {
        event.preventDefault();
        const text = emergencyForm.elements.text.value.trim();
        if (!text) return;
        this.publish(
          "emergency.raised",
          { kind: emergencyForm.elements.kind.value, text },
          { label: "the alert" },
        ).catch((err) => this.toast(`Alert not sent: ${err.message}`));
        emergencyForm.reset();
        $("#emergency-dialog").close();
      });
    }
  }

  toast(text, { sticky = false } = {}) {
    const el = $("#toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(this.toastTimer);
    if (!sticky) this.toastTimer = setTimeout(() => (el.hidden = true), 5000);
  }
}

const embedded = JSON.parse(document.getElementById("wedding-state").textContent);
const { state, asOf } = await startingState(embedded);
new WeddingPage(state, asOf);
keepOffline();
offerPush();
