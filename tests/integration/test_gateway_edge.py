"""The SIP edge (Kamailio) carries a UDP-only gateway's calls to TCP and TLS trunks, both ways.

Real processes only: a SIPp UAC on UDP stands in for the gateway (sippy speaks UDP only), the edge
relays to the trunk. TCP trunk: a SIPp UAS on TCP. TLS trunk: Debian's SIPp is built without TLS, so
the "carrier" is a second Kamailio that terminates TLS and relays to a SIPp UAS on UDP; its log shows
that the middle hop really is TLS. A call passes when both SIPp ends exit 0 (every message of their
scenario seen, in order).

Run ``python tests/integration/test_gateway_edge.py`` to measure the latency the edge adds (median
INVITE->200 over 50 calls, direct and through the edge).
"""

from __future__ import annotations

import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from outdial.gateway.edge import (
    EdgeConfig,
    EdgeProcess,
    Transport,
    find_kamailio,
    render_edge_config,
    start_edge,
)
from tests.tools import needs

SIPP = shutil.which("sipp")
KAMAILIO = find_kamailio()
OPENSSL = shutil.which("openssl")

pytestmark = needs("sipp", "kamailio", "openssl")

HOST = "127.0.0.1"
PORT_RANGE = range(44000, 45000)  # this suite's share of the machine's ports

_SDP = """v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 8
a=rtpmap:8 PCMA/8000"""

# The gateway's side. The INVITE's Request-URI names the trunk (as sippy's does); SIPp sends every
# message to the edge, and the in-dialog ones carry the Route set learnt from the 200's Record-Route.
_UAC_HEAD = (
    """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="gateway">
  <send retrans="500" start_rtd="true">
    <![CDATA[
INVITE sip:[service]@[trunk] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-inv-[call_number]-[pid]
From: <sip:gateway@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[trunk]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:gateway@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

"""
    + _SDP
    + """
    ]]>
  </send>
  <recv response="100" optional="true"/>
"""
)

_ACK = """
  <send>
    <![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:gateway@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[trunk]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:gateway@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
"""

UAC_GATEWAY_HANGS_UP = (
    _UAC_HEAD
    + """
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
"""
    + _ACK
    + """
  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:gateway@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[trunk]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:gateway@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""
)

UAC_CARRIER_HANGS_UP = (
    _UAC_HEAD
    + """
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
"""
    + _ACK
    + """
  <recv request="BYE"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
</scenario>
"""
)

# CANCEL while ringing: the 200 to the CANCEL, then the 487, then the ACK of the 487 (same branch).
UAC_CANCELS = (
    _UAC_HEAD
    + """
  <recv response="180"/>
  <send>
    <![CDATA[
CANCEL sip:[service]@[trunk] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-inv-[call_number]-[pid]
From: <sip:gateway@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[trunk]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <recv response="487" rtd="true"/>
  <send>
    <![CDATA[
ACK sip:[service]@[trunk] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-inv-[call_number]-[pid]
From: <sip:gateway@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[trunk]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
</scenario>
"""
)

# A call the trunk refuses to carry never reaches it: the gateway sees a final failure.
UAC_REFUSED = (
    _UAC_HEAD
    + """
  <recv response="477" optional="true" next="ack" rtd="true"/>
  <recv response="408" optional="true" next="ack" rtd="true"/>
  <recv response="503" rtd="true"/>
  <label id="ack"/>
  <send>
    <![CDATA[
ACK sip:[service]@[trunk] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-inv-[call_number]-[pid]
From: <sip:gateway@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[trunk]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
</scenario>
"""
)

# The carrier's side. Its Contact names no transport (as many carriers' do not): the edge must still
# send the in-dialog requests to it over the trunk's transport.
_UAS_ANSWER = (
    """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="carrier">
  <recv request="INVITE" rrs="true"/>
  <send>
    <![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:carrier@[local_ip]:[local_port]>
Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:carrier@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

"""
    + _SDP
    + """
    ]]>
  </send>
"""
)

UAS_GATEWAY_HANGS_UP = (
    _UAS_ANSWER
    + """
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
</scenario>
"""
)

UAS_CARRIER_HANGS_UP = (
    _UAS_ANSWER
    + """
  <recv request="ACK">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="remote"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="local"/>
    </action>
  </recv>
  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: [$local]
To: [$remote]
Call-ID: [call_id]
CSeq: 1 BYE
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""
)

# The 487 carries every Via of the INVITE (a proxy relays it upstream by them): captured at the INVITE,
# since after the CANCEL (hop by hop, one Via) [last_Via:] is the CANCEL's.
UAS_CANCELLED = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="carrier">
  <recv request="INVITE">
    <action>
      <ereg regexp="([0-9]+) INVITE" search_in="hdr" header="CSeq:" assign_to="cseq,cseq_n"/>
      <ereg regexp="(Via:[^\r\n]*\r\n)+" search_in="msg" assign_to="invite_vias,last_via"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:carrier@[local_ip]:[local_port]>
Content-Length: 0

    ]]>
  </send>
  <recv request="CANCEL"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[
SIP/2.0 487 Request Terminated
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: [$cseq_n] INVITE
[$invite_vias]Content-Length: 0

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <Reference variables="cseq,last_via"/>
</scenario>
"""

SCENARIOS = {
    "gateway_hangs_up": (UAC_GATEWAY_HANGS_UP, UAS_GATEWAY_HANGS_UP),
    "carrier_hangs_up": (UAC_CARRIER_HANGS_UP, UAS_CARRIER_HANGS_UP),
    "gateway_cancels": (UAC_CANCELS, UAS_CANCELLED),
}


class Ports:
    """Free ports of this suite's range, unused on both UDP and TCP, never handed out twice."""

    def __init__(self, span: range = PORT_RANGE) -> None:
        self._next, self._stop = span.start, span.stop

    def __call__(self, count: int = 1) -> int:
        """The first of ``count`` consecutive free ports (SIPp's -mp takes mp..mp+3: audio and video)."""
        while self._next + count <= self._stop:
            first, self._next = self._next, self._next + count
            if all(
                _free(kind, port)
                for port in range(first, first + count)
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)
            ):
                return first
        raise RuntimeError("no free port left in the range")


def _free(kind: socket.SocketKind, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _bound(proto: str, port: int) -> bool:
    """Whether something listens (TCP) or is bound (UDP) on the port: read /proc, touch nothing."""
    want = f":{port:04X}"
    for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(want) and (proto == "udp" or fields[3] == "0A"):
            return True
    return False


@dataclass
class Sipp:
    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path

    def wait(self, timeout: float = 40.0) -> int:
        return self.proc.wait(timeout)

    def logs(self) -> str:
        out = [f"--- sipp {self.name} exit {self.proc.returncode}"]
        for suffix in ("out", "err", "msg"):
            path = self.workdir / f"{self.name}.{suffix}"
            if path.exists():
                out.append(f"[{suffix}]\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(out)


class Peers:
    """Starts SIPp and Kamailio processes; ``close()`` stops and reaps every one of them."""

    def __init__(self, workdir: Path, ports: Ports) -> None:
        self.workdir = workdir
        self.ports = ports
        self.sipps: list[Sipp] = []
        self.edges: list[EdgeProcess] = []

    def sipp(self, name: str, scenario: str, port: int, transport: str, *extra: str) -> Sipp:
        assert SIPP is not None
        scen = self.workdir / f"{name}.xml"
        scen.write_text(scenario)
        args = [
            SIPP, "-sf", str(scen), "-i", HOST, "-p", str(port), "-t", transport,
            "-mp", str(self.ports(4)), "-cp", str(self.ports()), "-nostdin",
            "-timeout", "30", "-timeout_error", "-trace_err", "-error_file", str(self.workdir / f"{name}.err"),
            "-trace_msg", "-message_file", str(self.workdir / f"{name}.msg"), *extra,
        ]  # fmt: skip
        with (self.workdir / f"{name}.out").open("wb") as out:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        sipp = Sipp(name, proc, self.workdir)
        self.sipps.append(sipp)
        return sipp

    def uas(self, scenario: str, port: int, transport: str, calls: int = 1) -> Sipp:
        sipp = self.sipp("uas", scenario, port, transport, "-m", str(calls))
        proto = "tcp" if transport.startswith("t") else "udp"
        for _ in range(200):
            if _bound(proto, port):
                return sipp
            if sipp.proc.poll() is not None:
                break
            time.sleep(0.05)  # waiting for another process to bind: nothing to wait on but time
        raise AssertionError("the SIPp UAS did not start\n" + sipp.logs())

    def uac(
        self, scenario: str, port: int, target: str, trunk: str, *extra: str, transport: str = "u1"
    ) -> Sipp:
        """The gateway's stand-in: sends to ``target`` (the edge) calls whose R-URI names ``trunk``."""
        return self.sipp(
            "uac", scenario, port, transport, target, "-key", "trunk", trunk, "-s", "15550100", *extra
        )

    def edge(self, cfg: EdgeConfig, name: str) -> EdgeProcess:
        edge = start_edge(cfg, self.workdir / name)
        self.edges.append(edge)
        return edge

    def close(self) -> None:
        for sipp in self.sipps:
            if sipp.proc.poll() is None:
                sipp.proc.kill()
            sipp.proc.wait()
        for edge in self.edges:
            edge.stop()


def make_cert(workdir: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for 127.0.0.1, made with the openssl command."""
    assert OPENSSL is not None
    cert, key = workdir / f"{name}-cert.pem", workdir / f"{name}-key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "2", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Chain:
    """UAC (UDP) -> edge -> trunk, where the trunk ends in a SIPp UAS on ``uas_port``/``uas_transport``."""

    edge: EdgeProcess
    edge_udp: str
    trunk: str
    uas_port: int
    uas_transport: str
    carrier: EdgeProcess | None = None


def build_chain(
    peers: Peers, transport: Transport, *, ca_file: Path | None = None, uac_port: int | None = None
) -> Chain:
    """Start the edge (and, for TLS, the TLS-terminating carrier Kamailio); the UAS is the test's."""
    ports = peers.ports
    edge_udp, edge_trunk, uas_port = ports(), ports(), ports()
    if transport == "tcp":
        cfg = EdgeConfig(
            listen_udp=f"{HOST}:{edge_udp}", gateway_udp=f"{HOST}:{uac_port or 5060}",
            listen_trunk=f"{HOST}:{edge_trunk}", trunk_host=HOST, trunk_port=uas_port, transport="tcp",
        )  # fmt: skip
        return Chain(peers.edge(cfg, "edge"), f"{HOST}:{edge_udp}", f"{HOST}:{uas_port}", uas_port, "t1")
    carrier_tls, carrier_udp = ports(), ports()
    carrier_cert, carrier_key = make_cert(peers.workdir, "carrier")
    carrier = peers.edge(
        EdgeConfig(
            listen_udp=f"{HOST}:{carrier_udp}", gateway_udp=f"{HOST}:{uas_port}",
            listen_trunk=f"{HOST}:{carrier_tls}", trunk_host=HOST, trunk_port=edge_trunk,
            transport="tls", tls_cert_file=carrier_cert, tls_key_file=carrier_key, tls_verify=False,
        ),
        "carrier",
    )  # fmt: skip
    cfg = EdgeConfig(
        listen_udp=f"{HOST}:{edge_udp}", gateway_udp=f"{HOST}:{uac_port or 5060}",
        listen_trunk=f"{HOST}:{edge_trunk}", trunk_host=HOST, trunk_port=carrier_tls, transport="tls",
        tls_ca_file=ca_file or carrier_cert, tls_verify=True,
    )  # fmt: skip
    edge = peers.edge(cfg, "edge")
    return Chain(edge, f"{HOST}:{edge_udp}", f"{HOST}:{carrier_tls}", uas_port, "u1", carrier)


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    p = Peers(tmp_path, Ports())
    try:
        yield p
    finally:
        p.close()


def _diagnostics(peers: Peers) -> str:
    parts = [s.logs() for s in peers.sipps]
    parts += [f"--- {e.config_path.parent.name} log\n{e.log_text()[-6000:]}" for e in peers.edges]
    return "\n".join(parts)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_udp_gateway_calls_through_the_edge(peers: Peers, transport: Transport, scenario: str) -> None:
    uac_xml, uas_xml = SCENARIOS[scenario]
    uac_port = peers.ports()
    chain = build_chain(peers, transport, uac_port=uac_port)
    uas = peers.uas(uas_xml, chain.uas_port, chain.uas_transport)
    uac = peers.uac(uac_xml, uac_port, chain.edge_udp, chain.trunk, "-m", "1")

    assert (uac.wait(), uas.wait()) == (0, 0), _diagnostics(peers)

    edge_log = chain.edge.log_text()
    assert f"INVITE out=sip:{chain.trunk};transport={transport}" in edge_log
    if chain.carrier is not None:
        # The carrier received each of the edge's requests over TLS, and relayed them on UDP.
        carrier_log = chain.carrier.log_text()
        assert "edge: INVITE in=tls:" in carrier_log, carrier_log
        if scenario == "gateway_hangs_up":
            assert "edge: ACK in=tls:" in carrier_log and "edge: BYE in=tls:" in carrier_log
        if scenario == "carrier_hangs_up":
            assert "edge: BYE in=udp:" in carrier_log and "edge: BYE in=tls:" in edge_log
        if scenario == "gateway_cancels":
            assert "edge: CANCEL in=tls:" in carrier_log


def test_an_untrusted_trunk_certificate_fails_the_call_and_nothing_reaches_the_trunk(
    peers: Peers, tmp_path: Path
) -> None:
    stranger_ca, _ = make_cert(tmp_path, "stranger-ca")
    uac_port = peers.ports()
    chain = build_chain(peers, "tls", ca_file=stranger_ca, uac_port=uac_port)
    uac = peers.uac(UAC_REFUSED, uac_port, chain.edge_udp, chain.trunk, "-m", "1")

    assert uac.wait() == 0, _diagnostics(peers)
    assert chain.carrier is not None
    assert "edge: INVITE" not in chain.carrier.log_text()


def test_udp_from_anyone_but_the_gateway_is_refused(peers: Peers) -> None:
    chain = build_chain(peers, "tcp", uac_port=peers.ports())
    host, port = chain.edge_udp.split(":")
    call_id = uuid.uuid4().hex
    invite = (
        f"INVITE sip:15550100@{chain.trunk} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-stranger;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:mallory@127.0.0.2>;tag=1\r\n"
        f"To: <sip:15550100@{chain.trunk}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))  # any 127/8 address is loopback on Linux
        sock.settimeout(5)
        sock.sendto(invite.encode(), (host, int(port)))
        reply = sock.recv(65535).decode()
    assert reply.startswith("SIP/2.0 403"), reply
    assert "INVITE out=" not in chain.edge.log_text()


@pytest.mark.parametrize(
    "cfg",
    [
        EdgeConfig(
            listen_udp="127.0.0.1:5062", gateway_udp="127.0.0.1:5060", listen_trunk="0.0.0.0:5061",
            trunk_host="sip.carrier.example", trunk_port=5061, transport="tls", advertise="203.0.113.5",
        ),
        EdgeConfig(
            listen_udp="[::1]:5062", gateway_udp="[::1]:5060", listen_trunk="[::1]:5070",
            trunk_host="2001:db8::1", trunk_port=5060, transport="tcp", advertise="[2001:db8::5]:5070",
        ),
    ],
    ids=["tls-dns-trunk-behind-nat", "tcp-ipv6"],
)  # fmt: skip
def test_configs_not_run_above_still_pass_kamailios_own_check(cfg: EdgeConfig, tmp_path: Path) -> None:
    assert KAMAILIO is not None
    path = render_edge_config(cfg, tmp_path)
    check = subprocess.run([str(KAMAILIO), "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


# ---- latency measurement (not a test): python tests/integration/test_gateway_edge.py ----------------


def invite_to_200_ms(message_log: str) -> list[float]:
    """Per call, ms from the first INVITE sent to the 200 (INVITE) received, from SIPp's -trace_msg log."""
    sent: dict[str, datetime] = {}
    answered: dict[str, float] = {}
    for block in re.split(r"^-{20,} ", message_log, flags=re.M)[1:]:
        stamp, _, rest = block.partition("\n")
        at = datetime.fromisoformat(stamp.strip())
        call_id = re.search(r"^Call-ID: *(\S+)", rest, re.M)
        if call_id is None:
            continue
        key = call_id.group(1)
        if "message sent" in rest and "INVITE sip:" in rest:
            sent.setdefault(key, at)
        elif "message received" in rest and "SIP/2.0 200" in rest and "INVITE" in rest.split("CSeq:")[1]:
            answered.setdefault(key, (at - sent[key]).total_seconds() * 1000)
    return list(answered.values())


def _invite_to_200(
    peers: Peers, uac_transport: str, target: str, trunk: str, uac_port: int, calls: int
) -> tuple[float, float]:
    uac = peers.uac(
        UAC_GATEWAY_HANGS_UP, uac_port, target, trunk, "-m", str(calls), "-r", "10", "-l", "5",
        transport=uac_transport,
    )  # fmt: skip
    assert uac.wait(120) == 0, _diagnostics(peers)
    values = invite_to_200_ms((peers.workdir / "uac.msg").read_text())
    assert len(values) == calls
    return statistics.median(values), values[0]


def measure(calls: int = 50) -> dict[str, tuple[float, float]]:
    """Median INVITE->200 as the UAC sees it: SIPp to SIPp directly, and through the edge."""
    runs: list[tuple[str, Transport | None, str]] = [
        ("direct udp", None, "u1"),
        ("direct tcp", None, "t1"),
        ("edge udp->tcp", "tcp", "t1"),
        ("edge udp->tls + carrier tls->udp", "tls", "u1"),
    ]
    results: dict[str, tuple[float, float]] = {}  # label: (median, first call: connection set-up)
    for label, transport, uas_transport in runs:
        with tempfile.TemporaryDirectory() as tmp:
            peers = Peers(Path(tmp), Ports())
            try:
                uac_port = peers.ports()
                if transport is None:
                    uas_port = peers.ports()
                    peers.uas(UAS_GATEWAY_HANGS_UP, uas_port, uas_transport, calls)
                    target = trunk = f"{HOST}:{uas_port}"
                    results[label] = _invite_to_200(peers, uas_transport, target, trunk, uac_port, calls)
                else:
                    chain = build_chain(peers, transport, uac_port=uac_port)
                    peers.uas(UAS_GATEWAY_HANGS_UP, chain.uas_port, chain.uas_transport, calls)
                    results[label] = _invite_to_200(peers, "u1", chain.edge_udp, chain.trunk, uac_port, calls)
            finally:
                peers.close()
    return results


if __name__ == "__main__":
    for label, (median, first) in measure(int(sys.argv[1]) if len(sys.argv) > 1 else 50).items():
        print(f"{label:>34}: INVITE->200 median {median:.3f} ms, first call {first:.3f} ms")
