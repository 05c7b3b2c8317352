"""The layer rules of DESIGN.md. The import-linter contracts (pyproject.toml) check the whole
tower; the `ast` checks below are the original, stricter-on-detail ones (function-level
imports count; SQL stays in db/):
the core (config, errors, ids, db, models, engine, services, client) never imports cli, server
or tui; server and tui never import each other or cli."""
from __future__ import annotations

import ast
from pathlib import Path

import llmp

ROOT = Path(llmp.__file__).parent
CORE = ("config", "errors", "ids", "db", "models", "engine", "backends", "protocol", "services",
        "client")
FORBIDDEN = {
    **{part: ("llmp.cli", "llmp.server", "llmp.tui") for part in CORE},
    "server": ("llmp.cli", "llmp.tui"),
    "tui": ("llmp.cli", "llmp.server"),
}


def _module(path: Path) -> str:
    """llmp/models/registry.py -> 'llmp.models.registry'; a package's __init__ keeps the
    '.__init__' tail so relative imports resolve against the package itself."""
    return ".".join(("llmp", *path.relative_to(ROOT).with_suffix("").parts))


def _imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module or name) for every import; relative ones made absolute."""
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.rsplit(".", node.level)[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py") if rel.parts else ""


def test_layers():
    files = sorted(ROOT.rglob("*.py"))
    assert any(_part(f) == "models" for f in files)
    violations = []
    for f in files:
        banned = FORBIDDEN.get(_part(f))
        if not banned:
            continue
        for line, mod in _imports(f.read_text(), _module(f)):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                violations.append(f"{f.relative_to(ROOT.parent)}:{line} imports {mod}")
    assert violations == []


def test_import_walker():
    """The walker sees absolute, from- and relative imports (guards the test above)."""
    src = "import llmp.cli.main\nfrom llmp import server\nfrom ..tui import app\nfrom . import hub\n"
    mods = [m for _, m in _imports(src, "llmp.models.registry")]
    assert "llmp.cli.main" in mods and "llmp.server" in mods
    assert "llmp.tui.app" in mods and "llmp.models.hub" in mods
    mods = [m for _, m in _imports("from .routes import x\n", "llmp.server.__init__")]
    assert "llmp.server.routes.x" in mods


def test_sql_lives_in_db():
    """Nothing above llmp/db/ runs SQL or touches a sqlite-utils table (DESIGN: all SQL behind
    db/ functions named for what they do)."""
    sql_calls = ("execute", "executemany", "executescript", "query", "table")
    found = []
    for f in sorted(ROOT.rglob("*.py")):
        if _part(f) == "db":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in sql_calls
            table = isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id == "db"
            if call or table:
                found.append(f"{f.relative_to(ROOT.parent)}:{node.lineno}")
    assert found == []



def test_import_linter_contracts(capsys, monkeypatch):
    """The import-linter contracts of pyproject.toml hold: the whole tower (cli > server | tui
    > services | client > jobs > protocol > backends > engine | models > db > config | events
    > errors | ids) and the TUI as an API client. scripts/lint.sh runs the same check."""
    from importlinter import configuration
    from importlinter.application.use_cases import lint_imports

    configuration.configure()
    monkeypatch.chdir(ROOT.parent)  # where pyproject.toml is
    assert lint_imports(cache_dir=None, no_logo=True), capsys.readouterr().out


#: the one import cycle allowed: the TUI's views name their app's class for the type checker
#: only (`if TYPE_CHECKING:` in tui/screens/base.py), the app imports the views
TYPING_ONLY_BACK_EDGES = {("llmp.tui.screens.base", "llmp.tui.app")}


def _import_graph() -> dict[str, dict[str, int]]:
    """module -> {llmp module it imports: line}, over the whole package. Every import counts:
    module level, inside functions, under `if TYPE_CHECKING:`. `from pkg import sub` is an
    edge to the submodule only; `from pkg import name` (not a submodule) to the package."""
    files = {_module(f).removesuffix(".__init__"): f for f in sorted(ROOT.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for mod, f in files.items():
        deps: dict[str, int] = {}
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _module(f).rsplit(".", node.level)[0]
                    pkg = f"{base}.{node.module}" if node.module else base
                else:
                    pkg = node.module or ""
                subs = [f"{pkg}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in files]
                if len(targets) < len(subs):
                    targets.append(pkg)
            else:
                continue
            for t in targets:
                if t in files and t != mod and (mod, t) not in TYPING_ONLY_BACK_EDGES:
                    deps.setdefault(t, node.lineno)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package():
    """No two llmp modules import each other, directly or round a longer loop, counting imports
    inside functions and typing-only ones (engine.chat <-> engine.engine, db <-> db.usage via
    the migrations, models.hub -> registry -> lora -> convert -> hub were the last ones)."""
    graph = _import_graph()
    assert "llmp.engine.engine" not in graph["llmp.engine.chat"]
    assert graph["llmp.db.usage"] and "llmp.db" not in graph["llmp.db.usage"]
    cycles = _cycles(graph)
    detail = [" ; ".join(f"{m} -> {d} (line {graph[m][d]})" for m in c for d in graph[m]
                         if d in c) for c in cycles]
    assert cycles == [], detail


def test_cycle_finder():
    """Guards the test above: a loop through a function-level import is found."""
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 9}, "d": {"a": 1}}) == [
        ["a", "b", "c"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []
