"""The import graph of coordd and coordctl keeps its layers: no cycle, the pure core at
the bottom, the freshness rules below the state.

Read from the source with ``ast`` (every ``import``, at module level or inside a
function, ``TYPE_CHECKING`` blocks included), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coordd", "coordctl")

# What the pure core may not import: the edges, and modules that do I/O, read the
# clock or log (the core gets ``now`` and returns records and events instead).
CORE_FORBIDDEN_OURS = (
    "coordd.daemon",
    "coordd.storage",
    "coordd.ai",
    "coordd.agent",
    "coordd.config",
    "coordd.legacy",
    "coordd.cli",
    "coordd.keys",
    "coordd.logs",
    "coordctl",
)
CORE_FORBIDDEN_OTHERS = {
    "zmq",
    "structlog",
    "logging",
    "os",
    "io",
    "pathlib",
    "shutil",
    "socket",
    "select",
    "selectors",
    "signal",
    "subprocess",
    "threading",
    "multiprocessing",
    "asyncio",
    "fcntl",
    "mmap",
    "time",
    "prometheus_client",
    "httpx",
}
RULES = "coordd.core.rules"
RULES_ALLOWED = {"__future__", "typing", "math", "msgspec", "coordd.kinds", "coordd.core.model"}

# Import edges allowed to close a cycle, each with the reason. Empty: keep it so.
TOLERATED: set[tuple[str, str]] = set()


def module_files() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def imported_names(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports, as written (absolute, relative ones resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # ``from pkg import mod`` imports the module ``pkg.mod`` when there is one.
            yield from (f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)


def graph() -> dict[str, set[str]]:
    """Our modules and the modules each imports (ours and others, by full name)."""
    return {name: set(imported_names(name, path)) - {name} for name, path in MODULES.items()}


GRAPH = graph()


def ours(target: str) -> bool:
    return target in MODULES


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in sorted(edges):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(edges[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges[nxt])))
    return None


def test_there_is_no_import_cycle() -> None:
    ours_only = {
        name: {t for t in targets if ours(t) and (name, t) not in TOLERATED}
        for name, targets in GRAPH.items()
    }
    cycle = find_cycle(ours_only)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_tolerated_edges_still_exist() -> None:
    gone = sorted(e for e in TOLERATED if e[1] not in GRAPH.get(e[0], set()))
    assert not gone, f"remove from TOLERATED (the edge is gone): {gone}"


def test_the_core_imports_no_edge_and_no_io() -> None:
    bad = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if within(name, "coordd.core")
        for target in sorted(targets)
        if any(within(target, p) for p in CORE_FORBIDDEN_OURS)
        or target.split(".")[0] in CORE_FORBIDDEN_OTHERS
    ]
    assert not bad, "the pure core reaches out: " + "; ".join(bad)


def test_the_rules_sit_on_the_model_and_the_kinds_only() -> None:
    bad = sorted(t for t in GRAPH[RULES] if t not in RULES_ALLOWED)
    assert not bad, f"{RULES} may import only {sorted(RULES_ALLOWED)}; it imports {bad}"


def test_kinds_imports_nothing_of_ours() -> None:
    bad = sorted(t for t in GRAPH["coordd.kinds"] if within(t, "coordd") or within(t, "coordctl"))
    assert not bad, f"coordd.kinds imports {bad}"


def test_coordd_never_imports_the_cli() -> None:
    bad = [
        f"{name} imports {t}"
        for name, targets in GRAPH.items()
        if within(name, "coordd")
        for t in sorted(targets)
        if within(t, "coordctl")
    ]
    assert not bad, "; ".join(bad)


def test_the_cycle_finder_names_the_cycle() -> None:
    # The checks above are only as good as this: a planted cycle is found and named.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
