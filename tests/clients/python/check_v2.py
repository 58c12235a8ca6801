"""The official Python client oso-cloud 2.6.0, unchanged, against an orgkeeper fact store (or the sidecar).

Environment: OSO_URL, OSO_AUTH (a ReadWrite key), OSO_AUTH_READONLY (a ReadOnly key of the same environment).
Exits non-zero on the first mismatch. Starts by deleting every fact of the predicates it uses, so it can run
again on the same environment; run the client scripts one after another, not at the same time.
"""

import os
import sys

import oso_cloud
from oso_cloud import Oso, OsoException, Value, ValueOfType

assert oso_cloud.version.__version__ == "2.6.0", oso_cloud.version.__version__

URL = os.environ["OSO_URL"]
oso = Oso(url=URL, api_key=os.environ["OSO_AUTH"])
reader = Oso(url=URL, api_key=os.environ["OSO_AUTH_READONLY"])

# Predicates this script owns, with their arities.
PREDICATES = {"has_role": 3, "has_relation": 3, "is_public": 2, "has_count": 2, "tagged": 1, "wide": 5}


def ok(name):
    print(f"ok   python 2.6.0: {name}", flush=True)


def plain(facts):
    """Client facts as sorted plain tuples: ("has_role", ("User", "alice"), ...)."""
    return sorted((f[0], *[(v.type, v.id) for v in f[1:]]) for f in facts)


def role(user, name, org):
    return ("has_role", Value("User", user), name, Value("Organization", org))


def roles(*triples):
    return sorted(("has_role", ("User", u), ("String", r), ("Organization", o)) for u, r, o in triples)


def expect_error(status, call):
    try:
        call()
    except OsoException as e:
        assert e.status_code == status, f"expected {status}, got {e.status_code}: {e}"
        return str(e)
    raise AssertionError(f"expected an OsoException with status {status}, got success")


for predicate, arity in PREDICATES.items():
    oso.delete((predicate, *([None] * arity)))
for predicate in PREDICATES:
    assert oso.get((predicate,)) == [], predicate
ok("reset with all-wildcard deletes")

# insert, any arity, and values of every client type
oso.insert(role("alice", "admin", "acme"))
oso.insert(("is_public", Value("Repository", "anvil"), True))
oso.insert(("has_count", Value("Repository", "anvil"), 42))
oso.insert(("tagged", Value("Repository", "anvil")))
wide = ("wide", *[Value(f"T{i}", f"id{i}") for i in range(5)])
oso.insert(wide)
assert plain(oso.get(role("alice", "admin", "acme"))) == roles(("alice", "admin", "acme"))
assert plain(oso.get(("is_public", Value("Repository", "anvil"), True))) == [
    ("is_public", ("Repository", "anvil"), ("Boolean", "true"))
]
assert plain(oso.get(("has_count", None, 42))) == [("has_count", ("Repository", "anvil"), ("Integer", "42"))]
assert plain(oso.get(("tagged", None))) == [("tagged", ("Repository", "anvil"))]
assert plain(oso.get(wide)) == [("wide", *[(f"T{i}", f"id{i}") for i in range(5)])]
ok("insert and get with 1, 2, 3 and 5 arguments")

# inserting a fact twice keeps one copy (replays are harmless)
oso.insert(role("alice", "admin", "acme"))
assert len(oso.get(("has_role", None, None, None))) == 1
ok("insert is idempotent")

# delete a concrete fact
oso.delete(role("alice", "admin", "acme"))
assert oso.get(("has_role", None, None, None)) == []
ok("delete a concrete fact")

# delete with wildcards: null type and id, and a type without id
with oso.batch() as tx:
    tx.insert(role("alice", "member", "acme"))
    tx.insert(role("alice", "admin", "beta"))
    tx.insert(role("bob", "viewer", "acme"))
oso.delete(("has_role", Value("User", "alice"), None, ValueOfType("Organization")))
assert plain(oso.get(("has_role", None, None, None))) == roles(("bob", "viewer", "acme"))
oso.delete(("wide", None, None, None, None, ValueOfType("T4")))
assert oso.get(("wide",)) == []
ok("delete with wildcards (including past the fourth argument)")

# a batch of mixed inserts and deletes, applied in order
with oso.batch() as tx:
    tx.insert(role("alice", "member", "acme"))
    tx.insert(("has_relation", Value("Repository", "anvil"), "parent", Value("Organization", "acme")))
    tx.delete(("has_role", Value("User", "bob"), None, None))
    tx.insert(role("carol", "viewer", "acme"))
    tx.delete(role("carol", "viewer", "acme"))
    tx.insert(role("carol", "viewer", "acme"))
assert plain(oso.get(("has_role", None, None, None))) == roles(("alice", "member", "acme"), ("carol", "viewer", "acme"))
assert plain(oso.get(("has_relation", Value("Repository", "anvil"), None, None))) == [
    ("has_relation", ("Repository", "anvil"), ("String", "parent"), ("Organization", "acme"))
]
ok("batch of mixed inserts and deletes, in order")

# a batch is all or nothing: a fact the store refuses (an id over 1024 bytes) cancels the whole batch
def bad_batch():
    with oso.batch() as tx:
        tx.insert(role("dave", "member", "acme"))
        tx.insert(role("x" * 2000, "member", "acme"))


message = expect_error(400, bad_batch)
assert "1024" in message, message
assert oso.get(role("dave", "member", "acme")) == []
ok("a refused batch changes nothing (400)")

# get with wildcards, as in the captures
oso.insert(role("bob", "admin", "beta"))
assert plain(oso.get(("has_role", ValueOfType("User"), None, Value("Organization", "acme")))) == roles(
    ("alice", "member", "acme"), ("carol", "viewer", "acme")
)
assert plain(oso.get(("has_role", None, "admin", None))) == roles(("bob", "admin", "beta"))
assert plain(oso.get(("has_role", Value("User", "bob"), None, None))) == roles(("bob", "admin", "beta"))
assert len(oso.get(("has_role",))) == 3
assert oso.get(("has_role", Value("User", "nobody"), None, None)) == []
ok("get with wildcards and any arity")

# a read-only key reads but cannot write
assert len(reader.get(("has_role", None, None, None))) == 3
expect_error(403, lambda: reader.insert(role("mallory", "admin", "acme")))
expect_error(403, lambda: reader.delete(("has_role", None, None, None)))
assert len(oso.get(("has_role", None, None, None))) == 3
ok("a read-only key's write raises OsoException with status 403")

expect_error(401, lambda: Oso(url=URL, api_key="e_nope_nope_nope").get(("has_role",)))
ok("an unknown key raises OsoException with status 401")

if os.environ.get("ORGKEEPER_EXPECT_NO_POLICIES", "1") == "1":
    # 404, which the client does not retry (it retries 429 and every 5xx, 501 included).
    message = expect_error(404, lambda: oso.authorize(Value("User", "alice"), "read", Value("Repository", "anvil")))
    assert "does not evaluate policies" in message, message
    ok("policy evaluation answers 404 saying the fact store does not evaluate policies")

print("python 2.6.0: all checks passed")
sys.exit(0)
