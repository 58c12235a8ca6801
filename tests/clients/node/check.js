// The official Node client oso-cloud 2.6.0, unchanged, against an orgkeeper fact store (or the sidecar).
//
// Environment: OSO_URL, OSO_AUTH (a ReadWrite key), OSO_AUTH_READONLY (a ReadOnly key of the same environment).
// NODE_PATH must point at a node_modules holding oso-cloud@2.6.0 (tests/clients/run.sh sets it up).
"use strict";

const assert = require("node:assert/strict");
const { Oso } = require("oso-cloud");
const version = require("oso-cloud/package.json").version;

assert.equal(version, "2.6.0");

const url = process.env.OSO_URL;
const oso = new Oso(url, process.env.OSO_AUTH);
const reader = new Oso(url, process.env.OSO_AUTH_READONLY);

const PREDICATES = { has_role: 3, has_relation: 3, is_public: 2, has_count: 2, tagged: 1, wide: 5 };

function ok(name) {
  console.log(`ok   node 2.6.0: ${name}`);
}

const user = (id) => ({ type: "User", id });
const org = (id) => ({ type: "Organization", id });
const role = (u, r, o) => ["has_role", user(u), r, org(o)];

// Client facts as sorted plain arrays: [["has_role", "User:alice", "String:admin", ...], ...]
function plain(facts) {
  return facts.map(([p, ...args]) => [p, ...args.map((a) => `${a.type}:${a.id}`)]).sort();
}
function roles(...triples) {
  return triples.map(([u, r, o]) => ["has_role", `User:${u}`, `String:${r}`, `Organization:${o}`]).sort();
}

async function expectError(status, call) {
  try {
    await call();
  } catch (e) {
    assert.equal(e.statusCode, status, `expected ${status}, got ${e.statusCode}: ${e.message}`);
    return e.message;
  }
  assert.fail(`expected an OsoError with status ${status}, got success`);
}

async function main() {
  for (const [predicate, arity] of Object.entries(PREDICATES)) {
    await oso.delete([predicate, ...Array(arity).fill(null)]);
  }
  for (const predicate of Object.keys(PREDICATES)) {
    assert.deepEqual(await oso.get([predicate]), []);
  }
  ok("reset with all-wildcard deletes");

  await oso.insert(role("alice", "admin", "acme"));
  await oso.insert(["is_public", { type: "Repository", id: "anvil" }, true]);
  await oso.insert(["has_count", { type: "Repository", id: "anvil" }, 42]);
  await oso.insert(["tagged", { type: "Repository", id: "anvil" }]);
  const wide = ["wide", ...[0, 1, 2, 3, 4].map((i) => ({ type: `T${i}`, id: `id${i}` }))];
  await oso.insert(wide);
  assert.deepEqual(plain(await oso.get(role("alice", "admin", "acme"))), roles(["alice", "admin", "acme"]));
  assert.deepEqual(plain(await oso.get(["is_public", null, true])), [
    ["is_public", "Repository:anvil", "Boolean:true"],
  ]);
  assert.deepEqual(plain(await oso.get(["has_count", null, 42])), [["has_count", "Repository:anvil", "Integer:42"]]);
  assert.deepEqual(plain(await oso.get(["tagged", null])), [["tagged", "Repository:anvil"]]);
  assert.deepEqual(plain(await oso.get(wide)), [["wide", "T0:id0", "T1:id1", "T2:id2", "T3:id3", "T4:id4"]]);
  ok("insert and get with 1, 2, 3 and 5 arguments");

  await oso.insert(role("alice", "admin", "acme"));
  assert.equal((await oso.get(["has_role", null, null, null])).length, 1);
  ok("insert is idempotent");

  await oso.delete(role("alice", "admin", "acme"));
  assert.deepEqual(await oso.get(["has_role", null, null, null]), []);
  ok("delete a concrete fact");

  await oso.batch((tx) => {
    tx.insert(role("alice", "member", "acme"));
    tx.insert(role("alice", "admin", "beta"));
    tx.insert(role("bob", "viewer", "acme"));
  });
  await oso.delete(["has_role", user("alice"), null, { type: "Organization" }]);
  assert.deepEqual(plain(await oso.get(["has_role", null, null, null])), roles(["bob", "viewer", "acme"]));
  await oso.delete(["wide", null, null, null, null, { type: "T4" }]);
  assert.deepEqual(await oso.get(["wide"]), []);
  ok("delete with wildcards (including past the fourth argument)");

  await oso.batch((tx) => {
    tx.insert(role("alice", "member", "acme"));
    tx.insert(["has_relation", { type: "Repository", id: "anvil" }, "parent", org("acme")]);
    tx.delete(["has_role", user("bob"), null, null]);
    tx.insert(role("carol", "viewer", "acme"));
    tx.delete(role("carol", "viewer", "acme"));
    tx.insert(role("carol", "viewer", "acme"));
  });
  assert.deepEqual(
    plain(await oso.get(["has_role", null, null, null])),
    roles(["alice", "member", "acme"], ["carol", "viewer", "acme"]),
  );
  assert.deepEqual(plain(await oso.get(["has_relation", { type: "Repository", id: "anvil" }, null, null])), [
    ["has_relation", "Repository:anvil", "String:parent", "Organization:acme"],
  ]);
  ok("batch of mixed inserts and deletes, in order");

  const message = await expectError(400, () =>
    oso.batch((tx) => {
      tx.insert(role("dave", "member", "acme"));
      tx.insert(role("x".repeat(2000), "member", "acme"));
    }),
  );
  assert.match(message, /1024/);
  assert.deepEqual(await oso.get(role("dave", "member", "acme")), []);
  ok("a refused batch changes nothing (400)");

  await oso.insert(role("bob", "admin", "beta"));
  assert.deepEqual(
    plain(await oso.get(["has_role", { type: "User" }, null, org("acme")])),
    roles(["alice", "member", "acme"], ["carol", "viewer", "acme"]),
  );
  assert.deepEqual(plain(await oso.get(["has_role", null, "admin", null])), roles(["bob", "admin", "beta"]));
  assert.deepEqual(plain(await oso.get(["has_role", user("bob"), null, null])), roles(["bob", "admin", "beta"]));
  assert.equal((await oso.get(["has_role"])).length, 3);
  assert.deepEqual(await oso.get(["has_role", user("nobody"), null, null]), []);
  ok("get with wildcards and any arity");

  assert.equal((await reader.get(["has_role", null, null, null])).length, 3);
  await expectError(403, () => reader.insert(role("mallory", "admin", "acme")));
  await expectError(403, () => reader.delete(["has_role", null, null, null]));
  assert.equal((await oso.get(["has_role", null, null, null])).length, 3);
  ok("a read-only key's write raises OsoError with statusCode 403");

  await expectError(401, () => new Oso(url, "e_nope_nope_nope").get(["has_role"]));
  ok("an unknown key raises OsoError with statusCode 401");

  if ((process.env.ORGKEEPER_EXPECT_NO_POLICIES ?? "1") === "1") {
    // 404, which the client does not retry (it retries 400, 429 and 500-504, 501 included).
    const message = await expectError(404, () => oso.authorize(user("alice"), "read", { type: "Repository", id: "anvil" }));
    assert.match(message, /does not evaluate policies/);
    ok("policy evaluation answers 404 saying the fact store does not evaluate policies");
  }
  console.log("node 2.6.0: all checks passed");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
