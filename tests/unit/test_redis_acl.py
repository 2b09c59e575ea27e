"""Each service's Redis ACL user (core/redis_acl.py) matches the keys its code uses, keeps the DNC index to
the DNC service and agent offers to the agent service, and deploy/redis/users.acl is up to date."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

from outdial.core import keys, redis_acl
from outdial.core.config import SERVICES, ServiceName

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "services" / "outdial"


def _builders_in(path: Path) -> set[str]:
    used: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "keys"
            and not node.attr.startswith("_")
            and callable(getattr(keys, node.attr, None))
        ):
            used.add(node.attr)
    return used


def _imports_core_module(service: str, module: str) -> bool:
    for path in (PACKAGE / service).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.module == f"outdial.core.{module}"
                or (node.module == "outdial.core" and any(a.name == module for a in node.names))
            ):
                return True
    return False


def builders_used(service: str, skip: tuple[str, ...] = ()) -> set[str]:
    """Names of the ``keys.<builder>`` functions referenced anywhere in ``outdial.<service>``."""
    used: set[str] = set()
    for path in (PACKAGE / service).rglob("*.py"):
        if path.name not in skip:
            used |= _builders_in(path)
    return used


def shared_builders(service: str) -> set[str]:
    """The keys built for ``service`` by the core modules that redis_acl.SHARED_MODULES gives it."""
    used: set[str] = set()
    for module, services in redis_acl.SHARED_MODULES.items():
        if service in services:
            used |= _builders_in(PACKAGE / "core" / f"{module}.py")
    return used


@pytest.mark.parametrize("service", SERVICES)
def test_access_lists_exactly_the_keys_the_code_uses(service: ServiceName) -> None:
    declared = {b.__name__ for b in redis_acl.ACCESS[service]}
    used = builders_used(service) | shared_builders(service)
    assert used, f"outdial.{service} uses no key builder? (the scan is broken)"
    assert declared == used, (
        f"{service}: add {sorted(used - declared)} to / remove {sorted(declared - used)} from "
        "core/redis_acl.ACCESS, then regenerate deploy/redis/users.acl"
    )


def test_no_other_module_touches_redis_keys() -> None:
    """The gateway, the simulator, the rules and the telephony adapters build no key; core builds only the
    keys every service's user holds (CORE_ACCESS: the token revocation mirror); the CLI only those too
    (`outdial token revoke` writes the mirror, as an operator's user). If one starts to build another key, it
    needs a Redis user of its own."""
    for other in ("gateway", "sim", "rules", "telephony"):
        assert builders_used(other) == set(), other
    core = {b.__name__ for b in redis_acl.CORE_ACCESS}
    shared = tuple(f"{m}.py" for m in redis_acl.SHARED_MODULES)
    assert builders_used("core", skip=("keys.py", "redis_acl.py", *shared)) <= core
    assert builders_used("cli") <= core


def test_shared_core_modules_are_used_by_exactly_the_services_that_hold_their_keys() -> None:
    for module, services in redis_acl.SHARED_MODULES.items():
        assert _builders_in(PACKAGE / "core" / f"{module}.py"), module
        for service in SERVICES:
            if service not in services:
                assert not _imports_core_module(service, module), (service, module)
        for service in services:
            assert _imports_core_module(service, module), (service, module)


def _allowed(service: ServiceName, key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in redis_acl.patterns(service))


def test_only_dnc_reaches_the_dnc_index_and_only_agent_publishes_offers() -> None:
    dnc_keys = [keys.dnc_index_current(), keys.dnc_index(7, "a1"), keys.dnc_index_meta(7)]
    offers = keys.agent_offers("agent-1")
    for service in SERVICES:
        for key in dnc_keys:
            assert _allowed(service, key) is (service == "dnc"), (service, key)
        assert _allowed(service, offers) is (service == "agent"), service
    # each service reaches every key it builds, with any argument
    for service in SERVICES:
        for builder in redis_acl.ACCESS[service]:
            if builder is keys.agent_key_template:
                continue
            sample = builder(*["x1"] * builder.__code__.co_argcount)
            assert _allowed(service, sample), (service, sample)
    assert "~od:{c:*}:ready" in redis_acl.acl_rules("agent")  # through agent_key_template, inside Lua


def test_users_acl_file_is_up_to_date() -> None:
    path = ROOT / "deploy" / "redis" / "users.acl"
    assert path.read_text() == redis_acl.acl_file(), (
        "deploy/redis/users.acl is stale: python -c 'from outdial.core.redis_acl import acl_file; "
        'print(acl_file(), end="")\' > deploy/redis/users.acl'
    )
