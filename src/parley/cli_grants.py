"""`parley grants ...`: add, list and revoke the grants of an app (who may read, write, be
present on or manage which channels), from the same settings as `parley serve`.

Command line only, like `parley users`: exit 0 done, 1 refused, 2 bad settings. A running
server follows the store: a grant added here opens channels within a second, and one revoked
here ends the live subscriptions it allowed. Times are in seconds, as everywhere in Parley.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from parley.backends.grants import GrantStore
from parley.cli_users import Refused, access_stores, target, target_options
from parley.core.access import grant_json


def add_parser(sub: Any) -> None:
    """Add `grants` and its commands to the `parley` subparsers `sub`."""
    common = target_options()
    grants = sub.add_parser("grants", help="manage who may use which channels (built-in auth)")
    actions = grants.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", parents=[common], help="grant operations on channels")
    add.add_argument("subject", help="a user id, or * for every identified user")
    add.add_argument("resource", help="a channel name or pattern, e.g. 'presence-team-*'")
    add.add_argument(
        "operations", nargs="+", metavar="OPERATION", help="read, write, presence, manage"
    )
    add.add_argument("--ttl", dest="ttl_s", type=float, help="seconds until it expires")
    listing = actions.add_parser("list", parents=[common], help="list the grants in force")
    listing.add_argument("--subject")
    listing.add_argument("--resource")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a grant by its id")
    revoke.add_argument("grant_id")


def run(args: argparse.Namespace) -> int:
    try:
        settings, app_id = target(args)
        if args.action == "add" and args.ttl_s is not None and not args.ttl_s > 0:
            raise Refused("--ttl must be a positive number of seconds")
        return asyncio.run(_run(args, settings, app_id))
    except Refused as exc:
        print(f"parley: {exc.message}", file=sys.stderr)
        return exc.status


async def _run(args: argparse.Namespace, settings: Any, app_id: str) -> int:
    async with access_stores(settings) as (_, grants):
        return await _act(grants, args, app_id)


async def _act(grants: GrantStore, args: argparse.Namespace, app_id: str) -> int:
    if args.action == "add":
        try:
            grant = await grants.create(
                app_id, args.subject, args.resource, args.operations, args.ttl_s, None
            )
        except ValueError as exc:
            raise Refused(str(exc)) from None
        print(orjson.dumps(grant_json(grant)).decode())
        return 0
    if args.action == "revoke":
        gone = await grants.delete(app_id, args.grant_id)
        if gone is None:
            raise Refused(f"no grant {args.grant_id!r} in app {app_id!r}")
        print(f"revoked grant {gone.id} ({gone.subject} on {gone.resource})")
        return 0
    now = time.time()
    for grant in await grants.list(app_id, subject=args.subject, resource=args.resource):
        expires = grant_json(grant)["expires_at"]
        left = "never" if expires is None else f"in {max(0, int(expires - now))} s"
        print(
            f"{grant.id}  {grant.subject}  {grant.resource}  "
            f"{','.join(grant.operations)}  expires {left}"
        )
    return 0
