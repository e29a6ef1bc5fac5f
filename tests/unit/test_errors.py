"""One error family: every exception class the project defines is a NearlineError, in the
tier that says how it is handled (bad input, store unavailable, or a plain NearlineError)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

from nearline_rec.errors import BadInput, ConfigurationError, NearlineError, StoreUnavailable
from tests.modules import project_modules

ROOT = Path(__file__).resolve().parents[2]


def _project_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in app/ (imported: their bases resolved)."""
    out = []
    for name in project_modules("app"):
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                out.append(cls)
    return out


def test_every_exception_the_project_defines_is_a_nearline_error():
    found = _project_exceptions()
    assert len(found) >= 10, found
    assert [c.__qualname__ for c in found if not issubclass(c, NearlineError)] == []


def test_agents_exceptions_derive_from_the_family():
    """Agents are not imported here (importing one builds a worker): their bases are read."""
    family = {"NearlineError", "BadInput", "ConfigurationError", "StoreUnavailable"}
    for f in sorted((ROOT / "agents").glob("*.py")):
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                if not bases & family and not any(
                    b.endswith(("Error", "Exception")) for b in bases
                ):
                    continue  # not an exception class
                assert bases & family, f"{f.name}: {node.name}({', '.join(sorted(bases))})"


def test_the_tiers():
    from nearline_rec.core.events import InvalidRecord
    from nearline_rec.settings import SettingsError
    from nearline_rec.storage.redis_store import RedisRefused

    assert issubclass(InvalidRecord, BadInput) and issubclass(InvalidRecord, ValueError)
    assert issubclass(SettingsError, ConfigurationError)
    assert issubclass(RedisRefused, StoreUnavailable) and not issubclass(RedisRefused, BadInput)
