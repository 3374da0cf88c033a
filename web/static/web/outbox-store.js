// The realtime client's outbox kept on the device (IndexedDB), so that a status tap, a
// message or an acknowledgement made with no signal survives a reload or a closed tab
// and is sent, with the idempotency key it was made with, once the connection is back.
//
// `new OutboxStore(userId, weddingId)` is given to RealtimeClient as `store`:
// `load()` → the items this user left unsent on this wedding (oldest first);
// `save(items)` → after every change of the client's outbox. One record per item
// (database "wedsync", store "outbox", key: the item's id), so two tabs of one wedding do
// not overwrite each other's items: a tab deletes only the records it loaded or saved.
// An item older than MAX_AGE_MS is dropped unsent (the server knows a key for 24 h only;
// past that a resend could be stored twice). Storage refused (private mode, full disk):
// the outbox lives in the page's memory only, as before, and `durable` stays false.

const DB_NAME = "wedsync";
const DB_VERSION = 1;
const STORE = "outbox";
// Well inside the server's 24 h memory of idempotency keys (docs/protocol.md, publish).
export const MAX_AGE_MS = 12 * 60 * 60 * 1000;
// What is kept of an item: what it takes to send it again, and to show it.
const FIELDS = ["id", "kind", "topic", "event", "payload", "key", "label", "seq"];

function opened() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore(STORE, { keyPath: "id" });
      store.createIndex("scope", "scope");
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
    request.onblocked = () => reject(new Error("the outbox database is blocked"));
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = tx.onabort = () => reject(tx.error || new Error("aborted"));
  });
}

export class OutboxStore {
  constructor(userId, weddingId) {
    this.scope = `${userId}:${weddingId}`;
    this.db = null;
    this.durable = false;
    this.known = new Map(); // id → when the item was first kept (ms)
    this.counter = 0;
    this.saving = Promise.resolve();
  }

  async _db() {
    if (!this.db) this.db = await opened();
    return this.db;
  }

  /** The items this user left unsent on this wedding, oldest first (the stale dropped). */
  load() {
    const loading = this.saving.then(() => this._load());
    this.saving = loading.catch(() => {});
    return loading;
  }

  async _load() {
    let db;
    try {
      db = await this._db();
    } catch (err) {
      return [];
    }
    const tx = db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    const records = await new Promise((resolve, reject) => {
      const request = store.index("scope").getAll(this.scope);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    const oldest = Date.now() - MAX_AGE_MS;
    const kept = [];
    for (const record of records) {
      if (record.at < oldest) store.delete(record.id);
      else kept.push(record);
    }
    await done(tx);
    this.durable = true;
    kept.sort((a, b) => a.at - b.at || a.n - b.n);
    return kept.map((record) => {
      this.known.set(record.id, { at: record.at, n: record.n });
      const item = {};
      for (const name of FIELDS) if (record[name] !== undefined) item[name] = record[name];
      return item;
    });
  }

  /** Keep exactly `items` of this page's items: new ones added, sent ones deleted.
   * Saves run one after another, in the order of the changes. */
  save(items) {
    this.saving = this.saving.then(() => this._save(items)).catch(() => {
      this.durable = false;
    });
    return this.saving;
  }

  async _save(items) {
    const db = await this._db();
    const tx = db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    const now = Date.now();
    const present = new Set();
    for (const item of items) {
      present.add(item.id);
      if (!this.known.has(item.id)) {
        this.counter += 1;
        this.known.set(item.id, { at: now, n: this.counter });
      }
      const record = { scope: this.scope, ...this.known.get(item.id) };
      for (const name of FIELDS) if (item[name] !== undefined) record[name] = item[name];
      store.put(record);
    }
    for (const id of [...this.known.keys()]) {
      if (present.has(id)) continue;
      store.delete(id);
      this.known.delete(id);
    }
    await done(tx);
    this.durable = true;
  }
}
