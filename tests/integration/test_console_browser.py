"""The console in a real browser: Playwright (Python) driving Debian's chromium (no browser download), against
the four real services and the console served by uvicorn on loopback.

A campaign manager signs in, creates a campaign, uploads a lead file through the file input, starts the
campaign and sees the live figures pushed over server-sent events, then pauses it; a compliance officer asks
why a number was blocked; every page passes axe-core (vendored through package-lock.json) with no serious or
critical violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn

from outdial.console import accounts
from outdial.console.app import build_app, vendor_dir
from outdial.console.settings import ConsoleSettings
from outdial.core.infra import free_port
from outdial.core.signing import ISSUER, dev_key
from outdial.migrations.grants import role_name
from tests.conftest import Services, as_user
from tests.integration.test_pacing_dialer import fast_sim_env, workday_clock

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parents[2]
AXE = vendor_dir(ConsoleSettings()) / "axe-core" / "axe.min.js"
# Set to a folder to keep a screenshot of each main page (how docs/console/*.png are made:
# OUTDIAL_CONSOLE_SCREENSHOTS=docs/console pytest tests/integration/test_console_browser.py).
SHOTS = os.environ.get("OUTDIAL_CONSOLE_SCREENSHOTS", "")


async def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.set_viewport_size({"width": 1280, "height": 860})
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=False)


@pytest.fixture
async def console_url(
    services: Services, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    # A fast simulated carrier where every answer is a person who stays on the line until the agent hangs up;
    # the services' clock at a weekday afternoon, so the New York leads' calling window is open.
    fast_sim_env(
        monkeypatch,
        OUTDIAL_SIM_P_LIVE="1.0",
        OUTDIAL_SIM_P_MACHINE="0",
        OUTDIAL_SIM_P_BUSY="0",
        OUTDIAL_SIM_P_FAILED="0",
        OUTDIAL_SIM_TALK_MEAN_S="100000",
    )
    clock = workday_clock()
    for name in ("dnc", "agent", "pacing", "campaign"):
        await services.start(name, clock=clock)  # type: ignore[arg-type]
    pool = await asyncpg.create_pool(as_user(database_url, role_name("console")), min_size=1, max_size=4)
    assert pool is not None
    for user, role in (("mia", "manager"), ("carl", "compliance"), ("root", "admin"), ("ada", "agent")):
        await accounts.add_user(pool, user, role, PASSWORD, actor="test")
    app = build_app(services.settings, ConsoleSettings(secure_cookies=False), pool, dev_key(ISSUER))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True  # the SSE streams stay open otherwise
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await pool.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed: `make setup` installs it"

    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield b
        finally:
            await b.close()


async def sign_in(page: Any, base: str, user: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("#username", user)
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")


async def axe_violations(browser: Any, storage: Any, url: str) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on ``url`` (injected into a CSP-bypassing context: the
    console's own CSP rightly forbids an injected script)."""
    ctx = await browser.new_context(bypass_csp=True, storage_state=storage)
    try:
        page = await ctx.new_page()
        await page.goto(url)
        await page.add_script_tag(path=str(AXE))
        result = await page.evaluate("async () => JSON.stringify(await axe.run(document))")
        return [v for v in json.loads(result)["violations"] if v["impact"] in ("serious", "critical")]
    finally:
        await ctx.close()


async def test_a_manager_runs_a_campaign_and_compliance_asks_why(
    console_url: str, browser: Any, tmp_path: Path
) -> None:
    base = console_url
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await sign_in(page, base, "mia")
    await page.wait_for_url(f"{base}/campaigns")

    # Create: a bad caller ID first — the service's refusal shows beside the field, the rest is kept.
    await page.click("text=New campaign")
    await page.fill("#f-name", "Browser <b>campaign</b>")
    await page.select_option("#f-mode", "progressive")
    await page.fill("#f-caller_id", "12")
    await page.fill("#f-seller_name", "Acme Energy Ltd")
    await page.fill("#f-opt_out_number", "+12125550199")
    await page.click("button:has-text('Save')")
    error = page.locator(".field.invalid .field-error")
    await error.first.wait_for()
    assert await page.locator(".field.invalid #f-caller_id").count() == 1
    assert await page.input_value("#f-seller_name") == "Acme Energy Ltd"
    await page.fill("#f-caller_id", "+12125550100")
    await page.click("button:has-text('Save')")
    await page.wait_for_selector("h1 .state")
    assert "Browser <b>campaign</b>" in await page.inner_text("h1")  # shown as text, not markup

    # Upload through the file input: the summary appears, with a link to the rejected rows.
    csv_file = tmp_path / "leads.csv"
    csv_file.write_text("phone,first_name\n+12125550123,Ann\n+12125550124,Bob\nnot-a-number,Eve\n")
    await page.set_input_files("#file", str(csv_file))
    await page.click("#upload button[type=submit]")
    summary = page.locator("#upload-result dl.summary")
    await summary.wait_for()
    text = await summary.inner_text()
    assert "Leads accepted\n2" in text.replace("\t", "\n") and "Rejected\n1" in text.replace("\t", "\n")
    async with page.expect_download() as dl:
        await page.click("text=Download the rejected rows (CSV)")
    rejects = Path(await (await dl.value).path()).read_text()
    assert rejects.splitlines()[0] == "row,field,value,reason,detail" and "not-a-number" in rejects

    # Start: the live panel is pushed over SSE (no polling) and shows the pacing figures.
    await page.click("button[value=start]")
    await page.wait_for_selector(".notice:has-text('start: done')")
    await page.wait_for_selector("#live[data-updated]")
    assert await page.locator("#live [data-k=leads_total]").inner_text() == "2"
    assert await page.locator("#live [data-k=mode]").count() == 1
    await shot(page, "campaign")
    await page.click("button[value=pause]")
    await page.wait_for_selector(".state-paused")

    storage = await ctx.storage_state()
    cid = page.url.split("/campaigns/")[1].split("?")[0]
    for path in ("/campaigns", f"/campaigns/{cid}", f"/campaigns/{cid}/edit", "/campaigns/new"):
        assert await axe_violations(browser, storage, base + path) == [], path
    await ctx.close()

    # Compliance: why was a number blocked? (added to the internal list first, through the DNC service)
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await sign_in(page, base, "carl")
    await page.wait_for_url(f"{base}/compliance")
    await page.fill("#number", "+12125550123")
    await page.click("button:has-text('Explain')")
    await page.wait_for_selector(".explanation")
    await shot(page, "compliance")
    assert "+12125550123" in (await page.locator("pre.result").text_content() or "")
    storage = await ctx.storage_state()
    assert await axe_violations(browser, storage, f"{base}/compliance?number=%2B12125550123") == []
    await page.goto(f"{base}/compliance/audit")
    assert await page.locator("table.audit tbody tr").count() >= 1
    await shot(page, "audit")
    assert await axe_violations(browser, storage, f"{base}/compliance/audit") == []
    await ctx.close()

    # The sign-in page and the admin's users page pass too.
    ctx = await browser.new_context()
    page = await ctx.new_page()
    assert await axe_violations(browser, None, f"{base}/login") == []
    await sign_in(page, base, "root")
    await page.wait_for_url(f"{base}/campaigns")
    assert await axe_violations(browser, await ctx.storage_state(), f"{base}/admin/users") == []
    await ctx.close()


async def test_an_agent_takes_a_call_on_the_desktop(
    console_url: str, browser: Any, services: Services, tmp_path: Path
) -> None:
    base = console_url
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await sign_in(page, base, "mia")
    await page.wait_for_url(f"{base}/campaigns")
    await page.goto(f"{base}/campaigns/new")
    await page.fill("#f-name", "Desk campaign")
    await page.select_option("#f-mode", "progressive")
    await page.fill("#f-caller_id", "+12125550100")
    await page.fill("#f-seller_name", "Acme Energy Ltd")
    await page.fill("#f-opt_out_number", "+12125550199")
    await page.click("button:has-text('Save')")
    await page.wait_for_selector("h1 .state")
    cid = page.url.split("/campaigns/")[1].split("?")[0]
    leads = tmp_path / "leads.csv"
    leads.write_text("phone,first_name,last_name,account\n+12125550123,Ann,Lee,<script>alert(1)</script>\n")
    await page.set_input_files("#file", str(leads))
    await page.click("#upload button[type=submit]")
    await page.locator("#upload-result dl.summary").wait_for()
    await services.assign(cid, "ada")
    await page.click("button[value=start]")
    await page.wait_for_selector(".notice:has-text('start: done')")
    await ctx.close()

    ctx = await browser.new_context()
    page = await ctx.new_page()
    await sign_in(page, base, "ada")
    await page.wait_for_url(f"{base}/agent")
    assert await page.locator(f"input[name=campaign][value='{cid}']").is_checked()
    await page.click("button:has-text('Log in')")
    # Logging in makes the agent ready: the Ready button shows only while paused.
    await page.wait_for_selector("[data-k=state]")
    assert await page.locator("button[value=ready]").count() == 0
    # The screen pop: pushed over SSE as soon as the call is connected, with the lead's fields (escaped).
    pop = page.locator("#desk [data-k=lead_name]")
    await pop.wait_for(timeout=30_000)
    assert "Ann" in await pop.inner_text()
    assert "<script>alert(1)</script>" in await page.locator("#desk table.lead").inner_text()
    assert await page.locator("#desk [data-k=state]").inner_text() == "on_call"
    await shot(page, "agent")
    # The campaign's own dispositions are offered.
    options = await page.locator("#disposition option").all_inner_texts()
    assert "not_interested" in options and "callback" in options
    # Do not call: reaches the DNC list at once.
    await page.click("button:has-text('Do not call')")
    await page.wait_for_selector(".notes li:has-text('is on the do-not-call list')")
    await page.click("button:has-text('Hang up')")
    await page.wait_for_selector("#desk [data-k=state]:has-text('wrap_up')")
    await page.wait_for_selector("#disposition")
    # A callback without a time is refused, naming the field.
    await page.select_option("#disposition", "callback")
    await page.click("button:has-text('Save disposition')")
    await page.wait_for_selector(".error:has-text('callback_at')")
    await page.goto(f"{base}/agent")
    await page.select_option("#disposition", "do_not_call")
    await page.click("button:has-text('Save disposition')")
    await page.wait_for_selector(".notes li:has-text('disposition do_not_call')")
    await page.select_option("#pause_code", "lunch")
    await page.click("button[value=pause]")
    await page.wait_for_selector("#desk [data-k=state]:has-text('paused')")
    assert await axe_violations(browser, await ctx.storage_state(), f"{base}/agent") == []

    # The supervisor's wallboard follows the agent live (WatchAgents over SSE), and pauses them with a reason.
    sup = await browser.new_context()
    board = await sup.new_page()
    await sign_in(board, base, "mia")
    await board.wait_for_url(f"{base}/campaigns")
    await board.goto(f"{base}/supervisor")
    row = board.locator("#wallboard tr[data-agent=ada] .state")
    await board.wait_for_selector("#wallboard tr[data-agent=ada] .state:has-text('paused')")
    await page.click("button[value=ready]")
    await board.wait_for_selector("#wallboard tr[data-agent=ada] .state:not(:has-text('paused'))")
    await shot(board, "wallboard")
    assert await row.inner_text() != "paused"
    await board.fill("#r-ada", "coaching")
    await board.click("#wallboard tr[data-agent=ada] button[value=pause]")
    await board.wait_for_selector(".notice:has-text('ada: pause done')")
    await page.wait_for_selector("#desk .agent-state:has-text('coaching (by manager mia)')")
    assert await axe_violations(browser, await sup.storage_state(), f"{base}/supervisor") == []
    await sup.close()

    await page.click("button:has-text('Log out of campaigns')")
    await page.wait_for_selector("button:has-text('Log in')")
    await ctx.close()
