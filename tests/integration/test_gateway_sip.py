"""The SIP/RTP gateway against independent peers on loopback: SIPp as the carrier and as agents' phones,
baresip as a registering softphone, rtpengine as the media relay. Real processes, assertions on the wire.

Skipped only when a binary is missing and OUTDIAL_REQUIRE_SIP is not set (CI sets it: there, a missing
binary fails the test).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outdial.gateway.peers.sipp import SippUas
from outdial.v1 import gateway_pb2 as pb
from tests.integration.siprig import (
    LoopbackCapture,
    Rig,
    free_port,
    free_tcp_udp_port,
    gateway_rig,
    require_sip,
)
from tests.tools import require

pytestmark = [pytest.mark.timeout(120)]

require_sip()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with gateway_rig(tmp_path) as r:
        yield r


async def _wait_exit(uas: SippUas, timeout: float = 20.0) -> int:
    return await asyncio.to_thread(uas.wait, timeout)


def _uas(rig: Rig, scenario: str, **kw: Any) -> SippUas:
    uas = SippUas(scenario, port=rig.trunk_port(), media_port=free_port(), trace_dir=rig.tmp / "trace", **kw)
    uas.start()
    return uas


async def _leftover(rig: Rig) -> list[str]:
    from outdial.gateway.rtpengine import RtpEngine

    eng = RtpEngine("127.0.0.1", rig.rtp.ng_port, 1.0)
    try:
        for _ in range(30):
            calls = await eng.list_calls()
            if not calls:
                return []
            await asyncio.sleep(0.2)
        return calls
    finally:
        eng.close()


async def test_answered_call_carries_caller_id_and_identity_and_ends_cleanly(rig: Rig) -> None:
    uas = _uas(
        rig,
        "caller_id_check.xml",
        keys={"expect_from": "+12125550123", "expect_pai": "+12125550123", "talk_ms": "-1"},
        calls=1,
    )
    try:
        await rig.originate("call-a1")
        ans = await rig.until("call-a1", pb.GATEWAY_EVENT_KIND_ANSWERED)
        assert ans.answer == "human"
        await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-a1"), timeout=5)
        ended = await rig.until("call-a1", pb.GATEWAY_EVENT_KIND_ENDED)
        assert ended.reason == "local"
        assert await _wait_exit(uas) == 0  # SIPp checked From and P-Asserted-Identity, got our BYE
        invite = next(m for m in uas.messages() if m.direction == "in" and m.first_line.startswith("INVITE"))
        assert "+12125550123" in (invite.header("From") or "")
        assert "+12125550123" in (invite.header("P-Asserted-Identity") or "")
        assert (invite.header("Identity") or "").startswith("eyJhbGciOiJFUzI1NiJ9.test.sig")
        assert invite.first_line.startswith("INVITE sip:+14155550100@127.0.0.1")
        assert await _leftover(rig) == []
    finally:
        uas.stop()


@pytest.mark.parametrize(
    ("scenario", "kind", "status"),
    [
        ("busy.xml", pb.GATEWAY_EVENT_KIND_BUSY, 486),
        ("invalid.xml", pb.GATEWAY_EVENT_KIND_INVALID_NUMBER, 404),
        ("unavailable.xml", pb.GATEWAY_EVENT_KIND_FAILED, 503),
    ],
)
async def test_final_responses_map_to_outcomes(rig: Rig, scenario: str, kind: int, status: int) -> None:
    uas = _uas(rig, scenario, calls=1)
    try:
        await rig.originate("call-f1")
        ev = await rig.until("call-f1", kind)
        assert ev.sip_status == status
        await rig.until("call-f1", pb.GATEWAY_EVENT_KIND_ENDED)
        assert await _wait_exit(uas) == 0
        assert await _leftover(rig) == []
    finally:
        uas.stop()


async def test_unanswered_call_is_cancelled_no_earlier_than_the_ring_time(rig: Rig) -> None:
    uas = _uas(rig, "ring_forever.xml", calls=1)
    try:
        await rig.originate("call-r1", ring_s=5.0)  # below the legal minimum: raised to 15 s
        ev = await rig.until("call-r1", pb.GATEWAY_EVENT_KIND_NO_ANSWER, timeout=40)
        assert ev.reason == "ring_timeout"
        await rig.until("call-r1", pb.GATEWAY_EVENT_KIND_ENDED)
        assert await _wait_exit(uas) == 0  # CANCEL answered 200, INVITE 487, ACK received
        msgs = uas.messages()
        invite = next(m for m in msgs if m.direction == "in" and m.first_line.startswith("INVITE"))
        cancel = next(m for m in msgs if m.direction == "in" and m.first_line.startswith("CANCEL"))
        assert cancel.timestamp - invite.timestamp >= 15.0
        assert await _leftover(rig) == []
    finally:
        uas.stop()


async def _agent_leg(rig: Rig, scenario: str = "agent_phone.xml", **kw: Any) -> SippUas:
    port = free_tcp_udp_port()
    phone = SippUas(scenario, port=port, media_port=free_port(), trace_dir=rig.tmp / "phone", **kw)
    phone.start()
    await rig.stub.OpenAgentLeg(
        pb.OpenAgentLegRequest(agent_id="agent7", contact_uri=f"sip:agent7@127.0.0.1:{port}"), timeout=40
    )
    return phone


def _rtp(packets: list[tuple[float, int, int, bytes]]) -> list[bytes]:
    """The RTP audio payloads (PCMA/PCMU) among captured datagrams."""
    return [p[3][12:] for p in packets if len(p[3]) > 12 and p[3][0] >> 6 == 2 and (p[3][1] & 0x7F) in (0, 8)]


async def test_bridge_carries_media_both_ways_and_agent_leg_survives_the_call(rig: Rig) -> None:
    phone = await _agent_leg(rig)
    uas = _uas(rig, "answer_speech.xml", keys={"talk_ms": "-1"}, calls=1)
    cap = LoopbackCapture({phone.media_port, uas.media_port})
    try:
        await rig.originate("call-b1")
        await rig.until("call-b1", pb.GATEWAY_EVENT_KIND_ANSWERED)
        t_bridge = time.time()
        res = await rig.stub.BridgeCall(pb.BridgeCallRequest(call_id="call-b1", agent_id="agent7"), timeout=5)
        assert res.bridged
        await asyncio.sleep(2.0)
        # On the wire: the customer's speech reached the agent's phone, and the agent's reached the customer.
        to_phone = _rtp(cap.to(phone.media_port, after=t_bridge))
        to_customer = _rtp(cap.to(uas.media_port, after=t_bridge))
        assert len(to_phone) > 20 and len(to_customer) > 20, (len(to_phone), len(to_customer))
        assert any(set(p) - {0xD5, 0x55, 0xFF, 0x7F} for p in to_phone)  # speech, not silence
        await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-b1"), timeout=5)
        await rig.until("call-b1", pb.GATEWAY_EVENT_KIND_ENDED)
        status = await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
        assert status.agent_legs == 1  # the phone stays connected for the next call
        await rig.stub.CloseAgentLeg(pb.CloseAgentLegRequest(agent_id="agent7"), timeout=5)
        assert await _wait_exit(uas) == 0
        assert await _leftover(rig) == []
    finally:
        cap.close()
        uas.stop()
        phone.stop()


async def test_prompt_reaches_the_customer_within_two_seconds_and_opt_out_key_is_reported(rig: Rig) -> None:
    uas = _uas(rig, "opt_out.xml", digit="9", keys={"dtmf_after_ms": "3000"}, calls=1)
    cap = LoopbackCapture({uas.media_port})
    try:
        await rig.originate("call-o1")
        ans = await rig.until("call-o1", pb.GATEWAY_EVENT_KIND_ANSWERED)
        await rig.stub.PlayPrompt(
            pb.PlayPromptRequest(
                call_id="call-o1",
                text="This is Acme calling. To not be called again, press 9 or call 2 1 2 5 5 5 0 1 9 9.",
            ),
            timeout=10,
        )
        dtmf = await rig.until("call-o1", pb.GATEWAY_EVENT_KIND_DTMF, timeout=15)
        assert dtmf.digit == "9"
        prompt = _rtp(cap.to(uas.media_port))
        first = cap.to(uas.media_port)[0][0] if prompt else None
        assert first is not None and (first * 1000 - ans.at_ms) < 2000, "no prompt at the customer within 2 s"
        assert any(set(p) - {0xD5, 0x55, 0xFF, 0x7F} for p in prompt)  # speech, not silence
        await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-o1"), timeout=5)
        await rig.until("call-o1", pb.GATEWAY_EVENT_KIND_ENDED)
        assert await _wait_exit(uas) == 0
        assert await _leftover(rig) == []
    finally:
        cap.close()
        uas.stop()


async def test_agent_star_hangs_up_the_customer_and_keeps_the_agent_leg(rig: Rig) -> None:
    phone = await _agent_leg(rig, "agent_phone_star.xml", keys={"star_after_ms": "3000"})
    uas = _uas(rig, "answer_speech.xml", keys={"talk_ms": "60000"}, calls=1)
    try:
        await rig.originate("call-s1")
        await rig.until("call-s1", pb.GATEWAY_EVENT_KIND_ANSWERED)
        assert (await rig.stub.BridgeCall(pb.BridgeCallRequest(call_id="call-s1", agent_id="agent7"))).bridged
        ended = await rig.until("call-s1", pb.GATEWAY_EVENT_KIND_ENDED, timeout=20)
        assert ended.reason == "agent"
        assert await _wait_exit(uas) == 0  # the customer got our BYE
        status = await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
        assert status.agent_legs == 1
        await rig.stub.CloseAgentLeg(pb.CloseAgentLegRequest(agent_id="agent7"), timeout=5)
    finally:
        uas.stop()
        phone.stop()


async def test_bad_input_is_answered_or_dropped_and_counted(rig: Rig) -> None:
    before = rig.metric("outdial_gateway_sip_rejected_total", {"why": "malformed"})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto(b"INVITE this is not SIP at all\r\n\r\n" + b"x" * 64, ("127.0.0.1", rig.sip_port))
        s.sendto(b"SIP/2.0 200 OK\r\nVia: garbage\r\n\r\n" + b"y" * 64, ("127.0.0.1", rig.sip_port))
        # An INVITE from a stranger: refused with 403.
        port = s.getsockname()[1]
        s.sendto(_invite(port, rig.sip_port).encode(), ("127.0.0.1", rig.sip_port))
        got = b""
        with contextlib.suppress(TimeoutError):
            while b"403" not in got:
                got += s.recv(4096)
        assert b"SIP/2.0 403" in got
    await asyncio.sleep(0.5)
    assert rig.metric("outdial_gateway_sip_rejected_total", {"why": "malformed"}) > before
    assert rig.metric("outdial_gateway_sip_requests_total", {"method": "INVITE"}) >= 1
    # Still serving: a wrong originate is refused with a clear error naming what is wrong.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.originate("call-x1", number="555-0100")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "E.164" in (err.value.details() or "")
    assert rig.proc is not None and rig.proc.poll() is None


def _invite(src_port: int, dst_port: int) -> str:
    body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    return (
        f"INVITE sip:+18005550100@127.0.0.1:{dst_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{src_port};branch=z9hG4bK-stranger-1\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:stranger@127.0.0.1:{src_port}>;tag=abc\r\n"
        f"To: <sip:+18005550100@127.0.0.1:{dst_port}>\r\n"
        "Call-ID: stranger-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:stranger@127.0.0.1:{src_port}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )


async def test_rtpengine_down_fails_closed(rig: Rig) -> None:
    rig.rtp.kill()
    health = health_pb2_grpc.HealthStub(rig.channel)
    for _ in range(60):
        r = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        if r.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        await asyncio.sleep(0.1)
    assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.originate("call-d1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    status = await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
    assert not status.media_reachable


async def test_softphone_registers_with_digest_and_gets_the_nailed_up_call(rig: Rig) -> None:
    from outdial.gateway.peers.baresip import Baresip

    registrar = f"127.0.0.1:{rig.sip_port}"
    wrong = Baresip("agent7", "not-the-password", registrar, free_tcp_udp_port(), rig.tmp / "wrong")
    wrong.start()
    try:
        for _ in range(100):
            if wrong.registration_failed():
                break
            await asyncio.sleep(0.1)
        assert wrong.registration_failed() and not wrong.registered()
    finally:
        wrong.stop()
    assert rig.metric("outdial_gateway_sip_rejected_total", {"why": "digest"}) >= 1
    status = await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
    assert status.registered_phones == 0

    phone = Baresip("agent7", "s3cret-pass", registrar, free_tcp_udp_port(), rig.tmp / "phone")
    phone.start()
    try:
        await asyncio.to_thread(phone.wait_registered, 15)
        assert (
            await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
        ).registered_phones == 1
        # Login with phone="registered": the gateway calls the registered contact, baresip auto-answers.
        leg = await rig.stub.OpenAgentLeg(pb.OpenAgentLegRequest(agent_id="agent7"), timeout=40)
        assert leg.leg_id
        assert (await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)).agent_legs == 1
        # An agent with no registered phone and no contact is refused with a reason.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rig.stub.OpenAgentLeg(pb.OpenAgentLegRequest(agent_id="agent8"), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "registered" in (err.value.details() or "")
        await rig.stub.CloseAgentLeg(pb.CloseAgentLegRequest(agent_id="agent7"), timeout=5)
    finally:
        phone.stop()
    assert await _leftover(rig) == []


async def test_trunk_digest_authentication(tmp_path: Path) -> None:
    async with gateway_rig(tmp_path, trunk_username="outdial", trunk_password="trunk-secret-1") as rig:
        uas = _uas(
            rig,
            "digest_401.xml",
            keys={"auth_user": "outdial", "auth_pass": "trunk-secret-1", "talk_ms": "-1"},
            calls=1,
        )
        try:
            await rig.originate("call-d1")
            await rig.until("call-d1", pb.GATEWAY_EVENT_KIND_ANSWERED)
            await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-d1"), timeout=5)
            await rig.until("call-d1", pb.GATEWAY_EVENT_KIND_ENDED)
            assert await _wait_exit(uas) == 0  # SIPp's verifyauth accepted our digest
            invites = [m for m in uas.messages() if m.direction == "in" and m.first_line.startswith("INVITE")]
            assert len(invites) == 2 and invites[1].header("Authorization")
        finally:
            uas.stop()


async def test_tcp_trunk_through_the_sip_edge(tmp_path: Path) -> None:

    require("kamailio")
    trunk = free_tcp_udp_port()
    async with gateway_rig(
        tmp_path,
        trunk_uri=f"sip:127.0.0.1:{trunk}",
        trunk_transport="tcp",
        trunk_edge=f"127.0.0.1:{free_tcp_udp_port()}",
        edge_trunk_listen=f"127.0.0.1:{free_tcp_udp_port()}",
    ) as rig:
        uas = SippUas(
            "answer_speech.xml",
            port=trunk,
            media_port=free_port(),
            keys={"talk_ms": "-1"},
            calls=1,
            trace_dir=tmp_path / "tcp",
            extra_args=["-t", "t1"],
        )
        uas.start()
        try:
            await rig.originate("call-t1")
            await rig.until("call-t1", pb.GATEWAY_EVENT_KIND_ANSWERED)
            await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-t1"), timeout=5)
            await rig.until("call-t1", pb.GATEWAY_EVENT_KIND_ENDED)
            assert await _wait_exit(uas) == 0  # INVITE, ACK and our BYE all arrived over TCP
            invite = next(
                m for m in uas.messages() if m.direction == "in" and m.first_line.startswith("INVITE")
            )
            assert "TCP" in (invite.header("Via") or "").upper()
            assert "+12125550123" in (invite.header("P-Asserted-Identity") or "")
        finally:
            uas.stop()


async def test_calls_per_second_and_calls_in_flight_are_never_exceeded(tmp_path: Path) -> None:
    async with gateway_rig(tmp_path, trunk_cps=4.0, trunk_max_calls=6) as rig:
        uas = _uas(rig, "ring_forever.xml")
        try:
            # Eight dial requests at once: six are placed, spaced by the carrier's rate; two are refused.
            results = await asyncio.gather(
                *(rig.originate(f"call-c{i}") for i in range(8)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(refused) == 2
            assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
            status = await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
            assert status.calls_in_flight == 6 and not status.accepting_calls
            for i in range(8):
                await rig.stub.CancelCall(pb.CancelCallRequest(call_id=f"call-c{i}"), timeout=5)
            await asyncio.sleep(1.0)
            invites = sorted(
                m.timestamp
                for m in uas.messages()
                if m.direction == "in" and m.first_line.startswith("INVITE")
            )
            assert len(invites) == 6
            # At most 4 INVITEs in any one second, as the carrier counts them (the wire's timestamps).
            assert all(b - a >= 1.0 for a, b in zip(invites, invites[4:], strict=False)), invites
        finally:
            uas.stop()
        assert await _leftover(rig) == []


async def test_a_failing_trunk_is_degraded_and_backed_off(tmp_path: Path) -> None:
    async with gateway_rig(tmp_path) as rig:
        uas = _uas(rig, "unavailable.xml")
        try:
            for i in range(5):
                await rig.originate(f"call-u{i}")
                ev = await rig.until(f"call-u{i}", pb.GATEWAY_EVENT_KIND_FAILED)
                assert ev.sip_status == 503
            status = await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)
            assert status.trunk_state == "degraded" and not status.accepting_calls
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rig.originate("call-u9")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            for _ in range(40):  # the gauge follows within a second
                if rig.metric("outdial_gateway_trunk_up", {}) == 0:
                    break
                await asyncio.sleep(0.1)
            assert rig.metric("outdial_gateway_trunk_up", {}) == 0
        finally:
            uas.stop()


async def test_early_media_then_answer(rig: Rig) -> None:
    uas = _uas(rig, "early_media.xml", keys={"early_ms": "1500", "talk_ms": "-1"}, calls=1)
    try:
        await rig.originate("call-e1")
        ringing = await rig.until("call-e1", pb.GATEWAY_EVENT_KIND_RINGING)
        assert ringing.sip_status == 183
        ans = await rig.until("call-e1", pb.GATEWAY_EVENT_KIND_ANSWERED)
        assert ans.at_ms >= ringing.at_ms
        await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-e1"), timeout=5)
        await rig.until("call-e1", pb.GATEWAY_EVENT_KIND_ENDED)
        assert await _wait_exit(uas) == 0
        assert await _leftover(rig) == []
    finally:
        uas.stop()


async def test_recorded_call_plays_the_notice_and_reports_the_file(rig: Rig) -> None:
    import hashlib

    uas = _uas(rig, "answer_speech.xml", keys={"talk_ms": "-1"}, calls=1)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:  # recording without the notice is refused
            await rig.stub.Originate(
                pb.OriginateRequest(
                    call_id="call-n0",
                    number="+14155550100",
                    caller_id="+12125550123",
                    owner=rig.owner,
                    record=True,
                ),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await rig.stub.Originate(
            pb.OriginateRequest(
                call_id="call-n1",
                number="+14155550100",
                caller_id="+12125550123",
                ring_timeout_s=20,
                owner=rig.owner,
                record=True,
                recording_notice="This call is recorded.",
            ),
            timeout=15,
        )
        await rig.until("call-n1", pb.GATEWAY_EVENT_KIND_ANSWERED)
        await asyncio.sleep(2.0)
        await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-n1"), timeout=5)
        ended = await rig.until("call-n1", pb.GATEWAY_EVENT_KIND_ENDED)
        rec = ended.recording
        assert rec.path and Path(rec.path).exists()
        assert "call-n1" in Path(rec.path).name  # named by call id
        assert rec.sha256 == hashlib.sha256(Path(rec.path).read_bytes()).hexdigest()
        assert rec.duration_ms > 1000  # the customer's speech was recorded
    finally:
        uas.stop()


async def test_opt_out_key_sent_as_sip_info_is_reported(rig: Rig) -> None:
    uas = _uas(rig, "opt_out_info.xml", keys={"digit": "9", "dtmf_after_ms": "1000"}, calls=1)
    try:
        await rig.originate("call-i1")
        await rig.until("call-i1", pb.GATEWAY_EVENT_KIND_ANSWERED)
        dtmf = await rig.until("call-i1", pb.GATEWAY_EVENT_KIND_DTMF, timeout=15)
        assert dtmf.digit == "9"
        await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-i1"), timeout=5)
        await rig.until("call-i1", pb.GATEWAY_EVENT_KIND_ENDED)
        assert await _wait_exit(uas) == 0  # our 200 to the INFO, then our BYE
    finally:
        uas.stop()


async def test_calls_go_through_the_outbound_proxy_with_the_trunk_in_the_request_uri(tmp_path: Path) -> None:
    proxy = free_tcp_udp_port()
    async with gateway_rig(
        tmp_path, trunk_uri="sip:trunk.carrier.invalid:5060", trunk_outbound_proxy=f"sip:127.0.0.1:{proxy}"
    ) as rig:
        uas = SippUas("busy.xml", port=proxy, media_port=free_port(), calls=1, trace_dir=tmp_path / "proxy")
        uas.start()
        try:
            await rig.originate("call-p1")
            ev = await rig.until("call-p1", pb.GATEWAY_EVENT_KIND_BUSY)
            assert ev.sip_status == 486
            assert await _wait_exit(uas) == 0
            invite = next(
                m for m in uas.messages() if m.direction == "in" and m.first_line.startswith("INVITE")
            )
            assert invite.first_line.startswith("INVITE sip:+14155550100@trunk.carrier.invalid")
        finally:
            uas.stop()


async def test_a_request_for_an_unknown_dialog_gets_481(rig: Rig) -> None:
    bye = (
        f"BYE sip:x@127.0.0.1:{rig.sip_port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-unknown-1\r\nMax-Forwards: 70\r\n"
        "From: <sip:a@127.0.0.1>;tag=aa\r\nTo: <sip:b@127.0.0.1>;tag=bb\r\n"
        "Call-ID: no-such-dialog@127.0.0.1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3.0)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.sendto(bye.replace("127.0.0.1:9", f"127.0.0.1:{port}").encode(), ("127.0.0.1", rig.sip_port))
        assert s.recv(4096).startswith(b"SIP/2.0 481")


async def test_the_called_party_hanging_up_ends_the_call(rig: Rig) -> None:
    uas = _uas(rig, "answer_speech.xml", keys={"talk_ms": "1500"}, calls=1)
    try:
        await rig.originate("call-h1")
        await rig.until("call-h1", pb.GATEWAY_EVENT_KIND_ANSWERED)
        ended = await rig.until("call-h1", pb.GATEWAY_EVENT_KIND_ENDED, timeout=15)
        assert ended.reason == "remote"
        assert await _wait_exit(uas) == 0  # its BYE was answered 200
        assert rig.metric("outdial_gateway_sip_rejected_total", {"why": "malformed"}) == 0
        assert await _leftover(rig) == []
    finally:
        uas.stop()


async def test_tls_trunk_through_the_sip_edge(tmp_path: Path) -> None:
    """The gateway -> its Kamailio edge -(TLS, certificate checked against the carrier's CA)-> a TLS carrier
    (a second Kamailio, as SIPp has no TLS here) -> SIPp answering over UDP."""

    from outdial.gateway.edge import EdgeConfig, start_edge
    from tests.integration.test_gateway_edge import make_cert

    require("kamailio", "openssl")
    uas_port, carrier_tls, carrier_udp = free_tcp_udp_port(), free_tcp_udp_port(), free_tcp_udp_port()
    edge_trunk = free_tcp_udp_port()
    cert, key = make_cert(tmp_path, "carrier")
    carrier = await asyncio.to_thread(
        start_edge,
        EdgeConfig(
            listen_udp=f"127.0.0.1:{carrier_udp}",
            gateway_udp=f"127.0.0.1:{uas_port}",
            listen_trunk=f"127.0.0.1:{carrier_tls}",
            trunk_host="127.0.0.1",
            trunk_port=edge_trunk,
            transport="tls",
            tls_cert_file=cert,
            tls_key_file=key,
            tls_verify=False,
        ),
        tmp_path / "carrier-edge",
    )
    try:
        async with gateway_rig(
            tmp_path,
            trunk_uri=f"sip:127.0.0.1:{carrier_tls}",
            trunk_transport="tls",
            trunk_tls_ca_file=cert,
            trunk_edge=f"127.0.0.1:{free_tcp_udp_port()}",
            edge_trunk_listen=f"127.0.0.1:{edge_trunk}",
        ) as rig:
            uas = SippUas(
                "answer_speech.xml",
                port=uas_port,
                media_port=free_port(),
                keys={"talk_ms": "-1"},
                calls=1,
                trace_dir=tmp_path / "tls",
            )
            uas.start()
            try:
                await rig.originate("call-s1")
                await rig.until("call-s1", pb.GATEWAY_EVENT_KIND_ANSWERED)
                await rig.stub.HangupCall(pb.HangupCallRequest(call_id="call-s1"), timeout=5)
                await rig.until("call-s1", pb.GATEWAY_EVENT_KIND_ENDED)
                assert await _wait_exit(uas) == 0
                # The carrier's side saw the INVITE, ACK and BYE arrive over TLS.
                log = carrier.log_text()
                for method in ("INVITE", "ACK", "BYE"):
                    assert f"edge: {method} in=tls:" in log, log[-2000:]
            finally:
                uas.stop()
    finally:
        await asyncio.to_thread(carrier.stop)
