"""Benchmark: handing live-answered calls to agents.

N simulated agents (real gRPC Connect streams) log in to one campaign; live answers arrive at R per second
for S seconds, each as an OfferCall to the agent service (replicas run as separate processes, answers
spread round-robin over them). Measured in this process, on one clock:
  - answered -> offer received on the agent's stream: p50 / p99 / max
  - OfferCall round trip (what the dialer waits for)
  - baseline, in the same run from the same process: one Redis round trip (PING)
and counted: double assignments (a call reaching two agents, or an agent offered a call while holding
one), calls not assigned (with reasons), OfferCalls that failed (by status code).

The last line is one summary: the load average and the Redis PING baseline, then answer -> offer p50 / p99
/ max, double assignments and PASS or FAIL against the target (p99 < 50 ms, no double assignment, every
answer assigned).

    python bench/assign.py                       # 500 agents, 100 answers/s, 60 s (the issue's figures)
    python bench/assign.py --agents 50 --rate 20 --seconds 10 --replicas 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary, table

from outdial.core.auth import Role, issue_token
from outdial.core.healthcheck import wait_until_serving
from outdial.core.infra import ensure_infra, find_binary, free_port, start_private_redis
from outdial.core.signing import dev_key
from outdial.v1 import agent_pb2, agent_pb2_grpc

TARGET_P99_MS = 50.0


@dataclass
class Run:
    sent_at: dict[str, float] = field(default_factory=dict)
    offer_latency: list[float] = field(default_factory=list)
    rpc_latency: list[float] = field(default_factory=list)
    server_latency: list[float] = field(default_factory=list)
    ping: list[float] = field(default_factory=list)
    received_by: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    overlaps: int = 0
    results: Counter[str] = field(default_factory=Counter)
    assigned_to: dict[str, str] = field(default_factory=dict)
    agent_errors: Counter[str] = field(default_factory=Counter)
    offer_errors: Counter[str] = field(default_factory=Counter)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0.0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BenchAgent:
    def __init__(
        self,
        agent_id: str,
        stub: agent_pb2_grpc.AgentServiceStub,
        run: Run,
        rng: random.Random,
        talk_mean: float,
        wrap_mean: float,
    ) -> None:
        self.agent_id = agent_id
        self.stub = stub
        self.md = (("authorization", f"Bearer {issue_token(dev_key('issuer'), agent_id, Role.AGENT)}"),)
        self.run_ = run
        self.rng = rng
        self.talk_mean, self.wrap_mean = talk_mean, wrap_mean
        self.current: str | None = None
        self.connected = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.reader: asyncio.Task[None] | None = None

    async def start(self, campaign: str) -> None:
        await self.stub.Login(
            agent_pb2.LoginRequest(
                agent_id=self.agent_id,
                campaigns=[agent_pb2.CampaignMembership(campaign_id=campaign, priority=5)],
            ),
            metadata=self.md,
        )
        self.call = self.stub.Connect(agent_pb2.ConnectRequest(agent_id=self.agent_id), metadata=self.md)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.call:
            if msg.HasField("status"):
                self.connected.set()
            elif msg.HasField("offer"):
                now = time.perf_counter()
                cid = msg.offer.call_id
                sent = self.run_.sent_at.get(cid)
                if sent is not None:
                    self.run_.offer_latency.append(now - sent)
                self.run_.received_by[cid].append(self.agent_id)
                if self.current is not None:
                    self.run_.overlaps += 1
                self.current = cid
                t = asyncio.create_task(self._work(cid))
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)

    async def _work(self, call_id: str) -> None:
        await asyncio.sleep(self.rng.expovariate(1 / self.talk_mean))
        try:
            await self.stub.EndCall(
                agent_pb2.EndCallRequest(agent_id=self.agent_id, call_id=call_id), metadata=self.md
            )
            self.current = None
            await asyncio.sleep(self.rng.expovariate(1 / self.wrap_mean))
            await self.stub.SetDisposition(
                agent_pb2.SetDispositionRequest(agent_id=self.agent_id, call_id=call_id, disposition="sale"),
                metadata=self.md,
            )
        except grpc.aio.AioRpcError as exc:
            self.current = None  # offer withdrawn before it was acknowledged
            self.run_.agent_errors[f"{exc.code().name}: {exc.details()}"] += 1

    async def stop(self) -> None:
        if self.reader is None:
            return
        self.call.cancel()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.reader
        for t in list(self.tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await t
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.Logout(agent_pb2.LogoutRequest(agent_id=self.agent_id), metadata=self.md)


async def _infra(args: argparse.Namespace) -> tuple[list[Any], Any]:
    """A private redis-server for this run when possible (so the baseline is not shared), and a dedicated
    PostgreSQL database (outdial_bench)."""
    private: list[Any] = []
    redis_url = args.redis_url
    if not redis_url and find_binary("redis-server") is not None:
        rd = start_private_redis()
        private.append(rd)
        redis_url = rd.url
    return private, await ensure_infra(args.database_url, redis_url, database="outdial_bench")


async def _start_replicas(
    n: int, database_url: str, redis_url: str, procs: list[subprocess.Popen[bytes]]
) -> list[str]:
    addrs = []
    for _ in range(n):
        addr = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "OUTDIAL_DATABASE_URL": database_url,
            "OUTDIAL_REDIS_URL": redis_url,
            "OUTDIAL_AGENT_ADDR": addr,
            "OUTDIAL_DEV": "1",
            "OUTDIAL_METRICS_PORT": "0",
            "OUTDIAL_LOG_LEVEL": "WARNING",
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "outdial.agent"], env=env))
        addrs.append(addr)
    for a in addrs:
        await wait_until_serving(a)
    return addrs


async def _assign(stub: agent_pb2_grpc.AgentServiceStub, campaign: str, agent_ids: list[str]) -> None:
    """An agent logs in only to a campaign a manager (here an admin) assigned them to."""
    md = (("authorization", f"Bearer {issue_token(dev_key('issuer'), 'bench', Role.ADMIN)}"),)
    for i in range(0, len(agent_ids), 1000):
        await stub.AssignAgents(
            agent_pb2.AssignAgentsRequest(campaign_id=campaign, agent_ids=agent_ids[i : i + 1000]),
            metadata=md,
        )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    private, infra = await _infra(args)
    procs: list[subprocess.Popen[bytes]] = []
    channels: list[grpc.aio.Channel] = []
    agents: list[BenchAgent] = []
    try:
        addrs = await _start_replicas(args.replicas, infra.database_url, infra.redis_url, procs)
        opts = [("grpc.use_local_subchannel_pool", 1)]
        for i in range(args.channels * len(addrs)):
            channels.append(grpc.aio.insecure_channel(addrs[i % len(addrs)], options=opts))
        stubs = [agent_pb2_grpc.AgentServiceStub(ch) for ch in channels]
        svc_md = (
            (
                "authorization",
                f"Bearer {issue_token(dev_key('pacing'), 'svc:pacing:bench', Role.SERVICE, 3600)}",
            ),
        )
        dialer_channels = [grpc.aio.insecure_channel(a) for a in addrs]
        channels.extend(dialer_channels)
        dialers = [agent_pb2_grpc.AgentServiceStub(ch) for ch in dialer_channels]
        campaign = f"bench-{uuid.uuid4().hex[:8]}"
        run = Run()
        rng = random.Random(args.seed)
        agents += [
            BenchAgent(
                f"{campaign}-a{i:04d}",
                stubs[i % len(stubs)],
                run,
                random.Random(rng.random()),
                args.talk_mean,
                args.wrap_mean,
            )
            for i in range(args.agents)
        ]
        await _assign(dialers[0], campaign, [a.agent_id for a in agents])
        for i in range(0, len(agents), 50):
            await asyncio.gather(*(a.start(campaign) for a in agents[i : i + 50]))
        await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 60)
        print(
            f"{len(agents)} agents connected over {len(stubs)} channels to {len(addrs)} replica(s); "
            f"{args.rate}/s answers for {args.seconds}s",
            file=sys.stderr,
        )

        rclient = aioredis.from_url(infra.redis_url)
        stop_ping = asyncio.Event()

        async def pinger() -> None:
            while not stop_ping.is_set():
                t0 = time.perf_counter()
                await rclient.ping()
                run.ping.append(time.perf_counter() - t0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_ping.wait(), 0.02)

        async def answer(n: int) -> None:
            cid = f"{campaign}-c{n}"
            stub = dialers[n % len(dialers)]
            t0 = time.perf_counter()
            run.sent_at[cid] = t0
            try:
                resp = await stub.OfferCall(
                    agent_pb2.OfferCallRequest(
                        campaign_id=campaign,
                        call_id=cid,
                        lead_id=f"L{n}",
                        number="+12025550100",
                        lead_name="Bench Lead",
                    ),
                    metadata=svc_md,
                    # A dialer gives up on a hand-over after the legal 2 s (plus a margin), as pacing does.
                    timeout=args.offer_timeout,
                )
            except grpc.aio.AioRpcError as exc:
                run.offer_errors[exc.code().name] += 1
                return
            run.rpc_latency.append(time.perf_counter() - t0)
            run.server_latency.append(resp.latency.ToNanoseconds() / 1e9)
            if resp.assigned:
                run.results["assigned"] += 1
                run.assigned_to[cid] = resp.agent_id
            else:
                run.results[f"not assigned: {resp.reason}"] += 1

        load_before = os.getloadavg()[0]
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        self_cpu0 = time.process_time()
        ping_task = asyncio.create_task(pinger())
        total = int(args.rate * args.seconds)
        start = time.perf_counter()
        answers = []
        for n in range(total):
            delay = start + n / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the arrival schedule, not a poll
            answers.append(asyncio.create_task(answer(n)))
        await asyncio.gather(*answers)
        elapsed = time.perf_counter() - start
        svc_cpu = [
            round(100 * (cpu_seconds(p.pid) - c0) / elapsed, 1) for p, c0 in zip(procs, cpu0, strict=True)
        ]
        client_cpu = round(100 * (time.process_time() - self_cpu0) / elapsed, 1)
        stop_ping.set()
        await ping_task
        await asyncio.sleep(0.5)  # let in-flight stream deliveries land before counting
        counts = (
            await dialers[0].GetAgentCounts(
                agent_pb2.GetAgentCountsRequest(campaign_id=campaign), metadata=svc_md
            )
        ).counts
        double_calls = sum(1 for who in run.received_by.values() if len(set(who)) > 1)
        mismatched = sum(1 for cid, aid in run.assigned_to.items() if run.received_by.get(cid) != [aid])
        await rclient.aclose()
        ms = 1000.0
        off, rpc, ping = summary(run.offer_latency), summary(run.rpc_latency), summary(run.ping)
        srv = summary(run.server_latency)
        return {
            "agents": args.agents,
            "replicas": args.replicas,
            "rate_per_s": args.rate,
            "seconds": args.seconds,
            "answers": total,
            "achieved_rate_per_s": round(total / elapsed, 1),
            "results": dict(run.results),
            "offer_received_ms": {k: (v * ms if k != "n" else v) for k, v in off.items()},
            "offercall_rpc_ms": {k: (v * ms if k != "n" else v) for k, v in rpc.items()},
            "offercall_in_service_ms": {k: (v * ms if k != "n" else v) for k, v in srv.items()},
            "redis_ping_ms": {k: (v * ms if k != "n" else v) for k, v in ping.items()},
            "double_assigned_calls": double_calls,
            "service_cpu_percent": svc_cpu,
            "bench_client_cpu_percent": client_cpu,
            "load_average": os.getloadavg(),
            "load_average_at_start": load_before,
            "offercall_errors": dict(run.offer_errors),
            "agent_rpc_errors": dict(run.agent_errors),
            "agents_at_end": {
                f: getattr(counts, f) for f in ("ready", "reserved", "on_call", "wrap_up", "paused")
            },
            "agent_overlapping_offers": run.overlaps,
            "assigned_but_not_delivered_to_that_agent": mismatched,
        }
    finally:
        # Agents first (their calls and tasks end), then the channels under them: closing a channel under a
        # running agent task only adds "Channel is closed" errors to whatever stopped the run.
        for a in agents:
            await a.stop()
        for ch in channels:
            await ch.close()
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
        infra.stop()
        for s in private:
            s.stop()


def summary_line(out: dict[str, Any]) -> tuple[bool, str]:
    """The verdict against the target, and the one line that ends the output with it."""
    off, ping = out["offer_received_ms"], out["redis_ping_ms"]
    double = out["double_assigned_calls"] + out["agent_overlapping_offers"]
    unassigned = out["answers"] - out["results"].get("assigned", 0)
    ok = (
        off["n"] > 0
        and off["p99"] < TARGET_P99_MS
        and double == 0
        and unassigned == 0
        and out["assigned_but_not_delivered_to_that_agent"] == 0
    )
    why = []
    if unassigned:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(out["offercall_errors"].items()))
        why.append(
            f"{unassigned} answers not assigned" + (f" (OfferCall errors: {errors})" if errors else "")
        )
    if out["assigned_but_not_delivered_to_that_agent"]:
        why.append(f"{out['assigned_but_not_delivered_to_that_agent']} assigned but not delivered")
    line = (
        f"assign: {out['agents']} agents, {out['replicas']} replica(s), {out['rate_per_s']:g}/s for "
        f"{out['seconds']:g} s, load average {out['load_average_at_start']:.2f} -> {out['load_average'][0]:.2f}"
        f" | baseline Redis PING p50 {ping['p50']:.2f} ms p99 {ping['p99']:.2f} ms"
        f"{' | ' + '; '.join(why) if why else ''}"
        f" | answer->offer p50 {off['p50']:.1f} ms p99 {off['p99']:.1f} ms max {off['max']:.1f} ms,"
        f" double assignments {double}: {'PASS' if ok else 'FAIL'} (target p99 < {TARGET_P99_MS:g} ms,"
        " 0 double, every answer assigned)"
    )
    return ok, line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--rate", type=float, default=100.0, help="live answers per second")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--replicas", type=int, default=1, help="agent-service processes")
    ap.add_argument("--channels", type=int, default=8, help="client gRPC connections per replica")
    ap.add_argument("--talk-mean", type=float, default=2.0)
    ap.add_argument("--wrap-mean", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--offer-timeout", type=float, default=2.5, help="gRPC deadline of each OfferCall (the dialer's wait)"
    )
    ap.add_argument("--database-url", default=os.environ.get("OUTDIAL_DATABASE_URL"))
    ap.add_argument("--redis-url", default=None, help="default: a private redis-server for this run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(bench(args))
    out["pass"], out["summary"] = summary_line(out)
    if args.json:
        print(json.dumps(out))
    else:
        rows = [
            [
                "answered -> offer on agent stream",
                *[out["offer_received_ms"][k] for k in ("n", "p50", "p99", "max")],
            ],
            [
                "OfferCall round trip (dialer)",
                *[out["offercall_rpc_ms"][k] for k in ("n", "p50", "p99", "max")],
            ],
            [
                "OfferCall inside the service",
                *[out["offercall_in_service_ms"][k] for k in ("n", "p50", "p99", "max")],
            ],
            ["baseline: Redis PING", *[out["redis_ping_ms"][k] for k in ("n", "p50", "p99", "max")]],
        ]
        table(
            f"assignment: {out['agents']} agents, {out['replicas']} replica(s), {out['rate_per_s']}/s for "
            f"{out['seconds']} s (achieved {out['achieved_rate_per_s']}/s)",
            ["ms", "n", "p50", "p99", "max"],
            rows,
        )
        table(
            "outcomes",
            ["what", "count"],
            [
                *[[k, v] for k, v in sorted(out["results"].items())],
                *[[f"OfferCall failed: {k}", v] for k, v in sorted(out["offercall_errors"].items())],
                ["double-assigned calls", out["double_assigned_calls"]],
                ["offers to an agent already holding a call", out["agent_overlapping_offers"]],
                ["assigned but not delivered to that agent", out["assigned_but_not_delivered_to_that_agent"]],
            ],
        )
        print(out["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
