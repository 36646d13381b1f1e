"""The `parley` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from parley import __version__, cli_bots, cli_grants, cli_migrate, cli_users, logs, workers
from parley.errors import CannotStart, ConfigError
from parley.settings import load_settings, warn_unknown_variables


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley realtime server")
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", type=Path, help="TOML file ([server] and [[apps]])")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 6001; 0 picks a free port)")
    serve.add_argument("--data-dir", dest="data_dir", help="where state is kept")
    serve.add_argument("--activity-timeout", dest="activity_timeout_s", type=int)
    serve.add_argument("--pong-timeout", dest="pong_timeout_s", type=float)
    serve.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate chain (with --tls-key)")
    serve.add_argument("--tls-key", dest="tls_key", help="PEM private key; SIGHUP reloads both")
    serve.add_argument("--log-level", dest="log_level")
    serve.add_argument("--log-format", dest="log_format", choices=["json", "text"])
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes on one port, one per core (needs the Redis broker and PostgreSQL)",
    )
    cli_users.add_parser(sub)
    cli_grants.add_parser(sub)
    cli_bots.add_parser(sub)
    cli_migrate.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "users":
        return cli_users.run(args)
    if args.command == "grants":
        return cli_grants.run(args)
    if args.command == "bots":
        return cli_bots.run(args)
    if args.command == "migrate":
        return cli_migrate.run(args)
    if args.command == "serve":
        flags = {
            k: v
            for k, v in vars(args).items()
            if k not in ("command", "config", "workers") and v is not None
        }
        try:
            settings = load_settings(flags, config_file=args.config)
        except ConfigError as exc:
            print(f"parley: configuration error: {exc.message}", file=sys.stderr)
            return 2
        refused = workers.problem(settings, args.workers)
        if refused is not None:
            print(f"parley: configuration error: {refused}", file=sys.stderr)
            return 2
        warn_unknown_variables()
        logs.configure(settings.log_level, settings.log_format)
        if args.workers > 1 and workers.WORKER_VARIABLE not in os.environ:
            serve_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
            return workers.supervise(settings, args.workers, serve_argv)
        import uvloop

        from parley.app import serve

        try:
            uvloop.run(serve(settings))
        except CannotStart as exc:
            print(f"parley: cannot start: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(
                f"parley: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr
            )
            return 1
        return 0
    return 2
