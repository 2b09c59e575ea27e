"""Benchmark: the SIP gateway carrying a dialer's load (issue 11, point 7).

Two parts in one run, on loopback, with the same carrier, the same calls per second and the same limit of
calls in flight:

1. Baseline, SIPp to SIPp: a SIPp UAC (``caller.xml``: CANCEL after the ring time, BYE after a fixed talk
   time) calls a SIPp UAS answering at the simulated carrier's rates (``carrier.xml``), for
   ``--baseline-seconds`` (default min(60 s, the run)). Measured from SIPp's own message traces: at the
   carrier, 200 OK sent -> ACK received (the far end's answer acknowledged); at the UAC, 200 OK received ->
   ACK sent; and the CPU of both SIPp processes per call in flight.
2. The gateway (``python -m outdial.gateway``) with rtpengine, SIPp as the carrier (``carrier.xml``, the
   simulated carrier's rates) and one SIPp answering every agent's phone (``agent_phone.xml``), started by
   ``outdial.gateway.rig.SipRig``. ``--agents`` nailed-up agent legs (OpenAgentLeg). A driver in this
   process acts as the dialer: it keeps at most ``--in-flight`` calls, originates at ``--cps`` (the gateway
   paces too), and on each ANSWERED bridges the call to a free agent at once (BridgeCall); when no agent is
   free it plays a short abandonment message (PlayPrompt) and hangs up on MESSAGE_DONE. The carrier hangs
   up (busy, 503, machines after their greeting, people after their talk time), or the driver does, as an
   agent would, after an exponential talk time (``--talk-mean``). Unanswered calls ring ``--ring-timeout``
   seconds and the gateway CANCELs them.

Figures, with the load average (the machine is shared):
  - 200 OK -> agent media bridged: BridgeCall returned (this process's clock) minus the ANSWERED event's
    at_ms (the 200 OK's arrival on the gateway's clock, same host): p50 / p99 / max; split into 200 OK ->
    ANSWERED received, and the BridgeCall round trip.
  - the same carrier-side SIP figure as the baseline (200 OK sent -> ACK received, from the carrier's trace)
  - lost or stuck dialogs, after the driver stopped originating, hung up everything and waited
    ``--grace`` seconds: calls originated that never got ENDED, the gateway's calls_in_flight, rtpengine
    sessions left (``c-`` call ids), the SIPp carrier's failed calls, calls still open, 200 OKs never
    ACKed and BYEs of its own never answered (a hang-up the gateway did not take: it kept the call up), and
    the agent phones' once the legs are closed. Beside them, not counted: messages SIPp got for calls it had
    already ended, and the SIP input the gateway rejected (its metrics).
  - CPU per call in flight: utime + stime (/proc/PID/stat) of the gateway and of rtpengine over the
    originating window, divided by (mean calls in flight x window seconds): "% of a core per call in
    flight", and ms of CPU per call placed; the baseline's SIPp processes the same way.

The last line is one summary with PASS or FAIL against the targets (p99 200 OK -> bridged < 300 ms, no lost
or stuck dialog). Nothing asserts on time. With the carrier's default rates a call lasts about half a
minute, so 100 calls in flight hold far fewer than 20 new calls a second: the in-flight limit, not the CPS,
sets the pace (the output says how many calls per second were reached).

    python bench/sip.py                                  # 50 agents, 100 in flight, 20 CPS, 10 minutes
    python bench/sip.py --minutes 2
    python bench/sip.py --minutes 1 --baseline-seconds 20 --carrier-key answer_mean_ms=4000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary, table

from outdial.core.auth import Role, issue_token
from outdial.core.clients import open_channel
from outdial.core.config import Settings
from outdial.core.healthcheck import wait_until_serving
from outdial.core.signing import dev_key
from outdial.gateway.peers.sipp import SipMessage, SippUac, SippUas
from outdial.gateway.rig import SipRig, free_port, missing_binaries
from outdial.gateway.rtpengine import RtpEngine
from outdial.rules.law import MIN_RING_S
from outdial.v1 import gateway_pb2 as pb
from outdial.v1 import gateway_pb2_grpc

TARGET_P99_MS = 300.0
OWNER = f"bench-sip-{os.getpid()}"
# Fixed ports (this bench's range): rtpengine's media ports, and the baseline SIPp processes' media ports.
RTP_PORTS = (47000, 47899)
BASELINE_MEDIA = (47920, 47940)
ABANDON_TEXT = "This is Outdial Bench Company. To stop our calls, press 9 or call 2 1 2 5 5 5 0 1 9 9."

K = pb.GatewayEventKind
_OUTCOMES = {
    K.GATEWAY_EVENT_KIND_NO_ANSWER: "no answer",
    K.GATEWAY_EVENT_KIND_BUSY: "busy",
    K.GATEWAY_EVENT_KIND_FAILED: "failed",
    K.GATEWAY_EVENT_KIND_INVALID_NUMBER: "invalid number",
}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0.0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms_summary(values: Iterable[float]) -> dict[str, float]:
    """summary() of values already in ms (n stays a count)."""
    return summary(list(values))


def per_call_cpu(cpu_s: float, mean_in_flight: float, window_s: float, placed: int) -> dict[str, float]:
    """CPU as % of one core per call in flight, and ms of CPU per call placed."""
    return {
        "cpu_s": cpu_s,
        "core_pct_per_call_in_flight": 100 * cpu_s / (mean_in_flight * window_s)
        if mean_in_flight and window_s
        else 0.0,
        "cpu_ms_per_call_placed": 1000 * cpu_s / placed if placed else 0.0,
    }


def answer_ack_ms(messages: list[SipMessage], side: str) -> list[float]:
    """Per call, ms from the first 200 OK to an INVITE to its first ACK: at the answering side ("uas": 200
    sent -> ACK received) or at the calling side ("uac": 200 received -> ACK sent)."""
    ok_dir, ack_dir = ("out", "in") if side == "uas" else ("in", "out")
    ok_at: dict[str, float] = {}
    out: list[float] = []
    done: set[str] = set()
    for m in messages:
        cid = m.call_id
        if m.direction == ok_dir and m.status == 200 and m.method == "INVITE":
            ok_at.setdefault(cid, m.timestamp)
        elif (
            m.direction == ack_dir and m.is_request and m.method == "ACK" and cid in ok_at and cid not in done
        ):
            done.add(cid)
            out.append(1000 * (m.timestamp - ok_at[cid]))
    return out


def unacked(messages: list[SipMessage], side: str) -> int:
    """Calls whose 200 OK to the INVITE was never acknowledged (a dialog that never came up cleanly)."""
    ok_dir, ack_dir = ("out", "in") if side == "uas" else ("in", "out")
    ok = {m.call_id for m in messages if m.direction == ok_dir and m.status == 200 and m.method == "INVITE"}
    acked = {m.call_id for m in messages if m.direction == ack_dir and m.is_request and m.method == "ACK"}
    return len(ok - acked)


def unanswered_byes(messages: list[SipMessage]) -> int:
    """Calls in which this side (SIPp) sent a BYE that got no 200: its hang-up never reached the other end
    as a request it accepted, so that end kept the call up."""
    sent = {m.call_id for m in messages if m.direction == "out" and m.is_request and m.method == "BYE"}
    answered = {m.call_id for m in messages if m.direction == "in" and m.status == 200 and m.method == "BYE"}
    return len(sent - answered)


def parse_carrier_keys(pairs: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise SystemExit(f"--carrier-key wants NAME=VALUE, got {p!r}")
        keys[name] = value
    return keys


class LoadWatch:
    """The 1-minute load average, sampled by the caller."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def figures(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"start": s[0], "end": s[-1], "max": max(s), "mean": sum(s) / len(s)}


# ----------------------------------------------------------------------------------------------- baseline


def run_baseline(args: argparse.Namespace, workdir: Path, carrier_keys: dict[str, str]) -> dict[str, Any]:
    """SIPp UAC -> SIPp UAS (carrier.xml) at the same CPS and in-flight limit, for the baseline window."""
    seconds = args.baseline_seconds
    d = workdir / "baseline"
    uas = SippUas(
        "carrier.xml", port=free_port(), media_port=BASELINE_MEDIA[0], keys=carrier_keys or None, trace_dir=d
    )
    uac = SippUac(
        f"127.0.0.1:{uas.port}",
        port=free_port(),
        media_port=BASELINE_MEDIA[1],
        keys={"ring_ms": str(int(args.ring_timeout * 1000)), "hold_ms": str(int(args.talk_mean * 1000))},
        calls=None,
        trace_dir=d,
        rate=args.cps,
        limit=args.in_flight,
    )
    load = LoadWatch()
    in_flight: list[int] = []
    try:
        uas.start()
        uac.start()
        pids = {"sipp_uac": uac.pid, "sipp_uas": uas.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            time.sleep(min(1.0, seconds - elapsed))
            load.sample()
            st = uac.stats()
            if st is not None:
                in_flight.append(st.current)
            if not uac.running:
                raise RuntimeError(f"SIPp UAC exited early: {uac.failure_text()}")
        window = time.monotonic() - t0
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        st = uac.stats()
        placed = st.created if st else 0
        # No new calls; the ones in progress end by their own rules (CANCEL at the ring time, BYE after the
        # hold), within the grace.
        uac.soft_stop()
        with contextlib.suppress(TimeoutError):
            uac.wait(args.ring_timeout + args.talk_mean + args.grace)
    finally:
        uac.stop()
        time.sleep(1.5)  # the UAS's last statistics row
        uas.stop()
    uac_msgs, uas_msgs = uac.messages(), uas.messages()
    ust, sst = uac.stats(), uas.stats()
    mean_in_flight = sum(in_flight) / len(in_flight) if in_flight else 0.0
    total_cpu = sum(cpu.values())
    return {
        "seconds": window,
        "calls_placed": placed,
        "cps_achieved": placed / window if window else 0.0,
        "mean_in_flight": mean_in_flight,
        "max_in_flight": max(in_flight, default=0),
        "carrier_200_to_ack_ms": ms_summary(answer_ack_ms(uas_msgs, "uas")),
        "uac_200_to_ack_ms": ms_summary(answer_ack_ms(uac_msgs, "uac")),
        "unacked_200": unacked(uas_msgs, "uas"),
        "uas_byes_unanswered": unanswered_byes(uas_msgs),
        "cpu": {k: per_call_cpu(v, mean_in_flight, window, placed) for k, v in cpu.items()}
        | {"sipp_total": per_call_cpu(total_cpu, mean_in_flight, window, placed)},
        "uac_stats": {
            "created": ust.created if ust else 0,
            "successful": ust.successful if ust else 0,
            "failed": ust.failed if ust else 0,
            "open": ust.current if ust else 0,
        },
        "uas_stats": {
            "failed": sst.failed if sst else 0,
            "open": sst.current if sst else 0,
        },
        "uas_outcomes": dict(uas.outcomes()),
        "load_average": load.figures(),
    }


# ----------------------------------------------------------------------------------------------- the driver


@dataclass
class CallState:
    call_id: str
    answered_at_ms: int = 0
    agent: str = ""
    abandoned: bool = False
    hangup_sent: bool = False
    timer: asyncio.Task[None] | None = None


@dataclass
class Driver:
    """The dialer's side: originate within the limits, bridge or abandon each answer, free agents on ENDED."""

    stub: gateway_pb2_grpc.GatewayServiceStub
    args: argparse.Namespace
    rng: random.Random
    agents: list[str]
    free: deque[str] = field(default_factory=deque)
    active: dict[str, CallState] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    originated: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    ended_by: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    bridged_ms: list[float] = field(default_factory=list)
    event_ms: list[float] = field(default_factory=list)
    bridge_rpc_ms: list[float] = field(default_factory=list)
    answered: int = 0
    bridged: int = 0
    abandoned: int = 0
    stopping: bool = False
    seq: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.free.extend(self.agents)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        t: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def _error(self, what: str, exc: grpc.aio.AioRpcError) -> None:
        self.errors[f"{what}: {exc.code().name} {exc.details() or ''}".strip()] += 1

    # -- originating

    async def originate_for(self, seconds: float) -> tuple[float, int]:
        """Originate until ``seconds`` have passed; (window seconds, calls placed)."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.args.cps
        start = loop.time()
        end = start + seconds
        next_at = start
        placed = 0
        while True:
            now = loop.time()
            if now >= end:
                break
            if len(self.active) >= self.args.in_flight:
                self.room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.room.wait(), end - now)
                continue
            if next_at > now:
                await asyncio.sleep(next_at - now)  # the CPS schedule
                continue
            next_at = max(next_at, now - interval) + interval  # evenly spaced, no catch-up burst
            self.seq += 1
            cid = f"{OWNER}-{self.seq}"
            self.active[cid] = CallState(cid)
            self.originated.add(cid)
            placed += 1
            self.spawn(self._originate(cid))
        return loop.time() - start, placed

    async def _originate(self, cid: str) -> None:
        number = f"+1415{self.rng.randrange(2000000, 9999999)}"
        try:
            await self.stub.Originate(
                pb.OriginateRequest(
                    call_id=cid,
                    number=number,
                    caller_id="+12125550123",
                    ring_timeout_s=self.args.ring_timeout,
                    owner=OWNER,
                    campaign_id="bench-sip",
                ),
                timeout=15,
            )
        except grpc.aio.AioRpcError as exc:
            self._error("Originate", exc)
            self.originated.discard(cid)  # no call was placed
            self._forget(cid)

    def _forget(self, cid: str) -> None:
        st = self.active.pop(cid, None)
        if st is not None and st.timer is not None:
            st.timer.cancel()
        if st is not None and st.agent:
            self.free.append(st.agent)
        self.room.set()
        if not self.active:
            self.idle.set()

    # -- events

    def on_event(self, ev: pb.StreamCallEventsResponse) -> None:
        cid = ev.call_id
        if ev.kind == K.GATEWAY_EVENT_KIND_ANSWERED:
            received = time.time() * 1000
            st = self.active.get(cid)
            if st is None:
                self.errors["ANSWERED for a call not in flight"] += 1
                return
            self.answered += 1
            st.answered_at_ms = ev.at_ms
            self.event_ms.append(received - ev.at_ms)
            if self.stopping:
                self.outcomes["answered after the stop: hung up"] += 1
                self.spawn(self._hangup(st))
            elif self.free:
                st.agent = self.free.popleft()  # taken now: an ENDED handled later frees it
                self.spawn(self._bridge(st))
            else:
                st.abandoned = True
                self.abandoned += 1
                self.spawn(self._abandon(st))
        elif ev.kind == K.GATEWAY_EVENT_KIND_MESSAGE_DONE:
            st = self.active.get(cid)
            if st is not None:
                self.spawn(self._hangup(st))
        elif ev.kind == K.GATEWAY_EVENT_KIND_ENDED:
            if cid in self.ended:
                self.errors["ENDED twice"] += 1
            self.ended.add(cid)
            self.ended_by[ev.reason or "?"] += 1
            self._forget(cid)
        elif ev.kind in _OUTCOMES:
            self.outcomes[_OUTCOMES[ev.kind]] += 1
        elif ev.kind == K.GATEWAY_EVENT_KIND_AGENT_LEG_DOWN:
            self.errors[f"agent leg down: {ev.agent_id}"] += 1

    async def _bridge(self, st: CallState) -> None:
        t0 = time.perf_counter()
        try:
            r = await self.stub.BridgeCall(
                pb.BridgeCallRequest(call_id=st.call_id, agent_id=st.agent), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self.outcomes["ended before the bridge"] += 1  # the carrier hung up first
            else:
                self._error("BridgeCall", exc)
            return
        done = time.time() * 1000
        self.bridge_rpc_ms.append(1000 * (time.perf_counter() - t0))
        if not r.bridged:
            self.errors["BridgeCall: agent has no phone leg"] += 1
            await self._hangup(st)
            return
        self.bridged += 1
        self.bridged_ms.append(done - st.answered_at_ms)
        st.timer = self.spawn(self._talk(st, self.rng.expovariate(1.0 / self.args.talk_mean)))

    async def _talk(self, st: CallState, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._hangup(st)

    async def _abandon(self, st: CallState) -> None:
        try:
            await self.stub.PlayPrompt(
                pb.PlayPromptRequest(call_id=st.call_id, text=ABANDON_TEXT), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self.outcomes["ended before the message"] += 1
            else:
                self._error("PlayPrompt", exc)
                await self._hangup(st)

    async def _hangup(self, st: CallState) -> None:
        if st.hangup_sent or st.call_id not in self.active:
            return
        st.hangup_sent = True
        try:
            await self.stub.HangupCall(pb.HangupCallRequest(call_id=st.call_id), timeout=10)
        except grpc.aio.AioRpcError as exc:
            self._error("HangupCall", exc)

    async def wind_down(self, grace: float) -> float:
        """Stop: every call still up is cancelled or hung up; wait for their ENDED (at most ``grace`` s)."""
        self.stopping = True
        t0 = time.monotonic()
        pending = [t for t in self.tasks if not t.done()]
        for st in list(self.active.values()):
            if st.timer is not None:
                st.timer.cancel()
        # Originates still in progress first: a call must be placed before it can be cancelled.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 15)

        async def end(cid: str) -> None:
            try:
                await self.stub.CancelCall(pb.CancelCallRequest(call_id=cid), timeout=10)
            except grpc.aio.AioRpcError as exc:
                self._error("CancelCall", exc)

        await asyncio.gather(*(end(cid) for cid in list(self.active)))
        if self.active:
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), max(0.1, grace - (time.monotonic() - t0)))
        return time.monotonic() - t0


# ------------------------------------------------------------------------------------------------ gateway run


@dataclass
class Sampler:
    """Once a second: the gateway's calls in flight, the driver's, and the load average."""

    stub: gateway_pb2_grpc.GatewayServiceStub
    driver: Driver
    proc: subprocess.Popen[bytes]
    load: LoadWatch = field(default_factory=LoadWatch)
    in_flight: list[int] = field(default_factory=list)
    driver_in_flight: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            self.load.sample()
            self.driver_in_flight.append(len(self.driver.active))
            try:
                s = await self.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
                self.in_flight.append(s.calls_in_flight)
            except grpc.aio.AioRpcError as exc:
                self.driver._error("GetGatewayStatus", exc)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}")


def scrape(port: int, name: str) -> dict[str, float]:
    """One counter of the gateway's Prometheus metrics, by its single label's value."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name:
                out[",".join(sample.labels.values()) or "-"] = float(sample.value)
    return out


async def _start_gateway(rig: SipRig, workdir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    metrics_port = free_port()
    env = {
        **os.environ,
        **rig.start(),
        "OUTDIAL_DEV": "1",
        "OUTDIAL_METRICS_PORT": str(metrics_port),
        "OUTDIAL_LOG_LEVEL": "WARNING",
        "OUTDIAL_AGENT_ADDR": "127.0.0.1:1",  # no agent service: nothing to pause in this bench
        "OUTDIAL_EDGE_WORKDIR": str(workdir / "edge"),
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "outdial.gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        await wait_until_serving(env["OUTDIAL_GATEWAY_ADDR"], timeout=30)
    except BaseException:
        _stop_process(proc)
        raise
    return proc, env["OUTDIAL_GATEWAY_ADDR"], metrics_port


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _leftovers(
    stub: gateway_pb2_grpc.GatewayServiceStub, driver: Driver, rig: SipRig, metrics_port: int
) -> dict[str, Any]:
    """After the wind-down: what the gateway, rtpengine and the SIPp peers still hold (each should be 0)."""
    assert rig.carrier is not None and rig.phones is not None
    status = await stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
    legs = status.agent_legs
    for a in driver.agents:
        try:
            await stub.CloseAgentLeg(pb.CloseAgentLegRequest(agent_id=a), timeout=10)
        except grpc.aio.AioRpcError as exc:
            driver._error("CloseAgentLeg", exc)
    await asyncio.sleep(2.5)  # BYEs to the phones answered; SIPp writes its statistics every second
    eng = RtpEngine("127.0.0.1", rig.ports["ng"], 2.0)
    try:
        sessions = await eng.list_calls()
    finally:
        eng.close()
    cst, pst = rig.carrier.stats(), rig.phones.stats()
    msgs = await asyncio.to_thread(rig.carrier.messages)
    never_ended = sorted(driver.originated - driver.ended)
    return {
        "agent_legs": legs,
        "carrier_msgs": msgs,
        "never_ended_sample": never_ended[:5],
        "stuck": {
            "originated, never ENDED": len(never_ended),
            "gateway calls_in_flight after the grace": status.calls_in_flight,
            "rtpengine customer sessions left (c-)": sum(1 for c in sessions if c.startswith("c-")),
            "rtpengine agent sessions left after CloseAgentLeg (a-)": sum(
                1 for c in sessions if c.startswith("a-")
            ),
            "SIPp carrier: failed calls": cst.failed if cst else -1,
            "SIPp carrier: calls still open": cst.current if cst else -1,
            "SIPp carrier: 200 OK never ACKed": unacked(msgs, "uas"),
            "SIPp carrier: its BYE (hang-up) never answered": unanswered_byes(msgs),
            "SIPp agent phones: failed calls": pst.failed if pst else -1,
            "SIPp agent phones: calls still open after CloseAgentLeg": pst.current if pst else -1,
        },
        "symptoms": {
            "SIPp carrier: messages for calls it had ended (dead calls)": cst.dead_call_msgs if cst else -1,
            "SIPp carrier: retransmissions": cst.retransmissions if cst else -1,
            **{
                f"gateway: SIP input rejected ({why})": int(v)
                for why, v in scrape(metrics_port, "outdial_gateway_sip_rejected_total").items()
            },
        },
    }


async def run_gateway(
    args: argparse.Namespace, workdir: Path, carrier_keys: dict[str, str]
) -> dict[str, Any]:
    rig = SipRig(
        carrier_keys=carrier_keys,
        rtp_ports=RTP_PORTS,
        cps=args.cps,
        max_calls=args.in_flight,
        workdir=workdir / "rig",
    )
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.aio.Channel | None = None
    follower: asyncio.Task[None] | None = None
    gw_log = workdir / "gateway.log"
    try:
        proc, addr, metrics_port = await _start_gateway(rig, workdir, gw_log)
        assert rig.rtp is not None and rig.carrier is not None and rig.phones is not None
        token = issue_token(
            dev_key("issuer"), "bench", Role.ADMIN
        )  # drives the gateway as pacing and agent do
        channel = open_channel(Settings(dev=True), addr, lambda: token)
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        agents = [f"agent{i:03d}" for i in range(args.agents)]
        driver = Driver(stub, args, random.Random(args.seed), agents)

        async def follow() -> None:
            async for ev in stub.StreamCallEvents(pb.StreamCallEventsRequest(owner=OWNER)):
                driver.on_event(ev)

        follower = asyncio.create_task(follow())
        for i in range(0, len(agents), 10):
            await asyncio.gather(
                *(
                    stub.OpenAgentLeg(
                        pb.OpenAgentLegRequest(agent_id=a, contact_uri=rig.phone_of(a)), timeout=40
                    )
                    for a in agents[i : i + 10]
                )
            )
        print(
            f"gateway up: {len(agents)} agent legs; originating for {args.minutes:g} min "
            f"(up to {args.in_flight} in flight, {args.cps:g} CPS)",
            file=sys.stderr,
        )
        pids = {
            "gateway": proc.pid,
            "rtpengine": rig.rtp.pid,
            "sipp_carrier": rig.carrier.pid,
            "sipp_phones": rig.phones.pid,
            "bench": os.getpid(),
        }
        sampler = Sampler(stub, driver, proc)
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        sampling = asyncio.create_task(sampler.run())
        window, placed = await driver.originate_for(args.minutes * 60)
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        sampler.stop.set()
        await sampling
        print(f"stopped originating after {placed} calls; hanging up what is left", file=sys.stderr)
        wind = await driver.wind_down(args.grace)
        left = await _leftovers(stub, driver, rig, metrics_port)
        ins = sampler.in_flight
        mean_in_flight = sum(ins) / len(ins) if ins else 0.0
        dins = sampler.driver_in_flight
        return {
            "seconds": window,
            "calls_placed": placed,
            "cps_achieved": placed / window if window else 0.0,
            "mean_in_flight": mean_in_flight,
            "max_in_flight": max(ins, default=0),
            "driver_mean_in_flight": sum(dins) / len(dins) if dins else 0.0,
            "agent_legs": left["agent_legs"],
            "answered": driver.answered,
            "bridged": driver.bridged,
            "abandoned": driver.abandoned,
            "outcomes": dict(driver.outcomes),
            "ended_by": dict(driver.ended_by),
            "errors": dict(driver.errors),
            "answer_to_bridged_ms": ms_summary(driver.bridged_ms),
            "answer_to_event_ms": ms_summary(driver.event_ms),
            "bridge_rpc_ms": ms_summary(driver.bridge_rpc_ms),
            "carrier_200_to_ack_ms": ms_summary(answer_ack_ms(left["carrier_msgs"], "uas")),
            "wind_down_s": wind,
            "stuck": left["stuck"],
            "symptoms": left["symptoms"],
            "never_ended_sample": left["never_ended_sample"],
            "carrier_outcomes": dict(rig.carrier.outcomes()),
            "cpu": {k: per_call_cpu(v, mean_in_flight, window, placed) for k, v in cpu.items()}
            | {
                "gateway_plus_rtpengine": per_call_cpu(
                    cpu["gateway"] + cpu["rtpengine"], mean_in_flight, window, placed
                )
            },
            "load_average": sampler.load.figures(),
        }
    except BaseException:
        if gw_log.exists():
            print(f"gateway log (tail):\n{gw_log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await follower
        if channel is not None:
            await channel.close()
        if proc is not None:
            await asyncio.to_thread(_stop_process, proc)
        await asyncio.to_thread(rig.stop)


# ----------------------------------------------------------------------------------------------- report


def stuck_total(gw: dict[str, Any]) -> int:
    return sum(max(0, v) for v in gw["stuck"].values())


def summary_line(args: argparse.Namespace, out: dict[str, Any]) -> tuple[bool, str]:
    base, gw = out["baseline"], out["gateway"]
    br = gw["answer_to_bridged_ms"]
    stuck = stuck_total(gw)
    ok = (
        br["n"] > 0 and br["p99"] < TARGET_P99_MS and stuck == 0 and all(v >= 0 for v in gw["stuck"].values())
    )
    keys = out["carrier_keys"]
    load = gw["load_average"]
    line = (
        f"sip: {args.agents} agents, <= {args.in_flight} in flight at <= {args.cps:g} CPS for {args.minutes:g} min"
        f" (reached {gw['cps_achieved']:.1f} CPS, mean {gw['mean_in_flight']:.0f} in flight, {gw['calls_placed']}"
        f" calls, {gw['bridged']} bridged, {gw['abandoned']} abandoned)"
        f"{', carrier keys ' + ' '.join(f'{k}={v}' for k, v in keys.items()) if keys else ', carrier defaults'}"
        f", load average {load['start']:.2f} -> {load['end']:.2f} (max {load['max']:.2f}) on {os.cpu_count()} cores"
        f" | baseline SIPp->SIPp ({base['seconds']:.0f} s, mean {base['mean_in_flight']:.0f} in flight):"
        f" carrier 200->ACK p50 {base['carrier_200_to_ack_ms']['p50']:.2f} ms p99"
        f" {base['carrier_200_to_ack_ms']['p99']:.2f} ms, CPU"
        f" {base['cpu']['sipp_total']['core_pct_per_call_in_flight']:.3f} % of a core per call in flight"
        f" | gateway: carrier 200->ACK p50 {gw['carrier_200_to_ack_ms']['p50']:.2f} ms p99"
        f" {gw['carrier_200_to_ack_ms']['p99']:.2f} ms, CPU (gateway + rtpengine)"
        f" {gw['cpu']['gateway_plus_rtpengine']['core_pct_per_call_in_flight']:.3f} % of a core per call in"
        f" flight, 200 OK->agent bridged p50 {br['p50']:.1f} ms p99 {br['p99']:.1f} ms max {br['max']:.1f} ms"
        f" (n={br['n']:.0f}), lost/stuck dialogs {stuck}: {'PASS' if ok else 'FAIL'}"
        f" (target p99 < {TARGET_P99_MS:g} ms, 0 lost/stuck)"
    )
    return ok, line


def print_report(args: argparse.Namespace, out: dict[str, Any]) -> None:
    base, gw = out["baseline"], out["gateway"]
    cols = ["ms", "n", "p50", "p99", "max"]

    def row(name: str, s: dict[str, float]) -> list[object]:
        return [name, int(s["n"]), s["p50"], s["p99"], s["max"]]

    table(
        f"latency: gateway run {gw['seconds']:.0f} s, baseline {base['seconds']:.0f} s",
        cols,
        [
            row("gateway: 200 OK -> agent media bridged (target p99 < 300)", gw["answer_to_bridged_ms"]),
            row("  of which 200 OK -> ANSWERED event received", gw["answer_to_event_ms"]),
            row("  of which BridgeCall round trip", gw["bridge_rpc_ms"]),
            row("gateway: carrier 200 OK sent -> ACK received", gw["carrier_200_to_ack_ms"]),
            row("baseline SIPp->SIPp: carrier 200 OK sent -> ACK received", base["carrier_200_to_ack_ms"]),
            row("baseline SIPp->SIPp: UAC 200 OK received -> ACK sent", base["uac_200_to_ack_ms"]),
        ],
    )
    cpu_rows: list[list[object]] = []
    for part, label in (
        (gw, "gateway run"),
        (base, "baseline"),
    ):
        for name, c in part["cpu"].items():
            cpu_rows.append(
                [
                    f"{label}: {name}",
                    c["cpu_s"],
                    c["core_pct_per_call_in_flight"],
                    c["cpu_ms_per_call_placed"],
                ]
            )
    table(
        f"CPU over the originating window (gateway: {gw['seconds']:.0f} s, mean {gw['mean_in_flight']:.1f} calls "
        f"in flight, {gw['calls_placed']} placed; baseline: {base['seconds']:.0f} s, mean "
        f"{base['mean_in_flight']:.1f} in flight, {base['calls_placed']} placed)",
        ["process", "CPU s", "% of a core per call in flight", "ms CPU per call placed"],
        cpu_rows,
    )
    table(
        "calls",
        ["what", "gateway run", "baseline"],
        [
            ["calls placed", gw["calls_placed"], base["calls_placed"]],
            ["CPS reached", round(gw["cps_achieved"], 2), round(base["cps_achieved"], 2)],
            [
                "mean / max calls in flight",
                f"{gw['mean_in_flight']:.1f} / {gw['max_in_flight']}",
                f"{base['mean_in_flight']:.1f} / {base['max_in_flight']}",
            ],
            ["carrier outcomes", _fmt(gw["carrier_outcomes"]), _fmt(base["uas_outcomes"])],
            ["answered (ANSWERED events)", gw["answered"], "-"],
            ["bridged to an agent", gw["bridged"], "-"],
            ["abandoned (message, then hang-up)", gw["abandoned"], "-"],
            ["gateway outcomes", _fmt(gw["outcomes"]), "-"],
            ["ENDED by", _fmt(gw["ended_by"]), "-"],
            [
                "SIPp UAC created / successful / failed / open",
                "-",
                "{created} / {successful} / {failed} / {open}".format(**base["uac_stats"]),
            ],
            ["SIPp carrier failed / open", "see below", "{failed} / {open}".format(**base["uas_stats"])],
            [
                "SIPp carrier: 200 never ACKed / its BYE never answered",
                "see below",
                f"{base['unacked_200']} / {base['uas_byes_unanswered']}",
            ],
            ["errors", _fmt(gw["errors"]) or "none", "-"],
        ],
    )
    table(
        f"lost or stuck dialogs after stopping, hanging up and a {args.grace:g} s grace (target 0)",
        ["what", "count"],
        [[k, v] for k, v in gw["stuck"].items()],
    )
    table(
        "symptoms (not counted above: where a lost or stuck dialog shows)",
        ["what", "count"],
        [[k, v] for k, v in gw["symptoms"].items()],
    )
    if gw["never_ended_sample"]:
        print(f"calls never ENDED (first 5): {gw['never_ended_sample']}")
    bl, gl = base["load_average"], gw["load_average"]
    print(
        f"load average (1 min; {os.cpu_count()} cores, shared machine): baseline {bl['start']:.2f} -> "
        f"{bl['end']:.2f} (max {bl['max']:.2f}); gateway run {gl['start']:.2f} -> {gl['end']:.2f} "
        f"(mean {gl['mean']:.2f}, max {gl['max']:.2f})"
    )
    if out["carrier_keys"]:
        print(f"NOTE: the carrier's rates were changed for this run: {out['carrier_keys']}")


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    carrier_keys = parse_carrier_keys(args.carrier_key)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="outdial-bench-sip-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print(f"baseline: SIPp UAC -> SIPp carrier for {args.baseline_seconds:g} s", file=sys.stderr)
        baseline = await asyncio.to_thread(run_baseline, args, workdir, carrier_keys)
        gateway = await run_gateway(args, workdir, carrier_keys)
        return {
            "baseline": baseline,
            "gateway": gateway,
            "carrier_keys": carrier_keys,
            "workdir": str(workdir),
        }
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the driver originates")
    ap.add_argument("--cps", type=float, default=20.0, help="calls per second (the trunk's limit too)")
    ap.add_argument("--in-flight", type=int, default=100, help="most calls in flight (the trunk's limit too)")
    ap.add_argument("--agents", type=int, default=50, help="agents' phones (nailed-up legs)")
    ap.add_argument("--talk-mean", type=float, default=30.0, help="mean s before an agent hangs up (exp)")
    ap.add_argument(
        "--ring-timeout", type=float, default=25.0, help=f"s before the gateway CANCELs (>= {MIN_RING_S:g})"
    )
    ap.add_argument(
        "--baseline-seconds", type=float, default=None, help="SIPp->SIPp window (default min(60 s, the run))"
    )
    ap.add_argument("--grace", type=float, default=30.0, help="s to wait for every call to end at the stop")
    ap.add_argument(
        "--carrier-key",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a carrier.xml key (answer_mean_ms, talk_mean_ms, p_live...); printed in the output",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="keep SIPp traces and logs here (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.baseline_seconds is None:
        args.baseline_seconds = min(60.0, args.minutes * 60)
    lacking = missing_binaries()
    if lacking:
        print(f"bench/sip.py needs {', '.join(lacking)} (make setup as root)", file=sys.stderr)
        return 2
    out = asyncio.run(bench(args))
    out["pass"], out["summary"] = summary_line(args, out)
    if args.json:
        print(json.dumps(out))
    else:
        print_report(args, out)
        print(out["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
