"""The DNC service's operations over PostgreSQL (truth) and the Redis index (lookups), free of gRPC.

Consistency between the two: every list change is a PostgreSQL transaction that holds a *shared*
advisory lock, commits, and then updates the live index version before the RPC returns (so the next
CheckNumbers sees it). If the index update fails, the index is flagged dirty in PostgreSQL and the gate
answers "compliance.unavailable" until a rebuild. A rebuild takes the *exclusive* lock only for the moment
it opens its snapshot, builds a new version from it, switches, then replays every change made after the
snapshot (by ``changed_at``, database time), and deletes the old version.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from outdial.core.clock import Clock
from outdial.core.dnc_changes import mark_changed
from outdial.core.errors import InvalidArgument, NotFound, Unavailable
from outdial.core.limits import batch_limit
from outdial.core.redis import Redis
from outdial.dnc import gate, rnd, store
from outdial.dnc.anchor import Checkpoint
from outdial.dnc.audit import AuditEntry, AuditRecord, Verification, details_json
from outdial.dnc.gate import Decision, ListInfo
from outdial.dnc.index import DncIndex, IndexMissing
from outdial.dnc.numbers import InvalidNumber, jurisdiction_of, normalise, registry_line
from outdial.dnc.settings import DncSettings
from outdial.dnc.verify import Checkpointer, load_checkpoints, verify_log
from outdial.rules.consent import AUTODIALLED, Call, applicable, revocation_match
from outdial.rules.dialcheck import rule_refs
from outdial.rules.law import JURISDICTION_REGION, JURISDICTIONS
from outdial.rules.table import ConsentRow, RegistryFreshnessRow, RevocationWordsRow, RuleSet, rules_in_force

log = logging.getLogger("outdial.dnc")

WRITE_LOCK = 0x646E63_01  # shared by list writers, exclusive for a rebuild's snapshot
REBUILD_LOCK = 0x646E63_02  # one rebuild at a time
IMPORT_BATCH = 50_000
# Batches of numbers larger than this are parsed in a worker thread, off the event loop.
INLINE_PARSE = 256


@dataclass(frozen=True)
class Evidence:
    """What proves a consent: when the person gave it, how it was obtained (the source), the text they
    agreed to, the IP address or recording it came with, and a free reference (``what``)."""

    what: str
    obtained_at: datetime | None
    obtained_via: str
    text_agreed: str = ""
    ip_address: str = ""
    recording_ref: str = ""


@dataclass(frozen=True)
class CallSpec:
    """The call type a check is for: how the calls are placed (:mod:`outdial.rules.consent` methods) and
    what for. The default is the dialer's usual call: autodialled telemarketing."""

    methods: frozenset[str] = AUTODIALLED
    purpose: str = "telemarketing"


@dataclass
class InboundResult:
    revocation: bool
    matched: str
    number: str
    consents_revoked: int
    audit_seq: int


def _rules(jurisdiction: str, at: datetime) -> RuleSet:
    """The jurisdiction-wide rules in force at ``at`` (none for a number outside every known jurisdiction:
    only the internal and campaign lists bind it)."""
    if jurisdiction not in JURISDICTIONS:
        return RuleSet(jurisdiction, "", at.date(), ())
    return rules_in_force(jurisdiction, None, at)


@dataclass
class _Jur:
    """What one jurisdiction's numbers are checked against in one batch."""

    lists: list[ListInfo]
    registry: gate.Reason | None
    rows: list[ConsentRow]
    wireless_max_age: int | None
    national: ListInfo | None

    @property
    def registry_rows(self) -> bool:
        return any("registered_number" in r.tokens() for r in self.rows)

    @property
    def line_rows(self) -> bool:
        return any(r.tokens() & {"wireless", "landline"} for r in self.rows)


@dataclass(frozen=True)
class DialerDecision:
    """The pacing service's own dial-time decision about one number (calling window, caps, UK 72 h: the
    codes that block it, empty when allowed) and its inputs, recorded in the same audit record as the lists'."""

    blocked: tuple[str, ...]
    inputs: dict[str, Any]


@dataclass
class ImportResult:
    list_id: str
    lines: int = 0
    added: int = 0
    removed: int = 0
    invalid: int = 0
    invalid_samples: list[str] = field(default_factory=list)
    index_version: int = 0


@dataclass
class RndImportResult:
    rows: int = 0
    imported: int = 0
    already_present: int = 0
    rejected: int = 0
    rejects: list[rnd.RndReject] = field(default_factory=list)
    import_id: int = 0
    audit_seq: int = 0


@dataclass
class Explanation:
    number: str
    at: datetime
    decision: Decision
    records: list[AuditRecord]
    text: str


def _describe(exc: BaseException) -> str:
    if isinstance(exc, IndexMissing):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "PostgreSQL or Redis did not answer in time"
    name = type(exc).__module__.split(".")[0]
    if name == "redis":
        return "Redis is unreachable"
    if name == "asyncpg" or isinstance(exc, OSError):
        return "PostgreSQL or Redis is unreachable"
    return f"internal error ({type(exc).__name__})"


class DncEngine:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        clock: Clock,
        settings: DncSettings,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.pool = pool
        self.index = DncIndex(redis)
        self.clock = clock
        self.settings = settings
        self.checkpointer = checkpointer
        self.rebuild_wanted = asyncio.Event()

    async def _audit(self, conn: asyncpg.Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append to the audit log (the database stamps seq and time) and tell the checkpointer."""
        records = await store.append_audit(conn, entries)
        if records and self.checkpointer is not None:
            self.checkpointer.appended(len(records))
        return records

    async def _audit_tx(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        async with self.pool.acquire() as conn:
            return await self._audit(conn, entries)

    # ------------------------------------------------------------------ the gate

    async def check(
        self,
        raw: Sequence[str],
        campaign_id: str,
        jurisdiction: str,
        *,
        dial_time: bool,
        call_ids: Sequence[str],
        actor: str,
        call: CallSpec | None = None,
        dialer: Sequence[DialerDecision] = (),
    ) -> tuple[list[Decision], list[int]]:
        """Decisions (in request order) and, for dial-time checks, the audit seq of each. ``dialer``: the
        dialer's own decisions, parallel to ``raw`` (dial time only); a number it blocked is blocked, its
        codes first, and each audit record keeps both decisions' inputs."""
        batch_limit(len(raw), self.settings.max_batch, "numbers", "OUTDIAL_DNC_MAX_BATCH")
        if call_ids and len(call_ids) != len(raw):
            raise InvalidArgument("call_ids must be parallel to numbers", field="call_ids")
        if dialer and len(dialer) != len(raw):
            raise InvalidArgument("dialer must be parallel to numbers", field="dialer")
        if dialer and not dial_time:
            raise InvalidArgument("dialer decisions go with dial_time checks only", field="dialer")
        now = self.clock.now()
        try:
            decisions = await asyncio.wait_for(
                self._check(raw, campaign_id, jurisdiction, now, call or CallSpec(), inputs=dial_time),
                self.settings.check_timeout_seconds,
            )
        except Exception as exc:  # fail closed: whatever went wrong, do not dial
            log.warning("DNC check unavailable: %s", _describe(exc), exc_info=not isinstance(exc, OSError))
            if isinstance(exc, IndexMissing):
                self.rebuild_wanted.set()
            decisions = gate.unavailable(raw, _describe(exc))
        for d, dd in zip(decisions, dialer, strict=False):
            if dd.blocked:
                d.allowed = False
                d.reasons = [gate.Reason(code) for code in dd.blocked] + d.reasons
        seqs = [0] * len(decisions)
        if dial_time:
            entries = [
                AuditEntry(
                    actor=actor,
                    action="check",
                    number=d.number,
                    campaign_id=campaign_id,
                    call_id=call_ids[i] if call_ids else "",
                    result="allowed" if d.allowed else "blocked",
                    reason=",".join(r.code for r in d.reasons),
                    # the record's `at` is the database's time of writing; the decision's own instant (the
                    # service clock the registry age, expiries and consent were judged at) goes with it
                    details=details_json(
                        {
                            "jurisdiction": jurisdiction,
                            "reasons": [_reason_dict(r) for r in d.reasons],
                            "decided_at": now.isoformat(),
                            # the Reassigned Numbers Database check of a number that relies on consent
                            **({"rnd": d.rnd} if d.rnd is not None else {}),
                            # the call type, the line type, the consent rows and the consents relied on
                            **({"consent": d.consent} if d.consent is not None else {}),
                            # what each decision used: the lists' (here) and the dialer's (window, caps)
                            "inputs": {
                                "lists": d.inputs or {},
                                **({"dialer": dialer[i].inputs} if dialer else {}),
                            },
                        }
                    ),
                )
                for i, d in enumerate(decisions)
            ]
            try:
                records = await asyncio.wait_for(self._audit_tx(entries), self.settings.check_timeout_seconds)
                seqs = [r.seq for r in records]
            except Exception as exc:
                # A dial-time decision that cannot be recorded does not permit a dial.
                log.warning("DNC audit unavailable: %s", _describe(exc))
                decisions = gate.unavailable(raw, "the audit log cannot record the decision")
                seqs = [0] * len(decisions)
        return decisions, seqs

    def _jur(self, lists: Sequence[ListInfo], campaign_id: str, j: str, now: datetime) -> _Jur:
        rules = _rules(j, now)
        national = [li for li in lists if li.kind == "national" and li.jurisdiction == j]
        return _Jur(
            gate.applicable(lists, campaign_id, j),
            gate.registry_reason(
                lists,
                j,
                now,
                require=self.settings.require_registry,
                max_age_days=gate.max_age_days(rules, "national", self.settings.registry_max_age_days) or 0,
            ),
            rules.of(ConsentRow),
            gate.max_age_days(rules, "wireless"),
            national[0] if national else None,
        )

    def _plan(
        self, jur: _Jur, j: str, hits: Sequence[str], campaign_id: str, call: CallSpec, now: datetime
    ) -> tuple[Call, gate.LineType]:
        lt = gate.line_type(jur.lists, hits, j, now, jur.wireless_max_age)
        registered = any(h.startswith("national:") for h in hits)
        return Call(call.methods, call.purpose, lt.line, registered, campaign_id), lt

    def _decide(
        self,
        number: str,
        jur: _Jur,
        hits: Sequence[str],
        entries: dict[tuple[str, str], gate.EntryInfo],
        plan: tuple[Call, gate.LineType],
        consents: Sequence[rnd.ConsentInfo],
        results: Sequence[rnd.StoredResult],
        now: datetime,
    ) -> Decision:
        """One number's decision: its lists, then the consent rows binding its call (with the consents the
        Reassigned Numbers Database leaves usable)."""
        c, lt = plan
        a = (
            rnd.assess(list(consents), list(results), required=self.settings.rnd_required)
            if consents
            else None
        )
        creasons, cdetails = gate.consent_reasons(jur.rows, c, a.usable if a else [], now, lt, jur.national)
        # A registry or a wireless list that no rule of the jurisdiction speaks of: nothing opens it.
        if c.registered and not jur.registry_rows and c.purpose == "telemarketing":
            li = jur.national
            creasons.append(
                gate.Reason(
                    "dnc.national",
                    li.id if li else "",
                    "national",
                    since=li.registry_date if li else None,
                    detail="registered on the national do-not-call registry (no consent rule of this "
                    "jurisdiction opens it)",
                )
            )
        if lt.line == "wireless" and not jur.line_rows and c.methods & {"autodialled", "prerecorded"}:
            creasons.append(
                gate.Reason(
                    "wireless.no_consent",
                    lt.list_id,
                    "wireless",
                    detail="a wireless number (no consent rule of this jurisdiction opens it)",
                )
            )
        rnd_reason = a.reason if a is not None and a.reason is not None and creasons else None
        d = gate.decide(number, jur.lists, hits, entries, now, jur.registry, rnd_reason, creasons)
        d.rnd = a.details if a is not None else None
        d.consent = cdetails
        return d

    def _inputs(
        self,
        wanted: bool,
        d: Decision,
        j: str,
        jur: _Jur,
        lists: Sequence[ListInfo],
        hits: Sequence[str],
        consent_checked: bool,
        now: datetime,
        registry_info: dict[str, dict[str, Any]],
    ) -> dict[str, Any] | None:
        """What a dial-time lists decision used, for its audit record (registry_info: per jurisdiction, once
        per batch); None when not ``wanted`` (a check that is not recorded)."""
        if not wanted:
            return None
        if j not in registry_info:
            max_age = gate.max_age_days(_rules(j, now), "national", self.settings.registry_max_age_days)
            registry_info[j] = _registry_inputs(lists, j, now, max_age or 0, self.settings.require_registry)
        met = [
            q.get("met_by_consent_id")
            for q in (d.consent or {}).get("requirements", [])
            if q.get("met_by_consent_id")
        ]
        return {
            "decided_at": now.isoformat(),
            "jurisdiction": j,
            "lists_checked": [li.id for li in jur.lists],
            "hits": sorted(hits),
            "registry": registry_info[j],
            "consent_checked": consent_checked,
            "relied_on_consent_id": (d.rnd or {}).get("relied_on_consent_id") or (met[0] if met else None),
        }

    async def _check(
        self,
        raw: Sequence[str],
        campaign_id: str,
        jurisdiction: str,
        now: datetime,
        call: CallSpec,
        *,
        inputs: bool = False,
    ) -> list[Decision]:
        """The lists' decisions; ``inputs``: with what each used (for a dial-time record)."""
        if len(raw) > INLINE_PARSE:
            parsed = await asyncio.to_thread(_parse_checked, raw, jurisdiction)
        else:
            parsed = _parse_checked(raw, jurisdiction)
        async with self.pool.acquire() as conn:
            lists, dirty = await store.fetch_lists(conn)
            if dirty is not None:
                self.rebuild_wanted.set()
                raise IndexMissing(f"the lookup index is behind PostgreSQL since {dirty.isoformat()}")
            per_j: dict[str, _Jur] = {}
            registry_info: dict[str, dict[str, Any]] = {}
            probes: list[tuple[str, str, str]] = []
            for _, pe, j in parsed:
                if pe is None:
                    continue
                if j not in per_j:
                    per_j[j] = self._jur(lists, campaign_id, j, now)
                for li in per_j[j].lists:
                    probes.append((li.id, li.kind, pe))
            flags = await self.index.lookup(probes)
            hits: dict[str, list[str]] = defaultdict(list)
            small: set[str] = set()
            small_lists: set[str] = set()
            for (list_id, kind, e), hit in zip(probes, flags, strict=True):
                if hit:
                    hits[e].append(list_id)
                    if kind not in gate.BULK_KINDS:
                        small.add(e)
                        small_lists.add(list_id)
            details = await store.entry_details(conn, sorted(small), sorted(small_lists)) if small else {}
            plans: dict[str, tuple[Call, gate.LineType]] = {}
            need: set[str] = set()
            for _, pe, j in parsed:
                if pe is None or pe in plans:
                    continue
                plans[pe] = self._plan(per_j[j], j, hits.get(pe, []), campaign_id, call, now)
                if applicable(per_j[j].rows, plans[pe][0]):
                    need.add(pe)
            consents = await store.active_consents(conn, sorted(need), campaign_id, now) if need else {}
            results = await store.rnd_results(conn, sorted(consents)) if consents else {}
        out: list[Decision] = []
        for r, pe, j in parsed:
            if pe is None:
                out.append(gate.invalid(r, j))
                continue
            d = self._decide(
                pe,
                per_j[j],
                hits.get(pe, []),
                details,
                plans[pe],
                consents.get(pe, []),
                results.get(pe, []),
                now,
            )
            d.inputs = self._inputs(
                inputs, d, j, per_j[j], lists, hits.get(pe, ()), bool(consents.get(pe)), now, registry_info
            )
            out.append(d)
        return out

    # ------------------------------------------------------------------ list changes

    def resolve_list(
        self, list_id: str, kind: str, campaign_id: str, state: str, jurisdiction: str
    ) -> ListInfo:
        if list_id:
            kind_of = list_id.split(":", 1)[0]
            if kind_of not in gate.KIND_CODES:
                raise InvalidArgument(f"unknown list {list_id!r}", field="list_id")
        try:
            kind = kind or (list_id.split(":", 1)[0] if list_id else "internal")
            j = jurisdiction or ("US" if kind in ("national", "state", "wireless") else "")
            lid = list_id or gate.list_id_for(kind, campaign_id=campaign_id, state=state, jurisdiction=j)
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="list_kind") from exc
        if kind == "campaign":
            campaign_id = campaign_id or lid.split(":", 1)[1]
        if kind == "state":
            state = state or lid.rsplit("-", 1)[-1]
            j = j or lid.split(":", 1)[1].split("-", 1)[0]
        if kind in ("national", "wireless") and list_id:
            j = list_id.split(":", 1)[1]
        return ListInfo(
            lid,
            kind,
            _list_name(kind, campaign_id, state, j),
            j if kind != "internal" and kind != "campaign" else "",
            state.upper() if kind == "state" else "",
            campaign_id if kind == "campaign" else "",
        )

    @staticmethod
    def normalise_many(raw: Sequence[str], jurisdiction: str = "") -> tuple[list[str], list[str]]:
        region = JURISDICTION_REGION.get(jurisdiction, "US")
        ok: list[str] = []
        bad: list[str] = []
        for r in raw:
            try:
                ok.append(normalise(r, region))
            except InvalidNumber:
                bad.append(r)
        return list(dict.fromkeys(ok)), bad

    async def parse_batch(self, raw: Sequence[str], jurisdiction: str = "") -> tuple[list[str], list[str]]:
        """:meth:`normalise_many` for an AddNumbers/RemoveNumbers batch: at most ``max_batch`` numbers,
        parsed in a worker thread when the batch is large (libphonenumber costs ~20 µs a number)."""
        batch_limit(len(raw), self.settings.max_batch, "numbers", "OUTDIAL_DNC_MAX_BATCH")
        if len(raw) > INLINE_PARSE:
            return await asyncio.to_thread(self.normalise_many, raw, jurisdiction)
        return self.normalise_many(raw, jurisdiction)

    async def _apply_or_flag(self, changes: list[tuple[str, str, str, bool]]) -> None:
        try:
            await self.index.apply(changes)
        except IndexMissing as exc:
            try:
                await self.index.current()
            except IndexMissing:
                # Not built yet (first start) or lost with Redis's data: the next build reads PostgreSQL, where
                # the change is saved, and every check fails closed until then. Nothing lost.
                self.rebuild_wanted.set()
                return
            await self._flag_dirty(exc)
        except Exception as exc:
            log.exception("DNC index update failed: the index is marked dirty and will be rebuilt")
            await self._flag_dirty(exc)

    async def _block_first(self, changes: list[tuple[str, str, str, bool]], numbers: Sequence[str]) -> None:
        """Before a listing or a consent revocation is recorded: the additions into the lookup index, then
        the numbers marked as changed (core/dnc_changes.py), so that no dial checked before it leaves after
        it. Best effort here: when Redis cannot take it, the checks and the dialer's mark read fail closed,
        and the change is still recorded and applied (or the index flagged) after the commit."""
        if changes:
            try:
                await self.index.apply(changes)
            except Exception as exc:  # IndexMissing, RedisError: the post-commit apply flags it
                log.warning("DNC index not updated before the record (%s): after it", type(exc).__name__)
        try:
            await mark_changed(self.index.redis, numbers)
        except Exception as exc:
            log.warning(
                "DNC change not marked (%s): the dialer's read of it fails closed", type(exc).__name__
            )

    async def _flag_dirty(self, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            await store.set_dirty(self.pool)
        self.rebuild_wanted.set()
        raise Unavailable(
            "saved, but the lookup index could not be updated: dialing is blocked until it is rebuilt"
        ) from exc

    async def add(
        self,
        li: ListInfo,
        numbers: Sequence[str],
        *,
        actor: str,
        reason: str,
        source: str,
        expires_at: datetime | None,
        action: str = "add",
        call_id: str = "",
        campaign_id: str = "",
        extra_details: dict[str, str] | None = None,
    ) -> tuple[list[str], list[AuditRecord]]:
        # Blocked before it is recorded: a dial checked before this moment is stopped at the dial
        # (core/dnc_changes.py); after the commit the index gets the additions again (idempotent), in case
        # a rebuild switched versions meanwhile.
        await self._block_first([(li.id, li.kind, n, True) for n in numbers], numbers)
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", WRITE_LOCK)
            await store.ensure_list(conn, li)
            added = await store.add_entries(
                conn, li.id, numbers, source=source, actor=actor, reason=reason, at=now, expires_at=expires_at
            )
            if action == "opt_out":
                for n in numbers:
                    await store.revoke_consent(conn, n, None, actor, now)
            audited = numbers if action == "opt_out" else added
            records = await self._audit(
                conn,
                [
                    AuditEntry(
                        actor,
                        action,
                        n,
                        campaign_id or li.campaign_id,
                        call_id,
                        "ok" if n in added else "already_listed",
                        reason,
                        details_json(
                            {
                                "list_id": li.id,
                                "source": source,
                                "expires_at": expires_at.isoformat() if expires_at else None,
                                **(extra_details or {}),
                            }
                        ),
                    )
                    for n in audited
                ],
            )
        await self._apply_or_flag([(li.id, li.kind, n, True) for n in added])
        return added, records

    async def remove(self, li: ListInfo, numbers: Sequence[str], *, actor: str, reason: str) -> list[str]:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", WRITE_LOCK)
            if await store.get_list(conn, li.id) is None:
                raise NotFound(f"no list {li.id}")
            removed = await store.remove_entries(conn, li.id, numbers, actor=actor, reason=reason, at=now)
            await self._audit(
                conn,
                [
                    AuditEntry(
                        actor, "remove", n, li.campaign_id, "", "ok", reason, details_json({"list_id": li.id})
                    )
                    for n in removed
                ],
            )
        await self._apply_or_flag([(li.id, li.kind, n, False) for n in removed])
        return removed

    async def sweep_expired(self, limit: int = 10_000) -> int:
        """Take expired entries off their lists and out of the index, one audited "expire" record each.
        (The gate already ignores an expired entry; this keeps the lists and the index free of them.)"""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", WRITE_LOCK)
            expired = await store.expire_entries(conn, now, limit)
            await self._audit(
                conn,
                [
                    AuditEntry(
                        "system:expiry",
                        "expire",
                        n,
                        campaign_id,
                        "",
                        "ok",
                        "expired",
                        details_json({"list_id": list_id, "expires_at": expires_at.isoformat()}),
                    )
                    for list_id, _, campaign_id, n, expires_at in expired
                ],
            )
        if expired:
            await self._apply_or_flag([(list_id, kind, n, False) for list_id, kind, _, n, _ in expired])
            log.info("DNC expiry: %d entries taken off their lists", len(expired))
        return len(expired)

    async def keep_sweeping(self) -> None:
        """Background: sweep expired entries every ``expiry_sweep_interval_seconds`` (and at once again
        while a sweep finds a full batch)."""
        while True:
            n = 0
            try:
                n = await self.sweep_expired()
            except Exception as exc:
                log.warning("DNC expiry sweep: %s", _describe(exc))
            if n < 10_000:
                await asyncio.sleep(self.settings.expiry_sweep_interval_seconds)

    async def set_consent(
        self,
        number: str,
        kind: str,
        revoke: bool,
        campaign_id: str,
        evidence: Evidence,
        actor: str,
        expires_at: datetime | None,
        ebr_basis: str = "",
    ) -> AuditRecord:
        """Grant (with its evidence) or revoke. A revocation is read by the very next check: the gate reads
        consents from PostgreSQL on every check, so no cache stands between a revocation and a dial."""
        if revoke:
            await self._block_first([], [number])
        now = self.clock.now()
        consent_id = 0
        async with self.pool.acquire() as conn, conn.transaction():
            if revoke:
                n = await store.revoke_consent(conn, number, campaign_id or None, actor, now)
                result = "revoked" if n else "none_active"
            else:
                consent_id = await store.grant_consent(
                    conn,
                    number,
                    kind,
                    campaign_id,
                    evidence.what,
                    actor,
                    now,
                    expires_at,
                    obtained_at=evidence.obtained_at,
                    obtained_via=evidence.obtained_via,
                    text_agreed=evidence.text_agreed,
                    ip_address=evidence.ip_address,
                    recording_ref=evidence.recording_ref,
                    ebr_basis=ebr_basis,
                )
                result = "granted"
            (rec,) = await self._audit(
                conn,
                [
                    AuditEntry(
                        actor,
                        "consent",
                        number,
                        campaign_id,
                        "",
                        result,
                        kind,
                        details_json(
                            {
                                "evidence": evidence.what,
                                "obtained_at": evidence.obtained_at.isoformat()
                                if evidence.obtained_at
                                else None,
                                "obtained_via": evidence.obtained_via,
                                "revoke": revoke,
                                "expires_at": expires_at.isoformat() if expires_at else None,
                                **(
                                    {
                                        "consent_id": consent_id,
                                        "text_agreed": evidence.text_agreed,
                                        "ip_address": evidence.ip_address,
                                        "recording_ref": evidence.recording_ref,
                                        "ebr_basis": ebr_basis,
                                    }
                                    if not revoke
                                    else {}
                                ),
                            }
                        ),
                    )
                ],
            )
        return rec

    async def revoke_all_consent(
        self,
        number: str,
        *,
        actor: str,
        reason: str,
        campaign_id: str = "",
        call_id: str = "",
        extra_details: dict[str, str] | None = None,
    ) -> AuditRecord:
        """Revoke every consent for ``number``, in every campaign (a ``wrong_number`` outcome: the person
        who answered is not the one who consented), with one audited "consent" record."""
        await self._block_first([], [number])
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            n = await store.revoke_consent(conn, number, None, actor, now)
            (rec,) = await self._audit(
                conn,
                [
                    AuditEntry(
                        actor,
                        "consent",
                        number,
                        campaign_id,
                        call_id,
                        "revoked" if n else "none_active",
                        reason,
                        details_json(
                            {"revoke": True, "scope": "every_campaign", "revoked": n, **(extra_details or {})}
                        ),
                    )
                ],
            )
        return rec

    async def record_inbound(
        self,
        *,
        channel: str,
        sender: str,
        number: str,
        body: str,
        received_at: datetime,
        campaign_id: str,
        actor: str,
    ) -> InboundResult:
        """An SMS or email reply. One holding a revocation word or phrase (the rules table's
        ``revocation_words`` rows, every jurisdiction's: :func:`outdial.rules.consent.revocation_match`)
        revokes every consent of ``number`` and puts it on the internal list, in one transaction with its
        audit record, and the lookup index before returning: the next check refuses it. Any other message is
        audited ("inbound", result "no_revocation") and changes nothing."""
        rows = [r for j in JURISDICTIONS for r in _rules(j, self.clock.now()).of(RevocationWordsRow)]
        matched = revocation_match(rows, body)
        if matched:
            await self._block_first([("internal", "internal", number, True)], [number])
        now = self.clock.now()
        details: dict[str, Any] = {
            "channel": channel,
            "sender": sender,
            "received_at": received_at.isoformat(),
            "matched": matched,
            "body": body[:1000],
        }
        added: list[str] = []
        n = 0
        async with self.pool.acquire() as conn, conn.transaction():
            if matched:
                await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", WRITE_LOCK)
                internal = ListInfo("internal", "internal", "Company do-not-call list")
                await store.ensure_list(conn, internal)
                added = await store.add_entries(
                    conn,
                    "internal",
                    [number],
                    source=f"inbound_{channel}",
                    actor=actor,
                    reason=f"revocation by {channel} reply ({matched!r})",
                    at=now,
                    expires_at=None,
                )
                n = await store.revoke_consent(conn, number, None, actor, now)
                details.update({"list_id": "internal", "consents_revoked": n, "listed_now": bool(added)})
            (rec,) = await self._audit(
                conn,
                [
                    AuditEntry(
                        actor,
                        "inbound",
                        number,
                        campaign_id,
                        "",
                        "revoked" if matched else "no_revocation",
                        f"{channel}:{matched}" if matched else channel,
                        details_json(details),
                    )
                ],
            )
        if added:
            await self._apply_or_flag([("internal", "internal", number, True)])
        return InboundResult(bool(matched), matched, number, n, rec.seq)

    # ------------------------------------------------------------------ Reassigned Numbers Database

    async def import_rnd(self, chunks: AsyncIterator[bytes], *, actor: str, source: str) -> RndImportResult:
        """Store an RND results file's rows (rows with a bad value are rejected and named; a malformed file,
        or one over the size limit, is refused whole). Rows stored before are counted, not stored again."""
        max_bytes = self.settings.rnd_import_max_bytes
        buf = bytearray()
        async for chunk in chunks:
            buf += chunk
            if len(buf) > max_bytes:
                raise InvalidArgument(
                    f"the RND results file is larger than {max_bytes} bytes (OUTDIAL_DNC_RND_IMPORT_MAX_BYTES); "
                    "nothing was imported",
                    field="chunk",
                    error_id="file_too_large",
                )
        data = bytes(buf)
        now = self.clock.now()
        try:
            if len(data) > 64 * 1024:
                parsed = await asyncio.to_thread(rnd.parse_csv, data, now.date())
            else:
                parsed = rnd.parse_csv(data, now.date())
        except rnd.MalformedFile as exc:
            raise InvalidArgument(
                f"{exc}; nothing was imported", field="chunk", error_id="malformed_file"
            ) from exc
        digest = hashlib.sha256(data).hexdigest()
        res = RndImportResult(
            rows=parsed.data_rows,
            rejected=len(parsed.rejects),
            rejects=parsed.rejects[: rnd.MAX_REJECTS],
        )
        async with self.pool.acquire() as conn, conn.transaction():
            res.import_id, res.imported = await store.import_rnd(
                conn,
                parsed.rows,
                actor=actor,
                source=source,
                sha256=digest,
                data_rows=parsed.data_rows,
                rejected=res.rejected,
                at=now,
            )
            res.already_present = len(parsed.rows) - res.imported
            (rec,) = await self._audit(
                conn,
                [
                    AuditEntry(
                        actor,
                        "rnd_import",
                        "",
                        "",
                        "",
                        "ok" if not res.rejected else "with_rejects",
                        "",
                        details_json(
                            {
                                "import_id": res.import_id,
                                "source": source,
                                "sha256": digest,
                                "rows": res.rows,
                                "imported": res.imported,
                                "already_present": res.already_present,
                                "rejected": res.rejected,
                            }
                        ),
                    )
                ],
            )
            res.audit_seq = rec.seq
        return res

    async def rnd_for(self, number: str) -> list[rnd.StoredResult]:
        async with self.pool.acquire() as conn:
            return (await store.rnd_results(conn, [number])).get(number, [])

    # ------------------------------------------------------------------ registry import

    async def import_registry(
        self,
        li: ListInfo,
        mode: str,
        downloaded_at: datetime,
        chunks: AsyncIterator[bytes],
        *,
        actor: str,
        source: str,
    ) -> ImportResult:
        now = self.clock.now()
        res = ImportResult(li.id)
        jurisdiction = li.jurisdiction or "US"

        parse = _LineParser(res, mode, jurisdiction, self.settings.import_max_line_bytes)

        max_bytes = self.settings.import_max_bytes

        async def rows(sink: Callable[[list[tuple[str, str]]], Awaitable[None]]) -> None:
            # Memory: one chunk plus the unfinished last line (at most max_line); each byte is copied a
            # bounded number of times (a bytearray, trimmed in place), whatever the chunk sizes.
            batch: list[tuple[str, str]] = []
            buf = bytearray()
            total = 0
            async for chunk in chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise InvalidArgument(
                        f"the registry file is larger than {max_bytes} bytes (OUTDIAL_DNC_IMPORT_MAX_BYTES); "
                        "nothing was imported",
                        field="chunk",
                        error_id="file_too_large",
                    )
                start = len(buf)
                buf += chunk
                cut = buf.rfind(b"\n", start)
                if cut < 0:
                    parse.check_tail(len(buf))
                    continue
                block = bytes(buf[: cut + 1])
                del buf[: cut + 1]
                if len(block) > 64 * 1024:
                    batch.extend(await asyncio.to_thread(parse.block, block))
                else:
                    batch.extend(parse.block(block))
                parse.check_tail(len(buf))
                if len(batch) >= IMPORT_BATCH:
                    await sink(batch)
                    batch = []
            batch.extend(parse.block(bytes(buf)))
            if batch:
                await sink(batch)

        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", WRITE_LOCK)
            await store.ensure_list(conn, li)
            res.added, res.removed, added, removed = await store.import_staged(
                conn, li.id, mode, rows, actor=actor, source=source, at=now
            )
            await store.record_import(
                conn, li.id, mode, downloaded_at, now, actor, res.lines, res.added, res.removed, res.invalid
            )
            await self._audit(
                conn,
                [
                    AuditEntry(
                        actor,
                        "import",
                        "",
                        "",
                        "",
                        "ok",
                        mode,
                        details_json(
                            {
                                "list_id": li.id,
                                "mode": mode,
                                "downloaded_at": downloaded_at.isoformat(),
                                "lines": res.lines,
                                "added": res.added,
                                "removed": res.removed,
                                "invalid": res.invalid,
                                "source": source,
                            }
                        ),
                    )
                ],
            )
        if mode == "full" or len(added) + len(removed) > 1_000_000:
            version, _ = await self.rebuild(actor)
            res.index_version = version
        else:
            await self._apply_or_flag(
                [(li.id, li.kind, n, True) for n in added] + [(li.id, li.kind, n, False) for n in removed]
            )
            res.index_version = await self.index.current()
        return res

    # ------------------------------------------------------------------ index rebuild

    async def rebuild(self, actor: str) -> tuple[int, int]:
        """Build a new index version from PostgreSQL, switch to it, delete the old one."""
        async with self.pool.acquire() as lock_conn:
            await lock_conn.execute("SELECT pg_advisory_lock($1)", REBUILD_LOCK, timeout=store.BULK_TIMEOUT)
            try:
                return await self._rebuild(actor)
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)

    async def _rebuild(self, actor: str) -> tuple[int, int]:
        version = await self.index.new_version()
        counts: dict[str, int] = {}
        async with self.pool.acquire() as snap:
            async with snap.transaction(isolation="repeatable_read", readonly=True):
                async with self.pool.acquire() as excl:
                    async with excl.transaction():
                        # try, never queue: a queued exclusive request would stall every opt-out
                        # behind a long registry import
                        while not await excl.fetchval("SELECT pg_try_advisory_xact_lock($1)", WRITE_LOCK):
                            await asyncio.sleep(0.2)
                        # the snapshot is taken by the first query, while no writer is in flight
                        snapshot_at = await store.db_now(snap)
                lists, _ = await store.fetch_lists(snap)
                for li in lists:
                    if li.kind in gate.BULK_KINDS:
                        writer = self.index.bitmap_writer(version, li.id)
                        await store.copy_digits(snap, li.id, writer.feed)
                        counts[li.id] = await writer.close()
                    else:
                        counts[li.id] = await self.index.write_set(
                            version, li.id, await store.current_numbers(snap, li.id)
                        )
        await self.index.mark_built(version, counts)
        old = await self.index.switch(version)
        kinds = {li.id: li.kind for li in lists}
        async with self.pool.acquire() as conn:
            changed = await store.changed_since(conn, snapshot_at)
            if changed:
                extra = {li.id: li.kind for li in (await store.fetch_lists(conn))[0]}
                kinds.update(extra)
                await self.index.apply([(lid, kinds[lid], n, present) for lid, n, present in changed])
            await store.clear_dirty(conn, snapshot_at)
        if old is not None and old != version:
            await self.index.drop(old)
        total = sum(counts.values())
        await self._audit_tx(
            [
                AuditEntry(
                    actor,
                    "rebuild",
                    "",
                    "",
                    "",
                    "ok",
                    "",
                    details_json(
                        {"version": version, "numbers": total, "lists": counts, "replayed": len(changed)}
                    ),
                )
            ],
        )
        log.info("DNC index version %d built: %d numbers in %d lists", version, total, len(counts))
        return version, total

    async def keep_index(self) -> None:
        """Background: (re)build the index when it is missing (first start, Redis lost it) or dirty."""
        while True:
            try:
                need = False
                try:
                    await self.index.current()
                except IndexMissing:
                    need = True
                if not need:
                    async with self.pool.acquire() as conn:
                        _, dirty = await store.fetch_lists(conn)
                    need = dirty is not None
                if need:
                    await self.rebuild("system:index-keeper")
            except Exception as exc:
                log.warning("DNC index keeper: %s", _describe(exc))
            self.rebuild_wanted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rebuild_wanted.wait(), self.settings.keeper_interval_seconds)

    # ------------------------------------------------------------------ audit

    async def verify(self, from_seq: int) -> Verification:
        """The chain, checked against every signed checkpoint of the sink (the service's own public key)."""
        cp = self.checkpointer
        checkpoints: list[Checkpoint] = []
        if cp is not None:
            try:
                checkpoints, bad = await load_checkpoints(cp.sink, [cp.public_key])
            except OSError as exc:  # the sink, not PostgreSQL: say which
                raise Unavailable(
                    f"the audit checkpoints cannot be read ({cp.sink.url}): {exc.strerror or exc}"
                ) from exc
            if bad is not None:
                return Verification(ok=False, first_bad_seq=bad[0], problem=bad[1])
        async with self.pool.acquire() as conn:
            return await verify_log(conn, from_seq, checkpoints)

    async def explain(
        self, number: str, at: datetime, campaign_id: str, call: CallSpec | None = None
    ) -> Explanation:
        call = call or CallSpec()
        j = jurisdiction_of(number)
        async with self.pool.acquire() as conn:
            lists = await store.lists_at(conn, at)
            rows = await store.entries_at(conn, number, at)
            jur = self._jur(lists, campaign_id, j, at)
            app_ids = {li.id for li in jur.lists}
            hits = [r["list_id"] for r in rows if r["list_id"] in app_ids]
            plan = self._plan(jur, j, hits, campaign_id, call, at)
            consents = (await store.active_consents(conn, [number], campaign_id, at)).get(number, [])
            results = (await store.rnd_results(conn, [number], at)).get(number, []) if consents else []
            records = await store.audit_for_number(conn, number, at)
        entries = {(r["list_id"], number): gate.EntryInfo(r["added_at"], r["expires_at"]) for r in rows}
        d = self._decide(number, jur, hits, entries, plan, consents, results, at)
        lines = [f"At {at.isoformat()} {number} was {'ALLOWED' if d.allowed else 'BLOCKED'} by the lists."]
        for r in d.reasons:
            lines.append(f"- {r.code}: {r.detail}" + (f" (since {r.since.isoformat()})" if r.since else ""))
        call_of, lt = plan
        lines.append(
            f"Call type: {'+'.join(sorted(call_of.methods))} {call_of.purpose}; line type: {lt.line or 'unknown'}"
            + (f" ({lt.detail})" if lt.detail else "")
            + f"; on the national registry: {'yes' if call_of.registered else 'no'}."
        )
        for q in (d.consent or {}).get("requirements", []):
            met = q["met_by_consent_id"]
            lines.append(
                f"Rule {q['rule']} ({q['call_type']}: {' or '.join(q['requires_any'])}): "
                + (f"met by consent #{met} ({q['met_by_kind']})." if met else "not met.")
            )
        if d.rnd is not None:
            rd = d.rnd
            lines.append(
                f"Consent and the Reassigned Numbers Database: {rd['outcome']} "
                f"({len(rd['consents'])} consent(s) in force, {rd['results_total']} RND answer(s) imported by then"
                + (f"; relied on consent #{rd['relied_on_consent_id']}" if rd["relied_on_consent_id"] else "")
                + ")."
            )
        checks = [r for r in records if r.action == "check"]
        if checks:
            c = checks[-1]
            lines.append(
                f"Nearest dial-time decision: #{c.seq} at {c.at.isoformat()} for campaign {c.campaign_id or '-'} "
                f"call {c.call_id or '-'}: {c.result}{' (' + c.reason + ')' if c.reason else ''}."
            )
        else:
            lines.append("No dial-time decision was recorded for this number at or before that time.")
        return Explanation(number, at, d, records, "\n".join(lines))


def _registry_inputs(
    lists: Sequence[ListInfo], jurisdiction: str, now: datetime, max_age_days: int, required: bool
) -> dict[str, Any]:
    """The national registry copy a decision relied on: its download date, age, the age limit applied and
    the versions of the freshness rule rows in force for the jurisdiction."""
    national = [li for li in lists if li.kind == "national" and li.jurisdiction == jurisdiction]
    downloaded = national[0].registry_date if national else None
    try:
        rows = rules_in_force(jurisdiction, None, now).of(RegistryFreshnessRow)
    except ValueError:
        rows = []
    return {
        "list_id": national[0].id if national else "",
        "downloaded_at": downloaded.isoformat() if downloaded else None,
        "age_days": (now - downloaded).days if downloaded else None,
        "max_age_days": max_age_days,
        "required": required,
        "rules": rule_refs(rows),
    }


def _parse_checked(raw: Sequence[str], jurisdiction: str) -> list[tuple[str, str | None, str]]:
    """(raw, E.164 or None, the jurisdiction or the parse error) of each number of a CheckNumbers batch."""
    parsed: list[tuple[str, str | None, str]] = []
    for r in raw:
        try:
            e164 = normalise(r)
        except InvalidNumber as exc:
            parsed.append((r, None, str(exc)))
            continue
        parsed.append((r, e164, jurisdiction or jurisdiction_of(e164)))
    return parsed


def _list_name(kind: str, campaign_id: str, state: str, j: str) -> str:
    return {
        "internal": "Company do-not-call list",
        "campaign": f"Campaign {campaign_id} do-not-call list",
        "national": f"National registry {j}",
        "state": f"State list {j}-{state.upper()}",
        "wireless": f"Wireless numbers {j}",
    }[kind]


def _reason_dict(r: gate.Reason) -> dict[str, str]:
    return {
        "code": r.code,
        "list_id": r.list_id,
        "since": r.since.isoformat() if r.since else "",
        "expires_at": r.expires_at.isoformat() if r.expires_at else "",
    }


class _LineParser:
    """One registry-file line -> ("+" or "-", E.164), counting lines and invalid ones (with samples).
    FULL files hold one number a line; CHANGES files "+N" / "-N" or two columns (number and A/D)."""

    def __init__(self, res: ImportResult, mode: str, jurisdiction: str, max_line: int = 1024) -> None:
        self.res = res
        self.mode = mode
        self.jurisdiction = jurisdiction
        self.max_line = max_line
        self.physical = 0  # physical lines read (for the messages)

    def too_long(self, line_no: int) -> InvalidArgument:
        return InvalidArgument(
            f"line {line_no} of the registry file is longer than {self.max_line} bytes "
            "(OUTDIAL_DNC_IMPORT_MAX_LINE_BYTES); nothing was imported",
            field="chunk",
            error_id="line_too_long",
        )

    def check_tail(self, size: int) -> None:
        """The unfinished last line (``size`` bytes so far) is already too long: refuse now."""
        if size > self.max_line:
            raise self.too_long(self.physical + 1)

    def block(self, data: bytes) -> list[tuple[str, str]]:
        """The rows of whole lines (``data`` ends at a newline, or is the file's last line)."""
        out: list[tuple[str, str]] = []
        for line in data.decode("utf-8", "replace").splitlines():
            self.physical += 1
            if len(line) > self.max_line:
                raise self.too_long(self.physical)
            p = self(line)
            if p is not None:
                out.append(p)
        return out

    def bad(self, line: str) -> None:
        self.res.invalid += 1
        if len(self.res.invalid_samples) < 10:
            self.res.invalid_samples.append(line[:64])

    def __call__(self, line: str) -> tuple[str, str] | None:
        s = line.strip().strip("\ufeff")
        if not s or s.startswith("#"):
            return None
        self.res.lines += 1
        op = "+"
        if self.mode == "changes":
            if s[0] in "+-":
                op, s = s[0], s[1:].strip()
            else:
                cols = s.replace(",", " ").replace("|", " ").replace(";", " ").split()
                flags = [c for c in cols if c.upper() in ("A", "D", "ADD", "DEL", "DELETE")]
                nums = [c for c in cols if c not in flags]
                if len(flags) != 1 or len(nums) != 1:
                    self.bad(line)
                    return None
                op = "-" if flags[0].upper().startswith("D") else "+"
                s = nums[0]
        e = registry_line(s, self.jurisdiction)
        if e is None:
            self.bad(line)
            return None
        return op, e
