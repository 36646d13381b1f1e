"""The backends' layout rule: a technology package imports the role interfaces and itself,
never another technology (nor the drivers of one), so any technology can be left out."""

from __future__ import annotations

import ast
from pathlib import Path

import parley.backends

BACKENDS = Path(parley.backends.__file__).parent
TECHNOLOGIES = ("memory", "sqlite", "postgres", "redis")
DRIVERS = {"sqlite": {"sqlite3"}, "postgres": {"asyncpg"}, "redis": {"redis"}}


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
