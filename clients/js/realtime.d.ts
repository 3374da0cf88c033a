// TypeScript declarations of @wedsync/realtime (realtime.js): the protocol of
// docs/protocol.md v1.1 as the client sees it. Kept by hand; test/exports.test.mjs checks
// that every name declared here is exported by the module and the other way round.

/** A topic: `wedding:<id>`, `supplier:<id>` or `ops`. */
export type Topic = string;

/** The connection as `onState` reports it. */
export type ConnectionState =
  | "connecting"
  | "reconnecting"
  | "live"
  | "offline"
  | "unauthorized"
  | "closed";

/** The transport in use: the WebSocket, or the Server-Sent Events fallback (§11). */
export type Transport = "websocket" | "sse";

/** A stored event, as broadcast and replayed (§6). `hidden` events carry `seq`, `ts` only. */
export interface EventFrame {
  type: "event";
  topic: Topic;
  seq: number;
  event: string;
  priority?: "normal" | "high" | "critical";
  payload?: Record<string, unknown>;
  actor?: { user_id: number; supplier_id?: number | null };
  ts: string;
  ack_required?: boolean;
}

export interface PresenceMember {
  user_id: number;
  name: string;
  supplier_id?: number | null;
}

export interface PresenceDiffFrame {
  type: "presence_diff";
  topic: Topic;
  joins: PresenceMember[];
  leaves: PresenceMember[];
}

export interface UnsubscribedFrame {
  type: "unsubscribed";
  topic: Topic;
  code: string;
  message?: string;
}

/** One topic's status in a subscribe reply (§4). */
export type TopicStatus =
  | { status: "ok"; seq: number; recovered?: boolean; epoch?: string }
  | { status: "error"; code: string; message?: string };

/** A reply to a request (`ref`); an error reply rejects with a RequestError instead. */
export interface ReplyFrame {
  type: "reply";
  ref?: string;
  status: "ok" | "error";
  topic?: Topic;
  seq?: number;
  duplicate?: boolean;
  topics?: Record<Topic, TopicStatus>;
  members?: PresenceMember[];
  code?: string;
  message?: string;
  field?: string;
  retry_after_ms?: number;
  [key: string]: unknown;
}

/** An action waiting in the outbox (as given to `onOutbox` and the store). */
export interface OutboxItem {
  id: string;
  kind: "publish" | "ack";
  topic: Topic;
  label: string;
  event?: string;
  payload?: Record<string, unknown>;
  /** The publish's idempotency key: the same on every retry. */
  key?: string;
  seq?: number;
  sending?: boolean;
  retries?: number;
  lastError?: string;
}

/** Keeps the outbox across page loads (the web app's outbox-store.js uses IndexedDB). */
export interface OutboxStore {
  load(): Promise<OutboxItem[]>;
  save(items: OutboxItem[]): void;
}

/** A state `onReset` reloaded: its seq alone, or with the epoch it counts in. */
export type ResetState = number | { seq: number; epoch?: string | null };

/** What the history endpoint answers (`GET /api/weddings/<id>/events`, §9). */
export interface HistoryPage {
  topic: Topic;
  seq: number;
  epoch?: string;
  recovered?: boolean;
  events: EventFrame[];
  next_since: number | null;
}

/** The WebSocket constructor the client uses (the global one unless injected). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface RealtimeClientOptions {
  /** Called once per topic per seq, in seq order (required). */
  onEvent: (frame: EventFrame) => void;
  onState?: (state: ConnectionState) => void;
  /**
   * The history no longer covers what was missed (`recovered: false`, or another epoch):
   * reload the state and return its seq (or `{seq, epoch}`); events after it up to `seq`
   * are then fetched from `historyUrl`. Without it the client jumps to `seq`.
   */
  onReset?: (topic: Topic, seq: number, epoch: string | null) => ResetState | Promise<ResetState>;
  /** The URL of the HTTP history of a topic after `since` (relative to `baseUrl`). */
  historyUrl?: (topic: Topic, since: number, epoch: string | null) => string;
  onPresence?: (frame: PresenceDiffFrame) => void;
  /** A topic refused at subscribe, or withdrawn later: the client no longer follows it. */
  onTopicError?: (topic: Topic, status: TopicStatus | UnsubscribedFrame | { code: string }) => void;
  onOutbox?: (items: OutboxItem[]) => void;
  /** The connection is live: every topic subscribed and caught up. */
  onLive?: () => void;
  /** The transport changed (to the SSE fallback, or back to the WebSocket). */
  onTransport?: (transport: Transport) => void;
  store?: OutboxStore;
  /** A restored outbox item the server refused. */
  onDropped?: (item: OutboxItem, error: RequestError) => void;

  /** The WebSocket URL (default: `/ws/realtime/` on `baseUrl`, else the page's host). */
  url?: string;
  /** Outside a browser: the server's origin, e.g. `https://realtime.example.com`. Relative
   * URLs (`sseUrl`, `ticketUrl`, `eventsUrl`, `historyUrl`) are resolved against it. */
  baseUrl?: string;
  /** Outside a browser: a token (or platform JWT) for the session cookie: `?token=` on
   * the WebSocket, `Authorization: Bearer` on every HTTP request. */
  token?: string;
  /** A WebSocket class (Node 20 has a global one only with --experimental-websocket). */
  WebSocket?: WebSocketConstructor;
  /** A fetch function (default: the global one). */
  fetch?: FetchLike;
  /** The SSE stream (default `/sse/realtime/`). */
  sseUrl?: string;
  /** Where connect tickets are bought for the SSE stream (default `/api/realtime/ticket`). */
  ticketUrl?: string;
  /** Where a topic's events are published over HTTP on the fallback (default
   * `/api/weddings/<id>/events` for `wedding:<id>`; null: not over HTTP). */
  eventsUrl?: (topic: Topic) => string | null;
  /** The CSRF token for HTTP writes with the session (default: the page's). */
  csrfToken?: () => string;
}

/** A request refused or lost: `code` is the protocol's error code (§8), or
 * `connection_lost`, `timeout`, `unsupported`. */
export class RequestError extends Error {
  constructor(code: string, message?: string, reply?: ReplyFrame | Record<string, unknown> | null);
  code: string;
  reply: ReplyFrame | Record<string, unknown> | null;
}

export class RealtimeClient {
  constructor(options: RealtimeClientOptions);
  /** The WebSocket URL in use (with `?token=` when a token was given). */
  readonly url: string;
  readonly state: ConnectionState;
  readonly transport: Transport;
  /** Follow `topic` from `since` (null: from now) in `epoch` (null: unknown). */
  track(topic: Topic, since?: number | null, epoch?: string | null): void;
  /** Connect (and keep reconnecting until `stop()`). */
  start(): void;
  /** Close the connection, stop every timer and reconnect no more (state "closed"). */
  stop(): void;
  /** The last seq applied of a topic (null: untracked, or not known yet). */
  lastSeq(topic: Topic): number | null;
  /** The stream epoch that seq counts in (null: untracked or unknown). */
  epoch(topic: Topic): string | null;
  /** Publish through the outbox; resolves with the server's ok reply (`seq`). */
  publish(
    topic: Topic,
    event: string,
    payload: Record<string, unknown>,
    options?: { key?: string; label?: string },
  ): Promise<ReplyFrame>;
  /** Acknowledge event `seq` of `topic` through the outbox (WebSocket only). */
  ack(topic: Topic, seq: number): Promise<ReplyFrame>;
  /** A request that needs a live WebSocket now (e.g. `{type: "presence", topic}`). */
  request(frame: { type: string; [field: string]: unknown }): Promise<ReplyFrame>;
  readonly outboxItems: OutboxItem[];
}

/** A fresh idempotency key: 32 hex characters. */
export function newKey(): string;

/** The WebSocket URL of `path` on `base` (default: the page's location). */
export function socketUrl(path?: string, base?: string | null): string;
