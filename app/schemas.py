"""The JSON Schemas in schemas/: the contract of every topic record and Redis value."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_NAMES = (
    "user-event",
    "user-relation",
    "friend-activity",
    "item-update",
    "recommendation",
    "redis-user-list",
    "dead-letter",
    "recommendation-response",
)


def schemas_dir() -> Path:
    """NEARLINE_SCHEMAS_DIR when set; else schemas/ of the checkout (source and editable
    installs); else the copy a wheel carries as package data (nearline_rec/record_schemas)."""
    override = os.environ.get("NEARLINE_SCHEMAS_DIR")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parent.parent / "schemas"
    if (checkout / "user-event.schema.json").is_file():
        return checkout
    return Path(__file__).resolve().parent / "record_schemas"


@cache
def load_schema(name: str) -> dict[str, Any]:
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    path = schemas_dir() / f"{name}.schema.json"
    with path.open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


def first_error(name: str, instance: Any) -> str | None:
    """One-line description of the first schema violation, or None when valid."""
    err = next(iter(validator(name).iter_errors(instance)), None)
    if err is None:
        return None
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    msg = err.message
    if len(msg) > 300:
        msg = msg[:300] + "..."
    return f"{where}: {msg}"


def validate(name: str, instance: Any) -> None:
    """Raise ValueError when instance does not match the named schema."""
    problem = first_error(name, instance)
    if problem is not None:
        raise ValueError(f"{name}: {problem}")
