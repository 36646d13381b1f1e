"""Compile Parley's per-message modules with mypyc (see src/parley/speedups.py).

    .venv/bin/python -m pip install -r requirements-build.lock
    .venv/bin/python scripts/compile.py [--force]

Builds in build/mypyc/ (kept, so an unchanged module is not compiled again) and installs the
extension modules with their manifest into src/parley/_compiled/, replacing what was there in
one rename. Does nothing when that build is fresh. Without mypyc or a C compiler it says so and
leaves Parley on its source; under CI=true that is an error, so CI always tests the build.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
BUILD = ROOT / "build" / "mypyc"
sys.path.insert(0, str(SRC))
os.environ["PARLEY_COMPILED"] = "0"  # this script imports parley.speedups, never a build

from parley import speedups

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def build() -> dict[str, str]:
    """Run mypyc and the C compiler; the built files by module name, relative to BUILD/lib."""
    from mypyc.build import mypycify
    from setuptools import setup

    paths = [str(speedups.source_path(m).relative_to(SRC)) for m in speedups.MODULES]
    os.chdir(SRC)  # mypyc names modules by their path from here
    extensions = mypycify(paths, opt_level="3", target_dir=str(BUILD / "c"))
    setup(
        name="parley-compiled",
        ext_modules=extensions,
        script_args=[
            "--quiet",
            "build_ext",
            "--build-lib",
            str(BUILD / "lib"),
            "--build-temp",
            str(BUILD / "temp"),
        ],
    )
    return {
        ext.name: str(Path(*ext.name.split(".")).with_suffix(speedups.extension_suffix()))
        for ext in extensions
    }


def install(files: dict[str, str], sources: dict[str, str]) -> None:
    staging = speedups.BUILD_DIR.with_name("_compiled.new")
    shutil.rmtree(staging, ignore_errors=True)
    for rel in files.values():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUILD / "lib" / rel, target)
    manifest = {
        "suffix": speedups.extension_suffix(),
        "python": sys.version.split()[0],
        "mypy": importlib.metadata.version("mypy"),
        "modules": list(speedups.MODULES),
        "sources": sources,
        "files": files,
        "shared": sorted(set(files) - set(speedups.MODULES)),
    }
    (staging / speedups.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    old = speedups.BUILD_DIR.with_name("_compiled.old")
    shutil.rmtree(old, ignore_errors=True)
    if speedups.BUILD_DIR.exists():
        speedups.BUILD_DIR.rename(old)
    staging.rename(speedups.BUILD_DIR)
    shutil.rmtree(old, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="compile even when fresh")
    args = parser.parse_args()
    files, status = speedups.check_build()
    if files is not None and not args.force:
        print(f"parley: compiled modules are up to date ({status})")
        return 0
    sources = speedups.source_hashes()  # what is compiled is what these hashes describe
    started = time.monotonic()
    print(
        f"parley: compiling {len(speedups.MODULES)} modules with mypyc (a minute or two)...",
        flush=True,
    )
    try:
        built = build()
    except (SystemExit, Exception) as exc:
        print(f"parley: not compiled, Parley runs its source: {exc!r}", file=sys.stderr)
        return 1 if IN_CI else 0
    install(built, sources)
    print(
        f"parley: compiled in {time.monotonic() - started:.0f} s into "
        f"{speedups.BUILD_DIR.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
