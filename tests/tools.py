"""The outside tools some tests drive (rtpengine, SIPp, baresip, Kamailio, espeak-ng, sox, openssl): one rule
for all of them. On a machine without a tool its tests are skipped, saying which tool and how to get it; under
CI (``OUTDIAL_REQUIRE_SIP=1``, set by .ci/run) they are never skipped: a missing tool fails them."""

from __future__ import annotations

import os
import shutil

import pytest

from outdial.gateway.edge import find_kamailio
from outdial.gateway.rtpengine_proc import find_rtpengine

REQUIRED = os.environ.get("OUTDIAL_REQUIRE_SIP") == "1"
HOW = (
    "`make setup` as root on Debian installs it (apt: rtpengine-daemon sip-tester baresip espeak-ng sox "
    "libsox-fmt-mp3 kamailio kamailio-tls-modules)"
)
_FINDERS = {"rtpengine": find_rtpengine, "kamailio": find_kamailio}


def missing(*tools: str) -> list[str]:
    return [t for t in tools if (_FINDERS[t]() if t in _FINDERS else shutil.which(t)) is None]


def reason(lacking: list[str] | str) -> str:
    what = lacking if isinstance(lacking, str) else ", ".join(lacking)
    return f"needs {what}, not installed on this machine: {HOW}"


def needs(*tools: str) -> pytest.MarkDecorator:
    """A mark: skip when a tool is missing, except under CI, where the test runs (and fails without it)."""
    lacking = missing(*tools)
    return pytest.mark.skipif(bool(lacking) and not REQUIRED, reason=reason(lacking))


def require(*tools: str, module: bool = False) -> None:
    """Now, in a test or at module level: skip when a tool is missing, fail under CI."""
    lacking = missing(*tools)
    if lacking:
        unavailable(lacking, module=module)


def unavailable(what: list[str] | str, *, module: bool = False) -> None:
    if REQUIRED:
        pytest.fail(f"{reason(what)} (OUTDIAL_REQUIRE_SIP=1: nothing may be skipped)")
    pytest.skip(reason(what), allow_module_level=module)
