"""The registry of recall channels: each channel module registers one `Channel` (its name,
its code in stored lists, its default size and quota, and how to build its recall function
from the recall settings); the pipeline composes the enabled ones by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nearline_rec.core.recall import ChannelConfig, RecallFn


@dataclass(frozen=True)
class Channel:
    name: str
    code: int
    """Code of the channel in stored lists (app/storage/codec.py, 4 bits): fixed for good,
    never reused, since records written before keep it."""
    k: int
    """Default number of candidates the channel returns."""
    quota: int
    """Default number of its candidates the merge keeps."""
    doc: str
    make: Callable[[Mapping[str, Any]], RecallFn]
    """The recall function, from the recall settings (flat: `item2item_seeds`, ...)."""
    order: int | None = None
    """Place in the default merge order (None: the code). An item two channels found is
    credited to the one merged first."""

    @property
    def merge_order(self) -> tuple[int, int]:
        return (self.code if self.order is None else self.order, self.code)


REGISTRY: dict[str, Channel] = {}
"""Registered channels in the default order of the merge: by code (a channel added later
takes the next free code, so it comes after the others) unless a channel sets `order`."""

LIST_CHANNELS = {"popular": 6, "cold_start": 7}
"""Channel names of shared lists (not recall channels), with their stored codes."""


def register(channel: Channel) -> Channel:
    taken = {c.code: c.name for c in REGISTRY.values()} | {v: k for k, v in LIST_CHANNELS.items()}
    if channel.name in REGISTRY or channel.name in LIST_CHANNELS:
        raise ValueError(f"recall channel {channel.name!r} is registered twice")
    if channel.code in taken or not 0 <= channel.code < 16:
        raise ValueError(
            f"recall channel {channel.name!r}: code {channel.code} is taken by "
            f"{taken.get(channel.code)!r} or outside 0..15"
        )
    REGISTRY[channel.name] = channel
    ordered = sorted(REGISTRY.values(), key=lambda c: c.merge_order)
    REGISTRY.clear()
    REGISTRY.update((c.name, c) for c in ordered)
    return channel


def channel_codes() -> dict[str, int]:
    """Every channel name a stored list can carry -> its code."""
    return {**{c.name: c.code for c in REGISTRY.values()}, **LIST_CHANNELS}


def default_configs() -> tuple[ChannelConfig, ...]:
    return tuple(ChannelConfig(c.name, c.k, c.quota) for c in REGISTRY.values())


def build_channels(
    configs: list[ChannelConfig], options: Mapping[str, Any] | None = None
) -> list[tuple[ChannelConfig, RecallFn]]:
    """Compose the enabled channels by name, in the configured order."""
    options = options or {}
    out = []
    for cfg in configs:
        if cfg.name not in REGISTRY:
            raise ValueError(f"unknown recall channel {cfg.name!r}; known: {', '.join(REGISTRY)}")
        if cfg.enabled and cfg.k > 0 and cfg.quota > 0:
            out.append((cfg, REGISTRY[cfg.name].make(options)))
    return out
