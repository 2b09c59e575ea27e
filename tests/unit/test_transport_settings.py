"""The transport settings a production process is checked against at start (core/tls.py), and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from outdial.core.config import Settings
from outdial.core.tls import channel_credentials, transport_warnings

PG = "postgresql://outdial_dnc:pw@pg.example.internal:5432/outdial?sslmode=verify-full&sslrootcert=/ca.crt"
REDIS = "rediss://outdial-dnc:pw@redis.example.internal:6380/0"


def prod(tmp_path: Path, **changes: object) -> Settings:
    files = {}
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text("x")
        files[name] = tmp_path / name
    base = Settings(
        tls_cert=files["tls.crt"], tls_key=files["tls.key"], tls_ca=files["ca.crt"], reflection="off"
    )
    return base.model_copy(update=changes)


def test_the_prod_overlay_settings_raise_no_warning(tmp_path: Path) -> None:
    assert transport_warnings(prod(tmp_path), PG, REDIS) == []
    assert transport_warnings(prod(tmp_path, reflection="authenticated"), PG, REDIS) == []
    # loopback and Unix sockets are not network links
    assert (
        transport_warnings(prod(tmp_path), "postgresql://postgres@127.0.0.1/outdial", "redis://localhost")
        == []
    )
    assert transport_warnings(prod(tmp_path), "postgresql:///outdial?host=/run/postgresql", REDIS) == []


@pytest.mark.parametrize(
    ("changes", "database_url", "redis_url", "expected"),
    [
        ({}, PG.replace("verify-full", "require"), REDIS, "sslmode=require"),
        ({}, PG.split("?")[0], REDIS, "sslmode=(unset)"),
        ({}, PG, "redis://outdial-dnc:pw@redis.example.internal:6379/0", "not rediss://"),
        ({"tls_cert": None}, PG, REDIS, "without TLS"),
        ({"tls_ca": None}, PG, REDIS, "without a certificate"),
        ({"tls_client_auth": False}, PG, REDIS, "without a certificate"),
        ({"reflection": "public"}, PG, REDIS, "reflection is public"),
    ],
)
def test_each_weakness_is_named(
    tmp_path: Path, changes: dict[str, object], database_url: str, redis_url: str, expected: str
) -> None:
    (warning,) = transport_warnings(prod(tmp_path, **changes), database_url, redis_url)
    assert expected in warning


def test_client_certificate_settings_go_together(tmp_path: Path) -> None:
    s = prod(tmp_path, tls_client_cert=tmp_path / "tls.crt")
    with pytest.raises(ValueError, match="OUTDIAL_TLS_CLIENT_CERT and OUTDIAL_TLS_CLIENT_KEY"):
        channel_credentials(s)
    with pytest.raises(ValueError, match="OUTDIAL_TLS_CA: cannot read"):
        channel_credentials(prod(tmp_path, tls_ca=tmp_path / "missing.crt"))
    assert channel_credentials(Settings()) is None  # plaintext in development
