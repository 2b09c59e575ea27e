"""The SIP edge: a local Kamailio that carries the gateway's SIP to a TCP or TLS trunk.

Why: sippy, our SIP stack, speaks SIP over UDP (and WSS) only, while carriers' trunks are often TCP or TLS
(issue 11 needs UDP, TCP and TLS). Rather than a second SIP stack in the gateway, a Kamailio 5.6 process
(Debian ``kamailio`` + ``kamailio-tls-modules``) runs beside it as a transaction-stateful proxy with two
sockets:

- a UDP socket (``listen_udp``) that only the gateway talks to: sippy sends every request there
  (``trunk_edge``) and gets every response and every request from the trunk from there;
- a TCP or TLS socket (``listen_trunk``) facing the trunk: the edge opens the connection to
  ``trunk_host:trunk_port`` over the configured transport, and the trunk's requests and responses come
  back on that connection (or on a new one to ``listen_trunk`` / ``advertise``).

What it does to each request, and nothing more:

- an initial request (no To tag) from the gateway goes to the trunk over TCP/TLS; one from the trunk goes
  to the gateway over UDP. Preloaded Route headers are dropped: the edge has two sides and picks the
  other one. Both are record-routed with ``record_route()``, which writes two Record-Route headers (one
  per socket, Kamailio's double record-route, since the in and out sockets differ in transport), so the
  ACK, BYE, re-INVITE or CANCEL of the dialog, in either direction, comes back through the edge and
  crosses to the other transport;
- an in-dialog request follows its Route set (``loose_route()``). When it leaves towards the trunk and
  its next hop (the trunk's Contact or its own Record-Route) names no transport, or another one, the
  configured transport is imposed: the trunk is reached over TCP/TLS only;
- CANCEL, ACK and retransmissions are matched to their transaction by ``tm``; responses follow the Via;
- an OPTIONS addressed to the edge itself (no user part) is answered ``200`` locally: the readiness
  probe of :func:`start_edge`, and a carrier's keep-alive ping;
- UDP from any address other than the gateway's (or the edge's own) gets ``403``: an IP-authenticated
  trunk must not become an open relay for whoever reaches the UDP socket;
- Max-Forwards is enforced (``483``). Each request is logged on stderr with its transports;
- a request the trunk does not answer at all within 5 s (not even ``100``) gets ``408`` from the edge.
  Over TCP/TLS this is also how a refused connection or a failed TLS handshake (an untrusted
  certificate) reaches the gateway: Kamailio connects asynchronously, after ``t_relay()`` returned.

It changes no SDP and touches no media (RTP stays between rtpengine and the carrier). One edge serves
one trunk: initial requests from the gateway go to ``trunk_host:trunk_port`` whatever their R-URI host.

Caveats:
- Certificates (``tls_verify``): Kamailio 5.6 verifies the trunk's chain against ``tls_ca_file`` (or
  the system CA bundle) but does not check that the certificate names ``trunk_host``: pin the carrier
  with a CA file holding only its CA (or its certificate). SNI is sent when ``trunk_host`` is a name.
- The trunk sees the edge's Via and Record-Route (``listen_trunk``, or ``advertise`` behind NAT): that
  address must be one the trunk can reach for requests it sends when no connection is open (a carrier
  hanging up after the TCP connection closed). The gateway's Contact (the UDP side) is never used by the
  trunk for routing, since the edge record-routes.
  Kamailio reuses a connection only towards the address it was opened to, so a carrier that hangs up
  usually opens a new connection to that address (the tests see it over TLS): it must be open inbound.
- The TLS socket must present a certificate to the trunk's connections; without ``tls_cert_file`` a
  self-signed one is made with the ``openssl`` command at render time.
- Verifying against the system CA bundle makes Kamailio start in ~3.6 s instead of ~0.2 s (every
  process loads the bundle); a CA file with the carrier's CA only is fast.
- The Kamailio process outlives a gateway killed with SIGKILL (``stop()`` is not reached): run the
  gateway under a supervisor that kills its process group, or the edge as a sidecar container.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

Transport = Literal["tcp", "tls"]


class EdgeError(RuntimeError):
    """The edge could not be configured or started (the message says why; the log path is in it)."""


@dataclass(frozen=True)
class EdgeConfig:
    """What the edge needs to know. Addresses are ``host:port`` (IPv6 as ``[addr]:port``)."""

    listen_udp: str  # the UDP socket the gateway sends to (settings.trunk_edge)
    gateway_udp: str  # the gateway's own SIP address (IP:port), where trunk requests go
    listen_trunk: str  # the TCP/TLS socket facing the trunk (also the source of our connections)
    trunk_host: str
    trunk_port: int
    transport: Transport
    tls_ca_file: Path | None = None  # None: the system CA bundle
    tls_verify: bool = True
    tls_cert_file: Path | None = None  # our certificate (server side; and client side when given)
    tls_key_file: Path | None = None
    tls_client_cert: bool = False  # also present tls_cert_file to the trunk (mutual TLS)
    advertise: str | None = None  # host[:port] put in Via/Record-Route towards the trunk (NAT)


@dataclass
class EdgeProcess:
    """A running Kamailio edge. ``stop()`` ends it (SIGTERM, then SIGKILL of its process group)."""

    config: EdgeConfig
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    _log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    # Kamailio's children share the group we created at start: take them too.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        finally:
            self._log.close()


SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def find_kamailio() -> Path | None:
    """The ``kamailio`` binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def _split(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise EdgeError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def _host(host: str) -> str:
    """A host as Kamailio writes it in sockets and URIs (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _quote(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise EdgeError(f"unsupported character in {value!r}")
    return f'"{value}"'


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise EdgeError("transport tls needs tls_cert_file/tls_key_file (no openssl to make one)")
    cert, key = workdir / "edge-cert.pem", workdir / "edge-key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "3650", "-subj", "/CN=outdial-edge", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _tls_cfg(cfg: EdgeConfig, workdir: Path) -> str:
    if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
        cert, key = cfg.tls_cert_file, cfg.tls_key_file
    elif cfg.tls_cert_file is None and cfg.tls_key_file is None:
        if cfg.tls_client_cert:
            raise EdgeError("tls_client_cert needs tls_cert_file and tls_key_file")
        cert, key = _self_signed(workdir)
    else:
        raise EdgeError("give both tls_cert_file and tls_key_file, or neither")
    yes_no = "yes" if cfg.tls_verify else "no"
    lines = [
        # Connections the trunk opens to us: present our certificate, ask for none.
        "[server:default]",
        "method = TLSv1.2+",
        "verify_certificate = no",
        "require_certificate = no",
        f"certificate = {cert}",
        f"private_key = {key}",
        "",
        # Connections we open to the trunk.
        "[client:default]",
        "method = TLSv1.2+",
        f"verify_certificate = {yes_no}",
        f"require_certificate = {yes_no}",
    ]
    if cfg.tls_verify:
        # Loading the system bundle (~140 CAs) in every Kamailio process adds ~3.5 s to the start.
        lines.append(f"ca_list = {cfg.tls_ca_file or SYSTEM_CA_BUNDLE}")
    if cfg.tls_client_cert:
        lines += [f"certificate = {cert}", f"private_key = {key}"]
    if not _is_ip(cfg.trunk_host):
        lines.append(f"server_name = {cfg.trunk_host}")
    return "\n".join(lines) + "\n"


def render_edge_config(cfg: EdgeConfig, workdir: Path) -> Path:
    """Write ``kamailio.cfg`` (and ``tls.cfg`` for TLS) into ``workdir``; return the main file's path."""
    if cfg.transport not in ("tcp", "tls"):
        raise EdgeError(f"the edge carries tcp or tls, not {cfg.transport!r} (udp needs no edge)")
    workdir.mkdir(parents=True, exist_ok=True)
    udp_host, udp_port = _split(cfg.listen_udp)
    trunk_side_host, trunk_side_port = _split(cfg.listen_trunk)
    gw_host, gw_port = _split(cfg.gateway_udp)
    if not _is_ip(gw_host):
        raise EdgeError(f"gateway_udp must be an IP address, got {gw_host!r}")
    proto = cfg.transport
    trunk_sock = f"{proto}:{_host(trunk_side_host)}:{trunk_side_port}"
    udp_sock = f"udp:{_host(udp_host)}:{udp_port}"
    listen_trunk = trunk_sock
    if cfg.advertise:
        adv = cfg.advertise
        with_port = adv.rpartition(":")[2].isdigit() and (adv.count(":") == 1 or "]:" in adv)
        adv_host, adv_port = _split(adv) if with_port else (adv.strip("[]"), trunk_side_port)
        listen_trunk += f" advertise {_host(adv_host)}:{adv_port}"
    header = [
        "#!KAMAILIO",
        "# Generated by outdial.gateway.edge: do not edit (see that module's docstring).",
        f"#!define GW_IP {_quote(gw_host)}",
        f"#!define GW_DST {_quote(f'sip:{_host(gw_host)}:{gw_port};transport=udp')}",
        f"#!define GW_SOCK {_quote(udp_sock)}",
        f"#!define TRUNK_DST {_quote(f'sip:{_host(cfg.trunk_host)}:{cfg.trunk_port};transport={proto}')}",
        f"#!define TRUNK_PROTO {_quote(proto)}",
        f"#!define TRUNK_SOCK {_quote(trunk_sock)}",
        f"listen={udp_sock}",
        f"listen={listen_trunk}",
    ]
    if proto == "tls":
        tls_path = workdir / "tls.cfg"
        tls_path.write_text(_tls_cfg(cfg, workdir))
        header += ["#!define WITH_TLS", f"#!define TLS_CONFIG {_quote(str(tls_path))}"]
    path = workdir / "kamailio.cfg"
    path.write_text("\n".join(header) + "\n" + _BODY)
    return path


def _options_probe(host: str, port: int, timeout: float) -> bool:
    """Send an OPTIONS to the edge itself over UDP; True when it answers 200."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    call_id = uuid.uuid4().hex
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        local_port = sock.getsockname()[1]
        msg = (
            f"OPTIONS sip:{_host(host)}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {_host(host)}:{local_port};branch=z9hG4bK{call_id[:16]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{_host(host)}>;tag={call_id[:8]}\r\n"
            f"To: <sip:{_host(host)}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.settimeout(timeout)
        sock.sendto(msg.encode(), (host, port))
        try:
            data = sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return False
    return data.startswith(b"SIP/2.0 200") and call_id.encode() in data


def _tcp_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_edge(
    cfg: EdgeConfig,
    workdir: Path,
    *,
    kamailio: Path | None = None,
    shm_mb: int = 32,
    pkg_mb: int = 8,
    timeout: float = 15.0,
) -> EdgeProcess:
    """Render the config and run Kamailio in the foreground as the current user.

    Returns once the edge answers an OPTIONS on its UDP socket and accepts connections on its trunk
    socket; raises :class:`EdgeError` (with the end of its log) when it exits or times out first.
    Blocking: call it from a thread (``asyncio.to_thread``) inside an event loop.
    """
    binary = kamailio or find_kamailio()
    if binary is None:
        raise EdgeError("kamailio not found (apt-get install kamailio kamailio-tls-modules)")
    path = render_edge_config(cfg, workdir)
    log_path = workdir / "kamailio.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(binary), "-DD", "-E", "-m", str(shm_mb), "-M", str(pkg_mb), "-Y", str(workdir),
         "-f", str(path)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
        start_new_session=True,
    )  # fmt: skip
    edge = EdgeProcess(cfg, path, log_path, proc, log)
    udp_host, udp_port = _split(cfg.listen_udp)
    trunk_host, trunk_port = _split(cfg.listen_trunk)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            edge.stop()
            raise EdgeError(f"kamailio exited with {proc.returncode}: {_tail(log_path)}")
        if _options_probe(udp_host, udp_port, 0.2) and _tcp_listening(trunk_host, trunk_port):
            return edge
        if time.monotonic() > deadline:
            edge.stop()
            raise EdgeError(f"kamailio not ready after {timeout:.0f} s: {_tail(log_path)}")
        time.sleep(0.05)  # the UDP socket refused the probe at once: not bound yet


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# The routing logic; the generated header above it defines GW_*, TRUNK_* and the two listen sockets.
_BODY = r"""
debug=2
log_stderror=yes
log_prefix="{$mt $ci} "
children=2
tcp_children=2
auto_aliases=no
sip_warning=0
server_signature=no
tcp_connection_lifetime=3605
tcp_connect_timeout=5
# TCP keep-alives keep an idle trunk connection (and any NAT binding on its way) open.
tcp_keepalive=yes
tcp_keepidle=30
tcp_keepintvl=10

#!ifdef WITH_TLS
enable_tls=yes
loadmodule "tls.so"
modparam("tls", "config", TLS_CONFIG)
#!endif
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"

# Two Record-Route headers whenever the in and out sockets differ (UDP <-> TCP/TLS).
modparam("rr", "enable_double_rr", 1)
modparam("rr", "append_fromtag", 0)
# No answer at all from the trunk within 5 s (not even 100 Trying) ends the transaction with a 408 to
# the gateway. Over TCP/TLS this is also how a failed connection or TLS handshake (an untrusted
# certificate) is reported: the connection is made asynchronously, after t_relay() has returned.
modparam("tm", "fr_timer", 5000)
# Ringing, once the trunk has answered 1xx: the gateway's own timer decides; this is a backstop.
modparam("tm", "fr_inv_timer", 180000)

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (proto == UDP) {
        # Only the gateway (or the edge itself: its readiness probe) may use the UDP side.
        if ($si != GW_IP && !(src_ip == myself)) {
            sl_send_reply("403", "Forbidden");
            exit;
        }
        force_rport();
    }
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {
        sl_send_reply("200", "OK");
        exit;
    }
    xlog("L_INFO", "edge: $rm in=$pr:$si:$sp ruri=$ru\n");

    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            route(RELAY);
        }
        exit;
    }
    # Retransmissions of requests the edge is already handling.
    if (!is_method("ACK")) {
        if (t_precheck_trans()) {
            t_check_trans();
            exit;
        }
        t_check_trans();
    }

    if (has_totag()) {
        if (loose_route()) {
            if (proto == UDP) {
                route(TRUNK_TRANSPORT);
            }
            route(RELAY);
        }
        # An ACK to a non-2xx final answer: absorbed by (or relayed along) its INVITE transaction.
        if (is_method("ACK")) {
            if (t_check_trans()) {
                route(RELAY);
            }
            exit;
        }
        sl_send_reply("404", "Not here");
        exit;
    }

    # Initial request: to the other side, whatever Route it was preloaded with.
    remove_hf("Route");
    record_route();
    if (proto == UDP) {
        $du = TRUNK_DST;
        $fs = TRUNK_SOCK;
    } else {
        $du = GW_DST;
        $fs = GW_SOCK;
    }
    route(RELAY);
}

# In-dialog towards the trunk: the next hop ($du after loose_route, else the R-URI) is reached over
# the trunk's transport even when the trunk's Contact or Record-Route does not say so.
route[TRUNK_TRANSPORT] {
    if ($du == $null) {
        $du = $ru;
    }
    if ($(du{uri.transport}) != TRUNK_PROTO) {
        if ($(du{uri.port}) == "") {
            $du = "sip:" + $(du{uri.host}) + ";transport=" + TRUNK_PROTO;
        } else {
            $du = "sip:" + $(du{uri.host}) + ":" + $(du{uri.port}) + ";transport=" + TRUNK_PROTO;
        }
    }
    $fs = TRUNK_SOCK;
}

route[RELAY] {
    if ($du != $null) {
        xlog("L_INFO", "edge: $rm out=$du\n");
    } else {
        xlog("L_INFO", "edge: $rm out=$ru\n");
    }
    if (!t_relay()) {
        sl_reply_error();
    }
    exit;
}
"""
