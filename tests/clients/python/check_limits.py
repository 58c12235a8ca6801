"""The official Python client (oso-cloud 2.6.0, unchanged) against the sidecar's limits.

  OSO_URL=... OSO_AUTH=<writer> OSO_AUTH_READONLY=<reader> OSO_AUTH_DOOMED=<doomed> python check_limits.py before
  (the test then revokes `doomed` and raises maxBatchFacts to 25 and factWritesPerMinute to 600 with
  `orgkeeper apply`)
  ... python check_limits.py after

The environment is on the Developer plan (20 facts per batch) with factWritesPerMinute: 6.
"""

import os
import sys
import time

from oso_cloud import Oso, OsoException, Value

URL = os.environ["OSO_URL"]
writer = Oso(url=URL, api_key=os.environ["OSO_AUTH"])
reader = Oso(url=URL, api_key=os.environ["OSO_AUTH_READONLY"])
doomed = Oso(url=URL, api_key=os.environ["OSO_AUTH_DOOMED"])


def ok(name):
    print(f"ok - {name}", flush=True)


def fact(n):
    return ("has_role", Value("User", f"user-{n}"), Value("String", "member"), Value("Organization", "acme"))


def batch_of(n, offset=0):
    """A call that inserts n facts in one batch request."""
    def run():
        with writer.batch() as tx:
            for i in range(n):
                tx.insert(fact(offset + i))
    return run


def error_of(call):
    try:
        call()
    except OsoException as e:
        return e
    return None


def eventually(what, limit, check):
    """Retries `check` until it returns True; returns the seconds it took. Fails after `limit` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if check():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {limit} s")


def before():
    e = error_of(lambda: reader.insert(fact(0)))
    assert e is not None and e.status_code == 403, f"read-only write: {e}"
    ok("a read-only key's write raises OsoException 403")

    e = error_of(batch_of(21))
    assert e is not None and e.status_code == 413, f"21-fact batch: {e}"
    assert "20" in str(e), f"the message names the limit: {e}"
    ok(f"a 21-fact batch on the Developer plan raises 413 ({e})")

    # The budget is 6 facts a minute. Spend it, then the next write is refused with 429 and a Retry-After.
    batch_of(6, offset=100)()
    e = error_of(lambda: writer.insert(fact(200)))
    assert e is not None and e.status_code == 429, f"past the budget: {e}"
    assert e.retry_after is not None and 1 <= e.retry_after <= 10, f"Retry-After: {e.retry_after}"
    ok(f"past the write budget: 429 with Retry-After {e.retry_after} s")
    time.sleep(e.retry_after)
    writer.insert(fact(200))
    ok("a write sent after Retry-After passes (the header is honest)")

    assert doomed.get(("has_role", Value("User", "user-200"))) is not None
    ok("the key about to be revoked still works")


def after():
    took = eventually("revoked key refused", 5, lambda: getattr(error_of(lambda: doomed.get(("has_role",))), "status_code", None) == 401)
    ok(f"a revoked key raises 401 within {took:.1f} s of the revocation")
    # The test raised maxBatchFacts from 20 to 25 (and factWritesPerMinute from 6 to 600, since a 21-fact batch
    # would exceed a 6-per-minute budget) in the Environment; the sidecar applies both without a restart.
    took = eventually("raised batch limit", 5, lambda: error_of(batch_of(21, offset=300)) is None)
    ok(f"raising maxBatchFacts applies live within {took:.1f} s: a 21-fact batch passes")


{"before": before, "after": after}[sys.argv[1]]()
print("== limits through the sidecar: all passed", flush=True)
