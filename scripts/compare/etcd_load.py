#!/usr/bin/env python3
"""Conditional decrements against etcd's v3 JSON gateway, the way an inventory on etcd
would do them: read the key, and if its value is at least 1 write value-1 in a
transaction guarded by the key's mod_revision (retry on conflict). Used by
scripts/bench-compare.sh with the workload semantics of `stockpile bench`:

  hot      one key with stock 10^12
  uniform  10,000 keys with stock 10^12 each, a uniformly random key per op

  etcd_load.py ENDPOINTS WORKLOAD CLIENTS SECONDS [--setup]

Prints one JSON object: succeeded, per_s, conflicts, errors, latency_ms p50/p99.
Standard library only (asyncio with raw HTTP/1.1 keep-alive connections).
"""

import asyncio
import base64
import json
import random
import sys
import time

STOCK = 10**12
UNIFORM_KEYS = 10_000


def b64(s):
    return base64.b64encode(s.encode()).decode()


def key_of(workload, rng):
    if workload == "hot":
        return "sku-hot"
    return "sku-%05d" % rng.randrange(UNIFORM_KEYS)


class Conn:
    """One keep-alive HTTP/1.1 connection to one etcd member's gateway."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path, body):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        self.writer.write(head + data)
        await self.writer.drain()
        status = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(status.decode().strip() + " " + payload[:200].decode())
        return json.loads(payload)


async def decrement(conn, key):
    """True when one unit was taken; retries the CAS on conflict. Returns conflicts too."""
    conflicts = 0
    while True:
        got = await conn.post("/v3/kv/range", {"key": b64(key)})
        kv = got["kvs"][0]
        value = int(base64.b64decode(kv["value"]))
        if value < 1:
            return False, conflicts
        txn = {
            "compare": [
                {
                    "key": b64(key),
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": kv["mod_revision"],
                }
            ],
            "success": [{"request_put": {"key": b64(key), "value": b64(str(value - 1))}}],
        }
        done = await conn.post("/v3/kv/txn", txn)
        if done.get("succeeded"):
            return True, conflicts
        conflicts += 1


async def worker(endpoint, workload, until, stats, seed):
    host, port = endpoint.split(":")
    conn = Conn(host, int(port))
    rng = random.Random(seed)
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            ok, conflicts = await decrement(conn, key_of(workload, rng))
            stats["conflicts"] += conflicts
            if ok:
                stats["succeeded"] += 1
                stats["latencies"].append(time.monotonic() - started)
        except Exception as e:  # a failed call is counted, the connection redone
            stats["errors"] += 1
            stats["last_error"] = str(e)
            conn = Conn(host, int(port))
            await asyncio.sleep(0.01)


async def setup(endpoint, workload):
    """Puts every key with its stock, over 32 connections at once."""
    host, port = endpoint.split(":")
    keys = ["sku-hot"] if workload == "hot" else ["sku-%05d" % i for i in range(UNIFORM_KEYS)]

    async def put_all(part):
        conn = Conn(host, int(port))
        for k in part:
            await conn.post("/v3/kv/put", {"key": b64(k), "value": b64(str(STOCK))})

    await asyncio.gather(*(put_all(keys[i::32]) for i in range(32)))


async def main():
    endpoints = sys.argv[1].split(",")
    workload, clients, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if "--setup" in sys.argv:
        await setup(endpoints[0], workload)
        return
    stats = {"succeeded": 0, "conflicts": 0, "errors": 0, "latencies": [], "last_error": None}
    until = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(
        *(worker(endpoints[i % len(endpoints)], workload, until, stats, i) for i in range(clients))
    )
    elapsed = time.monotonic() - started
    lat = sorted(stats["latencies"])

    def pct(p):
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

    print(
        json.dumps(
            {
                "succeeded": stats["succeeded"],
                "per_s": round(stats["succeeded"] / elapsed, 1),
                "conflicts": stats["conflicts"],
                "errors": stats["errors"],
                "last_error": stats["last_error"],
                "latency_ms": {"p50": pct(0.5), "p99": pct(0.99)},
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
