// My Saturday: each wedding card says how many changes it had since this user last
// opened its page, and counts new ones live over the page's one WebSocket.

import { RealtimeClient, socketUrl } from "./realtime.js";
import { CONNECTION_TEXT, recall } from "./util.js";

const EVENT_TEXT = {
  "timeline.item.created": "Timeline item added",
  "timeline.item.updated": "Timeline item changed",
  "timeline.item.deleted": "Timeline item removed",
  "timeline.shifted": "Timeline moved",
  "vendor.status": "Vendor status",
  "message.posted": "New message",
  "emergency.raised": "Emergency raised",
  "emergency.resolved": "Emergency resolved",
  "wedding.updated": "Wedding details changed",
  "ack.updated": "Acknowledged",
};

const live = JSON.parse(document.getElementById("saturday-live").textContent);
const cards = new Map();
for (const wedding of live.weddings) {
  const card = document.querySelector(`[data-wedding="${wedding.id}"]`);
  if (card) cards.set(wedding.topic, { ...wedding, card, seq: wedding.seq });
}

function seenKey(weddingId) {
  return `wedsync:seen:${live.user_id}:${weddingId}`;
}

function render(entry, lastEvent = null) {
  const badge = entry.card.querySelector(".changes");
  const stored = recall(seenKey(entry.id));
  if (stored === null) {
    badge.textContent = "Not opened yet";
    badge.dataset.kind = "new";
  } else {
    const count = Math.max(entry.seq - Number(stored), 0);
    badge.textContent = count ? `${count} new since your last look` : "Up to date";
    badge.dataset.kind = count ? "changes" : "quiet";
  }
  badge.hidden = false;
  if (lastEvent) {
    const line = entry.card.querySelector(".last-change");
    line.textContent = `${EVENT_TEXT[lastEvent.event] || lastEvent.event} · just now`;
    line.hidden = false;
    entry.card.classList.remove("pulse");
    void entry.card.offsetWidth; // restart the highlight
    entry.card.classList.add("pulse");
  }
}

for (const entry of cards.values()) render(entry);
// Coming back from a wedding page in another tab: its "seen" mark moved.
window.addEventListener("storage", () => cards.forEach((entry) => render(entry)));
// Back from a wedding page through the browser's page cache: its "seen" mark moved too.
window.addEventListener(
  "pageshow",
  (event) => event.persisted && cards.forEach((entry) => render(entry)),
);

if (cards.size) {
  const conn = document.getElementById("conn");
  const client = new RealtimeClient({
    url: socketUrl(),
    onEvent: (frame) => {
      const entry = cards.get(frame.topic);
      if (!entry) return;
      entry.seq = frame.seq;
      render(entry, frame);
    },
    onState: (state) => {
      conn.dataset.state = state;
      conn.textContent = CONNECTION_TEXT[state] || state;
    },
    onReset: async (topic, seq) => {
      // Too far behind to replay: the count jumps to the wedding's current seq.
      const entry = cards.get(topic);
      if (entry) {
        entry.seq = seq;
        render(entry);
      }
      return seq;
    },
    onTopicError: (topic) => {
      const entry = cards.get(topic);
      if (entry) entry.card.classList.add("withdrawn");
    },
  });
  // From the seq each card was rendered with: a change made while the page loaded is
  // counted too.
  for (const [topic, entry] of cards) client.track(topic, entry.seq);
  client.start();
}
