// The browser's realtime client: one WebSocket to /ws/realtime/ speaking the WedSync
// protocol (docs/protocol.md), for the pages of the web app. No dependencies.
//
// - Topics are subscribed with `since` = the last seq the page has applied (first the
//   seq of the state the page was rendered with), so nothing is missed between loading
//   the page and the socket opening, nor across a dropped connection.
// - Events reach `onEvent` exactly once per topic and in seq order: repeats are dropped,
//   an event after a gap waits for the missing ones (and a gap that stays open makes
//   the client reconnect, whose replay fills it).
// - `recovered: false` on a subscribe means the history no longer covers what was
//   missed: `onReset` reloads the page's state and returns its seq (or `{seq, epoch}`);
//   events between that seq and the server's are fetched from the history endpoint.
// - (v1.1) A position is a seq within a stream epoch: the history the seq counts in.
//   The epoch goes back with `since`; after a restore of the server's database the
//   epoch is another one, the server answers `recovered: false`, and the page reloads
//   its state instead of merging two histories that reuse the same seqs.
// - A dropped connection is retried with exponential back-off and full jitter. While
//   the browser says it is offline nothing is tried; coming back online reconnects now.
// - User actions (publish, ack) go through an outbox: kept while the connection is
//   down, sent in order once it is live, each publish with an idempotency key that
//   stays the same on every retry, so the server stores it once.

const BACKOFF_INITIAL_MS = 500;
const BACKOFF_MAX_MS = 15000;
// A slow-down close (1013) starts the back-off at its third step.
const BACKOFF_OVERLOADED_STEP = 2;
const REQUEST_TIMEOUT_MS = 10000;
// The server closes a connection silent for 60 s; a ping every 25 s leaves room for one
// lost ping before that.
const KEEPALIVE_MS = 25000;
// How long a gap in a topic's seqs may stay open before the client reconnects to have
// the server replay it.
const GAP_TIMEOUT_MS = 2000;
const MAX_HELD = 1000;
const MAX_TOPICS_PER_FRAME = 100;
// Close codes after which retrying soon would only be refused again.
const CLOSE_UNAUTHENTICATED = 4001;
const CLOSE_POLICY = 4008;
const CLOSE_LIMIT = 4029;
const CLOSE_OVERLOADED = 1013;
// Errors a publish is retried after (the server could not handle it now).
const RETRYABLE = new Set(["unavailable", "rate_limited"]);

export class RequestError extends Error {
  constructor(code, message, reply = null) {
    super(message || code);
    this.code = code;
    this.reply = reply;
  }
}

/** A fresh idempotency key: 32 hex characters (works on plain http too). */
export function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function socketUrl(path = "/ws/realtime/") {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

export class RealtimeClient {
  /**
   * options: url; onEvent(frame); onState(state);
   * onReset(topic, seq, epoch) → Promise<seq | {seq, epoch}>;
   * historyUrl(topic, since, epoch) → URL of the HTTP history for a topic;
   * onPresence(frame); onTopicError(topic, status); onOutbox(items); onLive().
   */
  constructor(options) {
    this.url = options.url || socketUrl();
    this.on = options;
    // topic → {lastSeq, epoch, held: Map<seq, frame>, resetting, gapTimer}
    this.topics = new Map();
    this.state = "connecting";
    this.ws = null;
    this.refs = 0;
    this.pending = new Map(); // ref → {resolve, reject, timer}
    this.outbox = [];
    this.pumping = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.keepaliveTimer = null;
    this.openTimer = null;
    this.stopped = false;
    window.addEventListener("offline", () => this._wentOffline());
    window.addEventListener("online", () => this._cameOnline());
    document.addEventListener("visibilitychange", () => {
      // A phone that slept may have missed its timers: try at once when shown again.
      if (document.visibilityState === "visible" && this.state === "reconnecting") {
        this._connectSoon(0);
      }
    });
  }

  /**
   * Follow a topic from `since` (the seq the page's state includes; null: from now), in
   * `epoch` (the stream epoch of that state; null: unknown, `since` is taken as it is).
   */
  track(topic, since = null, epoch = null) {
    if (!this.topics.has(topic)) {
      this.topics.set(topic, {
        lastSeq: since,
        epoch: epoch || null,
        held: new Map(),
        resetting: false,
        gapTimer: null,
      });
    }
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  lastSeq(topic) {
    const t = this.topics.get(topic);
    return t ? t.lastSeq : null;
  }

  /** The stream epoch the topic's last seq counts in (null: untracked or unknown). */
  epoch(topic) {
    const t = this.topics.get(topic);
    return t ? t.epoch : null;
  }

  /** Publish an event through the outbox; resolves with the server's ok reply. */
  publish(topic, event, payload, { key = newKey(), label = event } = {}) {
    return this._enqueue({ kind: "publish", topic, event, payload, key, label });
  }

  /** Acknowledge event `seq` of `topic` through the outbox. */
  ack(topic, seq) {
    return this._enqueue({ kind: "ack", topic, seq, label: "acknowledgement" });
  }

  /** A request that needs a live connection now (presence); rejects otherwise. */
  request(frame) {
    if (this.state !== "live") {
      return Promise.reject(new RequestError("connection_lost", "not connected"));
    }
    return this._request(frame);
  }

  get outboxItems() {
    return this.outbox.map((item) => ({ ...item }));
  }

  // --- connection ------------------------------------------------------------------------

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    if (this.on.onState) this.on.onState(state);
  }

  _connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.stopped || this.state === "unauthorized") return;
    if (navigator.onLine === false) {
      this._setState("offline");
      return; // the "online" event reconnects
    }
    if (this.state !== "connecting") this._setState("reconnecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._scheduleRetry();
      return;
    }
    this.ws = ws;
    // A handshake that hangs (a captive portal, a dead route) counts as a failed one.
    this.openTimer = setTimeout(() => {
      if (ws === this.ws && ws.readyState !== WebSocket.OPEN) {
        this._abandon("connect timeout");
        this._scheduleRetry();
      }
    }, REQUEST_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(this.openTimer);
      this._synchronise(ws);
    };
    ws.onmessage = (message) => this._onFrame(message.data);
    ws.onclose = (close) => this._onClose(ws, close.code);
  }

  /** Forget the current socket at once: its late frames and its close are ignored. */
  _abandon(reason) {
    const ws = this.ws;
    this.ws = null;
    clearTimeout(this.openTimer);
    clearInterval(this.keepaliveTimer);
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, reason);
      } catch (err) {
        // already closed
      }
    }
    for (const [ref, waiter] of this.pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new RequestError("connection_lost", "the connection dropped"));
      this.pending.delete(ref);
    }
    for (const t of this.topics.values()) {
      clearTimeout(t.gapTimer);
      t.gapTimer = null;
    }
  }

  _onClose(ws, code) {
    if (ws !== this.ws) return;
    this._abandon("closed");
    if (this.stopped) {
      this._setState("closed");
      return;
    }
    if (code === CLOSE_UNAUTHENTICATED) {
      this._setState("unauthorized");
      return;
    }
    if (code === CLOSE_POLICY || code === CLOSE_LIMIT) {
      // Refused for too many requests or connections: wait long before trying again.
      const delay = BACKOFF_MAX_MS / 2 + Math.random() * (BACKOFF_MAX_MS / 2);
      this._setState("reconnecting");
      this._connectSoon(delay);
      return;
    }
    if (code === CLOSE_OVERLOADED) this.attempt = Math.max(this.attempt, BACKOFF_OVERLOADED_STEP);
    this._scheduleRetry();
  }

  _scheduleRetry() {
    if (navigator.onLine === false) {
      this._setState("offline");
      return;
    }
    // Full jitter: a whole wedding's phones losing the venue's Wi-Fi together do not
    // all come back in the same instant.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** this.attempt);
    this.attempt += 1;
    this._setState("reconnecting");
    this._connectSoon(Math.random() * ceiling);
  }

  _connectSoon(delay) {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  _wentOffline() {
    this._abandon("offline");
    clearTimeout(this.retryTimer);
    if (this.state !== "unauthorized") this._setState("offline");
  }

  _cameOnline() {
    if (this.state === "unauthorized" || this.stopped) return;
    this.attempt = 0;
    if (!this.ws) this._connect();
  }

  async _synchronise(ws) {
    const names = [...this.topics.keys()];
    for (let i = 0; i < names.length; i += MAX_TOPICS_PER_FRAME) {
      const chunk = names.slice(i, i + MAX_TOPICS_PER_FRAME);
      const topics = {};
      for (const name of chunk) {
        const { lastSeq: since, epoch } = this.topics.get(name);
        topics[name] = since === null ? {} : epoch ? { since, epoch } : { since };
      }
      try {
        const reply = await this._request({ type: "subscribe", topics });
        await this._applySubscribeReply(reply);
      } catch (err) {
        if (ws !== this.ws) return; // dropped meanwhile: its close handler retries
        if (err.code === "forbidden" || err.code === "unknown_topic") {
          // Every topic of the frame was refused (access withdrawn): stop following them.
          if (err.reply && err.reply.topics) await this._applySubscribeReply(err.reply);
          else chunk.forEach((name) => this._dropTopic(name, err.reply || { code: err.code }));
          continue;
        }
        this._abandon("subscribe failed");
        this._scheduleRetry();
        return;
      }
    }
    if (ws !== this.ws) return;
    this.attempt = 0;
    this._startKeepalive();
    this._setState("live");
    if (this.on.onLive) this.on.onLive();
    this._pump();
  }

  async _applySubscribeReply(reply) {
    const statuses = reply.topics || {};
    for (const [name, status] of Object.entries(statuses)) {
      const t = this.topics.get(name);
      if (!t) continue;
      if (status.status !== "ok") {
        this._dropTopic(name, status);
        continue;
      }
      // Another epoch than the one sent is another history: never resumed into, whatever
      // `recovered` says.
      const otherHistory = Boolean(t.epoch && status.epoch && status.epoch !== t.epoch);
      if (t.lastSeq === null) {
        t.lastSeq = status.seq;
        t.epoch = status.epoch || null;
      } else if (status.recovered === false || otherHistory) {
        await this._reset(name, status.seq, status.epoch || null);
      } else {
        t.epoch = status.epoch || null;
      }
      this._drain(name);
    }
  }

  _dropTopic(name, status) {
    const t = this.topics.get(name);
    if (t) clearTimeout(t.gapTimer);
    this.topics.delete(name);
    if (this.on.onTopicError) this.on.onTopicError(name, status);
  }

  /**
   * The history no longer covers what was missed (or is another one: `epoch`): reload
   * state, then fill up to `seq`.
   */
  async _reset(name, seq, epoch) {
    const t = this.topics.get(name);
    t.resetting = true;
    // Held until now: received for the old position (maybe of the old history). What
    // arrives during the reload is held for the new one.
    t.held.clear();
    try {
      const state = this.on.onReset ? await this.on.onReset(name, seq, epoch) : seq;
      const stateSeq = state && typeof state === "object" ? state.seq : state;
      t.epoch = (state && typeof state === "object" && state.epoch) || epoch;
      t.lastSeq = Math.max(Number.isInteger(stateSeq) ? stateSeq : seq, 0);
      t.held.forEach((_, s) => s <= t.lastSeq && t.held.delete(s));
      if (t.lastSeq < seq && this.on.historyUrl) await this._fillFromHistory(name, seq);
      if (t.lastSeq < seq) t.lastSeq = seq; // nothing more can be had
    } finally {
      t.resetting = false;
    }
  }

  async _fillFromHistory(name, upTo) {
    const t = this.topics.get(name);
    while (t.lastSeq < upTo) {
      const response = await fetch(this.on.historyUrl(name, t.lastSeq, t.epoch), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) return;
      const page = await response.json();
      if (page.epoch && t.epoch && page.epoch !== t.epoch) {
        // The server's history changed again meanwhile: a new connection resumes with
        // this epoch, is told `recovered: false` and resets once more.
        this._resync();
        return;
      }
      for (const frame of page.events || []) this._deliverInOrder(name, frame);
      if (!page.events || !page.events.length || page.next_since === null) return;
    }
  }

  _startKeepalive() {
    clearInterval(this.keepaliveTimer);
    this.lastSent = Date.now();
    this.keepaliveTimer = setInterval(() => {
      if (this.state !== "live" || Date.now() - this.lastSent < KEEPALIVE_MS) return;
      this._request({ type: "ping" }).catch(() => {});
    }, KEEPALIVE_MS / 5);
  }

  // --- frames ----------------------------------------------------------------------------

  _request(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new RequestError("connection_lost", "not connected"));
    }
    this.refs += 1;
    const ref = String(this.refs);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new RequestError("timeout", "no reply from the server"));
        // A reply that does not come means a dead connection: start a fresh one.
        if (ws === this.ws) {
          this._abandon("timeout");
          this._scheduleRetry();
        }
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(ref, { resolve, reject, timer });
      this.lastSent = Date.now();
      ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (err) {
      return;
    }
    switch (frame.type) {
      case "event":
        this._receiveEvent(frame);
        break;
      case "reply":
      case "pong": {
        const waiter = this.pending.get(frame.ref);
        if (!waiter) return;
        this.pending.delete(frame.ref);
        clearTimeout(waiter.timer);
        if (frame.type === "pong" || frame.status === "ok") waiter.resolve(frame);
        else waiter.reject(new RequestError(frame.code, frame.message, frame));
        break;
      }
      case "presence_diff":
        if (this.on.onPresence) this.on.onPresence(frame);
        break;
      case "unsubscribed":
        this._dropTopic(frame.topic, frame);
        break;
      default:
        break; // an error frame without ref: nothing is waiting for it
    }
  }

  _receiveEvent(frame) {
    const t = this.topics.get(frame.topic);
    if (!t || t.lastSeq === null || frame.seq <= t.lastSeq) return;
    if (t.resetting || frame.seq > t.lastSeq + 1) {
      t.held.set(frame.seq, frame);
      if (t.resetting) return;
      if (t.held.size > MAX_HELD) {
        this._resync();
      } else if (!t.gapTimer) {
        t.gapTimer = setTimeout(() => {
          t.gapTimer = null;
          if (t.held.size) this._resync();
        }, GAP_TIMEOUT_MS);
      }
      return;
    }
    this._deliverInOrder(frame.topic, frame);
    this._drain(frame.topic);
  }

  _deliverInOrder(name, frame) {
    const t = this.topics.get(name);
    if (!t || frame.seq !== t.lastSeq + 1) return;
    t.lastSeq = frame.seq;
    try {
      this.on.onEvent(frame);
    } catch (err) {
      console.error("applying event", frame.seq, "failed", err);
    }
  }

  _drain(name) {
    const t = this.topics.get(name);
    if (!t) return;
    while (t.held.has(t.lastSeq + 1)) {
      const next = t.held.get(t.lastSeq + 1);
      t.held.delete(t.lastSeq + 1);
      this._deliverInOrder(name, next);
    }
    t.held.forEach((_, s) => s <= t.lastSeq && t.held.delete(s));
    if (!t.held.size) {
      clearTimeout(t.gapTimer);
      t.gapTimer = null;
    }
  }

  /** Reconnect so that the server replays from each topic's last applied seq. */
  _resync() {
    this._abandon("resync");
    this._setState("reconnecting");
    this._connectSoon(0);
  }

  // --- outbox ----------------------------------------------------------------------------

  _enqueue(item) {
    return new Promise((resolve, reject) => {
      this.outbox.push({ ...item, id: newKey(), sending: false, resolve, reject });
      this._outboxChanged();
      this._pump();
    });
  }

  _outboxChanged() {
    if (this.on.onOutbox) this.on.onOutbox(this.outbox.map(({ resolve, reject, ...rest }) => rest));
  }

  /** Send the outbox in order, one at a time, while the connection is live. */
  async _pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.outbox.length && this.state === "live") {
        const item = this.outbox[0];
        item.sending = true;
        this._outboxChanged();
        let reply;
        try {
          reply = await this._request(
            item.kind === "publish"
              ? {
                  type: "publish",
                  topic: item.topic,
                  event: item.event,
                  payload: item.payload,
                  idempotency_key: item.key,
                }
              : { type: "ack", topic: item.topic, seq: item.seq },
          );
        } catch (err) {
          item.sending = false;
          if (err.code === "connection_lost" || err.code === "timeout") break; // resent later
          if (RETRYABLE.has(err.code)) {
            // Not stored (the database is down, maintenance, too fast): keep it, say why,
            // and try again later with the same key.
            item.retries = (item.retries || 0) + 1;
            item.lastError = err.message;
            this._outboxChanged();
            const backoff = Math.min(BACKOFF_MAX_MS, 1000 * 2 ** (item.retries - 1));
            const wait = (err.reply && err.reply.retry_after_ms) || backoff;
            await new Promise((resolve) => setTimeout(resolve, wait));
            continue;
          }
          this.outbox.shift();
          this._outboxChanged();
          item.reject(err);
          continue;
        }
        this.outbox.shift();
        this._outboxChanged();
        item.resolve(reply);
      }
    } finally {
      this.pumping = false;
      for (const item of this.outbox) item.sending = false;
      this._outboxChanged();
    }
  }
}
