"""Campaign settings: defaults per jurisdiction, validation (naming the field), proto <-> dict, the lifecycle.

The settings dict is stored as-is in ``campaigns.settings`` and is, with id/name/state added, the JSON the
campaign service writes to Redis for the dialer (the campaign-config contract of COMMON.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import phonenumbers
from google.protobuf import duration_pb2, timestamp_pb2

from outdial.core.errors import FailedPrecondition, InvalidArgument
from outdial.rules import message, windows
from outdial.rules.law import (
    JURISDICTION_REGION,
    JURISDICTIONS,
    MIN_RING_S,
    UK_ABANDON_QUIET,
    abandon_policy,
    agentless_refusal,
    amd_estimate_refusal,
)
from outdial.v1 import campaign_pb2, common_pb2

DIAL_MODES = ("preview", "progressive", "power", "predictive", "agentless")
STATES = ("draft", "active", "paused", "completed", "archived")
#: ``delivered``: an agentless campaign's message reached a person.
OUTCOMES = ("no_answer", "busy", "failed", "machine", "fax", "connected", "abandoned", "blocked", "delivered")

#: Preview: the agent's time to decide may be set up to this (0 = wait for the agent).
MAX_PREVIEW_S = 600
PREVIEW_TIMEOUT_ACTIONS = ("dial", "skip")
MACHINE_ACTIONS = ("hang_up", "leave_message")
MAX_AGENTLESS_LINES = 200

#: A campaign's ring timeout may be set up to this (a longer ring only ties up a line).
MAX_RING_TIMEOUT_S = 120
#: The UK quiet period after an abandoned call, in the seconds a retry rule's delay is written in.
_UK_QUIET_S = int(UK_ABANDON_QUIET.total_seconds())

DEFAULT_DISPOSITIONS = ["sale", "callback", "not_interested", "wrong_number", "do_not_call", "no_contact"]


def default_retry_rules(jurisdiction: str) -> list[dict[str, Any]]:
    abandoned_delay = _UK_QUIET_S if jurisdiction == "UK" else 3600
    return [
        {"outcome": "no_answer", "delay_s": 3600, "max_attempts": 5},
        {"outcome": "busy", "delay_s": 600, "max_attempts": 5},
        {"outcome": "machine", "delay_s": 4 * 3600, "max_attempts": 3},
        {"outcome": "abandoned", "delay_s": abandoned_delay, "max_attempts": 3},
        {"outcome": "failed", "delay_s": 3600, "max_attempts": 2},
        {"outcome": "fax", "delay_s": 0, "max_attempts": 0},
    ]


def _abandon_law(jurisdiction: str) -> tuple[float, int]:
    """The jurisdiction's abandonment cap and its window in whole seconds (as the settings store it)."""
    policy = abandon_policy(jurisdiction)
    return policy.cap, int(policy.window_s)


def defaults(jurisdiction: str = "US") -> dict[str, Any]:
    cap, window_s = _abandon_law(jurisdiction)
    return {
        "dial_mode": "progressive",
        "power_ratio": 1.0,
        "caller_id": "",
        "jurisdiction": jurisdiction,
        "calling_window": windows.window_to_json(windows.WindowSpec()),
        "abandon_cap": cap,
        "abandon_window_s": window_s,
        "retry_rules": default_retry_rules(jurisdiction),
        "max_calls_per_number_24h": 0,
        "default_region": JURISDICTION_REGION[jurisdiction],
        "ring_timeout_s": 25,
        "max_lines_per_agent": 3,
        "dispositions": list(DEFAULT_DISPOSITIONS),
        "seller_name": "",
        "opt_out_number": "",
        "seller_is_campaign_name": False,
        "max_attempts_per_lead": 0,
        **MODE_DEFAULTS,
    }


#: Settings of the preview and agentless modes (campaigns stored before them read these defaults).
MODE_DEFAULTS: dict[str, Any] = {
    "preview_seconds": 30,
    "preview_timeout_action": "dial",
    "preview_skip_delay_s": 1800,
    "agentless_message": "",
    "message_informational": False,
    # what the calls are for (the consent each number needs depends on it): telemarketing or informational
    "call_purpose": "telemarketing",
    "machine_action": "hang_up",
    "agentless_lines": 10,
    "record_calls": False,
    "recording_notice": "",
    "abandon_recording": "",
    # Answering-machine detection (on: as before) and its false-positive estimate (None: none stated).
    "amd": "on",
    "amd_false_positive_rate": None,
    "amd_false_positive_basis": "",
}
AMD_MODES = ("on", "off")


@dataclass
class CampaignRecord:
    id: str
    name: str
    description: str
    state: str
    settings: dict[str, Any]
    scheduled_start: datetime | None
    scheduled_end: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> CampaignRecord:
        s = row["settings"]
        return cls(
            id=row["id"],
            name=row["name"],
            description=row["description"],
            state=row["state"],
            settings=json.loads(s) if isinstance(s, str) else dict(s),
            scheduled_start=row["scheduled_start"],
            scheduled_end=row["scheduled_end"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def config_json(self) -> dict[str, Any]:
        """The campaign-config contract read by the dialer and the agent service."""
        s = self.settings
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            **MODE_DEFAULTS,
            **{k: s[k] for k in s},
            # As set: never the campaign's name or caller ID in their place (start requires both).
            "seller_name": s.get("seller_name", ""),
            "opt_out_number": s.get("opt_out_number", ""),
        }

    def to_proto(self) -> campaign_pb2.Campaign:
        s = self.settings
        c = campaign_pb2.Campaign(
            id=self.id,
            name=self.name,
            description=self.description,
            state=common_pb2.CampaignState.Value(f"CAMPAIGN_STATE_{self.state.upper()}"),
            dial_mode=common_pb2.DialMode.Value(f"DIAL_MODE_{s['dial_mode'].upper()}"),
            power_ratio=float(s["power_ratio"]),
            caller_id=s["caller_id"],
            jurisdiction=common_pb2.Jurisdiction.Value(f"JURISDICTION_{s['jurisdiction']}"),
            abandon_cap=float(s["abandon_cap"]),
            max_calls_per_number_24h=int(s["max_calls_per_number_24h"]),
            default_region=s["default_region"],
            max_lines_per_agent=int(s["max_lines_per_agent"]),
            dispositions=list(s["dispositions"]),
            seller_name=s.get("seller_name", ""),
            opt_out_number=s.get("opt_out_number", ""),
            seller_is_campaign_name=bool(s.get("seller_is_campaign_name", False)),
            max_attempts_per_lead=int(s.get("max_attempts_per_lead", 0)),
            preview_timeout_action=campaign_pb2.PreviewTimeoutAction.Value(
                f"PREVIEW_TIMEOUT_ACTION_{mode_setting(s, 'preview_timeout_action').upper()}"
            ),
            agentless_message=mode_setting(s, "agentless_message"),
            message_informational=bool(mode_setting(s, "message_informational")),
            call_purpose=common_pb2.CallPurpose.Value(
                f"CALL_PURPOSE_{str(mode_setting(s, 'call_purpose')).upper()}"
            ),
            machine_action=campaign_pb2.MachineAction.Value(
                f"MACHINE_ACTION_{mode_setting(s, 'machine_action').upper()}"
            ),
            agentless_lines=int(mode_setting(s, "agentless_lines")),
            record_calls=bool(mode_setting(s, "record_calls")),
            recording_notice=str(mode_setting(s, "recording_notice")),
            abandon_recording=str(mode_setting(s, "abandon_recording")),
            amd=campaign_pb2.AmdMode.Value(f"AMD_MODE_{str(mode_setting(s, 'amd')).upper()}"),
            amd_false_positive_basis=str(mode_setting(s, "amd_false_positive_basis")),
        )
        if mode_setting(s, "amd_false_positive_rate") is not None:
            c.amd_false_positive_rate = float(mode_setting(s, "amd_false_positive_rate"))
        c.preview_timeout.FromSeconds(int(mode_setting(s, "preview_seconds")))
        c.preview_skip_delay.FromSeconds(int(mode_setting(s, "preview_skip_delay_s")))
        cw = s["calling_window"]
        c.calling_window.start_local = cw["start_local"]
        c.calling_window.end_local = cw["end_local"]
        c.calling_window.days_of_week.extend(cw["days_of_week"])
        c.calling_window.holiday_dates.extend(cw["holiday_dates"])
        c.calling_window.skip_public_holidays = bool(cw["skip_public_holidays"])
        c.abandon_window.FromSeconds(int(s["abandon_window_s"]))
        c.ring_timeout.FromSeconds(int(s["ring_timeout_s"]))
        for r in s["retry_rules"]:
            rr = c.retry_rules.add(
                outcome=common_pb2.CallOutcome.Value(f"CALL_OUTCOME_{r['outcome'].upper()}"),
                max_attempts=int(r["max_attempts"]),
            )
            rr.delay.FromSeconds(int(r["delay_s"]))
        for name, ts in (("scheduled_start", self.scheduled_start), ("scheduled_end", self.scheduled_end)):
            if ts is not None:
                getattr(c, name).FromDatetime(ts)
        c.created_at.FromDatetime(self.created_at)
        c.updated_at.FromDatetime(self.updated_at)
        return c


def mode_setting(s: dict[str, Any], name: str) -> Any:
    return s.get(name, MODE_DEFAULTS[name])


# ----------------------------------------------------------------------------------- proto -> settings

#: Settable field paths of Campaign (an empty update mask means all of them).
SETTABLE = (
    "name",
    "description",
    "dial_mode",
    "power_ratio",
    "caller_id",
    "jurisdiction",
    "calling_window",
    "abandon_cap",
    "abandon_window",
    "retry_rules",
    "max_calls_per_number_24h",
    "default_region",
    "scheduled_start",
    "scheduled_end",
    "ring_timeout",
    "max_lines_per_agent",
    "dispositions",
    "seller_name",
    "opt_out_number",
    "seller_is_campaign_name",
    "max_attempts_per_lead",
    "preview_timeout",
    "preview_timeout_action",
    "preview_skip_delay",
    "agentless_message",
    "message_informational",
    "call_purpose",
    "machine_action",
    "agentless_lines",
    "record_calls",
    "recording_notice",
    "abandon_recording",
    "amd",
    "amd_false_positive_rate",
    "amd_false_positive_basis",
)


def _dur(d: duration_pb2.Duration) -> int:
    return int(d.seconds)


def _ts(t: timestamp_pb2.Timestamp) -> datetime | None:
    if t.seconds == 0 and t.nanos == 0:
        return None
    return t.ToDatetime(tzinfo=UTC)


def _enum_name(prefix: str, enum: Any, value: int, field: str) -> str | None:
    if value == 0:
        return None
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        raise InvalidArgument(f"unknown value {value}", field=field) from None


def apply_proto(
    rec: CampaignRecord | None, msg: campaign_pb2.Campaign, paths: list[str] | None
) -> tuple[str, str, dict[str, Any], datetime | None, datetime | None]:
    """Merge ``msg`` (only ``paths``; all settable fields when None) into ``rec`` (None = a new campaign).
    Unset scalars of a new campaign take the jurisdiction's defaults. Returns validated values."""
    if paths is not None:
        unknown = [p for p in paths if p.split(".")[0] not in SETTABLE]
        if unknown:
            raise InvalidArgument(f"unknown or read-only field(s) {', '.join(unknown)}", field="update_mask")
        want = {p.split(".")[0] for p in paths}
    else:
        want = set(SETTABLE)
    creating = rec is None
    jur_name = _enum_name("JURISDICTION_", common_pb2.Jurisdiction, msg.jurisdiction, "jurisdiction")
    if creating:
        jur = (jur_name or "us").upper()
        s = defaults(jur)
        name, description, start, end = "", "", None, None
    else:
        assert rec is not None
        s = json.loads(json.dumps(rec.settings))
        name, description, start, end = rec.name, rec.description, rec.scheduled_start, rec.scheduled_end
        jur = s["jurisdiction"]
        if "jurisdiction" in want and jur_name and jur_name.upper() != jur:
            # A new jurisdiction brings its own legal defaults for what the message does not set.
            jur = jur_name.upper()
            law = defaults(jur)
            for k in ("abandon_cap", "abandon_window_s", "default_region", "retry_rules"):
                s[k] = law[k]
            s["jurisdiction"] = jur

    def take(field: str) -> bool:
        # On create, a field is taken when set (non-default); on update with an explicit mask, always;
        # on update without a mask, when set.
        if field not in want:
            return False
        if paths is not None and not creating:
            return True
        return _is_set(msg, field)

    name, description, start, end = _merge(msg, s, take, name, description, start, end)
    validate(name, s, start, end)
    return name, description, s, start, end


Take = Any  # Callable[[str], bool]


def _merge(
    msg: campaign_pb2.Campaign,
    s: dict[str, Any],
    take: Take,
    name: str,
    description: str,
    start: datetime | None,
    end: datetime | None,
) -> tuple[str, str, datetime | None, datetime | None]:
    if take("name"):
        name = msg.name.strip()
    if take("description"):
        description = msg.description
    if take("dial_mode"):
        mode = _enum_name("DIAL_MODE_", common_pb2.DialMode, msg.dial_mode, "dial_mode")
        if mode is None:
            raise InvalidArgument("dial_mode must be set", field="dial_mode")
        s["dial_mode"] = mode
    for f in ("power_ratio", "abandon_cap"):
        if take(f):
            s[f] = float(getattr(msg, f))
    for f in (
        "caller_id",
        "default_region",
        "seller_name",
        "opt_out_number",
        "agentless_message",
        "recording_notice",
        "abandon_recording",
        "amd_false_positive_basis",
    ):
        if take(f):
            s[f] = getattr(msg, f).strip()
    for f in ("max_calls_per_number_24h", "max_lines_per_agent", "max_attempts_per_lead", "agentless_lines"):
        if take(f):
            s[f] = int(getattr(msg, f))
    _merge_modes(msg, s, take)
    _merge_structs(msg, s, take)
    if take("scheduled_start"):
        start = _ts(msg.scheduled_start)
    if take("scheduled_end"):
        end = _ts(msg.scheduled_end)
    return name, description, start, end


def _merge_modes(msg: campaign_pb2.Campaign, s: dict[str, Any], take: Take) -> None:
    if take("message_informational"):
        s["message_informational"] = bool(msg.message_informational)
    if take("seller_is_campaign_name"):
        s["seller_is_campaign_name"] = bool(msg.seller_is_campaign_name)
    if take("record_calls"):
        s["record_calls"] = bool(msg.record_calls)
    if take("preview_timeout_action"):
        action = _enum_name(
            "PREVIEW_TIMEOUT_ACTION_",
            campaign_pb2.PreviewTimeoutAction,
            msg.preview_timeout_action,
            "preview_timeout_action",
        )
        s["preview_timeout_action"] = action or MODE_DEFAULTS["preview_timeout_action"]
    if take("call_purpose"):
        purpose = _enum_name("CALL_PURPOSE_", common_pb2.CallPurpose, msg.call_purpose, "call_purpose")
        s["call_purpose"] = purpose or MODE_DEFAULTS["call_purpose"]
    if take("amd"):
        s["amd"] = _enum_name("AMD_MODE_", campaign_pb2.AmdMode, msg.amd, "amd") or MODE_DEFAULTS["amd"]
    if take("amd_false_positive_rate"):
        has = msg.HasField("amd_false_positive_rate")
        s["amd_false_positive_rate"] = float(msg.amd_false_positive_rate) if has else None
    if take("machine_action"):
        action = _enum_name(
            "MACHINE_ACTION_", campaign_pb2.MachineAction, msg.machine_action, "machine_action"
        )
        s["machine_action"] = action or MODE_DEFAULTS["machine_action"]


def _merge_structs(msg: campaign_pb2.Campaign, s: dict[str, Any], take: Take) -> None:
    if take("abandon_window"):
        s["abandon_window_s"] = _dur(msg.abandon_window)
    if take("ring_timeout"):
        s["ring_timeout_s"] = _dur(msg.ring_timeout)
    if take("preview_timeout"):
        s["preview_seconds"] = _dur(msg.preview_timeout)
    if take("preview_skip_delay"):
        s["preview_skip_delay_s"] = _dur(msg.preview_skip_delay)
    if take("dispositions"):
        s["dispositions"] = [d.strip() for d in msg.dispositions]
    if take("calling_window"):
        cw = msg.calling_window
        try:
            spec = windows.window_from_json(
                {
                    "start_local": cw.start_local,
                    "end_local": cw.end_local,
                    "days_of_week": list(cw.days_of_week) or None,
                    "holiday_dates": list(cw.holiday_dates),
                    "skip_public_holidays": cw.skip_public_holidays,
                }
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="calling_window") from None
        s["calling_window"] = windows.window_to_json(spec)
    if take("retry_rules"):
        rules: list[dict[str, Any]] = []
        for i, r in enumerate(msg.retry_rules):
            outcome = _enum_name(
                "CALL_OUTCOME_", common_pb2.CallOutcome, r.outcome, f"retry_rules[{i}].outcome"
            )
            if outcome is None:
                raise InvalidArgument("outcome must be set", field=f"retry_rules[{i}].outcome")
            rules.append({"outcome": outcome, "delay_s": _dur(r.delay), "max_attempts": int(r.max_attempts)})
        s["retry_rules"] = rules


def _is_set(msg: campaign_pb2.Campaign, field: str) -> bool:
    if field in (
        "calling_window",
        "abandon_window",
        "ring_timeout",
        "scheduled_start",
        "scheduled_end",
        "preview_timeout",
        "preview_skip_delay",
        "amd_false_positive_rate",
    ):
        return bool(msg.HasField(field))  # type: ignore[arg-type]
    value = getattr(msg, field)
    if field in ("retry_rules", "dispositions"):
        return len(value) > 0
    return bool(value)


def _check_e164(value: str, field: str) -> None:
    try:
        num = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise InvalidArgument(f"{value!r} is not an E.164 number (+<country><number>)", field=field) from None
    if not value.startswith("+") or not phonenumbers.is_valid_number(num):
        raise InvalidArgument(f"{value!r} is not a valid E.164 number", field=field)
    if phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164) != value:
        raise InvalidArgument(
            f"{value!r} is not in E.164 form (expected "
            f"{phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)})",
            field=field,
        )


def validate(name: str, s: dict[str, Any], start: datetime | None, end: datetime | None) -> None:
    if not name:
        raise InvalidArgument("a campaign needs a name", field="name")
    if len(name) > 200:
        raise InvalidArgument("name is longer than 200 characters", field="name")
    jur = s["jurisdiction"]
    _validate_basics(s)
    if s.get("seller_name"):
        _check_seller(name, s, InvalidArgument)
    _validate_limits(jur, s)
    _validate_retry(jur, s)
    _validate_modes(s)
    if not s["dispositions"] or any(not d for d in s["dispositions"]):
        raise InvalidArgument("dispositions must be a non-empty list of names", field="dispositions")
    if start is not None and end is not None and end <= start:
        raise InvalidArgument("scheduled_end must be after scheduled_start", field="scheduled_end")


def _validate_basics(s: dict[str, Any]) -> None:
    jur = s["jurisdiction"]
    if jur not in JURISDICTIONS:
        raise InvalidArgument(f"jurisdiction must be one of {', '.join(JURISDICTIONS)}", field="jurisdiction")
    if s["dial_mode"] not in DIAL_MODES:
        raise InvalidArgument(f"dial_mode must be one of {', '.join(DIAL_MODES)}", field="dial_mode")
    if s["dial_mode"] == "power" and not (1.0 <= s["power_ratio"] <= 10.0):
        raise InvalidArgument("power_ratio must be between 1 and 10 in power mode", field="power_ratio")
    if s["power_ratio"] < 0:
        raise InvalidArgument("power_ratio must not be negative", field="power_ratio")
    if s["caller_id"]:
        _check_e164(s["caller_id"], "caller_id")
    if s["opt_out_number"]:
        why = message.callback_number_problem(s["opt_out_number"], jur)
        if why:
            raise InvalidArgument(why, field="opt_out_number", error_id="callback_number_invalid")


def _validate_limits(jur: str, s: dict[str, Any]) -> None:
    cap, window_s = _abandon_law(jur)
    if not (0.0 < s["abandon_cap"] <= cap):
        raise InvalidArgument(
            f"abandon_cap must be above 0 and at most the {jur} cap {cap:g} (a fraction: {cap:g} = {cap * 100:g} %)",
            field="abandon_cap",
        )
    if s["abandon_window_s"] != window_s:
        raise InvalidArgument(
            f"abandon_window must be the {jur} measurement period of {window_s} s", field="abandon_window"
        )
    if s["ring_timeout_s"] < MIN_RING_S or s["ring_timeout_s"] > MAX_RING_TIMEOUT_S:
        raise InvalidArgument(
            f"ring_timeout must be between {MIN_RING_S:g} s (the legal minimum) and {MAX_RING_TIMEOUT_S} s",
            field="ring_timeout",
        )
    if s["max_calls_per_number_24h"] < 0:
        raise InvalidArgument(
            "max_calls_per_number_24h must be >= 0 (0 = legal default)", field="max_calls_per_number_24h"
        )
    if s["max_attempts_per_lead"] < 0:
        raise InvalidArgument(
            "max_attempts_per_lead must be >= 0 (0 = no limit)", field="max_attempts_per_lead"
        )
    if not (1 <= s["max_lines_per_agent"] <= 20):
        raise InvalidArgument("max_lines_per_agent must be between 1 and 20", field="max_lines_per_agent")
    region = s["default_region"].upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidArgument(f"{s['default_region']!r} is not an ISO 3166 region", field="default_region")
    s["default_region"] = region


def _validate_modes(s: dict[str, Any]) -> None:
    for k, v in MODE_DEFAULTS.items():
        s.setdefault(k, v)
    if not (0 <= s["preview_seconds"] <= MAX_PREVIEW_S):
        raise InvalidArgument(
            f"preview_timeout must be between 0 (wait for the agent) and {MAX_PREVIEW_S} s",
            field="preview_timeout",
        )
    if s["preview_timeout_action"] not in PREVIEW_TIMEOUT_ACTIONS:
        raise InvalidArgument("preview_timeout_action must be dial or skip", field="preview_timeout_action")
    if s["preview_skip_delay_s"] < 0:
        raise InvalidArgument("preview_skip_delay must not be negative", field="preview_skip_delay")
    if s["machine_action"] not in MACHINE_ACTIONS:
        raise InvalidArgument("machine_action must be hang_up or leave_message", field="machine_action")
    if not (1 <= s["agentless_lines"] <= MAX_AGENTLESS_LINES):
        raise InvalidArgument(
            f"agentless_lines must be between 1 and {MAX_AGENTLESS_LINES}", field="agentless_lines"
        )
    if len(s["agentless_message"]) > 2000:
        raise InvalidArgument("agentless_message is longer than 2000 characters", field="agentless_message")
    notice = str(mode_setting(s, "recording_notice"))
    if len(notice) > 500:
        raise InvalidArgument("recording_notice is longer than 500 characters", field="recording_notice")
    if mode_setting(s, "record_calls") and not notice.strip():
        raise InvalidArgument(
            "a campaign that records calls needs a recording_notice (played first; all-party-consent "
            "states forbid recording without it)",
            field="recording_notice",
            error_id="recording_notice_required",
        )
    _validate_amd(s)
    rec = str(mode_setting(s, "abandon_recording"))
    if rec and (not rec.startswith("/") or ".." in rec.split("/") or len(rec) > 500):
        raise InvalidArgument(
            "abandon_recording must be an absolute path on the gateway, without '..'",
            field="abandon_recording",
        )


def _validate_amd(s: dict[str, Any]) -> None:
    if s["amd"] not in AMD_MODES:
        raise InvalidArgument("amd must be on or off", field="amd")
    rate = s["amd_false_positive_rate"]
    if rate is not None and not (0.0 <= float(rate) <= 1.0):
        raise InvalidArgument(
            "amd_false_positive_rate is a fraction of machine-classified answers, between 0 and 1",
            field="amd_false_positive_rate",
        )
    basis = str(s["amd_false_positive_basis"])
    if len(basis) > 2000:
        raise InvalidArgument(
            "amd_false_positive_basis is longer than 2000 characters", field="amd_false_positive_basis"
        )
    if rate is not None and not basis.strip():
        raise InvalidArgument(
            "an AMD false-positive estimate needs its basis (how it was measured or reasoned)",
            field="amd_false_positive_basis",
        )


def check_amd(s: dict[str, Any]) -> None:
    """What a campaign using answering-machine detection needs before it dials where the law asks for it
    (UK, row ``uk.amd_false_positives``): its false-positive estimate and the estimate's basis.
    FAILED_PRECONDITION naming the field (:func:`outdial.rules.law.amd_estimate_refusal`)."""
    why = amd_estimate_refusal(
        str(s.get("jurisdiction") or ""),
        amd=str(mode_setting(s, "amd")) != "off",
        false_positive_rate=mode_setting(s, "amd_false_positive_rate"),
        basis=str(mode_setting(s, "amd_false_positive_basis")),
    )
    if why:
        field = why.split(":", 1)[0]
        raise FailedPrecondition(why, field=field, error_id="amd_estimate_required")


def _validate_retry(jur: str, s: dict[str, Any]) -> None:
    seen: set[str] = set()
    for i, r in enumerate(s["retry_rules"]):
        if r["outcome"] not in OUTCOMES or r["outcome"] in ("connected", "blocked", "delivered"):
            raise InvalidArgument(
                "retry rules apply to no_answer, busy, failed, machine, fax, abandoned",
                field=f"retry_rules[{i}].outcome",
            )
        if r["outcome"] in seen:
            raise InvalidArgument(f"two rules for {r['outcome']}", field=f"retry_rules[{i}].outcome")
        seen.add(r["outcome"])
        if r["delay_s"] < 0:
            raise InvalidArgument("delay must not be negative", field=f"retry_rules[{i}].delay")
        if r["max_attempts"] < 0:
            raise InvalidArgument("max_attempts must not be negative", field=f"retry_rules[{i}].max_attempts")
        if (
            jur == "UK"
            and r["outcome"] == "abandoned"
            and r["max_attempts"] > 0
            and r["delay_s"] < _UK_QUIET_S
        ):
            raise InvalidArgument(
                f"UK: no call within {_UK_QUIET_S // 3600} h of an abandoned call (Ofcom)",
                field=f"retry_rules[{i}].delay",
            )


# ----------------------------------------------------------------------------------- lifecycle

#: (action, from states) -> to state
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"draft"}), "active"),
    "pause": (frozenset({"active"}), "paused"),
    "resume": (frozenset({"paused"}), "active"),
    "complete": (frozenset({"draft", "active", "paused"}), "completed"),
    "archive": (frozenset({"draft", "paused", "completed"}), "archived"),
}


def transition(rec: CampaignRecord, action: str) -> str:
    allowed, to = TRANSITIONS[action]
    if rec.state not in allowed:
        raise FailedPrecondition(
            f"cannot {action} a campaign that is {rec.state} (allowed from: {', '.join(sorted(allowed))})",
            error_id="invalid_transition",
        )
    if to == "active" and not rec.settings.get("caller_id"):
        raise FailedPrecondition("a caller ID is required to start a campaign", error_id="caller_id_required")
    if to == "active":
        check_message_identity(rec.name, rec.settings)
        check_amd(rec.settings)
    if to == "active" and rec.settings.get("dial_mode") == "agentless":
        _check_agentless(rec.settings)
    return to


def _check_seller(
    name: str, s: dict[str, Any], error: type[InvalidArgument] | type[FailedPrecondition]
) -> None:
    why = message.seller_name_problem(
        str(s.get("seller_name") or ""), name, same_on_purpose=bool(s.get("seller_is_campaign_name"))
    )
    if why:
        err_id = (
            "seller_name_required" if not str(s.get("seller_name") or "").strip() else "seller_name_invalid"
        )
        # INVALID_ARGUMENT names the field in its status ("[seller_name]"); FAILED_PRECONDITION in its text.
        text = why if error is InvalidArgument else f"seller_name: {why}"
        raise error(text, field="seller_name", error_id=err_id)


def check_message_identity(name: str, s: dict[str, Any]) -> None:
    """What an outbound campaign needs before it dials (start, resume, an update while active): the seller's
    legal name and a callback number for do-not-call requests, both spoken by the message
    (:mod:`outdial.rules.message`). Missing: FAILED_PRECONDITION; present but unusable: INVALID_ARGUMENT;
    each names the field. Never filled in from the campaign's name or caller ID."""
    _check_seller(name, s, FailedPrecondition)
    number = str(s.get("opt_out_number") or "").strip()
    if not number:
        raise FailedPrecondition(
            "opt_out_number: a callback number for do-not-call requests is required to start a campaign "
            "(47 CFR 64.1200(a)(7)(i)(A)); the caller ID is not taken in its place",
            field="opt_out_number",
            error_id="opt_out_number_required",
        )
    why = message.callback_number_problem(number, str(s.get("jurisdiction") or ""))
    if why:
        raise InvalidArgument(why, field="opt_out_number", error_id="callback_number_invalid")


def _check_agentless(s: dict[str, Any]) -> None:
    """An agentless campaign starts only with a message to play and, failing closed, only when the law lets
    it run without a per-call consent check (:func:`outdial.rules.law.agentless_refusal`)."""
    if not str(mode_setting(s, "agentless_message")).strip():
        raise FailedPrecondition(
            "an agentless campaign needs its message (agentless_message)",
            error_id="agentless_message_required",
        )
    why = agentless_refusal(
        str(s.get("jurisdiction") or "US"), informational=bool(mode_setting(s, "message_informational"))
    )
    if why:
        raise FailedPrecondition(why, error_id="consent_required")


def state_from_proto(value: int) -> str:
    name = str(common_pb2.CampaignState.Name(value))  # type: ignore[arg-type]
    return name.removeprefix("CAMPAIGN_STATE_").lower()
