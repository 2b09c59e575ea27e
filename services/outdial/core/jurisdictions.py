"""The jurisdiction list of ``rules.law`` on the wire: ``common.proto``'s ``Jurisdiction`` enum <-> its name.

Built once, by name (``JURISDICTION_<name>``), from :data:`outdial.rules.law.JURISDICTIONS`: a jurisdiction
added to the law without its enum value fails here at import, not in one service's map that was forgotten.
"""

from __future__ import annotations

from outdial.rules.law import JURISDICTIONS
from outdial.v1 import common_pb2

__all__ = ["JURISDICTION_PB", "jurisdiction_from_pb", "jurisdiction_to_pb"]

#: Name ("US") -> enum value (``JURISDICTION_US``), in the law's order.
JURISDICTION_PB: dict[str, common_pb2.Jurisdiction.ValueType] = {
    j: common_pb2.Jurisdiction.Value(f"JURISDICTION_{j}") for j in JURISDICTIONS
}
_NAMES: dict[int, str] = {v: j for j, v in JURISDICTION_PB.items()}


def jurisdiction_to_pb(name: str | None) -> common_pb2.Jurisdiction.ValueType:
    """The enum value of ``name``; ``JURISDICTION_UNSPECIFIED`` when it is empty or unknown."""
    return JURISDICTION_PB.get(name or "", common_pb2.JURISDICTION_UNSPECIFIED)


def jurisdiction_from_pb(value: int, default: str = "") -> str:
    """The name of an enum value; ``default`` for ``JURISDICTION_UNSPECIFIED`` or a value this code does not
    know."""
    return _NAMES.get(value, default)
