"""A campaign's call type on the wire: ``common.proto``'s ``CallMethod`` and ``CallPurpose`` from its settings
(:func:`outdial.rules.consent.call_type_of`), for the DNC checks of the feeder and the dial-time gate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from outdial.rules.consent import call_type_of
from outdial.v1 import common_pb2

__all__ = ["call_type_pb"]

_METHOD = {
    "autodialled": common_pb2.CALL_METHOD_AUTODIALLED,
    "prerecorded": common_pb2.CALL_METHOD_PRERECORDED,
    "manual": common_pb2.CALL_METHOD_MANUAL,
}
_PURPOSE = {
    "telemarketing": common_pb2.CALL_PURPOSE_TELEMARKETING,
    "informational": common_pb2.CALL_PURPOSE_INFORMATIONAL,
}


def call_type_pb(
    config: Mapping[str, Any],
) -> tuple[common_pb2.CallMethod.ValueType, common_pb2.CallPurpose.ValueType]:
    how, purpose = call_type_of(config)
    return _METHOD[how], _PURPOSE[purpose]
