"""The project's modules by their import names: the folders app/ and agents/ install as the
package nearline_rec (app/x.py is nearline_rec.x, agents/y.py is nearline_rec.agents.y;
pyproject.toml's package-dir)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"app": "nearline_rec", "agents": "nearline_rec.agents"}


def module_name(path: Path) -> str:
    """nearline_rec.x.y for app/x/y.py (a package's __init__.py names the package)."""
    parts = path.resolve().relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([FOLDERS[parts[0]], *parts[1:]])


def project_modules(*folders: str) -> dict[str, Path]:
    """Every module under the given folders (default: all) by import name, sorted."""
    out: dict[str, Path] = {}
    for folder in folders or tuple(FOLDERS):
        for f in sorted((ROOT / folder).rglob("*.py")):
            out[module_name(f)] = f
    return out
