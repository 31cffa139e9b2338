#!/usr/bin/env python3
"""Stock invariants over the HTTP face, after a Schemathesis run (scripts/http-suite.sh).

Walks every SKU with GET /v1/skus (following page tokens and leader redirects) and
checks: SKUs strictly increasing (each exactly once), on_hand >= reserved,
available == on_hand - reserved, quantities within the store's maximum. Then reads
each node's stale view and checks that every replica converged to the same records.
Exits non-zero naming the first broken invariant.
"""
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

QTY_MAX = 10**15


def opener(ca, cert, key):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))


def walk(http, base, consistency):
    records, token, pages = [], None, 0
    while True:
        query = {"page_size": "50", "consistency": consistency}
        if token:
            query["page_token"] = token
        url = f"{base}/v1/skus?{urllib.parse.urlencode(query)}"
        with http.open(url, timeout=10) as reply:
            page = json.load(reply)
        records += page["records"]
        token = page.get("next_page_token")
        pages += 1
        if not token:
            return records
        if pages > 10_000:
            sys.exit("more than 10,000 pages: the walk does not end")


def check(records):
    previous = None
    for r in records:
        sku = r["sku"]
        if previous is not None and not previous < sku.encode():
            sys.exit(f"SKUs out of order or repeated: {previous!r} then {sku!r}")
        previous = sku.encode()
        if r["on_hand"] < r["reserved"]:
            sys.exit(f"{sku!r}: on_hand {r['on_hand']} < reserved {r['reserved']}")
        if r["available"] != r["on_hand"] - r["reserved"]:
            sys.exit(f"{sku!r}: available {r['available']} != on_hand - reserved")
        if r["on_hand"] > QTY_MAX:
            sys.exit(f"{sku!r}: on_hand {r['on_hand']} over the maximum")


def main():
    ca, cert, key, *bases = sys.argv[1:]
    http = opener(ca, cert, key)
    records = walk(http, bases[0], "linearizable")
    check(records)
    print(f"invariants hold over {len(records)} SKUs")
    # Replicas converge: each node's stale view equals the linearizable one (a
    # follower may lag a moment, so poll for a bounded time).
    for base in bases:
        for _ in range(50):
            if walk(http, base, "stale") == records:
                break
            time.sleep(0.2)
        else:
            sys.exit(f"{base}: its replicas' records differ from the leaders' after 10 s")
    print(f"every node's replicas hold the same {len(records)} records")


if __name__ == "__main__":
    main()
