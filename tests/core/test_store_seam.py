"""The store is a seam: the daemon and the ``coordd`` CLI reach storage only through
``coordd.storage.store``'s interface, and storage never reaches back into the daemon."""

from __future__ import annotations

import ast
from pathlib import Path

import coordd

ROOT = Path(coordd.__file__).resolve().parent
# What a second store (PostgreSQL) would have to provide, and nothing more.
INTERFACE = {
    "Store",
    "StoreError",
    "SnapshotResult",
    "LoadReport",
    "FsckReport",
    "Role",
    "open_store",
}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in ``path``, lazy ones inside functions included."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def storage_uses(path: Path) -> list[str]:
    """The imports of ``path`` that reach storage other than through the interface."""
    bad = []
    for module, names in imports(path):
        if module == "coordd.storage.store":
            bad += [f"{module}.{n}" for n in names if n not in INTERFACE]
        elif module.startswith("coordd.storage") or (module == "coordd" and "storage" in names):
            bad.append(f"{module} {names}")
    return bad


def test_the_daemon_and_its_cli_use_only_the_store_interface() -> None:
    users = sorted((ROOT / "daemon").rglob("*.py")) + [ROOT / "cli.py"]
    assert ROOT / "daemon" / "server.py" in users
    found = {str(p.relative_to(ROOT)): storage_uses(p) for p in users}
    assert {k: v for k, v in found.items() if v} == {}


def test_storage_does_not_import_the_daemon() -> None:
    for path in sorted((ROOT / "storage").glob("*.py")):
        reached = [m for m, _ in imports(path) if m.startswith("coordd.daemon")]
        assert reached == [], path.name


def test_the_check_sees_a_reach_past_the_interface(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        "from coordd.storage.store import open_store, FileStore\n"
        "def f():\n    from coordd.storage import wal\n"
    )
    assert storage_uses(sneaky) == [
        "coordd.storage.store.FileStore",
        "coordd.storage ['wal']",
    ]
