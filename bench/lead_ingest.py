"""Lead-ingest benchmark: a generated CSV uploaded through the running campaign service end to end
(UploadLeads client stream -> CSV parse -> phonenumbers-exact normalisation -> COPY -> dedupe insert),
beside a baseline measured in the same run: COPY of the same rows already normalised.

    python bench/lead_ingest.py [--rows 1000000] [--small-rows 100000]

Prints rows/s for both, their ratio (target: end to end within 3x of the COPY baseline), and the service
process's peak RSS for a small and the full file (memory must not grow with the file). The service runs
as its own process (``python -m outdial.campaign``) on a throwaway database (the machine's PostgreSQL on
:5432 when it answers, else a private one) and a private Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg

sys.path.insert(0, os.path.dirname(__file__))
from _common import console, table

from outdial.core import db
from outdial.core.auth import issue_token
from outdial.core.clients import open_channel
from outdial.core.config import Settings
from outdial.core.healthcheck import wait_until_serving
from outdial.core.infra import PrivateServer, port_open, start_private_postgres, start_private_redis
from outdial.core.signing import dev_key
from outdial.rules.numbers import parse_number_fast
from outdial.v1 import campaign_pb2, campaign_pb2_grpc

NPAS = [
    "212",
    "646",
    "718",
    "310",
    "213",
    "415",
    "808",
    "305",
    "312",
    "713",
    "617",
    "206",
    "404",
    "702",
    "602",
]
FORMATS = ["({a}) {b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "+1 {a} {b} {c}", "1{a}{b}{c}", "{a}{b}{c}"]
FIRST = ["Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon"]
STATES = ["NY", "CA", "HI", "FL", "IL", "TX", "MA", "WA", "GA", "NV", "AZ"]


def rows(n: int, seed: int = 11) -> Iterator[tuple[str, str, str, str, str, str]]:
    """n rows: first, last, phone (mixed formats, ~1 % invalid), zip, state, notes."""
    rng = random.Random(seed)
    for i in range(n):
        a, b, c = rng.choice(NPAS), f"{rng.randint(200, 999)}", f"{rng.randint(0, 9999):04d}"
        phone = rng.choice(FORMATS).format(a=a, b=b, c=c) if rng.random() > 0.01 else "n/a"
        yield (rng.choice(FIRST), f"L{i}", phone, "", rng.choice(STATES), f"note {i}")


def write_csv(path: str, n: int) -> int:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("first_name,last_name,phone,zip,state,notes\r\n")
        for r in rows(n):
            fh.write(",".join(r) + "\r\n")
    return os.path.getsize(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def upload_through_service(db_url: str, redis_url: str, path: str) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "OUTDIAL_DATABASE_URL": db_url,
        "OUTDIAL_REDIS_URL": redis_url,
        "OUTDIAL_CAMPAIGN_ADDR": f"127.0.0.1:{port}",
        "OUTDIAL_METRICS_PORT": "0",
        "OUTDIAL_DEV": "1",
        "OUTDIAL_LOG_LEVEL": "WARNING",
        "OUTDIAL_CAMPAIGN_UPLOAD_MAX_BYTES": str(8 << 30),
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "outdial.campaign", env=env)
    try:
        addr = f"127.0.0.1:{port}"
        await wait_until_serving(addr)
        settings = Settings(dev=True)
        token = issue_token(dev_key("issuer"), "bench", "manager")
        async with open_channel(settings, addr, lambda: token) as ch:
            stub = campaign_pb2_grpc.CampaignServiceStub(ch)
            c = campaign_pb2.Campaign(name=f"bench-{uuid.uuid4().hex[:6]}", caller_id="+12125550100")
            cid = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign.id
            rss_idle = peak_rss_mb(proc.pid)

            async def chunks() -> AsyncIterator[campaign_pb2.UploadLeadsRequest]:
                yield campaign_pb2.UploadLeadsRequest(header=campaign_pb2.UploadLeadsHeader(campaign_id=cid))
                with open(path, "rb") as fh:
                    while data := fh.read(1 << 20):
                        yield campaign_pb2.UploadLeadsRequest(chunk=data)

            t0 = time.perf_counter()
            resp = await stub.UploadLeads(
                chunks(), metadata=[("authorization", f"Bearer {token}")], timeout=7200
            )
            secs = time.perf_counter() - t0
        return {"resp": resp, "secs": secs, "rss_idle": rss_idle, "rss_peak": peak_rss_mb(proc.pid)}
    finally:
        proc.terminate()
        await proc.wait()


async def copy_baseline(db_url: str, n: int) -> float:
    """COPY of the same rows, already normalised, into a table of the stored shape; seconds of COPY only."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """CREATE TABLE bench_copy (lead_id bigint, row_number bigint, first_name text, last_name text,
                   zip text, state text, fields jsonb, e164 text, number_type text, timezones text[])"""
        )
        batch: list[tuple[Any, ...]] = []
        spent = 0.0
        for i, (first, last, phone, zip_code, state, notes) in enumerate(rows(n)):
            try:
                p = parse_number_fast(phone)
            except ValueError:
                continue
            batch.append((i, i + 2, first, last, zip_code, state, json.dumps({"notes": notes}), p.e164,
                          p.number_type, list(p.timezones)))  # fmt: skip
            if len(batch) >= 50_000:
                t0 = time.perf_counter()
                await conn.copy_records_to_table("bench_copy", records=batch)
                spent += time.perf_counter() - t0
                batch = []
        if batch:
            t0 = time.perf_counter()
            await conn.copy_records_to_table("bench_copy", records=batch)
            spent += time.perf_counter() - t0
        return spent
    finally:
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small-rows", type=int, default=100_000)
    args = ap.parse_args()
    pg: PrivateServer | None = None
    rd = start_private_redis()
    if port_open("127.0.0.1", 5432):
        server_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        pg = start_private_postgres()
        server_url = pg.url
    names: list[str] = []
    tmp = tempfile.mkdtemp(prefix="outdial-bench-")
    try:
        results: dict[int, dict[str, Any]] = {}
        for n in sorted({args.small_rows, args.rows}):
            name = f"outdial_bench_{uuid.uuid4().hex[:8]}"
            conn = await asyncpg.connect(server_url)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            names.append(name)
            url = server_url.rsplit("/", 1)[0] + f"/{name}"
            await db.migrate_url(url)
            path = os.path.join(tmp, f"leads-{n}.csv")
            size = write_csv(path, n)
            console.print(f"[bold]{n:,} rows[/bold] ({size / 1e6:.0f} MB): uploading through the service …")
            r = await upload_through_service(url, rd.url, path)
            console.print(f"  COPY baseline of the same {n:,} rows, normalised …")
            r["copy_secs"] = await copy_baseline(url, n)
            r["size"] = size
            results[n] = r
            os.unlink(path)
        out = []
        for n, r in results.items():
            resp = r["resp"]
            e2e, base = n / r["secs"], n / r["copy_secs"]
            out.append((f"{n:,}", resp.accepted, resp.duplicates, resp.rejected, f"{e2e:,.0f}", f"{base:,.0f}",
                        f"{base / e2e:.2f}x", f"{r['rss_idle']:.0f}", f"{r['rss_peak']:.0f}"))  # fmt: skip
        table(
            "lead ingest: end to end through the campaign service vs COPY of pre-normalised rows",
            [
                "rows",
                "accepted",
                "dups",
                "rejected",
                "e2e rows/s",
                "COPY rows/s",
                "e2e slower by",
                "svc RSS idle MB",
                "svc RSS peak MB",
            ],
            out,
        )
        console.print("target: e2e within 3x of the COPY baseline; peak RSS flat between the two file sizes")
    finally:
        conn = await asyncpg.connect(server_url)
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
        rd.stop()
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
