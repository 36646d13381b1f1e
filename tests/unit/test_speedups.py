"""The compiled build is loaded only when it is fresh and for this Python."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from parley import speedups


def write_build(
    root: Path,
    *,
    sources: dict[str, str] | None = None,
    suffix: str | None = None,
    skip: str | None = None,
    modules: list[str] | None = None,
) -> Path:
    suffix = suffix or speedups.extension_suffix()
    files = {"abc__mypyc": f"abc__mypyc{suffix}"}
    files |= {m: f"{m.replace('.', '/')}{suffix}" for m in speedups.MODULES if m != skip}
    for rel in files.values():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    manifest = {
        "modules": list(speedups.MODULES) if modules is None else modules,
        "suffix": suffix,
        "sources": speedups.source_hashes() if sources is None else sources,
        "files": files,
        "shared": ["abc__mypyc"],
    }
    (root / speedups.MANIFEST).write_text(json.dumps(manifest))
    return root


def test_a_fresh_build_gives_a_file_for_every_module_and_the_shared_library(tmp_path: Path) -> None:
    files, status = speedups.check_build(write_build(tmp_path))
    assert files is not None and status == f"compiled: mypyc, {len(speedups.MODULES)} modules"
    assert set(files) == {*speedups.MODULES, "abc__mypyc"}
    assert files["parley.core.node"] == tmp_path / f"parley/core/node{speedups.extension_suffix()}"


def test_no_build_runs_the_source(tmp_path: Path) -> None:
    assert speedups.check_build(tmp_path) == (
        None,
        "source: no compiled build (scripts/compile.py makes one)",
    )


def test_a_changed_source_makes_the_whole_build_stale(tmp_path: Path) -> None:
    hashes = speedups.source_hashes()
    hashes["core/hub.py"] = "0" * 64
    files, status = speedups.check_build(write_build(tmp_path, sources=hashes))
    assert files is None
    assert "stale (core/hub.py changed since)" in status


def test_a_change_to_a_module_that_is_not_compiled_makes_the_build_stale_too(
    tmp_path: Path,
) -> None:
    hashes = speedups.source_hashes()
    assert "settings.py" in hashes and "parley.settings" not in speedups.MODULES
    hashes["settings.py"] = "0" * 64
    hashes["new_module.py"] = "0" * 64  # a file since removed
    files, status = speedups.check_build(write_build(tmp_path, sources=hashes))
    assert files is None
    assert "stale (new_module.py, settings.py changed since)" in status


def test_a_build_for_another_python_is_not_loaded(tmp_path: Path) -> None:
    files, status = speedups.check_build(write_build(tmp_path, suffix=".cpython-399-x.so"))
    assert files is None and "'.cpython-399-x.so' extensions" in status


def test_a_build_missing_a_module_or_a_file_is_not_loaded(tmp_path: Path) -> None:
    files, status = speedups.check_build(write_build(tmp_path / "a", skip="parley.core.node"))
    assert files is None and "incomplete (parley.core.node missing)" in status
    root = write_build(tmp_path / "b")
    (root / f"parley/protocol/frames{speedups.extension_suffix()}").unlink()
    files, status = speedups.check_build(root)
    assert files is None and "incomplete (parley.protocol.frames missing)" in status


def test_an_unreadable_manifest_is_reported(tmp_path: Path) -> None:
    (tmp_path / speedups.MANIFEST).write_text("{not json")
    files, status = speedups.check_build(tmp_path)
    assert files is None and status.startswith(
        "source: the compiled build's manifest is unreadable"
    )


def test_parley_compiled_0_runs_the_source() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import parley.core.node as n, parley.speedups as s; print(n.__file__); print(s.STATUS)",
        ],
        env={"PARLEY_COMPILED": "0", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [str(speedups.source_path("parley.core.node")), "source: PARLEY_COMPILED=0"]


def test_every_listed_module_comes_from_the_build_in_use_or_else_from_its_source() -> None:
    import importlib

    files = {m: Path(str(importlib.import_module(m).__file__)) for m in speedups.MODULES}
    if speedups.compiled():
        assert all(f.is_relative_to(speedups.BUILD_DIR) for f in files.values()), files
    else:
        assert all(f == speedups.source_path(m) for m, f in files.items()), files


def test_a_build_of_other_modules_is_not_loaded(tmp_path: Path) -> None:
    modules = [*speedups.MODULES, "parley.settings"]
    files, status = speedups.check_build(write_build(tmp_path, modules=modules))
    assert files is None and "of other modules" in status


def suspensions_while_handling(tree: ast.AST) -> list[tuple[int, str]]:
    """Where code may suspend while an exception is handled: an await (or async for / with) in
    an except or finally block, and every `async with`."""

    def suspends(nodes: list[ast.stmt]) -> int | None:
        for node in nodes:
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
                    return inner.lineno
        return None

    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncWith):
            found.append((node.lineno, "async with"))
        elif isinstance(node, ast.Try):
            for handler in node.handlers:
                if (line := suspends(handler.body)) is not None:
                    found.append((line, "await in an except block"))
            if (line := suspends(node.finalbody)) is not None:
                found.append((line, "await in a finally block"))
    return found


def test_the_rule_finds_each_way_of_suspending_while_an_exception_is_handled() -> None:
    source = """
async def f(x):
    try:
        await x
    except E:
        await x
    finally:
        await x
    async with x:
        pass
"""
    assert sorted(suspensions_while_handling(ast.parse(source))) == [
        (6, "await in an except block"),
        (8, "await in a finally block"),
        (9, "async with"),
    ]


def test_no_compiled_module_suspends_while_an_exception_is_handled() -> None:
    # Compiled, the exception would be lost or freed early (speedups.py): a crash, not a test
    # failure, and only on the path where something fails.
    found = [
        f"{speedups.source_path(module).name}:{line}: {what}"
        for module in speedups.MODULES
        for line, what in suspensions_while_handling(
            ast.parse(speedups.source_path(module).read_text())
        )
    ]
    assert found == []
