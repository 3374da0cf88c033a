// The live wedding page: timeline with now/next, vendor statuses with one-tap buttons,
// messages, presence, emergencies with acknowledgement, and the planner's controls.
//
// The page starts from the state embedded in the HTML (consistent at its `seq`, in its
// stream `epoch`) and applies every later event of the wedding's topic, in seq order, as
// the realtime client hands them over. When the server's history is not the one the page
// holds (a seq too old, or another epoch after a restore of the server's database), the
// page reloads its state in place instead of merging. Every render reads only this
// page's state: nothing of other weddings reaches the browser.

import { ItemEditor, signedMinutes } from "./editor.js";
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

const $ = (selector) => document.querySelector(selector);

class WeddingPage {
  constructor(state) {
    this.load(state);
    this.connection = "connecting";
    this.outbox = [];
    this.online = new Map(); // user_id → presence member
    this.pendingAcks = new Set(); // seqs acknowledged here, not yet confirmed
    this.mineOnly = recall(this.storageKey("mine")) === "1";
    this.rt = new RealtimeClient({
      url: socketUrl(),
      onEvent: (frame) => this.apply(frame),
      onState: (connection) => this.setConnection(connection),
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
      if (this.rt.outbox.length) event.preventDefault();
    });
  }

  load(state) {
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
        break;
      default:
        break;
    }
    this.markSeen(frame.seq);
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
    this.connection = connection;
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
    this.renderFeed();
    this.renderOutbox();
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

const state = JSON.parse(document.getElementById("wedding-state").textContent);
new WeddingPage(state);
