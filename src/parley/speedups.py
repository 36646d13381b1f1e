"""The per-message modules compiled by mypyc, used in place of their source when a build of
them is present and fresh.

Every message goes through the modules in MODULES (and every connection through the
handshake's and the socket ids'). They are plain Python that passes `mypy --strict`, and
`scripts/compile.py` turns that same source into C extension modules with mypyc (there is
no second implementation to keep in step): about 1.2x the chat throughput of the source on
one core (bench/README.md). The build goes to `_compiled/` beside this file with a manifest
of the SHA-256 of every source file of the package it was built against: compiled code
checks the types of what it reads from the modules it imports, so a change to any of them
(settings, say) makes the build stale, not only a change to MODULES.

`use_compiled()`, called by `parley/__init__.py` before any other Parley module is imported,
puts a finder first on `sys.meta_path` that loads those extension modules, but only when every
source still hashes as built and this interpreter takes extensions with the build's suffix. A
build that is stale, partial or for another Python is never loaded: Parley runs its source,
and STATUS says why (the server logs it at start). `PARLEY_COMPILED=0` runs the source.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_DIR = PACKAGE_DIR / "_compiled"
MANIFEST = "manifest.json"

# What qualifies a module (bench/README.md, "Compiled with mypyc", has the profile): its code
# runs for every message on some store (a client event or a publish is parsed, checked,
# stamped, stored, fanned out and written), or for every connection opened (the handshake and
# socket ids: the connection storm), or it holds a class extending a class compiled here: an
# interpreted class may not extend a compiled one (the history stores extend
# backends.history's). No compiled class may extend picows's WSListener, a C type:
# transport.server.Listener, which does, stays source. Per subscribe or per scrape is not
# enough (metrics: its counters are ints in the hub), nor once a second per connection
# (core.liveness's idle sweep: ~1 ms per 10,000 connections, compiled or not); core.transport and backends.broker are only Protocols (a compiled base
# would not make the calls cheaper: mypyc calls a class open to interpreted subclasses the
# Python way). core.delivery and backends.memory.broker carry every stored publication.
# core.admission (the handshake's checks, moved out of the node) and core.subscriptions,
# events, pusher_frames and event_counts run for every connection
# opened, signed in and closed (the events, and `ClientEventSent in bus.handlers` per client
# event): interpreted they cost the storm's path 9 % more instructions (bench/README.md).
# core.eager stays source: mypyc does not compile its generator-based coroutine.
#
# One rule for the code in MODULES (tests/unit/test_speedups.py checks it): never suspend while
# an exception is being handled: no `await` in an `except` or `finally` block, and no `async
# with` (its exit awaits with the exception pending). A compiled coroutine keeps the exception
# it handles in the thread's state, not in its own frame, so code the loop runs meanwhile can
# replace it: the exception is lost or freed early, and the process crashes later (seen as a
# segfault on the first failed PostgreSQL append). Note the exception, leave the block, then
# await; transactions go through the interpreted PostgresDb.transaction.
MODULES = (
    "parley.publication",
    "parley.protocol.frames",
    "parley.protocol.connection",
    "parley.protocol.channels",
    "parley.protocol.handshake",
    "parley.core.session",
    "parley.core.node",
    "parley.core.admission",
    "parley.core.delivery",
    "parley.core.subscriptions",
    "parley.core.events",
    "parley.core.pusher_frames",
    "parley.core.event_counts",
    "parley.core.hub",
    "parley.core.access",
    "parley.core.ids",
    "parley.transport.websocket",
    "parley.backends.memory.broker",
    "parley.backends.history",
    "parley.backends.memory.history",
    "parley.backends.sqlite.history_log",
    "parley.backends.sqlite.history_index",
    "parley.backends.sqlite.history",
    "parley.backends.postgres.history",
)

STATUS = "source: not checked yet"


def source_path(module: str) -> Path:
    return PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_hashes() -> dict[str, str]:
    """The SHA-256 of every source file of the package, by path within it."""
    return {
        path.relative_to(PACKAGE_DIR).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if not path.relative_to(PACKAGE_DIR).parts[0].startswith("_compiled")
    }


def extension_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


class _CompiledFinder(MetaPathFinder):
    """Finds the compiled modules (and mypyc's shared library) by their full names."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


def check_build(build_dir: Path = BUILD_DIR) -> tuple[dict[str, Path] | None, str]:
    """The files to load by module name, or None and why the source runs instead."""
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "source: no compiled build (scripts/compile.py makes one)"
    except (OSError, ValueError) as exc:
        return None, f"source: the compiled build's manifest is unreadable ({exc})"
    if manifest.get("suffix") != extension_suffix():
        return None, (
            f"source: the compiled build is for {manifest.get('suffix')!r} extensions, "
            f"this Python takes {extension_suffix()!r}"
        )
    if manifest.get("modules") != list(MODULES):
        return None, "source: the compiled build is of other modules; run scripts/compile.py"
    built: dict[str, str] = manifest.get("sources", {})
    current = source_hashes()
    changed = sorted(p for p in built.keys() | current.keys() if built.get(p) != current.get(p))
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return None, (
            f"source: the compiled build is stale ({', '.join(changed[:3])}{more} changed "
            "since); run scripts/compile.py"
        )
    files = {name: build_dir / rel for name, rel in manifest.get("files", {}).items()}
    missing = sorted(n for n in [*MODULES, *manifest.get("shared", [])] if n not in files)
    missing += sorted(n for n, f in files.items() if not f.is_file())
    if missing:
        return None, f"source: the compiled build is incomplete ({', '.join(missing)} missing)"
    return files, f"compiled: mypyc, {len(MODULES)} modules"


def use_compiled() -> None:
    """Load the compiled modules from now on, when the build is fresh; set STATUS."""
    global STATUS
    if os.environ.get("PARLEY_COMPILED", "1") == "0":
        STATUS = "source: PARLEY_COMPILED=0"
        return
    loaded = [m for m in MODULES if m in sys.modules]
    if loaded:  # too late: mixing would give two copies of a class
        STATUS = f"source: {loaded[0]} was imported before the compiled build was checked"
        return
    files, STATUS = check_build()
    if files is not None:
        sys.meta_path.insert(0, _CompiledFinder(files))


def compiled() -> bool:
    return STATUS.startswith("compiled")
