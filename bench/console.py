"""The web console under load: server time of each main page, and N concurrent dashboard viewers (server-sent
events) on ONE console process, with the time from a change to the last viewer seeing it.

Runs the four services and the console as processes (PostgreSQL/Redis found on 127.0.0.1 or started), on free
ports, with a fresh database. Baselines measured in the same run: the page times beside `/healthz` (the app's
floor: routing, middleware, one database round trip), and the N-viewer spread beside one viewer's.

    python bench/console.py [--viewers 200] [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary, table

from outdial.core import db
from outdial.core.auth import Role, issue_token
from outdial.core.clients import open_channel
from outdial.core.config import SERVICES, Settings
from outdial.core.healthcheck import wait_until_serving
from outdial.core.infra import ensure_infra, free_port
from outdial.core.signing import ISSUER, dev_key
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2

PASSWORD = "bench password 1234"


async def sign_in(client: httpx.AsyncClient) -> str:
    page = await client.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce
    r = await client.post("/login", data={"username": "bench", "password": PASSWORD, "nonce": nonce.group(1)})
    assert r.status_code == 303, r.text
    home = await client.get("/campaigns")
    csrf = re.search(r'name="csrf" value="([^"]+)"', home.text)
    assert csrf
    return csrf.group(1)


async def page_times(
    client: httpx.AsyncClient, paths: list[str], n: int
) -> list[tuple[str, dict[str, float]]]:
    out = []
    for path in paths:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = await client.get(path)
            samples.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, (path, r.status_code)
        out.append((path, summary(samples)))
    return out


async def viewer(
    base: str, cookies: Any, cid: str, seen: list[float], ready: asyncio.Event, counter: list[int], n: int
) -> None:
    """One dashboard viewer: reads the SSE stream; records when each event arrives."""
    async with httpx.AsyncClient(base_url=base, cookies=cookies, timeout=None) as c:
        async with c.stream("GET", f"/campaigns/{cid}/live", headers={"accept": "text/event-stream"}) as r:
            first = True
            async for line in r.aiter_lines():
                if line.startswith("event: live"):
                    if first:
                        first = False
                        counter[0] += 1
                        if counter[0] == n:
                            ready.set()
                        continue
                    seen.append(time.perf_counter())


async def fan_out(base: str, cookies: Any, cid: str, n: int, change: Any) -> dict[str, float]:
    """n viewers connected; one change; the seconds until each viewer got an event after it."""
    seen: list[float] = []
    ready = asyncio.Event()
    counter = [0]
    tasks = [asyncio.create_task(viewer(base, cookies, cid, seen, ready, counter, n)) for _ in range(n)]
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(1.0)
        seen.clear()
        t0 = time.perf_counter()
        await change()
        deadline = time.perf_counter() + 20
        while len(seen) < n and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        lat = [(t - t0) * 1000 for t in seen[:n]]
        s = summary(lat)
        s["viewers_reached"] = float(len(lat))
        return s
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--viewers", type=int, default=200)
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()

    infra = await ensure_infra(None, None)
    name = f"odbench_console_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infra.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = infra.database_url.rsplit("/", 1)[0] + "/" + name
    await db.migrate_url(url)
    ports = {s: free_port() for s in SERVICES}
    console_port = free_port()
    env = dict(os.environ)
    env.update(
        OUTDIAL_DEV="1",
        OUTDIAL_DATABASE_URL=url,
        OUTDIAL_REDIS_URL=infra.redis_url,
        OUTDIAL_METRICS_PORT="0",
        OUTDIAL_LOG_LEVEL="WARNING",
        OUTDIAL_CONSOLE_PORT=str(console_port),
        OUTDIAL_CONSOLE_SECURE_COOKIES="false",
        OUTDIAL_DNC_REQUIRE_REGISTRY="false",
        **{f"OUTDIAL_{s.upper()}_ADDR": f"127.0.0.1:{p}" for s, p in ports.items()},
    )
    procs = [
        subprocess.Popen([sys.executable, "-m", f"outdial.{s}"], env=env) for s in (*SERVICES, "console")
    ]
    try:
        for p in ports.values():
            await wait_until_serving(f"127.0.0.1:{p}", timeout=60)
        settings = Settings(**{f"{s}_addr": f"127.0.0.1:{p}" for s, p in ports.items()}, dev=True)
        token = issue_token(dev_key(ISSUER), "bench", Role.ADMIN)
        camp = campaign_pb2_grpc.CampaignServiceStub(
            open_channel(settings, settings.addr("campaign"), lambda: token)
        )
        created = await camp.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(
                    name="Bench",
                    dial_mode=common_pb2.DIAL_MODE_PROGRESSIVE,
                    caller_id="+12125550100",
                    jurisdiction=common_pb2.JURISDICTION_US,
                    default_region="US",
                    seller_name="Bench Energy Ltd",
                    opt_out_number="+12125550199",
                )
            )
        )
        cid = created.campaign.id
        csv = "phone,first_name\n" + "".join(f"+1212555{i:04d},Lead {i}\n" for i in range(1000))

        async def chunks() -> Any:
            yield campaign_pb2.UploadLeadsRequest(
                header=campaign_pb2.UploadLeadsHeader(campaign_id=cid, file_name="b.csv")
            )
            yield campaign_pb2.UploadLeadsRequest(chunk=csv.encode())

        await camp.UploadLeads(chunks())
        pool = await db.create_pool(url, max_size=1)
        from outdial.console import accounts

        await accounts.add_user(pool, "bench", "admin", PASSWORD, actor="bench")
        await pool.close()
        base = f"http://127.0.0.1:{console_port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            await sign_in(client)
            pages = [
                "/healthz",
                "/campaigns",
                f"/campaigns/{cid}",
                "/campaigns/new",
                "/supervisor",
                "/compliance",
                "/compliance/audit",
                "/admin/users",
            ]
            rows = await page_times(client, pages, args.requests)
            floor = rows[0][1]["p50"]
            table(
                f"page time, ms ({args.requests} requests each, one client; baseline /healthz p50 {floor:.1f} ms)",
                ["page", "p50", "p99", "max", "p50 / baseline"],
                [(p, s["p50"], s["p99"], s["max"], s["p50"] / floor if floor else 0.0) for p, s in rows],
            )
            cookies = client.cookies
            flips = iter(range(1_000_000))

            async def change() -> None:
                # Pause or resume: the pacing state each viewer watches changes.
                if next(flips) % 2 == 0:
                    await camp.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=cid))
                else:
                    await camp.PauseCampaign(campaign_pb2.PauseCampaignRequest(campaign_id=cid))

            one = await fan_out(base, cookies, cid, 1, change)
            many = await fan_out(base, cookies, cid, args.viewers, change)
            table(
                "dashboard viewers on one console process: change -> event at each viewer, ms",
                ["viewers", "reached", "p50", "p99", "max"],
                [
                    (1, int(one["viewers_reached"]), one["p50"], one["p99"], one["max"]),
                    (args.viewers, int(many["viewers_reached"]), many["p50"], many["p99"], many["max"]),
                ],
            )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(10)
        admin = await asyncpg.connect(infra.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        infra.stop()


if __name__ == "__main__":
    asyncio.run(main())
