"""Token signing keys: Ed25519 private keys (PEM files), the JWKS of public keys, and the development keyset.

Who holds what (docs/security.md):

- the **issuer** key signs people's tokens (admin, manager, agent, compliance); only the token-issuing path
  holds it (``outdial token issue``, OUTDIAL_ISSUER_KEY);
- each **service** key signs that service's own tokens and nothing else (OUTDIAL_SERVICE_KEY, one per
  service);
- every verifier holds the **JWKS** (OUTDIAL_JWKS): public keys only, each bound to what it may sign by two
  members of its JWK: ``"outdial_use": "issuer"``, or ``"outdial_use": "service"`` with
  ``"outdial_sub": "svc:<name>"``. Keys are selected by ``kid``, the RFC 7638 thumbprint of the public key,
  so a rotation adds a key with a new kid beside the old one.

The development keyset is derived from fixed seeds: anyone can rebuild it, so it is accepted only in
development mode (OUTDIAL_DEV=1) and every other use is refused at start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from outdial.core.config import Settings

log = logging.getLogger("outdial.keys")

# The identities that own a key: the issuer of people's tokens and one key per service.
ISSUER = "issuer"
SERVICE_IDENTITIES: tuple[str, ...] = ("campaign", "pacing", "dnc", "agent", "gateway")
KEY_NAMES: tuple[str, ...] = (ISSUER, *SERVICE_IDENTITIES)

Use = Literal["issuer", "service"]


class KeyConfigError(ValueError):
    """The key configuration cannot be used; the message names the setting and how to fix it."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an Ed25519 public key: a kid that cannot disagree with its key."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64(_raw_public(key))}, separators=(",", ":"), sort_keys=True
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


def subject_of(name: str) -> str:
    """The subject a key named ``name`` may sign for: ``svc:<name>`` for a service, none for the issuer."""
    return f"svc:{name}"


# ------------------------------------------------------------------------------------------- dev keyset


def _dev_private(name: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(f"outdial development key, refused without OUTDIAL_DEV=1: {name}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


DEV_KIDS: frozenset[str] = frozenset(kid_of(_dev_private(n).public_key()) for n in KEY_NAMES)

DEV_WARNING = (
    "DEVELOPMENT KEYS IN USE: tokens are signed with the public development keyset (anyone can mint any "
    "token). This is accepted only because OUTDIAL_DEV=1; never run production this way "
    "(`outdial keys init DIR`, docs/security.md)."
)


# ------------------------------------------------------------------------------------------- private keys


@dataclass(frozen=True)
class SigningKey:
    """A private key and the identity it signs for (``issuer`` or a service name)."""

    name: str
    private: Ed25519PrivateKey
    dev: bool = False

    @property
    def kid(self) -> str:
        return kid_of(self.private.public_key())

    @property
    def use(self) -> Use:
        return "issuer" if self.name == ISSUER else "service"

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64(_raw_public(self.private.public_key())),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
            "outdial_use": self.use,
        }
        if self.use == "service":
            jwk["outdial_sub"] = subject_of(self.name)
        return jwk

    def public(self) -> PublicKey:
        sub = subject_of(self.name) if self.use == "service" else None
        return PublicKey(self.kid, self.private.public_key(), self.use, sub, self.dev)

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def dev_key(name: str) -> SigningKey:
    if name not in KEY_NAMES:
        raise KeyConfigError(f"no development key named {name!r} (one of {', '.join(KEY_NAMES)})")
    return SigningKey(name, _dev_private(name), dev=True)


def generate_key(name: str) -> SigningKey:
    if name not in KEY_NAMES:
        raise KeyConfigError(f"unknown key {name!r}: one of {', '.join(KEY_NAMES)}")
    return SigningKey(name, Ed25519PrivateKey.generate())


def load_private_key(path: Path, name: str, setting: str, *, dev: bool) -> SigningKey:
    """Read a PEM Ed25519 private key; refuse a missing, unreadable, loose or weak key (the dev keys outside
    development mode, anything that is not Ed25519: an HS256 secret, an RSA or EC key)."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyConfigError(f"{setting}={path}: cannot read the key file ({exc.strerror})") from exc
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP) and not dev:
        raise KeyConfigError(
            f"{setting}={path}: a private key must not be readable by others or writable by the group "
            f"(mode {stat.S_IMODE(st.st_mode):o}; chmod 600, or defaultMode 0440 on a Secret volume)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyConfigError(
            f"{setting}={path}: not an unencrypted PEM private key ({exc}); make one with `outdial keys init`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyConfigError(
            f"{setting}={path}: a {type(key).__name__.removeprefix('_')} is not accepted: tokens are signed "
            "with Ed25519 keys only (`outdial keys init`)"
        )
    signing = SigningKey(name, key)
    if signing.kid in DEV_KIDS:
        if not dev:
            raise KeyConfigError(
                f"{setting}={path} is a development key (public to anyone): refused without OUTDIAL_DEV=1; "
                "make real keys with `outdial keys init DIR`"
            )
        signing = SigningKey(name, key, dev=True)
    return signing


def write_private_key(path: Path, key: SigningKey) -> None:
    """Write a PEM key readable by its owner only; never overwrites a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.pem())


# ------------------------------------------------------------------------------------------- JWKS


@dataclass(frozen=True)
class PublicKey:
    kid: str
    key: Ed25519PublicKey
    use: Use
    # For a service key: the subject it may sign for ("svc:pacing"); None for the issuer.
    subject: str | None
    dev: bool

    def may_sign(self, role: str, subject: str) -> str | None:
        """Why this key may not sign a token for ``role``/``subject`` (None when it may).

        The issuer signs people's tokens, never ``role=service`` nor a ``svc:`` subject; a service key signs
        ``role=service`` tokens of its own subject (``svc:<name>`` or ``svc:<name>:<instance>``) only."""
        if self.use == "issuer":
            if role == "service" or subject.startswith("svc:"):
                return "the issuer key may not sign service identities (each service signs its own)"
            return None
        assert self.subject is not None
        if role != "service":
            return f"a service key ({self.subject}) may sign only role 'service', not {role!r}"
        if subject != self.subject and not subject.startswith(self.subject + ":"):
            return f"the key of {self.subject} may not sign for {subject!r}"
        return None


@dataclass(frozen=True)
class Jwks:
    """The verifier's keys by kid."""

    keys: Mapping[str, PublicKey]
    source: str = "(memory)"

    def get(self, kid: str) -> PublicKey | None:
        return self.keys.get(kid)

    @property
    def dev(self) -> bool:
        return any(k.dev for k in self.keys.values())

    def to_json(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k) for k in self.keys.values()]}


def public_jwk(k: PublicKey) -> dict[str, Any]:
    jwk: dict[str, Any] = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64(_raw_public(k.key)),
        "kid": k.kid,
        "alg": "EdDSA",
        "use": "sig",
        "outdial_use": k.use,
    }
    if k.subject is not None:
        jwk["outdial_sub"] = k.subject
    return jwk


def _parse_jwk(jwk: Any, where: str) -> PublicKey:
    if not isinstance(jwk, dict):
        raise KeyConfigError(f"{where}: a key must be a JSON object")
    if "d" in jwk:
        raise KeyConfigError(f"{where}: holds a private key ('d'): the JWKS must hold public keys only")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise KeyConfigError(
            f"{where}: kty {jwk.get('kty')!r} crv {jwk.get('crv')!r} is not accepted: Ed25519 (OKP) keys only"
        )
    if jwk.get("alg", "EdDSA") != "EdDSA":
        raise KeyConfigError(f"{where}: alg must be EdDSA, not {jwk.get('alg')!r}")
    try:
        raw = _unb64(str(jwk["x"]))
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (KeyError, ValueError) as exc:
        raise KeyConfigError(f"{where}: 'x' is not a 32-byte Ed25519 public key") from exc
    kid = kid_of(key)
    if jwk.get("kid") != kid:
        raise KeyConfigError(f"{where}: kid {jwk.get('kid')!r} is not the key's thumbprint {kid!r}")
    use = jwk.get("outdial_use")
    if use == "issuer":
        if "outdial_sub" in jwk:
            raise KeyConfigError(f"{where} (kid {kid}): an issuer key has no outdial_sub")
        return PublicKey(kid, key, "issuer", None, kid in DEV_KIDS)
    if use == "service":
        sub = jwk.get("outdial_sub")
        names = {subject_of(n) for n in SERVICE_IDENTITIES}
        if sub not in names:
            raise KeyConfigError(
                f"{where} (kid {kid}): a service key needs outdial_sub, one of {', '.join(sorted(names))}"
                f" (got {sub!r})"
            )
        return PublicKey(kid, key, "service", str(sub), kid in DEV_KIDS)
    raise KeyConfigError(f"{where} (kid {kid}): outdial_use must be 'issuer' or 'service', not {use!r}")


def parse_jwks(doc: Any, source: str) -> Jwks:
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyConfigError(f"{source}: not a JWKS (a JSON object with a 'keys' list)")
    keys: dict[str, PublicKey] = {}
    for i, jwk in enumerate(doc["keys"]):
        pk = _parse_jwk(jwk, f"{source} keys[{i}]")
        keys[pk.kid] = pk
    if not keys:
        raise KeyConfigError(f"{source}: the JWKS holds no key")
    return Jwks(keys, source)


def jwks_of(keys: Iterable[SigningKey], source: str = "(memory)") -> Jwks:
    return parse_jwks({"keys": [k.public_jwk() for k in keys]}, source)


def dev_jwks() -> Jwks:
    return jwks_of((dev_key(n) for n in KEY_NAMES), "the development keyset")


def load_jwks(path: Path, *, dev: bool, setting: str = "OUTDIAL_JWKS") -> Jwks:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyConfigError(f"{setting}={path}: cannot read the JWKS ({exc.strerror})") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyConfigError(f"{setting}={path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    jwks = parse_jwks(doc, f"{setting}={path}")
    if jwks.dev and not dev:
        raise KeyConfigError(
            f"{setting}={path} holds development keys (public to anyone): refused without OUTDIAL_DEV=1"
        )
    return jwks


def write_jwks(path: Path, jwks: Jwks) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jwks.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------- from settings


@dataclass(frozen=True)
class ServiceKeys:
    """What a service process holds: the verifiers' JWKS and its own signing key."""

    jwks: Jwks
    signer: SigningKey

    @property
    def dev(self) -> bool:
        return self.jwks.dev or self.signer.dev


def _check_retired_secret(settings: Settings) -> None:
    if settings.auth_secret is None:
        return
    if not settings.dev:
        raise KeyConfigError(
            "OUTDIAL_AUTH_SECRET is set: the HS256 shared secret is retired and refused (anyone holding it "
            "could mint an admin token). Remove it from the environment/Secret; set OUTDIAL_JWKS and "
            "OUTDIAL_SERVICE_KEY instead (`outdial keys init DIR`, docs/security.md)"
        )
    log.warning("OUTDIAL_AUTH_SECRET is set and ignored: tokens are signed with Ed25519 keys now")


def _jwks_from(settings: Settings) -> Jwks:
    if settings.jwks is not None:
        return load_jwks(settings.jwks, dev=settings.dev)
    if not settings.dev:
        raise KeyConfigError(
            "OUTDIAL_JWKS is not set: every service verifies tokens against the JWKS file (public keys); "
            "make one with `outdial keys init DIR` (or set OUTDIAL_DEV=1 for the development keyset)"
        )
    return dev_jwks()


def service_keys(settings: Settings, name: str) -> ServiceKeys:
    """The keys of service ``name``, or KeyConfigError when they are missing, weak or development keys
    outside development mode (services refuse to start then)."""
    _check_retired_secret(settings)
    jwks = _jwks_from(settings)
    if settings.service_key is not None:
        signer = load_private_key(settings.service_key, name, "OUTDIAL_SERVICE_KEY", dev=settings.dev)
    elif settings.dev:
        signer = dev_key(name)
    else:
        raise KeyConfigError(
            f"OUTDIAL_SERVICE_KEY is not set: the {name} service signs its own identity (svc:{name}) with its "
            f"private key ({name}.key from `outdial keys init DIR`)"
        )
    public = jwks.get(signer.kid)
    if public is None:
        raise KeyConfigError(
            f"OUTDIAL_SERVICE_KEY: its public key (kid {signer.kid}) is not in {jwks.source}: publish it there "
            "first (`outdial keys rotate` adds it), or point OUTDIAL_SERVICE_KEY at this service's key"
        )
    if public.subject != subject_of(name):
        raise KeyConfigError(
            f"OUTDIAL_SERVICE_KEY: kid {signer.kid} is bound to {public.subject or 'the issuer'} in "
            f"{jwks.source}, not to {subject_of(name)}: this is another identity's key"
        )
    keys = ServiceKeys(jwks, signer)
    if keys.dev:
        log.warning(DEV_WARNING)
    return keys


def verifier_jwks(settings: Settings) -> Jwks:
    """The JWKS alone (a verifier that signs nothing), with the same refusals as :func:`service_keys`."""
    _check_retired_secret(settings)
    jwks = _jwks_from(settings)
    if jwks.dev:
        log.warning(DEV_WARNING)
    return jwks


def issuer_key(settings: Settings) -> SigningKey:
    """The issuer's private key (``outdial token issue`` and the simulators only)."""
    if settings.issuer_key is None:
        if not settings.dev:
            raise KeyConfigError(
                "OUTDIAL_ISSUER_KEY is not set: people's tokens are signed with the issuer's private key "
                "(issuer.key from `outdial keys init DIR`), held only where tokens are issued"
            )
        log.warning(DEV_WARNING)
        return dev_key(ISSUER)
    key = load_private_key(settings.issuer_key, ISSUER, "OUTDIAL_ISSUER_KEY", dev=settings.dev)
    if settings.jwks is not None:
        public = load_jwks(settings.jwks, dev=settings.dev).get(key.kid)
        if public is None or public.use != "issuer":
            raise KeyConfigError(
                f"OUTDIAL_ISSUER_KEY: kid {key.kid} is not an issuer key of OUTDIAL_JWKS={settings.jwks}"
            )
    if key.dev:
        log.warning(DEV_WARNING)
    return key
