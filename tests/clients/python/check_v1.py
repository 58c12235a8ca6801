"""The official Python client oso-cloud 1.5.1 (the legacy v1 fact endpoints), unchanged.

Environment: OSO_URL, OSO_AUTH (a ReadWrite key), OSO_AUTH_READONLY (a ReadOnly key of the same environment).
"""

import os
import sys

import oso_cloud.version
from oso_cloud import Oso

assert oso_cloud.version.__version__ == "1.5.1", oso_cloud.version.__version__

URL = os.environ["OSO_URL"]
oso = Oso(url=URL, api_key=os.environ["OSO_AUTH"])
reader = Oso(url=URL, api_key=os.environ["OSO_AUTH_READONLY"])


def ok(name):
    print(f"ok   python 1.5.1: {name}", flush=True)


def user(name):
    return {"type": "User", "id": name}


def org(name):
    return {"type": "Organization", "id": name}


def role(u, r, o):
    return {"name": "has_role", "args": [user(u), r, org(o)]}


def plain(facts):
    return sorted((f["name"], *[(a["type"], a["id"]) for a in f["args"]]) for f in facts)


def roles(*triples):
    return sorted(("has_role", ("User", u), ("String", r), ("Organization", o)) for u, r, o in triples)


ALL_ROLES = {"name": "has_role", "args": [None, None, None]}

oso.bulk(delete=[ALL_ROLES, {"name": "is_public", "args": [None, None]}], tell=[])
assert oso.get(ALL_ROLES) == []
ok("reset with bulk (wildcard deletes)")

told = oso.tell(role("alice", "admin", "acme"))
assert plain([told]) == roles(("alice", "admin", "acme")), told
assert plain(oso.get(role("alice", "admin", "acme"))) == roles(("alice", "admin", "acme"))
ok("tell returns the fact")

oso.bulk_tell([role("alice", "member", "acme"), {"name": "is_public", "args": [{"type": "Repository", "id": "anvil"}, True]}])
assert plain(oso.get(ALL_ROLES)) == roles(("alice", "admin", "acme"), ("alice", "member", "acme"))
assert plain(oso.get({"name": "is_public", "args": [None, None]})) == [
    ("is_public", ("Repository", "anvil"), ("Boolean", "true"))
]
ok("bulk_tell")

oso.delete(role("alice", "admin", "acme"))
assert plain(oso.get(ALL_ROLES)) == roles(("alice", "member", "acme"))
ok("delete")

oso.bulk_delete([role("alice", "member", "acme")])
assert oso.get(ALL_ROLES) == []
ok("bulk_delete")

oso.bulk_tell([role("alice", "member", "acme"), role("alice", "viewer", "beta"), role("bob", "member", "acme")])
oso.bulk(
    delete=[{"name": "has_role", "args": [user("alice"), None, {"type": "Organization"}]}],
    tell=[role("alice", "owner", "acme")],
)
assert plain(oso.get(ALL_ROLES)) == roles(("alice", "owner", "acme"), ("bob", "member", "acme"))
ok("bulk: wildcard deletes, then tells")

got = oso.get({"name": "has_role", "args": [user("alice"), None, {"type": "Organization"}]})
assert plain(got) == roles(("alice", "owner", "acme")), got
ok("get with wildcards")

assert len(reader.get(ALL_ROLES)) == 2
for write in (
    lambda: reader.tell(role("mallory", "admin", "acme")),
    lambda: reader.bulk_tell([role("mallory", "admin", "acme")]),
    lambda: reader.delete(role("bob", "member", "acme")),
    lambda: reader.bulk_delete([role("bob", "member", "acme")]),
    lambda: reader.bulk(delete=[ALL_ROLES], tell=[]),
):
    try:
        write()
    except Exception as e:  # 1.5.1 raises a plain Exception("Oso Server error: 403 ...")
        assert "403" in str(e), e
    else:
        raise AssertionError("a read-only key could write")
assert len(oso.get(ALL_ROLES)) == 2
ok("a read-only key's writes raise the client's exception carrying 403")

print("python 1.5.1: all checks passed")
sys.exit(0)
