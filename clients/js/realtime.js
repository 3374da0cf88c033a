// The realtime client (@wedsync/realtime, clients/js): one WebSocket to /ws/realtime/
// speaking the WedSync protocol (docs/protocol.md), with a Server-Sent Events fallback; the
// web app's pages import this very file as /static/web/realtime.js (web/finders.py), and
// Node 20+ runs it with an injected WebSocket. No dependencies.
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
// - Fallback (docs/client.md): when the WebSocket fails before it opens a few times in a
//   row (a captive portal or a proxy that refuses the upgrade), the client reads the
//   same frames from the server's Server-Sent Events stream (/sse/realtime/, PROTOCOL
//   §11) with the same `since`/seq tracking, and publishes over the HTTP API (acks and
//   presence wait for the WebSocket). It tries the WebSocket again every minute, and
//   when the network changes, and moves back as soon as it opens. `transport` says
//   which one is in use ("websocket" or "sse"); `onTransport` is told of every change.

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
// WebSocket handshakes failed in a row (never opened) before the SSE fallback.
const SSE_AFTER_FAILURES = 3;
// While on SSE: how often the WebSocket is tried again.
const WS_RETRY_MS = 60000;
// The server writes a heartbeat comment every 15 s: a stream silent this long is dead.
const SSE_SILENCE_MS = 45000;
// Every topic of the stream was refused (404 forbidden / unknown_topic).
const SSE_TOPICS_REFUSED = -1;
// Close codes after which retrying soon would only be refused again.
const CLOSE_UNAUTHENTICATED = 4001;
const CLOSE_POLICY = 4008;
const CLOSE_LIMIT = 4029;
const CLOSE_OVERLOADED = 1013;
// What an HTTP refusal of the SSE stream means, as the WebSocket's close codes.
const SSE_REFUSALS = { 401: CLOSE_UNAUTHENTICATED, 429: CLOSE_LIMIT, 503: CLOSE_OVERLOADED };
// Errors a publish is retried after (the server could not handle it now).
const RETRYABLE = new Set(["unavailable", "rate_limited"]);
// WebSocket readyState values (the SSE stream's too), without a global WebSocket (Node 20
// has one only with --experimental-websocket).
const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

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

/** The WebSocket URL of `path` on the page's server, or on `base` (outside a browser). */
export function socketUrl(path = "/ws/realtime/", base = null) {
  const where = base ? new URL(base) : location;
  const scheme = where.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${where.host}${path}`;
}

/** Browsers only: the page's network is down (Node has no such signal). */
function browserOffline() {
  return typeof navigator !== "undefined" && navigator.onLine === false;
}

/** The page's CSRF token: the one in its forms (the sign-out form), else the cookie. */
function pageCsrfToken() {
  if (typeof document === "undefined") return ""; // not a page: a token authenticates
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  if (input) return input.value;
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** The HTTP API's events of a wedding topic (publishes over the fallback). */
function weddingEventsUrl(topic) {
  const match = /^wedding:([1-9][0-9]*)$/.exec(topic);
  return match ? `/api/weddings/${match[1]}/events` : null;
}

/**
 * One GET of the server's event stream, read with fetch rather than EventSource: the
 * HTTP status and error of a refusal are visible, and a reconnect is the client's own
 * (with a fresh ticket and its own positions), never the browser's. Shaped like the
 * WebSocket for RealtimeClient: `onmessage(text)` per frame, `onclose(code, error)`
 * once when it ends (not after `close()`).
 */
class SseStream {
  constructor(url, fetchImpl) {
    this.readyState = CONNECTING;
    this.fetch = fetchImpl;
    this.onmessage = null;
    this.onclose = null;
    this.controller = new AbortController();
    this.silence = null;
    this.expired = false;
    this._read(url);
  }

  close() {
    this.onmessage = this.onclose = null;
    this.readyState = CLOSED;
    clearTimeout(this.silence);
    this.controller.abort();
  }

  _alive() {
    clearTimeout(this.silence);
    this.silence = setTimeout(() => {
      this.expired = true;
      this.controller.abort();
    }, SSE_SILENCE_MS);
  }

  async _read(url) {
    let code = 1006;
    let error = null;
    try {
      this._alive();
      const response = await this.fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/event-stream" },
        signal: this.controller.signal,
      });
      if (!response.ok) {
        error = await response.json().then((body) => body.error, () => null);
        const refused = error && (error.code === "forbidden" || error.code === "unknown_topic");
        code = refused ? SSE_TOPICS_REFUSED : SSE_REFUSALS[response.status] || 1006;
        return;
      }
      this.readyState = OPEN;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this._alive();
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue; // a heartbeat comment
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") kind = text;
            else if (field === "data") data.push(text);
          }
          if (!data.length) continue;
          if (kind === "close") code = JSON.parse(data.join("\n")).code;
          else if (kind === "message" && this.onmessage) this.onmessage(data.join("\n"));
        }
      }
    } catch (err) {
      // aborted (closed, or silent too long) or the network failed: 1006
    } finally {
      clearTimeout(this.silence);
      this.readyState = CLOSED;
      if (this.onclose) this.onclose(code, error);
    }
  }
}

export class RealtimeClient {
  /**
   * options: url; onEvent(frame); onState(state);
   * onReset(topic, seq, epoch) → Promise<seq | {seq, epoch}>;
   * historyUrl(topic, since, epoch) → URL of the HTTP history for a topic;
   * onPresence(frame); onTopicError(topic, status); onOutbox(items); onLive();
   * store: {load() → Promise<items>, save(items)} keeps the outbox across reloads
   * (outbox-store.js); onDropped(item, error): a restored item the server refused.
   * Outside a browser (Node, clients/js): baseUrl (the server, for the page's location),
   * token (for the page's session: `?token=` on the WebSocket, `Authorization: Bearer`
   * over HTTP), WebSocket and fetch (injected; else the globals).
   */
  constructor(options) {
    this.baseUrl = options.baseUrl || null;
    this.token = options.token || null;
    this.WebSocket = options.WebSocket || null;
    this.fetchImpl = options.fetch || null;
    this.url = options.url || socketUrl("/ws/realtime/", this.baseUrl);
    if (this.token) {
      const url = new URL(this.url);
      url.searchParams.set("token", this.token);
      this.url = url.href;
    }
    this.sseUrl = options.sseUrl || "/sse/realtime/";
    this.ticketUrl = options.ticketUrl || "/api/realtime/ticket";
    this.eventsUrl = options.eventsUrl || weddingEventsUrl;
    this.csrfToken = options.csrfToken || pageCsrfToken;
    this.on = options;
    // "websocket", or "sse" after the WebSocket failed to open SSE_AFTER_FAILURES times.
    this.transport = "websocket";
    this.wsFailures = 0;
    this.probeTimer = null;
    // topic → {lastSeq, epoch, held: Map<seq, frame>, resetting, gapTimer}
    this.topics = new Map();
    this.state = "connecting";
    this.ws = null;
    this.refs = 0;
    this.pending = new Map(); // ref → {resolve, reject, timer}
    this.outbox = [];
    // Actions an earlier page left unsent (`store`) go first, with their keys; the pump
    // waits for them.
    this.store = options.store || null;
    this.restored = this.store ? this._restore() : Promise.resolve();
    this.pumping = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.keepaliveTimer = null;
    this.openTimer = null;
    this.stopped = false;
    if (typeof window === "undefined") return; // not in a browser: no page events
    window.addEventListener("offline", () => this._wentOffline());
    window.addEventListener("online", () => this._cameOnline());
    // Another network may let the WebSocket through: try it now rather than in a minute.
    window.addEventListener("online", () => this._probeSoon(0));
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

  /** Close the connection and stop reconnecting (state "closed"; `start()` resumes). */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.probeTimer);
    this._abandon("stopped");
    this._setState("closed");
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

  /** A request that needs a live connection now (presence); rejects otherwise (also on
   * the SSE fallback, which carries no presence request: code `unsupported`). */
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
    if (browserOffline()) {
      this._setState("offline");
      return; // the "online" event reconnects
    }
    if (this.state !== "connecting") this._setState("reconnecting");
    if (this.transport === "sse") {
      this._connectSse();
      return;
    }
    let ws;
    try {
      ws = this._newSocket();
    } catch (err) {
      this._handshakeFailed();
      return;
    }
    this.ws = ws;
    // A handshake that hangs (a captive portal, a dead route) counts as a failed one.
    this.openTimer = setTimeout(() => {
      if (ws === this.ws && ws.readyState !== OPEN) {
        this._abandon("connect timeout");
        this._handshakeFailed();
      }
    }, REQUEST_TIMEOUT_MS);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      clearTimeout(this.openTimer);
      this.wsFailures = 0;
      this._synchronise(ws);
    };
    ws.onmessage = (message) => this._onFrame(message.data);
    ws.onclose = (close) => {
      if (opened || ws !== this.ws) {
        this._onClose(ws, close.code);
        return;
      }
      // Closed before it opened: the upgrade was refused or failed on the way.
      this._abandon("handshake failed");
      this._handshakeFailed();
    };
  }

  /** A WebSocket that never opened: retry, and after a few in a row fall back to SSE. */
  _handshakeFailed() {
    this.wsFailures += 1;
    if (this.wsFailures >= SSE_AFTER_FAILURES && this.topics.size <= MAX_TOPICS_PER_FRAME) {
      this._useTransport("sse");
      this.attempt = 0;
      this._setState("reconnecting");
      this._connectSoon(0);
      return;
    }
    this._scheduleRetry();
  }

  _useTransport(transport) {
    if (this.transport === transport) return;
    this.transport = transport;
    if (transport === "sse") this._probeSoon(WS_RETRY_MS);
    else clearTimeout(this.probeTimer);
    if (this.on.onTransport) this.on.onTransport(transport);
  }

  // --- the SSE fallback ------------------------------------------------------------------

  /** Open the event stream: a fresh connect ticket (the page's session cannot open it:
   * a same-origin GET carries no Origin), then the topics at their positions. */
  async _connectSse() {
    if (!this.topics.size) {
      // Nothing to follow (every topic was withdrawn): no stream, as a socket with no
      // subscription stays open and quiet.
      this.ws = null;
      this._setState("live");
      return;
    }
    const pending = { close() {} }; // holds the place while the ticket is bought
    this.ws = pending;
    let ticket;
    try {
      ticket = await this._buyTicket();
    } catch (err) {
      if (this.ws !== pending) return; // abandoned meanwhile
      this.ws = null;
      if (err.code === "unauthenticated") this._setState("unauthorized");
      else this._scheduleRetry();
      return;
    }
    if (this.ws !== pending) return;
    const topics = {};
    for (const [name, { lastSeq: since, epoch }] of this.topics) {
      topics[name] = since === null ? {} : epoch ? { since, epoch } : { since };
    }
    const query = new URLSearchParams({ topics: JSON.stringify(topics), ticket });
    const fetchImpl = (url, init) => this._fetch(url, init);
    const stream = new SseStream(`${this.sseUrl}?${query}`, fetchImpl);
    this.ws = stream;
    let first = true;
    stream.onmessage = (text) => {
      if (!first) {
        this._onFrame(text);
        return;
      }
      first = false; // the subscribe's reply
      this._sseOpened(stream, text);
    };
    stream.onclose = (code, error) => {
      if (stream !== this.ws) return;
      if (code === SSE_TOPICS_REFUSED) {
        // Every topic was refused (access withdrawn): stop following them.
        const statuses = (error && error.topics) || {};
        for (const name of Object.keys(topics)) this._dropTopic(name, statuses[name] || error);
      }
      this._onClose(stream, code);
    };
  }

  async _buyTicket() {
    let response;
    try {
      response = await this._fetch(this.ticketUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": this.csrfToken() },
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (err) {
      throw new RequestError("connection_lost", "the ticket could not be bought");
    }
    const body = await response.json().catch(() => ({}));
    if (response.ok && body.ticket) return body.ticket;
    const error = body.error || {};
    throw new RequestError(error.code || "unavailable", error.message, body);
  }

  async _sseOpened(stream, text) {
    let reply;
    try {
      reply = JSON.parse(text);
    } catch (err) {
      return;
    }
    await this._applySubscribeReply(reply);
    if (stream !== this.ws) return;
    this.attempt = 0;
    this._setState("live");
    if (this.on.onLive) this.on.onLive();
    this._pump();
  }

  _probeSoon(delay) {
    clearTimeout(this.probeTimer);
    if (this.transport !== "sse") return;
    this.probeTimer = setTimeout(() => this._probeWebSocket(), delay);
  }

  /** While on SSE: try the WebSocket; once it opens, move over to it (the subscribe
   * resumes every topic from its last seq, as after any reconnect). */
  _probeWebSocket() {
    if (this.transport !== "sse" || this.stopped || this.state === "unauthorized") return;
    let probe;
    try {
      probe = this._newSocket();
    } catch (err) {
      this._probeSoon(WS_RETRY_MS);
      return;
    }
    const timer = setTimeout(() => probe.close(), REQUEST_TIMEOUT_MS);
    probe.onclose = () => {
      clearTimeout(timer);
      this._probeSoon(WS_RETRY_MS);
    };
    probe.onopen = () => {
      clearTimeout(timer);
      if (this.transport !== "sse" || this.stopped) {
        probe.onclose = null;
        probe.close(1000, "not needed");
        return;
      }
      this._abandon("the WebSocket is back");
      clearTimeout(this.retryTimer); // a stream's reconnect no longer wanted
      this._useTransport("websocket");
      this.wsFailures = 0;
      this.ws = probe;
      probe.onmessage = (message) => this._onFrame(message.data);
      probe.onclose = (close) => this._onClose(probe, close.code);
      this._synchronise(probe);
    };
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
    if (browserOffline()) {
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
      const response = await this._fetch(this.on.historyUrl(name, t.lastSeq, t.epoch), {
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

  /** The injected WebSocket class, else the global one (a TypeError when neither). */
  _newSocket() {
    const Socket = this.WebSocket || globalThis.WebSocket;
    return new Socket(this.url);
  }

  /** fetch, against `baseUrl` and with the bearer token when the client has them. */
  _fetch(url, init) {
    const href = this.baseUrl ? new URL(url, this.baseUrl).href : url;
    const headers = this.token
      ? { ...init.headers, Authorization: `Bearer ${this.token}` }
      : init.headers;
    return this.fetchImpl
      ? this.fetchImpl(href, { ...init, headers })
      : fetch(href, { ...init, headers });
  }

  // --- frames ----------------------------------------------------------------------------

  _request(frame) {
    if (this.transport === "sse") return this._httpRequest(frame);
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) {
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

  /** On the SSE fallback: a publish over the HTTP API (the same validation, limits and
   * idempotency key as on the WebSocket); acks, presence and pings need the WebSocket. */
  async _httpRequest(frame) {
    const url = frame.type === "publish" ? this.eventsUrl(frame.topic) : null;
    if (!url) throw new RequestError("unsupported", `${frame.type} needs the WebSocket`);
    let response;
    try {
      response = await this._fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          Accept: "application/json",
          "Content-Type": "application/json",
          "X-CSRFToken": this.csrfToken(),
        },
        body: JSON.stringify({
          event: frame.event,
          payload: frame.payload,
          idempotency_key: frame.idempotency_key,
        }),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (err) {
      throw new RequestError("connection_lost", "the request failed");
    }
    const body = await response.json().catch(() => ({}));
    if (response.ok) return { type: "reply", status: "ok", ...body };
    const error = body.error || { code: "unavailable", message: `HTTP ${response.status}` };
    throw new RequestError(error.code, error.message, { type: "reply", status: "error", ...error });
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
    const items = this.outbox.map(({ resolve, reject, ...rest }) => rest);
    if (this.store) this.store.save(items);
    if (this.on.onOutbox) this.on.onOutbox(items);
  }

  async _restore() {
    let items = [];
    try {
      items = await this.store.load();
    } catch (err) {
      return; // no storage: the outbox is the page's own
    }
    const here = new Set(this.outbox.map((item) => item.id));
    const dropped = (item) => (err) => this.on.onDropped && this.on.onDropped(item, err);
    const restored = items
      .filter((item) => !here.has(item.id))
      .map((item) => ({ ...item, sending: false, resolve: () => {}, reject: dropped(item) }));
    if (!restored.length) return;
    this.outbox.unshift(...restored);
    this._outboxChanged();
  }

  /** Send the outbox in order, one at a time, while the connection is live. */
  async _pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      await this.restored;
      while (this.outbox.length && this.state === "live") {
        // On the SSE fallback acks wait for the WebSocket; publishes go past them.
        const item = this.outbox.find((i) => this.transport !== "sse" || i.kind === "publish");
        if (!item) break;
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
          if (err.code === "connection_lost" || err.code === "timeout") {
            // Resent later: after the reconnect, or (over HTTP, the stream still up) soon.
            if (this.transport === "sse") setTimeout(() => this._pump(), BACKOFF_INITIAL_MS * 4);
            break;
          }
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
          this.outbox.splice(this.outbox.indexOf(item), 1);
          this._outboxChanged();
          item.reject(err);
          continue;
        }
        this.outbox.splice(this.outbox.indexOf(item), 1);
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
