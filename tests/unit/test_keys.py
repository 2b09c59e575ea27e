"""Keys: what a service refuses at start (development keys without OUTDIAL_DEV, missing or weak keys, another
identity's key, the retired HS256 secret), and the `outdial keys` / `outdial token issue` commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from outdial.cli.main import main as cli
from outdial.core.auth import Role, issue_token, verify_token
from outdial.core.config import Settings
from outdial.core.errors import Unauthenticated
from outdial.core.signing import (
    DEV_WARNING,
    KeyConfigError,
    dev_key,
    issuer_key,
    load_jwks,
    load_private_key,
    service_keys,
)


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    """What the CLI printed on stderr, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def _settings(**kw: object) -> Settings:
    return Settings(**{"dev": False, **kw})  # type: ignore[arg-type]


@pytest.fixture
def real_keys(tmp_path: Path) -> Path:
    assert cli(["keys", "init", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys"


@pytest.fixture
def dev_keys(tmp_path: Path) -> Path:
    assert cli(["keys", "init", "--dev", str(tmp_path / "dev")]) == 0
    return tmp_path / "dev"


def test_without_dev_mode_a_service_needs_real_keys(
    real_keys: Path, dev_keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(KeyConfigError, match="OUTDIAL_JWKS is not set"):
        service_keys(_settings(), "pacing")
    with pytest.raises(KeyConfigError, match="OUTDIAL_SERVICE_KEY is not set"):
        service_keys(_settings(jwks=real_keys / "jwks.json"), "pacing")
    # the development keyset, as files, is refused without OUTDIAL_DEV=1 ...
    with pytest.raises(KeyConfigError, match="development keys"):
        service_keys(_settings(jwks=dev_keys / "jwks.json", service_key=dev_keys / "pacing.key"), "pacing")
    with pytest.raises(KeyConfigError, match="development key"):
        service_keys(_settings(jwks=real_keys / "jwks.json", service_key=dev_keys / "pacing.key"), "pacing")
    # ... and accepted with it, loudly
    with caplog.at_level(logging.WARNING):
        keys = service_keys(Settings(dev=True), "pacing")
    assert keys.dev and DEV_WARNING in caplog.text
    # real keys start without development mode, and say nothing about development keys
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        keys = service_keys(
            _settings(jwks=real_keys / "jwks.json", service_key=real_keys / "pacing.key"), "pacing"
        )
    assert not keys.dev and DEV_WARNING not in caplog.text


def test_the_retired_hs256_secret_is_refused(real_keys: Path) -> None:
    s = _settings(
        jwks=real_keys / "jwks.json",
        service_key=real_keys / "dnc.key",
        auth_secret="outdial-dev-secret-change-me-before-production",
    )
    with pytest.raises(KeyConfigError, match="OUTDIAL_AUTH_SECRET"):
        service_keys(s, "dnc")


def test_weak_and_loose_keys_are_refused(tmp_path: Path, real_keys: Path) -> None:
    hs = tmp_path / "hs.key"
    hs.write_text("short-secret")
    hs.chmod(0o600)
    with pytest.raises(KeyConfigError, match="not an unencrypted PEM private key"):
        load_private_key(hs, "dnc", "OUTDIAL_SERVICE_KEY", dev=False)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ec_key.chmod(0o600)
    with pytest.raises(KeyConfigError, match="Ed25519 keys only"):
        load_private_key(ec_key, "dnc", "OUTDIAL_SERVICE_KEY", dev=False)
    loose = real_keys / "dnc.key"
    loose.chmod(0o644)
    with pytest.raises(KeyConfigError, match="readable by others"):
        load_private_key(loose, "dnc", "OUTDIAL_SERVICE_KEY", dev=False)
    with pytest.raises(KeyConfigError, match="cannot read"):
        load_private_key(tmp_path / "missing.key", "dnc", "OUTDIAL_SERVICE_KEY", dev=False)


def test_a_jwks_with_anything_but_public_ed25519_keys_is_refused(tmp_path: Path, real_keys: Path) -> None:
    good = json.loads((real_keys / "jwks.json").read_text())
    path = tmp_path / "jwks.json"
    cases = {
        "Ed25519": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]},
        "private key": {"keys": [{**good["keys"][0], "d": "AAAA"}]},
        "thumbprint": {"keys": [{**good["keys"][0], "kid": "chosen-by-me"}]},
        "outdial_use": {"keys": [{k: v for k, v in good["keys"][0].items() if k != "outdial_use"}]},
        "outdial_sub": {"keys": [{**good["keys"][1], "outdial_sub": "svc:everything"}]},
        "no key": {"keys": []},
    }
    for message, doc in cases.items():
        path.write_text(json.dumps(doc))
        with pytest.raises(KeyConfigError, match=message):
            load_jwks(path, dev=False)


def test_a_service_refuses_another_identitys_key(real_keys: Path) -> None:
    s = _settings(jwks=real_keys / "jwks.json", service_key=real_keys / "pacing.key")
    with pytest.raises(KeyConfigError, match="another identity's key"):
        service_keys(s, "dnc")
    s = _settings(jwks=real_keys / "jwks.json", service_key=real_keys / "issuer.key")
    with pytest.raises(KeyConfigError, match="another identity's key"):
        service_keys(s, "dnc")


def test_token_issue_signs_with_the_issuer_key_and_caps_the_ttl(
    real_keys: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OUTDIAL_DEV", raising=False)
    assert cli(["token", "issue", "--role", "admin", "--sub", "root"]) == 2
    assert "OUTDIAL_ISSUER_KEY is not set" in _err(capsys)
    monkeypatch.setenv("OUTDIAL_ISSUER_KEY", str(real_keys / "issuer.key"))
    monkeypatch.setenv("OUTDIAL_JWKS", str(real_keys / "jwks.json"))
    for ttl, message in (("0", "positive"), ("-1", "positive"), ("86401", "cap")):
        assert cli(["token", "issue", "--role", "manager", "--sub", "ops", "--ttl", ttl]) == 2
        assert message in _err(capsys)
    with pytest.raises(SystemExit):  # role service is not on offer: services sign their own tokens
        cli(["token", "issue", "--role", "service", "--sub", "svc:pacing"])
    capsys.readouterr()
    assert cli(["token", "issue", "--role", "manager", "--sub", "svc:pacing", "--json"]) == 2
    assert "issuer key may not sign service identities" in _err(capsys)
    assert cli(["token", "issue", "--role", "manager", "--sub", "ops", "--ttl", "600", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    p = verify_token(load_jwks(real_keys / "jwks.json", dev=False), out["token"])
    assert (p.subject, p.role, p.token_id) == ("ops", Role.MANAGER, out["jti"])
    # the issuer key is refused when it is not the JWKS's issuer key
    monkeypatch.setenv("OUTDIAL_ISSUER_KEY", str(real_keys / "agent.key"))
    with pytest.raises(KeyConfigError, match="not an issuer key"):
        issuer_key(Settings())


def test_keys_rotate_keeps_the_old_key_until_it_is_removed(
    real_keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = load_private_key(real_keys / "issuer.key", "issuer", "x", dev=False)
    old_token = issue_token(old, "ops", Role.MANAGER, 600)
    assert cli(["keys", "rotate", str(real_keys), "--key", "issuer", "--json"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["old_kid"] == old.kid != rotated["new_kid"]
    new = load_private_key(real_keys / "issuer.key", "issuer", "x", dev=False)
    assert new.kid == rotated["new_kid"]
    jwks = load_jwks(real_keys / "jwks.json", dev=False)
    assert verify_token(jwks, old_token).subject == "ops"
    assert verify_token(jwks, issue_token(new, "ops", Role.MANAGER, 600)).subject == "ops"
    # the current key cannot be removed; the old one can, and its tokens are refused after
    assert cli(["keys", "remove", str(real_keys), f"--kid={new.kid}"]) == 2
    assert "current issuer key" in _err(capsys)
    assert cli(["keys", "remove", str(real_keys), f"--kid={old.kid}"]) == 0
    with pytest.raises(Unauthenticated, match="unknown key"):
        verify_token(load_jwks(real_keys / "jwks.json", dev=False), old_token)
    assert not list(real_keys.glob("*.retired.key"))
    # the files are the operator's: init never overwrites them
    assert cli(["keys", "init", str(real_keys)]) == 1
    assert "refusing to overwrite" in _err(capsys)


def test_the_dev_keyset_files_match_the_built_in_one(dev_keys: Path) -> None:
    for name in ("issuer", "pacing", "gateway"):
        assert load_private_key(dev_keys / f"{name}.key", name, "x", dev=True).kid == dev_key(name).kid


def test_token_revoke_checks_its_arguments_before_touching_the_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OUTDIAL_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert cli(["token", "revoke", "--jti", "j1", "--before", "2026-01-01T00:00:00Z"]) == 2
    assert "--before goes with --subject" in _err(capsys)
    assert cli(["token", "revoke", "--subject", "ops", "--before", "yesterday"]) == 2
    assert "not an ISO 8601 time" in _err(capsys)
    assert cli(["token", "revoke", "--subject", "ops", "--before", "2999-01-01T00:00:00Z"]) == 2
    assert "must not be in the future" in _err(capsys)
    assert cli(["token", "revoke", "--subject", "ops", "--before", "2026-01-01T00:00:00"]) == 2
    assert "time zone" in _err(capsys)
    with pytest.raises(SystemExit):  # exactly one of --jti / --subject
        cli(["token", "revoke", "--jti", "j1", "--subject", "ops"])
    capsys.readouterr()
    assert cli(["token", "revoke", "--jti", "j1"]) == 1
    assert "cannot reach PostgreSQL (127.0.0.1:1/none; OUTDIAL_DATABASE_URL)" in _err(capsys)
