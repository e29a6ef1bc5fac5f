"""A serve process's personal lists, answered from the record's stored item words.

A user's record is read as its header and its items as stored (`codec.decode_words`: one
word per item, code | channel << 28), and that is what the serve cache holds. Each word
gets one response entry, made once and shared by every answer that has it: the item's id,
its channel and its title, or None for an item the catalog mirror says is retired. An
answer is then one dict lookup per stored item and one small dict, with nothing to build
per item: what a read under many connections can afford. Entries follow the registry and
the item mirror: a word whose item changed in the mirror is dropped (`forget_item`), and
all of them with the registry (`clear`).

The answer is what `ReadResult.response` makes of `codec.list_from_record` of the same
record (tests/unit/test_serve_lists.py holds them equal).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

from nearline_rec.core import fastjson
from nearline_rec.core.modes import ListMode
from nearline_rec.storage import codec
from nearline_rec.storage.codes import CodeBook

Meta = tuple[str | None, bool]
"""(title, recommendable) of an item, from the catalog mirror."""


class EntryBook:
    """word -> response entry of one serve process."""

    def __init__(self, codes: CodeBook, meta: dict[str, Meta]) -> None:
        self.codes = codes
        self.meta = meta
        """item id -> (title, recommendable), kept by the reader (shared with it)."""
        self.entries: dict[int, dict[str, Any] | None] = {}
        """word -> {"item_id", "channel"[, "title"]}, or None for a retired item. A word
        whose code the registry does not name yet has no entry (it is left out)."""
        self.item_words: dict[str, list[int]] = {}
        self.generation = 0
        """Counts changes of entries (and of the names they use): a prepared answer made
        under another generation is made again (`prepared`)."""

    def unknown(self, head: codec.RecordWords) -> list[int]:
        """The words of `head` with no entry yet (their items to be named: `learn`)."""
        entries = self.entries
        return [w for w in head.words if w not in entries]

    def unnamed_codes(
        self, words: list[int], head: codec.RecordWords
    ) -> tuple[list[int], list[int]]:
        """Item codes of `words` and string codes of `head` the registry copy lacks.
        Raises codec.CorruptRecord for item code 0."""
        known, strings = self.codes.item_id, self.codes.string
        items = list(dict.fromkeys(c for c, _ in map(codec.word_item, words) if c not in known))
        strs = [c for c in (head.model_code, head.variant_code) if c not in strings]
        return items, strs

    def missing_meta(self, words: list[int]) -> list[str]:
        """Named items of `words` whose mirror entry this process has not read."""
        named = self.codes.item_id
        ids = (named.get(w & codec.MAX_ITEM_CODE) for w in words)
        return list(dict.fromkeys(i for i in ids if i is not None and i not in self.meta))

    def learn(self, words: list[int]) -> None:
        """Make the entries of `words` whose items are named and whose meta is known."""
        self.generation += 1  # also after the registry named a list's strings
        for w in words:
            if w in self.entries:
                continue  # made by a read that learned the same words meanwhile
            item = codec.word_item(w)
            iid = self.codes.item_id.get(item.code)
            if iid is None or (m := self.meta.get(iid)) is None:
                continue
            title, recommendable = m
            entry = None
            if recommendable:
                entry = {"item_id": iid, "channel": item.channel}
                if title is not None:
                    entry["title"] = title
            self.entries[w] = entry
            self.item_words.setdefault(iid, []).append(w)

    def forget_item(self, item_id: str) -> None:
        self.generation += 1
        for w in self.item_words.pop(item_id, ()):
            self.entries.pop(w, None)

    def clear(self) -> None:
        self.generation += 1
        self.entries.clear()
        self.item_words.clear()

    def body(
        self,
        user_id: str,
        tier: str,
        head: codec.RecordWords,
        k: int,
        now: float,
        stale_after: float,
    ) -> dict[str, Any]:
        """The response (recommendation-response schema) of a personal list."""
        # entries of the stored words, None (retired) and missing (unnamed) left out
        items = list(islice(filter(None, map(self.entries.get, head.words)), k))
        generated = head.generated_at
        age = max(0.0, now - generated) if generated else None
        string: Callable[[int], str | None] = self.codes.string.get
        body = {
            "user_id": user_id,
            "k": k,
            "items": items,
            "tier": tier,
            "mode": head.mode,
            "degraded": head.mode == ListMode.DEGRADED,
            "stale": age is not None and age > stale_after,
            "version": head.version,
            "generated_at": generated,
            "age_seconds": None if age is None else round(age, 3),
            "model_version": (string(head.model_code) or "") if head.model_code else "",
        }
        if head.variant_code and (variant := string(head.variant_code)):
            body["variant"] = variant
        return body

    def prepared(self, user_id: str, tier: str, head: codec.RecordWords, k: int) -> Prepared:
        """The answer of `body` as JSON, but for the two fields that change with the clock
        ("stale", "age_seconds", put last): made once per cached list and k, then each
        answer is `finish` of it, with no dict to build or serialize."""
        body = self.body(user_id, tier, head, k, 0.0, 0.0)
        del body["stale"], body["age_seconds"]
        return k, self.generation, fastjson.dumps(body, kept=False)[:-1]  # an exact-size copy

    @staticmethod
    def finish(
        prepared: Prepared, head: codec.RecordWords, now: float, stale_after: float
    ) -> bytes:
        """The JSON answer from `prepared` at time `now` (what `body` gives, as JSON)."""
        generated = head.generated_at
        if not generated:
            return prepared[2] + b',"stale":false,"age_seconds":null}'
        age = max(0.0, now - generated)
        stale = b',"stale":true,"age_seconds":' if age > stale_after else STALE_FALSE
        return prepared[2] + stale + fastjson.dumps(round(age, 3), kept=False) + b"}"


Prepared = tuple[int, int, bytes]
"""(k, EntryBook generation, the answer's JSON up to the clock's fields) of a cached list."""
STALE_FALSE = b',"stale":false,"age_seconds":'
