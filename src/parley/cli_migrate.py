"""`parley migrate`: apply the pending schema migrations of the database that `parley serve`
would use (the same settings: `store`, `postgres_url`, `data_dir`), then exit.

`parley serve` applies them at start anyway; this is for applying them ahead of a deployment,
or from a one-off job. Prints each migration applied and a summary line. Exit codes: 0 done
(nothing to do included), 1 the database could not be opened or a migration failed (it was
rolled back; those before it stay applied), 2 bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from parley.backends.database import Database, Migration, MigrationFailed
from parley.errors import ConfigError
from parley.settings import load_settings, warn_unknown_variables


def add_parser(sub: Any) -> None:
    """Add `migrate` to the `parley` subparsers `sub`."""
    migrate = sub.add_parser("migrate", help="apply pending database migrations and exit")
    migrate.add_argument("--config", type=Path, help="TOML file, as for `parley serve`")
    migrate.add_argument("--data-dir", dest="data_dir", help="where state is kept")


def run(args: argparse.Namespace) -> int:
    flags = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        settings = load_settings(flags, config_file=args.config)
    except ConfigError as exc:
        print(f"parley: configuration error: {exc.message}", file=sys.stderr)
        return 2
    warn_unknown_variables()
    from parley.app import make_database

    db = make_database(settings)
    if db is None:
        print("store is 'memory': no database, nothing to migrate")
        return 0
    return asyncio.run(_migrate(db))


async def _migrate(db: Database) -> int:
    where = db.describe()
    try:
        await db.open()
    except Exception as exc:
        print(f"parley: cannot open {where}: {exc}", file=sys.stderr)
        return 1
    try:
        applied = await db.migrate()
    except MigrationFailed as exc:
        _print_applied(exc.applied)
        print(f"parley: {where}: {exc}", file=sys.stderr)
        return 1
    finally:
        await db.close()
    _print_applied(applied)
    version = db.migrations[-1].version if db.migrations else 0
    if applied:
        count = f"{len(applied)} migration{'s' if len(applied) != 1 else ''}"
        print(f"{where}: {count} applied, now at version {version}")
    else:
        print(f"{where}: nothing to do, already at version {version}")
    return 0


def _print_applied(applied: list[Migration]) -> None:
    for migration in applied:
        print(f"applied migration {migration.version}: {migration.name}")
