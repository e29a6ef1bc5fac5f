"""The code registry: item ids and version strings as small integers in user records.

Codes live in Redis (keys.item_codes / item_ids / string_codes / strings / codes_meta, all
in the {codes} cluster slot) and are assigned once, idempotently, by the INTERN script; a
code is never reused or removed (an item deleted from the catalog keeps its code, so every
process maps it the same way). Each process keeps both directions in dicts (`CodeBook`).

The registry has an epoch (a random token set when it is created). A process that sees
another epoch (Redis lost its data) forgets every code it knew and learns them again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nearline_rec.storage import codec, keys

# KEYS: name->code hash, code->name hash, meta hash; ARGV: sequence field in meta, epoch
# candidate, names... Returns {epoch, code, code, ...}.
INTERN = """
redis.call('HSETNX', KEYS[3], 'epoch', ARGV[2])
local out = {redis.call('HGET', KEYS[3], 'epoch')}
for i = 3, #ARGV do
  local c = redis.call('HGET', KEYS[1], ARGV[i])
  if not c then
    c = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
    redis.call('HSET', KEYS[1], ARGV[i], c)
    redis.call('HSET', KEYS[2], c, ARGV[i])
  end
  out[#out + 1] = tonumber(c)
end
return out
"""


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class CodeBook:
    """In-process copy of the registry, both directions."""

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.item_code: dict[str, int] = {}
        self.item_id: dict[int, str] = {}
        self.string_code: dict[str, int] = {"": 0}
        self.string: dict[int, str] = {0: ""}
        self.candidate = uuid.uuid4().hex
        """Epoch this process proposes if it creates the registry."""
        self.losses = 0
        """How often the registry this book learned from was found gone or replaced."""

    def check_epoch(self, epoch: Any) -> bool:
        """Adopt the registry's epoch; False (and every code forgotten) when it changed or
        the registry is gone (Redis lost its data: codes are interned again)."""
        if epoch is None:
            if self.epoch is None:
                return True
            self.forget()
            self.losses += 1
            return False
        e = _text(epoch)
        if self.epoch == e:
            return True
        changed = self.epoch is not None
        if changed:
            self.forget()
            self.losses += 1
        self.epoch = e
        return not changed

    def forget(self) -> None:
        """Every code learned (the registry they came from is gone)."""
        self.epoch = None
        self.item_code.clear()
        self.item_id.clear()
        self.string_code = {"": 0}
        self.string = {0: ""}

    def missing_items(self, ids: Iterable[str]) -> list[str]:
        known = self.item_code
        return list(dict.fromkeys(i for i in ids if i not in known))

    def missing_strings(self, names: Iterable[str]) -> list[str]:
        known = self.string_code
        return list(dict.fromkeys(s for s in names if s not in known))

    def learn_interned(
        self, reply: Sequence[Any], items: Sequence[str], strings: Sequence[str]
    ) -> bool:
        """Take the replies of INTERN calls (items first, then strings); False when the
        registry's epoch changed (codes learned before are gone: intern again)."""
        same = True
        pos = 0
        for names, code_of, name_of, limit in (
            (items, self.item_code, self.item_id, codec.MAX_ITEM_CODE),
            (strings, self.string_code, self.string, codec.MAX_STRING_CODE),
        ):
            if not names:
                continue
            out = reply[pos]
            pos += 1
            same = self.check_epoch(out[0]) and same
            for name, code in zip(names, out[1:], strict=True):
                code = int(code)
                if code > limit:
                    raise OverflowError(f"code registry full: code {code} above {limit}")
                code_of[name] = code
                name_of[code] = name
        return same

    def learn_names(
        self,
        epoch: Any,
        item_codes: Sequence[int],
        item_names: Sequence[Any],
        string_codes: Sequence[int],
        string_names: Sequence[Any],
    ) -> None:
        """Take HMGET replies (code -> name); codes the registry lacks stay unknown."""
        self.check_epoch(epoch)
        for code, name in zip(item_codes, item_names, strict=True):
            if name is not None:
                self.item_id[code] = _text(name)
                self.item_code[_text(name)] = code
        for code, name in zip(string_codes, string_names, strict=True):
            if name is not None:
                self.string[code] = _text(name)
                self.string_code[_text(name)] = code

    def unknown_codes(self, records: Iterable[codec.UserRecord]) -> tuple[list[int], list[int]]:
        """Item codes and string codes in `records` this book has no name for."""
        items: dict[int, None] = {}
        strs: dict[int, None] = {}
        for rec in records:
            items.update((c, None) for c, _ in rec.items if c not in self.item_id)
            strs.update(
                (c, None)
                for c in (rec.model_code, rec.embedding_code, rec.variant_code)
                if c not in self.string
            )
        return list(items), list(strs)


def intern_args(
    prefix: str, kind: str, names: Sequence[str], candidate: str
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of one INTERN call; kind is "item" or "str"."""
    if kind == "item":
        ks = [keys.item_codes(prefix), keys.item_ids(prefix), keys.codes_meta(prefix)]
    else:
        ks = [keys.string_codes(prefix), keys.strings(prefix), keys.codes_meta(prefix)]
    return ks, [kind, candidate, *names]


# -- synchronous readers (get_recommendations, tools, tests) -----------------------------


@dataclass(frozen=True)
class StoredUser:
    """A user's record in Redis, decoded: the list (redis-user-list schema, no scores),
    the embedding (float32 from float16), events applied and the newest event time."""

    version: int
    list: dict[str, Any]
    embedding: np.ndarray | None
    n_events: int
    event_time: float


def resolve_sync(r: Any, prefix: str, book: CodeBook, records: Iterable[codec.UserRecord]) -> None:
    """Learn the names of the codes in `records` that `book` lacks (one round trip, none
    when it knows them all)."""
    items, strs = book.unknown_codes(records)
    if not items and not strs:
        return
    pipe = r.pipeline(transaction=False)
    pipe.hget(keys.codes_meta(prefix), "epoch")
    if items:
        pipe.hmget(keys.item_ids(prefix), items)
    if strs:
        pipe.hmget(keys.strings(prefix), strs)
    out = pipe.execute()
    epoch = out[0]
    names_i = out[1] if items else []
    names_s = out[-1] if strs else []
    book.learn_names(epoch, items, names_i, strs, names_s)


def mirror_meta_sync(r: Any, prefix: str, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """item id -> its mirrored meta (title, genres, recommendable, ...; a deleted item's
    says `"recommendable": false, "deleted": true`), one round trip; an item the mirror
    has not seen is missing from the result."""
    if not item_ids:
        return {}
    pipe = r.pipeline(transaction=False)
    for i in item_ids:
        pipe.hget(keys.item(prefix, i), "meta")
    return {i: json.loads(raw) for i, raw in zip(item_ids, pipe.execute(), strict=True) if raw}


def titles_from_meta(item_ids: Sequence[str], metas: Sequence[Any]) -> dict[str, str]:
    """item id -> title from the item mirror's `meta` JSON values (None: not mirrored)."""
    out: dict[str, str] = {}
    for i, raw in zip(item_ids, metas, strict=True):
        if raw is not None:
            title = json.loads(raw).get("title")
            if isinstance(title, str):
                out[i] = title
    return out


def read_users_sync(
    r: Any, prefix: str, user_ids: Sequence[str], book: CodeBook | None = None
) -> dict[str, StoredUser | None]:
    """Every user's record, decoded (two round trips at most)."""
    book = book or CodeBook()
    pipe = r.pipeline(transaction=False)
    for u in user_ids:
        pipe.get(keys.user_list(prefix, u))
    raws = pipe.execute()
    recs = {
        u: None if raw is None else codec.decode(raw) for u, raw in zip(user_ids, raws, strict=True)
    }
    resolve_sync(r, prefix, book, [x for x in recs.values() if x is not None])
    out: dict[str, StoredUser | None] = {}
    for u, rec in recs.items():
        if rec is None:
            out[u] = None
            continue
        value = codec.list_from_record(rec, u, item_id=book.item_id.get, string=book.string.get)
        out[u] = StoredUser(rec.version, value, rec.embedding, rec.n_events, rec.event_time)
    return out
