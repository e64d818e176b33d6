"""The layers of docs/design.md, held by reading the package's imports (with `ast`, nothing run).

RULES is a small table: a module pattern that may be imported only by the modules listed (and by
its own package). Add a rule as a layer boundary is drawn.
"""
from __future__ import annotations

import ast
import fnmatch
import re
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
