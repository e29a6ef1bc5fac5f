"""The module graph of app/ and agents/: no import cycles, and a core free of I/O.

Every import counts, also one inside a function (a lazy import hides a cycle at start-up
but not from a reader), except those under `if TYPE_CHECKING:` (never executed)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.modules import project_modules

ROOT = Path(__file__).resolve().parents[2]

# What the pure core must not import: services, the runtime and its settings, adapters.
CORE_MUST_NOT_IMPORT = (
    "faust", "mode", "aiokafka", "kafka", "redis", "aiohttp", "aiocache", "tenacity",
    "socket", "urllib.request", "http", "subprocess", "nearline_rec.settings",
    "nearline_rec.runtime", "nearline_rec.storage", "nearline_rec.kafka_clients",
    "nearline_rec.serving", "nearline_rec.processing", "nearline_rec.factory",
    "nearline_rec.agents", "nearline_rec.tools",
)  # fmt: skip
# Known crossings of the rule above, as (core module, banned import) pairs: none. (The
# decoders' JSON Schema fallback is injected by the edge, app/records.py.)
CORE_EXCEPTIONS: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    return project_modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an import in the file (absolute names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for target in _imports(name, path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            # a package's own __init__ is imported with any of its modules: not an edge
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_no_io_settings_or_runtime():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        if not name.startswith("nearline_rec.core"):
            continue
        for target in _imports(name, path):
            for banned in CORE_MUST_NOT_IMPORT:
                if target == banned or target.startswith(banned + "."):
                    if (name, banned) not in CORE_EXCEPTIONS:
                        bad.append(f"{name} imports {target}")
        if (
            "nearline_rec.schemas" in _imports(name, path)
            and (name, "nearline_rec.schemas") not in CORE_EXCEPTIONS
        ):
            bad.append(f"{name} imports nearline_rec.schemas")
    assert bad == []


def test_the_worker_never_imports_the_developer_tools():
    graph = _graph()
    bad = [
        f"{name} imports {target}"
        for name, targets in graph.items()
        if not name.startswith("nearline_rec.tools")
        for target in targets
        if target.startswith("nearline_rec.tools")
    ]
    assert bad == []


def test_the_wheel_lists_every_package_folder():
    """pyproject.toml names the packages one by one (the folders map to nearline_rec)."""
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    data = {"nearline_rec.record_schemas", "nearline_rec.models"}
    listed = set(conf["setuptools"]["packages"]) - data
    folders = {n for n, p in project_modules().items() if p.name == "__init__.py"}
    assert listed == folders
