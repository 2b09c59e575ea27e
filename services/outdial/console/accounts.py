"""The console's local users and sessions, in PostgreSQL (``console_users``, ``console_sessions``,
``console_user_log``; migration 0500).

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended profile); a
sign-in for an unknown or disabled user still verifies against a dummy hash, so the answer's timing does not
tell which users exist. A session is a random 256-bit secret held by the browser in an HttpOnly cookie; the
database keeps only its SHA-256, with the session's CSRF token, expiry and revocation.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from outdial.core.errors import AlreadyExists, InvalidArgument, NotFound

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "Session",
    "User",
    "add_user",
    "authenticate",
    "disable_user",
    "get_session",
    "list_users",
    "new_password",
    "open_session",
    "revoke_session",
    "set_password",
]

#: The console's roles: the people's roles of the services' tokens (core/auth.py). A supervisor is a manager.
ROLES: tuple[str, ...] = ("admin", "manager", "compliance", "agent")
MIN_PASSWORD_LENGTH = 12
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("not a password of anyone " + secrets.token_hex(8))


@dataclass(frozen=True)
class User:
    username: str
    role: str
    display_name: str
    created_at: datetime
    disabled: bool


@dataclass(frozen=True)
class Session:
    username: str
    role: str
    display_name: str
    csrf: str
    expires_at: datetime


def _check_username(username: str) -> str:
    name = username.strip().lower()
    if not _USERNAME.match(name):
        raise InvalidArgument(
            "2-64 characters: lower-case letters, digits and . _ @ -, starting with a letter or digit",
            field="username",
        )
    return name


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument(f"at least {MIN_PASSWORD_LENGTH} characters", field="password")
    if len(password) > 1024:
        raise InvalidArgument("at most 1024 characters", field="password")


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"one of {', '.join(ROLES)}", field="role")
    return role


def new_password() -> str:
    """A random password for a new user (printed once; the user changes it)."""
    return secrets.token_urlsafe(15)


async def _log(conn: asyncpg.Connection, actor: str, username: str, action: str, detail: str = "") -> None:
    await conn.execute(
        "INSERT INTO console_user_log (actor, username, action, detail) VALUES ($1, $2, $3, $4)",
        actor,
        username,
        action,
        detail,
    )


async def add_user(
    pool: asyncpg.Pool, username: str, role: str, password: str, *, actor: str, display_name: str = ""
) -> User:
    name = _check_username(username)
    _check_role(role)
    _check_password(password)
    digest = _HASHER.hash(password)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO console_users (username, role, display_name, password_hash, created_by)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username) DO NOTHING RETURNING created_at",
            name,
            role,
            display_name.strip(),
            digest,
            actor,
        )
        if row is None:
            raise AlreadyExists(f"user {name} already exists", field="username")
        await _log(conn, actor, name, "add", role)
    return User(name, role, display_name.strip(), row["created_at"], False)


async def set_password(pool: asyncpg.Pool, username: str, password: str, *, actor: str) -> None:
    name = _check_username(username)
    _check_password(password)
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.execute(
            "UPDATE console_users SET password_hash = $2 WHERE username = $1", name, _HASHER.hash(password)
        )
        if done.endswith(" 0"):
            raise NotFound(f"no user {name}")
        # A new password ends every session of the old one.
        await conn.execute(
            "UPDATE console_sessions SET revoked_at = now() WHERE username = $1 AND revoked_at IS NULL", name
        )
        await _log(conn, actor, name, "password")


async def disable_user(pool: asyncpg.Pool, username: str, *, actor: str) -> None:
    name = _check_username(username)
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.execute(
            "UPDATE console_users SET disabled_at = coalesce(disabled_at, now()) WHERE username = $1", name
        )
        if done.endswith(" 0"):
            raise NotFound(f"no user {name}")
        await conn.execute(
            "UPDATE console_sessions SET revoked_at = now() WHERE username = $1 AND revoked_at IS NULL", name
        )
        await _log(conn, actor, name, "disable")


async def list_users(pool: asyncpg.Pool) -> list[User]:
    rows = await pool.fetch(
        "SELECT username, role, display_name, created_at, disabled_at IS NOT NULL AS disabled"
        " FROM console_users ORDER BY username"
    )
    return [User(r["username"], r["role"], r["display_name"], r["created_at"], r["disabled"]) for r in rows]


async def authenticate(pool: asyncpg.Pool, username: str, password: str, *, ip: str = "") -> User | None:
    """The user when the password is theirs and they are not disabled; else None (and a logged failure)."""
    name = username.strip().lower()
    row = await pool.fetchrow(
        "SELECT username, role, display_name, created_at, password_hash, disabled_at IS NOT NULL AS disabled"
        " FROM console_users WHERE username = $1",
        name,
    )
    digest = row["password_hash"] if row is not None else _DUMMY_HASH
    try:
        ok: bool = _HASHER.verify(digest, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    async with pool.acquire() as conn:
        if row is None or not ok or row["disabled"]:
            await _log(conn, "anonymous", name[:64], "sign_in_failed", ip)
            return None
        if _HASHER.check_needs_rehash(digest):
            await conn.execute(
                "UPDATE console_users SET password_hash = $2 WHERE username = $1",
                name,
                _HASHER.hash(password),
            )
        await _log(conn, name, name, "sign_in", ip)
    return User(row["username"], row["role"], row["display_name"], row["created_at"], False)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def open_session(
    pool: asyncpg.Pool, user: User, ttl: timedelta, *, ip: str = "", user_agent: str = ""
) -> tuple[str, Session]:
    """A new session: returns the secret for the cookie (never stored) and the session."""
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + ttl
    await pool.execute(
        "INSERT INTO console_sessions (id_hash, username, csrf, expires_at, ip, user_agent)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        _hash(secret),
        user.username,
        csrf,
        expires,
        ip,
        user_agent[:256],
    )
    return secret, Session(user.username, user.role, user.display_name, csrf, expires)


async def get_session(pool: asyncpg.Pool, secret: str) -> Session | None:
    """The live session of this cookie secret: not expired, not revoked, its user not disabled."""
    if not secret or len(secret) > 128:
        return None
    row = await pool.fetchrow(
        "SELECT s.username, u.role, u.display_name, s.csrf, s.expires_at FROM console_sessions s"
        " JOIN console_users u USING (username)"
        " WHERE s.id_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.disabled_at IS NULL",
        _hash(secret),
    )
    if row is None:
        return None
    return Session(row["username"], row["role"], row["display_name"], row["csrf"], row["expires_at"])


async def revoke_session(pool: asyncpg.Pool, secret: str) -> None:
    await pool.execute(
        "UPDATE console_sessions SET revoked_at = now() WHERE id_hash = $1 AND revoked_at IS NULL",
        _hash(secret),
    )
