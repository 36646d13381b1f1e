"""`parley users ...`: add, disable, enable and list the accounts of an app's user store, from
the same settings as `parley serve` (so the same `<data_dir>/parley.db` or PostgreSQL).

Command line only: arguments, the password prompt, messages and exit codes (0 done, 1 refused,
2 bad settings). A running server notices a disabled user within a second and ends its
connections. No password or hash is ever printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from parley.backends.grants import GrantStore
from parley.backends.users import UserStore, check_name
from parley.errors import ConfigError
from parley.settings import Settings, load_settings, warn_unknown_variables


class Refused(Exception):
    """The command cannot be done; the message says why, for stderr."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def target_options() -> argparse.ArgumentParser:
    """`--config`, `--data-dir` and `--app`, as the users and grants commands take them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML file, as for `parley serve`")
    common.add_argument("--data-dir", dest="data_dir", help="where state is kept")
    common.add_argument("--app", dest="app_id", help="app id (default: the first configured)")
    return common


def add_parser(sub: Any) -> None:
    """Add `users` and its commands to the `parley` subparsers `sub`."""
    common = target_options()
    users = sub.add_parser("users", help="manage the user accounts of an app")
    actions = users.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", parents=[common], help="add a user (prompts for a password)")
    add.add_argument("name", help="the user id: 1-128 of A-Z a-z 0-9 _ - = @ , . ;")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (one trailing newline is dropped)",
    )
    add.add_argument("--info", help='JSON object shown in presence, e.g. \'{"name": "Ann"}\'')
    for action, what in (("disable", "disable a user"), ("enable", "enable a user")):
        parser = actions.add_parser(action, parents=[common], help=what)
        parser.add_argument("name")
    actions.add_parser("list", parents=[common], help="list users and whether they are disabled")


def run(args: argparse.Namespace) -> int:
    try:
        settings, app_id = target(args)
        info = None
        if args.action == "add":
            _check_name(args.name)
            info = _info(args.info)
        return asyncio.run(_run(args, settings, app_id, info))
    except Refused as exc:
        print(f"parley: {exc.message}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def target(args: argparse.Namespace) -> tuple[Settings, str]:
    """The settings and app id that `--config`, `--data-dir` and `--app` name (the users and
    grants commands share them); Refused when they name nothing that can be changed."""
    flags = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        settings = load_settings(flags, config_file=args.config)
    except ConfigError as exc:
        raise Refused(f"configuration error: {exc.message}", 2) from None
    warn_unknown_variables()
    if settings.store == "memory":
        raise Refused("store is 'memory': nothing is stored to change; use sqlite or postgres", 2)
    ids = [app.id for app in settings.apps]
    app_id = args.app_id or ids[0]
    if app_id not in ids:
        raise Refused(f"unknown app {app_id!r} (configured: {', '.join(ids)})")
    return settings, app_id


def _check_name(name: str) -> None:
    try:
        check_name(name)
    except ValueError as exc:
        raise Refused(str(exc)) from None


def _info(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(f"--info is not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise Refused("--info must be a JSON object")
    return info


def _read_password(name: str, from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.read()
        password = password.removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass(f"Password for {name}: ")
        if password and getpass.getpass("Repeat the password: ") != password:
            raise Refused("the passwords differ")
    if not password:
        raise Refused("the password must not be empty")
    return password


async def _run(
    args: argparse.Namespace, settings: Settings, app_id: str, info: dict[str, Any] | None
) -> int:
    async with access_stores(settings) as (store, _):
        return await _act(store, args, app_id, info)


@contextlib.asynccontextmanager
async def access_stores(settings: Settings) -> AsyncIterator[tuple[UserStore, GrantStore]]:
    """The user and grant stores of `settings`, started, on their opened database; closed
    after. A database that cannot be opened is Refused."""
    from parley.app import make_stores, open_database

    try:
        db = await open_database(settings)
    except Exception as exc:
        raise Refused(f"cannot open the {settings.store} store: {exc}") from None
    try:
        stores = make_stores(db)
        users, grants = stores.users, stores.grants
        await users.start()
        await grants.start()
        try:
            yield users, grants
        finally:
            await grants.close()
            await users.close()
    finally:
        if db is not None:
            await db.close()


async def _act(
    store: UserStore, args: argparse.Namespace, app_id: str, info: dict[str, Any] | None
) -> int:
    if args.action == "list":
        users = await store.list(app_id)
        width = max((len(u.name) for u in users), default=0)
        for user in users:
            print(f"{user.name:<{width}}  {'disabled' if user.disabled else 'enabled'}")
        return 0
    name: str = args.name
    if args.action == "add":
        if await store.get(app_id, name) is not None:  # before asking for a password
            raise Refused(f"user {name!r} already exists in app {app_id!r}")
        password = _read_password(name, args.password_stdin)
        try:
            await store.add(app_id, name, password, info)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        print(f"added user {name!r} to app {app_id!r}")
        return 0
    changed = await (store.disable if args.action == "disable" else store.enable)(app_id, name)
    if not changed:
        raise Refused(f"no user {name!r} in app {app_id!r}")
    print(f"{args.action}d user {name!r} in app {app_id!r}")
    return 0
