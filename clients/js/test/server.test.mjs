// The client against a real WedSync server (started by tests/clients/test_js_package.py):
// WEDSYNC_URL (http://host:port), WEDSYNC_TOKEN (a token of a vendor booked on the
// wedding) and WEDSYNC_WEDDING (its id) come from the environment. Without them these
// tests are skipped (`npm test` on its own runs only the declaration checks).
//
// Faults are real: the connection is cut by a TCP proxy between client and server, and
// the WebSocket "blocked by the network" is one whose handshake fails as a proxy's would.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";

import { RealtimeClient } from "@wedsync/realtime";

const BASE = process.env.WEDSYNC_URL;
const TOKEN = process.env.WEDSYNC_TOKEN;
const WEDDING = process.env.WEDSYNC_WEDDING;
const TOPIC = `wedding:${WEDDING}`;
const WAIT_MS = 8000;

// Set when a client that expects to be let in is refused (a wrong WEDSYNC_TOKEN): the
// waits fail at once rather than time out.
let refused = null;

/** Resolve once `predicate()` holds (checked every 10 ms); fail after `ms`. */
async function until(predicate, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (refused) throw new Error(`${refused} (waiting for ${what})`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The server's HTTP API as the vendor (not through the client under test). */
async function api(path, init = {}) {
  const response = await fetch(new URL(path, BASE), {
    ...init,
    headers: {
      Authorization: `Bearer ${TOKEN}`,
      "Content-Type": "application/json",
      Accept: "application/json",
    },
  });
  const body = await response.json();
  assert.ok(response.ok, `${path}: ${response.status} ${JSON.stringify(body)}`);
  return body;
}

/** Post a message to the wedding over HTTP; its seq. */
async function post(text) {
  const body = { event: "message.posted", payload: { text } };
  const reply = await api(`/api/weddings/${WEDDING}/events`, {
    method: "POST",
    body: JSON.stringify(body),
  });
  return reply.seq;
}

/** The wedding's snapshot position: {seq, epoch}. */
async function position() {
  const snapshot = await api(`/api/weddings/${WEDDING}/`);
  return { seq: snapshot.seq, epoch: snapshot.epoch };
}

/** A client that records what it is told; stopped after the test. */
function client(t, options = {}) {
  const seen = { events: [], states: [], transports: [], resets: [], topicErrors: [] };
  const made = new RealtimeClient({
    baseUrl: BASE,
    token: TOKEN,
    onEvent: (frame) => seen.events.push(frame),
    onState: (state) => {
      seen.states.push(state);
      if (state === "unauthorized" && !options.token) refused = "the server refused the token";
    },
    onTransport: (transport) => seen.transports.push(transport),
    onTopicError: (topic, status) => seen.topicErrors.push({ topic, status }),
    ...options,
  });
  t.after(() => made.stop());
  return { client: made, seen };
}

function seqs(events) {
  return events.map((frame) => frame.seq);
}

function range(first, last) {
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

/** A TCP proxy to the server whose connections a test can cut, and whose new connections
 * it can hold (the network not back yet) until it lets them through. */
class CuttingProxy {
  constructor(target) {
    this.target = new URL(target);
    this.sockets = new Set();
    this.held = null; // while holding: the connections waiting
    this.server = net.createServer((downstream) => {
      downstream.on("error", () => {});
      if (this.held) this.held.push(downstream);
      else this._forward(downstream);
    });
  }

  _forward(downstream) {
    const upstream = net.connect(Number(this.target.port), this.target.hostname);
    for (const socket of [downstream, upstream]) {
      this.sockets.add(socket);
      socket.on("error", () => {});
      socket.on("close", () => {
        this.sockets.delete(socket);
        downstream.destroy();
        upstream.destroy();
      });
    }
    downstream.pipe(upstream).pipe(downstream);
  }

  hold() {
    this.held = [];
  }

  release() {
    const waiting = this.held;
    this.held = null;
    for (const downstream of waiting) if (!downstream.destroyed) this._forward(downstream);
  }

  listen() {
    return new Promise((resolve) => {
      this.server.listen(0, "127.0.0.1", () => {
        this.url = `http://127.0.0.1:${this.server.address().port}`;
        resolve();
      });
    });
  }

  /** Drop every open connection (no close frame: as a lost network). */
  cut() {
    for (const socket of this.sockets) socket.destroy();
  }

  close() {
    if (this.held) this.held.forEach((socket) => socket.destroy());
    this.held = null;
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/** A WebSocket the network does not let through: closed (1006) before it ever opens. */
function blockedWebSocket(attempts) {
  return class BlockedWebSocket {
    constructor(url) {
      attempts.push(url);
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      setTimeout(() => {
        this.readyState = 3;
        if (this.onerror) this.onerror({ type: "error" });
        if (this.onclose) this.onclose({ code: 1006 });
      }, 5);
    }

    send() {
      throw new Error("not open");
    }

    close() {
      this.readyState = 3;
    }
  };
}

describe("against a real server", { skip: !BASE && "WEDSYNC_URL is not set" }, () => {
  before(() => {
    assert.ok(TOKEN && WEDDING, "WEDSYNC_TOKEN and WEDSYNC_WEDDING must be set");
    assert.equal(typeof globalThis.WebSocket, "function", "run node with --experimental-websocket");
  });

  test("connects, subscribes and receives published events once, in order", async (t) => {
    // given a live client following the wedding from now
    const { client: rt, seen } = client(t);
    rt.track(TOPIC);
    rt.start();
    await until(() => rt.state === "live", "live");
    const start = rt.lastSeq(TOPIC);
    assert.ok(Number.isInteger(start), `lastSeq ${start}`);
    assert.match(rt.epoch(TOPIC), /^[0-9A-Za-z_-]{1,32}$/);
    // when three messages are posted over HTTP and one is published through the client
    for (const text of ["one", "two", "three"]) await post(text);
    const reply = await rt.publish(TOPIC, "message.posted", { text: "four" });
    // then all four arrive, each once, in seq order
    assert.equal(reply.seq, start + 4);
    await until(() => seen.events.length >= 4, "four events");
    assert.deepEqual(seqs(seen.events), range(start + 1, start + 4));
    assert.deepEqual(
      seen.events.map((frame) => frame.payload.text),
      ["one", "two", "three", "four"],
    );
    assert.equal(rt.lastSeq(TOPIC), start + 4);
    assert.equal(rt.transport, "websocket");
    assert.deepEqual(seen.states, ["live"]);
  });

  test("`since` replays what was missed, in its epoch, without a reset", async (t) => {
    // given a position in the past: three events were posted after it
    const from = await position();
    for (const text of ["a", "b", "c"]) await post(text);
    // when a client resumes from that position
    const { client: rt, seen } = client(t, { onReset: (...args) => seen.resets.push(args) });
    rt.track(TOPIC, from.seq, from.epoch);
    rt.start();
    await until(() => seen.events.length >= 3, "the replay");
    // then the server recovered it: the three are replayed in order and nothing reloads
    assert.deepEqual(seqs(seen.events), range(from.seq + 1, from.seq + 3));
    assert.deepEqual(seen.resets, []);
    assert.equal(rt.epoch(TOPIC), from.epoch);
  });

  test("another epoch is another history: reset, then the gap filled from the history", async (t) => {
    // given a position held in an epoch the server no longer has
    await post("before");
    const now = await position();
    const { client: rt, seen } = client(t, {
      // the state reloaded is two events behind the server: the history fills the rest
      onReset: async (topic, seq, epoch) => {
        seen.resets.push({ topic, seq, epoch });
        return { seq: seq - 2, epoch };
      },
      historyUrl: (topic, since, epoch) =>
        `/api/weddings/${WEDDING}/events?since=${since}&epoch=${epoch}`,
    });
    rt.track(TOPIC, now.seq, "restoredelsewhere");
    // when it connects
    rt.start();
    await until(() => rt.state === "live", "live");
    // then it is told recovered:false at the present seq and epoch, and catches up
    assert.deepEqual(seen.resets, [{ topic: TOPIC, seq: now.seq, epoch: now.epoch }]);
    assert.equal(rt.epoch(TOPIC), now.epoch);
    await until(() => seen.events.length >= 2, "the history");
    assert.deepEqual(seqs(seen.events), [now.seq - 1, now.seq]);
    assert.equal(rt.lastSeq(TOPIC), now.seq);
  });

  test("reconnects after the connection is cut and replays what it missed", async (t) => {
    // given a live client behind a proxy
    const proxy = new CuttingProxy(BASE);
    await proxy.listen();
    t.after(() => proxy.close());
    const { client: rt, seen } = client(t, { baseUrl: proxy.url });
    rt.track(TOPIC);
    rt.start();
    await until(() => rt.state === "live", "live");
    const start = rt.lastSeq(TOPIC);
    // when the network drops its connection and two events are posted before it is back
    proxy.hold();
    proxy.cut();
    await until(() => rt.state === "reconnecting", "reconnecting");
    await post("while away 1");
    await post("while away 2");
    proxy.release();
    // then it comes back by itself and gets both, in order, once
    await until(() => seen.events.length >= 2 && rt.state === "live", "the replay");
    assert.deepEqual(seqs(seen.events), [start + 1, start + 2]);
    assert.deepEqual(seen.states.slice(0, 2), ["live", "reconnecting"]);
    assert.equal(seen.states.at(-1), "live");
    // and it is live again: a new event arrives over the new connection
    await post("after");
    await until(() => seen.events.length >= 3, "a live event");
    assert.deepEqual(seqs(seen.events), [start + 1, start + 2, start + 3]);
    assert.equal(rt.transport, "websocket");
  });

  test("falls back to Server-Sent Events when the WebSocket cannot open", async (t) => {
    // given a network that refuses every WebSocket, and a position with one event after it
    const from = await position();
    await post("missed");
    const attempts = [];
    const { client: rt, seen } = client(t, { WebSocket: blockedWebSocket(attempts) });
    rt.track(TOPIC, from.seq, from.epoch);
    // when it starts
    rt.start();
    // then after three failed handshakes it reads the stream, from its position
    await until(() => rt.state === "live", "live over SSE");
    assert.equal(rt.transport, "sse");
    assert.deepEqual(seen.transports, ["sse"]);
    assert.equal(attempts.length, 3);
    await until(() => seen.events.length >= 1, "the replay over SSE");
    assert.equal(seen.events[0].seq, from.seq + 1);
    // and publishes over the HTTP API, its event coming back on the stream, once
    const reply = await rt.publish(TOPIC, "message.posted", { text: "over http" });
    assert.equal(reply.seq, from.seq + 2);
    await post("live over sse");
    await until(() => seen.events.length >= 3, "live events over SSE");
    assert.deepEqual(seqs(seen.events), range(from.seq + 1, from.seq + 3));
    assert.equal(seen.events[1].payload.text, "over http");
  });

  test("a refused token ends in `unauthorized`, without retrying", async (t) => {
    const { client: rt, seen } = client(t, { token: "not-a-token" });
    rt.track(TOPIC);
    rt.start();
    await until(() => rt.state === "unauthorized", "unauthorized");
    assert.equal(refused, null); // the other clients' token was let in
    assert.deepEqual(seen.events, []);
    assert.deepEqual(seen.transports, []);
  });
});
