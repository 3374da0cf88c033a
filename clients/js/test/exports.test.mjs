// The declarations (realtime.d.ts) against the module's real exports, without a
// TypeScript compiler: every value the .d.ts declares (class, function, const) is
// exported, every export is declared, and the classes' declared methods and properties
// exist on the real ones.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as realtime from "@wedsync/realtime";

const dts = readFileSync(new URL("../realtime.d.ts", import.meta.url), "utf8");

/** The names of `export class|function|const|let X` (types and interfaces are erased). */
function declaredValues(text) {
  const names = new Set();
  for (const match of text.matchAll(/^export (?:declare )?(?:class|function|const|let) (\w+)/gm)) {
    names.add(match[1]);
  }
  return names;
}

/** The members declared in `export class Name { ... }`: methods, and properties. */
function declaredMembers(text, name) {
  const start = text.indexOf(`export class ${name} `);
  assert.ok(start >= 0, `${name} is not declared`);
  const body = text.slice(text.indexOf("{", start) + 1, text.indexOf("\n}", start));
  const methods = new Set();
  const properties = new Set();
  for (const match of body.matchAll(/^  (readonly )?(\w+)(\(|\??:)/gm)) {
    if (match[2] === "constructor") continue;
    (match[3] === "(" ? methods : properties).add(match[2]);
  }
  return { methods, properties };
}

test("the package resolves to the client module through its exports map", () => {
  assert.equal(typeof realtime.RealtimeClient, "function");
});

test("every declared value is exported and every export is declared", () => {
  const declared = [...declaredValues(dts)].sort();
  const exported = Object.keys(realtime).sort();
  assert.deepEqual(declared, exported);
});

test("the client's declared methods are its methods", () => {
  const { methods } = declaredMembers(dts, "RealtimeClient");
  assert.ok(methods.size >= 8, [...methods].join(","));
  for (const name of methods) {
    assert.equal(typeof realtime.RealtimeClient.prototype[name], "function", name);
  }
  const exposed = Object.getOwnPropertyNames(realtime.RealtimeClient.prototype).filter(
    (name) => !name.startsWith("_") && name !== "constructor",
  );
  const { properties } = declaredMembers(dts, "RealtimeClient");
  for (const name of exposed) {
    assert.ok(methods.has(name) || properties.has(name), `${name} is not declared`);
  }
});

test("the client's declared properties exist on an instance (made without a browser)", () => {
  const client = new realtime.RealtimeClient({ baseUrl: "http://127.0.0.1:9", onEvent() {} });
  const { properties } = declaredMembers(dts, "RealtimeClient");
  for (const name of properties) assert.ok(name in client, name);
  assert.equal(client.url, "ws://127.0.0.1:9/ws/realtime/");
  assert.equal(client.state, "connecting");
  assert.equal(client.transport, "websocket");
});

test("RequestError carries the declared fields", () => {
  const { properties } = declaredMembers(dts, "RequestError");
  const error = new realtime.RequestError("forbidden", "no", { type: "reply" });
  assert.ok(error instanceof Error);
  for (const name of properties) assert.ok(name in error, name);
});

test("a token goes on the WebSocket URL, never replacing the path", () => {
  const client = new realtime.RealtimeClient({
    baseUrl: "https://rt.example.com/",
    token: "abc+/=",
    onEvent() {},
  });
  assert.equal(client.url, "wss://rt.example.com/ws/realtime/?token=abc%2B%2F%3D");
  assert.match(realtime.newKey(), /^[0-9a-f]{32}$/);
});
