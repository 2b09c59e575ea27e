"""``outdial token issue|revoke`` and ``outdial keys init|rotate|remove|list`` (docs/security.md)."""

from __future__ import annotations

import argparse
import getpass
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import jwt

from outdial.cli.base import command, fail, print_json, print_table
from outdial.core.auth import Role, issue_token
from outdial.core.config import Settings
from outdial.core.redis import create_redis
from outdial.core.revocation import revoke
from outdial.core.signing import (
    KEY_NAMES,
    SERVICE_IDENTITIES,
    Jwks,
    SigningKey,
    dev_key,
    generate_key,
    issuer_key,
    jwks_of,
    load_jwks,
    load_private_key,
    parse_jwks,
    write_jwks,
    write_private_key,
)

JWKS_FILE = "jwks.json"


# ------------------------------------------------------------------------------------------- token


async def token_issue(args: argparse.Namespace, settings: Settings) -> int:
    key = issuer_key(settings)
    ttl = args.ttl if args.ttl is not None else settings.token_ttl_seconds
    try:
        token = issue_token(key, args.sub, Role(args.role), ttl)
    except ValueError as exc:
        return fail(str(exc), 2)
    if args.json:
        claims = jwt.decode(token, options={"verify_signature": False})
        print_json(
            {"token": token, "role": args.role, "sub": args.sub, "jti": claims["jti"], "exp": claims["exp"]}
        )
    else:
        print(token)
    return 0


def _parse_before(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"--before {text!r} is not an ISO 8601 time (e.g. 2026-01-02T03:04:05Z)") from exc


async def token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from outdial.core.server import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL

    if args.before is not None and args.subject is None:
        return fail("--before goes with --subject (a jti names one token)", 2)
    try:
        before = _parse_before(args.before)
    except ValueError as exc:
        return fail(str(exc), 2)
    if before is not None and (before.tzinfo is None or before > datetime.now(UTC)):
        return fail("--before needs a time zone and must not be in the future (e.g. 2026-01-02T03:04:05Z)", 2)
    dsn = settings.database_url or DEFAULT_DATABASE_URL
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = dsn.rsplit("@", 1)[-1]
        return fail(
            f"cannot reach PostgreSQL ({where}; OUTDIAL_DATABASE_URL), the record of revocations: {exc}"
        )
    redis = create_redis(settings.redis_url or DEFAULT_REDIS_URL)
    try:
        rev, mirrored = await revoke(
            pool,
            redis,
            jti=args.jti,
            subject=args.subject,
            before=before,
            revoked_by=f"cli:{getpass.getuser()}@{socket.gethostname()}",
            reason=args.reason or "",
        )
    except ValueError as exc:
        return fail(str(exc), 2)
    except asyncpg.UndefinedTableError:
        return fail("the database has no token_revocations table: run `outdial db migrate` first")
    finally:
        await redis.aclose()
        await pool.close()
    what = (
        f"jti {rev.value}" if rev.kind == "jti" else f"tokens of {rev.value} issued before {before or 'now'}"
    )
    if args.json:
        print_json(
            {"kind": rev.kind, "value": rev.value, "before": rev.before, "mirrored_to_redis": mirrored}
        )
    else:
        print(f"revoked {what} (recorded in PostgreSQL)")
        if not mirrored:
            print(
                "warning: Redis was not reachable: services pick the revocation up from PostgreSQL within "
                f"{settings.revocation_pg_seconds:.0f} s instead of at once"
            )
    return 0


# ------------------------------------------------------------------------------------------- keys


def _read_jwks(directory: Path) -> Jwks:
    path = directory / JWKS_FILE
    # Editing files only: development keys may be listed and rotated out here.
    return load_jwks(path, dev=True, setting=str(path))


def _current_keys(directory: Path) -> dict[str, SigningKey]:
    out = {}
    for name in KEY_NAMES:
        path = directory / f"{name}.key"
        if path.exists():
            out[name] = load_private_key(path, name, str(path), dev=True)
    return out


async def keys_init(args: argparse.Namespace, settings: Settings) -> int:
    directory = Path(args.dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [p.name for p in (directory / f"{n}.key" for n in KEY_NAMES) if p.exists()]
    if existing or (directory / JWKS_FILE).exists():
        return fail(
            f"{directory} already holds keys ({', '.join(existing) or JWKS_FILE}): refusing to overwrite"
        )
    made = [dev_key(n) if args.dev else generate_key(n) for n in KEY_NAMES]
    for key in made:
        write_private_key(directory / f"{key.name}.key", key)
    write_jwks(directory / JWKS_FILE, jwks_of(made, str(directory / JWKS_FILE)))
    if args.json:
        print_json({"dir": str(directory), "keys": {k.name: k.kid for k in made}, "dev": args.dev})
        return 0
    print(f"wrote {directory}/{JWKS_FILE} (public keys) and one private key per identity:")
    for key in made:
        print(f"  {key.name}.key  kid {key.kid}")
    if args.dev:
        print(
            "these are the DEVELOPMENT keys (public to anyone): services accept them only with OUTDIAL_DEV=1"
        )
        return 0
    print("\nKubernetes (docs/security.md): the JWKS for every service, each service its own key only,")
    print("the issuer key nowhere in the cluster (keep it where tokens are issued: OUTDIAL_ISSUER_KEY):")
    print(
        f"  kubectl -n outdial create secret generic outdial-jwks --from-file=jwks.json={directory}/{JWKS_FILE}"
    )
    for name in SERVICE_IDENTITIES:
        print(
            f"  kubectl -n outdial create secret generic outdial-key-{name} "
            f"--from-file=service.key={directory}/{name}.key"
        )
    return 0


async def keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    directory = Path(args.dir)
    jwks = _read_jwks(directory)
    current = _current_keys(directory).get(args.key)
    new = generate_key(args.key)
    doc = jwks.to_json()
    doc["keys"].append(new.public_jwk())
    write_jwks(directory / JWKS_FILE, parse_jwks(doc, str(directory / JWKS_FILE)))
    path = directory / f"{args.key}.key"
    if current is not None:
        path.replace(directory / f"{args.key}.{current.kid}.retired.key")
    write_private_key(path, new)
    if args.json:
        print_json({"key": args.key, "new_kid": new.kid, "old_kid": current.kid if current else None})
        return 0
    print(
        f"{args.key}: new key kid {new.kid} in {path}; {JWKS_FILE} now holds the old and the new public key"
    )
    print("next: 1. publish the JWKS to every service (they re-read it when the file changes);")
    if args.key == "issuer":
        print("      2. issue tokens with the new issuer.key;")
    else:
        print(
            f"      2. give the {args.key} service its new key (Secret outdial-key-{args.key}) and restart it;"
        )
    if current is not None:
        print(
            f"      3. after the longest token lifetime (24 h for people, 1 h for services): "
            f"`outdial keys remove {directory} --kid={current.kid}` and publish the JWKS again"
        )
    return 0


async def keys_remove(args: argparse.Namespace, settings: Settings) -> int:
    directory = Path(args.dir)
    jwks = _read_jwks(directory)
    if args.kid not in jwks.keys:
        return fail(f"--kid {args.kid} is not in {directory / JWKS_FILE}", 2)
    for name, key in _current_keys(directory).items():
        if key.kid == args.kid:
            return fail(f"kid {args.kid} is the current {name} key: `outdial keys rotate` it first", 2)
    doc = jwks.to_json()
    doc["keys"] = [k for k in doc["keys"] if k["kid"] != args.kid]
    if not doc["keys"]:
        return fail("that would leave the JWKS empty", 2)
    write_jwks(directory / JWKS_FILE, parse_jwks(doc, str(directory / JWKS_FILE)))
    for retired in directory.glob(f"*.{args.kid}.retired.key"):
        retired.unlink()
    print(f"removed kid {args.kid}: tokens it signed are refused once the services read the new JWKS")
    return 0


async def keys_list(args: argparse.Namespace, settings: Settings) -> int:
    directory = Path(args.dir)
    jwks = _read_jwks(directory)
    current = {k.kid: n for n, k in _current_keys(directory).items()}
    rows: list[dict[str, Any]] = [
        {
            "kid": pk.kid,
            "use": pk.use,
            "subject": pk.subject or "",
            "current": current.get(pk.kid, ""),
            "dev": pk.dev,
        }
        for pk in jwks.keys.values()
    ]
    if args.json:
        print_json(rows)
    else:
        print_table(
            f"{directory / JWKS_FILE}",
            ["kid", "use", "subject", "current key of", "dev"],
            [[r["kid"], r["use"], r["subject"], r["current"], "yes" if r["dev"] else ""] for r in rows],
        )
    return 0


def register(sub: Any) -> None:
    tok = sub.add_parser("token", help="issue and revoke bearer tokens").add_subparsers(
        dest="token_cmd", required=True
    )
    p = command(tok, "issue", token_issue, "print a token signed with the issuer key (OUTDIAL_ISSUER_KEY)")
    p.add_argument("--role", required=True, choices=[r.value for r in Role if r is not Role.SERVICE])
    p.add_argument("--sub", required=True, help="subject (user or agent id)")
    p.add_argument(
        "--ttl", type=int, help="lifetime in seconds (default OUTDIAL_TOKEN_TTL_SECONDS; at most 24 h)"
    )

    p = command(tok, "revoke", token_revoke, "revoke one token (--jti) or a subject's tokens (--subject)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--jti", help="the token's jti (`outdial token issue --json` prints it)")
    which.add_argument("--subject", help="revoke every token of this subject issued before --before")
    p.add_argument("--before", help="ISO 8601 time, default now (with --subject)")
    p.add_argument("--reason", help="recorded with the revocation")

    keys = sub.add_parser("keys", help="signing keys and the JWKS").add_subparsers(
        dest="keys_cmd", required=True
    )
    p = command(keys, "init", keys_init, "make an issuer key, one key per service and jwks.json in DIR")
    p.add_argument("dir", help="directory for the key files (created, mode 700)")
    p.add_argument("--dev", action="store_true", help="write the public development keyset instead")
    p = command(keys, "rotate", keys_rotate, "add a new key (new kid) for one identity; the old one stays")
    p.add_argument("dir")
    p.add_argument("--key", required=True, choices=KEY_NAMES, help="which identity's key")
    p = command(keys, "remove", keys_remove, "remove an old public key (by kid) from DIR/jwks.json")
    p.add_argument("dir")
    p.add_argument(
        "--kid",
        required=True,
        help="the key id; write --kid=KID when it starts with a dash (kids are base64url)",
    )
    p = command(keys, "list", keys_list, "list the keys of DIR/jwks.json")
    p.add_argument("dir")
