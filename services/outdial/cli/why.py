"""``outdial why NUMBER --at T``: why a number was, or would have been, dialled or blocked at a time, answered
for every rule of the dial-time gate: the campaign's own state (from a record only), the do-not-call lists,
consent, the Reassigned Numbers Database, the calling window, the per-person cap and the UK 72-hour rule.

The answer comes from the audit record of the dial-time decision nearest ``T`` (within ``--within``) when
there is one: that record holds the decision and every input it used (``details.inputs``, written by the DNC
service for the pacing gate). Otherwise each rule is evaluated against the state at ``T``: the lists, consent
and RND by the DNC service (``ExplainDecision``, as of ``T``), the window and the cap here with the same
function the gate runs (:func:`outdial.rules.dialcheck.evaluate`), the applicable states and candidate zones
from :func:`outdial.rules.place.place_of` like the gate (the number's area code, plus ``--state`` and
``--zone`` when given), the campaign's window from the campaign service, and the attempts counted from the
audit log's allowed dial-time decisions to the number in the 24 h before ``T`` (the person's other numbers
are known only to the gate, whose recorded decisions count them). The UK 72-hour rule needs the time
of the last abandoned call, which only a decision record holds: without one it is reported as unknown.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from outdial.cli.base import channel, command, fail, print_json
from outdial.cli.dnc import _auth, _stub, _time
from outdial.core.config import Settings
from outdial.core.jurisdictions import jurisdiction_from_pb
from outdial.rules.caps import DAY
from outdial.rules.dialcheck import describe, evaluate
from outdial.rules.place import place_of
from outdial.rules.windows import WindowSpec, window_from_json
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, dnc_pb2

RULES = ("campaign", "lists", "consent", "rnd", "window", "caps", "uk_72h")
_CAP_KEYS = ("attempts_in_period", "period_hours", "max_calls", "law_max", "campaign_max")
#: kept since the inputs' version 2 (caps per person, every applicable state)
_CAP_KEYS_V2 = ("person_numbers", "law_max_by_state", "number_attempts_in_period")
_WINDOW_KINDS = ("calling_window", "holiday_ban")


def rule_of(code: str) -> str:
    """Which rule a block code belongs to."""
    if code.startswith(("campaign.", "caller_id.")) or code == "window.invalid_config":
        return "campaign"
    if code.startswith("window."):
        return "window"
    if code == "cap.uk_abandon_72h":
        return "uk_72h"
    if code.startswith("cap."):
        return "caps"
    if code.startswith("rnd."):
        return "rnd"
    if code.startswith(("consent.", "wireless.", "line_type.")) or code == "dnc.national":
        return "consent"
    return "lists"


def _codes(codes: Sequence[str], rule: str) -> list[str]:
    return [c for c in codes if c and rule_of(c) == rule]


def _rules_of(dialer: dict[str, Any], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """The recorded rule versions of ``kinds``, each with its source and value from the rules table."""
    return [describe(r) for r in dialer.get("rules", []) if r.get("kind") in kinds]


def from_record(rec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every rule's answer from one dial-time audit record (``rec``: seq, at, result, reason, details)."""
    details = json.loads(rec["details"] or "{}")
    codes = [c for c in (rec.get("reason") or "").split(",") if c]
    inputs = details.get("inputs") or {}
    src = f"audit record #{rec['seq']} ({rec['at']})"
    out: dict[str, dict[str, Any]] = {}
    lists = _codes(codes, "lists")
    out["lists"] = {"allowed": not lists, "codes": lists, "inputs": inputs.get("lists"), "source": src}
    consent = _codes(codes, "consent")
    rnd = details.get("rnd")
    out["consent"] = {
        "allowed": not consent,
        "codes": consent,
        "relied_on_consent_id": (rnd or {}).get("relied_on_consent_id"),
        "consents": (rnd or {}).get("consents", []),
        "note": "" if rnd else "no list hit that consent could override: consent was not needed",
        "source": src,
    }
    out["rnd"] = {
        "allowed": not _codes(codes, "rnd"),
        "codes": _codes(codes, "rnd"),
        "outcome": (rnd or {}).get("outcome", "not_needed"),
        "details": rnd,
        "source": src,
    }
    dialer = inputs.get("dialer")
    camp = _codes(codes, "campaign")
    out["campaign"] = {"allowed": not camp, "codes": camp, "source": src}
    if dialer and "campaign" in dialer:
        # the campaign itself was blocked: the per-number rules were not evaluated
        out["campaign"].update(facts=dialer["campaign"])
        for rule in ("window", "caps", "uk_72h"):
            out[rule] = {
                "allowed": None,
                "codes": _codes(codes, rule),
                "note": "not evaluated: the campaign itself was blocked",
                "source": src,
            }
        return out
    if dialer and "unavailable" in dialer:
        # the facts the rules need (who the person is, what they were called) could not be read: blocked
        un = dialer["unavailable"]
        out["lists"]["codes"] = [c for c in lists if c != "compliance.unavailable"]
        out["lists"]["allowed"] = not out["lists"]["codes"]
        for rule in ("window", "caps", "uk_72h"):
            out[rule] = {
                "allowed": False if rule == "caps" else None,
                "codes": ["compliance.unavailable"] if rule == "caps" else _codes(codes, rule),
                "note": f"not evaluated: the {un.get('facts', 'facts')} could not be read ({un.get('detail', '')})",
                "source": src,
            }
        return out
    if not dialer:
        # a record written before the dialer's inputs were kept: only its codes tell
        for rule in ("window", "caps", "uk_72h"):
            c = _codes(codes, rule)
            out[rule] = {
                "allowed": None if not c else False,
                "codes": c,
                "note": "this record predates the dialer's inputs: only a block would show here",
                "source": src,
            }
        return out
    win = dialer.get("window", {})
    out["window"] = {
        "allowed": bool(win.get("allowed")),
        "codes": _codes(codes, "window"),
        "zones": win.get("zones", []),
        "campaign_window": win.get("campaign_window"),
        "next_open": win.get("next_open"),
        "jurisdiction": dialer.get("jurisdiction"),
        "state": dialer.get("state"),
        "place": dialer.get("place"),
        "states": win.get("states"),
        "rules": _rules_of(dialer, _WINDOW_KINDS),
        "source": src,
    }
    cap = dialer.get("cap", {})
    out["caps"] = {
        "allowed": bool(cap.get("allowed")),
        "codes": _codes(codes, "caps"),
        **{k: cap.get(k) for k in (*_CAP_KEYS, *_CAP_KEYS_V2)},
        "rules": _rules_of(dialer, ("call_cap",)),
        "source": src,
    }
    uk = dialer.get("uk_abandon")
    out["uk_72h"] = (
        {
            **uk,
            "codes": _codes(codes, "uk_72h"),
            "rules": _rules_of(dialer, ("abandon_quiet",)),
            "source": src,
        }
        if uk is not None
        else {"allowed": True, "applies": False, "note": "not a UK campaign", "source": src}
    )
    return out


def from_state(
    explain_codes: Sequence[str],
    explain_text: str,
    local: dict[str, Any],
    local_codes: Sequence[str],
    at: datetime,
) -> dict[str, dict[str, Any]]:
    """Every rule's answer evaluated against the state at ``at``: the DNC service's decision as of then
    (``explain_codes``) and the local rules' (:func:`outdial.rules.dialcheck.evaluate`)."""
    src = f"evaluated against the state at {at.isoformat()}"
    # (no "campaign" rule: whether the campaign was running then is known only from a recorded decision)
    out: dict[str, dict[str, Any]] = {}
    for rule in ("lists", "consent", "rnd"):
        c = _codes(explain_codes, rule)
        out[rule] = {"allowed": not c, "codes": c, "source": src}
    out["lists"]["explanation"] = explain_text
    win = local["window"]
    out["window"] = {
        "allowed": win["allowed"],
        "codes": _codes(local_codes, "window"),
        "zones": win["zones"],
        "campaign_window": win["campaign_window"],
        "next_open": win["next_open"],
        "jurisdiction": local["jurisdiction"],
        "state": local["state"],
        "place": local["place"],
        "states": win["states"],
        "rules": _rules_of(local, _WINDOW_KINDS),
        "source": src,
    }
    cap = local["cap"]
    out["caps"] = {
        "allowed": cap["allowed"],
        "codes": _codes(local_codes, "caps"),
        **{k: cap[k] for k in (*_CAP_KEYS, *_CAP_KEYS_V2)},
        "counted_from": (
            "allowed dial-time decisions to this number in the audit log (the person's other numbers are known"
            " only to the gate: its recorded decisions count them)"
        ),
        "rules": _rules_of(local, ("call_cap",)),
        "source": src,
    }
    if local["jurisdiction"] == "UK":
        out["uk_72h"] = {
            "allowed": None,
            "note": "unknown: the time of the last abandoned call is kept only in a decision's record",
            "rules": _rules_of(local, ("abandon_quiet",)),
            "source": src,
        }
    else:
        out["uk_72h"] = {"allowed": True, "applies": False, "note": "not a UK campaign", "source": src}
    return out


def verdict(rules: dict[str, dict[str, Any]]) -> str:
    vals = [rules[r].get("allowed") for r in RULES if r in rules]
    if any(v is False for v in vals):
        return "BLOCKED"
    if any(v is None for v in vals):
        return "UNKNOWN"
    return "ALLOWED"


def _window_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"  jurisdiction {r.get('jurisdiction')}, state {r.get('state') or '-'}"]
    place = r.get("place")
    if place:
        lines.append(
            f"  address state {place.get('address_state') or '-'}, area-code state "
            f"{place.get('area_code_state') or '-'}: every applicable state's window in every zone"
        )
    for st in r.get("states") or []:
        lines.append(
            f"  state {st.get('state') or '(jurisdiction)'}: "
            + ("open" if st.get("allowed") else f"closed ({st.get('reason')})")
        )
    for z in r["zones"]:
        lines.append(
            f"  zone {z.get('zone')}: local {z.get('local_time', '?')} ({z.get('weekday', '?')}), "
            f"hours in force {z.get('hours_in_force', 'unknown zone')}"
        )
    if r.get("next_open"):
        lines.append(f"  next open: {r['next_open']}")
    return lines


def _cap_lines(r: dict[str, Any]) -> list[str]:
    def n(v: Any) -> str:
        return "none" if v is None else str(v)

    if r.get("person_numbers") is None:  # a record from before the caps counted per person
        return [
            f"  {r['attempts_in_period']} attempt(s) in the {r['period_hours']} h before; cap "
            f"{n(r['max_calls'])} (law {r['law_max']}, campaign {r['campaign_max']})"
        ]
    return [
        f"  {r['attempts_in_period']} attempt(s) in the {r['period_hours']} h before to the person's "
        f"{len(r['person_numbers'])} number(s); law cap per person {n(r['law_max'])} "
        f"(by state: {r.get('law_max_by_state')})",
        f"  {r.get('number_attempts_in_period')} attempt(s) to this number; campaign cap {n(r['campaign_max'])}",
    ]


def render(answer: dict[str, Any]) -> str:
    """The answer for a person: one block per rule."""
    lines = [
        f"{answer['number']} at {answer['at']}: {answer['verdict']}"
        + (f" (campaign {answer['campaign_id']})" if answer["campaign_id"] else ""),
        f"source: {answer['source']}",
    ]
    for name in RULES:
        if name not in answer["rules"]:
            continue
        r = answer["rules"][name]
        state = {True: "ok", False: "BLOCKED", None: "unknown"}[r.get("allowed")]
        codes = f" ({', '.join(r['codes'])})" if r.get("codes") else ""
        lines.append(f"\n[{name}] {state}{codes}")
        if name == "window" and r.get("zones") is not None:
            lines.extend(_window_lines(r))
        if name == "caps" and "attempts_in_period" in r:
            lines.extend(_cap_lines(r))
        if name == "campaign" and r.get("facts"):
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(r["facts"].items())))
        if name == "consent" and r.get("relied_on_consent_id"):
            lines.append(f"  relied on consent #{r['relied_on_consent_id']}")
        if name == "rnd" and r.get("outcome"):
            lines.append(f"  Reassigned Numbers Database: {r['outcome']}")
        if name == "uk_72h" and r.get("last_abandoned_at"):
            lines.append(f"  last abandoned call {r['last_abandoned_at']}, quiet {r.get('quiet_hours')} h")
        for row in r.get("rules", []):
            lines.append(
                f"  rule {row['id']} (from {row['effective_from']}"
                + (f" until {row['effective_until']}" if row.get("effective_until") else "")
                + f"): {row.get('value', '')} [{row['source']}]"
                + (" (uncertain)" if row.get("uncertain") else "")
            )
        if r.get("note"):
            lines.append(f"  {r['note']}")
        if name == "lists" and r.get("explanation"):
            lines.extend(f"  {ln}" for ln in r["explanation"].splitlines())
    return "\n".join(lines)


def _at(ts: Any) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


async def _records(
    args: argparse.Namespace, settings: Settings, number: str, since: datetime, until: datetime
) -> list[Any]:
    req = dnc_pb2.QueryAuditRequest(number=number, action="check", campaign_id=args.campaign or "")
    req.since.FromDatetime(since)
    req.until.FromDatetime(until)
    out: list[Any] = []
    async for page in _stub(args, settings).QueryAudit(req, timeout=60, metadata=_auth(args, settings)):
        out.extend(page.records)
    return out


async def _campaign(args: argparse.Namespace, settings: Settings) -> tuple[WindowSpec, int | None, str]:
    """The campaign's window, own cap and jurisdiction (its current settings)."""
    ch = args.campaign_channel = channel(args, settings, "campaign")
    resp = await campaign_pb2_grpc.CampaignServiceStub(ch).GetCampaign(
        campaign_pb2.GetCampaignRequest(campaign_id=args.campaign), timeout=30
    )
    c = resp.campaign
    cw = c.calling_window
    spec = window_from_json(
        {
            "start_local": cw.start_local,
            "end_local": cw.end_local,
            "days_of_week": list(cw.days_of_week),
            "holiday_dates": list(cw.holiday_dates),
            "skip_public_holidays": cw.skip_public_holidays,
        }
        if c.HasField("calling_window")
        else {}
    )
    return spec, (c.max_calls_per_number_24h or None), jurisdiction_from_pb(c.jurisdiction, "US")


async def why(args: argparse.Namespace, settings: Settings) -> int:
    at = _at(_time(args.at, "--at"))
    within = timedelta(minutes=args.within)
    if args.within < 0:
        return fail("--within must be 0 or more minutes", 2)
    stub = _stub(args, settings)
    req = dnc_pb2.ExplainDecisionRequest(number=args.number, campaign_id=args.campaign or "")
    req.at.FromDatetime(at)
    explained = await stub.ExplainDecision(req, timeout=30)
    number = explained.number
    near = await _records(args, settings, number, at - within, at + within)
    rec = min(near, key=lambda r: (abs(_at(r.at) - at), r.seq)) if near else None
    answer: dict[str, Any] = {"number": number, "at": at.isoformat(), "campaign_id": args.campaign or ""}
    if rec is not None:
        answer["source"] = f"the dial-time decision recorded nearest that time: audit record #{rec.seq}"
        answer["record"] = {
            "seq": rec.seq,
            "at": _at(rec.at).isoformat(),
            "campaign_id": rec.campaign_id,
            "call_id": rec.call_id,
            "result": rec.result,
            "reason": rec.reason,
            "hash": rec.hash,
        }
        rules = from_record(
            {"seq": rec.seq, "at": _at(rec.at).isoformat(), "reason": rec.reason, "details": rec.details_json}
        )
    else:
        spec, own_cap, jurisdiction = WindowSpec(), None, "US"
        if args.campaign:
            try:
                spec, own_cap, jurisdiction = await _campaign(args, settings)
            except grpc.aio.AioRpcError as exc:
                return fail(
                    f"--campaign {args.campaign}: the campaign's window cannot be read: {exc.details()}"
                )
        allowed_before = await _records(args, settings, number, at - DAY, at)
        attempts = [_at(r.at) for r in allowed_before if r.result == "allowed"]
        lc = evaluate(
            at,
            jurisdiction=jurisdiction,
            place=place_of(number, state=args.state or None, zones=tuple(args.zone or ())),
            spec=spec,
            person=(number,),
            person_attempts=attempts,
            number_attempts=attempts,
            own_cap=own_cap,
            last_abandoned_at=None,
        )
        answer["source"] = (
            f"no dial-time decision recorded within {args.within:g} min: every rule evaluated against the "
            f"state at {at.isoformat()}"
        )
        answer["record"] = None
        rules = from_state(
            [b.code for b in explained.decision.reasons], explained.explanation, lc.inputs, lc.blocked, at
        )
    answer["rules"] = rules
    answer["verdict"] = verdict(rules)
    if args.json:
        print_json(answer)
    else:
        print(render(answer))
    return 0


def register(sub: Any) -> None:
    p = command(sub, "why", why, "why a number was (or would be) dialled or blocked at a time, rule by rule")
    p.add_argument("number")
    p.add_argument(
        "--at", required=True, help="time (ISO 8601, or relative: 'now', '1 hour ago', 'yesterday')"
    )
    p.add_argument("--campaign", help="the campaign (its window and cap; its lists)")
    p.add_argument(
        "--within",
        type=float,
        default=10.0,
        help="minutes around --at to look for a recorded decision (default 10; 0: at that instant only)",
    )
    p.add_argument("--zone", action="append", help="a time zone the person may be in (added to the number's)")
    p.add_argument("--state", help="the person's address state (added to the number's area-code state)")
