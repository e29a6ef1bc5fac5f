"""Recall channels, one module each; importing this package registers them all.

Adding a channel: a module here with its recall function and a `register(Channel(...))`
(a new, unused code), its import below, and its settings section in `RecallSettings`
(app/settings.py: `<name>: ChannelSettings` plus any options it reads)."""

from nearline_rec.core.channels import (  # noqa: F401  (each registers itself; REGISTRY orders by merge order)
    embedding,
    friends,
    genre,
    item2item,
    newest,
    short_term,
    similar_users,
    trending,
)
from nearline_rec.core.channels.registry import (
    LIST_CHANNELS,
    REGISTRY,
    Channel,
    build_channels,
    channel_codes,
    default_configs,
    register,
)

CHANNELS = tuple(REGISTRY)
"""Names of the registered recall channels, by code (the default merge order)."""

__all__ = [
    "CHANNELS",
    "LIST_CHANNELS",
    "REGISTRY",
    "Channel",
    "build_channels",
    "channel_codes",
    "default_configs",
    "register",
]
