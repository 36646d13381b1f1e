"""The backends' layout rules: each role's interface at the top and its implementations in one
package per technology; a technology package imports the role interfaces and itself, never
another technology (nor the drivers of one), so any technology can be left out; and a store
that extends a compiled class is compiled too."""

from __future__ import annotations

import ast
from pathlib import Path

import parley.backends
from parley import speedups

BACKENDS = Path(parley.backends.__file__).parent
TECHNOLOGIES = ("memory", "sqlite", "postgres", "redis")
DRIVERS = {"sqlite": {"sqlite3"}, "postgres": {"asyncpg"}, "redis": {"redis"}}
ROLES = ("history", "users", "grants")


def _technology_of(module: str) -> str | None:
    """The technology a `parley.backends...` module belongs to, or None for a role module."""
    parts = module.split(".")
    if parts[:2] != ["parley", "backends"] or len(parts) < 3:
        return None
    return parts[2] if parts[2] in TECHNOLOGIES else None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_technology_packages_import_no_other_technology() -> None:
    packages = [BACKENDS / t for t in TECHNOLOGIES if (BACKENDS / t).is_dir()]
    assert {p.name for p in packages} >= {"memory", "sqlite", "postgres"}
    wrong = []
    for package in packages:
        own = package.name
        foreign_drivers = set().union(*(d for t, d in DRIVERS.items() if t != own))
        for path in sorted(package.glob("*.py")):
            for module in sorted(_imports(path)):
                other = _technology_of(module)
                if (other is not None and other != own) or module in foreign_drivers:
                    wrong.append(f"{path.relative_to(BACKENDS)} imports {module}")
    assert wrong == []


def test_role_modules_import_no_technology() -> None:
    roles = [
        p for p in BACKENDS.glob("*.py") if _technology_of(f"parley.backends.{p.stem}") is None
    ]
    assert {p.name for p in roles} >= {"users.py", "grants.py", "database.py", "history.py"}
    wrong = [
        f"{path.name} imports {module}"
        for path in roles
        for module in sorted(_imports(path))
        if _technology_of(module) is not None
    ]
    assert wrong == []


def test_every_technology_has_a_store_for_every_role_and_nothing_lives_beside_them() -> None:
    for technology in ("memory", "sqlite", "postgres"):
        package = BACKENDS / technology
        needed = {*ROLES, *(("db", "migrations") if technology != "memory" else ())}
        assert needed <= {p.stem for p in package.glob("*.py")}, technology
    stray = [
        p.name
        for p in BACKENDS.glob("*.py")
        if p.stem.partition("_")[0] in TECHNOLOGIES  # e.g. a `sqlite_history.py` left flat
    ]
    assert stray == []


def test_a_store_extending_a_compiled_class_is_compiled() -> None:
    """An interpreted class may not extend a compiled one: a store built on a class of a module
    in `speedups.MODULES` (the history stores on `backends.history`'s) is in MODULES too."""
    compiled = set(speedups.MODULES)
    wrong = []
    for path in sorted(BACKENDS.rglob("*.py")):
        module = "parley." + ".".join(path.relative_to(BACKENDS.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text(), str(path))
        imported = {
            alias.asname or alias.name: node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for base in cls.bases:
                if not isinstance(base, ast.Name) or module in compiled:
                    continue
                if imported.get(base.id) in compiled:
                    wrong.append(f"{module}.{cls.name} extends {imported[base.id]}.{base.id}")
    assert wrong == []
