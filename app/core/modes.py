"""The modes as types: how a list was made, and whether the worker is degraded. StrEnums, so
a mode compares equal to its name and serialises as it (JSON, Redis, metrics labels, logs)."""

from __future__ import annotations

from enum import StrEnum


class ListMode(StrEnum):
    """How a user's list was made (the `mode` of schemas/redis-user-list.schema.json)."""

    PERSONAL = "personal"  # from the user's own state: recall channels -> rank
    COLD_START = "cold_start"  # no usable state yet: the cold-start list
    DEGRADED = "degraded"  # lag too high: the precomputed popularity list, minus what was seen


class WorkerMode(StrEnum):
    """What the worker makes now: personal lists, or degraded ones while it catches up."""

    NORMAL = "normal"
    DEGRADED = "degraded"


class ModeOverride(StrEnum):
    """The operator's choice (NEARLINE_DEGRADE__MODE, `nearline degrade`): follow the lag, or
    force a mode."""

    AUTO = "auto"
    DEGRADED = "degraded"
    NORMAL = "normal"
