"""An adversarial compliance day, compressed (issue 13, point 8): the four services as processes, the simulated
carrier (time-scaled), simulated agents, three predictive campaigns, and the law changing under the dialer:

- two US campaigns with leads in six zones (Eastern, Central, Mountain, Arizona (no DST), Pacific, Alaska and
  Hawaii, and numbers whose candidate zones span two), run across a window edge: the services' clock is
  shifted so that 10:00 in New York falls mid-run. The campaigns call 08:00-10:00 local, so at that instant
  the Eastern zone closes while Central (and Texas, whose law opens at 09:00), Mountain and, in winter,
  Arizona open; Pacific, Alaska and Hawaii stay closed throughout;
- multi-number people: Florida leads with three numbers (FL caps calls per person at 3 per 24 h), and leads
  of the second US campaign sharing a number with leads of the first; New York addresses with Florida area
  codes (the area code's state law applies too);
- mid-run, through the real RPCs and the CLI: numbers that are being retried go onto the company list, a
  state list and a campaign list; consents are revoked and granted; Reassigned Numbers Database results are
  imported (``outdial dnc rnd import``) with "yes" answers that make consents unusable;
- the simulated agents' wrong-number (consent revoked everywhere) and do-not-call dispositions, and opt-out key
  presses on abandoned calls;
- a UK campaign whose numbers include some abandoned 30 hours earlier (by it and by an older campaign).

The services' clock can be shifted but not sped up (``OUTDIAL_CLOCK_OFFSET_SECONDS``; the simulated carrier's
calls are time-scaled): rather than a whole day, the run crosses the one instant at which these edges coincide.

Every invariant is then checked from PostgreSQL and the DNC audit (tests/e2e/checks.py), and the audit chain is
verified with ``outdial dnc verify`` straight against PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.duration_pb2 import Duration

from outdial.agent.simulated import Distribution, run_simulated_agents
from outdial.campaign.leads import find_columns, normalise_row
from outdial.cli.core_commands import Supervisor
from outdial.core import keys
from outdial.core.auth import Role
from outdial.core.clients import open_channel
from outdial.core.config import SERVICES, Settings
from outdial.core.healthcheck import wait_until_serving
from outdial.core.infra import free_port
from outdial.rules.windows import check_window, window_from_json
from outdial.v1 import (
    campaign_pb2,
    campaign_pb2_grpc,
    common_pb2,
    dnc_pb2,
    dnc_pb2_grpc,
)
from tests.conftest import make_token
from tests.e2e import checks

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SEED = 13
#: Virtual seconds from the services' start to the window edge, and how long the run goes on after it.
LEAD_IN_S = 40.0
AFTER_S = 16.0
TIME_SCALE = 8.0
CHUNK = 64 * 1024

# Lead groups of the first US campaign: (name, area codes (one per number), ZIP, state, count).
US_GROUPS: list[tuple[str, tuple[str, ...], str, str, int]] = [
    # First in the file (so first among new leads): the numbers of the consent and RND changes (Central: open
    # throughout), then those whose window opens at the edge.
    ("il_roles", ("312",), "60601", "IL", 23),
    ("tx", ("214",), "75201", "TX", 16),  # Texas law opens at 09:00
    ("il_tx", ("214",), "60601", "IL", 5),  # an Illinois address, a Texas number: Texas law too
    ("co", ("303",), "80202", "CO", 16),
    ("boise", ("208",), "83702", "ID", 6),
    ("az", ("602",), "85004", "AZ", 14),  # Arizona keeps standard time all year
    ("navajo", ("928",), "86515", "AZ", 5),  # the Navajo Nation keeps DST: Denver and Phoenix
    # Closed throughout.
    ("ca", ("213",), "90012", "CA", 10),
    ("wa", ("206",), "98101", "WA", 5),
    ("or_ontario", ("541",), "97914", "OR", 5),  # Boise and Los Angeles
    ("ak", ("907",), "99501", "AK", 5),
    ("hi", ("808",), "96813", "HI", 5),
    # Open until the edge.
    ("fl3", ("305", "407", "954"), "33101", "FL", 10),  # three numbers each, FL caps per person
    ("ny_fl", ("305",), "10001", "NY", 5),  # a New York address, a Florida number: FL law applies too
    ("fl_pensacola", ("850",), "32501", "FL", 4),  # candidate zones Chicago and New York
    ("in_evansville", ("812",), "47708", "IN", 4),  # Chicago and New York
    ("ny", ("212",), "10001", "NY", 20),
    ("ma", ("617",), "02108", "MA", 8),
    # Open throughout; the consent and RND numbers are here.
    ("il", ("312",), "60601", "IL", 40),
    ("ok", ("405",), "73102", "OK", 10),
]


def _number(rng: random.Random, area: str, taken: set[str]) -> str:
    while True:
        exchange = rng.randint(200, 999)
        if exchange % 100 == 11 or exchange == 555:
            continue
        n = f"+1{area}{exchange:03d}{rng.randint(0, 9999):04d}"
        if n not in taken:
            taken.add(n)
            return n


def _uk_mobile(rng: random.Random, taken: set[str]) -> str:
    """A mobile number the upload takes for a UK campaign (not the Channel Islands' or the Isle of Man's)."""
    cols = find_columns(["Phone"])
    while True:
        n = f"+447{rng.randint(400_000_000, 999_999_999)}"
        if n not in taken and not normalise_row(1, [n], cols, default_region="GB", jurisdiction="UK").rejects:
            taken.add(n)
            return n


@dataclass
class Lead:
    group: str
    numbers: list[str]
    zip: str
    state: str


@dataclass
class Scenario:
    """The generated lead lists and the numbers each compliance event is about."""

    us_a: list[Lead]
    us_b: list[Lead]
    uk: list[Lead]
    roles: dict[str, list[str]]
    registry_us: list[str]
    registry_uk: list[str]


def scenario(seed: int = SEED) -> Scenario:
    rng = random.Random(seed)
    taken: set[str] = set()
    us_a = [
        Lead(g, [_number(rng, a, taken) for a in areas], z, st)
        for g, areas, z, st, count in US_GROUPS
        for _ in range(count)
    ]
    il = [lead.numbers[0] for lead in us_a if lead.group == "il_roles"]
    roles: dict[str, list[str]] = {}
    cut = 0
    for role, n in [
        ("rnd_reassigned", 4),  # consent before an RND-reported disconnect: unusable once imported
        ("rnd_safe", 2),  # an RND "no" covering the consent: the safe harbor
        ("rnd_no_data", 1),
        ("rnd_new_subscriber", 1),  # consent given after the disconnect: still good
        ("revoke", 3),  # consent revoked mid-run
        ("grant", 3),  # on the registry, consent granted mid-run
        ("plain", 3),  # on the registry, never any consent
        ("keep", 3),  # consent throughout
        ("wireless_consent", 1),
        ("wireless_plain", 1),
    ]:
        roles[role] = il[cut : cut + n]
        cut += n
    il_rest = [lead.numbers[0] for lead in us_a if lead.group == "il"]
    roles["internal_before"] = [il[cut], *(lead.numbers[0] for lead in us_a if lead.group == "co")][:3]
    roles["us_shared"] = il_rest[:6]
    registry_us = [
        n
        for r in (
            "rnd_reassigned",
            "rnd_safe",
            "rnd_no_data",
            "rnd_new_subscriber",
            "revoke",
            "grant",
            "plain",
            "keep",
        )
        for n in roles[r]
    ] + [lead.numbers[0] for lead in us_a if lead.group in ("tx", "co")][::9]
    # The second US campaign: people who are also leads of the first (a shared number and one of their own).
    us_b: list[Lead] = []
    for lead in [x for x in us_a if x.group == "fl3"][:6]:
        us_b.append(Lead("b_fl", [lead.numbers[2], _number(rng, "786", taken)], lead.zip, lead.state))
    for lead in [x for x in us_a if x.group == "ny_fl"]:
        us_b.append(Lead("b_ny_fl", [lead.numbers[0]], lead.zip, lead.state))
    for n in roles["us_shared"]:
        us_b.append(Lead("b_il", [n, _number(rng, "773", taken)], "60601", "IL"))
    uk = [Lead("uk", [_uk_mobile(rng, taken)], "", "") for _ in range(40)]
    roles["uk_abandoned_here"] = [lead.numbers[0] for lead in uk[:4]]
    roles["uk_abandoned_elsewhere"] = [lead.numbers[0] for lead in uk[4:6]]
    roles["uk_abandoned_long_ago"] = [lead.numbers[0] for lead in uk[6:8]]
    registry_uk = [lead.numbers[0] for lead in uk[8:11]]
    return Scenario(us_a, us_b, uk, roles, registry_us, registry_uk)


def csv_of(leads: list[Lead]) -> bytes:
    lines = ["First Name,Last Name,Phone,Mobile,Phone2,ZIP,State"]
    for i, lead in enumerate(leads):
        nums = [*lead.numbers, "", "", ""][:3]
        lines.append(f"P{i},{lead.group},{nums[0]},{nums[1]},{nums[2]},{lead.zip},{lead.state}")
    return ("\r\n".join(lines) + "\r\n").encode()


def edge_instant(day: date) -> datetime:
    """10:00 in New York on ``day``: the Eastern zone's campaign window closes, Central opens at 09:00."""
    return datetime(day.year, day.month, day.day, 10, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)


def stamp(dt: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromDatetime(dt.astimezone(UTC))
    return t


async def run_cli(env: dict[str, str], *argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outdial.cli.main",
        *argv,
        env={**os.environ, **env, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"outdial {' '.join(argv)} exited {proc.returncode}: {out.decode()}"
    return out.decode()


def us_campaign(name: str, own_cap: int = 0) -> campaign_pb2.Campaign:
    quick = [
        common_pb2.RetryRule(outcome=o, delay=Duration(seconds=1), max_attempts=30)
        for o in (
            common_pb2.CALL_OUTCOME_NO_ANSWER,
            common_pb2.CALL_OUTCOME_BUSY,
            common_pb2.CALL_OUTCOME_MACHINE,
            common_pb2.CALL_OUTCOME_FAILED,
            common_pb2.CALL_OUTCOME_ABANDONED,
        )
    ]
    return campaign_pb2.Campaign(
        name=name,
        dial_mode=common_pb2.DIAL_MODE_PREDICTIVE,
        caller_id="+12127363100",
        jurisdiction=common_pb2.JURISDICTION_US,
        calling_window=common_pb2.CallingWindow(start_local="08:00", end_local="10:00"),
        default_region="US",
        ring_timeout=Duration(seconds=15),
        max_lines_per_agent=3,
        retry_rules=quick,
        max_calls_per_number_24h=own_cap,
        seller_name="Outdial Test Energy LLC",
        opt_out_number="+12127363199",
    )


def uk_campaign() -> campaign_pb2.Campaign:
    return campaign_pb2.Campaign(
        name="UK renewals",
        dial_mode=common_pb2.DIAL_MODE_PREDICTIVE,
        caller_id="+442079460958",
        jurisdiction=common_pb2.JURISDICTION_UK,
        default_region="GB",
        ring_timeout=Duration(seconds=15),
        max_lines_per_agent=2,
        retry_rules=[
            common_pb2.RetryRule(
                outcome=common_pb2.CALL_OUTCOME_NO_ANSWER, delay=Duration(seconds=1), max_attempts=30
            )
        ],
        seller_name="Outdial Test Energy Ltd",
        opt_out_number="+442079460000",
        # Ofcom: a UK campaign with answering-machine detection states its false-positive estimate.
        amd_false_positive_rate=0.02,
        amd_false_positive_basis="vendor test of 1,000 recorded answers, 2026-10",
    )


@dataclass
class Day:
    """The run: its services, its clock and the compliance events scheduled on it."""

    settings: Settings
    env: dict[str, str]
    offset: timedelta
    edge: datetime
    sc: Scenario
    cids: dict[str, str] = field(default_factory=dict)
    done: list[tuple[float, str]] = field(default_factory=list)
    listed: dict[str, list[str]] = field(default_factory=dict)
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    #: Just before the campaigns started (calls before it are the seeded history of earlier days).
    started_at: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def dnc(self) -> tuple[grpc.aio.Channel, dnc_pb2_grpc.DncServiceStub]:
        token = make_token(Role.COMPLIANCE, "compliance-officer")
        ch = open_channel(self.settings, self.settings.dnc_addr, lambda: token)
        return ch, dnc_pb2_grpc.DncServiceStub(ch)

    def cli_env(self) -> dict[str, str]:
        return {
            **self.env,
            "OUTDIAL_DNC_ADDR": self.settings.dnc_addr,
            "OUTDIAL_TOKEN": make_token(Role.COMPLIANCE, "compliance-officer"),
        }

    async def hot(self, cid: str, zones: list[str], n: int) -> list[str]:
        """Numbers of the campaign in these zones that will be dialled in a moment unless something stops it:
        first those already dialled whose lead waits for a retry, then those of leads not called yet."""
        used = {x for v in self.sc.roles.values() for x in v} | {x for v in self.listed.values() for x in v}
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            rows = await conn.fetch(
                """SELECT n.e164, bool_or(d.dial_at IS NOT NULL) AS dialled FROM lead_numbers n
                     JOIN leads l ON l.id = n.lead_id
                     LEFT JOIN dial_attempts d ON d.campaign_id = n.campaign_id AND d.number = n.e164
                    WHERE n.campaign_id = $1 AND l.status IN ('new', 'retry')
                      AND n.timezones <@ $2::text[] AND NOT n.e164 = ANY($3::text[])
                    GROUP BY n.e164 ORDER BY 2 DESC, 1 LIMIT $4""",
                cid,
                zones,
                sorted(used),
                n,
            )
        finally:
            await conn.close()
        return [r["e164"] for r in rows]

    # ----------------------------------------------------------------- the events

    async def dnc_add_rpc(self) -> None:
        nums = await self.hot(self.cids["us_a"], ["America/Chicago"], 6)
        assert nums, "no Central lead left to list"
        ch, stub = self.dnc()
        try:
            await stub.AddNumbers(
                dnc_pb2.AddNumbersRequest(
                    numbers=nums[:4],
                    list_kind=dnc_pb2.LIST_KIND_INTERNAL,
                    reason="asked not to be called (compliance day)",
                    source="test",
                ),
                timeout=10,
            )
            if nums[4:]:
                await stub.AddNumbers(
                    dnc_pb2.AddNumbersRequest(
                        numbers=nums[4:],
                        list_kind=dnc_pb2.LIST_KIND_STATE,
                        state="IL",
                        jurisdiction=common_pb2.JURISDICTION_US,
                        reason="state list update",
                        source="test",
                    ),
                    timeout=10,
                )
        finally:
            await ch.close()
        self.listed["internal_rpc"] = nums

    async def consent_revoke_rpc(self) -> None:
        ch, stub = self.dnc()
        try:
            for n in self.sc.roles["revoke"]:
                await stub.SetConsent(dnc_pb2.SetConsentRequest(number=n, revoke=True), timeout=10)
        finally:
            await ch.close()

    async def rnd_import_cli(self, path: Path) -> None:
        today = self.now().date()
        obtained = consent_day(today)
        rows = ["number,queried_date,answer,disconnect_date"]
        for n in self.sc.roles["rnd_reassigned"]:
            rows.append(f"{n[2:]},{obtained.isoformat()},yes,{(today - timedelta(days=100)).isoformat()}")
        for n in self.sc.roles["rnd_safe"]:
            rows.append(f"{n[2:]},{obtained.isoformat()},no,")
        for n in self.sc.roles["rnd_no_data"]:
            rows.append(f"{n[2:]},{obtained.isoformat()},no_data,")
        for n in self.sc.roles["rnd_new_subscriber"]:
            before = obtained - timedelta(days=60)
            rows.append(f"{n[2:]},{before.isoformat()},yes,{(before + timedelta(days=10)).isoformat()}")
        path.write_text("\n".join(rows) + "\n")
        out = await run_cli(
            self.cli_env(), "dnc", "rnd", "import", str(path), "--source", "rnd-2026-12.csv", "--json"
        )
        got = json.loads(out[out.index("{") :])
        assert int(got.get("imported", 0)) == len(rows) - 1 and not int(got.get("rejected", 0)), got

    async def consent_grant(self) -> None:
        first, *rest = self.sc.roles["grant"]
        obtained = self.now() - timedelta(hours=2)
        # One through the CLI, the others through the RPC.
        await run_cli(
            self.cli_env(),
            "dnc",
            "consent",
            first,
            "--kind",
            "express_written",
            "--evidence",
            f"web form submission {first[-4:]}",
            "--obtained-at",
            obtained.isoformat(),
            "--via",
            "web_form",
            "--text",
            "I agree to receive marketing calls from Acme Energy, including autodialled calls.",
            "--ip",
            "203.0.113.7",
        )
        ch, stub = self.dnc()
        try:
            for n in rest:
                await stub.SetConsent(
                    dnc_pb2.SetConsentRequest(
                        number=n,
                        kind=dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN,
                        evidence=f"signed form {n[-4:]}",
                        obtained_at=stamp(obtained),
                        obtained_via="signed_paper",
                        text_agreed="I agree to receive marketing calls from Acme Energy.",
                        recording_ref=f"scan://consent/{n[-4:]}.pdf",
                    ),
                    timeout=10,
                )
        finally:
            await ch.close()

    async def dnc_add_cli(self) -> None:
        nums = await self.hot(
            self.cids["us_a"], ["America/Chicago", "America/Denver", "America/Phoenix", "America/Boise"], 4
        )
        self.listed["internal_cli"] = nums
        if nums:
            await run_cli(self.cli_env(), "dnc", "add", *nums, "--reason", "asked on a call (compliance day)")

    async def campaign_list_add(self) -> None:
        nums = await self.hot(self.cids["us_b"], ["America/Chicago"], 3)
        self.listed["campaign_b"] = nums
        if not nums:
            return
        ch, stub = self.dnc()
        try:
            await stub.AddNumbers(
                dnc_pb2.AddNumbersRequest(
                    numbers=nums,
                    list_kind=dnc_pb2.LIST_KIND_CAMPAIGN,
                    campaign_id=self.cids["us_b"],
                    reason="not for this campaign",
                    source="test",
                ),
                timeout=10,
            )
        finally:
            await ch.close()


def consent_day(today: date) -> date:
    return today - timedelta(days=400)


async def setup_dnc(day: Day, stub: dnc_pb2_grpc.DncServiceStub) -> None:
    """The lists and consents in force when the day starts."""
    now = day.now()
    sc = day.sc
    for jur, numbers, extra in (
        (common_pb2.JURISDICTION_US, sc.registry_us, []),
        (common_pb2.JURISDICTION_UK, sc.registry_uk, []),
    ):
        header = dnc_pb2.ImportRegistryHeader(
            list_kind=dnc_pb2.LIST_KIND_NATIONAL,
            jurisdiction=jur,
            mode=dnc_pb2.IMPORT_MODE_FULL,
            source="registry extract",
            downloaded_at=stamp(now - timedelta(days=2)),
        )
        lines = [n[2:] if n.startswith("+1") else "0" + n[3:] for n in numbers] + extra
        data = ("\n".join(lines) + "\n").encode()

        async def chunks(h: Any = header, d: bytes = data) -> AsyncIterator[dnc_pb2.ImportRegistryRequest]:
            yield dnc_pb2.ImportRegistryRequest(header=h)
            yield dnc_pb2.ImportRegistryRequest(chunk=d)

        got = await stub.ImportRegistry(chunks(), timeout=30)
        assert got.invalid == 0, got
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(
            numbers=sc.roles["internal_before"],
            list_kind=dnc_pb2.LIST_KIND_INTERNAL,
            reason="asked",
            source="test",
        )
    )
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(
            numbers=sc.roles["wireless_consent"] + sc.roles["wireless_plain"],
            list_kind=dnc_pb2.LIST_KIND_WIRELESS,
            jurisdiction=common_pb2.JURISDICTION_US,
            reason="ported to wireless",
            source="test",
        )
    )
    obtained = datetime.combine(consent_day(now.date()), datetime.min.time(), UTC) + timedelta(hours=15)
    for role in (
        "rnd_reassigned",
        "rnd_safe",
        "rnd_no_data",
        "rnd_new_subscriber",
        "revoke",
        "keep",
        "wireless_consent",
    ):
        for n in sc.roles[role]:
            await stub.SetConsent(
                dnc_pb2.SetConsentRequest(
                    number=n,
                    kind=dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN,
                    evidence=f"web form {n[-4:]}",
                    obtained_at=stamp(obtained),
                    obtained_via="web_form",
                    text_agreed="I agree to receive marketing calls from Acme Energy, including autodialled calls.",
                    ip_address="203.0.113.9",
                )
            )


async def seed_uk_history(conn: asyncpg.Connection, day: Day) -> None:
    """Calls of the previous days, as the dialer and the campaign service recorded them: abandoned 30 h ago
    (by this campaign and by an older one) and 80 h ago."""
    uk = day.cids["uk"]
    ids = {
        r["e164"]: r["lead_id"]
        for r in await conn.fetch("SELECT e164, lead_id FROM lead_numbers WHERE campaign_id = $1", uk)
    }
    now = day.now()
    rows = []
    for role, campaign, hours in (
        ("uk_abandoned_here", uk, 30),
        ("uk_abandoned_elsewhere", "uk-previous-campaign", 30),
        ("uk_abandoned_long_ago", uk, 80),
    ):
        for i, n in enumerate(day.sc.roles[role]):
            at = now - timedelta(hours=hours)
            rows.append((f"seed-{role}-{i}", campaign, ids[n], n, at))
    for call_id, campaign, lead_id, n, at in rows:
        await conn.execute(
            """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, attempt, replica, fence_token,
                                          allowed, gate_at, dial_at, answer_at, end_at, outcome, answer)
               VALUES ($1, $2, $3, $4, 0, 'yesterday', 1, true, $5, $5, $6, $7, 'abandoned', 'human')""",
            call_id,
            campaign,
            str(lead_id),
            n,
            at,
            at + timedelta(seconds=12),
            at + timedelta(seconds=20),
        )
        await conn.execute(
            """INSERT INTO call_records (call_id, campaign_id, lead_id, calling_number, called_number, attempt,
                                         dial_at, answer_at, end_at, outcome, answer, duration_s)
               VALUES ($1, $2, $3, '+442079460958', $4, 0, $5, $6, $7, 'abandoned', 'human', 8)""",
            call_id,
            campaign,
            lead_id,
            n,
            at,
            at + timedelta(seconds=12),
            at + timedelta(seconds=20),
        )


async def upload(stub: campaign_pb2_grpc.CampaignServiceStub, cid: str, data: bytes) -> Any:
    async def chunks() -> AsyncIterator[campaign_pb2.UploadLeadsRequest]:
        yield campaign_pb2.UploadLeadsRequest(
            header=campaign_pb2.UploadLeadsHeader(campaign_id=cid, file_name="leads.csv")
        )
        for i in range(0, len(data), CHUNK):
            yield campaign_pb2.UploadLeadsRequest(chunk=data[i : i + CHUNK])

    return await stub.UploadLeads(chunks(), timeout=60)


AGENTS = (("us_a", 5, "a-agent"), ("us_b", 3, "b-agent"), ("uk", 2, "uk-agent"))


async def create_campaigns(day: Day, camp: campaign_pb2_grpc.CampaignServiceStub) -> None:
    for key, c in (
        ("us_a", us_campaign("US morning A")),
        ("us_b", us_campaign("US morning B", own_cap=2)),
        ("uk", uk_campaign()),
    ):
        made = await camp.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))
        day.cids[key] = made.campaign.id


async def prepare(day: Day, camp: campaign_pb2_grpc.CampaignServiceStub) -> None:
    """Lists and consents, the campaigns' leads, the UK history."""
    ch, dnc = day.dnc()
    try:
        await setup_dnc(day, dnc)
    finally:
        await ch.close()
    for key, leads in (("us_a", day.sc.us_a), ("us_b", day.sc.us_b), ("uk", day.sc.uk)):
        up = await upload(camp, day.cids[key], csv_of(leads))
        assert up.rejected == 0, (key, dict(up.rejected_by_reason))
    conn = await asyncpg.connect(day.settings.database_url)
    try:
        await seed_uk_history(conn, day)
    finally:
        await conn.close()


def start_agents(day: Day, admin: str, stop: asyncio.Event) -> list[tuple[asyncio.Task[Any], asyncio.Event]]:
    out = []
    for key, count, prefix in AGENTS:
        started = asyncio.Event()
        task = asyncio.create_task(
            run_simulated_agents(
                day.settings,
                [(day.cids[key], 1)],
                count,
                stop=stop,
                talk=Distribution(3.0, "exp"),
                wrap=Distribution(1.0, "fixed"),
                seed=SEED,
                prefix=prefix,
                started=started,
                assign_token=admin,
                dispositions={"sale": 0.3, "not_interested": 0.5, "wrong_number": 0.1, "do_not_call": 0.1},
            )
        )
        out.append((task, started))
    return out


async def run_events(day: Day, tmp_path: Path) -> None:
    """The compliance events, each at its time on the virtual clock (relative to the edge), until the end."""
    schedule: list[tuple[float, str, Callable[[], Awaitable[None]]]] = [
        (-22, "DNC additions (RPC: company and state lists)", day.dnc_add_rpc),
        (-18, "consent revoked (RPC)", day.consent_revoke_rpc),
        (-14, "RND results imported (CLI)", lambda: day.rnd_import_cli(tmp_path / "rnd.csv")),
        (-8, "consent granted (CLI and RPC)", day.consent_grant),
        (4, "DNC additions (CLI)", day.dnc_add_cli),
        (8, "campaign list additions (RPC)", day.campaign_list_add),
    ]
    while (rel := (day.now() - day.edge).total_seconds()) < AFTER_S:
        while schedule and rel >= schedule[0][0]:
            _, what, act = schedule.pop(0)
            day.background.append(asyncio.create_task(act(), name=what))
            day.done.append((rel, what))
        await asyncio.sleep(0.25)
    await asyncio.gather(*day.background)


async def drain(day: Day, camp: campaign_pb2_grpc.CampaignServiceStub) -> None:
    """Pause every campaign and wait until PostgreSQL shows every placed call ended."""
    for cid in day.cids.values():
        await camp.PauseCampaign(campaign_pb2.PauseCampaignRequest(campaign_id=cid, reason="day over"))
    conn = await asyncpg.connect(day.settings.database_url)
    try:
        for _ in range(60):
            open_calls = await conn.fetchval(
                """SELECT count(*) FROM dial_attempts
                    WHERE campaign_id = ANY($1::text[]) AND dial_at IS NOT NULL AND end_at IS NULL""",
                list(day.cids.values()),
            )
            if open_calls == 0:
                return
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    raise AssertionError(f"{open_calls} calls still open 30 s after the campaigns were paused")


def day_env(offset: timedelta, addrs: dict[str, str]) -> dict[str, str]:
    return {
        "OUTDIAL_CLOCK_OFFSET_SECONDS": str(offset.total_seconds()),
        "OUTDIAL_SIM_TIME_SCALE": str(TIME_SCALE),
        "OUTDIAL_SIM_SEED": str(SEED),
        "OUTDIAL_SIM_P_LIVE": "0.3",
        "OUTDIAL_SIM_TALK_MEAN_S": str(3.0 * TIME_SCALE),
        "OUTDIAL_CAMPAIGN_FEEDER_INTERVAL_S": "1",
        "OUTDIAL_CAMPAIGN_WINDOW_MARGIN_S": "0",  # leads sit in the hopper at the edge: the gate must stop them
        "OUTDIAL_LOG_LEVEL": "WARNING",
        "OUTDIAL_METRICS_PORT": "0",
        "OUTDIAL_DEV": "1",
        **{f"OUTDIAL_{k.upper()}": v for k, v in addrs.items()},
    }


async def test_an_adversarial_compliance_day(database_url: str, redis_url: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    addrs = {f"{name}_addr": f"127.0.0.1:{free_port()}" for name in SERVICES}
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        dev=True,
        grace_seconds=3,
        health_interval_seconds=0.5,
        **addrs,
    )
    # The virtual day: today (UTC), the clock shifted so that the edge comes LEAD_IN_S after the start.
    real_now = datetime.now(UTC)
    edge = edge_instant(real_now.date())
    offset = edge - timedelta(seconds=LEAD_IN_S) - real_now
    env = day_env(offset, addrs)
    day = Day(settings, env, offset, edge, scenario())
    sup = Supervisor(settings, extra_env=env, log_path=str(tmp_path / "services.log"))
    stop_agents = asyncio.Event()
    agents: list[tuple[asyncio.Task[Any], asyncio.Event]] = []
    phases: dict[str, float] = {}
    try:
        infra = await sup.start()
        day.settings = settings.model_copy(update={"database_url": infra.database_url})
        for name in SERVICES:
            await wait_until_serving(day.settings.addr(name), 30.0)
        phases["services up"] = time.monotonic() - t0
        admin = make_token(Role.ADMIN, "admin")
        chans = {n: open_channel(day.settings, day.settings.addr(n), lambda: admin) for n in ("campaign",)}
        camp = campaign_pb2_grpc.CampaignServiceStub(chans["campaign"])
        await create_campaigns(day, camp)
        agents = start_agents(day, admin, stop_agents)
        await prepare(day, camp)
        for _, started in agents:
            await asyncio.wait_for(started.wait(), 30)
        for cid in day.cids.values():
            await camp.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=cid))
        phases["campaigns started"] = time.monotonic() - t0
        day.started_at = day.now() - timedelta(seconds=5)
        lead = (edge - day.now()).total_seconds()
        assert lead > 15, (
            f"set-up took too long: the campaigns started {lead:.0f} s before the edge (raise LEAD_IN_S)"
        )
        await run_events(day, tmp_path)
        phases["run over"] = time.monotonic() - t0
        await drain(day, camp)
        await asyncio.sleep(1.5)
        stop_agents.set()
        for t, _ in agents:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 20)
        for ch in chans.values():
            await ch.close()
        phases["drained"] = time.monotonic() - t0
        conn = await asyncpg.connect(infra.database_url)
        try:
            await checks.wait_call_records_complete(conn, list(day.cids.values()))
            await check_the_day(conn, day)
        finally:
            await conn.close()
        # The audit chain, recomputed straight from PostgreSQL (not through the service).
        out = await run_cli(day.cli_env(), "dnc", "verify", "--database-url", infra.database_url, "--json")
        verdict = json.loads(out[out.index("{") :])
        assert verdict.get("ok") is True, verdict
        phases["checked"] = time.monotonic() - t0
    finally:
        print(f"phases (s from the start): { {k: round(v, 1) for k, v in phases.items()} }")
        stop_agents.set()
        for t, _ in agents:
            if not t.done():
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
        for bg in day.background:
            bg.cancel()
        await asyncio.to_thread(sup.stop)


async def abandoned_calls(day: Day, dials: list[checks.Dial]) -> list[tuple[str, float, str]]:
    """The run's abandoned calls with the reason the dialer gave (its call events in Redis), for messages."""
    r = aioredis.from_url(day.settings.redis_url, decode_responses=True)
    try:
        events = {
            f["call_id"]: f.get("reason", "")
            for _id, f in await r.xrange(keys.call_events(), "-", "+")
            if f.get("type") == "call.abandoned"
        }
    finally:
        await r.aclose()
    key = {cid: k for k, cid in day.cids.items()}
    return [
        (key[d.campaign_id], round((d.dial_at - day.edge).total_seconds(), 1), events.get(d.call_id, "?"))
        for d in dials
        if d.outcome == "abandoned"
    ]


async def change_times(conn: asyncpg.Connection, day: Day) -> dict[str, dict[str, datetime]]:
    """When each mid-run change took effect, per number, from PostgreSQL."""
    listed = [n for v in day.listed.values() for n in v]
    roles = day.sc.roles
    rows = await conn.fetch(
        """SELECT number, min(added_at) AS at FROM dnc_entries
            WHERE number = ANY($1::text[]) AND list_id NOT LIKE 'national:%' GROUP BY number""",
        listed,
    )
    revoked = await conn.fetch(
        "SELECT number, min(revoked_at) AS at FROM dnc_consent WHERE number = ANY($1::text[]) GROUP BY number",
        roles["revoke"],
    )
    imported = await conn.fetchval("SELECT min(imported_at) FROM dnc_rnd_imports")
    return {
        "listed mid-run": {r["number"]: r["at"] for r in rows},
        "consent revoked": {r["number"]: r["at"] for r in revoked if r["at"]},
        "RND disconnect imported": {n: imported for n in roles["rnd_reassigned"]} if imported else {},
    }


async def check_the_day(conn: asyncpg.Connection, day: Day) -> None:
    sc, edge = day.sc, day.edge
    assert [w for _, w in day.done] == [
        "DNC additions (RPC: company and state lists)",
        "consent revoked (RPC)",
        "RND results imported (CLI)",
        "consent granted (CLI and RPC)",
        "DNC additions (CLI)",
        "campaign list additions (RPC)",
    ], day.done
    dials = await checks.load_dials(conn, list(day.cids.values()), since=day.started_at)
    by_campaign = {k: [d for d in dials if d.campaign_id == cid] for k, cid in day.cids.items()}
    print(
        f"compliance day: {len(dials)} dials ({ {k: len(v) for k, v in by_campaign.items()} }), "
        f"edge {edge.isoformat()}, events at {[round(t) for t, _ in day.done]} s from it"
    )

    # The invariants.
    checks.assert_every_dial_audited(dials)
    await checks.assert_no_listed_number_dialled(conn, dials)
    checks.assert_dials_inside_windows(dials)
    await checks.assert_number_caps(conn, dials)
    person = await checks.people(conn)
    fl_calls = Counter(person[d.lead_id] for d in dials if "FL" in d.states)
    print(f"most calls to one person under Florida law in the run: {max(fl_calls.values(), default=0)}")
    # FL, OK, MD: 3 calls per rolling 24 h across all of a person's numbers, in every campaign.
    await checks.assert_person_caps(conn, dials)
    print(f"abandoned calls (campaign, seconds from the edge, reason): {await abandoned_calls(day, dials)}")
    figures = checks.assert_abandonment_within_cap(dials)
    await checks.assert_uk_quiet_after_abandoned(conn, dials)

    # The scenario happened (else the invariants proved nothing about it): calls on both sides of the edge,
    # in the zones that closed and in those that opened, to the people with three numbers, and to the UK.
    us = [d for d in dials if d.jurisdiction == "US"]
    checks.at_least((d for d in us if d.dial_at < edge), "US calls before the edge", 10)
    checks.at_least((d for d in us if d.dial_at >= edge), "US calls after the edge", 10)
    spec = (
        window_from_json(by_campaign["us_a"][0].settings["calling_window"]) if by_campaign["us_a"] else None
    )
    assert spec is not None
    opened = [
        d
        for d in us
        if d.dial_at >= edge
        and not all(
            check_window(
                edge - timedelta(seconds=1), list(d.timezones), spec, jurisdiction="US", state=st
            ).allowed
            for st in d.states
        )
    ]
    checks.at_least(opened, "calls to leads whose window opened at the edge", 3)
    checks.at_least((d for d in us if "America/New_York" in d.timezones), "calls to the Eastern zone", 5)
    fl3 = {n for lead in sc.us_a if lead.group == "fl3" for n in lead.numbers}
    checks.at_least((d for d in us if d.number in fl3), "calls to Florida people with three numbers", 5)
    checks.at_least(by_campaign["us_b"], "calls of the campaign sharing people", 3)
    checks.at_least(by_campaign["uk"], "UK calls", 3)
    # The numbers the events were about were live: dialled before the change that stopped them.
    changes = await change_times(conn, day)
    first: dict[str, datetime] = {}
    for d in sorted(dials, key=lambda d: d.dial_at):
        first.setdefault(d.number, d.dial_at)
    live_before = {
        what: [n for n, t in at.items() if n in first and first[n] < t] for what, at in changes.items()
    }
    print(
        f"numbers dialled before the change that concerned them: { {k: len(v) for k, v in live_before.items()} }"
    )
    checks.at_least(live_before["listed mid-run"], "numbers listed mid-run that had been dialled before", 2)
    # ...and none of them was dialled on a decision made after it (the invariants above, named).
    after = {
        what: [d.call_id for d in dials if d.number in at and d.decision_time >= at[d.number]]
        for what, at in changes.items()
    }
    assert not any(after.values()), f"numbers dialled after the change that stopped them: {after}"
    checks.at_least(
        live_before["consent revoked"] + live_before["RND disconnect imported"],
        "numbers dialled on a consent before it was revoked or the RND showed it reassigned",
    )
    checks.at_least(
        (d for d in dials if d.number in sc.roles["uk_abandoned_long_ago"]),
        "UK calls 80 h after an abandoned one",
    )
    lag = max((d.dial_at - d.decided_at).total_seconds() for d in dials if d.decided_at)
    print(f"longest time from the DNC decision to the dial: {lag:.3f} s")
    for role in ("plain", "wireless_plain", "internal_before"):
        assert not [d for d in dials if d.number in sc.roles[role]], f"{role} numbers were dialled"
    for role in ("uk_abandoned_here", "uk_abandoned_elsewhere"):
        assert not [d for d in dials if d.number in sc.roles[role]], f"{role} numbers were dialled"
    # A call relying on a consent the RND covers says so in its audit record (the safe harbor's proof).
    for d in dials:
        if d.number in sc.roles["rnd_safe"] and d.audit_details and "rnd" in d.audit_details:
            imported_rnd = d.audit_details["rnd"]["results_total"] > 0
            assert d.audit_details["rnd"]["outcome"] == (
                "safe_harbor" if imported_rnd else "no_safe_harbor"
            ), d.audit_details
    print(f"abandoned / live answers per campaign: {figures}")
