"""coordctl's layout holds: every documented command is assembled, no import cycle.

A command module forgotten in ``coordctl.cli``, or a command forgotten in its module's
``COMMANDS``, is a command users cannot run; these tests fail instead.
"""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import click

import coordctl.commands
from coordctl import cli

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coordctl", "coordd")


def readme_commands() -> set[str]:
    """Command words the README documents: the first cell of its command tables (the
    ``command`` tables and the old script's words) and ``coordctl WORD`` in code blocks."""
    words: set[str] = set()
    in_code = False
    table: str | None = None  # first header cell of the table we are in
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            words.update(re.findall(r"(?:^|\s)(?:\S*/)?coordctl ([a-z][a-z-]*)", line))
            continue
        if not line.startswith("|"):
            table = None
            continue
        first = re.split(r"(?<!\\)\|", line)[1].strip()
        if table is None:
            table = first
            continue
        if table not in ("command", "old"):
            continue
        for span in re.findall(r"`([^`]*)`", first):
            named = re.search(r"coordctl ([a-z][a-z-]*)", span)
            bare = re.match(r"([a-z][a-z-]*)(?:\s|$)", span)
            if named or bare:
                words.add((named or bare).group(1))  # type: ignore[union-attr]
    return words


def test_every_command_in_the_readme_is_registered() -> None:
    documented = readme_commands()
    assert len(documented) >= 20, documented  # the parser still finds the tables
    cli.modules()
    missing = documented - set(cli.main.commands)
    assert not missing, f"documented but not assembled in coordctl.cli: {sorted(missing)}"


def test_every_command_module_is_assembled_with_all_its_commands() -> None:
    loaded = cli.modules()
    modules = {m.__name__ for m in loaded}
    on_disk = pkgutil.iter_modules(coordctl.commands.__path__)
    found = {f"coordctl.commands.{m.name}" for m in on_disk}
    assert found == modules
    registered = set(cli.main.commands.values())
    for module in loaded:
        # The lazy table names each command's module: a command is found by its name.
        assert {c.name: module.__name__.rsplit(".", 1)[1] for c in module.COMMANDS} == {
            c.name: cli.COMMAND_MODULES[c.name or ""] for c in module.COMMANDS
        }
        listed = set(module.COMMANDS)
        assert listed <= registered, module.__name__
        sub = {c for g in listed if isinstance(g, click.Group) for c in g.commands.values()}
        defined = {v for v in vars(module).values() if isinstance(v, click.Command)}
        assert defined - sub <= listed, f"{module.__name__}: a command missing from COMMANDS"


def _imports(path: Path, package: str) -> set[str]:
    """Modules of coordctl/coordd that ``path`` imports (anywhere in the file)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against this module's package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def import_graph() -> dict[str, set[str]]:
    files: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(path, package) if m in files and m != name}
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if one exists."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_coordctl_has_no_import_cycle() -> None:
    graph = import_graph()
    for name in sorted(graph):
        if name.startswith("coordctl"):
            cycle = _cycle_through(graph, name)
            assert cycle is None, " -> ".join(cycle or [])


def test_the_layers_of_coordctl_point_one_way() -> None:
    graph = import_graph()
    # The daemon and the SDK never need the CLI.
    assert not [(m, d) for m, ds in graph.items() if m.startswith("coordd") for d in ds
                if d.startswith("coordctl")]  # fmt: skip
    # The base knows no command; commands never import the assembly.
    assert not {d for d in graph["coordctl.base"] if d.startswith("coordctl.commands")}
    assert [m for m, ds in graph.items() if "coordctl.cli" in ds] == ["coordctl.__main__"]
