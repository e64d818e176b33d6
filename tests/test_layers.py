"""The layers of docs/design.md, held by reading the package's imports (with `ast`, nothing run).

RULES is a small table: a module pattern that may be imported only by the modules listed (and by
its own package). Add a rule as a layer boundary is drawn.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fsbackup"

# Modules every layer may use: no I/O of their own, or only the local machine's.
SHARED = {"fsbackup.errors", "fsbackup.progress", "fsbackup.fsutil", "fsbackup.private", "fsbackup.retention",
          "fsbackup.snapshot"}
# Each layer of docs/design.md and the fsbackup packages it may import besides itself and SHARED:
# dependencies point one way, and only the repository talks to the storage.
LAYERS = {
    "fsbackup.cli": {"fsbackup.engine", "fsbackup.mount", "fsbackup.repository", "fsbackup.catalog", "fsbackup.codec"},
    "fsbackup.mount": {"fsbackup.repository", "fsbackup.catalog", "fsbackup.codec"},
    "fsbackup.engine": {"fsbackup.repository", "fsbackup.catalog", "fsbackup.codec"},
    "fsbackup.repository": {"fsbackup.backends", "fsbackup.catalog", "fsbackup.codec"},
    "fsbackup.catalog": {"fsbackup.codec"},
    "fsbackup.codec": set(),
    "fsbackup.backends": set(),
}
# The FUSE adapter translates requests for the mount's view: it knows nothing below it.
FUSE_ADAPTER = "fsbackup.mount.fuse"
FUSE_MAY_IMPORT = {"fsbackup.mount.view", "fsbackup.mount.namespace", "fsbackup.mount.reading", "fsbackup.mount.log",
                   "fsbackup.errors"}


def layer_of(module: str) -> str | None:
    """The layer (a package of LAYERS) a module belongs to; None for the package's top modules."""
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


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


def fsbackup_imports(path: Path) -> set[str]:
    """The fsbackup modules (and names in them) `path` imports."""
    return {name for name in imports_of(path) if name == "fsbackup" or name.startswith("fsbackup.")}


def layer_breaches() -> list[str]:
    """Every import that goes against LAYERS, as 'importer imports imported'."""
    out = []
    for path in modules():
        importer = module_name(path)
        layer = layer_of(importer)
        if layer is None:
            continue
        allowed = LAYERS[layer] | {layer}
        for imported in sorted(fsbackup_imports(path)):
            target = layer_of(imported)
            if imported == "fsbackup" or imported.startswith("fsbackup.__") or any(
                    imported == m or imported.startswith(m + ".") for m in SHARED):
                continue
            if target is None or target not in allowed:
                out.append(f"{importer} imports {imported}")
    return out


def test_each_layer_imports_only_the_layers_below_it():
    assert layer_breaches() == []


def test_engine_modules_do_not_import_each_other():
    """Use cases share nothing but what lies below them (a shared piece moves down a layer)."""
    engines = [p for p in modules() if module_name(p).startswith("fsbackup.engine.")]
    crossing = [f"{module_name(p)} imports {name}" for p in engines for name in sorted(fsbackup_imports(p))
                if name.startswith("fsbackup.engine.") and not name.startswith(module_name(p))]
    assert crossing == []


def test_the_fuse_adapter_imports_only_the_mount_view():
    adapter = PACKAGE / "mount" / "fuse.py"
    beyond = sorted(name for name in fsbackup_imports(adapter)
                    if not any(name == m or name.startswith(m + ".") for m in FUSE_MAY_IMPORT))
    assert beyond == [], f"{FUSE_ADAPTER} is a protocol adapter over the view"


def test_nothing_in_the_package_imports_test_code():
    test_code = [f"{module_name(p)} imports {name}" for p in modules() for name in sorted(imports_of(p))
                 if name.split(".")[0] in {"tests", "conftest", "doubles", "backend_contract", "pytest"}]
    assert test_code == []


def test_the_rules_see_imports_in_every_form(tmp_path, monkeypatch):
    """The checker itself: absolute, relative, nested and `from . import` forms are all seen."""
    fake = tmp_path / "fsbackup"
    for package in ("backends", "engine", "repository"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "engine" / "a.py").write_text("from ..backends import open_backend\n")
    (fake / "engine" / "b.py").write_text("def f():\n    import fsbackup.backends.local\n")
    (fake / "engine" / "c.py").write_text("from .. import backends\nfrom . import a\n")
    (fake / "repository" / "r.py").write_text("from ..backends import Backend\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert layer_breaches() == ["fsbackup.engine.a imports fsbackup.backends",
                                "fsbackup.engine.a imports fsbackup.backends.open_backend",
                                "fsbackup.engine.b imports fsbackup.backends.local",
                                "fsbackup.engine.c imports fsbackup.backends"]
    with pytest.raises(AssertionError):
        test_engine_modules_do_not_import_each_other()


# ---- the catalog: SQL and SQLite stay in fsbackup/catalog/ -----------------------------------

CATALOG = "fsbackup.catalog"
# The first words of the statements fsbackup runs, shaped as SQL has them (prose that starts with
# "Delete" or "create" does not match: help texts and docstrings are full of it).
SQL_STATEMENT = re.compile(
    r"(SELECT\b.*\bFROM\b|SELECT\s+[\d*(]|(INSERT|REPLACE)(\s+OR\s+\w+)?\s+INTO\b|UPDATE\s+\S+\s+SET\b"
    r"|DELETE\s+FROM\b|CREATE\s+(TEMP\s+|TEMPORARY\s+|UNIQUE\s+|VIRTUAL\s+)?(TABLE|INDEX|VIEW|TRIGGER)\b"
    r"|PRAGMA\s+[\w.]+|WITH\s+(RECURSIVE\s+)?\w+(\s*\([^)]*\))?\s+AS\s*\("
    r"|BEGIN(\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?(\s+TRANSACTION)?\s*;?\s*$)",
    re.IGNORECASE | re.DOTALL)


def looks_like_sql(text: str) -> bool:
    """Whether a string starts, after whitespace, with an SQL statement (any case)."""
    return SQL_STATEMENT.match(text.strip()) is not None


def string_constants(tree: ast.AST):
    """(line, text) of every string literal; an f-string is one text, `{}` standing for each
    value put in (its literal parts are not looked at apart)."""
    parts_of_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts_of_fstrings.update(id(v) for v in node.values)
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts_of_fstrings:
            yield node.lineno, node.value


def sql_outside_catalog() -> list[str]:
    """Every string literal that looks like SQL in a module outside the catalog, as
    'module:line: text'."""
    out = []
    for path in modules():
        module = module_name(path)
        if module == CATALOG or module.startswith(CATALOG + "."):
            continue
        for line, text in string_constants(ast.parse(path.read_text(), str(path))):
            if looks_like_sql(text):
                out.append(f"{module}:{line}: {text.strip()[:60]}")
    return sorted(out)


def test_sql_appears_only_in_the_catalog():
    assert sql_outside_catalog() == [], "SQL belongs in fsbackup/catalog/, behind named methods"


def test_only_the_catalog_imports_apsw():
    importers = [module_name(path) for path in modules()
                 if not module_name(path).startswith(CATALOG)
                 and any(name == "apsw" or name.startswith("apsw.") for name in imports_of(path))]
    assert importers == [], "only fsbackup/catalog/ talks to SQLite"


def test_the_sql_rule_sees_sql_in_every_form(tmp_path, monkeypatch):
    """The checker itself: plain, f-string, indented and lower-case SQL are seen; prose that only
    contains a keyword, or starts with one as a word of a sentence, is not."""
    fake = tmp_path / "fsbackup"
    (fake / "catalog").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "catalog" / "__init__.py").write_text("Q = 'SELECT 1'\n")
    (fake / "a.py").write_text("q = 'SELECT id FROM versions'\n")
    (fake / "b.py").write_text("def f(t):\n    return f'  delete from {t}'\n")
    (fake / "c.py").write_text("x = 'Selection of versions'\ny = 'we SELECT here'\nz = 'pragmatic'\n"
                               "h = 'Delete volumes that hold no block'\nc = 'create a new repository'\n")
    (fake / "d.py").write_text('import apsw\nw = """\n  WITH x AS (SELECT 1) SELECT * FROM x"""\n')
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert sql_outside_catalog() == ["fsbackup.a:1: SELECT id FROM versions", "fsbackup.b:2: delete from {}",
                                     "fsbackup.d:2: WITH x AS (SELECT 1) SELECT * FROM x"]
    with pytest.raises(AssertionError):
        test_only_the_catalog_imports_apsw()
