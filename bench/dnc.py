"""DNC benchmark: index import rate, Redis memory per number (projected to the US registry), and
CheckNumbers throughput against a raw-Redis baseline measured in the same run.

    python bench/dnc.py [--numbers 10000000] [--pg-numbers 1000000] [--batches 50]

Numbers are generated at the US registry's density: ~250 M numbers over ~330 area codes is ~760,000 per
area code, so N numbers fill ceil(N / 760,000) area codes. A private Redis and a throwaway PostgreSQL
database are used (the machine's PostgreSQL on :5432 when it answers, else a private one).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, os.path.dirname(__file__))
from _common import console, table

from outdial.core import db, keys
from outdial.core.auth import issue_token
from outdial.core.clients import open_channel
from outdial.core.config import Settings
from outdial.core.infra import PrivateServer, port_open, start_private_postgres, start_private_redis
from outdial.core.signing import dev_key
from outdial.dnc.index import DncIndex
from outdial.v1 import common_pb2, dnc_pb2, dnc_pb2_grpc

US_REGISTRY = 250_000_000
US_AREA_CODES = 330
PER_NPA = US_REGISTRY // US_AREA_CODES


def generate(n: int, seed: int = 7) -> list[int]:
    """n distinct NANP numbers (as integers 1NPANXXXXXX), sorted, at the registry's density."""
    rng = random.Random(seed)
    npas = rng.sample(range(201, 990), math.ceil(n / PER_NPA))
    out: list[int] = []
    left = n
    for npa in sorted(npas):
        k = min(left, PER_NPA)
        subs = rng.sample(range(2_000_000, 10_000_000), k)  # NXX starts 2-9
        base = 10_000_000_000 + npa * 10_000_000
        out.extend(base + s for s in subs)
        left -= k
    out.sort()
    return out


async def used_memory(r: aioredis.Redis) -> int:
    info = await r.info("memory")
    return int(info["used_memory"])


async def key_memory(r: aioredis.Redis, names: list[str]) -> int:
    """Exact memory of the keys (MEMORY USAGE ... SAMPLES 0): INFO's used_memory also counts client query
    buffers that a bulk load leaves behind for a while, which are not part of the index."""
    total = 0
    for i in range(0, len(names), 500):
        pipe = r.pipeline(transaction=False)
        for k in names[i : i + 500]:
            pipe.memory_usage(k, samples=0)
        total += sum(int(v or 0) for v in await pipe.execute())
    return total


async def bench_index(r: aioredis.Redis, numbers: list[int]) -> dict[str, Any]:
    """Load numbers into a bitmap index version with the same writer the rebuild uses."""
    index = DncIndex(r)
    await r.flushdb()
    base = await used_memory(r)
    payload = "\n".join(map(str, numbers)).encode() + b"\n"
    writer = index.bitmap_writer(1, "national:US")
    t0 = time.perf_counter()
    for i in range(0, len(payload), 1 << 20):  # COPY delivers chunks of about this size
        await writer.feed(payload[i : i + (1 << 20)])
    count = await writer.close()
    elapsed = time.perf_counter() - t0
    await r.set(keys.dnc_index_current(), "1")
    used = await used_memory(r) - base
    fields = await r.hkeys(keys.dnc_index_meta(1))
    names = [keys.dnc_index(1, f.decode()[2:]) for f in fields if f.startswith(b"k:")]
    mem = await key_memory(r, names)
    prefixes = len({n // 10_000_000 for n in numbers})
    per_key = mem / prefixes
    projected = per_key * US_AREA_CODES / US_REGISTRY
    return {
        "count": count,
        "seconds": elapsed,
        "rate": count / elapsed,
        "memory": mem,
        "used_memory_delta": used,
        "prefixes": prefixes,
        "bytes_per_number": mem / count,
        "projected_bytes_per_number": projected,
    }


async def bench_alternatives(r: aioredis.Redis, numbers: list[int]) -> list[tuple[str, float]]:
    """Bytes per number of the rejected layouts, measured on one area code's worth of numbers."""
    sample = [n for n in numbers if n // 10_000_000 == numbers[0] // 10_000_000][:200_000]
    out = []
    scratch = 2
    # a Redis set of E.164 strings
    key = keys.dnc_index(scratch, "alt|set")
    for i in range(0, len(sample), 10_000):
        await r.sadd(key, *(f"+{n}" for n in sample[i : i + 10_000]))
    out.append(("set of E.164 strings", await key_memory(r, [key]) / len(sample)))
    await r.unlink(key)
    # integer sets per NPA-NXX (members = last 4 digits), with the default intset limit
    by_nxx: dict[int, list[int]] = {}
    for n in sample:
        by_nxx.setdefault(n // 10_000, []).append(n % 10_000)
    pipe = r.pipeline(transaction=False)
    for nxx, members in by_nxx.items():
        pipe.sadd(keys.dnc_index(scratch, f"alt|{nxx}"), *members)
    await pipe.execute()
    nxx_keys = [keys.dnc_index(scratch, f"alt|{nxx}") for nxx in by_nxx]
    per = len(sample) // max(1, len(by_nxx))
    out.append(
        (f"sets per NPA-NXX ({per}/key, default intset limit)", await key_memory(r, nxx_keys) / len(sample))
    )
    # the same with set-max-intset-entries raised so that every NPA-NXX set stays an intset
    await r.config_set("set-max-intset-entries", 10_000)
    pipe = r.pipeline(transaction=False)
    for nxx, members in by_nxx.items():
        pipe.unlink(keys.dnc_index(scratch, f"alt|{nxx}"))
        pipe.sadd(keys.dnc_index(scratch, f"alt|{nxx}"), *members)
    await pipe.execute()
    out.append(
        ("intsets per NPA-NXX (set-max-intset-entries 10000)", await key_memory(r, nxx_keys) / len(sample))
    )
    await r.config_set("set-max-intset-entries", 512)
    await r.unlink(*nxx_keys)
    return out


async def bench_service(
    settings: Settings, r: aioredis.Redis, numbers: list[int], pg_numbers: int, batches: int
) -> dict[str, Any]:
    from outdial.core.server import serve
    from outdial.dnc.app import SPEC

    os.environ["OUTDIAL_DNC_CONSUME_EVENTS"] = "false"
    stop = asyncio.Event()
    port_box: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(SPEC, settings, stop=stop, started=port_box.set_result))
    port = await port_box
    token = issue_token(dev_key("issuer"), "bench", "compliance")
    ch = open_channel(settings, f"127.0.0.1:{port}", lambda: token)
    stub = dnc_pb2_grpc.DncServiceStub(ch)
    md = [("authorization", f"Bearer {token}")]
    res: dict[str, Any] = {}
    try:
        rng = random.Random(11)
        listed = rng.sample(numbers, pg_numbers) if pg_numbers < len(numbers) else list(numbers)
        listed.sort()
        payload = "\n".join(str(n)[1:] for n in listed).encode() + b"\n"

        async def gen() -> Any:
            yield dnc_pb2.ImportRegistryRequest(
                header=dnc_pb2.ImportRegistryHeader(
                    list_kind=dnc_pb2.LIST_KIND_NATIONAL,
                    jurisdiction=common_pb2.JURISDICTION_US,
                    mode=dnc_pb2.IMPORT_MODE_FULL,
                    downloaded_at=_ts(datetime.now(UTC) - timedelta(days=1)),
                )
            )
            for i in range(0, len(payload), 1 << 20):
                yield dnc_pb2.ImportRegistryRequest(chunk=payload[i : i + (1 << 20)])

        t0 = time.perf_counter()
        imp = await stub.ImportRegistry(gen(), timeout=3600, metadata=md)
        res["import_seconds"] = time.perf_counter() - t0
        res["import_added"] = imp.added

        async def no_wireless() -> Any:
            # A current (empty) wireless list: every number is a known landline, so only the registry blocks
            # (without one an autodialled call's line type is unknown and every number is refused).
            yield dnc_pb2.ImportRegistryRequest(
                header=dnc_pb2.ImportRegistryHeader(
                    list_kind=dnc_pb2.LIST_KIND_WIRELESS,
                    jurisdiction=common_pb2.JURISDICTION_US,
                    mode=dnc_pb2.IMPORT_MODE_FULL,
                    downloaded_at=_ts(datetime.now(UTC) - timedelta(days=1)),
                )
            )

        await stub.ImportRegistry(no_wireless(), timeout=3600, metadata=md)
        t0 = time.perf_counter()
        rb = await stub.RebuildIndex(dnc_pb2.RebuildIndexRequest(), timeout=3600)
        res["rebuild_seconds"] = time.perf_counter() - t0
        res["rebuild_numbers"] = rb.numbers

        # batches of 1,000: half listed, half not listed (random numbers in the same area codes)
        version = int(await r.get(keys.dnc_index_current()))
        batches_e164: list[list[str]] = []
        for _ in range(batches):
            half = rng.sample(listed, 500)
            other = [n - (n % 10_000_000) + rng.randrange(2_000_000, 10_000_000) for n in half]
            batches_e164.append([f"+{n}" for n in half + other])
        # raw Redis baseline: one pipeline of GETBITs per batch against the same bitmaps
        t0 = time.perf_counter()
        hits_raw = 0
        for b in batches_e164:
            pipe = r.pipeline(transaction=False)
            for e in b:
                digits = e[1:]
                pipe.getbit(keys.dnc_index(version, f"national:US|{digits[:-7]}"), int(digits[-7:]))
            hits_raw += sum(await pipe.execute())
        raw_s = time.perf_counter() - t0
        # the service
        await stub.CheckNumbers(dnc_pb2.CheckNumbersRequest(numbers=batches_e164[0]), timeout=30)  # warm
        t0 = time.perf_counter()
        blocked = 0
        for b in batches_e164:
            resp = await stub.CheckNumbers(
                dnc_pb2.CheckNumbersRequest(numbers=b, jurisdiction=common_pb2.JURISDICTION_US), timeout=30
            )
            blocked += sum(1 for d in resp.decisions if not d.allowed)
        svc_s = time.perf_counter() - t0
        assert blocked == hits_raw, (blocked, hits_raw)
        n = batches * 1000
        res.update(raw_rate=n / raw_s, svc_rate=n / svc_s, ratio=svc_s / raw_s, blocked=blocked, checked=n)
    finally:
        await ch.close()
        stop.set()
        await task
    return res


def _ts(dt: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromDatetime(dt)
    return t


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--numbers", type=int, default=10_000_000, help="numbers loaded into the index")
    ap.add_argument(
        "--pg-numbers",
        type=int,
        default=1_000_000,
        help="numbers imported end to end through ImportRegistry (PostgreSQL COPY + rebuild)",
    )
    ap.add_argument("--batches", type=int, default=50, help="CheckNumbers batches of 1,000")
    args = ap.parse_args()
    private: list[PrivateServer] = []
    rd = start_private_redis()
    private.append(rd)
    if port_open("127.0.0.1", 5432):
        server_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        pg = start_private_postgres()
        private.append(pg)
        server_url = pg.url
    dbname = f"outdial_bench_dnc_{os.getpid()}"
    conn = await asyncpg.connect(server_url)
    await conn.execute(f'CREATE DATABASE "{dbname}"')
    await conn.close()
    db_url = server_url.rpartition("/")[0] + "/" + dbname
    r = aioredis.from_url(rd.url)
    try:
        await db.migrate_url(db_url)
        console.print(f"generating {args.numbers:,} numbers ...")
        numbers = generate(args.numbers)
        idx = await bench_index(r, numbers)
        alts = await bench_alternatives(r, numbers)
        await r.flushdb()
        settings = Settings(
            database_url=db_url,
            redis_url=rd.url,
            listen_port=0,
            metrics_port=0,
            log_level="WARNING",
            dev=True,  # a benchmark is development: the development audit key and checkpoint directory
        )
        svc = await bench_service(settings, r, numbers, min(args.pg_numbers, len(numbers)), args.batches)
    finally:
        await r.aclose()
        conn = await asyncpg.connect(server_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await conn.close()
        for p in reversed(private):
            p.stop()

    table(
        f"DNC index: {idx['count']:,} numbers over {idx['prefixes']} area codes",
        ["figure", "value", "target"],
        [
            ("index load rate (numbers/s)", f"{idx['rate']:,.0f}", ">= 1,000,000"),
            ("index load time (s)", idx["seconds"], ""),
            ("Redis memory of the index keys (MB, MEMORY USAGE)", idx["memory"] / 1e6, ""),
            ("INFO used_memory growth (MB, incl. client buffers)", idx["used_memory_delta"] / 1e6, ""),
            ("bytes per number (this run)", idx["bytes_per_number"], ""),
            (
                "bytes per number projected to 250 M over 330 area codes",
                idx["projected_bytes_per_number"],
                "<= 2",
            ),
        ],
    )
    table("Rejected layouts (measured, one area code)", ["layout", "bytes per number"], alts)
    table(
        "Through the service",
        ["figure", "value", "target"],
        [
            (
                f"ImportRegistry FULL of {svc['import_added']:,} numbers, incl. COPY + rebuild (s)",
                svc["import_seconds"],
                "",
            ),
            (
                f"RebuildIndex from PostgreSQL, {svc['rebuild_numbers']:,} numbers (s)",
                svc["rebuild_seconds"],
                "",
            ),
            ("raw Redis GETBIT pipeline (numbers/s)", f"{svc['raw_rate']:,.0f}", "baseline"),
            ("CheckNumbers, batches of 1,000 (numbers/s)", f"{svc['svc_rate']:,.0f}", ""),
            ("CheckNumbers time / raw Redis time", svc["ratio"], "<= 2"),
        ],
    )
    console.print(
        "Projection: a bitmap key costs the same (10 M bits, 1.31 MB as allocated) per area code whatever its "
        "fill, so memory = area codes x measured bytes per key; the US registry (~250 M numbers in ~330 area "
        "codes) needs "
        f"{idx['projected_bytes_per_number'] * US_REGISTRY / 1e6:,.0f} MB."
    )


if __name__ == "__main__":
    asyncio.run(main())
