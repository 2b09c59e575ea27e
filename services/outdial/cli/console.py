"""``outdial console`` (serve the web console) and ``outdial user add|list|disable|password``."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from outdial.cli.base import command, fail, group, print_json, print_table
from outdial.console import accounts
from outdial.console.settings import ConsoleSettings
from outdial.core import db
from outdial.core import logging as odlog
from outdial.core.config import Settings, StartupRefused
from outdial.core.errors import OutdialError


async def console_serve(args: argparse.Namespace, settings: Settings) -> int:
    from outdial.console.server import serve

    odlog.configure("console", settings.log_level, settings.log_json)
    csettings = ConsoleSettings()
    if args.port is not None:
        csettings.port = args.port
    try:
        await serve(settings, csettings)
    except StartupRefused as exc:
        return fail(str(exc), 2)
    return 0


def _url(settings: Settings) -> str:
    from outdial.console.server import database_url

    return database_url(settings, ConsoleSettings())


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated): --password-stdin reads one line; otherwise a random one, printed once."""
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\n")
        return line, False
    return accounts.new_password(), True


async def user_add(args: argparse.Namespace, settings: Settings) -> int:
    password, generated = _password(args)
    pool = await db.create_pool(_url(settings), max_size=2)
    try:
        user = await accounts.add_user(
            pool,
            args.username,
            args.role,
            password,
            actor=os.environ.get("USER", "cli"),
            display_name=args.name,
        )
    except OutdialError as exc:
        field = exc.details.get("field")
        return fail(f"{field}: {exc.message}" if field else exc.message, 2)
    finally:
        await pool.close()
    if args.json:
        print_json(
            {"username": user.username, "role": user.role, **({"password": password} if generated else {})}
        )
    else:
        print(f"user {user.username} ({user.role}) added")
        if generated:
            print(f"password (shown once): {password}")
    return 0


async def user_list(args: argparse.Namespace, settings: Settings) -> int:
    pool = await db.create_pool(_url(settings), max_size=2)
    try:
        users = await accounts.list_users(pool)
    finally:
        await pool.close()
    if args.json:
        print_json(
            [
                {
                    "username": u.username,
                    "role": u.role,
                    "name": u.display_name,
                    "created_at": u.created_at.isoformat(),
                    "disabled": u.disabled,
                }
                for u in users
            ]
        )
    else:
        print_table(
            "console users",
            ["user", "role", "name", "created", "status"],
            [
                (
                    u.username,
                    u.role,
                    u.display_name,
                    u.created_at.strftime("%Y-%m-%d %H:%M"),
                    "disabled" if u.disabled else "active",
                )
                for u in users
            ],
        )
    return 0


async def user_disable(args: argparse.Namespace, settings: Settings) -> int:
    pool = await db.create_pool(_url(settings), max_size=2)
    try:
        await accounts.disable_user(pool, args.username, actor=os.environ.get("USER", "cli"))
    except OutdialError as exc:
        return fail(exc.message, 2 if exc.details.get("field") else 4)
    finally:
        await pool.close()
    print(f"user {args.username} disabled; their sessions are ended")
    return 0


async def user_password(args: argparse.Namespace, settings: Settings) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("new password: ")
    pool = await db.create_pool(_url(settings), max_size=2)
    try:
        await accounts.set_password(pool, args.username, password, actor=os.environ.get("USER", "cli"))
    except OutdialError as exc:
        field = exc.details.get("field")
        return fail(f"{field}: {exc.message}" if field else exc.message, 2)
    finally:
        await pool.close()
    print(f"password of {args.username} changed; their sessions are ended")
    return 0


def register(sub: Any) -> None:
    p = command(sub, "console", console_serve, "serve the web console (http://127.0.0.1:8080 by default)")
    p.add_argument("--port", type=int, help="listen on this port (default: OUTDIAL_CONSOLE_PORT or 8080)")
    users = group(sub, "user", "the console's local users")
    p = command(users, "add", user_add, "add a console user (a random password is printed once)")
    p.add_argument("username")
    p.add_argument("--role", required=True, choices=accounts.ROLES)
    p.add_argument("--name", default="", help="full name shown in the console")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    command(users, "list", user_list, "list console users")
    p = command(users, "disable", user_disable, "disable a user and end their sessions")
    p.add_argument("username")
    p = command(users, "password", user_password, "set a user's password (ends their sessions)")
    p.add_argument("username")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
