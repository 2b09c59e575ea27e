"""The web console over HTTP, against real services (campaign, pacing, dnc, agent) and a real PostgreSQL:
sign-in, sessions and their cookies, CSRF on every form, roles checked by the console and again by the
services, escaping of hostile campaign and file content, the upload and its rejects, a service that is down.

The browser flows (Playwright driving Debian's chromium) are in test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from outdial.console import accounts
from outdial.console.app import build_app
from outdial.console.settings import ConsoleSettings
from outdial.core.signing import ISSUER, dev_key
from outdial.migrations.grants import role_name
from tests.conftest import Services, as_user

PASSWORD = "correct horse battery"
GOOD = {
    "name": "Winter renewals",
    "description": "",
    "mode": "progressive",
    "jurisdiction": "US",
    "region": "US",
    "caller_id": "+12125550100",
    "seller_name": "Acme Energy Ltd",
    "opt_out_number": "+12125550199",
    "window_start": "09:00",
    "window_end": "20:00",
    "days": "",
    "ring_timeout": "",
    "max_attempts": "",
    "retries": "busy=600:3",
}


@pytest.fixture
async def console_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # The console logs in as its own database role, as in production: this proves its grants suffice.
    pool = await asyncpg.create_pool(as_user(database_url, role_name("console")), min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def stack(services: Services) -> Services:
    # The pages here talk to the campaign and dnc services (the live view's pacing stream is a browser test).
    await services.start("dnc")
    await services.start("campaign")
    return services


@pytest.fixture
async def client(stack: Services, console_pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    for user, role in (("mia", "manager"), ("carl", "compliance"), ("ada", "agent"), ("root", "admin")):
        await accounts.add_user(console_pool, user, role, PASSWORD, actor="test")
    app = build_app(stack.settings, ConsoleSettings(secure_cookies=False), console_pool, dev_key(ISSUER))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
        yield c


def _field(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no {name} field in the page"
    return m.group(1)


async def sign_in(client: httpx.AsyncClient, user: str, password: str = PASSWORD) -> str:
    """Signs in; returns the session's CSRF token."""
    page = await client.get("/login")
    r = await client.post(
        "/login", data={"username": user, "password": password, "nonce": _field(page.text, "nonce")}
    )
    assert r.status_code == 303, r.text
    home = await client.get(r.headers["location"])
    assert home.status_code == 200, home.text
    return _field(home.text, "csrf")


async def test_sign_in_sets_a_strict_http_only_cookie_and_a_wrong_password_is_refused(
    client: httpx.AsyncClient, console_pool: asyncpg.Pool
) -> None:
    page = await client.get("/login")
    nonce = _field(page.text, "nonce")
    bad = await client.post("/login", data={"username": "mia", "password": "nope", "nonce": nonce})
    assert bad.status_code == 401
    assert "Wrong user name or password" in bad.text
    assert "od_session" not in client.cookies
    # A sign-in without the double-submit nonce (a cross-site login form) is refused.
    forged = await client.post("/login", data={"username": "mia", "password": PASSWORD, "nonce": "x"})
    assert forged.status_code == 403

    page = await client.get("/login")
    ok = await client.post(
        "/login", data={"username": "mia", "password": PASSWORD, "nonce": _field(page.text, "nonce")}
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/campaigns"
    cookie = next(h for h in ok.headers.get_list("set-cookie") if h.startswith("od_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    # The database keeps a hash of the session secret, never the secret.
    secret = client.cookies["od_session"]
    stored = await console_pool.fetchval("SELECT id_hash FROM console_sessions")
    assert stored != secret and len(stored) == 64
    assert (
        await console_pool.fetchval("SELECT password_hash FROM console_users WHERE username='mia'")
    ).startswith("$argon2id$")
    # Every page carries the security headers.
    r = await client.get("/campaigns")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


async def test_a_post_without_the_session_csrf_token_changes_nothing(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client, "mia")
    r = await client.post("/campaigns/new", data={**GOOD, "csrf": "forged"})
    assert r.status_code == 403
    assert "security token" in r.text
    listed = await client.get("/campaigns")
    assert "Winter renewals" not in listed.text
    r = await client.post("/campaigns/new", data={**GOOD, "csrf": csrf})
    assert r.status_code == 303, r.text


async def test_roles_are_checked_by_the_console(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada")
    for path in ("/campaigns", "/campaigns/new", "/compliance", "/admin/users"):
        r = await client.get(path)
        assert r.status_code == 403, path
        assert "Your role (agent) may not" in r.text
    client.cookies.clear()
    csrf = await sign_in(client, "carl")
    assert (await client.get("/campaigns")).status_code == 200  # compliance reads campaigns
    r = await client.post("/campaigns/new", data={**GOOD, "csrf": csrf})
    assert r.status_code == 403
    client.cookies.clear()
    r = await client.get("/campaigns")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_the_form_shows_the_services_refusal_beside_the_field(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client, "mia")
    r = await client.post("/campaigns/new", data={**GOOD, "caller_id": "12", "csrf": csrf})
    assert r.status_code == 400
    # The service's own validation (the same rule as the API), shown beside the caller ID field.
    m = re.search(
        r'<div class="field invalid">\s*<label for="f-caller_id">.*?<p class="field-error"[^>]*>([^<]+)</p>',
        r.text,
        re.S,
    )
    assert m, r.text
    assert m.group(1).strip()
    r = await client.post("/campaigns/new", data={**GOOD, "ring_timeout": "soon", "csrf": csrf})
    assert r.status_code == 400
    assert "a whole number" in r.text


async def test_hostile_names_and_file_content_are_escaped(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client, "mia")
    name = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    r = await client.post("/campaigns/new", data={**GOOD, "name": name, "csrf": csrf})
    assert r.status_code == 303, r.text
    page = await client.get(r.headers["location"])
    assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    listed = await client.get("/campaigns")
    assert "<script>alert(1)" not in listed.text
    # A lead file whose bad rows carry formula payloads: the rejects CSV neutralises them.
    cid = r.headers["location"].rsplit("/", 1)[1]
    body = 'phone,first_name\n+12125550123,Ann\n=HYPERLINK("http://x"),Bob\n@SUM(A1),Eve\n'
    up = await client.post(
        f"/campaigns/{cid}/upload",
        files={"file": ("leads.csv", body.encode(), "text/csv")},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert up.status_code == 200, up.text
    summary = up.json()
    assert (summary["rows"], summary["accepted"], summary["rejected"]) == (3, 1, 2)
    rejects = await client.get(f"/lists/{summary['list_id']}/rejects.csv")
    assert rejects.status_code == 200
    lines = rejects.text.splitlines()
    assert lines[0] == "row,field,value,reason,detail"
    assert len(lines) == 3
    for line in lines[1:]:
        value = line.split(",", 2)[2]
        assert not value.lstrip('"').startswith(("=", "@", "+", "-")), line


async def test_an_upload_of_the_wrong_type_is_refused_and_nothing_is_kept(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client, "mia")
    r = await client.post("/campaigns/new", data={**GOOD, "csrf": csrf})
    cid = r.headers["location"].rsplit("/", 1)[1]
    up = await client.post(
        f"/campaigns/{cid}/upload",
        files={"file": ("leads.xlsx", b"PK\x03\x04binary", "application/vnd.openxmlformats")},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert up.status_code == 400
    assert up.json()["error"].startswith("file: leads.xlsx is not a CSV file")
    page = await client.get(f"/campaigns/{cid}")
    assert "No list yet." in page.text


async def test_start_pause_and_a_refused_start_names_the_reason(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client, "mia")
    r = await client.post("/campaigns/new", data={**GOOD, "seller_name": "", "csrf": csrf})
    cid = r.headers["location"].rsplit("/", 1)[1]
    r = await client.post(f"/campaigns/{cid}/start", data={"csrf": csrf})
    assert r.status_code == 303
    page = await client.get(r.headers["location"])
    assert "start refused: seller_name: the seller&#39;s legal name is required" in page.text
    r = await client.post(f"/campaigns/{cid}/edit", data={**GOOD, "csrf": csrf})
    assert r.status_code == 303, r.text
    r = await client.post(f"/campaigns/{cid}/start", data={"csrf": csrf})
    page = await client.get(r.headers["location"])
    assert "start: done" in page.text and "state-active" in page.text
    r = await client.post(f"/campaigns/{cid}/pause", data={"csrf": csrf})
    page = await client.get(r.headers["location"])
    assert "pause: done" in page.text and "state-paused" in page.text


async def test_a_service_that_is_down_is_named(stack: Services, console_pool: asyncpg.Pool) -> None:
    await accounts.add_user(console_pool, "mia", "manager", PASSWORD, actor="test")
    settings = stack.settings.model_copy(update={"campaign_addr": "127.0.0.1:1"})
    app = build_app(settings, ConsoleSettings(secure_cookies=False), console_pool, dev_key(ISSUER))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test") as c:
        page = await c.get("/login")
        r = await c.post(
            "/login", data={"username": "mia", "password": PASSWORD, "nonce": _field(page.text, "nonce")}
        )
        r = await c.get(r.headers["location"])
        assert r.status_code == 503
        assert "The campaign service does not answer right now" in r.text


async def test_users_page_and_disabling_ends_sessions(
    client: httpx.AsyncClient, console_pool: asyncpg.Pool
) -> None:
    csrf = await sign_in(client, "root")
    r = await client.post(
        "/admin/users",
        data={"csrf": csrf, "username": "x", "role": "agent", "display_name": "", "password": PASSWORD},
    )
    assert r.status_code == 400 and "2-64 characters" in r.text
    r = await client.post(
        "/admin/users",
        data={"csrf": csrf, "username": "bo", "role": "agent", "display_name": "Bo", "password": "short"},
    )
    assert r.status_code == 400 and "at least 12 characters" in r.text
    r = await client.post(
        "/admin/users",
        data={"csrf": csrf, "username": "bo", "role": "agent", "display_name": "Bo", "password": PASSWORD},
    )
    assert r.status_code == 200 and "User bo created." in r.text

    other = httpx.AsyncClient(transport=client._transport, base_url="http://console.test")
    async with other:
        await sign_in(other, "bo")
        assert (await other.get("/agent")).status_code == 200
        r = await client.post("/admin/users", data={"csrf": csrf, "disable": "bo"})
        assert r.status_code == 200
        r = await other.get("/agent")
        assert r.status_code == 303  # the session ended with the account
    log: list[Any] = await console_pool.fetch(
        "SELECT actor, action FROM console_user_log WHERE username = 'bo'"
    )
    assert [(x["actor"], x["action"]) for x in log][:3] == [
        ("root", "add"),
        ("bo", "sign_in"),
        ("root", "disable"),
    ]


async def test_compliance_adds_with_a_reason_reads_the_audit_exports_it_and_verifies_the_chain(
    client: httpx.AsyncClient,
) -> None:
    csrf = await sign_in(client, "carl")
    r = await client.post(
        "/compliance/dnc", data={"csrf": csrf, "op": "add", "numbers": "+12125550123", "reason": ""}
    )
    assert r.status_code == 400 and "a reason is required" in r.text
    r = await client.post(
        "/compliance/dnc",
        data={
            "csrf": csrf,
            "op": "add",
            "numbers": "+12125550123\n+12125550124",
            "reason": "asked on the phone",
        },
    )
    assert r.status_code == 200 and "2 number(s) added to the internal list" in r.text
    r = await client.get("/compliance", params={"number": "+12125550123"})
    assert r.status_code == 200 and 'class="explanation"' in r.text
    r = await client.get("/compliance", params={"number": "+12125550123", "at": "yesterday"})
    assert r.status_code == 200 and "at: a date and time" in r.text
    # The audit log, filtered by number and action; a malformed filter names its field.
    r = await client.get("/compliance/audit", params={"number": "+12125550124", "action": "add"})
    assert r.status_code == 200
    rows = re.findall(r"<tr><td>(\d+)</td>", r.text)
    assert len(rows) == 1 and "carl" in r.text and "asked on the phone" in r.text
    r = await client.get("/compliance/audit", params={"since": "last week"})
    assert r.status_code == 400 and "a date or date-time" in r.text
    csv_text = (await client.get("/compliance/audit.csv", params={"action": "add"})).text
    lines = csv_text.splitlines()
    assert lines[0] == "seq,at,actor,action,number,campaign_id,call_id,result,reason,details"
    assert len(lines) == 3 and all(",add," in line for line in lines[1:])
    r = await client.post("/compliance/verify", data={"csrf": csrf})
    assert r.status_code == 200 and "Chain intact" in r.text
    # A manager may not use these pages.
    client.cookies.clear()
    csrf = await sign_in(client, "mia")
    r = await client.post(
        "/compliance/dnc", data={"csrf": csrf, "op": "remove", "numbers": "+12125550123", "reason": "x"}
    )
    assert r.status_code == 403
