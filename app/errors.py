"""The project's error family: `except NearlineError` catches whatever it raises on purpose.

Three tiers, as the design has them: bad input (a record, a file, a request, a setting:
dead-lettered or one line to the user), a store that cannot take a write now (retried, held,
never a crash), and everything else (a bug: it propagates)."""

from __future__ import annotations


class NearlineError(Exception):
    """Base of every error the project raises on purpose."""


class BadInput(NearlineError, ValueError):
    """Input that cannot be used as given: a record, a file, a request, a model file."""


class ConfigurationError(BadInput):
    """A setting or a combination of settings that cannot work."""


class StoreUnavailable(NearlineError):
    """A backing store cannot take the write now; the caller holds it and retries."""
