"""The web console (issue 14): a Starlette app that signs people in (local users, argon2id) and talks to the
four services over gRPC with a token minted for the signed-in user by the token issuer (issue 12), so every
service checks the person's own role, exactly as for the CLI.

Server-side rules, whatever the browser sends:
- every page and action checks the session's role (:data:`PAGE_ROLES`), and the services check it again;
- every POST carries the session's CSRF token (a form field or the ``X-CSRF-Token`` header); sign-in, before
  any session, uses a double-submit cookie;
- cookies are HttpOnly, SameSite=Strict and Secure (unless ``OUTDIAL_CONSOLE_SECURE_COOKIES=false``);
- a Content-Security-Policy allows only this origin's scripts and styles: the JavaScript is our own
  (``static/console.js``) and htmx, vendored through package-lock.json and served from here, never a CDN;
- live views are server-sent events fed by the services' streams (WatchPacing), never polling.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from outdial.agent.client import AgentSession
from outdial.console import accounts, compliance
from outdial.console.accounts import Session
from outdial.console.desk import Desk
from outdial.console.feeds import Feed, Feeds
from outdial.console.settings import ConsoleSettings
from outdial.core.auth import issue_token
from outdial.core.clients import open_channel
from outdial.core.config import SERVICES, ServiceName, Settings
from outdial.core.csvsafe import csv_safe
from outdial.core.errors import OutdialError
from outdial.core.jurisdictions import JURISDICTION_PB
from outdial.core.signing import SigningKey
from outdial.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    campaign_pb2,
    campaign_pb2_grpc,
    common_pb2,
    dnc_pb2,
    dnc_pb2_grpc,
    pacing_pb2,
    pacing_pb2_grpc,
)

log = logging.getLogger("outdial.console")

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "od_session"
LOGIN_COOKIE = "od_login"
CHUNK = 1 << 20

#: Who may open which page (and do its actions). The services check the token's role again.
PAGE_ROLES: dict[str, frozenset[str]] = {
    "campaigns": frozenset({"admin", "manager", "compliance"}),
    "campaign_write": frozenset({"admin", "manager"}),
    "compliance": frozenset({"admin", "compliance"}),
    "users": frozenset({"admin"}),
    "agent": frozenset({"agent"}),
    "supervisor": frozenset({"admin", "manager", "compliance"}),
}
HOME = {"admin": "/campaigns", "manager": "/campaigns", "compliance": "/compliance", "agent": "/agent"}

MODES = {
    "predictive": common_pb2.DIAL_MODE_PREDICTIVE,
    "progressive": common_pb2.DIAL_MODE_PROGRESSIVE,
    "power": common_pb2.DIAL_MODE_POWER,
    "preview": common_pb2.DIAL_MODE_PREVIEW,
    "agentless": common_pb2.DIAL_MODE_AGENTLESS,
}
JURISDICTIONS = JURISDICTION_PB  # from the rules table (core/jurisdictions.py)
ACTIONS = ("start", "pause", "resume", "complete")
_STATUS = re.compile(r"^(?P<id>[a-z_]+)(?: \[(?P<field>[^\]]+)\])?: (?P<msg>.*)$", re.S)
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def vendor_dir(csettings: ConsoleSettings) -> Path:
    """npm's node_modules holding htmx: the setting, else the checkout's."""
    if csettings.vendor_dir is not None:
        return csettings.vendor_dir
    for parent in HERE.parents:
        if (parent / "node_modules").is_dir():
            return parent / "node_modules"
    return Path("node_modules")


def rpc_problem(exc: grpc.aio.AioRpcError) -> tuple[str | None, str]:
    """(field, message) of a service's refusal: "invalid_argument [caller_id]: …" names the field."""
    text = exc.details() or exc.code().name
    m = _STATUS.match(text)
    if m is None:
        return None, text
    field = m.group("field")
    return (field.split(".")[-1] if field else None), m.group("msg")


class Backend:
    """Channels to the services (one per service, shared) and the signed-in users' tokens."""

    def __init__(self, settings: Settings, csettings: ConsoleSettings, key: SigningKey) -> None:
        self.settings = settings
        self.csettings = csettings
        self.key = key
        self.channels: dict[ServiceName, grpc.aio.Channel] = {
            s: open_channel(settings, settings.addr(s), lambda: None) for s in SERVICES
        }
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def token(self, session: Session) -> str:
        key = (session.username, session.role)
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        ttl = int(self.csettings.token_minutes * 60)
        token = issue_token(self.key, session.username, session.role, ttl)
        self._tokens[key] = (token, now + ttl / 2)
        return token

    def meta(self, session: Session) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(session)}"),)

    def campaign(self) -> campaign_pb2_grpc.CampaignServiceStub:
        return campaign_pb2_grpc.CampaignServiceStub(self.channels["campaign"])

    def pacing(self) -> pacing_pb2_grpc.PacingServiceStub:
        return pacing_pb2_grpc.PacingServiceStub(self.channels["pacing"])

    def agent(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channels["agent"])

    def dnc(self) -> dnc_pb2_grpc.DncServiceStub:
        return dnc_pb2_grpc.DncServiceStub(self.channels["dnc"])

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


def _fmt_ts(value: Any) -> str:
    if not value:
        return ""
    return str(value).replace("T", " ").replace("Z", " UTC")


def _pct(value: float) -> str:
    return f"{value * 100:.2f} %"


def build_app(  # noqa: C901 - every route is a closure over this app's pool, backend and templates
    settings: Settings, csettings: ConsoleSettings, pool: asyncpg.Pool, key: SigningKey
) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["ts"] = _fmt_ts
    templates.env.filters["pct"] = _pct
    backend = Backend(settings, csettings, key)
    vendor = vendor_dir(csettings)
    htmx_js = vendor / "htmx.org" / "dist" / "htmx.min.js"
    if not htmx_js.is_file():
        raise RuntimeError(
            f"htmx is not installed at {htmx_js}: run `npm ci` (or set OUTDIAL_CONSOLE_VENDOR_DIR to node_modules)"
        )

    def cookie(resp: Response, name: str, value: str, max_age: int | None) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=csettings.secure_cookies,
            path="/",
        )

    async def session_of(request: Request) -> Session | None:
        return await accounts.get_session(pool, request.cookies.get(SESSION_COOKIE, ""))

    def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def forbidden(request: Request, session: Session, what: str) -> HTMLResponse:
        return render(
            request,
            "error.html",
            {
                "session": session,
                "title": "Not allowed",
                "message": f"Your role ({session.role}) may not {what}.",
            },
            403,
        )

    def unavailable(
        request: Request, session: Session, service: str, exc: grpc.aio.AioRpcError
    ) -> HTMLResponse:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            msg = f"The {service} service does not answer right now ({code.name}); the rest of the console works."
            status = 503
        else:
            msg = f"The {service} service refused: {rpc_problem(exc)[1]}"
            status = 403 if code == grpc.StatusCode.PERMISSION_DENIED else 400
        return render(
            request, "error.html", {"session": session, "title": "Service problem", "message": msg}, status
        )

    Handler = Callable[[Request, Session], Awaitable[Response]]

    def page(
        role_key: str | None, what: str
    ) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        """A page or action for a signed-in user whose role may do ``what``; POSTs must carry the CSRF token."""

        def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                session = await session_of(request)
                if session is None:
                    if request.headers.get("accept", "").startswith("text/event-stream"):
                        return PlainTextResponse("signed out", status_code=401)
                    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
                if role_key is not None and session.role not in PAGE_ROLES[role_key]:
                    return forbidden(request, session, what)
                if request.method == "POST":
                    sent = request.headers.get("x-csrf-token", "")
                    if not sent:
                        form = await request.form(max_part_size=64 * 1024)
                        sent = str(form.get("csrf", ""))
                    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                        return render(
                            request,
                            "error.html",
                            {
                                "session": session,
                                "title": "Form expired",
                                "message": "This form's security token is missing or stale: reload the page.",
                            },
                            403,
                        )
                return await fn(request, session)

            return endpoint

        return wrap

    # ---- sign-in ------------------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        nonce = secrets.token_urlsafe(24)
        resp = render(
            request,
            "login.html",
            {"session": None, "nonce": nonce, "next": request.query_params.get("next", ""), "error": ""},
        )
        cookie(resp, LOGIN_COOKIE, nonce, 600)
        return resp

    async def login_post(request: Request) -> Response:
        form = await request.form(max_part_size=64 * 1024)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        sent = str(form.get("nonce", ""))
        nxt = str(form.get("next", ""))
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = ""
        fresh = secrets.token_urlsafe(24)

        def again(error: str, status: int) -> Response:
            resp = render(
                request, "login.html", {"session": None, "nonce": fresh, "next": nxt, "error": error}, status
            )
            cookie(resp, LOGIN_COOKIE, fresh, 600)
            return resp

        if not nonce or not hmac.compare_digest(nonce.encode(), sent.encode()):
            return again("The sign-in form expired: please try again.", 403)
        ip = request.client.host if request.client else ""
        user = await accounts.authenticate(
            pool, str(form.get("username", "")), str(form.get("password", "")), ip=ip
        )
        if user is None:
            return again("Wrong user name or password, or the account is disabled.", 401)
        secret, session = await accounts.open_session(
            pool,
            user,
            timedelta(hours=csettings.session_hours),
            ip=ip,
            user_agent=request.headers.get("user-agent", ""),
        )
        resp = RedirectResponse(nxt or HOME[session.role], status_code=303)
        cookie(resp, SESSION_COOKIE, secret, int(csettings.session_hours * 3600))
        resp.delete_cookie(LOGIN_COOKIE, path="/")
        return resp

    @page(None, "sign out")
    async def logout(request: Request, session: Session) -> Response:
        await accounts.revoke_session(pool, request.cookies.get(SESSION_COOKIE, ""))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @page(None, "open the console")
    async def home(request: Request, session: Session) -> Response:
        return RedirectResponse(HOME[session.role], status_code=303)

    # ---- campaigns ----------------------------------------------------------------------------------------
    @page("campaigns", "see campaigns")
    async def campaigns(request: Request, session: Session) -> Response:
        try:
            resp = await backend.campaign().ListCampaigns(
                campaign_pb2.ListCampaignsRequest(), metadata=backend.meta(session), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return unavailable(request, session, "campaign", exc)
        rows = [
            {
                "id": c.id,
                "name": c.name,
                "state": common_pb2.CampaignState.Name(c.state).removeprefix("CAMPAIGN_STATE_").lower(),
                "mode": common_pb2.DialMode.Name(c.dial_mode).removeprefix("DIAL_MODE_").lower(),
                "jurisdiction": common_pb2.Jurisdiction.Name(c.jurisdiction).removeprefix("JURISDICTION_"),
            }
            for c in resp.campaigns
        ]
        can_write = session.role in PAGE_ROLES["campaign_write"]
        return render(
            request, "campaigns.html", {"session": session, "campaigns": rows, "can_write": can_write}
        )

    def _form_values(form: Any) -> dict[str, str]:
        keys = (
            "name",
            "description",
            "mode",
            "jurisdiction",
            "region",
            "caller_id",
            "seller_name",
            "opt_out_number",
            "window_start",
            "window_end",
            "days",
            "ring_timeout",
            "max_attempts",
            "retries",
        )
        return {k: str(form.get(k, "")).strip() for k in keys}

    def _campaign_from_form(v: dict[str, str]) -> tuple[campaign_pb2.Campaign, list[str], dict[str, str]]:
        """The campaign the form describes, the fields it sets, and the form's own errors (by field)."""
        c = campaign_pb2.Campaign()
        paths: list[str] = []
        errors: dict[str, str] = {}
        c.name = v["name"]
        c.description = v["description"]
        paths += ["name", "description"]
        if v["mode"] not in MODES:
            errors["mode"] = f"one of {', '.join(MODES)}"
        else:
            c.dial_mode = MODES[v["mode"]]
            paths.append("dial_mode")
        if v["jurisdiction"] not in JURISDICTIONS:
            errors["jurisdiction"] = f"one of {', '.join(JURISDICTIONS)}"
        else:
            c.jurisdiction = JURISDICTIONS[v["jurisdiction"]]
            paths.append("jurisdiction")
        for field in ("caller_id", "seller_name", "opt_out_number"):
            setattr(c, field, v[field])
            paths.append(field)
        if v["region"]:
            c.default_region = v["region"].upper()
            paths.append("default_region")
        if v["window_start"] or v["window_end"]:
            c.calling_window.start_local = v["window_start"]
            c.calling_window.end_local = v["window_end"]
            if v["days"]:
                try:
                    c.calling_window.days_of_week.extend(int(d) for d in v["days"].split(",") if d.strip())
                except ValueError:
                    errors["days"] = "ISO weekdays separated by commas (1 = Monday … 7 = Sunday)"
            paths.append("calling_window")
        for field, target in (("ring_timeout", "ring_timeout"), ("max_attempts", "max_attempts_per_lead")):
            if v[field]:
                try:
                    number = int(v[field])
                except ValueError:
                    errors[field] = "a whole number"
                    continue
                if target == "ring_timeout":
                    c.ring_timeout.FromSeconds(number)
                else:
                    c.max_attempts_per_lead = number
                paths.append(target)
        if v["retries"]:
            for spec in v["retries"].split(","):
                outcome, _, rest = spec.strip().partition("=")
                delay, _, mx = rest.partition(":")
                name = f"CALL_OUTCOME_{outcome.strip().upper()}"
                try:
                    r = c.retry_rules.add(
                        outcome=common_pb2.CallOutcome.Value(name), max_attempts=int(mx or 0)
                    )
                    r.delay.FromSeconds(int(delay or 0))
                except ValueError:
                    errors["retries"] = (
                        f"{spec.strip()!r}: outcome=seconds:max, e.g. busy=600:3,no_answer=3600:2"
                    )
                    break
            paths.append("retry_rules")
        return c, paths, errors

    def _values_of(c: campaign_pb2.Campaign) -> dict[str, str]:
        return {
            "name": c.name,
            "description": c.description,
            "mode": common_pb2.DialMode.Name(c.dial_mode).removeprefix("DIAL_MODE_").lower(),
            "jurisdiction": common_pb2.Jurisdiction.Name(c.jurisdiction).removeprefix("JURISDICTION_"),
            "region": c.default_region,
            "caller_id": c.caller_id,
            "seller_name": c.seller_name,
            "opt_out_number": c.opt_out_number,
            "window_start": c.calling_window.start_local,
            "window_end": c.calling_window.end_local,
            "days": ",".join(str(d) for d in c.calling_window.days_of_week),
            "ring_timeout": str(c.ring_timeout.seconds or ""),
            "max_attempts": str(c.max_attempts_per_lead or ""),
            "retries": ",".join(
                f"{common_pb2.CallOutcome.Name(r.outcome).removeprefix('CALL_OUTCOME_').lower()}"
                f"={r.delay.seconds}:{r.max_attempts}"
                for r in c.retry_rules
            ),
        }

    def _form_page(
        request: Request,
        session: Session,
        v: dict[str, str],
        errors: dict[str, str],
        cid: str,
        status: int = 200,
    ) -> Response:
        return render(
            request,
            "campaign_form.html",
            {
                "session": session,
                "v": v,
                "errors": errors,
                "cid": cid,
                "modes": list(MODES),
                "jurisdictions": list(JURISDICTIONS),
            },
            status,
        )

    @page("campaign_write", "create campaigns")
    async def campaign_new(request: Request, session: Session) -> Response:
        if request.method == "GET":
            v = {k: "" for k in _form_values({})}
            # No window pre-filled: the campaign service applies the jurisdiction's legal window by default.
            first = next(iter(JURISDICTIONS))
            v.update(mode="predictive", jurisdiction=first, region=first)
            return _form_page(request, session, v, {}, "")
        v = _form_values(await request.form(max_part_size=64 * 1024))
        c, _, errors = _campaign_from_form(v)
        if errors:
            return _form_page(request, session, v, errors, "", 400)
        try:
            resp = await backend.campaign().CreateCampaign(
                campaign_pb2.CreateCampaignRequest(campaign=c), metadata=backend.meta(session), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return unavailable(request, session, "campaign", exc)
            field, msg = rpc_problem(exc)
            return _form_page(request, session, v, {field or "_form": msg}, "", 400)
        return RedirectResponse(f"/campaigns/{resp.campaign.id}", status_code=303)

    @page("campaign_write", "edit campaigns")
    async def campaign_edit(request: Request, session: Session) -> Response:
        cid = request.path_params["cid"]
        if request.method == "GET":
            try:
                got = await backend.campaign().GetCampaign(
                    campaign_pb2.GetCampaignRequest(campaign_id=cid),
                    metadata=backend.meta(session),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as exc:
                return unavailable(request, session, "campaign", exc)
            return _form_page(request, session, _values_of(got.campaign), {}, cid)
        v = _form_values(await request.form(max_part_size=64 * 1024))
        c, paths, errors = _campaign_from_form(v)
        if errors:
            return _form_page(request, session, v, errors, cid, 400)
        c.id = cid
        try:
            await backend.campaign().UpdateCampaign(
                campaign_pb2.UpdateCampaignRequest(campaign=c, update_mask=FieldMask(paths=paths)),
                metadata=backend.meta(session),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return unavailable(request, session, "campaign", exc)
            field, msg = rpc_problem(exc)
            return _form_page(request, session, v, {field or "_form": msg}, cid, 400)
        return RedirectResponse(f"/campaigns/{cid}", status_code=303)

    async def _stats(session: Session, cid: str) -> dict[str, Any] | None:
        try:
            s = await backend.campaign().GetCampaignStats(
                campaign_pb2.GetCampaignStatsRequest(campaign_id=cid),
                metadata=backend.meta(session),
                timeout=5,
            )
        except grpc.aio.AioRpcError:
            return None
        return MessageToDict(s, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)

    @page("campaigns", "see campaigns")
    async def campaign_detail(request: Request, session: Session) -> Response:
        cid = request.path_params["cid"]
        try:
            got = await backend.campaign().GetCampaign(
                campaign_pb2.GetCampaignRequest(campaign_id=cid), metadata=backend.meta(session), timeout=5
            )
            lists = await backend.campaign().ListLeadLists(
                campaign_pb2.ListLeadListsRequest(campaign_id=cid), metadata=backend.meta(session), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return unavailable(request, session, "campaign", exc)
        c = got.campaign
        ctx = {
            "session": session,
            "c": _values_of(c),
            "cid": c.id,
            "state": common_pb2.CampaignState.Name(c.state).removeprefix("CAMPAIGN_STATE_").lower(),
            "stats": await _stats(session, cid),
            "lists": [
                MessageToDict(x, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                for x in lists.lists
            ],
            "can_write": session.role in PAGE_ROLES["campaign_write"],
            "actions": ACTIONS,
            "notice": request.query_params.get("notice", ""),
        }
        return render(request, "campaign.html", ctx)

    @page("campaign_write", "start, pause, resume or complete campaigns")
    async def campaign_action(request: Request, session: Session) -> Response:
        cid = request.path_params["cid"]
        action = request.path_params["action"]
        if action not in ACTIONS:
            return PlainTextResponse(f"unknown action {action!r}", status_code=404)
        rpc = {
            "start": (backend.campaign().StartCampaign, campaign_pb2.StartCampaignRequest),
            "pause": (backend.campaign().PauseCampaign, campaign_pb2.PauseCampaignRequest),
            "resume": (backend.campaign().ResumeCampaign, campaign_pb2.ResumeCampaignRequest),
            "complete": (backend.campaign().CompleteCampaign, campaign_pb2.CompleteCampaignRequest),
        }[action]
        try:
            await rpc[0](rpc[1](campaign_id=cid), metadata=backend.meta(session), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return unavailable(request, session, "campaign", exc)
            field, msg = rpc_problem(exc)
            where = f" ({field})" if field else ""
            return RedirectResponse(
                f"/campaigns/{cid}?notice=" + _q(f"{action} refused{where}: {msg}"), status_code=303
            )
        return RedirectResponse(f"/campaigns/{cid}?notice=" + _q(f"{action}: done"), status_code=303)

    @page("campaign_write", "upload leads")
    async def campaign_upload(request: Request, session: Session) -> Response:
        cid = request.path_params["cid"]
        form = await request.form(max_files=1, max_part_size=64 * 1024)
        try:
            return await _upload(request, session, cid, form)
        finally:
            await form.close()  # the spooled file, on disk beyond 1 MiB

    async def _upload(request: Request, session: Session, cid: str, form: Any) -> Response:
        upload = form.get("file")
        wants_json = "application/json" in request.headers.get("accept", "")
        if not isinstance(upload, UploadFile) or not upload.filename:
            return _upload_error(request, session, cid, "file: choose a CSV file to upload", wants_json)
        name = upload.filename
        if not name.lower().endswith((".csv", ".txt")) or (
            upload.content_type
            not in ("text/csv", "text/plain", "application/vnd.ms-excel", "application/octet-stream", "")
        ):
            return _upload_error(
                request, session, cid, f"file: {name} is not a CSV file (.csv, text/csv)", wants_json
            )
        if upload.size is not None and upload.size > csettings.upload_max_bytes:
            return _upload_error(
                request,
                session,
                cid,
                f"file: {upload.size} bytes is more than the {csettings.upload_max_bytes} allowed",
                wants_json,
            )
        header = campaign_pb2.UploadLeadsHeader(
            campaign_id=cid, file_name=name, request_id=str(form.get("request_id", ""))[:128]
        )

        async def chunks() -> AsyncIterator[campaign_pb2.UploadLeadsRequest]:
            yield campaign_pb2.UploadLeadsRequest(header=header)
            while data := await upload.read(CHUNK):
                yield campaign_pb2.UploadLeadsRequest(chunk=data)

        try:
            resp = await backend.campaign().UploadLeads(
                chunks(), metadata=backend.meta(session), timeout=3600
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return unavailable(request, session, "campaign", exc)
            field, msg = rpc_problem(exc)
            return _upload_error(request, session, cid, f"{field or 'file'}: {msg}", wants_json)
        summary = {
            "list_id": resp.list_id,
            "rows": resp.rows,
            "accepted": resp.accepted,
            "numbers_accepted": resp.numbers_accepted,
            "duplicates": resp.duplicates,
            "rejected": resp.rejected,
            "rejected_by_reason": dict(sorted(resp.rejected_by_reason.items())),
            "committed": resp.committed,
        }
        if wants_json:
            return JSONResponse(summary)
        return render(request, "upload_result.html", {"session": session, "cid": cid, "s": summary})

    def _upload_error(
        request: Request, session: Session, cid: str, message: str, wants_json: bool
    ) -> Response:
        if wants_json:
            return JSONResponse({"error": message}, status_code=400)
        return render(
            request,
            "error.html",
            {"session": session, "title": "Upload refused", "message": message, "back": f"/campaigns/{cid}"},
            400,
        )

    @page("campaigns", "download rejected rows")
    async def rejects_csv(request: Request, session: Session) -> Response:
        list_id = request.path_params["lid"]
        try:
            stream = backend.campaign().ListLeadRejects(
                campaign_pb2.ListLeadRejectsRequest(list_id=list_id),
                metadata=backend.meta(session),
                timeout=300,
            )
            rows = [r async for r in stream]
        except grpc.aio.AioRpcError as exc:
            return unavailable(request, session, "campaign", exc)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["row", "field", "value", "reason", "detail"])
        for r in rows:
            for rej in r.rejects:
                w.writerow(
                    [
                        rej.row_number,
                        *(csv_safe(x) for x in (rej.field, rej.raw_value, rej.reason, rej.detail)),
                    ]
                )
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="rejects-{list_id}.csv"'},
        )

    def _pacing_view(state: pacing_pb2.PacingState) -> dict[str, Any]:
        d = MessageToDict(state, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        d["effective_mode"] = state.effective_mode or state.mode
        return d

    async def _campaign_source(feed: Feed[str]) -> AsyncIterator[str]:
        """The campaign's pacing state and figures, as long as the feed has subscribers; the upstream
        stream runs with a current subscriber's token, re-chosen at every reconnection."""
        cid = feed.key
        fragment = templates.get_template("_live.html")
        backoff = 0.5
        while feed.subscribers:
            viewer = feed.subscribers[-1]
            assert isinstance(viewer, Session)
            try:
                stream = backend.pacing().WatchPacing(
                    pacing_pb2.WatchPacingRequest(campaign_id=cid), metadata=backend.meta(viewer)
                )
                async for msg in stream:
                    backoff = 0.5
                    yield fragment.render(
                        pacing=_pacing_view(msg.state), stats=await _stats(viewer, cid), down=""
                    )
            except grpc.aio.AioRpcError as exc:
                down = (
                    rpc_problem(exc)[1]
                    if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                    else "pacing service unavailable: reconnecting"
                )
                yield fragment.render(pacing=None, stats=await _stats(viewer, cid), down=down)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    campaign_feeds: Feeds[str] = Feeds(_campaign_source)

    @page("campaigns", "watch campaigns")
    async def campaign_live(request: Request, session: Session) -> Response:
        """Server-sent events: the campaign's live figures, from one WatchPacing stream per campaign shared by
        every viewer in this process (feeds.py). The viewer's own right to watch is checked first, by the
        pacing service, with the viewer's own token."""
        cid = request.path_params["cid"]
        if not _ID.match(cid):
            return PlainTextResponse("no such campaign", status_code=404)
        try:
            await backend.pacing().GetPacingState(
                pacing_pb2.GetPacingStateRequest(campaign_id=cid), metadata=backend.meta(session), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                return PlainTextResponse(rpc_problem(exc)[1], status_code=403)
        feed = campaign_feeds.get(cid)
        queue = feed.subscribe(session)

        async def events() -> AsyncIterator[str]:
            try:
                while not await request.is_disconnected():
                    try:
                        html = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield _sse("live", html)
            finally:
                feed.unsubscribe(queue)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    # ---- compliance ---------------------------------------------------------------------------------------
    async def _dnc_lists(session: Session) -> tuple[list[dict[str, Any]], str]:
        try:
            got = await backend.dnc().ListLists(
                dnc_pb2.ListListsRequest(), metadata=backend.meta(session), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return [], f"the dnc service does not answer ({exc.code().name})"
        today = datetime.now(UTC).date()
        rows = []
        for lst in got.lists:
            status, why = compliance.freshness(lst, today)
            rows.append(
                {
                    "name": lst.name,
                    "kind": dnc_pb2.ListKind.Name(lst.kind).removeprefix("LIST_KIND_").lower(),
                    "jurisdiction": common_pb2.Jurisdiction.Name(lst.jurisdiction).removeprefix(
                        "JURISDICTION_"
                    ),
                    "state": lst.state,
                    "entries": lst.entries,
                    "registry_date": lst.registry_date.ToDatetime(tzinfo=UTC).date().isoformat()
                    if lst.HasField("registry_date")
                    else "",
                    "freshness": status,
                    "freshness_why": why,
                }
            )
        return rows, ""

    async def _compliance_page(
        request: Request,
        session: Session,
        *,
        notice: str = "",
        errors: dict[str, str] | None = None,
        verify: dict[str, Any] | None = None,
        status: int = 200,
    ) -> Response:
        number = request.query_params.get("number", "").strip()
        at = request.query_params.get("at", "").strip()
        result: dict[str, Any] | None = None
        errors = dict(errors or {})
        if number:
            req = dnc_pb2.ExplainDecisionRequest(number=number)
            if at:
                try:
                    req.at.FromDatetime(compliance._when(at).astimezone(UTC))
                except ValueError:
                    errors["at"] = "a date and time such as 2026-12-01T09:30+00:00"
            if "at" not in errors:
                try:
                    got = await backend.dnc().ExplainDecision(req, metadata=backend.meta(session), timeout=5)
                    result = MessageToDict(got, preserving_proto_field_name=True)
                except grpc.aio.AioRpcError as exc:
                    field, msg = rpc_problem(exc)
                    errors["number"] = f"{field or 'number'}: {msg}"
        lists, lists_down = await _dnc_lists(session)
        return render(
            request,
            "compliance.html",
            {
                "session": session,
                "number": number,
                "at": at,
                "result": json.dumps(result, indent=2) if result else "",
                "explanation": (result or {}).get("explanation", ""),
                "errors": errors,
                "lists": lists,
                "lists_down": lists_down,
                "notice": notice,
                "verify": verify,
            },
            status,
        )

    @page("compliance", "use the compliance pages")
    async def compliance_home(request: Request, session: Session) -> Response:
        return await _compliance_page(request, session)

    @page("compliance", "change do-not-call lists")
    async def compliance_dnc(request: Request, session: Session) -> Response:
        form = await request.form(max_part_size=64 * 1024)
        op = str(form.get("op", ""))
        numbers = [n for n in re.split(r"[\s,;]+", str(form.get("numbers", ""))) if n]
        reason = str(form.get("reason", "")).strip()
        errors: dict[str, str] = {}
        if op not in ("add", "remove"):
            errors["op"] = "add or remove"
        if not numbers:
            errors["numbers"] = "one or more numbers, separated by spaces, commas or lines"
        if not reason:
            errors["reason"] = "a reason is required (it goes into the audit log)"
        if errors:
            return await _compliance_page(request, session, errors=errors, status=400)
        try:
            if op == "add":
                got = await backend.dnc().AddNumbers(
                    dnc_pb2.AddNumbersRequest(
                        numbers=numbers, list_kind=dnc_pb2.LIST_KIND_INTERNAL, reason=reason, source="console"
                    ),
                    metadata=backend.meta(session),
                    timeout=10,
                )
            else:
                got = await backend.dnc().RemoveNumbers(
                    dnc_pb2.RemoveNumbersRequest(
                        numbers=numbers, list_kind=dnc_pb2.LIST_KIND_INTERNAL, reason=reason
                    ),
                    metadata=backend.meta(session),
                    timeout=10,
                )
        except grpc.aio.AioRpcError as exc:
            field, msg = rpc_problem(exc)
            return await _compliance_page(request, session, errors={field or "numbers": msg}, status=400)
        counts = MessageToDict(
            got, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        summary = ", ".join(
            f"{k} {v}" for k, v in counts.items() if isinstance(v, (int, str)) and k != "list_id"
        )
        verb = "added to" if op == "add" else "removed from"
        return await _compliance_page(
            request, session, notice=f"{len(numbers)} number(s) {verb} the internal list ({summary})"
        )

    @page("compliance", "verify the audit chain")
    async def compliance_verify(request: Request, session: Session) -> Response:
        try:
            got = await backend.dnc().VerifyAudit(
                dnc_pb2.VerifyAuditRequest(), metadata=backend.meta(session), timeout=300
            )
        except grpc.aio.AioRpcError as exc:
            return unavailable(request, session, "dnc", exc)
        verify = MessageToDict(
            got, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return await _compliance_page(request, session, verify=verify)

    @page("compliance", "read the audit log")
    async def compliance_audit(request: Request, session: Session) -> Response:
        flt = compliance.parse_audit_filter(request.query_params)
        records: list[dict[str, Any]] = []
        next_page = ""
        down = ""
        if not flt.errors:
            try:
                stream = backend.dnc().QueryAudit(flt.request, metadata=backend.meta(session), timeout=30)
                async for resp in stream:
                    records.extend(
                        MessageToDict(
                            r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                        )
                        for r in resp.records
                    )
                    next_page = resp.next_page_token or next_page
            except grpc.aio.AioRpcError as exc:
                field, msg = rpc_problem(exc)
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    down = f"the dnc service does not answer ({exc.code().name})"
                else:
                    flt.errors[field or "_form"] = msg
        query = {k: v for k, v in flt.values.items() if v and k != "page"}
        return render(
            request,
            "audit.html",
            {
                "session": session,
                "v": flt.values,
                "errors": flt.errors,
                "records": records,
                "next_page": next_page,
                "query": query,
                "down": down,
            },
            400 if flt.errors else 200,
        )

    @page("compliance", "export the audit log")
    async def compliance_audit_csv(request: Request, session: Session) -> Response:
        flt = compliance.parse_audit_filter(request.query_params, page_size=1000)
        if flt.errors:
            return PlainTextResponse("; ".join(f"{k}: {v}" for k, v in flt.errors.items()), status_code=400)
        req = flt.request
        meta = backend.meta(session)

        async def rows() -> AsyncIterator[str]:
            yield ",".join(compliance.AUDIT_COLUMNS) + "\n"
            token = ""
            while True:
                req.page_token = token
                token = ""
                async for resp in backend.dnc().QueryAudit(req, metadata=meta, timeout=300):
                    yield compliance.audit_csv_rows(resp.records)
                    token = resp.next_page_token or token
                if not token:
                    return

        return StreamingResponse(
            rows(),
            media_type="text/csv",
            headers={
                "content-disposition": 'attachment; filename="dnc-audit.csv"',
                "cache-control": "no-store",
            },
        )

    # ---- users --------------------------------------------------------------------------------------------
    @page("users", "manage users")
    async def users(request: Request, session: Session) -> Response:
        errors: dict[str, str] = {}
        created = ""
        v = {"username": "", "role": "agent", "display_name": ""}
        status = 200
        if request.method == "POST":
            form = await request.form(max_part_size=64 * 1024)
            v = {k: str(form.get(k, "")).strip() for k in v}
            password = str(form.get("password", ""))
            try:
                if form.get("disable"):
                    await accounts.disable_user(pool, str(form.get("disable")), actor=session.username)
                else:
                    user = await accounts.add_user(
                        pool,
                        v["username"],
                        v["role"],
                        password,
                        actor=session.username,
                        display_name=v["display_name"],
                    )
                    created = user.username
                    v = {"username": "", "role": "agent", "display_name": ""}
            except OutdialError as exc:
                errors[str(exc.details.get("field") or "_form")] = exc.message
                status = 400
        return render(
            request,
            "users.html",
            {
                "session": session,
                "users": await accounts.list_users(pool),
                "errors": errors,
                "v": v,
                "roles": accounts.ROLES,
                "created": created,
            },
            status,
        )

    # ---- supervisor ---------------------------------------------------------------------------------------
    def _agents_view(
        resp: agent_pb2.ListAgentsResponse | agent_pb2.WatchAgentsResponse,
    ) -> list[dict[str, Any]]:
        return [
            {
                "agent_id": a.agent_id,
                "state": common_pb2.AgentState.Name(a.state).removeprefix("AGENT_STATE_").lower(),
                "since": a.since.ToDatetime(tzinfo=UTC).isoformat() if a.HasField("since") else "",
                "campaigns": [c.campaign_id for c in a.campaigns],
                "pause_reason": a.pause_reason,
                "call_id": a.call_id,
            }
            for a in resp.agents
        ]

    @page("supervisor", "see the agents' wallboard")
    async def wallboard(request: Request, session: Session) -> Response:
        cid = request.query_params.get("campaign", "").strip()
        if cid and not _ID.match(cid):
            cid = ""
        agents: list[dict[str, Any]] = []
        down = ""
        try:
            resp = await backend.agent().ListAgents(
                agent_pb2.ListAgentsRequest(campaign_id=cid), metadata=backend.meta(session), timeout=5
            )
            agents = _agents_view(resp)
        except grpc.aio.AioRpcError as exc:
            down = f"the agent service does not answer ({exc.code().name})"
        return render(
            request,
            "wallboard.html",
            {
                "session": session,
                "agents": agents,
                "campaign": cid,
                "down": down,
                "notice": request.query_params.get("notice", ""),
                "can_act": session.role in PAGE_ROLES["campaign_write"],
            },
        )

    @page("supervisor", "watch the agents")
    async def wallboard_live(request: Request, session: Session) -> Response:
        cid = request.query_params.get("campaign", "").strip()
        if cid and not _ID.match(cid):
            cid = ""
        fragment = templates.get_template("_wallboard.html")
        can_act = session.role in PAGE_ROLES["campaign_write"]

        async def events() -> AsyncIterator[str]:
            backoff = 0.5
            while not await request.is_disconnected():
                try:
                    stream = backend.agent().WatchAgents(
                        agent_pb2.WatchAgentsRequest(campaign_id=cid), metadata=backend.meta(session)
                    )
                    async for resp in stream:
                        backoff = 0.5
                        yield _sse(
                            "live",
                            fragment.render(
                                agents=_agents_view(resp),
                                session=session,
                                campaign=cid,
                                can_act=can_act,
                                down="",
                            ),
                        )
                        if await request.is_disconnected():
                            stream.cancel()
                            return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                        return
                    yield _sse(
                        "live",
                        fragment.render(
                            agents=[],
                            session=session,
                            campaign=cid,
                            can_act=can_act,
                            down="agent service unavailable: reconnecting",
                        ),
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    @page("campaign_write", "pause or log out agents")
    async def wallboard_action(request: Request, session: Session) -> Response:
        form = await request.form(max_part_size=64 * 1024)
        agent_id = str(form.get("agent_id", "")).strip()
        action = str(form.get("action", ""))
        reason = str(form.get("reason", "")).strip()
        back = "/supervisor"
        if not _ID.match(agent_id) or action not in ("pause", "logout"):
            return RedirectResponse(
                back + "?notice=" + _q("choose an agent and pause or log out"), status_code=303
            )
        if not reason:
            return RedirectResponse(
                back + "?notice=" + _q(f"reason: say why {agent_id} is paused or logged out"), status_code=303
            )
        try:
            if action == "pause":
                await backend.agent().SetState(
                    agent_pb2.SetStateRequest(
                        agent_id=agent_id, state=common_pb2.AGENT_STATE_PAUSED, pause_reason=reason
                    ),
                    metadata=backend.meta(session),
                    timeout=5,
                )
            else:
                await backend.agent().Logout(
                    agent_pb2.LogoutRequest(agent_id=agent_id, reason=reason),
                    metadata=backend.meta(session),
                    timeout=5,
                )
        except grpc.aio.AioRpcError as exc:
            field, msg = rpc_problem(exc)
            return RedirectResponse(
                back + "?notice=" + _q(f"{action} refused{f' ({field})' if field else ''}: {msg}"),
                status_code=303,
            )
        return RedirectResponse(back + "?notice=" + _q(f"{agent_id}: {action} done"), status_code=303)

    # ---- agent desktop ------------------------------------------------------------------------------------
    desks: dict[str, Desk] = {}
    dispositions_cache: dict[str, tuple[float, list[str]]] = {}

    def _desk_closed(desk: Desk) -> None:
        if desks.get(desk.agent_id) is desk:
            del desks[desk.agent_id]
        asyncio.get_running_loop().create_task(desk.shutdown())

    async def _dispositions(session: Session, campaign_id: str) -> list[str]:
        cached = dispositions_cache.get(campaign_id)
        if cached is not None and time.monotonic() - cached[0] < 60:
            return cached[1]
        got = await backend.campaign().GetCampaign(
            campaign_pb2.GetCampaignRequest(campaign_id=campaign_id),
            metadata=backend.meta(session),
            timeout=5,
        )
        dispositions_cache[campaign_id] = (time.monotonic(), list(got.campaign.dispositions))
        return list(got.campaign.dispositions)

    async def _desk_page(request: Request, session: Session, error: str = "", status: int = 200) -> Response:
        desk = desks.get(session.username)
        if desk is None:
            assigned: list[str] = []
            try:
                got = await backend.agent().ListAssignments(
                    agent_pb2.ListAssignmentsRequest(agent_id=session.username),
                    metadata=backend.meta(session),
                    timeout=5,
                )
                assigned = sorted({a.campaign_id for a in got.assignments})
            except grpc.aio.AioRpcError as exc:
                error = error or f"the agent service does not answer ({exc.code().name})"
            return render(
                request,
                "agent_login.html",
                {"session": session, "assigned": assigned, "error": error},
                status,
            )
        return render(
            request,
            "agent.html",
            {
                "session": session,
                "view": desk.view,
                "pause_codes": csettings.pause_codes,
                "error": error,
                "dispositions": await _desk_dispositions(session, desk),
            },
            status,
        )

    async def _desk_dispositions(session: Session, desk: Desk) -> list[str]:
        offer = desk.view.offer
        if offer is None:
            return []
        try:
            return await _dispositions(session, str(offer["campaign_id"]))
        except grpc.aio.AioRpcError:
            return []

    @page("agent", "use the agent desktop")
    async def agent_home(request: Request, session: Session) -> Response:
        return await _desk_page(request, session)

    @page("agent", "log in to campaigns")
    async def agent_login(request: Request, session: Session) -> Response:
        form = await request.form(max_part_size=64 * 1024)
        campaigns = [str(c) for c in form.getlist("campaign") if _ID.match(str(c))]
        phone = str(form.get("phone", "")).strip()
        if not campaigns:
            return await _desk_page(request, session, "campaign: choose at least one campaign", 400)
        token = backend.token(session)
        agent = AgentSession(
            lambda: open_channel(settings, settings.addr("agent"), lambda: None),
            agent_pb2.LoginRequest(
                agent_id=session.username,
                campaigns=[agent_pb2.CampaignMembership(campaign_id=c) for c in campaigns],
                phone=phone,
            ),
            (("authorization", f"Bearer {token}"),),
        )
        try:
            resp = await agent.login(give_up_s=5)
        except grpc.aio.AioRpcError as exc:
            await agent.close()
            field, msg = rpc_problem(exc)
            return await _desk_page(request, session, f"{field or 'login'}: {msg}", 400)
        old = desks.pop(session.username, None)
        if old is not None:
            old.closed = True
            await old.shutdown()
        desk = Desk(agent, _desk_closed)
        desk.set_status(resp.status)
        desk.note("logged in")
        desks[session.username] = desk
        return RedirectResponse("/agent", status_code=303)

    async def _agent_call(
        request: Request, session: Session, what: str, rpc: Callable[[Any, Desk], Awaitable[Any]]
    ) -> Response:
        desk = desks.get(session.username)
        if desk is None:
            return RedirectResponse("/agent", status_code=303)
        try:
            resp = await desk.agent.call(lambda stub: rpc(stub, desk), give_up_s=5)
        except grpc.aio.AioRpcError as exc:
            msg = rpc_problem(exc)[1]
            desk.note(f"{what} refused: {msg}")
            return await _desk_page(request, session, f"{what}: {msg}", 400)
        if getattr(resp, "status", None) is not None and resp.HasField("status"):
            desk.set_status(resp.status)
        return RedirectResponse("/agent", status_code=303)

    @page("agent", "change state")
    async def agent_state(request: Request, session: Session) -> Response:
        form = await request.form(max_part_size=64 * 1024)
        want = str(form.get("state", ""))
        code = str(form.get("pause_code", ""))
        if want not in ("ready", "pause") or (want == "pause" and code not in csettings.pause_codes):
            return await _desk_page(
                request,
                session,
                f"state: ready, or pause with one of {', '.join(csettings.pause_codes)}",
                400,
            )
        req = agent_pb2.SetStateRequest(
            agent_id=session.username,
            state=common_pb2.AGENT_STATE_READY if want == "ready" else common_pb2.AGENT_STATE_PAUSED,
            pause_reason=code if want == "pause" else "",
        )
        return await _agent_call(
            request, session, want, lambda stub, d: stub.SetState(req, metadata=d.agent.metadata)
        )

    @page("agent", "hang up")
    async def agent_hangup(request: Request, session: Session) -> Response:
        req = agent_pb2.EndCallRequest(agent_id=session.username)
        return await _agent_call(
            request, session, "hang up", lambda stub, d: stub.EndCall(req, metadata=d.agent.metadata)
        )

    @page("agent", "set a disposition")
    async def agent_disposition(request: Request, session: Session) -> Response:
        form = await request.form(max_part_size=64 * 1024)
        desk = desks.get(session.username)
        if desk is None:
            return RedirectResponse("/agent", status_code=303)
        dispo = str(form.get("disposition", ""))
        allowed = await _desk_dispositions(session, desk)
        if allowed and dispo not in allowed:
            return await _desk_page(request, session, f"disposition: one of {', '.join(allowed)}", 400)
        req = agent_pb2.SetDispositionRequest(
            agent_id=session.username, disposition=dispo, notes=str(form.get("notes", ""))[:2000]
        )
        if desk.view.offer is not None:
            req.call_id = str(desk.view.offer["call_id"])
        when = str(form.get("callback_at", "")).strip()
        if dispo == "callback":
            if not when:
                return await _desk_page(
                    request, session, "callback_at: when should the customer be called back?", 400
                )
            try:
                req.callback_at.FromDatetime(compliance._when(when).astimezone(UTC))
            except ValueError:
                return await _desk_page(
                    request, session, "callback_at: a date and time such as 2026-12-02T10:30", 400
                )
        desk.note(f"disposition {dispo}")
        return await _agent_call(
            request,
            session,
            "disposition",
            lambda stub, d: stub.SetDisposition(req, metadata=d.agent.metadata),
        )

    @page("agent", "record a do-not-call request")
    async def agent_dnc(request: Request, session: Session) -> Response:
        desk = desks.get(session.username)
        if desk is None or desk.view.offer is None:
            return await _desk_page(request, session, "do not call: there is no call in hand", 400)
        offer = desk.view.offer
        try:
            await backend.dnc().RecordOptOut(
                dnc_pb2.RecordOptOutRequest(
                    number=str(offer["number"]),
                    campaign_id=str(offer["campaign_id"]),
                    call_id=str(offer["call_id"]),
                    source="agent_disposition",
                    agent_id=session.username,
                ),
                metadata=backend.meta(session),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            return await _desk_page(request, session, f"do not call: {rpc_problem(exc)[1]}", 503)
        desk.note(f"{offer['number']} is on the do-not-call list")
        return RedirectResponse("/agent", status_code=303)

    @page("agent", "decide a preview")
    async def agent_preview(request: Request, session: Session) -> Response:
        form = await request.form(max_part_size=64 * 1024)
        desk = desks.get(session.username)
        if desk is None or desk.view.preview is None:
            return RedirectResponse("/agent", status_code=303)
        decision = (
            agent_pb2.PREVIEW_DECISION_DIAL
            if form.get("decision") == "dial"
            else agent_pb2.PREVIEW_DECISION_SKIP
        )
        req = agent_pb2.DecidePreviewRequest(
            agent_id=session.username, call_id=str(desk.view.preview["call_id"]), decision=decision
        )
        return await _agent_call(
            request, session, "preview", lambda stub, d: stub.DecidePreview(req, metadata=d.agent.metadata)
        )

    @page("agent", "log out of campaigns")
    async def agent_logout(request: Request, session: Session) -> Response:
        desk = desks.pop(session.username, None)
        if desk is not None:
            desk.closed = True
            await desk.agent.logout()
            await desk.shutdown()
        return RedirectResponse("/agent", status_code=303)

    @page("agent", "use the agent desktop")
    async def agent_events(request: Request, session: Session) -> Response:
        desk = desks.get(session.username)
        if desk is None:
            return PlainTextResponse("not logged in to any campaign", status_code=404)
        fragment = templates.get_template("_desk.html")
        queue = desk.attach()

        async def events() -> AsyncIterator[str]:
            try:
                while not await request.is_disconnected():
                    try:
                        view = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    dispositions = await _desk_dispositions(session, desk)
                    yield _sse(
                        "live",
                        fragment.render(
                            view=view,
                            session=session,
                            pause_codes=csettings.pause_codes,
                            dispositions=dispositions,
                        ),
                    )
            finally:
                desk.detach(queue)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    async def healthz(request: Request) -> Response:
        try:
            await pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def htmx(request: Request) -> Response:
        return FileResponse(
            htmx_js, media_type="text/javascript", headers={"cache-control": "public, max-age=3600"}
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for desk in list(desks.values()):
            desk.closed = True
            await desk.shutdown()
        await backend.close()

    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/campaigns", campaigns),
        Route("/campaigns/new", campaign_new, methods=["GET", "POST"]),
        Route("/campaigns/{cid}", campaign_detail),
        Route("/campaigns/{cid}/edit", campaign_edit, methods=["GET", "POST"]),
        Route("/campaigns/{cid}/live", campaign_live),
        Route("/campaigns/{cid}/upload", campaign_upload, methods=["POST"]),
        Route("/campaigns/{cid}/{action}", campaign_action, methods=["POST"]),
        Route("/lists/{lid}/rejects.csv", rejects_csv),
        Route("/compliance", compliance_home),
        Route("/compliance/dnc", compliance_dnc, methods=["POST"]),
        Route("/compliance/verify", compliance_verify, methods=["POST"]),
        Route("/compliance/audit", compliance_audit),
        Route("/compliance/audit.csv", compliance_audit_csv),
        Route("/admin/users", users, methods=["GET", "POST"]),
        Route("/supervisor", wallboard),
        Route("/supervisor/live", wallboard_live),
        Route("/supervisor/action", wallboard_action, methods=["POST"]),
        Route("/agent", agent_home),
        Route("/agent/login", agent_login, methods=["POST"]),
        Route("/agent/state", agent_state, methods=["POST"]),
        Route("/agent/hangup", agent_hangup, methods=["POST"]),
        Route("/agent/disposition", agent_disposition, methods=["POST"]),
        Route("/agent/dnc", agent_dnc, methods=["POST"]),
        Route("/agent/preview", agent_preview, methods=["POST"]),
        Route("/agent/logout", agent_logout, methods=["POST"]),
        Route("/agent/events", agent_events),
        Route("/healthz", healthz),
        Route("/vendor/htmx.min.js", htmx),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_SecurityHeaders)
    return app


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300], safe="")


def _sse(event: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n"


class _SecurityHeaders:
    """Content-Security-Policy and friends on every response (pure ASGI: it does not buffer SSE streams)."""

    HEADERS: ClassVar[list[tuple[bytes, bytes]]] = [
        (
            b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)
