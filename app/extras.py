"""Optional dependencies (pyproject's extras): imported on first use, and when one is missing a
one-line error naming the extra to install, not a traceback."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

from nearline_rec.errors import BadInput


class MissingExtra(BadInput):
    """A command needs an optional dependency that is not installed."""


def has(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """`import module`, or MissingExtra saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{purpose} needs {module.partition('.')[0]}: pip install 'nearline-rec[{extra}]'"
        ) from None


def pyplot(purpose: str = "the PNG charts") -> Any:
    """matplotlib.pyplot on the file-only Agg backend (the `plot` extra)."""
    matplotlib = require("matplotlib", "plot", purpose)
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
