"""The layers of docs/design.md, held by reading the package's imports (with `ast`, nothing run).

RULES is a small table: a module pattern that may be imported only by the modules listed (and by
its own package). Add a rule as a layer boundary is drawn.
"""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fsbackup"

# (imported modules, importers allowed besides that package itself, why)
RULES = [
    ("fsbackup.backends*", {"fsbackup.repository", "fsbackup.locks"},
     "only the repository layer talks to a Backend"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from . import x` gives both the package and
    package.x, as x may be a module)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def breaches(rule) -> list[str]:
    pattern, allowed, _ = rule
    own_package = pattern.rstrip("*")
    out = []
    for path in modules():
        importer = module_name(path)
        if importer in allowed or importer.startswith(own_package):
            continue
        for imported in sorted(imports_of(path)):
            if fnmatch.fnmatch(imported, pattern):
                out.append(f"{importer} imports {imported}")
    return out


@pytest.mark.parametrize("rule", RULES, ids=[rule[0] for rule in RULES])
def test_layers_import_only_what_they_may(rule):
    assert breaches(rule) == [], rule[2]


def test_the_rules_see_imports_in_every_form(tmp_path, monkeypatch):
    """The checker itself: absolute, relative, nested and `from . import` forms are all seen."""
    fake = tmp_path / "fsbackup"
    (fake / "backends").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "backends" / "__init__.py").write_text("")
    (fake / "a.py").write_text("from .backends import open_backend\n")
    (fake / "b.py").write_text("def f():\n    import fsbackup.backends.local\n")
    (fake / "c.py").write_text("from . import backends\n")
    (fake / "repository.py").write_text("from .backends import Backend\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert breaches(RULES[0]) == ["fsbackup.a imports fsbackup.backends", "fsbackup.a imports fsbackup.backends.open_backend",
                                  "fsbackup.b imports fsbackup.backends.local", "fsbackup.c imports fsbackup.backends"]
