"""The SIP side of the gateway, on the sippy stack. Runs ONLY in the SIP thread (:mod:`.sip`).

sippy's event dispatcher (``ED2``) is a singleton bound to the thread that first imports sippy, so this module
(which imports sippy) is imported inside that thread and nowhere else. Everything here is called in that thread
(via ``ED2.callFromThread``) and reports back through ``post(kind, *args)``, which the asyncio side makes
thread-safe.

What it does:
- **Calls we place** (to the carrier's trunk or to an agent's phone): one sippy ``UA`` per call, INVITE with
  our SDP (from rtpengine), extra headers (P-Asserted-Identity, Identity), digest answered by sippy,
  ``CCEventDisconnect`` = CANCEL while ringing, BYE once answered. Events: ``ring``, ``connect``, ``fail``,
  ``disc``, ``info`` (SIP INFO, e.g. DTMF), ``update`` (a re-INVITE from the far end).
- **Requests we receive outside a dialog**: REGISTER from agents' phones (a registrar with digest
  authentication against the agents' credentials: 401 with a fresh nonce, then ``verify``); OPTIONS (200,
  keep-alives); INVITE (403: the gateway places calls, it takes none); anything else 405. In-dialog requests
  for unknown dialogs get 481 from sippy. Each is counted by the asyncio side (``post("request", ...)``).
- **Malformed SIP**: sippy's transaction layer drops it (``dump_exception``); we count it instead of printing
  a traceback (``post("malformed", source)``).
"""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from collections.abc import Callable
from typing import Any

import sippy.SipTransactionManager as _stm
from sippy.CCEvents import (
    CCEventConnect,
    CCEventDisconnect,
    CCEventFail,
    CCEventInfo,
    CCEventPreConnect,
    CCEventRing,
    CCEventTry,
    CCEventUpdate,
)
from sippy.Core.EventDispatcher import ED2
from sippy.MsgBody import MsgBody
from sippy.SipCallId import SipCallId
from sippy.SipConf import SipConf
from sippy.SipContact import SipContact
from sippy.SipHeader import SipHeader
from sippy.SipRequest import SipRequest
from sippy.SipTransactionManager import SipTransactionManager
from sippy.SipWWWAuthenticate import SipWWWAuthenticate
from sippy.Time.Timeout import Timeout
from sippy.UA import UA

Post = Callable[..., None]

_post_malformed: Post | None = None


def _counting_dump_exception(msg: str, *args: Any, **kwargs: Any) -> None:
    """Replaces sippy's traceback printer for unparsable messages: counted, one log line at most."""
    if _post_malformed is not None:
        _post_malformed("malformed", msg[:200])


class _Logger:
    """sippy's logger interface; messages go nowhere (the asyncio side logs the events that matter)."""

    def write(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Try(CCEventTry):  # type: ignore[misc]
    """An INVITE whose Request-URI host, From host and outbound proxy are set before it leaves."""

    def __init__(self, data: Any, ruri_host: str, ruri_port: int | None, from_host: str, **kw: Any) -> None:
        super().__init__(data, **kw)
        self._ruri = (ruri_host, ruri_port)
        self._from_host = from_host

    def onUacSetupComplete(self, uac: Any) -> None:
        uac.rTarget.host, uac.rTarget.port = self._ruri
        uac.rUri.getUrl().host = self._ruri[0]
        uac.rUri.getUrl().port = self._ruri[1]
        lurl = uac.lUri.getUrl()
        lurl.host = self._from_host


class _UA(UA):  # type: ignore[misc]
    """sippy's UA, answering a 401/407 after its ACK has left (sippy sends the new INVITE from inside the
    response callback, before the transaction layer ACKs the challenge; strict peers reject that order)."""

    def processChallenge(
        self, resp: Any, cseq: Any, ch_hfname: str, auth_hfname: str, extra_headers: Any
    ) -> bool:
        if self.username is None or self.password is None or self.reqs[cseq].countHFs(auth_hfname) != 0:
            return False
        for challenge in resp.getHFBodys(ch_hfname):
            if self.auth_enalgs is not None and challenge.algorithm not in self.auth_enalgs:
                continue
            supported, qop = challenge.supportedAlgorithm()
            if supported:
                break
        else:
            return False

        def send() -> None:
            if self.state is None or self.state.dead:
                return
            req = self.genRequest("INVITE", self.lSDP, (challenge, qop), extra_headers=extra_headers)
            self.newUacTransaction(req, req_extra_headers=extra_headers)
            self.reqs.pop(cseq, None)

        Timeout(send, 0.001)
        return True


class SipCore:
    def __init__(
        self,
        host: str,
        port: int,
        public_host: str,
        post: Post,
        password_of: Callable[[str], str | None],
        realm: str,
        user_agent: str = "outdial-gateway",
    ) -> None:
        global _post_malformed
        _post_malformed = post
        _stm.dump_exception = _counting_dump_exception  # type: ignore[attr-defined]
        SipConf.my_address = public_host or host
        SipConf.my_port = port
        SipConf.my_uaname = user_agent
        SipConf.allow_formats = (0, 8, 101)
        self.post = post
        self.password_of = password_of
        self.realm = realm
        self.public_host = public_host or host
        self.port = port
        self.config: dict[str, Any] = {
            "_sip_address": host,
            "_sip_port": port,
            "_sip_logger": _Logger(),
        }
        self.uas: dict[str, Any] = {}
        # sippy probes IPv6 with a socket it never closes: its ResourceWarning is sippy's, not a leak of ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            self.config["_sip_tm"] = SipTransactionManager(self.config, self._request)
            gc.collect()

    # --- calls we place ------------------------------------------------------------------------------------

    def place(
        self,
        key: str,
        *,
        user: str,
        host: str,
        port: int | None,
        next_hop: tuple[str, int],
        from_user: str,
        from_host: str,
        sdp: str,
        headers: list[str],
        auth: tuple[str, str] | None = None,
        proxy: tuple[str, int] | None = None,
    ) -> None:
        ua = _UA(
            self.config,
            event_cb=lambda ev, ua: self._event(key, ev),
            username=auth[0] if auth else None,
            password=auth[1] if auth else None,
            nh_address=next_hop,
        )
        if proxy is not None:
            ua.outbound_proxy = proxy
        # A Contact without sippy's default display name ("Anonymous"): peers that build the Request-URI of
        # their in-dialog requests from the Contact's text (SIPp's [next_url]) got "Anonymous <sip:...>".
        contact = SipContact()
        contact.address.name = None
        ua.lContact = contact
        self.uas[key] = ua
        extra = tuple(SipHeader(s) for s in headers) or None
        ev = _Try(
            (SipCallId(), from_user, user, MsgBody(sdp), None, None),
            ruri_host=host,
            ruri_port=port,
            from_host=from_host,
        )
        ev.extra_headers = extra
        ua.recvEvent(ev)

    def _journal(self, key: str, ua: Any) -> None:
        """The BYE that ends this dialog, built now (From/To tags, route set, remote target, a CSeq above any
        the dialog will use): kept on disk by the gateway, so that one restarted after a SIGKILL can still
        hang the call up at the carrier or the phone (:meth:`send_bye`)."""
        try:
            cseq = ua.lCSeq
            ua.lCSeq = cseq + 100_000  # above any CSeq the live dialog will use before it ends
            bye = ua.genRequest("BYE")
            ua.lCSeq = cseq
            (host, port), transport = bye.getTarget()
        except Exception as exc:  # a dialog we cannot describe is not journalled; it ends normally
            self.post("malformed", f"journal: {exc}")
            return
        self.post("dialog", key, str(bye), str(host), int(port), str(transport))

    def send_bye(self, raw: str, host: str, port: int, transport: str) -> None:
        """Send a journalled BYE (a new transaction; its answer is not waited for beyond retransmissions)."""
        try:
            req = SipRequest(raw)
            req.setTarget(((host, port), transport))
            self.config["_sip_tm"].newTransaction(req)
        except Exception as exc:
            self.post("malformed", f"journalled BYE: {exc}")

    def disconnect(self, key: str) -> None:
        ua = self.uas.get(key)
        if ua is None:
            return
        with contextlib.suppress(Exception):
            ua.recvEvent(CCEventDisconnect(origin="local"))

    def answer_update(self, key: str, sdp: str | None) -> None:
        """Answer a re-INVITE from the far end (our SDP, or a refusal when None)."""
        ua = self.uas.get(key)
        if ua is None:
            return
        if sdp is None:
            ua.recvEvent(CCEventFail((488, "Not Acceptable Here")))
        else:
            ua.recvEvent(CCEventConnect((200, "OK", MsgBody(sdp))))

    def forget(self, key: str) -> None:
        self.uas.pop(key, None)

    def _event(self, key: str, ev: Any) -> None:
        data = ev.getData()
        if isinstance(ev, CCEventRing):
            code, _reason, body = data
            self.post("ring", key, int(code), str(body) if body is not None else None)
        elif isinstance(ev, (CCEventConnect, CCEventPreConnect)):
            code, _reason, body = data
            ua = self.uas.get(key)
            _lower_transport(ua)
            self.post("connect", key, int(code), str(body) if body is not None else None)
            if ua is not None and isinstance(ev, CCEventConnect):
                self._journal(key, ua)
        elif isinstance(ev, CCEventFail):
            code, reason = data[0], data[1]
            self.post("fail", key, int(code), str(reason))
            self.uas.pop(key, None)
        elif isinstance(ev, CCEventDisconnect):
            self.post("disc", key, "remote")
            self.uas.pop(key, None)
        elif isinstance(ev, CCEventInfo):
            self.post("info", key, str(data) if data is not None else "")
        elif isinstance(ev, CCEventUpdate):
            body = data[3] if isinstance(data, tuple) and len(data) > 3 else None
            self.post("update", key, str(body) if body is not None else None)

    # --- requests outside a dialog -------------------------------------------------------------------------

    def _request(self, req: Any, sip_t: Any) -> Any:
        method = req.getMethod()
        source = req.getSource()
        src = f"{source[0]}:{source[1]}" if isinstance(source, tuple) else str(source)
        self.post("request", method, src)
        if req.getHFBody("to").getTag() is not None:
            return (req.genResponse(481, "Call/Transaction Does Not Exist"), None, None)
        if method == "REGISTER":
            return (self._register(req, src), None, None)
        if method == "OPTIONS":
            return (req.genResponse(200, "OK"), None, None)
        if method == "INVITE":
            return (req.genResponse(403, "Forbidden"), None, None)
        if method in ("ACK", "CANCEL"):
            return None
        return (req.genResponse(405, "Method Not Allowed"), None, None)

    def _register(self, req: Any, src: str) -> Any:
        user = str(req.getHFBody("to").getUrl().username or "")
        password = self.password_of(user) if user else None
        if req.countHFs("authorization") == 0 or password is None:
            resp = req.genResponse(401, "Unauthorized")
            resp.appendHeader(SipHeader(body=SipWWWAuthenticate(realm=self.realm)))
            if req.countHFs("authorization") and password is None:
                self.post("auth_failed", user, src)
            return resp
        auth = req.getHFBody("authorization")
        if str(auth.username) != user or not auth.verify(password, "REGISTER"):
            self.post("auth_failed", user, src)
            resp = req.genResponse(401, "Unauthorized")
            resp.appendHeader(SipHeader(body=SipWWWAuthenticate(realm=self.realm)))
            return resp
        expires = 3600
        if req.countHFs("expires"):
            with contextlib.suppress(Exception):
                expires = int(str(req.getHFBody("expires")))
        contacts = [str(c.getUrl()) for c in req.getHFBodys("contact") if not c.asterisk]
        for c in req.getHFBodys("contact"):
            if c.asterisk:
                expires = 0
            else:
                with contextlib.suppress(Exception):
                    e = c.getUrl().params.get("expires") if hasattr(c.getUrl(), "params") else None
                    if e is not None:
                        expires = int(e)
        self.post("register", user, contacts[0] if contacts else "", max(0, min(expires, 3600)), src)
        resp = req.genResponse(200, "OK")
        for c in req.getHFBodys("contact"):
            resp.appendHeader(SipHeader(name="contact", body=c.getCopy()))
        if req.countHFs("expires"):
            resp.appendHeader(SipHeader(s=f"Expires: {max(0, min(expires, 3600))}"))
        return resp


def _lower_transport(ua: Any) -> None:
    """sippy compares the ``transport`` URI parameter case-sensitively (``transport=UDP``, as SIPp and many
    phones send it, makes its in-dialog requests fail): normalise the remote target's."""
    target = getattr(ua, "rTarget", None)
    if target is not None and isinstance(getattr(target, "transport", None), str):
        target.transport = target.transport.lower()
    for name in ("rAddr", "rAddr0"):
        addr = getattr(ua, name, None)
        if isinstance(addr, tuple) and len(addr) == 2 and isinstance(addr[1], str):
            setattr(ua, name, (addr[0], addr[1].lower()))


def run(core_factory: Callable[[], SipCore], ready: Callable[[SipCore | BaseException], None]) -> None:
    """The SIP thread's body: build the core, report it, run sippy's loop until ``stop``."""
    try:
        core = core_factory()
    except BaseException as exc:  # reported to the starting side, which raises it
        ready(exc)
        return
    ready(core)
    ED2.loop()


def call(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in the SIP thread."""
    ED2.callFromThread(fn, *args)


def stop() -> None:
    ED2.callFromThread(ED2.breakLoop)


def now_ms() -> int:
    return int(time.time() * 1000)
