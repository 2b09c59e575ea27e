"""Settings versions (campaign and pacing): what one version changed from the one before it. Pure, no I/O.

Each create or update of a campaign's settings (``campaign_versions``) and of its pacing settings
(``pacing_settings_versions``) appends a row with the whole settings document and the list computed here;
those tables are INSERT and SELECT only for the services (migrations/grants.py) and refuse UPDATE and
DELETE by trigger, so the history is the audit of who changed what, when.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from outdial.v1 import common_pb2


@dataclass(frozen=True)
class Change:
    """One setting that differs: its dot-separated path, and its value before and after (JSON text; empty
    when the setting was absent on that side)."""

    path: str
    before_json: str
    after_json: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "before": self.before_json, "after": self.after_json}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


_ABSENT = object()


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Change]:
    """The settings that differ between two documents, in path order. Nested objects are compared key by
    key (``settings.retry_rules``, ``settings.calling_window.start``); lists and scalars as a whole."""
    out: list[Change] = []
    _walk("", before or {}, after, out)
    return sorted(out, key=lambda c: c.path)


def _walk(prefix: str, before: Mapping[str, Any], after: Mapping[str, Any], out: list[Change]) -> None:
    for key in sorted(set(before) | set(after)):
        path = f"{prefix}{key}"
        b = before.get(key, _ABSENT)
        a = after.get(key, _ABSENT)
        if isinstance(b, Mapping) and isinstance(a, Mapping):
            _walk(path + ".", b, a, out)
            continue
        if b is not _ABSENT and a is not _ABSENT and _json(b) == _json(a):
            continue
        out.append(Change(path, "" if b is _ABSENT else _json(b), "" if a is _ABSENT else _json(a)))


def changes_from_json(raw: str | list[Any] | None) -> list[Change]:
    """The stored ``changes`` column back as :class:`Change` objects."""
    items = json.loads(raw) if isinstance(raw, str) else (raw or [])
    return [Change(str(c["path"]), str(c.get("before", "")), str(c.get("after", ""))) for c in items]


def to_pb(row: Mapping[str, Any]) -> common_pb2.SettingsVersion:
    """A stored version (``version, actor, at, action, settings, changes``) as the API returns it."""
    v = common_pb2.SettingsVersion(
        version=int(row["version"]),
        actor=str(row["actor"]),
        action=str(row["action"]),
        settings_json=row["settings"] if isinstance(row["settings"], str) else _json(row["settings"]),
        changes=[
            common_pb2.SettingChange(path=c.path, before_json=c.before_json, after_json=c.after_json)
            for c in changes_from_json(row["changes"])
        ],
    )
    v.at.FromDatetime(row["at"])
    return v
