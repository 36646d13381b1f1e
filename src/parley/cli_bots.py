"""`parley bots ...`: add and list the bots of an app, from the same settings as `parley
serve`. `add` prints the bot's id, secret and webhook secret once: the store keeps only a hash.

Command line only, like `parley users`: exit 0 done, 1 refused, 2 bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from parley.backends.bots import BotStore
from parley.cli_users import Refused, target, target_options
from parley.core.bots import add_to, new_bot
from parley.errors import ParleyError
from parley.settings import Settings


def add_parser(sub: Any) -> None:
    """Add `bots` and its commands to the `parley` subparsers `sub`."""
    common = target_options()
    bots = sub.add_parser("bots", help="manage the bots of an app")
    actions = bots.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", parents=[common], help="add a bot; prints its secret once")
    add.add_argument("name", help="1-64 of A-Z a-z 0-9 _ . -")
    add.add_argument("--webhook-url", dest="webhook_url", help="where it receives its events")
    actions.add_parser("list", parents=[common], help="list the app's bots")


def run(args: argparse.Namespace) -> int:
    try:
        settings, app_id = target(args)
        return asyncio.run(_run(args, settings, app_id))
    except Refused as exc:
        print(f"parley: {exc.message}", file=sys.stderr)
        return exc.status


async def _run(args: argparse.Namespace, settings: Settings, app_id: str) -> int:
    app = next(a for a in settings.apps if a.id == app_id)
    async with bot_store(settings) as store:
        if args.action == "list":
            for bot in await store.list(app_id):
                print(orjson.dumps(bot.wire()).decode())
            return 0
        try:
            made = new_bot(app, args.name, args.webhook_url, int(time.time() * 1000))
            await add_to(store, made)
        except ParleyError as exc:
            raise Refused(exc.message) from None
        print(f"added bot {args.name!r} to app {app_id!r}; its secret is shown this once:")
        print(orjson.dumps(made.wire(), option=orjson.OPT_INDENT_2).decode())
        return 0


@contextlib.asynccontextmanager
async def bot_store(settings: Settings) -> AsyncIterator[BotStore]:
    from parley.app import make_stores, open_database

    try:
        db = await open_database(settings)
    except Exception as exc:
        raise Refused(f"cannot open the {settings.store} store: {exc}") from None
    try:
        store = make_stores(db).bots
        await store.start()
        try:
            yield store
        finally:
            await store.close()
    finally:
        if db is not None:
            await db.close()
